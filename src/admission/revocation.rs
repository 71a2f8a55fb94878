//! Revocation data: a signed document (same JWS form as certificates, typ
//! `seb-revocation+jws`) from a trusted issuer, carrying the revocation epoch, the minimum
//! policy epoch, and revoked certificate ids, subjects and issuer keys.
//!
//! Its `iat` is its freshness: the signer re-issues it regularly, and once the loaded one is
//! older than the configured maximum staleness every mutation is refused. An attacker who
//! blocks updates therefore stops mutations rather than keeping a revoked certificate alive.
//! Epochs never go backwards: an older document, even validly signed, is refused (rollback).
//!
//! Each issuer's document governs that issuer's certificates only: issuer B's newer epoch
//! never replaces issuer A's revocations. Accepted documents are persisted (atomically, in the
//! state directory) and loaded again before a restarted broker serves, so neither a pushed
//! revocation nor the rollback floor is lost with the process.

use crate::cert::{jws, TrustedIssuers};
use crate::state::SharedRevocations;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

pub const REVOCATION_TYP: &str = "seb-revocation+jws";

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RevocationPayload {
    pub iss: String,
    pub iat: i64,
    pub seb: RevocationClaims,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RevocationClaims {
    pub v: u32,
    pub revocation_epoch: u64,
    #[serde(default)]
    pub min_policy_epoch: u64,
    #[serde(default)]
    pub revoked: Revoked,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    #[serde(default)]
    pub jti: Vec<String>,
    #[serde(default)]
    pub sub: Vec<String>,
    #[serde(default)]
    pub kid: Vec<String>,
}

/// A verified document, indexed for lookups on the request path.
#[derive(Debug)]
pub struct RevocationData {
    pub iss: String,
    pub iat: i64,
    pub epoch: u64,
    pub min_policy_epoch: u64,
    jti: HashSet<String>,
    sub: HashSet<String>,
    kid: HashSet<String>,
}

impl RevocationData {
    /// Which revocation entry, if any, covers this certificate.
    pub fn revoked(&self, kid: &str, jti: &str, sub: &str) -> Option<String> {
        if self.kid.contains(kid) {
            Some(format!("issuer key {kid} is revoked"))
        } else if self.jti.contains(jti) {
            Some(format!("certificate {jti} is revoked"))
        } else if self.sub.contains(sub) {
            Some(format!("subject {sub} is revoked"))
        } else {
            None
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Updated { epoch: u64 },
    Unchanged { epoch: u64 },
}

pub struct RevocationState {
    issuers: TrustedIssuers,
    /// The loaded document of each issuer, by `iss`.
    current: RwLock<HashMap<String, Arc<RevocationData>>>,
    /// The newest `(epoch, iat)` ever accepted per issuer, with its document: the rollback
    /// floor, kept even when a persisted document no longer verifies (its key rotated out).
    floors: Mutex<BTreeMap<String, Persisted>>,
    /// Why the last document offered was refused, for the refusal an agent sees while no data
    /// is loaded (a clock behind the signer's and a rotated-out key read differently).
    last_refusal: Mutex<Option<String>>,
    /// Where accepted documents are kept across restarts; None keeps them in memory only.
    store: Option<PathBuf>,
    /// Replicas' shared store (etcd): documents accepted here are written there too.
    shared: OnceLock<Arc<dyn SharedRevocations>>,
    /// Told of every document applied with a newer epoch than what was held (not of the
    /// same epoch re-signed): the broker records it in its audit log, the second memory of
    /// revocations besides the state file.
    on_applied: OnceLock<OnApplied>,
}

/// See [`RevocationState::on_applied`]: the issuer and its newest document.
pub type OnApplied = Box<dyn Fn(&str, &Persisted) + Send + Sync>;

/// Why [`RevocationState::apply_shared`] did not succeed.
#[derive(Debug)]
pub enum ShareError {
    /// The document was refused (signature, rollback, ...): nothing changed.
    Refused(String),
    /// Applied here, but not written to the shared store: other replicas do not have it.
    NotShared(String),
}

/// One issuer's entry in the state file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Persisted {
    pub epoch: u64,
    pub iat: i64,
    pub document: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    v: u32,
    issuers: BTreeMap<String, Persisted>,
}

/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "seb-revocation.json";

impl RevocationState {
    pub fn new(issuers: TrustedIssuers) -> Self {
        RevocationState {
            issuers,
            current: RwLock::new(HashMap::new()),
            floors: Mutex::new(BTreeMap::new()),
            last_refusal: Mutex::new(None),
            store: None,
            shared: OnceLock::new(),
            on_applied: OnceLock::new(),
        }
    }

    /// Calls `f` with each document applied from now on that is newer than what was held
    /// (once, at start).
    pub fn on_applied(&self, f: OnApplied) {
        let _ = self.on_applied.set(f);
    }

    /// Installs again the documents the audit log says this broker applied and the state
    /// file no longer holds (rolled back to an older document, or deleted), oldest first,
    /// and persists them. A logged document that no longer verifies (its key rotated out) is
    /// skipped: it cannot be told from one that was never signed. Returns how many were
    /// installed.
    pub fn restore_logged(&self, logged: &[(String, Persisted)], now: i64, max_skew: i64) -> usize {
        let mut logged: Vec<&(String, Persisted)> = logged.iter().collect();
        logged.sort_by_key(|(iss, p)| (iss.clone(), p.epoch, p.iat));
        let mut restored = 0;
        for (iss, p) in logged {
            let held = self.floors().get(iss).map(|f| (f.epoch, f.iat));
            if held.is_some_and(|h| h >= (p.epoch, p.iat)) {
                continue;
            }
            // Accepted once already: an iat now "in the future" means this clock went back.
            match self.install(&p.document, now, max_skew.max(p.iat - now)) {
                Ok(Applied::Updated { .. }) => {
                    tracing::warn!(issuer = %iss, epoch = p.epoch, held = ?held, "the revocation state file had lost a document this broker applied (rolled back or deleted); installed again from the audit log");
                    restored += 1;
                }
                Ok(Applied::Unchanged { .. }) => {}
                Err(e) => {
                    tracing::error!(issuer = %iss, epoch = p.epoch, error = %e, "a revocation document in the audit log does not apply")
                }
            }
        }
        if restored > 0 {
            if let Err(e) = self.persist() {
                tracing::error!(error = %e, "revocation documents restored from the audit log could not be persisted; they hold in memory and are read from the log again at the next start");
            }
        }
        restored
    }

    /// Shares accepted documents with other replicas through `shared` (once, at start).
    pub fn share_through(&self, shared: Arc<dyn SharedRevocations>) {
        let _ = self.shared.set(shared);
    }

    /// [`RevocationState::apply`], then writes the issuer's newest document to the shared
    /// store when there is one. It is written even when unchanged here: the store may have
    /// missed it (down when it was first pushed), and it keeps the newest anyway.
    pub async fn apply_shared(
        &self,
        token: &str,
        now: i64,
        max_skew: i64,
    ) -> Result<Applied, ShareError> {
        let applied = self
            .apply(token, now, max_skew)
            .map_err(ShareError::Refused)?;
        let Some(shared) = self.shared.get() else {
            return Ok(applied);
        };
        // The document just verified; what is shared is this issuer's newest, which a
        // concurrent push may have made newer than `token`.
        let Ok(payload) = jws::parse(token.trim(), REVOCATION_TYP)
            .and_then(|c| crate::json::from_checked::<RevocationPayload>(&c.payload))
        else {
            return Ok(applied);
        };
        let newest = self.floors().get(&payload.iss).cloned();
        if let Some(p) = newest {
            shared
                .publish(&payload.iss, p.epoch, p.iat, &p.document)
                .await
                .map_err(|e| {
                    ShareError::NotShared(format!(
                        "applied on this replica, but not shared with the others ({e}); push it again"
                    ))
                })?;
        }
        Ok(applied)
    }

    /// Keeps accepted documents in `dir` and loads what an earlier run kept there. A state
    /// file that cannot be read is an error: starting without it could go back in epochs and
    /// forget pushed revocations.
    pub fn persisted_in(
        mut self,
        dir: &Path,
        now: i64,
        max_skew: i64,
    ) -> anyhow::Result<RevocationState> {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: StateFile = crate::json::from_checked(&bytes).map_err(|e| {
                    anyhow::anyhow!("{}: not a revocation state file: {e}", path.display())
                })?;
                if file.v != 1 {
                    anyhow::bail!("{}: version {} is not 1", path.display(), file.v);
                }
                for (iss, p) in &file.issuers {
                    self.floors().insert(iss.clone(), p.clone());
                    // Persisted documents were accepted once; one whose iat is now "in the
                    // future" means the clock went back, which must not drop it.
                    if let Err(e) = self.install(&p.document, now, max_skew.max(p.iat - now)) {
                        tracing::warn!(issuer = %iss, epoch = p.epoch, error = %e, "a persisted revocation document no longer applies; its epoch stays the floor, and that issuer's certificates wait for a new document");
                    }
                }
                tracing::info!(file = %path.display(), issuers = file.issuers.len(), "revocation state loaded");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("{}: {e}", path.display()),
        }
        self.store = Some(path);
        Ok(self)
    }

    /// The loaded data governing certificates of issuer `iss`.
    pub fn current(&self, iss: &str) -> Option<Arc<RevocationData>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(iss)
            .cloned()
    }

    /// Every issuer's loaded data, by `iss`.
    pub fn all(&self) -> Vec<(String, Arc<RevocationData>)> {
        let mut v: Vec<_> = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Why the most recent document offered was refused, if it was.
    pub fn last_refusal(&self) -> Option<String> {
        self.last_refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Verifies and installs a document, and persists it. Errors say why it was refused; the
    /// loaded data is then left as it was.
    pub fn apply(&self, token: &str, now: i64, max_skew: i64) -> Result<Applied, String> {
        let result = self.install_telling(token, now, max_skew);
        *self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) =
            result.as_ref().err().cloned();
        let result = result.map(|(applied, new_epoch)| {
            // Told of a new epoch (or a first document), not of the heartbeat that re-signs
            // the same one every few seconds.
            if let (Some(f), Some((iss, p))) = (self.on_applied.get(), new_epoch) {
                f(&iss, &p);
            }
            applied
        });
        if let Ok(Applied::Updated { .. }) = &result {
            // Installed first: a revocation is honoured at once even if the disk fails, and
            // the pusher hears that it must push again.
            self.persist()
                .map_err(|e| format!("applied, but not persisted ({e}): a restart would forget it; push it again once the state directory is writable"))?;
        }
        result
    }

    fn floors(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Persisted>> {
        self.floors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes every issuer's newest document. The push endpoint, the poller and a reload may
    /// persist at once, and so may another broker sharing the state directory: under an
    /// exclusive lock, what is on disk is read first and the newer of the two kept for each
    /// issuer (and taken as this broker's floor too), so no writer rolls back another's.
    fn persist(&self) -> anyhow::Result<()> {
        let Some(path) = &self.store else {
            return Ok(());
        };
        let lock_path = path.with_file_name(format!(".{STATE_FILE}.lock"));
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", lock_path.display()))?;
        lock.lock()
            .map_err(|e| anyhow::anyhow!("locking {}: {e}", lock_path.display()))?;
        let on_disk: Option<StateFile> = std::fs::read(path)
            .ok()
            .and_then(|b| crate::json::from_checked(&b).ok());
        let issuers = {
            let mut floors = self.floors();
            for (iss, p) in on_disk.map(|f| f.issuers).unwrap_or_default() {
                let newer = floors
                    .get(&iss)
                    .is_none_or(|mine| (p.epoch, p.iat) > (mine.epoch, mine.iat));
                if newer {
                    floors.insert(iss, p);
                }
            }
            floors.clone()
        };
        let file = StateFile { v: 1, issuers };
        let mut text = serde_json::to_vec_pretty(&file)?;
        text.push(b'\n');
        crate::fsutil::write_atomic(path, &text, 0o600)?;
        Ok(())
    }

    fn install(&self, token: &str, now: i64, max_skew: i64) -> Result<Applied, String> {
        self.install_telling(token, now, max_skew).map(|(a, _)| a)
    }

    /// [`Self::install`], also returning the issuer and its new entry when the document
    /// raised that issuer's epoch (decided under the same lock that installs it).
    fn install_telling(
        &self,
        token: &str,
        now: i64,
        max_skew: i64,
    ) -> Result<(Applied, Option<(String, Persisted)>), String> {
        let token = token.trim();
        let compact = jws::parse(token, REVOCATION_TYP)?;
        let issuer = self.issuers.get(&compact.kid).ok_or_else(|| {
            format!(
                "no trusted issuer key has kid {:?} (a key rotated out of the configuration?)",
                compact.kid
            )
        })?;
        if !compact.verify(token, &issuer.key) {
            return Err("signature does not verify".into());
        }
        let payload: RevocationPayload = crate::json::from_checked(&compact.payload)?;
        if payload.seb.v != 1 {
            return Err(format!(
                "seb.v is {}, this broker reads version 1",
                payload.seb.v
            ));
        }
        if let Some(name) = &issuer.name {
            if *name != payload.iss {
                return Err(format!(
                    "key {} signs for issuer {name:?}, not {:?}",
                    issuer.kid, payload.iss
                ));
            }
        }
        if payload.iat > now + max_skew {
            return Err(format!(
                "iat {} is {}s in the future, beyond the {max_skew}s clock skew: is this broker's clock behind the signer's?",
                payload.iat,
                payload.iat - now
            ));
        }
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        let (epoch, iat) = (payload.seb.revocation_epoch, payload.iat);
        if let Some(floor) = self.floors().get(&payload.iss) {
            if (epoch, iat) < (floor.epoch, floor.iat) {
                return Err(format!(
                    "epoch {epoch} issued at {iat} is older than issuer {:?}'s epoch {} issued at {}; revocation data never goes backwards",
                    payload.iss, floor.epoch, floor.iat
                ));
            }
        }
        if let Some(cur) = guard.get(&payload.iss) {
            if epoch == cur.epoch && iat == cur.iat {
                return Ok((Applied::Unchanged { epoch: cur.epoch }, None));
            }
            // The same epoch must not lose entries: an epoch names one set of revocations.
            if epoch == cur.epoch {
                let r = &payload.seb.revoked;
                let shrinks = cur.jti.iter().any(|j| !r.jti.contains(j))
                    || cur.sub.iter().any(|s| !r.sub.contains(s))
                    || cur.kid.iter().any(|k| !r.kid.contains(k))
                    || payload.seb.min_policy_epoch < cur.min_policy_epoch;
                if shrinks {
                    return Err(format!(
                        "epoch {} would drop revocations it already holds; un-revoking needs a new epoch",
                        cur.epoch
                    ));
                }
            }
        }
        let new_epoch = self
            .floors()
            .get(&payload.iss)
            .is_none_or(|f| epoch > f.epoch);
        let seb = payload.seb;
        let data = RevocationData {
            iss: payload.iss.clone(),
            iat,
            epoch,
            min_policy_epoch: seb.min_policy_epoch,
            jti: seb.revoked.jti.into_iter().collect(),
            sub: seb.revoked.sub.into_iter().collect(),
            kid: seb.revoked.kid.into_iter().collect(),
        };
        let entry = Persisted {
            epoch,
            iat,
            document: token.to_string(),
        };
        self.floors().insert(payload.iss.clone(), entry.clone());
        let told = new_epoch.then(|| (payload.iss.clone(), entry));
        guard.insert(payload.iss, Arc::new(data));
        Ok((Applied::Updated { epoch }, told))
    }
}

pub fn sign(key: &ed25519_dalek::SigningKey, kid: &str, payload: &RevocationPayload) -> String {
    let value = serde_json::to_value(payload).expect("revocation payload serializes");
    jws::sign(key, REVOCATION_TYP, kid, &value)
}

#[cfg(test)]
mod tests;
