//! What the integration tests share: moto's Secrets Manager server, the real sidecar binary and private
//! database servers ([`db`]), each started privately on 127.0.0.1.
//!
//! No server is handed a port someone else might take first: moto and the sidecar bind port 0 and the
//! harness reads the port they got from their own output; servers that cannot bind port 0 (MariaDB,
//! PostgreSQL) are started again on another port when theirs was taken ([`db`]).
//!
//! The emulator comes from the pinned `moto[server]` in `.venv` (installed by `make test`); `MOTO_SERVER`
//! may name another binary. A missing emulator fails the test with instructions — it never skips.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};

pub mod aws_proxy;
pub mod credentials;
pub mod db;

pub const REGION: &str = "us-east-1";
pub const TOKEN_HEADER: &str = "X-Secrets-Sidecar-Token";
/// A port nothing in the tests listens on (a privileged one no test binds): a connection to it is
/// refused, for a sidecar that must fail before it calls anything.
pub const CLOSED_PORT: u16 = 1;

/// Polls `log` until a line containing `marker` appears and returns that line, or `None` once `child`
/// has exited or `timeout` has passed.
async fn line_of(log: &Path, marker: &str, child: &mut Child, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(marker)) {
            return Some(line.to_owned());
        }
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            return None;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// The port in `http://127.0.0.1:PORT`, `listen=127.0.0.1:PORT` or `"listen":"127.0.0.1:PORT"`.
fn port_after(line: &str, prefix: &str) -> Option<u16> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

/// The repository's root: this crate lives in `tests/harness`.
pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The sidecar's binary that cargo built for the test binary running now: beside its `deps/` directory
/// (`target/debug/deps/it-…` → `target/debug/secrets-sidecar`). Cargo builds a package's binaries before
/// its integration tests run.
pub fn sidecar_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/").join("secrets-sidecar");
    assert!(bin.exists(), "{} not found: run the tests with cargo test", bin.display());
    bin
}

fn moto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_SERVER") {
        return PathBuf::from(p);
    }
    repository().join(".venv/bin/moto_server")
}

/// The Python of the pinned test venv: the one beside the emulator (python-dotenv is pinned with moto in
/// `requirements-test.txt`), so `MOTO_SERVER` names both.
pub fn venv_python() -> PathBuf {
    let python = moto_binary().with_file_name("python");
    assert!(
        python.exists(),
        "{} not found — run `make test` (it installs the pinned test venv) or set MOTO_SERVER to the venv's \
         moto_server",
        python.display()
    );
    python
}

/// moto's server, behind a front door the harness owns: sidecars are given the front's port, which
/// stays bound for the life of the `Moto`, so the emulator can be stopped (connections to the front are
/// then cut at once, an outage) and started again, on whatever port it gets, without a sidecar noticing
/// more than the outage.
pub struct Moto {
    /// The front's port: what [`Moto::endpoint`] names.
    pub port: u16,
    front: Relay,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Moto {
    pub async fn start() -> Moto {
        let front = Relay::start(None).await;
        let dir = tempfile::Builder::new().prefix("sidecar-moto-").tempdir().unwrap();
        let mut moto = Moto { port: front.port, front, child: None, dir };
        moto.restart().await;
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server behind the front. moto keeps state in memory, so a restart starts empty.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "moto is already running");
        let bin = moto_binary();
        assert!(
            bin.exists(),
            "moto_server not found at {} — run `make test` (it installs the pinned emulator into .venv) \
             or set MOTO_SERVER",
            bin.display()
        );
        // Its log (one line per request, on stderr) goes to a file: nobody has to drain a pipe.
        let log = self.dir.path().join(format!("moto-{}.log", std::process::id()));
        let out = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let running = line_of(&log, "Running on http://127.0.0.1:", &mut child, Duration::from_secs(30)).await;
        let port = running.and_then(|l| port_after(&l, "http://127.0.0.1:")).unwrap_or_else(|| {
            panic!("moto did not start; its log:\n{}", std::fs::read_to_string(&log).unwrap_or_default())
        });
        self.child = Some(child);
        let url = format!("http://127.0.0.1:{port}/moto-api/");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "moto on port {port} does not answer");
            sleep(Duration::from_millis(50)).await;
        }
        self.front.point_at(Some(port));
    }

    /// Stops the server: connections to its endpoint are cut until [`Moto::restart`].
    pub async fn stop(&mut self) {
        self.front.point_at(None);
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// A client for the emulator, as test scripts use it.
    pub async fn client(&self) -> Client {
        self.client_in(REGION).await
    }

    /// A client for the emulator's `region`: one server serves every Region, and the SigV4 scope names it.
    pub async fn client_in(&self, region: &str) -> Client {
        let conf = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
            .endpoint_url(self.endpoint())
            .build();
        Client::from_conf(conf)
    }
}

/// A TCP relay on a port of its own (bound to port 0, held until dropped) to a target port that may
/// change or be absent (then every connection is closed at once), holding back each chunk of the
/// answers by a delay that can be set at any time. What a test hands a client before the server behind
/// it exists, or has its port.
pub struct Relay {
    pub port: u16,
    target: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: Option<u16>) -> Relay {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (target_port, delay_ms) = (Arc::new(AtomicU16::new(target.unwrap_or(0))), Arc::new(AtomicU64::new(0)));
        let (target, delay) = (target_port.clone(), delay_ms.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (target, delay) = (target.load(Ordering::Relaxed), delay.clone());
                tokio::spawn(async move {
                    if target == 0 {
                        return;
                    }
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { return };
                    let ((mut cr, mut cw), (mut sr, mut sw)) = (client.into_split(), server.into_split());
                    let up = tokio::io::copy(&mut cr, &mut sw);
                    let down = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n @ 1..) = sr.read(&mut buf).await {
                            sleep(Duration::from_millis(delay.load(Ordering::Relaxed))).await;
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = cw.shutdown().await;
                    };
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Relay { port, target: target_port, delay_ms, task }
    }

    /// New connections go to `target` from now on; `None` cuts them.
    pub fn point_at(&self, target: Option<u16>) {
        self.target.store(target.unwrap_or(0), Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A relay in front of the emulator that can hold back every chunk of its answers: the way to make a
/// check slow without changing the emulator.
pub struct SlowProxy {
    pub port: u16,
    relay: Relay,
}

impl SlowProxy {
    pub async fn start(target: &Moto) -> SlowProxy {
        let relay = Relay::start(Some(target.port)).await;
        SlowProxy { port: relay.port, relay }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Holds back each chunk of every answer from now on by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.relay.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
    }
}

pub async fn create_secret(sm: &Client, name: &str, value: &str) -> String {
    let out = sm.create_secret().name(name).secret_string(value).send().await.expect("CreateSecret");
    out.version_id.expect("version id")
}

/// A secret created with a replica in `region` (`AddReplicaRegions`). Returns its ARN.
pub async fn create_replicated_secret(sm: &Client, name: &str, value: &str, region: &str) -> String {
    let replica = aws_sdk_secretsmanager::types::ReplicaRegionType::builder().region(region).build();
    let out = sm
        .create_secret()
        .name(name)
        .secret_string(value)
        .add_replica_regions(replica)
        .send()
        .await
        .expect("CreateSecret with AddReplicaRegions");
    out.arn.expect("ARN")
}

/// The version that carries AWSCURRENT, by asking for it by stage (never the server's default: moto's
/// does not follow `UpdateSecretVersionStage`, see docs/secrets-manager.md).
pub async fn current_version(sm: &Client, id: &str) -> String {
    let out = sm.get_secret_value().secret_id(id).version_stage("AWSCURRENT").send().await.expect("GetSecretValue");
    out.version_id.expect("version id")
}

/// createSecret of a rotation: a new version labelled AWSPENDING only. Returns its id.
pub async fn rotate_pending(sm: &Client, id: &str, value: &str) -> String {
    let out = sm
        .put_secret_value()
        .secret_id(id)
        .secret_string(value)
        .version_stages("AWSPENDING")
        .send()
        .await
        .expect("PutSecretValue AWSPENDING");
    out.version_id.expect("version id")
}

/// finishSecret of a rotation: AWSCURRENT moves to `new_version`.
pub async fn finish_rotation(sm: &Client, id: &str, new_version: &str) {
    let old = current_version(sm, id).await;
    sm.update_secret_version_stage()
        .secret_id(id)
        .version_stage("AWSCURRENT")
        .move_to_version_id(new_version)
        .remove_from_version_id(old)
        .send()
        .await
        .expect("UpdateSecretVersionStage");
}

/// A whole rotation the way a rotation Lambda does it. Returns the new version id.
pub async fn rotate(sm: &Client, id: &str, value: &str) -> String {
    let v = rotate_pending(sm, id, value).await;
    finish_rotation(sm, id, &v).await;
    v
}

/// The last `lines` lines of `text`, for failure messages that show a log without drowning the assertion.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub struct SidecarBuilder {
    endpoint: Option<String>,
    endpoint_via_env: bool,
    log_format: &'static str,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    removed_envs: Vec<String>,
    secrets: Vec<String>,
    dir: Option<PathBuf>,
}

impl SidecarBuilder {
    pub fn secret(mut self, name: &str, id: &str) -> Self {
        self.secrets.push(format!("{name}={id}"));
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// Removes a variable the harness would set (e.g. the dummy AWS keys).
    pub fn env_remove(mut self, k: &str) -> Self {
        self.removed_envs.push(k.into());
        self
    }

    /// Point the SDK at the emulator through `AWS_ENDPOINT_URL_SECRETS_MANAGER`, not `--endpoint-url`.
    pub fn endpoint_via_env(mut self) -> Self {
        self.endpoint_via_env = true;
        self
    }

    /// `--log-format` (the harness defaults to text; the daemon's default is json).
    pub fn log_format(mut self, f: &'static str) -> Self {
        self.log_format = f;
        self
    }

    /// Use this output directory instead of a fresh temporary one.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    pub async fn spawn(self) -> Sidecar {
        let tmp = tempfile::Builder::new().prefix("sidecar-test-").tempdir().unwrap();
        let dir = self.dir.clone().unwrap_or_else(|| tmp.path().join("out"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = tmp.path().join("sidecar.log");
        let mut cmd = sidecar_command();
        cmd.arg("run")
            .arg("--output-dir")
            .arg(&dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--log-format")
            .arg(self.log_format);
        match (&self.endpoint, self.endpoint_via_env) {
            (Some(e), false) => cmd.arg("--endpoint-url").arg(e),
            (Some(e), true) => cmd.env("AWS_ENDPOINT_URL_SECRETS_MANAGER", e),
            (None, _) => &mut cmd,
        };
        for s in &self.secrets {
            cmd.arg("--secret").arg(s);
        }
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        for k in &self.removed_envs {
            cmd.env_remove(k);
        }
        let out = std::fs::File::create(&log).unwrap();
        cmd.stdout(out.try_clone().unwrap()).stderr(out).kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawning the sidecar");
        // The kernel picked the port; the start line names it. A sidecar that exits first (the tests that
        // start one expect that) has no address.
        let started = line_of(&log, "secrets-sidecar started", &mut child, Duration::from_secs(30)).await;
        let port = started
            .and_then(|l| port_after(&l, "listen=127.0.0.1:").or_else(|| port_after(&l, r#""listen":"127.0.0.1:"#)));
        let listen = SocketAddr::from(([127, 0, 0, 1], port.unwrap_or(0)));
        Sidecar { child: Some(child), dir, listen, log, _tmp: tmp }
    }
}

/// The sidecar binary with a clean environment: no SIDECAR_* or AWS_* from the machine, dummy
/// credentials, a region, IMDS off, and a debug log.
pub fn sidecar_command() -> Command {
    let mut cmd = Command::new(sidecar_binary());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("SIDECAR_") || k.starts_with("AWS_") || k == "RUST_LOG" {
            cmd.env_remove(&*k);
        }
    }
    cmd.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("SIDECAR_LOG", "debug");
    cmd
}

/// A running sidecar process.
pub struct Sidecar {
    child: Option<Child>,
    dir: PathBuf,
    /// Where it listens, as its start line says (port 0 when it exited before starting).
    pub listen: SocketAddr,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Sidecar {
    pub fn builder(moto: &Moto) -> SidecarBuilder {
        Self::builder_for(moto.endpoint())
    }

    /// A sidecar pointed at any Secrets Manager endpoint (a [`SlowProxy`], say).
    pub fn builder_for(endpoint: String) -> SidecarBuilder {
        SidecarBuilder { endpoint: Some(endpoint), ..Self::builder_without_aws() }
    }

    /// A sidecar not pointed at any emulator (for --dev-secrets).
    pub fn builder_without_aws() -> SidecarBuilder {
        SidecarBuilder {
            endpoint: None,
            endpoint_via_env: false,
            log_format: "text",
            args: vec![],
            envs: vec![],
            removed_envs: vec![],
            secrets: vec![],
            dir: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join(".token")).expect("reading .token")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's last 60 lines.
    pub fn log_tail(&self) -> String {
        tail(&self.log_text(), 60)
    }

    /// GET with the token.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::Client::new().get(self.url(path)).header(TOKEN_HEADER, self.token()).send().await.unwrap()
    }

    /// POST with the token.
    pub async fn post(&self, path: &str) -> reqwest::Response {
        reqwest::Client::new().post(self.url(path)).header(TOKEN_HEADER, self.token()).send().await.unwrap()
    }

    pub async fn healthz(&self) -> Option<(u16, serde_json::Value)> {
        let r = reqwest::get(self.url("/healthz")).await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.json().await.ok()?))
    }

    /// Waits until /healthz answers 200, or panics with the log.
    pub async fn wait_ready(&self) {
        self.wait_for("ready", Duration::from_secs(20), async || matches!(self.healthz().await, Some((200, _)))).await;
    }

    /// Polls `cond` every 50 ms until it holds, or panics after `timeout` showing the log.
    pub async fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond().await {
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; sidecar log (last lines):\n{}", self.log_tail());
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn read_file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(name)).ok()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().and_then(|c| c.id()).expect("running") as i32
    }

    /// Sends a signal with kill(1), as ECS's agent would send SIGTERM.
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill").args(["-s", sig, &self.pid().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut().expect("running");
        let status = tokio::time::timeout(timeout, child.wait()).await.ok()?.ok()?;
        self.child = None;
        Some(status)
    }
}

/// A thread reading a file over and over, collecting every distinct content it saw: a publication that is
/// atomic shows only whole old and whole new contents, never a torn or missing file.
pub struct ContentReader {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<BTreeSet<String>>,
}

impl ContentReader {
    pub fn start(path: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut seen = BTreeSet::new();
                // One more read after `stop`, which comes after the new file is in place: a reader thread
                // starved while the test waited still sees the new content.
                loop {
                    let stopping = stop.load(Ordering::Relaxed);
                    seen.insert(std::fs::read_to_string(&path).unwrap_or_else(|e| format!("<read failed: {e}>")));
                    if stopping {
                        break;
                    }
                }
                seen
            }
        });
        ContentReader { stop, thread }
    }

    /// Stops the reader and returns every content it saw.
    pub fn finish(self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}
