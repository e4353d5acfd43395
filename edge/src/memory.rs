//! Giving back the memory a burst of connections used.
//!
//! glibc's malloc keeps what it is given back for reuse: once a storm of clients has come and gone —
//! hyper's buffers and the connections' tasks freed — the sidecar's resident memory stays at the storm's
//! level for the life of the task, which is what the container's memory reservation is measured against.
//! `malloc_trim` hands the free pages back to the kernel. It walks every arena, so it runs once when the
//! last connection of a burst has closed, never per connection or request.
//!
//! The one `unsafe` of the crate: a call into the C library, which Rust cannot check. `malloc_trim` has no
//! preconditions beyond being called on glibc, which `cfg` ensures.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A burst: at least this many connections open at once since the last trim.
pub const BURST: usize = 64;

/// How many connections are open, and the most that were since memory was last given back.
#[derive(Debug, Default)]
pub(crate) struct Occupancy {
    open: AtomicUsize,
    peak: AtomicUsize,
}

impl Occupancy {
    pub(crate) fn opened(&self) {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak.fetch_max(open, Ordering::AcqRel);
    }

    /// A connection closed; true when it was the last of a burst, and memory should be given back.
    pub(crate) fn closed(&self) -> bool {
        let open = self.open.fetch_sub(1, Ordering::AcqRel) - 1;
        open == 0 && self.peak.load(Ordering::Acquire) >= BURST && self.peak.swap(0, Ordering::AcqRel) >= BURST
    }
}

/// Gives free heap pages back to the kernel, off the runtime's workers (it takes milliseconds).
pub(crate) fn give_back() {
    drop(tokio::task::spawn_blocking(trim));
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes a byte count to keep and touches only the allocator's own state, under
    // the allocator's locks; any thread may call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_given_back_once_when_the_last_connection_of_a_burst_closes() {
        let o = Occupancy::default();
        for _ in 0..BURST {
            o.opened();
        }
        let closes: Vec<bool> = (0..BURST).map(|_| o.closed()).collect();
        assert_eq!(closes.iter().filter(|c| **c).count(), 1);
        assert!(closes[BURST - 1], "on the last close");
        // A handful of connections opening and closing, as an app's hook makes them, is no burst.
        for _ in 0..1000 {
            o.opened();
            o.opened();
            assert!(!o.closed());
            assert!(!o.closed());
        }
    }
}
