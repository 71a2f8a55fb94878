//! One proposal, top to bottom: verify the evidence, ask the policies, cap the grant, sign,
//! and record the decision durably before the certificate leaves.

use super::evidence::{EvidenceError, PullRequestFacts};
use super::policy::{path_outside, Grant, Verdict};
use super::proposal::{CertificateRequest, Proposal};
use super::Signer;
use crate::audit::{Entry, Kind, Subject, Verdict as AuditVerdict};
use crate::cert::{BodyRule, Claims, TargetKind, CERT_TYP};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Who is asking: the name from the client certificate or the token, never from the body.
#[derive(Clone, Debug)]
pub struct AgentIdentity {
    pub name: String,
    /// RFC 8705 thumbprint of the client certificate, when the agent came over mTLS: the
    /// certificate is bound to it (`cnf`).
    pub x5t_s256: Option<String>,
}

#[derive(Debug)]
pub struct Issued {
    pub token: String,
    pub claims: Claims,
}

/// A refusal: a stable code, a message naming the policy or evidence, and whether waiting
/// could change it (approvals not yet given).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
    pub policy: Option<String>,
    pub retry: bool,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            policy: None,
            retry: false,
        }
    }

    /// HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self.code {
            "proposal_malformed" => 400,
            "evidence_unavailable" | "audit_unavailable" => 503,
            _ => 403,
        }
    }
}

/// Verified evidence, as the policies' context sees it.
struct Facts {
    pr: Option<PullRequestFacts>,
    deployed_images: Option<Vec<String>>,
    risk: Option<i64>,
    approvers: Vec<String>,
    open_windows: Vec<String>,
    closed_windows: Vec<String>,
}

impl Signer {
    /// Judges one request and records the verdict; a certificate only once its record is durable.
    pub async fn issue(
        &self,
        agent: &AgentIdentity,
        req: CertificateRequest,
    ) -> Result<Issued, Refusal> {
        self.issue_at(agent, req, crate::cert::now_secs()).await
    }

    /// As [`Signer::issue`], judged at `now` (seconds since the epoch): tests of deploy
    /// windows and approval lifetimes need a clock they choose.
    pub async fn issue_at(
        &self,
        agent: &AgentIdentity,
        req: CertificateRequest,
        now: i64,
    ) -> Result<Issued, Refusal> {
        let result = self.judge(agent, &req, now).await;
        let subject =
            |policy: Option<String>, cert: Option<&Claims>, evidence: Option<Value>| Subject {
                cert_id: cert.map(|c| c.jti.clone()),
                iss: Some(self.issuer.clone()),
                sub: Some(agent.name.clone()),
                action: Some(req.proposal.action.clone()),
                policy,
                evidence,
                target: req.proposal.target.as_str().to_string(),
                // The target's own request members (method and path, operation, verb...) as
                // the broker's records have them, so one query reads both logs alike.
                request: {
                    let mut r = req.proposal.request.clone();
                    if let Some(o) = r.as_object_mut() {
                        o.insert("proposal".into(), json!(req.proposal.digest()));
                        o.insert("aud".into(), json!(req.proposal.aud));
                        o.insert("peer".into(), json!(agent.x5t_s256));
                    }
                    r
                },
                body_sha256: None,
                trace_id: None,
            };
        let entry = match &result {
            Ok(i) => Entry {
                kind: Kind::Decision,
                subject: Arc::new(subject(
                    Some(i.claims.seb.policy.clone()),
                    Some(&i.claims),
                    i.claims.seb.evidence.clone(),
                )),
                decision: AuditVerdict::Allow,
                reason: None,
                identity: None,
                upstream_status: None,
                duration_ms: None,
                outcome: None,
                decision_seq: None,
            },
            Err(r) => Entry {
                kind: Kind::Decision,
                subject: Arc::new(subject(r.policy.clone(), None, None)),
                decision: AuditVerdict::Deny,
                reason: Some((r.code.to_string(), r.message.clone())),
                identity: None,
                upstream_status: None,
                duration_ms: None,
                outcome: None,
                decision_seq: None,
            },
        };
        if let Err(e) = self.audit.record(entry).await {
            // Nothing leaves unrecorded: an issuance the log cannot hold is not made.
            return Err(Refusal::new(
                "audit_unavailable",
                format!("the signer's log: {e}"),
            ));
        }
        result
    }

    async fn judge(
        &self,
        agent: &AgentIdentity,
        req: &CertificateRequest,
        now: i64,
    ) -> Result<Issued, Refusal> {
        let p = &req.proposal;
        let digest = p.digest();
        let facts = self
            .gather(agent, req, &digest, now)
            .await
            .map_err(|e| match e {
                EvidenceError::Unavailable { .. } => {
                    Refusal::new("evidence_unavailable", e.to_string())
                }
                EvidenceError::Invalid { .. } => Refusal::new("evidence_invalid", e.to_string()),
            })?;
        let requested_ttl = p.ttl_secs.unwrap_or(self.limits.default_ttl.as_secs());
        let requested_uses = p.max_uses.unwrap_or(1);
        let (rtype, rid, entities) = resource_entities(p, &agent.name, &digest)
            .map_err(|m| Refusal::new("proposal_malformed", m))?;
        let context = context(&facts, now, requested_ttl, requested_uses);
        let policies = self.policies();
        let verdict = policies
            .decide(&agent.name, &p.action, (rtype, &rid), entities, context)
            .map_err(|m| Refusal::new("proposal_malformed", m))?;
        let grant = match verdict {
            Verdict::Forbid(ids) => {
                let mut r = Refusal::new(
                    "policy_forbid",
                    format!("forbidden by policy {}", ids.join(", ")),
                );
                r.policy = ids.first().cloned();
                return Err(r);
            }
            Verdict::NotPermitted { candidates, errors } => {
                return Err(not_permitted(p, req, &facts, &candidates, &errors));
            }
            Verdict::Permit(grants) => self.pick(grants, &facts)?,
        };
        let max_ttl = grant
            .max_ttl_secs
            .unwrap_or(u64::MAX)
            .min(self.limits.max_ttl.as_secs());
        let ttl = requested_ttl.min(max_ttl) as i64;
        let uses = requested_uses.min(grant.max_uses.unwrap_or(1));
        let (policy_epoch, revocation_epoch) = self.epochs();
        let mut evidence = Map::new();
        evidence.insert("proposal".into(), json!(digest));
        if let Some(pr) = &facts.pr {
            evidence.insert(
                "pull_request".into(),
                json!(format!("{}#{}", pr.repo, pr.number)),
            );
            evidence.insert("commit".into(), json!(pr.head_sha));
            evidence.insert("ci".into(), json!(pr.checks));
        }
        if let Some(r) = facts.risk {
            evidence.insert("risk".into(), json!(r));
        }
        if !facts.approvers.is_empty() {
            evidence.insert("approvers".into(), json!(facts.approvers));
        }
        if !facts.open_windows.is_empty() {
            evidence.insert("windows".into(), json!(facts.open_windows));
        }
        if grant.break_glass {
            evidence.insert("break_glass".into(), json!(true));
        }
        let mut seb = json!({
            "v": 1, "action": p.action, "policy": grant.policy, "policy_epoch": policy_epoch,
            "revocation_epoch": revocation_epoch, "max_uses": uses,
            "target": p.target, "request": p.request, "evidence": evidence,
        });
        if let Some(b) = &p.body {
            seb["body"] = json!(b);
        }
        if let Some(pre) = &p.precondition {
            seb["precondition"] = pre.clone();
        }
        let mut payload = json!({
            "iss": self.issuer, "sub": agent.name, "jti": random_id(),
            "iat": now, "nbf": now, "exp": now + ttl, "seb": seb,
        });
        if let Some(aud) = &p.aud {
            payload["aud"] = json!(aud);
        }
        if let Some(x5t) = &agent.x5t_s256 {
            payload["cnf"] = json!({"x5t#S256": x5t});
        }
        // What the broker would refuse to read is refused here, naming why.
        if let Some(BodyRule::Constraints(rule)) = &p.body {
            crate::contract::check_rule_shape(rule)
                .map_err(|m| Refusal::new("proposal_malformed", format!("proposal.body: {m}")))?;
        }
        let claims = Claims::from_payload(payload.clone()).map_err(|m| {
            Refusal::new(
                "proposal_malformed",
                format!("would not make a valid certificate: {m}"),
            )
        })?;
        let token =
            crate::cert::jws::sign(&self.keys.active, CERT_TYP, &self.keys.active_kid, &payload);
        Ok(Issued { token, claims })
    }

    /// The first permitting policy (by id) whose path allowlist holds.
    fn pick(&self, grants: Vec<Grant>, facts: &Facts) -> Result<Grant, Refusal> {
        let mut why = Vec::new();
        for g in &grants {
            match (&g.allowed_paths, &facts.pr) {
                (None, _) => return Ok(g.clone()),
                (Some(_), None) => why.push(format!(
                    "policy {} allows changes only under listed paths and needs a pull_request to check them",
                    g.policy
                )),
                (Some(allowed), Some(pr)) => match path_outside(&pr.changed_paths, allowed) {
                    None => return Ok(g.clone()),
                    Some(path) => why.push(format!(
                        "policy {} allows changes only under {allowed:?}; pull request {}#{} changes {path:?}",
                        g.policy, pr.repo, pr.number
                    )),
                },
            }
        }
        let mut r = Refusal::new("not_permitted", why.join("; "));
        r.policy = grants.first().map(|g| g.policy.clone());
        Err(r)
    }

    async fn gather(
        &self,
        agent: &AgentIdentity,
        req: &CertificateRequest,
        digest: &str,
        now: i64,
    ) -> Result<Facts, EvidenceError> {
        let refs = &req.evidence;
        let missing_source = |kind: &str, source: &str| EvidenceError::Unavailable {
            source: source.to_string(),
            message: format!(
                "the proposal references {kind} but this signer has no {source} configured"
            ),
        };
        // Approvals given with the request and approvals posted since, for this digest.
        let mut statements = refs.approvals.clone();
        let approvers = self.approvers.verify(&statements, digest, now)?;
        let mut approvers = approvers;
        for s in self.posted_for(digest) {
            // Posted ones were checked when posted; one that has since expired is left out.
            if let Ok(names) = self.approvers.verify(std::slice::from_ref(&s), digest, now) {
                statements.push(s);
                for n in names {
                    if !approvers.contains(&n) {
                        approvers.push(n);
                    }
                }
            }
        }
        approvers.sort();
        let pr = async {
            match &refs.pull_request {
                None => Ok(None),
                Some(r) => match &self.code_host {
                    None => Err(missing_source("a pull_request", "code_host")),
                    Some(s) => s.pull_request(r).await.map(Some),
                },
            }
        };
        let deployments = async {
            match &refs.deployments {
                None => Ok(None),
                Some(r) => match &self.code_host {
                    None => Err(missing_source("deployments", "code_host")),
                    Some(s) => s.deployed_images(r).await.map(Some),
                },
            }
        };
        let risk = async {
            if !refs.risk {
                return Ok(None);
            }
            match &self.risk {
                None => Err(missing_source("risk", "risk")),
                Some(s) => s.risk(&req.proposal, &agent.name).await.map(Some),
            }
        };
        let (pr, deployed_images, risk) = tokio::join!(pr, deployments, risk);
        let (open_windows, closed_windows) = self
            .windows
            .iter()
            .partition::<Vec<_>, _>(|w| w.open_at(now));
        Ok(Facts {
            pr: pr?,
            deployed_images: deployed_images?,
            risk: risk?,
            approvers,
            open_windows: open_windows.iter().map(|w| w.name.clone()).collect(),
            closed_windows: closed_windows
                .iter()
                .map(|w| format!("{} (closed at {})", w.name, w.local_time(now)))
                .collect(),
        })
    }
}

/// The refusal when no policy permits: what the policies written for this action needed, and
/// what the evidence showed.
fn not_permitted(
    p: &Proposal,
    req: &CertificateRequest,
    f: &Facts,
    candidates: &[Grant],
    errors: &[String],
) -> Refusal {
    let mut parts = Vec::new();
    if candidates.is_empty() {
        parts.push(format!("no policy permits action {:?}", p.action));
    } else {
        let ids: Vec<&str> = candidates.iter().map(|g| g.policy.as_str()).collect();
        parts.push(format!(
            "no policy permits this {} (policies for it: {})",
            p.action,
            ids.join(", ")
        ));
    }
    for g in candidates {
        let missing: Vec<&str> = g
            .needs
            .iter()
            .map(String::as_str)
            .filter(|k| match *k {
                "pull_request" => req.evidence.pull_request.is_none(),
                "deployments" => req.evidence.deployments.is_none(),
                "risk" => !req.evidence.risk,
                "approvals" => f.approvers.is_empty(),
                _ => false,
            })
            .collect();
        if !missing.is_empty() {
            parts.push(format!(
                "policy {} needs evidence not given: {}",
                g.policy,
                missing.join(", ")
            ));
        }
    }
    if let Some(pr) = &f.pr {
        if pr.green {
            parts.push(format!("CI of {}#{} is green", pr.repo, pr.number));
        } else if pr.failing.is_empty() {
            parts.push(format!("CI of {}#{} has no check runs", pr.repo, pr.number));
        } else {
            parts.push(format!(
                "CI of {}#{} is not green: {}",
                pr.repo,
                pr.number,
                pr.failing.join(", ")
            ));
        }
    }
    if let Some(r) = f.risk {
        parts.push(format!("risk score {r}"));
    }
    let needs = |kind: &str| candidates.iter().any(|g| g.needs.iter().any(|n| n == kind));
    if needs("window") {
        if !f.closed_windows.is_empty() {
            parts.push(format!("deploy windows {}", f.closed_windows.join(", ")));
        }
        if !f.open_windows.is_empty() {
            parts.push(format!("open windows: {}", f.open_windows.join(", ")));
        }
    }
    if needs("approvals") || !f.approvers.is_empty() {
        let names = if f.approvers.is_empty() {
            "none".to_string()
        } else {
            f.approvers.join(", ")
        };
        parts.push(format!("approvers: {names}"));
    }
    if !candidates.is_empty() && candidates.iter().all(|g| g.needs.is_empty()) {
        parts.push(
            "the policies' conditions on the request and its body do not hold for this proposal"
                .into(),
        );
    }
    if let Some(d) = &f.deployed_images {
        parts.push(format!("{} image(s) deployed before", d.len()));
    }
    for e in errors {
        parts.push(format!("policy error: {e}"));
    }
    let mut r = Refusal::new("not_permitted", parts.join("; "));
    r.policy = candidates.first().map(|g| g.policy.clone());
    r.retry = candidates
        .iter()
        .any(|g| g.needs.iter().any(|n| n == "approvals"));
    r
}

fn context(f: &Facts, now: i64, ttl: u64, uses: u32) -> Value {
    let ts = jiff::Timestamp::from_second(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let utc = ts.to_zoned(jiff::tz::TimeZone::UTC);
    let weekday = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        [utc.weekday().to_monday_zero_offset() as usize];
    let mut c = json!({
        "now": {"unix": now, "weekday": weekday, "hour": utc.hour(), "minute": utc.minute()},
        "open_windows": f.open_windows,
        "approvers": f.approvers,
        "approver_count": f.approvers.len(),
        "ttl_secs": ttl.min(i64::MAX as u64),
        "max_uses": uses,
    });
    if let Some(pr) = &f.pr {
        c["pr"] = json!({"repo": pr.repo, "number": pr.number, "head_sha": pr.head_sha,
                         "green": pr.green, "failing": pr.failing, "changed_paths": pr.changed_paths});
    }
    if let Some(r) = f.risk {
        c["risk"] = json!(r);
    }
    if let Some(d) = &f.deployed_images {
        c["deployed_images"] = json!(d);
    }
    c
}

/// The resource entity (with its pins) and the principal, as Cedar entities JSON.
fn resource_entities(
    p: &Proposal,
    agent: &str,
    digest: &str,
) -> Result<(&'static str, String, Value), String> {
    let (rtype, fields): (&str, &[(&str, bool)]) = match p.target {
        TargetKind::Http => (
            "HttpRoute",
            &[("upstream", true), ("method", true), ("path", true)],
        ),
        TargetKind::Aws => (
            "AwsCall",
            &[
                ("service", true),
                ("region", true),
                ("operation", true),
                ("resource", false),
            ],
        ),
        TargetKind::Kubernetes => (
            "KubeObject",
            &[
                ("verb", true),
                ("group", true),
                ("resource", true),
                ("subresource", false),
                ("namespace", false),
                ("name", false),
            ],
        ),
    };
    let mut attrs = Map::new();
    let mut id = Vec::new();
    for (name, required) in fields {
        match p.request.get(*name) {
            Some(Value::String(s)) => {
                attrs.insert((*name).into(), json!(s));
                id.push(s.clone());
            }
            None if !required => {}
            None => {
                return Err(format!(
                    "proposal.request.{name} is required for a {} target",
                    p.target.as_str()
                ))
            }
            Some(other) => {
                return Err(format!(
                    "proposal.request.{name} must be a string, not {other}"
                ))
            }
        }
    }
    let mut tags = Map::new();
    let mut pins = Map::new();
    let (kind, others_deny) = match &p.body {
        None => ("none", true),
        Some(BodyRule::Sha256(_)) => ("sha256", true),
        Some(BodyRule::Constraints(c)) => {
            for (ptr, rule) in &c.constraints {
                let Some(rule) = rule.as_object() else {
                    continue;
                };
                for (op, v) in rule {
                    match (op.as_str(), v) {
                        ("max" | "min" | "eq", Value::Number(n)) if n.as_i64().is_some() => {
                            tags.insert(format!("{op}:{ptr}"), v.clone());
                        }
                        ("eq", Value::String(s)) => {
                            pins.insert(ptr.clone(), json!(s));
                        }
                        _ => {}
                    }
                }
            }
            ("constraints", c.others == crate::cert::Others::Deny)
        }
    };
    attrs.insert("body_kind".into(), json!(kind));
    attrs.insert("others_deny".into(), json!(others_deny));
    attrs.insert(
        "pins".into(),
        json!({"__entity": {"type": "Pins", "id": digest}}),
    );
    let rid = id.join(" ");
    let entities = json!([
        {"uid": {"type": "Agent", "id": agent}, "attrs": {"name": agent}, "parents": []},
        {"uid": {"type": "Pins", "id": digest}, "attrs": {}, "parents": [], "tags": pins},
        {"uid": {"type": rtype, "id": rid}, "attrs": attrs, "parents": [], "tags": tags},
    ]);
    Ok((rtype, rid, entities))
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    // A certificate id that could repeat would let one certificate's uses count against
    // another's; without randomness the signer does not issue.
    if getrandom::getrandom(&mut b).is_err() {
        return String::new();
    }
    hex::encode(b)
}
