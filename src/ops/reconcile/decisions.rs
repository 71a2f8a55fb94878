//! seb's side: the admitted decisions in the broker's audit logs, each with the identity its
//! outcome record names, keyed the way a provider's log names that identity.

use super::event::Provider;
use super::kube_audit::{impersonation_key, EXTRA_CERT_ID, EXTRA_ISSUER};
use crate::audit::files::log_groups;
use crate::audit::query::{query_lines, Filter};
use anyhow::anyhow;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub provider: Provider,
    pub broker: String,
    pub seq: u64,
    pub time: String,
    #[serde(skip)]
    pub ts: jiff::Timestamp,
    pub cert_id: Option<String>,
    pub iss: Option<String>,
    pub sub: Option<String>,
    /// The identity's key as the provider's log gives it (see `ProviderEvent::key`); `None`
    /// when no outcome names the identity (the broker stopped before writing it).
    #[serde(skip)]
    pub key: Option<String>,
    /// The AWS role the session was made from.
    #[serde(skip)]
    pub role: Option<String>,
    /// A Kubernetes user the broker authenticates as (a TokenRequest service account).
    #[serde(skip)]
    pub user: Option<String>,
    pub request: Value,
    pub outcome: Option<String>,
    /// A provider event is expected: the request was sent upstream, or may have been.
    #[serde(skip)]
    pub expected: bool,
}

impl Decision {
    pub fn summary(&self) -> String {
        let r = &self.request;
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
        match self.provider {
            Provider::Aws => format!("{}:{} [{}]", s("service"), s("operation"), s("resource")),
            Provider::Kubernetes => {
                let k = &r["kube"];
                let g = |f: &str| k.get(f).and_then(Value::as_str);
                format!(
                    "{} {}{}{}{}{}",
                    g("verb").unwrap_or(""),
                    g("group")
                        .filter(|x| !x.is_empty())
                        .map(|x| format!("{x}/"))
                        .unwrap_or_default(),
                    g("resource").unwrap_or(""),
                    g("subresource")
                        .map(|x| format!("/{x}"))
                        .unwrap_or_default(),
                    g("namespace")
                        .map(|x| format!(" ns={x}"))
                        .unwrap_or_default(),
                    g("name").map(|x| format!(" name={x}")).unwrap_or_default(),
                )
            }
        }
    }
}

/// Admitted (or shadow-forwarded) decisions about AWS and Kubernetes requests in the logs.
/// Each log (one per replica) is read as its own chain: `decision_seq` names a decision of
/// the same log.
pub fn read(logs: &[PathBuf]) -> anyhow::Result<Vec<Decision>> {
    let mut out = Vec::new();
    for group in log_groups(logs)? {
        let records = query_lines(&group, &Filter::default())?;
        let mut outcomes: HashMap<u64, &Value> = HashMap::new();
        for (_, v) in &records {
            if v.get("kind").and_then(Value::as_str) == Some("outcome") {
                if let Some(d) = v.get("decision_seq").and_then(Value::as_u64) {
                    outcomes.insert(d, v);
                }
            }
        }
        for (_, v) in &records {
            if v.get("kind").and_then(Value::as_str) != Some("decision") {
                continue;
            }
            if !matches!(
                v.get("decision").and_then(Value::as_str),
                Some("allow" | "would_allow")
            ) {
                continue;
            }
            let request = v.get("request").cloned().unwrap_or(Value::Null);
            // A read a certificate authenticated: it ran under the read identity and changes
            // nothing, so no mutation is expected of it.
            if request.get("read") == Some(&Value::Bool(true)) {
                continue;
            }
            let provider = if request.get("kube").is_some_and(Value::is_object) {
                Provider::Kubernetes
            } else if request.get("service").is_some() && request.get("operation").is_some() {
                Provider::Aws
            } else {
                continue; // an http target: no provider log to reconcile with
            };
            let seq = v
                .get("seq")
                .and_then(Value::as_u64)
                .ok_or_else(|| anyhow!("{}: a decision without seq", group[0].display()))?;
            let ts_text = v.get("ts").and_then(Value::as_str).unwrap_or("");
            let ts = ts_text
                .parse::<jiff::Timestamp>()
                .map_err(|e| anyhow!("decision seq {seq}: ts {ts_text:?}: {e}"))?;
            let outcome = outcomes.get(&seq);
            let identity = outcome
                .and_then(|o| o.get("identity"))
                .filter(|i| !i.is_null());
            let outcome_name = outcome
                .and_then(|o| o.get("outcome"))
                .and_then(Value::as_str)
                .map(str::to_string);
            let sent_upstream = outcome
                .and_then(|o| o.get("upstream_status"))
                .is_some_and(|s| !s.is_null());
            let expected = match outcome_name.as_deref() {
                Some("returned") => false,
                Some("failed") => sent_upstream,
                _ => true,
            };
            let (key, role, user) = identity_key(identity);
            let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
            out.push(Decision {
                provider,
                broker: s("broker").unwrap_or_default(),
                seq,
                time: ts_text.to_string(),
                ts,
                cert_id: s("cert_id"),
                iss: s("iss"),
                sub: s("sub"),
                key,
                role,
                user,
                request,
                outcome: outcome_name,
                expected,
            });
        }
    }
    Ok(out)
}

/// `(key, role, broker user)` of the identity an outcome record names.
fn identity_key(identity: Option<&Value>) -> (Option<String>, Option<String>, Option<String>) {
    let Some(id) = identity else {
        return (None, None, None);
    };
    let s = |k: &str| id.get(k).and_then(Value::as_str).map(str::to_string);
    let first = |k: &str| {
        id.get("extra")
            .and_then(|e| e.get(k))
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match id.get("kind").and_then(Value::as_str) {
        Some("sts") => (s("access_key_id"), s("role"), None),
        Some("static") => (s("access_key_id"), None, None),
        Some("impersonation") => {
            let user = s("user").unwrap_or_default();
            let key = match first(EXTRA_CERT_ID) {
                Some(c) => impersonation_key(&user, first(EXTRA_ISSUER).as_deref(), &c),
                None => user,
            };
            (Some(key), None, None)
        }
        Some("token-request") => (s("user"), None, s("user")),
        _ => (None, None, None),
    }
}
