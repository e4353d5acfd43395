//! End-to-end proof of issue 4: a Rails-style app (Debian's ActiveRecord 6.1 + mysql2 / pg, with
//! `contrib/ruby/lib/secrets_sidecar/active_record.rb`) keeps working through password rotations with
//! **zero failed queries and zero failed connection attempts**, on real parts only:
//!
//! * a private MariaDB / PostgreSQL server (`tests/common/db.rs`), real password auth;
//! * moto's Secrets Manager holding `rds!cluster-e2e` = `{"username":"app","password":…}`;
//! * the real `secrets-sidecar` binary with `--refresh-interval 30s` — deliberately long, so rotation
//!   awareness (`--rotation-poll-interval`, default 2 s) and `POST …/refresh` do the work, not polling;
//! * `tests/e2e/load.rb`: 8 threads on a pool of 5 running `SELECT 1`, forcing new connections all the
//!   time (`connection_pool.disconnect!` 4×/s, `reconnect!` every 25 queries per thread).
//!
//! Rotations are staged the way AWS does them (and the way moto needs, DOMAIN.md §7):
//! * single-user Lambda: PutSecretValue AWSPENDING (createSecret) → ALTER USER (setSecret) → pause
//!   (testSecret) → UpdateSecretVersionStage AWSCURRENT (finishSecret). Between setSecret and
//!   finishSecret only the pending password works; the hook gets it from `?stage=AWSPENDING`.
//! * RDS-managed style: the password changes and AWSCURRENT moves right after.
//!
//! The negative control runs the identical load with the password read once at boot (no hook) and must
//! fail after the first rotation: the test can see the bug it guards against.
//!
//! The tests share two CPUs' worth of machine with a busy Ruby process each, so they run one at a time
//! (`SERIAL`). Missing Debian packages fail the test with their names; nothing is skipped.

mod common;
#[path = "e2e/load_harness.rs"]
mod load;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::db::{self, MariaDb, Postgres};
use load::{Load, LoadResult, epoch_now, tail};
use serde_json::{Value, json};

const SECRET_ID: &str = "rds!cluster-e2e";
const SECRET_NAME: &str = "db";
/// Upper bound for finishSecret → new file: one rotation poll (2 s) plus AWS and write time, with room
/// for a loaded machine. The refresh interval is 30 s, so staying under this proves rotation awareness.
const MAX_FILE_DELAY: Duration = Duration::from_secs(8);

/// Least time between two setSecret steps. The sidecar force-fetches at most once per `--min-refresh-gap`
/// (default 5 s): a rotation that starts within the gap of the previous forced refresh is invisible to
/// the app's refresh calls until the gap ends, longer than the hook's 2.5 s retry budget. Real rotations
/// are days apart; the test keeps them just outside the gap.
const MIN_ROTATION_SPACING: Duration = Duration::from_secs(6);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn secret_value(password: &str) -> String {
    json!({"username": db::APP_USER, "password": password}).to_string()
}

// ---------------------------------------------------------------------------------------------------
// Rotations

#[derive(Clone, Copy, Debug, PartialEq)]
enum Style {
    /// AWS's single-user rotation Lambda: pending → ALTER USER → pause → finishSecret.
    SingleUserLambda,
    /// RDS-managed: the DB password changes and AWSCURRENT moves right after.
    RdsManaged,
}

struct Rotation {
    style: Style,
    /// finishSecret returned → the file holds the new password.
    file_delay: Duration,
    /// When setSecret changed the DB password (epoch seconds).
    set_at: f64,
}

/// The database a rotation changes (ALTER USER / ALTER ROLE via the admin socket).
trait RotatingDb: Send + Sync {
    fn set_password(&self, user: &str, password: &str);
}
impl RotatingDb for MariaDb {
    fn set_password(&self, user: &str, password: &str) {
        MariaDb::set_password(self, user, password)
    }
}
impl RotatingDb for Postgres {
    fn set_password(&self, user: &str, password: &str) {
        Postgres::set_password(self, user, password)
    }
}

/// Every file under `dir` that contains `needle` (the pending value must never reach the volume).
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            hits.extend(files_containing(&p, needle));
        } else if std::fs::read(&p).map(|b| String::from_utf8_lossy(&b).contains(needle)).unwrap_or(false) {
            hits.push(p);
        }
    }
    hits
}

async fn wait_for_file_password(file: &Path, password: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let holds = |text: String| {
            serde_json::from_str::<Value>(&text).ok().and_then(|v| v["password"].as_str().map(|p| p == password))
        };
        if std::fs::read_to_string(file).ok().and_then(holds) == Some(true) {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "{} did not get the new password within {limit:?}", file.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn rotate(
    sm: &aws_sdk_secretsmanager::Client,
    db: &Arc<dyn RotatingDb>,
    out_dir: &Path,
    style: Style,
    wait_for_file: bool,
    passwords: &mut Vec<String>,
) -> Rotation {
    let pw = db::random_password();
    passwords.push(pw.clone());
    // createSecret
    let version = common::rotate_pending(sm, SECRET_ID, &secret_value(&pw)).await;
    // setSecret
    let set_at = epoch_now();
    {
        let (db, pw) = (db.clone(), pw.clone());
        tokio::task::spawn_blocking(move || db.set_password(db::APP_USER, &pw)).await.unwrap();
    }
    if style == Style::SingleUserLambda {
        // testSecret: the window in which only the pending password works.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let leaked = files_containing(out_dir, &pw);
        assert!(leaked.is_empty(), "the AWSPENDING value was written to the volume: {leaked:?}");
        tokio::time::sleep(Duration::from_millis(1300)).await;
    }
    // finishSecret
    common::finish_rotation(sm, SECRET_ID, &version).await;
    if !wait_for_file {
        // The negative control: nobody asks the sidecar to refresh, so it sees the move on its 30 s
        // interval; the failures it is about have happened by now.
        tokio::time::sleep(Duration::from_secs(3)).await;
        return Rotation { style, file_delay: Duration::ZERO, set_at };
    }
    let file_delay =
        wait_for_file_password(&out_dir.join(format!("{SECRET_NAME}.json")), &pw, Duration::from_secs(40)).await;
    Rotation { style, file_delay, set_at }
}

// ---------------------------------------------------------------------------------------------------
// One scenario: DB + moto + sidecar + load + rotations

struct Scenario {
    adapter: &'static str,
    mode: &'static str,
    rotations: Vec<Style>,
    /// Wait for each rotation to reach the file (and measure the delay).
    wait_for_file: bool,
}

struct Outcome {
    summary: Value,
    stderr: String,
    sidecar_log: String,
    rotations: Vec<Rotation>,
    passwords: Vec<String>,
}

async fn run(s: Scenario) -> Outcome {
    load::require_ruby(s.adapter);

    let (db, port): (Arc<dyn RotatingDb>, u16) = if s.adapter == "mysql2" {
        let m = tokio::task::spawn_blocking(MariaDb::start).await.unwrap();
        let port = m.port();
        (Arc::new(m), port)
    } else {
        let p = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
        let port = p.port();
        (Arc::new(p), port)
    };
    let initial = db::random_password();
    db.set_password(db::APP_USER, &initial);
    let mut passwords = vec![initial.clone()];

    let moto = common::Moto::start().await;
    let sm = moto.client().await;
    common::create_secret(&sm, SECRET_ID, &secret_value(&initial)).await;
    let sidecar = common::Sidecar::builder(&moto)
        .secret(SECRET_NAME, SECRET_ID)
        .arg("--refresh-interval")
        .arg("30s")
        .spawn()
        .await;
    sidecar.wait_ready().await;
    let out_dir = sidecar.dir().to_path_buf();
    let token_file = out_dir.join(".token");
    assert!(token_file.exists(), "the sidecar wrote no token file at {}", token_file.display());

    let load = Load::start(load::load_config(
        s.adapter,
        port,
        db::APP_DATABASE,
        s.mode,
        json!({
            "file": out_dir.join(format!("{SECRET_NAME}.json")),
            "url": format!("{}/v1/secrets/{SECRET_NAME}", sidecar.base_url()),
            "token_file": token_file,
        }),
    ))
    .await;
    // Steady state before the first rotation.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut rotations: Vec<Rotation> = vec![];
    for style in &s.rotations {
        if let Some(prev) = rotations.last() {
            let since = Duration::from_secs_f64((epoch_now() - prev.set_at).max(0.0));
            tokio::time::sleep(MIN_ROTATION_SPACING.saturating_sub(since)).await;
        }
        rotations.push(rotate(&sm, &db, &out_dir, *style, s.wait_for_file, &mut passwords).await);
        // Let connections churn on the new password before the next rotation.
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let LoadResult { summary, stderr } = load.finish().await;
    let sidecar_log = sidecar.log_text();
    // For debugging a failure: E2E_LOG_DIR=/some/dir keeps both logs (they hold no secrets; asserted below).
    if let Some(d) = std::env::var_os("E2E_LOG_DIR") {
        let d = PathBuf::from(d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("{}-{}-sidecar.log", s.adapter, s.mode)), &sidecar_log).unwrap();
        std::fs::write(d.join(format!("{}-{}-ruby.log", s.adapter, s.mode)), &stderr).unwrap();
    }
    Outcome { summary, stderr, sidecar_log, rotations, passwords }
}

fn report(title: &str, o: &Outcome) {
    load::print_summary(title, &o.summary);
    println!("    rotations {}", o.rotations.len());
    for (i, r) in o.rotations.iter().enumerate() {
        if r.file_delay.is_zero() {
            println!("      #{:<2} {:<16?} finishSecret -> new file: not measured", i + 1, r.style);
        } else {
            println!(
                "      #{:<2} {:<16?} finishSecret -> new file: {:>5} ms",
                i + 1,
                r.style,
                r.file_delay.as_millis()
            );
        }
    }
}

/// No password (initial or rotated) in the Ruby output or the sidecar's log.
fn assert_no_leak(o: &Outcome) {
    for pw in &o.passwords {
        assert!(!o.stderr.contains(pw.as_str()), "a password leaked into the Ruby process's output");
        assert!(!o.summary.to_string().contains(pw.as_str()), "a password leaked into the load summary");
        assert!(!o.sidecar_log.contains(pw.as_str()), "a password leaked into the sidecar log");
    }
}

fn assert_survived(o: &Outcome) {
    let s = &o.summary;
    assert_eq!(s["query_failures"], 0, "failed queries during rotations:\n{s:#}\n{}", tail(&o.stderr));
    assert_eq!(s["connection_failures"], 0, "failed connection attempts during rotations:\n{s:#}\n{}", tail(&o.stderr));
    assert!(s["connections_opened"].as_u64().unwrap() > 100, "too few new connections to prove anything: {s}");
    // The windows were really hit (and recovered from), not dodged.
    assert!(s["driver_login_failures"].as_u64().unwrap() > 0, "no login ever failed: the rotations missed the load");
    for (i, r) in o.rotations.iter().enumerate() {
        assert!(r.file_delay < MAX_FILE_DELAY, "rotation {} reached the file after {:?}", i + 1, r.file_delay);
    }
    assert_no_leak(o);
}

// ---------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_app_survives_ten_lambda_and_three_rds_rotations_with_zero_failures() {
    let _serial = SERIAL.lock().await;
    let mut rotations = vec![Style::SingleUserLambda; 10];
    rotations.extend([Style::RdsManaged; 3]);
    let o = run(Scenario { adapter: "mysql2", mode: "hook", rotations, wait_for_file: true }).await;
    report("MariaDB + mysql2, hook installed", &o);
    assert!(o.stderr.contains("AWSPENDING"), "the AWSPENDING fallback was never used:\n{}", tail(&o.stderr));
    assert_survived(&o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_password_read_once_at_boot_fails_after_first_rotation() {
    let _serial = SERIAL.lock().await;
    let o = run(Scenario {
        adapter: "mysql2",
        mode: "read_once",
        rotations: vec![Style::SingleUserLambda],
        wait_for_file: false,
    })
    .await;
    report("MariaDB + mysql2, password read once at boot (negative control)", &o);
    let s = &o.summary;
    assert!(s["connection_failures"].as_u64().unwrap() > 0, "the control saw no failed connection: {s}");
    assert!(s["query_failures"].as_u64().unwrap() > 0, "the control saw no failed query: {s}");
    let first = s["first_failure_at"].as_f64().expect("first_failure_at");
    assert!(first >= o.rotations[0].set_at - 0.05, "the control failed before the first rotation: {s}");
    assert_no_leak(&o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_app_survives_rotations_with_zero_failures() {
    let _serial = SERIAL.lock().await;
    let rotations = vec![Style::SingleUserLambda, Style::SingleUserLambda, Style::RdsManaged];
    let o = run(Scenario { adapter: "postgresql", mode: "hook", rotations, wait_for_file: true }).await;
    report("PostgreSQL + pg, hook installed", &o);
    assert_survived(&o);
}
