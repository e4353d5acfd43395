//! Private MariaDB and PostgreSQL servers that log a user in with an **RDS IAM auth token** only, over
//! **TLS**, and really validate the token: a local stand-in for RDS's IAM authentication plugin.
//!
//! # Design
//!
//! RDS validates an IAM token inside the server (MySQL's `AWSAuthenticationPlugin`, PostgreSQL's `rds_iam`
//! role); neither plugin exists outside RDS. Both open-source servers can delegate a password check to
//! **PAM** instead: MariaDB through its `auth_pam` plugin (shipped in Debian's `mariadb-server`), in
//! cleartext mode (`pam_use_cleartext_plugin`, the `mysql_clear_password` exchange the MySQL drivers use
//! for RDS IAM too), and PostgreSQL through the `pam` method of `pg_hba.conf`. The PAM service each
//! server instance gets has a single `auth` module, `pam_exec.so expose_authtok`, which runs
//! `tests/iam/verify_token.py` with the password (the token) on stdin and the database user in `PAM_USER`.
//! The verifier recomputes the token's SigV4 signature with botocore's own `SigV4QueryAuth` from the
//! secret key of the credentials this harness generated, and accepts only a token that
//!
//! - parses as `HOST:PORT/?Action=connect&DBUser=…&X-Amz-…` with exactly the parameters botocore's
//!   `generate_db_auth_token` signs (`X-Amz-Expires` at most 900, `SignedHeaders=host`, service `rds-db`,
//!   the server's region, the configured session token);
//! - carries the signature that secret key gives (a token from any other key is refused);
//! - is not expired (`X-Amz-Date + X-Amz-Expires` has not passed) nor dated more than 5 minutes ahead;
//! - names the user logging in (`DBUser` = `PAM_USER`) and this server's `host:port`.
//!
//! Every attempt appends one JSON line (result, reason, never the token) to the verifier's log, so a test
//! can tell "refused for the right reason" from "refused because the setup is broken"
//! ([`IamServer::verifier_entries`]). The token user [`IAM_USER`] can log in through PAM only, and only
//! over TLS: PostgreSQL has `hostnossl … reject` and `hostssl … pam` lines for it and nothing else;
//! MariaDB creates it `IDENTIFIED VIA pam … REQUIRE SSL`. A CA and a server certificate (SAN `127.0.0.1`
//! and `localhost`) are generated per server with the `openssl` CLI, so clients verify the server fully
//! (`sslmode=verify-full`, `--ssl-verify-server-cert`).
//!
//! Servers listen on 127.0.0.1 only, in their own temporary directory (the approach of
//! `tests/harness/src/db.rs`), and stop on `Drop`, which also removes their PAM service file and directory.
//!
//! # The /etc/pam.d caveat
//!
//! Linux-PAM reads service definitions only from `/etc/pam.d` (there is no per-process search path), so
//! each server writes `/etc/pam.d/sidecar-iam-<pid>-<n>-<random>` at start and removes it on `Drop`.
//! That needs root; without it the start fails naming the reason. A process killed before `Drop` leaves
//! its file behind: the next start removes `sidecar-iam-<pid>-…` files whose process is gone.
//!
//! The verifier runs as the server's user: root for MariaDB (its `auth_pam_tool` is setuid root anyway),
//! `postgres` for PostgreSQL when the tests run as root (PostgreSQL refuses to run as root). The test
//! venv's interpreter may not be executable by `postgres` (a pyenv python under a 0700 `/root`): the
//! harness then runs the system `python3` of the same version with the venv's `site-packages` first on
//! its path, i.e. the same pinned botocore, after checking both as that user. The config the verifier
//! reads (secret key included) is a 0600 file owned by that user in the server's temporary directory.
//!
//! # What differs from RDS
//!
//! - The credentials are the test's own (random per server), checked against a known secret key; RDS
//!   asks IAM, which also checks the `rds-db:connect` policy for `dbuser:<DbiResourceId>/<user>`,
//!   session-credential expiry and revocation, none of which exists here.
//! - MariaDB checks `REQUIRE SSL` only *after* the authentication plugin ran: a client without TLS has
//!   already sent its token in cleartext (and the verifier accepted it) when the server refuses the login.
//!   RDS's plugin refuses non-TLS IAM logins; here the token is no less exposed, so the client side (the
//!   Ruby hook) must refuse to send a token without TLS. PostgreSQL's `hostnossl … reject` refuses before
//!   any password is asked for.
//! - RDS accepts the token for the endpoint the client dialled (instance, cluster, custom, proxy); here
//!   the only valid host is `127.0.0.1` at the server's port.
//! - Each login starts a Python process that imports botocore (0.3–1 s), so logins are slower than on RDS.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};

use harness::db::{
    as_user, count_lines, is_root, mariadb_admin, passwd_ids, pg_bin_dir, psql_admin, require, run_sql, run_with_stdin,
    sql_str, start_on_a_free_port, stop,
};

/// The database user that logs in with IAM tokens (through PAM only).
pub const IAM_USER: &str = "iam_app";
/// The database it may use.
pub const IAM_DATABASE: &str = "app";
/// The region the servers' tokens are signed for.
pub const REGION: &str = "us-east-1";
/// The host the servers listen on, and so the host a token is signed for.
pub const HOST: &str = "127.0.0.1";

const PAM_DIR: &str = "/etc/pam.d";
const PAM_PREFIX: &str = "sidecar-iam-";

const MARIADBD: &str = "/usr/sbin/mariadbd";
const MARIADB_INSTALL_DB: &str = "/usr/bin/mariadb-install-db";
const MARIADB: &str = "/usr/bin/mariadb";
const MARIADB_AUTH_PAM: &str = "/usr/lib/mysql/plugin/auth_pam.so";
const PSQL: &str = "/usr/bin/psql";
const OPENSSL: &str = "/usr/bin/openssl";
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

// ---------------------------------------------------------------------------------------------------
// Credentials, tokens and the verifier's log

/// AWS credentials the server's verifier accepts tokens from (random per server, like a task role's
/// session credentials: with a session token).
#[derive(Clone, Debug)]
pub struct IamCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl IamCredentials {
    /// Random credentials in AWS's shapes: `ASIA` + 16, a 40-character secret, a session token.
    pub fn random() -> IamCredentials {
        IamCredentials {
            access_key_id: format!("ASIA{}", random_alnum(16).to_uppercase()),
            secret_access_key: random_alnum(40),
            session_token: Some(format!("IQoJb3JpZ2luX2Vj{}", random_alnum(64))),
        }
    }

    /// The same access key id and session token with another secret key: what a forger without the
    /// secret would sign with.
    pub fn with_other_secret(&self) -> IamCredentials {
        IamCredentials { secret_access_key: random_alnum(40), ..self.clone() }
    }
}

/// What to sign: botocore's `generate_db_auth_token(host, port, user, Region=region)` with `credentials`
/// and botocore's clock frozen at `at`.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub region: String,
    pub credentials: IamCredentials,
    pub at: SystemTime,
}

/// Tokens botocore signs (`tests/iam/botocore_token.py`, the reference signer of `tests/it/iam_token.rs`),
/// one per request, in one Python process. Secrets go through stdin, never argv.
pub fn botocore_tokens(requests: &[TokenRequest]) -> Vec<String> {
    let cases: Vec<Value> = requests
        .iter()
        .map(|r| {
            json!({
                "host": r.host, "port": r.port, "user": r.user, "region": r.region,
                "akid": r.credentials.access_key_id, "secret": r.credentials.secret_access_key,
                "token": r.credentials.session_token,
                "epoch": r.at.duration_since(UNIX_EPOCH).expect("time after 1970").as_secs(),
            })
        })
        .collect();
    let venv = Venv::find();
    let mut cmd = Command::new(&venv.python);
    cmd.arg(manifest_dir().join("tests/iam/botocore_token.py"))
        // Nothing of the machine's AWS configuration may leak in.
        .env_clear()
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    let out = run_with_stdin(cmd, &Value::Array(cases).to_string());
    assert!(out.status.success(), "tests/iam/botocore_token.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let tokens: Vec<String> = serde_json::from_slice(&out.stdout).expect("botocore_token.py prints a JSON list");
    assert_eq!(tokens.len(), requests.len());
    tokens
}

/// One line of the verifier's log: one login attempt that reached PAM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifierEntry {
    /// "accepted" or "refused".
    pub result: String,
    /// "ok", or why: "bad-signature", "expired", "wrong-user", "wrong-host", "malformed", …
    pub reason: String,
    /// The user logging in (PAM_USER).
    pub user: String,
    /// The PAM service (unique per server).
    pub service: String,
    /// A human explanation; never the token.
    pub detail: String,
}

/// How a CLI client connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    /// TLS with the server's certificate verified against the test CA, host name included.
    VerifyFull,
    /// No TLS at all.
    Disabled,
}

/// The outcome of one CLI login.
#[derive(Debug)]
pub struct Login {
    pub success: bool,
    /// What the query printed (on success).
    pub stdout: String,
    /// The client's error (the server's refusal on failure).
    pub stderr: String,
}

/// What both servers offer.
pub trait IamServer {
    fn iam(&self) -> &IamSetup;
    fn port(&self) -> u16;
    /// Logs in as `user` with `token` as the password through the server's CLI client (`mariadb` or
    /// `psql`; the token in an environment variable of the child, never argv) and runs a query that
    /// prints the logged-in user and the TLS version ("" without TLS).
    fn login_as(&self, user: &str, token: &str, tls: Tls) -> Login;
    /// Makes the server load its certificate and key files again (after a test replaced them).
    fn reload_tls(&self);
    /// Its name for `openssl s_client -starttls`.
    fn starttls(&self) -> &'static str;

    /// The host tokens are signed for (what the client dials).
    fn host(&self) -> &'static str {
        HOST
    }
    fn login(&self, token: &str, tls: Tls) -> Login {
        self.login_as(IAM_USER, token, tls)
    }
    /// The credentials the verifier accepts tokens from.
    fn credentials(&self) -> &IamCredentials {
        &self.iam().credentials
    }
    /// The CA certificate that signed the server's certificate (what `sslrootcert`/`--ssl-ca` take).
    fn ca_path(&self) -> &Path {
        &self.iam().ca
    }
    /// The server's certificate, its key and the CA's key, and who owns the server's files: what a test
    /// needs to give the server another certificate ([`IamServer::reload_tls`]).
    fn tls_files(&self) -> TlsFiles {
        let i = self.iam();
        TlsFiles {
            ca: i.ca.clone(),
            ca_key: i.ca.with_file_name("ca.key"),
            cert: i.server_cert.clone(),
            key: i.server_key.clone(),
            owner: i.owner,
        }
    }
    /// The verifier's log: one JSON line per login attempt that reached PAM.
    fn verifier_log_path(&self) -> &Path {
        &self.iam().verifier_log
    }
    /// Parsed lines of the verifier's log, oldest first.
    fn verifier_entries(&self) -> Vec<VerifierEntry> {
        self.iam().entries()
    }
    /// The PAM service name (the file under /etc/pam.d).
    fn pam_service(&self) -> &str {
        &self.iam().pam.name
    }
    fn pam_service_path(&self) -> &Path {
        &self.iam().pam.path
    }
    /// A token request for this server, user [`IAM_USER`], signed now with the accepted credentials.
    fn token_request(&self) -> TokenRequest {
        TokenRequest {
            host: self.host().to_string(),
            port: self.port(),
            user: IAM_USER.to_string(),
            region: REGION.to_string(),
            credentials: self.credentials().clone(),
            at: SystemTime::now(),
        }
    }
}

/// See [`IamServer::tls_files`].
pub struct TlsFiles {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub owner: Option<(u32, u32)>,
}

// ---------------------------------------------------------------------------------------------------
// What both servers share: TLS files, the verifier's config and log, the PAM service

/// The IAM side of one server: its TLS files, the verifier's config, log and PAM service.
pub struct IamSetup {
    credentials: IamCredentials,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    config: PathBuf,
    verifier_log: PathBuf,
    pam: PamService,
    owner: Option<(u32, u32)>,
}

impl IamSetup {
    /// Writes the TLS files, the verifier's config and the PAM service into `dir` for a server on `port`
    /// whose processes run as `owner` (None: the current user).
    fn create(dir: &Path, port: u16, owner: Option<(u32, u32)>) -> IamSetup {
        require(&[(OPENSSL, "openssl")]);
        require_pam_modules();
        let credentials = IamCredentials::random();
        let (ca, server_cert, server_key) = make_tls(dir, owner);
        let config = dir.join("verifier.json");
        let verifier_log = dir.join("verifier.log");
        write_private(&verifier_log, b"", owner);

        let venv = Venv::find();
        let script = manifest_dir().join("tests/iam/verify_token.py");
        let python = verifier_python(&venv, &script, owner);
        for p in [&python, &venv.site_packages, &script, &config, &verifier_log] {
            // pam_exec splits its arguments on whitespace.
            assert!(!p.to_string_lossy().contains(char::is_whitespace), "path with whitespace: {}", p.display());
        }
        let pam = PamService::create(&format!(
            "# secrets-sidecar test server (tests/db/iam_server.rs); removed when the server stops.\n\
             auth required pam_exec.so expose_authtok quiet {} -I -S {} --site-packages {} {} {}\n\
             account required pam_permit.so\n",
            python.display(),
            script.display(),
            venv.site_packages.display(),
            config.display(),
            verifier_log.display(),
        ));
        let mut setup = IamSetup { credentials, ca, server_cert, server_key, config, verifier_log, pam, owner };
        setup.write_config(port);
        setup
    }

    fn write_config(&mut self, port: u16) {
        let c = &self.credentials;
        let config = json!({
            "host": HOST, "port": port, "region": REGION,
            "credentials": [{
                "access_key_id": c.access_key_id, "secret_access_key": c.secret_access_key,
                "session_token": c.session_token,
            }],
        });
        // Atomically, so a login never reads half a file.
        let tmp = self.config.with_extension("json.tmp");
        write_private(&tmp, config.to_string().as_bytes(), self.owner);
        fs::rename(&tmp, &self.config).expect("rename verifier config");
    }

    fn entries(&self) -> Vec<VerifierEntry> {
        let text = fs::read_to_string(&self.verifier_log).unwrap_or_default();
        text.lines()
            .map(|l| {
                let v: Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("verifier log line is not JSON ({e})"));
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                VerifierEntry {
                    result: s("result"),
                    reason: s("reason"),
                    user: s("user"),
                    service: s("service"),
                    detail: s("detail"),
                }
            })
            .collect()
    }
}

/// `/etc/pam.d/<unique name>`, removed on Drop.
pub struct PamService {
    name: String,
    path: PathBuf,
}

impl PamService {
    fn create(contents: &str) -> PamService {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        remove_stale_pam_services();
        let name = format!(
            "{PAM_PREFIX}{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            random_alnum(8).to_lowercase()
        );
        let path = Path::new(PAM_DIR).join(&name);
        let mut f = fs::OpenOptions::new().write(true).create_new(true).open(&path).unwrap_or_else(|e| {
            panic!(
                "cannot create the PAM service {} ({e}): PAM reads services only from {PAM_DIR}, so these \
                 tests must run as root",
                path.display()
            )
        });
        let service = PamService { name, path };
        f.write_all(contents.as_bytes()).expect("write PAM service");
        fs::set_permissions(&service.path, fs::Permissions::from_mode(0o644)).expect("chmod PAM service");
        service
    }
}

impl Drop for PamService {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Removes `/etc/pam.d/sidecar-iam-<pid>-…` files whose process is gone (a test killed before Drop).
fn remove_stale_pam_services() {
    let Ok(rd) = fs::read_dir(PAM_DIR) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PAM_PREFIX).and_then(|r| r.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost (EC P-256, valid 2 days), in `dir`. The
/// CA's key stays with the current user; the server's key (0600) goes to `owner`.
fn make_tls(dir: &Path, owner: Option<(u32, u32)>) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.pem");
    let ext = dir.join("server.ext");
    fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write openssl extensions");
    let cn = format!("/CN=secrets-sidecar test CA {}", random_alnum(8));
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
        &cn,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        p(&ca_key),
        "-out",
        p(&ca),
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        p(&key),
        "-out",
        p(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        p(&csr),
        "-CA",
        p(&ca),
        "-CAkey",
        p(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        p(&ext),
        "-out",
        p(&cert),
    ]);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod server key");
    for f in [&ca, &cert] {
        fs::set_permissions(f, fs::Permissions::from_mode(0o644)).expect("chmod certificate");
    }
    if let Some((uid, gid)) = owner {
        for f in [&key, &cert, &ca] {
            std::os::unix::fs::chown(f, Some(uid), Some(gid)).expect("chown TLS file");
        }
    }
    (ca, cert, key)
}

pub(crate) fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

pub(crate) fn openssl(args: &[&str]) {
    let out = Command::new(OPENSSL).args(args).stdin(Stdio::null()).output().expect("run openssl");
    assert!(out.status.success(), "openssl {} failed: {}", args[0], String::from_utf8_lossy(&out.stderr));
}

/// Creates (or truncates) `path` with mode 0600, owned by `owner`.
fn write_private(path: &Path, data: &[u8], owner: Option<(u32, u32)>) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = fs::remove_file(path);
    let mut f =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).expect("create private file");
    f.write_all(data).expect("write private file");
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown private file");
    }
}

/// Panics naming the package unless a PAM module directory (Debian's is multiarch) holds `pam_exec.so`
/// and `pam_permit.so`.
fn require_pam_modules() {
    let mut candidates = vec![PathBuf::from("/lib/security"), PathBuf::from("/usr/lib/security")];
    for base in ["/usr/lib", "/lib"] {
        if let Ok(rd) = fs::read_dir(base) {
            candidates.extend(rd.flatten().map(|e| e.path().join("security")));
        }
    }
    match candidates.into_iter().find(|d| d.join("pam_exec.so").exists() && d.join("pam_permit.so").exists()) {
        Some(_) => {}
        None => panic!(
            "these tests need pam_exec.so and pam_permit.so from the Debian package libpam-modules: run \
             scripts/install-test-deps.sh as root (or apt-get install libpam-modules)"
        ),
    }
}

// ---------------------------------------------------------------------------------------------------
// Which python runs the verifier

struct Venv {
    python: PathBuf,
    site_packages: PathBuf,
}

impl Venv {
    fn find() -> Venv {
        let root = manifest_dir().join(".venv");
        let python = root.join("bin/python");
        assert!(
            python.exists(),
            "the test venv is missing at {}: run `make test` (it installs the pinned botocore)",
            root.display()
        );
        let lib = root.join("lib");
        let site_packages = fs::read_dir(&lib)
            .ok()
            .and_then(|rd| {
                rd.flatten()
                    .map(|e| e.path().join("site-packages"))
                    .find(|p| p.join("botocore").is_dir() && p.to_string_lossy().contains("python3"))
            })
            .unwrap_or_else(|| {
                panic!("no site-packages with botocore under {}: run `make test` (it installs the venv)", lib.display())
            });
        Venv { python, site_packages }
    }
}

/// The interpreter that runs the verifier as `owner`: the venv's own when `owner` can execute it, else
/// the system python3 if it is the same Python version and imports the same botocore. Panics naming both
/// otherwise.
fn verifier_python(venv: &Venv, script: &Path, owner: Option<(u32, u32)>) -> PathBuf {
    let probe = |python: &Path, as_owner: bool| -> Option<String> {
        let mut cmd = Command::new(python);
        cmd.args(["-I", "-S", "-c"])
            .arg(
                "import sys; sys.path.insert(0, sys.argv[1]); import botocore, botocore.auth; open(sys.argv[2]).close(); \
                 print('%d.%d %s' % (sys.version_info[0], sys.version_info[1], botocore.__version__))",
            )
            .arg(&venv.site_packages)
            .arg(script)
            .env_clear()
            .stdin(Stdio::null());
        if as_owner {
            as_user(&mut cmd, owner);
        }
        let out = cmd.output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let reference = probe(&venv.python, false).unwrap_or_else(|| {
        panic!("{} cannot import botocore: run `make test` (it installs the pinned test venv)", venv.python.display())
    });
    if owner.is_none() || probe(&venv.python, true).as_deref() == Some(reference.as_str()) {
        return venv.python.clone();
    }
    let system = Path::new(SYSTEM_PYTHON);
    if system.exists() && probe(system, true).as_deref() == Some(reference.as_str()) {
        return system.to_path_buf();
    }
    panic!(
        "the verifier must run as uid/gid {owner:?} (the server's user), which cannot run {} with the test \
         venv's botocore ({reference}), and {SYSTEM_PYTHON} is missing or another Python version: install \
         python3 {} (Debian package python3) or make the venv's interpreter executable by that user",
        venv.python.display(),
        reference.split(' ').next().unwrap_or_default(),
    )
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------------
// MariaDB

/// A private MariaDB server with TLS and the PAM plugin in cleartext mode, database [`IAM_DATABASE`] and
/// user [`IAM_USER`]@127.0.0.1 `IDENTIFIED VIA pam USING '<service>' REQUIRE SSL`.
pub struct IamMariaDb {
    // Field order is drop order: the server stops, then the PAM service goes, then the directory.
    server: ServerProcess,
    iam: IamSetup,
    port: u16,
    socket: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl IamMariaDb {
    /// Blocking (a few seconds).
    pub fn start() -> IamMariaDb {
        require(&[
            (MARIADBD, "mariadb-server"),
            (MARIADB_INSTALL_DB, "mariadb-server"),
            (MARIADB_AUTH_PAM, "mariadb-server"),
            (MARIADB, "mariadb-client"),
        ]);
        let dir = tempfile::Builder::new().prefix("sidecar-iam-mariadb-").tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let log = dir.path().join("mariadb.err");
        let socket = dir.path().join("mysqld.sock");
        // The verifier's config names the port, once the server has one.
        let mut iam = IamSetup::create(dir.path(), 0, None);

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
                .arg(format!("--bind-address={HOST}"))
                .arg(format!("--pid-file={}", dir.path().join("mariadb.pid").display()))
                .arg(format!("--log-error={}", log.display()))
                .arg("--skip-name-resolve")
                .arg("--skip-log-bin")
                .arg("--innodb-buffer-pool-size=32M")
                .arg("--max-connect-errors=1000000")
                .arg("--log-warnings=3")
                // The PAM plugin, taking the password in cleartext (mysql_clear_password), as RDS's IAM plugin.
                .arg("--plugin-load-add=auth_pam")
                .arg("--pam-use-cleartext-plugin=ON")
                .arg(format!("--ssl-ca={}", iam.ca.display()))
                .arg(format!("--ssl-cert={}", iam.server_cert.display()))
                .arg(format!("--ssl-key={}", iam.server_key.display()))
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
        iam.write_config(port);
        let server = ServerProcess { child, signal: "TERM" };
        let db = IamMariaDb { server, iam, port, socket, log, dir };
        db.setup();
        db
    }

    fn setup(&self) {
        let out = self
            .sql("SELECT PLUGIN_STATUS FROM information_schema.PLUGINS WHERE PLUGIN_NAME = 'pam';\nSELECT @@have_ssl;");
        assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["ACTIVE", "YES"], "pam plugin or TLS is not on");
        self.sql(&format!(
            "DROP USER IF EXISTS 'root'@'127.0.0.1', 'root'@'::1';\n\
             CREATE DATABASE {IAM_DATABASE};\n\
             CREATE USER '{IAM_USER}'@'{HOST}' IDENTIFIED VIA pam USING {} REQUIRE SSL;\n\
             GRANT ALL ON {IAM_DATABASE}.* TO '{IAM_USER}'@'{HOST}';",
            sql_str(&self.iam.pam.name)
        ));
    }

    fn admin_cmd(&self) -> Command {
        mariadb_admin(&self.socket)
    }

    /// Runs SQL as root over the Unix socket (on stdin) and returns stdout; panics on an error.
    pub fn sql(&self, sql: &str) -> String {
        run_sql(self.admin_cmd(), sql)
    }

    /// Logins of `user` the server refused so far, counted in its own error log.
    pub fn auth_failures(&self, user: &str) -> usize {
        count_lines(&self.log, &format!("Access denied for user '{user}'@"))
    }
    pub fn log_path(&self) -> &Path {
        &self.log
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn pid(&self) -> u32 {
        self.server.child.id()
    }
}

impl IamServer for IamMariaDb {
    fn iam(&self) -> &IamSetup {
        &self.iam
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn reload_tls(&self) {
        self.sql("FLUSH SSL;");
    }
    fn starttls(&self) -> &'static str {
        "mysql"
    }
    fn login_as(&self, user: &str, token: &str, tls: Tls) -> Login {
        let mut c = Command::new(MARIADB);
        c.arg("--no-defaults")
            .arg("--protocol=TCP")
            .arg(format!("--host={HOST}"))
            .arg(format!("--port={}", self.port))
            .arg(format!("--user={user}"))
            .arg(format!("--database={IAM_DATABASE}"))
            .arg("--batch")
            .arg("--skip-column-names")
            .arg("--connect-timeout=10")
            // What mysql2's enable_cleartext_plugin does; MariaDB's client always may, so it only warns
            // that the option is obsolete.
            .arg("--enable-cleartext-plugin");
        match tls {
            Tls::VerifyFull => {
                c.arg("--ssl").arg(format!("--ssl-ca={}", self.iam.ca.display())).arg("--ssl-verify-server-cert");
            }
            Tls::Disabled => {
                c.arg("--skip-ssl");
            }
        }
        c.env_clear().env("MYSQL_PWD", token);
        let out = run_with_stdin(
            c,
            "SELECT CURRENT_USER(), (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS \
             WHERE VARIABLE_NAME = 'Ssl_version');",
        );
        let mut login = login(out);
        // The client prints that warning on stdout, before the query's output.
        login.stdout =
            login.stdout.lines().filter(|l| !l.starts_with("WARNING: option ")).map(|l| format!("{l}\n")).collect();
        login
    }
}

// ---------------------------------------------------------------------------------------------------
// PostgreSQL

/// A private PostgreSQL server with TLS, database [`IAM_DATABASE`] owned by role [`IAM_USER`] (LOGIN, no
/// password), which `pg_hba.conf` lets in through PAM over TLS only. The superuser `postgres` logs in
/// over the Unix socket only (trust); every other connection is refused.
pub struct IamPostgres {
    server: ServerProcess,
    iam: IamSetup,
    port: u16,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl IamPostgres {
    /// Blocking (a few seconds). As root the server runs as the `postgres` system user (or `nobody`),
    /// which gets the temporary directory; so does the verifier PAM runs.
    pub fn start() -> IamPostgres {
        let bin = pg_bin_dir();
        require(&[
            (bin.join("postgres").to_str().unwrap(), "postgresql"),
            (bin.join("initdb").to_str().unwrap(), "postgresql"),
            (PSQL, "postgresql-client"),
        ]);
        let dir = tempfile::Builder::new().prefix("sidecar-iam-pg-").tempdir().expect("temp dir");
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
        // The verifier's config names the port, once the server has one.
        let mut iam = IamSetup::create(dir.path(), 0, run_as);

        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=reject",
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
        // First match wins: the token user is refused without TLS and goes through PAM with it; nothing
        // else may log in over TCP.
        let hba = data.join("pg_hba.conf");
        fs::write(
            &hba,
            format!(
                "# tests/db/iam_server.rs\n\
                 local     all  postgres              trust\n\
                 hostnossl all  {IAM_USER}  {HOST}/32  reject\n\
                 hostssl   all  {IAM_USER}  {HOST}/32  pam pamservice={}\n",
                iam.pam.name
            ),
        )
        .expect("write pg_hba.conf");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&hba, Some(uid), Some(gid)).expect("chown pg_hba.conf");
        }

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
                .args(["-c", &format!("listen_addresses={HOST}"), "-c", "fsync=off", "-c", "max_connections=100"])
                .args(["-c", "ssl=on", "-c", &format!("ssl_cert_file={}", iam.server_cert.display())])
                .args(["-c", &format!("ssl_key_file={}", iam.server_key.display())])
                .args(["-c", "log_min_messages=warning"])
                // One line per TCP connection, so a test can tell a connection that reached the server.
                .args(["-c", "log_connections=on"])
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
        iam.write_config(port);
        let server = ServerProcess { child, signal: "INT" };
        let pg = IamPostgres { server, iam, port, log, dir };
        assert_eq!(pg.sql("SHOW ssl;").trim(), "on", "postgres started without TLS");
        pg.sql(&format!("CREATE ROLE {IAM_USER} LOGIN;"));
        pg.sql(&format!("CREATE DATABASE {IAM_DATABASE} OWNER {IAM_USER};"));
        pg
    }

    fn admin_cmd(&self) -> Command {
        psql_admin(self.dir.path(), self.port)
    }

    /// Runs SQL as the superuser over the Unix socket (on stdin), returns stdout; panics on an error.
    pub fn sql(&self, sql: &str) -> String {
        run_sql(self.admin_cmd(), sql)
    }

    /// Logins of `user` PAM refused so far, counted in the server's own log.
    pub fn auth_failures(&self, user: &str) -> usize {
        count_lines(&self.log, &format!("PAM authentication failed for user \"{user}\""))
    }
    /// TCP connections the server accepted so far (log_connections), whatever became of them.
    pub fn connections_received(&self) -> usize {
        count_lines(&self.log, &format!("connection received: host={HOST}"))
    }
    /// Connections of `user` refused for lacking TLS, counted in the server's own log.
    pub fn no_tls_refusals(&self, user: &str) -> usize {
        count_lines(&self.log, &format!("pg_hba.conf rejects connection for host \"{HOST}\", user \"{user}\""))
    }
    pub fn log_path(&self) -> &Path {
        &self.log
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn pid(&self) -> u32 {
        self.server.child.id()
    }
}

impl IamServer for IamPostgres {
    fn iam(&self) -> &IamSetup {
        &self.iam
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn reload_tls(&self) {
        // Asynchronous: the postmaster re-reads its files when it handles the signal.
        self.sql("SELECT pg_reload_conf();");
    }
    fn starttls(&self) -> &'static str {
        "postgres"
    }
    fn login_as(&self, user: &str, token: &str, tls: Tls) -> Login {
        let ssl = match tls {
            Tls::VerifyFull => format!("sslmode=verify-full sslrootcert={}", self.iam.ca.display()),
            Tls::Disabled => "sslmode=disable".to_string(),
        };
        let mut c = Command::new(PSQL);
        c.args(["-X", "-q", "-At", "-w", "-F", "\t", "-f", "-"])
            .arg(format!("host={HOST} port={} user={user} dbname={IAM_DATABASE} connect_timeout=10 {ssl}", self.port))
            // Only the password and a clean environment: no PGSSLMODE or service file of the machine's.
            .env_clear()
            .env("PGPASSWORD", token)
            .env("PGSYSCONFDIR", "/nonexistent")
            .env("PGPASSFILE", "/dev/null");
        let out = run_with_stdin(
            c,
            "SELECT current_user, coalesce((SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()), '');",
        );
        login(out)
    }
}

// ---------------------------------------------------------------------------------------------------
// Small helpers (the approach of tests/harness/src/db.rs)

/// A server process, stopped on Drop (`signal`, then SIGKILL after a deadline).
struct ServerProcess {
    child: Child,
    signal: &'static str,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        stop(&mut self.child, self.signal);
    }
}

fn login(out: Output) -> Login {
    Login {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn random_alnum(n: usize) -> String {
    rand::rng().sample_iter(&Alphanumeric).take(n).map(char::from).collect()
}
