//! Health: the `/healthz` route (no token, no access log, cheap) and the `healthcheck` subcommand that
//! probes it, which is what ECS runs in an image that has no shell and no curl.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::http::AppState;

/// The probe gives up after this long; ECS's own healthCheck timeout is 5 s by default.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn healthz(State(state): State<AppState>) -> Response {
    let health = state.store.health(tokio::time::Instant::now(), state.max_staleness);
    let status = if health.is_healthy() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CACHE_CONTROL, "no-store")], axum::Json(health)).into_response()
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
