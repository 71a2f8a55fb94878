//! Matching, on events and decisions made here; tests/reconcile_e2e.rs runs it on logs from
//! real runs.

use super::decisions::Decision;
use super::event::{Operation, Provider, ProviderEvent};
use super::kube_audit::impersonation_key;
use super::matching::{reconcile, Class, Scope};
use serde_json::json;

fn ts(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

fn decision(seq: u64, at: &str, key: &str, op: &str, resource: &str) -> Decision {
    Decision {
        provider: Provider::Aws,
        broker: "b1".into(),
        seq,
        time: at.into(),
        ts: ts(at),
        cert_id: Some(format!("c{seq}")),
        iss: Some("signer".into()),
        sub: Some("agent".into()),
        key: Some(key.into()),
        role: Some("arn:aws:iam::1:role/seb-exec".into()),
        user: None,
        request: json!({"service": "ec2", "region": "us-east-1", "operation": op, "resource": resource}),
        outcome: Some("completed".into()),
        expected: true,
    }
}

fn event(
    at: &str,
    who: &str,
    key: Option<&str>,
    role: Option<&str>,
    op: &str,
    res: &str,
) -> ProviderEvent {
    ProviderEvent {
        provider: Provider::Aws,
        at: "f:1".into(),
        id: "e".into(),
        time: at.into(),
        ts: ts(at),
        principal: who.into(),
        key: key.map(Into::into),
        role: role.map(Into::into),
        operation: Operation::Aws {
            service: "ec2".into(),
            operation: op.into(),
            names: vec![res.into()],
        },
        mutating: true,
        refused: false,
    }
}

fn scope() -> Scope {
    Scope {
        grace: jiff::SignedDuration::from_secs(60),
        skew: jiff::SignedDuration::from_secs(5),
        providers: vec![Provider::Aws, Provider::Kubernetes],
        ..Scope::default()
    }
}

const EXEC: &str = "arn:aws:iam::1:role/seb-exec";
const SESSION: &str = "arn:aws:sts::1:assumed-role/seb-exec/c1";

#[test]
fn clean_logs_have_no_findings() {
    let ds = [
        decision(
            1,
            "2026-03-01T10:00:00Z",
            "ASIA1",
            "TerminateInstances",
            "i-1",
        ),
        decision(
            2,
            "2026-03-01T10:00:01Z",
            "ASIA1",
            "TerminateInstances",
            "i-2",
        ),
    ];
    // In the provider's order, which is not the decisions' (the second call finished first).
    let es = [
        event(
            "2026-03-01T10:00:02Z",
            SESSION,
            Some("ASIA1"),
            Some(EXEC),
            "TerminateInstances",
            "i-2",
        ),
        event(
            "2026-03-01T10:00:01Z",
            SESSION,
            Some("ASIA1"),
            Some(EXEC),
            "TerminateInstances",
            "i-1",
        ),
        event(
            "2026-03-01T10:30:00Z",
            "arn:aws:iam::1:user/ops",
            Some("AKIA9"),
            None,
            "TerminateInstances",
            "i-3",
        )
        .with_refused(),
    ];
    let r = reconcile(&ds, &es, &scope());
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    assert_eq!((r.matched, r.refused, r.pending), (2, 1, 0));
}

#[test]
fn every_class_is_reported() {
    let ds = [
        decision(
            1,
            "2026-03-01T10:00:00Z",
            "ASIA1",
            "TerminateInstances",
            "i-1",
        ),
        // No event ever: unconfirmed once the logs run past the grace period.
        decision(
            2,
            "2026-03-01T10:00:00Z",
            "ASIA2",
            "TerminateInstances",
            "i-2",
        ),
        // Its session ran another instance: mismatch.
        decision(
            3,
            "2026-03-01T10:00:00Z",
            "ASIA3",
            "TerminateInstances",
            "i-3",
        ),
        // Late in the logs: pending, not unconfirmed.
        decision(
            4,
            "2026-03-01T10:59:30Z",
            "ASIA4",
            "TerminateInstances",
            "i-4",
        ),
    ];
    let es = [
        event(
            "2026-03-01T10:00:01Z",
            SESSION,
            Some("ASIA1"),
            Some(EXEC),
            "TerminateInstances",
            "i-1",
        ),
        // The same session once more: a replayed session.
        event(
            "2026-03-01T10:00:02Z",
            SESSION,
            Some("ASIA1"),
            Some(EXEC),
            "TerminateInstances",
            "i-1",
        ),
        event(
            "2026-03-01T10:00:01Z",
            SESSION,
            Some("ASIA3"),
            Some(EXEC),
            "TerminateInstances",
            "i-9",
        ),
        // A session of the execution role that seb never minted.
        event(
            "2026-03-01T10:00:05Z",
            "arn:aws:sts::1:assumed-role/seb-exec/x",
            Some("ASIAX"),
            Some(EXEC),
            "StopInstances",
            "i-5",
        ),
        // Somebody else.
        event(
            "2026-03-01T11:00:00Z",
            "arn:aws:iam::1:user/ops",
            Some("AKIA9"),
            None,
            "TerminateInstances",
            "i-6",
        ),
    ];
    let r = reconcile(&ds, &es, &scope());
    let classes: Vec<Class> = r.findings.iter().map(|f| f.class).collect();
    assert_eq!(
        classes,
        [
            Class::Bypass,
            Class::Unadmitted,
            Class::Unadmitted,
            Class::Unconfirmed,
            Class::Mismatch
        ]
    );
    assert_eq!(r.findings[3].decision.as_ref().unwrap().seq, 2);
    assert_eq!(r.findings[4].decision.as_ref().unwrap().seq, 3);
    assert_eq!((r.matched, r.pending), (1, 1));
    // The window and the ignore list scope bypasses, not the broker's own checks.
    let mut s = scope();
    s.ignore = vec!["arn:aws:iam::1:user/*".into()];
    let r = reconcile(&ds, &es, &s);
    assert_eq!(r.ignored, 1);
    assert!(r.findings.iter().all(|f| f.class != Class::Bypass));
    s.until = Some(ts("2026-03-01T10:30:00Z"));
    s.ignore.clear();
    assert!(reconcile(&ds, &es, &s)
        .findings
        .iter()
        .all(|f| f.class != Class::Bypass));
}

#[test]
fn kubernetes_matches_on_the_impersonated_certificate() {
    let key = impersonation_key("seb:exec:deployer", Some("signer"), "c1");
    let mut d = decision(1, "2026-03-01T10:00:00Z", &key, "", "");
    d.provider = Provider::Kubernetes;
    d.request = json!({"kube": {"verb": "patch", "group": "apps", "resource": "deployments", "namespace": "shop", "name": "web"}});
    let kube = |verb: &str, name: &str, user: &str, key: Option<&str>| ProviderEvent {
        provider: Provider::Kubernetes,
        principal: user.into(),
        key: key.map(Into::into),
        role: None,
        operation: Operation::Kubernetes {
            verb: verb.into(),
            group: "apps".into(),
            resource: "deployments".into(),
            subresource: None,
            namespace: Some("shop".into()),
            name: Some(name.into()),
        },
        ..event("2026-03-01T10:00:01Z", "", None, None, "", "")
    };
    let mut s = scope();
    s.grace = jiff::SignedDuration::ZERO;
    s.kube_users = vec!["system:serviceaccount:seb:broker".into()];
    let broker = "system:serviceaccount:seb:broker";
    let r = reconcile(
        &[d.clone()],
        &[kube("patch", "web", broker, Some(&key))],
        &s,
    );
    assert!(r.findings.is_empty() && r.matched == 1, "{:?}", r.findings);
    // Same certificate id from another issuer: not this decision's.
    let other = impersonation_key("seb:exec:deployer", Some("other"), "c1");
    let r = reconcile(
        &[d.clone()],
        &[kube("patch", "web", broker, Some(&other))],
        &s,
    );
    let classes: Vec<Class> = r.findings.iter().map(|f| f.class).collect();
    assert_eq!(classes, [Class::Unadmitted, Class::Unconfirmed]);
    let r = reconcile(
        &[d.clone()],
        &[kube("delete", "web", broker, Some(&key))],
        &s,
    );
    assert_eq!(r.findings[0].class, Class::Mismatch);
    let r = reconcile(&[d], &[kube("patch", "web", "alice", Some("alice"))], &s);
    assert_eq!(r.findings[0].class, Class::Bypass);
}

impl ProviderEvent {
    fn with_refused(mut self) -> Self {
        self.refused = true;
        self
    }
}
