//! The signer (`seb signer serve`): the second trust boundary. An agent proposes a change and
//! names its evidence; the signer fetches and checks the evidence itself, asks its Cedar
//! policies, and either signs a short-lived certificate scoped to exactly that change or
//! refuses, naming the policy or the evidence. Every issuance and refusal is a record in the
//! signer's own signed, hash-chained log (audit v1; `seb audit verify` reads it).
//!
//! It depends on `cert` (the format it signs), `audit` (its log), `admission::revocation`
//! (the revocation document format it publishes), `json`, `tls` and `upstream` (its HTTPS
//! server and the client it fetches evidence with); nothing depends on it but the binary.

pub mod agent;
pub mod cli;
pub mod config;
pub mod evidence;
mod issue;
pub mod policy;
pub mod proposal;
mod server;
pub mod state;

pub use issue::{AgentIdentity, Issued, Refusal};
pub use server::{serve, Running};

use crate::admission::revocation::{self, RevocationClaims, RevocationPayload};
use crate::audit::Audit;
use config::{KeyStatus, SignerConfig};
use ed25519_dalek::{SigningKey, VerifyingKey};
use evidence::{Approvers, Source, Window};
use policy::Policies;
use serde_json::{json, Value};
use state::{Revoke, SignerState, StateFile};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// The signer's keys: the one that signs, and every one published in the JWKS.
pub struct Keys {
    pub active: SigningKey,
    pub active_kid: String,
    /// `(kid, key, status)` for the JWKS: next, active and retired keys alike.
    pub published: Vec<(String, VerifyingKey, KeyStatus)>,
}

impl Keys {
    pub fn load(cfg: &SignerConfig) -> anyhow::Result<Keys> {
        let mut active = None;
        let mut published = Vec::new();
        for k in &cfg.keys {
            let key = crate::cert::keys::load_signing_key(&k.private_key)
                .map_err(|e| anyhow::anyhow!("keys: {}: {e}", k.private_key.display()))?;
            let kid = crate::cert::keys::key_id(&key.verifying_key());
            published.push((kid.clone(), key.verifying_key(), k.status));
            if k.status == KeyStatus::Active {
                active = Some((key, kid));
            }
        }
        let (active, active_kid) = active.ok_or_else(|| anyhow::anyhow!("keys: no active key"))?;
        Ok(Keys {
            active,
            active_kid,
            published,
        })
    }

    /// RFC 7517 JWK Set; each key an RFC 8037 OKP key whose `kid` is its RFC 7638 thumbprint.
    pub fn jwks(&self) -> Value {
        use base64::Engine;
        let keys: Vec<Value> = self
            .published
            .iter()
            .map(|(kid, key, _)| {
                json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
                       "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.as_bytes())})
            })
            .collect();
        json!({ "keys": keys })
    }
}

/// A running signer's state, shared by its listeners.
pub struct Signer {
    pub issuer: String,
    pub keys: Keys,
    policies: RwLock<Arc<Policies>>,
    policy_dir: std::path::PathBuf,
    state: Mutex<(StateFile, SignerState)>,
    code_host: Option<Source>,
    risk: Option<Source>,
    approvers: Approvers,
    windows: Vec<Window>,
    limits: config::CertificateLimits,
    audit: Audit,
    /// The current signed revocation document, re-signed on every change and heartbeat.
    revocation_doc: RwLock<String>,
    /// Approvals posted to `/v1/approvals`, by proposal digest, for agents waiting on them.
    posted_approvals: Mutex<HashMap<String, Vec<String>>>,
}

impl Signer {
    pub fn new(cfg: &SignerConfig) -> anyhow::Result<Signer> {
        let keys = Keys::load(cfg)?;
        let policies = Policies::load(&cfg.policies)?;
        let (file, mut state) = StateFile::open(&cfg.state_dir)?;
        if state.observe_policies(&policies.fingerprint) {
            file.save(&state)?;
            tracing::info!(
                policy_epoch = state.policy_epoch,
                "policy set changed: new policy epoch"
            );
        }
        let audit_key = crate::cert::keys::load_signing_key(&cfg.audit.signing_key)
            .map_err(|e| anyhow::anyhow!("audit.signing_key: {e}"))?;
        let audit = Audit::start(
            crate::audit::AuditSettings {
                path: Some(cfg.audit.path.clone()),
                durability: crate::audit::Durability::Fsync,
                rotate_bytes: None,
                stdout: false,
                broker_id: cfg.issuer.clone(),
                shadow_targets: Vec::new(),
            },
            audit_key,
        )?;
        let signer = Signer {
            issuer: cfg.issuer.clone(),
            keys,
            policies: RwLock::new(Arc::new(policies)),
            policy_dir: cfg.policies.clone(),
            state: Mutex::new((file, state)),
            code_host: cfg
                .evidence
                .code_host
                .as_ref()
                .map(|s| Source::new("code_host", s))
                .transpose()?,
            risk: cfg
                .evidence
                .risk
                .as_ref()
                .map(|s| Source::new("risk", s))
                .transpose()?,
            approvers: Approvers::load(&cfg.approvers)?,
            windows: cfg
                .windows
                .iter()
                .enumerate()
                .map(|(i, w)| Window::parse(w).map_err(|e| anyhow::anyhow!("windows[{i}]: {e}")))
                .collect::<anyhow::Result<_>>()?,
            limits: config::CertificateLimits {
                default_ttl: cfg.certificates.default_ttl,
                max_ttl: cfg.certificates.max_ttl,
            },
            audit,
            revocation_doc: RwLock::new(String::new()),
            posted_approvals: Mutex::new(HashMap::new()),
        };
        signer.resign_revocation();
        Ok(signer)
    }

    fn policies(&self) -> Arc<Policies> {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `(policy_epoch, revocation_epoch)`.
    pub fn epochs(&self) -> (u64, u64) {
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (g.1.policy_epoch, g.1.revocation_epoch)
    }

    /// Re-reads the policy folder. A folder that does not load changes nothing; one that
    /// loads and differs raises the policy epoch (and publishes it as the brokers' new floor).
    pub fn reload_policies(&self) -> anyhow::Result<bool> {
        let new = Policies::load(&self.policy_dir)?;
        let changed = {
            let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let mut next = g.1.clone();
            let changed = next.observe_policies(&new.fingerprint);
            if changed {
                g.0.save(&next)?;
                g.1 = next;
            }
            changed
        };
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        if changed {
            self.resign_revocation();
        }
        Ok(changed)
    }

    /// Adds a revocation: saved, then a new document signed. Returns the epoch.
    pub fn revoke(&self, what: Revoke, reason: &str) -> anyhow::Result<(u64, bool)> {
        let (epoch, changed) = {
            let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let mut next = g.1.clone();
            let changed = next.revoke(what, reason, crate::cert::now_secs());
            if changed {
                g.0.save(&next)?;
                g.1 = next;
            }
            (g.1.revocation_epoch, changed)
        };
        if changed {
            self.resign_revocation();
        }
        Ok((epoch, changed))
    }

    /// Signs the revocation document anew with a fresh `iat` (the heartbeat).
    pub fn resign_revocation(&self) -> String {
        let state = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone();
        let doc = revocation::sign(
            &self.keys.active,
            &self.keys.active_kid,
            &RevocationPayload {
                iss: self.issuer.clone(),
                iat: crate::cert::now_secs(),
                seb: RevocationClaims {
                    v: 1,
                    revocation_epoch: state.revocation_epoch,
                    min_policy_epoch: state.policy_epoch,
                    revoked: state.revoked,
                },
            },
        );
        *self
            .revocation_doc
            .write()
            .unwrap_or_else(|p| p.into_inner()) = doc.clone();
        doc
    }

    pub fn revocation_document(&self) -> String {
        self.revocation_doc
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keeps an approval for agents that wait for it. Only statements that verify for the
    /// digest they name are kept, so the store cannot be filled with junk for real proposals.
    pub fn post_approval(&self, statement: &str) -> Result<String, String> {
        let c = crate::cert::jws::parse(statement.trim(), evidence::APPROVAL_TYP)?;
        let p: evidence::ApprovalPayload = crate::json::from_checked(&c.payload)?;
        self.approvers
            .verify(
                &[statement.to_string()],
                &p.proposal,
                crate::cert::now_secs(),
            )
            .map_err(|e| e.to_string())?;
        let mut g = self
            .posted_approvals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let list = g.entry(p.proposal.clone()).or_default();
        if !list.iter().any(|s| s == statement.trim()) && list.len() < 16 {
            list.push(statement.trim().to_string());
        }
        Ok(p.proposal)
    }

    fn posted_for(&self, digest: &str) -> Vec<String> {
        self.posted_approvals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
            .unwrap_or_default()
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
    }
}
