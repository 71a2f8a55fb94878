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
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

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
        }
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
        let result = self.install(token, now, max_skew);
        *self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) =
            result.as_ref().err().cloned();
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
                return Ok(Applied::Unchanged { epoch: cur.epoch });
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
        self.floors().insert(
            payload.iss.clone(),
            Persisted {
                epoch,
                iat,
                document: token.to_string(),
            },
        );
        guard.insert(payload.iss, Arc::new(data));
        Ok(Applied::Updated { epoch })
    }
}

pub fn sign(key: &ed25519_dalek::SigningKey, kid: &str, payload: &RevocationPayload) -> String {
    let value = serde_json::to_value(payload).expect("revocation payload serializes");
    jws::sign(key, REVOCATION_TYP, kid, &value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::testutil::TestIssuer;

    const NOW: i64 = 1_800_000_000;

    fn doc(i: &TestIssuer, epoch: u64, iat: i64, revoked: Revoked) -> String {
        sign(
            &i.key,
            &i.kid,
            &RevocationPayload {
                iss: "signer".into(),
                iat,
                seb: RevocationClaims {
                    v: 1,
                    revocation_epoch: epoch,
                    min_policy_epoch: 2,
                    revoked,
                },
            },
        )
    }

    fn state(i: &TestIssuer) -> RevocationState {
        RevocationState::new(TrustedIssuers::new([i.issuer(Some("signer"))]))
    }

    #[test]
    fn applies_and_answers_lookups() {
        let i = TestIssuer::new();
        let s = state(&i);
        assert!(s.current("signer").is_none());
        let r = Revoked {
            jti: vec!["c1".into()],
            sub: vec!["agent:bad".into()],
            kid: vec!["k-old".into()],
        };
        assert_eq!(
            s.apply(&doc(&i, 3, NOW, r), NOW, 30).unwrap(),
            Applied::Updated { epoch: 3 }
        );
        let d = s.current("signer").unwrap();
        assert_eq!((d.epoch, d.min_policy_epoch), (3, 2));
        assert!(d.revoked("k", "c1", "agent:a").is_some());
        assert!(d.revoked("k", "c2", "agent:bad").is_some());
        assert!(d.revoked("k-old", "c2", "agent:a").is_some());
        assert!(d.revoked("k", "c2", "agent:a").is_none());
    }

    #[test]
    fn never_goes_backwards() {
        let i = TestIssuer::new();
        let s = state(&i);
        s.apply(&doc(&i, 5, NOW, Revoked::default()), NOW, 30)
            .unwrap();
        assert!(s
            .apply(&doc(&i, 4, NOW + 10, Revoked::default()), NOW + 10, 30)
            .is_err());
        assert!(s
            .apply(&doc(&i, 5, NOW - 10, Revoked::default()), NOW, 30)
            .is_err());
        assert_eq!(
            s.apply(&doc(&i, 5, NOW, Revoked::default()), NOW, 30)
                .unwrap(),
            Applied::Unchanged { epoch: 5 }
        );
        // Same epoch, fresher: accepted as a heartbeat.
        assert!(s
            .apply(&doc(&i, 5, NOW + 60, Revoked::default()), NOW + 60, 30)
            .is_ok());
        assert_eq!(s.current("signer").unwrap().iat, NOW + 60);
    }

    #[test]
    fn same_epoch_cannot_drop_entries() {
        let i = TestIssuer::new();
        let s = state(&i);
        s.apply(
            &doc(
                &i,
                5,
                NOW,
                Revoked {
                    jti: vec!["c1".into()],
                    ..Default::default()
                },
            ),
            NOW,
            30,
        )
        .unwrap();
        assert!(s
            .apply(&doc(&i, 5, NOW + 1, Revoked::default()), NOW + 1, 30)
            .is_err());
        assert!(s
            .apply(&doc(&i, 6, NOW + 1, Revoked::default()), NOW + 1, 30)
            .is_ok());
    }

    /// A document the trusted issuer really signed that repeats a key. Read with the last key
    /// winning, each would revoke less than the signer listed (or move the epoch), so each is
    /// refused and the data already loaded stays.
    #[test]
    fn signed_document_with_a_repeated_key_is_refused() {
        let i = TestIssuer::new();
        let s = state(&i);
        let listed = Revoked {
            jti: vec!["c1".into()],
            ..Default::default()
        };
        s.apply(&doc(&i, 3, NOW, listed.clone()), NOW, 30).unwrap();
        let good = serde_json::to_string(&RevocationPayload {
            iss: "signer".into(),
            iat: NOW + 1,
            seb: RevocationClaims {
                v: 1,
                revocation_epoch: 4,
                min_policy_epoch: 2,
                revoked: listed,
            },
        })
        .unwrap();
        for (name, bad) in [
            (
                "revoked list",
                good.replacen(r#""jti":["c1"]"#, r#""jti":["c1"],"jti":[]"#, 1),
            ),
            (
                "escaped spelling",
                good.replacen(r#""jti":["c1"]"#, r#""jti":["c1"],"j\u0074i":[]"#, 1),
            ),
            (
                "epoch",
                good.replacen(
                    r#""revocation_epoch":4"#,
                    r#""revocation_epoch":4,"revocation_epoch":9"#,
                    1,
                ),
            ),
        ] {
            assert_ne!(bad, good, "{name}: the test payload was not edited");
            let token = jws::sign_bytes(&i.key, REVOCATION_TYP, &i.kid, bad.as_bytes());
            let err = s.apply(&token, NOW + 1, 30).unwrap_err();
            assert!(err.contains("duplicate"), "{name}: {err}");
        }
        let d = s.current("signer").unwrap();
        assert_eq!(d.epoch, 3);
        assert!(d.revoked("k", "c1", "agent:a").is_some());
    }

    #[test]
    fn refuses_untrusted_forged_and_future_documents() {
        let i = TestIssuer::new();
        let s = state(&i);
        let other = TestIssuer::new();
        assert!(s
            .apply(&doc(&other, 1, NOW, Revoked::default()), NOW, 30)
            .is_err());
        assert!(s
            .apply(&doc(&i, 1, NOW + 600, Revoked::default()), NOW, 30)
            .is_err());
        // A certificate is not a revocation document, even from the same key.
        let cert = i.sign(&crate::cert::testutil::payload(NOW));
        assert!(s.apply(&cert, NOW, 30).unwrap_err().contains("typ"));
        assert!(s.current("signer").is_none());
    }

    fn doc_as(i: &TestIssuer, iss: &str, epoch: u64, revoked: Revoked) -> String {
        sign(
            &i.key,
            &i.kid,
            &RevocationPayload {
                iss: iss.into(),
                iat: NOW,
                seb: RevocationClaims {
                    v: 1,
                    revocation_epoch: epoch,
                    min_policy_epoch: 0,
                    revoked,
                },
            },
        )
    }

    /// Issuer B's newer epoch leaves issuer A's revocations in force, and each document
    /// governs only its own issuer's certificates.
    #[test]
    fn each_issuer_has_its_own_revocations() {
        let (a, b) = (TestIssuer::new(), TestIssuer::new());
        let s = RevocationState::new(TrustedIssuers::new([
            a.issuer(Some("a")),
            b.issuer(Some("b")),
        ]));
        let revoke_c1 = Revoked {
            jti: vec!["c1".into()],
            ..Default::default()
        };
        s.apply(&doc_as(&a, "a", 3, revoke_c1), NOW, 30).unwrap();
        s.apply(&doc_as(&b, "b", 9, Revoked::default()), NOW, 30)
            .unwrap();
        assert!(s.current("a").unwrap().revoked("k", "c1", "x").is_some());
        assert!(s.current("b").unwrap().revoked("k", "c1", "x").is_none());
        assert_eq!(s.current("a").unwrap().epoch, 3);
        // A key signs only for its own issuer.
        let e = s
            .apply(&doc_as(&b, "a", 10, Revoked::default()), NOW, 30)
            .unwrap_err();
        assert!(e.contains("signs for issuer"), "{e}");
        assert_eq!(s.current("a").unwrap().epoch, 3);
    }

    /// What was accepted is loaded again by the next broker: pushed revocations stay, and an
    /// older document is still refused as a rollback, even when the persisted document no
    /// longer verifies (its key rotated out of the configuration).
    #[test]
    fn accepted_documents_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let i = TestIssuer::new();
        let s = state(&i).persisted_in(dir.path(), NOW, 30).unwrap();
        let r = Revoked {
            jti: vec!["c1".into()],
            ..Default::default()
        };
        s.apply(&doc(&i, 4, NOW, r), NOW, 30).unwrap();
        drop(s);

        let s = state(&i).persisted_in(dir.path(), NOW + 5, 30).unwrap();
        assert!(s
            .current("signer")
            .unwrap()
            .revoked("k", "c1", "x")
            .is_some());
        let e = s
            .apply(&doc(&i, 3, NOW + 5, Revoked::default()), NOW + 5, 30)
            .unwrap_err();
        assert!(e.contains("never goes backwards"), "{e}");

        // The same issuer name under a new key: the old document does not verify, its epoch
        // is still the floor.
        let rotated = TestIssuer::new();
        let s = state(&rotated)
            .persisted_in(dir.path(), NOW + 5, 30)
            .unwrap();
        assert!(s.current("signer").is_none());
        let e = s
            .apply(&doc(&rotated, 3, NOW + 5, Revoked::default()), NOW + 5, 30)
            .unwrap_err();
        assert!(e.contains("never goes backwards"), "{e}");
        s.apply(&doc(&rotated, 5, NOW + 6, Revoked::default()), NOW + 6, 30)
            .unwrap();
    }

    /// Two brokers sharing a state directory (or the pusher and the poller of one): the
    /// older document written last does not roll back the newer one on disk.
    #[test]
    fn a_writer_never_rolls_back_another() {
        let dir = tempfile::tempdir().unwrap();
        let i = TestIssuer::new();
        let a = state(&i).persisted_in(dir.path(), NOW, 30).unwrap();
        let b = state(&i).persisted_in(dir.path(), NOW, 30).unwrap();
        let r = Revoked {
            jti: vec!["c1".into()],
            ..Default::default()
        };
        a.apply(&doc(&i, 5, NOW, r), NOW, 30).unwrap();
        b.apply(&doc(&i, 3, NOW + 1, Revoked::default()), NOW + 1, 30)
            .unwrap();
        // b learnt the newer floor from the disk while writing.
        let e = b
            .apply(&doc(&i, 4, NOW + 2, Revoked::default()), NOW + 2, 30)
            .unwrap_err();
        assert!(e.contains("never goes backwards"), "{e}");
        let restarted = state(&i).persisted_in(dir.path(), NOW + 2, 30).unwrap();
        let d = restarted.current("signer").unwrap();
        assert_eq!(d.epoch, 5);
        assert!(d.revoked("k", "c1", "x").is_some());
    }

    #[test]
    fn an_unreadable_state_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "{").unwrap();
        let i = TestIssuer::new();
        assert!(state(&i).persisted_in(dir.path(), NOW, 30).is_err());
    }

    #[test]
    fn each_refusal_says_what_was_wrong() {
        let i = TestIssuer::new();
        let s = state(&i);
        let e = s
            .apply(&doc(&i, 1, NOW + 600, Revoked::default()), NOW, 30)
            .unwrap_err();
        assert!(e.contains("clock behind"), "{e}");
        assert_eq!(s.last_refusal().as_deref(), Some(e.as_str()));
        let e = s
            .apply(
                &doc(&TestIssuer::new(), 1, NOW, Revoked::default()),
                NOW,
                30,
            )
            .unwrap_err();
        assert!(e.contains("rotated out"), "{e}");
    }
}
