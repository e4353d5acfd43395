//! The `secrets-sidecar` binary: parses the command line, sets up logging and signals, and hands over to
//! the library. Errors reach the user here and only here, which also picks the exit code:
//! 0 done, 1 failed at run time (or unhealthy, for `healthcheck`), 2 bad configuration.

use std::process::ExitCode;

use clap::Parser;
use secrets_sidecar::RunError;
use secrets_sidecar::config::{
    Action, Cli, Command, Config, LogFormat, Settings, SignalTarget, SourceConfig, TokenSetting,
};
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
                print_config(&config);
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
            // A template that uses a name the dev file lacks is bad configuration, found only at run.
            let code = if matches!(e, RunError::Template(_)) { EXIT_CONFIG } else { EXIT_FAILURE };
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

fn print_config(c: &Config) {
    println!("configuration OK");
    match &c.source {
        SourceConfig::Aws { endpoint_url } => {
            println!("source: Secrets Manager{}", endpoint_url.as_ref().map(|u| format!(" at {u}")).unwrap_or_default())
        }
        SourceConfig::Dev { path } => println!("source: dev file {}", path.display()),
    }
    for s in &c.secrets {
        println!(
            "secret {}: {} (format {}) -> {}",
            s.name,
            s.secret_id,
            s.format.as_str(),
            c.output_dir.join(s.file_name()).display()
        );
    }
    for s in &c.rds_iam {
        println!(
            "rds-iam {}: token for {}@{}:{}{}{} -> {}",
            s.name,
            s.user,
            s.host,
            s.port,
            s.region.as_ref().map(|r| format!(" in {r}")).unwrap_or_default(),
            s.dbname.as_ref().map(|d| format!(", dbname {d}")).unwrap_or_default(),
            c.output_dir.join(s.file_name()).display()
        );
    }
    let names: Vec<String> =
        c.secrets.iter().map(|s| s.name.clone()).chain(c.rds_iam.iter().map(|s| s.name.clone())).collect();
    for t in &c.templates {
        // Without --secret, a dev run's names come from the dev file: the inputs are known only at run.
        let inputs = match t.inputs(&names) {
            Ok(inputs) if !names.is_empty() => inputs.join(", "),
            _ => "(secrets of the dev file, checked at start)".to_owned(),
        };
        println!(
            "template {}: {} rendered from {}{} -> {}",
            t.spec.name,
            t.spec.path.display(),
            inputs,
            t.spec.from.as_ref().map(|f| format!(" (variables: the keys of {f})")).unwrap_or_default(),
            c.output_dir.join(&t.spec.name).display()
        );
    }
    let d = humantime::format_duration;
    if !c.rds_iam.is_empty() {
        println!("rds-iam renew interval: {}", d(c.rds_iam_renew_interval));
    }
    println!(
        "refresh interval: {} (rotation: {}, min forced gap: {})",
        d(c.refresh_interval),
        d(c.rotation_poll_interval),
        d(c.min_refresh_gap)
    );
    println!("listen: {}", c.listen);
    println!(
        "file mode: {:04o}, owner: {}:{}",
        c.file.mode,
        c.file.uid.map_or("(process)".into(), |u| u.to_string()),
        c.file.gid.map_or("(process)".into(), |g| g.to_string())
    );
    println!(
        "token: {}",
        match c.token {
            TokenSetting::Given(_) => "given (not shown)",
            TokenSetting::Generate => "generated at start, written to .token",
            TokenSetting::Disabled => "DISABLED (--no-token)",
        }
    );
    if let Some(m) = c.max_staleness {
        println!("max staleness: {}", d(m));
    }
    for (i, a) in c.on_change.iter().enumerate() {
        let action = match &a.action {
            Action::Http(h) => format!(
                "http {} {}{}{}",
                h.method,
                h.display_url(),
                if h.query.is_some() { "?<query not shown>" } else { "" },
                h.token_file
                    .as_ref()
                    .map(|p| format!(", token from {} as query parameter {}", p.display(), h.token_param))
                    .unwrap_or_default()
            ),
            Action::Signal { signal, target: SignalTarget::PidFile(p) } => {
                format!("signal SIG{} to the pid in {}", signal.as_str(), p.display())
            }
            Action::Signal { signal, target: SignalTarget::Process(n) } => {
                format!("signal SIG{} to every process named {n}", signal.as_str())
            }
        };
        println!(
            "on-change {i}: when {} changes: {action} (timeout {}, debounce {}, {})",
            a.watch.join("+"),
            d(a.timeout),
            d(a.debounce),
            if a.initial { "also after the initial publish" } else { "not at start" }
        );
    }
}
