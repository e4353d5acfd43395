//! A Rails-style app (`tests/e2e/load.rb`, ActiveRecord + mysql2 / pg with the hook) logs in with RDS IAM
//! auth tokens, on both Ruby stacks, against MariaDB and PostgreSQL servers that accept a token only
//! over TLS and validate its SigV4 signature, expiry, user and host through PAM (`tests/iam_db/`).
//!
//! The token file is what the sidecar publishes for an `rds-iam://` entry — `{"username", "password":
//! <token>, "host", "port", "expires_at", "dbname"}`, replaced by rename — signed here by the crate's own
//! signer (`secrets_sidecar::source::rds_iam::presign`) with the credentials the servers' verifier knows,
//! and re-signed every `RESIGN_EVERY` while the app keeps opening connections. Checked on the far side:
//! every login reached the verifier over TLS and was accepted, as many as the app's driver made.
//!
//! Negative controls: a config that asks for no TLS never sends the token (the hook refuses; the server
//! sees no attempt), and an expired token is refused by the server for being expired.

#[path = "iam_db/harness.rs"]
mod harness;
#[path = "e2e/load_harness.rs"]
mod load;

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use harness::{IAM_DATABASE, IAM_USER, IamMariaDb, IamPostgres, IamServer, REGION};
use load::{Load, Stack, tail};
use secrets_sidecar::source::rds_iam::{Target, presign};
use serde_json::{Value, json};

/// A test-only renewal period: many renewals within a short run (the sidecar's default is 10 minutes).
const RESIGN_EVERY: Duration = Duration::from_secs(3);
const RUN_FOR: Duration = Duration::from_secs(15);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn credentials(server: &dyn IamServer) -> Credentials {
    let c = server.credentials();
    Credentials::new(&c.access_key_id, &c.secret_access_key, c.session_token.clone(), None, "test")
}

/// Writes the token file the way the sidecar does (temp file, then rename), signed at `at`.
fn publish_token(server: &dyn IamServer, file: &Path, at: SystemTime) {
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

/// The token file, the CA and load.rb's config for `server`, in a scratch directory `stack` can read.
struct Setup {
    file: std::path::PathBuf,
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
    // Every PAM login starts the Python verifier (0.3–1.5 s): a light load, new connections every second.
    config["threads"] = json!(2);
    config["pool"] = json!(2);
    config["disconnect_every"] = json!(1.0);
    config["reconnect_every"] = json!(0);
    config["reconnect_every_seconds"] = json!(1.0);
    Setup { file, config, _scratch: scratch }
}

/// load.rb on `stack` for RUN_FOR, the token re-signed every RESIGN_EVERY; asserts zero failures and
/// that the server checked (and accepted) exactly the logins the app made.
async fn logs_in_with_renewed_tokens(stack: &Stack, adapter: &'static str, server: &dyn IamServer) {
    let before = server.verifier_entries().len();
    let s = setup(stack, adapter, server, "hook", SystemTime::now());
    let started = std::time::Instant::now();
    let l = Load::start(s.config.clone(), stack).await;
    let mut renewals = 0;
    while started.elapsed() < RUN_FOR {
        tokio::time::sleep(RESIGN_EVERY).await;
        publish_token(server, &s.file, SystemTime::now());
        renewals += 1;
    }
    let r = l.finish().await;
    let entries = server.verifier_entries()[before..].to_vec();
    let accepted = entries.iter().filter(|e| e.result == "accepted").count() as u64;
    let summary = &r.summary;
    load::print_summary(&format!("{}: {adapter} with RDS IAM tokens over verified TLS", stack.name()), summary);
    println!(
        "    tokens re-signed {renewals}; server's token check: {accepted} accepted, {} refused",
        entries.len() as u64 - accepted
    );
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_app_logs_in_with_renewed_iam_tokens_over_tls_on_both_stacks() {
    let _serial = SERIAL.lock().await;
    let server = tokio::task::spawn_blocking(IamPostgres::start).await.unwrap();
    for stack in [Stack::Debian12, Stack::debian13()] {
        logs_in_with_renewed_tokens(&stack, "postgresql", &server).await;
    }
    negative_controls("postgresql", &server, json!({"sslmode": "disable"})).await;
}
