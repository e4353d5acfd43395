//! One entry's task: the loop that every producer which checks on a schedule runs — a secret's
//! ([`crate::poller`]) and an `rds-iam://` token's ([`crate::tokens`]). The task owns its producer and
//! everything it knows; the outside reaches it only by [`Message`]s, through [`crate::refresh`].
//!
//! The loop waits for the producer's deadline, a forced refresh or a wake-up, then runs one check, in the
//! task: a caller that hangs up (or an HTTP timeout) only stops its waiting, and the check's file and
//! store updates happen together ([`crate::publish::Outlet`]). Checks of one entry never overlap.
//! - Callers that arrive while a forced check runs join it and share its answer: they are the same burst
//!   of failing logins.
//! - Callers that arrive during a regular check are served by a check of their own right after it: that
//!   check began before they asked, so its answer may predate what made them ask.
//! - A forced check the producer does not admit now (inside its minimum gap) is answered at once with
//!   what is known, without asking the source.
//!
//! After every check the loop does the bookkeeping every entry shares — metrics, the entry's
//! `last_success`/`last_error`, the answer to the callers — and the producer its own: when to look again,
//! what to log.

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::BoxFuture;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{CheckResult, Metrics};
use crate::publish::{PublishError, Publisher};
use crate::refresh::{Answer, Failed, Message, Report};
use crate::source::FetchError;
use crate::store::{Entry, Store, View};

/// Forced refreshes queued per entry before callers wait to enqueue.
const QUEUE: usize = 64;

/// What every task of a run shares: made once by [`crate::run`].
#[derive(Clone)]
pub struct Services {
    pub store: Arc<Store>,
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
    pub tracker: TaskTracker,
    /// Fires at shutdown; every task stops at its next await.
    pub cancel: CancellationToken,
}

#[cfg(test)]
impl Services {
    /// The services of a run over `store`, publishing into `dir` with mode 0440, for tests.
    pub(crate) fn for_tests(store: Store, dir: &std::path::Path) -> Services {
        let options = crate::publish::FileOptions { mode: 0o440, uid: None, gid: None };
        Services {
            store: Arc::new(store),
            publisher: Publisher::new(dir.to_path_buf(), options),
            metrics: Arc::new(Metrics::default()),
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
        }
    }
}

/// Why a check failed. `Display` goes into logs and `last_error`: a reason and an AWS code, never a value.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The value is unusable for the secret's format; the text names the version, never the content.
    #[error("version {version_id} rejected: {reason}")]
    Invalid { version_id: String, reason: String },
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Signing an `rds-iam://` token failed; the text names no credential.
    #[error("{0}")]
    Token(String),
    /// A check in the replica's Region failed: `primary` is the failure of the secret's own Region that
    /// sent the check there, when one did in the same check.
    #[error("{}", replica_failure(region, primary.as_deref(), error))]
    Replica { region: String, primary: Option<Box<CheckError>>, error: Box<CheckError> },
}

fn replica_failure(region: &str, primary: Option<&CheckError>, error: &CheckError) -> String {
    match primary {
        Some(primary) => format!("{primary}; the replica in {region} failed too: {error}"),
        None => format!("the replica in {region}: {error}"),
    }
}

/// What makes an entry's versions: the part of a task that differs between a secret and a token.
pub trait Producer: Send + 'static {
    /// When the next regular check is due.
    fn deadline(&self) -> Instant;

    /// Something outside asks for a check now (a dev-file edit): due at once, no gap applies.
    fn wake(&mut self, now: Instant);

    /// A forced refresh arrives at `now`: whether it may check now, or is answered with what is known.
    fn admit(&mut self, now: Instant) -> bool;

    /// One check; `Ok(true)` when it published a new version. Boxed: a check's future holds SDK calls,
    /// and inline it would make every idle task that big for good.
    fn check(&mut self) -> BoxFuture<'_, Result<bool, CheckError>>;

    /// After a check at `now`: when to look again, what to log, and (for a secret) what the entry shows.
    fn checked(&mut self, now: Instant, forced: bool, result: &Result<bool, CheckError>) -> Option<View>;
}

/// Starts `producer`'s task on the services' tracker; the channel is its way in. `startup`, when given,
/// is a permit the first check waits for (a cap on checks running at once at start).
pub fn spawn<P: Producer>(
    producer: P,
    entry: Arc<Entry>,
    services: &Services,
    startup: Option<Arc<Semaphore>>,
) -> (String, mpsc::Sender<Message>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let task = Task { producer, entry: entry.clone(), metrics: services.metrics.clone(), startup };
    services.tracker.spawn(task.run(rx, services.cancel.clone()));
    (entry.name().to_owned(), tx)
}

pub(crate) struct Task<P> {
    pub(crate) producer: P,
    pub(crate) entry: Arc<Entry>,
    pub(crate) metrics: Arc<Metrics>,
    /// Taken by the first check only (and held until it ends), then dropped.
    pub(crate) startup: Option<Arc<Semaphore>>,
}

impl<P: Producer> Task<P> {
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Message>, cancel: CancellationToken) {
        let mut queued: Vec<oneshot::Sender<Answer>> = Vec::new();
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
                    () = tokio::time::sleep_until(self.producer.deadline()) => {}
                    msg = rx.recv() => match msg {
                        None => return,
                        Some(Message::Wake) => self.producer.wake(Instant::now()),
                        Some(Message::Refresh(reply)) => {
                            waiters.push(reply);
                            if !self.admit(&mut waiters) {
                                continue;
                            }
                        }
                    },
                }
                if waiters.is_empty() && self.producer.deadline() > Instant::now() {
                    continue;
                }
            }

            let forced = !waiters.is_empty();
            let mut wake_again = false;
            let _permit = match self.startup.take() {
                Some(startup) => tokio::select! {
                    p = startup.acquire_owned() => p.ok(),
                    () = cancel.cancelled() => return,
                },
                None => None,
            };
            let result = {
                let mut check = self.producer.check();
                loop {
                    tokio::select! {
                        r = &mut check => break r,
                        // Shutdown may drop a check; a publish in flight still completes (crate::publish).
                        () = cancel.cancelled() => return,
                        Some(msg) = rx.recv() => match msg {
                            Message::Wake => wake_again = true,
                            Message::Refresh(reply) if forced => {
                                self.metrics.forced(self.entry.name(), true);
                                waiters.push(reply);
                            }
                            Message::Refresh(reply) => queued.push(reply),
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
                self.producer.wake(Instant::now());
            }
        }
    }

    /// Asks the producer whether `waiters`, forced refreshes arriving now, may check. If not, answers
    /// them at once with what is known, and returns false.
    fn admit(&mut self, waiters: &mut Vec<oneshot::Sender<Answer>>) -> bool {
        let allowed = self.producer.admit(Instant::now());
        for _ in 0..waiters.len() {
            self.metrics.forced(self.entry.name(), allowed);
        }
        if !allowed {
            let report = self.report(false, false);
            for waiter in waiters.drain(..) {
                let _ = waiter.send(Ok(report.clone()));
            }
        }
        allowed
    }

    /// The bookkeeping after every check, forced or not.
    fn record(&mut self, now: Instant, forced: bool, result: Result<bool, CheckError>) -> Answer {
        let name = self.entry.name();
        let view = self.producer.checked(now, forced, &result);
        let rotation_in_progress = view.as_ref().is_some_and(|v| v.rotation_in_progress);
        let (error, answer) = match &result {
            Ok(changed) => {
                self.metrics.check(name, if *changed { CheckResult::changed } else { CheckResult::unchanged });
                self.metrics.success(name, SystemTime::now(), rotation_in_progress);
                (None, Ok(*changed))
            }
            Err(err) => {
                self.metrics.check(name, CheckResult::error);
                (Some(err.to_string()), Err(Failed))
            }
        };
        self.entry.checked(now, error, view);
        answer.map(|changed| self.report(changed, true))
    }

    /// What a caller is told: the entry's state as the store shows it now.
    fn report(&self, changed: bool, fetched: bool) -> Report {
        self.entry.read(|s| Report {
            name: self.entry.name().to_owned(),
            version_id: s.current.as_ref().map(|v| v.id.clone()),
            changed,
            fetched,
            rotation_in_progress: s.view.rotation_in_progress,
            pending_version_id: s.view.pending.as_ref().map(|v| v.id.clone()),
        })
    }
}
