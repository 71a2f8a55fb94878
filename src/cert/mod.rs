//! Certificate v1: a compact JWS (EdDSA) whose payload grants one scoped change.
//! This module answers "is this a genuine, current certificate from an issuer we trust?";
//! whether it covers the request is `contract`'s job, and epochs, revocation and uses are
//! `admission`'s.

pub mod claims;
pub mod jwks;
pub mod jws;
pub mod keys;

pub use claims::{Audience, BodyRule, Claims, Others, TargetKind};

use crate::denial::{Denial, Reason};
use ed25519_dalek::VerifyingKey;
use std::collections::HashMap;

pub const CERT_TYP: &str = "seb-cert+jws";

#[derive(Clone, Debug)]
pub struct Issuer {
    /// The `iss` this key may sign for; `None` trusts the key for any `iss` (CLI `--trust`).
    pub name: Option<String>,
    pub kid: String,
    pub key: VerifyingKey,
}

/// The issuer keys the broker trusts. Clones share one set: a reload (`replace`) is seen at
/// once by every holder (admission, the revocation state), and a request reads one
/// consistent set without taking a lock.
#[derive(Clone, Debug, Default)]
pub struct TrustedIssuers {
    by_kid: std::sync::Arc<arc_swap::ArcSwap<HashMap<String, std::sync::Arc<Issuer>>>>,
    /// Keys learned from issuers' JWKS URLs, each pinned to its issuer's name; replaced one
    /// issuer at a time by its poller, untouched by a config reload of the keys above.
    published: std::sync::Arc<arc_swap::ArcSwap<HashMap<String, std::sync::Arc<Issuer>>>>,
}

impl TrustedIssuers {
    pub fn new(issuers: impl IntoIterator<Item = Issuer>) -> Self {
        TrustedIssuers {
            by_kid: std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(Self::index(issuers))),
            published: Default::default(),
        }
    }

    fn index(issuers: impl IntoIterator<Item = Issuer>) -> HashMap<String, std::sync::Arc<Issuer>> {
        issuers
            .into_iter()
            .map(|i| (i.kid.clone(), std::sync::Arc::new(i)))
            .collect()
    }

    pub fn get(&self, kid: &str) -> Option<std::sync::Arc<Issuer>> {
        self.by_kid
            .load()
            .get(kid)
            .cloned()
            .or_else(|| self.published.load().get(kid).cloned())
    }

    pub fn is_empty(&self) -> bool {
        self.by_kid.load().is_empty() && self.published.load().is_empty()
    }

    /// Replaces the keys published by issuer `iss` (its JWKS) with `keys`, each trusted for
    /// that issuer only; an empty list withdraws them (a set gone stale).
    pub fn set_published(&self, iss: &str, keys: Vec<(String, VerifyingKey)>) {
        self.published.rcu(|current| {
            let mut next: HashMap<String, std::sync::Arc<Issuer>> = current
                .iter()
                .filter(|(_, i)| i.name.as_deref() != Some(iss))
                .map(|(k, i)| (k.clone(), i.clone()))
                .collect();
            for (kid, key) in &keys {
                next.insert(
                    kid.clone(),
                    std::sync::Arc::new(Issuer {
                        name: Some(iss.to_string()),
                        kid: kid.clone(),
                        key: *key,
                    }),
                );
            }
            next
        });
    }

    /// Installs a new set for every holder of this one (a config reload).
    pub fn replace(&self, issuers: impl IntoIterator<Item = Issuer>) {
        self.by_kid.store(std::sync::Arc::new(Self::index(issuers)));
    }

    /// `(kid, iss)` of every key, sorted: what a reload reports as changed.
    pub fn describe(&self) -> Vec<(String, Option<String>)> {
        let mut v: Vec<_> = self
            .by_kid
            .load()
            .values()
            .chain(self.published.load().values())
            .map(|i| (i.kid.clone(), i.name.clone()))
            .collect();
        v.sort();
        v
    }

    /// The issuer names these keys sign for, sorted, without repeats.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_kid
            .load()
            .values()
            .chain(self.published.load().values())
            .filter_map(|i| i.name.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

#[derive(Clone, Copy, Debug)]
pub struct WindowPolicy {
    pub skew_secs: i64,
    pub max_ttl_secs: i64,
}

impl Default for WindowPolicy {
    fn default() -> Self {
        WindowPolicy {
            skew_secs: 30,
            max_ttl_secs: 3600,
        }
    }
}

/// A certificate whose signature, issuer and validity window have been checked.
#[derive(Clone, Debug)]
pub struct Certificate {
    pub kid: String,
    pub claims: Claims,
}

/// Verifies a token against trusted issuer keys at time `now` (seconds since the epoch).
pub fn verify(
    token: &str,
    issuers: &TrustedIssuers,
    window: WindowPolicy,
    now: i64,
) -> Result<Certificate, Denial> {
    let cert = verify_signed(token, issuers)?;
    check_window(&cert.claims, window, now)?;
    Ok(cert)
}

/// Checks structure, issuer and signature, and parses the claims; not the validity window.
/// The order matters: nothing from the payload is trusted before the signature checks out.
pub fn verify_signed(token: &str, issuers: &TrustedIssuers) -> Result<Certificate, Denial> {
    let token = token.trim();
    let compact = jws::parse(token, CERT_TYP).map_err(|m| Denial::new(Reason::CertMalformed, m))?;
    let issuer = issuers.get(&compact.kid).ok_or_else(|| {
        Denial::new(
            Reason::UnknownIssuer,
            format!("no trusted issuer key has kid {:?}", compact.kid),
        )
    })?;
    if !compact.verify(token, &issuer.key) {
        return Err(Denial::new(
            Reason::BadSignature,
            format!("signature does not verify under issuer key {}", issuer.kid),
        ));
    }
    let claims =
        Claims::from_json(&compact.payload).map_err(|m| Denial::new(Reason::CertMalformed, m))?;
    if let Some(name) = &issuer.name {
        if &claims.iss != name {
            return Err(Denial::new(
                Reason::UnknownIssuer,
                format!(
                    "key {} signs for issuer {name:?}, not {:?}",
                    issuer.kid, claims.iss
                ),
            ));
        }
    }
    Ok(Certificate {
        kid: compact.kid,
        claims,
    })
}

pub fn check_window(claims: &Claims, window: WindowPolicy, now: i64) -> Result<(), Denial> {
    if claims.exp - claims.nbf > window.max_ttl_secs {
        return Err(Denial::new(
            Reason::CertMalformed,
            format!(
                "lifetime {}s exceeds the broker's maximum of {}s",
                claims.exp - claims.nbf,
                window.max_ttl_secs
            ),
        ));
    }
    if now + window.skew_secs < claims.nbf {
        return Err(Denial::new(
            Reason::NotYetValid,
            format!(
                "valid from {} ({}s from now, beyond the {}s clock skew allowed)",
                claims.nbf,
                claims.nbf - now,
                window.skew_secs
            ),
        ));
    }
    // exp is exclusive (RFC 7519 4.1.4: "on or after ... MUST NOT be accepted").
    if now - window.skew_secs >= claims.exp {
        return Err(Denial::new(
            Reason::Expired,
            format!(
                "expired at {} ({}s ago, beyond the {}s clock skew allowed)",
                claims.exp,
                now - claims.exp,
                window.skew_secs
            ),
        ));
    }
    Ok(())
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use ed25519_dalek::SigningKey;
    use serde_json::{json, Value};

    pub struct TestIssuer {
        pub key: SigningKey,
        pub kid: String,
    }

    impl TestIssuer {
        pub fn new() -> Self {
            let key = keys::generate();
            let kid = keys::key_id(&key.verifying_key());
            TestIssuer { key, kid }
        }
        pub fn issuer(&self, name: Option<&str>) -> Issuer {
            Issuer {
                name: name.map(String::from),
                kid: self.kid.clone(),
                key: self.key.verifying_key(),
            }
        }
        pub fn sign(&self, payload: &Value) -> String {
            jws::sign(&self.key, CERT_TYP, &self.kid, payload)
        }
    }

    pub fn payload(now: i64) -> Value {
        json!({
            "iss": "signer", "sub": "agent:a", "jti": "c1", "iat": now, "nbf": now, "exp": now + 300,
            "seb": {"v": 1, "action": "deploy", "policy": "p", "policy_epoch": 1, "revocation_epoch": 1,
                    "target": "http", "request": {"upstream": "u", "method": "POST", "path": "/x"}}
        })
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn setup() -> (TestIssuer, TrustedIssuers) {
        let i = TestIssuer::new();
        let trusted = TrustedIssuers::new([i.issuer(Some("signer"))]);
        (i, trusted)
    }

    fn reason(r: Result<Certificate, Denial>) -> Reason {
        r.unwrap_err().reason
    }

    #[test]
    fn accepts_a_valid_certificate() {
        let (i, t) = setup();
        let c = verify(&i.sign(&payload(NOW)), &t, WindowPolicy::default(), NOW).unwrap();
        assert_eq!(c.claims.jti, "c1");
        assert_eq!(c.kid, i.kid);
    }

    #[test]
    fn unknown_kid_and_wrong_iss_are_unknown_issuer() {
        let (_, t) = setup();
        let other = TestIssuer::new();
        assert_eq!(
            reason(verify(
                &other.sign(&payload(NOW)),
                &t,
                WindowPolicy::default(),
                NOW
            )),
            Reason::UnknownIssuer
        );
        let (i, t) = setup();
        let mut p = payload(NOW);
        p["iss"] = "someone-else".into();
        assert_eq!(
            reason(verify(&i.sign(&p), &t, WindowPolicy::default(), NOW)),
            Reason::UnknownIssuer
        );
    }

    #[test]
    fn another_key_claiming_a_trusted_kid_is_bad_signature() {
        let (i, t) = setup();
        let mut impostor = TestIssuer::new();
        impostor.kid = i.kid.clone();
        assert_eq!(
            reason(verify(
                &impostor.sign(&payload(NOW)),
                &t,
                WindowPolicy::default(),
                NOW
            )),
            Reason::BadSignature
        );
    }

    #[test]
    fn edited_payload_is_bad_signature() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let (i, t) = setup();
        let tok = i.sign(&payload(NOW));
        let parts: Vec<&str> = tok.split('.').collect();
        let mut p = payload(NOW);
        p["seb"]["max_uses"] = 1000.into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(p.to_string()),
            parts[2]
        );
        assert_eq!(
            reason(verify(&forged, &t, WindowPolicy::default(), NOW)),
            Reason::BadSignature
        );
    }

    #[test]
    fn window_boundaries_with_skew() {
        let (i, t) = setup();
        let w = WindowPolicy {
            skew_secs: 30,
            max_ttl_secs: 3600,
        };
        let p = payload(NOW); // nbf = NOW, exp = NOW + 300
        let tok = i.sign(&p);
        assert!(
            verify(&tok, &t, w, NOW - 30).is_ok(),
            "nbf - skew is inside"
        );
        assert_eq!(reason(verify(&tok, &t, w, NOW - 31)), Reason::NotYetValid);
        assert!(
            verify(&tok, &t, w, NOW + 300 + 29).is_ok(),
            "exp + skew - 1 is inside"
        );
        assert_eq!(reason(verify(&tok, &t, w, NOW + 300 + 30)), Reason::Expired);
        let strict = WindowPolicy {
            skew_secs: 0,
            max_ttl_secs: 3600,
        };
        assert_eq!(reason(verify(&tok, &t, strict, NOW + 300)), Reason::Expired);
    }

    #[test]
    fn lifetime_over_max_ttl_is_malformed() {
        let (i, t) = setup();
        let mut p = payload(NOW);
        p["exp"] = (NOW + 3601).into();
        assert_eq!(
            reason(verify(&i.sign(&p), &t, WindowPolicy::default(), NOW)),
            Reason::CertMalformed
        );
    }

    /// A token the trusted issuer really signed, whose payload repeats a key: in a typed
    /// member, inside the free-form `seb.request`, in the `constraints` map, and spelled with
    /// an escape. Each reading of it (first or last key wins) would grant something else, so
    /// every one is refused before anything is read from it.
    #[test]
    fn signed_payload_with_a_repeated_key_is_malformed() {
        let (i, t) = setup();
        let sign_raw =
            |payload: &str| jws::sign_bytes(&i.key, CERT_TYP, &i.kid, payload.as_bytes());
        let good = payload(NOW).to_string();
        assert!(verify(&sign_raw(&good), &t, WindowPolicy::default(), NOW).is_ok());
        let seb_head = r#""seb":{"#;
        for (name, bad) in [
            ("typed member", good.replacen(r#""sub":"agent:a""#, r#""sub":"agent:a","sub":"agent:root""#, 1)),
            ("escaped spelling", good.replacen(r#""sub":"agent:a""#, r#""sub":"agent:a","s\u0075b":"agent:root""#, 1)),
            ("free-form request", good.replacen(r#""path":"/x""#, r#""path":"/x","path":"/admin""#, 1)),
            ("constraints map", good.replacen(seb_head, r#""seb":{"body":{"constraints":{"/a":{"eq":1},"/a":{"eq":2}},"others":"deny"},"#, 1)),
        ] {
            assert_ne!(bad, good, "{name}: the test payload was not edited");
            let err = verify(&sign_raw(&bad), &t, WindowPolicy::default(), NOW).unwrap_err();
            assert_eq!(err.reason, Reason::CertMalformed, "{name}");
            assert!(err.message.contains("duplicate"), "{name}: {}", err.message);
        }
    }

    #[test]
    fn replaced_keys_are_seen_by_every_clone() {
        let (old, t) = setup();
        let holder = t.clone();
        let new = TestIssuer::new();
        t.replace([new.issuer(Some("signer"))]);
        let w = WindowPolicy::default();
        assert!(verify(&new.sign(&payload(NOW)), &holder, w, NOW).is_ok());
        assert_eq!(
            reason(verify(&old.sign(&payload(NOW)), &holder, w, NOW)),
            Reason::UnknownIssuer
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let (_, t) = setup();
        for tok in ["", "x", "a.b.c", "....", "eyJ.eyJ.AA"] {
            assert_eq!(
                reason(verify(tok, &t, WindowPolicy::default(), NOW)),
                Reason::CertMalformed,
                "{tok}"
            );
        }
    }
}
