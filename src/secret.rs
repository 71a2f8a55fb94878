//! Where a secret the broker holds comes from (an environment variable or a file), and reading
//! it. Its own module because both the top-level config and every target's config use it, and
//! neither may depend on the other for it.

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(
    expecting = "a secret source: { value_env = \"VARIABLE\" } or { value_file = \"PATH\" }, with an optional prefix"
)]
pub struct SecretSource {
    #[serde(default)]
    pub value_env: Option<String>,
    #[serde(default)]
    pub value_file: Option<PathBuf>,
    /// Prepended to the secret, e.g. "Bearer ".
    #[serde(default)]
    pub prefix: String,
    /// Set only by `seb check`, which never sends anything upstream: the secret is not read
    /// (a CI job has no business holding the broker's upstream credentials).
    #[serde(skip)]
    offline: bool,
}

impl SecretSource {
    /// Errors are `(field path, message)`, `at` being this source's path.
    pub fn validate(&self, at: &str) -> Result<(), (String, String)> {
        match (&self.value_env, &self.value_file) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err((
                at.to_string(),
                "set exactly one of value_env or value_file".into(),
            )),
        }
    }

    /// A relative `value_file` is relative to the config file's directory, not to wherever
    /// the broker happens to be started.
    pub fn resolve(&mut self, base: &Path) {
        if let Some(p) = &mut self.value_file {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// For `seb check`: this secret will not be read, and nothing is sent with it.
    pub fn set_offline(&mut self) {
        self.offline = true;
    }

    /// Reads the secret now. A missing secret stops the broker from starting: it would
    /// otherwise forward requests without the credential the upstream expects.
    pub fn load(&self) -> anyhow::Result<String> {
        if self.offline {
            return Ok(format!("{}seb-check-never-sends-this", self.prefix));
        }
        let raw = match (&self.value_env, &self.value_file) {
            (Some(var), _) => std::env::var(var)
                .map_err(|_| anyhow::anyhow!("environment variable {var} is not set"))?,
            (_, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            _ => anyhow::bail!("no secret source"),
        };
        let secret = raw.trim();
        if secret.is_empty() {
            anyhow::bail!("secret is empty");
        }
        Ok(format!("{}{}", self.prefix, secret))
    }
}
