//! Private database servers for integration tests: a real MariaDB (`mariadbd`) and a real PostgreSQL
//! (`postgres`), each in its own temporary data directory, listening on 127.0.0.1 on a free port plus a
//! Unix socket in that directory. Never the machine's own instances: nothing here reads `/etc/mysql` or
//! the cluster directories under `/var/lib/postgresql`.
//!
//! Real authentication is on (MariaDB `mysql_native_password`, PostgreSQL `scram-sha-256` on TCP), so a
//! wrong password fails exactly as on RDS (MySQL 1045, PostgreSQL 28P01). Administration goes through the
//! Unix socket with the `mariadb`/`psql` CLI; SQL (and so every password) is passed on stdin, never in
//! argv, and no file holding a password is written.
//!
//! Both servers stop on `Drop` (MariaDB SIGTERM, PostgreSQL SIGINT = fast shutdown, SIGKILL after a
//! deadline) and the data directory is removed with them.
//!
//! The Debian packages are a hard requirement: a missing one fails the test with a message naming it
//! (`scripts/install-test-deps.sh` installs them), it never skips.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distr::Alphanumeric;

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to stop before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The database and user every server is created with.
pub const APP_USER: &str = "app";
pub const APP_DATABASE: &str = "app";

/// A random password of 24 alphanumeric characters (safe in SQL literals and URLs, like RDS's
/// generated ones minus punctuation).
pub fn random_password() -> String {
    rand::rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect()
}

/// Panics with the Debian packages to install when a binary is missing.
pub fn require(bins: &[(&str, &str)]) {
    let missing: Vec<&str> = bins.iter().filter(|(b, _)| !Path::new(b).exists()).map(|(_, p)| *p).collect();
    if !missing.is_empty() {
        let mut pkgs = missing.clone();
        pkgs.dedup();
        panic!(
            "these tests need the Debian packages {}: run scripts/install-test-deps.sh as root \
             (or apt-get install {}); missing: {}",
            pkgs.join(" "),
            pkgs.join(" "),
            bins.iter().filter(|(b, _)| !Path::new(b).exists()).map(|(b, _)| *b).collect::<Vec<_>>().join(", ")
        );
    }
}

/// Starts a server that must be told its port — MariaDB and PostgreSQL cannot bind port 0 and say which
/// one they got — on a port that was free a moment ago, and again on another one when the server finds
/// it taken (by another test's server or connection, in the moment between), so that no test fails for a
/// port. `spawn(port)` starts it, logging to `log`; `ready(port)` says whether it accepts work yet.
pub fn start_on_a_free_port(
    what: &str,
    log: &Path,
    mut spawn: impl FnMut(u16) -> Child,
    mut ready: impl FnMut(u16) -> bool,
) -> (Child, u16) {
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        let port = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port();
        let _ = fs::remove_file(log);
        let mut child = spawn(port);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = tail(log, 30);
                if log.contains("already in use") && attempt < ATTEMPTS {
                    break;
                }
                panic!("{what} exited with {status}; log:\n{log}");
            }
            if ready(port) {
                return (child, port);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{what} not ready after {START_TIMEOUT:?}; log:\n{}", tail(log, 30));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// Effective uid 0 (from /proc/self's owner: no libc or unsafe needed).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// Single-quoted SQL string literal (both servers accept '' for a quote; backslashes doubled for MariaDB).
pub fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Last `n` lines of a log file, for failure messages. Server logs hold no passwords (statements are
/// not logged by either server in this configuration).
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Lines of a server log that contain `needle`.
pub fn count_lines(path: &Path, needle: &str) -> usize {
    fs::read_to_string(path).unwrap_or_default().lines().filter(|l| l.contains(needle)).count()
}

pub fn run_with_stdin(mut cmd: Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).expect("write SQL to client stdin");
    child.wait_with_output().expect("wait for client")
}

/// The `mariadb` client as root over the Unix socket at `socket`, reading SQL from stdin.
pub fn mariadb_admin(socket: &Path) -> Command {
    let mut c = Command::new(MARIADB);
    c.arg("--no-defaults")
        .arg(format!("--socket={}", socket.display()))
        .arg("--user=root")
        .arg("--batch")
        .arg("--skip-column-names")
        .arg("--connect-timeout=5");
    c
}

/// `psql` as the superuser over the Unix socket in `socket_dir` on `port`, reading SQL from stdin.
pub fn psql_admin(socket_dir: &Path, port: u16) -> Command {
    let mut c = Command::new(PSQL);
    c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h"]).arg(socket_dir).args([
        "-p",
        &port.to_string(),
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-f",
        "-",
    ]);
    c
}

/// Runs `sql` through an admin client (on stdin) and returns stdout; panics on an error.
pub fn run_sql(client: Command, sql: &str) -> String {
    let out = run_with_stdin(client, sql);
    assert!(out.status.success(), "SQL failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends `signal` (a kill(1) name such as "TERM") and waits; SIGKILL after STOP_TIMEOUT.
pub fn stop(child: &mut Child, signal: &str) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// uid/gid of a system user from /etc/passwd (no libc needed).
pub fn passwd_ids(name: &str) -> Option<(u32, u32)> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

// ---------------------------------------------------------------------------------------------------
// MariaDB

const MARIADBD: &str = "/usr/sbin/mariadbd";
const MARIADB_INSTALL_DB: &str = "/usr/bin/mariadb-install-db";
const MARIADB: &str = "/usr/bin/mariadb";
const PSQL: &str = "/usr/bin/psql";

/// A private MariaDB server with database `app` and user `app`@`127.0.0.1` (all privileges on `app.*`).
pub struct MariaDb {
    child: Child,
    port: u16,
    socket: PathBuf,
    log: PathBuf,
    app_password: String,
    // Last, so the directory goes after the server stopped.
    dir: tempfile::TempDir,
}

impl MariaDb {
    /// Initialises a data directory, starts `mariadbd` on 127.0.0.1 (a free port), creates `app`.
    /// Blocking (a second or two); call it before starting async work or via `spawn_blocking`.
    pub fn start() -> MariaDb {
        require(&[(MARIADBD, "mariadb-server"), (MARIADB_INSTALL_DB, "mariadb-server"), (MARIADB, "mariadb-client")]);
        let dir = tempfile::Builder::new().prefix("sidecar-mariadb-").tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let log = dir.path().join("mariadb.err");
        let socket = dir.path().join("mysqld.sock");

        let mut install = Command::new(MARIADB_INSTALL_DB);
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .arg("--skip-name-resolve");
        if is_root() {
            install.arg("--user=root");
        }
        let out = install.output().expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let spawn = |port: u16| {
            let mut cmd = Command::new(MARIADBD);
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--pid-file={}", dir.path().join("mariadb.pid").display()))
                .arg(format!("--log-error={}", log.display()))
                .arg("--skip-name-resolve")
                .arg("--skip-log-bin")
                .arg("--innodb-buffer-pool-size=32M")
                .arg("--max-connections=500")
                // A rotation test opens thousands of connections and fails some logins on purpose; keep the
                // server from blocking the host after repeated failures.
                .arg("--max-connect-errors=1000000")
                // 3 and up log every refused login ("Access denied for user …") to the error log: the
                // rotation tests count on the server side what the app must never cause.
                .arg("--log-warnings=3")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if is_root() {
                cmd.arg("--user=root");
            }
            cmd.spawn().expect("spawn mariadbd")
        };
        let ready = |_| socket.exists() && run_with_stdin(mariadb_admin(&socket), "SELECT 1;").status.success();
        let (child, port) = start_on_a_free_port("mariadbd", &log, spawn, ready);
        let db = MariaDb { child, port, socket, log, app_password: random_password(), dir };
        db.setup();
        db
    }

    fn setup(&self) {
        let pw = sql_str(&self.app_password);
        self.sql(&format!(
            "DROP USER IF EXISTS 'root'@'127.0.0.1', 'root'@'::1';\n\
             CREATE DATABASE {APP_DATABASE};\n\
             CREATE USER '{APP_USER}'@'127.0.0.1' IDENTIFIED BY {pw};\n\
             CREATE USER '{APP_USER}'@'localhost' IDENTIFIED BY {pw};\n\
             GRANT ALL ON {APP_DATABASE}.* TO '{APP_USER}'@'127.0.0.1';\n\
             GRANT ALL ON {APP_DATABASE}.* TO '{APP_USER}'@'localhost';"
        ));
    }

    fn admin_cmd(&self) -> Command {
        mariadb_admin(&self.socket)
    }

    /// Runs SQL as root over the socket (on stdin) and returns stdout; panics on an error.
    pub fn sql(&self, sql: &str) -> String {
        run_sql(self.admin_cmd(), sql)
    }

    /// `ALTER USER` for every host entry of `user` (the setSecret step of a rotation).
    pub fn set_password(&self, user: &str, password: &str) {
        let pw = sql_str(password);
        self.sql(&format!(
            "ALTER USER '{user}'@'127.0.0.1' IDENTIFIED BY {pw};\nALTER USER '{user}'@'localhost' IDENTIFIED BY {pw};"
        ));
    }

    /// Kills every connection of `user` server-side; returns how many were killed.
    pub fn kill_connections(&self, user: &str) -> usize {
        let ids = self.sql(&format!("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = {};", sql_str(user)));
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return 0;
        }
        let stmts: String = ids.iter().map(|id| format!("KILL CONNECTION {id};\n")).collect();
        // A connection may end by itself between the SELECT and the KILL: ignore "unknown thread".
        let mut c = self.admin_cmd();
        c.arg("--force");
        let _ = run_with_stdin(c, &stmts);
        ids.len()
    }

    /// Logins of `user` the server refused so far, counted in its own error log.
    pub fn auth_failures(&self, user: &str) -> usize {
        count_lines(&self.log, &format!("Access denied for user '{user}'@"))
    }

    /// Whether `user`/`password` can log in over TCP right now (what the app sees).
    pub fn can_login(&self, user: &str, password: &str) -> bool {
        let mut c = Command::new(MARIADB);
        // The password goes in through MYSQL_PWD, an environment variable of the child only, not argv.
        c.arg("--no-defaults")
            .arg("--protocol=TCP")
            .arg("--host=127.0.0.1")
            .arg(format!("--port={}", self.port))
            .arg(format!("--user={user}"))
            .arg("--batch")
            .env("MYSQL_PWD", password);
        run_with_stdin(c, "SELECT 1;").status.success()
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }
    pub fn socket(&self) -> &Path {
        &self.socket
    }
    /// The password `app` was created with.
    pub fn app_password(&self) -> &str {
        &self.app_password
    }
    pub fn log_path(&self) -> &Path {
        &self.log
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        stop(&mut self.child, "TERM");
    }
}

// ---------------------------------------------------------------------------------------------------
// PostgreSQL

/// The newest installed `/usr/lib/postgresql/<major>/bin` (Debian 12: 15).
pub fn pg_bin_dir() -> PathBuf {
    let mut majors: Vec<u32> = fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    majors.sort_unstable();
    match majors.last() {
        Some(m) => PathBuf::from(format!("/usr/lib/postgresql/{m}/bin")),
        None => {
            require(&[("/usr/lib/postgresql/15/bin/postgres", "postgresql")]);
            unreachable!()
        }
    }
}

/// A private PostgreSQL server with database `app` owned by role `app` (LOGIN, scram-sha-256 password).
pub struct Postgres {
    child: Child,
    port: u16,
    bin: PathBuf,
    log: PathBuf,
    app_password: String,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// initdb + `postgres -k DIR -p PORT -c listen_addresses=127.0.0.1`. PostgreSQL refuses to run as
    /// root, so as root the server runs as the `postgres` system user (Debian's package creates it), or
    /// `nobody`, which gets the temporary directory.
    pub fn start() -> Postgres {
        let bin = pg_bin_dir();
        require(&[
            (bin.join("postgres").to_str().unwrap(), "postgresql"),
            (bin.join("initdb").to_str().unwrap(), "postgresql"),
            (PSQL, "postgresql-client"),
        ]);
        let dir = tempfile::Builder::new().prefix("sidecar-pg-").tempdir().expect("temp dir");
        let run_as = if is_root() {
            Some(passwd_ids("postgres").or_else(|| passwd_ids("nobody")).expect("a postgres or nobody user"))
        } else {
            None
        };
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown pg temp dir");
        }
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");

        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .env("LC_ALL", "C");
        as_user(&mut initdb, run_as);
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let spawn = |port: u16| {
            let logf = fs::File::create(&log).expect("create postgres log");
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(&log, Some(uid), Some(gid)).expect("chown log");
            }
            let mut cmd = Command::new(bin.join("postgres"));
            cmd.arg("-D")
                .arg(&data)
                .arg("-k")
                .arg(dir.path())
                .arg("-p")
                .arg(port.to_string())
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=300"])
                .args(["-c", "password_encryption=scram-sha-256", "-c", "log_min_messages=warning"])
                .env("LC_ALL", "C")
                .stdin(Stdio::null())
                .stdout(logf.try_clone().unwrap())
                .stderr(logf);
            as_user(&mut cmd, run_as);
            cmd.spawn().expect("spawn postgres")
        };
        let ready = |port: u16| {
            dir.path().join(format!(".s.PGSQL.{port}")).exists()
                && run_with_stdin(psql_admin(dir.path(), port), "SELECT 1;").status.success()
        };
        let (child, port) = start_on_a_free_port("postgres", &log, spawn, ready);
        let pg = Postgres { child, port, bin, log, app_password: random_password(), dir };
        pg.sql(&format!("CREATE ROLE {APP_USER} LOGIN PASSWORD {};", sql_str(&pg.app_password)));
        pg.sql(&format!("CREATE DATABASE {APP_DATABASE} OWNER {APP_USER};"));
        pg
    }

    fn admin_cmd(&self) -> Command {
        psql_admin(self.dir.path(), self.port)
    }

    /// Runs SQL as the superuser over the socket (on stdin), returns stdout; panics on an error.
    pub fn sql(&self, sql: &str) -> String {
        run_sql(self.admin_cmd(), sql)
    }

    /// `ALTER ROLE … PASSWORD` (the setSecret step of a rotation).
    pub fn set_password(&self, user: &str, password: &str) {
        self.sql(&format!("ALTER ROLE {user} PASSWORD {};", sql_str(password)));
    }

    /// Terminates every backend of `user`; returns how many.
    pub fn kill_connections(&self, user: &str) -> usize {
        let out = self.sql(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = {};",
            sql_str(user)
        ));
        out.trim().parse().unwrap_or(0)
    }

    /// Logins of `user` the server refused so far, counted in its own log (FATAL lines are logged at
    /// the server's default level).
    pub fn auth_failures(&self, user: &str) -> usize {
        count_lines(&self.log, &format!("password authentication failed for user \"{user}\""))
    }

    /// Whether `user`/`password` can log in over TCP right now.
    pub fn can_login(&self, user: &str, password: &str) -> bool {
        let mut c = Command::new(PSQL);
        c.args(["-X", "-q", "-At", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", user, "-d", APP_DATABASE])
            .args(["-w", "-f", "-"])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5");
        run_with_stdin(c, "SELECT 1;").status.success()
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }
    /// The Unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn app_password(&self) -> &str {
        &self.app_password
    }
    pub fn log_path(&self) -> &Path {
        &self.log
    }
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }
}

pub fn as_user(cmd: &mut Command, ids: Option<(u32, u32)>) {
    if let Some((uid, gid)) = ids {
        // std drops supplementary groups (setgroups(0)) when it changes ids as root.
        cmd.uid(uid).gid(gid);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop(&mut self.child, "INT");
    }
}
