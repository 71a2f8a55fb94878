//! The writer thread: the only owner of the active log file.
//!
//! Requests are taken in batches (whatever queued up while the previous batch was being made
//! durable), so N concurrent callers cost one `write` and one `fdatasync`, not N.

use super::lock::LogLock;
use super::paths::{aside_path, parent_dir, rotated_files};
use super::record::{encode_line, line_hash, Payload, RecoveryInfo, GENESIS};
use super::{AuditUnavailable, Durability};
use ed25519_dalek::SigningKey;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};

mod file;
mod log;

use file::file_id;
pub(crate) use file::{default_opener, LogFile, Opener};
pub(crate) use log::{Appended, Log};

/// Upper bound on records per batch, so one batch's latency and buffer stay bounded.
const MAX_BATCH: usize = 4096;

/// With `fsync`, how long best-effort records (outcomes, denials, reads: nobody waits on
/// them) may stay written but unsynced. Until then they share the next decision's sync; a
/// sync of their own for each would double the syncs per admitted request, and every
/// decision queued behind such a sync waits for it.
pub(crate) const LAZY_SYNC: Duration = Duration::from_millis(50);

pub(crate) type Reply = oneshot::Sender<Result<u64, AuditUnavailable>>;

pub(crate) struct Job {
    pub payload: Payload,
    /// None for best-effort records.
    pub reply: Option<Reply>,
}

/// State read outside the writer thread.
#[derive(Default)]
pub(crate) struct Shared {
    pub writable: AtomicBool,
    pub dropped: AtomicU64,
    pub batches: AtomicU64,
    pub syncs: AtomicU64,
    /// Time spent in those syncs: with `fsync` the floor under every admitted request's
    /// latency, and the first thing to look at when that latency grows.
    pub sync_nanos: AtomicU64,
    /// The active file's path and (device, inode) as opened, so readiness can notice a log
    /// deleted or replaced under the broker before the next write does.
    pub file_id: Mutex<Option<(PathBuf, (u64, u64))>>,
    /// Records nobody waits on (refusals, outcomes, reads) that could not be written while
    /// the log was failing: kept, up to [`HELD_MAX`], and written first once it works again.
    pub held: Mutex<std::collections::VecDeque<super::record::Entry>>,
    /// The writer is gone for good (poisoned by a panic): nothing held would ever be written.
    pub gone: AtomicBool,
}

/// Records held in memory while the log is failing; past this they are counted as dropped.
pub(crate) const HELD_MAX: usize = 4096;

impl Shared {
    /// Keeps a record the log could not take now, or counts it as dropped when the memory for
    /// them is full. Either is said in the log, once per doubling.
    pub(crate) fn hold(&self, entry: super::record::Entry) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.len() < HELD_MAX && !self.gone.load(Ordering::Relaxed) {
            held.push_back(entry);
            if held.len() == 1 {
                tracing::warn!("audit log unavailable: refusal, outcome and read records are kept in memory (up to {HELD_MAX}) until it works again");
            }
            return;
        }
        drop(held);
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::error!(dropped = n, "audit log unavailable and {HELD_MAX} records already held: records are being dropped (counted in seb_audit_dropped_best_effort)");
        }
    }

    fn take_held(&self) -> std::collections::VecDeque<super::record::Entry> {
        std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// False when the active file is no longer the one the writer has open.
    pub(crate) fn file_in_place(&self) -> bool {
        let id = self.file_id.lock().unwrap_or_else(|p| p.into_inner());
        match &*id {
            Some((path, want)) => file_id(path).is_some_and(|got| got == *want),
            None => true,
        }
    }
}

impl Shared {
    /// `fdatasync`, counted and timed: every sync of the active log goes through here, so the
    /// metrics count them all.
    pub(crate) fn sync(&self, file: &mut dyn LogFile) -> std::io::Result<()> {
        let started = Instant::now();
        let r = file.sync_data();
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.sync_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }
}

pub(crate) struct Writer {
    pub path: Option<PathBuf>,
    pub durability: Durability,
    pub rotate_bytes: Option<u64>,
    pub stdout: bool,
    pub broker: String,
    pub key: SigningKey,
    pub opener: Opener,
    pub shared: Arc<Shared>,
    pub lines: broadcast::Sender<Arc<str>>,
    /// None until first use and after a failure, so the next batch reopens the path.
    pub file: Option<Box<dyn LogFile>>,
    /// Length of the active file up to its last acknowledged record.
    pub good_len: u64,
    pub seq: u64,
    pub prev: [u8; 32],
    pub buf: Vec<u8>,
    /// Byte ranges of the current batch's lines in `buf`, without their newlines.
    pub ends: Vec<(usize, usize)>,
    /// The chain as of the last record known to be on disk (`fsync`) or written (`flush`):
    /// what a failed sync rolls back to.
    pub committed: Mark,
    /// Records written since `committed` (only best-effort ones: a durable caller's batch is
    /// always synced before it is answered), when the first of them was written, and their
    /// lines for the live stream, which sees a line only once it cannot be rolled back.
    pub uncommitted: u64,
    pub uncommitted_since: Option<Instant>,
    pub uncommitted_lines: Vec<Arc<str>>,
    /// Held for the life of the writer; records the chain's head after every write.
    pub lock: Option<LogLock>,
    /// A recovery record to write before anything else (records found lost).
    pub recovery: Option<RecoveryInfo>,
    /// The active file's (device, inode) as opened.
    pub file_id: Option<(u64, u64)>,
    /// `seq` of the first record in the active file.
    pub active_first_seq: Option<u64>,
    /// Set by [`Writer::rollback`]: the last batch reached the file and was taken back (a
    /// failed sync), so its records are lost like the rolled-back ones, not kept to retry.
    pub rolled_back: bool,
}

/// A point in the chain: file length, last sequence number, hash of the last line.
#[derive(Clone, Copy)]
pub(crate) struct Mark {
    pub len: u64,
    pub seq: u64,
    pub prev: [u8; 32],
}

impl Writer {
    pub(crate) fn run(log: Arc<Log>, mut rx: mpsc::Receiver<Job>, rt: tokio::runtime::Runtime) {
        // If this thread ends for any reason, readiness must say so.
        struct Down(Arc<Shared>);
        impl Drop for Down {
            fn drop(&mut self) {
                self.0.writable.store(false, Ordering::Relaxed);
            }
        }
        let _down = Down(log.shared.clone());
        // A runtime of its own, for one timer: the wait for work ends early when unsynced
        // best-effort records are due for their sync.
        rt.block_on(async {
            let mut jobs = Vec::new();
            loop {
                let Some(due) = log.with(|w| w.sync_due()) else {
                    return;
                };
                let first = match due {
                    None => rx.recv().await,
                    Some(at) => {
                        match tokio::time::timeout_at(tokio::time::Instant::from_std(at), rx.recv())
                            .await
                        {
                            Ok(job) => job,
                            Err(_) => {
                                if log.with(|w| w.sync_uncommitted()).is_none() {
                                    return;
                                }
                                continue;
                            }
                        }
                    }
                };
                let Some(job) = first else { return };
                jobs.push(job);
                while jobs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                // A writer poisoned by a panic mid-batch may hold a half-updated chain: stop,
                // so that callers see the writer gone and refuse, rather than extend a broken
                // chain.
                if log.with(|w| w.write_batch(&mut jobs, false)).is_none() {
                    return;
                }
            }
        });
    }

    /// When the unsynced best-effort records must be synced (`fsync` only).
    fn sync_due(&self) -> Option<Instant> {
        match self.durability {
            Durability::Fsync => self.uncommitted_since.map(|t| t + LAZY_SYNC),
            Durability::Flush => None,
        }
    }

    /// Syncs records written without a sync; on failure they are taken back off the file.
    pub(crate) fn sync_uncommitted(&mut self) {
        if self.uncommitted == 0 {
            self.uncommitted_since = None;
            return;
        }
        let Some(file) = self.file.as_mut() else {
            self.rollback("the file was closed before its last records were synced");
            return;
        };
        match self.shared.sync(file.as_mut()) {
            Ok(()) => self.commit(),
            Err(e) => {
                let e = format!("syncing the audit log: {e}");
                tracing::error!(error = %e, "audit sync failed; refusing requests until it works again");
                self.shared.writable.store(false, Ordering::Relaxed);
                self.rollback(&e);
            }
        }
    }

    /// Writes every job in one write (and one sync when durable), then answers each caller.
    /// Either the whole batch becomes part of the chain or none of it does.
    pub(crate) fn write_batch(
        &mut self,
        jobs: &mut Vec<Job>,
        force_sync: bool,
    ) -> Result<(), String> {
        // Records held while the log was failing go first: they are older.
        let held = self.shared.take_held();
        let held_count = held.len();
        if held_count > 0 {
            jobs.splice(
                0..0,
                held.into_iter().map(|e| Job {
                    payload: Payload::Entry(Box::new(e)),
                    reply: None,
                }),
            );
        }
        // Sync when someone waits on this batch, or when best-effort records have waited
        // long enough; otherwise they are written now and synced with a later batch.
        let sync = force_sync
            || (self.durability == Durability::Fsync
                && (jobs.iter().any(|j| j.reply.is_some())
                    || self.sync_due().is_some_and(|due| due <= Instant::now())));
        self.rolled_back = false;
        let (outcome, results) = self.append(jobs.iter().map(|j| &j.payload), sync);
        let keep_failed = !self.rolled_back;
        if held_count > 0 && outcome.is_ok() {
            tracing::info!(
                records = held_count,
                "audit log works again: the records held meanwhile are written"
            );
        }
        for (job, result) in jobs.drain(..).zip(results) {
            match (job.reply, job.payload) {
                (Some(reply), _) => {
                    let _ = reply.send(result.map_err(AuditUnavailable));
                }
                // Never written (the log is failing): kept to be written once it works.
                (None, Payload::Entry(e)) if result.is_err() && keep_failed => self.shared.hold(*e),
                (None, _) if result.is_err() => {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
                (None, _) => {}
            }
        }
        outcome
    }

    /// Encodes, signs and persists the payloads as one write. Returns the batch's outcome and
    /// each payload's sequence number or the reason it was not written.
    /// `sync`: `fdatasync` the file after the write, before this returns.
    pub(crate) fn append<'a>(
        &mut self,
        payloads: impl Iterator<Item = &'a Payload>,
        sync: bool,
    ) -> (Result<(), String>, Vec<Result<u64, String>>) {
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        self.buf.clear();
        self.ends.clear();
        let mut seq = self.seq;
        let mut prev = self.prev;
        let mut results = Vec::with_capacity(payloads.size_hint().0 + 1);
        let recovery = self.recovery.take().map(|r| Payload::Recovery(Box::new(r)));
        let first_seq = seq + 1;
        for payload in recovery.iter().chain(payloads.map(|p| -> &Payload { p })) {
            let start = self.buf.len();
            match encode_line(
                &mut self.buf,
                seq + 1,
                &ts,
                &self.broker,
                payload,
                &prev,
                &self.key,
            ) {
                Ok(()) => {
                    seq += 1;
                    prev = line_hash(&self.buf[start..]);
                    self.ends.push((start, self.buf.len()));
                    self.buf.push(b'\n');
                    results.push(Ok(seq));
                }
                Err(e) => results.push(Err(format!("encoding the record: {e}"))),
            }
        }

        let outcome = if self.ends.is_empty() {
            Ok(())
        } else {
            self.persist(sync)
        };
        if let Some(Payload::Recovery(r)) = recovery {
            // Its result is nobody's to answer; until it is written, it is written first.
            drop(results.remove(0));
            if outcome.is_err() && self.recovery.is_none() {
                self.recovery = Some(*r);
            }
        }
        match &outcome {
            Ok(()) if !self.ends.is_empty() => {
                self.seq = seq;
                self.prev = prev;
                self.active_first_seq.get_or_insert(first_seq);
                if let Some(l) = &self.lock {
                    l.record_head(seq, &prev);
                }
                self.shared.writable.store(true, Ordering::Relaxed);
                if self.lines.receiver_count() > 0 {
                    for &(s, e) in &self.ends {
                        if let Ok(line) = std::str::from_utf8(&self.buf[s..e]) {
                            self.uncommitted_lines.push(Arc::from(line));
                        }
                    }
                }
                self.uncommitted += self.ends.len() as u64;
                self.uncommitted_since.get_or_insert_with(Instant::now);
                // Stdout has no sync: what was written there is as final as it gets.
                if sync || self.durability == Durability::Flush || self.path.is_none() {
                    self.commit();
                }
            }
            Ok(()) => {}
            Err(e) => {
                self.shared.writable.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, records = self.ends.len(), "audit write failed; refusing requests until it works again");
                for r in results.iter_mut() {
                    *r = Err(e.clone());
                }
            }
        }
        (outcome, results)
    }

    /// Everything written so far is as durable as the durability asks: it becomes the point
    /// a failed sync rolls back to, and the live stream may see it.
    fn commit(&mut self) {
        self.committed = Mark {
            len: self.good_len,
            seq: self.seq,
            prev: self.prev,
        };
        self.uncommitted = 0;
        self.uncommitted_since = None;
        for line in self.uncommitted_lines.drain(..) {
            let _ = self.lines.send(line);
        }
    }

    /// After a failed sync the kernel may have dropped any page written since the last good
    /// one, and a later sync may report success anyway: the records since `committed` are
    /// treated as lost, cut off the file, and the chain continues from `committed`.
    pub(crate) fn rollback(&mut self, why: &str) {
        self.rolled_back = true;
        if self.uncommitted > 0 {
            tracing::error!(
                records = self.uncommitted,
                error = why,
                "audit records written but not synced are dropped"
            );
            self.shared
                .dropped
                .fetch_add(self.uncommitted, Ordering::Relaxed);
        }
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = f.set_len(self.committed.len) {
                tracing::warn!(error = %e, "could not truncate after a failed audit sync; will retry on reopen");
            }
        }
        // Reopening truncates whatever is left past `good_len`.
        self.file = None;
        self.good_len = self.committed.len;
        self.seq = self.committed.seq;
        self.prev = self.committed.prev;
        if self.good_len == 0 {
            self.active_first_seq = None;
        }
        if let Some(l) = &self.lock {
            l.record_head(self.seq, &self.prev);
        }
        self.uncommitted = 0;
        self.uncommitted_since = None;
        self.uncommitted_lines.clear();
    }

    fn persist(&mut self, sync: bool) -> Result<(), String> {
        let Some(path) = self.path.clone() else {
            if !self.stdout {
                return Err("no audit sink configured".into());
            }
            // Stdout is the only sink, so its failure is the log's failure.
            return self
                .write_stdout()
                .map_err(|e| format!("writing to stdout: {e}"));
        };
        // This process must still be the log's one writer.
        if let Some(l) = self.lock.as_mut() {
            l.ensure_held()?;
        }
        // The file we have open must still be the log: a deleted or replaced file would take
        // records nobody can read, for mutations that then run.
        if let (Some(want), Some(_)) = (self.file_id, self.file.as_ref()) {
            match file_id(&path) {
                Some(got) if got == want => {}
                found => return Err(self.lost_active_file(&path, found.is_some())),
            }
        }
        // Reopen first: it removes leftovers of a failed write, which must not end up in an
        // archive.
        if self.file.is_none() {
            self.reopen(&path)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
        }
        if let Some(limit) = self.rotate_bytes {
            if self.good_len > 0 && self.good_len + self.buf.len() as u64 > limit {
                // An archive must be complete on disk, whatever the durability.
                if let Some(f) = self.file.as_mut() {
                    if let Err(e) = self.shared.sync(f.as_mut()) {
                        let e = format!("syncing {} before rotating it: {e}", path.display());
                        // The batch in `buf` was chained onto records the rollback removes.
                        self.rollback(&e);
                        return Err(e);
                    }
                }
                self.commit();
                if let Err(e) = self.rotate(&path) {
                    tracing::warn!(file = %path.display(), error = %e, "audit log rotation failed; continuing in the active file");
                    if self.file.is_none() {
                        self.reopen(&path)
                            .map_err(|e| format!("opening {}: {e}", path.display()))?;
                    }
                }
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Err(format!("{} is not open", path.display()));
        };
        if let Err(e) = file.write_all(&self.buf) {
            // The records were never acknowledged: take their bytes back off the file so
            // the chain on disk ends at the last good record, then retry from a fresh handle.
            if let Err(te) = file.set_len(self.good_len) {
                tracing::warn!(file = %path.display(), error = %te, "could not truncate a failed audit write; will retry on reopen");
            }
            self.file = None;
            return Err(format!("writing {}: {e}", path.display()));
        }
        self.good_len += self.buf.len() as u64;
        if sync {
            if let Err(e) = self.shared.sync(file.as_mut()) {
                let e = format!("syncing {}: {e}", path.display());
                self.rollback(&e);
                return Err(e);
            }
        }
        if self.stdout {
            if let Err(e) = self.write_stdout() {
                tracing::warn!(error = %e, "audit stdout sink failed; the file sink has the records");
            }
        }
        Ok(())
    }

    fn write_stdout(&self) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(&self.buf)?;
        out.flush()
    }
}
