//! `[[issuers]]`: the signers whose certificates the broker trusts, each by a public key file
//! or by a JWKS URL the broker polls (a signer's `/.well-known/jwks.json`), so a signer can
//! rotate keys without a broker restart.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an [[issuers]] table with name and public_key or jwks_url")]
pub struct IssuerConfig {
    /// The `iss` claim this key signs for.
    pub name: String,
    #[serde(default)]
    pub public_key: Option<PathBuf>,
    /// The issuer's JWK Set; every key in it is trusted for this `iss` only.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// CA bundle for an https `jwks_url` on a private CA.
    #[serde(default)]
    pub jwks_ca: Option<PathBuf>,
    #[serde(default = "default_refresh", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub jwks_refresh: Duration,
    /// A set not fetched for this long is withdrawn: the issuer's certificates are refused
    /// until a fetch succeeds again.
    #[serde(default = "default_max_staleness", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub jwks_max_staleness: Duration,
}

fn default_refresh() -> Duration {
    Duration::from_secs(30)
}

fn default_max_staleness() -> Duration {
    Duration::from_secs(300)
}

impl IssuerConfig {
    pub(super) fn resolve(&mut self, base: &Path) {
        for p in [&mut self.public_key, &mut self.jwks_ca]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// `(field suffix, message)`.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, m: &str| Err((f.to_string(), m.to_string()));
        if self.name.is_empty() {
            return err(".name", "must not be empty");
        }
        match (&self.public_key, &self.jwks_url) {
            (None, None) => return err("", "needs public_key or jwks_url"),
            (Some(_), Some(_)) => return err("", "set public_key or jwks_url, not both"),
            (None, Some(u)) if !(u.starts_with("https://") || u.starts_with("http://")) => {
                return err(".jwks_url", "must be an http:// or https:// URL")
            }
            _ => {}
        }
        if self.jwks_refresh.is_zero() {
            return err(".jwks_refresh", "must be greater than zero");
        }
        if self.jwks_max_staleness < self.jwks_refresh {
            return err(".jwks_max_staleness", "must be at least jwks_refresh");
        }
        Ok(())
    }
}
