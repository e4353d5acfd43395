//! Issue 10's whole claim in one run: a Rails-style app under Puma keeps working across rotations of both
//! its database password (the ActiveRecord hook) and a boot-time secret (a `format=env` file read at boot,
//! and the sidecar's `--on-change` action asking Puma for a phased restart).
//!
//! Real parts only: a private MariaDB (`tests/harness/src/db.rs`); moto holding the database secret
//! (`rds!cluster-e2e`, published as `db.json`) and `prod/app` (`SECRET_KEY_BASE`, published as `app.env`);
//! the real sidecar with `--on-change 'app=http GET …/phased-restart …'` (the action watches `app` only);
//! Debian's Puma in cluster mode (the config of `tests/db/puma_restart.rs`: 2 workers, no preload, control
//! app) serving `tests/db/rails_puma.ru`, which loads ActiveRecord + mysql2 with the hook in each worker,
//! checks a connection out per request, runs `SELECT 1`, and answers the fingerprint of the
//! `SECRET_KEY_BASE` it booted with and its pid. The workers close their idle connections 4×/s, so new
//! logins happen all the time; on Debian 13 (ActiveRecord 7.2) the test also kills the app's connections
//! server-side after each database rotation, as `tests/db/rails_rotation.rs` does.
//!
//! A load loop (keep-alive and fresh connections, `puma_restart::LoadLoop`) runs throughout while the
//! test rotates, with the rotation helpers of `rails_rotation`: the database password twice (AWS's
//! single-user Lambda steps, then RDS-managed style), the boot secret once, then both together.
//! Asserted, exactly: 0 failed requests; 0 failed queries and connections; 0 stale logins, and every login
//! the server refused (its own log) is one the app's driver saw (the rotation windows, recovered by the
//! hook); no phased restart for a database rotation, exactly one per boot-secret rotation (Puma's log and
//! `/stats` phase; two "on-change action fired" lines); after each restart every worker answers with the
//! new fingerprint.
//!
//! The negative control: the same app with the password read once at boot fails requests after the first
//! database rotation. (Without the action the boot value stays old: `puma_restart`'s control.)

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::time::sleep;

use crate::SERIAL;
use crate::load::{self, Stack, epoch_now, repo};
use crate::puma_restart::{self, LoadLoop, Puma, fingerprint};
use crate::rails_rotation::{self, MAX_FILE_DELAY, MIN_ROTATION_SPACING, RotatingDb, Rotation, Style};
use harness::{Relay, db, rotate as rotate_value};

const APP_SECRET_ID: &str = "prod/app";

/// The counters of every worker that ever ran (`STATS_DIR/<pid>.json`), summed, and each worker's.
fn app_stats(dir: &Path) -> (Value, Vec<Value>) {
    let mut workers = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "json") {
            workers.push(serde_json::from_str::<Value>(&std::fs::read_to_string(e.path()).unwrap()).unwrap());
        }
    }
    let mut sum = json!({});
    for key in [
        "queries",
        "query_failures",
        "connections_opened",
        "connection_failures",
        "driver_logins",
        "driver_login_failures",
        "stale_logins",
        "pool_disconnects",
    ] {
        sum[key] = json!(workers.iter().map(|w| w[key].as_u64().unwrap_or(0)).sum::<u64>());
    }
    sum["errors"] =
        json!(workers.iter().flat_map(|w| w["errors"].as_array().cloned().unwrap_or_default()).collect::<Vec<_>>());
    (sum, workers)
}

struct Run {
    stack: Stack,
    /// "hook", or "read_once" (the negative control).
    mode: &'static str,
}

struct Outcome {
    requests: u64,
    failures: Vec<String>,
    app: Value,
    workers: Vec<Value>,
    server_auth_failures: u64,
    killed: usize,
    rotations: Vec<Rotation>,
    restarts: usize,
    actions_fired: usize,
    passwords: Vec<String>,
    logs: String,
    seconds: f64,
}

/// A database rotation of `style`, spaced from the previous one as `rails_rotation` needs, then (Debian
/// 13, with the hook) the app's connections killed server-side.
async fn rotate_db(
    side: &rails_rotation::SidecarSide,
    kill: bool,
    db: &Arc<dyn RotatingDb>,
    style: Style,
    hook: bool,
    rotations: &mut Vec<Rotation>,
    passwords: &mut Vec<String>,
) -> usize {
    if let Some(prev) = rotations.last() {
        let since = Duration::from_secs_f64((epoch_now() - prev.set_at).max(0.0));
        sleep(MIN_ROTATION_SPACING.saturating_sub(since)).await;
    }
    // Without the hook nobody asks the sidecar to refresh: the file follows on the 30 s interval, so the
    // control does not wait for it (its failures come from the database's side).
    rotations.push(rails_rotation::rotate(&side.sm, db, &side.out_dir, style, hook, passwords).await);
    if !(hook && kill) {
        return 0;
    }
    let db = db.clone();
    tokio::task::spawn_blocking(move || db.kill_connections(db::APP_USER)).await.unwrap()
}

async fn rotate_boot_secret(side: &rails_rotation::SidecarSide, value: &str) {
    rotate_value(&side.sm, APP_SECRET_ID, &puma_restart::secret(value)).await;
    assert_eq!(side.sidecar.post("/v1/secrets/app/refresh").await.status(), 200);
}

async fn assert_every_worker_answers(puma: &Puma, phase: u64, value: &str) {
    let stats = puma.wait_phase(phase, Duration::from_secs(40)).await;
    assert_eq!(puma.ask_every_worker(&stats).await.0, BTreeSet::from([fingerprint(value)]), "phase {phase}");
}

async fn run(r: Run) -> Outcome {
    let started = Instant::now();
    load::require_ruby("mysql2", &r.stack);
    puma_restart::require_puma(&r.stack);
    let kill = matches!(r.stack, Stack::Debian13 { .. });
    let hook = r.mode == "hook";
    let (db, db_port) = rails_rotation::start_db("mysql2").await;
    let initial = db::random_password();
    db.set_password(db::APP_USER, &initial);
    let mut passwords = vec![initial.clone()];
    let boot_values = [db::random_password(), db::random_password(), db::random_password()];

    let control = Relay::start(None).await;
    let app_secret = puma_restart::secret(&boot_values[0]);
    let side = rails_rotation::start_sidecar_with(&r.stack, &initial, &[(APP_SECRET_ID, &app_secret)], |b, scratch| {
        // The control app's token, shared by Puma's config and the action.
        let token_file = scratch.join("control.token");
        std::fs::write(&token_file, format!("{}\n", db::random_password())).unwrap();
        b.secret("app", &format!("{APP_SECRET_ID}?format=env")).arg("--on-change").arg(format!(
            "app=http GET http://127.0.0.1:{}/phased-restart token-file={} debounce=1s timeout=5s",
            control.port,
            token_file.display()
        ))
    })
    .await;
    let dir = side.scratch.path();
    let inner = |p: &Path| r.stack.inner_path(p).display().to_string();
    load::copy_tree(&repo().join("contrib/ruby/lib"), &dir.join("lib"));
    let stats_dir = dir.join("stats");
    std::fs::create_dir(&stats_dir).unwrap();
    let app_config = dir.join("app.json");
    let config = json!({
        "lib": inner(&dir.join("lib")),
        "env_file": inner(&side.out_dir.join("app.env")),
        "stats_dir": inner(&stats_dir),
        "mode": r.mode,
        "host": "127.0.0.1",
        "port": db_port,
        "database": db::APP_DATABASE,
        "secrets_sidecar": side.settings,
    });
    std::fs::write(&app_config, config.to_string()).unwrap();
    let config_ru = std::fs::read_to_string(repo().join("tests/db/rails_puma.ru")).unwrap();
    let puma = Puma::start_app(
        &r.stack,
        dir,
        &config_ru,
        &[("APP_CONFIG", inner(&app_config))],
        control,
        &dir.join("control.token"),
    );
    assert_every_worker_answers(&puma, 0, &boot_values[0]).await;
    let load = LoadLoop::start(puma.port);
    sleep(Duration::from_millis(1500)).await;

    let (mut rotations, mut killed) = (vec![], 0);
    if r.mode == "read_once" {
        // The control: one RDS-managed rotation; every new login after it is refused.
        killed += rotate_db(&side, kill, &db, Style::RdsManaged, hook, &mut rotations, &mut passwords).await;
        sleep(Duration::from_secs(2)).await;
    } else {
        // The database password, twice: no restart.
        for style in [Style::SingleUserLambda, Style::RdsManaged] {
            killed += rotate_db(&side, kill, &db, style, hook, &mut rotations, &mut passwords).await;
            sleep(Duration::from_millis(1000)).await;
        }
        assert_eq!(puma.phased_restarts(), 0, "a database rotation restarted Puma:\n{}", puma.log_text());
        assert_every_worker_answers(&puma, 0, &boot_values[0]).await;

        // The boot secret: one phased restart.
        rotate_boot_secret(&side, &boot_values[1]).await;
        assert_every_worker_answers(&puma, 1, &boot_values[1]).await;

        // Both together: one more restart, and the hook keeps the new workers' logins working.
        let (n, ()) = tokio::join!(
            rotate_db(&side, kill, &db, Style::RdsManaged, hook, &mut rotations, &mut passwords),
            rotate_boot_secret(&side, &boot_values[2])
        );
        killed += n;
        assert_every_worker_answers(&puma, 2, &boot_values[2]).await;
        // Room for a restart too many (debounce 1 s) to show up.
        sleep(Duration::from_secs(2)).await;
    }
    let (requests, failures) = load.finish().await;
    // The server logs a refusal as it answers; give its log writer a moment before counting.
    sleep(Duration::from_millis(200)).await;
    let server_auth_failures = db.auth_failures(db::APP_USER) as u64;
    let (app, workers) = app_stats(&stats_dir);
    let restarts = puma.phased_restarts();
    let sidecar_log = side.sidecar.log_text();
    let actions_fired = sidecar_log.lines().filter(|l| l.contains("on-change action fired")).count();
    let logs = format!("{}\n{sidecar_log}", puma.log_text());
    assert!(!logs.contains(&puma.token), "the control token reached a log");
    drop(puma);
    let seconds = started.elapsed().as_secs_f64();
    Outcome {
        requests,
        failures,
        app,
        workers,
        server_auth_failures,
        killed,
        rotations,
        restarts,
        actions_fired,
        passwords: passwords.into_iter().chain(boot_values).collect(),
        logs,
        seconds,
    }
}

fn report(title: &str, o: &Outcome) {
    let a = &o.app;
    let w = &o.workers.iter().find(|w| w["activerecord"].is_string()).cloned().unwrap_or_default();
    println!("=== {title}: ActiveRecord {} on Ruby {}; {:.1} s", w["activerecord"], w["ruby"], o.seconds);
    println!(
        "    load loop: {} requests, {} failed; app: queries {} (failed {}), connections opened {} (failed {}), \
         driver logins {} (refused {}, stale {}); server: refused logins {}; killed {}; workers {}",
        o.requests,
        o.failures.len(),
        a["queries"],
        a["query_failures"],
        a["connections_opened"],
        a["connection_failures"],
        a["driver_logins"],
        a["driver_login_failures"],
        a["stale_logins"],
        o.server_auth_failures,
        o.killed,
        o.workers.len()
    );
    println!(
        "    phased restarts {} (actions fired {}); database rotations {}",
        o.restarts,
        o.actions_fired,
        o.rotations.len()
    );
    for (i, r) in o.rotations.iter().enumerate() {
        println!("      #{} {:?}: finishSecret -> new file {} ms", i + 1, r.style, r.file_delay.as_millis());
    }
    for e in o.failures.iter().take(5) {
        println!("      failed request: {e}");
    }
    if let Some(errors) = a["errors"].as_array().filter(|e| !e.is_empty()) {
        for e in errors.iter().take(5) {
            println!("      app error: {e}");
        }
    }
}

fn assert_no_leak(o: &Outcome) {
    for pw in &o.passwords {
        assert!(!o.logs.contains(pw.as_str()), "a secret value reached Puma's or the sidecar's log");
        assert!(!o.app.to_string().contains(pw.as_str()), "a secret value reached the app's counters");
    }
}

async fn survives_both_rotations(stack: Stack) {
    let _serial = SERIAL.lock().await;
    let title = format!("{}: Rails-style app under Puma, hook + phased restart", stack.name());
    let o = run(Run { stack, mode: "hook" }).await;
    report(&title, &o);
    let a = &o.app;
    assert_eq!(o.failures, Vec::<String>::new(), "failed requests");
    assert_eq!(a["query_failures"], 0, "failed queries: {a:#}");
    assert_eq!(a["connection_failures"], 0, "failed connections: {a:#}");
    assert!(o.requests > 500, "the load loop ran: {} requests", o.requests);
    assert!(a["queries"].as_u64().unwrap() >= o.requests, "every answered request ran its query: {a:#}");
    assert!(a["connections_opened"].as_u64().unwrap() > 50, "too few new connections to prove anything: {a:#}");
    // The windows were hit and recovered from; nothing happened behind the app's back.
    assert!(a["driver_login_failures"].as_u64().unwrap() > 0, "no login ever failed: the rotations missed the load");
    assert_eq!(a["stale_logins"], 0, "logins the hook did not choose: {a:#}");
    assert_eq!(o.server_auth_failures, a["driver_login_failures"].as_u64().unwrap(), "unaccounted refusals: {a:#}");
    assert_eq!(o.rotations.len(), 3);
    for (i, r) in o.rotations.iter().enumerate() {
        assert!(r.file_delay < MAX_FILE_DELAY, "rotation {} reached the file after {:?}", i + 1, r.file_delay);
    }
    // Two boot-secret rotations, two restarts: none for the database's three.
    assert_eq!(o.restarts, 2, "phased restarts");
    assert_eq!(o.actions_fired, 2, "on-change actions fired");
    // Two workers per phase, three phases.
    assert_eq!(
        o.workers.len(),
        6,
        "workers that ever ran: {:?}",
        o.workers.iter().map(|w| &w["pid"]).collect::<Vec<_>>()
    );
    assert_no_leak(&o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rails_puma_debian12_survives_db_password_and_boot_secret_rotations_with_zero_failures() {
    survives_both_rotations(Stack::Debian12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rails_puma_debian13_survives_db_password_and_boot_secret_rotations_with_zero_failures() {
    survives_both_rotations(Stack::debian13()).await;
}

/// The control: the same app and load with the password read once at boot fails requests after the
/// first database rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rails_puma_negative_control_password_read_once_fails_requests_after_a_db_rotation() {
    let _serial = SERIAL.lock().await;
    let o = run(Run { stack: Stack::Debian12, mode: "read_once" }).await;
    report("Debian 12: Rails-style app under Puma, password read once at boot (negative control)", &o);
    assert!(!o.failures.is_empty(), "the control saw no failed request");
    assert!(o.app["query_failures"].as_u64().unwrap() > 0, "the control saw no failed query");
    assert_eq!(o.restarts, 0);
    assert_no_leak(&o);
}
