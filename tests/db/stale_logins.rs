//! Two ways a connection that uses the hook could still log in with something the hook did not choose, or
//! leave the server holding what the app released, shown on the far side on both Ruby stacks — each with a
//! negative control that leaves the hook's fix out and sees the server count it:
//!
//! * mysql2 `reconnect: true`: libmariadb logs in again by itself, with the first login's password, when a
//!   ping finds its connection gone. After a rotation and a killed session that is a login with the
//!   rotated-out password, which the server refuses. The hook turns the option off for its connections;
//!   ActiveRecord's own reconnect then goes through the hook. Counted: refused logins in MariaDB's log.
//! * PostgreSQL's statement pool on ActiveRecord 6.1/7.0 holds the PG::Connection it was built with; the
//!   hook's reconnect guard makes a new one, so without the pool following it every later eviction would
//!   DEALLOCATE on the closed connection and the server would keep every statement the app ever prepared.
//!   Counted: the session's rows in the server's `pg_prepared_statements`, with `statement_limit: 2`.
//!
//! Both use the hook with the credentials file alone (no sidecar needed for either), real MariaDB and
//! PostgreSQL (`tests/harness/src/db.rs`) and `tests/db/load.rb` driven step by step ([`crate::steps`]).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::SERIAL;
use crate::load::{self, Stack};
use crate::steps::Steps;
use harness::db::{self, MariaDb, Postgres};

/// Writes the credentials file like the sidecar: temp file in the same directory, then rename.
fn publish(file: &Path, password: &str) {
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, json!({"username": db::APP_USER, "password": password}).to_string()).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// load.rb's config for `adapter` on `port`, hooked to `file` (as `stack` sees it), with `extra` merged into
/// the database config and parts of the hook left out.
fn config(stack: &Stack, adapter: &str, port: u16, file: &Path, extra: Value, without: &[&str]) -> Value {
    let mut c = load::load_config(adapter, port, db::APP_DATABASE, "steps", json!({ "file": stack.inner_path(file) }));
    c["pool"] = json!(1);
    c["db_extra"] = extra;
    c["without"] = json!(without);
    c
}

// ---------------------------------------------------------------------------------------------------
// mysql2 reconnect: true

/// Refused logins on the server across: connect with `reconnect: true`, rotate (password and file), kill
/// the app's session, `verify!` (what a checkout does on 6.1, and any caller of verify! on 7.2), query.
async fn refused_logins_after_a_rotation_and_a_killed_session(
    m: &MariaDb,
    stack: &Stack,
    without: &[&str],
) -> (usize, Vec<crate::steps::Answer>) {
    load::require_ruby("mysql2", stack);
    let scratch = stack.scratch_dir("sidecar-reconnect-");
    let file = scratch.path().join("db.json");
    let first = db::random_password();
    m.set_password(db::APP_USER, &first);
    publish(&file, &first);
    let mut steps =
        Steps::start(config(stack, "mysql2", m.port(), &file, json!({"reconnect": true}), without), stack).await;
    let mut answers = vec![steps.step(json!({"op": "query"})).await];
    assert!(answers[0].ok(), "{}", answers[0].error());

    let before = m.auth_failures(db::APP_USER);
    let rotated = db::random_password();
    m.set_password(db::APP_USER, &rotated);
    publish(&file, &rotated);
    assert!(m.kill_connections(db::APP_USER) >= 1, "the app had no session to kill");
    answers.push(steps.step(json!({"op": "verify"})).await);
    answers.push(steps.step(json!({"op": "query"})).await);
    let stderr = steps.finish().await;
    // The server logs a refusal as it answers; give its log writer a moment before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = m.auth_failures(db::APP_USER) - before;
    for pw in [&first, &rotated] {
        assert!(!stderr.contains(pw.as_str()), "a password leaked into the app's output");
    }
    (refused, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql2_reconnect_true_makes_no_stale_login_on_either_stack() {
    let _serial = SERIAL.lock().await;
    let m = tokio::task::spawn_blocking(MariaDb::start).await.unwrap();
    for stack in [Stack::Debian12, Stack::debian13()] {
        let (refused, answers) = refused_logins_after_a_rotation_and_a_killed_session(&m, &stack, &[]).await;
        println!(
            "=== {}: mysql2 with reconnect: true, rotation + killed session: {refused} login(s) refused by the \
             server; verify! {}, query {}",
            stack.name(),
            answers[1].ok(),
            answers[2].ok()
        );
        assert_eq!(refused, 0, "libmariadb logged in with the rotated-out password: {answers:?}");
        for a in &answers {
            assert!(a.ok(), "{}", a.error());
            assert_eq!(a.count("stale_logins"), 0, "{a:?}");
        }
        // The first login and the one ActiveRecord's reconnect made through the hook.
        assert_eq!(answers[2].count("driver_logins"), 2, "{answers:?}");
    }

    // Negative control: with the option left on, the server sees libmariadb's login with the old password.
    let stack = Stack::Debian12;
    let (refused, answers) =
        refused_logins_after_a_rotation_and_a_killed_session(&m, &stack, &["reconnect_option"]).await;
    println!("=== {}: the same with reconnect: true left on (negative control): {refused} refused", stack.name());
    assert!(refused >= 1, "no login with the rotated-out password reached the server: {answers:?}");
}

// ---------------------------------------------------------------------------------------------------
// PostgreSQL prepared statements across a reconnect

/// The server's count of the session's prepared statements after 3 distinct prepared queries, then after a
/// `reconnect!` and 5 more, with `statement_limit: 2`.
async fn prepared_statements_around_a_reconnect(p: &Postgres, stack: &Stack, without: &[&str]) -> (u64, u64) {
    load::require_ruby("postgresql", stack);
    let scratch = stack.scratch_dir("sidecar-statements-");
    let file = scratch.path().join("db.json");
    let pw = db::random_password();
    p.set_password(db::APP_USER, &pw);
    publish(&file, &pw);
    let extra = json!({"statement_limit": 2, "prepared_statements": true});
    let mut steps = Steps::start(config(stack, "postgresql", p.port(), &file, extra, without), stack).await;
    let ok = |a: crate::steps::Answer| {
        assert!(a.ok(), "{}", a.error());
        assert_eq!(a.count("stale_logins"), 0, "{a:?}");
        a
    };
    ok(steps.step(json!({"op": "prepare", "n": 3, "from": 0})).await);
    let before = ok(steps.step(json!({"op": "count_prepared"})).await).count("count");
    ok(steps.step(json!({"op": "reconnect"})).await);
    ok(steps.step(json!({"op": "prepare", "n": 5, "from": 100})).await);
    let after = ok(steps.step(json!({"op": "count_prepared"})).await);
    assert_eq!(after.count("driver_logins"), 2, "the reconnect did not log in anew through the hook: {after:?}");
    steps.finish().await;
    (before, after.count("count"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_prepared_statements_stay_within_statement_limit_across_reconnects_on_both_stacks() {
    let _serial = SERIAL.lock().await;
    let p = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let refused_before = p.auth_failures(db::APP_USER);
    for stack in [Stack::Debian12, Stack::debian13()] {
        let (before, after) = prepared_statements_around_a_reconnect(&p, &stack, &[]).await;
        println!(
            "=== {}: PostgreSQL, statement_limit 2: {before} prepared statement(s) on the server before a \
             reconnect!, {after} after it and 5 more",
            stack.name()
        );
        assert_eq!((before, after), (2, 2));
    }
    // Negative control (6.1): the pool keeps the closed connection; the server keeps every statement.
    let stack = Stack::Debian12;
    let (before, after) = prepared_statements_around_a_reconnect(&p, &stack, &["statement_pool"]).await;
    println!(
        "=== {}: the same without the pool following the new connection (negative control): {after}",
        stack.name()
    );
    assert_eq!((before, after), (2, 5));
    assert_eq!(p.auth_failures(db::APP_USER), refused_before, "a login was refused");
}
