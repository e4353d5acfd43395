//! The listener: which connections are served, and for how long. HTTP/1.1 only (what docs/http-api.md
//! documents), through hyper's own connection builder, because `axum::serve` closes no connection that
//! goes quiet: a client that sends nothing keeps its connection, and its buffers, for ever.
//!
//! - A connection that sends nothing for [`IDLE_TIMEOUT`] after being accepted is closed before hyper sees
//!   it, so a storm of silent clients costs sockets, not buffers.
//! - After that, a connection that completes no request head for [`IDLE_TIMEOUT`] — it sends half a head,
//!   trickles one a byte at a time, or sits idle between requests — is closed within 1.25× that time,
//!   unless an answer is still being made for it (a forced refresh). This is checked by one timer per
//!   connection that ticks four times per timeout and reads the connection's request count
//!   ([`crate::dispatch`]), not by hyper's header-read timeout: that one arms a timer for every request
//!   head, and re-registering and cancelling a timer per request is a visible part of a GET's cost.
//! - At most [`MAX_CONNECTIONS`] are open at once. At the cap the sidecar stops accepting: further
//!   connections wait in the kernel's backlog, costing this process no memory, until a slot frees.
//! - When the last connection of a burst closes, the memory the burst used is given back to the kernel
//!   ([`crate::memory`]).
//! - On shutdown it stops accepting, lets requests in flight finish and closes idle connections; the
//!   caller bounds the wait with the shutdown grace.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::dispatch::{Activity, Routes};
use crate::memory::{self, Occupancy};

/// How long a connection may go without completing a request head: to send its first one, or the next.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Open connections at once. An app's pool needs a handful; a few hundred idle connections cost a few
/// MiB at most.
pub const MAX_CONNECTIONS: usize = 512;
/// A failed `accept` (out of file descriptors, say) is retried after this pause rather than in a hot loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// Idle checks per [`Limits::idle_timeout`]: a quiet connection is closed between 1 and 1 + 1/4 timeouts
/// after its last request head.
const IDLE_CHECKS: u32 = 4;

/// What a connection may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { idle_timeout: IDLE_TIMEOUT, max_connections: MAX_CONNECTIONS }
    }
}

/// Serves `routes` on `listener` until `shutdown` fires, then waits for the open connections to finish.
pub async fn serve(listener: TcpListener, routes: Routes, limits: Limits, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let occupancy = Arc::new(Occupancy::default());
    let graceful = GracefulShutdown::new();
    // No timer: hyper's header-read timeout stays off (see the module's docs for what replaces it).
    let builder = http1::Builder::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let (builder, service, watcher, shutdown) =
            (builder.clone(), routes.connection(), graceful.watcher(), shutdown.clone());
        let (idle_timeout, occupancy) = (limits.idle_timeout, occupancy.clone());
        occupancy.opened();
        tokio::spawn(async move {
            serve_one(stream, builder, service, watcher, shutdown, idle_timeout).await;
            drop(slot);
            if occupancy.closed() {
                memory::give_back();
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// One connection, until it closes or goes idle.
async fn serve_one(
    stream: tokio::net::TcpStream,
    builder: http1::Builder,
    service: crate::dispatch::Connection,
    watcher: hyper_util::server::graceful::Watcher,
    shutdown: CancellationToken,
    idle_timeout: Duration,
) {
    // A connection that sends nothing never reaches hyper, whose buffers are allocated on the first
    // read: it costs a socket and this task until the timeout closes it.
    // `peek`, not `readable`: tokio reports a fresh socket readable before any byte arrives.
    let mut first = [0u8; 1];
    tokio::select! {
        sent = tokio::time::timeout(idle_timeout, stream.peek(&mut first)) => {
            if !matches!(sent, Ok(Ok(1..))) {
                return;
            }
        }
        () = shutdown.cancelled() => return,
    }
    let activity = service.activity();
    // The connection in a task of its own, which polls hyper alone: were the idle check beside it in
    // one `select!`, its timer would be polled at every wake-up of the connection, once per request.
    // Until here, this task is a few hundred bytes, not the size of hyper's state.
    let conn = tokio::spawn(watcher.watch(builder.serve_connection(TokioIo::new(stream), service)));
    let abort = conn.abort_handle();
    // Aborting drops the connection, which closes it. Timeouts and clients that vanish end here; not
    // worth a log line.
    tokio::select! {
        _ = conn => {}
        () = idle(&activity, idle_timeout) => abort.abort(),
    }
}

/// Returns once the connection has completed no request head, and had no answer in the making, for
/// `timeout` (to within a quarter of it).
async fn idle(activity: &Activity, timeout: Duration) {
    let period = timeout / IDLE_CHECKS;
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut seen, mut quiet) = (activity.heads(), 0);
    loop {
        tick.tick().await;
        let heads = activity.heads();
        if heads != seen || activity.answering() {
            (seen, quiet) = (heads, 0);
            continue;
        }
        quiet += 1;
        if quiet == IDLE_CHECKS {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::FastPath;
    use axum::Router;
    use axum::http::{HeaderMap, Method, Response, Uri};
    use axum::routing::get;
    use http_body_util::Full;
    use hyper::body::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const MS: Duration = Duration::from_millis(1);

    async fn start(limits: Limits) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let app = Router::new().route("/", get(|| async { "ok" })).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(800)).await;
                "slow"
            }),
        );
        tokio::spawn(serve(listener, Routes::new(app, Declines), limits, cancel.clone()));
        (addr, cancel)
    }

    /// Every request goes to the router.
    struct Declines;

    impl FastPath for Declines {
        fn answer(&self, _: &Method, _: &Uri, _: &HeaderMap) -> Option<Response<Full<Bytes>>> {
            None
        }
    }

    /// Sends `req` and reads the answer until the server closes the connection.
    async fn exchange(addr: std::net::SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Waits (at most `limit`) until the server closes `s`.
    async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(limit, s.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }

    /// Under `axum::serve` a client that sends nothing, or half a header, keeps its connection; here not.
    #[tokio::test]
    async fn silent_and_half_sent_connections_are_closed_after_the_header_timeout() {
        let (addr, _cancel) = start(Limits { idle_timeout: 300 * MS, max_connections: 16 }).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 256];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        for (what, s) in [("silent", &mut silent), ("partial header", &mut partial), ("idle keep-alive", &mut idle)] {
            assert!(closed_within(s, Duration::from_secs(5)).await, "{what} connection still open");
        }
    }

    /// The idle check counts request heads, not bytes or time since accept: a connection that keeps asking
    /// stays open for many timeouts, and one that trickles a head a byte at a time is closed (a check of
    /// bytes read would keep it; one that did not restart would close the busy one).
    #[tokio::test]
    async fn a_connection_that_keeps_asking_stays_open_and_a_trickled_head_is_closed() {
        let (addr, _cancel) = start(Limits { idle_timeout: 400 * MS, max_connections: 16 }).await;
        let trickle = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().cycle().take(40) {
                if s.write_all(&[*b]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(100 * MS).await;
            }
            closed_within(&mut s, 100 * MS).await
        });
        let mut busy = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 256];
        for i in 0..16 {
            busy.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            let n = busy.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "request {i}: {}", String::from_utf8_lossy(&buf[..n]));
            tokio::time::sleep(150 * MS).await;
        }
        assert!(trickle.await.unwrap(), "a head trickled over 4 s was not cut off by a 400 ms idle timeout");
    }

    /// A routed answer that takes longer than the idle timeout (a forced refresh) is still sent.
    #[tokio::test]
    async fn an_answer_slower_than_the_idle_timeout_is_still_sent() {
        let (addr, _cancel) = start(Limits { idle_timeout: 200 * MS, max_connections: 16 }).await;
        let answer = exchange(addr, b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("slow"), "{answer:?}");
    }

    #[tokio::test]
    async fn at_the_cap_new_connections_wait_until_a_slot_frees() {
        let (addr, _cancel) = start(Limits { idle_timeout: 1000 * MS, max_connections: 4 }).await;
        let mut silent = connect_many(addr, 4).await;
        tokio::time::sleep(50 * MS).await;
        let started = tokio::time::Instant::now();
        let answer = tokio::spawn(exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
        let answer = answer.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Served only once the silent connections were cut off: the cap held until then.
        assert!(started.elapsed() >= 500 * MS, "answered after {:?} although every slot was taken", started.elapsed());
        for s in &mut silent {
            assert!(closed_within(s, Duration::from_secs(1)).await);
        }
    }

    #[tokio::test]
    async fn below_the_cap_a_request_is_answered_while_slow_clients_hold_connections() {
        let (addr, _cancel) = start(Limits { idle_timeout: Duration::from_secs(30), max_connections: 8 }).await;
        let _silent = connect_many(addr, 7).await;
        let answer = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    async fn connect_many(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(TcpStream::connect(addr).await.unwrap());
        }
        v
    }

    /// HTTP/2 cleartext (prior knowledge) is not served: nothing documents it, so nothing tests it.
    #[tokio::test]
    async fn http2_prior_knowledge_is_not_served() {
        let (addr, _cancel) = start(Limits::default()).await;
        let answer = exchange(addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await;
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 4"), "{answer:?}");
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_stops_accepting() {
        let (addr, cancel) = start(Limits::default()).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 256];
        assert!(idle.read(&mut buf).await.unwrap() > 0);
        cancel.cancel();
        assert!(closed_within(&mut idle, Duration::from_secs(2)).await);
        tokio::time::sleep(50 * MS).await;
        assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed");
    }
}
