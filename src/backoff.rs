//! The arithmetic of waiting: interval jitter and retry backoff, as pure functions of a random number so
//! they can be tested exhaustively without clocks.
//!
//! Jitter matters because a service deploys many tasks at once; without it they poll in lockstep and a
//! Secrets Manager hiccup fails them all in the same second (the caching clients jitter for the same
//! reason, see docs/secrets-manager.md, "The polling loop").

use std::time::Duration;

/// Relative jitter applied to the refresh interval: each wait is drawn from `[0.9, 1.1) × interval`.
pub const INTERVAL_JITTER: f64 = 0.10;
/// First retry delay after a failed refresh.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);

/// `interval × (1 ± INTERVAL_JITTER)`, with `unit` a uniform draw from `[0, 1)`.
pub fn jittered(interval: Duration, unit: f64) -> Duration {
    let unit = unit.clamp(0.0, 1.0);
    interval.mul_f64(1.0 - INTERVAL_JITTER + 2.0 * INTERVAL_JITTER * unit)
}

/// Delay before retry number `attempt` (0 for the first retry): exponential from `base`, capped at `cap`,
/// with "equal jitter" — half the step is fixed, half random — so retries spread out but never collapse
/// to zero and hammer a struggling endpoint.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let unit = unit.clamp(0.0, 1.0);
    let step = base.saturating_mul(2u32.saturating_pow(attempt.min(31))).min(cap);
    step / 2 + (step / 2).mul_f64(unit)
}

/// A uniform draw from `[0, 1)`.
pub fn unit_random() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn backoff_doubles_from_about_one_second_up_to_the_cap() {
        let cap = Duration::from_secs(60);
        let lows: Vec<_> = (0..8).map(|a| backoff(a, DEFAULT_BACKOFF_BASE, cap, 0.0).as_millis()).collect();
        assert_eq!(lows, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(backoff(40, DEFAULT_BACKOFF_BASE, cap, 1.0), cap);
    }

    #[test]
    fn jitter_spans_ten_percent_each_side() {
        let i = Duration::from_secs(60);
        assert_eq!(jittered(i, 0.0), Duration::from_secs(54));
        assert_eq!(jittered(i, 0.5), Duration::from_secs(60));
        assert_eq!(jittered(i, 1.0), Duration::from_secs(66));
    }

    proptest! {
        #[test]
        fn jitter_stays_within_bounds(secs in 1u64..86_400, unit in 0.0f64..1.0) {
            let i = Duration::from_secs(secs);
            let j = jittered(i, unit);
            prop_assert!(j >= i.mul_f64(0.9) && j <= i.mul_f64(1.1));
        }

        #[test]
        fn backoff_is_positive_capped_and_monotone_in_its_floor(
            attempt in 0u32..1000, cap_s in 1u64..3600, unit in 0.0f64..1.0,
        ) {
            let cap = Duration::from_secs(cap_s);
            let d = backoff(attempt, DEFAULT_BACKOFF_BASE, cap, unit);
            prop_assert!(d > Duration::ZERO);
            prop_assert!(d <= cap);
            prop_assert!(backoff(attempt + 1, DEFAULT_BACKOFF_BASE, cap, 0.0) >= backoff(attempt, DEFAULT_BACKOFF_BASE, cap, 0.0));
        }
    }
}
