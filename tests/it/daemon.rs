//! The daemon against moto's Secrets Manager, through the real binary: what a task sees from start to
//! SIGTERM. Each test starts its own emulator and sidecar on free loopback ports.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use harness::{Moto, Sidecar, create_secret, rotate, rotate_pending};
use serde_json::{Value, json};

fn creds(password: &str) -> String {
    json!({"username": "app", "password": password, "engine": "mysql", "port": 3306}).to_string()
}

#[tokio::test]
async fn start_publishes_file_with_mode_and_serves_the_same_body() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    let version = create_secret(&sm, "rds!cluster-abc", &creds("p1")).await;
    let sidecar = Sidecar::builder(&moto).secret("db", "rds!cluster-abc").spawn().await;
    sidecar.wait_ready().await;

    let path = sidecar.dir().join("db.json");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), creds("p1"), "file holds the SecretString exactly");
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o440);
    assert_eq!(std::fs::metadata(sidecar.dir().join(".token")).unwrap().mode() & 0o7777, 0o440);
    assert_eq!(sidecar.token().len(), 64, "32 random bytes, hex");

    let r = sidecar.get("/v1/secrets/db").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["etag"], format!("\"{version}\"").as_str());
    assert_eq!(r.text().await.unwrap(), creds("p1"));

    let r = sidecar.get("/v1/secrets/db/port").await;
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "3306".to_owned()));
    let r = sidecar.get("/v1/secrets/db/username").await;
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "app".to_owned()));
    assert_eq!(sidecar.get("/v1/secrets/db/nope").await.status(), 404);
    assert_eq!(sidecar.get("/v1/secrets/other").await.status(), 404);

    let not_modified = reqwest::Client::new()
        .get(sidecar.url("/v1/secrets/db"))
        .header(harness::TOKEN_HEADER, sidecar.token())
        .header("If-None-Match", format!("\"{version}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);

    let metrics = reqwest::get(sidecar.url("/metrics")).await.unwrap();
    assert_eq!(metrics.status(), 200, "metrics need no token");
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains(r#"secrets_sidecar_checks_total{secret="db",result="changed"} 1"#), "{metrics}");
    assert!(!metrics.contains("p1"), "metrics carry no value");

    let list: Value = sidecar.get("/v1/secrets").await.json().await.unwrap();
    assert_eq!(list["secrets"][0]["name"], "db");
    assert_eq!(list["secrets"][0]["version_id"], version.as_str());
    assert!(!list.to_string().contains("p1\""), "the listing carries no value: {list}");
}

#[tokio::test]
async fn rotation_reaches_file_and_http_within_one_refresh_interval() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "prod/app/db", &creds("old")).await;
    let interval = Duration::from_secs(2);
    let sidecar = Sidecar::builder(&moto).secret("db", "prod/app/db").arg("--refresh-interval").arg("2s").spawn().await;
    sidecar.wait_ready().await;
    let inode = std::fs::metadata(sidecar.dir().join("db.json")).unwrap().ino();

    // Nothing changes across several intervals: the file is not rewritten (watchers must not fire).
    tokio::time::sleep(interval * 2).await;
    assert_eq!(std::fs::metadata(sidecar.dir().join("db.json")).unwrap().ino(), inode);

    let new_version = rotate(&sm, "prod/app/db", &creds("new")).await;
    // One interval plus its 10% jitter, plus the round trip and publish on a loaded 2-core machine.
    sidecar
        .wait_for(
            "the rotated value in the file and on HTTP",
            interval.mul_f64(1.1) + Duration::from_millis(1500),
            async || {
                sidecar.read_file("db.json").as_deref() == Some(creds("new").as_str())
                    && sidecar.get("/v1/secrets/db").await.text().await.unwrap() == creds("new")
            },
        )
        .await;
    let r = sidecar.get("/v1/secrets/db").await;
    assert_eq!(r.headers()["etag"], format!("\"{new_version}\"").as_str());
    assert_eq!(r.text().await.unwrap(), creds("new"));
}

#[tokio::test]
async fn several_secrets_one_missing_the_others_are_served_and_health_names_the_missing_one() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "a", &creds("a")).await;
    create_secret(&sm, "b", &creds("b")).await;
    let sidecar =
        Sidecar::builder(&moto).secret("a", "a").secret("b", "b").secret("gone", "never-created").spawn().await;
    sidecar
        // The file is written first, then the store that HTTP serves from: wait for both.
        .wait_for("a and b published", Duration::from_secs(15), async || {
            sidecar.read_file("a.json").is_some()
                && sidecar.read_file("b.json").is_some()
                && sidecar.get("/v1/secrets/b").await.status() == 200
                && sidecar.get("/v1/secrets/a").await.status() == 200
        })
        .await;
    assert_eq!(sidecar.get("/v1/secrets/a").await.text().await.unwrap(), creds("a"));
    assert_eq!(sidecar.get("/v1/secrets/gone").await.status(), 503);
    sidecar
        .wait_for("health to report the missing secret", Duration::from_secs(10), async || {
            matches!(sidecar.healthz().await, Some((503, h)) if h["secrets"]["gone"]["last_error"].is_string())
        })
        .await;
    let (_, h) = sidecar.healthz().await.unwrap();
    assert_eq!(h["status"], "starting");
    assert!(h["secrets"]["gone"]["last_error"].as_str().unwrap().contains("not found"), "{h}");
    assert_eq!(h["secrets"]["a"]["ready"], true);
    assert!(sidecar.read_file("gone.json").is_none());
}

#[tokio::test]
async fn emulator_outage_keeps_the_last_value_and_health_then_the_next_change_arrives() {
    let mut moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "db", &creds("before")).await;
    let sidecar = Sidecar::builder(&moto).secret("db", "db").arg("--refresh-interval").arg("1s").spawn().await;
    sidecar.wait_ready().await;

    moto.stop().await;
    sidecar
        .wait_for(
            "the outage to be noticed",
            Duration::from_secs(15),
            async || matches!(sidecar.healthz().await, Some((_, h)) if h["secrets"]["db"]["last_error"].is_string()),
        )
        .await;
    let (status, h) = sidecar.healthz().await.unwrap();
    assert_eq!(status, 200, "an AWS outage must not make ECS replace the task: {h}");
    assert_eq!(sidecar.get("/v1/secrets/db").await.text().await.unwrap(), creds("before"));
    assert_eq!(sidecar.read_file("db.json").unwrap(), creds("before"));

    // moto starts empty after a restart: the secret comes back as a new version with a new value.
    moto.restart().await;
    create_secret(&sm, "db", &creds("after")).await;
    sidecar
        .wait_for("the change after the outage", Duration::from_secs(20), async || {
            sidecar.read_file("db.json").as_deref() == Some(creds("after").as_str())
        })
        .await;
    sidecar
        .wait_for(
            "the error to clear",
            Duration::from_secs(5),
            async || matches!(sidecar.healthz().await, Some((200, h)) if h["secrets"]["db"]["last_error"].is_null()),
        )
        .await;
}

#[tokio::test]
async fn max_staleness_turns_health_red_during_a_long_outage() {
    let mut moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "db", &creds("x")).await;
    let sidecar = Sidecar::builder(&moto)
        .secret("db", "db")
        .arg("--refresh-interval")
        .arg("1s")
        .arg("--max-staleness")
        .arg("3s")
        .spawn()
        .await;
    sidecar.wait_ready().await;
    moto.stop().await;
    sidecar
        .wait_for(
            "health to turn stale",
            Duration::from_secs(15),
            async || matches!(sidecar.healthz().await, Some((503, h)) if h["status"] == "stale"),
        )
        .await;
}

#[tokio::test]
async fn a_value_that_is_not_a_json_object_is_rejected_and_the_last_good_one_kept() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "db", &creds("good")).await;
    let sidecar = Sidecar::builder(&moto).secret("db", "db").arg("--refresh-interval").arg("1s").spawn().await;
    sidecar.wait_ready().await;

    rotate(&sm, "db", "plain-text-not-json").await;
    sidecar
        .wait_for("the rejection in health", Duration::from_secs(10), async || {
            matches!(sidecar.healthz().await,
                Some((200, h)) if h["secrets"]["db"]["last_error"].as_str().is_some_and(|e| e.contains("rejected")))
        })
        .await;
    assert_eq!(sidecar.read_file("db.json").unwrap(), creds("good"));
    assert_eq!(sidecar.get("/v1/secrets/db").await.text().await.unwrap(), creds("good"));
    assert!(!sidecar.log_text().contains("plain-text-not-json"), "the rejected value must not be logged");

    // A valid version afterwards is published as usual.
    rotate(&sm, "db", &creds("better")).await;
    sidecar
        .wait_for("the next valid version", Duration::from_secs(10), async || {
            sidecar.read_file("db.json").as_deref() == Some(creds("better").as_str())
        })
        .await;
}

/// Reads `path` in a tight loop until `stop`, counting reads that are not one whole JSON document.
fn tight_reader(
    path: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    bad: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut reads = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(bytes) = std::fs::read(&path) {
                reads += 1;
                let whole = serde_json::from_slice::<Value>(&bytes)
                    .is_ok_and(|v| v["pad"].as_str().is_some_and(|p| p.len() == 65_536));
                if !whole {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        reads
    })
}

fn padded(i: usize) -> String {
    json!({"username": "app", "password": format!("pw-{i}"), "pad": "x".repeat(65_536)}).to_string()
}

#[tokio::test]
async fn a_concurrent_reader_never_sees_partial_content_during_500_updates() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "db", &padded(0)).await;
    let sidecar = Sidecar::builder(&moto).secret("db", "db").arg("--min-refresh-gap").arg("0s").spawn().await;
    sidecar.wait_ready().await;

    let (stop, bad) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let reader = tight_reader(sidecar.dir().join("db.json"), stop.clone(), bad.clone());
    for i in 1..=500 {
        rotate(&sm, "db", &padded(i)).await;
        let report: Value = sidecar.post("/v1/secrets/db/refresh").await.json().await.unwrap();
        assert_eq!(report["changed"], true, "update {i}: {report}");
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert_eq!(serde_json::from_str::<Value>(&sidecar.read_file("db.json").unwrap()).unwrap()["password"], "pw-500");
    assert!(reads > 500, "the reader ran throughout ({reads} reads)");
    assert_eq!(bad.load(Ordering::Relaxed), 0, "partial or invalid reads out of {reads}");
    let leftovers: Vec<_> = std::fs::read_dir(sidecar.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".secrets-sidecar-tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left behind: {leftovers:?}");
}

/// Negative control for the test above: the same reader does catch a writer that is not atomic.
#[test]
fn the_tight_reader_catches_a_non_atomic_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.json");
    std::fs::write(&path, padded(0)).unwrap();
    let (stop, bad) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let reader = tight_reader(path.clone(), stop.clone(), bad.clone());
    for i in 1..=5_000 {
        std::fs::write(&path, padded(i)).unwrap(); // truncate, then write: readers can see the gap
        if bad.load(Ordering::Relaxed) > 0 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert!(bad.load(Ordering::Relaxed) > 0, "the reader should have seen a partial file");
}

#[tokio::test]
async fn token_and_proxy_rules() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "db", &creds("t")).await;
    let sidecar = Sidecar::builder(&moto).secret("db", "db").spawn().await;
    sidecar.wait_ready().await;
    let http = reqwest::Client::new();
    let url = sidecar.url("/v1/secrets/db");

    let missing = http.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body, json!({"error": "missing or wrong X-Secrets-Sidecar-Token"}));

    let wrong = http.get(&url).header(harness::TOKEN_HEADER, "0".repeat(64)).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let prefix = http.get(&url).header(harness::TOKEN_HEADER, &sidecar.token()[..32]).send().await.unwrap();
    assert_eq!(prefix.status(), 401, "a prefix of the token is not the token");

    let proxied = http
        .get(&url)
        .header(harness::TOKEN_HEADER, sidecar.token())
        .header("X-Forwarded-For", "10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 400);
    assert!(!proxied.text().await.unwrap().contains("\"password\""));

    assert_eq!(http.get(sidecar.url("/healthz")).send().await.unwrap().status(), 200, "healthz needs no token");
    assert_eq!(http.get(&url).header(harness::TOKEN_HEADER, sidecar.token()).send().await.unwrap().status(), 200);
    assert_eq!(http.post(sidecar.url("/v1/secrets/db/refresh")).send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn a_given_token_is_required_and_not_written_to_disk() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "db", &creds("t")).await;
    let sidecar = Sidecar::builder(&moto).secret("db", "db").env("SIDECAR_TOKEN", "given-token-1234").spawn().await;
    sidecar.wait_ready().await;
    assert!(sidecar.read_file(".token").is_none());
    let http = reqwest::Client::new();
    let url = sidecar.url("/v1/secrets/db");
    assert_eq!(http.get(&url).header(harness::TOKEN_HEADER, "given-token-1234").send().await.unwrap().status(), 200);
    assert_eq!(http.get(&url).header(harness::TOKEN_HEADER, "given-token-1235").send().await.unwrap().status(), 401);
    assert!(!sidecar.log_text().contains("given-token-1234"));
}

#[tokio::test]
async fn the_full_trace_log_contains_no_secret_value_and_no_token() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    let secret_a = "Zq8-first-password-never-logged";
    let secret_b = "Zq8-second-password-never-logged";
    let secret_c = "Zq8-pending-password-never-logged";
    create_secret(&sm, "db", &creds(secret_a)).await;
    let sidecar = Sidecar::builder(&moto)
        .secret("db", "db")
        .arg("--refresh-interval")
        .arg("1s")
        .env("SIDECAR_LOG", "trace")
        .spawn()
        .await;
    sidecar.wait_ready().await;
    rotate(&sm, "db", &creds(secret_b)).await;
    sidecar
        .wait_for("the rotation", Duration::from_secs(10), async || {
            sidecar.read_file("db.json").is_some_and(|f| f.contains(secret_b))
        })
        .await;
    rotate_pending(&sm, "db", &creds(secret_c)).await;
    sidecar.post("/v1/secrets/db/refresh").await;
    assert!(sidecar.get("/v1/secrets/db?stage=AWSPENDING").await.text().await.unwrap().contains(secret_c));
    sidecar.get("/v1/secrets/db").await;
    sidecar.get("/v1/secrets/db/password").await;

    let log = sidecar.log_text();
    assert!(log.lines().count() > 50, "a trace log was written ({} lines)", log.lines().count());
    assert!(log.contains("published new version"), "the log is the sidecar's");
    for needle in ["Zq8-", &sidecar.token()] {
        assert!(!log.contains(needle), "the log leaks {needle:?}");
    }
}

#[tokio::test]
async fn sigterm_exits_zero_within_two_seconds_and_leaves_the_files() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "db", &creds("s")).await;
    let mut sidecar = Sidecar::builder(&moto).secret("db", "db").spawn().await;
    sidecar.wait_ready().await;
    sidecar.signal("TERM");
    let status = sidecar.wait_exit(Duration::from_secs(2)).await.expect("exited within 2 s");
    assert!(status.success(), "{status:?}");
    assert_eq!(sidecar.read_file("db.json").unwrap(), creds("s"));
}

#[tokio::test]
async fn sigterm_during_an_outage_still_exits_promptly() {
    // A poll hung on an unreachable endpoint must not hold up shutdown.
    let mut moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "db", &creds("s")).await;
    let mut sidecar = Sidecar::builder(&moto).secret("db", "db").arg("--refresh-interval").arg("1s").spawn().await;
    sidecar.wait_ready().await;
    moto.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sidecar.signal("INT");
    let status = sidecar.wait_exit(Duration::from_secs(2)).await.expect("exited within 2 s");
    assert!(status.success());
}

#[tokio::test]
async fn a_rotation_in_progress_serves_pending_until_finish_and_never_writes_it() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "rds!cluster-x", &creds("current")).await;
    let sidecar = Sidecar::builder(&moto)
        .secret("db", "rds!cluster-x")
        .arg("--refresh-interval")
        .arg("1h")
        .arg("--rotation-poll-interval")
        .arg("500ms")
        .spawn()
        .await;
    sidecar.wait_ready().await;
    assert_eq!(sidecar.get("/v1/secrets/db?stage=AWSPENDING").await.status(), 404);
    assert_eq!(sidecar.get("/v1/secrets/db?stage=BOGUS").await.status(), 400);

    // createSecret + setSecret: the DB already has the new password; the app's login fails and it asks.
    let pending = rotate_pending(&sm, "rds!cluster-x", &creds("pending")).await;
    let report: Value = sidecar.post("/v1/secrets/db/refresh").await.json().await.unwrap();
    assert_eq!(report["rotation_in_progress"], true, "{report}");
    assert_eq!(report["pending_version_id"], pending.as_str());
    assert_eq!(report["changed"], false);
    assert_eq!(report["fetched"], true);
    let r = sidecar.get("/v1/secrets/db?stage=AWSPENDING").await;
    assert_eq!(r.headers()["etag"], format!("\"{pending}\"").as_str());
    assert_eq!(r.text().await.unwrap(), creds("pending"));
    assert_eq!(sidecar.read_file("db.json").unwrap(), creds("current"), "pending is never written");
    let files: Vec<_> = std::fs::read_dir(sidecar.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files.len(), 2, "only db.json and .token: {files:?}");

    // A burst of refreshes inside --min-refresh-gap does not reach AWS again.
    for _ in 0..20 {
        let r: Value = sidecar.post("/v1/secrets/db/refresh").await.json().await.unwrap();
        assert_eq!(r["fetched"], false);
        assert_eq!(r["rotation_in_progress"], true);
    }

    // finishSecret: fast rotation polling (not the 1 h interval) brings the new value within seconds.
    harness::finish_rotation(&sm, "rds!cluster-x", &pending).await;
    sidecar
        .wait_for("finishSecret to reach the file", Duration::from_secs(5), async || {
            sidecar.read_file("db.json").as_deref() == Some(creds("pending").as_str())
        })
        .await;
    sidecar
        .wait_for("the pending stage to go away", Duration::from_secs(5), async || {
            sidecar.get("/v1/secrets/db?stage=AWSPENDING").await.status() == 404
        })
        .await;
    let list: Value = sidecar.get("/v1/secrets").await.json().await.unwrap();
    assert_eq!(list["secrets"][0]["rotation_in_progress"], false);
}

#[tokio::test]
async fn leftover_temp_files_of_a_crash_are_removed_at_start() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "db", &creds("s")).await;
    let dir = tempfile::tempdir().unwrap();
    let leftover = dir.path().join(".secrets-sidecar-tmp-db.json-99-0-deadbeef");
    std::fs::write(&leftover, creds("old-secret")).unwrap();
    std::fs::write(dir.path().join("unrelated.txt"), "keep").unwrap();
    let sidecar = Sidecar::builder(&moto).secret("db", "db").dir(dir.path()).spawn().await;
    sidecar.wait_ready().await;
    assert!(!leftover.exists());
    assert!(dir.path().join("unrelated.txt").exists());
}

#[tokio::test]
async fn the_sdks_own_endpoint_variable_works_without_the_flag() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "db", &creds("env")).await;
    let sidecar = Sidecar::builder(&moto).secret("db", "db").endpoint_via_env().spawn().await;
    sidecar.wait_ready().await;
    assert_eq!(sidecar.read_file("db.json").unwrap(), creds("env"));
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_on_stdout() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "db", &creds("j")).await;
    let sidecar =
        Sidecar::builder(&moto).secret("db", "db").log_format("json").env("SIDECAR_LOG", "info").spawn().await;
    sidecar.wait_ready().await;
    let log = sidecar.log_text();
    let lines: Vec<Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let published = lines.iter().find(|l| l["message"] == "published new version").expect("a publish line");
    assert_eq!(published["secret"], "db");
    assert_eq!(published["level"], "INFO");
    assert!(published["timestamp"].is_string());
}

#[tokio::test]
async fn file_owner_and_mode_flags_are_applied_before_the_content() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "db", &creds("o")).await;
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let mut sidecar = Sidecar::builder(&moto)
        .secret("db", "db")
        .arg("--file-uid")
        .arg("1234")
        .arg("--file-gid")
        .arg("2345")
        .arg("--file-mode")
        .arg("0400")
        .spawn()
        .await;
    if root {
        sidecar.wait_ready().await;
        for f in ["db.json", ".token"] {
            let meta = std::fs::metadata(sidecar.dir().join(f)).unwrap();
            assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (1234, 2345, 0o400), "{f}");
        }
    } else {
        // Without root, giving files away is refused: a clear error at start, not a half-published file.
        let status = sidecar.wait_exit(Duration::from_secs(10)).await.expect("exits");
        assert_eq!(status.code(), Some(1));
        assert!(sidecar.log_text().contains("the sidecar must run as root to give files another owner"));
    }
}
