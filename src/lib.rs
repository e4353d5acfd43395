//! secrets-sidecar keeps AWS Secrets Manager secrets current in files on a volume shared with the app
//! container, and on a localhost endpoint, so an app re-reads its database password whenever it opens a
//! connection and a rotation becomes a non-event.
//!
//! # Layout
//! Data flows one way — configuration → source → task → (file, store) → HTTP — and so do the imports:
//! each module uses only modules on the floors below it, never one beside or above it.
//!
//! ```text
//!  6  main  lib (run)                parse, wire, run
//!  5  config                         the command line, validated into a Config
//!  4  poller  tokens                 one task per entry: a secret's checks, a token's signings
//!     template  actions              renders and on-change actions, woken by change counters
//!     http                           the loopback face
//!  3  task                           the loop every checking task runs; the services a run shares
//!  2  publish                        the one publish step: file → store entry → change counter
//!     metrics  health                counters every part may bump; what healthy means
//!  1  store                          what HTTP reads: entries, versions, readiness
//!     source  schedule  failover     Secrets Manager, a dev file, the RDS IAM signer; when to check next;
//!                                    which Region a secret with a replica is read from
//!  0  entry  secret  dotenv          leaves: what an entry is, redacting value types, dotenv quoting,
//!     changes  refresh               change counters, the registry of task channels,
//!     backoff  percent  shutdown     backoff and jitter, percent-encoding, shutdown signals
//! ```
//!
//! - [`config`]: the command line and `SIDECAR_*` variables, validated into a [`config::Config`].
//! - `source`: where values come from — Secrets Manager (a client per Region a secret is read in: the
//!   SDK's, an ARN's, a replica's) or a dev file — and RDS IAM tokens, signed locally
//!   ([`source::rds_iam`]).
//! - `poller`: a Secrets Manager secret's checks; `tokens`: an `rds-iam://` entry's signings. Both run
//!   in `task`, one task per entry that owns its state and is the only writer of its file and store
//!   entry; forced refreshes are messages to it, sent through the `refresh` registry.
//! - `schedule`: when a secret is checked next, as a pure function of what happened to it; `failover`:
//!   whether a secret with a replica (`--failover-region`) is read in its own Region or its replica's, the
//!   same way.
//! - [`publish`]: atomic writes of files on the shared volume, and the step every producer publishes a
//!   version with — its file, then its store entry, then its change counter.
//! - `store`: what HTTP reads — every entry's published version (the bytes its file got) and its task's
//!   report — and the readiness latch; `changes`: the counters that renders and actions watch.
//! - [`template`]: `--template` files rendered from secrets with minijinja; `actions`: `--on-change`
//!   actions, an HTTP request to a loopback URL or a signal, fired once per (debounced) change.
//! - `http`: the token-protected `/v1/` API, `/healthz` and `/metrics`, served from the store; the `edge`
//!   crate (`edge/`) is the request path under it — the listener and the fast path in front of the
//!   router — which knows nothing of secrets.
//! - [`health`]: what healthy means, and the `healthcheck` probe; `metrics`: Prometheus text.
//! - [`entry`], [`secret`], [`dotenv`], `backoff`, `percent`, [`shutdown`]: the leaves.
//!
//! The facts about Secrets Manager and its emulator that this code relies on are in
//! `docs/secrets-manager.md`.

mod actions;
mod backoff;
mod changes;
pub mod config;
pub mod dotenv;
pub mod entry;
mod failover;
pub mod health;
mod http;
mod metrics;
mod percent;
mod poller;
pub mod publish;
mod refresh;
mod schedule;
pub mod secret;
pub mod shutdown;
pub mod source;
mod store;
mod task;
pub mod template;
mod tokens;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, SourceConfig, TokenSetting};
use crate::entry::{Format, SecretSpec, valid_name};
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::refresh::Refreshers;
use crate::secret::SecretString;
use crate::source::{AwsSource, DevSource, FetchError, Source};
use crate::store::{Kind, Store};
use crate::task::Services;

/// Where a generated token is published, beside the secrets.
pub const TOKEN_FILE: &str = ".token";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
    #[error(transparent)]
    Aws(#[from] source::SetupError),
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
    /// A failover Region that is the SDK's own: configuration, found only once the SDK's Region is known.
    #[error("secret {name:?}: the failover Region {region} is the Region the sidecar runs in (AWS_REGION)")]
    FailoverToOwnRegion { name: String, region: String },
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
            // Every Region a secret is read in gets a client: an ARN's own (Secrets Manager answers for a
            // secret only there), a replica's.
            let regions = secrets.iter().flat_map(|s| {
                let replica = s.replica.as_ref().map(|r| r.region.as_str());
                entry::arn_region(&s.secret_id).into_iter().chain(replica)
            });
            let aws = AwsSource::from_sdk(&sdk, regions).ok_or(source::aws::SetupError::NoRegion)?;
            // A secret given by name is read in the SDK's Region: its replica must be in another (an ARN's
            // was checked with the configuration).
            let same = secrets
                .iter()
                .find_map(|s| s.replica.as_ref().filter(|r| r.region == aws.region_of(&s.secret_id)).map(|r| (s, r)));
            if let Some((s, r)) = same {
                return Err(RunError::FailoverToOwnRegion { name: s.name.clone(), region: r.region.clone() });
            }
            Source::Aws(aws)
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

    // Every published name is a store entry: secrets, rds-iam:// tokens, templates.
    let mut entries: Vec<(String, Kind)> = secrets
        .iter()
        .map(|s| (s.name.clone(), Kind::Secret { secret_id: s.secret_id.clone(), format: s.format }))
        .collect();
    entries.extend(config.rds_iam.iter().map(|s| (s.name.clone(), Kind::RdsIam { target: s.target() })));
    // Checked again here: with --dev-secrets alone, the secret names come from the file.
    let names: Vec<String> = entries.iter().map(|(name, _)| name.clone()).collect();
    let templates =
        config.templates.iter().map(|t| Ok((t.clone(), t.inputs(&names)?))).collect::<Result<Vec<_>, RunError>>()?;
    entries
        .extend(config.templates.iter().map(|t| (t.spec.name.clone(), Kind::Template { path: t.spec.path.clone() })));

    let services = Services {
        store: Arc::new(Store::new(entries)),
        publisher,
        metrics: Arc::new(Metrics::default()),
        tracker: TaskTracker::new(),
        cancel: CancellationToken::new(),
    };
    let mut channels = poller::start(&services, source, config.timing(), config.failover_retry_interval, &secrets);
    if let Some(signer) = signer {
        channels.extend(tokens::start(&services, signer, config.rds_iam_renew_interval, &config.rds_iam));
    }
    let refreshers = Refreshers::new(channels);
    template::start(&services, templates);

    // Kept alive for the whole run: dropping the watcher stops it.
    let _watcher = match &config.source {
        SourceConfig::Dev { path } => {
            let r = refreshers.clone();
            Some(source::dev::watch(path, move || r.wake_all())?)
        }
        SourceConfig::Aws { .. } => None,
    };

    // After the producers: an action's first look at the counters may already see the initial publish.
    actions::start(&services, &config.on_change)?;

    let Services { store, metrics, tracker, cancel, .. } = services;
    let state =
        http::AppState { store, refreshers, metrics, token: token.map(Arc::new), max_staleness: config.max_staleness };
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(listen = %addr, secrets = names.len(), templates = config.templates.len(),
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
                Ok(SecretSpec::new(name.clone(), name, Format::Json))
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
