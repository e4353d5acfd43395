//! The poller: one task per secret that checks the source, publishes new versions to disk and to the
//! store, and decides when to look again. It is also the only way to force a check
//! ([`Poller::refresh_now`], behind `POST /v1/secrets/NAME/refresh`), so the HTTP layer never calls AWS itself.
//!
//! A check is `DescribeSecret`, then `GetSecretValue` by `VersionId` only when the version carrying
//! `AWSCURRENT` moved — one cheap call per interval in the common case, the loop the AWS caching clients and
//! the CSI provider use (DOMAIN.md §2). Where `DescribeSecret` is denied, the secret falls back, once and with
//! a warning, to `GetSecretValue(VersionStage=AWSCURRENT)` each interval and compares `VersionId`s.
//!
//! When to look again:
//! - normally after `--refresh-interval` ±10%;
//! - after a failure, with exponential backoff from about 1 s up to the refresh interval;
//! - while a rotation is under way (`AWSPENDING` on another version), every `--rotation-poll-interval`, for
//!   at most [`ROTATION_FAST_POLL_CAP`]: the single-user window ends when `finishSecret` moves `AWSCURRENT`,
//!   and that should reach the file within seconds, not a minute;
//! - after an app reported failing credentials and a forced check found nothing new, also every
//!   `--rotation-poll-interval` for [`SUSPECT_WINDOW`]: RDS-managed rotation does not document its order, and
//!   the app's failure is the best signal we have that something is about to move.
//!
//! Checks of one secret never overlap: the background loop and forced refreshes take the same lock, which is
//! also what makes a burst of forced refreshes share one API call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::{DEFAULT_BACKOFF_BASE, backoff, jittered, unit_random};
use crate::config::{Config, Format, ROTATION_FAST_POLL_CAP, SecretSpec};
use crate::metrics::{CheckResult, Metrics, Operation};
use crate::publish::{Outcome, PublishError, Publisher};
use crate::source::{FetchError, Fetched, Source};
use crate::store::{Mode, Store, Version};

/// How long an app's report of failing credentials keeps a secret on fast polling.
pub const SUSPECT_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub refresh_interval: Duration,
    pub rotation_poll_interval: Duration,
    pub min_refresh_gap: Duration,
}

impl Timing {
    pub fn from_config(config: &Config) -> Self {
        Timing {
            refresh_interval: config.refresh_interval,
            rotation_poll_interval: config.rotation_poll_interval,
            min_refresh_gap: config.min_refresh_gap,
        }
    }
}

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
    pub pending_version_id: Option<String>,
}

/// Per-secret check state, guarded by the lock that serialises checks.
struct CheckState {
    mode: Mode,
    last_check: Option<Instant>,
    last_forced: Option<Instant>,
    /// A version whose value was rejected, so it is not fetched again every interval.
    rejected: Option<(String, String)>,
    rotation_seen_at: Option<Instant>,
    suspect_until: Option<Instant>,
    failures: u32,
    /// The wait after the last check, drawn once so a reschedule does not re-roll the jitter.
    next_delay: Duration,
    /// A forced refresh refused inside `--min-refresh-gap` asks for one check when the gap ends.
    deferred_until: Option<Instant>,
}

impl CheckState {
    /// A rotation seen less than [`ROTATION_FAST_POLL_CAP`] ago, or an app's failure report within
    /// [`SUSPECT_WINDOW`], puts the secret on `--rotation-poll-interval`.
    fn fast_polling(&self, now: Instant) -> bool {
        self.rotation_seen_at.is_some_and(|t| now.duration_since(t) < ROTATION_FAST_POLL_CAP)
            || self.suspect_until.is_some_and(|t| now < t)
    }
}

struct SecretCtl {
    spec: SecretSpec,
    state: Mutex<CheckState>,
    /// Check now (a dev-file edit).
    check_now: Notify,
    /// The schedule changed (fast polling began); recompute the deadline without checking.
    reschedule: Notify,
}

struct Inner {
    source: Source,
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    publisher: Publisher,
    timing: Timing,
    secrets: HashMap<String, Arc<SecretCtl>>,
}

#[derive(Clone)]
pub struct Poller {
    inner: Arc<Inner>,
}

impl Poller {
    pub fn new(source: Source, store: Arc<Store>, publisher: Publisher, timing: Timing, specs: &[SecretSpec]) -> Self {
        let secrets = specs
            .iter()
            .map(|spec| {
                let ctl = SecretCtl {
                    spec: spec.clone(),
                    state: Mutex::new(CheckState {
                        mode: Mode::Describe,
                        last_check: None,
                        last_forced: None,
                        rejected: None,
                        rotation_seen_at: None,
                        suspect_until: None,
                        failures: 0,
                        next_delay: timing.refresh_interval,
                        deferred_until: None,
                    }),
                    check_now: Notify::new(),
                    reschedule: Notify::new(),
                };
                (spec.name.clone(), Arc::new(ctl))
            })
            .collect();
        let metrics = Arc::new(Metrics::default());
        Poller { inner: Arc::new(Inner { source, metrics, store, publisher, timing, secrets }) }
    }

    /// What the checks so far counted, for `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Starts one loop per secret on `tracker`; each stops when `cancel` fires. The first checks run at
    /// once and concurrently, so start-up takes one round trip, not one per secret.
    pub fn spawn(&self, tracker: &TaskTracker, cancel: CancellationToken) {
        for ctl in self.inner.secrets.values() {
            let (inner, ctl, cancel) = (self.inner.clone(), ctl.clone(), cancel.clone());
            tracker.spawn(async move { inner.run_loop(ctl, cancel).await });
        }
    }

    /// Makes every loop check now (used by the dev-file watcher).
    pub fn wake_all(&self) {
        for ctl in self.inner.secrets.values() {
            ctl.check_now.notify_one();
        }
    }

    /// A check forced by a client. `None` for an unknown name.
    pub async fn refresh_now(&self, name: &str) -> Option<Result<RefreshReport, CheckError>> {
        let ctl = self.inner.secrets.get(name)?.clone();
        let mut state = ctl.state.lock().await;
        let now = Instant::now();
        if let Some(t) = state.last_forced
            && now.duration_since(t) < self.inner.timing.min_refresh_gap
        {
            // Not now, but not forgotten: the loop checks once when the gap ends, so a rotation that
            // began just after the last forced check is seen seconds later rather than an interval later.
            state.deferred_until = Some(t + self.inner.timing.min_refresh_gap);
            ctl.reschedule.notify_one();
            self.inner.metrics.forced(name, false);
            return Some(Ok(self.inner.report(&ctl.spec, false, false)));
        }
        self.inner.metrics.forced(name, true);
        state.last_forced = Some(now);
        let result = self.inner.check(&ctl, &mut state).await;
        if let Ok(report) = &result
            && !report.changed
            && !report.rotation_in_progress
        {
            // The app says its credentials fail and nothing has moved yet: watch closely for a while.
            state.suspect_until = Some(now + SUSPECT_WINDOW);
        }
        self.inner.after_check(&ctl, &mut state, &result);
        // The check may have started fast polling (a rotation seen, or suspicion): the loop, asleep on the
        // old deadline, recomputes it.
        ctl.reschedule.notify_one();
        Some(result)
    }
}

impl Inner {
    async fn run_loop(&self, ctl: Arc<SecretCtl>, cancel: CancellationToken) {
        loop {
            {
                let mut state = ctl.state.lock().await;
                let result = tokio::select! {
                    r = self.check(&ctl, &mut state) => r,
                    () = cancel.cancelled() => return,
                };
                self.after_check(&ctl, &mut state, &result);
            }
            // Wait for the deadline, a dev edit, or a reschedule (which only recomputes the deadline).
            loop {
                let deadline = {
                    let state = ctl.state.lock().await;
                    self.deadline(&state)
                };
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => break,
                    () = ctl.check_now.notified() => break,
                    () = ctl.reschedule.notified() => continue,
                    () = cancel.cancelled() => return,
                }
            }
        }
    }

    fn deadline(&self, state: &CheckState) -> Instant {
        let last = state.last_check.unwrap_or_else(Instant::now);
        let fast = state.failures == 0 && state.fast_polling(Instant::now());
        let delay = if fast { state.next_delay.min(self.timing.rotation_poll_interval) } else { state.next_delay };
        let scheduled = last + delay;
        state.deferred_until.map_or(scheduled, |d| d.min(scheduled))
    }

    /// Bookkeeping after every check, forced or not: store, logs, and the next delay.
    fn after_check(&self, ctl: &SecretCtl, state: &mut CheckState, result: &Result<RefreshReport, CheckError>) {
        let now = Instant::now();
        state.last_check = Some(now);
        state.deferred_until = None;
        let name = &ctl.spec.name;
        match result {
            Ok(report) => {
                let result = if report.changed { CheckResult::changed } else { CheckResult::unchanged };
                self.metrics.check(name, result);
                self.metrics.success(name, SystemTime::now(), report.rotation_in_progress);
                state.failures = 0;
                let was_rotating = state.rotation_seen_at.is_some();
                match (report.rotation_in_progress, was_rotating) {
                    (true, false) => {
                        state.rotation_seen_at = Some(now);
                        tracing::info!(secret = %name, pending_version = ?report.pending_version_id,
                            "rotation in progress: polling every {}",
                            humantime::format_duration(self.timing.rotation_poll_interval));
                    }
                    (false, true) => {
                        state.rotation_seen_at = None;
                        tracing::info!(secret = %name, version = ?report.version_id, "rotation finished");
                    }
                    _ => {}
                }
                if report.changed {
                    state.suspect_until = None;
                }
                state.next_delay = if state.fast_polling(now) {
                    jittered(self.timing.rotation_poll_interval, unit_random())
                } else {
                    jittered(self.timing.refresh_interval, unit_random())
                };
                self.store.update(name, |s| {
                    s.last_success = Some((now, SystemTime::now()));
                    s.last_error = None;
                    s.mode = state.mode;
                });
            }
            Err(err) => {
                self.metrics.check(name, CheckResult::error);
                let delay = backoff(state.failures, DEFAULT_BACKOFF_BASE, self.timing.refresh_interval, unit_random());
                state.failures = state.failures.saturating_add(1);
                state.next_delay = delay;
                tracing::warn!(secret = %name, secret_id = %ctl.spec.secret_id, error = %err,
                    retry_in = %humantime::format_duration(Duration::from_secs(delay.as_secs().max(1))),
                    "refresh failed; keeping the last good value");
                self.store.update(name, |s| {
                    s.last_error = Some(err.to_string());
                    s.mode = state.mode;
                });
            }
        }
    }

    fn report(&self, spec: &SecretSpec, changed: bool, fetched: bool) -> RefreshReport {
        let s = self.store.get(&spec.name);
        RefreshReport {
            name: spec.name.clone(),
            version_id: s.as_ref().and_then(|s| s.current.as_ref().map(|v| v.id.clone())),
            changed,
            fetched,
            rotation_in_progress: s.as_ref().is_some_and(|s| s.rotation_in_progress),
            pending_version_id: s.as_ref().and_then(|s| s.pending.as_ref().map(|v| v.id.clone())),
        }
    }

    /// Awaits one source call, counting it (a dev-file read counts as the call it stands in for).
    async fn counted<T>(&self, spec: &SecretSpec, op: Operation, call: impl Future<Output = T>) -> T {
        self.metrics.api_call(&spec.name, op);
        call.await
    }

    /// One check of one secret. The caller holds the secret's lock.
    async fn check(&self, ctl: &SecretCtl, state: &mut CheckState) -> Result<RefreshReport, CheckError> {
        let spec = &ctl.spec;
        let held = self.store.get(&spec.name).and_then(|s| s.current.map(|v| v.id.clone()));

        if state.mode == Mode::Describe {
            match self.counted(spec, Operation::DescribeSecret, self.source.describe(spec)).await {
                Ok(labels) => {
                    let changed = if held.as_deref() == Some(labels.current.as_str()) {
                        false
                    } else if let Some((v, reason)) = &state.rejected
                        && *v == labels.current
                    {
                        return Err(CheckError::Invalid { version_id: v.clone(), reason: reason.clone() });
                    } else {
                        let get = self.source.get_version(spec, &labels.current);
                        let fetched = self.counted(spec, Operation::GetSecretValue, get).await?;
                        self.publish_current(spec, state, fetched).await?
                    };
                    self.track_pending(spec, labels.pending).await;
                    return Ok(self.report(spec, changed, true));
                }
                Err(FetchError::AccessDenied { operation: "DescribeSecret" }) => {
                    tracing::warn!(secret = %spec.name, secret_id = %spec.secret_id,
                        "DescribeSecret is denied: falling back to GetSecretValue(AWSCURRENT) every interval; \
                         rotations in progress cannot be seen (grant secretsmanager:DescribeSecret to fix)");
                    state.mode = Mode::GetOnly;
                }
                Err(e) => return Err(e.into()),
            }
        }

        let fetched = self.counted(spec, Operation::GetSecretValue, self.source.get_current(spec)).await?;
        let changed = if held.as_deref() == Some(fetched.version_id.as_str()) {
            false
        } else {
            self.publish_current(spec, state, fetched).await?
        };
        Ok(self.report(spec, changed, true))
    }

    /// Validates and publishes a new current version: file first, then the store, so that HTTP never
    /// serves a version the file does not have and readiness means "the file exists".
    async fn publish_current(
        &self,
        spec: &SecretSpec,
        state: &mut CheckState,
        fetched: Fetched,
    ) -> Result<bool, CheckError> {
        if let Err(reason) = validate(spec.format, &fetched) {
            state.rejected = Some((fetched.version_id.clone(), reason.clone()));
            return Err(CheckError::Invalid { version_id: fetched.version_id, reason });
        }
        state.rejected = None;
        let version = Arc::new(Version { id: fetched.version_id, value: fetched.value, since: SystemTime::now() });
        let (publisher, file_name, v) = (self.publisher.clone(), spec.file_name(), version.clone());
        let outcome = tokio::task::spawn_blocking(move || publisher.publish(&file_name, v.value.expose()))
            .await
            .expect("publish task does not panic")?;
        tracing::info!(secret = %spec.name, version = %version.id,
            file = %self.publisher.dir().join(spec.file_name()).display(),
            unchanged_on_disk = (outcome == Outcome::Unchanged), "published new version");
        self.store.update(&spec.name, |s| s.current = Some(version));
        Ok(true)
    }

    /// Keeps the pending value in memory while a rotation is under way; it never goes to disk.
    async fn track_pending(&self, spec: &SecretSpec, pending: Option<String>) {
        let held = self.store.get(&spec.name).and_then(|s| s.pending.map(|v| v.id.clone()));
        let value = match pending {
            None => None,
            Some(id) if held.as_deref() == Some(id.as_str()) => {
                self.store.update(&spec.name, |s| s.rotation_in_progress = true);
                return;
            }
            Some(id) => match self.counted(spec, Operation::GetSecretValue, self.source.get_version(spec, &id)).await {
                Ok(f) => match validate(spec.format, &f) {
                    Ok(()) => Some(Arc::new(Version { id: f.version_id, value: f.value, since: SystemTime::now() })),
                    Err(reason) => {
                        tracing::warn!(secret = %spec.name, version = %id, %reason, "pending version not served");
                        None
                    }
                },
                Err(e) => {
                    // A failed rotation can leave AWSPENDING on a version with no value (DOMAIN.md §1.1).
                    tracing::warn!(secret = %spec.name, version = %id, error = %e, "pending version not readable");
                    None
                }
            },
        };
        let rotating = value.is_some();
        self.store.update(&spec.name, |s| {
            s.pending = value;
            s.rotation_in_progress = rotating;
        });
    }
}

/// What a format requires of a value. The reason names no content.
fn validate(format: Format, fetched: &Fetched) -> Result<(), String> {
    match format {
        Format::Raw => Ok(()),
        Format::Json if fetched.binary => Err("SecretBinary needs format=raw".into()),
        Format::Json => match serde_json::from_slice::<serde_json::Value>(fetched.value.expose()) {
            Ok(serde_json::Value::Object(_)) => Ok(()),
            Ok(_) => Err("not a JSON object (use format=raw for other values)".into()),
            Err(e) => Err(format!("not valid JSON ({}:{})", e.line(), e.column())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileOptions;
    use crate::secret::SecretValue;
    use crate::source::AwsSource;
    use aws_sdk_secretsmanager::Client;
    use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;
    use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueOutput;
    use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
    use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

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
    fn rejection_reason_never_quotes_the_value() {
        let reason = validate(Format::Json, &fetched("s3cr3t-not-json", false)).unwrap_err();
        assert!(!reason.contains("s3cr3t"), "{reason}");
    }

    fn timing() -> Timing {
        Timing {
            refresh_interval: Duration::from_secs(60),
            rotation_poll_interval: Duration::from_secs(2),
            min_refresh_gap: Duration::from_secs(5),
        }
    }

    fn poller(rules: &[&Rule], dir: &std::path::Path) -> (Poller, Arc<Store>) {
        let client: Client = mock_client!(aws_sdk_secretsmanager, RuleMode::MatchAny, rules);
        let spec = SecretSpec { name: "db".into(), secret_id: "prod/db".into(), format: Format::Json };
        let store = Arc::new(Store::new(std::slice::from_ref(&spec)));
        let publisher = Publisher::new(dir.to_path_buf(), FileOptions { mode: 0o440, uid: None, gid: None });
        let poller =
            Poller::new(Source::Aws(AwsSource::from_client(client)), store.clone(), publisher, timing(), &[spec]);
        (poller, store)
    }

    fn describe(current: &'static str, pending: Option<&'static str>) -> Rule {
        mock!(Client::describe_secret).then_output(move || {
            let mut b = DescribeSecretOutput::builder().version_ids_to_stages(current, vec!["AWSCURRENT".into()]);
            if let Some(p) = pending {
                b = b.version_ids_to_stages(p, vec!["AWSPENDING".into()]);
            }
            b.build()
        })
    }

    fn get_version(id: &'static str, value: &'static str) -> Rule {
        mock!(Client::get_secret_value)
            .match_requests(move |r| r.version_id() == Some(id))
            .then_output(move || GetSecretValueOutput::builder().version_id(id).secret_string(value).build())
    }

    #[tokio::test]
    async fn unchanged_version_costs_one_describe_and_no_get() {
        let dir = tempfile::tempdir().unwrap();
        let d = describe("v1", None);
        let g = get_version("v1", r#"{"password":"a"}"#);
        let (p, store) = poller(&[&d, &g], dir.path());
        let first = p.refresh_now("db").await.unwrap().unwrap();
        assert!(first.changed && first.fetched);
        p.inner.secrets["db"].state.lock().await.last_forced = None;
        let second = p.refresh_now("db").await.unwrap().unwrap();
        assert!(!second.changed && second.fetched);
        assert_eq!((d.num_calls(), g.num_calls()), (2, 1));
        let metrics = p.metrics().encode();
        for line in [
            r#"secrets_sidecar_api_calls_total{secret="db",operation="DescribeSecret"} 2"#,
            r#"secrets_sidecar_api_calls_total{secret="db",operation="GetSecretValue"} 1"#,
            r#"secrets_sidecar_checks_total{secret="db",result="changed"} 1"#,
            r#"secrets_sidecar_checks_total{secret="db",result="unchanged"} 1"#,
        ] {
            assert!(metrics.lines().any(|l| l == line), "missing {line:?} in:\n{metrics}");
        }
        assert_eq!(store.get("db").unwrap().current.unwrap().id, "v1");
        assert_eq!(std::fs::read(dir.path().join("db.json")).unwrap(), br#"{"password":"a"}"#);
    }

    #[tokio::test]
    async fn forced_refreshes_inside_the_gap_share_one_check() {
        let dir = tempfile::tempdir().unwrap();
        let d = describe("v1", None);
        let g = get_version("v1", r#"{"password":"a"}"#);
        let (p, _) = poller(&[&d, &g], dir.path());
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.refresh_now("db").await })
            })
            .collect();
        let mut fetched = 0;
        for c in calls {
            let r = c.await.unwrap().unwrap().unwrap();
            fetched += usize::from(r.fetched);
            assert_eq!(r.version_id.as_deref(), Some("v1"));
        }
        assert_eq!((fetched, d.num_calls(), g.num_calls()), (1, 1, 1));
    }

    #[tokio::test]
    async fn pending_version_is_held_in_memory_and_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let d = describe("v1", Some("v2"));
        let g1 = get_version("v1", r#"{"password":"old"}"#);
        let g2 = get_version("v2", r#"{"password":"new"}"#);
        let (p, store) = poller(&[&d, &g1, &g2], dir.path());
        let r = p.refresh_now("db").await.unwrap().unwrap();
        assert!(r.rotation_in_progress);
        assert_eq!(r.pending_version_id.as_deref(), Some("v2"));
        assert_eq!(store.get("db").unwrap().pending.unwrap().value.expose(), br#"{"password":"new"}"#);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["db.json"]);
        assert_eq!(std::fs::read(dir.path().join("db.json")).unwrap(), br#"{"password":"old"}"#);
    }

    #[tokio::test]
    async fn denied_describe_falls_back_to_get_current_once() {
        let dir = tempfile::tempdir().unwrap();
        let denied = mock!(Client::describe_secret).then_http_response(|| {
            HttpResponse::new(
                StatusCode::try_from(400).unwrap(),
                SdkBody::from(r#"{"__type":"AccessDeniedException","message":"no"}"#),
            )
        });
        let current = mock!(Client::get_secret_value)
            .match_requests(|r| r.version_stage() == Some("AWSCURRENT"))
            .then_output(|| GetSecretValueOutput::builder().version_id("v1").secret_string(r#"{"a":1}"#).build());
        let (p, store) = poller(&[&denied, &current], dir.path());
        assert!(p.refresh_now("db").await.unwrap().unwrap().changed);
        p.inner.secrets["db"].state.lock().await.last_forced = None;
        assert!(!p.refresh_now("db").await.unwrap().unwrap().changed);
        assert_eq!((denied.num_calls(), current.num_calls()), (1, 2), "describe is not retried after the denial");
        assert_eq!(store.get("db").unwrap().mode, Mode::GetOnly);
    }

    /// Starts the background loops, as `run` does.
    fn start_loops(p: &Poller) -> (TaskTracker, CancellationToken) {
        let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
        p.spawn(&tracker, cancel.clone());
        (tracker, cancel)
    }

    /// Counts DescribeSecret calls in `[from, to)` minutes of paused time while the loop runs.
    async fn describes_between(d: &Rule, from: u64, to: u64) -> usize {
        tokio::time::sleep(Duration::from_secs(from * 60)).await;
        let before = d.num_calls();
        tokio::time::sleep(Duration::from_secs((to - from) * 60)).await;
        d.num_calls() - before
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_rotation_polls_fast_for_fifteen_minutes_then_at_the_normal_interval() {
        let dir = tempfile::tempdir().unwrap();
        let d = describe("v1", Some("v2"));
        let g1 = get_version("v1", r#"{"password":"old"}"#);
        let g2 = get_version("v2", r#"{"password":"new"}"#);
        let (p, _) = poller(&[&d, &g1, &g2], dir.path());
        let (tracker, cancel) = start_loops(&p);
        // Minutes 0-10: every 2 s ±10% → about 300 checks. Minutes 16-26: every 60 s ±10% → about 10.
        let fast = describes_between(&d, 0, 10).await;
        let slow = describes_between(&d, 6, 16).await;
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        assert!((270..=335).contains(&fast), "fast polling: {fast} checks in 10 min");
        assert!((8..=12).contains(&slow), "after the cap: {slow} checks in 10 min");
        assert_eq!(g2.num_calls(), 1, "the pending value is fetched once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_refused_inside_the_gap_is_checked_when_the_gap_ends() {
        let dir = tempfile::tempdir().unwrap();
        let d = describe("v1", None);
        let g1 = get_version("v1", r#"{"password":"a"}"#);
        let (p, _) = poller(&[&d, &g1], dir.path());
        let (_tracker, cancel) = start_loops(&p);
        tokio::time::sleep(Duration::from_millis(10)).await; // the first check
        assert!(p.refresh_now("db").await.unwrap().unwrap().fetched);
        // Leave the suspicion window's fast polling out of it: only the deferred check may run.
        {
            let mut state = p.inner.secrets["db"].state.lock().await;
            state.suspect_until = None;
            state.next_delay = Duration::from_secs(60);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!p.refresh_now("db").await.unwrap().unwrap().fetched, "inside the gap");
        let before = d.num_calls();
        tokio::time::sleep(Duration::from_millis(4100)).await; // the gap ends 5 s after the forced check
        assert_eq!(d.num_calls(), before + 1, "one deferred check at the end of the gap");
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(d.num_calls(), before + 1, "and nothing more until the interval");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn steady_state_polls_once_per_interval_with_jitter() {
        let dir = tempfile::tempdir().unwrap();
        let d = describe("v1", None);
        let g1 = get_version("v1", r#"{"password":"a"}"#);
        let (p, _) = poller(&[&d, &g1], dir.path());
        let (_tracker, cancel) = start_loops(&p);
        let checks = describes_between(&d, 0, 60).await;
        cancel.cancel();
        assert!((55..=67).contains(&checks), "{checks} checks in an hour at 60 s ±10%");
        assert_eq!(g1.num_calls(), 1, "GetSecretValue only for the first version");
    }

    #[tokio::test]
    async fn invalid_value_keeps_last_good_and_is_not_refetched() {
        let dir = tempfile::tempdir().unwrap();
        let d1 = describe("v1", None);
        let g1 = get_version("v1", r#"{"a":1}"#);
        let (p, store) = poller(&[&d1, &g1], dir.path());
        p.refresh_now("db").await.unwrap().unwrap();
        drop(p);
        // A new poller sharing the store, now seeing v2 whose value is not an object.
        let d2 = describe("v2", None);
        let g2 = get_version("v2", "not json");
        let client: Client = mock_client!(aws_sdk_secretsmanager, RuleMode::MatchAny, [&d2, &g2]);
        let spec = store.get("db").unwrap().spec;
        let publisher = Publisher::new(dir.path().to_path_buf(), FileOptions { mode: 0o440, uid: None, gid: None });
        let p = Poller::new(
            Source::Aws(AwsSource::from_client(client)),
            store.clone(),
            publisher,
            Timing { min_refresh_gap: Duration::ZERO, ..timing() },
            &[spec],
        );
        for _ in 0..3 {
            let err = p.refresh_now("db").await.unwrap().unwrap_err();
            assert!(err.to_string().contains("v2 rejected"), "{err}");
        }
        assert_eq!(g2.num_calls(), 1, "a rejected version is fetched once");
        assert_eq!(store.get("db").unwrap().current.unwrap().id, "v1");
        assert_eq!(std::fs::read(dir.path().join("db.json")).unwrap(), br#"{"a":1}"#);
    }
}
