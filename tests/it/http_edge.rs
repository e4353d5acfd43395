//! The HTTP edge under abuse from inside the task: a storm of slow local clients.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::Sidecar;

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Whether the server closes `s` within `limit`.
async fn closed_within(mut s: TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Issue 8: under `axum::serve` 500 slow local connections stayed open indefinitely and memory grew with
/// them. Now a normal request is answered during the storm and every slow connection is closed after the
/// idle timeout (5 s, checked four times per timeout).
#[tokio::test]
async fn a_storm_of_500_slow_clients_is_cut_off_and_a_normal_get_still_answers() {
    let dev = tempfile::tempdir().unwrap();
    let file = dev.path().join("dev.json");
    std::fs::write(&file, r#"{"db": {"password": "p"}}"#).unwrap();
    let sidecar = Sidecar::builder_without_aws().arg("--dev-secrets").arg(file.to_str().unwrap()).spawn().await;
    sidecar.wait_ready().await;
    for _ in 0..20 {
        assert_eq!(sidecar.get("/v1/secrets/db").await.status(), 200);
    }
    let idle_rss = rss_kib(sidecar.pid());

    let mut storm = Vec::new();
    for i in 0..500 {
        let mut s = TcpStream::connect(sidecar.listen).await.unwrap();
        if i % 2 == 1 {
            // Half a request head: never the blank line that ends it.
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.unwrap();
        }
        storm.push(s);
    }
    let answered = tokio::time::timeout(Duration::from_secs(3), sidecar.get("/v1/secrets/db")).await;
    assert_eq!(answered.expect("a normal GET is answered during the storm").status(), 200);
    let storm_rss = rss_kib(sidecar.pid());

    let closed = count_closed(storm, Duration::from_secs(15)).await;
    assert_eq!(closed, 500, "slow connections left open after the idle timeout");
    assert_eq!(sidecar.get("/v1/secrets/db").await.status(), 200);
    eprintln!("RSS: idle {idle_rss} KiB, during the storm {storm_rss} KiB, after {} KiB", rss_kib(sidecar.pid()));
}

/// How many of `conns` the server closes within `limit`, all waited on at once.
async fn count_closed(conns: Vec<TcpStream>, limit: Duration) -> usize {
    let waits: Vec<_> = conns.into_iter().map(|s| tokio::spawn(closed_within(s, limit))).collect();
    let mut closed = 0;
    for w in waits {
        closed += usize::from(w.await.unwrap());
    }
    closed
}
