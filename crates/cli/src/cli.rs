//! The command line itself: clap definitions and dispatch.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sagaflow_telemetry::{LogFormat, TelemetryGuard, metrics::MetricsError};

use crate::{CliError, bench, demo, dev, recovery, saga, seed, serve, token};

/// The sagaflow order system: gRPC services coordinated by a durable saga engine.
#[derive(Debug, Parser)]
#[command(name = "sagaflow", version, about, long_about = None)]
struct Cli {
    /// Log output: `pretty` for a terminal, `json` for log shippers. Filter with RUST_LOG.
    #[arg(long, global = true, env = "SAGAFLOW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing the flags would only obscure clap's derive"
)]
enum Command {
    /// Run every service and the orchestrator in one process on SQLite files (embedded default).
    Dev(dev::DevArgs),
    /// Place the shipped sample orders, wait for their sagas, print outcomes, check invariants.
    Demo(demo::DemoArgs),
    /// Load-test the order saga and print sagas/s and latency percentiles.
    Bench(bench::BenchArgs),
    /// Kill `sagaflow dev` with sagas in flight, restart it, and print how long they take to resume.
    Recovery(recovery::RecoveryArgs),
    /// Run one service on its own port and database.
    Serve(serve::ServeArgs),
    /// Load the demo data (or `--file`) into running services through their admin RPCs.
    Seed(seed::SeedArgs),
    /// Inspect, retry or cancel sagas through the admin API.
    Saga(saga::SagaArgs),
    /// Print a bearer token for a user, signed with `sagaflow dev`'s development key.
    Token(token::TokenArgs),
}

/// Exit code for invalid configuration (EX_USAGE of sysexits.h).
const EXIT_USAGE: u8 = 64;

/// Exit code after Ctrl-C: 128 + SIGINT, as a shell reports a process that SIGINT ended.
const EXIT_INTERRUPTED: u8 = 130;

/// Runs the `sagaflow` command line: parses `std::env::args`, runs the command, and returns the
/// exit code (0 ok, 1 failure, 2 bad flags from clap, 64 invalid configuration, 130 interrupted
/// by Ctrl-C).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("sagaflow: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let format = cli.log_format;
    let result = runtime.block_on(async move {
        // One `service.name` per process (docs/operations.md, "Watching"): `sagaflow-dev`,
        // `sagaflow-<service>`, …
        let service = match &cli.command {
            Command::Dev(_) => "sagaflow-dev".to_owned(),
            Command::Demo(_) => "sagaflow-demo".to_owned(),
            Command::Bench(_) => "sagaflow-bench".to_owned(),
            Command::Recovery(_) => "sagaflow-recovery".to_owned(),
            Command::Serve(args) => args.service.telemetry_name(),
            Command::Saga(_) | Command::Seed(_) | Command::Token(_) => "sagaflow-cli".to_owned(),
        };
        let mut config = sagaflow_telemetry::TelemetryConfig::from_env(service, format);
        if matches!(cli.command, Command::Bench(_) | Command::Demo(_)) {
            // A run that prints a report prints no log line per saga (RUST_LOG still wins).
            config = config.with_default_log_filter("warn");
        }
        let telemetry = sagaflow_telemetry::init_config(config);
        let result = run(cli.command).await;
        flush(telemetry).await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(message)) => {
            eprintln!("sagaflow: {message}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(CliError::Failed(err)) => {
            eprintln!("sagaflow: {}", one_line(&err));
            ExitCode::FAILURE
        }
        Err(CliError::Interrupted) => ExitCode::from(EXIT_INTERRUPTED),
    }
}

/// An error and its causes on one line, `outer: inner: …`, leaving out a cause whose text the
/// line already holds (drivers often repeat their source in their own message).
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Exports the spans still buffered and stops the exporter (spans the batch processor still
/// holds at exit are lost otherwise): every command ends here — after SIGTERM/Ctrl-C and a
/// graceful shutdown for the servers — before the process exits.
async fn flush(telemetry: TelemetryGuard) {
    if let Err(err) = telemetry.shutdown().await {
        tracing::warn!(error = %err, "spans may have been lost at exit");
    }
}

/// Refuses fault injection that this build cannot do: `SAGAFLOW_FAULTS`/`--faults` without the
/// cargo feature `fault-injection`, which only test builds enable (docs/operations.md, "Fault
/// injection (test builds only)"). A release binary told to inject faults stops here, before it
/// opens a database or a port, rather than run without them or with them.
fn refuse_faults_not_compiled_in(command: &Command) -> Result<(), CliError> {
    let faults = match command {
        Command::Dev(args) => &args.faults,
        Command::Serve(args) => &args.faults.faults,
        _ => return Ok(()),
    };
    faults
        .ensure_compiled_in()
        .map_err(|err| CliError::Usage(err.to_string()))
}

/// Runs one command to its end.
async fn run(command: Command) -> Result<(), CliError> {
    refuse_faults_not_compiled_in(&command)?;
    match command {
        Command::Dev(args) => dev::run(args).await.map_err(|err| {
            // An unusable metrics address is a configuration error, as for `serve`.
            if matches!(err.downcast_ref(), Some(MetricsError::NoPort(_))) {
                CliError::Usage(err.to_string())
            } else {
                CliError::Failed(err)
            }
        }),
        Command::Demo(args) => match demo::run(args).await {
            Ok(outcome) if outcome.interrupted => Err(CliError::Interrupted),
            Ok(outcome)
                if outcome.unfinished == 0
                    && outcome.violations.is_empty()
                    && outcome.mismatches.is_empty() =>
            {
                Ok(())
            }
            Ok(outcome) => Err(CliError::Failed(anyhow::anyhow!(
                "{} orders unfinished, {} invariant violations, {} orders not as their scenario \
                 says",
                outcome.unfinished,
                outcome.violations.len(),
                outcome.mismatches.len()
            ))),
            Err(err) => Err(CliError::Failed(err)),
        },
        Command::Bench(args) => match bench::run(args).await {
            Ok(report) if report.interrupted => Err(CliError::Interrupted),
            Ok(_) => Ok(()),
            Err(err) => Err(CliError::Failed(err)),
        },
        Command::Seed(args) => seed::run(args).await.map_err(CliError::Failed),
        Command::Recovery(args) => recovery::run(args)
            .await
            .map(|_| ())
            .map_err(CliError::Failed),
        Command::Serve(args) => serve::run(args).await,
        Command::Saga(args) => saga::run(args).await.map_err(CliError::Failed),
        Command::Token(args) => match token::run(&args) {
            Ok(token) => {
                println!("{token}");
                Ok(())
            }
            Err(err) => Err(CliError::Failed(err)),
        },
    }
}

#[cfg(test)]
mod tests {
    use clap::{Parser as _, error::ErrorKind};

    use super::Cli;

    #[test]
    fn zero_concurrency_is_a_usage_error_not_one() {
        for command in ["bench", "demo"] {
            let err = Cli::try_parse_from(["sagaflow", command, "--concurrency", "0"])
                .expect_err("--concurrency 0 must be refused");
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{command}: {err}");
            assert!(
                err.to_string().contains("--concurrency"),
                "{command}: {err}"
            );
        }
        assert!(Cli::try_parse_from(["sagaflow", "bench", "--concurrency", "1"]).is_ok());
    }
}
