//! A Rails-style app (`tests/db/load.rb`, ActiveRecord + mysql2 / pg with the hook) logs in with RDS IAM
//! auth tokens, on both Ruby stacks, against MariaDB and PostgreSQL servers that accept a token only
//! over TLS and validate its SigV4 signature, expiry, user and host through PAM (`tests/db/iam_server.rs`).
//!
//! The real sidecar binary mints the tokens: `--secret db=rds-iam://iam_app@127.0.0.1:PORT?dbname=app`,
//! with the credentials the servers' verifier knows given the way the SDK's chain reads them (environment
//! variables, a session token included), and `--rds-iam-renew-interval 2s` (a test-only period: the default
//! stays 10 minutes) so that a short run spans many renewals while the app keeps opening connections
//! through the hook configured as the README says (file, url, token_file, ca_file). Checked on the far
//! side: every login reached the server's token check over TLS and was accepted, as many as the app's
//! driver made; `/healthz` and `/metrics` show the token's expiry.
//!
//! Negative controls: a sidecar signing with another secret key gets every login refused by the server
//! (bad signature); a config that asks for no TLS never sends the token (the hook refuses; the server sees
//! no attempt); an expired token (written by the test with the crate's signer at a past instant) is
//! refused for being expired.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::iam_server::{self as iam, IAM_DATABASE, IAM_USER, IamMariaDb, IamPostgres, IamServer, REGION};
use crate::load::{self, Load, Stack, tail};
use aws_credential_types::Credentials;
use secrets_sidecar::source::rds_iam::{Target, presign};
use serde_json::{Value, json};

/// A test-only renewal period: many renewals within a short run (the sidecar's default is 10 minutes).
const RENEW_EVERY: &str = "2s";
const RUN_FOR: Duration = Duration::from_secs(15);

use crate::SERIAL;

fn credentials(server: &dyn IamServer) -> Credentials {
    let c = server.credentials();
    Credentials::new(&c.access_key_id, &c.secret_access_key, c.session_token.clone(), None, "test")
}

/// mysql2 dials the server by a name, as an app dials an RDS endpoint: MariaDB Connector/C 3.4 checks no
/// certificate name for a host given as 127.0.0.1, so the hook refuses to send a token there (and
/// `localhost` means a Unix socket to MySQL clients). `LOCALHOST` resolves to 127.0.0.1 through /etc/hosts.
fn dial_by_name(adapter: &str, config: &mut Value) {
    if adapter == "mysql2" {
        config["host"] = json!("LOCALHOST");
    }
}

/// Writes the token file the way the sidecar does (temp file, then rename), signed at `at`.
pub(crate) fn publish_token(server: &dyn IamServer, file: &Path, at: SystemTime) {
    let target =
        Target { host: server.host().into(), port: server.port(), user: IAM_USER.into(), region: REGION.into() };
    let token = presign(&target, &credentials(server), at).expect("sign");
    let body = json!({
        "username": IAM_USER,
        "password": token.value().expose(),
        "host": server.host(),
        "port": server.port(),
        "dbname": IAM_DATABASE,
        "expires_at": humantime::format_rfc3339_seconds(token.expires_at()).to_string(),
    });
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, body.to_string()).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// A token file written by the test (signed at `signed_at`), the CA and load.rb's config for `server`, in a
/// scratch directory `stack` can read: for the controls that need a token the sidecar would never publish.
struct Setup {
    config: Value,
    _scratch: tempfile::TempDir,
}

fn setup(stack: &Stack, adapter: &str, server: &dyn IamServer, mode: &str, signed_at: SystemTime) -> Setup {
    load::require_ruby(adapter, stack);
    let scratch = stack.scratch_dir("sidecar-iam-");
    let file = scratch.path().join("db.json");
    let ca = scratch.path().join("rds-ca.pem");
    std::fs::copy(server.ca_path(), &ca).unwrap();
    publish_token(server, &file, signed_at);
    let mut config = load::load_config(
        adapter,
        server.port(),
        IAM_DATABASE,
        mode,
        json!({ "file": stack.inner_path(&file), "ca_file": stack.inner_path(&ca) }),
    );
    dial_by_name(adapter, &mut config);
    // Every PAM login starts the Python verifier (0.3–1.5 s): a light load, new connections every second.
    config["threads"] = json!(2);
    config["pool"] = json!(2);
    config["disconnect_every"] = json!(1.0);
    config["reconnect_every"] = json!(0);
    config["reconnect_every_seconds"] = json!(1.0);
    Setup { config, _scratch: scratch }
}

/// load.rb on `stack` for RUN_FOR, the token re-signed every RESIGN_EVERY; asserts zero failures and
/// that the server checked (and accepted) exactly the logins the app made.
/// The sidecar with one `rds-iam://` entry for `server`, signing with `creds`, its output directory in a
/// scratch directory `stack` can read; and load.rb's config for it (file, url, token_file, ca_file).
async fn sidecar_for(
    stack: &Stack,
    adapter: &str,
    server: &dyn IamServer,
    creds: &iam::IamCredentials,
    mode: &str,
) -> (harness::Sidecar, Value, tempfile::TempDir) {
    load::require_ruby(adapter, stack);
    let scratch = stack.scratch_dir("sidecar-iam-");
    let ca = scratch.path().join("rds-ca.pem");
    std::fs::copy(server.ca_path(), &ca).unwrap();
    let out = scratch.path().join("secrets");
    let entry = format!("rds-iam://{IAM_USER}@{}:{}?dbname={IAM_DATABASE}", server.host(), server.port());
    let mut b = harness::Sidecar::builder_without_aws()
        .secret("db", &entry)
        .arg("--rds-iam-renew-interval")
        .arg(RENEW_EVERY)
        .env("AWS_ACCESS_KEY_ID", &creds.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &creds.secret_access_key)
        .env("AWS_REGION", REGION)
        .dir(&out);
    if let Some(t) = &creds.session_token {
        b = b.env("AWS_SESSION_TOKEN", t);
    }
    let sidecar = b.spawn().await;
    sidecar.wait_ready().await;
    let mut config = load::load_config(
        adapter,
        server.port(),
        IAM_DATABASE,
        mode,
        json!({
            "file": stack.inner_path(&out.join("db.json")),
            "url": format!("{}/v1/secrets/db", sidecar.base_url()),
            "token_file": stack.inner_path(&out.join(".token")),
            "ca_file": stack.inner_path(&ca),
        }),
    );
    dial_by_name(adapter, &mut config);
    // Every PAM login starts the Python verifier (0.3–1.5 s): a light load, new connections every second.
    config["threads"] = json!(2);
    config["pool"] = json!(2);
    config["disconnect_every"] = json!(1.0);
    config["reconnect_every"] = json!(0);
    config["reconnect_every_seconds"] = json!(1.0);
    (sidecar, config, scratch)
}

async fn logs_in_with_renewed_tokens(stack: &Stack, adapter: &'static str, server: &dyn IamServer) {
    let before = server.verifier_entries().len();
    let (sidecar, config, _scratch) = sidecar_for(stack, adapter, server, server.credentials(), "hook").await;
    let l = Load::start(config, stack).await;
    tokio::time::sleep(RUN_FOR).await;
    let (_, health) = sidecar.healthz().await.expect("/healthz answers");
    let metrics = reqwest::get(sidecar.url("/metrics")).await.unwrap().text().await.unwrap();
    let r = l.finish().await;
    let log = sidecar.log_text();
    let renewals = log.matches("published a new RDS IAM token").count();
    let entries = server.verifier_entries()[before..].to_vec();
    let accepted = entries.iter().filter(|e| e.result == "accepted").count() as u64;
    let summary = &r.summary;
    load::print_summary(&format!("{}: {adapter} with RDS IAM tokens over verified TLS", stack.name()), summary);
    println!(
        "    tokens signed by the sidecar {renewals}; server's token check: {accepted} accepted, {} refused; \
         /healthz: {} expires in {} s",
        entries.len() as u64 - accepted,
        health["status"],
        health["secrets"]["db"]["expires_in_seconds"]
    );
    assert!(renewals >= 6, "{renewals} signings in {RUN_FOR:?} at a {RENEW_EVERY} interval:\n{log}");
    assert_eq!(health["status"], "ok", "{health:#}");
    let left = health["secrets"]["db"]["expires_in_seconds"].as_i64().unwrap();
    assert!((880..=900).contains(&left), "a fresh token lives 15 minutes: {left} s left");
    assert!(metrics.contains("secrets_sidecar_rds_iam_token_expiry_timestamp_seconds{secret=\"db\"}"), "{metrics}");
    assert_eq!(summary["query_failures"], 0, "failed queries:\n{summary:#}\n{}", tail(&r.stderr));
    assert_eq!(summary["connection_failures"], 0, "failed connections:\n{summary:#}\n{}", tail(&r.stderr));
    let logins = summary["driver_logins"].as_u64().unwrap();
    assert!(logins >= 8, "too few logins to prove anything:\n{summary:#}");
    assert!(entries.iter().all(|e| e.result == "accepted" && e.user == IAM_USER), "{entries:?}");
    assert_eq!(accepted, logins, "every login the app made reached the server's token check, and only those");
    for secret in [&server.credentials().secret_access_key, server.credentials().session_token.as_ref().unwrap()] {
        assert!(!r.stderr.contains(secret.as_str()), "a credential leaked into the app's output");
    }
    assert!(!r.stderr.contains("X-Amz-Signature"), "a token leaked into the app's output");
    for text in [&log, &metrics, &health.to_string()] {
        assert!(!text.contains("X-Amz-Signature"), "a token leaked into the sidecar's log, metrics or health");
        assert!(!text.contains(server.credentials().secret_access_key.as_str()), "a key leaked");
    }
}

/// A sidecar signing with a key the server does not know: every login is refused by the server itself.
async fn a_forged_key_is_refused(adapter: &'static str, server: &dyn IamServer) {
    let stack = Stack::Debian12;
    let before = server.verifier_entries().len();
    let forged = server.credentials().with_other_secret();
    let (_sidecar, config, _scratch) = sidecar_for(&stack, adapter, server, &forged, "budget").await;
    let s = Load::start(config, &stack).await.finish().await.summary;
    let entries = server.verifier_entries()[before..].to_vec();
    println!(
        "=== {adapter}, a sidecar signing with another key: {} (server: {:?})",
        s["error_class"],
        entries.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>()
    );
    assert!(s["error_class"].is_string(), "a forged token was accepted: {s:#}");
    assert!(!entries.is_empty() && entries.iter().all(|e| e.reason == "bad-signature"), "{entries:?}");
}

/// One connection attempt (load.rb's budget mode) with `db_extra` merged into the app's config.
async fn one_attempt(
    stack: &Stack,
    adapter: &'static str,
    server: &dyn IamServer,
    db_extra: Value,
    signed_at: SystemTime,
) -> Value {
    let mut s = setup(stack, adapter, server, "budget", signed_at);
    s.config["db_extra"] = db_extra;
    Load::start(s.config.clone(), stack).await.finish().await.summary
}

async fn negative_controls(adapter: &'static str, server: &dyn IamServer, no_tls: Value) {
    let stack = Stack::Debian12;
    // A config that asks for no TLS: the hook refuses before the token goes anywhere.
    let before = server.verifier_entries().len();
    let s = one_attempt(&stack, adapter, server, no_tls, SystemTime::now()).await;
    println!("=== {adapter}, TLS disabled in the config: {} ({} logins)", s["error_class"], s["driver_logins"]);
    assert_eq!(s["error_class"], "SecretsSidecar::ActiveRecord::InsecureTransport", "{s:#}");
    assert_eq!(s["driver_logins"], 0, "{s:#}");
    assert_eq!(server.verifier_entries().len(), before, "the token reached the server");
    // An expired token: the server refuses it, and says why.
    let s = one_attempt(&stack, adapter, server, json!({}), SystemTime::now() - Duration::from_secs(20 * 60)).await;
    let entries = server.verifier_entries()[before..].to_vec();
    println!(
        "=== {adapter}, an expired token: {} ({} logins; server: {:?})",
        s["error_class"],
        s["driver_logins"],
        entries.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>()
    );
    assert!(s["error_class"].is_string(), "an expired token was accepted: {s:#}");
    assert!(
        !entries.is_empty() && entries.iter().all(|e| e.result == "refused" && e.reason == "expired"),
        "{entries:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_app_logs_in_with_renewed_iam_tokens_over_tls_on_both_stacks() {
    let _serial = SERIAL.lock().await;
    let server = tokio::task::spawn_blocking(IamMariaDb::start).await.unwrap();
    for stack in [Stack::Debian12, Stack::debian13()] {
        logs_in_with_renewed_tokens(&stack, "mysql2", &server).await;
    }
    negative_controls("mysql2", &server, json!({"ssl_mode": "disabled"})).await;
    a_forged_key_is_refused("mysql2", &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_app_logs_in_with_renewed_iam_tokens_over_tls_on_both_stacks() {
    let _serial = SERIAL.lock().await;
    let server = tokio::task::spawn_blocking(IamPostgres::start).await.unwrap();
    for stack in [Stack::Debian12, Stack::debian13()] {
        logs_in_with_renewed_tokens(&stack, "postgresql", &server).await;
    }
    negative_controls("postgresql", &server, json!({"sslmode": "disable"})).await;
    a_forged_key_is_refused("postgresql", &server).await;
}
