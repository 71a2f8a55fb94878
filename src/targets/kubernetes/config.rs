//! `[targets.kubernetes]`: a kube-apiserver and the identities the broker acts as there.

use crate::secret::SecretSource;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A kube-apiserver. The broker calls it with its own credential and impersonates the
/// configured users, so RBAC can limit the broker's `impersonate` to exactly these names.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [targets.kubernetes] table")]
pub struct KubeTargetConfig {
    /// `https://host:port` of the apiserver.
    pub apiserver: String,
    /// CA bundle that signed the apiserver's certificate (in a pod:
    /// /var/run/secrets/kubernetes.io/serviceaccount/ca.crt).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The broker's own bearer token (in a pod, the projected service account token file,
    /// which is re-read on every request because the kubelet rotates it).
    pub credential: SecretSource,
    /// Who admitted mutations run as.
    pub execution: ImpersonationConfig,
    /// Who reads (get, list, watch, discovery) run as.
    pub read: ImpersonationConfig,
    /// Instead of impersonating `execution`, run admitted mutations with a short-lived token
    /// of this service account, minted per certificate with the TokenRequest API.
    #[serde(default)]
    pub token_request: Option<TokenRequestConfig>,
    /// As `aws.require_audience`.
    #[serde(default = "yes")]
    pub require_audience: bool,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a table { namespace, service_account, audience, expiration_seconds }")]
pub struct TokenRequestConfig {
    pub namespace: String,
    pub service_account: String,
    pub audience: String,
    #[serde(default = "default_token_seconds")]
    pub expiration_seconds: u32,
}

fn default_token_seconds() -> u32 {
    600
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a table { user, groups }")]
pub struct ImpersonationConfig {
    pub user: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

impl KubeTargetConfig {
    /// Errors are `(field path, message)`, `at` being this table's path
    /// (`targets[0].kubernetes`).
    pub fn validate(&self, at: &str) -> Result<(), (String, String)> {
        let uri: http::Uri = self
            .apiserver
            .parse()
            .map_err(|e| (format!("{at}.apiserver"), format!("invalid URL: {e}")))?;
        // client-go sends no bearer token over plain HTTP, and neither does the broker.
        if uri.scheme_str() != Some("https") || uri.host().is_none() || uri.query().is_some() {
            return Err((
                format!("{at}.apiserver"),
                "must be an https:// URL with a host and no query".into(),
            ));
        }
        self.credential.validate(&format!("{at}.credential"))?;
        if !self.credential.prefix.is_empty() {
            return Err((
                format!("{at}.credential.prefix"),
                "must be empty: the token is sent as \"Bearer <token>\"".into(),
            ));
        }
        if let Some(t) = &self.token_request {
            let tat = format!("{at}.token_request");
            for (f, v) in [
                ("namespace", &t.namespace),
                ("service_account", &t.service_account),
            ] {
                if v.is_empty() || v.contains('/') {
                    return Err((
                        format!("{tat}.{f}"),
                        "must be a non-empty name without '/'".into(),
                    ));
                }
            }
            // Often a URL (the apiserver's issuer), so '/' is fine here.
            if t.audience.is_empty() {
                return Err((format!("{tat}.audience"), "must not be empty".into()));
            }
            // The apiserver's minimum is 10 minutes; longer tokens outlive the certificate's
            // purpose.
            if !(600..=3600).contains(&t.expiration_seconds) {
                return Err((
                    format!("{tat}.expiration_seconds"),
                    "must be 600 to 3600".into(),
                ));
            }
        }
        for (name, who) in [("execution", &self.execution), ("read", &self.read)] {
            if who.user.is_empty() || who.user.starts_with("system:") {
                return Err((
                    format!("{at}.{name}.user"),
                    "must be a non-empty name outside the system: namespace".into(),
                ));
            }
            for (i, g) in who.groups.iter().enumerate() {
                if g.is_empty() || g == "system:masters" {
                    return Err((
                        format!("{at}.{name}.groups[{i}]"),
                        "must be a non-empty group other than system:masters".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Relative paths are relative to the config file's directory.
    /// Every secret this table names.
    pub fn secret_sources(&mut self) -> Vec<&mut SecretSource> {
        vec![&mut self.credential]
    }

    pub fn resolve(&mut self, base: &Path) {
        if let Some(ca) = &mut self.ca {
            if ca.is_relative() {
                *ca = base.join(&*ca);
            }
        }
        self.credential.resolve(base);
    }
}

fn yes() -> bool {
    true
}
