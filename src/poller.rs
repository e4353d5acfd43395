//! A Secrets Manager secret's task: everything about checking it — its schedule, its mode
//! (`DescribeSecret` or get-only), the pending version of a rotation — owned by one [`crate::task`] per
//! secret, which is the only writer of that secret's file and store entry.
//!
//! A check is `DescribeSecret`, then `GetSecretValue` by `VersionId` only when the version carrying
//! `AWSCURRENT` moved — one cheap call per interval in the common case, the loop the AWS caching clients and
//! the CSI provider use. Where `DescribeSecret` is denied, the secret falls back, with a warning, to
//! `GetSecretValue(VersionStage=AWSCURRENT)` each interval and compares `VersionId`s, and asks
//! `DescribeSecret` again every [`DESCRIBE_REPROBE_INTERVAL`], so fixing the policy needs no restart.
//! Refused credentials (an unknown or expired key) are a failure like a timeout and never change the mode.
//!
//! A secret with a replica (`--failover-region`) is checked the same way in the replica's Region when its own
//! Region fails; which Region a check starts in, and when the secret switches, is [`crate::failover`]'s
//! decision. The version ids of a replica are compared with the ones the primary gave only as a cache
//! key: AWS documents that a replica has its primary's value and metadata, not that its version ids are
//! the same (moto's are). Where they differ, the first check after a switch fetches the version it is
//! told is `AWSCURRENT`, and the publish step leaves a byte-identical file untouched and its change
//! counter where it was, so a switch alone never looks like a rotation to the app
//! (docs/secrets-manager.md, "Replicas").
//!
//! When to look again is [`crate::schedule`]'s decision; this module only reports what happened. How a
//! forced refresh joins or waits for a check is the task's ([`crate::task`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::backoff::unit_random;
use crate::entry::SecretSpec;
use crate::failover::{Failover, Next, Outcome as RegionOutcome, Site, Switch};
use crate::metrics::Metrics;
use crate::publish::{Outcome, Outlet};
use crate::refresh::Message;
use crate::schedule::{Checked, Failure, Forced, Schedule, Timing};
use crate::source::{FetchError, Fetched, Labels, Operation, Source};
use crate::store::{Mode, Version, View};
use crate::task::{self, CheckError, Producer, Services};

/// How often a secret in get-only mode asks `DescribeSecret` again, to notice a fixed policy.
pub const DESCRIBE_REPROBE_INTERVAL: Duration = Duration::from_secs(3600);
/// First checks running at once at start-up. If every secret's first check started at the same moment,
/// that peak (a request and a response in flight per secret) would set the idle memory for the life of
/// the process; four keep start → ready within a round trip or two for the usual handful of secrets.
pub const STARTUP_CONCURRENCY: usize = 4;

/// Starts one task per secret; each stops when the services' cancel fires. Returns their channels, for
/// the refresh registry.
pub fn start(
    services: &Services,
    source: Source,
    timing: Timing,
    failover_retry_interval: Duration,
    specs: &[SecretSpec],
) -> Vec<(String, mpsc::Sender<Message>)> {
    start_with_jitter(services, source, timing, failover_retry_interval, specs, unit_random)
}

/// [`start`] with a chosen jitter draw, so tests can count checks exactly.
pub(crate) fn start_with_jitter(
    services: &Services,
    source: Source,
    timing: Timing,
    failover_retry_interval: Duration,
    specs: &[SecretSpec],
    jitter: fn() -> f64,
) -> Vec<(String, mpsc::Sender<Message>)> {
    let source = Arc::new(source);
    let startup = Arc::new(Semaphore::new(STARTUP_CONCURRENCY));
    let now = Instant::now();
    specs
        .iter()
        .map(|spec| {
            let entry = services.store.get(&spec.name).expect("every secret has a store entry").clone();
            // Where the secret is read from is known before its first check.
            let primary_region: Option<Arc<str>> = source.region_of(spec).map(Arc::from);
            entry.set_region(primary_region.clone(), None);
            let task = SecretTask {
                spec: spec.clone(),
                outlet: Outlet::new(services.publisher.clone(), entry.clone()),
                source: source.clone(),
                metrics: services.metrics.clone(),
                schedule: Schedule::new(timing, now, Box::new(jitter)),
                mode: Mode::Describe,
                describe_again_at: now,
                rejected: None,
                pending: Pending::None,
                failover: spec.replica.as_ref().map(|_| Failover::new(failover_retry_interval, now, jitter)),
                primary_error: None,
                regions: [primary_region, spec.replica.as_ref().map(|r| Arc::from(r.region.as_str()))],
            };
            task::spawn(task, entry, services, Some(startup.clone()))
        })
        .collect()
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

/// One secret and everything its task owns. The current version is not among it: it lives in the
/// secret's store entry, which the outlet writes and the check reads back.
pub(crate) struct SecretTask {
    spec: SecretSpec,
    outlet: Outlet,
    source: Arc<Source>,
    metrics: Arc<Metrics>,
    schedule: Schedule,
    mode: Mode,
    /// In get-only mode: when `DescribeSecret` is asked again.
    describe_again_at: Instant,
    /// A version whose value was rejected, with the reason, so it is not fetched again every check.
    rejected: Option<(String, String)>,
    pending: Pending,
    /// Which Region the secret is read from, for a secret with a replica.
    failover: Option<Failover>,
    /// While served from the replica: why the primary is not used, as its last failure said.
    primary_error: Option<String>,
    /// The names of the primary's Region (the SDK's) and the replica's, as [`View::region`] shows them.
    regions: [Option<Arc<str>>; 2],
}

impl Producer for SecretTask {
    fn deadline(&self) -> Instant {
        self.schedule.deadline()
    }

    fn wake(&mut self, now: Instant) {
        self.schedule.wake(now);
    }

    fn admit(&mut self, now: Instant) -> bool {
        self.schedule.force(now) == Forced::Allowed
    }

    fn check(&mut self) -> BoxFuture<'_, Result<bool, CheckError>> {
        Box::pin(self.check())
    }

    fn checked(&mut self, now: Instant, forced: bool, result: &Result<bool, CheckError>) -> Option<View> {
        let rotation_in_progress = self.pending.in_progress();
        match result {
            Ok(changed) => self.schedule.checked(now, Checked { changed: *changed, rotation_in_progress, forced }),
            Err(err) => {
                let retry_in = self.schedule.failed(now, failure(err));
                tracing::warn!(secret = %self.spec.name, secret_id = %self.spec.secret_id, error = %err,
                    retry_in = %humantime::format_duration(Duration::from_secs(retry_in.as_secs().max(1))),
                    "refresh failed; keeping the last good value");
            }
        }
        let serving = self.serving();
        if let Some(region) = self.region(serving) {
            let other = self.failover.as_ref().and_then(|_| self.region(other(serving)));
            self.metrics.serving_region(&self.spec.name, &region, other.as_deref());
        }
        Some(View {
            mode: self.mode,
            pending: self.pending.served().cloned(),
            rotation_in_progress,
            region: self.region(serving),
            primary_error: (serving == Site::Replica).then(|| self.primary_error.clone()).flatten(),
        })
    }
}

fn other(site: Site) -> Site {
    match site {
        Site::Primary => Site::Replica,
        Site::Replica => Site::Primary,
    }
}

/// How the schedule retries a failure: a file that could not be written (a full disk) or a transient
/// fetch error soon, a denial or an invalid value at the next interval. A check that failed in both
/// Regions is retried as the primary's failure is: soon, since the primary's Region is failing.
fn failure(err: &CheckError) -> Failure {
    match err {
        CheckError::Fetch(e) if e.is_transient() => Failure::Transient,
        CheckError::Publish(_) | CheckError::Token(_) => Failure::Transient,
        CheckError::Fetch(_) | CheckError::Invalid { .. } => Failure::Permanent,
        CheckError::Replica { primary: Some(primary), .. } => failure(primary),
        CheckError::Replica { error, .. } => failure(error),
    }
}

/// What a Region's part of a check came to, as [`crate::failover`] weighs it.
fn outcome(result: &Result<bool, CheckError>) -> RegionOutcome {
    match result {
        Ok(_) => RegionOutcome::Answered,
        Err(CheckError::Fetch(e)) if e.is_regional() => RegionOutcome::RegionFailing,
        Err(CheckError::Fetch(e)) if e.is_transient() => RegionOutcome::Inconclusive,
        Err(CheckError::Fetch(_) | CheckError::Invalid { .. }) => RegionOutcome::Refused,
        Err(CheckError::Publish(_) | CheckError::Token(_) | CheckError::Replica { .. }) => RegionOutcome::Inconclusive,
    }
}

impl SecretTask {
    /// Awaits one source call, counting it (a dev-file read counts as the call it stands in for).
    async fn counted<T>(&self, op: Operation, call: impl Future<Output = T>) -> T {
        self.metrics.api_call(&self.spec.name, op);
        call.await
    }

    fn is_current(&self, version_id: &str) -> bool {
        self.outlet.entry().read(|s| s.current.as_ref().is_some_and(|v| v.id == version_id))
    }

    /// Where the current value comes from.
    fn serving(&self) -> Site {
        self.failover.as_ref().map_or(Site::Primary, Failover::serving)
    }

    /// The replica a call in `site`'s Region asks for; `None` for the secret itself.
    fn replica(&self, site: Site) -> Option<&crate::entry::Replica> {
        match site {
            Site::Primary => None,
            Site::Replica => self.spec.replica.as_ref(),
        }
    }

    fn region(&self, site: Site) -> Option<Arc<str>> {
        let [primary, replica] = &self.regions;
        match site {
            Site::Primary => primary.clone(),
            Site::Replica => replica.clone(),
        }
    }

    /// One check, in the Region [`crate::failover`] says. `Ok(true)` when a new `AWSCURRENT` version was
    /// published.
    async fn check(&mut self) -> Result<bool, CheckError> {
        let now = Instant::now();
        let Some(failover) = &self.failover else {
            return self.check_in(Site::Primary).await;
        };
        if failover.start(now) == Site::Replica {
            return self.check_in(Site::Replica).await.map_err(|e| self.in_replica(None, e));
        }
        let primary = self.check_in(Site::Primary).await;
        let failover = self.failover.as_mut().expect("checked above");
        match failover.primary(now, outcome(&primary)) {
            Next::Done(switch) => {
                self.switched(switch, primary.as_ref().err());
                primary
            }
            Next::Replica => {
                let primary = primary.expect_err("only a failure sends a check to the replica");
                self.primary_error = Some(primary.to_string());
                let replica = self.check_in(Site::Replica).await;
                let switch = self.failover.as_mut().expect("checked above").replica(outcome(&replica));
                self.switched(switch, Some(&primary));
                replica.map_err(|e| self.in_replica(Some(primary), e))
            }
        }
    }

    /// Logs and counts a change of Region, once per change.
    fn switched(&mut self, switch: Option<Switch>, primary_error: Option<&CheckError>) {
        let (primary, replica) = (self.region(Site::Primary), self.region(Site::Replica));
        let (name, primary, replica) =
            (&self.spec.name, primary.as_deref().unwrap_or_default(), replica.as_deref().unwrap_or_default());
        match switch {
            None => {}
            Some(Switch::FailedOver) => {
                let error = primary_error.map(ToString::to_string).unwrap_or_default();
                tracing::info!(secret = %name, region = %primary, replica_region = %replica, %error,
                    "the secret's Region is failing: serving it from its replica until that Region answers again");
                self.metrics.failover(name);
            }
            Some(Switch::Returned) => {
                match primary_error {
                    None => tracing::info!(secret = %name, region = %primary, replica_region = %replica,
                        "the secret's Region answers again: serving it from there, no longer from its replica"),
                    Some(e) => tracing::info!(secret = %name, region = %primary, replica_region = %replica,
                        error = %e, "the secret's Region answers again, with a refusal: no longer serving the \
                        replica, so the refusal shows"),
                }
                self.primary_error = None;
                self.metrics.failover_return(name);
            }
        }
    }

    /// `error` of a check in the replica, with the primary's failure that sent it there if it did.
    fn in_replica(&self, primary: Option<CheckError>, error: CheckError) -> CheckError {
        let region = self.spec.replica.as_ref().map(|r| r.region.clone()).unwrap_or_default();
        CheckError::Replica { region, primary: primary.map(Box::new), error: Box::new(error) }
    }

    /// One check of the secret in `site`'s Region.
    async fn check_in(&mut self, site: Site) -> Result<bool, CheckError> {
        let now = Instant::now();
        let describe = self.mode == Mode::Describe || now >= self.describe_again_at;
        if describe {
            let spec = &self.spec;
            match self.counted(Operation::DescribeSecret, self.source.describe(spec, self.replica(site))).await {
                Ok(mut labels) => {
                    // A replica that has not yet caught up with a rotation the primary finished shows the
                    // version this task has from the primary as AWSPENDING, and the one before it as
                    // AWSCURRENT: keep the newer rather than publish the older again. (Only seen where
                    // the Regions share version ids, which AWS does not promise; harmless where not.)
                    if site == Site::Replica
                        && let Some(pending) = labels.pending.as_deref()
                        && self.is_current(pending)
                    {
                        tracing::debug!(secret = %spec.name, version = %pending,
                            "the replica is behind the version already published: kept");
                        labels = Labels { current: pending.to_owned(), pending: None };
                    }
                    if self.mode == Mode::GetOnly {
                        tracing::info!(secret = %spec.name, "DescribeSecret is allowed again: rotations in progress \
                            are seen again");
                        self.mode = Mode::Describe;
                    }
                    let changed = if self.is_current(&labels.current) {
                        false
                    } else if let Some((v, reason)) = &self.rejected
                        && *v == labels.current
                    {
                        return Err(CheckError::Invalid { version_id: v.clone(), reason: reason.clone() });
                    } else {
                        let get = self.source.get_version(spec, self.replica(site), &labels.current);
                        let fetched = self.counted(Operation::GetSecretValue, get).await?;
                        self.publish_current(fetched, site).await?;
                        true
                    };
                    self.track_pending(labels.pending, site).await;
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
                    self.mode = Mode::GetOnly;
                    self.describe_again_at = now + DESCRIBE_REPROBE_INTERVAL;
                    self.pending = Pending::None;
                }
                // A re-probe that fails for another reason says nothing about the policy: the value is
                // still read the get-only way, and the next check asks again.
                Err(e) if self.mode == Mode::GetOnly => {
                    tracing::debug!(secret = %spec.name, error = %e, "DescribeSecret re-probe failed");
                }
                Err(e) => return Err(e.into()),
            }
        }

        let get = self.source.get_current(&self.spec, self.replica(site));
        let fetched = self.counted(Operation::GetSecretValue, get).await?;
        if self.is_current(&fetched.version_id) {
            return Ok(false);
        }
        self.publish_current(fetched, site).await?;
        Ok(true)
    }

    /// Validates and publishes a new current version, read in `site`'s Region: the file, then the store,
    /// as one step.
    async fn publish_current(&mut self, fetched: Fetched, site: Site) -> Result<(), CheckError> {
        let Fetched { version_id, value, binary } = fetched;
        let version = match Version::of_secret(self.spec.format, version_id.clone(), value, binary) {
            Ok(version) => Arc::new(version),
            Err(reason) => {
                self.rejected = Some((version_id.clone(), reason.clone()));
                return Err(CheckError::Invalid { version_id, reason });
            }
        };
        self.rejected = None;
        let primary_error = (site == Site::Replica).then(|| self.primary_error.clone()).flatten();
        self.outlet.entry().set_region(self.region(site), primary_error);
        let outcome = self.outlet.publish(version).await?;
        tracing::info!(secret = %self.spec.name, version = %version_id, file = %self.outlet.path().display(),
            region = %self.region(site).as_deref().unwrap_or_default(), unchanged_on_disk = (outcome == Outcome::Unchanged), "published new version");
        Ok(())
    }

    /// Keeps the pending value in memory while a rotation is under way; it never goes to disk. A version
    /// already served or known to be unusable is not fetched again.
    async fn track_pending(&mut self, pending: Option<String>, site: Site) {
        let replica = self.replica(site);
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
                let get = self.source.get_version(spec, replica, &id);
                match self.counted(Operation::GetSecretValue, get).await {
                    Ok(f) => match Version::of_secret(spec.format, f.version_id, f.value, f.binary) {
                        Ok(version) => Pending::Served(Arc::new(version)),
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
                version = ?self.outlet.entry().current().map(|v| v.id.clone()), "rotation finished"),
            _ => {}
        }
        self.pending = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Format;
    use crate::refresh::Refreshers;
    use crate::source::AwsSource;
    use crate::store::{Kind, State, Store};
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
    use tokio_util::sync::CancellationToken;

    const S: Duration = Duration::from_secs(1);

    /// The services of a run with the one secret `spec`, publishing into `dir`.
    fn services(dir: &std::path::Path, spec: &SecretSpec) -> Services {
        let kind = Kind::Secret { secret_id: spec.secret_id.clone(), format: spec.format };
        Services::for_tests(Store::new([(spec.name.clone(), kind)]), dir)
    }

    /// A running poller over mocked Secrets Manager, with jitter fixed at its midpoint so that every wait
    /// is exactly its interval: 60 s, 2 s while polling fast, a 5 s gap.
    struct Harness {
        refreshers: Refreshers,
        metrics: Arc<Metrics>,
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

    /// The mocked Secrets Manager of a Region: every call takes `delay` (of paused time), and is made once
    /// (the SDK's own retries of 5xx and throttling answers would make the counts depend on its backoff).
    fn client(rules: &[&Rule], delay: Duration) -> Client {
        let config = move |c: aws_sdk_secretsmanager::config::Builder| {
            c.http_client(Slow { inner: aws_smithy_mocks::create_mock_http_client(), delay })
                .retry_config(aws_sdk_secretsmanager::config::retry::RetryConfig::disabled())
        };
        mock_client!(aws_sdk_secretsmanager, RuleMode::MatchAny, rules, config)
    }

    const REPLICA_REGION: &str = "us-west-2";

    impl Harness {
        fn start(rules: &[&Rule]) -> Harness {
            Self::start_with_delay(rules, Duration::ZERO)
        }

        /// Every Secrets Manager call takes `delay` (of paused time).
        fn start_with_delay(rules: &[&Rule], delay: Duration) -> Harness {
            let source = AwsSource::from_client(client(rules, delay));
            Self::start_with(source, SecretSpec::new("db", "prod/db", Format::Json))
        }

        /// The secret `db` in us-east-1 (answered by `primary`) with a replica in us-west-2 (`replica`).
        fn with_replica(primary: &[&Rule], replica: &[&Rule]) -> Harness {
            let source = AwsSource::from_clients([
                ("us-east-1", client(primary, Duration::ZERO)),
                (REPLICA_REGION, client(replica, Duration::ZERO)),
            ]);
            let mut spec = SecretSpec::new("db", "prod/db", Format::Json);
            spec.replica = Some(crate::entry::Replica::of("prod/db", REPLICA_REGION).unwrap());
            Self::start_with(source, spec)
        }

        fn start_with(source: AwsSource, spec: SecretSpec) -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let services = services(dir.path(), &spec);
            let timing = Timing { refresh_interval: 60 * S, rotation_poll_interval: 2 * S, min_refresh_gap: 5 * S };
            let channels = start_with_jitter(&services, Source::Aws(source), timing, 60 * S, &[spec], || 0.5);
            let Services { store, metrics, cancel, .. } = services;
            Harness { refreshers: Refreshers::new(channels), metrics, store, dir, cancel }
        }

        /// The lines of `/metrics` that start with `prefix`.
        fn metric_lines(&self, prefix: &str) -> Vec<String> {
            self.metrics.encode().lines().filter(|l| l.starts_with(prefix)).map(str::to_owned).collect()
        }

        fn state(&self) -> State {
            self.store.get("db").unwrap().state()
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
        let metrics = h.metrics.encode();
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
                let p = h.refreshers.clone();
                tokio::spawn(async move { p.refresh("db").await })
            })
            .collect();
        for c in calls {
            let r = c.await.unwrap().unwrap().unwrap();
            assert_eq!(r.version_id.as_deref(), Some("v1"));
        }
        assert_eq!((d.num_calls(), g.num_calls()), (2, 1), "the first check and one forced one");
        let metrics = h.metrics.encode();
        let forced: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("secrets_sidecar_forced_refreshes_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(forced, 50, "{metrics}");
    }

    /// a forced check ran in the request's future, so a client hanging up could cancel it between
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
        let gave_up = tokio::time::timeout(Duration::ZERO, h.refreshers.refresh("db")).await;
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
        let r = h.refreshers.refresh("db").await.unwrap().unwrap();
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
            let p = h.refreshers.clone();
            async move { p.refresh("db").await }
        });
        at(t0, 10.5).await;
        let second = h.refreshers.refresh("db").await.unwrap().unwrap();
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
        let r = h.refreshers.refresh("db").await.unwrap().unwrap();
        assert!(r.rotation_in_progress);
        assert_eq!(r.pending_version_id.as_deref(), Some("v2"));
        assert_eq!(h.state().view.pending.unwrap().value().expose(), br#"{"password":"new"}"#);
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

    /// an invalid or unreadable AWSPENDING version was fetched again on every check, and the
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

    /// `UnrecognizedClientException` was mapped to AccessDenied, and one such answer switched the
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
        assert!(h.refreshers.refresh("db").await.unwrap().unwrap().changed);
        at(t0, 11.0).await;
        assert!(!h.refreshers.refresh("db").await.unwrap().unwrap().fetched, "inside the gap");
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
        let r = h.refreshers.refresh("db").await.unwrap().unwrap();
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
        let mut rx = h.store.get("db").unwrap().subscribe();
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

    /// A Region failing: Secrets Manager's own server error, after the SDK's retries.
    fn server_error() -> HttpResponse {
        HttpResponse::new(
            StatusCode::try_from(500).unwrap(),
            SdkBody::from(r#"{"__type":"InternalServiceError","message":"An error occurred on the server side."}"#),
        )
    }

    fn failing<F: Fn() -> HttpResponse + Send + Sync + 'static>(answer: F) -> (Rule, Rule) {
        let answer = Arc::new(answer);
        let a = answer.clone();
        (
            mock!(Client::describe_secret).then_http_response(move || a()),
            mock!(Client::get_secret_value).then_http_response(move || answer()),
        )
    }

    fn region_of(h: &Harness) -> (Option<String>, Option<String>) {
        let view = h.state().view;
        (view.region.as_deref().map(str::to_owned), view.primary_error)
    }

    /// The control below is the same secret without a replica: it never becomes ready while its Region fails.
    #[tokio::test(start_paused = true)]
    async fn a_task_started_while_its_region_fails_is_ready_from_the_replica_in_the_first_check() {
        let (pd, pg) = failing(server_error);
        let (rd, rg) = (describes("v1", None), get_version("v1", r#"{"password":"a"}"#));
        let h = Harness::with_replica(&[&pd, &pg], &[&rd, &rg]);
        let t0 = Instant::now();
        at(t0, 0.1).await;
        assert_eq!(h.file().unwrap(), br#"{"password":"a"}"#);
        assert!(h.store.is_ready());
        let (region, primary_error) = region_of(&h);
        assert_eq!(region.as_deref(), Some("us-west-2"));
        assert_eq!(primary_error.as_deref(), Some("Secrets Manager failed with HTTP 500 (InternalServiceError)"));
        assert!(h.state().last_error.is_none(), "the value is current: {:?}", h.state().last_error);
        assert_eq!((pd.num_calls(), pg.num_calls(), rd.num_calls(), rg.num_calls()), (1, 0, 1, 1));
        assert_eq!(h.metric_lines("secrets_sidecar_failover"), [r#"secrets_sidecar_failovers_total{secret="db"} 1"#]);
        let mut serving = h.metric_lines("secrets_sidecar_serving_region{");
        serving.sort();
        assert_eq!(
            serving,
            [
                r#"secrets_sidecar_serving_region{secret="db",region="us-east-1"} 0"#,
                r#"secrets_sidecar_serving_region{secret="db",region="us-west-2"} 1"#,
            ]
        );

        let (d, g) = failing(server_error);
        let control = Harness::start(&[&d, &g]);
        at(t0, 30.0).await;
        assert!(!control.store.is_ready() && control.file().is_none());
        assert!(control.state().last_error.unwrap().contains("HTTP 500"));
        assert_eq!(region_of(&control), (Some("us-east-1".into()), None));
    }

    /// While the secret is on the replica its own Region is asked once a retry interval (60 s, 66 s at the
    /// jitter's midpoint), not at every check; the check after it answers is the return, and the replica is
    /// not asked again.
    #[tokio::test(start_paused = true)]
    async fn the_secret_returns_at_the_first_check_after_its_region_answers_and_leaves_the_replica_alone() {
        let pd = mock!(Client::describe_secret)
            .sequence()
            .http_response(server_error)
            .times(2)
            .output(|| describe("v1", None))
            .repeatedly()
            .build();
        let (pg, rd, rg) =
            (get_version("v1", r#"{"p":"1"}"#), describes("v1", None), get_version("v1", r#"{"p":"1"}"#));
        let h = Harness::with_replica(&[&pd, &pg], &[&rd, &rg]);
        let mut rx = h.store.get("db").unwrap().subscribe();
        let t0 = Instant::now();
        at(t0, 119.5).await;
        // 0 s: the primary fails, the replica answers. 60 s: the replica only (the primary is due at 66 s).
        assert_eq!((pd.num_calls(), rd.num_calls()), (1, 2));
        at(t0, 120.5).await;
        assert_eq!((pd.num_calls(), rd.num_calls()), (2, 3), "120 s: due, asked, still failing; the replica answers");
        assert_eq!(region_of(&h).0.as_deref(), Some("us-west-2"));
        at(t0, 239.5).await;
        assert_eq!((pd.num_calls(), rd.num_calls()), (2, 4), "180 s: the replica only; the primary is due at 186 s");
        at(t0, 240.5).await;
        assert_eq!((pd.num_calls(), rd.num_calls()), (3, 4), "240 s: the primary answers: back, the replica not asked");
        assert_eq!(region_of(&h), (Some("us-east-1".into()), None));
        assert_eq!(
            h.metric_lines("secrets_sidecar_failover_returns"),
            [r#"secrets_sidecar_failover_returns_total{secret="db"} 1"#]
        );
        at(t0, 600.5).await;
        assert_eq!((pd.num_calls(), rd.num_calls()), (9, 4), "every check in the primary, none in the replica");
        assert_eq!(pg.num_calls() + rg.num_calls(), 1, "one value fetched in all: the ids are the same");
        assert_eq!(*rx.borrow_and_update(), 1, "switching Regions is not a change");
    }

    /// AWS does not document that a replica's version ids are its primary's. Where they differ, a switch
    /// costs one GetSecretValue and nothing else: the file keeps its bytes and the change counter stays.
    #[tokio::test(start_paused = true)]
    async fn a_replica_with_other_version_ids_is_compared_by_its_bytes_and_a_switch_is_not_a_change() {
        let pd = mock!(Client::describe_secret)
            .sequence()
            .output(|| describe("v1", None))
            .http_response(server_error)
            .times(2)
            .output(|| describe("v1", None))
            .repeatedly()
            .build();
        let (pg, rd, rg) =
            (get_version("v1", r#"{"p":"1"}"#), describes("r1", None), get_version("r1", r#"{"p":"1"}"#));
        let h = Harness::with_replica(&[&pd, &pg], &[&rd, &rg]);
        let file = h.dir.path().join("db.json");
        let mut rx = h.store.get("db").unwrap().subscribe();
        let t0 = Instant::now();
        at(t0, 0.5).await;
        assert_eq!(*rx.borrow_and_update(), 1);
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&file).unwrap());
        at(t0, 60.5).await;
        assert_eq!((region_of(&h).0.as_deref(), h.state().current.unwrap().id.as_str()), (Some("us-west-2"), "r1"));
        at(t0, 300.5).await;
        assert_eq!(region_of(&h).0.as_deref(), Some("us-east-1"));
        assert_eq!(h.state().current.unwrap().id, "v1");
        assert_eq!((pg.num_calls(), rg.num_calls()), (2, 1), "each Region's version fetched once per switch");
        assert!(!rx.has_changed().unwrap(), "neither switch is a change");
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&file).unwrap()), inode, "file untouched");
    }

    /// A replica must not hide a misconfiguration or a deletion: an answer from the primary — denied,
    /// missing — is the check's result, and the replica is never asked. Refused credentials fail every
    /// Region alike: no reason to ask it either.
    #[tokio::test(start_paused = true)]
    async fn an_answer_from_the_primary_never_fails_over() {
        for (code, error) in [
            ("AccessDeniedException", "access denied for GetSecretValue"),
            ("ResourceNotFoundException", "secret not found"),
            ("UnrecognizedClientException", "credentials refused"),
        ] {
            let (pd, pg) = failing(aws_error(code));
            let (rd, rg) = (describes("v1", None), get_version("v1", r#"{"p":"1"}"#));
            let h = Harness::with_replica(&[&pd, &pg], &[&rd, &rg]);
            at(Instant::now(), 130.0).await;
            assert_eq!(rd.num_calls() + rg.num_calls(), 0, "{code}: the replica was asked");
            assert!(!h.store.is_ready(), "{code}");
            let error_text = h.state().last_error.unwrap();
            assert!(error_text.starts_with(error), "{code}: {error_text}");
            assert_eq!(region_of(&h), (Some("us-east-1".into()), None), "{code}");
            assert!(h.metric_lines("secrets_sidecar_failovers_total").is_empty(), "{code}");
        }
    }

    /// A secret deleted (or denied) in its own Region while it is served from the replica: the primary's
    /// answer at the next try ends the failover and shows, and the last good value stays.
    #[tokio::test(start_paused = true)]
    async fn a_refusal_from_the_primary_while_on_the_replica_ends_the_failover_and_shows() {
        let pd = mock!(Client::describe_secret)
            .sequence()
            .http_response(server_error)
            .http_response(aws_error("ResourceNotFoundException"))
            .repeatedly()
            .build();
        let pg = mock!(Client::get_secret_value).then_http_response(aws_error("ResourceNotFoundException"));
        let (rd, rg) = (describes("v1", None), get_version("v1", r#"{"p":"1"}"#));
        let h = Harness::with_replica(&[&pd, &pg], &[&rd, &rg]);
        let t0 = Instant::now();
        at(t0, 120.5).await;
        assert_eq!(
            (pd.num_calls(), rd.num_calls()),
            (2, 2),
            "the replica at 0 and 60 s; the primary's answer at 120 s"
        );
        assert_eq!(region_of(&h), (Some("us-east-1".into()), None));
        assert!(h.state().last_error.unwrap().starts_with("secret not found"));
        assert_eq!(h.file().unwrap(), br#"{"p":"1"}"#, "the last good value stays");
        at(t0, 600.5).await;
        assert_eq!(rd.num_calls(), 2, "the replica is not asked again");
        assert_eq!(
            h.metric_lines("secrets_sidecar_failover_returns"),
            [r#"secrets_sidecar_failover_returns_total{secret="db"} 1"#]
        );
    }

    /// Both Regions failing: the error names both, and the check is retried soon, primary first.
    #[tokio::test(start_paused = true)]
    async fn when_both_regions_fail_the_error_names_both_and_is_retried_soon() {
        let (pd, pg) = failing(server_error);
        let (rd, rg) = failing(|| aws_error("ResourceNotFoundException")());
        let h = Harness::with_replica(&[&pd, &pg], &[&rd, &rg]);
        let t0 = Instant::now();
        at(t0, 0.5).await;
        assert_eq!(
            h.state().last_error.as_deref(),
            Some(
                "Secrets Manager failed with HTTP 500 (InternalServiceError); the replica in us-west-2 failed too: \
                 secret not found (deleted, never created, or not visible to this role)"
            )
        );
        assert!(!h.store.is_ready());
        at(t0, 1.0).await;
        assert_eq!((pd.num_calls(), rd.num_calls()), (2, 2), "backoff: retried after 0.75 s, in both");
    }

    /// A replica behind a rotation the primary finished shows the version the task has as AWSPENDING: the
    /// task keeps it rather than publish the one before it again, and follows when the replica catches up.
    #[tokio::test(start_paused = true)]
    async fn a_replica_behind_the_primary_does_not_take_the_file_back_to_the_older_version() {
        let pd = mock!(Client::describe_secret)
            .sequence()
            .output(|| describe("v2", None))
            .http_response(server_error)
            .repeatedly()
            .build();
        let rd = mock!(Client::describe_secret)
            .sequence()
            .output(|| describe("v1", Some("v2")))
            .output(|| describe("v2", None))
            .repeatedly()
            .build();
        let (pg, rg1, rg2) =
            (get_version("v2", r#"{"p":"2"}"#), get_version("v1", r#"{"p":"1"}"#), get_version("v2", r#"{"p":"2"}"#));
        let h = Harness::with_replica(&[&pd, &pg], &[&rd, &rg1, &rg2]);
        let mut rx = h.store.get("db").unwrap().subscribe();
        let t0 = Instant::now();
        at(t0, 60.5).await;
        assert_eq!((region_of(&h).0.as_deref(), h.state().current.unwrap().id.as_str()), (Some("us-west-2"), "v2"));
        assert!(!h.state().view.rotation_in_progress, "the version held is not pending");
        assert_eq!(h.file().unwrap(), br#"{"p":"2"}"#);
        at(t0, 120.5).await;
        assert_eq!(h.state().current.unwrap().id, "v2", "caught up: the same version");
        assert_eq!(rg1.num_calls() + rg2.num_calls(), 0, "nothing fetched from the replica");
        assert_eq!(*rx.borrow_and_update(), 1);
    }

    /// An idle secret costs its task's size for as long as the process runs: the check (SDK call futures of
    /// several KiB) must not be part of it, or every idle secret holds that memory doing nothing. Inline, as
    /// `std::pin::pin!(self.check())`, the task is over five times this bound.
    #[tokio::test]
    async fn an_idle_secret_task_is_small_because_its_check_is_boxed() {
        let client: Client = mock_client!(aws_sdk_secretsmanager, RuleMode::MatchAny, &[]);
        let dir = tempfile::tempdir().unwrap();
        let spec = SecretSpec::new("db", "prod/db", Format::Json);
        let services = services(dir.path(), &spec);
        let entry = services.store.get("db").unwrap().clone();
        let timing = Timing { refresh_interval: 60 * S, rotation_poll_interval: 2 * S, min_refresh_gap: 5 * S };
        let producer = SecretTask {
            spec,
            outlet: Outlet::new(services.publisher.clone(), entry.clone()),
            source: Arc::new(Source::Aws(AwsSource::from_client(client))),
            metrics: services.metrics.clone(),
            schedule: Schedule::new(timing, Instant::now(), Box::new(|| 0.5)),
            mode: Mode::Describe,
            describe_again_at: Instant::now(),
            rejected: None,
            pending: Pending::None,
            failover: None,
            primary_error: None,
            regions: [None, None],
        };
        let task = task::Task { producer, entry, metrics: services.metrics.clone(), startup: None };
        let (_tx, rx) = mpsc::channel(1);
        let run = task.run(rx, CancellationToken::new());
        let size = std::mem::size_of_val(&run);
        assert!(size <= 2048, "an idle secret task is {size} bytes");
    }
}
