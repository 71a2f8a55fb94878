//! What the signer keeps across restarts: the policy epoch (and the fingerprint of the policy
//! set it was counted for) and the revocation state. One small JSON file, written atomically
//! on every change before the change is published.

use crate::admission::revocation::Revoked;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "signer-state.json";

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignerState {
    pub v: u32,
    pub policy_epoch: u64,
    pub policy_fingerprint: String,
    pub revocation_epoch: u64,
    pub revoked: Revoked,
    /// Why each entry was revoked, for the operator; not published.
    #[serde(default)]
    pub reasons: Vec<RevocationNote>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RevocationNote {
    pub what: String,
    pub value: String,
    pub reason: String,
    pub at: i64,
}

/// What a revocation names.
#[derive(Clone, Debug, PartialEq)]
pub enum Revoke {
    Jti(String),
    Sub(String),
    Kid(String),
}

pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn open(dir: &Path) -> anyhow::Result<(StateFile, SignerState)> {
        crate::fsutil::create_dir(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let path = dir.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(b) => crate::json::from_checked::<SignerState>(&b)
                .and_then(|s| {
                    crate::json::check_strict(&b).map_err(|e| e.to_string())?;
                    Ok(s)
                })
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SignerState {
                v: 1,
                ..SignerState::default()
            },
            // A state file that cannot be read could hide revocations: stop rather than forget them.
            Err(e) => anyhow::bail!("{}: {e}", path.display()),
        };
        Ok((StateFile { path }, state))
    }

    pub fn save(&self, s: &SignerState) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(s)?;
        crate::fsutil::write_atomic(&self.path, &text, 0o600)
    }
}

impl SignerState {
    /// Counts a new epoch when the policy set is not the one the last epoch was counted for.
    /// The revocation epoch grows with it, so the new floor is published in a new document.
    pub fn observe_policies(&mut self, fingerprint: &str) -> bool {
        if self.policy_fingerprint == fingerprint {
            return false;
        }
        self.policy_epoch += 1;
        self.revocation_epoch += 1;
        self.policy_fingerprint = fingerprint.to_string();
        true
    }

    /// Adds an entry; a new epoch only when it was not already listed.
    pub fn revoke(&mut self, what: Revoke, reason: &str, now: i64) -> bool {
        let (list, kind, value) = match what {
            Revoke::Jti(v) => (&mut self.revoked.jti, "jti", v),
            Revoke::Sub(v) => (&mut self.revoked.sub, "sub", v),
            Revoke::Kid(v) => (&mut self.revoked.kid, "kid", v),
        };
        if list.contains(&value) {
            return false;
        }
        list.push(value.clone());
        self.revocation_epoch += 1;
        self.reasons.push(RevocationNote {
            what: kind.into(),
            value,
            reason: reason.into(),
            at: now,
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_grow_on_policy_change_and_new_revocations_only() {
        let dir = tempfile::tempdir().unwrap();
        let (f, mut s) = StateFile::open(dir.path()).unwrap();
        assert!(s.observe_policies("a"));
        assert_eq!((s.policy_epoch, s.revocation_epoch), (1, 1));
        assert!(!s.observe_policies("a"));
        assert!(s.revoke(Revoke::Jti("c1".into()), "leaked", 5));
        assert!(!s.revoke(Revoke::Jti("c1".into()), "again", 6));
        assert_eq!(s.revocation_epoch, 2);
        f.save(&s).unwrap();
        let (_, back) = StateFile::open(dir.path()).unwrap();
        assert_eq!(back, s);
        assert!(s.observe_policies("b"));
        assert_eq!((s.policy_epoch, s.revocation_epoch), (2, 3));
    }

    #[test]
    fn an_unreadable_state_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{\"v\":1,\"v\":2}").unwrap();
        assert!(StateFile::open(dir.path()).is_err());
    }
}
