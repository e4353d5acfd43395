//! An RDS IAM token goes only to a server the driver has verified — chain *and* name — on both Ruby stacks
//! and with every adapter they have (Debian 12: mysql2 0.5.3 on MariaDB Connector/C 3.3, pg 1.4.5; Debian
//! 13: mysql2 0.5.5 on Connector/C 3.4, pg 1.5.6), against the token-validating servers of
//! `tests/db/iam_server.rs`, whose certificate the test replaces between the app's connections:
//!
//! * the right certificate (the test CA, SAN 127.0.0.1 and localhost): the app logs in, and the server's
//!   token check (PAM) saw exactly that login;
//! * a certificate for another name (`evil.example`, from the same CA), and one for the right names from
//!   another CA: the app's connection fails on the certificate, and the server saw a TLS handshake but **no
//!   authentication attempt** — its token check ran no more often and it refused no login. Counted on the
//!   server: the verifier's log, the server's own refusals, and its count of TLS handshakes.
//!
//! How each driver is made to check the name is the hook's (`contrib/ruby/lib/secrets_sidecar/active_record/
//! iam_tls.rb`). mysql2 0.5.3 takes it from an option file; Connector/C 3.4 checks no name for a host given
//! as 127.0.0.1, so on Debian 13 the app dials `LOCALHOST` (a name for 127.0.0.1 that is not a Unix socket
//! to MySQL clients, as an app dials an RDS endpoint by name), and the hook refuses 127.0.0.1 outright.
//!
//! Negative controls, each showing the check can fail: on Debian 12 without the option file (what the hook
//! did before), and on Debian 13 without the refusal of 127.0.0.1, the token reaches the wrong-name
//! server, whose token check then sees it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::SERIAL;
use crate::iam_rails::publish_token;
use crate::iam_server::{IAM_DATABASE, IAM_USER, IamMariaDb, IamPostgres, IamServer, TlsFiles, openssl, p};
use crate::load::{self, Stack};
use crate::steps::{Answer, Steps};

/// The server certificates a test installs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cert {
    /// What the server started with.
    Right,
    /// From the same CA, for `evil.example` only.
    OtherName,
    /// For 127.0.0.1 and localhost, from a CA the app does not trust.
    OtherCa,
}

/// The three certificates for one server, made once; [`Certs::install`] puts one in place.
struct Certs {
    files: TlsFiles,
    starttls: &'static str,
    port: u16,
    /// (certificate, key) per [`Cert`].
    made: Vec<(Cert, PathBuf, PathBuf)>,
    _dir: tempfile::TempDir,
}

impl Certs {
    fn new(server: &dyn IamServer) -> Certs {
        let files = server.tls_files();
        let dir = tempfile::Builder::new().prefix("sidecar-certs-").tempdir().unwrap();
        let d = dir.path();
        let right = (Cert::Right, d.join("right.pem"), d.join("right.key"));
        std::fs::copy(&files.cert, &right.1).unwrap();
        std::fs::copy(&files.key, &right.2).unwrap();
        let other_ca = (d.join("untrusted-ca.pem"), d.join("untrusted-ca.key"));
        new_ca(&other_ca.0, &other_ca.1);
        let made = vec![
            right,
            leaf(d, "other-name", "DNS:evil.example", &files.ca, &files.ca_key, Cert::OtherName),
            leaf(d, "other-ca", "IP:127.0.0.1,DNS:localhost", &other_ca.0, &other_ca.1, Cert::OtherCa),
        ];
        Certs { files, starttls: server.starttls(), port: server.port(), made, _dir: dir }
    }

    /// Puts `which` where the server reads its certificate and key and has it reload them.
    fn install(&self, server: &dyn IamServer, which: Cert) {
        let (_, cert, key) = self.made.iter().find(|(c, ..)| *c == which).unwrap();
        for (from, to, mode) in [(cert, &self.files.cert, 0o644), (key, &self.files.key, 0o600)] {
            let tmp = to.with_extension("new");
            std::fs::copy(from, &tmp).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
            if let Some((uid, gid)) = self.files.owner {
                std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).unwrap();
            }
            std::fs::rename(&tmp, to).unwrap();
        }
        server.reload_tls();
        if self.starttls == "mysql" {
            // FLUSH SSL has loaded the files when it returns. (A probe here would count as an aborted
            // connection on the server, possibly after the test has read the count.)
            return;
        }
        // PostgreSQL reloads when the postmaster handles the signal: wait until it presents the new one.
        let want = fingerprint_of_file(cert);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.presented().as_deref() == Some(want.as_str()) {
                return;
            }
            assert!(Instant::now() < deadline, "the server still presents another certificate than {which:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The fingerprint of the certificate the server presents now.
    fn presented(&self) -> Option<String> {
        let out = Command::new("openssl")
            .args(["s_client", "-starttls", self.starttls, "-connect", &format!("127.0.0.1:{}", self.port)])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let pem = text.split("-----BEGIN CERTIFICATE-----").nth(1)?.split("-----END CERTIFICATE-----").next()?;
        let dir = tempfile::tempdir().ok()?;
        let file = dir.path().join("seen.pem");
        std::fs::write(&file, format!("-----BEGIN CERTIFICATE-----{pem}-----END CERTIFICATE-----\n")).ok()?;
        Some(fingerprint_of_file(&file))
    }
}

fn fingerprint_of_file(cert: &Path) -> String {
    let out =
        Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in", p(cert)]).output().unwrap();
    assert!(out.status.success(), "openssl x509: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn new_ca(cert: &Path, key: &Path) {
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=another CA, not the app's",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        p(key),
        "-out",
        p(cert),
    ]);
}

/// A server certificate for `san`, signed by `ca`.
fn leaf(dir: &Path, name: &str, san: &str, ca: &Path, ca_key: &Path, which: Cert) -> (Cert, PathBuf, PathBuf) {
    let (key, csr, cert, ext) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.ext")),
    );
    std::fs::write(
        &ext,
        format!("subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    let cn = format!("/CN={}", san.split(',').next().unwrap().split(':').nth(1).unwrap());
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        &cn,
        "-keyout",
        p(&key),
        "-out",
        p(&csr),
    ]);
    let serial = dir.join(format!("{name}.srl"));
    openssl(&[
        "x509",
        "-req",
        "-in",
        p(&csr),
        "-CA",
        p(ca),
        "-CAkey",
        p(ca_key),
        "-CAserial",
        p(&serial),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        p(&ext),
        "-out",
        p(&cert),
    ]);
    (which, cert, key)
}

/// What the server saw: its token check's runs, the logins it refused, and the connections that reached
/// it (MariaDB: those it aborted before authentication, `Aborted_connects_preauth`; PostgreSQL: every
/// connection received, `log_connections`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    token_checks: usize,
    refused: usize,
    reached: usize,
}

trait Counted: IamServer {
    fn seen(&self) -> Seen;
}
impl Counted for IamMariaDb {
    fn seen(&self) -> Seen {
        let status = self.sql("SHOW GLOBAL STATUS LIKE 'Aborted_connects_preauth';");
        let reached = status.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("Aborted_connects_preauth");
        Seen { token_checks: self.verifier_entries().len(), refused: self.auth_failures(IAM_USER), reached }
    }
}
impl Counted for IamPostgres {
    fn seen(&self) -> Seen {
        Seen {
            token_checks: self.verifier_entries().len(),
            refused: self.auth_failures(IAM_USER),
            reached: self.connections_received(),
        }
    }
}

/// One new connection of the app; what it answered and what the server saw meanwhile.
async fn connect(steps: &mut Steps, server: &dyn Counted, host: Option<&str>) -> (Answer, Seen, Seen) {
    let before = server.seen();
    let mut cmd = json!({"op": "connect"});
    if let Some(h) = host {
        cmd["host"] = json!(h);
    }
    let answer = steps.step(cmd).await;
    // The server logs as it answers; give its log writer a moment before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    (answer, before, server.seen())
}

fn assert_logged_in(what: &str, (a, before, after): &(Answer, Seen, Seen)) {
    println!("    {what}: logged in; server: token checks +{}", after.token_checks - before.token_checks);
    assert!(a.ok(), "{what}: {}", a.error());
    assert_eq!(after.token_checks, before.token_checks + 1, "{what}: the server's token check did not see the login");
    assert_eq!(after.refused, before.refused, "{what}: refused logins");
}

/// Refused by the driver on the certificate, after the server began a TLS handshake and before any token.
fn assert_refused_before_the_token(what: &str, (a, before, after): &(Answer, Seen, Seen)) {
    // The driver's own words (the cause ActiveRecord wraps), which name the certificate problem.
    let driver = a.0["cause"].as_str().or(a.0["message"].as_str()).unwrap_or_default().trim().to_string();
    println!(
        "    {what}: refused ({driver}); server: reached +{}, token checks +{}, refused logins +{}",
        after.reached - before.reached,
        after.token_checks - before.token_checks,
        after.refused - before.refused,
    );
    assert!(!a.ok(), "{what}: the app logged in");
    // The drivers' words for a certificate they did not accept (Connector/C 3.4: "Hostname verification
    // failed"), so that a failure for another reason cannot pass for this one.
    let error = a.error().to_lowercase();
    assert!(
        error.contains("certificate") || error.contains("hostname verification failed"),
        "{what}: failed for another reason: {}",
        a.error()
    );
    assert!(after.reached > before.reached, "{what}: the connection never reached the server");
    assert_eq!(after.token_checks, before.token_checks, "{what}: the token reached the server's token check");
    assert_eq!(after.refused, before.refused, "{what}: the server refused a login: the token was sent");
}

fn app_config(stack: &Stack, adapter: &str, server: &dyn IamServer, scratch: &Path, host: &str) -> Value {
    let file = scratch.join("db.json");
    let ca = scratch.join("rds-ca.pem");
    std::fs::copy(server.ca_path(), &ca).unwrap();
    publish_token(server, &file, SystemTime::now());
    let mut c = load::load_config(
        adapter,
        server.port(),
        IAM_DATABASE,
        "steps",
        json!({ "file": stack.inner_path(&file), "ca_file": stack.inner_path(&ca) }),
    );
    c["host"] = json!(host);
    c["pool"] = json!(1);
    c
}

/// The three certificates against one stack and adapter: right, another name, another CA; then the right
/// one again. Returns the steps process for the caller's extra cases.
async fn three_certificates(
    stack: &Stack,
    adapter: &str,
    server: &dyn Counted,
    certs: &Certs,
    host: &str,
) -> (Steps, tempfile::TempDir) {
    load::require_ruby(adapter, stack);
    let scratch = stack.scratch_dir("sidecar-iam-tls-");
    let mut steps = Steps::start(app_config(stack, adapter, server, scratch.path(), host), stack).await;
    println!("=== {}: {adapter} dialing {host}", stack.name());
    certs.install(server, Cert::Right);
    assert_logged_in("the right certificate", &connect(&mut steps, server, None).await);
    certs.install(server, Cert::OtherName);
    assert_refused_before_the_token("a certificate for evil.example", &connect(&mut steps, server, None).await);
    certs.install(server, Cert::OtherCa);
    assert_refused_before_the_token("a certificate from another CA", &connect(&mut steps, server, None).await);
    certs.install(server, Cert::Right);
    assert_logged_in("the right certificate again", &connect(&mut steps, server, None).await);
    (steps, scratch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_wrong_name_and_wrong_ca_never_get_the_token_on_either_stack() {
    let _serial = SERIAL.lock().await;
    let server = tokio::task::spawn_blocking(IamMariaDb::start).await.unwrap();
    let certs = Certs::new(&server);

    // Debian 12: mysql2 0.5.3 on Connector/C 3.3, which checks the IP SAN of 127.0.0.1 once the option
    // file turned the check on.
    let (mut steps, _scratch) = three_certificates(&Stack::Debian12, "mysql2", &server, &certs, "127.0.0.1").await;
    // Negative control: without the option file the driver checks the chain only.
    steps.step(json!({"op": "without", "part": "name_check"})).await;
    certs.install(&server, Cert::OtherName);
    let (a, before, after) = connect(&mut steps, &server, None).await;
    println!(
        "    without the option file (negative control), evil.example: logged in {}; server: token checks +{}",
        a.ok(),
        after.token_checks - before.token_checks
    );
    assert!(a.ok(), "mysql2 0.5.3 refused the wrong name by itself: {}", a.error());
    assert_eq!(after.token_checks, before.token_checks + 1, "the control's token did not reach the server");
    steps.finish().await;

    // Debian 13: mysql2 0.5.5 on Connector/C 3.4, dialing a name.
    let stack = Stack::debian13();
    let (mut steps, _scratch) = three_certificates(&stack, "mysql2", &server, &certs, "LOCALHOST").await;
    // 127.0.0.1: Connector/C 3.4 would check no name; the hook refuses before any connection.
    certs.install(&server, Cert::OtherName);
    let (a, before, after) = connect(&mut steps, &server, Some("127.0.0.1")).await;
    println!("    dialing 127.0.0.1: {}; server: reached +{}", a.error(), after.reached - before.reached);
    assert_eq!(a.0["error_class"], "SecretsSidecar::ActiveRecord::InsecureTransport", "{a:?}");
    assert!(a.error().contains("checks no certificate name for host 127.0.0.1"), "{}", a.error());
    assert_eq!(after, before, "the refused connection reached the server");
    // Negative control: without that refusal the token goes to the wrong-name server.
    steps.step(json!({"op": "without", "part": "loopback_rule"})).await;
    let (a, before, after) = connect(&mut steps, &server, Some("127.0.0.1")).await;
    println!(
        "    without the 127.0.0.1 refusal (negative control), evil.example: logged in {}; server: token checks +{}",
        a.ok(),
        after.token_checks - before.token_checks
    );
    assert!(a.ok(), "Connector/C 3.4 checked the name of 127.0.0.1 after all: {}", a.error());
    assert_eq!(after.token_checks, before.token_checks + 1);
    steps.finish().await;
    certs.install(&server, Cert::Right);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wrong_name_and_wrong_ca_never_get_the_token_on_either_stack() {
    let _serial = SERIAL.lock().await;
    let server = tokio::task::spawn_blocking(IamPostgres::start).await.unwrap();
    let certs = Certs::new(&server);
    for stack in [Stack::Debian12, Stack::debian13()] {
        let (steps, _scratch) = three_certificates(&stack, "postgresql", &server, &certs, "127.0.0.1").await;
        steps.finish().await;
    }
}
