//! Connection shards: one thread per CPU, each with its own single-threaded event loop, and
//! each accepted connection handed to one of them for its whole life.
//!
//! On a work-stealing runtime every I/O event can wake a second worker to look for work, and a
//! request can move between threads while it waits on the agent, the audit log and the
//! upstream. On the 2-core load test machine that was about 3 context switches per request
//! at 2,000 requests/s, against about 1 on a shard (docs/performance.md), and a third of the
//! broker's added latency. The cost: a connection's requests never use more than one core, so
//! an agent multiplexing many concurrent requests on one HTTP/2 connection is better served by
//! `runtime.shards = 0`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

pub struct Shards {
    queues: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
}

impl Shards {
    /// Starts `n` shard threads (`n` ≥ 1). Their runtimes are built here, so that a failure
    /// is a start-up error.
    pub fn start(n: usize) -> std::io::Result<Shards> {
        let mut queues = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            std::thread::Builder::new()
                .name(format!("seb-shard-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        tokio::spawn(heartbeat());
                        while let Some(job) = rx.recv().await {
                            tokio::spawn(job);
                        }
                    })
                })?;
            queues.push(tx);
        }
        Ok(Shards {
            queues,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `conn` on the next shard, round robin. A socket must be registered with the
    /// shard's own event loop, so `conn` should make its tokio socket from a std one when first
    /// polled (see `server::serve`). False if the shard has stopped.
    pub fn spawn(&self, conn: impl Future<Output = ()> + Send + 'static) -> bool {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        self.queues[i].send(Box::pin(conn)).is_ok()
    }
}

/// Keeps a timer due within a second on the shard. tokio's timer wheel wakes its own event
/// loop (an `eventfd` write, then an empty turn of the loop) whenever a new timer is due
/// before every timer it had when it last went to sleep, which is always the case after it
/// slept with none. Each request arms a few request-timeout timers, so at a moderate rate
/// that was two such wake-ups per request (docs/performance.md); with a timer always due
/// sooner than any request timeout, new ones are filed without waking anything.
async fn heartbeat() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    #[test]
    fn connections_go_round_robin_to_their_own_threads() {
        let shards = Shards::start(2).unwrap();
        let seen = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for _ in 0..6 {
            let (seen, done) = (seen.clone(), done_tx.clone());
            assert!(shards.spawn(async move {
                // A shard's runtime has an event loop of its own: sockets and timers work.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                drop(l);
                let name = std::thread::current().name().unwrap().to_string();
                *seen.lock().unwrap().entry(name).or_default() += 1;
                done.send(()).unwrap();
            }));
        }
        for _ in 0..6 {
            done_rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap();
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.get("seb-shard-0"), Some(&3), "{seen:?}");
        assert_eq!(seen.get("seb-shard-1"), Some(&3), "{seen:?}");
    }
}
