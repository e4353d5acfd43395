//! What HTTP and health read of every secret: the value last published, the pending value during a
//! rotation, when it was last checked and what went wrong. A view, not a second copy of the poller's state:
//! each secret's task in [`crate::poller`] owns its mode, schedule and versions and is the only writer of
//! its entry — `current` together with the file, the rest after each check.
//!
//! Readiness is a latch (the linkerd2-proxy pattern): false until every secret has been published once,
//! then true for the life of the process. What that means for `/healthz` is [`crate::health`]'s to say.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::http::HeaderValue;
use hyper::body::Bytes;
use serde::Serialize;
use tokio::time::Instant;

use crate::changes::Changes;
use crate::config::SecretSpec;
use crate::secret::SecretValue;

/// One published (or, for pending, fetched) version.
#[derive(Debug)]
pub struct Version {
    pub id: String,
    pub value: SecretValue,
    /// When this sidecar published it.
    pub since: SystemTime,
    /// `"<id>"`, the HTTP ETag, as the header value every answer shares: made once per version, not per
    /// request. `None` for an id that cannot be a header value (Secrets Manager's are UUIDs).
    pub etag: Option<HeaderValue>,
}

impl Version {
    pub fn new(id: String, value: SecretValue, since: SystemTime) -> Self {
        let etag = HeaderValue::from_maybe_shared(Bytes::from(format!("\"{id}\""))).ok();
        Version { id, value, since, etag }
    }
}

/// How a secret is being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// DescribeSecret each interval, GetSecretValue only on a new version.
    Describe,
    /// DescribeSecret was denied: GetSecretValue(AWSCURRENT) each interval, no rotation awareness.
    GetOnly,
}

/// What the poller shows of a secret's check state after each check.
#[derive(Debug, Clone)]
pub struct View {
    pub mode: Mode,
    /// The `AWSPENDING` value while a rotation is under way, when it could be read; never written to disk.
    pub pending: Option<Arc<Version>>,
    /// `AWSPENDING` is on another version, readable or not.
    pub rotation_in_progress: bool,
}

impl Default for View {
    fn default() -> Self {
        View { mode: Mode::Describe, pending: None, rotation_in_progress: false }
    }
}

#[derive(Debug, Clone)]
pub struct SecretState {
    pub spec: SecretSpec,
    /// The version in the file; set in the same step that writes the file.
    pub current: Option<Arc<Version>>,
    pub view: View,
    /// Last check that succeeded (monotonic, for staleness) and its wall-clock time (for display).
    pub last_success: Option<(Instant, SystemTime)>,
    /// Last failure, cleared by the next success. Its text names a reason and an AWS code, never a value.
    pub last_error: Option<String>,
    /// For an `rds-iam://` entry: when the published token expires.
    pub expires_at: Option<SystemTime>,
}

impl SecretState {
    fn new(spec: SecretSpec) -> Self {
        SecretState {
            spec,
            current: None,
            view: View::default(),
            last_success: None,
            last_error: None,
            expires_at: None,
        }
    }

    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.last_success.map(|(at, _)| now.saturating_duration_since(at))
    }
}

pub struct Store {
    secrets: RwLock<BTreeMap<String, SecretState>>,
    ready: AtomicBool,
    /// Raised by the writer after each publication that counts ([`Changes`]); read by what renders or acts
    /// on a change.
    changes: Changes,
}

impl Store {
    pub fn new(specs: &[SecretSpec]) -> Self {
        let secrets = specs.iter().map(|s| (s.name.clone(), SecretState::new(s.clone()))).collect();
        let changes = Changes::new(specs.iter().map(|s| s.name.clone()));
        Store { secrets: RwLock::new(secrets), ready: AtomicBool::new(false), changes }
    }

    /// The change counters of every name in the store.
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    pub fn get(&self, name: &str) -> Option<SecretState> {
        self.read().get(name).cloned()
    }

    /// A store of json secrets with these names, for tests.
    #[cfg(test)]
    pub(crate) fn for_names(names: &[&str]) -> Self {
        let specs: Vec<_> = names
            .iter()
            .map(|n| SecretSpec { name: n.to_string(), secret_id: n.to_string(), format: crate::config::Format::Json })
            .collect();
        Store::new(&specs)
    }

    /// Reads one secret's state in place, under the read lock: for the request path, which needs a
    /// version or two (`Arc`s), not a copy of every field.
    pub fn read_with<R>(&self, name: &str, f: impl FnOnce(&SecretState) -> R) -> Option<R> {
        self.read().get(name).map(f)
    }

    pub fn all(&self) -> Vec<SecretState> {
        self.read().values().cloned().collect()
    }

    /// Applies `f` to one secret's state; the readiness latch is re-evaluated afterwards.
    pub fn update<R>(&self, name: &str, f: impl FnOnce(&mut SecretState) -> R) -> Option<R> {
        let mut secrets = self.secrets.write().unwrap_or_else(|e| e.into_inner());
        let result = secrets.get_mut(name).map(f);
        if !self.ready.load(Ordering::Acquire) && secrets.values().all(|s| s.current.is_some()) {
            self.ready.store(true, Ordering::Release);
        }
        result
    }

    /// True once every secret has been published at least once; never false again.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, SecretState>> {
        // A poisoned lock only means a panic elsewhere; the map itself is always consistent.
        self.secrets.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(store: &Store, name: &str, now: Instant) {
        store.update(name, |s| {
            s.current =
                Some(Arc::new(Version::new("v1".into(), SecretValue::from("{}".to_owned()), SystemTime::now())));
            s.last_success = Some((now, SystemTime::now()));
        });
    }

    #[tokio::test(start_paused = true)]
    async fn ready_only_when_every_secret_is_published_then_latched() {
        let store = Store::for_names(&["a", "b"]);
        publish(&store, "a", Instant::now());
        assert!(!store.is_ready());
        publish(&store, "b", Instant::now());
        assert!(store.is_ready());
        store.update("a", |s| s.current = None);
        assert!(store.is_ready(), "never false again");
    }
}
