//! Admission: is this certificate, right now, good for one more use by this peer?
//!
//! The checks run in a fixed order: structure and signature first ([`Admission::authenticate`];
//! nothing in the payload is believed before that), then in [`Admission::check_certificate`]
//! the validity window, epochs and revocation, then the mTLS binding. Splitting the two lets
//! a refusal for an expired or revoked certificate still be audited with its (genuine) claims. Contract matching is the
//! target's job and runs between these checks and [`Admission::take_use`], so a certificate
//! is only spent on a request it actually covers.

pub mod jwks;
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

    /// Is this genuine certificate good right now, for this peer? The checks of
    /// [`CHECKS`], in their order; the first that says no is the refusal.
    pub fn check_certificate(
        &self,
        cert: &Certificate,
        peer: Option<Peer<'_>>,
        now: i64,
    ) -> Result<(), Denial> {
        let facts = Facts {
            cert,
            peer,
            now,
            revocation: self.revocation.current(&cert.claims.iss),
        };
        for (_, check) in CHECKS {
            check(self, &facts)?;
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

/// What the certificate checks read: the certificate, the peer, the time, and the revocation
/// data of the certificate's issuer (looked up once).
pub struct Facts<'a> {
    pub cert: &'a Certificate,
    pub peer: Option<Peer<'a>>,
    pub now: i64,
    pub revocation: Option<Arc<revocation::RevocationData>>,
}

pub type Check = fn(&Admission, &Facts) -> Result<(), Denial>;

/// The certificate checks, in order: time first (an expired certificate is refused as
/// expired whatever else is wrong), then the revocation data it is judged against, the
/// epochs, revocation itself, and last the binding to the peer.
pub const CHECKS: [(&str, Check); 6] = [
    ("validity window", check_window),
    ("revocation data", check_revocation_data),
    ("policy epoch", check_policy_epoch),
    ("revocation epoch", check_revocation_epoch),
    ("not revoked", check_not_revoked),
    ("client certificate binding", check_binding),
];

fn check_window(a: &Admission, f: &Facts) -> Result<(), Denial> {
    cert::check_window(&f.cert.claims, a.window, f.now)
}

/// The issuer's revocation data, present and fresh enough.
fn check_revocation_data(a: &Admission, f: &Facts) -> Result<(), Denial> {
    let c = &f.cert.claims;
    let Some(rev) = &f.revocation else {
        let why = a
            .revocation
            .last_refusal()
            .map(|r| format!(" (the last document offered was refused: {r})"))
            .unwrap_or_default();
        return Err(Denial::new(
            Reason::RevocationDataStale,
            format!(
                "no revocation data from issuer {:?} has been loaded yet; its certificates wait for it{why}",
                c.iss
            ),
        ));
    };
    let age = f.now - rev.iat;
    if age > a.max_staleness_secs {
        return Err(Denial::new(
            Reason::RevocationDataStale,
            format!(
                "revocation data (epoch {}) was issued {age}s ago, over the {}s maximum staleness",
                rev.epoch, a.max_staleness_secs
            ),
        ));
    }
    Ok(())
}

/// Revocation data present: [`check_revocation_data`] runs first.
fn loaded<'a>(f: &'a Facts) -> Result<&'a revocation::RevocationData, Denial> {
    f.revocation.as_deref().ok_or_else(|| {
        Denial::new(
            Reason::RevocationDataStale,
            "no revocation data has been loaded for the certificate's issuer",
        )
    })
}

fn check_policy_epoch(a: &Admission, f: &Facts) -> Result<(), Denial> {
    let c = &f.cert.claims;
    let floor = a.min_policy_epoch.max(loaded(f)?.min_policy_epoch);
    if c.seb.policy_epoch < floor {
        return Err(Denial::new(
            Reason::PolicyEpochStale,
            format!(
                "issued under policy epoch {}, the broker requires at least {floor}",
                c.seb.policy_epoch
            ),
        ));
    }
    Ok(())
}

fn check_revocation_epoch(_: &Admission, f: &Facts) -> Result<(), Denial> {
    let c = &f.cert.claims;
    let rev = loaded(f)?;
    if c.seb.revocation_epoch > rev.epoch {
        return Err(Denial::new(
            Reason::RevocationDataStale,
            format!(
                "issued at revocation epoch {}, the broker has only epoch {}; retry once it has caught up",
                c.seb.revocation_epoch, rev.epoch
            ),
        ));
    }
    Ok(())
}

fn check_not_revoked(_: &Admission, f: &Facts) -> Result<(), Denial> {
    let c = &f.cert.claims;
    match loaded(f)?.revoked(&f.cert.kid, &c.jti, &c.sub) {
        Some(why) => Err(Denial::new(Reason::Revoked, why)),
        None => Ok(()),
    }
}

fn check_binding(_: &Admission, f: &Facts) -> Result<(), Denial> {
    let Some(cnf) = &f.cert.claims.cnf else {
        return Ok(());
    };
    match &f.peer {
        None => Err(Denial::new(
            Reason::BindingMismatch,
            "certificate is bound to a client certificate (cnf), and the request came without mTLS",
        )),
        // Both sides are public hashes, so a plain comparison leaks nothing.
        Some(p) if p.x5t_s256 != cnf.x5t_s256 => Err(Denial::new(
            Reason::BindingMismatch,
            format!(
                "certificate is bound to client certificate {}, the request used {}",
                cnf.x5t_s256, p.x5t_s256
            ),
        )),
        Some(_) => Ok(()),
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

    /// Each check alone, on facts made by hand: an expired certificate with no revocation data
    /// is refused by the window check first, and the later checks can be judged without it.
    #[test]
    fn each_check_runs_alone_and_the_order_puts_time_first() {
        let f = fixture(1, 1, Revoked::default());
        let cert = f
            .admission
            .authenticate(&f.issuer.sign(&payload(NOW)))
            .unwrap();
        let later = NOW + 3600;
        let facts = Facts {
            cert: &cert,
            peer: None,
            now: later,
            revocation: None,
        };
        let names: Vec<&str> = CHECKS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names[0], "validity window");
        let verdicts: Vec<Option<Reason>> = CHECKS
            .iter()
            .map(|(_, c)| c(&f.admission, &facts).err().map(|d| d.reason))
            .collect();
        assert_eq!(
            verdicts,
            [
                Some(Reason::Expired),
                Some(Reason::RevocationDataStale),
                Some(Reason::RevocationDataStale),
                Some(Reason::RevocationDataStale),
                Some(Reason::RevocationDataStale),
                None,
            ]
        );
        assert_eq!(
            f.admission
                .check_certificate(&cert, None, later)
                .unwrap_err()
                .reason,
            Reason::Expired
        );
    }
}
