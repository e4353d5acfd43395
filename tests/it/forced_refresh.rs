//! `POST /v1/secrets/NAME/refresh` when the client stops waiting: the Ruby client's read timeout is 3 s,
//! and a check is up to three Secrets Manager calls.

use std::time::Duration;

use crate::common::{Moto, Sidecar, SlowProxy, create_secret, rotate};

/// Issue 8: the check ran inside the request's future, so a client hanging up cancelled it — at best the
/// rotation waited for the next interval, at worst the file was renamed and the store never updated.
/// Now the client only stops waiting; the check finishes and file and HTTP agree.
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
        .header(crate::common::TOKEN_HEADER, sidecar.token())
        .send()
        .await;
    assert!(hung_up.is_err_and(|e| e.is_timeout()), "the client gave up before the answer");

    sidecar
        .wait_for("the forced check to publish", Duration::from_secs(20), async || {
            sidecar.read_file("db.json").as_deref() == Some(r#"{"password":"new"}"#)
        })
        .await;
    let r = sidecar.get("/v1/secrets/db").await;
    assert_eq!(r.headers()["etag"], format!("\"{new_version}\"").as_str());
    assert_eq!(r.text().await.unwrap(), sidecar.read_file("db.json").unwrap(), "file and HTTP agree");
}
