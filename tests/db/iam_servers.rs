//! The IAM database servers of `tests/db/iam_server.rs` really validate RDS IAM auth tokens, like RDS:
//! a token botocore signs with the accepted key for the server's host:port and the logging-in user gets
//! in over verified TLS; a token signed with another secret key, an expired one, one for another user,
//! one for another host, a plain password, and the valid token without TLS are each refused **by the
//! server**, and the verifier's own log names the expected reason for each refusal (so a refusal caused
//! by a broken setup cannot pass for the right one). The CLI clients are the machine's `mariadb` and
//! `psql`, the token in MYSQL_PWD / PGPASSWORD.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::iam_server::{
    IAM_USER, IamCredentials, IamMariaDb, IamPostgres, IamServer, Login, Tls, TokenRequest, botocore_tokens,
};

/// What a login attempt must lead to.
#[derive(Debug)]
enum Expect {
    /// Logged in (over TLS).
    Accepted,
    /// Refused by the server after the verifier refused the token for this reason.
    Refused(&'static str),
}

struct Case {
    name: &'static str,
    token: String,
    expect: Expect,
}

/// The tokens every server is tried with, all signed by botocore in one go.
fn cases(server: &impl IamServer) -> Vec<Case> {
    let valid = server.token_request();
    let requests = [
        valid.clone(),
        TokenRequest { credentials: server.credentials().with_other_secret(), ..valid.clone() },
        // 20 minutes ago: expired 5 minutes ago (tokens live 15).
        TokenRequest { at: SystemTime::now() - Duration::from_secs(20 * 60), ..valid.clone() },
        TokenRequest { user: "other_user".into(), ..valid.clone() },
        TokenRequest { host: "other-db.cluster-c9akciq32.us-east-1.rds.amazonaws.com".into(), ..valid.clone() },
        // The right host, another port: another database endpoint.
        TokenRequest { port: server.port().wrapping_add(1).max(1), ..valid.clone() },
        // A key pair the server does not know at all.
        TokenRequest { credentials: IamCredentials::random(), ..valid },
    ];
    let mut t = botocore_tokens(&requests).into_iter();
    let mut next = || t.next().unwrap();
    vec![
        Case { name: "valid token", token: next(), expect: Expect::Accepted },
        Case { name: "signed with another secret key", token: next(), expect: Expect::Refused("bad-signature") },
        Case { name: "expired (signed 20 minutes ago)", token: next(), expect: Expect::Refused("expired") },
        Case { name: "for another user", token: next(), expect: Expect::Refused("wrong-user") },
        Case { name: "for another host", token: next(), expect: Expect::Refused("wrong-host") },
        Case { name: "for another port", token: next(), expect: Expect::Refused("wrong-host") },
        Case { name: "from unknown credentials", token: next(), expect: Expect::Refused("unknown-access-key") },
        Case { name: "a plain password", token: "hunter2-not-a-token".into(), expect: Expect::Refused("malformed") },
    ]
}

/// Runs every case over verified TLS, then the valid token without TLS (checked by `no_tls`, as the two
/// servers refuse it at different points), then the valid token again. Returns the refusals the
/// verifier logged.
fn exercise<S: IamServer>(server: &S, denied: &str, no_tls: impl Fn(&S, &Login, &[crate::iam_server::VerifierEntry])) {
    let cases = cases(server);
    let mut refusals = 0;
    for case in &cases {
        let before = server.verifier_entries().len();
        let login = server.login(&case.token, Tls::VerifyFull);
        let entries = server.verifier_entries();
        let new = &entries[before..];
        assert_eq!(new.len(), 1, "{}: expected one verifier run for the login, got {new:?}", case.name);
        let entry = &new[0];
        assert_eq!(entry.user, IAM_USER, "{}: PAM_USER", case.name);
        assert_eq!(entry.service, server.pam_service(), "{}: PAM service", case.name);
        match case.expect {
            Expect::Accepted => {
                assert!(login.success, "{}: login refused: {}\nverifier: {entry:?}", case.name, login.stderr);
                assert_eq!((entry.result.as_str(), entry.reason.as_str()), ("accepted", "ok"), "{}", case.name);
                let fields: Vec<&str> = login.stdout.trim().split('\t').collect();
                assert!(fields[0].starts_with(IAM_USER), "{}: logged in as {:?}", case.name, fields[0]);
                assert!(
                    fields.get(1).is_some_and(|v| v.starts_with("TLSv1.")),
                    "{}: the session is not TLS: {:?}",
                    case.name,
                    login.stdout
                );
            }
            Expect::Refused(reason) => {
                refusals += 1;
                assert!(!login.success, "{}: the server let the login in: {:?}", case.name, login.stdout);
                assert!(
                    login.stderr.contains(denied),
                    "{}: not the server's auth refusal: {}",
                    case.name,
                    login.stderr
                );
                assert_eq!(
                    (entry.result.as_str(), entry.reason.as_str()),
                    ("refused", reason),
                    "{}: refused for another reason ({})",
                    case.name,
                    entry.detail
                );
            }
        }
    }

    // The valid token without TLS: refused by the server.
    let valid = &cases[0].token;
    let before = server.verifier_entries();
    let login = server.login(valid, Tls::Disabled);
    assert!(!login.success, "the valid token was accepted without TLS: {:?}", login.stdout);
    no_tls(server, &login, &server.verifier_entries()[before.len()..]);

    // Nothing of the above broke the server: the valid token still gets in.
    let login = server.login(valid, Tls::VerifyFull);
    assert!(login.success, "valid token refused after the negative controls: {}", login.stderr);

    let logged_refusals = server.verifier_entries().iter().filter(|e| e.result == "refused").count();
    assert_eq!(logged_refusals, refusals, "verifier refusals");

    // The verifier's log holds no token, signature, secret key or session token.
    let log = std::fs::read_to_string(server.verifier_log_path()).unwrap();
    let creds = server.credentials();
    for secret in cases.iter().map(|c| c.token.as_str()).chain([
        creds.secret_access_key.as_str(),
        creds.session_token.as_deref().unwrap(),
        "X-Amz-Signature",
        "hunter2",
    ]) {
        assert!(!log.contains(secret), "the verifier log holds a secret or token");
    }
    assert_private(server.verifier_log_path());
}

/// The verifier's log and config are 0600 (they sit in the server's temporary directory).
fn assert_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
    let config = path.with_file_name("verifier.json");
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} has mode {mode:o}", config.display());
}

#[test]
fn mariadb_accepts_only_a_valid_iam_token_over_tls() {
    let m = IamMariaDb::start();
    exercise(&m, &format!("Access denied for user '{IAM_USER}'@"), |_, login, new| {
        assert!(login.stderr.contains("Access denied"), "no-TLS login: {}", login.stderr);
        // MariaDB checks REQUIRE SSL after the PAM plugin ran: the verifier saw (and accepted) the token,
        // and the server still refused. So the refusal is the TLS requirement, nothing else.
        assert_eq!(new.len(), 1, "no-TLS login: verifier runs {new:?}");
        assert_eq!(new[0].result, "accepted", "no-TLS login refused by the verifier, not for lacking TLS");
    });
    // The server's own count: the 7 refused tokens and the no-TLS login.
    assert_eq!(m.auth_failures(IAM_USER), 8, "server log:\n{}", std::fs::read_to_string(m.log_path()).unwrap());
}

#[test]
fn postgres_accepts_only_a_valid_iam_token_over_tls() {
    let p = IamPostgres::start();
    exercise(&p, &format!("PAM authentication failed for user \"{IAM_USER}\""), |p, login, new| {
        // hostnossl … reject: refused before any password is asked for; the verifier never runs.
        assert!(login.stderr.contains("pg_hba.conf rejects connection"), "no-TLS login: {}", login.stderr);
        assert!(login.stderr.contains("no encryption"), "no-TLS login: {}", login.stderr);
        assert!(new.is_empty(), "the verifier ran for a login without TLS: {new:?}");
        assert_eq!(p.no_tls_refusals(IAM_USER), 1);
    });
    assert_eq!(p.auth_failures(IAM_USER), 7, "server log:\n{}", std::fs::read_to_string(p.log_path()).unwrap());
}

#[test]
fn servers_leave_no_process_pam_service_or_directory_behind() {
    fn gone(what: &str, pid: u32, port: u16, pam: &Path, dir: &Path) {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{what}: server process {pid} still there");
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "{what}: still listening on {port}");
        assert!(!pam.exists(), "{what}: {} left behind", pam.display());
        assert!(!dir.exists(), "{what}: {} left behind", dir.display());
    }
    let (pid, port, pam, dir) = {
        let m = IamMariaDb::start();
        let pam_text = std::fs::read_to_string(m.pam_service_path()).unwrap();
        assert!(pam_text.contains("pam_exec.so expose_authtok"), "{pam_text}");
        (m.pid(), m.port(), m.pam_service_path().to_path_buf(), m.dir().to_path_buf())
    };
    gone("mariadb", pid, port, &pam, &dir);
    let (pid, port, pam, dir) = {
        let p = IamPostgres::start();
        assert!(p.pam_service_path().exists());
        (p.pid(), p.port(), p.pam_service_path().to_path_buf(), p.dir().to_path_buf())
    };
    gone("postgres", pid, port, &pam, &dir);
}
