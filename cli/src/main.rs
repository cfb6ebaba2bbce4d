//! `pagedkv`: the command-line tool of the pagedkv library.
//!
//! `pagedkv plan` sizes a paged KV cache for a model on a GPU, with the verdict
//! of vLLM 0.33.0 (`--engine vllm-v1`, the default) or of vLLM's V0 engine
//! (`--engine vllm-v0`). Exit codes: 0 the configuration fits, 1 it does not
//! (the refusal with its fixes is printed), 2 the input is unusable (one line
//! naming the flag or field).
//!
//! `pagedkv simulate` replays a request trace through allocation policies and
//! compares what their KV memory holds. Exit codes: 0 done, 1 the simulator
//! failed (a bug: please report it), 2 unusable input (a flag, or a trace's
//! file, line and reason).

use std::io::Write;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

use pagedkv_cli::args::{vllm_short_flags, Cli, Command, PlanArgs};
use pagedkv_cli::sim_args::SimulateArgs;
use pagedkv_cli::{plan, plot, report, sim_report, simulate};

/// Exit code for unusable input.
const EXIT_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(vllm_short_flags(std::env::args())) {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    match cli.command {
        Command::Plan(args) => run_plan(&args),
        Command::Simulate(args) => run_simulate(&args),
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
            let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut line = lines.next().unwrap_or("error: invalid arguments").to_string();
            // "the following required arguments were not provided:" names them on the next line.
            if line.ends_with(':') {
                if let Some(next) = lines.next() {
                    line = format!("{line} {next}");
                }
            }
            eprintln!("{line} (see pagedkv --help)");
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

fn run_simulate(args: &SimulateArgs) -> ExitCode {
    use pagedkv_cli::simulate::Outcome;
    let setup = match simulate::resolve(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INPUT);
        }
    };
    let outcome = match simulate::run(&setup) {
        Ok(r) => r,
        Err(Ok(input)) => {
            eprintln!("error: {input}");
            return ExitCode::from(EXIT_INPUT);
        }
        Err(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(path) = &args.plot {
        let names: Vec<String> = setup.policies.iter().map(|p| p.name()).collect();
        let drawn = match &outcome {
            Outcome::Runs(results, _) => plot::write_svg(path, results),
            Outcome::Rates(points) => plot::write_rates_svg(path, &names, points),
            Outcome::Capacities(sweep) => plot::write_capacities_svg(path, &names, sweep),
        };
        if let Err(e) = drawn {
            eprintln!("error: --plot {}: {e}", path.display());
            return ExitCode::from(EXIT_INPUT);
        }
    }
    let text = match (&outcome, args.json, args.csv) {
        (Outcome::Runs(r, f), true, _) => format!("{:#}\n", sim_report::render_json(&setup, r, f.as_ref())),
        (Outcome::Runs(r, _), _, true) => sim_report::render_csv(r),
        (Outcome::Runs(r, f), _, _) => sim_report::render_text(&setup, r, f.as_ref()),
        (Outcome::Rates(p), true, _) => format!("{:#}\n", sim_report::render_rates_json(&setup, p)),
        (Outcome::Rates(p), _, true) => sim_report::render_rates_csv(p),
        (Outcome::Rates(p), _, _) => sim_report::render_rates_text(&setup, p),
        (Outcome::Capacities(c), true, _) => format!("{:#}\n", sim_report::render_capacities_json(&setup, c)),
        (Outcome::Capacities(c), _, true) => sim_report::render_capacities_csv(&setup, c),
        (Outcome::Capacities(c), _, _) => sim_report::render_capacities_text(&setup, c),
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::SUCCESS
}
