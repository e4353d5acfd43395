//! Shared by the Rails end-to-end tests (`tests/db/rails_rotation.rs`, `tests/db/rails_file_only.rs`):
//! the two Ruby stacks, starting `tests/db/load.rb` (the ActiveRecord load process) on one and reading
//! its summary, and the checks for the Ruby/ActiveRecord Debian packages. Included with
//! `crate::load`.
//!
//! The stacks, both from Debian packages:
//! * Debian 12 — this machine's Ruby 3.1 and ActiveRecord 6.1 (`apt-get install ruby-activerecord …`).
//! * Debian 13 — Ruby 3.3 and ActiveRecord 7.2 in a debootstrap root (`scripts/trixie-root.sh`, cached
//!   outside the clone, at `$SIDECAR_TRIXIE_ROOT`), entered with `chroot`. The databases, the emulator
//!   and the sidecar stay outside and are reached over 127.0.0.1. Whatever the Ruby process reads (the
//!   hook's `lib`, `load.rb`, the sidecar's output directory) lives in a scratch directory under the
//!   root's `/tmp`, and its paths are handed to Ruby as seen from inside.

use std::path::{Path, PathBuf};
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

/// Where `scripts/trixie-root.sh` builds the Debian 13 root when `SIDECAR_TRIXIE_ROOT` is not set.
const DEFAULT_TRIXIE_ROOT: &str = "/var/cache/secrets-sidecar/trixie-root";
/// Written by `scripts/trixie-root.sh` once the root is complete.
const TRIXIE_STAMP: &str = ".secrets-sidecar-root";

/// A Ruby + ActiveRecord stack from Debian packages.
#[derive(Clone, Debug)]
pub enum Stack {
    /// Debian 12 on this machine: Ruby 3.1, ActiveRecord 6.1.
    Debian12,
    /// Debian 13 in a debootstrap root: Ruby 3.3, ActiveRecord 7.2.
    Debian13 { root: PathBuf },
}

impl Stack {
    /// The Debian 13 root; panics (never skips) naming how to build it when it is missing.
    pub fn debian13() -> Stack {
        let root = std::env::var_os("SIDECAR_TRIXIE_ROOT").map(PathBuf::from).unwrap_or(DEFAULT_TRIXIE_ROOT.into());
        assert!(
            root.join(TRIXIE_STAMP).exists(),
            "the Debian 13 Ruby stack (Ruby 3.3, ActiveRecord 7.2) is missing at {}: build it with \
             scripts/trixie-root.sh as root (make test does; it needs the debootstrap package), or set \
             SIDECAR_TRIXIE_ROOT to where it is",
            root.display()
        );
        Stack::Debian13 { root }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Stack::Debian12 => "Debian 12",
            Stack::Debian13 { .. } => "Debian 13",
        }
    }

    /// `ruby` on this stack.
    pub fn ruby(&self) -> std::process::Command {
        match self {
            Stack::Debian12 => std::process::Command::new("ruby"),
            Stack::Debian13 { root } => {
                let mut c = std::process::Command::new("chroot");
                c.arg(root).arg("ruby");
                c
            }
        }
    }

    /// A scratch directory the stack's Ruby can read (under the root's /tmp for Debian 13).
    pub fn scratch_dir(&self, prefix: &str) -> tempfile::TempDir {
        let b = tempfile::Builder::new().prefix(prefix).tempdir_in(match self {
            Stack::Debian12 => std::env::temp_dir(),
            Stack::Debian13 { root } => root.join("tmp"),
        });
        b.unwrap_or_else(|e| panic!("scratch directory for {}: {e}", self.name()))
    }

    /// `path` (inside a scratch directory) as the stack's Ruby sees it.
    pub fn inner_path(&self, path: &Path) -> PathBuf {
        match self {
            Stack::Debian12 => path.to_path_buf(),
            Stack::Debian13 { root } => Path::new("/").join(
                path.strip_prefix(root).unwrap_or_else(|_| panic!("{} is outside {}", path.display(), root.display())),
            ),
        }
    }
}

/// Fails (never skips) when Ruby, ActiveRecord or the driver is missing, naming the Debian packages.
pub fn require_ruby(adapter: &str, stack: &Stack) {
    let (driver, package) = if adapter == "mysql2" { ("mysql2", "ruby-mysql2") } else { ("pg", "ruby-pg") };
    let how = match stack {
        Stack::Debian12 => {
            format!("run scripts/install-test-deps.sh as root, or apt-get install ruby ruby-activerecord {package}")
        }
        Stack::Debian13 { root } => format!("rebuild the root: rm -rf {} && scripts/trixie-root.sh", root.display()),
    };
    let mut probe = stack.ruby();
    probe.args(["-e", &format!("require 'active_record'; require '{driver}'")]);
    match probe.output() {
        Ok(o) if o.status.success() => {}
        other => panic!(
            "the Rails rotation tests need ruby, ruby-activerecord and {package} on {} ({how}); probe: {other:?}",
            stack.name()
        ),
    }
}

/// A running `tests/db/load.rb`.
pub struct Load {
    child: Child,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    stderr: Arc<StdMutex<String>>,
    stop_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// Copies the directory tree `from` to `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap_or_else(|err| panic!("copy {}: {err}", src.display()));
        }
    }
}

/// Copies `tests/db/load.rb` and `contrib/ruby/lib` into `dir` (for a stack that cannot see the repo).
fn stage_ruby_files(dir: &Path) {
    copy_tree(&repo().join("contrib/ruby/lib"), &dir.join("lib"));
    std::fs::copy(repo().join("tests/db/load.rb"), dir.join("load.rb")).unwrap();
}

/// `ruby load.rb` on `stack` with `config` (its `lib` set to the hook's files as the stack sees them, staged
/// into `dir` for a stack that cannot see the repo). Stdio is the caller's to set.
pub fn load_rb(mut config: Value, stack: &Stack, dir: &Path) -> Command {
    let script = match stack {
        Stack::Debian12 => {
            config["lib"] = json!(repo().join("contrib/ruby/lib"));
            repo().join("tests/db/load.rb")
        }
        Stack::Debian13 { .. } => {
            stage_ruby_files(dir);
            config["lib"] = json!(stack.inner_path(&dir.join("lib")));
            stack.inner_path(&dir.join("load.rb"))
        }
    };
    let mut cmd = Command::from(stack.ruby());
    cmd.arg(script).env("LOAD_CONFIG", config.to_string()).kill_on_drop(true);
    cmd
}

pub struct LoadResult {
    pub summary: Value,
    pub stderr: String,
}

impl Load {
    /// Spawns load.rb on `stack` with `config` (see its header; paths in it as the stack sees them) and
    /// waits until queries flow.
    pub async fn start(mut config: Value, stack: &Stack) -> Load {
        let dir = stack.scratch_dir("sidecar-load-");
        let stop_file = dir.path().join("stop");
        config["stop_file"] = json!(stack.inner_path(&stop_file));
        let mut child = load_rb(config, stack, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ruby tests/db/load.rb");
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
        "    queries {} (failed {}), connections opened {} (failed {}), driver logins {} (refused {}, \
         stale {}), reconnects {}, pool disconnects {}",
        s["queries"],
        s["query_failures"],
        s["connections_opened"],
        s["connection_failures"],
        s["driver_logins"],
        s["driver_login_failures"],
        s["stale_logins"],
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
