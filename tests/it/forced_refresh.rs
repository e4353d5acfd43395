//! `POST /v1/secrets/NAME/refresh` when the client stops waiting: the Ruby client's read timeout is 3 s,
//! and a check is up to three Secrets Manager calls.

use std::time::Duration;

use harness::{Moto, Sidecar, SlowProxy, create_secret, rotate};

/// The check runs in the secret's task, not in the request's future: a client hanging up must not cancel
/// it (the rotation would wait for the next interval, or the file be renamed and the store never updated).
/// The client only stops waiting; the check finishes and file and HTTP agree.
#[tokio::test]
async fn a_forced_refresh_whose_client_hangs_up_mid_check_still_publishes_file_and_http_together() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "prod/db", r#"{"password":"old"}"#).await;
    let proxy = SlowProxy::start(&moto).await;
    // A long interval: only the forced check can bring the new version within the test's time.
    let sidecar = Sidecar::builder_for(proxy.endpoint())
        .secret("db", "prod/db")
        .arg("--refresh-interval")
        .arg("10m")
        .spawn()
        .await;
    sidecar.wait_ready().await;

    let new_version = rotate(&sm, "prod/db", r#"{"password":"new"}"#).await;
    // Each answer chunk of Secrets Manager now takes a second: the check takes several.
    proxy.set_delay(Duration::from_millis(1000));
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let hung_up = impatient
        .post(sidecar.url("/v1/secrets/db/refresh"))
        .header(harness::TOKEN_HEADER, sidecar.token())
        .send()
        .await;
    assert!(hung_up.is_err_and(|e| e.is_timeout()), "the client gave up before the answer");

    // The file first, then the store, in one step: HTTP may trail the file by a moment, never lead it.
    sidecar
        .wait_for("the forced check to publish", Duration::from_secs(20), async || {
            sidecar.read_file("db.json").as_deref() == Some(r#"{"password":"new"}"#)
                && sidecar.get("/v1/secrets/db").await.headers()["etag"] == format!("\"{new_version}\"").as_str()
        })
        .await;
    let r = sidecar.get("/v1/secrets/db").await;
    assert_eq!(r.headers()["etag"], format!("\"{new_version}\"").as_str());
    assert_eq!(r.text().await.unwrap(), sidecar.read_file("db.json").unwrap(), "file and HTTP agree");
}

/// Callers that arrive while a forced check is running join it: one Secrets Manager check, one answer for
/// all of them. (Queued on a lock instead, they would then be refused inside the gap.)
#[tokio::test]
async fn concurrent_forced_refreshes_share_one_check_and_its_answer() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "prod/db", r#"{"password":"old"}"#).await;
    let proxy = SlowProxy::start(&moto).await;
    let sidecar = Sidecar::builder_for(proxy.endpoint())
        .secret("db", "prod/db")
        .arg("--refresh-interval")
        .arg("10m")
        .spawn()
        .await;
    sidecar.wait_ready().await;
    let new_version = rotate(&sm, "prod/db", r#"{"password":"new"}"#).await;
    proxy.set_delay(Duration::from_millis(300));

    let calls: Vec<_> = (0..10)
        .map(|i| {
            let (url, token) = (sidecar.url("/v1/secrets/db/refresh"), sidecar.token());
            tokio::spawn(async move {
                // Staggered, so most arrive while the first one's check is waiting on the emulator.
                tokio::time::sleep(Duration::from_millis(50 * i)).await;
                let r = reqwest::Client::new().post(url).header(harness::TOKEN_HEADER, token).send().await;
                r.unwrap().json::<serde_json::Value>().await.unwrap()
            })
        })
        .collect();
    for call in calls {
        let answer = call.await.unwrap();
        assert_eq!(answer["fetched"], true, "{answer}");
        assert_eq!(answer["changed"], true, "every caller gets the check's own answer: {answer}");
        assert_eq!(answer["version_id"], new_version.as_str());
    }
    let metrics = reqwest::get(sidecar.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"secrets_sidecar_checks_total{secret="db",result="changed"} 2"#),
        "the first publish and one forced check:\n{metrics}"
    );
}
