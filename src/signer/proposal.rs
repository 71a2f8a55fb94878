//! What an agent asks for: a proposal (the certificate it wants, minus what only the signer
//! decides) and references to the evidence the signer is to fetch and check.

use crate::cert::{Audience, BodyRule, TargetKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The body of `POST /v1/certificates`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    pub proposal: Proposal,
    #[serde(default)]
    pub evidence: EvidenceRefs,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Proposal {
    /// Human label of the change; a Cedar action in the policy schema.
    pub action: String,
    pub target: TargetKind,
    /// The broker target names the certificate is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// The target's own request shape, as in `seb.request`.
    pub request: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precondition: Option<Value>,
    /// Seconds the agent asks for; the permitting policy may grant less.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u32>,
}

/// References only: the signer fetches what they point at and checks it itself. Nothing here
/// is believed as a fact.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvidenceRefs {
    /// A pull request on the code host: its CI checks and changed files are fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<PullRequestRef>,
    /// The images deployed to an environment, from the code host's deployments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployments: Option<DeploymentsRef>,
    /// Ask the risk endpoint to score this proposal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub risk: bool,
    /// Signed approval statements (`seb approve`), each naming this proposal's digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PullRequestRef {
    /// `owner/name`.
    pub repo: String,
    pub number: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeploymentsRef {
    pub repo: String,
    pub environment: String,
}

impl CertificateRequest {
    /// Strict JSON (a repeated member is refused), unknown members refused.
    pub fn parse(bytes: &[u8]) -> Result<CertificateRequest, String> {
        crate::json::check_strict(bytes).map_err(|e| e.to_string())?;
        let req: CertificateRequest = crate::json::from_checked(bytes)?;
        req.proposal.check()?;
        if let Some(pr) = &req.evidence.pull_request {
            check_repo(&pr.repo)?;
        }
        if let Some(d) = &req.evidence.deployments {
            check_repo(&d.repo)?;
            if !d.environment.chars().all(is_name_char) || d.environment.is_empty() {
                return Err(format!(
                    "evidence.deployments.environment {:?}: letters, digits, '-', '_', '.' only",
                    d.environment
                ));
            }
        }
        if req.evidence.approvals.len() > 16 {
            return Err("evidence.approvals: at most 16".into());
        }
        Ok(req)
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// The repo is put into a URL path: one spelling, two plain segments, nothing to escape.
fn check_repo(repo: &str) -> Result<(), String> {
    let ok = match repo.split_once('/') {
        Some((o, n)) => {
            !o.is_empty()
                && !n.is_empty()
                && o.chars().all(is_name_char)
                && n.chars().all(is_name_char)
                && o != ".."
                && n != ".."
                && o != "."
                && n != "."
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("repo {repo:?} is not owner/name"))
    }
}

impl Proposal {
    fn check(&self) -> Result<(), String> {
        if self.action.is_empty() || !self.action.chars().all(is_name_char) {
            return Err(format!(
                "proposal.action {:?}: letters, digits, '-', '_', '.' only",
                self.action
            ));
        }
        if !self.request.is_object() {
            return Err("proposal.request must be an object".into());
        }
        if self.max_uses == Some(0) {
            return Err("proposal.max_uses must be at least 1".into());
        }
        if self.ttl_secs == Some(0) {
            return Err("proposal.ttl_secs must be at least 1".into());
        }
        Ok(())
    }

    /// SHA-256 (lowercase hex) of the proposal's canonical JSON: what approvals name. Keys are
    /// sorted at every level and nothing is spaced, so the agent, the approver and the signer
    /// compute it alike from the same proposal whatever order its file was written in.
    pub fn digest(&self) -> String {
        let v = serde_json::to_value(self).unwrap_or(Value::Null);
        let mut out = String::new();
        canonical(&v, &mut out);
        hex::encode(Sha256::digest(out.as_bytes()))
    }
}

/// Sorted keys, no whitespace; strings and numbers as serde_json writes them.
pub fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn proposal() -> &'static str {
        r#"{"proposal":{"action":"refund","target":"http","request":{"upstream":"payments","method":"POST","path":"/v1/refunds"},
            "body":{"constraints":{"/amount":{"max":100}},"others":"deny"}},"evidence":{"risk":true}}"#
    }

    #[test]
    fn digest_ignores_member_order() {
        let a = CertificateRequest::parse(proposal().as_bytes()).unwrap();
        let b = CertificateRequest::parse(
            br#"{"evidence":{"risk":true},"proposal":{"request":{"path":"/v1/refunds","method":"POST","upstream":"payments"},
                "target":"http","action":"refund","body":{"others":"deny","constraints":{"/amount":{"max":100}}}}}"#,
        )
        .unwrap();
        assert_eq!(a.proposal.digest(), b.proposal.digest());
        let mut c = a.proposal.clone();
        c.request["path"] = "/v1/refunds/x".into();
        assert_ne!(a.proposal.digest(), c.digest());
    }

    #[test]
    fn refuses_repeats_unknowns_and_bad_repos() {
        for (bad, why) in [
            (
                r#"{"proposal":{"action":"a","action":"b","target":"http","request":{}}}"#,
                "duplicate",
            ),
            (
                r#"{"proposal":{"action":"a","target":"http","request":{},"sub":"agent:root"}}"#,
                "unknown field",
            ),
            (
                r#"{"proposal":{"action":"a","target":"http","request":{}},"evidence":{"ci":"green"}}"#,
                "unknown field",
            ),
            (
                r#"{"proposal":{"action":"a","target":"http","request":{}},"evidence":{"pull_request":{"repo":"../x","number":1}}}"#,
                "owner/name",
            ),
            (
                r#"{"proposal":{"action":"a","target":"http","request":{}},"evidence":{"pull_request":{"repo":"a/b/c","number":1}}}"#,
                "owner/name",
            ),
            (
                r#"{"proposal":{"action":"a b","target":"http","request":{}}}"#,
                "letters",
            ),
            (
                r#"{"proposal":{"action":"a","target":"ftp","request":{}}}"#,
                "http",
            ),
        ] {
            let e = CertificateRequest::parse(bad.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any bytes: a parse error or a proposal, never a panic; an accepted proposal's repo
        /// references are plain `owner/name`.
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(r) = CertificateRequest::parse(&bytes) {
                if let Some(pr) = r.evidence.pull_request {
                    prop_assert!(!pr.repo.contains(".."));
                }
            }
        }

        /// Mutating one character of a valid request never panics and, if accepted, still
        /// has a digest that depends only on the proposal.
        #[test]
        fn mutated_requests_parse_or_fail_cleanly(i in 0usize..200, c in any::<char>()) {
            let mut s: Vec<char> = proposal().chars().collect();
            let i = i % s.len();
            s[i] = c;
            let s: String = s.into_iter().collect();
            if let Ok(r) = CertificateRequest::parse(s.as_bytes()) {
                prop_assert_eq!(r.proposal.digest().len(), 64);
            }
        }
    }
}
