//! The active file: what the writer needs of it (so tests can make it fail), and what happens
//! when it is reopened, rotated, or found deleted or replaced under the broker.

use super::*;

/// File operations the writer needs, behind a trait so tests can make them fail.
pub(crate) trait LogFile: Send {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()>;
    fn sync_data(&mut self) -> std::io::Result<()>;
    fn set_len(&mut self, len: u64) -> std::io::Result<()>;
    fn size(&self) -> std::io::Result<u64>;
    /// (device, inode) of the open file, if it has one.
    fn id(&self) -> Option<(u64, u64)> {
        None
    }
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
    fn id(&self) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        self.metadata().ok().map(|m| (m.dev(), m.ino()))
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

pub(super) fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The `seq` and line hash of the last record still on disk before the active file: the
/// newest rotated file's last line, or the chain's start.
pub(super) fn last_remaining_line(path: &Path) -> (u64, [u8; 32]) {
    let newest = rotated_files(path).ok().and_then(|r| r.last().cloned());
    let Some((_, file)) = newest else {
        return (0, GENESIS);
    };
    let Ok(data) = std::fs::read(&file) else {
        return (0, GENESIS);
    };
    data.split(|&b| b == b'\n')
        .rfind(|l| !l.is_empty())
        .and_then(|l| {
            let seq = crate::json::parse_strict(l).ok()?.get("seq")?.as_u64()?;
            Some((seq, line_hash(l)))
        })
        .unwrap_or((0, GENESIS))
}

impl Writer {
    pub(super) fn reopen(&mut self, path: &Path) -> std::io::Result<()> {
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
            self.shared.sync(file.as_mut())?;
        } else if size < self.good_len {
            tracing::warn!(file = %path.display(), size, expected = self.good_len, "audit log is shorter than written; someone else changed it");
            self.good_len = size;
        }
        // The file opened, not whatever the path names a moment later.
        self.file_id = file.id();
        self.file = Some(file);
        *self
            .shared
            .file_id
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = self.file_id.map(|id| (path.to_path_buf(), id));
        Ok(())
    }

    /// The active file was deleted or replaced while open. Its records are lost to readers;
    /// the chain continues in a new file from the last record still on disk, and its first
    /// record says which numbers were lost. The batch in hand is refused.
    pub(super) fn lost_active_file(&mut self, path: &Path, replaced: bool) -> String {
        let what = if replaced { "replaced" } else { "deleted" };
        let mut moved = None;
        if replaced {
            // Appending to someone else's file would mix chains; keep it for the operator.
            let aside = aside_path(path, "foreign");
            match std::fs::rename(path, &aside) {
                Ok(()) => moved = Some(aside),
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "could not move the replacing file aside; refusing until it is gone");
                    self.file = None;
                    return format!("the active audit log {} was replaced while open, and the new file could not be moved aside: {e}", path.display());
                }
            }
        }
        let (last_seq, last_prev) = last_remaining_line(path);
        let lost = self
            .active_first_seq
            .map(|first| [first.min(last_seq + 1), self.seq]);
        let message = format!(
            "the active audit log {} was {what} while open{}",
            path.display(),
            moved
                .as_ref()
                .map(|m| format!("; the file found in its place was moved to {}", m.display()))
                .unwrap_or_default()
        );
        tracing::error!(lost = ?lost, "{message}; continuing the chain in a new file");
        if self.uncommitted > 0 {
            self.shared
                .dropped
                .fetch_add(self.uncommitted, Ordering::Relaxed);
        }
        self.recovery = Some(RecoveryInfo {
            what,
            message: message.clone(),
            lost_seq: lost,
            dropped: None,
            // This process still counts those uses in memory; a restart cannot.
            uses_known: lost.is_none(),
            spent: Vec::new(),
        });
        // The next record follows the lost ones, chained to the last line still on disk.
        self.file = None;
        self.file_id = None;
        self.good_len = 0;
        self.prev = last_prev;
        self.committed = Mark {
            len: 0,
            seq: self.seq,
            prev: last_prev,
        };
        self.uncommitted = 0;
        self.uncommitted_since = None;
        self.uncommitted_lines.clear();
        self.active_first_seq = None;
        message
    }

    /// Moves the active file to `<path>.<N+1>` and starts a fresh one; the chain carries on
    /// because `seq` and `prev` live here, not in the file.
    /// The caller has synced the active file and committed it.
    pub(super) fn rotate(&mut self, path: &Path) -> std::io::Result<()> {
        self.file = None;
        let n = rotated_files(path)?.last().map_or(1, |(n, _)| n + 1);
        let mut dest = path.as_os_str().to_owned();
        dest.push(format!(".{n}"));
        std::fs::rename(path, &dest)?;
        self.good_len = 0;
        self.committed.len = 0;
        self.active_first_seq = None;
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
