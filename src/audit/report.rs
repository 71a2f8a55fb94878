//! `seb audit report`: what enforcing would have blocked, per day (or any bucket), target,
//! agent and policy, from broker logs, shadow logs, label logs and the signer's proposals.
//!
//! Counted: decision records of changes (a read's record says `"read": true` in `request`,
//! and an allowed record without a spent `use` is a read). A would-block is a `deny` (what
//! enforcing did) or a `would_deny` (what it would have done); the rest (`allow`,
//! `would_allow`) passed. A would-block's cause:
//! * `unasked`: no certificate (`cert_missing`) and no proposal for the change at the signer;
//! * `out_of_contract`: the agent did other than certified (`contract_mismatch`, `replayed`,
//!   `expired`, ... every reason about the certificate or the request against it), or had a
//!   certificate issued and sent the change without it;
//! * `policy`: the signer refused a proposal for this change, and the change came anyway;
//! * `other`: the broker could not judge (stale revocation data, identity or audit
//!   unavailable, an unreadable request): neither the agent's doing nor the policy's.
//!
//! The false-block rate is the share of would-blocks an operator labelled `legitimate`.
//!
//! What the signer decided comes from its own audit log (`--signer-log`): each of its decision
//! records is a proposal, issued (`allow`) or refused (`deny`), for the target its `aud` names
//! (else the http `upstream`, else the certificate's target kind), with the proposal's request
//! members (less the `proposal`, `aud` and `peer` the signer adds). A signer's log given as a
//! broker log is refused rather than counted as changes.
//!
//! Proposals from elsewhere come as NDJSON, one object per line,
//! `{"ts": RFC 3339, "target": NAME, "request": <seb.request>, "decision": "issued" |
//! "refused", "sub": AGENT?, "policy": ID?}` (docs/FORMATS.md). A `cert_missing` change
//! matches a proposal for the same target, made before it within the report's range, whose
//! `request` members equal the record's (`path` is the record's `resource` for http targets,
//! `upstream` names the target and is not compared), and whose `sub`, when both name one, is
//! the same. The latest such proposal decides.

pub mod html;

use super::query::{query_lines, Filter};
use super::record::Kind;
use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct ReportInput {
    /// Broker and shadow logs; each path takes its rotated files with it.
    pub logs: Vec<PathBuf>,
    pub labels: Vec<PathBuf>,
    pub proposals: Vec<PathBuf>,
    /// The signer's own audit logs.
    pub signer_logs: Vec<PathBuf>,
    pub since: SystemTime,
    pub until: SystemTime,
    /// Width of one point of the trend: a day unless asked otherwise.
    pub bucket: Duration,
}

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Causes {
    pub unasked: u64,
    pub out_of_contract: u64,
    pub policy: u64,
    pub other: u64,
}

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Stats {
    pub changes: u64,
    pub would_block: u64,
    pub causes: Causes,
    pub labelled_legitimate: u64,
    pub labelled_harmful: u64,
    /// would_block / changes; null without changes.
    pub would_block_rate: Option<f64>,
    /// labelled_legitimate / would_block; null without would-blocks.
    pub false_block_rate: Option<f64>,
}

impl Stats {
    fn add(&mut self, c: &Counted) {
        self.changes += 1;
        let Some(cause) = c.cause else {
            return;
        };
        self.would_block += 1;
        match cause {
            Cause::Unasked => self.causes.unasked += 1,
            Cause::OutOfContract => self.causes.out_of_contract += 1,
            Cause::Policy => self.causes.policy += 1,
            Cause::Other => self.causes.other += 1,
        }
        match c.label {
            Some(true) => self.labelled_legitimate += 1,
            Some(false) => self.labelled_harmful += 1,
            None => {}
        }
    }

    fn finish(&mut self) {
        let rate = |n: u64, d: u64| (d > 0).then(|| n as f64 / d as f64);
        self.would_block_rate = rate(self.would_block, self.changes);
        self.false_block_rate = rate(self.labelled_legitimate, self.would_block);
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Start of the bucket, RFC 3339 UTC.
    pub start: String,
    #[serde(flatten)]
    pub stats: Stats,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub since: String,
    pub until: String,
    pub bucket_seconds: u64,
    pub total: Stats,
    /// Every bucket in the range, empty ones included, oldest first.
    pub by_bucket: Vec<Bucket>,
    pub by_target: BTreeMap<String, Stats>,
    pub by_agent: BTreeMap<String, Stats>,
    pub by_policy: BTreeMap<String, Stats>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cause {
    Unasked,
    OutOfContract,
    Policy,
    Other,
}

struct Counted {
    at: SystemTime,
    target: String,
    agent: String,
    policy: String,
    cause: Option<Cause>,
    /// Some(true) legitimate, Some(false) harmful.
    label: Option<bool>,
}

/// Reason codes about the certificate, or the request against it: the agent's doing.
const AGENT_REASONS: &[&str] = &[
    "cert_malformed",
    "bad_signature",
    "unknown_issuer",
    "not_yet_valid",
    "expired",
    "policy_epoch_stale",
    "revoked",
    "replayed",
    "binding_mismatch",
    "contract_mismatch",
    "drift",
];

struct Proposal {
    at: SystemTime,
    target: String,
    request: serde_json::Map<String, Value>,
    issued: bool,
    sub: Option<String>,
}

pub fn report(input: &ReportInput) -> anyhow::Result<Report> {
    if input.until <= input.since {
        bail!("--until must be after --since");
    }
    let bucket = input.bucket.as_secs();
    if bucket == 0 || input.bucket.subsec_nanos() != 0 {
        bail!("--bucket must be a whole number of seconds, at least 1s");
    }
    let labels = read_labels(&input.labels)?;
    let mut proposals = read_proposals(&input.proposals, input.until)?;
    proposals.extend(read_signer_logs(&input.signer_logs, input.until)?);
    let filter = Filter {
        since: Some(input.since),
        until: Some(input.until),
        kind: Some(Kind::Decision),
        ..Filter::default()
    };
    let mut counted = Vec::new();
    for log in &input.logs {
        let files = super::files::log_files(std::slice::from_ref(log))
            .with_context(|| format!("listing {}", log.display()))?;
        for (line, v) in query_lines(&files, &filter)? {
            if v.pointer("/request/proposal").is_some() {
                bail!(
                    "{}: record seq {} is the signer's (its request names a proposal): give the \
                     signer's log with --signer-log",
                    log.display(),
                    v.get("seq").unwrap_or(&Value::Null)
                );
            }
            if let Some(c) = count(&line, &v, &labels, &proposals)? {
                counted.push(c);
            }
        }
    }
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let first = secs(input.since) / bucket;
    let last = (secs(input.until) - 1) / bucket;
    if last - first >= 10_000 {
        bail!(
            "{} buckets of {bucket}s: at most 10000; widen --bucket",
            last - first + 1
        );
    }
    let mut by_bucket: Vec<Bucket> = (first..=last)
        .map(|b| Bucket {
            start: rfc3339(UNIX_EPOCH + Duration::from_secs(b * bucket)),
            stats: Stats::default(),
        })
        .collect();
    let mut total = Stats::default();
    let (mut by_target, mut by_agent, mut by_policy) = (
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::<String, Stats>::new(),
    );
    for c in &counted {
        total.add(c);
        let i = (secs(c.at) / bucket).saturating_sub(first) as usize;
        if let Some(b) = by_bucket.get_mut(i) {
            b.stats.add(c);
        }
        by_target
            .entry(c.target.clone())
            .or_insert_with(Stats::default)
            .add(c);
        by_agent
            .entry(c.agent.clone())
            .or_insert_with(Stats::default)
            .add(c);
        by_policy
            .entry(c.policy.clone())
            .or_insert_with(Stats::default)
            .add(c);
    }
    total.finish();
    for s in by_bucket.iter_mut().map(|b| &mut b.stats).chain(
        by_target
            .values_mut()
            .chain(by_agent.values_mut())
            .chain(by_policy.values_mut()),
    ) {
        s.finish();
    }
    Ok(Report {
        since: rfc3339(input.since),
        until: rfc3339(input.until),
        bucket_seconds: bucket,
        total,
        by_bucket,
        by_target,
        by_agent,
        by_policy,
    })
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn parse_ts(v: &Value) -> Option<SystemTime> {
    v.get("ts")
        .and_then(Value::as_str)
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
}

/// One decision record as the report counts it; None for what is not a change.
fn count(
    line: &str,
    v: &Value,
    labels: &HashMap<String, bool>,
    proposals: &[Proposal],
) -> anyhow::Result<Option<Counted>> {
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    let request = v.get("request").unwrap_or(&Value::Null);
    if request.get("read").and_then(Value::as_bool) == Some(true) {
        return Ok(None);
    }
    let blocked = match s("decision") {
        Some("deny" | "would_deny") => true,
        // An enforced allow without a spent use is a read recorded before reads said so.
        Some("allow") if request.get("use").is_none() => return Ok(None),
        Some("allow" | "would_allow") => false,
        _ => return Ok(None),
    };
    let at =
        parse_ts(v).ok_or_else(|| anyhow!("record seq {:?} has no RFC 3339 ts", v.get("seq")))?;
    let target = s("target").unwrap_or("").to_string();
    let code = v.pointer("/reason/code").and_then(Value::as_str);
    let cause = blocked.then(|| match code {
        Some("cert_missing") => match proposal_for(proposals, at, &target, request, s("sub")) {
            None => Cause::Unasked,
            Some(p) if p.issued => Cause::OutOfContract,
            Some(_) => Cause::Policy,
        },
        Some(c) if AGENT_REASONS.contains(&c) => Cause::OutOfContract,
        _ => Cause::Other,
    });
    let hash = hex::encode(Sha256::digest(line.as_bytes()));
    let agent = s("sub")
        .map(str::to_owned)
        .or_else(|| {
            request
                .get("peer")
                .and_then(Value::as_str)
                .map(|p| format!("{p} (no certificate)"))
        })
        .unwrap_or_else(|| "(no certificate)".into());
    Ok(Some(Counted {
        at,
        target,
        agent,
        policy: s("policy").unwrap_or("(none)").to_string(),
        cause,
        label: labels.get(&hash).copied(),
    }))
}

fn proposal_for<'a>(
    proposals: &'a [Proposal],
    at: SystemTime,
    target: &str,
    request: &Value,
    sub: Option<&str>,
) -> Option<&'a Proposal> {
    proposals
        .iter()
        .filter(|p| p.at <= at && p.target == target)
        .filter(|p| match (p.sub.as_deref(), sub) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        })
        .filter(|p| same_change(&p.request, request))
        .max_by_key(|p| p.at)
}

/// The proposal's `seb.request` names the record's request: every member it names that the
/// record describes is equal, and at least one is.
fn same_change(proposal: &serde_json::Map<String, Value>, record: &Value) -> bool {
    let mut compared = 0;
    for (k, want) in proposal {
        let key = match k.as_str() {
            "upstream" => continue,
            // An http certificate's path is the record's resource (its path has the query).
            "path" if record.get("resource").is_some() => "resource",
            k => k,
        };
        match record.get(key) {
            Some(got) if got == want => compared += 1,
            Some(_) => return false,
            None => {}
        }
    }
    compared > 0
}

/// The latest label of each labelled record, by the SHA-256 of its line.
fn read_labels(paths: &[PathBuf]) -> anyhow::Result<HashMap<String, bool>> {
    let mut out = HashMap::new();
    let filter = Filter::default();
    for p in paths {
        let files = super::files::log_files(std::slice::from_ref(p))?;
        for (_, v) in query_lines(&files, &filter)? {
            if v.get("kind").and_then(Value::as_str) != Some("label") {
                continue;
            }
            let hash = v.pointer("/label/record/sha256").and_then(Value::as_str);
            let verdict = v.pointer("/label/verdict").and_then(Value::as_str);
            match (hash, verdict) {
                (Some(h), Some("legitimate")) => out.insert(h.to_owned(), true),
                (Some(h), Some("harmful")) => out.insert(h.to_owned(), false),
                _ => bail!("{}: label seq {:?} is malformed", p.display(), v.get("seq")),
            };
        }
    }
    Ok(out)
}

fn read_proposals(paths: &[PathBuf], until: SystemTime) -> anyhow::Result<Vec<Proposal>> {
    let mut out = Vec::new();
    for p in paths {
        let data =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        for (i, line) in data
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let at = |what: &str| anyhow!("{}:{}: {what}", p.display(), i + 1);
            let v = crate::json::parse_strict(line.as_bytes())
                .map_err(|e| at(&format!("not strict JSON: {e}")))?;
            let ts = parse_ts(&v).ok_or_else(|| at("no RFC 3339 ts"))?;
            let target = v
                .get("target")
                .and_then(Value::as_str)
                .ok_or_else(|| at("no target"))?;
            let request = v
                .get("request")
                .and_then(Value::as_object)
                .ok_or_else(|| at("no request object"))?;
            let issued = match v.get("decision").and_then(Value::as_str) {
                Some("issued") => true,
                Some("refused") => false,
                _ => return Err(at("decision must be \"issued\" or \"refused\"")),
            };
            if ts >= until {
                continue;
            }
            out.push(Proposal {
                at: ts,
                target: target.to_owned(),
                request: request.clone(),
                issued,
                sub: v.get("sub").and_then(Value::as_str).map(str::to_owned),
            });
        }
    }
    Ok(out)
}

/// The signer's decisions up to `until` (not from `since`: a proposal decided before the
/// range still explains a change inside it).
fn read_signer_logs(paths: &[PathBuf], until: SystemTime) -> anyhow::Result<Vec<Proposal>> {
    let filter = Filter {
        until: Some(until),
        kind: Some(Kind::Decision),
        ..Filter::default()
    };
    let mut out = Vec::new();
    for p in paths {
        let files = super::files::log_files(std::slice::from_ref(p))
            .with_context(|| format!("listing {}", p.display()))?;
        for (_, v) in query_lines(&files, &filter)? {
            let at = |what: &str| {
                anyhow!(
                    "{}: record seq {}: {what}",
                    p.display(),
                    v.get("seq").unwrap_or(&Value::Null)
                )
            };
            let mut request = v
                .get("request")
                .and_then(Value::as_object)
                .filter(|r| r.contains_key("proposal"))
                .cloned()
                .ok_or_else(|| at("not a signer's decision (its request names no proposal)"))?;
            let issued = match v.get("decision").and_then(Value::as_str) {
                Some("allow") => true,
                Some("deny") => false,
                _ => return Err(at("decision must be \"allow\" or \"deny\"")),
            };
            let ts = parse_ts(&v).ok_or_else(|| at("no RFC 3339 ts"))?;
            // The broker's records name the target by its configured name: the certificate's
            // `aud`, or for an http certificate without one its `upstream`.
            let target = [request.get("aud"), request.get("upstream"), v.get("target")]
                .into_iter()
                .flatten()
                .find_map(Value::as_str)
                .ok_or_else(|| at("no target"))?
                .to_owned();
            for added in ["proposal", "aud", "peer"] {
                request.remove(added);
            }
            out.push(Proposal {
                at: ts,
                target,
                request,
                issued,
                sub: v.get("sub").and_then(Value::as_str).map(str::to_owned),
            });
        }
    }
    Ok(out)
}

/// Aligned columns: the buckets, then the totals per target, agent and policy.
pub fn table(r: &Report) -> String {
    let pct = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{:.1}%", x * 100.0));
    let mut out = format!(
        "would-block report {} .. {} (bucket {}s)\n",
        r.since, r.until, r.bucket_seconds
    );
    let mut section = |title: &str, rows: Vec<(String, &Stats)>| {
        out.push_str(&format!(
            "\n{title:<28} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9} {:>9}\n",
            "changes",
            "blocked",
            "unasked",
            "contract",
            "policy",
            "other",
            "legit",
            "block%",
            "false%"
        ));
        for (name, s) in rows {
            out.push_str(&format!(
                "{name:<28} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>9} {:>9}\n",
                s.changes,
                s.would_block,
                s.causes.unasked,
                s.causes.out_of_contract,
                s.causes.policy,
                s.causes.other,
                s.labelled_legitimate,
                pct(s.would_block_rate),
                pct(s.false_block_rate)
            ));
        }
    };
    let mut days: Vec<(String, &Stats)> = r
        .by_bucket
        .iter()
        .map(|b| (b.start.clone(), &b.stats))
        .collect();
    days.push(("total".into(), &r.total));
    section("bucket", days);
    section(
        "target",
        r.by_target.iter().map(|(k, v)| (k.clone(), v)).collect(),
    );
    section(
        "agent",
        r.by_agent.iter().map(|(k, v)| (k.clone(), v)).collect(),
    );
    section(
        "policy",
        r.by_policy.iter().map(|(k, v)| (k.clone(), v)).collect(),
    );
    out
}

#[cfg(test)]
mod tests;
