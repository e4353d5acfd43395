//! The image users deploy, built from the Dockerfile (`make image`) and run the way ECS runs it: read-only
//! root filesystem, every capability dropped, `no-new-privileges`, the image's own user, a fresh volume at
//! `/secrets`, task-role credentials from a credentials endpoint, and the emulator on the host's loopback
//! (`--network host`, as `awsvpc` gives a task one loopback of its own).
//!
//! `SIDECAR_IMAGE` names the image (scripts/test.sh builds it with `make image` and sets it); podman runs
//! it, through scripts/podman.sh for the settings this kind of machine needs, as root. Either missing is
//! a failure with instructions, never a skip.
//!
//! Two tests: what the image holds (its files, no shell, its size), and one container run that goes
//! through everything a task sees from start to stop, so the image is started only once.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tokio::time::{Instant, sleep};

use harness::aws_proxy::AwsProxy;
use harness::credentials::{CredentialsEndpoint, Lifetime, refuse_expired_keys};
use harness::{Moto, TOKEN_HEADER, create_secret, rotate};

/// The binary's size budget (docs/benchmarks.md; 7.58 MiB when this was written).
const BINARY_BUDGET: u64 = 8 * 1024 * 1024;
/// The image's: the binary's budget, the CA bundle (~0.2 MiB) and the image's own bookkeeping.
const IMAGE_BUDGET: u64 = BINARY_BUDGET + 256 * 1024;
/// Where EKS Pod Identity mounts the token whose content is the credentials request's `Authorization`.
const TOKEN_FILE_IN_CONTAINER: &str = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token";
/// Short enough that the container sees its credentials replaced; see tests/it/credentials.rs for why
/// not shorter than the SDK's 10 s refresh buffer.
const CREDENTIALS_LIFETIME: Duration = Duration::from_secs(12);
const MAX_STALENESS: Duration = Duration::from_secs(5);

fn image() -> String {
    assert!(
        rustix::process::geteuid().is_root(),
        "the image tests run podman as root (sudo make test); rootless podman needs subuid ranges this \
         harness does not set up"
    );
    std::env::var("SIDECAR_IMAGE").unwrap_or_else(|_| {
        panic!(
            "SIDECAR_IMAGE is not set: build the image with `make image IMAGE=secrets-sidecar:test` and run with \
             SIDECAR_IMAGE=secrets-sidecar:test (scripts/test.sh, which `make test` runs, does both)"
        )
    })
}

fn podman_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/podman.sh")
}

async fn podman(args: &[&str]) -> Output {
    tokio::process::Command::new(podman_path())
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("running podman {args:?}: {e} (scripts/install-test-deps.sh installs podman)"))
}

/// podman, which must succeed; its stdout.
async fn podman_ok(args: &[&str]) -> String {
    let out = podman(args).await;
    assert!(out.status.success(), "podman {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A container and its volume, removed when the test ends however it ends.
struct Container {
    name: String,
    volume: String,
}

impl Container {
    async fn logs(&self) -> String {
        let out = podman(&["logs", &self.name]).await;
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// The image's own HEALTHCHECK, run once: its exit status and output.
    async fn healthcheck(&self) -> (bool, String) {
        let out = podman(&["healthcheck", "run", &self.name]).await;
        (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    async fn inspect(&self, format: &str) -> String {
        podman_ok(&["inspect", "--format", format, &self.name]).await.trim().to_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new(podman_path()).args(["rm", "-f", &self.name]).output();
        let _ = std::process::Command::new(podman_path()).args(["volume", "rm", "-f", &self.volume]).output();
    }
}

/// Mode, owner and group of a path, as `0755 65532:65532`.
fn perms(path: &Path) -> String {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{:04o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid())
}

/// Every path under `root`, relative, with its kind and [`perms`].
fn listing(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let kind = if path.is_symlink() {
                "l"
            } else if path.is_dir() {
                "d"
            } else {
                "f"
            };
            out.insert(format!("/{} {kind} {}", path.strip_prefix(root).unwrap().display(), perms(&path)));
            if kind == "d" {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / 1048576.0)
}

#[tokio::test]
async fn the_image_holds_the_binary_its_ca_bundle_and_the_volume_dir_and_nothing_else() {
    let image = image();
    let config: serde_json::Value = serde_json::from_str(&podman_ok(&["image", "inspect", &image]).await).unwrap();
    let config = &config[0];
    let size = config["Size"].as_u64().unwrap();

    let root = podman_ok(&["image", "mount", &image]).await;
    let root = PathBuf::from(root.trim());
    let files = listing(&root);
    let binary = std::fs::metadata(root.join("secrets-sidecar")).map(|m| m.len());
    podman_ok(&["image", "unmount", &image]).await;
    let binary = binary.unwrap();
    println!("image {image}: {} ({size} bytes), of which the binary {} ({binary} bytes)", mib(size), mib(binary));

    // No shell, no libc, no package database: what a task can run is the sidecar.
    let want: BTreeSet<String> = [
        "/etc d 0755 0:0",
        "/etc/ssl d 0755 0:0",
        "/etc/ssl/certs d 0755 0:0",
        "/etc/ssl/certs/ca-certificates.crt f 0644 0:0",
        "/secrets d 0755 65532:65532",
        "/secrets-sidecar f 0755 0:0",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(files, want);
    assert!(
        size <= IMAGE_BUDGET,
        "the image is {} ({size} bytes), over its budget of {}",
        mib(size),
        mib(IMAGE_BUDGET)
    );

    // What ECS and the task definition rely on (tests/deploy checks the task definition against it).
    let c = &config["Config"];
    assert_eq!(c["User"], "65532:65532");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/secrets-sidecar"]));
    // Kept by `--format docker` (scripts/image.sh): the OCI format has no HEALTHCHECK.
    assert_eq!(config["Healthcheck"]["Test"], serde_json::json!(["CMD", "/secrets-sidecar", "healthcheck"]));
    assert!(c["Volumes"]["/secrets"].is_object(), "{c}");

    // The binary starts in it — static, nothing else needed — and a shell does not, for want of one.
    let ecs = ["--read-only", "--cap-drop", "all", "--security-opt", "no-new-privileges", "--network", "none"];
    let version = podman_ok(&[&["run", "--rm"], &ecs[..], &[image.as_str(), "--version"]].concat()).await;
    assert_eq!(version.trim(), format!("secrets-sidecar {}", env!("CARGO_PKG_VERSION")));
    let shell =
        podman(&[&["run", "--rm"], &ecs[..], &["--entrypoint", "/bin/sh", image.as_str(), "-c", "true"]].concat())
            .await;
    assert_eq!(shell.status.code(), Some(127), "{}", String::from_utf8_lossy(&shell.stderr));
    assert!(String::from_utf8_lossy(&shell.stderr).contains("/bin/sh: no such file or directory"));
}

#[tokio::test]
async fn the_image_runs_as_ecs_runs_it_from_start_to_stop() {
    let image = image();
    let mut moto = Moto::start().await;
    let sm = moto.client().await;
    let value = |n: u32| format!(r#"{{"username":"app","password":"image-test-password-{n}"}}"#);
    create_secret(&sm, "db", &value(1)).await;
    let endpoint = CredentialsEndpoint::start(Lifetime::honest(CREDENTIALS_LIFETIME)).await;
    let proxy = AwsProxy::start(moto.endpoint(), refuse_expired_keys(endpoint.keys())).await;

    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let unique = format!("secrets-sidecar-test-{}-{nanos}", std::process::id());
    let container = Container { name: unique.clone(), volume: unique.clone() };
    podman_ok(&["volume", "create", &container.volume]).await;
    // The HEALTHCHECK probes the address SIDECAR_LISTEN names, so here the sidecar cannot take port 0: it
    // gets a port that was free a moment ago, and when that was taken in the meantime the sidecar exits
    // ("cannot listen on …") and the container is started again on another one.
    let mut attempts = 0;
    let (listen, start_to_healthy) = loop {
        attempts += 1;
        let listen =
            format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
        let env = [
            "SIDECAR_SECRETS=db=db".to_owned(),
            format!("SIDECAR_LISTEN={listen}"),
            format!("SIDECAR_ENDPOINT_URL={}", proxy.endpoint()),
            "SIDECAR_REFRESH_INTERVAL=1s".to_owned(),
            format!("SIDECAR_MAX_STALENESS={}s", MAX_STALENESS.as_secs()),
            format!("AWS_REGION={}", harness::REGION),
            format!("AWS_CONTAINER_CREDENTIALS_FULL_URI={}", endpoint.full_uri()),
            format!("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={TOKEN_FILE_IN_CONTAINER}"),
        ];
        let token_mount = format!("{}:{TOKEN_FILE_IN_CONTAINER}:ro", endpoint.token_file().display());
        let volume_mount = format!("{}:/secrets", container.volume);
        let mut args: Vec<&str> = vec!["run", "--detach", "--name", &container.name];
        args.extend(["--read-only", "--cap-drop", "all", "--security-opt", "no-new-privileges", "--network", "host"]);
        args.extend(["--volume", &volume_mount, "--volume", &token_mount]);
        for e in &env {
            args.extend(["--env", e]);
        }
        args.push(&image);

        // -- start → healthy, by the image's own HEALTHCHECK
        let started = Instant::now();
        podman_ok(&args).await;
        let healthy = loop {
            if container.healthcheck().await.0 {
                break true;
            }
            let logs = container.logs().await;
            if logs.contains("cannot listen on") && attempts < 5 {
                podman_ok(&["rm", "-f", &container.name]).await;
                break false;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "never healthy:\n{}", harness::tail(&logs, 30));
            sleep(Duration::from_millis(100)).await;
        };
        if healthy {
            break (listen, started.elapsed());
        }
    };
    let started = Instant::now() - start_to_healthy;

    // -- the files as documented, the value over HTTP with the token only
    let dir =
        PathBuf::from(podman_ok(&["volume", "inspect", "--format", "{{.Mountpoint}}", &container.volume]).await.trim());
    assert_eq!(perms(&dir), "0755 65532:65532", "the volume takes the image's /secrets, owner included");
    assert_eq!(perms(&dir.join("db.json")), "0440 65532:65532");
    assert_eq!(perms(&dir.join(".token")), "0440 65532:65532");
    assert_eq!(std::fs::read_to_string(dir.join("db.json")).unwrap(), value(1));
    let token = std::fs::read_to_string(dir.join(".token")).unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://{listen}/v1/secrets/db");
    let with = http.get(&url).header(TOKEN_HEADER, &token).send().await.unwrap();
    assert_eq!(with.status(), 200);
    assert_eq!(with.text().await.unwrap(), value(1));
    let without = http.get(&url).send().await.unwrap();
    assert_eq!(without.status(), 401);
    assert!(!without.text().await.unwrap().contains("image-test-password"));

    // -- a rotation reaches the file
    let rotated = Instant::now();
    rotate(&sm, "db", &value(2)).await;
    while std::fs::read_to_string(dir.join("db.json")).unwrap() != value(2) {
        assert!(rotated.elapsed() < Duration::from_secs(10), "the rotation never reached the file");
        sleep(Duration::from_millis(50)).await;
    }
    let rotation_to_file = rotated.elapsed();

    // -- task-role credentials from the endpoint, inside the image, and not one call refused or failed
    // (counted before the emulator is stopped below, when failures are the point)
    sleep(CREDENTIALS_LIFETIME.saturating_sub(started.elapsed())).await;
    let counts = proxy.counts();
    let fetches = endpoint.fetches();
    assert!(fetches.iter().all(|f| f.issued.is_some()), "{fetches:?}");
    assert!(endpoint.issued().len() >= 2, "credentials replaced while the container ran: {fetches:?}");
    assert_eq!((counts.failed, counts.refused), (0, 0), "{counts:?}");
    assert!(counts.succeeded > 0);

    // -- unhealthy: the emulator gone for longer than --max-staleness
    let (healthy, _) = container.healthcheck().await;
    assert!(healthy);
    moto.stop().await;
    let stopped = Instant::now();
    let why = loop {
        let (healthy, out) = container.healthcheck().await;
        if !healthy {
            break out;
        }
        assert!(stopped.elapsed() < MAX_STALENESS + Duration::from_secs(15), "still healthy without the emulator");
        sleep(Duration::from_millis(200)).await;
    };
    let outage_to_unhealthy = stopped.elapsed();
    // Red only once --max-staleness has passed since the last check that reached the emulator.
    let red_at = std::time::SystemTime::now();
    let last_success = proxy.exchanges().iter().rev().find(|e| e.outcome.is_success()).unwrap().at;
    let stale_for = red_at.duration_since(last_success).unwrap();
    assert!(stale_for >= MAX_STALENESS, "red {stale_for:?} after the last successful check");
    assert_eq!(why, "unhealthy");
    let last = container.inspect("{{json .State.Health.Log}}").await;
    assert!(last.contains("unhealthy: HTTP 503"), "{last}");
    // The last good value is still served meanwhile.
    let during = http.get(&url).header(TOKEN_HEADER, &token).send().await.unwrap();
    assert_eq!(during.text().await.unwrap(), value(2));

    // -- podman stop: SIGTERM to PID 1, exit 0 within 2 s, files intact
    let stopping = Instant::now();
    podman_ok(&["stop", "--time", "10", &container.name]).await;
    let stop_time = stopping.elapsed();
    assert_eq!(container.inspect("{{.State.ExitCode}}").await, "0", "{}", harness::tail(&container.logs().await, 20));
    assert!(stop_time < Duration::from_secs(2), "podman stop took {stop_time:?}");
    let left: BTreeSet<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, BTreeSet::from([".token".to_owned(), "db.json".to_owned()]));
    assert_eq!(std::fs::read_to_string(dir.join("db.json")).unwrap(), value(2));
    assert_eq!(std::fs::read_to_string(dir.join(".token")).unwrap(), token);

    let logs = container.logs().await;
    assert!(logs.contains("secrets-sidecar started"), "{}", harness::tail(&logs, 20));
    assert!(!logs.contains("image-test-password") && !logs.contains(&token), "a secret in the container's log");

    println!(
        "image {image}: start → healthy {} ms; rotation → file {} ms; emulator stopped → unhealthy {} ms \
         (--max-staleness {}s); podman stop {} ms, exit 0; credentials fetched {} times; Secrets Manager calls \
         before the outage: {} succeeded, 0 failed, 0 refused",
        start_to_healthy.as_millis(),
        rotation_to_file.as_millis(),
        outage_to_unhealthy.as_millis(),
        MAX_STALENESS.as_secs(),
        stop_time.as_millis(),
        fetches.len(),
        counts.succeeded
    );
}
