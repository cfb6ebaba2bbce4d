//! Runs the built `pagedkv` binary from the workspace root, as the README does.

use std::path::PathBuf;
use std::process::Command;

/// What a run printed and how it exited.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The workspace root (the README's commands run from there).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The seed case's attention shape as `plan` flags: 28 layers, 2 KV heads of
/// 128, bf16 (28,672 bytes per token).
#[allow(dead_code)] // not every test file uses it
pub const SEED_SHAPE: [&str; 8] = [
    "--layers",
    "28",
    "--kv-heads",
    "2",
    "--head-dim",
    "128",
    "--kv-dtype",
    "bf16",
];

/// Runs `pagedkv plan` with the seed shape followed by `args`.
#[allow(dead_code)] // not every test file uses it
pub fn plan_seed(args: &[&str]) -> Run {
    let mut all = vec!["plan"];
    all.extend(SEED_SHAPE);
    all.extend_from_slice(args);
    pagedkv(&all)
}

/// Runs `pagedkv` with `args` from the workspace root.
pub fn pagedkv(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_pagedkv"))
        .args(args)
        .current_dir(workspace_root())
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("the pagedkv binary runs");
    Run {
        code: out
            .status
            .code()
            .expect("pagedkv exits with a code, not a signal"),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

/// The number after `label` on the first line containing it, e.g.
/// `number_after(out, "token capacity")` on "  token capacity   122752 tokens".
#[allow(dead_code)] // not every test file uses it
pub fn number_after(text: &str, label: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.contains(label))
        .unwrap_or_else(|| panic!("no line with {label:?} in:\n{text}"));
    let rest = &line[line.find(label).unwrap() + label.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {label:?} in {line:?}"))
}
