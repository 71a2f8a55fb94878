//! OCSF API Activity (class 6003, category 6 Application Activity), schema 1.x.

use serde_json::{json, Map, Value};

pub const CLASS_UID: u64 = 6003;
pub const CATEGORY_UID: u64 = 6;
/// The OCSF schema version the events follow.
pub const OCSF_VERSION: &str = "1.3.0";

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// The operation's name: the AWS operation, the Kubernetes verb, else the HTTP method.
pub fn operation(r: &Value) -> String {
    let req = &r["request"];
    s(req, "operation")
        .or_else(|| s(&req["kube"], "verb"))
        .or_else(|| s(req, "method"))
        .unwrap_or("unknown")
        .to_string()
}

/// Create 1, Read 2, Update 3, Delete 4, Other 99: from the Kubernetes verb, the AWS
/// operation's leading word, or the HTTP method.
pub fn activity_id(r: &Value) -> u64 {
    let req = &r["request"];
    if let Some(verb) = s(&req["kube"], "verb") {
        return match verb {
            "create" => 1,
            "get" | "list" | "watch" => 2,
            "update" | "patch" => 3,
            "delete" | "deletecollection" => 4,
            _ => 99,
        };
    }
    if let Some(op) = s(req, "operation").filter(|_| req.get("service").is_some()) {
        let starts = |ps: &[&str]| ps.iter().any(|p| op.starts_with(p));
        return if starts(&[
            "Describe", "Get", "List", "Head", "Scan", "Query", "BatchGet",
        ]) {
            2
        } else if starts(&["Delete", "Terminate", "Remove", "Deregister", "Purge"]) {
            4
        } else if starts(&["Create", "Put", "Run", "Register", "Send", "Add", "Import"]) {
            1
        } else {
            3
        };
    }
    match s(req, "method") {
        Some("POST") => 1,
        Some("GET" | "HEAD") => 2,
        Some("PUT" | "PATCH") => 3,
        Some("DELETE") => 4,
        _ => 99,
    }
}

/// Success 1, Failure 2, Unknown 0, and the text beside it.
fn status(r: &Value) -> (u64, &'static str) {
    match (s(r, "kind"), s(r, "decision"), s(r, "outcome")) {
        (Some("outcome"), _, Some("completed")) => (1, "Success"),
        (Some("outcome"), _, Some("failed" | "returned")) => (2, "Failure"),
        (Some("outcome"), _, _) => (0, "Unknown"),
        (_, Some("allow" | "would_allow"), _) => (1, "Success"),
        (_, Some("deny" | "would_deny"), _) => (2, "Failure"),
        _ => (0, "Unknown"),
    }
}

/// Informational 1 for what was admitted, Low 2 for a shadow would-deny, Medium 3 for a
/// refusal.
fn severity(r: &Value) -> (u64, &'static str) {
    match s(r, "decision") {
        Some("deny") => (3, "Medium"),
        Some("would_deny") => (2, "Low"),
        _ => (1, "Informational"),
    }
}

/// One audit record (decision or outcome) as an OCSF API Activity event.
pub fn event(r: &Value) -> Value {
    let req = &r["request"];
    let activity = activity_id(r);
    let (status_id, status_text) = status(r);
    let (severity_id, severity_text) = severity(r);
    let time = s(r, "ts")
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_millisecond())
        .unwrap_or(0);
    let broker = s(r, "broker").unwrap_or("");
    let seq = r.get("seq").and_then(Value::as_u64).unwrap_or(0);
    let op = operation(r);
    let sub = s(r, "sub");
    let mut user = Map::new();
    user.insert("name".into(), json!(sub.unwrap_or("unauthenticated")));
    if let Some(sub) = sub {
        user.insert("uid".into(), json!(sub));
    }
    if let Some(peer) = s(req, "peer") {
        user.insert("credential_uid".into(), json!(peer));
    }
    let mut src = Map::new();
    match s(req, "remote").and_then(|a| a.parse::<std::net::SocketAddr>().ok()) {
        Some(addr) => {
            src.insert("ip".into(), json!(addr.ip().to_string()));
            src.insert("port".into(), json!(addr.port()));
        }
        None => {
            src.insert("name".into(), json!(s(req, "via").unwrap_or("unknown")));
        }
    }
    let mut api = json!({
        "operation": op,
        "service": {"name": s(req, "service").or(s(r, "target")).unwrap_or("")},
        "request": {"uid": format!("{broker}:{seq}")},
    });
    if let Some(code) = r.get("upstream_status").and_then(Value::as_u64) {
        api["response"] = json!({"code": code});
    }
    if let Some(v) = s(req, "version").or(s(&req["kube"], "version")) {
        api["version"] = json!(v);
    }
    let mut resources = Vec::new();
    if let Some(res) = s(req, "resource") {
        let mut d = json!({"name": res, "type": s(req, "service").unwrap_or("resource")});
        if let Some(region) = s(req, "region") {
            d["region"] = json!(region);
        }
        if let Some(ns) = s(&req["kube"], "namespace") {
            d["namespace"] = json!(ns);
        }
        if let Some(name) = s(&req["kube"], "name") {
            d["uid"] = json!(name);
        }
        resources.push(d);
    }
    let mut metadata = json!({
        "version": OCSF_VERSION,
        "product": {"name": "seb", "vendor_name": "seb", "version": env!("CARGO_PKG_VERSION")},
        "uid": format!("{broker}:{seq}"),
        "log_name": "seb audit",
        "original_time": s(r, "ts").unwrap_or(""),
    });
    if let Some(d) = r.get("decision_seq").and_then(Value::as_u64) {
        metadata["correlation_uid"] = json!(format!("{broker}:{d}"));
    }
    let mut unmapped = Map::new();
    for k in [
        "kind",
        "decision",
        "outcome",
        "decision_seq",
        "cert_id",
        "iss",
        "action",
        "policy",
        "evidence",
        "reason",
        "identity",
        "body_sha256",
        "target",
        "prev",
        "sig",
    ] {
        if let Some(v) = r.get(k).filter(|v| !v.is_null()) {
            unmapped.insert(k.into(), v.clone());
        }
    }
    let mut e = json!({
        "class_uid": CLASS_UID,
        "class_name": "API Activity",
        "category_uid": CATEGORY_UID,
        "category_name": "Application Activity",
        "activity_id": activity,
        "type_uid": CLASS_UID * 100 + activity,
        "time": time,
        "severity_id": severity_id,
        "severity": severity_text,
        "status_id": status_id,
        "status": status_text,
        "message": format!(
            "{} {} {} by {}{}",
            s(r, "kind").unwrap_or(""),
            s(r, "decision").unwrap_or(""),
            op,
            sub.unwrap_or("an unauthenticated caller"),
            s(r, "cert_id").map(|c| format!(" under certificate {c}")).unwrap_or_default()
        ),
        "actor": {"user": user, "app_name": "seb"},
        "api": api,
        "src_endpoint": src,
        "dst_endpoint": {"svc_name": s(r, "target").unwrap_or("")},
        "metadata": metadata,
        "unmapped": unmapped,
    });
    if let Some(m) = s(req, "method") {
        e["http_request"] =
            json!({"http_method": m, "url": {"path": s(req, "path").unwrap_or("")}});
    }
    if !resources.is_empty() {
        e["resources"] = json!(resources);
    }
    if let Some(reason) = r.get("reason").filter(|v| v.is_object()) {
        e["status_code"] = reason["code"].clone();
        e["status_detail"] = reason["message"].clone();
    }
    e
}
