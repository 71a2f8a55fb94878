//! The `[state]` table: where use counts and revocation documents live. Its own module, like
//! each target's config, so that `config` composes it and `state` never names `config`.

use crate::secret::SecretSource;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the broker keeps across restarts besides the audit log (which is where a lone
/// broker's use counts are rebuilt from), and, with `backend = "etcd"`, what its replicas
/// share.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [state] table")]
pub struct StateConfig {
    /// Default: the audit log's directory.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default)]
    pub backend: Backend,
    /// Required with `backend = "etcd"`, refused otherwise.
    #[serde(default)]
    pub etcd: Option<EtcdConfig>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[serde(expecting = "\"memory\" or \"etcd\"")]
pub enum Backend {
    /// One broker: counts in memory, rebuilt from the audit log at start.
    #[default]
    Memory,
    /// Replicas: counts and revocation documents in etcd (v3 API).
    Etcd,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [state.etcd] table")]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, one per member.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Or a file holding them, one per line (a key of a Kubernetes Secret: where the cluster's
    /// members are is not for every reader of the ConfigMap). Read when the broker connects.
    #[serde(default)]
    pub endpoints_file: Option<PathBuf>,
    /// Every key seb writes starts with it; replicas that share counts share the prefix.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// CA that signed the members' serving certificates (https endpoints). Without it the
    /// system roots are used.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for members that require mTLS; both or neither.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// etcd user (auth enabled); with `password`.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// Time to open a connection to a member.
    #[serde(default = "default_dial_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub dial_timeout: Duration,
    /// Time one state operation (a use, a revocation write) may take before the request is
    /// refused with `state_unavailable`.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
}

impl EtcdConfig {
    fn check_endpoints(&self, list: &[String], field: &str) -> Result<(), (String, String)> {
        let tls = self.ca.is_some() || self.cert.is_some();
        for (i, e) in list.iter().enumerate() {
            let at = format!("{field}[{i}]");
            let Some(rest) = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
            else {
                return Err((at, "must be an http:// or https:// URL".into()));
            };
            if rest.is_empty() || rest.contains('/') {
                return Err((at, "must be scheme://host:port, without a path".into()));
            }
            // The client refuses TLS options on a plain endpoint; a mix would silently send
            // some of the traffic in clear.
            if tls && e.starts_with("http://") {
                return Err((
                    at,
                    "is plain http while ca or cert is set: use https://".into(),
                ));
            }
        }
        Ok(())
    }

    /// The members: `endpoints`, or the lines of `endpoints_file` (blank lines and `#`
    /// comments skipped), checked as the config's own list is.
    pub fn member_urls(&self) -> anyhow::Result<Vec<String>> {
        let Some(file) = &self.endpoints_file else {
            return Ok(self.endpoints.clone());
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("state.etcd.endpoints_file {}: {e}", file.display()))?;
        let list: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        if list.is_empty() {
            anyhow::bail!(
                "state.etcd.endpoints_file {}: no endpoint in it",
                file.display()
            );
        }
        self.check_endpoints(&list, "endpoints")
            .map_err(|(at, m)| {
                anyhow::anyhow!("state.etcd.endpoints_file {}: {at} {m}", file.display())
            })?;
        Ok(list)
    }
}

fn default_prefix() -> String {
    "/seb/".into()
}

fn default_dial_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(2)
}

impl StateConfig {
    /// Errors are `(field path, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, m: &str| Err((f.to_string(), m.to_string()));
        let etcd = match (self.backend, &self.etcd) {
            (Backend::Memory, None) => return Ok(()),
            (Backend::Memory, Some(_)) => {
                return err(
                    "state.etcd",
                    "is only read with backend = \"etcd\" (the backend is \"memory\")",
                )
            }
            (Backend::Etcd, None) => {
                return err("state.etcd", "missing: backend = \"etcd\" needs endpoints")
            }
            (Backend::Etcd, Some(e)) => e,
        };
        match (&etcd.endpoints_file, etcd.endpoints.is_empty()) {
            (Some(_), false) => {
                return err(
                    "state.etcd.endpoints_file",
                    "endpoints and endpoints_file: give one or the other",
                )
            }
            (None, true) => return err("state.etcd.endpoints", "at least one endpoint is needed"),
            (Some(_), true) => {}
            (None, false) => etcd.check_endpoints(&etcd.endpoints, "state.etcd.endpoints")?,
        }
        if etcd.prefix.is_empty() || !etcd.prefix.ends_with('/') {
            return err("state.etcd.prefix", "must be non-empty and end with '/'");
        }
        if etcd.cert.is_some() != etcd.key.is_some() {
            return err("state.etcd.cert", "cert and key go together");
        }
        match (&etcd.username, &etcd.password) {
            (Some(u), Some(p)) if !u.is_empty() => p.validate("state.etcd.password")?,
            (None, None) => {}
            _ => return err("state.etcd.username", "username and password go together"),
        }
        for (f, d) in [
            ("state.etcd.dial_timeout", etcd.dial_timeout),
            ("state.etcd.request_timeout", etcd.request_timeout),
        ] {
            if d.is_zero() || d > Duration::from_secs(60) {
                return err(f, "must be between 1ms and 60s");
            }
        }
        Ok(())
    }

    pub fn resolve(&mut self, base: &Path) {
        if let Some(f) = self.etcd.as_mut().and_then(|e| e.endpoints_file.as_mut()) {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(d) = &mut self.dir {
            fix(d);
        }
        if let Some(e) = &mut self.etcd {
            for p in [&mut e.ca, &mut e.cert, &mut e.key].into_iter().flatten() {
                fix(p);
            }
            if let Some(s) = &mut e.password {
                s.resolve(base);
            }
        }
    }
}
