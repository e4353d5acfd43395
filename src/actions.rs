//! On-change actions (`--on-change`): an HTTP request to a loopback URL (Puma's control app) or a signal to
//! a process of the task, fired once after a published change of the names an action watches. What an
//! action says is [`spec`]'s; this module runs them.
//!
//! Each action is one task that owns its state: the counts it has seen, the names changed since it last
//! fired, its debounce timer and retries. It watches the [`crate::changes`] counters, which rise only after
//! the file is in place, so whatever the action restarts reads the new file. Count 1 of a name is its
//! initial publish at start: that is not a change (the app booted with it, or is about to) unless the
//! action says `initial=true`.
//!
//! Debounce: the action fires once the watched names have been quiet for `debounce` after the last
//! change, or at the latest [`MAX_WAIT_FACTOR`] × `debounce` after the first one, so several secrets
//! rotated together cause one restart and a constant stream of changes still fires. A failed firing is
//! retried with backoff ([`MAX_RETRIES`] times): a missed phased restart leaves the app on stale values
//! until the next change. A change that arrives while retries wait supersedes them — it gets a debounce
//! and a firing of its own, which covers the earlier names too.
//!
//! Logs and metrics name the action by its index among the `--on-change` entries, its kind, method and
//! `http://host:port/path` or signal and target, and the changed names. Never the token or the URL's query.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

pub mod spec;

use crate::backoff::{backoff, unit_random};
use crate::changes::Watch;
use crate::metrics::{ActionOutcome, Metrics};
use crate::percent::UNRESERVED;
use crate::secret::SecretString;
use crate::task::Services;
use spec::{Action, HttpAction, OnChange, SignalName, SignalTarget};

/// An action fires at the latest this many debounce periods after the first change of a burst.
pub const MAX_WAIT_FACTOR: u32 = 4;
/// Retries after a failed firing (so at most `MAX_RETRIES + 1` attempts per change).
pub const MAX_RETRIES: u32 = 5;
/// The first retry waits about this long (backoff with jitter, doubling).
pub const RETRY_BASE: Duration = Duration::from_secs(1);
/// No retry waits longer than this.
pub const RETRY_CAP: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--on-change watches {0:?}, which is not a published name")]
pub struct UnknownName(pub String);

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fired {
    /// Done; the detail says what answered (`200 OK`, `pid 42`).
    Ok(String),
    /// The reason, free of the token and the query.
    Failed(String),
    /// No answer within the action's timeout.
    Timeout,
}

impl Fired {
    fn metric(&self) -> ActionOutcome {
        match self {
            Fired::Ok(_) => ActionOutcome::ok,
            Fired::Failed(_) => ActionOutcome::failed,
            Fired::Timeout => ActionOutcome::timeout,
        }
    }
}

/// Starts one task per action. Every watched name must be in the store.
pub fn start(services: &Services, actions: &[OnChange]) -> Result<(), UnknownName> {
    // Subscribe to everything first, so a bad name starts nothing.
    let mut subscribed = Vec::with_capacity(actions.len());
    for spec in actions {
        subscribed.push(Watched::new(services.store.watch(&spec.watch).map_err(UnknownName)?));
    }
    for (index, (spec, watched)) in actions.iter().zip(subscribed).enumerate() {
        let (spec, metrics, cancel) = (spec.clone(), services.metrics.clone(), services.cancel.clone());
        let timing = Debounce::of(&spec);
        services.tracker.spawn(async move {
            let target = target(&spec.action);
            tracing::info!(action = index, watch = %spec.watch.join("+"), target = %target,
                debounce_ms = u64::try_from(spec.debounce.as_millis()).unwrap_or(u64::MAX), initial = spec.initial,
                "on-change action armed");
            let fire = |names: &BTreeSet<String>, attempt: u32| {
                let (spec, metrics, target) = (&spec, &metrics, &target);
                let changed = names.iter().map(String::as_str).collect::<Vec<_>>().join(",");
                async move {
                    let started = Instant::now();
                    let outcome = fire(&spec.action, spec.timeout).await;
                    report(index, spec, target, &changed, attempt, started.elapsed(), &outcome, metrics);
                    outcome
                }
            };
            run_action(watched, timing, cancel, fire).await;
        });
    }
    Ok(())
}

/// An action's watched names: their counters and the counts this action has accounted for.
struct Watched {
    watch: Watch,
    seen: Vec<u64>,
}

impl Watched {
    fn new(watch: Watch) -> Self {
        let seen = vec![0; watch.names().len()];
        Watched { watch, seen }
    }
}

/// When an action fires: its debounce, and whether the initial publish counts as a change.
#[derive(Debug, Clone, Copy)]
struct Debounce {
    debounce: Duration,
    initial: bool,
}

impl Debounce {
    fn of(spec: &OnChange) -> Self {
        Debounce { debounce: spec.debounce, initial: spec.initial }
    }
}

/// Adds the names whose counters rose to `into`; true when one was a change to act on. The first count
/// of a name (its initial publish) is one only with `initial`; a name first seen at count 2 or more has
/// changed since its initial publish whatever `initial` says.
fn collect(watched: &mut Watched, initial: bool, into: &mut BTreeSet<String>) -> bool {
    let mut any = false;
    for (i, count) in watched.watch.counts().into_iter().enumerate() {
        let seen = &mut watched.seen[i];
        if count > *seen {
            let is_change = initial || *seen > 0 || count > 1;
            *seen = count;
            if is_change {
                into.insert(watched.watch.names()[i].clone());
                any = true;
            }
        }
    }
    any
}

/// The action's loop: wait for a change, debounce, fire with retries; until `cancel`.
async fn run_action<F, Fut>(mut watched: Watched, timing: Debounce, cancel: CancellationToken, mut fire: F)
where
    F: FnMut(&BTreeSet<String>, u32) -> Fut,
    Fut: Future<Output = Fired>,
{
    let mut pending = BTreeSet::new();
    // The counters may have risen before this task ran (the initial publish, typically).
    collect(&mut watched, timing.initial, &mut pending);
    loop {
        while pending.is_empty() {
            tokio::select! {
                alive = watched.watch.changed() => {
                    if !alive {
                        return;
                    }
                    collect(&mut watched, timing.initial, &mut pending);
                }
                () = cancel.cancelled() => return,
            }
        }
        // Debounce: quiet for `debounce` after the last change, at most MAX_WAIT_FACTOR × debounce.
        let first = Instant::now();
        let latest = first + timing.debounce * MAX_WAIT_FACTOR;
        let mut quiet_from = first;
        loop {
            tokio::select! {
                () = sleep_until((quiet_from + timing.debounce).min(latest)) => break,
                alive = watched.watch.changed() => {
                    if !alive {
                        return;
                    }
                    if collect(&mut watched, timing.initial, &mut pending) {
                        quiet_from = Instant::now();
                    }
                }
                () = cancel.cancelled() => return,
            }
        }
        let names = std::mem::take(&mut pending);
        let mut attempt = 0;
        loop {
            let outcome = tokio::select! {
                outcome = fire(&names, attempt) => outcome,
                () = cancel.cancelled() => return,
            };
            if matches!(outcome, Fired::Ok(_)) || attempt == MAX_RETRIES {
                break;
            }
            let retry_at = Instant::now() + backoff(attempt, RETRY_BASE, RETRY_CAP, unit_random());
            attempt += 1;
            let superseded = loop {
                tokio::select! {
                    () = sleep_until(retry_at) => break false,
                    alive = watched.watch.changed() => {
                        if !alive {
                            return;
                        }
                        if collect(&mut watched, timing.initial, &mut pending) {
                            break true;
                        }
                    }
                    () = cancel.cancelled() => return,
                }
            };
            if superseded {
                // The new change's firing covers these names too.
                pending.extend(names.iter().cloned());
                break;
            }
        }
    }
}

/// What logs show of an action's target: `GET http://127.0.0.1:9293/phased-restart`, `USR1 pidfile=…`.
fn target(action: &Action) -> String {
    match action {
        Action::Http(h) => format!("{} {}", h.method, h.display_url()),
        Action::Signal { signal, target: SignalTarget::PidFile(p) } => {
            format!("{} pidfile={}", signal.as_str(), p.display())
        }
        Action::Signal { signal, target: SignalTarget::Process(n) } => format!("{} process={n}", signal.as_str()),
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    index: usize,
    spec: &OnChange,
    target: &str,
    changed: &str,
    attempt: u32,
    took: Duration,
    outcome: &Fired,
    metrics: &Metrics,
) {
    metrics.action(index, outcome.metric(), SystemTime::now());
    let kind = match spec.action {
        Action::Http(_) => "http",
        Action::Signal { .. } => "signal",
    };
    let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
    match outcome {
        Fired::Ok(detail) => tracing::info!(action = index, kind, target, changed, attempt, duration_ms = ms,
            outcome = "ok", detail = %detail, "on-change action fired"),
        Fired::Failed(reason) => tracing::warn!(action = index, kind, target, changed, attempt, duration_ms = ms,
            outcome = "failed", error = %reason, retry = attempt < MAX_RETRIES, "on-change action failed"),
        Fired::Timeout => tracing::warn!(
            action = index,
            kind,
            target,
            changed,
            attempt,
            duration_ms = ms,
            outcome = "timeout",
            timeout_ms = u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX),
            retry = attempt < MAX_RETRIES,
            "on-change action timed out"
        ),
    }
}

/// One attempt, bounded by `timeout`.
pub async fn fire(action: &Action, timeout: Duration) -> Fired {
    let attempt = async {
        match action {
            Action::Http(h) => fire_http(h).await,
            Action::Signal { signal, target } => {
                let (signal, target) = (*signal, target.clone());
                tokio::task::spawn_blocking(move || send_signal(signal, &target))
                    .await
                    .unwrap_or_else(|e| Err(format!("signal task failed: {e}")))
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(detail)) => Fired::Ok(detail),
        Ok(Err(reason)) => Fired::Failed(reason),
        Err(_) => Fired::Timeout,
    }
}

async fn fire_http(h: &HttpAction) -> Result<String, String> {
    let token = match &h.token_file {
        Some(path) => Some(read_token(path).await?),
        None => None,
    };
    // The path and query hold the token: kept in a zeroizing string, never formatted into a message.
    let mut path_and_query = zeroize::Zeroizing::new(h.path.clone());
    let mut separator = '?';
    if let Some(q) = &h.query {
        path_and_query.push('?');
        path_and_query.push_str(q.expose());
        separator = '&';
    }
    if let Some(token) = &token {
        path_and_query.push(separator);
        path_and_query.push_str(&h.token_param);
        path_and_query.push('=');
        path_and_query.extend(percent_encoding::utf8_percent_encode(token.expose(), UNRESERVED));
    }
    let addr = resolve_loopback(&h.host, h.port).await?;
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
    // Aborted when this attempt ends, however it ends (a timeout drops it mid-request), instead of an
    // abort after the answer that a timeout skipped. hyper closes the connection then anyway once the
    // request's sender is gone; the test below holds either way.
    let _conn = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(conn));
    let request = hyper::Request::builder()
        .method(h.method.as_str())
        .uri(path_and_query.as_str())
        .header(hyper::header::HOST, format!("{}:{}", h.host, h.port))
        .header(hyper::header::USER_AGENT, concat!("secrets-sidecar/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|_| "the request could not be built from the URL".to_owned());
    let response = sender.send_request(request?).await.map_err(|e| format!("request to {addr}: {e}"))?;
    let status = response.status();
    // Read the answer to its end, so the server sees a complete exchange.
    let _ = response.into_body().collect().await;
    if status.is_success() { Ok(status.to_string()) } else { Err(format!("answered {status}")) }
}

/// The token file's content, trimmed.
async fn read_token(path: &Path) -> Result<SecretString, String> {
    let raw = tokio::fs::read(path).await.map_err(|e| format!("reading token file {}: {e}", path.display()))?;
    let raw = zeroize::Zeroizing::new(raw);
    let text = std::str::from_utf8(&raw).map_err(|_| format!("token file {} is not UTF-8", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(SecretString::from(token.to_owned()))
}

/// The first address of `host` — which must be loopback; for `localhost`, every address it resolves to
/// must be, so a resolver cannot send the request elsewhere.
async fn resolve_loopback(host: &str, port: u16) -> Result<std::net::SocketAddr, String> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let addrs: Vec<_> =
        tokio::net::lookup_host((bare, port)).await.map_err(|e| format!("resolving {host}: {e}"))?.collect();
    if let Some(other) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!("{host} resolves to {}, which is not loopback", other.ip()));
    }
    addrs.first().copied().ok_or_else(|| format!("{host} resolves to no address"))
}

fn rustix_signal(signal: SignalName) -> rustix::process::Signal {
    use rustix::process::Signal;
    match signal {
        SignalName::Hup => Signal::HUP,
        SignalName::Int => Signal::INT,
        SignalName::Quit => Signal::QUIT,
        SignalName::Term => Signal::TERM,
        SignalName::Usr1 => Signal::USR1,
        SignalName::Usr2 => Signal::USR2,
        SignalName::Winch => Signal::WINCH,
        SignalName::Ttin => Signal::TTIN,
        SignalName::Ttou => Signal::TTOU,
        SignalName::Cont => Signal::CONT,
    }
}

fn send_signal(signal: SignalName, target: &SignalTarget) -> Result<String, String> {
    let pids = match target {
        SignalTarget::PidFile(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("reading pid file {}: {e}", path.display()))?;
            let pid = text
                .trim()
                .parse::<i32>()
                .ok()
                .and_then(rustix::process::Pid::from_raw)
                .filter(|p| p.as_raw_nonzero().get() > 0)
                .ok_or_else(|| format!("pid file {} does not hold a pid", path.display()))?;
            vec![pid]
        }
        SignalTarget::Process(name) => {
            let pids = processes_named(name);
            if pids.is_empty() {
                return Err(format!("no process named {name:?}"));
            }
            pids
        }
    };
    let mut sent = Vec::with_capacity(pids.len());
    for pid in pids {
        rustix::process::kill_process(pid, rustix_signal(signal))
            .map_err(|e| format!("kill({}, SIG{}): {e}", pid.as_raw_nonzero(), signal.as_str()))?;
        sent.push(pid.as_raw_nonzero().to_string());
    }
    Ok(format!("SIG{} sent to pid {}", signal.as_str(), sent.join(",")))
}

/// Every process (other than this one) whose `comm` or `argv[0]` file name is `name`, as `/proc` shows them
/// (with ECS `pidMode: task`, the app container's processes too).
fn processes_named(name: &str) -> Vec<rustix::process::Pid> {
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    let mut pids: Vec<_> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            let proc = Path::new("/proc").join(pid.to_string());
            let comm = std::fs::read_to_string(proc.join("comm")).unwrap_or_default();
            let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            let argv0 = Path::new(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(argv0));
            comm.trim_end_matches('\n') == name || argv0.file_name().is_some_and(|f| f == name)
        })
        .filter_map(|pid| rustix::process::Pid::from_raw(i32::try_from(pid).ok()?))
        .collect();
    pids.sort_by_key(|p| p.as_raw_nonzero());
    pids
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::store::Store;

    /// A publication of `name` in `store`, `rewritten` when the file's bytes changed.
    fn publish(store: &Store, name: &str, rewritten: bool) {
        let version =
            Arc::new(crate::store::Version::rendered("v".into(), crate::secret::SecretValue::from("x".to_owned())));
        store.get(name).unwrap().publish(version, rewritten);
    }

    /// Each firing: when (since the test's start) and for which names.
    type Firings = Arc<Mutex<Vec<(Duration, Vec<String>)>>>;

    /// An action loop over `names` of `store` whose firings are recorded (time since `t0`, names) and
    /// answered from `outcomes` (then Ok).
    struct Probe {
        firings: Firings,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Probe {
        fn start(store: &Store, names: &[&str], debounce: Duration, initial: bool, outcomes: Vec<Fired>) -> Probe {
            let t0 = Instant::now();
            let watched = Watched::new(store.watch(names).unwrap());
            let cancel = CancellationToken::new();
            let firings = Arc::new(Mutex::new(Vec::new()));
            let outcomes = Arc::new(Mutex::new(outcomes.into_iter()));
            let (f, c) = (firings.clone(), cancel.clone());
            let task = tokio::spawn(async move {
                let fire = |names: &BTreeSet<String>, _attempt: u32| {
                    f.lock().unwrap().push((t0.elapsed(), names.iter().cloned().collect()));
                    let outcome = outcomes.lock().unwrap().next().unwrap_or(Fired::Ok("200 OK".into()));
                    std::future::ready(outcome)
                };
                run_action(watched, Debounce { debounce, initial }, c, fire).await;
            });
            Probe { firings, cancel, task }
        }

        fn firings(&self) -> Vec<(Duration, Vec<String>)> {
            self.firings.lock().unwrap().clone()
        }

        async fn stop(self) {
            self.cancel.cancel();
            self.task.await.unwrap();
        }
    }

    async fn at(ms: u64) {
        sleep_until(START.with(|s| *s) + Duration::from_millis(ms)).await;
    }

    thread_local! {
        static START: Instant = Instant::now();
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[tokio::test(start_paused = true)]
    async fn the_initial_publish_fires_nothing_and_a_burst_of_three_changes_fires_once() {
        let store = Store::for_names(&["app"]);
        START.with(|_| ());
        let probe = Probe::start(&store, &["app"], secs(5.0), false, vec![]);
        publish(&store, "app", true);
        at(20_000).await;
        assert_eq!(probe.firings(), [], "count 1 is the initial publish");
        for ms in [20_000, 21_000, 23_000] {
            at(ms).await;
            publish(&store, "app", true);
        }
        at(60_000).await;
        assert_eq!(probe.firings(), [(secs(28.0), vec!["app".to_owned()])], "5 s after the last of the three");
        probe.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn changes_further_apart_than_the_debounce_fire_once_each() {
        let store = Store::for_names(&["app"]);
        START.with(|_| ());
        publish(&store, "app", true);
        let probe = Probe::start(&store, &["app"], secs(1.0), false, vec![]);
        for ms in [1_000, 5_000] {
            at(ms).await;
            publish(&store, "app", true);
        }
        at(10_000).await;
        let times: Vec<_> = probe.firings().into_iter().map(|(t, _)| t).collect();
        assert_eq!(times, [secs(2.0), secs(6.0)]);
        probe.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn initial_true_fires_once_after_every_watched_name_is_first_published() {
        let store = Store::for_names(&["app", "redis"]);
        START.with(|_| ());
        let probe = Probe::start(&store, &["app", "redis"], secs(1.0), true, vec![]);
        publish(&store, "app", false);
        at(300).await;
        publish(&store, "redis", true);
        at(5_000).await;
        assert_eq!(probe.firings(), [(secs(1.3), vec!["app".to_owned(), "redis".to_owned()])]);
        probe.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_first_seen_after_a_change_counts_even_without_initial() {
        let store = Store::for_names(&["app"]);
        START.with(|_| ());
        publish(&store, "app", true);
        publish(&store, "app", true);
        let probe = Probe::start(&store, &["app"], secs(1.0), false, vec![]);
        at(5_000).await;
        assert_eq!(probe.firings(), [(secs(1.0), vec!["app".to_owned()])]);
        probe.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_constant_stream_of_changes_still_fires_at_four_times_the_debounce() {
        let store = Store::for_names(&["app"]);
        START.with(|_| ());
        publish(&store, "app", true);
        let probe = Probe::start(&store, &["app"], secs(1.0), false, vec![]);
        for ms in (100..10_000).step_by(600) {
            at(ms).await;
            publish(&store, "app", true);
        }
        at(15_000).await;
        let times: Vec<_> = probe.firings().into_iter().map(|(t, _)| t).collect();
        // A change every 0.6 s from 0.1 s to 9.7 s: a firing 4 s after the first change of each burst
        // (0.1, then 4.3), then 1 s after the last change.
        let ms = Duration::from_millis;
        assert_eq!(times, [ms(4_100), ms(8_300), ms(10_700)]);
        probe.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_firing_is_retried_with_backoff_until_it_succeeds() {
        let store = Store::for_names(&["app"]);
        START.with(|_| ());
        publish(&store, "app", true);
        let failures = vec![Fired::Failed("answered 503".into()), Fired::Timeout];
        let probe = Probe::start(&store, &["app"], secs(1.0), false, failures);
        at(0).await;
        publish(&store, "app", true);
        at(60_000).await;
        let times: Vec<_> = probe.firings().into_iter().map(|(t, _)| t).collect();
        assert_eq!(times.len(), 3, "two failures, then the success: {times:?}");
        // Backoff with jitter: the first retry 0.5–1 s after the first attempt, the second 1–2 s later.
        assert!((secs(1.5)..=secs(2.0)).contains(&times[1]), "{times:?}");
        assert!((times[1] + secs(1.0)..=times[1] + secs(2.0)).contains(&times[2]), "{times:?}");
        probe.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_after_max_retries() {
        let store = Store::for_names(&["app"]);
        START.with(|_| ());
        publish(&store, "app", true);
        let failures = vec![Fired::Failed("connection refused".into()); 10];
        let probe = Probe::start(&store, &["app"], secs(1.0), false, failures);
        publish(&store, "app", true);
        at(600_000).await;
        assert_eq!(probe.firings().len(), 1 + MAX_RETRIES as usize);
        probe.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_during_retries_supersedes_them_and_its_firing_covers_both() {
        let store = Store::for_names(&["app", "redis"]);
        START.with(|_| ());
        publish(&store, "app", true);
        publish(&store, "redis", true);
        let failures = vec![Fired::Failed("answered 503".into())];
        let probe = Probe::start(&store, &["app", "redis"], secs(1.0), false, failures);
        publish(&store, "app", true);
        // The first attempt fails at 1 s; its retry would come 0.5–1 s later. A change at 1.2 s wins.
        at(1_200).await;
        publish(&store, "redis", true);
        at(30_000).await;
        assert_eq!(
            probe.firings(),
            [(secs(1.0), vec!["app".to_owned()]), (secs(2.2), vec!["app".to_owned(), "redis".to_owned()])]
        );
        probe.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_publication_with_the_same_bytes_is_not_a_change() {
        let store = Store::for_names(&["app"]);
        START.with(|_| ());
        publish(&store, "app", true);
        let probe = Probe::start(&store, &["app"], secs(1.0), false, vec![]);
        publish(&store, "app", false);
        at(10_000).await;
        assert_eq!(probe.firings(), []);
        probe.stop().await;
    }

    #[test]
    fn start_refuses_a_name_the_store_does_not_publish() {
        let store = Store::for_names(&["app"]);
        let spec: OnChange = "app+db=signal HUP pidfile=/x".parse().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let services = Services::for_tests(store, std::path::Path::new("/nonexistent"));
        let err = rt.block_on(async { start(&services, &[spec]).unwrap_err() });
        assert_eq!(err, UnknownName("db".into()));
        assert!(services.tracker.is_empty(), "nothing started");
    }

    /// A loopback HTTP server (hyper's) that records each request's method, path and query and answers
    /// `status`, after `delay`.
    async fn server(status: u16, delay: Duration) -> (u16, Arc<Mutex<Vec<String>>>) {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    async move {
                        s.lock().unwrap().push(format!(
                            "{} {} host={}",
                            req.method(),
                            req.uri(),
                            req.headers()[hyper::header::HOST].to_str().unwrap()
                        ));
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder().status(status).body(Empty::<Bytes>::new()).unwrap(),
                        )
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, svc));
            }
        });
        (port, seen)
    }

    fn http_action(entry: &str) -> Action {
        entry.parse::<OnChange>().unwrap().action
    }

    #[tokio::test]
    async fn an_http_action_sends_the_token_from_its_file_as_the_query_parameter() {
        let (port, seen) = server(200, Duration::ZERO).await;
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("puma.token");
        std::fs::write(&token_file, "s3cr3t-t0ken\n").unwrap();
        let action = http_action(&format!(
            "app=http GET http://127.0.0.1:{port}/phased-restart token-file={}",
            token_file.display()
        ));
        assert_eq!(fire(&action, secs(5.0)).await, Fired::Ok("200 OK".into()));
        // The file is read at each firing: a new token is used at once.
        std::fs::write(&token_file, "other").unwrap();
        let action = http_action(&format!(
            "app=http POST http://localhost:{port}/x?a=1 token-file={} token-param=auth",
            token_file.display()
        ));
        assert_eq!(fire(&action, secs(5.0)).await, Fired::Ok("200 OK".into()));
        assert_eq!(
            *seen.lock().unwrap(),
            [
                format!("GET /phased-restart?token=s3cr3t-t0ken host=127.0.0.1:{port}"),
                format!("POST /x?a=1&auth=other host=localhost:{port}"),
            ]
        );
    }

    #[tokio::test]
    async fn http_failures_name_the_status_or_the_cause_and_never_the_token() {
        let (port, _) = server(403, Duration::ZERO).await;
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("t");
        std::fs::write(&token_file, "s3cr3t").unwrap();
        let entry =
            |port: u16| format!("a=http GET http://127.0.0.1:{port}/x?q=s3cr3t token-file={}", token_file.display());
        let outcome = fire(&http_action(&entry(port)), secs(5.0)).await;
        assert_eq!(outcome, Fired::Failed("answered 403 Forbidden".into()));
        let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let Fired::Failed(reason) = fire(&http_action(&entry(refused)), secs(5.0)).await else { panic!() };
        assert!(reason.starts_with(&format!("connecting to 127.0.0.1:{refused}: ")), "{reason}");
        std::fs::remove_file(&token_file).unwrap();
        let Fired::Failed(reason) = fire(&http_action(&entry(port)), secs(5.0)).await else { panic!() };
        assert!(reason.starts_with(&format!("reading token file {}: ", token_file.display())), "{reason}");
        assert!(!reason.contains("s3cr3t"));
    }

    #[tokio::test]
    async fn an_http_action_that_gets_no_answer_within_its_timeout_times_out() {
        let (port, seen) = server(200, Duration::from_secs(30)).await;
        let started = std::time::Instant::now();
        let outcome = fire(&http_action(&format!("a=http GET http://127.0.0.1:{port}/slow")), secs(0.3)).await;
        assert_eq!(outcome, Fired::Timeout);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(seen.lock().unwrap().len(), 1, "the request did arrive");
    }

    /// A timed-out firing leaves no connection behind: the server sees it closed.
    #[tokio::test]
    async fn a_timed_out_http_action_closes_its_connection() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            // The request head, then nothing is answered: what comes next must be the end of the stream.
            let n = stream.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"GET /slow HTTP/1.1"), "{:?}", String::from_utf8_lossy(&buf[..n]));
            tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await
        });
        let outcome = fire(&http_action(&format!("a=http GET http://127.0.0.1:{port}/slow")), secs(0.3)).await;
        assert_eq!(outcome, Fired::Timeout);
        let after = server.await.unwrap();
        assert!(matches!(after, Ok(Ok(0))), "the connection is still open after the timeout: {after:?}");
    }

    #[tokio::test]
    async fn a_signal_action_signals_the_pid_in_its_file() {
        let mut child = tokio::process::Command::new("sleep").arg("30").kill_on_drop(true).spawn().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("app.pid");
        std::fs::write(&pidfile, format!("{}\n", child.id().unwrap())).unwrap();
        let action = http_action(&format!("a=signal SIGTERM pidfile={}", pidfile.display()));
        let outcome = fire(&action, secs(5.0)).await;
        assert_eq!(outcome, Fired::Ok(format!("SIGTERM sent to pid {}", child.id().unwrap())));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().await.unwrap().signal(), Some(15));
        std::fs::write(&pidfile, "not a pid").unwrap();
        let outcome = fire(&action, secs(5.0)).await;
        assert_eq!(outcome, Fired::Failed(format!("pid file {} does not hold a pid", pidfile.display())));
        let outcome = fire(&http_action("a=signal HUP process=no-such-process-x"), secs(5.0)).await;
        assert_eq!(outcome, Fired::Failed("no process named \"no-such-process-x\"".into()));
    }
}
