//! The command line as an operator meets it: bad configuration exits 2 before any AWS call with a message
//! naming the offending value; `check-config` validates without AWS; `healthcheck` exits 1 cleanly when
//! nothing answers.

use std::process::Output;

async fn sidecar(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = harness::sidecar_command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // An endpoint nobody listens on: were any of these to call AWS, it would fail differently and slowly.
    cmd.env("AWS_ENDPOINT_URL_SECRETS_MANAGER", format!("http://127.0.0.1:{}", harness::CLOSED_PORT));
    cmd.kill_on_drop(true).output().await.unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn invalid_command_lines_exit_2_naming_the_offending_value() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["run"], &[], "no secrets configured"),
        (&["run", "--secret", "db"], &[], "\"db\" is not NAME=SECRET_ID"),
        (&["run", "--secret", "../etc=x"], &[], "\"../etc\""),
        (&["run", "--secret", "db=a b"], &[], "\"a b\""),
        (&["run", "--secret", "db=x?format=yaml"], &[], "\"format=yaml\""),
        (&["run"], &[("SIDECAR_SECRETS", "db=a,db=b")], "\"db\" is given twice"),
        (&["run"], &[("SIDECAR_SECRETS", "db=a,,b=c")], "empty entry"),
        (&["run", "--secret", "db=a", "--listen", "0.0.0.0:2773"], &[], "not a loopback address"),
        (&["run", "--secret", "db=a", "--refresh-interval", "soon"], &[], "soon"),
        (&["run", "--secret", "db=a", "--refresh-interval", "100ms"], &[], "--refresh-interval must be at least 1s"),
        (&["run", "--secret", "db=a", "--file-mode", "999"], &[], "999"),
        (&["run", "--secret", "db=a", "--log-format", "xml"], &[], "xml"),
        (&["run", "--secret", "db=a", "--endpoint-url", "localhost:4566"], &[], "localhost:4566"),
        (&["--bogus-flag"], &[], "--bogus-flag"),
        (
            &["run", "--secret", "db=rds-iam://app@db.internal:3306?failover_region=us-west-2"],
            &[],
            "failover_region does not apply to rds-iam:// entries: a token is signed locally",
        ),
        (
            &["run", "--secret", "db=a"],
            &[("SIDECAR_FAILOVER_REGION", "us_west_2")],
            "\"us_west_2\" is not a Region name",
        ),
        (
            &["run", "--secret", "app=a"],
            &[("SIDECAR_ON_CHANGE", "app=signal HUP pidfile=/p;app+redis=signal USR1 pidfile=/p")],
            "invalid --on-change \"app+redis=signal USR1 pidfile=/p\": watched name \"redis\" is not a configured secret",
        ),
        (
            &["run", "--secret", "app=a", "--on-change", "app=http GET http://169.254.170.2/v2/credentials?leak=me"],
            &[],
            "URL \"http://169.254.170.2/v2/credentials\": the host must be loopback",
        ),
    ];
    for (args, env, needle) in cases {
        let out = sidecar(args, env).await;
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?} {env:?}: expected {needle:?} in {}", stderr(&out));
        assert!(out.stdout.is_empty() || !String::from_utf8_lossy(&out.stdout).contains("started"));
        assert!(!stderr(&out).contains("leak=me"), "a URL's query is never repeated: {}", stderr(&out));
    }
}

#[tokio::test]
async fn check_config_accepts_what_run_accepts_without_calling_aws() {
    let out = sidecar(
        &["check-config"],
        &[
            ("SIDECAR_SECRETS", "db=arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!cluster-1b2c-AbCdEf,tls=prod/tls?format=raw"),
            ("SIDECAR_OUTPUT_DIR", "/nonexistent-is-fine-here"),
            ("SIDECAR_TOKEN", "do-not-print-me"),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout.contains("secret db: arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!cluster-1b2c-AbCdEf (format json) -> /nonexistent-is-fine-here/db.json"), "{stdout}");
    assert!(stdout.contains("secret tls: prod/tls (format raw) -> /nonexistent-is-fine-here/tls"), "{stdout}");
    assert!(!stdout.contains("do-not-print-me"));
    // Negative control: the same check rejects a malformed list.
    let out = sidecar(&["check-config"], &[("SIDECAR_SECRETS", "db")]).await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn help_shows_every_default_and_env_var_but_never_a_token_value() {
    let out = sidecar(&["--help"], &[("SIDECAR_TOKEN", "secret-token-in-env")]).await;
    let help = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    for needle in [
        "[default: /secrets]",
        "[default: 60s]",
        "[default: 2s]",
        "[default: 5s]",
        "[default: 127.0.0.1:2773]",
        "[default: 0440]",
        "[default: json]",
        "[env: SIDECAR_SECRETS=]",
        "[env: SIDECAR_REFRESH_INTERVAL=]",
        "[env: SIDECAR_TOKEN]",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    assert!(!help.contains("secret-token-in-env"));
}

#[tokio::test]
async fn version_prints_the_crate_version() {
    let out = sidecar(&["--version"], &[]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("secrets-sidecar {}", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn healthcheck_exits_1_when_nothing_listens_and_0_when_healthy() {
    let listen = format!("127.0.0.1:{}", harness::CLOSED_PORT);
    let out = sidecar(&["healthcheck"], &[("SIDECAR_LISTEN", &listen)]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("healthcheck"), "{}", stderr(&out));

    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev.json");
    std::fs::write(&dev, r#"{"db": {"password": "x"}}"#).unwrap();
    let sidecar_proc =
        harness::Sidecar::builder_without_aws().arg("--dev-secrets").arg(dev.to_str().unwrap()).spawn().await;
    sidecar_proc.wait_ready().await;
    let out = sidecar(&["healthcheck"], &[("SIDECAR_LISTEN", &sidecar_proc.listen.to_string())]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// The SDK's Region is known only at run: a failover Region equal to it is bad configuration found then,
/// and exits 2 like the rest, before any call.
#[tokio::test]
async fn a_failover_region_that_is_the_sidecars_own_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["run", "--secret", "db=x", "--output-dir", dir.path().to_str().unwrap(), "--listen", "127.0.0.1:0"];
    let out = sidecar(&args, &[("SIDECAR_FAILOVER_REGION", harness::REGION)]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(r#"secret "db": the failover Region us-east-1 is the Region the sidecar runs in"#),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn a_missing_output_directory_fails_at_start_with_exit_1() {
    let out = sidecar(
        &[
            "run",
            "--secret",
            "db=x",
            "--output-dir",
            "/nonexistent/secrets",
            "--listen",
            // The port is never bound: it fails before it listens.
            "127.0.0.1:0",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("output directory /nonexistent/secrets"), "{}", stderr(&out));
}

/// Issue 8: with `--token` nothing was written at start, so an unwritable directory left a sidecar up,
/// unhealthy, logging "keeping the last good value" about a value it never had. Now it exits 1 at start,
/// whatever the token setting.
#[tokio::test]
async fn an_unwritable_output_directory_exits_1_at_start_whatever_the_token_setting() {
    // Root ignores mode bits, but cannot create files in sysfs.
    let tmp = tempfile::tempdir().unwrap();
    let dir = if std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap() {
        std::path::PathBuf::from("/sys")
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        tmp.path().to_path_buf()
    };
    let dir = dir.to_str().unwrap();
    for token in [&["--token", "t0ken-of-16-chars"][..], &["--no-token"][..], &[][..]] {
        let mut args = vec!["run", "--secret", "db=x", "--output-dir", dir, "--listen", "127.0.0.1:0"];
        args.extend_from_slice(token);
        let out = tokio::time::timeout(std::time::Duration::from_secs(10), sidecar(&args, &[]))
            .await
            .unwrap_or_else(|_| panic!("still running after 10 s with {token:?}"));
        assert_eq!(out.status.code(), Some(1), "{token:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(&format!("output directory {dir} is not writable")), "{token:?}: {err}");
    }
}
