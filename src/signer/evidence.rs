//! Evidence the signer fetches and checks itself: CI status and changed files of a pull
//! request and the images deployed to an environment (a GitHub-style code host API), a risk
//! score (a scoring endpoint), approvals (Ed25519-signed statements by configured approver
//! keys naming the proposal's digest) and deploy windows (local time in a named timezone).
//! A source that is down, slow or answers anything but the expected shape is a failure that
//! names the source: the proposal is refused, never judged on partial evidence.

use super::config::{Approver, DeployWindow, HttpSource};
use super::proposal::{DeploymentsRef, Proposal, PullRequestRef};
use crate::upstream::UpstreamClient;
use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use http_body_util::{BodyExt, Full, Limited};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// Evidence kinds a policy's `@evidence` annotation may name.
pub const KINDS: &[&str] = &["pull_request", "deployments", "risk", "approvals", "window"];

pub const APPROVAL_TYP: &str = "seb-approval+jws";
const MAX_ANSWER: usize = 1024 * 1024;

/// Why evidence could not be used. Both refuse the proposal.
#[derive(Debug, Clone, PartialEq)]
pub enum EvidenceError {
    /// The source is down, slow, or answered garbage.
    Unavailable { source: String, message: String },
    /// The evidence itself is bad (a forged or stale approval).
    Invalid { what: String, message: String },
}

impl std::fmt::Display for EvidenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            EvidenceError::Unavailable { source, message } => {
                write!(f, "evidence source {source} failed: {message}")
            }
            EvidenceError::Invalid { what, message } => write!(f, "{what}: {message}"),
        }
    }
}

/// A pull request as the code host reports it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PullRequestFacts {
    pub repo: String,
    pub number: u64,
    pub head_sha: String,
    /// Every check run completed with success, neutral or skipped; no check runs is not green.
    pub green: bool,
    /// `name: conclusion` of every check that is not.
    pub failing: Vec<String>,
    pub checks: Vec<String>,
    pub changed_paths: Vec<String>,
}

/// An HTTP evidence source: its URL, credential and deadline.
pub struct Source {
    pub name: &'static str,
    base: String,
    token: Option<String>,
    timeout: Duration,
    client: UpstreamClient,
}

impl Source {
    pub fn new(name: &'static str, cfg: &HttpSource) -> anyhow::Result<Source> {
        Ok(Source {
            name,
            base: cfg.url.trim_end_matches('/').to_string(),
            token: cfg.token.as_ref().map(|t| t.load()).transpose()?,
            timeout: cfg.timeout,
            client: UpstreamClient::new(cfg.ca.as_deref())?,
        })
    }

    fn unavailable(&self, what: &str, message: impl std::fmt::Display) -> EvidenceError {
        EvidenceError::Unavailable {
            source: format!("{} ({what})", self.name),
            message: message.to_string(),
        }
    }

    /// One call; the whole exchange, body included, within the source's deadline.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, EvidenceError> {
        let url = format!("{}{path}", self.base);
        let what = format!("{method} {url}");
        let mut req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "seb-signer");
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let bytes = match &body {
            Some(b) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| self.unavailable(&what, e))?;
        let exchange = async {
            let resp = self.client.send(req).await.map_err(|e| e.0)?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("status {status}"));
            }
            crate::json::parse_strict(&body).map_err(|e| format!("answer is not JSON: {e}"))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(m)) => Err(self.unavailable(&what, m)),
            Err(_) => Err(self.unavailable(&what, format!("no answer within {:?}", self.timeout))),
        }
    }

    fn shape<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        v: Value,
    ) -> Result<T, EvidenceError> {
        serde_json::from_value(v)
            .map_err(|e| self.unavailable(what, format!("answer is not the expected shape: {e}")))
    }

    pub async fn pull_request(
        &self,
        r: &PullRequestRef,
    ) -> Result<PullRequestFacts, EvidenceError> {
        #[derive(Deserialize)]
        struct Head {
            sha: String,
        }
        #[derive(Deserialize)]
        struct Pull {
            number: u64,
            head: Head,
        }
        #[derive(Deserialize)]
        struct File {
            filename: String,
        }
        #[derive(Deserialize)]
        struct Run {
            name: String,
            status: String,
            conclusion: Option<String>,
        }
        #[derive(Deserialize)]
        struct Runs {
            check_runs: Vec<Run>,
        }
        let base = format!("/repos/{}/pulls/{}", r.repo, r.number);
        let pull: Pull = self.shape(&base, self.call("GET", &base, None).await?)?;
        if pull.number != r.number {
            return Err(
                self.unavailable(&base, format!("answered for pull {} instead", pull.number))
            );
        }
        if pull.head.sha.len() < 7 || !pull.head.sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(self.unavailable(&base, "head.sha is not a commit id"));
        }
        let mut changed = Vec::new();
        // GitHub pages files 100 at a time and lists at most 3000.
        for page in 1..=30 {
            let path = format!("{base}/files?per_page=100&page={page}");
            let files: Vec<File> = self.shape(&path, self.call("GET", &path, None).await?)?;
            let n = files.len();
            changed.extend(files.into_iter().map(|f| f.filename));
            if n < 100 {
                break;
            }
            if page == 30 {
                return Err(self.unavailable(&path, "more than 3000 changed files"));
            }
        }
        let path = format!("/repos/{}/commits/{}/check-runs", r.repo, pull.head.sha);
        let runs: Runs = self.shape(&path, self.call("GET", &path, None).await?)?;
        let mut failing = Vec::new();
        let mut checks = Vec::new();
        for run in &runs.check_runs {
            let state = match (run.status.as_str(), run.conclusion.as_deref()) {
                ("completed", Some(c @ ("success" | "neutral" | "skipped"))) => {
                    checks.push(format!("{}: {c}", run.name));
                    continue;
                }
                ("completed", Some(c)) => c.to_string(),
                (s, _) => s.to_string(),
            };
            failing.push(format!("{}: {state}", run.name));
            checks.push(format!("{}: {state}", run.name));
        }
        Ok(PullRequestFacts {
            repo: r.repo.clone(),
            number: r.number,
            head_sha: pull.head.sha,
            green: failing.is_empty() && !runs.check_runs.is_empty(),
            failing,
            checks,
            changed_paths: changed,
        })
    }

    /// Images of the environment's past deployments (`payload.image`).
    pub async fn deployed_images(&self, r: &DeploymentsRef) -> Result<Vec<String>, EvidenceError> {
        #[derive(Deserialize)]
        struct Payload {
            image: String,
        }
        #[derive(Deserialize)]
        struct Deployment {
            environment: String,
            payload: Payload,
        }
        let path = format!(
            "/repos/{}/deployments?environment={}&per_page=100",
            r.repo, r.environment
        );
        let list: Vec<Deployment> = self.shape(&path, self.call("GET", &path, None).await?)?;
        if let Some(d) = list.iter().find(|d| d.environment != r.environment) {
            return Err(self.unavailable(
                &path,
                format!(
                    "listed a deployment to {:?}, not {:?}",
                    d.environment, r.environment
                ),
            ));
        }
        Ok(list.into_iter().map(|d| d.payload.image).collect())
    }

    /// The score, 0 to 100.
    pub async fn risk(&self, proposal: &Proposal, agent: &str) -> Result<i64, EvidenceError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Score {
            score: i64,
        }
        let body =
            serde_json::json!({"agent": agent, "digest": proposal.digest(), "proposal": proposal});
        let s: Score = self.shape("POST", self.call("POST", "", Some(body)).await?)?;
        if !(0..=100).contains(&s.score) {
            return Err(self.unavailable("POST", format!("score {} is not 0 to 100", s.score)));
        }
        Ok(s.score)
    }
}

/// Approver keys by their RFC 7638 thumbprint.
pub struct Approvers(Vec<(String, String, VerifyingKey)>);

#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPayload {
    pub approver: String,
    /// The proposal's digest ([`Proposal::digest`]).
    pub proposal: String,
    pub iat: i64,
    pub exp: i64,
}

impl Approvers {
    pub fn load(cfg: &[Approver]) -> anyhow::Result<Approvers> {
        let mut v = Vec::new();
        for a in cfg {
            let key = crate::cert::keys::load_verifying_key(&a.public_key)
                .map_err(|e| anyhow::anyhow!("approver {}: {e}", a.name))?;
            v.push((crate::cert::keys::key_id(&key), a.name.clone(), key));
        }
        Ok(Approvers(v))
    }

    /// The distinct approvers whose statements verify for this digest at `now`. Any statement
    /// that does not verify refuses the whole proposal: a forged approval is an attack, not
    /// noise to skip.
    pub fn verify(
        &self,
        statements: &[String],
        digest: &str,
        now: i64,
    ) -> Result<Vec<String>, EvidenceError> {
        let mut names = Vec::new();
        for (i, s) in statements.iter().enumerate() {
            let bad = |m: String| EvidenceError::Invalid {
                what: format!("approval {}", i + 1),
                message: m,
            };
            let c = crate::cert::jws::parse(s.trim(), APPROVAL_TYP).map_err(bad)?;
            let Some((_, name, key)) = self.0.iter().find(|(kid, _, _)| *kid == c.kid) else {
                return Err(bad(format!(
                    "signed by key {}, which is no configured approver's",
                    c.kid
                )));
            };
            if !c.verify(s.trim(), key) {
                return Err(bad(format!("signature does not verify under {name}'s key")));
            }
            let p: ApprovalPayload = crate::json::from_checked(&c.payload).map_err(bad)?;
            if &p.approver != name {
                return Err(bad(format!(
                    "names approver {:?} but is signed by {name}'s key",
                    p.approver
                )));
            }
            if p.proposal != digest {
                return Err(bad(format!(
                    "approves proposal {}, not this one ({digest})",
                    p.proposal
                )));
            }
            if p.iat > now + 30 || p.exp <= now {
                return Err(bad(format!(
                    "{name}'s approval is not valid now (iat {}, exp {})",
                    p.iat, p.exp
                )));
            }
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names.sort();
        Ok(names)
    }
}

pub fn sign_approval(key: &ed25519_dalek::SigningKey, p: &ApprovalPayload) -> String {
    let kid = crate::cert::keys::key_id(&key.verifying_key());
    crate::cert::jws::sign(
        key,
        APPROVAL_TYP,
        &kid,
        &serde_json::to_value(p).unwrap_or(Value::Null),
    )
}

/// A deploy window, read from its config.
pub struct Window {
    pub name: String,
    tz: jiff::tz::TimeZone,
    days: Vec<jiff::civil::Weekday>,
    from: (i8, i8),
    to: (i8, i8),
}

impl Window {
    pub fn parse(w: &DeployWindow) -> Result<Window, String> {
        let tz = jiff::tz::TimeZone::get(&w.timezone)
            .map_err(|e| format!("timezone {:?}: {e}", w.timezone))?;
        let mut days = Vec::new();
        for d in &w.days {
            use jiff::civil::Weekday::*;
            days.push(match d.as_str() {
                "mon" => Monday,
                "tue" => Tuesday,
                "wed" => Wednesday,
                "thu" => Thursday,
                "fri" => Friday,
                "sat" => Saturday,
                "sun" => Sunday,
                other => return Err(format!("day {other:?}: one of mon tue wed thu fri sat sun")),
            });
        }
        let hm = |s: &str| -> Result<(i8, i8), String> {
            let (h, m) = s.split_once(':').ok_or(format!("{s:?} is not HH:MM"))?;
            let (h, m): (i8, i8) = (
                h.parse().map_err(|_| format!("{s:?} is not HH:MM"))?,
                m.parse().map_err(|_| format!("{s:?} is not HH:MM"))?,
            );
            if s.len() == 5 && (0..24).contains(&h) && (0..60).contains(&m) {
                Ok((h, m))
            } else {
                Err(format!("{s:?} is not HH:MM"))
            }
        };
        let (from, to) = (hm(&w.from)?, hm(&w.to)?);
        if from >= to {
            return Err(format!(
                "from {} is not before to {} (windows do not cross midnight; write two)",
                w.from, w.to
            ));
        }
        if w.name.is_empty() || days.is_empty() {
            return Err("a window needs a name and at least one day".into());
        }
        Ok(Window {
            name: w.name.clone(),
            tz,
            days,
            from,
            to,
        })
    }

    /// Open at `now` (seconds since the epoch), in the window's own timezone (daylight saving
    /// included: 09:00 is 09:00 local all year).
    pub fn open_at(&self, now: i64) -> bool {
        let Ok(ts) = jiff::Timestamp::from_second(now) else {
            return false;
        };
        let local = ts.to_zoned(self.tz.clone());
        let t = (local.hour(), local.minute());
        self.days.contains(&local.weekday()) && t >= self.from && t < self.to
    }

    /// For refusals: the local time the window was judged at.
    pub fn local_time(&self, now: i64) -> String {
        jiff::Timestamp::from_second(now)
            .map(|ts| {
                ts.to_zoned(self.tz.clone())
                    .strftime("%a %H:%M %Z")
                    .to_string()
            })
            .unwrap_or_default()
    }
}
