//! One writer per log: an exclusive `flock` on `.<log name>.lock` beside the log, held for the
//! life of the process (the kernel releases it when the process dies, however it dies).
//!
//! The lock file also holds the head of the chain the holder has written (`seq`, `prev`),
//! rewritten in place after every write. It outlives the process, so the next broker can tell
//! a log that ends where its predecessor left it from one that lost records since (a deleted
//! file, whole lines cut off the end): the log alone cannot show what is no longer in it.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The lock file is rewritten in place with one `pwrite`, padded to this size, so a reader
/// never sees a mix of two heads' lengths.
const SLOT: usize = 512;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Head {
    pub pid: u32,
    pub broker: String,
    pub started: String,
    /// Last sequence number written (0: none yet).
    pub seq: u64,
    /// Hex SHA-256 of that record's line.
    pub prev: String,
}

pub(crate) struct LogLock {
    file: File,
    path: PathBuf,
    pid: u32,
    broker: String,
    started: String,
}

pub(crate) fn lock_path(log: &Path) -> PathBuf {
    let name = log
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Hidden, so that `audit.jsonl*` (the log and its rotated files) does not match it.
    super::recover::parent_dir(log).join(format!(".{name}.lock"))
}

impl LogLock {
    /// Takes the lock, or says who holds it. Returns the head the previous holder recorded.
    pub(crate) fn acquire(log: &Path, broker: &str) -> anyhow::Result<(LogLock, Option<Head>)> {
        let path = lock_path(log);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .open(&path)
            .with_context(|| format!("opening the audit log's lock file {}", path.display()))?;
        let previous = read_head(&file);
        // std's file lock is flock(2) on Unix: released by the kernel when the process dies.
        if let Err(e) = file.try_lock() {
            if let std::fs::TryLockError::WouldBlock = e {
                let holder = match &previous {
                    Some(h) => format!(
                        "broker {:?} (pid {}, started {})",
                        h.broker, h.pid, h.started
                    ),
                    None => "another process".into(),
                };
                anyhow::bail!(
                    "audit log {} is in use by {holder}: a log has one writer; give this \
                     broker its own audit.path",
                    log.display()
                );
            }
            return Err(std::io::Error::from(e))
                .with_context(|| format!("locking {}", path.display()));
        }
        let lock = LogLock {
            file,
            path,
            pid: std::process::id(),
            broker: broker.to_string(),
            started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        Ok((lock, previous))
    }

    /// Before each write: the lock file at the path must still be the one this process holds.
    /// Deleted or replaced (a cleanup of dot files), another broker could lock a new file and
    /// write the same log; so a new lock file is taken at once, and if another process already
    /// holds one, this broker writes no more (a log has one writer).
    pub(crate) fn ensure_held(&mut self) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let id = |m: std::fs::Metadata| (m.dev(), m.ino());
        let held = self.file.metadata().map(id).ok();
        if held.is_some() && std::fs::metadata(&self.path).map(id).ok() == held {
            return Ok(());
        }
        tracing::error!(file = %self.path.display(), "the audit log's lock file was deleted or replaced while this broker held it; taking it again");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .open(&self.path)
            .map_err(|e| {
                format!(
                    "re-creating the audit log's lock file {}: {e}",
                    self.path.display()
                )
            })?;
        if file.try_lock().is_err() {
            let holder = read_head(&file)
                .map(|h| format!("broker {:?} (pid {})", h.broker, h.pid))
                .unwrap_or_else(|| "another process".into());
            return Err(format!(
                "the audit log's lock file {} was replaced, and {holder} holds the new one: a log has one writer, so this broker writes no more",
                self.path.display()
            ));
        }
        self.file = file;
        Ok(())
    }

    /// Records the head of the chain as written so far. A failure is logged, not fatal: the
    /// head only lets the next start detect losses, and the log itself is intact.
    pub(crate) fn record_head(&self, seq: u64, prev: &[u8; 32]) {
        let head = Head {
            pid: self.pid,
            broker: self.broker.clone(),
            started: self.started.clone(),
            seq,
            prev: super::record::hex(prev),
        };
        let mut buf = match serde_json::to_vec(&head) {
            Ok(b) => b,
            Err(_) => return,
        };
        if buf.len() >= SLOT {
            // A broker id that long: keep what fits a slot, the seq and prev matter most.
            buf = serde_json::to_vec(&Head {
                broker: String::new(),
                ..head
            })
            .unwrap_or_default();
        }
        buf.resize(SLOT - 1, b' ');
        buf.push(b'\n');
        if let Err(e) = self.file.write_all_at(&buf, 0) {
            tracing::warn!(file = %self.path.display(), error = %e, "could not record the audit chain's head");
        }
    }
}

fn read_head(file: &File) -> Option<Head> {
    let mut buf = vec![0u8; SLOT];
    let n = file.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    serde_json::from_str(text.trim()).ok()
}
