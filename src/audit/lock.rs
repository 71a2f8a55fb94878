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
    /// (device, inode) of `file`: what the path must still name before each write.
    file_id: (u64, u64),
    path: PathBuf,
    /// The head's JSON up to `"seq":`, the same for every write: only seq and prev change.
    prefix: Vec<u8>,
}

fn id_of(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// `{"pid":..,"broker":..,"started":..,"seq":`; without the broker id when that one is so
/// long that the head would not fit its slot.
fn head_prefix(pid: u32, broker: &str, started: &str) -> Vec<u8> {
    let build = |broker: &str| {
        let q = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into());
        format!(
            "{{\"pid\":{pid},\"broker\":{},\"started\":{},\"seq\":",
            q(broker),
            q(started)
        )
        .into_bytes()
    };
    // Room for the seq (20 digits), the prev member (75 bytes) and the closing brace.
    let p = build(broker);
    if p.len() + 100 < SLOT {
        p
    } else {
        build("")
    }
}

pub(crate) fn lock_path(log: &Path) -> PathBuf {
    let name = log
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Hidden, so that `audit.jsonl*` (the log and its rotated files) does not match it.
    super::paths::parent_dir(log).join(format!(".{name}.lock"))
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
        let file_id = file
            .metadata()
            .map(|m| id_of(&m))
            .with_context(|| format!("reading {}", path.display()))?;
        let pid = std::process::id();
        let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let lock = LogLock {
            file,
            file_id,
            path,
            prefix: head_prefix(pid, broker, &started),
        };
        Ok((lock, previous))
    }

    /// Before each write: the lock file at the path must still be the one this process holds.
    /// Deleted or replaced (a cleanup of dot files), another broker could lock a new file and
    /// write the same log; so a new lock file is taken at once, and if another process already
    /// holds one, this broker writes no more (a log has one writer).
    pub(crate) fn ensure_held(&mut self) -> Result<(), String> {
        // One stat of the path per write; the held file's own identity never changes.
        if std::fs::metadata(&self.path).map(|m| id_of(&m)).ok() == Some(self.file_id) {
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
        self.file_id = file
            .metadata()
            .map(|m| id_of(&m))
            .map_err(|e| format!("reading {}: {e}", self.path.display()))?;
        self.file = file;
        Ok(())
    }

    /// Records the head of the chain as written so far. A failure is logged, not fatal: the
    /// head only lets the next start detect losses, and the log itself is intact.
    pub(crate) fn record_head(&self, seq: u64, prev: &[u8; 32]) {
        // Runs after every write of the log: the constant part is made once, at start.
        use std::io::Write;
        let mut buf = Vec::with_capacity(SLOT);
        buf.extend_from_slice(&self.prefix);
        let _ = write!(buf, "{seq}");
        buf.extend_from_slice(b",\"prev\":\"");
        super::record::push_hex(&mut buf, prev);
        buf.extend_from_slice(b"\"}");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What one broker writes after each record, the next reads at start, whatever the
    /// broker id (one too long for the slot loses the id, never the seq and prev).
    #[test]
    fn the_head_written_reads_back() {
        for broker in ["b-1", &"x".repeat(600)] {
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("audit.jsonl");
            let (lock, before) = LogLock::acquire(&log, broker).unwrap();
            assert!(before.is_none());
            lock.record_head(41, &[0xab; 32]);
            lock.record_head(42, &[0xcd; 32]);
            let head = read_head(&lock.file).unwrap();
            assert_eq!(
                (head.seq, head.prev.as_str()),
                (42, "cd".repeat(32).as_str())
            );
            assert_eq!(head.pid, std::process::id());
            assert_eq!(head.broker, if broker.len() < 100 { broker } else { "" });
            assert_eq!(
                std::fs::metadata(lock_path(&log)).unwrap().len(),
                SLOT as u64
            );
        }
    }
}
