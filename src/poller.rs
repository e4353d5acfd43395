//! The poller: one task per secret that owns everything about checking it — its schedule, its mode
//! (`DescribeSecret` or get-only), the versions it knows — and is the only writer of that secret's files
//! and of its entry in the [`Store`], which is a read-only view for HTTP and health.
//!
//! A check is `DescribeSecret`, then `GetSecretValue` by `VersionId` only when the version carrying
//! `AWSCURRENT` moved — one cheap call per interval in the common case, the loop the AWS caching clients and
//! the CSI provider use. Where `DescribeSecret` is denied, the secret falls back, with a warning, to
//! `GetSecretValue(VersionStage=AWSCURRENT)` each interval and compares `VersionId`s, and asks
//! `DescribeSecret` again every [`DESCRIBE_REPROBE_INTERVAL`], so fixing the policy needs no restart.
//! Refused credentials (an unknown or expired key) are a failure like a timeout and never change the mode.
//!
//! When to look again is [`crate::schedule`]'s decision; this module only reports what happened.
//!
//! A forced check ([`Poller::refresh_now`], behind `POST /v1/secrets/NAME/refresh`) is a message to the
//! secret's task with a reply channel. The task runs the check, so a client that hangs up (or an HTTP
//! timeout) only stops the waiting: the check finishes, and its file and store updates happen together.
//! Callers that arrive while a forced check is running join it and share its answer; callers that arrive
//! during a regular check are served by a check of their own right after it (that check began before they
//! asked); callers inside `--min-refresh-gap` get the current metadata at once. Checks of one secret never
//! overlap.
//!
//! Publishing a new `AWSCURRENT` writes the file, then the store, inside one blocking task: once the rename
//! has started, nothing can stop the store update, so HTTP never serves a version the file does not have
//! and readiness means "the file exists" (issue 8).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::unit_random;
use crate::config::{Format, SecretSpec};
use crate::metrics::{CheckResult, Metrics};
use crate::publish::{Outcome, PublishError, Publisher};
pub use crate::schedule::Timing;
use crate::schedule::{Checked, Failure, Forced, Schedule};
use crate::secret::SecretValue;
use crate::source::{FetchError, Fetched, Operation, Source};
use crate::store::{self, Store, Version, View};

/// How often a secret in get-only mode asks `DescribeSecret` again, to notice a fixed policy.
pub const DESCRIBE_REPROBE_INTERVAL: Duration = Duration::from_secs(3600);
/// First checks running at once at start-up. Every secret's first check used to start at the same
/// moment: with 200 secrets that peak (200 requests and responses in flight) set the idle RSS for the
/// life of the process, 18.6 MiB against 10.9 with a cap of 4 (issue 11). Four keeps start → ready
/// within a round trip or two for the usual handful of secrets.
pub const STARTUP_CONCURRENCY: usize = 4;
/// Forced refreshes queued per secret before callers wait to enqueue.
const QUEUE: usize = 64;

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The value is unusable for the secret's format; the text names the version, never the content.
    #[error("version {version_id} rejected: {reason}")]
    Invalid { version_id: String, reason: String },
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("the poller is shutting down")]
    Stopped,
    /// Signing an `rds-iam://` token failed ([`crate::tokens`]); the text names no credential.
    #[error("{0}")]
    Token(String),
}

impl CheckError {
    /// How the schedule retries this failure: a file that could not be written (a full disk) or a
    /// transient fetch error soon, a denial or an invalid value at the next interval.
    fn failure(&self) -> Failure {
        match self {
            CheckError::Fetch(e) if e.is_transient() => Failure::Transient,
            CheckError::Publish(_) | CheckError::Stopped | CheckError::Token(_) => Failure::Transient,
            CheckError::Fetch(_) | CheckError::Invalid { .. } => Failure::Permanent,
        }
    }
}

/// The answer to a forced refresh, and what a check reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RefreshReport {
    pub name: String,
    pub version_id: Option<String>,
    /// Whether this call published a new `AWSCURRENT` version.
    pub changed: bool,
    /// False when the call fell inside `--min-refresh-gap` and the source was not asked.
    pub fetched: bool,
    pub rotation_in_progress: bool,
    /// The pending version served at `?stage=AWSPENDING`, if it could be read.
    pub pending_version_id: Option<String>,
}

/// What a forced refresh answers; every caller sharing a check gets the same one.
pub type RefreshAnswer = Result<RefreshReport, Arc<CheckError>>;

pub(crate) enum Command {
    /// A client's forced check.
    Refresh(oneshot::Sender<RefreshAnswer>),
    /// Check now, no gap (a dev-file edit).
    Wake,
}

/// The handle to every secret's task.
#[derive(Clone)]
pub struct Poller {
    secrets: Arc<HashMap<String, mpsc::Sender<Command>>>,
    metrics: Arc<Metrics>,
}

struct Shared {
    source: Source,
    store: Arc<Store>,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    /// Permits for first checks ([`STARTUP_CONCURRENCY`]).
    startup: Arc<Semaphore>,
}

impl Poller {
    /// Starts one task per secret on `tracker`; each stops when `cancel` fires. The first checks run at
    /// once and concurrently, so start-up takes one round trip, not one per secret.
    pub fn start(
        source: Source,
        store: Arc<Store>,
        publisher: Publisher,
        timing: Timing,
        specs: &[SecretSpec],
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        Self::start_with_jitter(source, store, publisher, timing, specs, tracker, cancel, unit_random)
    }

    /// [`Poller::start`] with a chosen jitter draw, so tests can count checks exactly.
    #[allow(clippy::too_many_arguments)]
    pub fn start_with_jitter(
        source: Source,
        store: Arc<Store>,
        publisher: Publisher,
        timing: Timing,
        specs: &[SecretSpec],
        tracker: &TaskTracker,
        cancel: CancellationToken,
        jitter: fn() -> f64,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let startup = Arc::new(Semaphore::new(STARTUP_CONCURRENCY));
        let shared = Arc::new(Shared { source, store, publisher, metrics: metrics.clone(), startup });
        let now = Instant::now();
        let secrets = specs
            .iter()
            .map(|spec| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let task = SecretTask::new(spec.clone(), shared.clone(), Schedule::new(timing, now, Box::new(jitter)));
                tracker.spawn(task.run(rx, cancel.clone()));
                (spec.name.clone(), tx)
            })
            .collect();
        Poller { secrets: Arc::new(secrets), metrics }
    }

    /// Routes forced refreshes of `rds-iam://` entries to their tasks ([`crate::tokens`]) as well.
    pub(crate) fn with_tokens(self, tokens: HashMap<String, mpsc::Sender<Command>>) -> Self {
        let mut secrets = (*self.secrets).clone();
        secrets.extend(tokens);
        Poller { secrets: Arc::new(secrets), metrics: self.metrics }
    }

    /// The metrics every task records into (token tasks share them).
    pub fn metrics_handle(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// What the checks so far counted, for `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Makes every secret check now (used by the dev-file watcher, from its own thread).
    pub fn wake_all(&self) {
        for tx in self.secrets.values() {
            // A full queue already holds a check.
            let _ = tx.try_send(Command::Wake);
        }
    }

    /// A check forced by a client. `None` for an unknown name. Dropping the future only stops waiting:
    /// the check runs to its end in the secret's task.
    pub async fn refresh_now(&self, name: &str) -> Option<RefreshAnswer> {
        let tx = self.secrets.get(name)?;
        let (reply, answer) = oneshot::channel();
        if tx.send(Command::Refresh(reply)).await.is_err() {
            return Some(Err(Arc::new(CheckError::Stopped)));
        }
        Some(answer.await.unwrap_or_else(|_| Err(Arc::new(CheckError::Stopped))))
    }
}

/// How a secret is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `DescribeSecret` each check, `GetSecretValue` only on a new version.
    Describe,
    /// `DescribeSecret` was denied: `GetSecretValue(AWSCURRENT)` each check, and `DescribeSecret` again at
    /// `reprobe_at`.
    GetOnly { reprobe_at: Instant },
}

/// What is known of the version carrying `AWSPENDING` (on a version other than `AWSCURRENT`).
enum Pending {
    None,
    /// Fetched and valid: served at `?stage=AWSPENDING`, never written to disk.
    Served(Arc<Version>),
    /// Unreadable or invalid for good (a failed rotation can leave `AWSPENDING` on a version with no
    /// value): remembered, not fetched again while it stays pending.
    Unusable {
        id: String,
    },
    /// A transient failure fetching it: tried again at the next check.
    Unread {
        id: String,
    },
}

impl Pending {
    fn id(&self) -> Option<&str> {
        match self {
            Pending::None => None,
            Pending::Served(v) => Some(&v.id),
            Pending::Unusable { id } | Pending::Unread { id } => Some(id),
        }
    }

    /// A rotation is in progress whether or not its value could be read: that is exactly the broken
    /// rotation worth watching closely.
    fn in_progress(&self) -> bool {
        !matches!(self, Pending::None)
    }

    fn served(&self) -> Option<&Arc<Version>> {
        match self {
            Pending::Served(v) => Some(v),
            _ => None,
        }
    }
}

/// One secret's task and everything it owns.
struct SecretTask {
    spec: SecretSpec,
    shared: Arc<Shared>,
    schedule: Schedule,
    mode: Mode,
    /// The version published to the file and the store.
    current: Option<Arc<Version>>,
    /// A version whose value was rejected, with the reason, so it is not fetched again every check.
    rejected: Option<(String, String)>,
    pending: Pending,
    /// Whether the first check has run (it takes a start-up permit).
    checked_once: bool,
}

impl SecretTask {
    fn new(spec: SecretSpec, shared: Arc<Shared>, schedule: Schedule) -> Self {
        SecretTask {
            spec,
            shared,
            schedule,
            mode: Mode::Describe,
            current: None,
            rejected: None,
            pending: Pending::None,
            checked_once: false,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>, cancel: CancellationToken) {
        let (shared, name) = (self.shared.clone(), self.spec.name.clone());
        // Callers who arrived during a regular check: it began before they asked, so its answer may predate
        // what made them ask. They are served next, as if they had just arrived.
        let mut queued: Vec<oneshot::Sender<RefreshAnswer>> = Vec::new();
        loop {
            let mut waiters = Vec::new();
            if !queued.is_empty() {
                waiters = std::mem::take(&mut queued);
                if !self.admit(&mut waiters) {
                    continue;
                }
            } else {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep_until(self.schedule.deadline()) => {}
                    msg = rx.recv() => match msg {
                        None => return,
                        Some(Command::Wake) => self.schedule.wake(Instant::now()),
                        Some(Command::Refresh(reply)) => {
                            waiters.push(reply);
                            if !self.admit(&mut waiters) {
                                continue;
                            }
                        }
                    },
                }
                if waiters.is_empty() && self.schedule.deadline() > Instant::now() {
                    continue;
                }
            }

            // The check runs here, in the task, so nobody outside can cancel it half-way. Callers who
            // arrive during a forced check share it: they are the same burst of failing logins.
            let forced = !waiters.is_empty();
            let mut wake_again = false;
            // Only the first check of each secret waits for a start-up permit (held until it ends).
            let _permit = if self.checked_once {
                None
            } else {
                tokio::select! {
                    p = shared.startup.clone().acquire_owned() => p.ok(),
                    () = cancel.cancelled() => return,
                }
            };
            self.checked_once = true;
            let result = {
                // Boxed: a check (up to three SDK calls) is an 11 KiB future, and inline it would make every
                // idle secret's task that big for good — 2.2 MiB of resident memory with 200 secrets. Boxed,
                // it exists only while a check runs (issue 11).
                let mut check = Box::pin(self.check());
                loop {
                    tokio::select! {
                        r = &mut check => break r,
                        // Shutdown may drop a check; a publish in flight still completes (see the module doc).
                        () = cancel.cancelled() => return,
                        Some(msg) = rx.recv() => match msg {
                            Command::Wake => wake_again = true,
                            Command::Refresh(reply) if forced => {
                                shared.metrics.forced(&name, true);
                                waiters.push(reply);
                            }
                            Command::Refresh(reply) => queued.push(reply),
                        },
                    }
                }
            };
            let answer = self.record(Instant::now(), forced, result);
            for waiter in waiters {
                // A caller that gave up has dropped its receiver; the check counted all the same.
                let _ = waiter.send(answer.clone());
            }
            if wake_again {
                self.schedule.wake(Instant::now());
            }
        }
    }

    /// Asks the schedule whether `waiters`, forced refreshes arriving now, may check. If not (inside
    /// `--min-refresh-gap`), answers them at once with what is known, and returns false.
    fn admit(&mut self, waiters: &mut Vec<oneshot::Sender<RefreshAnswer>>) -> bool {
        let allowed = self.schedule.force(Instant::now()) == Forced::Allowed;
        for _ in 0..waiters.len() {
            self.shared.metrics.forced(&self.spec.name, allowed);
        }
        if !allowed {
            let report = self.report(false, false);
            for waiter in waiters.drain(..) {
                let _ = waiter.send(Ok(report.clone()));
            }
        }
        allowed
    }

    /// Bookkeeping after every check, forced or not: metrics, logs, the schedule, and the store's view.
    fn record(&mut self, now: Instant, forced: bool, result: Result<bool, CheckError>) -> RefreshAnswer {
        let name = &self.spec.name;
        let metrics = &self.shared.metrics;
        let rotation_in_progress = self.pending.in_progress();
        let answer = match result {
            Ok(changed) => {
                metrics.check(name, if changed { CheckResult::changed } else { CheckResult::unchanged });
                metrics.success(name, SystemTime::now(), rotation_in_progress);
                self.schedule.checked(now, Checked { changed, rotation_in_progress, forced });
                Ok(self.report(changed, true))
            }
            Err(err) => {
                metrics.check(name, CheckResult::error);
                let retry_in = self.schedule.failed(now, err.failure());
                tracing::warn!(secret = %name, secret_id = %self.spec.secret_id, error = %err,
                    retry_in = %humantime::format_duration(Duration::from_secs(retry_in.as_secs().max(1))),
                    "refresh failed; keeping the last good value");
                Err(Arc::new(err))
            }
        };
        let view = View {
            mode: match self.mode {
                Mode::Describe => store::Mode::Describe,
                Mode::GetOnly { .. } => store::Mode::GetOnly,
            },
            pending: self.pending.served().cloned(),
            rotation_in_progress,
        };
        let error = answer.as_ref().err().map(|e| e.to_string());
        self.shared.store.update(name, |s| {
            s.view = view;
            match error {
                None => {
                    s.last_success = Some((now, SystemTime::now()));
                    s.last_error = None;
                }
                Some(e) => s.last_error = Some(e),
            }
        });
        answer
    }

    fn report(&self, changed: bool, fetched: bool) -> RefreshReport {
        RefreshReport {
            name: self.spec.name.clone(),
            version_id: self.current.as_ref().map(|v| v.id.clone()),
            changed,
            fetched,
            rotation_in_progress: self.pending.in_progress(),
            pending_version_id: self.pending.served().map(|v| v.id.clone()),
        }
    }

    /// Awaits one source call, counting it (a dev-file read counts as the call it stands in for).
    async fn counted<T>(&self, op: Operation, call: impl Future<Output = T>) -> T {
        self.shared.metrics.api_call(&self.spec.name, op);
        call.await
    }

    /// One check. `Ok(true)` when a new `AWSCURRENT` version was published.
    async fn check(&mut self) -> Result<bool, CheckError> {
        let now = Instant::now();
        let describe = match self.mode {
            Mode::Describe => true,
            Mode::GetOnly { reprobe_at } => now >= reprobe_at,
        };
        if describe {
            let spec = &self.spec;
            match self.counted(Operation::DescribeSecret, self.shared.source.describe(spec)).await {
                Ok(labels) => {
                    if let Mode::GetOnly { .. } = self.mode {
                        tracing::info!(secret = %spec.name, "DescribeSecret is allowed again: rotations in progress \
                            are seen again");
                        self.mode = Mode::Describe;
                    }
                    let changed = if self.current.as_ref().is_some_and(|v| v.id == labels.current) {
                        false
                    } else if let Some((v, reason)) = &self.rejected
                        && *v == labels.current
                    {
                        return Err(CheckError::Invalid { version_id: v.clone(), reason: reason.clone() });
                    } else {
                        let get = self.shared.source.get_version(spec, &labels.current);
                        let fetched = self.counted(Operation::GetSecretValue, get).await?;
                        self.publish_current(fetched).await?;
                        true
                    };
                    self.track_pending(labels.pending).await;
                    return Ok(changed);
                }
                Err(FetchError::AccessDenied { operation: Operation::DescribeSecret }) => {
                    if self.mode == Mode::Describe {
                        tracing::warn!(secret = %spec.name, secret_id = %spec.secret_id,
                            "DescribeSecret is denied: falling back to GetSecretValue(AWSCURRENT) every interval; \
                             rotations in progress cannot be seen until it is allowed (asked again every {}; \
                             grant secretsmanager:DescribeSecret to fix)",
                            humantime::format_duration(DESCRIBE_REPROBE_INTERVAL));
                    }
                    self.mode = Mode::GetOnly { reprobe_at: now + DESCRIBE_REPROBE_INTERVAL };
                    self.pending = Pending::None;
                }
                // A re-probe that fails for another reason says nothing about the policy: the value is
                // still read the get-only way, and the next check asks again.
                Err(e) if matches!(self.mode, Mode::GetOnly { .. }) => {
                    tracing::debug!(secret = %spec.name, error = %e, "DescribeSecret re-probe failed");
                }
                Err(e) => return Err(e.into()),
            }
        }

        let get = self.shared.source.get_current(&self.spec);
        let fetched = self.counted(Operation::GetSecretValue, get).await?;
        if self.current.as_ref().is_some_and(|v| v.id == fetched.version_id) {
            return Ok(false);
        }
        self.publish_current(fetched).await?;
        Ok(true)
    }

    /// Validates and publishes a new current version: the file, then the store, as one step.
    async fn publish_current(&mut self, fetched: Fetched) -> Result<(), CheckError> {
        let spec = &self.spec;
        let rendered = match validate(spec.format, &fetched) {
            Ok(rendered) => rendered,
            Err(reason) => {
                self.rejected = Some((fetched.version_id.clone(), reason.clone()));
                return Err(CheckError::Invalid { version_id: fetched.version_id, reason });
            }
        };
        self.rejected = None;
        let version = Arc::new(Version::new(fetched.version_id, fetched.value, SystemTime::now()));
        let (publisher, store, file_name, name, v) = (
            self.shared.publisher.clone(),
            self.shared.store.clone(),
            spec.file_name(),
            spec.name.clone(),
            version.clone(),
        );
        // One blocking task for both: a blocking task runs to its end even if this future is dropped, so
        // the store can never lag behind the file (issue 8: a torn forced refresh).
        let outcome = tokio::task::spawn_blocking(move || {
            // The publisher leaves a file alone when its bytes are already these, so a new version whose
            // rendered file is byte-identical (format=env: the same keys and values) does not touch it.
            let content = rendered.as_ref().unwrap_or(&v.value);
            let outcome = publisher.publish(&file_name, content.expose())?;
            store.update(&name, |s| s.current = Some(v));
            // After the file and the store: a listener that wakes reads both new.
            store.changes().published(&name, outcome);
            Ok::<_, PublishError>(outcome)
        })
        .await
        .expect("publish task does not panic")?;
        tracing::info!(secret = %spec.name, version = %version.id,
            file = %self.shared.publisher.dir().join(spec.file_name()).display(),
            unchanged_on_disk = (outcome == Outcome::Unchanged), "published new version");
        self.current = Some(version);
        Ok(())
    }

    /// Keeps the pending value in memory while a rotation is under way; it never goes to disk. A version
    /// already served or known to be unusable is not fetched again.
    async fn track_pending(&mut self, pending: Option<String>) {
        let spec = &self.spec;
        let next = match pending {
            None => Pending::None,
            Some(id)
                if self.pending.id() == Some(id.as_str())
                    && matches!(self.pending, Pending::Served(_) | Pending::Unusable { .. }) =>
            {
                return;
            }
            Some(id) => {
                let get = self.shared.source.get_version(spec, &id);
                match self.counted(Operation::GetSecretValue, get).await {
                    Ok(f) => match validate(spec.format, &f) {
                        Ok(_) => Pending::Served(Arc::new(Version::new(f.version_id, f.value, SystemTime::now()))),
                        Err(reason) => {
                            tracing::warn!(secret = %spec.name, version = %id, %reason,
                                "pending version not served; not fetched again while it stays pending");
                            Pending::Unusable { id }
                        }
                    },
                    Err(e) if e.is_transient() => {
                        tracing::warn!(secret = %spec.name, version = %id, error = %e,
                            "pending version not readable now; trying again at the next check");
                        Pending::Unread { id }
                    }
                    Err(e) => {
                        // A failed rotation can leave AWSPENDING on a version with no value.
                        tracing::warn!(secret = %spec.name, version = %id, error = %e,
                            "pending version not readable; not fetched again while it stays pending");
                        Pending::Unusable { id }
                    }
                }
            }
        };
        match (self.pending.in_progress(), next.in_progress()) {
            (false, true) => tracing::info!(secret = %spec.name, pending_version = ?next.id(),
                "rotation in progress: polling fast"),
            (true, false) => tracing::info!(secret = %spec.name,
                version = ?self.current.as_ref().map(|v| &v.id), "rotation finished"),
            _ => {}
        }
        self.pending = next;
    }
}

/// What a format requires of a value, and the file's content when it is not the value itself (the
/// rendered dotenv file of `format=env`). The reason names no content.
fn validate(format: Format, fetched: &Fetched) -> Result<Option<SecretValue>, String> {
    match format {
        // A secret is never a template (a `--template` is rendered by [`crate::template`], not polled).
        Format::Raw | Format::Template => Ok(None),
        Format::Json | Format::Env if fetched.binary => Err("SecretBinary needs format=raw".into()),
        Format::Json | Format::Env => match serde_json::from_slice::<serde_json::Value>(fetched.value.expose()) {
            Ok(serde_json::Value::Object(object)) if format == Format::Env => {
                let text = crate::dotenv::render(&object).map_err(|e| e.to_string())?;
                Ok(Some(SecretValue::new(text.as_bytes().to_vec())))
            }
            Ok(serde_json::Value::Object(_)) => Ok(None),
            Ok(_) => Err("not a JSON object (use format=raw for other values)".into()),
            Err(e) => Err(format!("not valid JSON ({}:{})", e.line(), e.column())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileOptions;
    use crate::source::AwsSource;
    use aws_sdk_secretsmanager::Client;
    use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;
    use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueOutput;
    use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
    use aws_smithy_runtime_api::client::http::{
        HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
    };
    use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
    use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    const S: Duration = Duration::from_secs(1);

    fn fetched(v: &str, binary: bool) -> Fetched {
        Fetched { version_id: "v".into(), value: SecretValue::from(v.to_owned()), binary }
    }

    #[test]
    fn json_format_requires_an_object() {
        assert!(validate(Format::Json, &fetched(r#"{"a":1}"#, false)).is_ok());
        assert!(validate(Format::Json, &fetched("[1]", false)).is_err());
        assert!(validate(Format::Json, &fetched("hunter2", false)).unwrap_err().starts_with("not valid JSON"));
        assert!(validate(Format::Json, &fetched("{}", true)).is_err());
        assert!(validate(Format::Raw, &fetched("hunter2", false)).is_ok());
    }

    #[test]
    fn env_format_renders_an_object_and_rejects_what_it_cannot_write() {
        let rendered = validate(Format::Env, &fetched(r#"{"A":"x y","B":2}"#, false)).unwrap().unwrap();
        assert_eq!(rendered.expose(), b"A='x y'\nB=2\n");
        assert_eq!(validate(Format::Json, &fetched(r#"{"A":"x y"}"#, false)), Ok(None), "json is written as is");
        assert!(validate(Format::Env, &fetched("[1]", false)).unwrap_err().starts_with("not a JSON object"));
        assert!(validate(Format::Env, &fetched("{}", true)).is_err());
        let reason = validate(Format::Env, &fetched(r#"{"ok":"1","bad-key":"s3cr3t"}"#, false)).unwrap_err();
        assert_eq!(reason, r#"key "bad-key" is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"#);
        let reason = validate(Format::Env, &fetched(r#"{"K":"s3cr3t\nline"}"#, false)).unwrap_err();
        assert!(reason.starts_with(r#"the value of key "K" contains a line break"#), "{reason}");
        assert!(!reason.contains("s3cr3t"), "{reason}");
    }

    #[test]
    fn rejection_reason_never_quotes_the_value() {
        let reason = validate(Format::Json, &fetched("s3cr3t-not-json", false)).unwrap_err();
        assert!(!reason.contains("s3cr3t"), "{reason}");
    }

    /// A running poller over mocked Secrets Manager, with jitter fixed at its midpoint so that every wait
    /// is exactly its interval: 60 s, 2 s while polling fast, a 5 s gap.
    struct Harness {
        poller: Poller,
        store: Arc<Store>,
        dir: tempfile::TempDir,
        cancel: CancellationToken,
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.cancel.cancel();
        }
    }

    /// The mocks' HTTP client, answering each call `delay` later: a check that takes time.
    #[derive(Debug)]
    struct Slow {
        inner: SharedHttpClient,
        delay: Duration,
    }

    impl HttpClient for Slow {
        fn http_connector(&self, settings: &HttpConnectorSettings, rc: &RuntimeComponents) -> SharedHttpConnector {
            SharedHttpConnector::new(SlowConnector {
                inner: self.inner.http_connector(settings, rc),
                delay: self.delay,
            })
        }
    }

    #[derive(Debug)]
    struct SlowConnector {
        inner: SharedHttpConnector,
        delay: Duration,
    }

    impl HttpConnector for SlowConnector {
        fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
            let (inner, delay) = (self.inner.clone(), self.delay);
            HttpConnectorFuture::new(async move {
                tokio::time::sleep(delay).await;
                inner.call(request).await
            })
        }
    }

    impl Harness {
        fn start(rules: &[&Rule]) -> Harness {
            Self::start_with_delay(rules, Duration::ZERO)
        }

        /// Every Secrets Manager call takes `delay` (of paused time).
        fn start_with_delay(rules: &[&Rule], delay: Duration) -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let slow = move |c: aws_sdk_secretsmanager::config::Builder| {
                c.http_client(Slow { inner: aws_smithy_mocks::create_mock_http_client(), delay })
            };
            let client: Client = mock_client!(aws_sdk_secretsmanager, RuleMode::MatchAny, rules, slow);
            let spec = SecretSpec { name: "db".into(), secret_id: "prod/db".into(), format: Format::Json };
            let store = Arc::new(Store::new(std::slice::from_ref(&spec)));
            let publisher = Publisher::new(dir.path().to_path_buf(), FileOptions { mode: 0o440, uid: None, gid: None });
            let timing = Timing { refresh_interval: 60 * S, rotation_poll_interval: 2 * S, min_refresh_gap: 5 * S };
            let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
            let source = Source::Aws(AwsSource::from_client(client));
            let poller = Poller::start_with_jitter(
                source,
                store.clone(),
                publisher,
                timing,
                &[spec],
                &tracker,
                cancel.clone(),
                || 0.5,
            );
            Harness { poller, store, dir, cancel }
        }

        fn state(&self) -> crate::store::SecretState {
            self.store.get("db").unwrap()
        }

        fn file(&self) -> Option<Vec<u8>> {
            std::fs::read(self.dir.path().join("db.json")).ok()
        }
    }

    /// Sleeps until `secs` seconds after the harness started (paused time; checks take no time).
    async fn at(t0: Instant, secs: f64) {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(secs)).await;
    }

    fn describe(current: &'static str, pending: Option<&'static str>) -> DescribeSecretOutput {
        let mut b = DescribeSecretOutput::builder().version_ids_to_stages(current, vec!["AWSCURRENT".into()]);
        if let Some(p) = pending {
            b = b.version_ids_to_stages(p, vec!["AWSPENDING".into()]);
        }
        b.build()
    }

    fn describes(current: &'static str, pending: Option<&'static str>) -> Rule {
        mock!(Client::describe_secret).then_output(move || describe(current, pending))
    }

    fn get_version(id: &'static str, value: &'static str) -> Rule {
        mock!(Client::get_secret_value)
            .match_requests(move |r| r.version_id() == Some(id))
            .then_output(move || GetSecretValueOutput::builder().version_id(id).secret_string(value).build())
    }

    /// An error as Secrets Manager sends it on the wire.
    fn aws_error(code: &'static str) -> impl Fn() -> HttpResponse + Send + Sync + 'static {
        move || {
            HttpResponse::new(
                StatusCode::try_from(400).unwrap(),
                SdkBody::from(format!(r#"{{"__type":"{code}","message":"no"}}"#)),
            )
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unchanged_version_costs_one_describe_and_no_get() {
        let (d, g) = (describes("v1", None), get_version("v1", r#"{"password":"a"}"#));
        let h = Harness::start(&[&d, &g]);
        let t0 = Instant::now();
        at(t0, 61.0).await;
        assert_eq!((d.num_calls(), g.num_calls()), (2, 1));
        let metrics = h.poller.metrics().encode();
        for line in [
            r#"secrets_sidecar_api_calls_total{secret="db",operation="DescribeSecret"} 2"#,
            r#"secrets_sidecar_api_calls_total{secret="db",operation="GetSecretValue"} 1"#,
            r#"secrets_sidecar_checks_total{secret="db",result="changed"} 1"#,
            r#"secrets_sidecar_checks_total{secret="db",result="unchanged"} 1"#,
        ] {
            assert!(metrics.lines().any(|l| l == line), "missing {line:?} in:\n{metrics}");
        }
        assert_eq!(h.state().current.unwrap().id, "v1");
        assert_eq!(h.file().unwrap(), br#"{"password":"a"}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn steady_state_polls_exactly_once_per_interval() {
        let (d, g) = (describes("v1", None), get_version("v1", r#"{"password":"a"}"#));
        let _h = Harness::start(&[&d, &g]);
        let t0 = Instant::now();
        at(t0, 3600.5).await;
        assert_eq!(d.num_calls(), 61, "at 0, 60, …, 3600 s");
        assert_eq!(g.num_calls(), 1, "GetSecretValue only for the first version");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_forced_refreshes_share_one_check() {
        let (d, g) = (describes("v1", None), get_version("v1", r#"{"password":"a"}"#));
        let h = Harness::start(&[&d, &g]);
        at(Instant::now(), 10.0).await;
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let p = h.poller.clone();
                tokio::spawn(async move { p.refresh_now("db").await })
            })
            .collect();
        for c in calls {
            let r = c.await.unwrap().unwrap().unwrap();
            assert_eq!(r.version_id.as_deref(), Some("v1"));
        }
        assert_eq!((d.num_calls(), g.num_calls()), (2, 1), "the first check and one forced one");
        let metrics = h.poller.metrics().encode();
        let forced: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("secrets_sidecar_forced_refreshes_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(forced, 50, "{metrics}");
    }

    /// Issue 8: a forced check ran in the request's future, so a client hanging up could cancel it between
    /// the file's rename and the store update. Now the caller only stops waiting.
    #[tokio::test(start_paused = true)]
    async fn a_forced_refresh_whose_caller_gives_up_still_publishes_file_and_store_together() {
        let d = mock!(Client::describe_secret)
            .sequence()
            .output(|| describe("v1", None))
            .output(|| describe("v2", None))
            .repeatedly()
            .build();
        let (g1, g2) = (get_version("v1", r#"{"p":"1"}"#), get_version("v2", r#"{"p":"2"}"#));
        let h = Harness::start(&[&d, &g1, &g2]);
        let t0 = Instant::now();
        at(t0, 10.0).await;
        // Polled once (it sends the request), then dropped before any answer.
        let gave_up = tokio::time::timeout(Duration::ZERO, h.poller.refresh_now("db")).await;
        assert!(gave_up.is_err(), "the caller gave up before the answer");
        at(t0, 10.5).await;
        assert_eq!(h.state().current.unwrap().id, "v2");
        assert_eq!(h.file().unwrap(), br#"{"p":"2"}"#);
        assert_eq!(g2.num_calls(), 1);
    }

    /// A caller who arrives while a regular check is running does not take its answer: that check asked
    /// Secrets Manager before the caller's login failed. It gets a check of its own right after.
    #[tokio::test(start_paused = true)]
    async fn a_forced_refresh_during_a_regular_check_gets_a_check_of_its_own() {
        let d = mock!(Client::describe_secret)
            .sequence()
            .output(|| describe("v1", None))
            .times(2)
            .output(|| describe("v2", None))
            .repeatedly()
            .build();
        let (g1, g2) = (get_version("v1", r#"{"p":"1"}"#), get_version("v2", r#"{"p":"2"}"#));
        let h = Harness::start_with_delay(&[&d, &g1, &g2], S);
        let t0 = Instant::now();
        // Published at 2 s (two 1 s calls); the regular check starts at 62 s and answers v1 at 63 s.
        at(t0, 62.5).await;
        assert_eq!(d.num_calls(), 2, "the regular check is under way");
        let r = h.poller.refresh_now("db").await.unwrap().unwrap();
        assert_eq!((r.version_id.as_deref(), r.changed, r.fetched), (Some("v2"), true, true), "{r:?}");
        assert_eq!(d.num_calls(), 3);
    }

    /// Callers who arrive while a forced check is running share it: one API call for a burst.
    #[tokio::test(start_paused = true)]
    async fn forced_refreshes_during_a_forced_check_share_it() {
        let (d, g) = (describes("v1", None), get_version("v1", r#"{"password":"a"}"#));
        let h = Harness::start_with_delay(&[&d, &g], S);
        let t0 = Instant::now();
        at(t0, 10.0).await;
        let first = tokio::spawn({
            let p = h.poller.clone();
            async move { p.refresh_now("db").await }
        });
        at(t0, 10.5).await;
        let second = h.poller.refresh_now("db").await.unwrap().unwrap();
        let first = first.await.unwrap().unwrap().unwrap();
        assert_eq!(first, second, "one answer for both");
        assert!(second.fetched);
        assert_eq!(d.num_calls(), 2, "the first check and one forced one");
    }

    #[tokio::test(start_paused = true)]
    async fn pending_version_is_held_in_memory_and_not_written() {
        let d = describes("v1", Some("v2"));
        let (g1, g2) = (get_version("v1", r#"{"password":"old"}"#), get_version("v2", r#"{"password":"new"}"#));
        let h = Harness::start(&[&d, &g1, &g2]);
        let r = h.poller.refresh_now("db").await.unwrap().unwrap();
        assert!(r.rotation_in_progress);
        assert_eq!(r.pending_version_id.as_deref(), Some("v2"));
        assert_eq!(h.state().view.pending.unwrap().value.expose(), br#"{"password":"new"}"#);
        let names: Vec<_> = std::fs::read_dir(h.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["db.json"]);
        assert_eq!(h.file().unwrap(), br#"{"password":"old"}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_rotation_polls_fast_for_fifteen_minutes_then_at_the_normal_interval() {
        let d = describes("v1", Some("v2"));
        let (g1, g2) = (get_version("v1", r#"{"password":"old"}"#), get_version("v2", r#"{"password":"new"}"#));
        let _h = Harness::start(&[&d, &g1, &g2]);
        let t0 = Instant::now();
        at(t0, 600.5).await;
        assert_eq!(d.num_calls(), 301, "every 2 s from 0 to 600 s");
        at(t0, 900.5).await;
        assert_eq!(d.num_calls(), 451, "the check at 900 s is the last fast one's successor");
        at(t0, 1500.5).await;
        assert_eq!(d.num_calls(), 461, "then every 60 s: 960 … 1500");
        assert_eq!(g2.num_calls(), 1, "the pending value is fetched once");
    }

    /// Issue 8: an invalid or unreadable AWSPENDING version was fetched again on every check, and the
    /// rotation was not reported, so nothing polled fast during exactly the broken rotation.
    #[tokio::test(start_paused = true)]
    async fn a_bad_pending_version_is_remembered_and_still_counts_as_a_rotation() {
        for bad in [
            get_version("v2", "not json"),
            mock!(Client::get_secret_value)
                .match_requests(|r| r.version_id() == Some("v2"))
                .then_http_response(aws_error("DecryptionFailure")),
        ] {
            let d = describes("v1", Some("v2"));
            let g1 = get_version("v1", r#"{"a":1}"#);
            let h = Harness::start(&[&d, &g1, &bad]);
            let t0 = Instant::now();
            at(t0, 10.5).await;
            let view = h.state().view;
            assert!(view.rotation_in_progress && view.pending.is_none());
            assert_eq!(d.num_calls(), 6, "fast polling: 0, 2, …, 10 s");
            assert_eq!(bad.num_calls(), 1, "fetched once, then remembered");
            assert!(h.state().last_error.is_none(), "the current value is fine");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_denied_describe_falls_back_and_is_asked_again_every_hour() {
        let d = mock!(Client::describe_secret)
            .sequence()
            .http_response(aws_error("AccessDeniedException"))
            .times(2)
            .output(|| describe("v1", None))
            .repeatedly()
            .build();
        let current = mock!(Client::get_secret_value)
            .match_requests(|r| r.version_stage() == Some("AWSCURRENT"))
            .then_output(|| GetSecretValueOutput::builder().version_id("v1").secret_string(r#"{"a":1}"#).build());
        let h = Harness::start(&[&d, &current]);
        let t0 = Instant::now();
        at(t0, 0.5).await;
        assert_eq!(h.state().view.mode, crate::store::Mode::GetOnly);
        assert_eq!(h.state().current.unwrap().id, "v1");
        at(t0, 3599.5).await;
        assert_eq!(d.num_calls(), 1, "not asked again inside the hour");
        assert_eq!(current.num_calls(), 60);
        at(t0, 3600.5).await;
        assert_eq!((d.num_calls(), h.state().view.mode), (2, crate::store::Mode::GetOnly), "still denied");
        at(t0, 7200.5).await;
        assert_eq!((d.num_calls(), h.state().view.mode), (3, crate::store::Mode::Describe), "allowed again");
        let gets = current.num_calls();
        at(t0, 7260.5).await;
        assert_eq!((d.num_calls(), current.num_calls()), (4, gets), "back to one DescribeSecret per interval");
    }

    #[tokio::test(start_paused = true)]
    async fn a_re_probe_that_fails_otherwise_keeps_reading_the_get_only_way() {
        let d = mock!(Client::describe_secret)
            .sequence()
            .http_response(aws_error("AccessDeniedException"))
            .http_response(aws_error("UnrecognizedClientException"))
            .repeatedly()
            .build();
        let current = mock!(Client::get_secret_value)
            .match_requests(|r| r.version_stage() == Some("AWSCURRENT"))
            .then_output(|| GetSecretValueOutput::builder().version_id("v1").secret_string(r#"{"a":1}"#).build());
        let h = Harness::start(&[&d, &current]);
        let t0 = Instant::now();
        at(t0, 3660.5).await;
        let s = h.state();
        assert_eq!((d.num_calls(), current.num_calls()), (3, 62), "re-probes at 3600 and 3660 s, values every 60 s");
        assert_eq!(s.view.mode, crate::store::Mode::GetOnly);
        assert!(s.last_error.is_none(), "{:?}", s.last_error);
    }

    /// Issue 8: `UnrecognizedClientException` was mapped to AccessDenied, and one such answer switched the
    /// secret to get-only mode for the life of the process.
    #[tokio::test(start_paused = true)]
    async fn refused_credentials_are_retried_soon_and_never_change_the_mode() {
        let d = mock!(Client::describe_secret)
            .sequence()
            .http_response(aws_error("UnrecognizedClientException"))
            .output(|| describe("v1", None))
            .repeatedly()
            .build();
        let (g, current) = (
            get_version("v1", r#"{"a":1}"#),
            mock!(Client::get_secret_value)
                .match_requests(|r| r.version_stage() == Some("AWSCURRENT"))
                .then_output(|| GetSecretValueOutput::builder().version_id("v1").secret_string("{}").build()),
        );
        let h = Harness::start(&[&d, &g, &current]);
        let t0 = Instant::now();
        at(t0, 0.1).await;
        let s = h.state();
        assert_eq!(s.view.mode, crate::store::Mode::Describe);
        assert!(s.last_error.unwrap().contains("credentials refused"));
        at(t0, 0.9).await;
        assert_eq!(d.num_calls(), 2, "transient: retried after 0.75 s, not the 60 s interval");
        assert_eq!(current.num_calls(), 0, "no fallback");
        assert_eq!(h.state().current.unwrap().id, "v1");
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_wait_the_interval_and_transient_ones_back_off() {
        let missing = mock!(Client::describe_secret).then_http_response(aws_error("ResourceNotFoundException"));
        let h = Harness::start(&[&missing]);
        let t0 = Instant::now();
        at(t0, 59.5).await;
        assert_eq!(missing.num_calls(), 1, "a missing secret is not asked again every second");
        at(t0, 60.5).await;
        assert_eq!(missing.num_calls(), 2);
        drop(h);

        let refused = mock!(Client::describe_secret).then_http_response(aws_error("ExpiredTokenException"));
        let _h = Harness::start(&[&refused]);
        let t0 = Instant::now();
        // Backoff at the jitter's midpoint: 0.75, 1.5, 3, 6, 12, 24 s after each failure.
        at(t0, 47.0).await;
        assert_eq!(refused.num_calls(), 6, "at 0, 0.75, 2.25, 5.25, 11.25, 23.25 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_refused_inside_the_gap_is_checked_when_the_gap_ends() {
        let d = mock!(Client::describe_secret)
            .sequence()
            .output(|| describe("v1", None))
            .output(|| describe("v2", None))
            .repeatedly()
            .build();
        let (g1, g2) = (get_version("v1", r#"{"p":"1"}"#), get_version("v2", r#"{"p":"2"}"#));
        let h = Harness::start(&[&d, &g1, &g2]);
        let t0 = Instant::now();
        at(t0, 10.0).await;
        // Finds v2, so no suspicion: only the deferred check can run before 70 s.
        assert!(h.poller.refresh_now("db").await.unwrap().unwrap().changed);
        at(t0, 11.0).await;
        assert!(!h.poller.refresh_now("db").await.unwrap().unwrap().fetched, "inside the gap");
        at(t0, 14.9).await;
        assert_eq!(d.num_calls(), 2);
        at(t0, 15.1).await;
        assert_eq!(d.num_calls(), 3, "one deferred check when the gap ends");
        at(t0, 74.9).await;
        assert_eq!(d.num_calls(), 3, "then nothing until an interval after it");
        at(t0, 75.1).await;
        assert_eq!(d.num_calls(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_forced_refresh_that_finds_nothing_polls_fast_for_a_minute() {
        let (d, g) = (describes("v1", None), get_version("v1", r#"{"p":"1"}"#));
        let h = Harness::start(&[&d, &g]);
        let t0 = Instant::now();
        at(t0, 10.0).await;
        let r = h.poller.refresh_now("db").await.unwrap().unwrap();
        assert!(r.fetched && !r.changed);
        at(t0, 70.5).await;
        assert_eq!(d.num_calls(), 32, "0 s, the forced one at 10 s, then every 2 s: 12 … 70 s");
        at(t0, 129.5).await;
        assert_eq!(d.num_calls(), 32, "then the normal interval: next at 130 s");
        at(t0, 130.5).await;
        assert_eq!(d.num_calls(), 33);
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_value_keeps_last_good_and_is_not_refetched() {
        let d = mock!(Client::describe_secret)
            .sequence()
            .output(|| describe("v1", None))
            .output(|| describe("v2", None))
            .repeatedly()
            .build();
        let (g1, g2) = (get_version("v1", r#"{"a":1}"#), get_version("v2", "not json"));
        let h = Harness::start(&[&d, &g1, &g2]);
        let t0 = Instant::now();
        at(t0, 180.5).await;
        assert_eq!(d.num_calls(), 4, "a rejected value waits the interval");
        assert_eq!(g2.num_calls(), 1, "a rejected version is fetched once");
        let s = h.state();
        assert!(s.last_error.unwrap().contains("v2 rejected"));
        assert_eq!(s.current.unwrap().id, "v1");
        assert_eq!(h.file().unwrap(), br#"{"a":1}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn the_change_counter_rises_at_the_first_publish_and_then_only_when_the_bytes_change() {
        let d = mock!(Client::describe_secret)
            .sequence()
            .output(|| describe("v1", None))
            .output(|| describe("v2", None))
            .output(|| describe("v3", None))
            .repeatedly()
            .build();
        let (g1, g2, g3) =
            (get_version("v1", r#"{"a":1}"#), get_version("v2", r#"{"a":1}"#), get_version("v3", r#"{"a":2}"#));
        let h = Harness::start(&[&d, &g1, &g2, &g3]);
        let mut rx = h.store.changes().subscribe("db").unwrap();
        let t0 = Instant::now();
        at(t0, 0.5).await;
        assert_eq!(*rx.borrow_and_update(), 1, "the initial publish");
        at(t0, 60.5).await;
        assert_eq!(h.state().current.unwrap().id, "v2");
        assert!(!rx.has_changed().unwrap(), "v2 has v1's bytes: published, but not a change");
        at(t0, 120.5).await;
        assert_eq!(*rx.borrow_and_update(), 2);
        assert_eq!(h.file().unwrap(), br#"{"a":2}"#);
    }

    /// An idle secret costs its task's size for as long as the process runs: the check (SDK call futures of
    /// about 11 KiB) must not be part of it, or 200 secrets hold 2.2 MiB doing nothing (issue 11). Inline,
    /// as `std::pin::pin!(self.check())`, this task measured 11,400 bytes; boxed, 1,024.
    #[tokio::test]
    async fn an_idle_secret_task_is_small_because_its_check_is_boxed() {
        let client: Client = mock_client!(aws_sdk_secretsmanager, RuleMode::MatchAny, &[]);
        let dir = tempfile::tempdir().unwrap();
        let spec = SecretSpec { name: "db".into(), secret_id: "prod/db".into(), format: Format::Json };
        let shared = Arc::new(Shared {
            source: Source::Aws(AwsSource::from_client(client)),
            store: Arc::new(Store::new(std::slice::from_ref(&spec))),
            publisher: Publisher::new(dir.path().to_path_buf(), FileOptions { mode: 0o440, uid: None, gid: None }),
            metrics: Arc::new(Metrics::default()),
            startup: Arc::new(Semaphore::new(STARTUP_CONCURRENCY)),
        });
        let timing = Timing { refresh_interval: 60 * S, rotation_poll_interval: 2 * S, min_refresh_gap: 5 * S };
        let task = SecretTask::new(spec, shared, Schedule::new(timing, Instant::now(), Box::new(|| 0.5)));
        let (_tx, rx) = mpsc::channel(QUEUE);
        let run = task.run(rx, CancellationToken::new());
        let size = std::mem::size_of_val(&run);
        assert!(size <= 2048, "an idle secret task is {size} bytes");
    }
}
