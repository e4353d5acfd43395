//! `--on-change` actions through the real binary and moto: an HTTP request to a server the test runs (it
//! reads the secret's file the moment the request arrives), and signals to processes the test starts.
//! Rotations are made visible at once with a forced refresh (`--min-refresh-gap 0s`), so the timing is
//! the action's debounce, not the poll interval.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use serde_json::json;
use tokio::time::sleep;

use harness::{Moto, Sidecar, create_secret, rotate};

fn value(v: &str) -> String {
    json!({"SECRET_KEY_BASE": v}).to_string()
}

/// What the test server saw of one request: method, path and query, and the secret's file at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    request: String,
    file: String,
}

/// A loopback HTTP server (hyper's) standing in for Puma's control app: it records each request with the
/// content of `file` when the request arrived, and answers 200.
async fn control_app(file: PathBuf) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (s, file) = (s.clone(), file.clone());
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let file = std::fs::read_to_string(&file).unwrap_or_else(|e| format!("unreadable: {e}"));
                s.lock().unwrap().push(Seen { request: format!("{} {}", req.method(), req.uri()), file });
                async { Ok::<_, std::convert::Infallible>(hyper::Response::new(Empty::<Bytes>::new())) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, svc));
        }
    });
    (port, seen)
}

/// Rotates the secret and has the sidecar fetch it now.
async fn rotate_now(sm: &aws_sdk_secretsmanager::Client, sidecar: &Sidecar, v: &str) {
    rotate(sm, "prod/app", &value(v)).await;
    let r = sidecar.post("/v1/secrets/app/refresh").await;
    assert_eq!(r.status(), 200);
}

/// A scratch directory for files the test writes (token, template), with the sidecar's output dir in it.
fn scratch_with_output_dir() -> (tempfile::TempDir, PathBuf) {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("out");
    std::fs::create_dir(&out).unwrap();
    (scratch, out)
}

fn count(seen: &Mutex<Vec<Seen>>) -> usize {
    seen.lock().unwrap().len()
}

#[tokio::test]
async fn an_http_action_fires_once_per_burst_after_the_file_is_in_place_and_never_at_start() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "prod/app", &value("v1")).await;
    let (scratch, out) = scratch_with_output_dir();
    let token_file = scratch.path().join("puma.token");
    std::fs::write(&token_file, "tok-7f3a9c\n").unwrap();
    let (port, seen) = control_app(out.join("app.env")).await;
    let sidecar = Sidecar::builder(&moto)
        .secret("app", "prod/app?format=env")
        .dir(&out)
        .arg("--min-refresh-gap")
        .arg("0s")
        .arg("--on-change")
        .arg(format!(
            "app=http GET http://127.0.0.1:{port}/phased-restart token-file={} debounce=2s",
            token_file.display()
        ))
        .spawn()
        .await;
    sidecar.wait_ready().await;
    sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&seen), 0, "the initial publish fires nothing");

    rotate_now(&sm, &sidecar, "v2").await;
    sidecar.wait_for("the first request", Duration::from_secs(10), async || count(&seen) == 1).await;
    sleep(Duration::from_secs(3)).await;
    assert_eq!(
        *seen.lock().unwrap(),
        [Seen { request: "GET /phased-restart?token=tok-7f3a9c".into(), file: "SECRET_KEY_BASE=v2\n".into() }],
        "exactly one request, with the token from the file, after the file held the new value"
    );

    // Three rotations within the debounce: one request, which finds the last value in place.
    for v in ["v3", "v4", "v5"] {
        rotate_now(&sm, &sidecar, v).await;
    }
    sidecar.wait_for("the second request", Duration::from_secs(10), async || count(&seen) == 2).await;
    sleep(Duration::from_secs(3)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].file, "SECRET_KEY_BASE=v5\n");

    let metrics = reqwest::get(sidecar.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == r#"secrets_sidecar_actions_total{action="0",outcome="ok"} 2"#), "{metrics}");
    let log = sidecar.log_text();
    let fired: Vec<_> = log.lines().filter(|l| l.contains("on-change action fired")).collect();
    assert_eq!(fired.len(), 2, "{}", sidecar.log_tail());
    let fields =
        format!(r#"action=0 kind="http" target="GET http://127.0.0.1:{port}/phased-restart" changed="app" attempt=0"#);
    assert!(fired.iter().all(|l| l.contains(&fields) && l.ends_with(r#"outcome="ok" detail=200 OK"#)), "{fired:#?}");
    assert!(!log.contains("tok-7f3a9c"), "the token never reaches the log (at debug level)");
}

#[tokio::test]
async fn initial_true_fires_once_at_start() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "prod/app", &value("v1")).await;
    let (_scratch, out) = scratch_with_output_dir();
    let (port, seen) = control_app(out.join("app.env")).await;
    let sidecar = Sidecar::builder(&moto)
        .secret("app", "prod/app?format=env")
        .dir(&out)
        .arg("--on-change")
        .arg(format!("app=http POST http://localhost:{port}/restart debounce=500ms initial=true"))
        .spawn()
        .await;
    sidecar.wait_for("the request at start", Duration::from_secs(20), async || count(&seen) == 1).await;
    sleep(Duration::from_secs(2)).await;
    assert_eq!(*seen.lock().unwrap(), [Seen { request: "POST /restart".into(), file: "SECRET_KEY_BASE=v1\n".into() }]);
}

/// A shell that records every SIGUSR1 it gets as a line in `record`, started with argv[0] `name`, its pid
/// in `pidfile`.
async fn usr1_recorder(name: &str, record: &Path, pidfile: &Path) -> tokio::process::Child {
    let script = format!(
        "trap 'echo usr1 >> {r}' USR1; echo $$ > {p}.tmp && mv {p}.tmp {p}; while :; do sleep 0.1; done",
        r = record.display(),
        p = pidfile.display()
    );
    let child = tokio::process::Command::new("sh").arg0(name).args(["-c", &script]).kill_on_drop(true).spawn().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !pidfile.exists() {
        assert!(tokio::time::Instant::now() < deadline, "{name} did not start");
        sleep(Duration::from_millis(20)).await;
    }
    child
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
}

#[tokio::test]
async fn signal_actions_reach_the_pid_in_a_file_and_a_process_by_name_once_per_burst() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "prod/app", &value("v1")).await;
    let scratch = tempfile::tempdir().unwrap();
    let (by_pid, by_name) = (scratch.path().join("by-pid"), scratch.path().join("by-name"));
    // A name no other process on the machine has.
    let name = format!("oc-{}", std::process::id());
    let _a = usr1_recorder("oc-by-pidfile", &by_pid, &scratch.path().join("a.pid")).await;
    let _b = usr1_recorder(&name, &by_name, &scratch.path().join("b.pid")).await;
    let sidecar = Sidecar::builder(&moto)
        .secret("app", "prod/app")
        .arg("--min-refresh-gap")
        .arg("0s")
        .env(
            "SIDECAR_ON_CHANGE",
            &format!(
                "app=signal SIGUSR1 pidfile={} debounce=1s;app=signal USR1 process={name} debounce=1s",
                scratch.path().join("a.pid").display()
            ),
        )
        .spawn()
        .await;
    sidecar.wait_ready().await;
    sleep(Duration::from_secs(2)).await;
    assert_eq!((lines(&by_pid), lines(&by_name)), (0, 0), "nothing at start");

    rotate_now(&sm, &sidecar, "v2").await;
    rotate_now(&sm, &sidecar, "v3").await;
    sidecar
        .wait_for("both signals", Duration::from_secs(10), async || lines(&by_pid) == 1 && lines(&by_name) == 1)
        .await;
    sleep(Duration::from_secs(2)).await;
    assert_eq!((lines(&by_pid), lines(&by_name)), (1, 1), "one signal each for the two rotations");
    let metrics = reqwest::get(sidecar.url("/metrics")).await.unwrap().text().await.unwrap();
    for line in [
        r#"secrets_sidecar_actions_total{action="0",outcome="ok"} 1"#,
        r#"secrets_sidecar_actions_total{action="1",outcome="ok"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
}

/// The Rails shape: a template fed by two secrets, watched by one action. Both secrets rotated together
/// are one request, made after the rendered file holds both new values (it is rendered twice on the
/// way, once per input: the debounce is what makes that one restart); a rotation that leaves the
/// rendered bytes alone (a key the template does not use) is no change and fires nothing.
#[tokio::test]
async fn an_action_on_a_template_fires_once_for_two_inputs_rotated_together_and_not_for_an_unused_key() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "prod/db", &json!({"password": "d1", "note": "a"}).to_string()).await;
    create_secret(&sm, "prod/redis", &json!({"auth_token": "r1"}).to_string()).await;
    let (scratch, out) = scratch_with_output_dir();
    let template = scratch.path().join("app.env.tmpl");
    std::fs::write(&template, "DB_PASSWORD={{ db.password }}\nREDIS_AUTH={{ redis.auth_token }}\n").unwrap();
    let (port, seen) = control_app(out.join("app.env")).await;
    let sidecar = Sidecar::builder(&moto)
        .secret("db", "prod/db")
        .secret("redis", "prod/redis")
        .dir(&out)
        .arg("--template")
        .arg(format!("app.env={}", template.display()))
        .arg("--min-refresh-gap")
        .arg("0s")
        .arg("--on-change")
        .arg(format!("app.env=http GET http://127.0.0.1:{port}/phased-restart debounce=2s"))
        .spawn()
        .await;
    sidecar.wait_ready().await;
    assert_eq!(sidecar.read_file("app.env").as_deref(), Some("DB_PASSWORD=d1\nREDIS_AUTH=r1\n"));

    rotate(&sm, "prod/db", &json!({"password": "d2", "note": "a"}).to_string()).await;
    rotate(&sm, "prod/redis", &json!({"auth_token": "r2"}).to_string()).await;
    assert_eq!(sidecar.post("/v1/secrets/db/refresh").await.status(), 200);
    assert_eq!(sidecar.post("/v1/secrets/redis/refresh").await.status(), 200);
    sidecar.wait_for("the request", Duration::from_secs(10), async || count(&seen) == 1).await;

    // A new db version with the same password renders the same file: not a change of app.env.
    rotate(&sm, "prod/db", &json!({"password": "d2", "note": "b"}).to_string()).await;
    assert_eq!(sidecar.post("/v1/secrets/db/refresh").await.status(), 200);
    sleep(Duration::from_secs(4)).await;
    assert_eq!(
        *seen.lock().unwrap(),
        [Seen { request: "GET /phased-restart".into(), file: "DB_PASSWORD=d2\nREDIS_AUTH=r2\n".into() }],
        "one request for the pair, none for the unused key"
    );
    let metrics = reqwest::get(sidecar.url("/metrics")).await.unwrap().text().await.unwrap();
    for line in [
        // The first render, then one per input: the file went d2/r1 → d2/r2 inside one debounce.
        r#"secrets_sidecar_template_renders_total{template="app.env",result="ok"} 3"#,
        r#"secrets_sidecar_template_renders_total{template="app.env",result="unchanged"} 1"#,
        r#"secrets_sidecar_actions_total{action="0",outcome="ok"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in:\n{metrics}");
    }
}
