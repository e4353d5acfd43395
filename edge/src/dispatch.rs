//! One request: the fast path first, the router for everything the fast path declines.
//!
//! The fast path answers from memory and is not a second API: it declines every request it is not sure
//! of (another method, a query, a refusal, an error), and the router answers those with its layers —
//! the sidecar tests that both give the same answer, byte for byte, wherever the fast path answers
//! (`src/http.rs`). Against the router alone for the same GET, the fast path saves the router's clone of
//! a boxed route, its path and query extractors and their allocations, and the boxed response body.
//!
//! Each connection's [`Connection`] also counts what it has been asked, for [`mod@crate::serve`]'s idle check: a
//! count and a flag, not a timer per request.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use axum::Router;
use axum::http::{HeaderMap, Method, Request, Response, Uri};
use futures_util::future::Either;
use http_body_util::Full;
use hyper::body::Bytes;
use tower::ServiceExt;

/// The body of every answer: a fast answer's bytes, or whatever the router's handler made.
pub type Body = http_body_util::Either<Full<Bytes>, axum::body::Body>;

/// Answers the requests that must cost least, or declines them.
pub trait FastPath: Send + Sync + 'static {
    /// The whole answer — status, every header the router's layers would have set, body — or `None` to
    /// let the router answer. Runs on the connection's task: a memory read, never a wait.
    fn answer(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Response<Full<Bytes>>>;
}

/// Everything the server answers with; cloned per connection (two `Arc`s).
#[derive(Clone)]
pub struct Routes {
    fast: Arc<dyn FastPath>,
    router: Router,
}

impl Routes {
    pub fn new(router: Router, fast: impl FastPath) -> Self {
        Routes { fast: Arc::new(fast), router }
    }

    /// The service of one connection, with activity counters of its own.
    pub fn connection(&self) -> Connection {
        Connection { routes: self.clone(), activity: Arc::default() }
    }
}

/// One connection's service: hyper calls it with each request head it reads.
pub struct Connection {
    routes: Routes,
    activity: Arc<Activity>,
}

impl Connection {
    pub(crate) fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }
}

/// What a connection has been asked, as the idle check reads it. Written by one task; atomics only because
/// the service must be `Send`.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Request heads received.
    heads: AtomicU64,
    /// Routed requests whose answer is not ready yet (a forced refresh waits on Secrets Manager).
    routed: AtomicUsize,
}

impl Activity {
    pub(crate) fn heads(&self) -> u64 {
        self.heads.load(Ordering::Relaxed)
    }

    pub(crate) fn answering(&self) -> bool {
        self.routed.load(Ordering::Relaxed) > 0
    }
}

/// Marks a routed request as in progress until it is dropped: answered, or abandoned by hyper.
struct Answering(Arc<Activity>);

impl Answering {
    fn new(activity: Arc<Activity>) -> Self {
        activity.routed.fetch_add(1, Ordering::Relaxed);
        Answering(activity)
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.routed.fetch_sub(1, Ordering::Relaxed);
    }
}

type Answered = Result<Response<Body>, Infallible>;
/// A routed answer: boxed, which costs one allocation on the path that is not the fast one.
type Routed = Pin<Box<dyn Future<Output = Answered> + Send>>;

impl<B> hyper::service::Service<Request<B>> for Connection
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<Ready<Answered>, Routed>;

    fn call(&self, req: Request<B>) -> Self::Future {
        self.activity.heads.fetch_add(1, Ordering::Relaxed);
        if let Some(res) = self.routes.fast.answer(req.method(), req.uri(), req.headers()) {
            return Either::Left(ready(Ok(res.map(Body::Left))));
        }
        let answering = Answering::new(self.activity.clone());
        let routed = self.routes.router.clone().oneshot(req);
        Either::Right(Box::pin(async move {
            let res = routed.await?;
            drop(answering);
            Ok(res.map(Body::Right))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use hyper::service::Service;

    /// Answers `GET /fast` only.
    struct OnlyFast;

    impl FastPath for OnlyFast {
        fn answer(&self, method: &Method, uri: &Uri, _: &HeaderMap) -> Option<Response<Full<Bytes>>> {
            (method == Method::GET && uri.path() == "/fast").then(|| Response::new(Full::from("from the fast path")))
        }
    }

    fn routes() -> Routes {
        let router = Router::new()
            .route("/fast", get(|| async { "from the router" }))
            .route("/slow", get(|| async { "from the router" }));
        Routes::new(router, OnlyFast)
    }

    async fn body(res: Response<Body>) -> String {
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    fn request(method: Method, uri: &str) -> Request<Full<Bytes>> {
        Request::builder().method(method).uri(uri).body(Full::default()).unwrap()
    }

    #[tokio::test]
    async fn the_fast_path_answers_what_it_takes_and_the_router_the_rest() {
        let edge = routes().connection();
        assert_eq!(body(edge.call(request(Method::GET, "/fast")).await.unwrap()).await, "from the fast path");
        assert_eq!(body(edge.call(request(Method::GET, "/slow")).await.unwrap()).await, "from the router");
        let res = edge.call(request(Method::POST, "/fast")).await.unwrap();
        assert_eq!(res.status(), 405, "declined by the fast path, answered by the router");
        assert_eq!(edge.activity.heads(), 3);
    }

    #[tokio::test]
    async fn a_routed_request_counts_as_answering_until_its_answer_is_ready_or_dropped() {
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let wait = Arc::new(tokio::sync::Mutex::new(Some(wait)));
        let router = Router::new().route(
            "/slow",
            get(move || {
                let wait = wait.clone();
                async move {
                    let rx = wait.lock().await.take().unwrap();
                    let _ = rx.await;
                    "done"
                }
            }),
        );
        let edge = Routes::new(router, OnlyFast).connection();
        let pending = tokio::spawn(edge.call(request(Method::GET, "/slow")));
        tokio::task::yield_now().await;
        assert!(edge.activity.answering());
        release.send(()).unwrap();
        assert_eq!(body(pending.await.unwrap().unwrap()).await, "done");
        assert!(!edge.activity.answering());
        // Abandoned (hyper drops the future when the client goes away): no longer answering either.
        drop(edge.call(request(Method::GET, "/slow")));
        assert!(!edge.activity.answering());
        // The fast path never counts as answering: its answer is ready when the call returns.
        drop(edge.call(request(Method::GET, "/fast")));
        assert_eq!((edge.activity.heads(), edge.activity.answering()), (3, false));
    }
}
