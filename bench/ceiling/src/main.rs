//! The ceiling of `make bench` (bench/bench.py): a bare axum server that answers one route with the bytes
//! the sidecar serves, and nothing else — no token, no store, no layers, no timeouts. Built by `make
//! ceiling` with the release profile and flags of the sidecar itself (static, LTO, the same per-package
//! opt-levels, two tokio workers), so the difference between the two is the sidecar's own work. Its own
//! crate is built at opt-level 3, as the sidecar's request-path crate (`edge/`) is, and as a bare axum
//! server would be: this crate is where axum's and hyper's generics are instantiated for it, so the
//! workspace's size setting would make it a lower ceiling than a real one.
//!
//!     ceiling PORT BODY_FILE     # serves GET /v1/secrets/s0 on 127.0.0.1:PORT
//!
//! Loopback only, like the sidecar.

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::get;
use axum::serve::ListenerExt;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(port), Some(body), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: ceiling PORT BODY_FILE");
        std::process::exit(2);
    };
    let port: u16 = port.parse().expect("PORT is a port number");
    let body = Bytes::from(std::fs::read(&body).expect("BODY_FILE is readable"));
    let app = Router::new().route(
        "/v1/secrets/s0",
        get(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    // The sidecar's runtime: two workers (src/main.rs).
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind 127.0.0.1");
        // The sidecar sets TCP_NODELAY on every connection too (edge/src/serve.rs).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await.expect("serve");
    });
}
