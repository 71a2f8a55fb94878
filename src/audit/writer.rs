//! The writer thread: the only owner of the active log file.
//!
//! Requests are taken in batches (whatever queued up while the previous batch was being made
//! durable), so N concurrent callers cost one `write` and one `fdatasync`, not N.

use super::record::{encode_line, line_hash, Payload};
use super::recover::{parent_dir, rotated_files};
use super::{AuditUnavailable, Durability};
use ed25519_dalek::SigningKey;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot};

/// Upper bound on records per batch, so one batch's latency and buffer stay bounded.
const MAX_BATCH: usize = 4096;

/// File operations the writer needs, behind a trait so tests can make them fail.
pub(crate) trait LogFile: Send {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()>;
    fn sync_data(&mut self) -> std::io::Result<()>;
    fn set_len(&mut self, len: u64) -> std::io::Result<()>;
    fn size(&self) -> std::io::Result<u64>;
}

impl LogFile for std::fs::File {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        Write::write_all(self, buf)
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        std::fs::File::sync_data(self)
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        std::fs::File::set_len(self, len)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

/// Opens the active file for appending, creating it if needed.
pub(crate) type Opener = Box<dyn Fn(&Path) -> std::io::Result<Box<dyn LogFile>> + Send>;

pub(crate) fn default_opener() -> Opener {
    Box::new(|path| {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)?;
        Ok(Box::new(f) as Box<dyn LogFile>)
    })
}

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
}

impl Writer {
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        // If this thread ends for any reason, readiness must say so.
        struct Down(Arc<Shared>);
        impl Drop for Down {
            fn drop(&mut self) {
                self.0.writable.store(false, Ordering::Relaxed);
            }
        }
        let _down = Down(self.shared.clone());
        let mut jobs = Vec::new();
        while let Some(job) = rx.blocking_recv() {
            jobs.push(job);
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let _ = self.write_batch(&mut jobs, false);
        }
    }

    /// Writes every job in one write (and one sync when durable), then answers each caller.
    /// Either the whole batch becomes part of the chain or none of it does.
    pub(crate) fn write_batch(
        &mut self,
        jobs: &mut Vec<Job>,
        force_sync: bool,
    ) -> Result<(), String> {
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        self.buf.clear();
        let mut seq = self.seq;
        let mut prev = self.prev;
        let mut ends = Vec::with_capacity(jobs.len());
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs.iter() {
            let start = self.buf.len();
            match encode_line(
                &mut self.buf,
                seq + 1,
                &ts,
                &self.broker,
                &job.payload,
                &prev,
                &self.key,
            ) {
                Ok(()) => {
                    seq += 1;
                    prev = line_hash(&self.buf[start..]);
                    ends.push((start, self.buf.len()));
                    self.buf.push(b'\n');
                    results.push(Ok(seq));
                }
                Err(e) => results.push(Err(format!("encoding the record: {e}"))),
            }
        }

        let outcome = if ends.is_empty() {
            Ok(())
        } else {
            self.persist(force_sync)
        };
        match &outcome {
            Ok(()) => {
                self.seq = seq;
                self.prev = prev;
                self.shared.writable.store(true, Ordering::Relaxed);
                if self.lines.receiver_count() > 0 {
                    for &(s, e) in &ends {
                        if let Ok(line) = std::str::from_utf8(&self.buf[s..e]) {
                            let _ = self.lines.send(Arc::from(line));
                        }
                    }
                }
            }
            Err(e) => {
                self.shared.writable.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, records = ends.len(), "audit write failed; refusing requests until it works again");
            }
        }
        for (job, result) in jobs.drain(..).zip(results) {
            let result = match (&outcome, result) {
                (Ok(()), r) => r,
                (Err(e), _) => Err(e.clone()),
            };
            match job.reply {
                Some(reply) => {
                    let _ = reply.send(result.map_err(AuditUnavailable));
                }
                None if result.is_err() => {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
                None => {}
            }
        }
        outcome
    }

    fn persist(&mut self, force_sync: bool) -> Result<(), String> {
        let Some(path) = self.path.clone() else {
            if !self.stdout {
                return Err("no audit sink configured".into());
            }
            // Stdout is the only sink, so its failure is the log's failure.
            return self
                .write_stdout()
                .map_err(|e| format!("writing to stdout: {e}"));
        };
        // Reopen first: it removes leftovers of a failed write, which must not end up in an
        // archive.
        if self.file.is_none() {
            self.reopen(&path)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
        }
        if let Some(limit) = self.rotate_bytes {
            if self.good_len > 0 && self.good_len + self.buf.len() as u64 > limit {
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
        let sync = force_sync || self.durability == Durability::Fsync;
        let written = file.write_all(&self.buf).and_then(|()| {
            if sync {
                self.shared.syncs.fetch_add(1, Ordering::Relaxed);
                file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // The records were never acknowledged: take their bytes back off the file so
            // the chain on disk ends at the last good record, then retry from a fresh handle.
            if let Err(te) = file.set_len(self.good_len) {
                tracing::warn!(file = %path.display(), error = %te, "could not truncate a failed audit write; will retry on reopen");
            }
            self.file = None;
            return Err(format!("writing {}: {e}", path.display()));
        }
        self.good_len += self.buf.len() as u64;
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

    fn reopen(&mut self, path: &Path) -> std::io::Result<()> {
        let created = !path.exists();
        let mut file = (self.opener)(path)?;
        if created {
            // fdatasync on the file does not make its directory entry durable.
            std::fs::File::open(parent_dir(path))?.sync_all()?;
        }
        let size = file.size()?;
        if size > self.good_len {
            // Leftovers of a failed write that could not be truncated at the time.
            file.set_len(self.good_len)?;
            file.sync_data()?;
        } else if size < self.good_len {
            tracing::warn!(file = %path.display(), size, expected = self.good_len, "audit log is shorter than written; someone else changed it");
            self.good_len = size;
        }
        self.file = Some(file);
        Ok(())
    }

    /// Moves the active file to `<path>.<N+1>` and starts a fresh one; the chain carries on
    /// because `seq` and `prev` live here, not in the file.
    fn rotate(&mut self, path: &Path) -> std::io::Result<()> {
        if let Some(f) = self.file.as_mut() {
            // In flush mode nothing synced the old file yet; an archive must be complete.
            f.sync_data()?;
        }
        self.file = None;
        let n = rotated_files(path)?.last().map_or(1, |(n, _)| n + 1);
        let mut dest = path.as_os_str().to_owned();
        dest.push(format!(".{n}"));
        std::fs::rename(path, &dest)?;
        self.good_len = 0;
        // Creating the new file syncs the directory, which also makes the rename durable;
        // if that failed, the rename still has to be.
        if let Err(e) = self.reopen(path) {
            std::fs::File::open(parent_dir(path))?.sync_all()?;
            return Err(e);
        }
        tracing::info!(archived = %PathBuf::from(dest).display(), "audit log rotated");
        Ok(())
    }
}
