//! `[targets.http]`: an HTTP API whose credential the broker holds.

use crate::secret::SecretSource;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [targets.http] table")]
pub struct HttpTargetConfig {
    /// Base URL; request paths are appended to its path.
    pub upstream: String,
    /// CA bundle for an HTTPS upstream with a private CA.
    #[serde(default)]
    pub upstream_ca: Option<PathBuf>,
    /// The credential the broker holds for this API, added to admitted requests.
    #[serde(default)]
    pub credential: Option<CredentialConfig>,
    /// Requests that pass without a certificate.
    #[serde(default)]
    pub reads: Vec<ReadRule>,
    #[serde(default)]
    pub read_credential: Option<CredentialConfig>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a table { header, value_env or value_file, prefix }")]
pub struct CredentialConfig {
    pub header: String,
    #[serde(flatten)]
    pub value: SecretSource,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a table { methods, path_prefix }")]
pub struct ReadRule {
    pub methods: Vec<String>,
    pub path_prefix: String,
}

impl HttpTargetConfig {
    /// Errors are `(field path, message)`, `at` being this table's path (`targets[0].http`).
    pub fn validate(&self, at: &str) -> Result<(), (String, String)> {
        let uri: http::Uri = self
            .upstream
            .parse()
            .map_err(|e| (format!("{at}.upstream"), format!("invalid URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err((
                    format!("{at}.upstream"),
                    "must be an http:// or https:// URL".into(),
                ))
            }
        }
        if uri.host().is_none() || uri.query().is_some() {
            return Err((
                format!("{at}.upstream"),
                "needs a host and no query string".into(),
            ));
        }
        for (f, c) in [
            ("credential", &self.credential),
            ("read_credential", &self.read_credential),
        ] {
            let Some(c) = c else { continue };
            http::HeaderName::from_bytes(c.header.as_bytes()).map_err(|_| {
                (
                    format!("{at}.{f}.header"),
                    format!("{:?} is not a valid header name", c.header),
                )
            })?;
            c.value.validate(&format!("{at}.{f}"))?;
        }
        for (i, r) in self.reads.iter().enumerate() {
            if r.methods.is_empty() {
                return Err((
                    format!("{at}.reads[{i}].methods"),
                    "must name at least one method".into(),
                ));
            }
            for m in &r.methods {
                if http::Method::from_bytes(m.as_bytes()).is_err() || m.to_ascii_uppercase() != *m {
                    return Err((
                        format!("{at}.reads[{i}].methods"),
                        format!("{m:?} is not an upper-case HTTP method"),
                    ));
                }
            }
            if !r.path_prefix.starts_with('/') {
                return Err((
                    format!("{at}.reads[{i}].path_prefix"),
                    "must start with '/'".into(),
                ));
            }
        }
        Ok(())
    }

    /// Relative paths are relative to the config file's directory.
    /// Every secret this table names.
    pub fn secret_sources(&mut self) -> Vec<&mut SecretSource> {
        [&mut self.credential, &mut self.read_credential]
            .into_iter()
            .flatten()
            .map(|c| &mut c.value)
            .collect()
    }

    pub fn resolve(&mut self, base: &Path) {
        if let Some(ca) = &mut self.upstream_ca {
            if ca.is_relative() {
                *ca = base.join(&*ca);
            }
        }
        for c in [&mut self.credential, &mut self.read_credential]
            .into_iter()
            .flatten()
        {
            c.value.resolve(base);
        }
    }
}
