//! Accept loop and the tower stack each request passes through before the pipeline: a
//! timeout to response headers (a streaming response body is not cut by it) and load shedding
//! over one concurrency limit shared by all listeners. The tracing span is opened by the
//! pipeline itself, where the request id and target are known. (tower-http's TraceLayer was
//! tried and dropped: over our boxed body type it makes the connection future's `Send` bound
//! unprovable for the compiler.)

use super::forward::Body;
use super::pipeline::{self, ConnInfo};
use super::Broker;
use crate::denial::{Denial, Reason};
use crate::targets::Target;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

#[derive(Clone)]
pub struct StackLimits {
    pub request_timeout: Duration,
    pub concurrency: Arc<tokio::sync::Semaphore>,
}

// Boxed as `dyn Future + Send` so the compiler checks Send at one concrete type instead of
// failing to prove it for every lifetime inside the pipeline.
type BoxedResponse =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>>;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(
    broker: Arc<Broker>,
    target: Arc<Target>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: StackLimits,
    shards: Option<Arc<super::shards::Shards>>,
) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (broker, target, tls, limits) =
            (broker.clone(), target.clone(), tls.clone(), limits.clone());
        let Some(shards) = &shards else {
            tokio::spawn(accept_one(tcp, remote, tls, broker, target, limits));
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
                Ok(tcp) => accept_one(tcp, remote, tls, broker, target, limits).await,
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
    tls: Option<tokio_rustls::TlsAcceptor>,
    broker: Arc<Broker>,
    target: Arc<Target>,
    limits: StackLimits,
) {
    match tls {
        Some(acceptor) => {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let peer = crate::tls::peer_identity(stream.get_ref().1.peer_certificates());
            serve_connection(
                TokioIo::new(stream),
                ConnInfo { remote, peer },
                broker,
                target,
                limits,
            )
            .await;
        }
        None => {
            serve_connection(
                TokioIo::new(tcp),
                ConnInfo { remote, peer: None },
                broker,
                target,
                limits,
            )
            .await
        }
    }
}

async fn serve_connection<I>(
    io: I,
    conn: ConnInfo,
    broker: Arc<Broker>,
    target: Arc<Target>,
    limits: StackLimits,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    // A backstop only: the pipeline enforces the request timeout itself so that it can record
    // the outcome; this catches anything that outlives it by a margin.
    let timeout = limits.request_timeout + Duration::from_secs(1);
    let handler = tower::service_fn(move |req: Request<Incoming>| -> BoxedResponse {
        // Load shedding: a request that finds no free slot is refused at once rather than
        // queued, so overload shows up as fast 503s instead of growing latency.
        let Ok(permit) = limits.concurrency.clone().try_acquire_owned() else {
            let (parts, _) = req.into_parts();
            let dialect = target.error_dialect(&parts);
            return Box::pin(std::future::ready(Ok(overloaded(
                &target, &broker, dialect,
            ))));
        };
        // The pipeline's future is made inside the block: an async block that awaits a
        // future it captured keeps room for it twice, and this one is ~6 KiB, boxed per request.
        let (broker, target, conn) = (broker.clone(), target.clone(), conn.clone());
        Box::pin(async move {
            let resp = pipeline::handle(broker, target, req, conn).await;
            drop(permit);
            Ok(resp)
        })
    });
    let stack = ServiceBuilder::new()
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            http::StatusCode::GATEWAY_TIMEOUT,
            timeout,
        ))
        .service(handler);
    let service = TowerToHyperService::new(stack);
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder.serve_connection_with_upgrades(io, service).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
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
