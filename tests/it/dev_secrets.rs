//! `--dev-secrets FILE`: local development without AWS. An edit is published like a rotation, within a
//! fraction of a second; a broken edit loses nothing.

use std::time::Duration;

use harness::Sidecar;

/// Replaces the file by rename, as editors and `mv` do.
fn edit(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn edits_are_published_quickly_and_broken_edits_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev-secrets.json");
    std::fs::write(&dev, r#"{"db": {"username": "app", "password": "one"}}"#).unwrap();
    let sidecar = Sidecar::builder_without_aws()
        .arg("--dev-secrets")
        .arg(dev.to_str().unwrap())
        // A long interval: only the file watcher can explain a quick publish.
        .arg("--refresh-interval")
        .arg("1h")
        .spawn()
        .await;
    sidecar.wait_ready().await;
    assert_eq!(sidecar.read_file("db.json").unwrap(), r#"{"username":"app","password":"one"}"#);

    edit(&dev, r#"{"db": {"username": "app", "password": "two"}}"#);
    sidecar
        .wait_for("the edit to be published to the file and HTTP", Duration::from_millis(1500), async || {
            sidecar.read_file("db.json").is_some_and(|f| f.contains("two"))
                && sidecar.get("/v1/secrets/db").await.text().await.unwrap().contains("two")
        })
        .await;

    // In-place writes (no rename) are seen too.
    std::fs::write(&dev, r#"{"db": {"username": "app", "password": "three"}}"#).unwrap();
    sidecar
        .wait_for("the in-place edit", Duration::from_millis(1500), async || {
            sidecar.read_file("db.json").is_some_and(|f| f.contains("three"))
        })
        .await;

    edit(&dev, r#"{"db": {"username": "app", "password": "fou"#);
    sidecar
        .wait_for("the broken edit to be reported", Duration::from_secs(2), async || {
            matches!(sidecar.healthz().await, Some((200, h)) if h["secrets"]["db"]["last_error"].as_str().is_some_and(|e| e.contains("not valid JSON")))
        })
        .await;
    assert!(sidecar.read_file("db.json").unwrap().contains("three"), "the last good value stays");
    assert!(sidecar.get("/v1/secrets/db").await.text().await.unwrap().contains("three"));
    assert!(!sidecar.log_text().contains("\"fou"), "the broken content is not logged");

    edit(&dev, r#"{"db": {"username": "app", "password": "five"}}"#);
    sidecar
        .wait_for("recovery after the broken edit", Duration::from_millis(1500), async || {
            sidecar.read_file("db.json").is_some_and(|f| f.contains("five"))
        })
        .await;
}

#[tokio::test]
async fn named_secrets_are_looked_up_by_name_in_the_dev_file() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev.json");
    std::fs::write(&dev, r#"{"db": {"password": "p"}, "unused": {"x": 1}}"#).unwrap();
    let sidecar = Sidecar::builder_without_aws()
        .arg("--dev-secrets")
        .arg(dev.to_str().unwrap())
        .secret("db", "rds!cluster-prod")
        .spawn()
        .await;
    sidecar.wait_ready().await;
    assert_eq!(sidecar.read_file("db.json").unwrap(), r#"{"password":"p"}"#);
    assert!(sidecar.read_file("unused.json").is_none(), "only the configured secrets are published");
}
