//! JWS compact serialization (RFC 7515) with EdDSA over Ed25519 (RFC 8037), and nothing else.
//!
//! The algorithm is fixed by the broker, never chosen by the token: `alg` must read `EdDSA`,
//! so `none`, `HS256` (with a public key used as an HMAC secret) and friends are refused before
//! any key is touched.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde_json::Value;

/// Larger tokens are refused unread; a certificate is a few hundred bytes to a few KiB.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

#[derive(Debug)]
pub struct Compact {
    pub kid: String,
    pub typ: String,
    /// The decoded payload bytes: one JSON value without duplicate keys (see
    /// [`crate::json::check_strict`]), for the caller to deserialise into its own type.
    pub payload: Vec<u8>,
    signing_input_len: usize,
    signature: Signature,
}

/// Parses a compact JWS and checks its header, without verifying the signature.
/// Errors are messages for `cert_malformed`.
pub fn parse(token: &str, expected_typ: &str) -> Result<Compact, String> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "token is {} bytes, over the {MAX_TOKEN_LEN}-byte limit",
            token.len()
        ));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWS in compact form (three base64url parts joined by '.')".into());
    };
    let header = decode_json(h, "header")?;
    let Value::Object(header) = header else {
        return Err("JWS header is not a JSON object".into());
    };
    for name in header.keys() {
        if !matches!(name.as_str(), "alg" | "typ" | "kid") {
            // `crit`, `jku`, `x5u`, `b64` and the like change how a token must be processed;
            // refusing what we do not implement is the only safe reading.
            return Err(format!("JWS header member {name:?} is not supported"));
        }
    }
    match header.get("alg") {
        Some(Value::String(a)) if a == "EdDSA" => {}
        Some(other) => return Err(format!("alg {other} is not allowed; only \"EdDSA\" is")),
        None => return Err("JWS header has no alg".into()),
    }
    let typ = match header.get("typ") {
        Some(Value::String(t)) => t.clone(),
        _ => return Err("JWS header has no typ".into()),
    };
    // Exactly, as FORMATS.md says: one spelling per token kind, nothing to fold.
    if typ != expected_typ {
        return Err(format!("typ {typ:?} is not {expected_typ:?}"));
    }
    let kid = match header.get("kid") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        _ => return Err("JWS header has no kid".into()),
    };
    // Checked here and deserialised once by the caller into its typed claims: a value tree
    // in between cost a few dozen allocations per request.
    let payload = decode_b64(p, "payload")?;
    crate::json::check_strict(&payload)
        .map_err(|e| format!("JWS payload is not valid JSON: {e}"))?;
    let sig = decode_b64(s, "signature")?;
    let sig: [u8; 64] = sig
        .try_into()
        .map_err(|v: Vec<u8>| format!("signature is {} bytes, not 64", v.len()))?;
    Ok(Compact {
        kid,
        typ,
        payload,
        signing_input_len: h.len() + 1 + p.len(),
        signature: Signature::from_bytes(&sig),
    })
}

impl Compact {
    /// `token` must be the string this was parsed from. `verify_strict` also refuses
    /// small-order keys and non-canonical signatures, so one message has one valid signature.
    pub fn verify(&self, token: &str, key: &VerifyingKey) -> bool {
        let input = &token.as_bytes()[..self.signing_input_len];
        key.verify_strict(input, &self.signature).is_ok()
    }
}

pub fn sign(key: &SigningKey, typ: &str, kid: &str, payload: &Value) -> String {
    sign_bytes(key, typ, kid, payload.to_string().as_bytes())
}

/// As [`sign`], over payload bytes taken as they are: tests use it to sign payloads a
/// `Value` cannot hold, such as one with a repeated key.
pub fn sign_bytes(key: &SigningKey, typ: &str, kid: &str, payload: &[u8]) -> String {
    let header = serde_json::json!({"alg": "EdDSA", "typ": typ, "kid": kid});
    let mut out = String::with_capacity(512);
    URL_SAFE_NO_PAD.encode_string(header.to_string(), &mut out);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut out);
    let sig = key.sign(out.as_bytes());
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(sig.to_bytes(), &mut out);
    out
}

fn decode_b64(part: &str, what: &str) -> Result<Vec<u8>, String> {
    // The base64 engine refuses padding and non-canonical trailing bits, so each token has one
    // spelling and a flipped trailing bit cannot make a second valid token.
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| format!("JWS {what} is not base64url: {e}"))
}

fn decode_json(part: &str, what: &str) -> Result<Value, String> {
    let bytes = decode_b64(part, what)?;
    crate::json::parse_strict(&bytes).map_err(|e| format!("JWS {what} is not valid JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TYP: &str = "seb-cert+jws";

    fn forge(header: Value, payload: Value, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string()),
            URL_SAFE_NO_PAD.encode(sig)
        )
    }

    #[test]
    fn signs_and_verifies() {
        let key = crate::cert::keys::generate();
        let t = sign(&key, TYP, "k1", &json!({"a": 1}));
        let c = parse(&t, TYP).unwrap();
        assert_eq!(c.kid, "k1");
        assert_eq!(
            serde_json::from_slice::<Value>(&c.payload).unwrap(),
            json!({"a": 1})
        );
        assert!(c.verify(&t, &key.verifying_key()));
        assert!(!c.verify(&t, &crate::cert::keys::generate().verifying_key()));
    }

    #[test]
    fn refuses_other_algorithms() {
        for alg in ["none", "HS256", "RS256", "ES256", "eddsa", "Ed25519"] {
            let t = forge(
                json!({"alg": alg, "typ": TYP, "kid": "k"}),
                json!({}),
                &[0; 64],
            );
            let e = parse(&t, TYP).unwrap_err();
            assert!(e.contains("alg"), "{alg}: {e}");
        }
        let t = forge(json!({"typ": TYP, "kid": "k"}), json!({}), &[0; 64]);
        assert!(parse(&t, TYP).is_err());
        // alg:none tokens usually carry an empty signature part.
        let t = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"seb-cert+jws","kid":"k"}"#),
            URL_SAFE_NO_PAD.encode("{}")
        );
        assert!(parse(&t, TYP).is_err());
    }

    #[test]
    fn refuses_unknown_header_members_wrong_typ_and_shapes() {
        let t = forge(
            json!({"alg": "EdDSA", "typ": TYP, "kid": "k", "crit": ["exp"]}),
            json!({}),
            &[0; 64],
        );
        assert!(parse(&t, TYP).unwrap_err().contains("crit"));
        let t = forge(
            json!({"alg": "EdDSA", "typ": "JWT", "kid": "k"}),
            json!({}),
            &[0; 64],
        );
        assert!(parse(&t, TYP).unwrap_err().contains("typ"));
        // typ is compared exactly: another case is another spelling, refused.
        let t = forge(
            json!({"alg": "EdDSA", "typ": TYP.to_ascii_uppercase(), "kid": "k"}),
            json!({}),
            &[0; 64],
        );
        assert!(parse(&t, TYP).unwrap_err().contains("typ"));
        assert!(parse("a.b", TYP).is_err());
        assert!(parse("a.b.c.d", TYP).is_err());
        assert!(parse(&"a".repeat(MAX_TOKEN_LEN + 1), TYP).is_err());
    }

    #[test]
    fn refuses_duplicate_header_keys() {
        let h = r#"{"alg":"none","alg":"EdDSA","typ":"seb-cert+jws","kid":"k"}"#;
        let t = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(h),
            URL_SAFE_NO_PAD.encode("{}"),
            URL_SAFE_NO_PAD.encode([0u8; 64])
        );
        assert!(parse(&t, TYP).unwrap_err().contains("duplicate"));
    }

    #[test]
    fn edited_payload_or_padding_fails() {
        let key = crate::cert::keys::generate();
        let t = sign(&key, TYP, "k1", &json!({"n": 1}));
        let parts: Vec<&str> = t.split('.').collect();
        let edited = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(r#"{"n":2}"#),
            parts[2]
        );
        let c = parse(&edited, TYP).unwrap();
        assert!(!c.verify(&edited, &key.verifying_key()));
        let padded = format!("{t}=");
        assert!(parse(&padded, TYP).is_err());
    }
}
