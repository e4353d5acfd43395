//! Who published what: one counter per published name (a secret, an `rds-iam://` token, and whatever is
//! rendered from them), raised after the file is in place. Renderers and on-change actions downstream
//! watch the counters of the names they depend on; the publishers never know who listens.
//!
//! A counter is a [`tokio::sync::watch`]: a listener sees the latest count, never a queue of them, so a
//! slow listener cannot make a publisher wait and a burst of publications reaches it as one wake-up —
//! which is what both a re-render and a debounced action want.
//!
//! The counter rises on the first publication of a name in this process, whatever the file held before
//! (so a renderer can start as soon as its inputs are there), and after that only when the file's bytes
//! changed ([`Outcome::Written`]): a new version with the same content is not a change anyone must act on.
//! So count 1 is always "the initial publish" — on-change actions skip it unless asked.

use std::collections::HashMap;
use std::future::Future;
use std::task::Poll;

use tokio::sync::watch;

use crate::publish::Outcome;

/// The counters, created once at start for every name that will be published.
#[derive(Debug, Default)]
pub struct Changes {
    counters: HashMap<String, watch::Sender<u64>>,
}

impl Changes {
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let counters = names.into_iter().map(|n| (n.into(), watch::Sender::new(0))).collect();
        Changes { counters }
    }

    /// Records that `name` was published with `outcome`; returns whether its counter rose.
    pub fn published(&self, name: &str, outcome: Outcome) -> bool {
        let Some(counter) = self.counters.get(name) else { return false };
        // `send_if_modified` notifies even without receivers and never blocks.
        counter.send_if_modified(|count| {
            if *count == 0 || outcome == Outcome::Written {
                *count += 1;
                true
            } else {
                false
            }
        })
    }

    /// A receiver of `name`'s counter, or `None` for a name that is never published.
    pub fn subscribe(&self, name: &str) -> Option<watch::Receiver<u64>> {
        self.counters.get(name).map(watch::Sender::subscribe)
    }

    /// The count so far (0: not published yet). Only tests ask; what runs waits on [`Watch`].
    #[cfg(test)]
    pub fn count(&self, name: &str) -> Option<u64> {
        self.counters.get(name).map(|c| *c.borrow())
    }

    /// The counters of `names`, watched together; `Err` names the first one that is never published.
    pub fn watch<S: AsRef<str>>(&self, names: &[S]) -> Result<Watch, String> {
        let counters = names
            .iter()
            .map(|n| self.subscribe(n.as_ref()).ok_or_else(|| n.as_ref().to_owned()))
            .collect::<Result<_, _>>()?;
        Ok(Watch { names: names.iter().map(|n| n.as_ref().to_owned()).collect(), counters })
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
    fn the_first_publication_counts_even_unchanged_then_only_written_bytes() {
        let changes = Changes::new(["db"]);
        assert_eq!(changes.count("db"), Some(0));
        assert!(changes.published("db", Outcome::Unchanged), "a restarted sidecar's first publish counts");
        assert_eq!(changes.count("db"), Some(1));
        assert!(!changes.published("db", Outcome::Unchanged));
        assert_eq!(changes.count("db"), Some(1));
        assert!(changes.published("db", Outcome::Written));
        assert_eq!(changes.count("db"), Some(2));
    }

    #[test]
    fn unknown_names_are_ignored() {
        let changes = Changes::new(["db"]);
        assert!(!changes.published("other", Outcome::Written));
        assert!(changes.subscribe("other").is_none());
        assert_eq!(changes.count("other"), None);
    }

    #[tokio::test]
    async fn a_burst_reaches_a_listener_as_one_wake_up_with_the_latest_count() {
        let changes = Changes::new(["db"]);
        let mut rx = changes.subscribe("db").unwrap();
        for _ in 0..3 {
            changes.published("db", Outcome::Written);
        }
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), 3);
        assert!(!rx.has_changed().unwrap(), "one wake-up for the three");
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_wakes_on_a_rise_of_any_of_its_names() {
        let changes = Changes::new(["db", "redis"]);
        assert_eq!(changes.watch(&["db", "other"]).unwrap_err(), "other");
        let mut watch = changes.watch(&["db", "redis"]).unwrap();
        assert_eq!(watch.counts(), [0, 0]);
        changes.published("redis", Outcome::Written);
        assert!(watch.changed().await);
        assert_eq!(watch.counts(), [0, 1]);
        let waited = tokio::time::timeout(std::time::Duration::from_secs(1), watch.changed()).await;
        assert!(waited.is_err(), "nothing rose since the counts were read");
    }
}
