//! The `pullwatch` commands: the command line, and what each subcommand does with it
//! ([`run`]: the agent; [`pull`]: one pull through a CRI socket; [`explain`]: classify a message).
//! Usage and configuration errors exit 64 with one line naming the flag.

pub(crate) mod explain;
pub mod pull;
pub(crate) mod pulls;
pub(crate) mod run;

use crate::cri::client::CriClient;
use crate::logging;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Parser, Subcommand};
use explain::ExplainArgs;
use pull::{PullArgs, PullRequest};
use run::RunArgs;
use run::config::RunConfig;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

/// pullwatch: times and classifies every container image pull on a node, for Prometheus.
#[derive(Debug, Parser)]
#[command(name = "pullwatch", version = crate::VERSION, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
// Parsed once at start-up; boxing the flags would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: its sources (CRI interposer, containerd, Kubernetes API, rate-limit probe)
    /// and the /metrics endpoint.
    Run(RunArgs),
    /// Classify a pull error message (as shown by `kubectl describe pod`) and print a fix hint.
    Explain(ExplainArgs),
    /// Pull an image through a CRI socket (like `crictl pull`), printing duration or cause + hint.
    Pull(PullArgs),
    /// Show the node's pulls in progress (how far, how fast, stalled) and its last finished
    /// attempts with cause and hint, from a running agent's /pulls.
    Pulls(pulls::PullsArgs),
}

pub use crate::logging::LogFormat;

/// Exit code for bad usage or configuration (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;
/// Exit code when a needed service is unreachable (sysexits EX_UNAVAILABLE).
const EX_UNAVAILABLE: u8 = 69;

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("pullwatch: error: {msg}");
    ExitCode::from(code)
}

/// A flag value its parser refused, as one line naming the flag (`--listen: invalid address
/// ...`), like every other configuration error; `None` for clap's other errors (unknown flags
/// and subcommands, missing values), which keep clap's own message and hints.
pub fn value_error_line(e: &clap::Error) -> Option<String> {
    if e.kind() != ErrorKind::ValueValidation {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let flag = arg.split(' ').next().unwrap_or(arg);
    let problem = std::error::Error::source(e)?.to_string();
    Some(format!("{flag}: {problem}"))
}

/// Parses the command line and runs the command; the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            if let Some(line) = value_error_line(&e) {
                return fail(EX_USAGE, line);
            }
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
            let result = rt.block_on(run::run(config, run::signal::shutdown()));
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
                // `explain ... | head -1`: the reader has what it wanted; end quietly, as
                // standard tools do.
                Err(explain::ExplainError::Write(e))
                    if e.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    ExitCode::SUCCESS
                }
                Err(e @ explain::ExplainError::Empty) => fail(EX_USAGE, e),
                Err(e) => fail(1, e),
            }
        }
        Command::Pulls(args) => rt.block_on(show_pulls(&args)),
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
                        Err(e) => return fail(EX_UNAVAILABLE, crate::causes::Causes(&e)),
                    };
                let report = pull::pull(&mut client, &req).await;
                let text = if args.json {
                    format!("{}\n", report.to_json())
                } else {
                    report.to_text()
                };
                let mut out = std::io::stdout().lock();
                if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
                    && e.kind() != std::io::ErrorKind::BrokenPipe
                {
                    return fail(1, format!("writing output: {e}"));
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

/// `pullwatch pulls`: prints the view once (`--once`, `--json`) or refreshes it until Ctrl-C.
async fn show_pulls(args: &pulls::PullsArgs) -> ExitCode {
    // Screen control only on a terminal that has it: not on TERM=dumb (Emacs shells, some CI
    // logs) or without TERM, where each refresh is printed below the last instead.
    let redraw = std::io::stdout().is_terminal()
        && std::env::var("TERM").is_ok_and(|t| !t.is_empty() && t != "dumb");
    loop {
        let (raw, snapshot) = match pulls::fetch(args).await {
            Ok(v) => v,
            Err(e @ (pulls::PullsError::Url(_) | pulls::PullsError::Refused { .. })) => {
                return fail(
                    if matches!(e, pulls::PullsError::Url(_)) {
                        EX_USAGE
                    } else {
                        1
                    },
                    e,
                );
            }
            Err(e) => return fail(EX_UNAVAILABLE, e),
        };
        let text = if args.json {
            format!("{}\n", String::from_utf8_lossy(&raw))
        } else if redraw && !args.once {
            // Clear the screen and draw again, as `watch` does.
            format!("\x1b[2J\x1b[H{}", pulls::render(&snapshot))
        } else {
            format!("{}\n", pulls::render(&snapshot))
        };
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return ExitCode::SUCCESS;
            }
            return fail(1, format!("writing output: {e}"));
        }
        drop(out);
        if args.once || args.json {
            return ExitCode::SUCCESS;
        }
        tokio::select! {
            () = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}
