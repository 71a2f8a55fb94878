//! Kubernetes audit logs: `audit.k8s.io/v1` `Event` objects, one JSON object per line (the
//! log backend's format).
//!
//! Only `ResponseComplete` and `Panic` events are calls that ran; the other stages of the same
//! call are skipped. A line that is not an Event of that version, or a duplicate key anywhere,
//! refuses the file: an event read two ways could hide who made it.

use super::event::{opt_str, parse_time, req_str, Operation, Provider, ProviderEvent};
use serde_json::Value;

/// The extra values seb's impersonation carries (src/targets/kubernetes/identity.rs).
pub const EXTRA_CERT_ID: &str = "seb-cert-id";
pub const EXTRA_ISSUER: &str = "seb-issuer";

/// Verbs that only read; any other verb, and these on a subresource that opens a stream into
/// a pod, could change something.
const READ_VERBS: &[&str] = &["get", "list", "watch"];
const STREAM_SUBRESOURCES: &[&str] = &["exec", "attach", "portforward", "proxy"];
/// Reviews are created to ask a question and never stored: `create` on them changes nothing
/// (`seb preflight` sends SelfSubjectAccessReviews; the apiserver's own webhooks others).
const REVIEW_GROUPS: &[&str] = &["authorization.k8s.io", "authentication.k8s.io"];

/// Every completed call in one log file.
pub fn parse_file(name: &str, raw: &[u8]) -> Result<Vec<ProviderEvent>, String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("{name}: not UTF-8: {e}"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{name}:{}", i + 1);
        let v = crate::json::parse_strict(line.as_bytes())
            .map_err(|e| format!("{at}: not a JSON audit event: {e}"))?;
        if let Some(e) = parse_event(&v).map_err(|e| format!("{at}: {e}"))? {
            out.push(ProviderEvent { at, ..e });
        }
    }
    Ok(out)
}

/// The key an impersonated identity is matched on: user, issuer and certificate id. seb's
/// own audit record of the identity gives the same key (`reconcile::decisions`).
pub fn impersonation_key(user: &str, issuer: Option<&str>, cert_id: &str) -> String {
    format!("{user}\u{0}{}\u{0}{cert_id}", issuer.unwrap_or(""))
}

/// One extra value: present once, or absent. Several values for a key seb sets once is not a
/// request seb sent.
fn one_extra(extra: Option<&Value>, key: &str) -> Result<Option<String>, String> {
    match extra.and_then(|e| e.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(a[0].as_str().map(str::to_string))
        }
        Some(_) => Err(format!(
            "impersonatedUser.extra.{key} is not a list of one string"
        )),
    }
}

fn parse_event(v: &Value) -> Result<Option<ProviderEvent>, String> {
    if !v.is_object() {
        return Err("not an object".into());
    }
    if v.get("kind").and_then(Value::as_str) != Some("Event")
        || v.get("apiVersion").and_then(Value::as_str) != Some("audit.k8s.io/v1")
    {
        return Err("not an audit.k8s.io/v1 Event".into());
    }
    let stage = req_str(v, "stage", "event")?;
    if stage != "ResponseComplete" && stage != "Panic" {
        return Ok(None);
    }
    let id = req_str(v, "auditID", "event")?.to_string();
    let verb = req_str(v, "verb", "event")?.to_string();
    let ts = parse_time(
        v.get("stageTimestamp")
            .or(v.get("requestReceivedTimestamp")),
        "stageTimestamp",
    )?;
    let user = v
        .get("user")
        .filter(|u| u.is_object())
        .ok_or("user is missing or not an object")?;
    let principal = req_str(user, "username", "user")?.to_string();
    let key = match v.get("impersonatedUser") {
        None | Some(Value::Null) => Some(principal.clone()),
        Some(imp) if imp.is_object() => {
            let as_user = req_str(imp, "username", "impersonatedUser")?;
            let extra = imp.get("extra");
            let issuer = one_extra(extra, EXTRA_ISSUER)?;
            Some(match one_extra(extra, EXTRA_CERT_ID)? {
                Some(c) => impersonation_key(as_user, issuer.as_deref(), &c),
                None => as_user.to_string(),
            })
        }
        Some(_) => return Err("impersonatedUser is not an object".into()),
    };
    let (operation, sub) = match v.get("objectRef") {
        None | Some(Value::Null) => (
            Operation::Kubernetes {
                verb: verb.clone(),
                group: String::new(),
                resource: opt_str(v, "requestURI", "event")?.unwrap_or("").to_string(),
                subresource: None,
                namespace: None,
                name: None,
            },
            None,
        ),
        Some(o) if o.is_object() => {
            let sub = opt_str(o, "subresource", "objectRef")?.map(str::to_string);
            (
                Operation::Kubernetes {
                    verb: verb.clone(),
                    group: opt_str(o, "apiGroup", "objectRef")?
                        .unwrap_or("")
                        .to_string(),
                    resource: req_str(o, "resource", "objectRef")?.to_string(),
                    subresource: sub.clone(),
                    namespace: opt_str(o, "namespace", "objectRef")?.map(str::to_string),
                    name: opt_str(o, "name", "objectRef")?.map(str::to_string),
                },
                sub,
            )
        }
        Some(_) => return Err("objectRef is not an object".into()),
    };
    let review = matches!(&operation, Operation::Kubernetes { group, resource, .. }
        if REVIEW_GROUPS.contains(&group.as_str()) && resource.ends_with("reviews"));
    let mutating = !review && !READ_VERBS.contains(&verb.as_str())
        || sub
            .as_deref()
            .is_some_and(|s| STREAM_SUBRESOURCES.contains(&s));
    let code = match v.pointer("/responseStatus/code") {
        None | Some(Value::Null) => None,
        Some(c) => Some(c.as_u64().ok_or("responseStatus.code is not a number")?),
    };
    Ok(Some(ProviderEvent {
        provider: Provider::Kubernetes,
        at: String::new(),
        id,
        time: ts.to_string(),
        ts,
        principal,
        key,
        role: None,
        operation,
        mutating,
        refused: matches!(code, Some(401 | 403)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn event() -> Value {
        json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "auditID": "a-1", "stage": "ResponseComplete", "requestURI": "/apis/apps/v1/namespaces/shop/deployments/web",
            "verb": "patch", "user": {"username": "system:serviceaccount:seb:broker"},
            "impersonatedUser": {"username": "seb:exec:deployer", "groups": ["seb:exec"],
                "extra": {"seb-cert-id": ["c1"], "seb-issuer": ["signer"], "seb-subject": ["agent:a"]}},
            "objectRef": {"resource": "deployments", "namespace": "shop", "name": "web", "apiGroup": "apps", "apiVersion": "v1"},
            "responseStatus": {"metadata": {}, "code": 200},
            "requestReceivedTimestamp": "2026-03-01T10:00:00.000001Z", "stageTimestamp": "2026-03-01T10:00:00.002000Z"})
    }

    fn lines(events: &[Value]) -> String {
        events.iter().map(|e| e.to_string() + "\n").collect()
    }

    #[test]
    fn reads_events_and_keys_on_the_impersonated_certificate() {
        let mut started = event();
        started["stage"] = "RequestReceived".into();
        let mut read = event();
        read["verb"] = "get".into();
        let mut exec = event();
        exec["verb"] = "get".into();
        exec["objectRef"]["subresource"] = "exec".into();
        let mut denied = event();
        denied["user"]["username"] = "agent".into();
        denied.as_object_mut().unwrap().remove("impersonatedUser");
        denied["responseStatus"]["code"] = 403.into();
        let got = parse_file(
            "k.log",
            lines(&[started, event(), read, exec, denied]).as_bytes(),
        )
        .unwrap();
        assert_eq!(got.len(), 4, "the RequestReceived stage is not a call");
        assert_eq!(got[0].at, "k.log:2");
        assert_eq!(
            got[0].key.as_deref(),
            Some(impersonation_key("seb:exec:deployer", Some("signer"), "c1").as_str())
        );
        assert!(got[0].mutating && !got[1].mutating && got[2].mutating);
        assert!(got[3].refused && got[3].key.as_deref() == Some("agent"));
    }

    #[test]
    fn ambiguity_is_refused() {
        let dup = event().to_string().replacen(
            "\"verb\":\"patch\"",
            "\"verb\":\"patch\",\"verb\":\"get\"",
            1,
        );
        assert!(dup.contains("\"verb\":\"get\""));
        assert!(parse_file("k", dup.as_bytes())
            .unwrap_err()
            .contains("duplicate"));
        let mut two = event();
        two["impersonatedUser"]["extra"]["seb-cert-id"] = json!(["c1", "c2"]);
        assert!(parse_file("k", lines(&[two]).as_bytes()).is_err());
        let mut v1beta = event();
        v1beta["apiVersion"] = "audit.k8s.io/v1beta1".into();
        assert!(parse_file("k", lines(&[v1beta]).as_bytes()).is_err());
        let mut no_user = event();
        no_user.as_object_mut().unwrap().remove("user");
        assert!(parse_file("k", lines(&[no_user]).as_bytes()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_input_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_file("k", &raw);
        }

        #[test]
        fn arbitrary_events_never_panic(
            verb in ".{0,10}", stage in prop_oneof![Just("ResponseComplete".to_string()), ".{0,5}".prop_map(|s| s)],
            user in proptest::option::of(".{0,10}"), extra in proptest::option::of(proptest::collection::vec(".{0,5}", 0..3)),
            code in proptest::option::of(any::<i64>()), time in "[0-9TZ:.-]{0,30}",
        ) {
            let mut e = event();
            e["verb"] = verb.into();
            e["stage"] = stage.into();
            e["user"]["username"] = user.into();
            e["impersonatedUser"]["extra"]["seb-cert-id"] = extra.into();
            e["responseStatus"]["code"] = code.into();
            e["stageTimestamp"] = time.into();
            let _ = parse_file("k", lines(&[e]).as_bytes());
        }
    }
}
