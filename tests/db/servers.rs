//! The private database servers of `tests/harness/src/db.rs` behave like the real thing the rotation tests
//! rely on: real password authentication, and a password change that takes effect for new logins only.

use harness::db;

#[test]
fn mariadb_password_change_rejects_old_password_for_new_logins() {
    let m = db::MariaDb::start();
    let old = m.app_password().to_string();
    assert!(m.can_login(db::APP_USER, &old), "app cannot log in with its initial password");
    assert!(!m.can_login(db::APP_USER, "not-the-password"), "a wrong password was accepted: auth is off");
    let new = db::random_password();
    m.set_password(db::APP_USER, &new);
    assert!(!m.can_login(db::APP_USER, &old), "old password still accepted after ALTER USER");
    assert!(m.can_login(db::APP_USER, &new), "new password rejected after ALTER USER");
    assert_eq!(m.kill_connections(db::APP_USER), 0);
    // The server's own count of refused logins, which the rotation tests rely on: exactly the two above.
    assert_eq!(m.auth_failures(db::APP_USER), 2);
}

#[test]
fn postgres_password_change_rejects_old_password_for_new_logins() {
    let p = db::Postgres::start();
    let old = p.app_password().to_string();
    assert!(p.can_login(db::APP_USER, &old), "app cannot log in with its initial password");
    assert!(!p.can_login(db::APP_USER, "not-the-password"), "a wrong password was accepted: auth is off");
    let new = db::random_password();
    p.set_password(db::APP_USER, &new);
    assert!(!p.can_login(db::APP_USER, &old), "old password still accepted after ALTER ROLE");
    assert!(p.can_login(db::APP_USER, &new), "new password rejected after ALTER ROLE");
    // The server's own count of refused logins, which the rotation tests rely on: exactly the two above.
    assert_eq!(p.auth_failures(db::APP_USER), 2);
}

#[test]
fn servers_are_gone_after_drop() {
    let (port, dir) = {
        let m = db::MariaDb::start();
        (m.port(), m.dir().to_path_buf())
    };
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "mariadbd still listening after drop");
    assert!(!dir.exists(), "mariadb data dir left behind: {}", dir.display());
}
