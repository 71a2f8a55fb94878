//! Reading an issuer's JWK Set (RFC 7517) of Ed25519 keys (RFC 8037 `OKP`), as a signer
//! publishes it at `/.well-known/jwks.json`. Each usable key's `kid` must be its RFC 7638
//! thumbprint: the broker names keys by thumbprint everywhere (revocation by `kid`, the audit
//! log), so a published `kid` that is not the key's own would let one key pass for another.

use super::keys;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::VerifyingKey;
use serde::Deserialize;

/// The most keys one set may hold: a rotation publishes two or three.
const MAX_KEYS: usize = 64;

#[derive(Deserialize)]
struct Set {
    keys: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// The set's Ed25519 signing keys, `(kid, key)`. Keys of other types (RSA, EC) are skipped, as
/// RFC 7517 section 5 lets a reader do; an Ed25519 key that does not read, or whose `kid`,
/// `use` or `alg` says something else, refuses the whole set, since a set half understood
/// is not the set the signer meant.
pub fn parse(bytes: &[u8]) -> Result<Vec<(String, VerifyingKey)>, String> {
    let set: Set = crate::json::from_checked(bytes)?;
    crate::json::check_strict(bytes).map_err(|e| e.to_string())?;
    if set.keys.len() > MAX_KEYS {
        return Err(format!("{} keys, more than {MAX_KEYS}", set.keys.len()));
    }
    let mut out = Vec::new();
    for (i, k) in set.keys.iter().enumerate() {
        let s = |name: &str| k.get(name).and_then(|v| v.as_str());
        let bad = |m: String| format!("keys[{i}]: {m}");
        if s("kty") != Some("OKP") || s("crv") != Some("Ed25519") {
            continue;
        }
        if let Some(u) = k.get("use") {
            if u.as_str() != Some("sig") {
                return Err(bad(format!("use is {u}, not \"sig\"")));
            }
        }
        if let Some(a) = k.get("alg") {
            if a.as_str() != Some("EdDSA") {
                return Err(bad(format!("alg is {a}, not \"EdDSA\"")));
            }
        }
        if k.contains_key("d") {
            return Err(bad(
                "holds a private key (d); a published set must not".into()
            ));
        }
        let x = s("x").ok_or_else(|| bad("no x".into()))?;
        let raw = URL_SAFE_NO_PAD
            .decode(x)
            .map_err(|e| bad(format!("x is not base64url: {e}")))?;
        let raw: [u8; 32] = raw
            .try_into()
            .map_err(|v: Vec<u8>| bad(format!("x is {} bytes, not 32", v.len())))?;
        let key = VerifyingKey::from_bytes(&raw).map_err(|e| bad(format!("x: {e}")))?;
        let thumb = keys::key_id(&key);
        match s("kid") {
            Some(kid) if kid == thumb => out.push((thumb, key)),
            Some(kid) => {
                return Err(bad(format!(
                    "kid {kid:?} is not the key's RFC 7638 thumbprint {thumb:?}"
                )))
            }
            None => return Err(bad("no kid".into())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn jwk(key: &VerifyingKey) -> serde_json::Value {
        json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
               "kid": keys::key_id(key), "x": URL_SAFE_NO_PAD.encode(key.as_bytes())})
    }

    #[test]
    fn reads_ed25519_keys_and_skips_others() {
        let a = keys::generate().verifying_key();
        let b = keys::generate().verifying_key();
        let set =
            json!({"keys": [jwk(&a), {"kty": "RSA", "n": "x", "e": "AQAB", "kid": "r"}, jwk(&b)]});
        let got = parse(set.to_string().as_bytes()).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (keys::key_id(&a), a));
    }

    #[test]
    fn refuses_a_kid_that_is_not_the_thumbprint_and_other_surprises() {
        let a = keys::generate().verifying_key();
        let other = keys::key_id(&keys::generate().verifying_key());
        for (edit, says) in [
            (json!({"kid": other}), "thumbprint"),
            (json!({"use": "enc"}), "use"),
            (json!({"alg": "ES256"}), "alg"),
            (json!({"d": "AAAA"}), "private"),
            (json!({"x": "AAAA"}), "not 32"),
            (json!({"x": "not base64!"}), "base64url"),
        ] {
            let mut k = jwk(&a);
            for (n, v) in edit.as_object().unwrap() {
                k[n] = v.clone();
            }
            let e = parse(json!({"keys": [k]}).to_string().as_bytes()).unwrap_err();
            assert!(e.contains(says), "{edit}: {e}");
        }
        let dup = format!(r#"{{"keys":[],"keys":[{}]}}"#, jwk(&a));
        assert!(parse(dup.as_bytes()).is_err(), "a repeated member");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any bytes: an error or keys whose kid is their own thumbprint; never a panic.
        #[test]
        fn never_panics_and_every_key_is_its_own_kid(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(keys) = parse(&bytes) {
                for (kid, key) in keys {
                    prop_assert_eq!(kid, keys::key_id(&key));
                }
            }
        }

        /// A valid set with one byte of `x` changed: a different key (whose kid no longer
        /// matches) or an invalid point, refused either way.
        #[test]
        fn an_edited_key_is_refused(i in 0usize..43, c in "[A-Za-z0-9_-]") {
            let a = keys::generate().verifying_key();
            let mut k = jwk(&a);
            let mut x: Vec<char> = k["x"].as_str().unwrap().chars().collect();
            let i = i % x.len();
            let c = c.chars().next().unwrap();
            prop_assume!(x[i] != c);
            x[i] = c;
            k["x"] = json!(x.into_iter().collect::<String>());
            let set = json!({"keys": [k]}).to_string();
            prop_assert!(parse(set.as_bytes()).is_err(), "accepted an edited key");
        }
    }
}
