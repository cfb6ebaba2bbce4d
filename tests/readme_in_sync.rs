//! The README's Rust quick start is doctested (the README is the crate docs);
//! this keeps `examples/quickstart.rs` the same program.

#[test]
fn readme_quick_start_is_the_quickstart_example() {
    let readme = include_str!("../README.md");
    let example = include_str!("../examples/quickstart.rs");
    let start = readme.find("```rust\n").expect("README has a rust block") + "```rust\n".len();
    let block = &readme[start..start + readme[start..].find("```").expect("closed block")];
    // Code without comment lines or whitespace, so rustfmt's wrapping does not matter.
    let body = |s: &str| -> String {
        s.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("//"))
            .flat_map(|l| l.split("//").next())
            .flat_map(str::split_whitespace)
            .collect()
    };
    assert_eq!(
        body(block),
        body(example),
        "README quick start and examples/quickstart.rs differ"
    );
}
