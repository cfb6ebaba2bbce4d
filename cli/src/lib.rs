//! The library behind the `pagedkv` command-line tool (`src/main.rs`): flag
//! and config resolution, the planner's report, the simulator's setup and
//! rendering. It exists so that the tool's parsers can be fuzzed and tested
//! directly (`fuzz/fuzz_targets/config_json.rs`); its API follows the tool,
//! not semver.

pub mod args;
pub mod budget;
pub mod checks;
pub mod error;
pub mod estimate;
pub mod gpus;
pub mod hf_config;
pub mod plan;
pub mod plot;
pub mod report;
pub mod sim_args;
pub mod sim_report;
pub mod simulate;
pub mod size;
pub mod vllm_model;
