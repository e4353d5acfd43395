//! The `secrets-sidecar` binary: parses the command line, sets up logging and signals, and hands over to
//! the library. Errors reach the user here and only here, which also picks the exit code:
//! 0 done, 1 failed at run time (or unhealthy, for `healthcheck`), 2 bad configuration.

use std::process::ExitCode;

use clap::Parser;
use secrets_sidecar::RunError;
use secrets_sidecar::config::{Cli, Command, Config, LogFormat, Settings};
use tracing_subscriber::EnvFilter;

const EXIT_FAILURE: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // clap itself exits with 2 on a malformed command line, naming the offending value.
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Healthcheck => healthcheck(&cli.settings),
        Command::CheckConfig => match cli.settings.validate() {
            Ok(config) => {
                print!("{}", config.describe());
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Command::Run => match cli.settings.validate() {
            Ok(config) => run(config, cli.settings.log_format),
            Err(e) => config_error(&e),
        },
    }
}

fn config_error(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("secrets-sidecar: configuration error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn healthcheck(settings: &Settings) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(secrets_sidecar::health::probe(settings.listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("secrets-sidecar healthcheck: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn run(config: Config, format: LogFormat) -> ExitCode {
    init_tracing(format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        // Two workers are plenty for a handful of poll loops and a loopback endpoint, and keep the
        // sidecar's footprint small beside the app.
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| (EXIT_FAILURE, format!("cannot listen on {}: {e}", config.listen)))?;
        secrets_sidecar::run(config, listener, secrets_sidecar::shutdown::signal()).await.map_err(|e| {
            // A template that uses a name the dev file lacks, or a failover Region that is the SDK's own, is
            // bad configuration found only at run.
            let code = if matches!(e, RunError::Template(_) | RunError::FailoverToOwnRegion { .. }) {
                EXIT_CONFIG
            } else {
                EXIT_FAILURE
            };
            (code, e.to_string())
        })
    });
    // Do not wait for blocking tasks (a publish in flight finishes its rename or not at all).
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, e)) => {
            tracing::error!(error = %e, "secrets-sidecar failed");
            eprintln!("secrets-sidecar: {e}");
            ExitCode::from(code)
        }
    }
}

/// `SIDECAR_LOG`, else `RUST_LOG`, else `info`; JSON lines or text on stdout, where awslogs reads.
fn init_tracing(format: LogFormat) {
    let filter = std::env::var("SIDECAR_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}
