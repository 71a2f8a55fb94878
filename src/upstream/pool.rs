//! HTTP/1.1 connections to upstreams, each driven by the task of the request that uses it.
//!
//! hyper-util's pooled client runs every upstream connection as a task of its own, so a
//! forwarded request hops from the agent connection's task to the upstream connection's task
//! and back: two wake-ups per request, often across worker threads (a futex wake and, on a
//! virtual machine, an inter-processor interrupt). On the 2-core load test machine those hops
//! were most of the broker's added latency on a plain pass-through (docs/performance.md). Here
//! the request's own task writes the request and reads the answer, and the response body
//! keeps driving the connection while the agent reads it; a connection whose response was read
//! to the end goes back to the idle list for the next request to the same upstream.
//!
//! HTTP/1.1 only: one request per connection at a time is what makes driving it from the
//! request's task possible. Protocol upgrades (kubernetes exec) stay on hyper-util's client,
//! which keeps the connection alive past the 101 answer.

use super::body::{BoxError, NeverSent, UpstreamBody};
use http::{Request, Response, Uri};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use sync_wrapper::SyncWrapper;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// An idle connection older than this is closed rather than reused: upstreams close idle
/// keep-alive connections after their own timeout, and a request sent on a connection the
/// upstream is closing at that moment fails.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream; more concurrent requests than this open connections
/// that are closed after use.
const MAX_IDLE_PER_UPSTREAM: usize = 256;

/// Idle connections are kept per thread: a tokio socket stays registered with the event loop
/// it was opened on, and on a connection shard (`shards.rs`) that loop is the thread's own, so a
/// connection reused on another shard would have its events delivered across threads.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Key {
    thread: std::thread::ThreadId,
    tls: bool,
    host: String,
    port: u16,
}

impl Key {
    fn of(uri: &Uri) -> Result<Key, BoxError> {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => {
                return Err(format!("upstream URI scheme {other:?} is not http or https").into())
            }
        };
        let host = uri.host().ok_or("upstream URI has no host")?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Key {
            thread: std::thread::current().id(),
            tls,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        })
    }
}

type Connection = http1::Connection<TokioIo<Stream>, UpstreamBody>;

struct Conn {
    tx: SendRequest<UpstreamBody>,
    // Boxed so a connection can move between the idle list and request tasks while pinned.
    conn: Pin<Box<Connection>>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

pub struct Pool {
    tls: tokio_rustls::TlsConnector,
    idle: Arc<Mutex<HashMap<Key, Vec<Idle>>>>,
}

impl Pool {
    /// `tls`: the client configuration for https upstreams; ALPN is narrowed to HTTP/1.1.
    pub fn new(tls: &rustls::ClientConfig) -> Pool {
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Pool {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            idle: Arc::default(),
        }
    }

    /// Sends `req` (absolute URI) and returns the answer's head; its body drives the
    /// connection until read to the end.
    pub async fn send(&self, req: Request<UpstreamBody>) -> Result<Response<DrivenBody>, BoxError> {
        let key = Key::of(req.uri())?;
        let req = origin_form(req, &key)?;
        let conn = self.ready_conn(&key).await?;
        match self.attempt(conn, req, &key).await {
            // The reused connection closed before any byte of the request left (an upstream's
            // idle timeout racing the reuse): the upstream saw nothing, so one more try on a
            // new connection cannot make it act twice.
            Err(Attempt::NotSent(req)) => {
                let conn = self.connect(&key).await?;
                self.attempt(conn, *req, &key)
                    .await
                    .map_err(Attempt::into_error)
            }
            other => other.map_err(Attempt::into_error),
        }
    }

    async fn attempt(
        &self,
        mut c: Conn,
        req: Request<UpstreamBody>,
        key: &Key,
    ) -> Result<Response<DrivenBody>, Attempt> {
        let answer = c.tx.try_send_request(req);
        tokio::pin!(answer);
        let mut open = true;
        let resp = poll_fn(|cx| {
            // The connection future does the I/O; the answer future only waits for the head.
            // Once the connection has ended, the answer future reports why.
            if open && c.conn.as_mut().poll(cx).is_ready() {
                open = false;
            }
            answer.as_mut().poll(cx)
        })
        .await;
        let resp = match resp {
            Ok(resp) => resp,
            Err(mut e) => {
                return Err(match e.take_message() {
                    Some(req) => Attempt::NotSent(Box::new(req)),
                    None => Attempt::Failed(e.into_error().into()),
                })
            }
        };
        let (parts, body) = resp.into_parts();
        let body = DrivenBody {
            body,
            conn: open.then(|| SyncWrapper::new(c)),
            ended: false,
            idle: self.idle.clone(),
            key: key.clone(),
        };
        Ok(Response::from_parts(parts, body))
    }

    /// A connection ready for a request: an idle one the upstream has not closed, or a new one.
    async fn ready_conn(&self, key: &Key) -> Result<Conn, BoxError> {
        while let Some(mut c) = self.take_idle(key) {
            // A connection the upstream closed while idle ends as soon as it is polled.
            let ready = poll_fn(|cx| {
                if c.conn.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                c.tx.poll_ready(cx).map(|r| r.is_ok())
            })
            .await;
            if ready {
                return Ok(c);
            }
        }
        self.connect(key).await
    }

    fn take_idle(&self, key: &Key) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        // Newest first: the one least likely to have been closed by the upstream.
        while let Some(i) = list.pop() {
            if i.since.elapsed() < IDLE_TIMEOUT {
                return Some(i.conn);
            }
        }
        None
    }

    /// Every failure here happens before the request is written: it never reached the upstream.
    async fn connect(&self, key: &Key) -> Result<Conn, BoxError> {
        let never = |what: String| -> BoxError { Box::new(NeverSent(what)) };
        let tcp = TcpStream::connect((key.host.as_str(), key.port))
            .await
            .map_err(|e| never(format!("connect to {}:{}: {e}", key.host, key.port)))?;
        tcp.set_nodelay(true).map_err(|e| never(e.to_string()))?;
        let stream = if key.tls {
            let name = rustls_pki_types::ServerName::try_from(key.host.clone())
                .map_err(|e| never(format!("upstream host {:?}: {e}", key.host)))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| never(format!("TLS to {}:{}: {e}", key.host, key.port)))?;
            Box::new(tls) as Stream
        } else {
            Box::new(tcp)
        };
        let (tx, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| never(e.to_string()))?;
        Ok(Conn {
            tx,
            conn: Box::pin(conn),
        })
    }
}

enum Attempt {
    /// The connection ended before the request was written; here it is back, body untouched.
    NotSent(Box<Request<UpstreamBody>>),
    Failed(BoxError),
}

impl Attempt {
    fn into_error(self) -> BoxError {
        match self {
            Attempt::NotSent(_) => Box::new(NeverSent(
                "the upstream closed a new connection before the request was sent".into(),
            )),
            Attempt::Failed(e) => e,
        }
    }
}

/// The request line carries the path only and `Host` names the upstream, as a client speaking
/// to an origin server sends them (hyper-util's client does the same).
fn origin_form(req: Request<UpstreamBody>, key: &Key) -> Result<Request<UpstreamBody>, BoxError> {
    let (mut parts, body) = req.into_parts();
    if !parts.headers.contains_key(http::header::HOST) {
        let default_port = if key.tls { 443 } else { 80 };
        let host = parts.uri.host().unwrap_or_default();
        let value = if key.port == default_port {
            host.to_string()
        } else {
            format!("{host}:{}", key.port)
        };
        parts
            .headers
            .insert(http::header::HOST, http::HeaderValue::try_from(value)?);
    }
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = Uri::try_from(pq)?;
    parts.version = http::Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

/// An upstream response body that also drives its connection, and hands the connection back to
/// the idle list once the body has been read to the end.
pub struct DrivenBody {
    body: Incoming,
    /// `None` once the connection has ended. The connection holds the request body, which need
    /// not be `Sync`; the wrapper allows only exclusive access, so the response body can be.
    conn: Option<SyncWrapper<Conn>>,
    ended: bool,
    idle: Arc<Mutex<HashMap<Key, Vec<Idle>>>>,
    key: Key,
}

impl hyper::body::Body for DrivenBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(c) = this.conn.as_mut() {
            if c.get_mut().conn.as_mut().poll(cx).is_ready() {
                this.conn = None;
            }
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for DrivenBody {
    fn drop(&mut self) {
        // A response not read to the end leaves its connection mid-message: it is closed.
        if !self.is_end_stream() {
            return;
        }
        let Some(c) = self.conn.take() else { return };
        let mut c = c.into_inner();
        // One poll lets the connection finish the message it was reading, so that it is ready
        // for the next request; one that is not (the upstream said `Connection: close`, or
        // answered before reading the whole request) is closed.
        let mut cx = Context::from_waker(Waker::noop());
        if c.conn.as_mut().poll(&mut cx).is_ready() || !c.tx.is_ready() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(self.key.clone()).or_default();
        list.retain(|i| i.since.elapsed() < IDLE_TIMEOUT);
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push(Idle {
                conn: c,
                since: Instant::now(),
            });
        }
    }
}

/// A plain or TLS socket (or, in tests, an in-memory pipe): boxed, since hyper only needs
/// bytes in and out and one indirect call per read or write is nothing next to the syscall.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
type Stream = Box<dyn Io>;

#[cfg(test)]
mod tests;
