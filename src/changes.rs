//! Who published what: one counter per published name (a secret, an `rds-iam://` token, a rendered
//! template), raised after the file is in place. Renderers and on-change actions downstream watch the
//! counters of the names they depend on; the publishers never know who listens.
//!
//! A counter is a [`tokio::sync::watch`]: a listener sees the latest count, never a queue of them, so a
//! slow listener cannot make a publisher wait and a burst of publications reaches it as one wake-up —
//! which is what both a re-render and a debounced action want.
//!
//! The counter rises on the first publication of a name in this process, whatever the file held before
//! (so a renderer can start as soon as its inputs are there), and after that only when the file's bytes
//! were rewritten: a new version with the same content is not a change anyone must act on. So count 1 is
//! always "the initial publish" — on-change actions skip it unless asked.

use std::future::Future;
use std::task::Poll;

use tokio::sync::watch;

/// One name's counter. Its store entry owns it; [`Counter::published`] is called after each publication.
#[derive(Debug)]
pub struct Counter(watch::Sender<u64>);

impl Default for Counter {
    fn default() -> Self {
        Counter(watch::Sender::new(0))
    }
}

impl Counter {
    /// Records a publication, `rewritten` when the file's bytes changed; returns whether the count rose.
    pub fn published(&self, rewritten: bool) -> bool {
        // `send_if_modified` notifies even without receivers and never blocks.
        self.0.send_if_modified(|count| {
            if *count == 0 || rewritten {
                *count += 1;
                true
            } else {
                false
            }
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }

    /// The count so far (0: not published yet). Only tests ask; what runs waits on a [`Watch`].
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        *self.0.borrow()
    }
}

/// Several names' counters watched together, for what depends on more than one name (a template's
/// inputs, an action's watched names).
#[derive(Debug)]
pub struct Watch {
    names: Vec<String>,
    counters: Vec<watch::Receiver<u64>>,
}

impl Watch {
    /// Watches `counters`, each under the name beside it.
    pub fn new(watched: impl IntoIterator<Item = (String, watch::Receiver<u64>)>) -> Self {
        let (names, counters) = watched.into_iter().unzip();
        Watch { names, counters }
    }

    /// The names watched, in the order given.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Each name's count now, in the order given; [`Watch::changed`] then waits for a rise past them.
    pub fn counts(&mut self) -> Vec<u64> {
        self.counters.iter_mut().map(|c| *c.borrow_and_update()).collect()
    }

    /// Resolves once any counter rose since it was last read (a burst is one wake-up); false when the
    /// counters are gone (the store was dropped). Never resolves for an empty watch.
    pub async fn changed(&mut self) -> bool {
        if self.counters.is_empty() {
            return std::future::pending().await;
        }
        let mut waits: Vec<_> = self.counters.iter_mut().map(|c| Box::pin(c.changed())).collect();
        std::future::poll_fn(|cx| {
            for wait in &mut waits {
                if let Poll::Ready(r) = wait.as_mut().poll(cx) {
                    return Poll::Ready(r.is_ok());
                }
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_publication_counts_even_unchanged_then_only_rewritten_bytes() {
        let counter = Counter::default();
        assert_eq!(counter.count(), 0);
        assert!(counter.published(false), "a restarted sidecar's first publish counts");
        assert_eq!(counter.count(), 1);
        assert!(!counter.published(false));
        assert_eq!(counter.count(), 1);
        assert!(counter.published(true));
        assert_eq!(counter.count(), 2);
    }

    #[tokio::test]
    async fn a_burst_reaches_a_listener_as_one_wake_up_with_the_latest_count() {
        let counter = Counter::default();
        let mut rx = counter.subscribe();
        for _ in 0..3 {
            counter.published(true);
        }
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), 3);
        assert!(!rx.has_changed().unwrap(), "one wake-up for the three");
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_wakes_on_a_rise_of_any_of_its_names() {
        let (db, redis) = (Counter::default(), Counter::default());
        let mut watch = Watch::new([("db".to_owned(), db.subscribe()), ("redis".to_owned(), redis.subscribe())]);
        assert_eq!(watch.names(), ["db", "redis"]);
        assert_eq!(watch.counts(), [0, 0]);
        redis.published(true);
        assert!(watch.changed().await);
        assert_eq!(watch.counts(), [0, 1]);
        let waited = tokio::time::timeout(std::time::Duration::from_secs(1), watch.changed()).await;
        assert!(waited.is_err(), "nothing rose since the counts were read");
    }
}
