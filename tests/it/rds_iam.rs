//! `rds-iam://` entries through the real binary, without a database (`tests/db/iam_rails.rs` logs in with
//! them): the file's exact shape, the token it carries, forced refreshes, health and what happens
//! without credentials.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use harness::Sidecar;

const ENTRY: &str =
    "rds-iam://app_user@db.cluster-c9akciq32.eu-west-1.rds.amazonaws.com:5432?region=eu-west-1&dbname=app";

fn with_credentials(b: harness::SidecarBuilder) -> harness::SidecarBuilder {
    b.env("AWS_ACCESS_KEY_ID", "ASIAEXAMPLEEXAMPLE01")
        .env("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
        .env("AWS_SESSION_TOKEN", "IQoJb3JpZ2luX2VjEXAMPLE")
}

#[tokio::test]
async fn an_rds_iam_entry_publishes_a_token_in_the_shape_of_an_rds_secret() {
    let sidecar = with_credentials(Sidecar::builder_without_aws().secret("db", ENTRY)).spawn().await;
    sidecar.wait_ready().await;
    let file: Value = serde_json::from_str(&sidecar.read_file("db.json").unwrap()).unwrap();
    let keys: Vec<&str> = file.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["username", "password", "host", "port", "dbname", "expires_at"]);
    assert_eq!(file["username"], "app_user");
    assert_eq!(file["host"], "db.cluster-c9akciq32.eu-west-1.rds.amazonaws.com");
    assert_eq!(file["port"], 5432);
    assert_eq!(file["dbname"], "app");
    let token = file["password"].as_str().unwrap();
    assert!(
        token.starts_with("db.cluster-c9akciq32.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app_user&"),
        "not a token for the entry's host, port and user"
    );
    for part in
        ["X-Amz-Credential=ASIAEXAMPLEEXAMPLE01%2F", "%2Feu-west-1%2Frds-db%2Faws4_request", "X-Amz-Expires=900"]
    {
        assert!(token.contains(part), "the token lacks {part}");
    }
    let expires = humantime::parse_rfc3339(file["expires_at"].as_str().unwrap()).unwrap();
    let left = expires.duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(880) && left <= Duration::from_secs(900), "{left:?}");

    // Served like any secret, with the same bytes.
    let res = sidecar.get("/v1/secrets/db").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), file);
    let (status, health) = sidecar.healthz().await.unwrap();
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    assert!(health["secrets"]["db"]["expires_in_seconds"].as_i64().unwrap() > 880);

    // Nothing secret in the log, at debug level.
    let log = sidecar.log_text();
    assert!(!log.contains("X-Amz-Signature"), "the token is in the log");
    assert!(!log.contains("wJalrXUtnFEMI"), "the secret key is in the log");
}

#[tokio::test]
async fn a_forced_refresh_signs_a_new_token_at_once_and_a_burst_shares_it() {
    let sidecar = with_credentials(Sidecar::builder_without_aws().secret("db", ENTRY)).spawn().await;
    sidecar.wait_ready().await;
    let first = sidecar.read_file("db.json").unwrap();
    // One second later the signing instant differs, and so does the token.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a: Value = sidecar.post("/v1/secrets/db/refresh").await.json().await.unwrap();
    let b: Value = sidecar.post("/v1/secrets/db/refresh").await.json().await.unwrap();
    assert_eq!((a["changed"].as_bool(), a["fetched"].as_bool()), (Some(true), Some(true)), "{a}");
    assert_eq!((b["changed"].as_bool(), b["fetched"].as_bool()), (Some(false), Some(false)), "{b}");
    assert_eq!(a["version_id"], b["version_id"]);
    assert_ne!(sidecar.read_file("db.json").unwrap(), first, "the file still holds the first token");
}

#[tokio::test]
async fn without_credentials_the_entry_never_becomes_ready_and_says_why() {
    // The harness's dummy keys removed: the SDK's chain finds nothing (IMDS is disabled in tests).
    let sidecar = Sidecar::builder_without_aws()
        .secret("db", ENTRY)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .spawn()
        .await;
    sidecar
        .wait_for(
            "the failure to be reported",
            Duration::from_secs(20),
            async || matches!(sidecar.healthz().await, Some((503, h)) if h["secrets"]["db"]["last_error"].is_string()),
        )
        .await;
    let (_, h) = sidecar.healthz().await.unwrap();
    let error = h["secrets"]["db"]["last_error"].as_str().unwrap();
    assert!(error.contains("no AWS credentials"), "{error}");
    assert!(sidecar.read_file("db.json").is_none());
}
