//! `tests/db/load.rb` in its "steps" mode: one ActiveRecord pool on a Ruby stack, driven one step at a time
//! over stdin, for scenarios where the test acts on the far side between two of the app's steps (swaps a
//! server certificate, changes the password, kills the app's session) and counts what the server saw.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::load::{self, Stack};

/// A running load.rb in steps mode.
pub struct Steps {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: tokio::task::JoinHandle<String>,
    _dir: tempfile::TempDir,
}

/// The answer to one step.
#[derive(Debug, Clone)]
pub struct Answer(pub Value);

impl Answer {
    pub fn ok(&self) -> bool {
        self.0["ok"] == true
    }
    /// `error_class: message (cause)` of a failed step, "" for one that succeeded.
    pub fn error(&self) -> String {
        if self.ok() {
            return String::new();
        }
        format!("{}: {} (cause {})", self.0["error_class"], self.0["message"], self.0["cause"])
    }
    pub fn count(&self, key: &str) -> u64 {
        self.0[key].as_u64().unwrap_or(0)
    }
}

impl Steps {
    /// Starts load.rb with `config` (load.rb's, `mode` set to "steps") on `stack`.
    pub async fn start(mut config: Value, stack: &Stack) -> Steps {
        config["mode"] = json!("steps");
        let dir = stack.scratch_dir("sidecar-steps-");
        let mut child = load::load_rb(config, stack, dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ruby tests/db/load.rb");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut err = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut s = String::new();
            let _ = tokio::io::AsyncReadExt::read_to_string(&mut err, &mut s).await;
            s
        });
        match tokio::time::timeout(Duration::from_secs(60), stdout.next_line()).await {
            Ok(Ok(Some(line))) if line.contains("\"ready\"") => {}
            other => {
                let _ = child.start_kill();
                panic!("load.rb (steps) did not become ready: {other:?}\nstderr:\n{}", stderr.await.unwrap());
            }
        }
        Steps { child, stdin, stdout, stderr, _dir: dir }
    }

    /// Sends one step and waits for its answer.
    pub async fn step(&mut self, command: Value) -> Answer {
        self.stdin.write_all(format!("{command}\n").as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        match tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => {
                Answer(serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad answer {line}: {e}")))
            }
            other => panic!("no answer to {command}: {other:?}"),
        }
    }

    /// Ends the process (closing its stdin) and returns everything it wrote to stderr.
    pub async fn finish(mut self) -> String {
        drop(self.stdin);
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.expect("load.rb exits");
        let stderr = self.stderr.await.unwrap();
        assert!(status.as_ref().map(|s| s.success()).unwrap_or(false), "load.rb (steps) failed: {status:?}\n{stderr}");
        stderr
    }
}
