//! GET /v1/secrets/NAME against a running sidecar binary over loopback keep-alive connections:
//! requests per second and latency percentiles, with 1 and with 8 concurrent connections.
//!
//! `cargo bench --bench get` measures the binary cargo just built (a debug-free, optimised bench build);
//! `cargo bench --bench get -- PATH` measures another one — say a release build of an earlier commit —
//! so two versions can be compared on the same machine in the same minute. The client runs on the same
//! cores as the sidecar: compare runs with each other, not with other machines.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const TOKEN: &str = "bench-token-0123456789";
const REQUESTS: usize = 40_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `count` requests, one after the other, on one keep-alive connection; each one's latency.
async fn client(port: u16, count: usize) -> Vec<Duration> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let req = hyper::Request::get("/v1/secrets/db")
            .header("host", "127.0.0.1")
            .header("x-secrets-sidecar-token", TOKEN)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let t = Instant::now();
        let res = send.send_request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.unwrap();
        latencies.push(t.elapsed());
    }
    latencies
}

async fn ready(port: u16) -> bool {
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await else { return false };
    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
        return false;
    };
    tokio::spawn(conn);
    let req = hyper::Request::get("/healthz").header("host", "127.0.0.1").body(Empty::<Bytes>::new()).unwrap();
    send.send_request(req).await.is_ok_and(|r| r.status() == 200)
}

async fn round(port: u16, connections: usize) -> (f64, Duration, Duration) {
    let start = Instant::now();
    let clients: Vec<_> = (0..connections).map(|_| tokio::spawn(client(port, REQUESTS / connections))).collect();
    let mut all = Vec::with_capacity(REQUESTS);
    for c in clients {
        all.extend(c.await.unwrap());
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort();
    (rate, all[all.len() / 2], all[all.len() * 99 / 100])
}

fn main() {
    let binary = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_secrets-sidecar").to_owned());
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev.json");
    std::fs::write(&dev, r#"{"db": {"username": "app", "password": "0123456789abcdef0123456789abcdef"}}"#).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(&binary)
        .args(["run", "--dev-secrets", dev.to_str().unwrap(), "--output-dir", out.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--token", TOKEN])
        .env("SIDECAR_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {binary}: {e}"));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "{binary} did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Ready once the dev file's secret is published: until then the route answers 503.
        while !ready(port).await {
            assert!(Instant::now() < deadline, "{binary} did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client(port, 2_000).await; // warm-up
        println!("{binary}");
        for connections in [1, 8] {
            let (rate, p50, p99) = round(port, connections).await;
            println!(
                "  {connections} connection(s): {rate:>7.0} req/s, p50 {:>4} us, p99 {:>5} us",
                p50.as_micros(),
                p99.as_micros()
            );
        }
    });
    let _ = child.kill();
    let _ = child.wait();
}
