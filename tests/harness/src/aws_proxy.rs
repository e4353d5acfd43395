//! A proxy in front of the emulator that answers some requests the way AWS would refuse them.
//!
//! moto accepts any key, any session token, any Region: a sidecar that signs with expired credentials, or
//! that talks to the wrong Region, succeeds against it. This proxy sits between the sidecar and moto, reads
//! what each request was signed for — the SigV4 credential scope in its `Authorization` header (access key
//! id, date, Region, service) and its `X-Amz-Security-Token` — and asks a [`Rule`] whether to forward it or
//! to answer with an AWS error ([`AwsError`], in the JSON shape Secrets Manager's protocol uses). It records
//! every exchange, so a test can count what reached the far side per key or per Region.
//!
//! It is test infrastructure, not a fake of the API: every request it forwards is answered by moto, and the
//! errors it makes up are the ones AWS's front door answers before the service sees the request. HTTP is
//! hyper's on both sides; only the `Authorization` header's value, a comma-separated list of SigV4
//! parameters, is taken apart here.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What a SigV4 signature says it was made for: `Credential=AKID/DATE/REGION/SERVICE/aws4_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialScope {
    pub access_key_id: String,
    /// `YYYYMMDD`, as signed.
    pub date: String,
    pub region: String,
    pub service: String,
}

impl CredentialScope {
    /// The scope of an `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…` value;
    /// `None` for anything else (unsigned, another algorithm, a malformed credential).
    pub fn from_authorization(value: &str) -> Option<CredentialScope> {
        let params = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
        let credential = params.split(',').find_map(|p| p.trim().strip_prefix("Credential="))?;
        let parts: Vec<&str> = credential.split('/').collect();
        match parts.as_slice() {
            [key, date, region, service, "aws4_request"] if !key.is_empty() => Some(CredentialScope {
                access_key_id: key.to_string(),
                date: date.to_string(),
                region: region.to_string(),
                service: service.to_string(),
            }),
            _ => None,
        }
    }
}

/// What the proxy knows of a request when it decides.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    /// `None` when the request carries no SigV4 `Authorization` header it could read.
    pub scope: Option<CredentialScope>,
    /// `X-Amz-Security-Token`: the session token of temporary credentials.
    pub security_token: Option<String>,
    /// `X-Amz-Target` without the service prefix: `DescribeSecret`, `GetSecretValue`, …
    pub operation: Option<String>,
}

/// An error as AWS's JSON protocols (`awsJson1.1`, Secrets Manager's) send it: the status, the error type
/// in `x-amzn-ErrorType` and in the body's `__type`, and a `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    pub status: StatusCode,
    /// The error type with its namespace, as AWS writes it, e.g.
    /// `com.amazon.coral.service#ExpiredTokenException`; the SDK keeps what follows the `#`.
    pub error_type: String,
    pub message: String,
}

impl AwsError {
    /// A request signed with temporary credentials whose session has expired.
    pub fn expired_token() -> AwsError {
        AwsError {
            status: StatusCode::BAD_REQUEST,
            error_type: "com.amazon.coral.service#ExpiredTokenException".into(),
            message: "The security token included in the request is expired".into(),
        }
    }

    /// An access key id AWS does not know, or a session token that does not belong to it.
    pub fn unrecognized_client() -> AwsError {
        AwsError {
            status: StatusCode::BAD_REQUEST,
            error_type: "com.amazon.coral.service#UnrecognizedClientException".into(),
            message: "The security token included in the request is invalid.".into(),
        }
    }

    /// The policy denies the action (or the secret's resource policy does): an answer, not a failure.
    pub fn access_denied() -> AwsError {
        AwsError {
            status: StatusCode::BAD_REQUEST,
            error_type: "com.amazonaws.secretsmanager#AccessDeniedException".into(),
            message: "User is not authorized to perform this action on the secret".into(),
        }
    }

    /// The service failing (a Region in trouble).
    pub fn internal_service_error() -> AwsError {
        AwsError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error_type: "com.amazonaws.secretsmanager#InternalServiceError".into(),
            message: "An error occurred on the server side.".into(),
        }
    }

    /// The code the SDK reports: the type without its namespace.
    pub fn code(&self) -> &str {
        self.error_type.rsplit('#').next().unwrap_or(&self.error_type)
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({"__type": self.error_type, "message": self.message}).to_string();
        let mut res = Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-amz-json-1.1"));
        headers
            .insert("x-amzn-ErrorType", HeaderValue::from_str(self.code()).expect("an error code is a header value"));
        headers.insert("x-amzn-RequestId", HeaderValue::from_static("00000000-0000-4000-8000-000000000000"));
        res
    }
}

/// Forward the request, or answer it with an AWS error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    Refuse(AwsError),
}

/// Decides, per request, what AWS would do with it. Any `Fn(&SignedRequest) -> Verdict` is one.
pub trait Rule: Send + Sync + 'static {
    fn check(&self, request: &SignedRequest) -> Verdict;
}

impl<F: Fn(&SignedRequest) -> Verdict + Send + Sync + 'static> Rule for F {
    fn check(&self, request: &SignedRequest) -> Verdict {
        self(request)
    }
}

/// Forwards everything.
pub fn forward_all(_: &SignedRequest) -> Verdict {
    Verdict::Forward
}

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded, and the emulator answered with this status.
    Answered(StatusCode),
    /// Answered by the proxy with this error code, never forwarded.
    Refused(String),
    /// Forwarded, but the emulator could not be reached.
    Unreachable,
}

impl Outcome {
    /// A call that did what the sidecar asked: forwarded and answered 2xx.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Answered(s) if s.is_success())
    }
}

#[derive(Debug, Clone)]
pub struct Exchange {
    pub at: SystemTime,
    pub request: SignedRequest,
    pub outcome: Outcome,
}

/// How the requests of one key or Region fared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Forwarded and answered 2xx.
    pub succeeded: usize,
    /// Forwarded and answered with an error by the emulator, or not answered at all.
    pub failed: usize,
    /// Refused by the rule.
    pub refused: usize,
}

impl Counts {
    pub fn total(&self) -> usize {
        self.succeeded + self.failed + self.refused
    }

    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            o if o.is_success() => self.succeeded += 1,
            Outcome::Refused(_) => self.refused += 1,
            _ => self.failed += 1,
        }
    }
}

struct Shared {
    upstream: String,
    rule: RwLock<Arc<dyn Rule>>,
    log: Mutex<Vec<Exchange>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The proxy, listening on 127.0.0.1 on a port of its own.
pub struct AwsProxy {
    pub port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl AwsProxy {
    /// A proxy in front of `upstream` (`http://127.0.0.1:PORT`) that applies `rule` to every request.
    pub async fn start(upstream: String, rule: impl Rule) -> AwsProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the AWS proxy");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            rule: RwLock::new(Arc::new(rule)),
            log: Mutex::new(Vec::new()),
            client: Client::builder(TokioExecutor::new()).build_http(),
        });
        let task = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(shared.handle(req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        AwsProxy { port, shared, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Applies `rule` from the next request on.
    pub fn set_rule(&self, rule: impl Rule) {
        *self.shared.rule.write().unwrap() = Arc::new(rule);
    }

    /// Every exchange so far, oldest first.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Counts per access key id (`"-"` for requests without a readable scope).
    pub fn counts_by_key(&self) -> BTreeMap<String, Counts> {
        self.counts_by(|s| s.access_key_id.clone())
    }

    /// Counts per Region the requests were signed for (`"-"` for requests without a readable scope).
    pub fn counts_by_region(&self) -> BTreeMap<String, Counts> {
        self.counts_by(|s| s.region.clone())
    }

    /// The requests whose scope `matches`: one key's in one Region, say.
    pub fn counts_where(&self, matches: impl Fn(&CredentialScope) -> bool) -> Counts {
        let mut c = Counts::default();
        let log = self.shared.log.lock().unwrap();
        log.iter().filter(|e| e.request.scope.as_ref().is_some_and(&matches)).for_each(|e| c.add(&e.outcome));
        c
    }

    /// All requests together, with or without a readable scope.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        self.shared.log.lock().unwrap().iter().for_each(|e| c.add(&e.outcome));
        c
    }

    fn counts_by(&self, key: impl Fn(&CredentialScope) -> String) -> BTreeMap<String, Counts> {
        let mut out: BTreeMap<String, Counts> = BTreeMap::new();
        for e in self.shared.log.lock().unwrap().iter() {
            out.entry(e.request.scope.as_ref().map(&key).unwrap_or_else(|| "-".into())).or_default().add(&e.outcome);
        }
        out
    }
}

impl Shared {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let signed = SignedRequest {
            scope: header(AUTHORIZATION.as_str()).as_deref().and_then(CredentialScope::from_authorization),
            security_token: header("x-amz-security-token"),
            operation: header("x-amz-target").map(|t| t.rsplit('.').next().unwrap_or(&t).to_owned()),
        };
        let rule = self.rule.read().unwrap().clone();
        let (outcome, response) = match rule.check(&signed) {
            Verdict::Refuse(err) => (Outcome::Refused(err.code().to_owned()), err.response()),
            Verdict::Forward => match self.forward(req).await {
                Ok(res) => (Outcome::Answered(res.status()), res),
                Err(()) => {
                    let mut res = Response::new(Full::new(Bytes::new()));
                    *res.status_mut() = StatusCode::BAD_GATEWAY;
                    (Outcome::Unreachable, res)
                }
            },
        };
        self.log.lock().unwrap().push(Exchange { at: SystemTime::now(), request: signed, outcome });
        response
    }

    async fn forward(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, ()> {
        let (mut parts, body) = req.into_parts();
        let body = body.collect().await.map_err(|_| ())?.to_bytes();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = format!("{}{path}", self.upstream).parse::<Uri>().map_err(|_| ())?;
        let res = self.client.request(Request::from_parts(parts, Full::new(body))).await.map_err(|_| ())?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(|_| ())?.to_bytes();
        Ok(Response::from_parts(parts, Full::new(body)))
    }
}

impl Drop for AwsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
