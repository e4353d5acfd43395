//! The ActiveRecord hook (`contrib/ruby/lib/secrets_sidecar/active_record.rb`) on its own, without the
//! sidecar's endpoint (`secrets_sidecar:` with `file` only): when the password changes in the database and
//! the credentials file follows a moment later, a busy Debian ActiveRecord 6.1 app (mysql2, pg) sees zero
//! failed queries and zero failed connections — the hook re-reads the file with backoff after a failed
//! login. Real MariaDB/PostgreSQL (`tests/harness/src/db.rs`), real Ruby (`tests/db/load.rb`), a file
//! replaced by rename as the sidecar does. The full path with the sidecar and moto is
//! `tests/db/rails_rotation.rs`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::SERIAL;
use crate::load;
use harness::db;

/// Writes like the sidecar: temp file in the same directory, then rename over the target.
fn publish(path: &Path, password: &str) {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json!({"username": db::APP_USER, "password": password}).to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn file_follows_db(adapter: &str, set_password: Arc<dyn Fn(&str) + Send + Sync>, port: u16) {
    let dir = tempfile::Builder::new().prefix("sidecar-fileonly-").tempdir().unwrap();
    let file = dir.path().join("db.json");
    let mut passwords = vec![db::random_password()];
    set_password(&passwords[0]);
    publish(&file, &passwords[0]);

    let l = load::Load::start(
        load::load_config(adapter, port, db::APP_DATABASE, "hook", json!({ "file": file })),
        &load::Stack::Debian12,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..2 {
        let pw = db::random_password();
        passwords.push(pw.clone());
        let f = set_password.clone();
        let p = pw.clone();
        tokio::task::spawn_blocking(move || f(&p)).await.unwrap();
        // The file lags the database, as it does while the sidecar notices the change.
        tokio::time::sleep(Duration::from_millis(300)).await;
        publish(&file, &pw);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let r = l.finish().await;
    load::print_summary(&format!("{adapter}: hook without endpoint, file follows the DB by 300 ms"), &r.summary);
    let s = &r.summary;
    assert_eq!(s["query_failures"], 0, "failed queries:\n{s:#}\n{}", load::tail(&r.stderr));
    assert_eq!(s["connection_failures"], 0, "failed connections:\n{s:#}\n{}", load::tail(&r.stderr));
    assert!(s["driver_login_failures"].as_u64().unwrap() > 0, "no login failed: the password changes missed the load");
    assert_eq!(s["stale_logins"], 0, "logins the hook did not choose (a rotated-out password):\n{s:#}");
    for pw in &passwords {
        assert!(!r.stderr.contains(pw.as_str()), "a password leaked into the Ruby process's output");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql2_hook_without_endpoint_rereads_the_file_after_a_failed_login() {
    let _serial = SERIAL.lock().await;
    load::require_ruby("mysql2", &load::Stack::Debian12);
    let m = Arc::new(tokio::task::spawn_blocking(db::MariaDb::start).await.unwrap());
    let port = m.port();
    let m2 = m.clone();
    file_follows_db("mysql2", Arc::new(move |pw: &str| m2.set_password(db::APP_USER, pw)), port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_hook_without_endpoint_rereads_the_file_after_a_failed_login() {
    let _serial = SERIAL.lock().await;
    load::require_ruby("postgresql", &load::Stack::Debian12);
    let p = Arc::new(tokio::task::spawn_blocking(db::Postgres::start).await.unwrap());
    let port = p.port();
    let p2 = p.clone();
    file_follows_db("postgresql", Arc::new(move |pw: &str| p2.set_password(db::APP_USER, pw)), port).await;
}
