//! `pagedkv`: the command-line tool of the pagedkv library.
//!
//! `pagedkv plan` sizes a paged KV cache for a model on a GPU. Exit codes:
//! 0 the configuration fits, 1 it does not (the library's refusal with its
//! fixes is printed), 2 the input is unusable (one line naming the flag or field).

mod args;
mod error;
mod estimate;
mod gpus;
mod hf_config;
mod plan;
mod report;
mod size;

use std::io::Write;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

use crate::args::{Cli, Command, PlanArgs};

/// Exit code for unusable input.
const EXIT_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    match cli.command {
        Command::Plan(args) => run_plan(&args),
    }
}

/// Help and version go to stdout as clap prints them; any other parse error
/// becomes one line on stderr (clap's first line, which names the flag).
fn clap_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(EXIT_INPUT)
        }
        _ => {
            let rendered = e.render().to_string();
            let line = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("error: invalid arguments");
            eprintln!("{line} (see pagedkv plan --help)");
            ExitCode::from(EXIT_INPUT)
        }
    }
}

fn run_plan(args: &PlanArgs) -> ExitCode {
    let report = match plan::resolve(args).and_then(plan::compute) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INPUT);
        }
    };
    let text = if args.json {
        format!("{:#}\n", report::render_json(&report))
    } else {
        report::render_text(&report)
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::from(report.exit_code())
}
