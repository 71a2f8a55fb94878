//! Revocation data: a signed document (same JWS form as certificates, typ
//! `seb-revocation+jws`) from a trusted issuer, carrying the revocation epoch, the minimum
//! policy epoch, and revoked certificate ids, subjects and issuer keys.
//!
//! Its `iat` is its freshness: the signer re-issues it regularly, and once the loaded one is
//! older than the configured maximum staleness every mutation is refused. An attacker who
//! blocks updates therefore stops mutations rather than keeping a revoked certificate alive.
//! Epochs never go backwards: an older document, even validly signed, is refused (rollback).

use crate::cert::{jws, TrustedIssuers};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

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
    current: RwLock<Option<Arc<RevocationData>>>,
}

impl RevocationState {
    pub fn new(issuers: TrustedIssuers) -> Self {
        RevocationState {
            issuers,
            current: RwLock::new(None),
        }
    }

    pub fn current(&self) -> Option<Arc<RevocationData>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Verifies and installs a document. Errors say why it was refused; the loaded data is
    /// then left as it was.
    pub fn apply(&self, token: &str, now: i64, max_skew: i64) -> Result<Applied, String> {
        let token = token.trim();
        let compact = jws::parse(token, REVOCATION_TYP)?;
        let issuer = self
            .issuers
            .get(&compact.kid)
            .ok_or_else(|| format!("no trusted issuer key has kid {:?}", compact.kid))?;
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
            return Err(format!("iat {} is in the future", payload.iat));
        }
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        if let Some(cur) = guard.as_ref() {
            let older = (payload.seb.revocation_epoch, payload.iat) < (cur.epoch, cur.iat);
            if older {
                return Err(format!(
                    "epoch {} issued at {} is older than the loaded epoch {} issued at {}; revocation data never goes backwards",
                    payload.seb.revocation_epoch, payload.iat, cur.epoch, cur.iat
                ));
            }
            if payload.seb.revocation_epoch == cur.epoch && payload.iat == cur.iat {
                return Ok(Applied::Unchanged { epoch: cur.epoch });
            }
            // The same epoch must not lose entries: an epoch names one set of revocations.
            if payload.seb.revocation_epoch == cur.epoch {
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
            iss: payload.iss,
            iat: payload.iat,
            epoch: seb.revocation_epoch,
            min_policy_epoch: seb.min_policy_epoch,
            jti: seb.revoked.jti.into_iter().collect(),
            sub: seb.revoked.sub.into_iter().collect(),
            kid: seb.revoked.kid.into_iter().collect(),
        };
        let epoch = data.epoch;
        *guard = Some(Arc::new(data));
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
        assert!(s.current().is_none());
        let r = Revoked {
            jti: vec!["c1".into()],
            sub: vec!["agent:bad".into()],
            kid: vec!["k-old".into()],
        };
        assert_eq!(
            s.apply(&doc(&i, 3, NOW, r), NOW, 30).unwrap(),
            Applied::Updated { epoch: 3 }
        );
        let d = s.current().unwrap();
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
        assert_eq!(s.current().unwrap().iat, NOW + 60);
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
        let d = s.current().unwrap();
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
        assert!(s.current().is_none());
    }
}
