//! The HTTP face: secrets served from memory on a loopback address. How connections are accepted, timed
//! out and capped, and how a request reaches the fast path or the router, is the `edge` crate's concern;
//! this module is the routes, and [`FastRead`], the fast path for `GET /v1/secrets/NAME`.
//!
//! Every path under `/v1/` needs `X-Secrets-Sidecar-Token`, compared in constant time. A request carrying
//! `X-Forwarded-For` is refused on every route: a proxied request did not come from inside the task, and the
//! AWS agent refuses them for the same reason (SSRF through a proxy in the app container). Both checks are
//! one layer, `Guard`, in front of the router's every route and fallback; a refusal is answered without
//! allocating a future. Every error —
//! ours, the router's 404 and 405, a malformed path or query, a timeout — leaves through [`ApiError`] as
//! `{"error": "…"}` built by serde, with fixed texts: no internal detail and no secret material can reach a
//! body. One last layer sets `Cache-Control: no-store` on every answer. The handlers read the store; the only way
//! they reach AWS is a refresh asked of the entry's task through [`Refreshers`].

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::future::Either;
use http_body_util::Full;
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tower::util::MapResponseLayer;
use tower::{Layer, Service};

use crate::entry::valid_name;
use crate::metrics::Metrics;
use crate::refresh::Refreshers;
use crate::secret::{SecretString, SecretValue};
use crate::store::{Store, Version};

pub const TOKEN_HEADER: &str = "x-secrets-sidecar-token";
const TOKEN_HEADER_NAME: HeaderName = HeaderName::from_static(TOKEN_HEADER);
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// Every path with this prefix needs the token, whether a route matches it or not (a 404 or 405 under
/// `/v1/` tells nothing to a client without the token).
const TOKEN_PREFIX: &str = "/v1/";
/// How long `POST …/refresh` waits for its check before answering 504 — the one request that can block
/// (a check is up to three Secrets Manager calls of at most 10 s each, and may first wait for a running
/// one). A check that takes longer is not cancelled: it finishes in the secret's task, and the next read
/// sees its result. Reads are memory lookups and get no timer: arming one per request costs a wake-up of
/// the runtime's I/O driver per request.
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(15);

/// What every handler reads. The router holds it behind one `Arc`, which it clones per request and per
/// `State` extractor: one shared counter to touch instead of one per field, which both workers would
/// bounce between their cores. The token is an `Arc` for the same reason: no `String` cloned per request.
pub struct AppState {
    pub store: Arc<Store>,
    /// Where `POST …/refresh` is sent: the entry's task.
    pub refreshers: Refreshers,
    pub metrics: Arc<Metrics>,
    /// `None` with `--no-token`.
    pub token: Option<Arc<SecretString>>,
    pub max_staleness: Option<Duration>,
}

/// Every route: the router, and the fast path in front of it. Tests drive a connection's service.
pub fn app(state: AppState) -> edge::Routes {
    app_from(Arc::new(state))
}

fn app_from(state: Arc<AppState>) -> edge::Routes {
    edge::Routes::new(router(state.clone()), FastRead(state))
}

fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/secrets", get(list))
        .route("/v1/secrets/{name}", get(get_secret))
        // A static segment beats `{key}` in the router, so GET of a key literally named "refresh" is
        // routed here and answered as a key lookup.
        .route("/v1/secrets/{name}/refresh", get(get_refresh_key).post(refresh))
        .route("/v1/secrets/{name}/{key}", get(get_key));
    let guard = Guard { token: state.token.clone() };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .fallback(|| async { ApiError::NotFound("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(guard)
        // A plain function, not an async middleware: it runs on every answer.
        .layer(MapResponseLayer::new(uniform_answer))
        .with_state(state)
}

/// The one error type of the HTTP layer. Texts are fixed strings chosen here.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(&'static str),
    Unauthorized,
    NotFound(&'static str),
    MethodNotAllowed,
    NotReady,
    Upstream,
    /// An error status produced outside the handlers (the timeout layer, say), with its standard reason.
    Status(StatusCode),
}

#[derive(Serialize)]
struct ErrorBody {
    error: &'static str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "missing or wrong X-Secrets-Sidecar-Token"),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            ApiError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "secret not fetched yet"),
            ApiError::Upstream => (StatusCode::BAD_GATEWAY, "refresh failed; see the sidecar log"),
            ApiError::Status(s) => (s, s.canonical_reason().unwrap_or("error")),
        };
        (status, axum::Json(ErrorBody { error })).into_response()
    }
}

/// `/v1/secrets/%ff` names no valid secret; the rejection's own text would echo the request.
impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> Self {
        ApiError::BadRequest("malformed path")
    }
}

impl From<QueryRejection> for ApiError {
    fn from(_: QueryRejection) -> Self {
        ApiError::BadRequest("malformed query (stage may be given once)")
    }
}

/// What every answer gets on its way out: `Cache-Control: no-store`, and the net under the handlers — an
/// error answer that did not come from [`ApiError`] (a framework rejection, say) is replaced by one that
/// did, so every error body has the same shape.
fn uniform_answer(res: Response) -> Response {
    let status = res.status();
    let is_json = res.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == b"application/json");
    let mut res = if (status.is_client_error() || status.is_server_error()) && !is_json {
        let mut replaced = ApiError::Status(status).into_response();
        if let Some(allow) = res.headers().get(header::ALLOW) {
            replaced.headers_mut().insert(header::ALLOW, allow.clone());
        }
        replaced
    } else {
        res
    };
    res.headers_mut().insert(header::CACHE_CONTROL, NO_STORE);
    res
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let health = crate::health::health(&state.store, tokio::time::Instant::now(), state.max_staleness);
    let status = if health.is_healthy() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(health)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], state.metrics.encode()).into_response()
}

/// The checks every request passes before it is routed: no `X-Forwarded-For` anywhere, and the token
/// under [`TOKEN_PREFIX`] ([`refusal`]). One pass over the headers and a constant-time compare; an answer
/// that passes costs no allocation (an async `middleware::from_fn` would box a future per request).
#[derive(Clone)]
struct Guard {
    /// `None` with `--no-token`.
    token: Option<Arc<SecretString>>,
}

impl<S> Layer<S> for Guard {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded { inner, token: self.token.clone() }
    }
}

#[derive(Clone)]
struct Guarded<S> {
    inner: S,
    token: Option<Arc<SecretString>>,
}

impl<S> Service<Request> for Guarded<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match refusal(req.headers(), req.uri().path(), self.token.as_deref()) {
            Some(refused) => Either::Left(ready(Ok(refused.into_response()))),
            None => Either::Right(self.inner.call(req)),
        }
    }
}

/// Why a request for `path` with `headers` is refused before routing, if it is. A forwarded request is
/// refused first, token or not.
fn refusal(headers: &HeaderMap, path: &str, token: Option<&SecretString>) -> Option<ApiError> {
    // One pass over the few headers a client sends, not two lookups: a lookup hashes the name (FNV over
    // 15–23 bytes for these two), which shows in a profile of GETs under load.
    let mut given: Option<&HeaderValue> = None;
    for (name, value) in headers {
        if name == X_FORWARDED_FOR {
            return Some(ApiError::BadRequest("proxied requests (X-Forwarded-For) are refused"));
        }
        if name == TOKEN_HEADER_NAME && given.is_none() {
            given = Some(value);
        }
    }
    if let Some(expected) = token
        && path.starts_with(TOKEN_PREFIX)
    {
        let given = given.map(|v| v.as_bytes()).unwrap_or_default();
        if !bool::from(given.ct_eq(expected.expose().as_bytes())) {
            return Some(ApiError::Unauthorized);
        }
    }
    None
}

#[derive(Serialize)]
struct SecretMeta {
    name: String,
    secret_id: String,
    format: &'static str,
    mode: crate::store::Mode,
    version_id: Option<String>,
    last_refresh: Option<String>,
    last_error: Option<String>,
    rotation_in_progress: bool,
    /// The Region a Secrets Manager secret is read from (its replica's while failed over); `null` otherwise.
    region: Option<String>,
    /// While a secret is served from its replica: its own Region's last failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    primary_error: Option<String>,
}

#[derive(Serialize)]
struct SecretList {
    secrets: Vec<SecretMeta>,
}

async fn list(State(state): State<Arc<AppState>>) -> Response {
    let secrets = state
        .store
        .entries()
        .map(|entry| {
            let s = entry.state();
            SecretMeta {
                name: entry.name().to_owned(),
                secret_id: entry.kind().source(),
                format: entry.kind().format_name(),
                mode: s.view.mode,
                version_id: s.current.as_ref().map(|v| v.id.clone()),
                last_refresh: s.last_success.map(|(_, t)| humantime::format_rfc3339_seconds(t).to_string()),
                last_error: s.last_error,
                rotation_in_progress: s.view.rotation_in_progress,
                region: s.view.region.as_deref().map(str::to_owned),
                primary_error: s.view.primary_error,
            }
        })
        .collect();
    axum::Json(SecretList { secrets }).into_response()
}

#[derive(Deserialize)]
struct StageQuery {
    stage: Option<String>,
}

async fn get_secret(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<StageQuery>, QueryRejection>,
    // The request itself, not the `HeaderMap` extractor: that one clones every header per request.
    req: Request,
) -> Result<Response, ApiError> {
    let (Path(name), Query(q)) = (name?, query?);
    let pending = match q.stage.as_deref() {
        None | Some("AWSCURRENT") => false,
        Some("AWSPENDING") => true,
        Some(_) => return Err(ApiError::BadRequest("stage must be AWSCURRENT or AWSPENDING")),
    };
    Ok(read_secret(&state, &name, pending, req.headers())?.into_response())
}

/// The answer to `GET /v1/secrets/NAME`, from the router or the fast path ([`FastRead`]).
struct SecretRead {
    status: StatusCode,
    content_type: Option<&'static str>,
    etag: Option<HeaderValue>,
    body: Bytes,
}

impl SecretRead {
    /// The answer with the body type of either path: axum's for the router, `Full` for the fast path.
    fn into_response<B: From<Bytes>>(self) -> hyper::Response<B> {
        let mut res = hyper::Response::new(B::from(self.body));
        *res.status_mut() = self.status;
        if let Some(content_type) = self.content_type {
            res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        if let Some(etag) = self.etag {
            res.headers_mut().insert(header::ETAG, etag);
        }
        res
    }
}

fn read_secret(state: &AppState, name: &str, pending: bool, headers: &HeaderMap) -> Result<SecretRead, ApiError> {
    let entry = state.store.get(name).ok_or(ApiError::NotFound("unknown secret"))?;
    // Under the entry's read lock: one `Arc`, no copy of its state.
    let version = entry.read(|s| if pending { s.view.pending.clone() } else { s.current.clone() });
    let version = match (version, pending) {
        (Some(v), _) => v,
        (None, false) => return Err(ApiError::NotReady),
        (None, true) => return Err(ApiError::NotFound("no readable pending version")),
    };
    let etag = version.etag().cloned();
    if etag.as_ref().is_some_and(|etag| if_none_match(headers, etag)) {
        return Ok(SecretRead { status: StatusCode::NOT_MODIFIED, content_type: None, etag, body: Bytes::new() });
    }
    // The bytes the file got, shared with the version: no copy, parse or render per request.
    let content_type = entry.kind().content_type();
    Ok(SecretRead {
        status: StatusCode::OK,
        content_type: Some(content_type),
        etag,
        body: Bytes::from_owner(Content(version)),
    })
}

/// The fast path of [`edge`]: `GET /v1/secrets/NAME` — what an app's hook asks at every new database
/// connection — answered without the router. It answers only what it can answer exactly as the router
/// would, the same `read_secret` behind the same `refusal`, with the header `uniform_answer` adds;
/// everything else — another method or path, a query, a name that needs decoding, a refusal, an error —
/// it declines, and the router answers that.
pub struct FastRead(Arc<AppState>);

impl edge::FastPath for FastRead {
    fn answer(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<hyper::Response<Full<Bytes>>> {
        if method != Method::GET || uri.query().is_some() {
            return None;
        }
        // A valid name is the router's `{name}` as it stands: nothing to decode, no `/`.
        let name = uri.path().strip_prefix("/v1/secrets/").filter(|n| valid_name(n))?;
        if refusal(headers, uri.path(), self.0.token.as_deref()).is_some() {
            return None;
        }
        let mut res = read_secret(&self.0, name, false, headers).ok()?.into_response::<Full<Bytes>>();
        res.headers_mut().insert(header::CACHE_CONTROL, NO_STORE);
        Some(res)
    }
}

async fn get_key(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((name, key)) = path?;
    key_value(&state, &name, &key)
}

async fn get_refresh_key(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = name?;
    key_value(&state, &name, "refresh")
}

fn key_value(state: &AppState, name: &str, key: &str) -> Result<Response, ApiError> {
    let entry = state.store.get(name).ok_or(ApiError::NotFound("unknown secret"))?;
    if !entry.kind().has_keys() {
        return Err(ApiError::NotFound("key lookup needs format json or env"));
    }
    let version: Arc<Version> = entry.current().ok_or(ApiError::NotReady)?;
    // Made once per version; a copy that is zeroed when the body is dropped, as the value is.
    let text = version.key(key).ok_or(ApiError::NotFound("unknown key"))?.clone();
    let mut res =
        ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], axum::body::Body::from(Bytes::from_owner(Owned(text))))
            .into_response();
    if let Some(etag) = version.etag() {
        res.headers_mut().insert(header::ETAG, etag.clone());
    }
    Ok(res)
}

async fn refresh(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = name?;
    // Dropping this future (the client hung up, or the timeout fired) only stops the waiting.
    match tokio::time::timeout(REFRESH_TIMEOUT, state.refreshers.refresh(&name)).await {
        Err(_) => Err(ApiError::Status(StatusCode::GATEWAY_TIMEOUT)),
        Ok(None) => Err(ApiError::NotFound("unknown secret")),
        Ok(Some(Ok(report))) => Ok(axum::Json(report).into_response()),
        // The detail is logged by the entry's task; the body stays generic.
        Ok(Some(Err(_))) => Err(ApiError::Upstream),
    }
}

/// A version's file bytes as an HTTP body without a copy: the body holds the version, whose value is
/// zeroed when the last holder drops it.
struct Content(Arc<Version>);

impl AsRef<[u8]> for Content {
    fn as_ref(&self) -> &[u8] {
        self.0.content().expose()
    }
}

/// A body copied for this request (a key's value), zeroed when the body is dropped.
struct Owned(SecretValue);

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        self.0.expose()
    }
}

/// `If-None-Match` as RFC 9110 has it: `*`, or a list of (possibly weak) tags.
/// Bytes, not `str`: a UTF-8 check of the ETag on every GET shows in a profile, and a tag that is not
/// visible ASCII matches no ETag we make anyway.
fn if_none_match(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let etag = etag.as_bytes();
    headers.get_all(header::IF_NONE_MATCH).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|t| t == b"*" || t.strip_prefix(b"W/").unwrap_or(t) == etag)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Format, SecretSpec};
    use crate::schedule::Timing;
    use crate::source::{DevSource, Source};
    use crate::store::Kind;
    use crate::task::Services;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use hyper::service::Service;

    /// The router over a dev-file source, with `db` fetched once.
    async fn router(dir: &std::path::Path, dev_json: &str) -> edge::Routes {
        router_with(dir, dev_json, Format::Json).await
    }

    /// [`router`] with `db` in another format.
    async fn router_with(dir: &std::path::Path, dev_json: &str, format: Format) -> edge::Routes {
        router_full(dir, dev_json, format, Some("tok")).await
    }

    /// [`router_with`] with another token setting (`None`: `--no-token`).
    async fn router_full(dir: &std::path::Path, dev_json: &str, format: Format, token: Option<&str>) -> edge::Routes {
        app(state(dir, dev_json, format, token).await)
    }

    /// What [`router_full`] serves.
    async fn state(dir: &std::path::Path, dev_json: &str, format: Format, token: Option<&str>) -> AppState {
        let dev = dir.join("dev.json");
        std::fs::write(&dev, dev_json).unwrap();
        let out = dir.join("out");
        std::fs::create_dir(&out).unwrap();
        let specs = vec![SecretSpec::new("db", "db", format), SecretSpec::new("later", "later", Format::Json)];
        let kinds =
            specs.iter().map(|s| (s.name.clone(), Kind::Secret { secret_id: s.secret_id.clone(), format: s.format }));
        let services = Services::for_tests(Store::new(kinds), &out);
        let timing = Timing {
            refresh_interval: Duration::from_secs(60),
            rotation_poll_interval: Duration::from_secs(2),
            min_refresh_gap: Duration::from_secs(5),
        };
        let refreshers = Refreshers::new(crate::poller::start(
            &services,
            Source::Dev(DevSource::new(dev)),
            timing,
            Duration::from_secs(60),
            &specs,
        ));
        refreshers.refresh("db").await.unwrap().unwrap();
        AppState {
            store: services.store,
            refreshers,
            metrics: services.metrics,
            token: token.map(|t| Arc::new(SecretString::from(t.to_owned()))),
            max_staleness: None,
        }
    }

    /// One request through a connection's service: the fast path, then the router.
    async fn call(
        app: &edge::Routes,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = app.connection().call(req.body(Body::empty()).unwrap()).await.unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    const TOKEN: (&str, &str) = (TOKEN_HEADER, "tok");

    #[tokio::test]
    async fn routes_answer_as_documented() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(dir.path(), r#"{"db": {"user": "app", "port": 5432, "refresh": "r"}}"#).await;
        let (s, h, body) = call(&app, "GET", "/v1/secrets/db", &[TOKEN]).await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, r#"{"user":"app","port":5432,"refresh":"r"}"#));
        let etag = h[header::ETAG].to_str().unwrap().to_owned();
        assert_eq!(
            call(&app, "GET", "/v1/secrets/db", &[TOKEN, ("if-none-match", &etag)]).await.0,
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(call(&app, "GET", "/v1/secrets/db/port", &[TOKEN]).await.2, "5432");
        assert_eq!(call(&app, "GET", "/v1/secrets/db/refresh", &[TOKEN]).await.2, "r", "GET of a key named refresh");
        assert_eq!(call(&app, "GET", "/v1/secrets/later", &[TOKEN]).await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(call(&app, "GET", "/v1/secrets/nope", &[TOKEN]).await.0, StatusCode::NOT_FOUND);
        assert_eq!(call(&app, "GET", "/v1/nothing-here", &[TOKEN]).await.0, StatusCode::NOT_FOUND);
        let (s, _, body) = call(&app, "POST", "/v1/secrets/db/refresh", &[TOKEN]).await;
        assert_eq!(s, StatusCode::OK);
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(report["fetched"], false, "inside the gap: {report}");
        let (s, _, body) = call(&app, "GET", "/healthz", &[]).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "'later' was never fetched: {body}");
    }

    #[tokio::test]
    async fn an_env_secret_is_served_as_its_file_and_its_keys_as_values() {
        let dir = tempfile::tempdir().unwrap();
        let app = router_with(dir.path(), r#"{"db": {"PASSWORD": "p w#1", "PORT": 5432}}"#, Format::Env).await;
        let (s, h, body) = call(&app, "GET", "/v1/secrets/db", &[TOKEN]).await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "PASSWORD='p w#1'\nPORT=5432\n"));
        assert_eq!(h[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(std::fs::read_to_string(dir.path().join("out/db.env")).unwrap(), body, "the body is the file");
        assert_eq!(call(&app, "GET", "/v1/secrets/db/PASSWORD", &[TOKEN]).await.2, "p w#1", "the value, unquoted");
        assert_eq!(call(&app, "GET", "/v1/secrets/db/PORT", &[TOKEN]).await.2, "5432");
    }

    #[tokio::test]
    async fn token_and_forwarded_requests_are_checked_before_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(dir.path(), r#"{"db": {"password": "pw-not-in-bodies"}}"#).await;
        for (headers, want) in [
            (vec![], StatusCode::UNAUTHORIZED),
            (vec![(TOKEN_HEADER, "tok2")], StatusCode::UNAUTHORIZED),
            (vec![(TOKEN_HEADER, "to")], StatusCode::UNAUTHORIZED),
            // The first token header is the one compared.
            (vec![(TOKEN_HEADER, "wrong"), TOKEN], StatusCode::UNAUTHORIZED),
            (vec![TOKEN, ("x-forwarded-for", "127.0.0.1")], StatusCode::BAD_REQUEST),
        ] {
            let (s, h, body) = call(&app, "GET", "/v1/secrets/db", &headers).await;
            assert_eq!(s, want, "{headers:?}");
            assert_eq!(h[header::CONTENT_TYPE], "application/json");
            assert!(!body.contains("pw-not-in-bodies"));
            assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string());
        }
        assert_eq!(call(&app, "GET", "/healthz", &[("x-forwarded-for", "1.2.3.4")]).await.0, StatusCode::BAD_REQUEST);
    }

    /// One layer guards everything : `X-Forwarded-For` is refused on every route, the fallbacks
    /// included, and the token is required on every path under `/v1/` — routed or not — and nowhere else.
    #[tokio::test]
    async fn the_guard_covers_every_route_and_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(dir.path(), r#"{"db": {"password": "pw-not-in-bodies"}}"#).await;
        let xff = ("x-forwarded-for", "10.0.0.1");
        for (method, uri) in [
            ("GET", "/healthz"),
            ("GET", "/metrics"),
            ("GET", "/nothing"),
            ("POST", "/healthz"),
            ("GET", "/v1/secrets"),
            ("GET", "/v1/secrets/db"),
            ("GET", "/v1/secrets/db/password"),
            ("POST", "/v1/secrets/db/refresh"),
            ("GET", "/v1/nothing-here"),
        ] {
            let (s, h, body) = call(&app, method, uri, &[TOKEN, xff]).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {uri} with X-Forwarded-For: {body}");
            assert_eq!(h[header::CACHE_CONTROL], "no-store", "{method} {uri}");
            assert!(body.contains("X-Forwarded-For"), "{method} {uri}: {body}");
        }
        for (method, uri) in [
            ("GET", "/v1/secrets"),
            ("GET", "/v1/secrets/db"),
            ("GET", "/v1/secrets/db/password"),
            ("GET", "/v1/secrets/db/refresh"),
            ("POST", "/v1/secrets/db/refresh"),
            ("GET", "/v1/nothing-here"),
            ("DELETE", "/v1/secrets/db"),
        ] {
            let (s, h, body) = call(&app, method, uri, &[]).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {uri} without a token: {body}");
            assert_eq!(h[header::CACHE_CONTROL], "no-store", "{method} {uri}");
            assert_eq!(body, r#"{"error":"missing or wrong X-Secrets-Sidecar-Token"}"#);
        }
        for (uri, want) in [
            ("/healthz", StatusCode::SERVICE_UNAVAILABLE),
            ("/metrics", StatusCode::OK),
            ("/nothing", StatusCode::NOT_FOUND),
            ("/v1", StatusCode::NOT_FOUND),
        ] {
            assert_eq!(call(&app, "GET", uri, &[]).await.0, want, "{uri} needs no token");
        }
    }

    /// Paths that dodge the `/v1/` prefix test must not reach a `/v1/` handler either.
    async fn secret_reachable_without_token(app: &edge::Routes) -> Vec<String> {
        let mut reached = Vec::new();
        for uri in [
            "/v1/secrets/db",
            "//v1/secrets/db",
            "/V1/secrets/db",
            "/%76%31/secrets/db",
            "/./v1/secrets/db",
            "/healthz/../v1/secrets/db",
            "http://127.0.0.1/v1/secrets/db",
        ] {
            let (s, _, body) = call(app, "GET", uri, &[]).await;
            if s == StatusCode::OK || body.contains("pw-not-in-bodies") {
                reached.push(format!("{uri} ({s})"));
            }
        }
        reached
    }

    #[tokio::test]
    async fn no_spelling_of_a_path_reaches_a_secret_without_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(dir.path(), r#"{"db": {"password": "pw-not-in-bodies"}}"#).await;
        assert_eq!(secret_reachable_without_token(&app).await, Vec::<String>::new());
        // Negative control: without a token (--no-token) the same probe does reach the secret.
        let dir = tempfile::tempdir().unwrap();
        let open = router_full(dir.path(), r#"{"db": {"password": "pw-not-in-bodies"}}"#, Format::Json, None).await;
        let reached = secret_reachable_without_token(&open).await;
        assert!(reached.iter().any(|r| r.starts_with("/v1/secrets/db ")), "{reached:?}");
    }

    /// Not only the handlers' errors: 405s and the router's Path/Query rejections too answer JSON with
    /// `Cache-Control: no-store` (axum's own answers are text/plain or empty).
    #[tokio::test]
    async fn every_error_is_json_and_every_answer_is_no_store() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(dir.path(), r#"{"db": {"user": "app"}}"#).await;
        for (method, uri, want) in [
            ("GET", "/v1/secrets/%ff", StatusCode::BAD_REQUEST),
            ("GET", "/v1/secrets/db?stage=AWSCURRENT&stage=AWSPENDING", StatusCode::BAD_REQUEST),
            ("GET", "/v1/secrets/db/%ff", StatusCode::BAD_REQUEST),
            ("POST", "/v1/secrets/%ff/refresh", StatusCode::BAD_REQUEST),
            ("DELETE", "/v1/secrets/db", StatusCode::METHOD_NOT_ALLOWED),
            ("POST", "/healthz", StatusCode::METHOD_NOT_ALLOWED),
            ("GET", "/nothing", StatusCode::NOT_FOUND),
            ("GET", "/v1/secrets/nope", StatusCode::NOT_FOUND),
        ] {
            let (s, h, body) = call(&app, method, uri, &[TOKEN]).await;
            assert_eq!(s, want, "{method} {uri}: {body}");
            assert_eq!(h[header::CONTENT_TYPE], "application/json", "{method} {uri}");
            assert_eq!(h[header::CACHE_CONTROL], "no-store", "{method} {uri}");
            let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(parsed["error"].is_string(), "{method} {uri}: {body}");
            assert!(!body.contains("%ff") && !body.contains("AWSPENDING"), "no echo of the request: {body}");
        }
        assert_eq!(call(&app, "DELETE", "/v1/secrets/db", &[TOKEN]).await.1[header::ALLOW], "GET,HEAD");
        for uri in ["/healthz", "/metrics", "/v1/secrets", "/v1/secrets/db", "/v1/secrets/db/user"] {
            let (s, h, _) = call(&app, "GET", uri, &[TOKEN]).await;
            assert_eq!(h[header::CACHE_CONTROL], "no-store", "{uri} ({s})");
        }
    }

    type Headers = &'static [(&'static str, &'static str)];

    /// Requests near the fast path's edge: the ones it answers and the ones it must leave to the router.
    const NEAR_THE_FAST_PATH: &[(&str, &str, Headers)] = &[
        ("GET", "/v1/secrets/db", &[TOKEN]),
        ("GET", "/v1/secrets/db", &[TOKEN, ("if-none-match", "*")]),
        ("GET", "/v1/secrets/db", &[TOKEN, ("if-none-match", "\"other\"")]),
        ("GET", "/v1/secrets/db", &[]),
        ("GET", "/v1/secrets/db", &[(TOKEN_HEADER, "to")]),
        ("GET", "/v1/secrets/db", &[TOKEN, ("x-forwarded-for", "10.0.0.1")]),
        ("GET", "/v1/secrets/db?stage=AWSCURRENT", &[TOKEN]),
        ("GET", "/v1/secrets/db?stage=AWSPENDING", &[TOKEN]),
        ("GET", "/v1/secrets/db?", &[TOKEN]),
        ("GET", "/v1/secrets/%64b", &[TOKEN]),
        ("GET", "/v1/secrets/db/", &[TOKEN]),
        ("GET", "/v1/secrets/db/user", &[TOKEN]),
        ("GET", "/v1/secrets/later", &[TOKEN]),
        ("GET", "/v1/secrets/nope", &[TOKEN]),
        ("GET", "/v1/secrets/", &[TOKEN]),
        ("GET", "http://127.0.0.1/v1/secrets/db", &[TOKEN]),
        ("HEAD", "/v1/secrets/db", &[TOKEN]),
        ("POST", "/v1/secrets/db", &[TOKEN]),
    ];

    /// Every request to the router.
    struct Declines;

    impl edge::FastPath for Declines {
        fn answer(&self, _: &Method, _: &Uri, _: &HeaderMap) -> Option<hyper::Response<Full<Bytes>>> {
            None
        }
    }

    /// `routes` served by the sidecar's own listener on a loopback port.
    async fn listening(routes: edge::Routes) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(edge::serve(listener, routes, edge::Limits::default(), shutdown));
        addr
    }

    /// What a client receives for one request: the status line, the header lines sorted (their order
    /// carries no meaning, and hyper puts its own `connection` and `content-length` where it likes) but for
    /// `date` (hyper's clock), and the body.
    async fn on_the_wire(addr: std::net::SocketAddr, method: &str, uri: &str, headers: Headers) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut req = format!("{method} {uri} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("Connection: close\r\n\r\n");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8(answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
        let (status, fields) = head.split_once("\r\n").unwrap_or((head, ""));
        let mut fields: Vec<&str> = fields.split("\r\n").filter(|l| !l.starts_with("date: ")).collect();
        fields.sort_unstable();
        format!("{status}\r\n{}\r\n\r\n{body}", fields.join("\r\n"))
    }

    /// Where the answers of `routes` (fast path, then router) differ on the wire from the router's alone,
    /// over [`NEAR_THE_FAST_PATH`]; and how many the fast path answered.
    async fn differences(routes: edge::Routes, router: Router, fast: &dyn edge::FastPath) -> (Vec<String>, usize) {
        let both = listening(routes).await;
        let alone = listening(edge::Routes::new(router, Declines)).await;
        let (mut differ, mut fast_answers) = (Vec::new(), 0);
        for (method, uri, headers) in NEAR_THE_FAST_PATH {
            let mut probe = Request::builder().method(*method).uri(*uri);
            for (k, v) in *headers {
                probe = probe.header(*k, *v);
            }
            let probe = probe.body(()).unwrap();
            fast_answers += usize::from(fast.answer(probe.method(), probe.uri(), probe.headers()).is_some());
            let (ours, routers) =
                (on_the_wire(both, method, uri, headers).await, on_the_wire(alone, method, uri, headers).await);
            if ours != routers {
                differ.push(format!("{method} {uri} {headers:?}: {ours:?} against the router's {routers:?}"));
            }
        }
        (differ, fast_answers)
    }

    /// The fast path answers `GET /v1/secrets/NAME` without the router. Wherever it answers, a
    /// client receives the router's answer — the status line, every header and the body, byte for byte —
    /// and it leaves the rest alone.
    #[tokio::test]
    async fn the_fast_path_answers_exactly_as_the_router_would() {
        for (format, json) in [
            (Format::Json, r#"{"db": {"user": "app", "password": "p w#1"}}"#),
            (Format::Env, r#"{"db": {"user": "app", "password": "p w#1"}}"#),
            (Format::Raw, r#"{"db": "raw bytes"}"#),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let state = Arc::new(state(dir.path(), json, format, Some("tok")).await);
            let routes = app_from(state.clone());
            let (differ, fast_answers) = differences(routes, super::router(state.clone()), &FastRead(state)).await;
            assert_eq!(differ, Vec::<String>::new(), "{format:?}");
            // GET with the token, plain or conditional (200, 304, 200), and in absolute form.
            assert_eq!(fast_answers, 4, "{format:?}");
        }
    }

    /// Negative control for the test above: a fast path that leaves out one header is caught.
    #[tokio::test]
    async fn a_fast_path_that_differs_from_the_router_is_caught() {
        struct WithoutNoStore(FastRead);
        impl edge::FastPath for WithoutNoStore {
            fn answer(&self, m: &Method, u: &Uri, h: &HeaderMap) -> Option<hyper::Response<Full<Bytes>>> {
                let mut res = self.0.answer(m, u, h)?;
                res.headers_mut().remove(header::CACHE_CONTROL);
                Some(res)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(state(dir.path(), r#"{"db": {"user": "app"}}"#, Format::Json, Some("tok")).await);
        let careless = edge::Routes::new(super::router(state.clone()), WithoutNoStore(FastRead(state.clone())));
        let (differ, _) = differences(careless, super::router(state.clone()), &FastRead(state)).await;
        assert_eq!(differ.len(), 4, "{differ:#?}");
    }

    #[test]
    fn if_none_match_handles_lists_weak_tags_and_star() {
        let (v1, v2) = (HeaderValue::from_static("\"v1\""), HeaderValue::from_static("\"v2\""));
        let mut h = HeaderMap::new();
        assert!(!if_none_match(&h, &v1));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"v0\", W/\"v1\""));
        assert!(if_none_match(&h, &v1));
        assert!(!if_none_match(&h, &v2));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(if_none_match(&h, &v2));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"v0\""));
        h.append(header::IF_NONE_MATCH, HeaderValue::from_static(" \"v2\" ,\"v3\""));
        assert!(if_none_match(&h, &v2), "in a second header, with spaces");
        assert!(!if_none_match(&h, &HeaderValue::from_static("\"v\"")), "a prefix is not a match");
    }
}
