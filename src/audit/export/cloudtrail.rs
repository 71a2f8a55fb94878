//! CloudTrail Lake's `PutAuditEvents` input for an integration's channel: each record an
//! `AuditEvent` (`id`, `eventData` as a JSON string, `eventDataChecksum`), `eventData` following
//! CloudTrail Lake's integration event schema (`version`, `userIdentity`, `eventSource`,
//! `eventName`, `eventTime`, `UID`, ...).

use super::ocsf;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write;

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// `eventData` for one record.
pub fn event_data(r: &Value) -> Value {
    let req = &r["request"];
    let broker = s(r, "broker").unwrap_or("");
    let seq = r.get("seq").and_then(Value::as_u64).unwrap_or(0);
    // The integration schema's eventTime is `yyyy-MM-ddTHH:mm:ssZ`.
    let time = s(r, "ts")
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let mut d = json!({
        "version": "1.0",
        "userIdentity": {
            "type": "seb-agent",
            "principalId": s(r, "sub").unwrap_or("unauthenticated"),
            "details": {"iss": r["iss"], "peer": req["peer"], "cert_id": r["cert_id"]},
        },
        "eventSource": format!("seb.{}", s(r, "target").unwrap_or("unknown")),
        "eventName": ocsf::operation(r),
        "eventTime": time,
        "UID": format!("{broker}:{seq}"),
        "requestParameters": req,
        "responseElements": {"upstream_status": r["upstream_status"], "outcome": r["outcome"]},
        "additionalEventData": {
            "kind": r["kind"], "decision": r["decision"], "decision_seq": r["decision_seq"],
            "action": r["action"], "policy": r["policy"], "evidence": r["evidence"],
            "identity": r["identity"], "body_sha256": r["body_sha256"],
            "prev": r["prev"], "sig": r["sig"],
        },
    });
    if let Some(ip) = s(req, "remote")
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.ip().to_string())
    {
        d["sourceIPAddress"] = json!(ip);
    }
    if let Some(reason) = r.get("reason").filter(|v| v.is_object()) {
        d["errorCode"] = reason["code"].clone();
        d["errorMessage"] = reason["message"].clone();
    }
    d
}

/// One `AuditEvent`. `id` is the record's broker and seq (PutAuditEvents allows
/// `[-_A-Za-z0-9]`, up to 128); the checksum is base64 of the SHA-256 of `eventData`'s bytes.
pub fn audit_event(r: &Value) -> anyhow::Result<Value> {
    let data = serde_json::to_string(&event_data(r))?;
    let broker: String = s(r, "broker")
        .unwrap_or("")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let seq = r.get("seq").and_then(Value::as_u64).unwrap_or(0);
    let checksum =
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data.as_bytes()));
    Ok(json!({"id": format!("{broker}-{seq}"), "eventData": data, "eventDataChecksum": checksum}))
}

/// One `PutAuditEvents` input per line; empties `batch`.
pub fn write_batch(out: &mut impl Write, batch: &mut Vec<Value>) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, &json!({"auditEvents": std::mem::take(batch)}))?;
    writeln!(out)?;
    Ok(())
}
