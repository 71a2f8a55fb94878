//! `seb check`: the verdict the broker would give a described request, without a broker.
//!
//! It builds the target and the admission state from the broker's own config and runs the
//! pipeline's own checks (`pipeline::admit`): request head, parse, certificate, contract, and
//! the use count. What needs the upstream (the live-state check, the execution identity) is
//! not run, and the answer says so. With `shadow`, the verdict is appended as a signed
//! `would_allow`/`would_deny` record to a shadow log, whose spent uses the next check counts
//! (a certificate checked twice in one shadow log is `replayed`, as at the broker).

pub mod cli;
pub mod request;

use super::pipeline::admit;
use super::pipeline::record::Draft;
use crate::admission::revocation::RevocationState;
use crate::admission::Admission;
use crate::audit::{Audit, AuditSettings, Durability, Kind, Verdict};
use crate::cert::{keys, TrustedIssuers, WindowPolicy};
use crate::config::{Config, TargetKindConfig};
use crate::denial::{Denial, Reason};
use crate::state::memory::MemoryUseStore;
use crate::targets::Target;
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use request::{Body, Described};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub struct CheckRequest {
    pub config: PathBuf,
    pub request: PathBuf,
    /// The certificate, when the described request does not carry one itself.
    pub cert: Option<String>,
    /// Where `--shadow` appends its record; None: not recorded.
    pub shadow_log: Option<PathBuf>,
}

/// What a check found.
pub struct CheckAnswer {
    pub target: String,
    /// `allow`, `deny` or `read` (passes without a certificate, as reads do).
    pub verdict: &'static str,
    pub denial: Option<Denial>,
    /// Checks the broker runs that a check cannot (they read the upstream).
    pub not_checked: Vec<&'static str>,
    /// The shadow record written: log and seq.
    pub recorded: Option<(PathBuf, u64)>,
}

impl CheckAnswer {
    pub fn to_json(&self) -> Value {
        json!({
            "target": self.target,
            "verdict": self.verdict,
            "code": self.denial.as_ref().map(|d| d.reason.as_str()),
            "message": self.denial.as_ref().map(|d| d.message.as_str()),
            "not_checked": self.not_checked,
            "shadow_log": self.recorded.as_ref().map(|(p, _)| p.display().to_string()),
            "seq": self.recorded.as_ref().map(|(_, s)| *s),
        })
    }
}

/// The shadow log `seb check --shadow` writes when none is named: `shadow.jsonl` beside the
/// broker's audit log.
pub fn default_shadow_log(config: &Config) -> Option<PathBuf> {
    config
        .audit
        .path
        .as_deref()
        .map(|p| crate::audit::log_dir(p).join("shadow.jsonl"))
}

/// Errors are usage errors (a config or request file that does not load); a refusal is an
/// answer.
pub fn check(req: &CheckRequest) -> anyhow::Result<CheckAnswer> {
    let mut config = Config::load(&req.config)?;
    for t in &mut config.targets {
        for s in t.kind.secret_sources() {
            s.set_offline();
        }
    }
    let text = std::fs::read(&req.request)
        .with_context(|| format!("reading {}", req.request.display()))?;
    let dir = req.request.parent().unwrap_or(Path::new("."));
    let described = request::parse(&text, dir)
        .with_context(|| format!("request file {}", req.request.display()))?;
    let tc = match &described.target {
        Some(name) => config
            .targets
            .iter()
            .find(|t| &t.name == name)
            .ok_or_else(|| anyhow!("the config has no target named {name:?}"))?,
        None if config.targets.len() == 1 => &config.targets[0],
        None => bail!("the config has several targets: name one in the request file (\"target\")"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let state = rt.block_on(admission_state(&config, req.shadow_log.as_deref()))?;
    let built = || config.at("targets");
    rt.block_on(async {
        match &tc.kind {
            TargetKindConfig::Http(h) => {
                let t = crate::targets::http::HttpTarget::new(&tc.name, h).with_context(built)?;
                judge(&t, &state, described, req, &config).await
            }
            TargetKindConfig::Aws(a) => {
                let t = crate::targets::aws::AwsTarget::new(&tc.name, a).with_context(built)?;
                judge(&t, &state, described, req, &config).await
            }
            TargetKindConfig::Kubernetes(k) => {
                let t =
                    crate::targets::kubernetes::KubeTarget::new(&tc.name, k).with_context(built)?;
                judge(&t, &state, described, req, &config).await
            }
        }
    })
}

/// Admission as the broker builds it at start: the trusted issuers, the revocation data from
/// its source (a file needs no network), and the uses already spent in the shadow log.
async fn admission_state(config: &Config, shadow_log: Option<&Path>) -> anyhow::Result<Admission> {
    let loaded = super::config_reload::load_issuers(config)?;
    let kids_by_name: Vec<(String, String)> = loaded
        .iter()
        .filter_map(|i| i.name.clone().map(|n| (n, i.kid.clone())))
        .collect();
    let issuers = TrustedIssuers::new(loaded);
    let skew = config.certificates.clock_skew.as_secs() as i64;
    let window = WindowPolicy {
        skew_secs: skew,
        max_ttl_secs: config.certificates.max_ttl.as_secs() as i64,
    };
    let revocation = Arc::new(RevocationState::new(issuers.clone()));
    let source = super::config_reload::revocation_source(config)?;
    // Data that does not load is what a broker without data has: its certificates are refused
    // as revocation_data_stale, which the verdict then says.
    match crate::admission::reload::fetch(&source, &crate::upstream::UpstreamClient::new(None)?)
        .await
    {
        Ok(text) => {
            if let Err(e) = revocation.apply(&text, crate::cert::now_secs(), skew) {
                eprintln!("seb check: the revocation data was refused: {e}");
            }
        }
        Err(e) => eprintln!("seb check: no revocation data: {e:#}"),
    }
    let uses = MemoryUseStore::new(
        config.limits.max_live_certificates,
        Duration::from_secs(skew as u64),
    );
    let key = keys::load_signing_key(&config.audit.signing_key)
        .with_context(|| config.at("audit.signing_key"))?;
    let uses_unknown_before = match shadow_log.filter(|p| p.exists()) {
        Some(log) => {
            super::restore::rebuild_use_counts(
                Some(log),
                window,
                &kids_by_name,
                &uses,
                &key.verifying_key(),
            )?
            .0
        }
        None => None,
    };
    Ok(Admission {
        issuers,
        window,
        min_policy_epoch: config.certificates.min_policy_epoch,
        max_staleness_secs: config.revocation.max_staleness.as_secs() as i64,
        revocation,
        uses: Arc::new(uses),
        uses_unknown_before,
    })
}

async fn judge<T: Target>(
    target: &T,
    admission: &Admission,
    described: Described,
    req: &CheckRequest,
    config: &Config,
) -> anyhow::Result<CheckAnswer> {
    let parts = described.parts;
    let mut record = Draft::offline(target, &parts.method, parts.uri.path_and_query());
    let carried = target.certificate(&parts).ok().flatten();
    if carried.is_some() && req.cert.is_some() {
        bail!("the request file carries a certificate already: give --cert or that, not both");
    }
    let streamed = target.streams_upload(&parts);
    let (body, given_sha) = match described.body {
        Body::Sha256(h) if streamed => (Bytes::new(), h),
        Body::Sha256(_) => bail!(
            "target {} reads this request's body: describe it with body_file or body, not body_sha256",
            target.name()
        ),
        // A streamed body is not read by the broker either: it is held to its hash in flight.
        Body::Bytes(b) if streamed => (Bytes::new(), hex::encode(Sha256::digest(&b))),
        Body::Bytes(b) => {
            let h = hex::encode(Sha256::digest(&b));
            (b, h)
        }
    };
    let mut not_checked = vec![
        "live state (seb.precondition; for kubernetes, the change's effect on the live object): it reads the upstream",
    ];
    let verdict = judge_request(
        target,
        admission,
        &parts,
        (body, given_sha, streamed),
        req.cert.clone(),
        &mut record,
    )
    .await;
    let (verdict, denial) = match verdict {
        Ok(Judgement::Read) => {
            not_checked.push("reader authentication (mTLS, agent token): no connection here");
            ("read", None)
        }
        Ok(Judgement::Allow) => ("allow", None),
        Err(d) => ("deny", Some(d)),
    };
    let recorded = match (&req.shadow_log, verdict) {
        (Some(log), "allow" | "deny") => {
            let shadow = if denial.is_some() {
                Verdict::WouldDeny
            } else {
                Verdict::WouldAllow
            };
            let entry = record.entry(Kind::Decision, shadow, denial.as_ref());
            Some((
                log.clone(),
                record_shadow(config, log, target.name(), entry).await?,
            ))
        }
        _ => None,
    };
    Ok(CheckAnswer {
        target: target.name().to_string(),
        verdict,
        denial,
        not_checked,
        recorded,
    })
}

enum Judgement {
    Allow,
    Read,
}

/// The pipeline's checks, in the pipeline's order, on a described request.
async fn judge_request<T: Target>(
    target: &T,
    admission: &Admission,
    parts: &http::request::Parts,
    (body, sha256, streamed): (Bytes, String, bool),
    cert_arg: Option<String>,
    record: &mut Draft,
) -> Result<Judgement, Denial> {
    admit::check_head(target, parts)?;
    if !streamed {
        record.unfrozen().body_sha256 = Some(sha256.clone());
    }
    let (parsed, token) = admit::parse(target, parts, &body, record)?;
    let token = token.or(cert_arg);
    if parsed.is_read && token.is_none() {
        return Ok(Judgement::Read);
    }
    let token = token.ok_or_else(|| admit::missing(target))?;
    // No connection, so no client certificate: a certificate bound to one (cnf) is judged as
    // the broker judges it arriving without mTLS.
    let cert = admit::certificate(admission, &token, None, crate::cert::now_secs(), record)?;
    if parsed.is_read && target.certificate_authenticates_reads() {
        crate::targets::check_certificate_target(target, &cert)?;
        return Ok(Judgement::Read);
    }
    let body_hash = hex::encode(Sha256::digest(&body));
    admit::contract(
        target,
        &cert,
        parts,
        &parsed,
        (&body, if streamed { &body_hash } else { &sha256 }),
        streamed,
        record,
    )?;
    if streamed {
        // What the broker checks in flight, checked here against the described hash.
        if let Some(crate::cert::BodyRule::Sha256(r)) = &cert.claims.seb.body {
            if r.sha256 != sha256 {
                return Err(Denial::new(
                    Reason::ContractMismatch,
                    format!(
                        "the body's sha256 is {sha256}; the certificate allows {}",
                        r.sha256
                    ),
                ));
            }
        }
    }
    let (n, max) = admission
        .take_use(&cert)
        .await
        .map_err(|d| target.explain(&cert, d))?;
    record.took_use(n, max, &cert);
    Ok(Judgement::Allow)
}

/// Appends one signed record to the shadow log through the audit writer (its lock, chain and
/// durability), and waits until it is on disk.
async fn record_shadow(
    config: &Config,
    log: &Path,
    target: &str,
    entry: crate::audit::Entry,
) -> anyhow::Result<u64> {
    let key = keys::load_signing_key(&config.audit.signing_key)
        .with_context(|| config.at("audit.signing_key"))?;
    let audit = Audit::start(
        AuditSettings {
            path: Some(log.to_path_buf()),
            durability: Durability::Fsync,
            rotate_bytes: config.audit.rotate_bytes,
            stdout: false,
            broker_id: config.broker_id.clone(),
            shadow_targets: vec![target.to_string()],
        },
        key,
    )
    .with_context(|| format!("opening the shadow log {}", log.display()))?;
    let seq = audit
        .record(entry)
        .await
        .map_err(|e| anyhow!("the shadow record was not written: {e}"))?;
    // The writer thread finishes and releases the log's lock before this returns.
    tokio::task::spawn_blocking(move || drop(audit)).await?;
    Ok(seq)
}
