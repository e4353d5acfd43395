//! Shared by the Rails end-to-end tests (`tests/rails_rotation.rs`, `tests/rails_hook_file_only.rs`):
//! starting `tests/e2e/load.rb` (the ActiveRecord load process) and reading its summary, and the checks
//! for the Ruby/ActiveRecord Debian packages. Included with `#[path = "e2e/load_harness.rs"] mod load;`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn epoch_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Fails (never skips) when Ruby, ActiveRecord or the driver is missing, naming the Debian packages.
pub fn require_ruby(adapter: &str) {
    let (driver, package) = if adapter == "mysql2" { ("mysql2", "ruby-mysql2") } else { ("pg", "ruby-pg") };
    let probe = std::process::Command::new("ruby")
        .args(["-e", &format!("require 'active_record'; require '{driver}'")])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        other => panic!(
            "the Rails rotation tests need the Debian packages ruby ruby-activerecord {package} \
             (run scripts/install-test-deps.sh as root, or apt-get install ruby ruby-activerecord {package}); \
             probe: {other:?}"
        ),
    }
}

/// A running `tests/e2e/load.rb`.
pub struct Load {
    child: Child,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    stderr: Arc<StdMutex<String>>,
    stop_file: PathBuf,
    _dir: tempfile::TempDir,
}

pub struct LoadResult {
    pub summary: Value,
    pub stderr: String,
}

impl Load {
    /// Spawns load.rb with `config` (see its header) and waits until queries flow.
    pub async fn start(mut config: Value) -> Load {
        let dir = tempfile::Builder::new().prefix("sidecar-load-").tempdir().unwrap();
        let stop_file = dir.path().join("stop");
        config["stop_file"] = json!(stop_file);
        config["lib"] = json!(repo().join("contrib/ruby/lib"));
        let mut child = Command::new("ruby")
            .arg(repo().join("tests/e2e/load.rb"))
            .env("LOAD_CONFIG", config.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ruby tests/e2e/load.rb");
        let stderr = Arc::new(StdMutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = err_pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), stdout.next_line()).await;
        match ready {
            Ok(Ok(Some(line))) if line.contains("\"ready\"") => {}
            other => panic!("load.rb did not become ready: {other:?}\nstderr:\n{}", stderr.lock().unwrap()),
        }
        Load { child, stdout, stderr, stop_file, _dir: dir }
    }

    /// Asks load.rb to stop (stop file) and returns its JSON summary and everything it wrote to stderr.
    pub async fn finish(mut self) -> LoadResult {
        std::fs::write(&self.stop_file, b"").unwrap();
        let mut last = None;
        let read_all = async {
            while let Ok(Some(line)) = self.stdout.next_line().await {
                last = Some(line);
            }
            self.child.wait().await
        };
        let status = tokio::time::timeout(Duration::from_secs(60), read_all).await.expect("load.rb did not stop");
        let stderr = self.stderr.lock().unwrap().clone();
        assert!(status.as_ref().map(|s| s.success()).unwrap_or(false), "load.rb failed: {status:?}\n{stderr}");
        let line = last.unwrap_or_else(|| panic!("load.rb printed no summary\n{stderr}"));
        let summary: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad summary {line}: {e}"));
        LoadResult { summary, stderr }
    }
}

/// Prints the load summary the way both test files report it.
pub fn print_summary(title: &str, s: &Value) {
    println!("=== {title}");
    println!(
        "    {} / {} on Ruby {}; {:.1} s",
        s["activerecord"],
        s["driver"],
        s["ruby"],
        s["seconds"].as_f64().unwrap_or(0.0)
    );
    println!(
        "    queries {} (failed {}), connections opened {} (failed {}), driver logins {} (auth retries {}), \
         reconnects {}, pool disconnects {}",
        s["queries"],
        s["query_failures"],
        s["connections_opened"],
        s["connection_failures"],
        s["driver_logins"],
        s["driver_login_failures"],
        s["reconnects"],
        s["pool_disconnects"]
    );
    if let Some(errors) = s["errors"].as_array().filter(|e| !e.is_empty()) {
        println!("    first errors:");
        for e in errors.iter().take(5) {
            println!("      {e}");
        }
    }
}

/// The last 40 lines of a text, for failure messages.
pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The load configuration both tests use: 8 threads on a pool of 5, disconnect! 4x/s, reconnect! every
/// 25 queries per thread.
pub fn load_config(adapter: &str, port: u16, database: &str, mode: &str, secrets_sidecar: Value) -> Value {
    json!({
        "adapter": adapter,
        "host": "127.0.0.1",
        "port": port,
        "database": database,
        "mode": mode,
        "threads": 8,
        "pool": 5,
        "disconnect_every": 0.25,
        "reconnect_every": 25,
        "secrets_sidecar": secrets_sidecar,
    })
}
