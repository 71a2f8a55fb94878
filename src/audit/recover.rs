//! Crash recovery at start: repair a torn last line, find the head of the chain, and find the
//! allowed decisions whose outcome was never recorded.

use super::paths::rotated_files;
use super::record::{line_hash, Dropped, Entry, Kind, Subject, Verdict, GENESIS};
use anyhow::{anyhow, Context};
use serde_json::Value;
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::Path;

pub(crate) struct Recovered {
    /// `seq` of the last record on disk (0 for a new log).
    pub seq: u64,
    /// Chain hash of the last record on disk.
    pub prev: [u8; 32],
    /// `outcome: unknown` records to append, in decision order.
    pub dangling: Vec<Entry>,
    /// A torn tail found at the end of the log, moved aside, and its bytes.
    pub torn: Option<Dropped>,
    pub torn_bytes: Option<Vec<u8>>,
    /// `seq` of the first record in the active file.
    pub active_first_seq: Option<u64>,
    /// The last complete record on disk, as found (its signature is checked by the caller).
    pub head_line: Option<Vec<u8>>,
}

/// Reads a log file. A trailing line without its newline was being written when the broker
/// stopped, or the file was cut: it is never silently dropped nor its number reused. Its bytes
/// are moved to a file beside the log (named in the recovery record the broker then writes)
/// and cut off, so the chain on disk ends at the last complete record.
/// A torn tail: where it went, and its bytes.
type Torn = (Dropped, Vec<u8>);

fn read_repaired(path: &Path) -> anyhow::Result<(Option<Vec<u8>>, Option<Torn>)> {
    let mut data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, None)),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut torn = None;
    if !data.is_empty() && !data.ends_with(b"\n") {
        let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let tail = &data[keep..];
        let aside = super::paths::aside_path(path, "torn");
        crate::fsutil::write_atomic(&aside, tail, 0o640)
            .with_context(|| format!("moving the torn tail of {} aside", path.display()))?;
        tracing::warn!(
            file = %path.display(),
            bytes = tail.len(),
            moved_to = %aside.display(),
            "audit log ends with a partial line (an interrupted write or a cut file); moved aside, and recorded"
        );
        torn = Some((
            Dropped {
                file: aside.display().to_string(),
                bytes: tail.len() as u64,
                sha256: hex::encode(sha2::Sha256::digest(tail)),
            },
            tail.to_vec(),
        ));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("opening {} to truncate", path.display()))?;
        f.set_len(keep as u64)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("truncating {}", path.display()))?;
        data.truncate(keep);
    }
    Ok((Some(data), torn))
}

fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n').filter(|l| !l.is_empty())
}

fn parse(path: &Path, line: &[u8]) -> anyhow::Result<Value> {
    crate::json::parse_strict(line).map_err(|e| {
        anyhow!(
            "{}: a complete audit line is not valid JSON ({e}); refusing to continue a chain \
             whose head is unknown",
            path.display()
        )
    })
}

fn seq_of(path: &Path, v: &Value) -> anyhow::Result<u64> {
    v.get("seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("{}: audit line without a numeric seq", path.display()))
}

pub(crate) fn recover(path: &Path) -> anyhow::Result<Recovered> {
    let rotated = rotated_files(path).with_context(|| format!("listing {}.N", path.display()))?;
    let (active, mut torn) = read_repaired(path)?;
    let active = active.unwrap_or_default();
    let newest_rotated = match rotated.last() {
        // Only repaired when it holds the head of the chain; otherwise a later file does.
        Some((_, p)) if active.is_empty() => {
            let (data, t) = read_repaired(p)?;
            torn = torn.or(t);
            data.map(|d| (p.clone(), d))
        }
        Some((_, p)) => Some((
            p.clone(),
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        )),
        None => None,
    };

    let head_source = if !active.is_empty() {
        Some((path.to_path_buf(), &active))
    } else {
        newest_rotated.as_ref().map(|(p, d)| (p.clone(), d))
    };
    let (seq, prev, head_line) =
        match head_source.and_then(|(p, d)| lines(d).last().map(|l| (p, l))) {
            Some((p, last)) => (
                seq_of(&p, &parse(&p, last)?)?,
                line_hash(last),
                Some(last.to_vec()),
            ),
            None => (0, GENESIS, None),
        };

    // Outcomes always follow their decision, and earlier restarts already closed dangling
    // decisions in older files, so the newest rotated file plus the active one suffice.
    let mut allowed: BTreeMap<u64, Value> = BTreeMap::new();
    let mut completed = Vec::new();
    let sources = newest_rotated
        .iter()
        .map(|(p, d)| (p.as_path(), d.as_slice()))
        .chain(std::iter::once((path, active.as_slice())));
    for (p, data) in sources {
        for line in lines(data) {
            let v = match crate::json::parse_strict(line) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "unparsable audit line skipped during recovery");
                    continue;
                }
            };
            match v.get("kind").and_then(Value::as_str) {
                // Every decision after which the request was sent: an enforced allow, and in
                // shadow mode either verdict, but not the verdicts of `seb check` (`via`),
                // which sends nothing.
                Some("decision")
                    if matches!(
                        v.get("decision").and_then(Value::as_str),
                        Some("allow" | "would_allow" | "would_deny")
                    ) && v.pointer("/request/via").is_none() =>
                {
                    if let Some(s) = v.get("seq").and_then(Value::as_u64) {
                        allowed.insert(s, v);
                    }
                }
                Some("outcome") => {
                    if let Some(s) = v.get("decision_seq").and_then(Value::as_u64) {
                        completed.push(s);
                    }
                }
                _ => {}
            }
        }
    }
    for s in completed {
        allowed.remove(&s);
    }
    let dangling = allowed
        .into_iter()
        .map(|(s, v)| unknown_outcome(s, &v))
        .collect();
    let active_first_seq = lines(&active)
        .next()
        .and_then(|l| crate::json::parse_strict(l).ok())
        .and_then(|v| v.get("seq").and_then(Value::as_u64));
    let (torn, torn_bytes) = match torn {
        Some((d, b)) => (Some(d), Some(b)),
        None => (None, None),
    };
    Ok(Recovered {
        seq,
        prev,
        dangling,
        torn,
        torn_bytes,
        active_first_seq,
        head_line,
    })
}

fn unknown_outcome(decision_seq: u64, d: &Value) -> Entry {
    let s = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_owned);
    Entry {
        kind: Kind::Outcome,
        subject: std::sync::Arc::new(Subject {
            cert_id: s("cert_id"),
            iss: s("iss"),
            sub: s("sub"),
            action: s("action"),
            policy: s("policy"),
            evidence: d.get("evidence").filter(|v| !v.is_null()).cloned(),
            target: s("target").unwrap_or_default(),
            request: d.get("request").cloned().unwrap_or(Value::Null),
            body_sha256: s("body_sha256"),
            // The trace the decision ran under: its unknown outcome belongs to it too.
            trace_id: d
                .get("trace_id")
                .and_then(Value::as_str)
                .and_then(|t| <[u8; 16]>::try_from(hex::decode(t).ok()?).ok()),
        }),
        // The decision's own verdict: a shadow decision's outcome stays a shadow one.
        decision: match d.get("decision").and_then(Value::as_str) {
            Some("would_allow") => Verdict::WouldAllow,
            Some("would_deny") => Verdict::WouldDeny,
            _ => Verdict::Allow,
        },
        reason: Some((
            "outcome_unknown".into(),
            "broker stopped before the upstream's answer was recorded".into(),
        )),
        identity: None,
        upstream_status: None,
        duration_ms: None,
        outcome: Some("unknown".into()),
        decision_seq: Some(decision_seq),
    }
}

/// The certificate use a torn record held, read from what is left of it. Records are written
/// member by member in a fixed order (`kind`, `cert_id`, `iss`, ..., `request` with its `use`,
/// ..., `decision`), so a prefix still says what it was as far as it goes. Some(empty) when the
/// record provably spent no use; None when that cannot be told.
pub(crate) fn attribute_torn(bytes: &[u8]) -> Option<Vec<super::record::SpentRef>> {
    let text = String::from_utf8_lossy(bytes);
    let string_member = |name: &str| -> Option<Option<String>> {
        let at = text.find(&format!("\"{name}\":"))? + name.len() + 3;
        let rest = &text[at..];
        if rest.starts_with("null") {
            return Some(None);
        }
        // Read as the JSON string it is: a certificate id may hold quotes and escapes, and a
        // string cut before its closing quote is not read at all.
        match serde_json::Deserializer::from_str(rest)
            .into_iter::<String>()
            .next()
        {
            Some(Ok(s)) => Some(Some(s)),
            _ => None,
        }
    };
    match string_member("kind")??.as_str() {
        "decision" => {}
        // A recovery record cut while it was written: the loss it was recording (whose bytes
        // were already moved aside) is not in it any more, so the uses are unknown.
        "recovery" => return None,
        // Outcomes and starts spend nothing.
        _ => return Some(Vec::new()),
    }
    let Some(cert_id) = string_member("cert_id")? else {
        return Some(Vec::new());
    };
    let iss = string_member("iss").flatten();
    // `evidence` is free-form (the certificate's) and comes before the record's own `request`
    // and `decision`: those are read only after it, skipped as one JSON value. A prefix that
    // ends before the evidence does (or has none) tells nothing more: the use is assumed taken.
    let own = text
        .find("\"evidence\":")
        .map(|at| &text[at + "\"evidence\":".len()..])
        .and_then(|rest| {
            let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
            match values.next() {
                Some(Ok(_)) => Some(&rest[values.byte_offset()..]),
                _ => None,
            }
        })
        .unwrap_or("");
    // A shadow `would_deny` took no use, as an enforced `deny` did not.
    if own.contains("\"decision\":\"deny\"") || own.contains("\"decision\":\"would_deny\"") {
        return Some(Vec::new());
    }
    let use_at = own.find("\"use\":{");
    if use_at.is_none()
        && (own.contains("\"decision\":\"allow\"") || own.contains("\"decision\":\"would_allow\""))
    {
        // A read authenticated by a certificate: allowed, and no use taken.
        return Some(Vec::new());
    }
    let (kid, exp) = match use_at {
        Some(at) => {
            let u = &own[at..];
            // Only a value whose end survived: a cut one would name another key or an
            // earlier expiry. Without them every key of the issuer and the longest
            // possible life are assumed.
            let kid = u.find("\"kid\":\"").and_then(|k| {
                let v = &u[k + 7..];
                v.find('"').map(|end| v[..end].to_owned())
            });
            let exp = u.find("\"exp\":").and_then(|k| {
                let v = &u[k + 6..];
                let end = v.find(|c: char| !c.is_ascii_digit())?;
                v[..end].parse().ok()
            });
            (kid, exp)
        }
        None => (None, None),
    };
    Some(vec![super::record::SpentRef {
        cert_id,
        iss,
        kid,
        exp,
    }])
}
