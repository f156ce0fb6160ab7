//! The `pullwatch` binary: parse flags, set up logging, run the chosen command.

use clap::Parser;
use pullwatch::cli::{Cli, Command, LogFormat};
use pullwatch::config::RunConfig;
use pullwatch::cri::client::CriClient;
use pullwatch::pull::{PullRequest, pull};
use pullwatch::{app, explain, logging, signal};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code for bad usage or configuration (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;
/// Exit code when a needed service is unreachable (sysexits EX_UNAVAILABLE).
const EX_UNAVAILABLE: u8 = 69;

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("pullwatch: error: {msg}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(EX_USAGE);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(1, format!("starting the async runtime: {e}")),
    };
    match cli.command {
        Command::Run(args) => {
            let config = match RunConfig::from_args(&args) {
                Ok(c) => c,
                Err(e) => return fail(EX_USAGE, e),
            };
            let log = logging::init(config.log_format, &config.log_level);
            let result = rt.block_on(app::run(config, signal::shutdown()));
            // Flush the queued log lines first: the one-line error is the last thing printed.
            drop(log);
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.is_usage() => fail(EX_USAGE, e),
                Err(e) => fail(1, e),
            }
        }
        Command::Explain(args) => {
            let mut out = std::io::stdout().lock();
            let result = match &args.message {
                Some(m) => explain::explain_one(m, args.json, &mut out).map(|_| ()),
                None if std::io::stdin().is_terminal() => {
                    return fail(
                        EX_USAGE,
                        "explain: give a message argument or pipe messages on stdin",
                    );
                }
                None => {
                    explain::explain_lines(std::io::stdin().lock(), args.json, &mut out).map(|_| ())
                }
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e @ explain::ExplainError::Empty) => fail(EX_USAGE, e),
                Err(e) => fail(1, e),
            }
        }
        Command::Pull(args) => {
            let _log = logging::init(LogFormat::Text, "warn");
            let req = match PullRequest::from_args(&args) {
                Ok(r) => r,
                Err(e) => return fail(EX_USAGE, e),
            };
            rt.block_on(async {
                let mut client =
                    match CriClient::connect(&args.runtime_socket, Duration::from_secs(5)).await {
                        Ok(c) => c,
                        Err(e) => return fail(EX_UNAVAILABLE, e),
                    };
                let report = pull(&mut client, &req).await;
                if args.json {
                    println!("{}", report.to_json());
                } else {
                    print!("{}", report.to_text());
                }
                if report.outcome.reason().is_none() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            })
        }
    }
}
