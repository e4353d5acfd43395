//! secrets-sidecar keeps AWS Secrets Manager secrets current in files on a volume shared with the app
//! container, and on a localhost endpoint, so an app re-reads its database password whenever it opens a
//! connection and a rotation becomes a non-event.
//!
//! # Layout
//! Data flows one way: configuration → source → poller → (files, store) → HTTP.
//! - [`config`]: the command line and `SIDECAR_*` variables, validated into a [`config::Config`].
//! - [`source`]: where values come from — Secrets Manager ([`source::aws`]) or a dev file ([`source::dev`]);
//!   and RDS IAM tokens, signed locally ([`source::rds_iam`]).
//! - [`poller`]: one task per secret that owns its check state, decides what to fetch, and publishes a new
//!   version to its file and then the store in one step; forced refreshes are messages to that task.
//! - [`tokens`]: the same for an `rds-iam://` entry: one task that signs an RDS IAM auth token, publishes it
//!   like a secret and renews it before it expires.
//! - [`schedule`]: when a secret is checked next, as a pure function of what happened to it.
//! - [`publish`]: atomic writes of files on the shared volume.
//! - [`dotenv`]: a JSON secret rendered as a dotenv file (`format=env`), quoted so that sh, Ruby's and
//!   Python's dotenv read back the exact values, or refused.
//! - [`template`]: `--template` files rendered from secrets with minijinja, one task per template that
//!   re-renders when an input changes and publishes like a secret.
//! - [`changes`]: a counter per published name, raised after its file is in place; what renders or acts on
//!   a change watches it.
//! - [`actions`]: `--on-change` actions — an HTTP request to a loopback URL or a signal — one task each,
//!   fired once per (debounced) change of the names they watch, after the file is in place.
//! - [`store`]: what HTTP reads — each secret's published value and the poller's view of it — and the
//!   readiness latch. Only the poller writes it.
//! - [`http`]: the token-protected `/v1/` API, `/healthz` and `/metrics`, served from the store.
//! - the `edge` crate (`edge/`): the request path — the listener (HTTP/1.1, idle timeout, connection cap,
//!   graceful shutdown) and the fast path in front of the router; a crate of its own, which knows nothing
//!   of secrets, with an opt-level of its own.
//! - [`health`]: what healthy means, and the `healthcheck` probe.
//! - [`metrics`]: Prometheus counters and gauges at `/metrics`.
//! - [`shutdown`]: signals and the shutdown grace period.
//! - [`secret`], [`backoff`]: redacting value types; jitter and backoff arithmetic.
//!
//! The facts about Secrets Manager and its emulator that this code relies on are in
//! `docs/secrets-manager.md`.

pub mod actions;
pub mod backoff;
pub mod changes;
pub mod config;
pub mod dotenv;
pub mod health;
pub mod http;
pub mod metrics;
pub mod poller;
pub mod publish;
pub mod schedule;
pub mod secret;
pub mod shutdown;
pub mod source;
pub mod store;
pub mod template;
pub mod tokens;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Format, SecretSpec, SourceConfig, TokenSetting, valid_name};
use crate::poller::{Poller, Timing};
use crate::publish::Publisher;
use crate::secret::SecretString;
use crate::source::{AwsSource, DevSource, FetchError, Source};
use crate::store::Store;

/// Where a generated token is published, beside the secrets.
pub const TOKEN_FILE: &str = ".token";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
    #[error(transparent)]
    Aws(#[from] source::aws::SetupError),
    #[error("--dev-secrets: {0}")]
    DevSecrets(FetchError),
    #[error("--dev-secrets: key {0:?} is not a valid secret name")]
    DevName(String),
    #[error("--dev-secrets: cannot watch the file: {0}")]
    DevWatch(#[from] notify::Error),
    #[error(transparent)]
    OnChange(#[from] actions::UnknownName),
    #[error("cannot generate a token: no OS random source ({0})")]
    Random(getrandom::Error),
    /// A template's variables checked against the secrets of a `--dev-secrets` file: a configuration
    /// error (exit 2), found before anything is published.
    #[error(transparent)]
    Template(#[from] template::TemplateError),
}

/// Runs the sidecar until `shutdown` resolves, serving HTTP on `listener`.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let publisher = Publisher::new(config.output_dir.clone(), config.file);
    // Blocking, but once and before anything else runs.
    let removed = publisher.prepare()?;
    if removed > 0 {
        tracing::info!(removed, dir = %config.output_dir.display(), "removed temp files left by an earlier run");
    }
    publisher.check_writable()?;

    let mut secrets = config.secrets.clone();
    let mut signer = None;
    let source = match &config.source {
        SourceConfig::Aws { endpoint_url } => {
            let sdk = source::aws::sdk_config(endpoint_url.as_deref()).await?;
            if !config.rds_iam.is_empty() {
                let credentials = sdk.credentials_provider().ok_or(source::aws::SetupError::NoCredentials)?;
                let default_region = sdk.region().map(|r| r.to_string()).ok_or(source::aws::SetupError::NoRegion)?;
                signer = Some(tokens::Signer { credentials, default_region });
            }
            Source::Aws(AwsSource::from_sdk(&sdk))
        }
        SourceConfig::Dev { path } => {
            let dev = DevSource::new(path.clone());
            if secrets.is_empty() {
                secrets = dev_specs(&dev)?;
            }
            tracing::warn!(file = %path.display(), "serving secrets from a local dev file, not Secrets Manager");
            Source::Dev(dev)
        }
    };

    let token = match &config.token {
        TokenSetting::Given(t) => Some(t.clone()),
        TokenSetting::Generate => {
            let token = generate_token().map_err(RunError::Random)?;
            let (p, t) = (publisher.clone(), token.clone());
            tokio::task::spawn_blocking(move || p.publish(TOKEN_FILE, t.expose().as_bytes()))
                .await
                .expect("token publish does not panic")?;
            Some(token)
        }
        TokenSetting::Disabled => {
            tracing::warn!("--no-token: /v1/ is served without a token; for local experiments only");
            None
        }
    };

    // rds-iam:// entries are served like secrets: the store and HTTP see them under their names.
    let mut served = secrets.clone();
    served.extend(config.rds_iam.iter().map(tokens::store_spec));
    // Checked again here: with --dev-secrets alone, the secret names come from the file.
    let names: Vec<String> = served.iter().map(|s| s.name.clone()).collect();
    let templates =
        config.templates.iter().map(|t| Ok((t.clone(), t.inputs(&names)?))).collect::<Result<Vec<_>, RunError>>()?;
    served.extend(config.templates.iter().map(|t| t.store_spec()));
    let store = Arc::new(Store::new(&served));
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let poller = Poller::start(
        source,
        store.clone(),
        publisher.clone(),
        Timing::from_config(&config),
        &secrets,
        &tracker,
        cancel.clone(),
    );
    let poller = match signer {
        Some(signer) => {
            let channels = tokens::start(
                &config.rds_iam,
                signer,
                config.rds_iam_renew_interval,
                store.clone(),
                publisher.clone(),
                poller.metrics_handle(),
                &tracker,
                cancel.clone(),
            );
            poller.with_tokens(channels)
        }
        None => poller,
    };

    template::start(templates, store.clone(), publisher.clone(), poller.metrics_handle(), &tracker, cancel.clone());

    // Kept alive for the whole run: dropping the watcher stops it.
    let _watcher = match &config.source {
        SourceConfig::Dev { path } => {
            let p = poller.clone();
            Some(source::dev::watch(path, move || p.wake_all())?)
        }
        SourceConfig::Aws { .. } => None,
    };

    // After the pollers: an action's first look at the counters may already see the initial publish.
    actions::start(&config.on_change, &store, poller.metrics_handle(), &tracker, cancel.clone())?;

    let state = http::AppState { store, poller, token: token.map(Arc::new), max_staleness: config.max_staleness };
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(listen = %addr, secrets = served.len() - config.templates.len(), templates = config.templates.len(),
        dir = %config.output_dir.display(), "secrets-sidecar started");
    tracker.spawn(edge::serve(listener, http::app(state), edge::Limits::default(), cancel.clone()));

    shutdown.await;
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(shutdown::GRACE, tracker.wait()).await.is_err() {
        tracing::warn!("tasks still running after the grace period; exiting anyway");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Without `--secret`, a dev run serves every key of the file as a json secret of the same name.
fn dev_specs(dev: &DevSource) -> Result<Vec<SecretSpec>, RunError> {
    dev.names()
        .map_err(RunError::DevSecrets)?
        .into_iter()
        .map(|name| {
            if valid_name(&name) {
                Ok(SecretSpec { secret_id: name.clone(), name, format: Format::Json })
            } else {
                Err(RunError::DevName(name))
            }
        })
        .collect()
}

/// 32 bytes from the OS's CSPRNG, hex-encoded.
fn generate_token() -> Result<SecretString, getrandom::Error> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut())?;
    Ok(SecretString::from(hex::encode(bytes.as_ref())))
}
