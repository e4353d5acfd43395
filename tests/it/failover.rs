//! `--failover-region`: a secret read from its replica while its own Region fails. One moto serves both
//! Regions (a replica made with `AddReplicaRegions` follows its primary there, rotations included); between
//! the sidecars and moto an [`AwsProxy`] fails what is signed for the primary's Region, the way a Region
//! in trouble answers, and counts what reached each Region. Each sidecar signs with an access key of its
//! own, so one proxy tells several apart.

use std::time::{Duration, Instant};

use harness::aws_proxy::{AwsError, AwsProxy, Counts, Rule, SignedRequest, Verdict, forward_all};
use harness::{Moto, Sidecar, SidecarBuilder, create_replicated_secret, rotate};

const PRIMARY: &str = harness::REGION;
const REPLICA: &str = "us-west-2";
/// `--failover-retry-interval` here: the sidecar asks the primary again at the first check at least this
/// long (+ up to 20%) after it last did, so with 1 s checks it returns within 2.4 s + 1.1 s of the
/// primary's recovery, plus the check itself.
const RETRY: Duration = Duration::from_secs(2);
const RETURN_BOUND: Duration = Duration::from_millis(2400 + 1100);

fn creds(password: &str) -> String {
    format!(r#"{{"username":"app","password":"{password}"}}"#)
}

/// A sidecar that signs with the access key `key`, checking every second.
fn sidecar(proxy: &AwsProxy, key: &str) -> SidecarBuilder {
    Sidecar::builder_for(proxy.endpoint()).env("AWS_ACCESS_KEY_ID", key).arg("--refresh-interval").arg("1s")
}

fn with_failover(b: SidecarBuilder) -> SidecarBuilder {
    b.arg("--failover-region").arg(REPLICA).arg("--failover-retry-interval").arg(format!("{}s", RETRY.as_secs()))
}

/// Refuses with `error` what `keys` sign for the primary's Region; forwards everything else.
fn fail_primary(keys: &'static [&'static str], error: AwsError) -> impl Rule {
    fail_region(PRIMARY, keys, error)
}

fn fail_region(region: &'static str, keys: &'static [&'static str], error: AwsError) -> impl Rule {
    move |r: &SignedRequest| match &r.scope {
        Some(s) if s.region == region && keys.contains(&s.access_key_id.as_str()) => Verdict::Refuse(error.clone()),
        _ => Verdict::Forward,
    }
}

fn calls(proxy: &AwsProxy, key: &str, region: &str) -> Counts {
    proxy.counts_where(|s| s.access_key_id == key && s.region == region)
}

async fn health_of(sidecar: &Sidecar, name: &str) -> (u16, serde_json::Value) {
    let (status, h) = sidecar.healthz().await.expect("/healthz answers");
    (status, h["secrets"][name].clone())
}

async fn metrics(sidecar: &Sidecar) -> String {
    reqwest::get(sidecar.url("/metrics")).await.unwrap().text().await.unwrap()
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[tokio::test]
async fn a_task_started_while_its_region_fails_is_ready_from_the_replica_follows_a_rotation_and_returns() {
    let moto = Moto::start().await;
    let (sm, sm_replica) = (moto.client().await, moto.client_in(REPLICA).await);
    create_replicated_secret(&sm, "db", &creds("Zq8-first"), REPLICA).await;
    let app_arn = create_replicated_secret(&sm, "app", &creds("Zq8-app"), REPLICA).await;
    let proxy =
        AwsProxy::start(moto.endpoint(), fail_primary(&["failover", "control"], AwsError::internal_service_error()))
            .await;

    let started = Instant::now();
    let (failover, control) = tokio::join!(
        with_failover(sidecar(&proxy, "failover").secret("db", "db").secret("app", &app_arn))
            .env("SIDECAR_LOG", "trace")
            .spawn(),
        sidecar(&proxy, "control").secret("db", "db").spawn(),
    );
    failover.wait_ready().await;
    let ready_after = started.elapsed();

    // Ready from the replica, by name and by the ARN with its Region replaced: file, HTTP, health, listing.
    assert_eq!(failover.read_file("db.json").unwrap(), creds("Zq8-first"));
    assert_eq!(failover.get("/v1/secrets/db").await.text().await.unwrap(), creds("Zq8-first"));
    assert_eq!(failover.read_file("app.json").unwrap(), creds("Zq8-app"));
    let (status, db) = health_of(&failover, "db").await;
    assert_eq!((status, &db["region"], &db["last_error"]), (200, &REPLICA.into(), &serde_json::Value::Null), "{db}");
    assert_eq!(db["primary_error"], "Secrets Manager failed with HTTP 500 (InternalServiceError)", "{db}");
    assert_eq!(health_of(&failover, "app").await.1["region"], REPLICA);
    let list: serde_json::Value = failover.get("/v1/secrets").await.json().await.unwrap();
    let regions: Vec<_> =
        list["secrets"].as_array().unwrap().iter().map(|s| (s["name"].clone(), s["region"].clone())).collect();
    assert_eq!(regions, [("app".into(), REPLICA.into()), ("db".into(), REPLICA.into())]);
    let m = metrics(&failover).await;
    assert!(has_line(&m, r#"secrets_sidecar_failovers_total{secret="db"} 1"#), "{m}");
    assert!(has_line(&m, r#"secrets_sidecar_serving_region{secret="db",region="us-west-2"} 1"#), "{m}");

    // The control, without --failover-region, has failed its checks as long, is not ready, and never asked
    // the replica's Region.
    control
        .wait_for("the control's failed check", Duration::from_secs(10), async || {
            !health_of(&control, "db").await.1["last_error"].is_null()
        })
        .await;
    let (status, control_db) = health_of(&control, "db").await;
    assert_eq!((status, &control_db["region"]), (503, &PRIMARY.into()), "{control_db}");
    assert_eq!(control_db["last_error"], "Secrets Manager failed with HTTP 500 (InternalServiceError)");
    assert!(control.read_file("db.json").is_none());
    assert_eq!(calls(&proxy, "control", REPLICA).total(), 0);
    assert!(calls(&proxy, "control", PRIMARY).refused > 0);

    // A rotation done in the primary during the outage reaches the file through the replica.
    rotate(&sm, "db", &creds("Zq8-second")).await;
    let replicated = sm_replica.get_secret_value().secret_id("db").version_stage("AWSCURRENT").send().await.unwrap();
    assert_eq!(replicated.secret_string(), Some(creds("Zq8-second").as_str()), "moto reflects it into the replica");
    let rotated = Instant::now();
    failover
        .wait_for("the rotation through the replica", Duration::from_secs(10), async || {
            failover.read_file("db.json") == Some(creds("Zq8-second"))
        })
        .await;
    let rotation_after = rotated.elapsed();
    assert_eq!(failover.get("/v1/secrets/db").await.text().await.unwrap(), creds("Zq8-second"));
    assert_eq!(calls(&proxy, "failover", PRIMARY).succeeded, 0, "nothing came from the primary");

    // The primary recovers: the secrets go back within the bound, and the replica is no longer called.
    let before = (calls(&proxy, "failover", PRIMARY), calls(&proxy, "failover", REPLICA));
    proxy.set_rule(forward_all);
    let recovered = Instant::now();
    failover
        .wait_for("the return to the primary", Duration::from_secs(15), async || {
            health_of(&failover, "db").await.1["region"] == PRIMARY
                && health_of(&failover, "app").await.1["region"] == PRIMARY
        })
        .await;
    let return_after = recovered.elapsed();
    let at_return = calls(&proxy, "failover", REPLICA).total();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = (calls(&proxy, "failover", PRIMARY), calls(&proxy, "failover", REPLICA));
    let (_, db) = health_of(&failover, "db").await;
    assert_eq!((&db["primary_error"], &db["last_error"]), (&serde_json::Value::Null, &serde_json::Value::Null), "{db}");
    assert_eq!(after.1.total(), at_return, "the replica was called after the return");
    // Each secret's return, and at least one more check each in the three seconds since.
    assert!(after.0.succeeded >= 2 * 2, "the primary serves the checks: {:?}", after.0);
    assert_eq!(failover.read_file("db.json").unwrap(), creds("Zq8-second"));
    let m = metrics(&failover).await;
    assert!(has_line(&m, r#"secrets_sidecar_failover_returns_total{secret="db"} 1"#), "{m}");
    assert!(has_line(&m, r#"secrets_sidecar_serving_region{secret="db",region="us-east-1"} 1"#), "{m}");
    assert!(has_line(&m, r#"secrets_sidecar_serving_region{secret="db",region="us-west-2"} 0"#), "{m}");
    control.wait_ready().await;

    println!(
        "failover: ready from the replica {:.1} s after start; a rotation in the file {:.1} s after it; back \
         {:.1} s after the primary recovered (bound {:.1} s)",
        ready_after.as_secs_f64(),
        rotation_after.as_secs_f64(),
        return_after.as_secs_f64(),
        RETURN_BOUND.as_secs_f64()
    );
    println!(
        "calls signed by the failover sidecar: primary {:?} during the outage, {:?} at the end; replica {:?} \
         at the recovery, {} at the return, {} three seconds later",
        before.0,
        after.0,
        before.1,
        at_return,
        after.1.total()
    );
    assert!(return_after <= RETURN_BOUND + Duration::from_secs(1), "back after {return_after:?}");

    // Each switch is logged once, and no value is logged at any level.
    let log = failover.log_text();
    assert_eq!(log.matches("serving it from its replica until that Region answers again").count(), 2, "db and app");
    assert_eq!(log.matches("answers again: serving it from there").count(), 2);
    assert!(log.lines().count() > 50, "a trace log was written");
    assert!(!log.contains("Zq8-"), "the log leaks a value");
    assert!(!log.contains(&failover.token()), "the log leaks the token");
}

/// An app whose secret lives in another Region names it by ARN, and its replica in the task's own Region:
/// the secret is read in the ARN's Region (Secrets Manager answers for a secret only there), and when that
/// Region fails while the task runs, in the replica's.
#[tokio::test]
async fn a_secret_given_by_arn_is_read_in_its_region_and_fails_over_to_a_replica_in_the_tasks() {
    const HOME: &str = "eu-west-1";
    let moto = Moto::start().await;
    let arn = create_replicated_secret(&moto.client_in(HOME).await, "far", &creds("Zq8-far"), PRIMARY).await;
    let proxy = AwsProxy::start(moto.endpoint(), forward_all).await;
    let sidecar = sidecar(&proxy, "far")
        .secret("far", &format!("{arn}?failover_region={PRIMARY}"))
        .arg("--failover-retry-interval")
        .arg("2s")
        .spawn()
        .await;
    sidecar.wait_ready().await;
    assert_eq!(health_of(&sidecar, "far").await.1["region"], HOME);
    assert!(calls(&proxy, "far", HOME).succeeded >= 2, "DescribeSecret and GetSecretValue in {HOME}");
    assert_eq!(calls(&proxy, "far", PRIMARY).total(), 0, "nothing asked of the task's own Region");

    proxy.set_rule(fail_region(HOME, &["far"], AwsError::internal_service_error()));
    sidecar
        .wait_for("the failover of a running task", Duration::from_secs(15), async || {
            health_of(&sidecar, "far").await.1["region"] == PRIMARY
        })
        .await;
    let (status, far) = health_of(&sidecar, "far").await;
    assert_eq!((status, &far["last_error"]), (200, &serde_json::Value::Null), "{far}");
    assert!(calls(&proxy, "far", PRIMARY).succeeded >= 1);
    assert_eq!(sidecar.read_file("far.json").unwrap(), creds("Zq8-far"));
}

/// A replica must not hide a misconfiguration or a deletion. A denied primary leaves a starting task
/// unready; a secret deleted in its own Region while a copy of the same name lives on in the replica's
/// Region (what promoting a replica leaves) keeps the last good value and shows the error. Neither asks
/// the replica's Region anything — the test above is the control that those calls are seen.
#[tokio::test]
async fn an_answer_from_the_primary_never_fails_over() {
    let moto = Moto::start().await;
    let (sm, sm_replica) = (moto.client().await, moto.client_in(REPLICA).await);
    create_replicated_secret(&sm, "db", &creds("Zq8-denied"), REPLICA).await;
    create_replicated_secret(&sm, "gone", &creds("Zq8-gone"), REPLICA).await;
    let proxy = AwsProxy::start(moto.endpoint(), fail_primary(&["denied"], AwsError::access_denied())).await;
    let (denied, deleted) = tokio::join!(
        with_failover(sidecar(&proxy, "denied").secret("db", "db")).spawn(),
        with_failover(sidecar(&proxy, "deleted").secret("gone", "gone")).spawn(),
    );
    deleted.wait_ready().await;

    sm.remove_regions_from_replication().secret_id("gone").remove_replica_regions(REPLICA).send().await.unwrap();
    sm_replica.create_secret().name("gone").secret_string(creds("Zq8-standalone")).send().await.unwrap();
    sm.delete_secret().secret_id("gone").force_delete_without_recovery(true).send().await.unwrap();

    let error_of = async |s: &Sidecar, name: &str| health_of(s, name).await.1["last_error"].as_str().map(str::to_owned);
    denied
        .wait_for("the denial", Duration::from_secs(10), async || {
            error_of(&denied, "db").await.is_some_and(|e| e.starts_with("access denied for GetSecretValue"))
        })
        .await;
    deleted
        .wait_for("the deletion", Duration::from_secs(10), async || {
            error_of(&deleted, "gone").await.is_some_and(|e| e.starts_with("secret not found"))
        })
        .await;
    // More checks, in which a failover would show.
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert_eq!(calls(&proxy, "denied", REPLICA).total() + calls(&proxy, "deleted", REPLICA).total(), 0);
    // The refusals did reach the proxy, check after check: the counting sees these sidecars' calls.
    assert!(calls(&proxy, "denied", PRIMARY).refused >= 2, "{:?}", calls(&proxy, "denied", PRIMARY));
    assert!(calls(&proxy, "deleted", PRIMARY).failed >= 2, "{:?}", calls(&proxy, "deleted", PRIMARY));
    let (status, db) = health_of(&denied, "db").await;
    assert_eq!((status, &db["region"]), (503, &PRIMARY.into()), "never ready: {db}");
    assert!(denied.read_file("db.json").is_none());
    let (status, gone) = health_of(&deleted, "gone").await;
    assert_eq!((status, &gone["region"], &gone["primary_error"]), (200, &PRIMARY.into(), &serde_json::Value::Null));
    assert_eq!(deleted.read_file("gone.json").unwrap(), creds("Zq8-gone"), "the last good value, not the copy");
    for log in [denied.log_text(), deleted.log_text()] {
        assert!(!log.contains("serving it from its replica"), "{log}");
    }
}
