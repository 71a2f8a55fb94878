//! Certificate v1 claims. Unknown members are refused everywhere: a member the broker does not
//! understand may be a restriction the signer meant, and ignoring it would widen the grant.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// The broker targets (`[[targets]] name`) this certificate is for (RFC 7519 `aud`), so
    /// that a certificate made for staging is not admitted by a prod listener trusting the
    /// same signer. Optional in the token; which targets demand it is the broker's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    pub seb: SebClaims,
}

/// RFC 7519 `aud`: one string or an array of strings. Kept as the list of names; an empty
/// array or an empty name is refused (it names no target, and an empty `aud` must not read as
/// "no restriction").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audience(pub Vec<String>);

impl Audience {
    pub fn contains(&self, target: &str) -> bool {
        self.0.iter().any(|a| a == target)
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Audience, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a target name or an array of target names")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<String>, E> {
                Ok(vec![v.to_string()])
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<String>, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    out.push(name);
                }
                Ok(out)
            }
        }
        let names = d.deserialize_any(V)?;
        if names.is_empty() || names.iter().any(String::is_empty) {
            return Err(serde::de::Error::custom(
                "aud must name at least one target, and no name may be empty",
            ));
        }
        Ok(Audience(names))
    }
}

impl Serialize for Audience {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Confirmation {
    /// base64url SHA-256 of the agent's client certificate DER (RFC 8705).
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(
    rename_all = "lowercase",
    expecting = "\"http\", \"aws\" or \"kubernetes\""
)]
pub enum TargetKind {
    Aws,
    Kubernetes,
    Http,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Aws => "aws",
            TargetKind::Kubernetes => "kubernetes",
            TargetKind::Http => "http",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SebClaims {
    pub v: u32,
    pub action: String,
    pub policy: String,
    pub policy_epoch: u64,
    pub revocation_epoch: u64,
    #[serde(default = "one")]
    pub max_uses: u32,
    pub target: TargetKind,
    /// Target-specific; each target parses it into its own typed contract.
    pub request: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precondition: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Value>,
}

fn one() -> u32 {
    1
}

/// What the request body may be. A certificate without `body` admits only an empty body.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum BodyRule {
    Sha256(Sha256Rule),
    Constraints(ConstraintsRule),
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Sha256Rule {
    pub sha256: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConstraintsRule {
    pub constraints: serde_json::Map<String, Value>,
    pub others: Others,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Others {
    Deny,
    Allow,
}

/// Highest `max_uses` a certificate may ask for; a certificate is a permission for one change,
/// not a session.
pub const MAX_USES_LIMIT: u32 = 1000;

impl Claims {
    /// As [`Claims::from_json`], for a payload held as a value (`seb cert issue` checks what
    /// it is about to sign). It goes through the same bytes path, so the issuing check and the
    /// broker cannot disagree about a payload.
    pub fn from_payload(payload: Value) -> Result<Claims, String> {
        Claims::from_json(&serde_json::to_vec(&payload).map_err(|e| format!("payload: {e}"))?)
    }

    /// Parses and checks what a well-formed v1 payload must satisfy on its own. The caller has
    /// refused duplicate keys already ([`crate::json::check_strict`]): serde keeps the last of
    /// two.
    pub fn from_json(bytes: &[u8]) -> Result<Claims, String> {
        let claims: Claims = crate::json::from_checked(bytes)?;
        if claims.seb.v != 1 {
            return Err(format!(
                "seb.v is {}, this broker reads version 1",
                claims.seb.v
            ));
        }
        if claims.jti.is_empty() || claims.jti.len() > 128 {
            return Err("jti must be 1 to 128 characters".into());
        }
        if claims.sub.is_empty() || claims.iss.is_empty() {
            return Err("iss and sub must not be empty".into());
        }
        if claims.exp <= claims.nbf {
            return Err(format!(
                "exp {} is not after nbf {}",
                claims.exp, claims.nbf
            ));
        }
        if claims.seb.max_uses == 0 || claims.seb.max_uses > MAX_USES_LIMIT {
            return Err(format!("seb.max_uses must be 1 to {MAX_USES_LIMIT}"));
        }
        if let Some(BodyRule::Sha256(Sha256Rule { sha256 })) = &claims.seb.body {
            if sha256.len() != 64
                || !sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err("seb.body.sha256 must be 64 lowercase hex digits".into());
            }
        }
        if let Some(ev) = &claims.seb.evidence {
            if !ev.is_object() {
                return Err("seb.evidence must be an object".into());
            }
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub fn sample() -> Value {
        json!({
            "iss": "signer", "sub": "agent:a", "jti": "c1", "iat": 100, "nbf": 100, "exp": 400,
            "seb": {"v": 1, "action": "deploy", "policy": "p", "policy_epoch": 1, "revocation_epoch": 1,
                    "target": "http", "request": {"upstream": "u", "method": "POST", "path": "/x"},
                    "body": {"constraints": {"/a": {"eq": 1}}, "others": "deny"}}
        })
    }

    #[test]
    fn audience_is_a_name_or_a_list_of_names() {
        let with = |aud: Value| {
            let mut p = sample();
            p["aud"] = aud;
            both(p)
        };
        assert_eq!(
            with(json!("prod")).unwrap().aud,
            Some(Audience(vec!["prod".into()]))
        );
        let many = with(json!(["prod", "prod-eu"])).unwrap().aud.unwrap();
        assert!(many.contains("prod-eu") && !many.contains("prod-e"));
        for bad in [
            json!([]),
            json!(""),
            json!(["prod", ""]),
            json!(1),
            json!({"a": 1}),
            json!([1]),
        ] {
            assert!(with(bad.clone()).is_err(), "{bad}");
        }
        assert_eq!(Claims::from_payload(sample()).unwrap().aud, None);
    }

    #[test]
    fn parses_v1_and_defaults_max_uses() {
        let c = Claims::from_payload(sample()).unwrap();
        assert_eq!(c.seb.max_uses, 1);
        assert!(matches!(&c.seb.body, Some(BodyRule::Constraints(r)) if r.others == Others::Deny));
    }

    /// The broker reads claims from bytes and the `seb cert issue` check reads them from a
    /// value: both must refuse the same payloads.
    fn both(v: Value) -> Result<Claims, String> {
        let from_json = Claims::from_json(&serde_json::to_vec(&v).unwrap());
        let from_value = Claims::from_payload(v);
        assert_eq!(
            from_json.is_ok(),
            from_value.is_ok(),
            "{from_json:?} vs {from_value:?}"
        );
        from_json
    }

    #[test]
    fn refuses_unknown_members_and_bad_values() {
        // `aud` is a known member now (see audience_is_a_name_or_a_list_of_names); other
        // registered JWT claims the broker does not implement are still refused.
        for unknown in ["azp", "scope", "act"] {
            let mut v = sample();
            v[unknown] = json!("x");
            assert!(both(v).unwrap_err().contains(unknown), "{unknown}");
        }
        let mut v = sample();
        v["seb"]["scope"] = json!("*");
        assert!(both(v).unwrap_err().contains("scope"));
        let mut v = sample();
        v["seb"]["v"] = json!(2);
        assert!(both(v).is_err());
        let mut v = sample();
        v["exp"] = json!(100);
        assert!(both(v).is_err());
        let mut v = sample();
        v["exp"] = json!(400.5);
        assert!(both(v).is_err());
        let mut v = sample();
        v["seb"]["max_uses"] = json!(0);
        assert!(both(v).is_err());
        let mut v = sample();
        v["seb"]["body"] = json!({"sha256": "ABC"});
        assert!(both(v).is_err());
        let mut v = sample();
        v["seb"]["body"] = json!({"constraints": {}, "others": "maybe"});
        assert!(both(v).is_err());
        let mut v = sample();
        v["seb"]["body"] = json!({"sha256": "0".repeat(64), "constraints": {}});
        assert!(both(v).is_err());
        let mut v = sample();
        v["seb"]["target"] = json!("ftp");
        assert!(both(v).is_err());
    }
}
