//! `topup-loadgen`: the load generator on its own (the same as `topup-ivr loadgen`, without
//! the service linked in).

use std::process::ExitCode;

use clap::Parser;

/// Places many concurrent SIP calls with RTP and keys against a running topup-ivr and
/// prints what it measured.
#[derive(Parser)]
#[command(name = "topup-loadgen", version)]
struct Cli {
    #[command(flatten)]
    args: topup_loadgen::LoadgenArgs,
}

fn main() -> ExitCode {
    let args = Cli::parse().args;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = args.json;
    match runtime.block_on(topup_loadgen::run(args)) {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{report}");
            }
            if report.errors() > 0 {
                eprintln!(
                    "error: {} of {} calls were refused or failed",
                    report.errors(),
                    report.calls
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
