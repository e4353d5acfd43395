//! Task-role credentials as ECS and EKS hand them out: fetched from the container credentials endpoint,
//! valid for a short while, replaced while the sidecar runs. Between the sidecar and the emulator a proxy
//! refuses what AWS refuses — a key past its expiry (`ExpiredTokenException`), a key or session token
//! nobody issued — so using stale credentials is a counted failure, not a silent success against moto.
//!
//! The endpoint is served in the `FULL_URI` form (EKS Pod Identity's, with the `Authorization` header
//! from the token file): the SDK sends the `RELATIVE_URI` form to `169.254.170.2`, which cannot be served
//! on loopback (tests/harness/src/credentials.rs).

use std::time::{Duration, SystemTime};

use harness::aws_proxy::{AwsProxy, CredentialScope, Outcome};
use harness::credentials::{CredentialsEndpoint, Lifetime, refuse_expired_keys};
use harness::{Moto, Sidecar, SidecarBuilder, create_secret, rotate};

/// How long issued credentials live. The SDK's identity cache refreshes credentials 5–10 s before their
/// `Expiration` (aws-smithy-runtime, `LazyCache`: a 10 s buffer less up to half of it as jitter), so a
/// lifetime above 10 s is the shortest in which a set is cached and used for several calls before it is
/// replaced, as real task-role credentials are.
const LIFETIME: Duration = Duration::from_secs(12);

fn creds(password: &str) -> String {
    format!(r#"{{"username":"app","password":"{password}"}}"#)
}

/// A sidecar that gets its credentials from `endpoint` only: the harness's static keys are removed.
fn sidecar(proxy: &AwsProxy, endpoint: &CredentialsEndpoint) -> SidecarBuilder {
    let mut b = Sidecar::builder_for(proxy.endpoint())
        .secret("db", "db")
        .arg("--refresh-interval")
        .arg("1s")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    for (k, v) in endpoint.sdk_env() {
        b = b.env(k, &v);
    }
    b
}

fn secs(t: SystemTime, since: SystemTime) -> f64 {
    t.duration_since(since).unwrap_or_default().as_secs_f64()
}

#[tokio::test]
async fn credentials_that_expire_every_few_seconds_cause_no_failed_call_over_several_lifetimes() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "db", &creds("first")).await;
    let endpoint = CredentialsEndpoint::start(Lifetime::honest(LIFETIME)).await;
    let proxy = AwsProxy::start(moto.endpoint(), refuse_expired_keys(endpoint.keys())).await;
    let sidecar = sidecar(&proxy, &endpoint).spawn().await;
    sidecar.wait_ready().await;
    let start = endpoint.issued().first().expect("the sidecar fetched credentials").issued_at;

    // A rotation after the first set of credentials has been replaced still reaches the file.
    sidecar.wait_for("the second set of credentials", LIFETIME, async || endpoint.issued().len() >= 2).await;
    rotate(&sm, "db", &creds("second")).await;
    sidecar
        .wait_for("the rotation to reach the file", Duration::from_secs(10), async || {
            sidecar.read_file("db.json").as_deref() == Some(creds("second").as_str())
        })
        .await;
    let until = start + 3 * LIFETIME;
    tokio::time::sleep(until.duration_since(SystemTime::now()).unwrap_or_default()).await;

    let issued = endpoint.issued();
    let exchanges = proxy.exchanges();
    let counts = proxy.counts();
    println!("credentials lifetime {LIFETIME:?}, observed {:.1} s:", secs(SystemTime::now(), start));
    for i in &issued {
        let used =
            exchanges.iter().filter(|e| e.request.scope.as_ref().is_some_and(|s| s.access_key_id == i.access_key_id));
        println!(
            "  key issued at +{:5.1} s, expires +{:5.1} s: {} calls",
            secs(i.issued_at, start),
            secs(i.expires_at, start),
            used.count()
        );
    }
    println!(
        "  Secrets Manager calls: {} succeeded, {} failed, {} refused",
        counts.succeeded, counts.failed, counts.refused
    );

    assert_eq!(
        (counts.failed, counts.refused),
        (0, 0),
        "{:#?}",
        exchanges.iter().filter(|e| !e.outcome.is_success()).collect::<Vec<_>>()
    );
    // One DescribeSecret a second at least, over three lifetimes.
    assert!(counts.succeeded as u64 >= 3 * LIFETIME.as_secs() / 2, "{counts:?}");
    assert!(
        endpoint.fetches().iter().all(|f| f.issued.is_some()),
        "a fetch without the token file's Authorization: {:?}",
        endpoint.fetches()
    );
    assert!(issued.len() >= 3, "three lifetimes need at least three sets of credentials: {}", issued.len());
    for pair in issued.windows(2) {
        assert!(
            pair[1].issued_at < pair[0].expires_at,
            "credentials were fetched again only at +{:.1} s, after the previous set expired at +{:.1} s",
            secs(pair[1].issued_at, start),
            secs(pair[0].expires_at, start)
        );
    }
    // The cache is used: every set but the last served calls of its own.
    for i in &issued[..issued.len() - 1] {
        let scope = |s: &Option<CredentialScope>| s.as_ref().is_some_and(|s| s.access_key_id == i.access_key_id);
        assert!(
            exchanges.iter().any(|e| scope(&e.request.scope)),
            "key issued at +{:.1} s never used",
            secs(i.issued_at, start)
        );
    }
    let (status, h) = sidecar.healthz().await.unwrap();
    assert_eq!((status, &h["secrets"]["db"]["last_error"]), (200, &serde_json::Value::Null), "{h}");
}

/// The negative control of the test above: an endpoint whose `Expiration` promises an hour for keys the
/// proxy refuses after 2 s. The SDK keeps using the cached key, every call after those 2 s is refused the
/// way AWS refuses it, and the sidecar reports AWS's error code — which the zero-failure count above would
/// have caught.
#[tokio::test]
async fn a_key_used_past_its_expiry_is_refused_with_aws_expired_token_error() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "db", &creds("first")).await;
    let lifetime = Lifetime { valid: Duration::from_secs(2), announced: Duration::from_secs(3600) };
    let endpoint = CredentialsEndpoint::start(lifetime).await;
    let proxy = AwsProxy::start(moto.endpoint(), refuse_expired_keys(endpoint.keys())).await;
    let sidecar = sidecar(&proxy, &endpoint).spawn().await;
    sidecar.wait_ready().await;
    sidecar
        .wait_for("the expired key to be reported", Duration::from_secs(15), async || {
            matches!(sidecar.healthz().await, Some((_, h)) if h["secrets"]["db"]["last_error"].as_str().is_some_and(|e| e.contains("ExpiredTokenException")))
        })
        .await;
    let refused: Vec<_> = proxy
        .exchanges()
        .into_iter()
        .filter(|e| e.outcome == Outcome::Refused("ExpiredTokenException".into()))
        .collect();
    assert!(!refused.is_empty());
    assert_eq!(endpoint.issued().len(), 1, "the SDK trusted the announced hour and fetched nothing new");
    // Health stays 200, as for any AWS failure after the first write (README, "Health and outages").
    let (status, h) = sidecar.healthz().await.unwrap();
    assert_eq!(status, 200, "{h}");
    assert_eq!(sidecar.read_file("db.json").unwrap(), creds("first"));
}

#[tokio::test]
async fn the_credentials_endpoint_down_for_a_while_serves_the_last_value_and_recovers_on_its_own() {
    let moto = Moto::start().await;
    let sm = moto.client().await;
    create_secret(&sm, "db", &creds("before")).await;
    let endpoint = CredentialsEndpoint::start(Lifetime::honest(LIFETIME)).await;
    let proxy = AwsProxy::start(moto.endpoint(), refuse_expired_keys(endpoint.keys())).await;
    let sidecar = sidecar(&proxy, &endpoint).spawn().await;
    sidecar.wait_ready().await;

    endpoint.set_up(false);
    // The SDK drops the cached set 5–10 s before it expires and cannot get another.
    let mut error = String::new();
    sidecar
        .wait_for("the credentials failure in health", LIFETIME, async || match sidecar.healthz().await {
            Some((_, h)) => {
                error = h["secrets"]["db"]["last_error"].as_str().unwrap_or_default().to_owned();
                !error.is_empty()
            }
            None => false,
        })
        .await;
    println!("last_error while the credentials endpoint is down: {error}");
    assert!(error.starts_with("could not load AWS credentials, no request sent: "), "{error}");
    // Some more failed checks, then the value and health as the README says.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, h) = sidecar.healthz().await.unwrap();
    assert_eq!(status, 200, "the last good value is served and health stays green: {h}");
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(sidecar.get("/v1/secrets/db").await.text().await.unwrap(), creds("before"));
    assert_eq!(sidecar.read_file("db.json").unwrap(), creds("before"));
    let down_fetches = endpoint.fetches().iter().filter(|f| f.issued.is_none()).count();
    assert!(down_fetches >= 2, "the sidecar kept trying the endpoint: {down_fetches} attempts");

    endpoint.set_up(true);
    rotate(&sm, "db", &creds("after")).await;
    sidecar
        .wait_for("the rotation after the endpoint returned", Duration::from_secs(15), async || {
            sidecar.read_file("db.json").as_deref() == Some(creds("after").as_str())
        })
        .await;
    sidecar
        .wait_for(
            "the error to clear",
            Duration::from_secs(5),
            async || matches!(sidecar.healthz().await, Some((200, h)) if h["secrets"]["db"]["last_error"].is_null()),
        )
        .await;
    // No request ever went out with a key past its expiry: while it had no credentials the sidecar sent nothing.
    let counts = proxy.counts();
    println!("credentials endpoint outage: {down_fetches} refused fetches; Secrets Manager calls {counts:?}");
    assert_eq!((counts.failed, counts.refused), (0, 0), "{counts:?}");
}

#[test]
fn a_sigv4_authorization_header_yields_its_credential_scope() {
    let value = "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/20261206/eu-west-1/secretsmanager/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, Signature=abc123";
    assert_eq!(
        CredentialScope::from_authorization(value),
        Some(CredentialScope {
            access_key_id: "ASIAEXAMPLE".into(),
            date: "20261206".into(),
            region: "eu-west-1".into(),
            service: "secretsmanager".into(),
        })
    );
    for not_sigv4 in [
        "",
        "Bearer abc",
        "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=abc",
        "AWS4-HMAC-SHA256 Credential=/20261206/eu-west-1/secretsmanager/aws4_request, Signature=abc",
        "AWS4-HMAC-SHA256 Credential=AKID/20261206/eu-west-1/secretsmanager, Signature=abc",
    ] {
        assert_eq!(CredentialScope::from_authorization(not_sigv4), None, "{not_sigv4:?}");
    }
}

/// The harness's own guards: the endpoint answers only with the token file's `Authorization`, and the
/// proxy refuses keys the endpoint never issued (the static keys every other test uses), in AWS's words.
#[tokio::test]
async fn the_endpoint_wants_the_token_and_the_proxy_refuses_keys_nobody_issued() {
    let moto = Moto::start().await;
    let endpoint = CredentialsEndpoint::start(Lifetime::honest(LIFETIME)).await;
    let http = reqwest::Client::new();
    let token = std::fs::read_to_string(endpoint.token_file()).unwrap();
    let without = http.get(endpoint.full_uri()).send().await.unwrap();
    let wrong = http.get(endpoint.full_uri()).header("Authorization", "not-the-token").send().await.unwrap();
    assert_eq!((without.status().as_u16(), wrong.status().as_u16()), (401, 401));
    let with: serde_json::Value =
        http.get(endpoint.full_uri()).header("Authorization", &token).send().await.unwrap().json().await.unwrap();
    let mut keys: Vec<&str> = with.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["AccessKeyId", "Expiration", "SecretAccessKey", "Token"]);
    assert!(with["AccessKeyId"].as_str().unwrap().starts_with("ASIA"), "{with}");

    let proxy = AwsProxy::start(moto.endpoint(), refuse_expired_keys(endpoint.keys())).await;
    let conf = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
        .region(aws_sdk_secretsmanager::config::Region::new(harness::REGION))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new("test", "test", None, None, "tests"))
        .endpoint_url(proxy.endpoint())
        .build();
    let err = aws_sdk_secretsmanager::Client::from_conf(conf).list_secrets().send().await.unwrap_err();
    use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
    assert_eq!(err.code(), Some("UnrecognizedClientException"), "{err:?}");
    assert_eq!(err.message(), Some("The security token included in the request is invalid."));
    assert_eq!(proxy.counts_by_key()["test"].refused, 1);
    assert_eq!(proxy.counts_by_region()[harness::REGION].refused, 1);
    // An unsigned request has no key at all: refused too, and counted apart.
    let unsigned = http.post(proxy.endpoint()).send().await.unwrap();
    assert_eq!(unsigned.status(), 400);
    assert_eq!(unsigned.headers()["x-amzn-ErrorType"], "UnrecognizedClientException");
    let body: serde_json::Value = unsigned.json().await.unwrap();
    assert_eq!(body["__type"], "com.amazon.coral.service#UnrecognizedClientException");
    assert_eq!(proxy.counts_by_key()["-"].refused, 1);
    assert_eq!(proxy.counts().refused, 2);
}
