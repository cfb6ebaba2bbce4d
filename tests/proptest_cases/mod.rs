//! How many cases a property suite runs: `PAGEDKV_PROPTEST_CASES` when it is
//! set (soaks raise it: `tools/soak.sh`), else the suite's own CI default.

/// `PAGEDKV_PROPTEST_CASES`, or `default` when it is unset or not a number.
pub fn from_env(default: u32) -> u32 {
    std::env::var("PAGEDKV_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
