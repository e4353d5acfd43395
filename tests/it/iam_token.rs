//! RDS IAM auth tokens from `secrets_sidecar::source::rds_iam` are the ones botocore's
//! `generate_db_auth_token` — the reference implementation — signs for the same credentials and instant:
//! the same host, port, query parameters and signature, for several hosts (instance, cluster, custom and
//! RDS Proxy endpoints), ports, users (including ones that need percent-encoding), regions, with and
//! without a session token. botocore runs from the pinned test venv (`tests/iam/botocore_token.py`), its
//! clock frozen per case; nothing is sent anywhere.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use aws_credential_types::Credentials;
use secrets_sidecar::source::rds_iam::{Target, presign};
use serde_json::{Value, json};

/// (host, port, user, region, session token, epoch seconds)
type Case = (&'static str, u16, &'static str, &'static str, Option<&'static str>, u64);
const CASES: &[Case] = &[
    ("prod-instance.us-east-1.rds.amazonaws.com", 3306, "peccy", "us-east-1", None, 1_724_709_600),
    (
        "app.cluster-c9akciq32.eu-west-1.rds.amazonaws.com",
        5432,
        "app_user",
        "eu-west-1",
        Some("IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ=="),
        1_800_000_000,
    ),
    (
        "reports.cluster-custom-c9akciq32.ap-southeast-2.rds.amazonaws.com",
        3307,
        "report.reader",
        "ap-southeast-2",
        Some("FwoGZXIvYXdzEBYaD+/token=="),
        1_800_000_123,
    ),
    ("app-proxy.proxy-c9akciq32.us-west-2.rds.amazonaws.com", 3306, "svc-app", "us-west-2", None, 1_700_000_001),
    ("db.internal.example", 15432, "a b+c/d@e~", "us-gov-west-1", Some("tok"), 1_799_999_999),
];

fn python() -> std::path::PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(venv.exists(), "the test venv is missing at {}: run `make test` (it installs botocore)", venv.display());
    venv
}

fn botocore_tokens(cases: &Value) -> Vec<String> {
    let mut child = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/iam/botocore_token.py"))
        // Only what the script needs: no AWS profile or variable of the machine's may leak in.
        .env_clear()
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tests/iam/botocore_token.py");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), cases.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "botocore_token.py failed");
    serde_json::from_slice(&out.stdout).expect("a JSON list of tokens")
}

/// `HOST:PORT/` and the query parameters, still percent-encoded (the encoding is part of the contract).
fn parts(token: &str) -> (&str, BTreeMap<&str, &str>) {
    let (authority, query) = token.split_once("/?").expect("HOST:PORT/?QUERY");
    (authority, query.split('&').map(|kv| kv.split_once('=').expect("k=v")).collect())
}

#[test]
fn tokens_carry_exactly_the_parameters_and_signature_botocore_signs() {
    let cases: Vec<Value> = CASES
        .iter()
        .map(|(host, port, user, region, token, epoch)| {
            json!({"host": host, "port": port, "user": user, "region": region, "akid": "AKIAEXAMPLE",
                   "secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "token": token, "epoch": epoch})
        })
        .collect();
    let expected = botocore_tokens(&Value::Array(cases));
    assert_eq!(expected.len(), CASES.len());
    for ((host, port, user, region, session, epoch), reference) in CASES.iter().zip(&expected) {
        let creds = Credentials::new(
            "AKIAEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            session.map(str::to_string),
            None,
            "test",
        );
        let target = Target { host: host.to_string(), port: *port, user: user.to_string(), region: region.to_string() };
        let ours = presign(&target, &creds, UNIX_EPOCH + Duration::from_secs(*epoch)).unwrap();
        let (ours_authority, ours_params) = parts(ours.value().expose());
        let (ref_authority, ref_params) = parts(reference);
        assert_eq!(ours_authority, ref_authority, "{host}:{port}");
        assert_eq!(ours_params, ref_params, "{host}:{port} user {user:?}");
        assert_eq!(ours_params["X-Amz-Expires"], "900");
        assert_eq!(ours_params.contains_key("X-Amz-Security-Token"), session.is_some());
    }
    // The comparison can fail: another instant signs differently.
    let creds = Credentials::new("AKIAEXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None, None, "t");
    let (host, port, user, region, _, epoch) = CASES[0];
    let target = Target { host: host.into(), port, user: user.into(), region: region.into() };
    let later = presign(&target, &creds, UNIX_EPOCH + Duration::from_secs(epoch + 1)).unwrap();
    assert_ne!(parts(later.value().expose()).1["X-Amz-Signature"], parts(&expected[0]).1["X-Amz-Signature"]);
}
