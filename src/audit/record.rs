//! Audit record v1: the types the pipeline hands in and the exact bytes of one line.
//!
//! # Line format (other programs verify these logs; this is the contract)
//!
//! One JSON object per line, UTF-8, terminated by a single `\n`. Members appear in this
//! order, every one of them always present (`null` where it does not apply):
//!
//! `seq`, `ts`, `broker`, `kind`, `cert_id`, `iss`, `sub`, `action`, `policy`, `evidence`,
//! `target`, `request`, `body_sha256`, `decision`, `reason`, `identity`, `upstream_status`,
//! `duration_ms`, then the extensions for the kind, then `prev`, then `sig`:
//!
//! * `kind: "outcome"` adds `outcome` (`completed` | `failed` | `unknown`) and `decision_seq`;
//! * a decision or outcome of a traced request (W3C `traceparent`, or OTLP export on) then adds
//!   `trace_id` (32 lowercase hex digits); untraced requests' records do not have the member;
//! * `kind: "start"` adds `durability` (`fsync` | `flush`), `key_id` (RFC 7638 thumbprint of the
//!   broker's public key), `version` (of the broker) and `shadow_targets` (the targets in
//!   shadow mode, usually `[]`); its v1 members are `null`.
//! * `kind: "revocation"` (written when the broker applies a revocation document with a newer
//!   epoch than it held, pushed, polled or from etcd; not for the same epoch re-signed) adds `revocation`: `{"iss", "epoch", "iat", "sha256",
//!   "document"}` (the document's compact JWS and its SHA-256); its v1 members are `null`. A
//!   broker reads these back at start, so a revocation state file rolled back or deleted does
//!   not make it forget a revocation.
//! * `kind: "label"` (a label log, `seb audit label`) adds `label`: `{"record": {"broker",
//!   "seq", "sha256"}, "verdict": "legitimate" | "harmful", "note"}`; its v1 members are `null`.
//!
//! `decision` is `allow` | `deny`, or in shadow mode `would_allow` | `would_deny`.
//! * `kind: "recovery"` (written when the broker finds records missing: a torn tail at start,
//!   an active file deleted or replaced while open, a log shorter than the broker last left it)
//!   adds `recovery`: `{"what", "message", "lost_seq": [first, last] | null, "dropped":
//!   {"file", "bytes", "sha256"} | null, "uses_known": bool, "spent": [{"cert_id", "iss",
//!   "kid", "exp"}]}`; its v1 members are `null`. Its `seq` follows
//!   `lost_seq` (the lost numbers are never reused) and its `prev` is the hash of the last line
//!   still on disk, so a verifier checks the chain across the gap the record declares.
//!
//! `ts` is RFC 3339 UTC with milliseconds. `seq` starts at 1 and grows by exactly 1 per line,
//! across restarts and rotated files.
//!
//! `prev` is the lowercase hex SHA-256 of the previous line's complete bytes (including its
//! `sig`, excluding its `\n`); the first line of a log has 64 zeros.
//!
//! `sig` is the last member: base64url without padding of the Ed25519 signature (RFC 8032,
//! broker key) over the line's exact bytes with the final `,"sig":"<b64>"` removed and the
//! closing `}` kept. Given a line `L` ending in `,"sig":"S"}`, the signed message is
//! `L[..len(L) - len(",\"sig\":\"S\"}")] + "}"`. Because the signature covers bytes rather
//! than a re-serialization, a verifier needs no canonical JSON: it cuts the suffix, checks the
//! signature, and only then parses. The cut is unambiguous: inside a JSON string a `"` is
//! always escaped, so the last raw occurrence of `,"sig":"` is the member separator.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// `prev` of the first record of a log.
pub(crate) const GENESIS: [u8; 32] = [0; 32];

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase", expecting = "\"fsync\" or \"flush\"")]
pub enum Durability {
    /// `fdatasync` before a record is acknowledged (one per batch).
    #[default]
    Fsync,
    /// `write()` only: survives a broker crash, not a machine crash.
    Flush,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Flush => "flush",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Decision,
    Outcome,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Decision => "decision",
            Kind::Outcome => "outcome",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
    /// Shadow mode: enforcing would have admitted it; it was forwarded.
    #[serde(rename = "would_allow")]
    WouldAllow,
    /// Shadow mode: enforcing would have refused it (the reason says why); it was forwarded.
    #[serde(rename = "would_deny")]
    WouldDeny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::WouldAllow => "would_allow",
            Verdict::WouldDeny => "would_deny",
        }
    }

    /// Whether the request was sent upstream after this decision (enforced allow, or either
    /// shadow verdict): its outcome follows.
    pub fn forwarded(self) -> bool {
        !matches!(self, Verdict::Deny)
    }
}

/// The members a request's records share, `cert_id` through `body_sha256`. The pipeline
/// builds them once; a decision and its outcome hold the same `Arc` instead of two copies.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub cert_id: Option<String>,
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub action: Option<String>,
    pub policy: Option<String>,
    pub evidence: Option<Value>,
    pub target: String,
    pub request: Value,
    pub body_sha256: Option<String>,
    /// The W3C trace id the request ran under, when it was traced (an agent's `traceparent`,
    /// or OTLP export on): `trace_id`, the last member before `prev`.
    pub trace_id: Option<[u8; 16]>,
}

/// What the pipeline supplies; `seq`, `ts`, `broker`, `prev` and `sig` are added by the writer.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    pub subject: Arc<Subject>,
    pub decision: Verdict,
    /// `(code, message)`; the code is one of the stable denial reason codes.
    pub reason: Option<(String, String)>,
    pub identity: Option<Value>,
    pub upstream_status: Option<u16>,
    pub duration_ms: Option<u64>,
    /// Outcome records only: `completed` | `failed` | `unknown`.
    pub outcome: Option<String>,
    /// Outcome records only: the `seq` of the decision this outcome completes.
    pub decision_seq: Option<u64>,
}

/// What the writer turns into one line.
#[derive(Debug, Clone)]
pub(crate) enum Payload {
    Entry(Box<Entry>),
    Start(StartInfo),
    Recovery(Box<RecoveryInfo>),
    Label(Box<LabelInfo>),
    Revocation(Box<RevocationInfo>),
}

/// A revocation document the broker applied (newer than what it had for that issuer).
#[derive(Debug, Clone, Serialize)]
pub struct RevocationInfo {
    pub iss: String,
    pub epoch: u64,
    pub iat: i64,
    /// Of `document`'s bytes, so that a reader can match it without parsing the JWS.
    pub sha256: String,
    pub document: String,
}

/// An operator's judgement of one would-block, in a log of its own (`seb audit label`).
#[derive(Debug, Clone, Serialize)]
pub struct LabelInfo {
    /// The labelled record: its `broker`, `seq` and the SHA-256 of its line (which the report
    /// matches on: `seq` alone repeats across logs).
    pub record: LabelledRecord,
    /// `legitimate` | `harmful`.
    pub verdict: &'static str,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LabelledRecord {
    pub broker: Option<String>,
    pub seq: u64,
    pub sha256: String,
}

/// Records the broker found missing, and what it moved aside.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RecoveryInfo {
    /// `torn_tail` | `deleted` | `replaced` | `truncated`.
    pub what: &'static str,
    pub message: String,
    /// Sequence numbers that were written and are no longer in the log.
    pub lost_seq: Option<[u64; 2]>,
    pub dropped: Option<Dropped>,
    /// Whether every certificate use among the lost records is known: then `spent` lists
    /// them, and a restarted broker counts them. When not, no certificate issued before this
    /// record can be proven unspent, and a restarted broker refuses those until they expire.
    pub uses_known: bool,
    pub spent: Vec<SpentRef>,
}

/// A certificate use read from a torn record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct SpentRef {
    pub cert_id: String,
    pub iss: Option<String>,
    pub kid: Option<String>,
    pub exp: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Dropped {
    /// Where the bytes were moved.
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone)]
pub(crate) struct StartInfo {
    pub durability: Durability,
    pub key_id: String,
    /// Targets in shadow mode, named in the start record so that nobody reads a shadow log
    /// as an enforcing one.
    pub shadow: Vec<String>,
}

/// Appends one signed line (without `\n`) to `out`. On error `out` is left as it was.
pub(crate) fn encode_line(
    out: &mut Vec<u8>,
    seq: u64,
    ts: &str,
    broker: &str,
    payload: &Payload,
    prev: &[u8; 32],
    key: &SigningKey,
) -> serde_json::Result<()> {
    let start = out.len();
    let result = encode_unsigned(out, seq, ts, broker, payload, prev);
    if result.is_err() {
        out.truncate(start);
        return result;
    }
    let sig = key.sign(&out[start..]);
    out.pop(); // the closing '}', restored after the signature
    out.extend_from_slice(b",\"sig\":\"");
    let mut b64 = [0u8; 86];
    let n = URL_SAFE_NO_PAD
        .encode_slice(sig.to_bytes(), &mut b64)
        .unwrap_or(0);
    out.extend_from_slice(&b64[..n]);
    out.extend_from_slice(b"\"}");
    Ok(())
}

fn encode_unsigned(
    out: &mut Vec<u8>,
    seq: u64,
    ts: &str,
    broker: &str,
    payload: &Payload,
    prev: &[u8; 32],
) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    field_str(out, "ts", Some(ts))?;
    field_str(out, "broker", Some(broker))?;
    match payload {
        Payload::Entry(e) => {
            let s = &*e.subject;
            field_str(out, "kind", Some(e.kind.as_str()))?;
            field_str(out, "cert_id", s.cert_id.as_deref())?;
            field_str(out, "iss", s.iss.as_deref())?;
            field_str(out, "sub", s.sub.as_deref())?;
            field_str(out, "action", s.action.as_deref())?;
            field_str(out, "policy", s.policy.as_deref())?;
            field_value(out, "evidence", s.evidence.as_ref())?;
            field_str(out, "target", Some(&s.target))?;
            field_value(out, "request", Some(&s.request))?;
            field_str(out, "body_sha256", s.body_sha256.as_deref())?;
            field_str(out, "decision", Some(e.decision.as_str()))?;
            key(out, "reason");
            match &e.reason {
                Some((code, message)) => {
                    out.extend_from_slice(b"{\"code\":");
                    serde_json::to_writer(&mut *out, code)?;
                    out.extend_from_slice(b",\"message\":");
                    serde_json::to_writer(&mut *out, message)?;
                    out.push(b'}');
                }
                None => out.extend_from_slice(b"null"),
            }
            field_value(out, "identity", e.identity.as_ref())?;
            field_num(out, "upstream_status", e.upstream_status.map(u64::from));
            field_num(out, "duration_ms", e.duration_ms);
            if e.kind == Kind::Outcome {
                field_str(out, "outcome", e.outcome.as_deref())?;
                field_num(out, "decision_seq", e.decision_seq);
            }
            // Only on traced requests: a log written without traces reads exactly as before.
            if let Some(t) = &s.trace_id {
                key(out, "trace_id");
                out.push(b'"');
                push_hex(out, t);
                out.push(b'"');
            }
        }
        Payload::Recovery(r) => {
            field_str(out, "kind", Some("recovery"))?;
            null_v1_members(out);
            key(out, "recovery");
            serde_json::to_writer(&mut *out, &**r)?;
        }
        Payload::Start(s) => {
            field_str(out, "kind", Some("start"))?;
            null_v1_members(out);
            field_str(out, "durability", Some(s.durability.as_str()))?;
            field_str(out, "key_id", Some(&s.key_id))?;
            field_str(out, "version", Some(env!("CARGO_PKG_VERSION")))?;
            key(out, "shadow_targets");
            serde_json::to_writer(&mut *out, &s.shadow)?;
        }
        Payload::Label(l) => {
            field_str(out, "kind", Some("label"))?;
            null_v1_members(out);
            key(out, "label");
            serde_json::to_writer(&mut *out, &**l)?;
        }
        Payload::Revocation(r) => {
            field_str(out, "kind", Some("revocation"))?;
            null_v1_members(out);
            key(out, "revocation");
            serde_json::to_writer(&mut *out, &**r)?;
        }
    }
    key(out, "prev");
    out.push(b'"');
    push_hex(out, prev);
    out.extend_from_slice(b"\"}");
    Ok(())
}

/// The v1 members a record that is not about a request carries as `null`.
fn null_v1_members(out: &mut Vec<u8>) {
    for name in [
        "cert_id",
        "iss",
        "sub",
        "action",
        "policy",
        "evidence",
        "target",
        "request",
        "body_sha256",
        "decision",
        "reason",
        "identity",
        "upstream_status",
        "duration_ms",
    ] {
        key(out, name);
        out.extend_from_slice(b"null");
    }
}

fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn field_str(out: &mut Vec<u8>, name: &str, v: Option<&str>) -> serde_json::Result<()> {
    key(out, name);
    match v {
        Some(s) => serde_json::to_writer(&mut *out, s),
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    }
}

fn field_value(out: &mut Vec<u8>, name: &str, v: Option<&Value>) -> serde_json::Result<()> {
    key(out, name);
    match v {
        Some(v) => serde_json::to_writer(&mut *out, v),
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    }
}

fn field_num(out: &mut Vec<u8>, name: &str, v: Option<u64>) {
    key(out, name);
    match v {
        Some(n) => out.extend_from_slice(n.to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

pub(crate) fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    let at = out.len();
    out.resize(at + bytes.len() * 2, 0);
    hex::encode_to_slice(bytes, &mut out[at..]).expect("the slice is twice the input's length");
}

/// The chain hash of a line: SHA-256 of its bytes without the newline.
pub(crate) fn line_hash(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

const SIG_MEMBER: &[u8] = b",\"sig\":\"";

/// Splits a line into the signed message and the signature it carries, per the module doc.
pub(crate) fn signed_message(line: &[u8]) -> Result<(Vec<u8>, Signature, &str), String> {
    let body = line
        .strip_suffix(b"\"}")
        .ok_or("line does not end with the sig member")?;
    let at = body
        .windows(SIG_MEMBER.len())
        .rposition(|w| w == SIG_MEMBER)
        .ok_or("no sig member")?;
    let b64 = &body[at + SIG_MEMBER.len()..];
    let b64_str = std::str::from_utf8(b64).map_err(|_| "sig is not text")?;
    let raw = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|e| format!("sig is not base64url: {e}"))?;
    let raw: [u8; 64] = raw
        .try_into()
        .map_err(|_| "sig is not 64 bytes".to_string())?;
    let mut msg = Vec::with_capacity(at + 1);
    msg.extend_from_slice(&line[..at]);
    msg.push(b'}');
    Ok((msg, Signature::from_bytes(&raw), b64_str))
}

/// Checks the signature of one line; returns the base64 text of the signature.
pub(crate) fn check_signature<'a>(line: &'a [u8], key: &VerifyingKey) -> Result<&'a str, String> {
    let (msg, sig, b64) = signed_message(line)?;
    key.verify_strict(&msg, &sig)
        .map_err(|_| "signature does not verify".to_string())?;
    Ok(b64)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn entry(kind: Kind, decision: Verdict) -> Entry {
        Entry {
            kind,
            subject: Arc::new(Subject {
                cert_id: Some("c-1".into()),
                iss: Some("signer".into()),
                sub: Some("agent-7".into()),
                action: Some("s3:PutObject".into()),
                policy: Some("prod-writes".into()),
                evidence: Some(json!({"ticket": "OPS-1"})),
                target: "aws".into(),
                request: json!({"method": "PUT", "path": "/b/k"}),
                body_sha256: Some("ab".repeat(32)),
                trace_id: None,
            }),
            decision,
            reason: None,
            identity: None,
            upstream_status: None,
            duration_ms: None,
            outcome: None,
            decision_seq: None,
        }
    }

    #[test]
    fn line_has_fixed_order_escaping_and_a_verifiable_signature() {
        let key = crate::cert::keys::generate();
        let mut e = entry(Kind::Outcome, Verdict::Deny);
        Arc::make_mut(&mut e.subject).sub = Some("quote\" back\\ nl\n ,\"sig\":\"x".into());
        e.reason = Some(("expired".into(), "too \"late\"".into()));
        e.upstream_status = Some(403);
        e.outcome = Some("failed".into());
        e.decision_seq = Some(4);
        let mut out = Vec::new();
        let p = Payload::Entry(Box::new(e));
        encode_line(
            &mut out,
            5,
            "2026-01-01T00:00:00.000Z",
            "b1",
            &p,
            &GENESIS,
            &key,
        )
        .unwrap();
        let v = crate::json::parse_strict(&out).unwrap();
        assert_eq!(v["sub"], "quote\" back\\ nl\n ,\"sig\":\"x");
        assert_eq!(v["reason"]["message"], "too \"late\"");
        let text = std::str::from_utf8(&out).unwrap();
        let order = [
            "seq",
            "ts",
            "broker",
            "kind",
            "cert_id",
            "iss",
            "sub",
            "action",
            "policy",
            "evidence",
            "target",
            "request",
            "body_sha256",
            "decision",
            "reason",
            "identity",
            "upstream_status",
            "duration_ms",
            "outcome",
            "decision_seq",
            "prev",
            "sig",
        ];
        let mut last = 0;
        for k in order {
            let at = text.find(&format!("\"{k}\":")).unwrap();
            assert!(at >= last, "{k} out of order");
            last = at;
        }
        assert_eq!(v.as_object().unwrap().len(), order.len());
        let b64 = check_signature(&out, &key.verifying_key()).unwrap();
        assert_eq!(v["sig"], b64);
        // The signed message is exactly the line minus the sig member.
        let (msg, _, _) = signed_message(&out).unwrap();
        let mut stripped = v.clone();
        stripped.as_object_mut().unwrap().remove("sig");
        assert_eq!(crate::json::parse_strict(&msg).unwrap(), stripped);
        assert!(msg.ends_with(format!("\"prev\":\"{}\"}}", "0".repeat(64)).as_bytes()));
    }

    #[test]
    fn start_record_has_all_members() {
        let key = crate::cert::keys::generate();
        let p = Payload::Start(StartInfo {
            durability: Durability::Flush,
            key_id: "kid".into(),
            shadow: vec!["pay".into()],
        });
        let mut out = Vec::new();
        encode_line(&mut out, 1, "t", "b", &p, &[7; 32], &key).unwrap();
        let v = crate::json::parse_strict(&out).unwrap();
        assert_eq!(v["kind"], "start");
        assert_eq!(v["durability"], "flush");
        assert_eq!(v["shadow_targets"], serde_json::json!(["pay"]));
        assert!(v["decision"].is_null() && v["request"].is_null());
        assert_eq!(v["prev"], "07".repeat(32));
        check_signature(&out, &key.verifying_key()).unwrap();
    }
}
