//! When a secret is checked next: a pure function of what has happened to it. No clock and no runtime —
//! every event carries its instant, and the random draw behind jitter comes from an injected [`Jitter`] —
//! so the rules below are tested with exact instants.
//!
//! - After a successful check: `--refresh-interval` ±10%.
//! - While a rotation is in progress (`AWSPENDING` on another version, readable or not): every
//!   `--rotation-poll-interval` ±10%, for at most [`ROTATION_FAST_POLL_CAP`] from when it was first seen. The
//!   single-user window ends when `finishSecret` moves `AWSCURRENT`, and that should reach the file within
//!   seconds; a rotation that failed half-way can leave `AWSPENDING` behind for good, hence the cap.
//! - After a forced check that found nothing new and no rotation: `--rotation-poll-interval` for
//!   [`SUSPECT_WINDOW`]. RDS-managed rotation does not document its order, and the app's failing login is
//!   the best hint that something is about to move.
//! - After a transient failure (throttling, timeouts, network, refused credentials): exponential backoff
//!   with jitter from about 1 s, capped at the interval in force. After a permanent one (denied, missing,
//!   an invalid value): the interval in force, jittered — retrying those every second only burns API calls.
//! - A forced check is allowed once per `--min-refresh-gap`; one refused inside the gap schedules one
//!   check for the moment the gap ends, so a rotation that began just after the last forced check is seen
//!   seconds later rather than an interval later.

use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::{DEFAULT_BACKOFF_BASE, backoff, jittered};

/// How long a rotation may keep a secret on the fast `--rotation-poll-interval` before it falls back to the
/// normal interval: a rotation that failed half-way leaves `AWSPENDING` behind indefinitely.
pub const ROTATION_FAST_POLL_CAP: Duration = Duration::from_secs(15 * 60);
/// How long an app's report of failing credentials keeps a secret on fast polling.
pub const SUSPECT_WINDOW: Duration = Duration::from_secs(60);

/// The configured intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub refresh_interval: Duration,
    pub rotation_poll_interval: Duration,
    pub min_refresh_gap: Duration,
}

/// A uniform draw from `[0, 1)` for each jittered wait. Production uses [`crate::backoff::unit_random`];
/// tests pass a constant and get exact deadlines.
pub type Jitter = Box<dyn FnMut() -> f64 + Send + Sync>;

/// What a successful check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// A new `AWSCURRENT` version was published.
    pub changed: bool,
    pub rotation_in_progress: bool,
    /// A client asked for this check (`POST …/refresh`).
    pub forced: bool,
}

/// How a failed check is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Likely to pass soon: back off exponentially from about a second.
    Transient,
    /// Will not pass by itself: wait for the interval in force.
    Permanent,
}

/// The answer to a forced check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    /// Check now.
    Allowed,
    /// Inside `--min-refresh-gap`: not now, but one check is scheduled for `at`, when the gap ends.
    Refused { at: Instant },
}

/// One secret's schedule.
pub struct Schedule {
    timing: Timing,
    jitter: Jitter,
    /// The next regular check.
    next: Instant,
    /// A check asked for by a forced refresh refused inside the gap.
    deferred: Option<Instant>,
    /// Consecutive failed checks.
    failures: u32,
    /// When the rotation now in progress was first seen.
    rotation_since: Option<Instant>,
    suspect_until: Option<Instant>,
    last_forced: Option<Instant>,
}

impl Schedule {
    /// A schedule whose first check is due at `now`.
    pub fn new(timing: Timing, now: Instant, jitter: Jitter) -> Self {
        Schedule {
            timing,
            jitter,
            next: now,
            deferred: None,
            failures: 0,
            rotation_since: None,
            suspect_until: None,
            last_forced: None,
        }
    }

    /// When the next check is due.
    pub fn deadline(&self) -> Instant {
        self.deferred.map_or(self.next, |d| d.min(self.next))
    }

    /// Whether the secret is polled every `--rotation-poll-interval` at `now`.
    pub fn fast_polling(&self, now: Instant) -> bool {
        self.rotation_since.is_some_and(|t| now.saturating_duration_since(t) < ROTATION_FAST_POLL_CAP)
            || self.suspect_until.is_some_and(|t| now < t)
    }

    /// Consecutive failures so far.
    #[cfg(test)]
    pub fn failures(&self) -> u32 {
        self.failures
    }

    fn interval(&self, now: Instant) -> Duration {
        if self.fast_polling(now) { self.timing.rotation_poll_interval } else { self.timing.refresh_interval }
    }

    /// A client asks for a check at `now`.
    pub fn force(&mut self, now: Instant) -> Forced {
        if let Some(t) = self.last_forced
            && now.saturating_duration_since(t) < self.timing.min_refresh_gap
        {
            let at = t + self.timing.min_refresh_gap;
            self.deferred = Some(at);
            return Forced::Refused { at };
        }
        self.last_forced = Some(now);
        Forced::Allowed
    }

    /// Something outside asks for a check now (a dev-file edit): due at once, no gap applies.
    pub fn wake(&mut self, now: Instant) {
        self.next = self.next.min(now);
    }

    /// A check finished successfully at `now`.
    pub fn checked(&mut self, now: Instant, c: Checked) {
        self.failures = 0;
        self.deferred = None;
        self.rotation_since = match (c.rotation_in_progress, self.rotation_since) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(now),
            (false, _) => None,
        };
        if c.changed {
            self.suspect_until = None;
        } else if c.forced && !c.rotation_in_progress {
            self.suspect_until = Some(now + SUSPECT_WINDOW);
        }
        let interval = self.interval(now);
        self.next = now + jittered(interval, (self.jitter)());
    }

    /// A check failed at `now`. Returns the wait until the retry.
    pub fn failed(&mut self, now: Instant, failure: Failure) -> Duration {
        self.deferred = None;
        let interval = self.interval(now);
        let unit = (self.jitter)();
        let wait = match failure {
            Failure::Transient => backoff(self.failures, DEFAULT_BACKOFF_BASE, interval, unit),
            Failure::Permanent => jittered(interval, unit),
        };
        self.failures = self.failures.saturating_add(1);
        self.next = now + wait;
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn timing() -> Timing {
        Timing { refresh_interval: 60 * S, rotation_poll_interval: 2 * S, min_refresh_gap: 5 * S }
    }

    /// A schedule whose jitter always draws `unit`: 0.5 is the interval exactly, 0.0 its low end.
    fn schedule(t0: Instant, unit: f64) -> Schedule {
        Schedule::new(timing(), t0, Box::new(move || unit))
    }

    const PLAIN: Checked = Checked { changed: false, rotation_in_progress: false, forced: false };
    const ROTATING: Checked = Checked { changed: false, rotation_in_progress: true, forced: false };

    #[test]
    fn the_first_check_is_due_at_once_then_one_interval_after_each_check() {
        let t0 = Instant::now();
        let mut s = schedule(t0, 0.5);
        assert_eq!(s.deadline(), t0);
        s.checked(t0 + S, PLAIN);
        assert_eq!(s.deadline(), t0 + 61 * S);
    }

    #[test]
    fn jitter_is_the_injected_draw() {
        let t0 = Instant::now();
        let mut low = schedule(t0, 0.0);
        low.checked(t0, PLAIN);
        assert_eq!(low.deadline(), t0 + 54 * S);
        let mut high = schedule(t0, 1.0);
        high.checked(t0, PLAIN);
        assert_eq!(high.deadline(), t0 + 66 * S);
    }

    #[test]
    fn a_rotation_polls_fast_for_fifteen_minutes_from_when_it_was_first_seen() {
        let t0 = Instant::now();
        let mut s = schedule(t0, 0.5);
        s.checked(t0, ROTATING);
        assert_eq!(s.deadline(), t0 + 2 * S);
        // Still rotating just before the cap: still fast, counted from t0, not from the latest check.
        let before_cap = t0 + ROTATION_FAST_POLL_CAP - S;
        s.checked(before_cap, ROTATING);
        assert_eq!(s.deadline(), before_cap + 2 * S);
        let at_cap = t0 + ROTATION_FAST_POLL_CAP;
        s.checked(at_cap, ROTATING);
        assert_eq!(s.deadline(), at_cap + 60 * S, "after the cap: the normal interval");
        // The rotation ends and a new one begins: fast again.
        s.checked(at_cap + 60 * S, PLAIN);
        s.checked(at_cap + 120 * S, ROTATING);
        assert_eq!(s.deadline(), at_cap + 122 * S);
    }

    #[test]
    fn a_forced_check_that_finds_nothing_polls_fast_for_the_suspect_window() {
        let t0 = Instant::now();
        let mut s = schedule(t0, 0.5);
        s.checked(t0, PLAIN);
        assert_eq!(s.force(t0 + 10 * S), Forced::Allowed);
        s.checked(t0 + 10 * S, Checked { forced: true, ..PLAIN });
        assert_eq!(s.deadline(), t0 + 12 * S);
        let last_fast = t0 + 10 * S + SUSPECT_WINDOW - S;
        s.checked(last_fast, PLAIN);
        assert_eq!(s.deadline(), last_fast + 2 * S);
        let after = t0 + 10 * S + SUSPECT_WINDOW;
        s.checked(after, PLAIN);
        assert_eq!(s.deadline(), after + 60 * S);
    }

    #[test]
    fn a_change_ends_the_suspect_window() {
        let t0 = Instant::now();
        let mut s = schedule(t0, 0.5);
        s.checked(t0, Checked { forced: true, ..PLAIN });
        assert!(s.fast_polling(t0 + S));
        s.checked(t0 + 2 * S, Checked { changed: true, ..PLAIN });
        assert!(!s.fast_polling(t0 + 3 * S));
        assert_eq!(s.deadline(), t0 + 62 * S);
    }

    #[test]
    fn transient_failures_back_off_from_about_a_second_up_to_the_interval() {
        let t0 = Instant::now();
        let mut s = schedule(t0, 0.0);
        let waits: Vec<u64> = (0..8).map(|_| s.failed(t0, Failure::Transient).as_millis() as u64).collect();
        // Equal jitter at its low end: half of each doubling step, the step capped at the 60 s interval.
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(s.failures(), 8);
        s.checked(t0, PLAIN);
        assert_eq!(s.failures(), 0);
        assert_eq!(s.failed(t0, Failure::Transient), Duration::from_millis(500), "a success resets the backoff");
    }

    #[test]
    fn permanent_failures_wait_the_interval_in_force() {
        let t0 = Instant::now();
        let mut s = schedule(t0, 0.5);
        assert_eq!(s.failed(t0, Failure::Permanent), 60 * S);
        assert_eq!(s.failed(t0, Failure::Permanent), 60 * S, "no doubling, no shortening");
        assert_eq!(s.deadline(), t0 + 60 * S);
        // During a rotation the interval in force is the fast one, for either kind.
        s.checked(t0, ROTATING);
        assert_eq!(s.failed(t0 + S, Failure::Permanent), 2 * S);
        assert_eq!(s.failed(t0 + 3 * S, Failure::Transient), Duration::from_millis(1500));
    }

    #[test]
    fn a_forced_check_inside_the_gap_is_refused_and_one_check_runs_when_the_gap_ends() {
        let t0 = Instant::now();
        let mut s = schedule(t0, 0.5);
        assert_eq!(s.force(t0), Forced::Allowed);
        s.checked(t0, Checked { changed: true, ..PLAIN });
        assert_eq!(s.deadline(), t0 + 60 * S);
        assert_eq!(s.force(t0 + S), Forced::Refused { at: t0 + 5 * S });
        assert_eq!(s.force(t0 + 3 * S), Forced::Refused { at: t0 + 5 * S }, "a second refusal adds nothing");
        assert_eq!(s.deadline(), t0 + 5 * S);
        // The deferred check runs and is a regular one: the next is an interval later.
        s.checked(t0 + 5 * S, PLAIN);
        assert_eq!(s.deadline(), t0 + 65 * S);
        // The gap counts from the last allowed forced check.
        assert_eq!(s.force(t0 + 5 * S), Forced::Allowed);
    }

    #[test]
    fn the_deferred_check_never_delays_an_earlier_one() {
        let t0 = Instant::now();
        let mut s = schedule(t0, 0.5);
        s.force(t0);
        s.checked(t0, ROTATING);
        assert_eq!(s.force(t0 + S), Forced::Refused { at: t0 + 5 * S });
        assert_eq!(s.deadline(), t0 + 2 * S);
    }

    #[test]
    fn wake_makes_the_check_due_now_without_touching_the_gap() {
        let t0 = Instant::now();
        let mut s = schedule(t0, 0.5);
        s.force(t0);
        s.checked(t0, Checked { changed: true, ..PLAIN });
        s.wake(t0 + S);
        assert_eq!(s.deadline(), t0 + S);
        assert_eq!(s.force(t0 + S), Forced::Refused { at: t0 + 5 * S });
    }
}
