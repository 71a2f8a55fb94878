//! Which files make up the logs an operator names, in the chain's order.
//!
//! The broker rotates `audit.jsonl` to `audit.jsonl.1`, `.2`, … (the highest number is the
//! newest) and keeps writing `audit.jsonl`. The shell's order of `audit.jsonl*` is not the
//! chain's (`.10` sorts before `.2`, and the active file comes first), so `seb audit verify`
//! and `query` order the files themselves.

use super::paths::rotated_files;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One log: its base path, its rotated files by number, and whether the active file is in.
struct Log {
    base: PathBuf,
    rotated: BTreeMap<u64, PathBuf>,
    active: bool,
}

/// The files of the logs named by `given`, in chain order. An argument is either a log's base
/// path (`audit.jsonl`: the whole log, its rotated files and the active file) or one of its
/// rotated files (`audit.jsonl.7`: that file only). Within a log, files go by rotation number,
/// the active file last, wherever and however often they were named; logs are taken in the
/// order they were first named.
///
/// `NAME.N` is read as rotated file N of `NAME` when `NAME` exists or is named too, or when
/// another `NAME.M` is named (archived files without their active file); otherwise it is a
/// log of its own (a log called `audit.2026`).
pub fn log_files(given: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    Ok(log_groups(given)?.into_iter().flatten().collect())
}

/// [`log_files`], one list per log: several logs (one per broker replica, each its own
/// chain) are verified and queried log by log.
pub fn log_groups(given: &[PathBuf]) -> std::io::Result<Vec<Vec<PathBuf>>> {
    let as_rotated = |p: &Path| -> Option<(PathBuf, u64)> {
        let name = p.file_name()?.to_str()?;
        let (stem, n) = name.rsplit_once('.')?;
        if stem.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((p.with_file_name(stem), n.parse().ok()?))
    };
    let siblings = |base: &Path| {
        given
            .iter()
            .filter(|g| as_rotated(g).is_some_and(|(b, _)| b == base))
            .count()
    };
    let mut logs: Vec<Log> = Vec::new();
    for path in given {
        match as_rotated(path) {
            Some((base, n)) if base.exists() || given.contains(&base) || siblings(&base) > 1 => {
                let i = log_index(&mut logs, &base);
                logs[i].rotated.insert(n, path.clone());
            }
            _ => {
                let i = log_index(&mut logs, path);
                logs[i].active = true;
                for (n, p) in rotated_files(path)? {
                    logs[i].rotated.insert(n, p);
                }
            }
        }
    }
    let mut out = Vec::new();
    for log in logs {
        let rotated = log.rotated.len();
        let mut files: Vec<PathBuf> = log.rotated.into_values().collect();
        // A base path whose active file is gone still names its rotated files; one with none
        // of either stays in, so that reading it says what is missing.
        if log.active && (log.base.exists() || rotated == 0) {
            files.push(log.base);
        }
        out.push(files);
    }
    Ok(out)
}

fn log_index(logs: &mut Vec<Log>, base: &Path) -> usize {
    let key = identity(base);
    if let Some(i) = logs.iter().position(|l| identity(&l.base) == key) {
        return i;
    }
    logs.push(Log {
        base: base.to_path_buf(),
        rotated: BTreeMap::new(),
        active: false,
    });
    logs.len() - 1
}

/// The same file named two ways (`audit.jsonl`, `./audit.jsonl`) is one file.
fn identity(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, names: &[&str]) {
        for n in names {
            std::fs::write(dir.join(n), "").unwrap();
        }
    }

    fn names(files: &[PathBuf]) -> Vec<String> {
        files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn rotated_files_go_by_number_and_the_active_file_last() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        touch(
            d,
            &[
                "audit.jsonl",
                "audit.jsonl.1",
                "audit.jsonl.2",
                "audit.jsonl.10",
            ],
        );
        let chain = [
            "audit.jsonl.1",
            "audit.jsonl.2",
            "audit.jsonl.10",
            "audit.jsonl",
        ];
        // The base path alone is the whole log.
        assert_eq!(names(&log_files(&[d.join("audit.jsonl")]).unwrap()), chain);
        // The shell's order of audit.jsonl*, or any other, and repeats.
        let shell: Vec<PathBuf> = [
            "audit.jsonl",
            "audit.jsonl.1",
            "audit.jsonl.10",
            "audit.jsonl.2",
        ]
        .iter()
        .map(|n| d.join(n))
        .collect();
        assert_eq!(names(&log_files(&shell).unwrap()), chain);
        let mut reversed = shell.clone();
        reversed.reverse();
        reversed.push(d.join("./audit.jsonl.2"));
        assert_eq!(names(&log_files(&reversed).unwrap()), chain);
        // Rotated files alone: just those, in order.
        let some = [d.join("audit.jsonl.10"), d.join("audit.jsonl.2")];
        assert_eq!(
            names(&log_files(&some).unwrap()),
            ["audit.jsonl.2", "audit.jsonl.10"]
        );
    }

    #[test]
    fn archived_files_and_logs_with_numeric_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Archived files without their active file still order by number.
        touch(d, &["old.jsonl.10", "old.jsonl.9"]);
        let got = log_files(&[d.join("old.jsonl.10"), d.join("old.jsonl.9")]).unwrap();
        assert_eq!(names(&got), ["old.jsonl.9", "old.jsonl.10"]);
        // A log named audit.2026 is a log, with its own rotated files.
        touch(d, &["audit.2026", "audit.2026.1"]);
        let got = log_files(&[d.join("audit.2026")]).unwrap();
        assert_eq!(names(&got), ["audit.2026.1", "audit.2026"]);
        // Two logs keep the order they were named in.
        let got = log_files(&[d.join("audit.2026"), d.join("old.jsonl.9")]).unwrap();
        assert_eq!(names(&got), ["audit.2026.1", "audit.2026", "old.jsonl.9"]);
        // A base path that does not exist stays in, for the reader to name it.
        let got = log_files(&[d.join("missing.jsonl")]).unwrap();
        assert_eq!(names(&got), ["missing.jsonl"]);
    }
}
