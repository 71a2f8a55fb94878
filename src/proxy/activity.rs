//! What a connection is doing, as its socket and its service see it: whether a request is in
//! progress, since when it has been idle, whether a request head has begun, and how many
//! responses have been sent. The accept loop (`proxy::server`) closes idle connections and cuts
//! slow heads by it; the head gate (`proxy::head`) answers a refused head only after the
//! responses before it.

use super::head;
use super::lifecycle::StackLimits;
use super::lifecycle::{Connections, RequestGuard};
use crate::upstream::Body;
use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Expiry {
    /// Nothing in progress for too long: close politely.
    Idle,
    /// Bytes of a request head arrived, but not the whole head in time: cut.
    Head,
}

/// What a connection is doing, as seen by its socket and its service: whether a request is
/// in progress, since when it has been idle, and whether a request head has begun.
/// Times are milliseconds since the connection was set up (after the TLS handshake).
pub(super) struct Activity {
    base: tokio::time::Instant,
    active: AtomicUsize,
    idle_since: AtomicU64,
    /// 1 + the time the first byte came after the connection went idle; 0: none yet.
    first_byte: AtomicU64,
    served: AtomicBool,
    /// HTTP/2 reads frames (pings, settings, window updates) that start no request, so a
    /// read is no sign of a request head; only the idle timeout applies.
    h2: AtomicBool,
    pub(super) connections: Arc<Connections>,
    /// Requests whose response has been sent (or dropped).
    finished: AtomicU64,
    /// The gate waiting to answer a refused head once the responses before it are sent.
    waiting: AtomicBool,
    waiter: std::sync::Mutex<Option<std::task::Waker>>,
}

impl Activity {
    pub(super) fn new(h2: bool, connections: Arc<Connections>) -> Arc<Activity> {
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

    pub(super) fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    pub(super) fn at(&self, ms: u64) -> tokio::time::Instant {
        self.base + Duration::from_millis(ms)
    }

    pub(super) fn on_read(&self) {
        if self.active.load(Ordering::Relaxed) == 0 && self.first_byte.load(Ordering::Relaxed) == 0
        {
            self.first_byte.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    pub(super) fn begin(self: &Arc<Self>, h2: bool) -> Busy {
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
    pub(super) fn deadline(&self, limits: &StackLimits) -> Option<(tokio::time::Instant, Expiry)> {
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
pub(super) struct Busy {
    activity: Arc<Activity>,
    _request: RequestGuard,
}

impl Busy {
    /// The response, whose body keeps the connection busy until it is sent or dropped.
    pub(super) fn track(self, resp: Response<Body>) -> Response<Body> {
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
pub(super) struct Watched<S> {
    pub(super) inner: S,
    pub(super) activity: Arc<Activity>,
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
