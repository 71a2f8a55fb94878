//! `seb audit verify`: every signature, every `prev` link, and `seq` without gaps.

use super::record::{check_signature, line_hash, GENESIS};
use ed25519_dalek::VerifyingKey;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    pub files: usize,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The first record links to a record not given (older files pruned or not passed).
    pub starts_mid_chain: bool,
    pub decisions: u64,
    pub outcomes: u64,
    pub starts: u64,
    /// Operators' labels (a label log, `seb audit label`).
    pub labels: u64,
    /// Revocation documents the broker applied.
    pub revocations: u64,
    /// What each `recovery` record says was lost or moved aside: the chain verifies across
    /// it, and a reader must still hear about it.
    pub recoveries: Vec<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("FAILED at {}:{line}{}: {what}", file.display(), seq.map(|s| format!(" (seq {s})")).unwrap_or_default())]
pub struct VerifyFailure {
    pub file: PathBuf,
    /// 1-based; 0 when the file itself could not be read.
    pub line: usize,
    pub seq: Option<u64>,
    pub what: String,
}

/// Verifies the files, in the order given, as one chain.
pub fn verify_logs(paths: &[PathBuf], key: &VerifyingKey) -> Result<VerifyReport, VerifyFailure> {
    let mut report = VerifyReport {
        files: paths.len(),
        ..Default::default()
    };
    let mut prev: Option<[u8; 32]> = None;
    let mut last_seq: Option<u64> = None;
    // The key the last verified start record names, to explain a signature that does not
    // verify.
    let mut start_key: Option<String> = None;
    for path in paths {
        let data = std::fs::read(path).map_err(|e| fail(path, 0, None, format!("reading: {e}")))?;
        let mut rest: &[u8] = &data;
        let mut n = 0;
        while !rest.is_empty() {
            n += 1;
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                // Not tampering with a signed record: bytes after the last complete one, from a
                // write interrupted by a crash or a file cut short. A broker moves them aside at
                // its next start and says so in a recovery record.
                return Err(fail(
                    path,
                    n,
                    None,
                    format!(
                        "tail cut after the last signed record{}: {} byte(s) without a newline \
                         (an interrupted write or a cut file, not an altered record); the broker \
                         moves them aside at its next start",
                        last_seq.map(|s| format!(" (seq {s})")).unwrap_or_default(),
                        rest.len()
                    ),
                ));
            };
            let line = &rest[..end];
            rest = &rest[end + 1..];
            let (seq, kind) =
                check_line(line, key, prev.as_ref(), last_seq).map_err(|(seq, mut what)| {
                    if what == BAD_SIGNATURE {
                        what = signature_hint(key, line, rest, start_key.as_deref());
                    }
                    fail(path, n, seq, what)
                })?;
            if kind == "start" {
                start_key = start_key_id(line);
            }
            if prev.is_none() {
                report.first_seq = Some(seq);
                report.starts_mid_chain = line_prev(line) != Some(GENESIS);
            }
            match kind.as_str() {
                "decision" => report.decisions += 1,
                "outcome" => report.outcomes += 1,
                "label" => report.labels += 1,
                "revocation" => report.revocations += 1,
                "recovery" => report.recoveries.push(format!(
                    "{}:{n} (seq {seq}): {}",
                    path.display(),
                    recovery_summary(line)
                )),
                _ => report.starts += 1,
            }
            report.records += 1;
            prev = Some(line_hash(line));
            last_seq = Some(seq);
        }
    }
    report.last_seq = last_seq;
    Ok(report)
}

const BAD_SIGNATURE: &str = "signature does not verify";

/// `key_id` of a start record.
fn start_key_id(line: &[u8]) -> Option<String> {
    let v = crate::json::parse_strict(line).ok()?;
    if v.get("kind").and_then(Value::as_str) != Some("start") {
        return None;
    }
    Some(v.get("key_id")?.as_str()?.to_string())
}

/// Why a signature does not verify, as far as the log says: the key id the broker's start
/// record names (this line's, the last verified one's, or the next one in the file) against
/// the key given.
fn signature_hint(key: &VerifyingKey, line: &[u8], rest: &[u8], verified: Option<&str>) -> String {
    let given = crate::cert::keys::key_id(key);
    let named = start_key_id(line)
        .map(|k| (k, "the broker's start record names"))
        .or_else(|| {
            verified.map(|k| {
                (
                    k.to_string(),
                    "the broker's last start record, which verifies, names",
                )
            })
        })
        .or_else(|| {
            rest.split(|&b| b == b'\n')
                .find_map(start_key_id)
                .map(|k| (k, "the next start record in this file names"))
        });
    match named {
        Some((k, which)) if k != given => format!(
            "{BAD_SIGNATURE} with --key (key id {given}); {which} key id {k}: verify with that broker's public key"
        ),
        Some(_) => format!(
            "{BAD_SIGNATURE} with --key (key id {given}), the key the log's start record names: \
             the record was altered after it was signed"
        ),
        None => format!(
            "{BAD_SIGNATURE} with --key (key id {given}); no start record says which key signed this log"
        ),
    }
}

fn recovery_summary(line: &[u8]) -> String {
    let Ok(v) = crate::json::parse_strict(line) else {
        return String::new();
    };
    let r = &v["recovery"];
    let mut s = format!(
        "{}: {}",
        r["what"].as_str().unwrap_or("?"),
        r["message"].as_str().unwrap_or("")
    );
    if let Some([a, b]) = r["lost_seq"]
        .as_array()
        .map(|a| [a[0].clone(), a[1].clone()])
    {
        s.push_str(&format!("; records {a}..={b} are lost"));
    }
    if let Some(d) = r["dropped"].as_object() {
        s.push_str(&format!(
            "; {} byte(s) moved to {} (sha256 {})",
            d.get("bytes").cloned().unwrap_or_default(),
            d.get("file").and_then(Value::as_str).unwrap_or("?"),
            d.get("sha256").and_then(Value::as_str).unwrap_or("?")
        ));
    }
    s
}

fn fail(path: &Path, line: usize, seq: Option<u64>, what: String) -> VerifyFailure {
    VerifyFailure {
        file: path.to_path_buf(),
        line,
        seq,
        what,
    }
}

fn line_prev(line: &[u8]) -> Option<[u8; 32]> {
    let v = crate::json::parse_strict(line).ok()?;
    let s = v.get("prev")?.as_str()?;
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

type LineError = (Option<u64>, String);

/// Checks one line against its predecessor (None for the first line of the chain).
fn check_line(
    line: &[u8],
    key: &VerifyingKey,
    prev: Option<&[u8; 32]>,
    last_seq: Option<u64>,
) -> Result<(u64, String), LineError> {
    let v = crate::json::parse_strict(line).map_err(|e| (None, format!("not valid JSON: {e}")))?;
    let seq = v.get("seq").and_then(Value::as_u64);
    let seq = seq.ok_or((None, "no numeric seq".to_string()))?;
    let err = |what: String| (Some(seq), what);
    let b64 = check_signature(line, key).map_err(err)?;
    if v.get("sig").and_then(Value::as_str) != Some(b64) {
        return Err(err("sig is not the last member".into()));
    }
    let kind = match v.get("kind").and_then(Value::as_str) {
        Some(k @ ("decision" | "outcome" | "start" | "recovery" | "label" | "revocation")) => {
            k.to_owned()
        }
        other => return Err(err(format!("unknown kind {other:?}"))),
    };
    let got_prev = v
        .get("prev")
        .and_then(Value::as_str)
        .ok_or_else(|| err("no prev".into()))?;
    // A recovery record declares the numbers that were lost; its seq follows them.
    let declared_gap = match v.pointer("/recovery/lost_seq").and_then(Value::as_array) {
        Some(r) if kind == "recovery" => match (
            r.first().and_then(Value::as_u64),
            r.get(1).and_then(Value::as_u64),
        ) {
            (Some(a), Some(b)) if a <= b && b.checked_add(1) == Some(seq) => Some(a),
            _ => {
                return Err(err(
                    "recovery record with a lost_seq its own seq does not follow".into(),
                ))
            }
        },
        _ => None,
    };
    match (prev, last_seq) {
        (Some(prev), Some(last)) => {
            let expected = match declared_gap {
                Some(first_lost) => first_lost,
                None => seq,
            };
            if expected != last.wrapping_add(1) {
                return Err(err(format!(
                    "seq {seq} follows {last}: records missing, inserted or reordered"
                )));
            }
            let want = hex::encode(prev);
            if got_prev != want {
                return Err(err(format!(
                    "prev {got_prev} is not the hash of the previous line ({want}): \
                     the previous line was altered, removed or reordered"
                )));
            }
        }
        _ => {
            let genesis = hex::encode(GENESIS);
            // A chain may start with a recovery record whose declared loss begins at 1.
            if got_prev == genesis && seq != 1 && declared_gap != Some(1) {
                return Err(err(format!(
                    "chain start (zero prev) with seq {seq}, not 1"
                )));
            }
        }
    }
    Ok((seq, kind))
}

#[cfg(test)]
mod tests {
    use super::super::record::tests::entry;
    use super::super::record::{encode_line, Kind, Payload, Verdict};
    use super::*;

    /// Writes `n` chained lines and returns the file contents as lines.
    fn chain(key: &ed25519_dalek::SigningKey, n: u64) -> Vec<Vec<u8>> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let mut out = Vec::new();
                let p = Payload::Entry(Box::new(entry(Kind::Decision, Verdict::Allow)));
                encode_line(
                    &mut out,
                    seq,
                    "2026-03-01T00:00:00.000Z",
                    "b",
                    &p,
                    &prev,
                    key,
                )
                .unwrap();
                prev = line_hash(&out);
                out
            })
            .collect()
    }

    fn write(dir: &Path, name: &str, lines: &[Vec<u8>]) -> PathBuf {
        let path = dir.join(name);
        let mut data = Vec::new();
        for l in lines {
            data.extend_from_slice(l);
            data.push(b'\n');
        }
        std::fs::write(&path, data).unwrap();
        path
    }

    #[test]
    fn detects_tampering_deletion_reordering_and_swapped_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::cert::keys::generate();
        let vk = key.verifying_key();
        let lines = chain(&key, 6);
        let good = write(dir.path(), "good", &lines);
        let r = verify_logs(&[good], &vk).unwrap();
        assert_eq!((r.records, r.first_seq, r.last_seq), (6, Some(1), Some(6)));
        assert!(!r.starts_mid_chain);

        // Any single byte of a middle line: checked line by line, since a full verify per
        // byte is slow in debug builds; then once through files.
        let prev = line_hash(&lines[1]);
        for i in 0..lines[2].len() {
            let mut l = lines[2].clone();
            l[i] ^= 0x01;
            assert!(
                check_line(&l, &vk, Some(&prev), Some(2)).is_err(),
                "byte {i}"
            );
        }
        let mut l = lines.clone();
        l[2][40] ^= 0x01;
        let e = verify_logs(&[write(dir.path(), "t", &l)], &vk).unwrap_err();
        assert_eq!(e.line, 3, "{e}");

        let mut deleted = lines.clone();
        deleted.remove(3);
        let e = verify_logs(&[write(dir.path(), "d", &deleted)], &vk).unwrap_err();
        assert_eq!((e.line, e.seq), (4, Some(5)));

        let mut reordered = lines.clone();
        reordered.swap(2, 3);
        let e = verify_logs(&[write(dir.path(), "r", &reordered)], &vk).unwrap_err();
        assert_eq!(e.line, 3);

        let sig_of = |l: &[u8]| {
            let v = crate::json::parse_strict(l).unwrap();
            v["sig"].as_str().unwrap().to_owned()
        };
        let (s2, s3) = (sig_of(&lines[2]), sig_of(&lines[3]));
        let mut swapped = lines.clone();
        swapped[2] = String::from_utf8(lines[2].clone())
            .unwrap()
            .replace(&s2, &s3)
            .into_bytes();
        swapped[3] = String::from_utf8(lines[3].clone())
            .unwrap()
            .replace(&s3, &s2)
            .into_bytes();
        let e = verify_logs(&[write(dir.path(), "s", &swapped)], &vk).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.what.contains("signature"), "{e}");

        // A different key verifies nothing.
        let other = crate::cert::keys::generate().verifying_key();
        let e = verify_logs(&[write(dir.path(), "k", &lines)], &other).unwrap_err();
        assert_eq!(e.line, 1);
    }

    #[test]
    fn partial_trailing_line_fails_and_mid_chain_start_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::cert::keys::generate();
        let vk = key.verifying_key();
        let lines = chain(&key, 4);
        let p = write(dir.path(), "p", &lines);
        let mut data = std::fs::read(&p).unwrap();
        data.extend_from_slice(&lines[0][..20]);
        std::fs::write(&p, data).unwrap();
        let e = verify_logs(&[p], &vk).unwrap_err();
        assert_eq!(e.line, 5);
        assert!(
            e.what
                .contains("tail cut after the last signed record (seq 4)"),
            "{e}"
        );

        let a = write(dir.path(), "a", &lines[..2]);
        let b = write(dir.path(), "b", &lines[2..]);
        let r = verify_logs(&[a.clone(), b.clone()], &vk).unwrap();
        assert_eq!((r.records, r.files, r.starts_mid_chain), (4, 2, false));
        let r = verify_logs(std::slice::from_ref(&b), &vk).unwrap();
        assert_eq!(
            (r.records, r.first_seq, r.starts_mid_chain),
            (2, Some(3), true)
        );
        // Files in the wrong order break the chain.
        let e = verify_logs(&[b, a], &vk).unwrap_err();
        assert_eq!(e.file, dir.path().join("a"));
        assert!(
            e.to_string()
                .starts_with(&format!("FAILED at {}:1 (seq 1): ", e.file.display())),
            "{e}"
        );
    }
}
