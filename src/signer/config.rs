//! The signer's TOML config (`seb signer serve --config FILE`). Strict like the broker's:
//! unknown fields are refused and errors name the field's path.

use crate::secret::SecretSource;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignerConfig {
    /// The `iss` of every certificate and revocation document this signer makes.
    pub issuer: String,
    /// Agent-facing HTTPS listener.
    pub listen: SocketAddr,
    /// Loopback listener for the operator: revoke, reload.
    #[serde(default = "default_admin")]
    pub admin_listen: SocketAddr,
    pub tls: SignerTls,
    /// The signing keys, newest last; exactly one is `active`.
    pub keys: Vec<KeyConfig>,
    /// Folder holding `schema.cedarschema` and the `*.cedar` policies.
    pub policies: PathBuf,
    /// Where the policy epoch and the revocation state are kept (created when missing).
    pub state_dir: PathBuf,
    /// The signer's own signed, hash-chained log (audit v1 format).
    pub audit: SignerAudit,
    #[serde(default)]
    pub agents: Vec<AgentToken>,
    #[serde(default)]
    pub evidence: EvidenceConfig,
    #[serde(default)]
    pub approvers: Vec<Approver>,
    #[serde(default)]
    pub windows: Vec<DeployWindow>,
    #[serde(default)]
    pub certificates: CertificateLimits,
    #[serde(default)]
    pub revocation: RevocationPublishing,
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9911))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA for agent client certificates; the agent's name is then the certificate's URI SAN
    /// or CN, never anything in the request body.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Published, not yet signing: brokers learn it before the first certificate it signs.
    Next,
    /// Signs.
    Active,
    /// Published until the last certificate it signed has expired; signs nothing.
    Retired,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub private_key: PathBuf,
    pub status: KeyStatus,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignerAudit {
    pub path: PathBuf,
    /// The log's own key (not a certificate key): `seb audit verify --key` takes its public half.
    pub signing_key: PathBuf,
}

/// An agent that authenticates with a bearer token instead of a client certificate.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentToken {
    /// The `sub` its certificates carry.
    pub name: String,
    pub token: SecretSource,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvidenceConfig {
    /// A GitHub-style API: pulls, their files, check runs, deployments.
    #[serde(default)]
    pub code_host: Option<HttpSource>,
    /// A scoring endpoint: POST the proposal, read `{"score": N}`.
    #[serde(default)]
    pub risk: Option<HttpSource>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSource {
    pub url: String,
    #[serde(default)]
    pub token: Option<SecretSource>,
    /// A source slower than this is a source that failed.
    #[serde(default = "default_source_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// CA bundle for an https:// source on a private CA.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

fn default_source_timeout() -> Duration {
    Duration::from_secs(3)
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approver {
    pub name: String,
    pub public_key: PathBuf,
}

/// A named window, open on `days` from `from` to `to` (local time in `timezone`, IANA name).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployWindow {
    pub name: String,
    pub timezone: String,
    /// `mon` … `sun`.
    pub days: Vec<String>,
    /// `HH:MM`, inclusive.
    pub from: String,
    /// `HH:MM`, exclusive.
    pub to: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateLimits {
    /// Lifetime when neither the proposal nor the policy says less.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub default_ttl: Duration,
    /// No policy can grant longer than this.
    #[serde(default = "default_max_ttl", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_ttl: Duration,
}

impl Default for CertificateLimits {
    fn default() -> Self {
        CertificateLimits {
            default_ttl: default_ttl(),
            max_ttl: default_max_ttl(),
        }
    }
}

fn default_ttl() -> Duration {
    Duration::from_secs(90)
}
fn default_max_ttl() -> Duration {
    Duration::from_secs(900)
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevocationPublishing {
    /// How often the revocation document is re-signed and pushed; must be well under the
    /// brokers' `revocation.max_staleness`.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub heartbeat: Duration,
    /// Brokers' admin endpoints (`http://HOST:PORT/v1/revocation`) every new document is
    /// pushed to.
    #[serde(default)]
    pub push: Vec<String>,
    /// The brokers' `admin.token`, sent as `Authorization: Bearer` with every push (a broker
    /// whose admin port is off loopback requires one).
    #[serde(default)]
    pub push_token: Option<SecretSource>,
}

impl Default for RevocationPublishing {
    fn default() -> Self {
        RevocationPublishing {
            heartbeat: default_heartbeat(),
            push: Vec::new(),
            push_token: None,
        }
    }
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(30)
}

impl SignerConfig {
    pub fn load(path: &Path) -> anyhow::Result<SignerConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let de = toml::Deserializer::new(&text);
        let mut cfg: SignerConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            anyhow::anyhow!("{}: {}: {}", path.display(), e.path(), e.inner().message())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve(base);
        cfg.validate()
            .map_err(|(at, m)| anyhow::anyhow!("{}: {at}: {m}", path.display()))?;
        Ok(cfg)
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        if let Some(ca) = &mut self.tls.client_ca {
            fix(ca);
        }
        for k in &mut self.keys {
            fix(&mut k.private_key);
        }
        fix(&mut self.policies);
        fix(&mut self.state_dir);
        fix(&mut self.audit.path);
        fix(&mut self.audit.signing_key);
        for a in &mut self.agents {
            a.token.resolve(base);
        }
        if let Some(t) = &mut self.revocation.push_token {
            t.resolve(base);
        }
        for a in &mut self.approvers {
            fix(&mut a.public_key);
        }
        for s in [&mut self.evidence.code_host, &mut self.evidence.risk]
            .into_iter()
            .flatten()
        {
            if let Some(t) = &mut s.token {
                t.resolve(base);
            }
            if let Some(ca) = &mut s.ca {
                fix(ca);
            }
        }
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let err = |at: &str, m: &str| Err((at.to_string(), m.to_string()));
        if self.issuer.is_empty() {
            return err("issuer", "must not be empty");
        }
        let active = self
            .keys
            .iter()
            .filter(|k| k.status == KeyStatus::Active)
            .count();
        if active != 1 {
            return err(
                "keys",
                &format!("exactly one key must be \"active\" (found {active})"),
            );
        }
        for (i, a) in self.agents.iter().enumerate() {
            if a.name.is_empty() {
                return err(&format!("agents[{i}].name"), "must not be empty");
            }
            a.token.validate(&format!("agents[{i}].token"))?;
        }
        for (name, s) in [
            ("evidence.code_host", &self.evidence.code_host),
            ("evidence.risk", &self.evidence.risk),
        ] {
            if let Some(s) = s {
                if !(s.url.starts_with("http://") || s.url.starts_with("https://")) {
                    return err(&format!("{name}.url"), "must be an http:// or https:// URL");
                }
                if s.timeout.is_zero() {
                    return err(&format!("{name}.timeout"), "must be greater than zero");
                }
            }
        }
        let limits = &self.certificates;
        if limits.default_ttl.is_zero() || limits.default_ttl > limits.max_ttl {
            return err(
                "certificates.default_ttl",
                "must be greater than zero and at most certificates.max_ttl",
            );
        }
        if self.revocation.heartbeat.is_zero() {
            return err("revocation.heartbeat", "must be greater than zero");
        }
        if let Some(t) = &self.revocation.push_token {
            t.validate("revocation.push_token")?;
        }
        for (i, u) in self.revocation.push.iter().enumerate() {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return err(
                    &format!("revocation.push[{i}]"),
                    "must be an http:// or https:// URL",
                );
            }
        }
        Ok(())
    }
}
