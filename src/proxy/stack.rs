//! The tower stack every agent request passes through on its way to the pipeline, outermost
//! first:
//!
//! 1. [`Outer`] (ours): gives the request its id and error dialect, opens its tracing span,
//!    and turns what the layers below refuse with (load shedding, the backstop timeout) into a
//!    refusal in the agent's own format, counted and audited like the pipeline's own;
//! 2. sensitive headers (tower-http): credentials are marked so no debug print or trace
//!    shows them;
//! 3. the backstop timeout (tower): the pipeline enforces the request timeout itself so it
//!    can record the outcome; this catches anything that outlives it by a margin;
//! 4. load shedding (tower) over 5. one concurrency limit shared by every listener (tower's
//!    global limit): a request that finds no free slot is refused at once rather than
//!    queued, so overload shows as fast 503s instead of growing latency;
//! 6. the pipeline.
//!
//! The body limit is not a layer here: it depends on the target (S3 uploads stream past it,
//! bound by their certified hash), and its 413 must let the upload drain first so the agent
//! can read it (`proxy::body`); tower-http's limit answers a bare 413 for every request alike.

use super::pipeline::{self, ConnInfo, RequestContext};
use super::Broker;
use crate::denial::{Denial, Reason};
use crate::targets::Target;
use crate::upstream::{Body, BoxError};
use bytes::Bytes;
use http::{Request, Response};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Service, ServiceBuilder, ServiceExt};
use tracing::Instrument;

pub type BoxedResponse = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// The headers whose values never appear in a debug print or trace.
const SENSITIVE: [http::HeaderName; 5] = [
    http::header::AUTHORIZATION,
    http::header::PROXY_AUTHORIZATION,
    http::header::COOKIE,
    http::HeaderName::from_static("x-amz-security-token"),
    http::HeaderName::from_static(crate::targets::headers::AGENT_TOKEN_HEADER),
];

/// The stack for one connection's requests.
pub fn build<T: Target, B>(
    broker: Arc<Broker>,
    target: Arc<T>,
    conn: Arc<ConnInfo>,
    request_timeout: Duration,
    concurrency: Arc<tokio::sync::Semaphore>,
) -> Outer<
    T,
    impl Service<Request<B>, Response = Response<Body>, Error = BoxError, Future: Send> + Clone,
>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (b, t, c) = (broker.clone(), target.clone(), conn.clone());
    let pipeline = tower::service_fn(move |req: Request<B>| {
        let (broker, target, conn) = (b.clone(), t.clone(), c.clone());
        // Boxed: the pipeline's future is large, and unboxed it would sit inline in every
        // layer's future above it.
        let fut: Pin<Box<dyn Future<Output = Response<Body>> + Send>> =
            Box::pin(pipeline::handle(broker, target, req, conn));
        async move { Ok::<_, BoxError>(fut.await) }
    });
    let inner = ServiceBuilder::new()
        .layer(tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer::new(SENSITIVE))
        .layer(tower::timeout::TimeoutLayer::new(
            request_timeout + Duration::from_secs(1),
        ))
        .layer(tower::load_shed::LoadShedLayer::new())
        .layer(tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(
            concurrency,
        ))
        .service(pipeline);
    Outer {
        inner,
        broker,
        target,
        conn,
    }
}

pub struct Outer<T, S> {
    inner: S,
    broker: Arc<Broker>,
    target: Arc<T>,
    conn: Arc<ConnInfo>,
}

// By hand: derived Clone would ask `T: Clone`, and the target is shared, not copied.
impl<T, S: Clone> Clone for Outer<T, S> {
    fn clone(&self) -> Self {
        Outer {
            inner: self.inner.clone(),
            broker: self.broker.clone(),
            target: self.target.clone(),
            conn: self.conn.clone(),
        }
    }
}

impl<T: Target, S, B> Service<Request<B>> for Outer<T, S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxedResponse;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is the load shedder's to judge, per request, below.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> BoxedResponse {
        let (mut parts, body) = req.into_parts();
        let dialect = self.target.error_dialect(&parts);
        let id = self.broker.next_request_id();
        let about = pipeline::describe(&id, &*self.target, &parts);
        let trace = self.broker.tracing.start(&parts.headers, about);
        let ctx = RequestContext::traced(id, dialect, trace);
        parts.extensions.insert(ctx.clone());
        let span = tracing::debug_span!("request", id = %ctx.id, target = self.target.name(), method = %parts.method, path = parts.uri.path());
        let line = (parts.method.clone(), parts.uri.path_and_query().cloned());
        let answer = self.inner.clone().oneshot(Request::from_parts(parts, body));
        let (broker, target, conn) = (self.broker.clone(), self.target.clone(), self.conn.clone());
        Box::pin(
            async move {
                let e = match answer.await {
                    Ok(resp) => return Ok(resp),
                    Err(e) => e,
                };
                let denial = if e.is::<tower::load_shed::error::Overloaded>() {
                    Denial::new(
                        Reason::Overloaded,
                        "the broker is at its concurrency limit (limits.max_concurrent_requests); retry shortly",
                    )
                } else if e.is::<tower::timeout::error::Elapsed>() {
                    Denial::new(
                        Reason::UpstreamError,
                        "the request did not complete within limits.request_timeout",
                    )
                    .in_own_words()
                    .with_status(http::StatusCode::GATEWAY_TIMEOUT)
                } else {
                    Denial::new(Reason::UpstreamError, format!("the request failed: {e}"))
                };
                let mut resp = pipeline::refused_around(
                    &broker,
                    &*target,
                    &ctx,
                    (&line.0, line.1.as_ref()),
                    &conn,
                    denial,
                );
                if e.is::<tower::load_shed::error::Overloaded>() {
                    resp.headers_mut().insert(
                        http::header::RETRY_AFTER,
                        http::HeaderValue::from_static("1"),
                    );
                }
                Ok(resp)
            }
            .instrument(span),
        )
    }
}
