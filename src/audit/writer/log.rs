//! The writer behind its lock, shared by the callers that append and the thread that batches.

use super::*;

/// The writer behind its lock, and the records left for whoever holds it.
///
/// With `flush` the caller's own thread appends (there is no sync to share). Two shards
/// appending at once would otherwise queue on the lock for a whole signature and write each
/// (~25 µs), their threads asleep meanwhile; instead a caller that finds the writer busy
/// leaves its record here and goes on, and the holder appends it with its own in one write.
/// Every holder looks here again after unlocking, so no record waits for a later caller.
pub(crate) struct Log {
    writer: Mutex<Held>,
    pending: Mutex<Vec<Job>>,
    pub(super) shared: Arc<Shared>,
}

pub(super) struct Held {
    writer: Writer,
    /// Swapped with `pending` by each holder, so that neither list is reallocated per batch.
    spare: Vec<Job>,
}

/// What became of a record given to [`Log::append`].
pub(crate) enum Appended {
    /// Written by the caller: its sequence number, or why it was not written.
    Now(Result<u64, String>),
    /// Left to the thread holding the writer, which answers here.
    Left(oneshot::Receiver<Result<u64, AuditUnavailable>>),
}

impl Log {
    pub(crate) fn new(writer: Writer) -> Log {
        Log {
            shared: writer.shared.clone(),
            writer: Mutex::new(Held {
                writer,
                spare: Vec::new(),
            }),
            pending: Mutex::new(Vec::new()),
        }
    }

    /// Appends a record someone waits for: at once if the writer is free (no queue, no
    /// channel), else left to its holder.
    pub(crate) fn append(&self, payload: Payload) -> Appended {
        let _unwinding = FailOnPanic::new(self);
        match self.writer.try_lock() {
            Ok(mut h) => {
                let sync = h.writer.durability == Durability::Fsync;
                let (_, mut results) = h.writer.append(std::iter::once(&payload), sync);
                drop(h);
                self.drain();
                Appended::Now(
                    results
                        .pop()
                        .unwrap_or_else(|| Err("the record was not written".into())),
                )
            }
            Err(TryLockError::WouldBlock) => {
                let (reply, answer) = oneshot::channel();
                self.submit(Job {
                    payload,
                    reply: Some(reply),
                });
                Appended::Left(answer)
            }
            Err(TryLockError::Poisoned(held)) => {
                drop(held);
                self.fail_pending();
                Appended::Now(Err("the audit writer failed while holding the log".into()))
            }
        }
    }

    /// Appends `job` now, or leaves it to the thread that holds the writer. Never blocks on
    /// the writer; the job's reply, if any, says when it is written.
    pub(crate) fn submit(&self, job: Job) {
        self.pending().push(job);
        self.drain();
    }

    /// Waits for the writer (the writer thread), then appends what was left meanwhile.
    /// None once the writer is poisoned: a panic mid-batch may have left its chain
    /// half-updated, so nothing more may be appended to it.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Writer) -> R) -> Option<R> {
        let _unwinding = FailOnPanic::new(self);
        let r = match self.writer.lock() {
            Ok(mut h) => f(&mut h.writer),
            Err(held) => {
                drop(held);
                self.fail_pending();
                return None;
            }
        };
        self.drain();
        Some(r)
    }

    // Whoever submits a job and then fails to take the writer has seen it held; that holder
    // takes `pending` again after it unlocks, and so sees the job (or another holder does,
    // by the same argument). Hence the loop, and `pending` under its own short lock.
    fn drain(&self) {
        let _unwinding = FailOnPanic::new(self);
        loop {
            let mut h = match self.writer.try_lock() {
                Ok(h) => h,
                Err(TryLockError::WouldBlock) => return,
                Err(TryLockError::Poisoned(held)) => {
                    drop(held);
                    return self.fail_pending();
                }
            };
            let h = &mut *h;
            std::mem::swap(&mut *self.pending(), &mut h.spare);
            if h.spare.is_empty() {
                return;
            }
            let _ = h.writer.write_batch(&mut h.spare, false);
        }
    }

    /// The writer is gone for good: callers waiting on a job are answered by its dropped
    /// reply, best-effort jobs are counted as dropped. The caller must not hold the writer.
    fn fail_pending(&self) {
        self.shared.writable.store(false, Ordering::Relaxed);
        self.shared.gone.store(true, Ordering::Relaxed);
        let mut jobs = std::mem::take(&mut *self.pending());
        // Those a holder had taken when it panicked are still in its spare list.
        if let Err(TryLockError::Poisoned(held)) = self.writer.try_lock() {
            jobs.append(&mut held.into_inner().spare);
        }
        let lost = jobs.iter().filter(|j| j.reply.is_none()).count() as u64;
        self.shared.dropped.fetch_add(lost, Ordering::Relaxed);
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<Job>> {
        // A push or a take cannot leave the vector half-changed.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A holder that panics never looks at `pending` again, and the records it had taken stay in
/// its spare list: without this, their callers would wait for an answer until their request
/// timed out, and records left later would wait for a caller that finds the writer poisoned.
/// A log used from a destructor while another panic unwinds is not failed by it.
pub(super) struct FailOnPanic<'a> {
    log: &'a Log,
    already: bool,
}

impl<'a> FailOnPanic<'a> {
    fn new(log: &'a Log) -> Self {
        FailOnPanic {
            log,
            already: std::thread::panicking(),
        }
    }
}

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        // Declared before the writer's guard, so dropped after it: the writer is unlocked
        // (poisoned) by the time this runs.
        if !self.already && std::thread::panicking() {
            self.log.fail_pending();
        }
    }
}
