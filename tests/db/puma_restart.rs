//! The boot-time secret proof of issue 10: Debian's real Puma (`puma` package: 5.6.5 on Debian 12, and
//! Debian 13's in the root of `scripts/trixie-root.sh`) in cluster mode with its control app, serving a Rack app that reads the sidecar's `format=env` file once at boot (with
//! Debian's `ruby-dotenv`, as a Rails app would) and answers every request with a fingerprint of the
//! value it booted with and its worker pid. The sidecar's `--on-change` action asks the control app for a
//! phased restart after a rotation. A load loop (keep-alive and fresh connections) runs throughout.
//!
//! Puma's config is in [`puma_rb`] (see `queue_requests` there). Asserted: one rotation → exactly one phased restart (Puma's own log line and `/stats` phase), after
//! which every worker answers with the new fingerprint; three rotations within the debounce → exactly
//! one more; zero failed requests. The control: the same app without the action keeps the old value
//! in every worker although the file has the new one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::time::sleep;

use crate::SERIAL;
use crate::load::Stack;
use harness::{Moto, Relay, Sidecar, create_secret, db, rotate};

const PUMA: &str = "/usr/bin/puma";
pub(crate) const PHASE_LOG: &str = "- Starting phased worker restart, phase: ";

/// The Rack app: reads the env file at boot, as `Dotenv.overload` in `config/boot.rb` would, and answers
/// the SHA-256 prefix of the value it booted with plus its pid.
const CONFIG_RU: &str = r##"
require "digest"
require "dotenv"
# overload, not load: a worker is forked from the master, whose ENV must not win over the file.
Dotenv.overload(ENV.fetch("APP_ENV_FILE"))
FINGERPRINT = Digest::SHA256.hexdigest(ENV.fetch("SECRET_KEY_BASE"))[0, 12]
run ->(env) { [200, { "content-type" => "text/plain" }, ["#{FINGERPRINT} #{Process.pid}"]] }
"##;

/// Puma in cluster mode, no `preload_app!` (a phased restart needs it off), with its control app; tight
/// worker timings so a restart of two workers takes seconds.
///
/// `queue_requests false`: with Puma's default (true), a worker that leaves in a phased restart closes
/// the connections it accepted but has not read a request from yet (`Server#reactor_wakeup` times out
/// every client whose `can_close?`, i.e. nothing parsed; the same code in 5.6.5 and 6.6.0), and this test
/// counted failed requests (`IncompleteMessage`, fresh and keep-alive connections alike) out of
/// 10,000–20,000 per run: 1 to 5 in each of 6 runs on 5.6.5, 0 to 2 in 3 runs on 6.6.0. Without the
/// reactor a worker's thread reads each accepted connection's request and answers it before leaving.
///
/// Both listeners bind port 0: Puma logs the ports it got, and the harness reads them there.
fn puma_rb(dir: &Path, token_file: &Path) -> String {
    format!(
        r#"
directory "{dir}"
rackup "{dir}/config.ru"
environment "production"
workers 2
preload_app! false
threads 2, 4
bind "tcp://127.0.0.1:0"
activate_control_app "tcp://127.0.0.1:0", {{ auth_token: File.read("{token}").strip }}
pidfile "{dir}/puma.pid"
worker_check_interval 1
worker_shutdown_timeout 5
worker_boot_timeout 20
queue_requests false
"#,
        dir = dir.display(),
        token = token_file.display()
    )
}

/// The ports Puma got for the app and the control app, from its log (`* Listening on http://…:PORT`,
/// `* Starting control server on http://…:PORT`): 5.6 and 6.6 both log the bound ports.
fn listening(log: &Path) -> (u16, u16) {
    let port_of = |text: &str, marker: &str| {
        let line = text.lines().find(|l| l.contains(marker))?;
        line.rsplit(':').next()?.trim().parse::<u16>().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let (Some(app), Some(control)) =
            (port_of(&text, "Listening on http://127.0.0.1:"), port_of(&text, "Starting control server on http://"))
        {
            return (app, control);
        }
        assert!(Instant::now() < deadline, "Puma did not say where it listens; its log:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn fingerprint(value: &str) -> String {
    let out = std::process::Command::new("ruby")
        .args(["-rdigest", "-e", "print Digest::SHA256.hexdigest(STDIN.read)[0, 12]"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(value.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Fails (never skips) when the stack lacks Puma, Rack or dotenv, naming how to get them.
pub(crate) fn require_puma(stack: &Stack) {
    let mut probe = stack.ruby();
    probe.args(["-e", "require 'rack'; require 'dotenv'; require 'puma'; print Puma::Const::PUMA_VERSION"]);
    let probe = probe.output();
    let how = match stack {
        Stack::Debian12 => {
            "run scripts/install-test-deps.sh as root, or apt-get install puma ruby-rack ruby-dotenv".into()
        }
        Stack::Debian13 { root } => format!("rebuild the root: rm -rf {} && scripts/trixie-root.sh", root.display()),
    };
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "the Puma test needs Debian's puma, ruby-rack and ruby-dotenv on {} ({how}): {probe:?}",
        stack.name()
    );
}

/// `puma` on this stack.
fn puma_command(stack: &Stack) -> std::process::Command {
    match stack {
        Stack::Debian12 => std::process::Command::new(PUMA),
        Stack::Debian13 { root } => {
            let mut c = std::process::Command::new("chroot");
            c.arg(root).arg(PUMA);
            c
        }
    }
}

/// A running Puma master; TERM and a wait on drop.
pub(crate) struct Puma {
    child: std::process::Child,
    log: PathBuf,
    pub(crate) port: u16,
    control_port: u16,
    /// The port the sidecar's action was given, relayed to the control app.
    _control: Relay,
    pub(crate) token: String,
}

impl Puma {
    /// Starts Puma on `stack` with its control app, reading its token from `token_file`, and points
    /// `control` (the port the sidecar's action was given) at the control app. Every path is inside `dir`,
    /// a scratch directory of the stack.
    fn start(stack: &Stack, dir: &Path, env_file: &Path, control: Relay, token_file: &Path) -> Puma {
        let env = [("APP_ENV_FILE", stack.inner_path(env_file).display().to_string())];
        Puma::start_app(stack, dir, CONFIG_RU, &env, control, token_file)
    }

    /// [`Puma::start`] with another Rack app (`config_ru`) and environment (`env`, paths as the stack sees
    /// them); the same Puma config.
    pub(crate) fn start_app(
        stack: &Stack,
        dir: &Path,
        config_ru: &str,
        env: &[(&str, String)],
        control: Relay,
        token_file: &Path,
    ) -> Puma {
        let token = std::fs::read_to_string(token_file).unwrap().trim().to_owned();
        let inner = |p: &Path| stack.inner_path(p);
        std::fs::write(dir.join("config.ru"), config_ru).unwrap();
        std::fs::write(dir.join("puma.rb"), puma_rb(&inner(dir), &inner(token_file))).unwrap();
        let log = dir.join("puma.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = puma_command(stack)
            .args(["-C", &inner(&dir.join("puma.rb")).display().to_string()])
            .current_dir(dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("SECRET_KEY_BASE")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn puma");
        let (port, control_port) = listening(&log);
        control.point_at(Some(control_port));
        Puma { child, log, port, control_port, _control: control, token }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Phased restarts Puma logged so far.
    pub(crate) fn phased_restarts(&self) -> usize {
        self.log_text().lines().filter(|l| l.contains(PHASE_LOG)).count()
    }

    pub(crate) async fn stats(&self) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/stats?token={}", self.control_port, self.token);
        reqwest::get(url).await.ok()?.json().await.ok()
    }

    /// Waits until the master is in `phase` with every worker of that phase booted.
    pub(crate) async fn wait_phase(&self, phase: u64, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.stats().await {
                let workers = s["worker_status"].as_array().cloned().unwrap_or_default();
                if s["phase"] == phase
                    && workers.len() == 2
                    && workers.iter().all(|w| w["phase"] == phase && w["booted"] == true)
                {
                    return s;
                }
            }
            assert!(Instant::now() < deadline, "Puma did not reach phase {phase}; log:\n{}", db::tail(&self.log, 40));
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks over fresh connections until every worker of `stats` has answered; returns the fingerprints
    /// seen and the pids that answered.
    pub(crate) async fn ask_every_worker(&self, stats: &Value) -> (BTreeSet<String>, BTreeSet<u64>) {
        let want: BTreeSet<u64> =
            stats["worker_status"].as_array().unwrap().iter().map(|w| w["pid"].as_u64().unwrap()).collect();
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let (mut fingerprints, mut pids) = (BTreeSet::new(), BTreeSet::new());
        for _ in 0..400 {
            let body =
                client.get(format!("http://127.0.0.1:{}/", self.port)).send().await.unwrap().text().await.unwrap();
            let (fp, pid) = body
                .split_once(' ')
                .unwrap_or_else(|| panic!("not an app's answer: {body:?}; log:\n{}", db::tail(&self.log, 40)));
            fingerprints.insert(fp.to_owned());
            pids.insert(pid.parse().unwrap());
            if pids.is_superset(&want) {
                break;
            }
        }
        assert_eq!(pids, want, "every worker of the current phase answered, and no other");
        (fingerprints, pids)
    }
}

impl Drop for Puma {
    fn drop(&mut self) {
        db::stop(&mut self.child, "TERM");
    }
}

/// Requests that never stop until told: two tasks on a keep-alive client, two opening a connection per
/// request. Every answer other than 200, and every connection error, is a failure. (With
/// `queue_requests false` Puma answers `Connection: close`, so the keep-alive client reconnects too; with
/// the default it keeps its connections, and both kinds lost requests.)
pub(crate) struct LoadLoop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LoadLoop {
    pub(crate) fn start(port: u16) -> LoadLoop {
        let (stop, ok, failures) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::default());
        let keep_alive = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let tasks = (0..4)
            .map(|i| {
                let client = if i < 2 {
                    keep_alive.clone()
                } else {
                    reqwest::Client::builder()
                        .pool_max_idle_per_host(0)
                        .timeout(Duration::from_secs(10))
                        .build()
                        .unwrap()
                };
                let (stop, ok, failures): (_, _, Arc<Mutex<Vec<String>>>) =
                    (stop.clone(), ok.clone(), Arc::clone(&failures));
                let url = format!("http://127.0.0.1:{port}/");
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = match client.get(&url).send().await {
                            Ok(r) if r.status() == 200 => r.text().await.map(drop).map_err(|e| format!("{e:?}")),
                            Ok(r) => Err(format!("status {}", r.status())),
                            Err(e) => Err(format!("{e:?}")),
                        };
                        match outcome {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures
                                .lock()
                                .unwrap()
                                .push(format!("{}: {e}", if i < 2 { "keep-alive" } else { "fresh" })),
                        }
                    }
                })
            })
            .collect();
        LoadLoop { stop, ok, failures, tasks }
    }

    pub(crate) async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (self.ok.load(Ordering::Relaxed), self.failures.lock().unwrap().clone())
    }
}

pub(crate) fn secret(v: &str) -> String {
    json!({ "SECRET_KEY_BASE": v }).to_string()
}

async fn rotate_now(sm: &aws_sdk_secretsmanager::Client, sidecar: &Sidecar, v: &str) {
    rotate(sm, "prod/app", &secret(v)).await;
    assert_eq!(sidecar.post("/v1/secrets/app/refresh").await.status(), 200);
}

/// Sets up moto, the sidecar (with the phased-restart action when `action`) and Puma booted on the
/// first value.
async fn setup(
    stack: &Stack,
    action: bool,
) -> (Moto, aws_sdk_secretsmanager::Client, Sidecar, Puma, tempfile::TempDir, String) {
    require_puma(stack);
    let moto = Moto::start().await;
    let sm = moto.client().await;
    let first = db::random_password();
    create_secret(&sm, "prod/app", &secret(&first)).await;
    // Everything Puma reads — the sidecar's output included — lives where the stack's Ruby sees it.
    let dir = stack.scratch_dir("sidecar-puma-");
    let out = dir.path().join("secrets");
    std::fs::create_dir(&out).unwrap();
    // The control app's token, shared by Puma's config and the sidecar's action (on ECS: a file on the
    // shared volume, or a secret of its own).
    let token_file = dir.path().join("control.token");
    std::fs::write(&token_file, format!("{}\n", db::random_password())).unwrap();
    let control = Relay::start(None).await;
    let mut builder =
        Sidecar::builder(&moto).secret("app", "prod/app?format=env").dir(&out).arg("--min-refresh-gap").arg("0s");
    if action {
        builder = builder.arg("--on-change").arg(format!(
            "app=http GET http://127.0.0.1:{}/phased-restart token-file={} debounce=1s timeout=5s",
            control.port,
            token_file.display()
        ));
    }
    let sidecar = builder.spawn().await;
    // The app boots after the sidecar is ready (ECS: dependsOn HEALTHY), so the file is there.
    sidecar.wait_ready().await;
    let puma = Puma::start(stack, dir.path(), &out.join("app.env"), control, &token_file);
    puma.wait_phase(0, Duration::from_secs(60)).await;
    (moto, sm, sidecar, puma, dir, first)
}

#[tokio::test]
async fn puma_phased_restart_after_rotations_serves_the_new_value_without_a_failed_request_debian12() {
    phased_restart_after_rotations(&Stack::Debian12).await;
}

#[tokio::test]
async fn puma_phased_restart_after_rotations_serves_the_new_value_without_a_failed_request_debian13() {
    phased_restart_after_rotations(&Stack::debian13()).await;
}

async fn phased_restart_after_rotations(stack: &Stack) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (_moto, sm, sidecar, puma, _dir, first) = setup(stack, true).await;
    let stats = puma.wait_phase(0, Duration::from_secs(30)).await;
    assert_eq!(puma.ask_every_worker(&stats).await.0, BTreeSet::from([fingerprint(&first)]));
    let load = LoadLoop::start(puma.port);
    sleep(Duration::from_secs(2)).await;
    assert_eq!(puma.phased_restarts(), 0, "the initial publish restarts nothing");

    let second = db::random_password();
    rotate_now(&sm, &sidecar, &second).await;
    let stats = puma.wait_phase(1, Duration::from_secs(30)).await;
    assert_eq!(puma.ask_every_worker(&stats).await.0, BTreeSet::from([fingerprint(&second)]));
    assert_eq!(puma.phased_restarts(), 1);

    // Three rotations inside the 1 s debounce: one restart, and the last value.
    let mut last = String::new();
    for _ in 0..3 {
        last = db::random_password();
        rotate_now(&sm, &sidecar, &last).await;
    }
    let stats = puma.wait_phase(2, Duration::from_secs(30)).await;
    sleep(Duration::from_secs(3)).await;
    assert_eq!(puma.phased_restarts(), 2, "one restart for the burst of three; log:\n{}", puma.log_text());
    assert_eq!(puma.stats().await.unwrap()["phase"], 2);
    assert_eq!(puma.ask_every_worker(&stats).await.0, BTreeSet::from([fingerprint(&last)]));

    let (ok, failures) = load.finish().await;
    let version = puma.log_text().lines().find_map(|l| Some(l.split_once("* Puma version: ")?.1.to_owned()));
    println!(
        "=== {}: Puma {} cluster (2 workers), phased restarts: {}; load loop: {ok} requests, {} failed; {:.1} s",
        stack.name(),
        version.unwrap_or_default(),
        puma.phased_restarts(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(ok > 500, "the load loop ran: {ok} requests");
    assert_eq!(failures, Vec::<String>::new(), "no request failed during the restarts");
    let log = sidecar.log_text();
    assert_eq!(log.lines().filter(|l| l.contains("on-change action fired")).count(), 2, "{}", sidecar.log_tail());
    assert!(!log.contains(&puma.token), "the control token never reaches the sidecar's log");
}

/// The control: without the action, the file changes but every worker keeps the value it booted with.
#[tokio::test]
async fn puma_workers_keep_the_boot_value_without_the_action() {
    let _serial = SERIAL.lock().await;
    let (_moto, sm, sidecar, puma, _dir, first) = setup(&Stack::Debian12, false).await;
    let second = db::random_password();
    rotate_now(&sm, &sidecar, &second).await;
    assert_eq!(sidecar.read_file("app.env").unwrap(), format!("SECRET_KEY_BASE={second}\n"));
    sleep(Duration::from_secs(4)).await;
    let stats = puma.wait_phase(0, Duration::from_secs(5)).await;
    assert_eq!(puma.ask_every_worker(&stats).await.0, BTreeSet::from([fingerprint(&first)]));
    assert_eq!(puma.phased_restarts(), 0);
}
