//! Broker configuration: TOML, typed, strict. Unknown fields are refused and every error names
//! the path of the bad field (`targets[1].http.upstream: ...`), because a typo in a security
//! control must not silently fall back to a default.
//!
//! Relative file paths are resolved against the directory of the config file.
//!
//! This module holds the broker-wide tables and composes the targets (`config/target.rs`); each
//! target's own table is a type in its target module (`targets::{http,aws,kubernetes}::config`)
//! with its own validation, so the dependency runs one way: config -> targets' configs ->
//! [`crate::secret`].

use crate::secret::SecretSource;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod admin;
mod issuer;
mod target;
mod traces;
pub use crate::state::config::StateConfig;
pub use admin::AdminConfig;
pub use issuer::IssuerConfig;
pub use target::{TargetConfig, TargetKindConfig, TargetMode};
pub use traces::TracingConfig;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
    /// Pass STS, upstream-connection, state and audit failure text to agents (it names roles,
    /// hosts and paths); by default they get the reason code and a generic message.
    #[serde(default)]
    pub expose_upstream_errors: bool,
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
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub tracing: TracingConfig,
    pub targets: Vec<TargetConfig>,
    /// The file this was read from and its text, so that errors found after parsing (a key
    /// file that does not load, a port in use) can still name the file, line and column.
    #[serde(skip)]
    pub source: Option<ConfigSource>,
}

#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub text: String,
}

impl Config {
    /// The state directory; None when neither it nor an audit file is configured.
    pub fn state_dir(&self) -> Option<PathBuf> {
        self.state.dir.clone().or_else(|| {
            self.audit
                .path
                .as_deref()
                .map(|p| crate::audit::log_dir(p).to_path_buf())
        })
    }
}

/// How agent connections are spread over threads.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [runtime] table")]
pub struct RuntimeConfig {
    /// Connection shards, each a thread with its own event loop; `0` runs every connection on
    /// one work-stealing runtime instead. Default: one per CPU.
    #[serde(default)]
    pub shards: Option<usize>,
}

impl RuntimeConfig {
    pub fn shards(&self) -> usize {
        self.shards.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

fn default_broker_id() -> String {
    "seb-1".into()
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [tls] table")]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub require_client_cert: bool,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [certificates] table")]
pub struct CertificateConfig {
    #[serde(default = "default_skew", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub clock_skew: Duration,
    #[serde(default = "default_max_ttl", with = "humantime_serde")]
    #[schemars(with = "String")]
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

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [revocation] table")]
pub struct RevocationConfig {
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub url: Option<String>,
    /// CA bundle for an https `url` on a private CA (a signer with its own certificate).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default = "default_poll", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub poll_interval: Duration,
    #[serde(default = "default_staleness", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_staleness: Duration,
}

fn default_poll() -> Duration {
    Duration::from_secs(5)
}
fn default_staleness() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an [audit] table")]
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

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [limits] table")]
pub struct Limits {
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    #[serde(default = "default_concurrency")]
    pub max_concurrent_requests: usize,
    /// Live certificates whose uses are tracked in memory; past it, new ones are refused.
    #[serde(default = "default_live")]
    pub max_live_certificates: u64,
    // --- lifecycle and connection hygiene (issue 15) ---
    /// After SIGTERM/SIGINT: how long in-flight requests may take to finish before the
    /// process exits anyway.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub shutdown_grace: Duration,
    /// Time allowed for a request's head to arrive once its first byte has (and for the first
    /// request after the TLS handshake, and for the handshake itself).
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub header_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// Agent connections open at once, over all listeners. None: the default, lowered (with
    /// a warning) to what the file descriptor limit allows; set explicitly, a value that does
    /// not fit is a start-up error.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_body(),
            request_timeout: default_timeout(),
            max_concurrent_requests: default_concurrency(),
            max_live_certificates: default_live(),
            shutdown_grace: default_shutdown_grace(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: None,
        }
    }
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
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
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an [agents] table")]
pub struct AgentAuthConfig {
    /// Reads need an mTLS client certificate or one of these bearer tokens; with neither
    /// configured and no client CA, reads are open to anyone who reaches the listener.
    #[serde(default)]
    pub tokens: Vec<SecretSource>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The OS error is in the message, not the `source`, so a chain printed with `{:#}` says
    /// it once.
    #[error("{path}: {error}")]
    Read { path: String, error: std::io::Error },
    /// `seb.toml:12:3: targets[0].http.upstream: ...`; the line and column are left out
    /// where the field is not in the file (a missing table, a default).
    #[error("{file}{}: {field}: {message}", at.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Field {
        file: String,
        at: Option<(usize, usize)>,
        field: String,
        message: String,
    },
}

/// A field error with where it is, when known: a byte range of the text.
struct Located {
    field: String,
    message: String,
    span: Option<std::ops::Range<usize>>,
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

/// Where `field` (`targets[1].http.upstream`) is written in `text`, or the nearest enclosing
/// table that is: a missing field is reported at the table that should hold it.
fn locate(text: &str, field: &str) -> Option<std::ops::Range<usize>> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut table: Option<&dyn toml_edit::TableLike> = Some(doc.as_table());
    let mut found = None;
    for segment in field.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let Some((key, item)) = table.and_then(|t| t.get_key_value(name)) else {
            break;
        };
        found = key.span().or(found);
        table = item.as_table_like();
        if let Some(i) = index {
            if let Some(t) = item.as_array_of_tables().and_then(|a| a.get(i)) {
                found = t.span().or(found);
                table = Some(t);
            } else if let Some(v) = item.as_array().and_then(|a| a.get(i)) {
                found = v.span().or(found);
                table = v.as_inline_table().map(|t| t as &dyn toml_edit::TableLike);
            } else {
                break;
            }
        }
    }
    found
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        let mut config = Config::parse_located(&text).map_err(|e| ConfigError::Field {
            file: path.display().to_string(),
            at: e.span.map(|s| line_col(&text, s.start)),
            field: e.field,
            message: e.message,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        // Replicas share one file (a ConfigMap) but not an id: each pod sets its own name.
        if let Some(id) = std::env::var("SEB_BROKER_ID")
            .ok()
            .filter(|v| !v.is_empty())
        {
            config.broker_id = id;
        }
        config.source = Some(ConfigSource {
            path: path.to_path_buf(),
            text,
        });
        Ok(config)
    }

    /// Parses and validates; errors are `(field path, message)`.
    pub fn parse(text: &str) -> Result<Config, (String, String)> {
        Config::parse_located(text).map_err(|e| (e.field, e.message))
    }

    fn parse_located(text: &str) -> Result<Config, Located> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            // toml's message carries a line/column excerpt; the first line is the reason,
            // and the span says where (for a syntax error, the only way to find it).
            let message = e
                .inner()
                .message()
                .lines()
                .next()
                .unwrap_or("invalid")
                .trim()
                .to_string();
            Located {
                span: e.inner().span().or_else(|| locate(text, &field)),
                field: if field == "." {
                    "(top level)".into()
                } else {
                    field
                },
                message,
            }
        })?;
        config.validate().map_err(|(field, message)| Located {
            span: locate(text, &field),
            field,
            message,
        })?;
        Ok(config)
    }

    /// `file:line:col: field` for an error found after loading (a key that does not load,
    /// an address in use), so that it reads like the loader's own errors.
    pub fn at(&self, field: &str) -> String {
        let Some(src) = &self.source else {
            return field.to_string();
        };
        let at = locate(&src.text, field)
            .map(|s| {
                let (l, c) = line_col(&src.text, s.start);
                format!(":{l}:{c}")
            })
            .unwrap_or_default();
        format!("{}{at}: {field}", src.path.display())
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
        if self.runtime.shards.is_some_and(|n| n > 1024) {
            return err(
                "runtime.shards",
                "at most 1024 (one per CPU is the default)",
            );
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
            if let Err((field, m)) = issuer.validate() {
                return err(&format!("issuers[{i}]{field}"), &m);
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
        let l = &self.limits;
        if l.shutdown_grace > Duration::from_secs(3600) {
            return err("limits.shutdown_grace", "at most 1h");
        }
        if l.header_read_timeout.is_zero() || l.header_read_timeout > Duration::from_secs(300) {
            return err("limits.header_read_timeout", "must be between 1ms and 5m");
        }
        if l.idle_timeout.is_zero() {
            return err("limits.idle_timeout", "must be greater than zero");
        }
        if l.max_connections == Some(0) {
            return err("limits.max_connections", "must be greater than zero");
        }
        for (i, s) in self.agents.tokens.iter().enumerate() {
            s.validate(&format!("agents.tokens[{i}]"))?;
        }
        self.admin.validate()?;
        self.tracing.validate()?;
        self.state.validate()?;
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
            t.kind.validate(&at)?;
            if t.mode == target::TargetMode::Shadow {
                t.kind.validate_shadow(&at)?;
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
            i.resolve(base);
        }
        if let Some(f) = &mut self.revocation.file {
            fix(f);
        }
        if let Some(f) = &mut self.revocation.ca {
            fix(f);
        }
        if let Some(p) = &mut self.audit.path {
            fix(p);
        }
        fix(&mut self.audit.signing_key);
        self.state.resolve(base);
        self.admin.resolve(base);
        self.tracing.resolve(base);
        for s in &mut self.agents.tokens {
            s.resolve(base);
        }
        for t in &mut self.targets {
            t.kind.resolve(base);
        }
    }
}

#[cfg(test)]
mod tests;
