//! HTTP/1.1 connections to upstreams, each driven by the task of the request that uses it.
//!
//! hyper-util's pooled client runs every upstream connection as a task of its own, so a
//! forwarded request hops from the agent connection's task to the upstream connection's task
//! and back: two wake-ups per request, often across worker threads (a futex wake and, on a
//! virtual machine, an inter-processor interrupt). On the 2-core load test machine those hops
//! were most of the broker's added latency on a plain pass-through (loadtest/NOTES.md). Here
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
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A real HTTP/1.1 server on loopback that counts the connections it accepted. `/close`
    /// answers with `Connection: close`; `/big` streams 1 MiB; `/empty` answers 204; anything
    /// else echoes the request line and Host.
    async fn server(keep_alive: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        listen_counting(move |tcp, _| {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let path = req.uri().path().to_string();
                let host = req.headers()[http::header::HOST]
                    .to_str()
                    .unwrap()
                    .to_string();
                let line = format!("{} {} {host}", req.method(), req.uri());
                let sent = req.into_body().collect().await.unwrap().to_bytes();
                let mut resp = match path.as_str() {
                    "/big" => Response::new(Full::new(Bytes::from(vec![7u8; 1 << 20]))),
                    "/empty" => {
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = http::StatusCode::NO_CONTENT;
                        r
                    }
                    _ => Response::new(Full::new(Bytes::from(format!("{line} {}", sent.len())))),
                };
                if path == "/close" {
                    resp.headers_mut()
                        .insert(http::header::CONNECTION, "close".parse().unwrap());
                }
                Ok::<_, std::convert::Infallible>(resp)
            });
            async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            }
        })
        .await
    }

    /// A loopback listener that runs `serve(connection, n)` for its n-th accepted connection
    /// (from 0) and counts them.
    async fn listen_counting<F, Fut>(serve: F) -> (std::net::SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(tokio::net::TcpStream, usize) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let n = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(tcp, n));
            }
        });
        (addr, accepted)
    }

    fn pool() -> Pool {
        Pool::new(&crate::tls::client_config(None, None).unwrap())
    }

    fn post(addr: std::net::SocketAddr, path: &str, body: &'static str) -> Request<UpstreamBody> {
        Request::post(format!("http://{addr}{path}"))
            .body(crate::upstream::upstream_full(Full::new(Bytes::from(body))))
            .unwrap()
    }

    async fn text(resp: Response<DrivenBody>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn reuses_one_connection_for_sequential_requests() {
        let (addr, accepted) = server(true).await;
        let pool = pool();
        for i in 0..20 {
            let resp = pool.send(post(addr, "/x?i=1", "abc")).await.unwrap();
            assert_eq!(
                text(resp).await,
                format!("POST /x?i=1 {addr} 3"),
                "request {i}"
            );
            let resp = pool.send(post(addr, "/empty", "")).await.unwrap();
            assert_eq!(resp.status(), http::StatusCode::NO_CONTENT);
            drop(resp); // a body that is empty from the start is never polled
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_use_separate_connections_then_share_them() {
        let (addr, accepted) = server(true).await;
        let pool = Arc::new(pool());
        for _ in 0..3 {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let pool = pool.clone();
                    tokio::spawn(async move {
                        text(pool.send(post(addr, "/", "x")).await.unwrap()).await
                    })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.unwrap(), format!("POST / {addr} 1"));
            }
        }
        let n = accepted.load(Ordering::SeqCst);
        assert!(
            (1..=8).contains(&n),
            "{n} connections for 8 concurrent requests, 3 rounds"
        );
    }

    #[tokio::test]
    async fn streams_a_large_body_and_reuses_the_connection_after_it() {
        let (addr, accepted) = server(true).await;
        let pool = pool();
        let resp = pool.send(post(addr, "/big", "")).await.unwrap();
        let mut body = resp.into_body();
        let mut frames = 0;
        let mut len = 0;
        while let Some(f) = body.frame().await {
            frames += 1;
            len += f.unwrap().into_data().unwrap().len();
        }
        assert_eq!(len, 1 << 20);
        assert!(
            frames > 1,
            "the body arrived in {frames} frame(s): not streamed"
        );
        drop(body);
        text(pool.send(post(addr, "/", "")).await.unwrap()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_the_connection() {
        let (addr, accepted) = server(true).await;
        let pool = pool();
        let resp = pool.send(post(addr, "/big", "")).await.unwrap();
        let mut body = resp.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        // The half-read connection must not be handed out again: the next answer is whole.
        let resp = pool.send(post(addr, "/", "yz")).await.unwrap();
        assert_eq!(text(resp).await, format!("POST / {addr} 2"));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connection_close_and_upstreams_without_keep_alive_get_new_connections() {
        let (addr, accepted) = server(true).await;
        let pool = pool();
        for _ in 0..3 {
            text(pool.send(post(addr, "/close", "")).await.unwrap()).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);

        // This server closes every connection after one answer, without saying so: the pool
        // finds the idle connection closed and opens another instead of failing the request.
        let (addr, accepted) = server(false).await;
        for _ in 0..3 {
            let resp = pool.send(post(addr, "/", "q")).await.unwrap();
            assert_eq!(text(resp).await, format!("POST / {addr} 1"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn explicit_host_header_is_kept_and_default_ports_are_left_out() {
        let (addr, _) = server(true).await;
        let pool = pool();
        let mut req = post(addr, "/h", "");
        req.headers_mut()
            .insert(http::header::HOST, "signed.example:8443".parse().unwrap());
        assert_eq!(
            text(pool.send(req).await.unwrap()).await,
            "POST /h signed.example:8443 0"
        );

        let key = Key::of(&"https://[::1]/p".parse().unwrap()).unwrap();
        assert_eq!((key.host.as_str(), key.port, key.tls), ("::1", 443, true));
        let req = origin_form(
            Request::get("https://api.example/a/b?c=d")
                .body(crate::upstream::upstream_full(Full::new(Bytes::new())))
                .unwrap(),
            &Key::of(&"https://api.example/".parse().unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(req.uri(), "/a/b?c=d");
        assert_eq!(req.headers()[http::header::HOST], "api.example");
        assert!(Key::of(&"ftp://x/".parse().unwrap()).is_err());
    }

    /// An upstream that sends more than its Content-Length promised: the surplus must never
    /// be read as the answer to the next request on the same connection.
    #[tokio::test]
    async fn bytes_past_an_answer_never_answer_the_next_request() {
        surplus_after_answer(false).await;
        surplus_after_answer(true).await;
    }

    async fn surplus_after_answer(delayed: bool) {
        // The surplus in the same write as the answer, or once the client has had time to put
        // the connection back as idle.
        let smuggled: &'static [u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled";
        let mut first = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
        if !delayed {
            first.extend_from_slice(smuggled);
        }
        let (addr, accepted) = misbehaving_once(first, delayed.then_some(smuggled)).await;
        let pool = pool();
        assert_eq!(
            text(pool.send(post(addr, "/", "a")).await.unwrap()).await,
            "ok"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = pool.send(post(addr, "/", "b")).await.unwrap();
        assert_eq!(text(second).await, "fresh", "delayed surplus: {delayed}");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// An upstream that switches protocols on a request that asked for no upgrade: what
    /// follows the 101 is another protocol's bytes, and must never answer a later request.
    #[tokio::test]
    async fn a_switch_of_protocols_nobody_asked_for_is_not_reused() {
        let first = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled".to_vec();
        let (addr, accepted) = misbehaving_once(first, None).await;
        let pool = pool();
        // The pipeline refuses a 101 it did not ask for, whether it sees it or an error.
        if let Ok(resp) = pool.send(post(addr, "/", "a")).await {
            assert_eq!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS);
            let _ = resp.into_body().collect().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = pool.send(post(addr, "/", "b")).await.unwrap();
        assert_eq!(text(second).await, "fresh");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// An upstream whose first connection answers its first request with `first` (and `late`
    /// 10 ms after), and every other request, on any connection, with 200 "fresh".
    async fn misbehaving_once(
        first: Vec<u8>,
        late: Option<&'static [u8]>,
    ) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let first = Arc::new(first);
        listen_counting(move |mut tcp, n| {
            let first = first.clone();
            async move {
                let mut buf = vec![0u8; 4096];
                let mut answered = false;
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if n > 0 || answered {
                        let fresh = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh";
                        if tcp.write_all(fresh).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    answered = true;
                    if tcp.write_all(&first).await.is_err() {
                        return;
                    }
                    if let Some(late) = late {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        let _ = tcp.write_all(late).await;
                    }
                }
            }
        })
        .await
    }

    #[tokio::test]
    async fn a_request_never_written_comes_back_whole_for_one_retry() {
        // A connection whose upstream has already gone: the request is handed back unsent,
        // with its body, instead of failing (send() then retries it on a new connection).
        let (ours, theirs) = tokio::io::duplex(1024);
        drop(theirs);
        let (tx, conn) = http1::handshake(TokioIo::new(Box::new(ours) as Stream))
            .await
            .unwrap();
        let pool = pool();
        let key = Key::of(&"http://127.0.0.1:9/".parse().unwrap()).unwrap();
        let req = origin_form(post("127.0.0.1:9".parse().unwrap(), "/r", "payload"), &key).unwrap();
        let conn = Conn {
            tx,
            conn: Box::pin(conn),
        };
        match pool.attempt(conn, req, &key).await {
            Err(Attempt::NotSent(back)) => {
                assert_eq!(back.uri(), "/r");
                let body = back.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"payload");
            }
            Err(Attempt::Failed(e)) => panic!("reported as sent: {e}"),
            Ok(_) => panic!("answered by an upstream that is gone"),
        }
    }

    #[tokio::test]
    async fn refused_connection_is_an_error_naming_the_upstream() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let Err(err) = pool().send(post(addr, "/", "")).await else {
            panic!("a closed port answered");
        };
        assert!(
            err.to_string()
                .contains(&format!("connect to 127.0.0.1:{}", addr.port())),
            "{err}"
        );
    }
}
