//! A stand-in for the agent that serves a task its role's credentials: the ECS agent behind
//! `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, EKS Pod Identity behind `AWS_CONTAINER_CREDENTIALS_FULL_URI` with
//! an `Authorization` header from `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`.
//!
//! It answers `GET` with the documented container-credentials JSON (`AccessKeyId`, `SecretAccessKey`,
//! `Token`, `Expiration`), new credentials on every fetch, each valid for a short [`Lifetime`]. Every issued
//! key goes into a [`KeyTable`] that an [`AwsProxy`](super::aws_proxy::AwsProxy) in front of the emulator
//! consults through [`refuse_expired_keys`]: a request signed with a key past its expiry gets AWS's
//! `ExpiredTokenException` instead of moto's indifferent success.
//!
//! Only the `FULL_URI` form can be served here: the SDK sends the `RELATIVE_URI` form to the fixed address
//! `http://169.254.170.2` (aws-config `ecs.rs`, `BASE_HOST`), which nothing on this machine's loopback
//! answers. Both forms end in the same HTTP credentials provider and the same cache, and a `FULL_URI` on
//! 127.0.0.1 is one the SDK accepts over plain HTTP (loopback, like the ECS and EKS link-local addresses).

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::Rng;
use rand::distr::Alphanumeric;

use super::aws_proxy::{AwsError, SignedRequest, Verdict};

/// The path the endpoint serves, the one EKS Pod Identity uses.
pub const PATH: &str = "/v1/credentials";

/// One set of credentials the endpoint handed out.
#[derive(Debug, Clone)]
pub struct Issued {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
    pub issued_at: SystemTime,
    /// When the proxy starts refusing the key.
    pub expires_at: SystemTime,
    /// The `Expiration` the answer announced (the same as `expires_at` unless a test lies on purpose).
    pub announced_expiration: SystemTime,
}

/// Every key the endpoint issued, shared with the proxy's rule.
#[derive(Clone, Default)]
pub struct KeyTable(Arc<Mutex<HashMap<String, Issued>>>);

impl KeyTable {
    pub fn get(&self, access_key_id: &str) -> Option<Issued> {
        self.0.lock().unwrap().get(access_key_id).cloned()
    }

    fn insert(&self, issued: Issued) {
        self.0.lock().unwrap().insert(issued.access_key_id.clone(), issued);
    }
}

/// A rule for the proxy that refuses what AWS refuses about the credentials themselves: a key the
/// endpoint never issued or a session token that is not the key's (`UnrecognizedClientException`), and a
/// key past its expiry (`ExpiredTokenException`). Everything else is forwarded.
pub fn refuse_expired_keys(keys: KeyTable) -> impl Fn(&SignedRequest) -> Verdict + Send + Sync + 'static {
    move |req| {
        let Some(issued) = req.scope.as_ref().and_then(|s| keys.get(&s.access_key_id)) else {
            return Verdict::Refuse(AwsError::unrecognized_client());
        };
        if req.security_token.as_deref() != Some(issued.token.as_str()) {
            return Verdict::Refuse(AwsError::unrecognized_client());
        }
        if SystemTime::now() >= issued.expires_at {
            return Verdict::Refuse(AwsError::expired_token());
        }
        Verdict::Forward
    }
}

/// How long issued credentials live, and what the answer says about it.
#[derive(Debug, Clone, Copy)]
pub struct Lifetime {
    /// How long a key is accepted by the proxy.
    pub valid: Duration,
    /// How long the answer's `Expiration` says it is valid: `valid`, unless a test wants a client that
    /// trusts a longer promise to run into expired keys.
    pub announced: Duration,
}

impl Lifetime {
    pub fn honest(valid: Duration) -> Lifetime {
        Lifetime { valid, announced: valid }
    }
}

/// One request to the endpoint.
#[derive(Debug, Clone)]
pub struct Fetch {
    pub at: SystemTime,
    /// The key handed out; `None` when the request was refused (no or wrong `Authorization`) or the
    /// endpoint was down.
    pub issued: Option<String>,
}

struct State {
    lifetime: Lifetime,
    authorization: String,
    keys: KeyTable,
    up: AtomicBool,
    fetches: Mutex<Vec<Fetch>>,
    /// Open connections: the SDK keeps one alive between fetches, and going down must end it too.
    connections: Mutex<Vec<tokio::task::AbortHandle>>,
}

/// The endpoint, listening on 127.0.0.1 on a port of its own.
pub struct CredentialsEndpoint {
    pub port: u16,
    state: Arc<State>,
    token_file: PathBuf,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl CredentialsEndpoint {
    /// Starts the endpoint. It requires an `Authorization` header equal to the content of
    /// [`token_file`](Self::token_file), as EKS Pod Identity's agent does.
    pub async fn start(lifetime: Lifetime) -> CredentialsEndpoint {
        let dir = tempfile::Builder::new().prefix("credentials-endpoint-").tempdir().unwrap();
        let authorization = random(48);
        let token_file = dir.path().join("token");
        // No trailing newline: the SDK sends the file's bytes as the header value, as they are.
        std::fs::write(&token_file, &authorization).unwrap();
        // Readable by the image's user, which has no other way to it when the file is mounted in.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let state = Arc::new(State {
            lifetime,
            authorization,
            keys: KeyTable::default(),
            up: AtomicBool::new(true),
            fetches: Mutex::new(Vec::new()),
            connections: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the credentials endpoint");
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    if !state.up.load(Ordering::SeqCst) {
                        // Down: the connection is dropped unanswered, as when the agent is not there.
                        state.fetches.lock().unwrap().push(Fetch { at: SystemTime::now(), issued: None });
                        drop(stream);
                        continue;
                    }
                    let conn = tokio::spawn({
                        let state = state.clone();
                        async move {
                            let service = hyper::service::service_fn(move |req| {
                                let state = state.clone();
                                async move { Ok::<_, Infallible>(state.answer(&req)) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    });
                    let mut open = state.connections.lock().unwrap();
                    open.retain(|c| !c.is_finished());
                    open.push(conn.abort_handle());
                }
            }
        });
        CredentialsEndpoint { port, state, token_file, _dir: dir, task }
    }

    /// The value for `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
    pub fn full_uri(&self) -> String {
        format!("http://127.0.0.1:{}{PATH}", self.port)
    }

    /// The file for `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`.
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// The environment that makes the SDK's default chain use this endpoint, as EKS Pod Identity sets it.
    pub fn sdk_env(&self) -> [(&'static str, String); 2] {
        [
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", self.full_uri()),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", self.token_file.display().to_string()),
        ]
    }

    /// The keys issued so far, for the proxy's rule.
    pub fn keys(&self) -> KeyTable {
        self.state.keys.clone()
    }

    /// Down: open connections are closed, and new ones dropped unanswered, until
    /// [`set_up`](Self::set_up)`(true)`.
    pub fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
        if !up {
            for conn in self.state.connections.lock().unwrap().drain(..) {
                conn.abort();
            }
        }
    }

    /// Every request so far, oldest first.
    pub fn fetches(&self) -> Vec<Fetch> {
        self.state.fetches.lock().unwrap().clone()
    }

    /// The credentials handed out, in the order they were issued.
    pub fn issued(&self) -> Vec<Issued> {
        let keys = self.state.keys.0.lock().unwrap();
        let mut all: Vec<Issued> = keys.values().cloned().collect();
        all.sort_by_key(|i| i.issued_at);
        all
    }
}

impl State {
    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let now = SystemTime::now();
        let authorized =
            req.headers().get(AUTHORIZATION).is_some_and(|v| v.as_bytes() == self.authorization.as_bytes());
        if req.uri().path() != PATH || !authorized {
            self.fetches.lock().unwrap().push(Fetch { at: now, issued: None });
            let status = if authorized { StatusCode::NOT_FOUND } else { StatusCode::UNAUTHORIZED };
            return json(status, serde_json::json!({"Message": "request refused"}));
        }
        // Whole seconds: `Expiration` is RFC 3339 to the second, and the proxy must not refuse a key the
        // answer still called valid.
        let whole = |t: SystemTime| UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        let issued = Issued {
            access_key_id: format!("ASIA{}", random(16).to_uppercase()),
            secret_access_key: random(40),
            token: random(64),
            issued_at: now,
            expires_at: whole(now + self.lifetime.valid),
            announced_expiration: whole(now + self.lifetime.announced),
        };
        self.keys.insert(issued.clone());
        self.fetches.lock().unwrap().push(Fetch { at: now, issued: Some(issued.access_key_id.clone()) });
        json(
            StatusCode::OK,
            serde_json::json!({
                "AccessKeyId": issued.access_key_id,
                "SecretAccessKey": issued.secret_access_key,
                "Token": issued.token,
                "Expiration": humantime::format_rfc3339_seconds(issued.announced_expiration).to_string(),
            }),
        )
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn random(len: usize) -> String {
    rand::rng().sample_iter(Alphanumeric).take(len).map(char::from).collect()
}

impl Drop for CredentialsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}
