//! Kubernetes: a SelfSubjectAccessReview per mutation the agent must not make, sent with the
//! agent's own kubeconfig. kubectl sends them (`kubectl create --raw`), so every way a
//! kubeconfig can authenticate (tokens, client certificates, exec plugins such as
//! `aws eks get-token`) is the agent's real one.

use super::{PreflightArgs, Row, Verdict};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

const SSAR_PATH: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

/// `(verb, group, resource, subresource)` per namespace.
const PROBES: &[(&str, &str, &str, Option<&str>)] = &[
    ("create", "apps", "deployments", None),
    ("patch", "apps", "deployments", None),
    ("update", "apps", "deployments", None),
    ("delete", "apps", "deployments", None),
    ("patch", "apps", "deployments", Some("scale")),
    ("create", "", "pods", None),
    ("delete", "", "pods", None),
    ("create", "", "pods", Some("exec")),
    ("create", "", "secrets", None),
    ("patch", "", "configmaps", None),
    ("delete", "", "services", None),
];

fn kubectl(a: &PreflightArgs, kubeconfig: &Path) -> Command {
    let mut c = Command::new("kubectl");
    c.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=30s");
    if let Some(ctx) = &a.kube_context {
        c.arg("--context").arg(ctx);
    }
    c
}

/// One review: `Ok(allowed)`, or why there was no answer.
fn review(a: &PreflightArgs, kubeconfig: &Path, attrs: Value) -> Result<(bool, String), String> {
    let body = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attrs},
    });
    let mut child = kubectl(a, kubeconfig)
        .args(["create", "--raw", SSAR_PATH, "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "kubectl: {e} (preflight runs kubectl to use the kubeconfig's own authentication)"
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(body.to_string().as_bytes())
            .map_err(|e| format!("kubectl: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("kubectl: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("the review's answer is not JSON: {e}"))?;
    match v.pointer("/status/allowed") {
        Some(Value::Bool(b)) => Ok((
            *b,
            v.pointer("/status/reason")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        )),
        _ => Err("the review's answer has no status.allowed".into()),
    }
}

pub fn check(a: &PreflightArgs, kubeconfig: &Path) -> anyhow::Result<Vec<Row>> {
    let ctx = match &a.kube_context {
        Some(c) => c.clone(),
        None => {
            let out = kubectl(a, kubeconfig)
                .args(["config", "current-context"])
                .output()
                .map_err(|e| anyhow::anyhow!("kubectl: {e}"))?;
            if !out.status.success() {
                anyhow::bail!(
                    "{}: {}",
                    kubeconfig.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }
    };
    let identity = format!("context {ctx}");
    let mut rows = Vec::new();
    let mut push = |check: String, result: Result<(bool, String), String>| {
        let (verdict, detail) = match result {
            Ok((false, why)) => (
                Verdict::Guarded,
                format!(
                    "denied{}",
                    if why.is_empty() {
                        String::new()
                    } else {
                        format!(": {why}")
                    }
                ),
            ),
            Ok((true, _)) => (
                Verdict::Gap,
                "allowed: the agent can do this without the broker".into(),
            ),
            Err(e) => (Verdict::Gap, format!("not proven refused: {e}")),
        };
        rows.push(Row {
            provider: "kubernetes",
            identity: identity.clone(),
            check,
            verdict,
            detail,
        });
    };
    for ns in &a.namespaces {
        for (verb, group, resource, sub) in PROBES {
            let mut attrs =
                json!({"namespace": ns, "verb": verb, "group": group, "resource": resource});
            if let Some(s) = sub {
                attrs["subresource"] = json!(s);
            }
            let what = format!(
                "{verb} {}{resource}{} -n {ns}",
                if group.is_empty() {
                    String::new()
                } else {
                    format!("{group}/")
                },
                sub.map(|s| format!("/{s}")).unwrap_or_default()
            );
            push(what, review(a, kubeconfig, attrs));
        }
    }
    if let Some(user) = &a.kube_execution_user {
        let attrs = json!({"verb": "impersonate", "group": "", "resource": "users", "name": user});
        push(
            format!("impersonate user {user}"),
            review(a, kubeconfig, attrs),
        );
    }
    Ok(rows)
}
