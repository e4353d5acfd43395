//! Health: what "healthy" means — the answer `/healthz` gives (its route lives in [`crate::http`]) — and
//! the `healthcheck` subcommand that probes it, which is what ECS runs in an image that has no shell and no
//! curl.
//!
//! Healthy means ready and not stale. Ready is the store's latch: every secret published once, then never
//! false again, because a later Secrets Manager outage must not make ECS replace every task of a service
//! at once. `--max-staleness` is the one, opt-in, way back to unhealthy — and, for an `rds-iam://` entry, a
//! token that would expire unrenewed: a task whose app cannot log in any more is better replaced.
//!
//! A `--template` is an entry like a secret: readiness waits for its first render, and a later failed
//! render shows in its `last_error` without turning health red, as a rejected secret version does — the
//! app keeps the last good file. It is never stale by itself (it has no `last_success`): its inputs are.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use http_body_util::Empty;
use hyper::StatusCode;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::time::Instant;

use crate::store::Store;

/// The probe gives up after this long; ECS's own healthCheck timeout is 5 s by default.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Unhealthy when a published RDS IAM token expires within this long: its task renews a token two
/// minutes before it expires, so by then every renewal since has failed.
pub const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    Starting,
    Stale,
    /// An RDS IAM token expires within [`TOKEN_EXPIRY_MARGIN`] (or has expired) unrenewed.
    Expiring,
}

/// The `/healthz` body.
#[derive(Debug, Serialize)]
pub struct Health {
    pub status: HealthStatus,
    pub secrets: BTreeMap<String, SecretHealth>,
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.status == HealthStatus::Ok
    }
}

#[derive(Debug, Serialize)]
pub struct SecretHealth {
    pub ready: bool,
    pub version_id: Option<String>,
    /// Seconds since the last successful check.
    pub age_seconds: Option<u64>,
    pub stale: bool,
    pub last_error: Option<String>,
    /// For an `rds-iam://` entry: seconds until the published token expires (negative once it has).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<i64>,
    /// For a Secrets Manager secret: the Region it is read in, its replica's while it is failed over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// While a secret is served from its replica: its own Region's last failure. The value is current, so
    /// this does not make the task unhealthy; a failing replica does, through `--max-staleness`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_error: Option<String>,
}

/// The health of every secret in `store` at `now`.
pub fn health(store: &Store, now: Instant, max_staleness: Option<Duration>) -> Health {
    health_at(store, now, SystemTime::now(), max_staleness)
}

/// [`health`] at a given wall-clock time too (token expiry is wall-clock).
pub fn health_at(store: &Store, now: Instant, wall: SystemTime, max_staleness: Option<Duration>) -> Health {
    let mut stale = false;
    let mut expiring = false;
    let secrets = store
        .entries()
        .map(|entry| {
            let s = entry.state();
            let age = s.last_success.map(|(at, _)| now.saturating_duration_since(at));
            let is_stale = matches!((max_staleness, age), (Some(max), Some(age)) if age > max);
            stale |= is_stale;
            let expires_in = s.current.as_ref().and_then(|v| v.expires_at()).map(|at| match at.duration_since(wall) {
                Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
            });
            expiring |= expires_in.is_some_and(|left| left < TOKEN_EXPIRY_MARGIN.as_secs() as i64);
            let health = SecretHealth {
                ready: s.current.is_some(),
                version_id: s.current.as_ref().map(|v| v.id.clone()),
                age_seconds: age.map(|a| a.as_secs()),
                stale: is_stale,
                last_error: s.last_error.clone(),
                expires_in_seconds: expires_in,
                region: s.view.region.as_deref().map(str::to_owned),
                primary_error: s.view.primary_error.clone(),
            };
            (entry.name().to_owned(), health)
        })
        .collect();
    let status = match (store.is_ready(), stale, expiring) {
        (false, _, _) => HealthStatus::Starting,
        (true, _, true) => HealthStatus::Expiring,
        (true, true, false) => HealthStatus::Stale,
        (true, false, false) => HealthStatus::Ok,
    };
    Health { status, secrets }
}

/// Where the probe connects for a `--listen` address: a wildcard listen is reached on loopback.
pub fn probe_addr(listen: SocketAddr) -> SocketAddr {
    match listen {
        SocketAddr::V4(a) if a.ip().is_unspecified() => (Ipv4Addr::LOCALHOST, a.port()).into(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => (Ipv6Addr::LOCALHOST, a.port()).into(),
        other => other,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {}", humantime::format_duration(PROBE_TIMEOUT))]
    Timeout,
    #[error("request failed: {0}")]
    Request(String),
    #[error("unhealthy: HTTP {0}")]
    Status(StatusCode),
}

/// GET /healthz on `listen`; Ok when it answers 200.
pub async fn probe(listen: SocketAddr) -> Result<(), ProbeError> {
    let uri = format!("http://{}/healthz", probe_addr(listen));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::get(uri).body(Empty::new()).map_err(|e| ProbeError::Request(e.to_string()))?;
    let res = tokio::time::timeout(PROBE_TIMEOUT, client.request(req))
        .await
        .map_err(|_| ProbeError::Timeout)?
        .map_err(|e| ProbeError::Request(e.to_string()))?;
    match res.status() {
        StatusCode::OK => Ok(()),
        other => Err(ProbeError::Status(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretValue;
    use crate::store::Version;
    use std::sync::Arc;
    use std::time::SystemTime;

    fn publish(store: &Store, name: &str, now: Instant) {
        let entry = store.get(name).unwrap();
        entry.publish(Arc::new(Version::rendered("v1".into(), SecretValue::from("{}".to_owned()))), true);
        entry.checked(now, None, None);
    }

    #[tokio::test(start_paused = true)]
    async fn healthy_once_every_secret_is_published_and_through_an_outage() {
        let store = Store::for_names(&["a", "b"]);
        let now = Instant::now();
        publish(&store, "a", now);
        assert_eq!(health(&store, now, None).status, HealthStatus::Starting);
        publish(&store, "b", now);
        // An outage afterwards: errors are reported, health stays.
        store.get("a").unwrap().set_error(Some("timed out".into()));
        tokio::time::advance(Duration::from_secs(3600)).await;
        let h = health(&store, Instant::now(), None);
        assert!(h.is_healthy());
        assert_eq!(h.secrets["a"].last_error.as_deref(), Some("timed out"));
        assert_eq!(h.secrets["a"].age_seconds, Some(3600));
    }

    #[tokio::test(start_paused = true)]
    async fn max_staleness_turns_health_red_only_past_the_limit() {
        let store = Store::for_names(&["a"]);
        publish(&store, "a", Instant::now());
        let max = Some(Duration::from_secs(300));
        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(health(&store, Instant::now(), max).is_healthy());
        tokio::time::advance(Duration::from_secs(2)).await;
        let h = health(&store, Instant::now(), max);
        assert_eq!(h.status, HealthStatus::Stale);
        assert!(h.secrets["a"].stale);
    }

    #[test]
    fn an_iam_token_turns_health_red_only_when_it_would_expire_unrenewed() {
        let store = Store::for_names(&["db"]);
        let now = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = Version::token("v1".into(), SecretValue::from("{}".to_owned()), wall + Duration::from_secs(900));
        store.get("db").unwrap().publish(Arc::new(token), true);
        let h = health_at(&store, now, wall, None);
        assert_eq!((h.status, h.secrets["db"].expires_in_seconds), (HealthStatus::Ok, Some(900)));
        // Renewals failing since the 10-minute mark: healthy while more than a minute is left.
        let h = health_at(&store, now, wall + Duration::from_secs(839), None);
        assert_eq!((h.status, h.secrets["db"].expires_in_seconds), (HealthStatus::Ok, Some(61)));
        let h = health_at(&store, now, wall + Duration::from_secs(841), None);
        assert_eq!((h.status, h.secrets["db"].expires_in_seconds), (HealthStatus::Expiring, Some(59)));
        let h = health_at(&store, now, wall + Duration::from_secs(1000), None);
        assert_eq!((h.status, h.secrets["db"].expires_in_seconds), (HealthStatus::Expiring, Some(-100)));
        assert!(!h.is_healthy());
        // A secret without a token says nothing about expiry.
        assert!(!serde_json::to_string(&health(&store_with_plain(), now, None)).unwrap().contains("expires_in"));
    }

    fn store_with_plain() -> Store {
        let s = Store::for_names(&["a"]);
        publish(&s, "a", Instant::now());
        s
    }

    #[test]
    fn wildcard_listen_is_probed_on_loopback() {
        assert_eq!(probe_addr("0.0.0.0:2773".parse().unwrap()), "127.0.0.1:2773".parse().unwrap());
        assert_eq!(probe_addr("[::]:2773".parse().unwrap()), "[::1]:2773".parse().unwrap());
        assert_eq!(probe_addr("127.0.0.2:80".parse().unwrap()), "127.0.0.2:80".parse().unwrap());
    }

    #[tokio::test]
    async fn probe_of_a_closed_port_fails_fast() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        assert!(matches!(probe(addr).await, Err(ProbeError::Request(_))));
    }

    #[tokio::test]
    async fn probe_of_a_silent_server_times_out() {
        // Accepts connections (the kernel's backlog) but never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(matches!(probe(addr).await, Err(ProbeError::Timeout)));
        drop(listener);
    }
}
