//! The identity a request runs under in the cluster: the broker's own credential, impersonating
//! the configured user and groups. For an admitted mutation the agent's subject and the
//! certificate id travel as impersonated "extra" values, so the cluster's own audit log names
//! the certificate behind every change. The issuer travels too: a certificate id is unique per
//! issuer only, and `seb reconcile` matches the cluster's events to decisions on the pair.

use super::super::Identity;
use super::config::{ImpersonationConfig, TokenRequestConfig};
use crate::cert::Certificate;
use crate::denial::{Denial, Reason};
use crate::secret::SecretSource;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use serde_json::{json, Value};
use std::path::PathBuf;

/// Where the broker's token comes from. A file is re-read each time: the kubelet rotates
/// projected service account tokens in place.
pub enum Credential {
    Fixed(String),
    File(PathBuf),
}

impl Credential {
    pub fn from_config(s: &SecretSource) -> anyhow::Result<Credential> {
        // Load once now so a missing secret stops start-up.
        let now = s.load()?;
        Ok(match &s.value_file {
            Some(p) => Credential::File(p.clone()),
            None => Credential::Fixed(now),
        })
    }

    pub fn bearer(&self) -> Result<HeaderValue, Denial> {
        let token = match self {
            Credential::Fixed(t) => t.clone(),
            Credential::File(p) => std::fs::read_to_string(p)
                .map(|t| t.trim().to_string())
                .ok()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    Denial::new(
                        Reason::IdentityUnavailable,
                        format!("the broker's token file {} cannot be read", p.display()),
                    )
                })?,
        };
        let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            Denial::new(
                Reason::IdentityUnavailable,
                "the broker's token is not a valid header value",
            )
        })?;
        v.set_sensitive(true);
        Ok(v)
    }
}

pub struct Impersonation {
    pub user: String,
    pub groups: Vec<String>,
}

impl From<&ImpersonationConfig> for Impersonation {
    fn from(c: &ImpersonationConfig) -> Self {
        Impersonation {
            user: c.user.clone(),
            groups: c.groups.clone(),
        }
    }
}

/// The identity for an admitted mutation (`Some(cert)`) or a read.
pub fn identity(
    credential: &Credential,
    who: &Impersonation,
    cert: Option<&Certificate>,
) -> Result<Identity, Denial> {
    let mut audit = json!({
        "kind": "impersonation",
        "user": who.user,
        "groups": who.groups,
    });
    if let Some(c) = cert {
        audit["extra"] = json!({
            "seb-subject": [c.claims.sub],
            "seb-cert-id": [c.claims.jti],
            "seb-issuer": [c.claims.iss],
        });
    }
    let mut headers = vec![(AUTHORIZATION, credential.bearer()?)];
    headers.extend(impersonation_headers(&audit)?);
    Ok(Identity {
        audit,
        headers,
        aws: None,
    })
}

/// TokenRequest mode: admitted mutations run with a short-lived token of a per-target
/// service account instead of impersonation, minted once per certificate.
pub struct TokenMinter {
    pub namespace: String,
    pub service_account: String,
    pub audience: String,
    pub expiration_seconds: u32,
    /// Certificate id to bearer token. Entries expire a minute before the token does, so a
    /// cached token always has time left for the request it is used for.
    pub cache: moka::sync::Cache<String, HeaderValue>,
}

impl TokenMinter {
    pub fn new(c: &TokenRequestConfig) -> TokenMinter {
        let ttl =
            std::time::Duration::from_secs(u64::from(c.expiration_seconds.saturating_sub(60)));
        TokenMinter {
            namespace: c.namespace.clone(),
            service_account: c.service_account.clone(),
            audience: c.audience.clone(),
            expiration_seconds: c.expiration_seconds,
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        }
    }

    pub fn path(&self) -> String {
        format!(
            "/api/v1/namespaces/{}/serviceaccounts/{}/token",
            self.namespace, self.service_account
        )
    }

    pub fn request_body(&self) -> Value {
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [self.audience], "expirationSeconds": self.expiration_seconds},
        })
    }

    /// The identity for `cert` once its token is known.
    pub fn identity(&self, cert: &Certificate, token: HeaderValue) -> Identity {
        Identity {
            audit: json!({
                "kind": "token-request",
                "user": format!("system:serviceaccount:{}:{}", self.namespace, self.service_account),
                "audience": self.audience,
                "expirationSeconds": self.expiration_seconds,
                "cert_id": cert.claims.jti,
            }),
            headers: vec![(AUTHORIZATION, token)],
            aws: None,
        }
    }
}

/// The token from a TokenRequest response, as a sensitive header value.
pub fn minted_token(body: &[u8]) -> Result<HeaderValue, Denial> {
    let bad = |m: &str| {
        Denial::new(
            Reason::IdentityUnavailable,
            format!("TokenRequest answer: {m}"),
        )
    };
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("not JSON"))?;
    let token = v
        .pointer("/status/token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("no status.token"))?;
    let mut h = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| bad("token is not a header value"))?;
    h.set_sensitive(true);
    Ok(h)
}

/// The `Impersonate-*` headers for an identity, built from its audit value so the record and
/// the request cannot disagree.
fn impersonation_headers(audit: &Value) -> Result<Vec<(HeaderName, HeaderValue)>, Denial> {
    let bad = |what: &str| {
        Denial::new(
            Reason::IdentityUnavailable,
            format!("impersonation {what} is not a valid header value"),
        )
    };
    let mut out = Vec::new();
    let user = audit["user"].as_str().ok_or_else(|| bad("user"))?;
    out.push((
        HeaderName::from_static("impersonate-user"),
        HeaderValue::from_str(user).map_err(|_| bad("user"))?,
    ));
    for g in audit["groups"].as_array().into_iter().flatten() {
        let g = g.as_str().ok_or_else(|| bad("group"))?;
        out.push((
            HeaderName::from_static("impersonate-group"),
            HeaderValue::from_str(g).map_err(|_| bad("group"))?,
        ));
    }
    if let Some(extra) = audit.get("extra").and_then(Value::as_object) {
        for (k, values) in extra {
            let name = HeaderName::from_bytes(format!("impersonate-extra-{k}").as_bytes())
                .map_err(|_| bad("extra key"))?;
            for v in values.as_array().into_iter().flatten() {
                let v = v.as_str().ok_or_else(|| bad("extra"))?;
                out.push((
                    name.clone(),
                    HeaderValue::from_str(v).map_err(|_| bad("extra"))?,
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_the_audit_value() {
        let cred = Credential::Fixed("broker-token".into());
        let who = Impersonation {
            user: "seb:exec:deployer".into(),
            groups: vec!["seb:exec".into(), "seb:shop".into()],
        };
        let id = identity(&cred, &who, None).unwrap();
        assert_eq!(id.headers[0].1, "Bearer broker-token");
        assert_eq!(impersonation_headers(&id.audit).unwrap(), id.headers[1..]);
        let shown: Vec<(String, String)> = id.headers[1..]
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            shown,
            vec![
                ("impersonate-user".into(), "seb:exec:deployer".into()),
                ("impersonate-group".into(), "seb:exec".into()),
                ("impersonate-group".into(), "seb:shop".into()),
            ]
        );
        let mut audit = id.audit.clone();
        audit["extra"] = json!({"seb-subject": ["agent:a"], "seb-cert-id": ["c1"]});
        let h = impersonation_headers(&audit).unwrap();
        assert!(h
            .iter()
            .any(|(n, v)| n == "impersonate-extra-seb-cert-id" && v == "c1"));
        audit["user"] = json!("bad\nuser");
        assert!(impersonation_headers(&audit).is_err());
    }

    #[test]
    fn token_requests() {
        let m = TokenMinter::new(&TokenRequestConfig {
            namespace: "shop".into(),
            service_account: "deployer".into(),
            audience: "https://kubernetes.default.svc".into(),
            expiration_seconds: 600,
        });
        assert_eq!(
            m.path(),
            "/api/v1/namespaces/shop/serviceaccounts/deployer/token"
        );
        assert_eq!(m.request_body()["spec"]["expirationSeconds"], 600);
        let t = minted_token(br#"{"status":{"token":"abc","expirationTimestamp":"x"}}"#).unwrap();
        assert_eq!(t, "Bearer abc");
        assert!(t.is_sensitive());
        for bad in [&b"{}"[..], b"not json", br#"{"status":{"token":""}}"#] {
            assert_eq!(
                minted_token(bad).unwrap_err().reason,
                Reason::IdentityUnavailable
            );
        }
    }

    #[test]
    fn unreadable_token_file_is_identity_unavailable() {
        let c = Credential::File("/nonexistent/seb/token".into());
        assert_eq!(c.bearer().unwrap_err().reason, Reason::IdentityUnavailable);
    }
}
