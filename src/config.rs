//! Broker configuration: TOML, typed, strict. Unknown fields are refused and every error names
//! the path of the bad field (`targets[1].http.upstream: ...`), because a typo in a security
//! control must not silently fall back to a default.
//!
//! Relative file paths are resolved against the directory of the config file.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Replica id written into every audit record.
    #[serde(default = "default_broker_id")]
    pub broker_id: String,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Plain HTTP on the agent listeners: only when said explicitly, for local tests.
    #[serde(default)]
    pub plaintext: bool,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub certificates: CertificateConfig,
    pub issuers: Vec<IssuerConfig>,
    pub revocation: RevocationConfig,
    pub audit: AuditConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub agents: AgentAuthConfig,
    pub targets: Vec<TargetConfig>,
}

fn default_broker_id() -> String {
    "seb-1".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub require_client_cert: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    #[serde(default = "default_skew", with = "duration")]
    pub clock_skew: Duration,
    #[serde(default = "default_max_ttl", with = "duration")]
    pub max_ttl: Duration,
    #[serde(default)]
    pub min_policy_epoch: u64,
}

impl Default for CertificateConfig {
    fn default() -> Self {
        CertificateConfig {
            clock_skew: default_skew(),
            max_ttl: default_max_ttl(),
            min_policy_epoch: 0,
        }
    }
}

fn default_skew() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ttl() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The `iss` claim this key signs for.
    pub name: String,
    pub public_key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default = "default_poll", with = "duration")]
    pub poll_interval: Duration,
    #[serde(default = "default_staleness", with = "duration")]
    pub max_staleness: Duration,
}

fn default_poll() -> Duration {
    Duration::from_secs(5)
}
fn default_staleness() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub durability: crate::audit::Durability,
    #[serde(default)]
    pub rotate_bytes: Option<u64>,
    #[serde(default)]
    pub stdout: bool,
    /// The broker's own Ed25519 key (PKCS#8 PEM) that signs every record.
    pub signing_key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    #[serde(default = "default_timeout", with = "duration")]
    pub request_timeout: Duration,
    #[serde(default = "default_concurrency")]
    pub max_concurrent_requests: usize,
    /// Live certificates whose uses are tracked in memory; past it, new ones are refused.
    #[serde(default = "default_live")]
    pub max_live_certificates: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_body(),
            request_timeout: default_timeout(),
            max_concurrent_requests: default_concurrency(),
            max_live_certificates: default_live(),
        }
    }
}

fn default_body() -> usize {
    10 * 1024 * 1024
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_concurrency() -> usize {
    1024
}
fn default_live() -> u64 {
    2_000_000
}

/// How agents authenticate for reads (mutations are authorized by their certificate).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentAuthConfig {
    /// Reads need an mTLS client certificate or one of these bearer tokens; with neither
    /// configured and no client CA, reads are open to anyone who reaches the listener.
    #[serde(default)]
    pub tokens: Vec<SecretSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    pub kind: crate::cert::TargetKind,
    pub listen: SocketAddr,
    #[serde(default)]
    pub http: Option<HttpTargetConfig>,
    #[serde(default)]
    pub kubernetes: Option<KubeTargetConfig>,
}

// === kubernetes target ===

/// A kube-apiserver. The broker calls it with its own credential and impersonates the
/// configured users, so RBAC can limit the broker's `impersonate` to exactly these names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImpersonationConfig {
    pub user: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

impl KubeTargetConfig {
    fn validate(&self, at: &str) -> Result<(), (String, String)> {
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
}

// === end kubernetes target ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    pub header: String,
    #[serde(flatten)]
    pub value: SecretSource,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    #[serde(default)]
    pub value_env: Option<String>,
    #[serde(default)]
    pub value_file: Option<PathBuf>,
    /// Prepended to the secret, e.g. "Bearer ".
    #[serde(default)]
    pub prefix: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadRule {
    pub methods: Vec<String>,
    pub path_prefix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}: {field}: {message}")]
    Field {
        file: String,
        field: String,
        message: String,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|(field, message)| ConfigError::Field {
            file: path.display().to_string(),
            field,
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Parses and validates; errors are `(field path, message)`.
    pub fn parse(text: &str) -> Result<Config, (String, String)> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            // toml's message carries a line/column excerpt; the first line is the reason.
            let message = e
                .inner()
                .message()
                .lines()
                .next()
                .unwrap_or("invalid")
                .trim()
                .to_string();
            (
                if field == "." {
                    "(top level)".into()
                } else {
                    field
                },
                message,
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, m: &str| Err((f.to_string(), m.to_string()));
        match (&self.tls, self.plaintext) {
            (None, false) => {
                return err(
                    "tls",
                    "missing: agent listeners need TLS (set plaintext = true only for local tests)",
                )
            }
            (Some(_), true) => return err("plaintext", "cannot be true when [tls] is configured"),
            (Some(t), false) if t.require_client_cert && t.client_ca.is_none() => {
                return err(
                    "tls.require_client_cert",
                    "needs tls.client_ca to verify client certificates",
                )
            }
            _ => {}
        }
        let c = &self.certificates;
        if c.clock_skew > Duration::from_secs(300) {
            return err("certificates.clock_skew", "at most 5m");
        }
        if c.max_ttl.is_zero() || c.max_ttl > Duration::from_secs(24 * 3600) {
            return err("certificates.max_ttl", "must be between 1s and 24h");
        }
        if self.issuers.is_empty() {
            return err("issuers", "at least one trusted issuer is needed");
        }
        for (i, issuer) in self.issuers.iter().enumerate() {
            if issuer.name.is_empty() {
                return err(&format!("issuers[{i}].name"), "must not be empty");
            }
        }
        match (&self.revocation.file, &self.revocation.url) {
            (None, None) => {
                return err(
                    "revocation",
                    "needs file or url: without revocation data every mutation is refused",
                )
            }
            (Some(_), Some(_)) => return err("revocation", "set file or url, not both"),
            (None, Some(u)) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                return err("revocation.url", "must be an http:// or https:// URL")
            }
            _ => {}
        }
        if self.revocation.poll_interval.is_zero() {
            return err("revocation.poll_interval", "must be greater than zero");
        }
        if self.revocation.max_staleness < self.revocation.poll_interval {
            return err(
                "revocation.max_staleness",
                "must be at least revocation.poll_interval",
            );
        }
        if self.audit.path.is_none() && !self.audit.stdout {
            return err("audit", "needs a path or stdout = true");
        }
        if let Some(0) = self.audit.rotate_bytes {
            return err("audit.rotate_bytes", "must be greater than zero");
        }
        if self.limits.max_concurrent_requests == 0 {
            return err(
                "limits.max_concurrent_requests",
                "must be greater than zero",
            );
        }
        for (i, s) in self.agents.tokens.iter().enumerate() {
            s.validate(&format!("agents.tokens[{i}]"))?;
        }
        if self.targets.is_empty() {
            return err("targets", "at least one target is needed");
        }
        let mut names = std::collections::HashSet::new();
        let mut listens = std::collections::HashSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let at = format!("targets[{i}]");
            if t.name.is_empty()
                || !t
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return err(
                    &format!("{at}.name"),
                    "must be non-empty letters, digits, '-', '_' or '.'",
                );
            }
            if !names.insert(&t.name) {
                return err(
                    &format!("{at}.name"),
                    &format!("{:?} is used by another target", t.name),
                );
            }
            if !listens.insert(t.listen) || t.listen == self.admin.listen {
                return err(
                    &format!("{at}.listen"),
                    &format!("{} is used by another listener", t.listen),
                );
            }
            match t.kind {
                crate::cert::TargetKind::Http => {
                    let Some(h) = &t.http else {
                        return err(&at, "kind = \"http\" needs an [targets.http] table");
                    };
                    h.validate(&format!("{at}.http"))?;
                }
                crate::cert::TargetKind::Kubernetes => {
                    let Some(k) = &t.kubernetes else {
                        return err(
                            &at,
                            "kind = \"kubernetes\" needs a [targets.kubernetes] table",
                        );
                    };
                    k.validate(&format!("{at}.kubernetes"))?;
                }
                other => {
                    return err(
                        &format!("{at}.kind"),
                        &format!(
                            "{:?} targets are not available in this build",
                            other.as_str()
                        ),
                    )
                }
            }
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(t) = &mut self.tls {
            fix(&mut t.cert);
            fix(&mut t.key);
            if let Some(ca) = &mut t.client_ca {
                fix(ca);
            }
        }
        for i in &mut self.issuers {
            fix(&mut i.public_key);
        }
        if let Some(f) = &mut self.revocation.file {
            fix(f);
        }
        if let Some(p) = &mut self.audit.path {
            fix(p);
        }
        fix(&mut self.audit.signing_key);
        for s in &mut self.agents.tokens {
            s.resolve(base);
        }
        for t in &mut self.targets {
            if let Some(k) = &mut t.kubernetes {
                if let Some(ca) = &mut k.ca {
                    fix(ca);
                }
                k.credential.resolve(base);
            }
            if let Some(h) = &mut t.http {
                if let Some(ca) = &mut h.upstream_ca {
                    fix(ca);
                }
                for c in [&mut h.credential, &mut h.read_credential]
                    .into_iter()
                    .flatten()
                {
                    c.value.resolve(base);
                }
            }
        }
    }
}

impl HttpTargetConfig {
    fn validate(&self, at: &str) -> Result<(), (String, String)> {
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
        for (i, c) in [&self.credential, &self.read_credential]
            .into_iter()
            .enumerate()
        {
            if let Some(c) = c {
                let f = if i == 0 {
                    "credential"
                } else {
                    "read_credential"
                };
                http::HeaderName::from_bytes(c.header.as_bytes()).map_err(|_| {
                    (
                        format!("{at}.{f}.header"),
                        format!("{:?} is not a valid header name", c.header),
                    )
                })?;
                c.value.validate(&format!("{at}.{f}"))?;
            }
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
}

impl SecretSource {
    fn validate(&self, at: &str) -> Result<(), (String, String)> {
        match (&self.value_env, &self.value_file) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err((
                at.to_string(),
                "set exactly one of value_env or value_file".into(),
            )),
        }
    }

    fn resolve(&mut self, base: &Path) {
        if let Some(p) = &mut self.value_file {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Reads the secret now. A missing secret stops the broker from starting: it would
    /// otherwise forward requests without the credential the upstream expects.
    pub fn load(&self) -> anyhow::Result<String> {
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

/// Durations as humane strings ("30s", "5m", "1h 30m").
mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration like \"30s\" or \"5m\": {e}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
plaintext = true
[[issuers]]
name = "signer"
public_key = "signer.pub"
[revocation]
file = "revocation.jws"
[audit]
path = "audit.jsonl"
signing_key = "broker.key"
[[targets]]
name = "payments"
kind = "http"
listen = "127.0.0.1:8443"
[targets.http]
upstream = "http://127.0.0.1:9000"
"#;

    fn field_error(text: &str) -> (String, String) {
        Config::parse(text).unwrap_err()
    }

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.certificates.clock_skew, Duration::from_secs(30));
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9901");
        assert_eq!(c.audit.durability, crate::audit::Durability::Fsync);
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let (f, m) = field_error(&MINIMAL.replace("upstream = ", "upstreams = "));
        assert_eq!(f, "targets[0].http.upstreams");
        assert!(m.contains("upstreams"), "{m}");
        let (f, _) = field_error(&format!("{MINIMAL}\n[certificates]\nclock_skw = \"1s\"\n"));
        assert_eq!(f, "certificates.clock_skw");
    }

    #[test]
    fn bad_values_name_their_field() {
        let (f, _) = field_error(&MINIMAL.replace("http://127.0.0.1:9000", "ftp://x"));
        assert_eq!(f, "targets[0].http.upstream");
        let (f, _) = field_error(&MINIMAL.replace("127.0.0.1:8443", "nowhere"));
        assert_eq!(f, "targets[0].listen");
        let (f, m) = field_error(&format!(
            "{MINIMAL}\n[certificates]\nclock_skew = \"10m\"\n"
        ));
        assert_eq!(
            (f.as_str(), m.as_str()),
            ("certificates.clock_skew", "at most 5m")
        );
        let (f, _) = field_error(&format!("{MINIMAL}\n[certificates]\nmax_ttl = \"soon\"\n"));
        assert_eq!(f, "certificates.max_ttl");
        let (f, _) = field_error(&MINIMAL.replace("plaintext = true", ""));
        assert_eq!(f, "tls");
        let (f, _) = field_error(&MINIMAL.replace("kind = \"http\"", "kind = \"smtp\""));
        assert_eq!(f, "targets[0].kind");
        let (f, _) = field_error(&MINIMAL.replace("file = \"revocation.jws\"", ""));
        assert_eq!(f, "revocation");
    }

    #[test]
    fn second_target_errors_name_index_one() {
        let two = format!(
            "{MINIMAL}\n[[targets]]\nname = \"b\"\nkind = \"http\"\nlisten = \"127.0.0.1:8444\"\n[targets.http]\nupstream = \"nope\"\n"
        );
        assert_eq!(field_error(&two).0, "targets[1].http.upstream");
        let dup = two
            .replace("name = \"b\"", "name = \"payments\"")
            .replace("\"nope\"", "\"http://x\"");
        assert_eq!(field_error(&dup).0, "targets[1].name");
    }

    #[test]
    fn kubernetes_targets_name_their_bad_fields() {
        let kube = format!(
            "{MINIMAL}[[targets]]\nname = \"cluster\"\nkind = \"kubernetes\"\nlisten = \"127.0.0.1:8444\"\n[targets.kubernetes]\napiserver = \"https://10.0.0.1:6443\"\nca = \"ca.pem\"\ncredential = {{ value_file = \"token\" }}\nexecution = {{ user = \"seb:exec:deployer\", groups = [\"seb:exec\"] }}\nread = {{ user = \"seb:read\" }}\n"
        );
        let c = Config::parse(&kube).unwrap();
        assert_eq!(
            c.targets[1].kubernetes.as_ref().unwrap().execution.groups,
            ["seb:exec"]
        );
        let cases = [
            (
                "https://10.0.0.1:6443",
                "http://10.0.0.1:6443",
                "targets[1].kubernetes.apiserver",
            ),
            (
                "user = \"seb:read\"",
                "user = \"system:admin\"",
                "targets[1].kubernetes.read.user",
            ),
            (
                "[\"seb:exec\"]",
                "[\"system:masters\"]",
                "targets[1].kubernetes.execution.groups[0]",
            ),
            (
                "value_file = \"token\"",
                "value_file = \"token\", value_env = \"T\"",
                "targets[1].kubernetes.credential",
            ),
            (
                "ca = ",
                "cert_authority = ",
                "targets[1].kubernetes.cert_authority",
            ),
        ];
        for (from, to, field) in cases {
            assert_eq!(field_error(&kube.replace(from, to)).0, field, "{to}");
        }
        let missing = kube
            .split("[targets.kubernetes]")
            .next()
            .unwrap()
            .to_string();
        assert_eq!(field_error(&missing).0, "targets[1]");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seb.toml");
        std::fs::write(&p, MINIMAL).unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.audit.signing_key, dir.path().join("broker.key"));
        let e = Config::load(&dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.toml"));
    }
}
