//! The README's `plan` examples work as written and print what the README
//! shows: each ```text block under a `pagedkv plan ...` command is the end of
//! (or the whole of) what that command prints, with its exit code.

mod common;
use common::{number_after, pagedkv, workspace_root};

const README_ARGS: &str = "plan --config data/configs/Qwen2-VL-2B-Instruct.json --gpu rtx4090 --gpu-memory-utilization 0.95 --weights 7.87GiB --non-torch 0.25GiB --activation-peak 11.06GiB --max-model-len 32768 --max-num-seqs 3";

fn readme() -> String {
    std::fs::read_to_string(workspace_root().join("README.md")).unwrap()
}

/// Every `plan` command of the README followed by a text block: (arguments, block).
fn examples(readme: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = readme;
    let mut consumed = 0;
    while let Some(start) = rest.find("```text\n") {
        let block_start = consumed + start + "```text\n".len();
        let len = readme[block_start..].find("```").expect("a closed text block");
        let block = readme[block_start..block_start + len].to_string();
        let before = &readme[..consumed + start];
        // The last code span before the block that runs `plan` with flags.
        let command = before
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|span| span.contains("plan --"))
            .last()
            .map(|span| {
                let at = span.find("plan --").unwrap();
                span[at..].to_string()
            });
        if let Some(command) = command.filter(|_| {
            block.starts_with("pagedkv plan") || block.contains("Verdict") || block.contains("Blocks")
        }) {
            out.push((command, block));
        }
        consumed = block_start + len + 3;
        rest = &readme[consumed..];
    }
    out
}

#[test]
fn readme_still_shows_this_command() {
    let command = format!("cargo run --release -p pagedkv-cli -- {README_ARGS}");
    assert!(
        readme().contains(&command),
        "README.md no longer contains:\n{command}"
    );
}

#[test]
fn readme_plan_examples_print_what_the_readme_shows() {
    let readme = readme();
    let examples = examples(&readme);
    assert_eq!(examples.len(), 4, "{examples:#?}");
    assert_eq!(examples[0].0, README_ARGS);
    for (command, block) in &examples {
        let args: Vec<&str> = command.split(' ').collect();
        let run = pagedkv(&args);
        assert!(
            run.code == 0 || run.code == 1,
            "{command}: exit {}\n{}",
            run.code,
            run.stderr
        );
        assert!(
            run.stdout.ends_with(block.as_str()),
            "README block under `{command}` is not what it prints:\n--- README\n{block}\n--- prints\n{}",
            run.stdout
        );
        let says_refused = block.contains("DOES NOT FIT");
        assert_eq!(run.code == 1, says_refused, "{command}");
    }
}

#[test]
fn readme_command_fits_with_three_full_length_sequences() {
    let args: Vec<&str> = README_ARGS.split(' ').collect();
    let run = pagedkv(&args);
    assert_eq!(run.code, 0, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    // 3.28 GiB of KV cache: 7672 blocks of 458752 bytes, one of them vLLM's null block.
    assert_eq!(number_after(&run.stdout, "token capacity"), 7671 * 16);
    assert_eq!(number_after(&run.stdout, "bytes per token"), 28_672);
    assert!(run.stdout.contains("FITS"), "{}", run.stdout);
    assert!(
        run.stdout.contains("3 sequences of 32768 tokens"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("max_num_seqs=3 fits"), "{}", run.stdout);
    assert!(run.stdout.contains("3.28 GiB"), "KV budget:\n{}", run.stdout);
}
