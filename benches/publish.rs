//! What atomic publication costs against a plain overwrite, on this machine's disk.
//!
//! `cargo bench --bench publish` — prints medians and the ratio. Shared machines are noisy, so the
//! numbers to read are the medians over many rounds and the ratio between the two ways, not any single
//! time. A plain `write` is what a naive sidecar would do; it is also the writer that the tight-reader
//! test in tests/it/daemon.rs shows to be unsafe.

use std::time::{Duration, Instant};

use secrets_sidecar::publish::FileOptions;
use secrets_sidecar::publish::Publisher;

const ROUNDS: usize = 300;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = Publisher::new(dir.path().to_path_buf(), FileOptions { mode: 0o440, uid: None, gid: None });
    let plain = dir.path().join("plain.json");
    // An RDS secret is ~150 bytes; 4 KiB covers certificates in raw format too.
    for size in [150usize, 4096] {
        let (mut atomic, mut naive) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
        for i in 0..ROUNDS {
            // Interleaved, so drift in the machine's load hits both alike.
            let content = format!("{{\"password\":\"{i:08}\",\"pad\":\"{}\"}}", "x".repeat(size));
            let t = Instant::now();
            publisher.publish("db.json", content.as_bytes()).unwrap();
            atomic.push(t.elapsed());
            let t = Instant::now();
            std::fs::write(&plain, content.as_bytes()).unwrap();
            naive.push(t.elapsed());
        }
        let (a, n) = (median(atomic), median(naive));
        println!(
            "publish {size:>5} B: atomic (temp+fsync+rename+dir fsync) median {a:?}, plain write median {n:?}, ratio {:.1}x",
            a.as_secs_f64() / n.as_secs_f64()
        );
    }
    // The no-op path: an unchanged value must cost a read, not a write.
    let content = b"{\"password\":\"same\"}";
    publisher.publish("same.json", content).unwrap();
    let times: Vec<_> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            publisher.publish("same.json", content).unwrap();
            t.elapsed()
        })
        .collect();
    println!("publish unchanged content: median {:?} (compare, no write)", median(times));
}
