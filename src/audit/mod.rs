//! The audit log: one signed, hash-chained JSON line per decision and outcome.
//!
//! A mutation is admitted only after its decision record is durable ([`Audit::record`]); if
//! the log cannot be written the request is refused with `audit_unavailable`, and admission
//! resumes by itself once writing works again. The line format is specified in [`record`].

pub mod cli;
pub mod export;
pub mod files;
mod lock;
mod paths;
pub mod query;
pub mod record;
mod recover;
pub mod report;
pub mod rollout_cli;
pub mod spent;
pub mod verify;
mod writer;

pub use files::log_files;
pub use query::{query_logs, Filter};
pub use record::{
    Durability, Entry, Kind, LabelInfo, LabelledRecord, RevocationInfo, Subject, Verdict,
};
pub use spent::{spent_uses, LoggedRevocation, Spent, SpentScan};
pub use verify::{verify_logs, VerifyFailure, VerifyReport};

use record::{Payload, StartInfo, GENESIS};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot};
use writer::{Job, Log, Shared, Writer};

/// The directory a log file lives in.
pub fn log_dir(path: &std::path::Path) -> &std::path::Path {
    paths::parent_dir(path)
}

/// Creates the log's directory when it is missing, as a new deployment's first start needs.
fn create_log_dir(path: &std::path::Path) -> anyhow::Result<()> {
    let dir = log_dir(path);
    crate::fsutil::create_dir(dir)
        .map_err(|e| anyhow::anyhow!("creating the audit log's directory {}: {e}", dir.display()))
}

/// Queue depth in front of the writer; durable callers wait for room, best-effort ones drop.
const QUEUE: usize = 65_536;
const TAIL_CAPACITY: usize = 1024;

#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// File sink (JSONL). None = no file: durable appends then fail closed unless `stdout`.
    pub path: Option<PathBuf>,
    pub durability: Durability,
    /// Rotate when the active file would exceed this many bytes.
    pub rotate_bytes: Option<u64>,
    /// Also write each line to stdout.
    pub stdout: bool,
    pub broker_id: String,
    /// Targets in shadow mode, named in the start record.
    pub shadow_targets: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("audit log unavailable: {0}")]
pub struct AuditUnavailable(pub String);

#[derive(Clone)]
pub struct Audit {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Job>,
    log: Arc<Log>,
    /// Relaxed durability: durable appends are written on the caller's thread.
    inline: bool,
    lines: broadcast::Sender<Arc<str>>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The last record found on disk at start is not signed by this broker's key.
    head_unsigned: bool,
}

impl Drop for Inner {
    /// The last handle gone: the writer finishes what was queued and exits, and with it goes
    /// the log's lock, before this returns, so a log closed here can be opened again at once.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Audit {
    /// Opens the log: recovery (torn last line cut off, `outcome: unknown` for allowed
    /// decisions left without an outcome), then a `start` record, all synced to disk before
    /// this returns; then spawns the writer thread.
    pub fn start(settings: AuditSettings, key: ed25519_dalek::SigningKey) -> anyhow::Result<Audit> {
        Self::start_with(settings, key, writer::default_opener())
    }

    pub(crate) fn start_with(
        settings: AuditSettings,
        key: ed25519_dalek::SigningKey,
        opener: writer::Opener,
    ) -> anyhow::Result<Audit> {
        if let Some(p) = &settings.path {
            create_log_dir(p)?;
        }
        // One writer per log, before anything reads or repairs it.
        let (lock, last_head) = match &settings.path {
            Some(p) => {
                let (l, h) = lock::LogLock::acquire(p, &settings.broker_id)?;
                (Some(l), h)
            }
            None => (None, None),
        };
        let (recovered, good_len) = match &settings.path {
            Some(p) => {
                let r = recover::recover(p)?;
                let len = match std::fs::metadata(p) {
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                    Err(e) => anyhow::bail!("{}: {e}", p.display()),
                };
                (r, len)
            }
            None => (
                recover::Recovered {
                    seq: 0,
                    prev: GENESIS,
                    dangling: Vec::new(),
                    torn: None,
                    torn_bytes: None,
                    active_first_seq: None,
                    head_line: None,
                },
                0,
            ),
        };
        let head_unsigned = recovered
            .head_line
            .as_deref()
            .is_some_and(|l| record::check_signature(l, &key.verifying_key()).is_err());
        if head_unsigned {
            tracing::error!(
                seq = recovered.seq,
                "the last audit record on disk is not signed by this broker's key: the log was \
                 altered, or the key changed"
            );
        }
        let has_sink = settings.path.is_some() || settings.stdout;
        let shared = Arc::new(Shared::default());
        shared.writable.store(has_sink, Ordering::Relaxed);
        let (lines, _) = broadcast::channel(TAIL_CAPACITY);
        let key_id = crate::cert::keys::key_id(&key.verifying_key());
        // Records that were written and are not on disk any more: a torn tail (the record it
        // held, or was being written as, takes the next number), or a log that ends before the
        // head the last holder of the lock recorded (a deleted file, whole lines cut off).
        let on_disk = recovered.seq;
        let mut lost_to = on_disk + u64::from(recovered.torn.is_some());
        if let Some(h) = &last_head {
            lost_to = lost_to.max(h.seq);
        }
        let recovery = (lost_to > on_disk).then(|| {
            let what = match (&recovered.torn, last_head.as_ref().map(|h| h.seq)) {
                (_, Some(h)) if h > on_disk + 1 => "truncated",
                (Some(_), _) => "torn_tail",
                _ => "truncated",
            };
            let message = format!(
                "found at start: the log ends at seq {on_disk}{}{}",
                last_head
                    .as_ref()
                    .filter(|h| h.seq > on_disk)
                    .map(|h| format!(
                        ", and the broker that last held it (pid {}) had written up to seq {}",
                        h.pid, h.seq
                    ))
                    .unwrap_or_default(),
                recovered
                    .torn
                    .as_ref()
                    .map(|t| format!("; {} byte(s) after it were cut off a record", t.bytes))
                    .unwrap_or_default()
            );
            tracing::error!(lost_from = on_disk + 1, lost_to, "{message}");
            // A torn record alone can often still be read for the use it recorded.
            let spent = match (&recovered.torn_bytes, lost_to == on_disk + 1) {
                (Some(bytes), true) => recover::attribute_torn(bytes),
                _ => None,
            };
            record::RecoveryInfo {
                what,
                message,
                lost_seq: Some([on_disk + 1, lost_to]),
                dropped: recovered.torn.clone(),
                uses_known: spent.is_some(),
                spent: spent.unwrap_or_default(),
            }
        });
        let mut writer = Writer {
            path: settings.path.clone(),
            durability: settings.durability,
            rotate_bytes: settings.rotate_bytes,
            stdout: settings.stdout,
            broker: settings.broker_id.clone(),
            key,
            opener,
            shared: shared.clone(),
            lines: lines.clone(),
            file: None,
            good_len,
            // After a loss the next record follows the lost numbers; `prev` stays the hash of
            // the last line on disk.
            seq: lost_to,
            prev: recovered.prev,
            buf: Vec::new(),
            ends: Vec::new(),
            committed: writer::Mark {
                len: good_len,
                seq: lost_to,
                prev: recovered.prev,
            },
            uncommitted: 0,
            uncommitted_since: None,
            uncommitted_lines: Vec::new(),
            lock,
            recovery,
            file_id: None,
            active_first_seq: recovered.active_first_seq,
            rolled_back: false,
        };
        if has_sink {
            if !recovered.dangling.is_empty() {
                tracing::warn!(
                    count = recovered.dangling.len(),
                    "recording outcome unknown for allowed requests the broker did not see finish"
                );
            }
            let mut jobs: Vec<Job> = recovered
                .dangling
                .into_iter()
                .map(|e| Job {
                    payload: Payload::Entry(Box::new(e)),
                    reply: None,
                })
                .collect();
            jobs.push(Job {
                payload: Payload::Start(StartInfo {
                    durability: settings.durability,
                    key_id,
                    shadow: settings.shadow_targets.clone(),
                }),
                reply: None,
            });
            writer
                .write_batch(&mut jobs, true)
                .map_err(|e| anyhow::anyhow!("audit log: writing the start record: {e}"))?;
        } else {
            tracing::warn!("no audit sink configured: every audited request will be refused");
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let log = Arc::new(Log::new(writer));
        let for_thread = log.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| anyhow::anyhow!("starting the audit writer's runtime: {e}"))?;
        let thread = std::thread::Builder::new()
            .name("seb-audit".into())
            .spawn(move || Writer::run(for_thread, rx, rt))
            .map_err(|e| anyhow::anyhow!("starting the audit writer thread: {e}"))?;
        Ok(Audit {
            inner: Arc::new(Inner {
                tx,
                log,
                inline: settings.durability == Durability::Flush,
                lines,
                shared,
                thread: Some(thread),
                head_unsigned,
            }),
        })
    }

    /// True when the last record found on disk at start did not verify under this broker's
    /// key: records before it may have been altered (it anchors their chain), or the key was
    /// changed. Use counts read from them are then not proof that a certificate is unspent.
    pub fn head_unsigned(&self) -> bool {
        self.inner.head_unsigned
    }

    /// Appends and waits until the record is durable per `durability`. Err => the caller
    /// refuses the request with `audit_unavailable`.
    pub async fn record(&self, entry: Entry) -> Result<u64, AuditUnavailable> {
        self.record_payload(Payload::Entry(Box::new(entry))).await
    }

    /// Appends an operator's label (`seb audit label`) and waits until it is durable.
    pub async fn record_label(&self, label: record::LabelInfo) -> Result<u64, AuditUnavailable> {
        self.record_payload(Payload::Label(Box::new(label))).await
    }

    /// Records a revocation document this broker applied, and waits until it is durable: the
    /// log is where a restarted broker finds it again if the state file lost it.
    pub async fn record_revocation(
        &self,
        info: record::RevocationInfo,
    ) -> Result<u64, AuditUnavailable> {
        self.record_payload(Payload::Revocation(Box::new(info)))
            .await
    }

    async fn record_payload(&self, payload: Payload) -> Result<u64, AuditUnavailable> {
        if self.inner.inline {
            // A write to the page cache takes microseconds; the round trip to the writer
            // thread (two wake-ups) took longer than the record itself. Only `fsync` has a
            // sync worth sharing between callers, so only `fsync` queues. This waits only
            // when another thread held the writer and appends the record for us.
            return match self.inner.log.append(payload) {
                writer::Appended::Now(r) => r.map_err(AuditUnavailable),
                writer::Appended::Left(answer) => answer.await.map_err(|_| {
                    AuditUnavailable("the audit writer failed while holding the log".into())
                })?,
            };
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            payload,
            reply: Some(reply),
        };
        let stopped = || AuditUnavailable("the audit writer has stopped".into());
        self.inner.tx.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Queues without waiting (refusals, outcomes, read pass-throughs). While the log is
    /// failing the record is held in memory (bounded) and written first once it works again;
    /// past the bound, and when the queue is full, it is dropped and counted: a read must not
    /// wait on the audit log.
    pub fn record_best_effort(&self, entry: Entry) {
        let shared = &self.inner.shared;
        if !shared.writable.load(Ordering::Relaxed) {
            shared.hold(entry);
            return;
        }
        let payload = Payload::Entry(Box::new(entry));
        if self.inner.inline {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                // Spawned, not written here: the caller is about to send its response, and
                // the task runs on this worker right after that, without waking a thread.
                let inner = self.inner.clone();
                rt.spawn(async move {
                    // A failed write counts the record as dropped.
                    inner.log.submit(Job {
                        payload,
                        reply: None,
                    });
                });
                return;
            }
        }
        let job = Job {
            payload,
            reply: None,
        };
        if self.inner.tx.try_send(job).is_err() {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// At shutdown, once no request is left to record anything: waits (at most `within`)
    /// until the writer has taken every queued record and written it, then syncs the file,
    /// whatever the durability, so that the last outcome records survive a machine crash
    /// too. Blocks the calling thread.
    pub fn flush(&self, within: std::time::Duration) -> Result<(), AuditUnavailable> {
        use std::time::{Duration, Instant};
        let deadline = Instant::now() + within;
        let late =
            || AuditUnavailable("queued records were not written before the deadline".into());
        // The writer thread takes records off the queue a moment before it takes the log to
        // write them, so an empty queue is checked again after a pause in which no batch
        // was written; records left by a request's own thread (`flush` durability) are
        // written by whoever takes the log next, including this function.
        let mut synced_after: Option<u64> = None;
        loop {
            while self.inner.tx.capacity() < self.inner.tx.max_capacity() {
                if Instant::now() >= deadline {
                    return Err(late());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let before = self.batches();
            if synced_after == Some(before) {
                return Ok(());
            }
            let synced = self.inner.log.with(|w| {
                if w.uncommitted > 0 {
                    // Syncs and commits them (what a failed sync would roll back to).
                    w.sync_uncommitted();
                    return Ok(());
                }
                // Through the writer's own sync (counted, timed), and a failure is handled as
                // any failed sync is: the log is marked failing and rolled back.
                let Some(f) = w.file.as_mut() else {
                    return Ok(());
                };
                match w.shared.sync(f.as_mut()) {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        let e = format!("syncing the audit log: {e}");
                        w.shared.writable.store(false, Ordering::Relaxed);
                        w.rollback(&e);
                        Err(e)
                    }
                }
            });
            match synced {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(AuditUnavailable(e)),
                None => return Err(AuditUnavailable("the audit writer has failed".into())),
            }
            if !self.is_writable() {
                return Err(AuditUnavailable("the last write or sync failed".into()));
            }
            // Everything written up to `before` is synced; a batch written since (by the
            // writer thread, or by `with` on its way out) means one more round.
            synced_after = Some(before);
            if Instant::now() >= deadline {
                return Err(late());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Live tail: every line written after subscribing (without its newline). A receiver
    /// that falls more than 1024 lines behind loses lines rather than slowing the writer.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.inner.lines.subscribe()
    }

    /// False while the last write or sync failed, or once the active file is no longer the
    /// one being written (deleted or replaced), which the next write then repairs (for /readyz
    /// and metrics).
    pub fn is_writable(&self) -> bool {
        self.inner.shared.writable.load(Ordering::Relaxed) && self.inner.shared.file_in_place()
    }

    /// Records held in memory until the failing log works again.
    pub fn held(&self) -> usize {
        self.inner
            .shared
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn dropped_best_effort(&self) -> u64 {
        self.inner.shared.dropped.load(Ordering::Relaxed)
    }

    /// Number of `fdatasync` calls so far (metrics; group commit makes this < records).
    pub fn syncs(&self) -> u64 {
        self.inner.shared.syncs.load(Ordering::Relaxed)
    }

    /// Seconds spent in those `fdatasync` calls so far.
    pub fn sync_seconds(&self) -> f64 {
        self.inner.shared.sync_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// Number of write batches so far.
    pub fn batches(&self) -> u64 {
        self.inner.shared.batches.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
