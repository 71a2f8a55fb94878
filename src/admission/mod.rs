//! Admission: is this certificate, right now, good for one more use by this peer?
//!
//! The checks run in a fixed order: structure and signature first ([`Admission::authenticate`];
//! nothing in the payload is believed before that), then in [`Admission::check_certificate`]
//! the validity window, epochs and revocation, then the mTLS binding. Splitting the two lets
//! a refusal for an expired or revoked certificate still be audited with its (genuine) claims. Contract matching is the
//! target's job and runs between these checks and [`Admission::take_use`], so a certificate
//! is only spent on a request it actually covers.

pub mod reload;
pub mod revocation;

use crate::cert::{self, Certificate, TrustedIssuers, WindowPolicy};
use crate::denial::{Denial, Reason};
use crate::state::{UseOutcome, UseStore};
use revocation::RevocationState;
use std::sync::Arc;

pub struct Admission {
    pub issuers: TrustedIssuers,
    pub window: WindowPolicy,
    /// The configured floor; the revocation data may raise it.
    pub min_policy_epoch: u64,
    pub max_staleness_secs: i64,
    pub revocation: Arc<RevocationState>,
    pub uses: Arc<dyn UseStore>,
    /// Set when the audit log lost records whose certificate uses are unknown (seconds since
    /// the epoch, when the loss was recorded): certificates issued before it cannot be proven
    /// unspent, so they are refused until they expire.
    pub uses_unknown_before: Option<i64>,
}

/// The mTLS client certificate the request arrived with, if any.
pub struct Peer<'a> {
    pub x5t_s256: &'a str,
}

impl Admission {
    /// Signature, trusted issuer and well-formed claims.
    pub fn authenticate(&self, token: &str) -> Result<Certificate, Denial> {
        cert::verify_signed(token, &self.issuers)
    }

    /// Is this genuine certificate good right now, for this peer?
    pub fn check_certificate(
        &self,
        cert: &Certificate,
        peer: Option<Peer<'_>>,
        now: i64,
    ) -> Result<(), Denial> {
        cert::check_window(&cert.claims, self.window, now)?;
        let c = &cert.claims;
        let rev = self.revocation.current(&c.iss).ok_or_else(|| {
            let why = self
                .revocation
                .last_refusal()
                .map(|r| format!(" (the last document offered was refused: {r})"))
                .unwrap_or_default();
            Denial::new(
                Reason::RevocationDataStale,
                format!(
                    "no revocation data from issuer {:?} has been loaded yet; its certificates wait for it{why}",
                    c.iss
                ),
            )
        })?;
        let age = now - rev.iat;
        if age > self.max_staleness_secs {
            return Err(Denial::new(
                Reason::RevocationDataStale,
                format!(
                    "revocation data (epoch {}) was issued {age}s ago, over the {}s maximum staleness",
                    rev.epoch, self.max_staleness_secs
                ),
            ));
        }
        let floor = self.min_policy_epoch.max(rev.min_policy_epoch);
        if c.seb.policy_epoch < floor {
            return Err(Denial::new(
                Reason::PolicyEpochStale,
                format!(
                    "issued under policy epoch {}, the broker requires at least {floor}",
                    c.seb.policy_epoch
                ),
            ));
        }
        if c.seb.revocation_epoch > rev.epoch {
            return Err(Denial::new(
                Reason::RevocationDataStale,
                format!(
                    "issued at revocation epoch {}, the broker has only epoch {}; retry once it has caught up",
                    c.seb.revocation_epoch, rev.epoch
                ),
            ));
        }
        if let Some(why) = rev.revoked(&cert.kid, &c.jti, &c.sub) {
            return Err(Denial::new(Reason::Revoked, why));
        }
        if let Some(cnf) = &c.cnf {
            match peer {
                None => {
                    return Err(Denial::new(
                        Reason::BindingMismatch,
                        "certificate is bound to a client certificate (cnf), and the request came without mTLS",
                    ))
                }
                // Both sides are public hashes, so a plain comparison leaks nothing.
                Some(p) if p.x5t_s256 != cnf.x5t_s256 => {
                    return Err(Denial::new(
                        Reason::BindingMismatch,
                        format!("certificate is bound to client certificate {}, the request used {}", cnf.x5t_s256, p.x5t_s256),
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Spends one use. Call only once everything else about the request has been accepted.
    pub async fn take_use(&self, cert: &Certificate) -> Result<(u32, u32), Denial> {
        let c = &cert.claims;
        if let Some(t) = self.uses_unknown_before {
            if c.iat <= t {
                return Err(Denial::new(
                    Reason::StateUnavailable,
                    format!(
                        "the audit log lost records at {t} whose certificate uses are unknown, and this certificate (issued at {}) cannot be proven unspent; ask the signer for a new one",
                        c.iat
                    ),
                ));
            }
        }
        match self
            .uses
            .take_use(
                &cert.kid,
                &c.jti,
                c.seb.max_uses,
                c.exp + self.window.skew_secs,
            )
            .await
        {
            Ok(UseOutcome::Admitted { n, max }) => Ok((n, max)),
            Ok(UseOutcome::Exhausted { max }) => Err(Denial::new(
                Reason::Replayed,
                format!(
                    "certificate {} has been used {max} time(s), all it allows",
                    c.jti
                ),
            )),
            Err(e) => Err(Denial::new(Reason::StateUnavailable, e.to_string())),
        }
    }
}

impl Admission {
    /// Gives back the use a request took when it provably never reached the upstream. A
    /// failure leaves the use spent: refusing a retry is the safe side.
    pub async fn give_back(&self, cert: &Certificate) {
        if let Err(e) = self.uses.give_back(&cert.kid, &cert.claims.jti).await {
            tracing::warn!(cert = %cert.claims.jti, error = %e, "could not give back an unused use");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::revocation::{sign, RevocationClaims, RevocationPayload, Revoked};
    use super::*;
    use crate::cert::testutil::{payload, TestIssuer};
    use crate::state::memory::MemoryUseStore;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    struct Fixture {
        issuer: TestIssuer,
        admission: Admission,
    }

    fn fixture(epoch: u64, min_policy_epoch: u64, revoked: Revoked) -> Fixture {
        fixture_with(TestIssuer::new(), epoch, min_policy_epoch, |_| revoked)
    }

    fn fixture_with(
        issuer: TestIssuer,
        epoch: u64,
        min_policy_epoch: u64,
        revoked: impl FnOnce(&TestIssuer) -> Revoked,
    ) -> Fixture {
        let trusted = TrustedIssuers::new([issuer.issuer(Some("signer"))]);
        let revocation = Arc::new(RevocationState::new(trusted.clone()));
        let doc = sign(
            &issuer.key,
            &issuer.kid,
            &RevocationPayload {
                iss: "signer".into(),
                iat: NOW,
                seb: RevocationClaims {
                    v: 1,
                    revocation_epoch: epoch,
                    min_policy_epoch,
                    revoked: revoked(&issuer),
                },
            },
        );
        revocation.apply(&doc, NOW, 30).unwrap();
        let admission = Admission {
            issuers: trusted,
            window: WindowPolicy::default(),
            min_policy_epoch: 1,
            max_staleness_secs: 300,
            revocation,
            uses: Arc::new(MemoryUseStore::new(
                1000,
                std::time::Duration::from_secs(60),
            )),
            uses_unknown_before: None,
        };
        Fixture { issuer, admission }
    }

    fn check(
        f: &Fixture,
        p: serde_json::Value,
        peer: Option<&str>,
        now: i64,
    ) -> Result<Certificate, Denial> {
        let cert = f.admission.authenticate(&f.issuer.sign(&p))?;
        f.admission
            .check_certificate(&cert, peer.map(|x| Peer { x5t_s256: x }), now)?;
        Ok(cert)
    }

    fn reason(r: Result<Certificate, Denial>) -> Reason {
        r.unwrap_err().reason
    }

    #[test]
    fn accepts_current_certificate() {
        let f = fixture(1, 0, Revoked::default());
        assert!(check(&f, payload(NOW), None, NOW).is_ok());
    }

    #[test]
    fn policy_epoch_floor_from_config_and_revocation_data() {
        let f = fixture(1, 0, Revoked::default());
        let mut p = payload(NOW);
        p["seb"]["policy_epoch"] = json!(0);
        assert_eq!(reason(check(&f, p, None, NOW)), Reason::PolicyEpochStale);
        let f = fixture(1, 5, Revoked::default());
        let mut p = payload(NOW);
        p["seb"]["policy_epoch"] = json!(4);
        assert_eq!(
            reason(check(&f, p.clone(), None, NOW)),
            Reason::PolicyEpochStale
        );
        p["seb"]["policy_epoch"] = json!(5);
        assert!(check(&f, p, None, NOW).is_ok());
    }

    #[test]
    fn revocation_epoch_newer_than_loaded_data_waits() {
        let f = fixture(3, 0, Revoked::default());
        let mut p = payload(NOW);
        p["seb"]["revocation_epoch"] = json!(4);
        assert_eq!(
            reason(check(&f, p.clone(), None, NOW)),
            Reason::RevocationDataStale
        );
        p["seb"]["revocation_epoch"] = json!(3);
        assert!(check(&f, p, None, NOW).is_ok());
    }

    #[test]
    fn stale_or_missing_revocation_data_refuses() {
        let f = fixture(1, 0, Revoked::default());
        let mut p = payload(NOW + 301);
        p["iat"] = json!(NOW + 301);
        assert_eq!(
            reason(check(&f, p, None, NOW + 301)),
            Reason::RevocationDataStale
        );
        assert!(
            check(&f, payload(NOW + 300), None, NOW + 300).is_ok(),
            "at exactly the limit it is still fresh"
        );
        let none_loaded = Admission {
            revocation: Arc::new(RevocationState::new(f.admission.issuers.clone())),
            ..f.admission
        };
        let cert = none_loaded
            .authenticate(&f.issuer.sign(&payload(NOW)))
            .unwrap();
        let denial = none_loaded.check_certificate(&cert, None, NOW).unwrap_err();
        assert_eq!(denial.reason, Reason::RevocationDataStale);
    }

    #[test]
    fn revoked_by_jti_sub_or_kid() {
        for r in [
            Revoked {
                jti: vec!["c1".into()],
                ..Default::default()
            },
            Revoked {
                sub: vec!["agent:a".into()],
                ..Default::default()
            },
        ] {
            let f = fixture(1, 0, r);
            assert_eq!(reason(check(&f, payload(NOW), None, NOW)), Reason::Revoked);
        }
        let f = fixture_with(TestIssuer::new(), 1, 0, |i| Revoked {
            kid: vec![i.kid.clone()],
            ..Default::default()
        });
        assert_eq!(reason(check(&f, payload(NOW), None, NOW)), Reason::Revoked);
        let f = fixture(
            1,
            0,
            Revoked {
                jti: vec!["other".into()],
                ..Default::default()
            },
        );
        assert!(check(&f, payload(NOW), None, NOW).is_ok());
    }

    #[test]
    fn binding_to_client_certificate() {
        let f = fixture(1, 0, Revoked::default());
        let mut p = payload(NOW);
        p["cnf"] = json!({"x5t#S256": "abc"});
        assert!(check(&f, p.clone(), Some("abc"), NOW).is_ok());
        assert_eq!(
            reason(check(&f, p.clone(), Some("abd"), NOW)),
            Reason::BindingMismatch
        );
        assert_eq!(reason(check(&f, p, None, NOW)), Reason::BindingMismatch);
    }

    #[tokio::test]
    async fn uses_are_counted() {
        let f = fixture(1, 0, Revoked::default());
        let mut p = payload(crate::cert::now_secs());
        p["seb"]["max_uses"] = json!(2);
        let c = check(&f, p, None, crate::cert::now_secs()).unwrap();
        assert_eq!(f.admission.take_use(&c).await.unwrap(), (1, 2));
        assert_eq!(f.admission.take_use(&c).await.unwrap(), (2, 2));
        assert_eq!(
            f.admission.take_use(&c).await.unwrap_err().reason,
            Reason::Replayed
        );
    }
}
