//! Which Region a secret is read from — its own (the primary) or its replica's — as a pure function of
//! what the two answered. No clock and no runtime: every event carries its instant, and the random draw
//! behind the jitter is injected, so the rules below are tested with exact instants.
//!
//! - A check starts in the primary. When the primary's part fails the way a failing Region fails (a 5xx,
//!   throttling that outlasted the SDK's retries, a timeout, a connection error:
//!   [`crate::source::FetchError::is_regional`]), the same check is done against the replica; a success
//!   there *fails over*: the secret is served from the replica from then on. That holds at start-up too,
//!   so a task started during an outage becomes ready.
//! - An answer from the primary — a denial, a missing secret, a key KMS will not use, a value the format
//!   rejects — never fails over: a replica must not hide a misconfiguration or a deletion. A failure that
//!   every Region shares (credentials that cannot be loaded or are refused, a full disk) says nothing
//!   about the Region and changes nothing.
//! - While served from the replica, checks go to the replica; the first check at least
//!   [`DEFAULT_RETRY_INTERVAL`] (`--failover-retry-interval`, plus up to [`RETRY_JITTER`]) after the primary
//!   was last asked goes to the primary first. A success there *returns* the secret; a refusal there
//!   returns it too, so that the refusal shows instead of the replica's value.
//!
//! So a secret switches at most twice per retry interval however its primary flickers, and each switch is
//! one event for the task to log and count.

use std::time::Duration;

use tokio::time::Instant;

/// How long a secret served from its replica waits before its own Region is asked again (the default of
/// `--failover-retry-interval`). A failing Region gets one call per secret and interval, not one per check.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(60);
/// Up to this fraction of the retry interval is added to each wait, so the tasks of a service that failed
/// over together do not all ask the recovering Region in the same second. Added, never subtracted: the
/// primary is never asked more often than once per retry interval.
pub const RETRY_JITTER: f64 = 0.2;

/// One of a secret's two copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// The secret as configured, in its own Region.
    Primary,
    /// Its replica in the failover Region.
    Replica,
}

/// What one Region's part of a check came to, as far as failover is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded.
    Answered,
    /// It failed the way a failing Region fails: another Region may well answer.
    RegionFailing,
    /// It failed for a reason every Region shares (credentials, the disk): nothing is learned.
    Inconclusive,
    /// The Region answered, and the answer was no: denied, missing, undecryptable, unusable.
    Refused,
}

/// A change of the Region a secret is served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// From the primary to the replica.
    FailedOver,
    /// From the replica back to the primary.
    Returned,
}

/// What a check does after its primary part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The check ends with the primary's result, and the secret may have switched back.
    Done(Option<Switch>),
    /// The same check goes on in the replica.
    Replica,
}

/// One secret's failover state.
pub struct Failover {
    retry_interval: Duration,
    /// A uniform draw from `[0, 1)` per wait.
    jitter: fn() -> f64,
    serving: Site,
    /// While served from the replica: the primary is not asked before this.
    primary_again_at: Instant,
}

impl Failover {
    /// A secret served from its primary, whose replica is asked when the primary fails.
    pub fn new(retry_interval: Duration, now: Instant, jitter: fn() -> f64) -> Self {
        Failover { retry_interval, jitter, serving: Site::Primary, primary_again_at: now }
    }

    /// Where the current value comes from, and where checks go.
    pub fn serving(&self) -> Site {
        self.serving
    }

    /// Where a check at `now` starts.
    pub fn start(&self, now: Instant) -> Site {
        match self.serving {
            Site::Replica if now < self.primary_again_at => Site::Replica,
            _ => Site::Primary,
        }
    }

    /// The primary's part of a check that started at `now` came to `outcome`.
    pub fn primary(&mut self, now: Instant, outcome: Outcome) -> Next {
        match outcome {
            Outcome::RegionFailing => {
                self.primary_again_at = now + self.retry_wait();
                Next::Replica
            }
            Outcome::Inconclusive => {
                self.primary_again_at = now + self.retry_wait();
                Next::Done(None)
            }
            Outcome::Answered | Outcome::Refused => Next::Done(self.switch_to(Site::Primary)),
        }
    }

    /// The replica's part of a check, after the primary's failed, came to `outcome`.
    pub fn replica(&mut self, outcome: Outcome) -> Option<Switch> {
        match outcome {
            Outcome::Answered => self.switch_to(Site::Replica),
            // Both failing: nothing changes; the next check asks the primary first again (if serving from
            // it) or keeps to the replica until the primary is due.
            _ => None,
        }
    }

    fn switch_to(&mut self, site: Site) -> Option<Switch> {
        let from = std::mem::replace(&mut self.serving, site);
        match (from, site) {
            (Site::Primary, Site::Replica) => Some(Switch::FailedOver),
            (Site::Replica, Site::Primary) => Some(Switch::Returned),
            _ => None,
        }
    }

    fn retry_wait(&self) -> Duration {
        self.retry_interval.mul_f64(1.0 + RETRY_JITTER * (self.jitter)().clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    const S: Duration = Duration::from_secs(1);

    fn failover(t0: Instant, jitter: fn() -> f64) -> Failover {
        Failover::new(DEFAULT_RETRY_INTERVAL, t0, jitter)
    }

    /// One whole check at `now`: the primary's part (if the check starts there), then the replica's if
    /// asked for. Returns where it ran and the switch it made.
    fn check(f: &mut Failover, now: Instant, primary: Outcome, replica: Outcome) -> (Vec<Site>, Option<Switch>) {
        if f.start(now) == Site::Replica {
            return (vec![Site::Replica], f.replica(replica));
        }
        match f.primary(now, primary) {
            Next::Done(switch) => (vec![Site::Primary], switch),
            Next::Replica => (vec![Site::Primary, Site::Replica], f.replica(replica)),
        }
    }

    #[test]
    fn a_failing_primary_sends_the_check_to_the_replica_and_an_answer_there_fails_over() {
        let t0 = Instant::now();
        let mut f = failover(t0, || 0.5);
        assert_eq!(
            check(&mut f, t0, RegionFailing, Answered),
            (vec![Site::Primary, Site::Replica], Some(Switch::FailedOver))
        );
        assert_eq!(f.serving(), Site::Replica);
        // Served from the replica: the next checks go there only, with no further switch.
        assert_eq!(check(&mut f, t0 + 10 * S, Answered, Answered), (vec![Site::Replica], None));
    }

    #[test]
    fn an_answer_from_the_primary_or_a_failure_every_region_shares_never_fails_over() {
        let t0 = Instant::now();
        for primary in [Refused, Inconclusive, Answered] {
            let mut f = failover(t0, || 0.5);
            assert_eq!(check(&mut f, t0, primary, Answered), (vec![Site::Primary], None), "{primary:?}");
            assert_eq!(f.serving(), Site::Primary);
        }
    }

    #[test]
    fn when_both_fail_the_secret_stays_on_the_primary_and_the_next_check_asks_it_first() {
        let t0 = Instant::now();
        let mut f = failover(t0, || 0.5);
        for outcome in [RegionFailing, Refused, Inconclusive] {
            assert_eq!(check(&mut f, t0, RegionFailing, outcome), (vec![Site::Primary, Site::Replica], None));
            assert_eq!(f.serving(), Site::Primary);
        }
        assert_eq!(f.start(t0 + S), Site::Primary);
    }

    #[test]
    fn on_the_replica_the_primary_is_asked_again_after_the_retry_interval_plus_jitter_never_less() {
        let t0 = Instant::now();
        let cases: [(fn() -> f64, f64); 3] = [(|| 0.0, 60.0), (|| 0.5, 66.0), (|| 1.0, 72.0)];
        for (jitter, wait) in cases {
            let mut f = failover(t0, jitter);
            check(&mut f, t0, RegionFailing, Answered);
            let due = t0 + Duration::from_secs_f64(wait);
            assert_eq!(f.start(due - Duration::from_millis(1)), Site::Replica, "{wait} s");
            assert_eq!(f.start(due), Site::Primary, "{wait} s");
        }
    }

    #[test]
    fn the_primary_answering_again_returns_the_secret_and_still_failing_keeps_it_on_the_replica() {
        let t0 = Instant::now();
        let mut f = failover(t0, || 0.0);
        check(&mut f, t0, RegionFailing, Answered);
        // Due at 60 s: still failing — the replica serves this check too, and the primary waits again.
        assert_eq!(check(&mut f, t0 + 60 * S, RegionFailing, Answered), (vec![Site::Primary, Site::Replica], None));
        assert_eq!(f.start(t0 + 119 * S), Site::Replica);
        assert_eq!(check(&mut f, t0 + 120 * S, Answered, Answered), (vec![Site::Primary], Some(Switch::Returned)));
        assert_eq!(f.serving(), Site::Primary);
        assert_eq!(f.start(t0 + 121 * S), Site::Primary);
    }

    /// A deletion or a policy change in the primary while the secret is on the replica must show: the
    /// secret leaves the replica with the primary's answer rather than serve a copy the primary disowned.
    #[test]
    fn a_refusal_from_the_primary_leaves_the_replica_and_an_inconclusive_failure_does_not() {
        let t0 = Instant::now();
        let mut f = failover(t0, || 0.0);
        check(&mut f, t0, RegionFailing, Answered);
        assert_eq!(check(&mut f, t0 + 60 * S, Inconclusive, Answered), (vec![Site::Primary], None));
        assert_eq!((f.serving(), f.start(t0 + 119 * S)), (Site::Replica, Site::Replica), "asked again in a minute");
        assert_eq!(check(&mut f, t0 + 120 * S, Refused, Answered), (vec![Site::Primary], Some(Switch::Returned)));
        assert_eq!(f.serving(), Site::Primary);
    }

    /// No flapping: a primary that fails one second in seven, checked every second for an hour, makes the
    /// secret switch at most twice per retry interval, and while the secret is on the replica the primary
    /// is never asked sooner than a retry interval after it was last asked.
    #[test]
    fn a_flickering_primary_switches_the_secret_at_most_twice_a_retry_interval() {
        let t0 = Instant::now();
        let mut f = failover(t0, || 0.0);
        let (mut switches, mut last_primary_ask) = (0, None);
        for i in 0..3600u32 {
            let now = t0 + i * S;
            let on_replica = f.serving() == Site::Replica;
            let primary = if i % 7 == 0 { RegionFailing } else { Answered };
            let (sites, switch) = check(&mut f, now, primary, Answered);
            switches += usize::from(switch.is_some());
            if sites[0] == Site::Primary {
                if on_replica {
                    let since = now - last_primary_ask.unwrap();
                    assert!(since >= DEFAULT_RETRY_INTERVAL, "asked again after {since:?} at {i} s");
                }
                last_primary_ask = Some(now);
            }
        }
        assert!(switches <= 2 * 60, "{switches} switches in an hour");
        assert!(switches >= 60, "the control: it does switch ({switches})");
    }
}
