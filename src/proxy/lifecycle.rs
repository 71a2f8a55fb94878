//! The agent connections the process holds: how many (against `limits.max_connections`),
//! how many requests are in flight on them, and the drain that SIGTERM starts.
//!
//! Connections live on the shards, each a thread with its own event loop, so nothing here
//! belongs to one runtime: counters are atomics, the drain is a `watch` channel every
//! connection selects on, and "all connections are gone" is a `Notify`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// The limits every agent connection and request is held to.
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

/// Connections past `max_connections` that are still answered (a readable 503, then
/// closed) rather than dropped unanswered: enough for agents to see why, few enough that
/// answering them costs little.
pub const REFUSAL_SLOTS: usize = 32;

/// Concurrent admin connections (loopback: health checks, metrics, pushes, `seb reload`).
pub const ADMIN_CONNECTIONS: usize = 64;

pub struct Connections {
    max: usize,
    /// Agent connections being served, plus upgraded sessions (kubectl exec) that outlive
    /// the HTTP connection they started on.
    live: AtomicUsize,
    refusing: AtomicUsize,
    requests: AtomicUsize,
    none_left: Notify,
    drain: watch::Sender<bool>,
    /// The drain's state where a request reads it (a `watch` borrow takes a lock).
    draining: std::sync::atomic::AtomicBool,
}

/// What an accepted socket gets.
pub enum Admit {
    Serve(ConnGuard),
    /// Over the limit: answer with a refusal, then close.
    Refuse(RefusalGuard),
    /// Over the limit and out of refusal slots: close unanswered.
    Drop,
}

impl Connections {
    pub fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max,
            live: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            none_left: Notify::new(),
            drain: watch::channel(false).0,
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn admit(self: &Arc<Self>) -> Admit {
        let taken = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        if taken.is_ok() {
            return Admit::Serve(ConnGuard(self.clone()));
        }
        let refusing = self
            .refusing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < REFUSAL_SLOTS).then_some(n + 1)
            });
        match refusing {
            Ok(_) => Admit::Refuse(RefusalGuard(self.clone())),
            Err(_) => Admit::Drop,
        }
    }

    /// Keeps the drain waiting for something that is not an HTTP connection any more: an
    /// upgraded session. Not refused at the limit: its socket was counted until now.
    pub fn hold(self: &Arc<Self>) -> ConnGuard {
        self.live.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.clone())
    }

    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    pub fn requests_in_flight(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Tells every connection to finish what it is doing and close.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.drain.send_replace(true);
    }

    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }

    /// Returns once no connection or upgraded session is left.
    pub async fn drained(&self) {
        loop {
            let notified = self.none_left.notified();
            tokio::pin!(notified);
            // Registered before the check, so a last guard dropped in between still wakes us.
            notified.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

pub struct ConnGuard(Arc<Connections>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

pub struct RefusalGuard(Arc<Connections>);

impl Drop for RefusalGuard {
    fn drop(&mut self) {
        self.0.refusing.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct RequestGuard(Arc<Connections>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// File descriptors the process needs besides agent connections: upstream connections (one
/// per request in flight, plus the idle pool per target), refusal slots, admin connections,
/// and a fixed part for the audit log and its directory, the revocation poller, listeners,
/// event loops, identity services and stdio.
pub fn fd_reserve(max_concurrent_requests: usize, targets: usize) -> u64 {
    const FIXED: u64 = 128;
    const POOL_IDLE_PER_TARGET: u64 = 256;
    FIXED
        + max_concurrent_requests as u64
        + POOL_IDLE_PER_TARGET * targets as u64
        + (REFUSAL_SLOTS + ADMIN_CONNECTIONS) as u64
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns it (`u64::MAX`: unlimited).
pub fn raise_fd_limit() -> std::io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            },
        )?;
    }
    Ok(lim.maximum.unwrap_or(u64::MAX))
}

/// The soft RLIMIT_NOFILE as it is (`u64::MAX`: unlimited).
pub fn soft_fd_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// How many agent connections fit: `configured` must fit below `limit` with the reserve, or
/// it is an error; the default is lowered to fit, with a warning, and is an error only when
/// not even a small number fits.
pub fn fit_connections(
    configured: Option<usize>,
    default: usize,
    limit: u64,
    reserve: u64,
) -> Result<usize, String> {
    let room = limit.saturating_sub(reserve);
    match configured {
        Some(n) if n as u64 <= room => Ok(n),
        Some(n) => Err(format!(
            "{n} agent connections and {reserve} other file descriptors (upstream connections, audit log, revocation, admin) do not fit in the open file limit of {limit}; raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower limits.max_connections or limits.max_concurrent_requests"
        )),
        None if default as u64 <= room => Ok(default),
        None if room >= 64 => {
            tracing::warn!(
                limit,
                reserve,
                max_connections = room,
                "the open file limit is lower than the default connection limit needs; agent connections limited to fit"
            );
            Ok(room as usize)
        }
        None => Err(format!(
            "the open file limit of {limit} leaves no room for agent connections after {reserve} other file descriptors; raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower limits.max_concurrent_requests"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_limit_a_few_are_refused_then_the_rest_dropped() {
        let c = Connections::new(2);
        let served: Vec<_> = (0..2)
            .map(|_| match c.admit() {
                Admit::Serve(g) => g,
                _ => panic!("under the limit"),
            })
            .collect();
        let refused: Vec<_> = (0..REFUSAL_SLOTS)
            .map(|_| match c.admit() {
                Admit::Refuse(g) => g,
                _ => panic!("refusal slot expected"),
            })
            .collect();
        assert!(matches!(c.admit(), Admit::Drop));
        drop(refused);
        assert!(matches!(c.admit(), Admit::Refuse(_)));
        drop(served);
        assert!(matches!(c.admit(), Admit::Serve(_)));
        assert_eq!(c.live(), 0, "guards dropped at the end of each match");
    }

    #[tokio::test]
    async fn drained_waits_for_the_last_connection_and_upgraded_session() {
        let c = Connections::new(10);
        let Admit::Serve(conn) = c.admit() else {
            panic!()
        };
        let session = c.hold();
        c.start_drain();
        assert!(*c.drain_signal().borrow());
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.drained().await }
        });
        drop(conn);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the upgraded session is still open");
        drop(session);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("drained after the last guard")
            .unwrap();
    }

    #[test]
    fn connection_limits_fit_the_file_limit_or_are_refused() {
        assert_eq!(fit_connections(Some(100), 10_000, 2_000, 500), Ok(100));
        assert!(fit_connections(Some(1_600), 10_000, 2_000, 500)
            .unwrap_err()
            .contains("limits.max_connections"));
        assert_eq!(fit_connections(None, 10_000, 20_000, 1_500), Ok(10_000));
        assert_eq!(fit_connections(None, 10_000, 4_096, 1_500), Ok(2_596));
        assert!(fit_connections(None, 10_000, 1_024, 1_500).is_err());
    }
}
