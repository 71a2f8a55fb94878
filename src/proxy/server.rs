//! Accept loop and the tower stack each request passes through before the pipeline: a
//! timeout to response headers (a streaming response body is not cut by it) and load shedding
//! over one concurrency limit shared by all listeners. The tracing span is opened by the
//! pipeline itself, where the request id and target are known. (tower-http's TraceLayer was
//! tried and dropped: over our boxed body type it makes the connection future's `Send` bound
//! unprovable for the compiler.)
//!
//! Connection hygiene lives here too: the limit on agent connections (over it, a short
//! refusal in the target's error format, then close), the TLS handshake and request-head
//! timeout, the idle timeout, and the drain on shutdown. hyper's own `header_read_timeout`
//! is not used: its timer also runs while a keep-alive connection waits for its next
//! request, so it cannot be told apart from the idle timeout, and it does not cover the
//! bytes hyper-util's protocol detection reads before the first request.

use super::head;
use super::lifecycle::{Admit, ConnGuard, Connections, RefusalGuard, RequestGuard};
use super::pipeline::{self, ConnInfo};
use super::Broker;
use crate::denial::{Denial, Reason};
use crate::targets::Target;
use crate::upstream::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tower::ServiceBuilder;

#[derive(Clone)]
pub struct StackLimits {
    pub request_timeout: Duration,
    pub concurrency: Arc<tokio::sync::Semaphore>,
    /// For the TLS handshake, for the first request to begin, and for a request's head once
    /// its first byte has come.
    pub header_read_timeout: Duration,
    /// A connection without a request in progress for this long is closed.
    pub idle_timeout: Duration,
}

/// The TLS configuration new connections are accepted with; a reload swaps it, and
/// connections already open keep the one they started with.
pub type TlsSlot = Arc<arc_swap::ArcSwap<rustls::ServerConfig>>;

// Boxed as `dyn Future + Send` so the compiler checks Send at one concrete type instead of
// failing to prove it for every lifetime inside the pipeline.
type BoxedResponse =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// HTTP/2 pings find agents that went away without closing (a long watch to a dead peer).
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// An accepted socket's place: served, or answered with a refusal and closed. The guards are
/// never read: they count the socket until they are dropped with it.
enum Slot {
    Serve(#[allow(dead_code)] ConnGuard),
    Refuse(#[allow(dead_code)] RefusalGuard),
}

pub async fn serve(
    broker: Arc<Broker>,
    target: Arc<Target>,
    listener: TcpListener,
    tls: Option<TlsSlot>,
    limits: StackLimits,
    shards: Option<Arc<super::shards::Shards>>,
) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning. The connection limit is
                // sized below the file limit, so this means something else holds files.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match broker.connections.admit() {
            Admit::Serve(g) => Slot::Serve(g),
            Admit::Refuse(g) => {
                tracing::debug!(%remote, max = broker.connections.max(), "connection limit reached; refusing");
                Slot::Refuse(g)
            }
            Admit::Drop => {
                tracing::debug!(%remote, "connection limit reached and refusals busy; closed unanswered");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (broker, target, tls, limits) =
            (broker.clone(), target.clone(), tls.clone(), limits.clone());
        let Some(shards) = &shards else {
            tokio::spawn(accept_one(tcp, remote, tls, broker, target, limits, slot));
            continue;
        };
        // The socket leaves this event loop and joins the shard's when first polled there.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(%remote, error = %e, "could not hand the connection to a shard");
                continue;
            }
        };
        let handed = shards.spawn(async move {
            match tokio::net::TcpStream::from_std(tcp) {
                Ok(tcp) => accept_one(tcp, remote, tls, broker, target, limits, slot).await,
                Err(e) => {
                    tracing::warn!(%remote, error = %e, "shard could not take the connection")
                }
            }
        });
        if !handed {
            tracing::error!(%remote, "connection shard has stopped; connection closed");
        }
    }
}

async fn accept_one(
    tcp: tokio::net::TcpStream,
    remote: std::net::SocketAddr,
    tls: Option<TlsSlot>,
    broker: Arc<Broker>,
    target: Arc<Target>,
    limits: StackLimits,
    slot: Slot,
) {
    let refusing = matches!(slot, Slot::Refuse(_));
    let serving = async {
        match tls {
            Some(config) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(config.load_full());
                let stream =
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    };
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let peer = crate::tls::peer_identity(stream.get_ref().1.peer_certificates());
                serve_connection(
                    stream,
                    h2,
                    ConnInfo { remote, peer },
                    broker,
                    target,
                    &limits,
                    refusing,
                )
                .await;
            }
            None => {
                serve_connection(
                    tcp,
                    false,
                    ConnInfo { remote, peer: None },
                    broker,
                    target,
                    &limits,
                    refusing,
                )
                .await
            }
        }
    };
    if refusing {
        // A refusal is one short answer; it must not hold its slot longer than that.
        let _ = tokio::time::timeout(limits.header_read_timeout * 2, serving).await;
    } else {
        serving.await;
    }
    drop(slot);
}

async fn serve_connection<S>(
    stream: S,
    h2: bool,
    conn: ConnInfo,
    broker: Arc<Broker>,
    target: Arc<Target>,
    limits: &StackLimits,
    refusing: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new(h2, broker.connections.clone());
    let io = TokioIo::new(head::Gate::new(
        Watched {
            inner: stream,
            activity: activity.clone(),
        },
        h2,
        head_refusal(target.clone(), broker.clone()),
        activity.clone(),
    ));
    let remote = conn.remote;
    let conn = Arc::new(conn);
    // A backstop only: the pipeline enforces the request timeout itself so that it can record
    // the outcome; this catches anything that outlives it by a margin.
    let timeout = limits.request_timeout + Duration::from_secs(1);
    let concurrency = limits.concurrency.clone();
    let for_requests = activity.clone();
    let handler = tower::service_fn(move |req: Request<Incoming>| -> BoxedResponse {
        // Held until the response body has been sent: until then the connection is busy,
        // not idle, and a drain waits for it.
        let busy = for_requests.begin(req.version() == http::Version::HTTP_2);
        if refusing {
            let (parts, _) = req.into_parts();
            let dialect = target.error_dialect(&parts);
            let resp = connection_limit(&target, &broker, dialect);
            return Box::pin(std::future::ready(Ok(busy.track(resp))));
        }
        // Load shedding: a request that finds no free slot is refused at once rather than
        // queued, so overload shows up as fast 503s instead of growing latency.
        let Ok(permit) = concurrency.clone().try_acquire_owned() else {
            let (parts, _) = req.into_parts();
            let dialect = target.error_dialect(&parts);
            let resp = overloaded(&target, &broker, dialect);
            return Box::pin(std::future::ready(Ok(busy.track(resp))));
        };
        // The pipeline's future is made inside the block: an async block that awaits a
        // future it captured keeps room for it twice, and this one is ~6 KiB, boxed per request.
        let (broker, target, conn) = (broker.clone(), target.clone(), conn.clone());
        Box::pin(async move {
            let resp = pipeline::handle(broker, target, req, conn).await;
            drop(permit);
            Ok(busy.track(resp))
        })
    });
    let stack = ServiceBuilder::new()
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            http::StatusCode::GATEWAY_TIMEOUT,
            timeout,
        ))
        .service(handler);
    let service = TowerToHyperService::new(stack);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    if refusing {
        builder.http1().keep_alive(false);
    }
    let served = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(served);
    let mut drain = activity.connections.drain_signal();
    // Set once the connection was asked to close (idle, or the process drains): hyper
    // finishes the responses in progress (HTTP/1.1: without keep-alive; HTTP/2: after a
    // GOAWAY, so the agent opens no new stream here) and then closes.
    let mut closing = false;
    // An idle connection asked to close that has not within this deadline is cut.
    let mut cut_at: Option<tokio::time::Instant> = None;
    loop {
        let next = match (cut_at, activity.deadline(limits)) {
            (Some(cut), _) => cut,
            (None, Some((at, _))) => at,
            // Busy: looked at again after a while, by when the request may have ended.
            (None, None) => tokio::time::Instant::now() + limits.idle_timeout,
        };
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = drain.wait_for(|d| *d), if !closing => {
                served.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep_until(next) => {
                let now = tokio::time::Instant::now();
                if cut_at.is_some_and(|c| c <= now) {
                    tracing::debug!(%remote, "connection did not close when asked; cut");
                    return;
                }
                match activity.deadline(limits) {
                    Some((at, Expiry::Head)) if at <= now => {
                        tracing::debug!(%remote, "request head not received within limits.header_read_timeout; closed");
                        return;
                    }
                    Some((at, Expiry::Idle)) if at <= now && !closing => {
                        tracing::debug!(%remote, "idle connection closed");
                        served.as_mut().graceful_shutdown();
                        closing = true;
                        cut_at = Some(now + limits.header_read_timeout);
                    }
                    _ => {}
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expiry {
    /// Nothing in progress for too long: close politely.
    Idle,
    /// Bytes of a request head arrived, but not the whole head in time: cut.
    Head,
}

/// What a connection is doing, as seen by its socket and its service: whether a request is
/// in progress, since when it has been idle, and whether a request head has begun.
/// Times are milliseconds since the connection was set up (after the TLS handshake).
struct Activity {
    base: tokio::time::Instant,
    active: AtomicUsize,
    idle_since: AtomicU64,
    /// 1 + the time the first byte came after the connection went idle; 0: none yet.
    first_byte: AtomicU64,
    served: AtomicBool,
    /// HTTP/2 reads frames (pings, settings, window updates) that start no request, so a
    /// read is no sign of a request head; only the idle timeout applies.
    h2: AtomicBool,
    connections: Arc<Connections>,
    /// Requests whose response has been sent (or dropped).
    finished: AtomicU64,
    /// The gate waiting to answer a refused head once the responses before it are sent.
    waiting: AtomicBool,
    waiter: std::sync::Mutex<Option<std::task::Waker>>,
}

impl Activity {
    fn new(h2: bool, connections: Arc<Connections>) -> Arc<Activity> {
        Arc::new(Activity {
            base: tokio::time::Instant::now(),
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            first_byte: AtomicU64::new(0),
            served: AtomicBool::new(false),
            h2: AtomicBool::new(h2),
            connections,
            finished: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            waiter: std::sync::Mutex::new(None),
        })
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> tokio::time::Instant {
        self.base + Duration::from_millis(ms)
    }

    fn on_read(&self) {
        if self.active.load(Ordering::Relaxed) == 0 && self.first_byte.load(Ordering::Relaxed) == 0
        {
            self.first_byte.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    fn begin(self: &Arc<Self>, h2: bool) -> Busy {
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.served.store(true, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::AcqRel);
        Busy {
            activity: self.clone(),
            _request: self.connections.request(),
        }
    }

    /// When the connection expires, and why; None while a request is in progress.
    fn deadline(&self, limits: &StackLimits) -> Option<(tokio::time::Instant, Expiry)> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let header = limits.header_read_timeout.as_millis() as u64;
        let first_byte = self.first_byte.load(Ordering::Acquire);
        if first_byte != 0 && !self.h2.load(Ordering::Relaxed) {
            return Some((self.at(first_byte - 1 + header), Expiry::Head));
        }
        let idle_since = self.idle_since.load(Ordering::Acquire);
        // The first request is due as promptly as a head: an agent connects to send one.
        let wait = if self.served.load(Ordering::Relaxed) {
            limits.idle_timeout.as_millis() as u64
        } else {
            header
        };
        Some((self.at(idle_since + wait), Expiry::Idle))
    }
}

/// A request in progress on a connection.
struct Busy {
    activity: Arc<Activity>,
    _request: RequestGuard,
}

impl Busy {
    /// The response, whose body keeps the connection busy until it is sent or dropped.
    fn track(self, resp: Response<Body>) -> Response<Body> {
        resp.map(|inner| Tracked { inner, _busy: self }.boxed())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.activity;
        if a.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.first_byte.store(0, Ordering::Release);
            a.idle_since.store(a.now_ms(), Ordering::Release);
        }
        // SeqCst here and in `quiet`: each side writes one flag and then reads the other's,
        // and only a total order guarantees one of them sees the other.
        a.finished.fetch_add(1, Ordering::SeqCst);
        if a.waiting.load(Ordering::SeqCst) {
            if let Some(w) = a.waiter.lock().unwrap_or_else(|e| e.into_inner()).take() {
                w.wake();
            }
        }
    }
}

impl head::Quiet for Activity {
    fn quiet(&self, heads: u64, waker: &std::task::Waker) -> bool {
        if self.finished.load(Ordering::SeqCst) >= heads {
            return true;
        }
        *self.waiter.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker.clone());
        self.waiting.store(true, Ordering::SeqCst);
        // A response that finished between the first look and the waker's registration
        // woke nobody: look again.
        self.finished.load(Ordering::SeqCst) >= heads
    }
}

/// How the gate answers a refused request head: in the target's own error format, counted
/// like any refusal.
fn head_refusal(target: Arc<Target>, broker: Arc<Broker>) -> head::Render {
    Arc::new(move |refusal: head::Refusal| {
        let parts = refusal
            .parts
            .unwrap_or_else(|| Request::new(()).into_parts().0);
        let dialect = target.error_dialect(&parts);
        let request_id = broker.next_request_id();
        tracing::info!(
            target = target.name(),
            request_id = %request_id,
            status = %refusal.status,
            message = %refusal.message,
            "request head refused"
        );
        broker.metrics.count(
            target.name(),
            super::metrics::Decision::Deny,
            Some(Reason::RequestMalformed),
        );
        let denial =
            Denial::new(Reason::RequestMalformed, refusal.message).with_status(refusal.status);
        head::serialize(target.render_denial(&denial, dialect, &request_id))
    })
}

struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = crate::upstream::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The agent's socket (after TLS), noting when bytes arrive while no request is in progress:
/// the start of a request head, which must then be complete within the header timeout.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.on_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The answer on a connection accepted over `limits.max_connections`.
fn connection_limit(
    target: &Target,
    broker: &Broker,
    dialect: crate::targets::ErrorDialect,
) -> Response<Body> {
    let denial = Denial::new(
        Reason::Overloaded,
        format!(
            "the broker is at its connection limit ({} agent connections, limits.max_connections); retry shortly",
            broker.connections.max()
        ),
    );
    broker.metrics.count(
        target.name(),
        super::metrics::Decision::Deny,
        Some(Reason::Overloaded),
    );
    let mut resp = target.render_denial(&denial, dialect, "");
    resp.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    resp
}

fn overloaded(
    target: &Target,
    broker: &Broker,
    dialect: crate::targets::ErrorDialect,
) -> Response<Body> {
    let denial = Denial::new(
        Reason::Overloaded,
        "the broker is at its concurrency limit; retry shortly",
    );
    broker.metrics.count(
        target.name(),
        super::metrics::Decision::Deny,
        Some(Reason::Overloaded),
    );
    let mut resp = target.render_denial(&denial, dialect, "");
    resp.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> StackLimits {
        StackLimits {
            request_timeout: Duration::from_secs(30),
            concurrency: Arc::new(tokio::sync::Semaphore::new(1)),
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
        }
    }

    fn due(a: &Activity) -> Option<(Duration, Expiry)> {
        a.deadline(&limits()).map(|(at, why)| (at - a.base, why))
    }

    #[test]
    fn a_new_connection_owes_its_first_request_within_the_header_timeout() {
        let a = Activity::new(false, Connections::new(1));
        assert_eq!(due(&a), Some((Duration::from_secs(5), Expiry::Idle)));
    }

    #[test]
    fn a_request_in_progress_has_no_deadline_and_then_the_idle_timeout_runs() {
        let a = Activity::new(false, Connections::new(1));
        let busy = a.begin(false);
        a.on_read();
        assert_eq!(due(&a), None, "reads while busy are the request's own");
        assert_eq!(a.connections.requests_in_flight(), 1);
        drop(busy);
        let (at, why) = due(&a).unwrap();
        assert_eq!(why, Expiry::Idle);
        assert!(at >= Duration::from_secs(60), "{at:?}");
        assert_eq!(a.connections.requests_in_flight(), 0);
    }

    #[test]
    fn bytes_of_a_head_on_an_idle_connection_start_the_header_timeout() {
        let a = Activity::new(false, Connections::new(1));
        drop(a.begin(false));
        a.on_read();
        let (at, why) = due(&a).unwrap();
        assert_eq!(why, Expiry::Head);
        assert!(at < Duration::from_secs(60), "{at:?}");
        // HTTP/2 reads frames that begin no request: only the idle timeout applies.
        let h2 = Activity::new(true, Connections::new(1));
        drop(h2.begin(true));
        h2.on_read();
        assert_eq!(due(&h2).map(|d| d.1), Some(Expiry::Idle));
    }
}
