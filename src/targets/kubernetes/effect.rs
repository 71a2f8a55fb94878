//! Effect matching: what a change will do to the live object, checked against the certificate.
//!
//! The body of a patch says little on its own (a strategic merge patch can replace a whole
//! list with `$patch: replace`; a JSON patch can move fields around), so the broker computes
//! the object after the change from the live object and compares the two. The certificate's
//! constraints must hold on the object after the change, and with `others: deny` every field
//! that changes (added, removed or altered) must be named by a constraint.

use super::patch;
use crate::cert::claims::{ConstraintsRule, Others};
use crate::denial::{Denial, Reason};
use serde_json::Value;

/// The resources whose effect the broker computes: built-in types whose merge keys
/// [`patch::strategic_merge`] knows, and the `scale` subresource.
pub fn supported(group: &str, resource: &str, subresource: Option<&str>) -> bool {
    match subresource {
        None => matches!(
            (group, resource),
            ("apps", "deployments" | "statefulsets" | "daemonsets")
                | ("", "services" | "configmaps" | "pods")
                | ("batch", "jobs" | "cronjobs")
        ),
        Some("scale") => matches!(
            (group, resource),
            ("apps", "deployments" | "statefulsets" | "replicasets")
        ),
        Some(_) => false,
    }
}

/// How the request body changes the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Create,
    Update,
    MergePatch,
    JsonPatch,
    StrategicMergePatch,
    /// Server-side apply with a JSON body. Its exact result depends on field managers the
    /// broker does not track; computed as a strategic merge of the applied configuration,
    /// which is what it does to fields the applier sets.
    Apply,
}

/// The object after the change. `live` is `None` when the object does not exist.
pub fn after(change: Change, live: Option<&Value>, body: &Value) -> Result<Value, String> {
    match (change, live) {
        (Change::Create, _) | (Change::Update, _) => Ok(body.clone()),
        (Change::Apply, None) => {
            patch::refuse_directives(body)?;
            Ok(body.clone())
        }
        (_, None) => Err("the object does not exist, so there is nothing to patch".into()),
        (Change::MergePatch, Some(l)) => Ok(patch::merge_patch(l, body)),
        (Change::JsonPatch, Some(l)) => patch::json_patch(l, body),
        (Change::StrategicMergePatch, Some(l)) => patch::strategic_merge(l, body),
        (Change::Apply, Some(l)) => {
            patch::refuse_directives(body)?;
            patch::check_apply_modeled(l, body)?;
            patch::strategic_merge(l, body)
        }
    }
}

/// Fields the apiserver owns: a change to them is not a change the agent makes. A
/// `resourceVersion` in a body is a precondition, not a new value (the broker forwards the
/// one it checked). `managedFields` is not among them: the apiserver takes managedFields
/// from an update or patch body as sent, and they decide who owns which field (what a later
/// server-side apply removes or conflicts on), so changing them must be certified like any
/// other field.
const SERVER_FIELDS: [&str; 6] = [
    "/metadata/resourceVersion",
    "/metadata/uid",
    "/metadata/generation",
    "/metadata/creationTimestamp",
    "/metadata/selfLink",
    "/status",
];

fn server_owned(pointer: &str) -> bool {
    SERVER_FIELDS
        .iter()
        .any(|f| pointer == *f || pointer.starts_with(&format!("{f}/")))
}

/// Pointers of every leaf that differs between `before` and `after`. A subtree that appears
/// or disappears contributes each of its leaves.
pub fn changed_leaves(before: &Value, after: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(Some(before), Some(after), &mut String::new(), &mut out);
    out.retain(|p| !server_owned(p));
    out
}

fn walk(b: Option<&Value>, a: Option<&Value>, path: &mut String, out: &mut Vec<String>) {
    match (b, a) {
        (Some(Value::Object(bm)), Some(Value::Object(am))) if !bm.is_empty() || !am.is_empty() => {
            let mut keys: Vec<&String> = bm.keys().chain(am.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let len = path.len();
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                walk(bm.get(k), am.get(k), path, out);
                path.truncate(len);
            }
        }
        (Some(Value::Array(ba)), Some(Value::Array(aa))) if !ba.is_empty() || !aa.is_empty() => {
            for i in 0..ba.len().max(aa.len()) {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                walk(ba.get(i), aa.get(i), path, out);
                path.truncate(len);
            }
        }
        (Some(x), Some(y)) if x == y => {}
        (Some(x), Some(y)) => {
            // A type change (object to scalar) changes every leaf on both sides.
            for v in [x, y] {
                for l in crate::json::leaves(v) {
                    out.push(format!("{path}{l}"));
                }
            }
        }
        (Some(v), None) | (None, Some(v)) => {
            for l in crate::json::leaves(v) {
                out.push(format!("{path}{l}"));
            }
        }
        (None, None) => {}
    }
    // A type change listed a leaf twice (same pointer on both sides).
    out.dedup();
}

/// Constraints hold on the object after the change; with `others: deny`, every changed leaf
/// lies at or under a constrained pointer.
pub fn check(rule: &ConstraintsRule, after: &Value, changed: &[String]) -> Result<(), Denial> {
    // Reuse the body matcher for the values: over the whole object after the change, with
    // unnamed fields allowed (they are judged below by whether they changed).
    let values = ConstraintsRule {
        constraints: rule.constraints.clone(),
        others: Others::Allow,
    };
    crate::contract::check_constraints(&values, after)?;
    if rule.others == Others::Deny {
        let named: Vec<Vec<&str>> = rule.constraints.keys().map(|p| segments(p)).collect();
        for leaf in changed {
            let l = segments(leaf);
            let covered = named.iter().any(|c| {
                c.len() <= l.len()
                    && c.iter()
                        .zip(&l)
                        .all(|(c, l)| c == l || (*c == "*" && is_index(l)))
            });
            if !covered {
                return Err(Denial::new(
                    Reason::ContractMismatch,
                    format!(
                        "the change would alter {}, which the certificate does not name (others: deny)",
                        if leaf.is_empty() { "the whole object" } else { leaf }
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn segments(p: &str) -> Vec<&str> {
    if p.is_empty() {
        Vec::new()
    } else {
        p[1..].split('/').collect()
    }
}

fn is_index(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(v: Value) -> ConstraintsRule {
        serde_json::from_value(v).unwrap()
    }

    fn live() -> Value {
        json!({"metadata": {"name": "web", "resourceVersion": "7"},
               "spec": {"replicas": 2, "template": {"spec": {"containers": [
                   {"name": "app", "image": "reg/app:1"}, {"name": "side", "image": "reg/side:1"}]}}},
               "status": {"replicas": 2}})
    }

    fn image_only() -> ConstraintsRule {
        rule(
            json!({"constraints": {"/spec/template/spec/containers/0/image": {"eq": "reg/app:2"}}, "others": "deny"}),
        )
    }

    fn effect(change: Change, body: Value) -> Result<(), Denial> {
        let a = after(change, Some(&live()), &body)
            .map_err(|e| Denial::new(Reason::ContractMismatch, e))?;
        check(&image_only(), &a, &changed_leaves(&live(), &a))
    }

    #[test]
    fn the_certified_image_change_passes_in_every_patch_form() {
        let smp = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "reg/app:2"}]}}}});
        assert!(effect(Change::StrategicMergePatch, smp).is_ok());
        let jp = json!([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "reg/app:2"}]);
        assert!(effect(Change::JsonPatch, jp).is_ok());
        let mut full = live();
        full["spec"]["template"]["spec"]["containers"][0]["image"] = json!("reg/app:2");
        assert!(effect(Change::Update, full).is_ok());
        // A resourceVersion in the body is a precondition, and status is the server's.
        let mp = json!({"metadata": {"resourceVersion": "7"}, "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "reg/app:2"}, {"name": "side", "image": "reg/side:1"}]}}}});
        assert!(effect(Change::MergePatch, mp).is_ok());
    }

    #[test]
    fn anything_else_that_changes_is_refused() {
        let privileged = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "reg/app:2", "securityContext": {"privileged": true}}]}}}});
        let e = effect(Change::StrategicMergePatch, privileged).unwrap_err();
        assert!(
            e.message
                .contains("/spec/template/spec/containers/0/securityContext/privileged"),
            "{}",
            e.message
        );
        let replace = json!({"spec": {"template": {"spec": {"$patch": "replace", "containers": [{"name": "app", "image": "reg/app:2"}]}}}});
        assert!(
            effect(Change::StrategicMergePatch, replace).is_err(),
            "the sidecar disappears"
        );
        let delete = json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}, {"name": "app", "image": "reg/app:2"}]}}}});
        assert!(effect(Change::StrategicMergePatch, delete).is_err());
        // A merge patch replaces the list: the sidecar goes, so it is refused.
        let mp = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "reg/app:2"}]}}}});
        assert!(effect(Change::MergePatch, mp).is_err());
        let wrong = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "evil/app:2"}]}}}});
        assert_eq!(
            effect(Change::StrategicMergePatch, wrong)
                .unwrap_err()
                .reason,
            Reason::ContractMismatch
        );
        let moved = json!([{"op": "move", "from": "/spec/template/spec/containers/1", "path": "/spec/template/spec/containers/0"}]);
        assert!(effect(Change::JsonPatch, moved).is_err());
    }

    #[test]
    fn changed_leaves_lists_additions_removals_and_type_changes() {
        let b = json!({"a": {"x": 1}, "l": [1, 2], "s": "v"});
        let a = json!({"a": 5, "l": [1], "n": {"m": true}});
        let mut got = changed_leaves(&b, &a);
        got.sort();
        assert_eq!(got, vec!["/a", "/a/x", "/l/1", "/n/m", "/s"]);
        assert!(changed_leaves(&live(), &live()).is_empty());
    }

    #[test]
    fn supported_kinds() {
        assert!(supported("apps", "deployments", None));
        assert!(supported("apps", "deployments", Some("scale")));
        assert!(supported("", "configmaps", None));
        assert!(!supported("", "secrets", None));
        assert!(!supported("apps", "deployments", Some("status")));
        assert!(!supported("example.com", "widgets", None));
    }
}
