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

use super::activity::{Activity, Expiry, Watched};
use super::head;
use super::lifecycle::{Admit, ConnGuard, RefusalGuard, StackLimits};
use super::pipeline::{self, ConnInfo};
use super::stack::{self, BoxedResponse};
use super::Broker;
use crate::denial::{Denial, Reason};
use crate::targets::Target;
use crate::upstream::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// The TLS configuration new connections are accepted with; a reload swaps it, and
/// connections already open keep the one they started with.
pub type TlsSlot = Arc<arc_swap::ArcSwap<rustls::ServerConfig>>;

/// HTTP/2 pings find agents that went away without closing (a long watch to a dead peer).
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// An accepted socket's place: served, or answered with a refusal and closed. The guards are
/// never read: they count the socket until they are dropped with it.
enum Slot {
    Serve(#[allow(dead_code)] ConnGuard),
    Refuse(#[allow(dead_code)] RefusalGuard),
}

pub async fn serve<T: Target>(
    broker: Arc<Broker>,
    target: Arc<T>,
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

async fn accept_one<T: Target>(
    tcp: tokio::net::TcpStream,
    remote: std::net::SocketAddr,
    tls: Option<TlsSlot>,
    broker: Arc<Broker>,
    target: Arc<T>,
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

async fn serve_connection<T: Target, S>(
    stream: S,
    h2: bool,
    conn: ConnInfo,
    broker: Arc<Broker>,
    target: Arc<T>,
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
    let stack = stack::build(
        broker.clone(),
        target.clone(),
        conn.clone(),
        limits.request_timeout,
        limits.concurrency.clone(),
    );
    let for_requests = activity.clone();
    let handler = tower::service_fn(move |req: Request<Incoming>| -> BoxedResponse {
        // Held until the response body has been sent: until then the connection is busy,
        // not idle, and a drain waits for it.
        let busy = for_requests.begin(req.version() == http::Version::HTTP_2);
        if refusing {
            let resp = connection_limit(&*target, &broker, &conn, req);
            return Box::pin(std::future::ready(Ok(busy.track(resp))));
        }
        let answer = stack.clone().oneshot(req);
        Box::pin(async move {
            let Ok(resp) = answer.await;
            Ok(busy.track(resp))
        })
    });
    let service = TowerToHyperService::new(handler);
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

/// How the gate answers a refused request head: in the target's own error format, counted
/// like any refusal.
fn head_refusal<T: Target>(target: Arc<T>, broker: Arc<Broker>) -> head::Render {
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
        head::serialize(crate::denial::render(&denial, dialect, &request_id))
    })
}

/// The answer on a connection accepted over `limits.max_connections`: refused, recorded and
/// rendered like any refusal.
fn connection_limit<T: Target>(
    target: &T,
    broker: &Broker,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Response<Body> {
    let (parts, _) = req.into_parts();
    let ctx = pipeline::RequestContext::new(broker.next_request_id(), target.error_dialect(&parts));
    let denial = Denial::new(
        Reason::Overloaded,
        format!(
            "the broker is at its connection limit ({} agent connections, limits.max_connections); retry shortly",
            broker.connections.max()
        ),
    );
    let line = (&parts.method, parts.uri.path_and_query());
    let mut resp = pipeline::refused_around(broker, target, &ctx, line, conn, denial);
    resp.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    resp
}
