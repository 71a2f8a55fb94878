//! Uses already spent, read back from the log at start.
//!
//! Every admitted mutation has a durable decision record before anything reaches the upstream,
//! and that record names the certificate (`cert_id`), its issuer key and expiry and which use it
//! took (`request.use`). So the log is the record of every use that may have had an effect: a
//! broker that counts them again before it listens never re-admits a spent use, whatever
//! happened to its memory. A use that provably never left (the upstream refused the connection)
//! is given back, and its outcome record says so (`outcome: "returned"`), so it is not counted.
//!
//! Only records that can concern a certificate still usable are read: a certificate admitted
//! now has `exp - iat <= max_ttl` and `exp > now - skew`, and each of its earlier uses happened
//! after `iat - skew`, so after `now - max_ttl - 2 * skew`. Files are read newest first, and
//! reading stops after the first file that begins before that horizon.

use super::paths::rotated_files;
use anyhow::Context;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One certificate's spent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spent {
    /// Issuer key id; None in records written before it was recorded (use `iss` then).
    pub kid: Option<String>,
    pub iss: Option<String>,
    pub jti: String,
    pub used: u32,
    /// The certificate's `exp`; None in records written before it was recorded.
    pub exp: Option<i64>,
    /// When the last of those uses was recorded (seconds since the epoch).
    pub last_ts: i64,
}

#[derive(Debug, Default)]
pub struct SpentScan {
    pub certificates: Vec<Spent>,
    pub files: Vec<PathBuf>,
    pub lines: u64,
    /// When the latest recovery record whose lost records' uses are unknown was written
    /// (seconds since the epoch): no certificate issued before it can be proven unspent.
    pub uses_unknown_before: Option<i64>,
    /// The revocation documents the broker applied, as far back as the horizon.
    pub revocations: Vec<LoggedRevocation>,
}

/// A `revocation` record's document. Back to the horizon is far enough: a certificate still
/// usable was issued after it, so a revocation of it was applied after it too, and one
/// issued after a revocation carries that revocation's epoch or a later one, which a broker
/// holding an older document refuses to admit.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct LoggedRevocation {
    pub iss: String,
    pub epoch: u64,
    pub iat: i64,
    pub document: String,
}

#[derive(Deserialize)]
struct Line<'a> {
    seq: Option<u64>,
    #[serde(borrow)]
    prev: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ts: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    cert_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    iss: Option<Cow<'a, str>>,
    #[serde(borrow)]
    decision: Option<Cow<'a, str>>,
    #[serde(borrow)]
    outcome: Option<Cow<'a, str>>,
    #[serde(borrow)]
    request: Option<Request<'a>>,
    recovery: Option<Recovery>,
    revocation: Option<LoggedRevocation>,
}

#[derive(Deserialize)]
struct Recovery {
    lost_seq: Option<[u64; 2]>,
    #[serde(default)]
    uses_known: bool,
    #[serde(default)]
    spent: Vec<SpentRef>,
}

#[derive(Deserialize)]
struct SpentRef {
    cert_id: String,
    iss: Option<String>,
    kid: Option<String>,
    exp: Option<i64>,
}

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(rename = "use", borrow)]
    uses: Option<Use<'a>>,
}

#[derive(Deserialize)]
struct Use<'a> {
    #[serde(borrow)]
    kid: Option<Cow<'a, str>>,
    exp: Option<i64>,
}

/// The members that place a line in the chain.
struct Head {
    seq: Option<u64>,
    ts: Option<i64>,
    prev: Option<String>,
}

/// Recovery has already moved a torn tail aside, so a line that does not parse is damage: a
/// use we cannot count could be admitted twice, so the broker does not start.
fn parse_line<'a>(file: &Path, n: usize, raw: &'a [u8]) -> anyhow::Result<Line<'a>> {
    serde_json::from_slice(raw).map_err(|e| {
        anyhow::anyhow!(
            "{}: line {} cannot be read to rebuild certificate use counts ({e}); \
             move the damaged file aside only once its certificates have expired",
            file.display(),
            n + 1
        )
    })
}

/// `seq`, `ts` and `prev` read where the writer puts them (`{"seq":N,"ts":"…",` first,
/// `,"prev":"<64 hex>","sig":` last), without parsing the line. None when the line is not
/// laid out so; it is then parsed.
fn cheap_head(raw: &[u8]) -> Option<Head> {
    let rest = raw.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",\"ts\":\"")?;
    let end = memchr::memchr(b'"', rest)?;
    let ts = ts_secs(std::str::from_utf8(&rest[..end]).ok()?);
    let at = memchr::memmem::rfind(raw, b",\"prev\":\"")? + 9;
    let prev = raw.get(at..at + 64)?;
    if raw.get(at + 64) != Some(&b'"') || !prev.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    Some(Head {
        seq: Some(seq),
        ts,
        prev: Some(std::str::from_utf8(prev).ok()?.to_owned()),
    })
}

/// Whether a line can hold a use or give one back; most lines (outcomes, starts) cannot, and
/// are not parsed. Member names are never escaped by the writer, and a quote inside a string
/// value always is, so the first raw `"kind":"` is the record's own `kind`.
fn may_count(line: &[u8]) -> bool {
    let Some(at) = memchr::memmem::find(line, b"\"kind\":\"") else {
        // Not a record this broker wrote: parsed, and refused if it does not read.
        return true;
    };
    let kind = &line[at + 8..];
    if kind.starts_with(b"outcome\"") {
        return memchr::memmem::find(line, b"\"outcome\":\"returned\"").is_some();
    }
    !kind.starts_with(b"start\"")
}

fn ts_secs(ts: &str) -> Option<i64> {
    humantime::parse_rfc3339(ts).ok().and_then(|t| {
        t.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs() as i64)
    })
}

/// Reads the log at `path` (active file, then `path.N` newest first) back to `horizon`
/// (seconds since the epoch) and counts the uses of every certificate.
///
/// With `key` (the broker's), what is counted is first authenticated, at the cost of one hash
/// per line: every line read must be the one the line after it names as `prev`, back from the
/// newest, whose predecessor (the last record of the previous run) `Audit::start` checked
/// against the key; so someone who can write the log but holds no key cannot lower a count (a
/// decision edited or removed, a `returned` outcome added). A broken link inside a file stops
/// the start; between two files it is treated as records missing there. A `returned` outcome
/// gives a use back only if `key` signed it.
pub fn spent_uses(
    path: &Path,
    horizon: i64,
    key: Option<&ed25519_dalek::VerifyingKey>,
) -> anyhow::Result<SpentScan> {
    let mut files = vec![path.to_path_buf()];
    let mut rotated =
        rotated_files(path).with_context(|| format!("listing {}.N", path.display()))?;
    rotated.reverse();
    files.extend(rotated.into_iter().map(|(_, p)| p));

    type Key = (Option<String>, Option<String>, String);
    let mut counts: HashMap<Key, (i64, Option<i64>, i64)> = HashMap::new();
    let mut scan = SpentScan::default();
    // Records lost and declared by a recovery record (`lost_seq`), and the first record (seq,
    // ts) of the file read before this one: the files read must join up, seq after seq, back
    // to the horizon, or uses may be missing from the count (a rotated file renamed, moved to
    // an archive or deleted). Then no certificate issued before the first record after the
    // missing ones can be proven unspent.
    let mut declared: Vec<[u64; 2]> = Vec::new();
    let mut newer_first: Option<(u64, Option<i64>)> = None;
    let mut reached_horizon = false;
    // The `prev` named by the first line of the file read before this one.
    let mut newer_first_prev: Option<String> = None;
    let missing = |scan: &mut SpentScan,
                   from: u64,
                   to: u64,
                   at: Option<i64>,
                   declared: &[[u64; 2]]| {
        if from <= to && !declared.iter().any(|[a, b]| *a <= from && *b >= to) {
            tracing::error!(from, to, "audit records are missing from the log's files: certificate uses recorded in them cannot be counted");
            let at = at.unwrap_or(i64::MAX);
            scan.uses_unknown_before = scan.uses_unknown_before.max(Some(at));
        }
    };
    for file in files {
        let data = match std::fs::read(&file) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "reading {} to rebuild certificate use counts",
                        file.display()
                    )
                })
            }
        };
        let mut first_ts = None;
        let (mut first_seq, mut last_seq) = (None, None);
        let (mut first_prev, mut last_line): (Option<String>, Option<&[u8]>) = (None, None);
        for (n, raw) in data.split(|&b| b == b'\n').enumerate() {
            if raw.is_empty() {
                continue;
            }
            scan.lines += 1;
            // Only lines that can hold a use are parsed whole; every line is still read for
            // the members that chain it (seq, ts, prev), cheaply where the writer's layout
            // allows, by a full parse otherwise.
            let full: Option<Line> = if may_count(raw) {
                Some(parse_line(&file, n, raw)?)
            } else {
                None
            };
            let head = match &full {
                Some(l) => Head {
                    seq: l.seq,
                    ts: l.ts.as_deref().and_then(ts_secs),
                    prev: l.prev.as_deref().map(str::to_owned),
                },
                None => match cheap_head(raw) {
                    Some(h) => h,
                    None => {
                        let l = parse_line(&file, n, raw)?;
                        Head {
                            seq: l.seq,
                            ts: l.ts.as_deref().and_then(ts_secs),
                            prev: l.prev.as_deref().map(str::to_owned),
                        }
                    }
                },
            };
            if key.is_some() {
                let named = head.prev.as_deref();
                match last_line {
                    Some(before) => {
                        let want = hex::encode(super::record::line_hash(before));
                        if named != Some(want.as_str()) {
                            anyhow::bail!(
                                "{}: line {}: its prev is not the hash of the line before it: \
                                 the log was altered, so the certificate uses in it cannot be \
                                 counted; `seb audit verify` shows where",
                                file.display(),
                                n + 1
                            );
                        }
                    }
                    None => first_prev = named.map(str::to_owned),
                }
                last_line = Some(raw);
            }
            let ts = head.ts;
            if first_ts.is_none() {
                first_ts = ts;
            }
            if first_seq.is_none() {
                first_seq = head.seq;
            }
            last_seq = head.seq.or(last_seq);
            let Some(line) = full else {
                continue;
            };
            if let Some(r) = line.revocation {
                if line.kind.as_deref() == Some("revocation") {
                    scan.revocations.push(r);
                }
                continue;
            }
            if let Some(r) = line.recovery {
                declared.extend(r.lost_seq);
                if r.lost_seq.is_some() && !r.uses_known {
                    // Without its ts nothing after the horizon can be proven unspent.
                    let at = ts.unwrap_or(i64::MAX);
                    scan.uses_unknown_before = scan.uses_unknown_before.max(Some(at));
                }
                for s in r.spent {
                    let e = counts
                        .entry((s.kid, s.iss, s.cert_id))
                        .or_insert((0, s.exp, 0));
                    e.0 += 1;
                    e.2 = e.2.max(ts.unwrap_or(0));
                }
                continue;
            }
            let delta = match (line.kind.as_deref(), line.decision.as_deref()) {
                // A shadow `would_allow` spent its use as an enforced allow would have.
                (Some("decision"), Some("allow" | "would_allow")) => 1,
                (Some("outcome"), _) if line.outcome.as_deref() == Some("returned") => {
                    if let Some(Err(e)) = key.map(|k| super::record::check_signature(raw, k)) {
                        tracing::error!(file = %file.display(), line = n + 1, error = %e, "a `returned` outcome whose signature does not verify gives no use back");
                        continue;
                    }
                    -1
                }
                _ => continue,
            };
            let (Some(jti), Some(uses)) = (line.cert_id, line.request.and_then(|r| r.uses)) else {
                // Reads authenticated by a certificate spend no use and record none.
                continue;
            };
            let key = (
                uses.kid.map(Cow::into_owned),
                line.iss.map(Cow::into_owned),
                jti.into_owned(),
            );
            let e = counts.entry(key).or_insert((0, uses.exp, 0));
            e.0 += delta;
            e.2 = e.2.max(ts.unwrap_or(0));
        }
        scan.files.push(file.clone());
        let Some(first) = first_seq else {
            continue;
        };
        if let (Some(_), Some(newest)) = (key, last_line) {
            if let (Some(want), Some((_, next_ts))) = (&newer_first_prev, newer_first) {
                if hex::encode(super::record::line_hash(newest)) != *want {
                    tracing::error!(file = %file.display(), "the next file's first record does not chain to this file's last: records are missing or were altered");
                    scan.uses_unknown_before = scan
                        .uses_unknown_before
                        .max(Some(next_ts.unwrap_or(i64::MAX)));
                }
            }
            newer_first_prev = first_prev;
        }
        if let (Some((next, next_ts)), Some(last)) = (newer_first, last_seq) {
            missing(
                &mut scan,
                last + 1,
                next.saturating_sub(1),
                next_ts,
                &declared,
            );
        }
        newer_first = Some((first, first_ts));
        if first_ts.is_some_and(|t| t < horizon) {
            reached_horizon = true;
            break;
        }
    }
    if let (false, Some((first, first_ts))) = (reached_horizon, newer_first) {
        // The oldest file read begins after the horizon: the log must begin there too.
        missing(&mut scan, 1, first.saturating_sub(1), first_ts, &declared);
    }
    scan.certificates = counts
        .into_iter()
        .filter(|(_, (n, _, _))| *n > 0)
        .map(|((kid, iss, jti), (n, exp, last_ts))| Spent {
            kid,
            iss,
            jti,
            used: u32::try_from(n).unwrap_or(u32::MAX),
            exp,
            last_ts,
        })
        .collect();
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, ts: &str, kind: &str, jti: &str, extra: &str) -> String {
        format!(
            r#"{{"seq":{seq},"ts":"{ts}","broker":"b","kind":"{kind}","cert_id":"{jti}","iss":"signer","request":{{"method":"POST","use":{{"n":1,"max":3,"kid":"k1","exp":2000000000}}}},{extra}"prev":"00","sig":"x"}}"#
        )
    }

    #[test]
    fn counts_decisions_less_returned_uses_newest_files_first_to_the_horizon() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let old = "2026-01-01T00:00:00.000Z";
        let new = "2026-06-01T00:00:00.000Z";
        // Oldest file: before the horizon, and a later file also begins before it, so it is
        // never read (its unreadable line proves that).
        std::fs::write(dir.path().join("audit.jsonl.1"), "not json\n").unwrap();
        std::fs::write(
            dir.path().join("audit.jsonl.2"),
            [
                line(1, old, "decision", "a", r#""decision":"allow","#),
                line(2, new, "decision", "b", r#""decision":"deny","#),
            ]
            .join("\n")
                + "\n",
        )
        .unwrap();
        std::fs::write(
            &p,
            [
                line(3, new, "decision", "a", r#""decision":"allow","#),
                line(4, new, "decision", "c", r#""decision":"allow","#),
                line(
                    5,
                    new,
                    "outcome",
                    "c",
                    r#""decision":"allow","outcome":"returned","#,
                ),
                line(
                    6,
                    new,
                    "outcome",
                    "a",
                    r#""decision":"allow","outcome":"completed","#,
                ),
            ]
            .join("\n")
                + "\n",
        )
        .unwrap();
        let horizon = ts_secs("2026-03-01T00:00:00Z").unwrap();
        let scan = spent_uses(&p, horizon, None).unwrap();
        assert_eq!(scan.files.len(), 2);
        assert_eq!(scan.lines, 6);
        assert_eq!(scan.certificates.len(), 1, "{:?}", scan.certificates);
        let a = &scan.certificates[0];
        assert_eq!(a.jti, "a");
        assert_eq!(
            a.used, 2,
            "a denial spends nothing, a returned use is not counted"
        );
        assert_eq!(a.kid.as_deref(), Some("k1"));
        assert_eq!(a.exp, Some(2_000_000_000));
    }

    #[test]
    fn a_damaged_line_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        std::fs::write(&p, "{\"seq\":1,\"ts\":\n").unwrap();
        let e = spent_uses(&p, 0, None).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
