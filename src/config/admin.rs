//! `[admin]`: the admin listener and who may use it. Health and readiness answer anyone (they
//! are what probes and load balancers ask); everything that reveals or changes state (the
//! audit stream, metrics, revocation pushes, reload) needs the admin token when one is set.
//! Off loopback a token is required: an admin port on a pod or host network without one would
//! let anyone who reaches it read every audit record live.

use crate::secret::SecretSource;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an [admin] table")]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// The bearer token (`Authorization: Bearer TOKEN`) for every admin endpoint but
    /// `/healthz` and `/readyz`. Required when `listen` is not a loopback address.
    #[serde(default)]
    pub token: Option<SecretSource>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            token: None,
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

impl AdminConfig {
    /// Errors are `(field path, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match &self.token {
            Some(t) => t.validate("admin.token"),
            None if !self.listen.ip().is_loopback() => Err((
                "admin.token".into(),
                format!(
                    "required: admin.listen ({}) is not a loopback address, and without a token \
                     anyone who reaches it could read the audit stream and push revocations \
                     (set token = {{ value_file = \"...\" }}, or listen on 127.0.0.1)",
                    self.listen
                ),
            )),
            None => Ok(()),
        }
    }

    pub fn resolve(&mut self, base: &Path) {
        if let Some(t) = &mut self.token {
            t.resolve(base);
        }
    }
}
