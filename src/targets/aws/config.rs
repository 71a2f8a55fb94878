//! `[targets.aws]`: which AWS APIs a target serves and under which identities.

use crate::secret::SecretSource;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `[targets.aws]`: an AWS API front. Agents point their SDK at the listener
/// (`AWS_ENDPOINT_URL`); the broker forwards to `endpoint` (an emulator, a VPC endpoint) or the
/// regional AWS endpoint, under an identity minted per certificate.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [targets.aws] table")]
pub struct AwsTargetConfig {
    /// Forward here instead of `https://<service>.<region>.amazonaws.com` (moto, VPC endpoints).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Where STS AssumeRole goes; defaults to `endpoint`, then the regional STS endpoint.
    #[serde(default)]
    pub sts_endpoint: Option<String>,
    #[serde(default)]
    pub upstream_ca: Option<PathBuf>,
    /// Signing names (`s3`, `ec2`, ...) this target serves; others are refused.
    pub services: Vec<String>,
    pub regions: Vec<String>,
    pub identity: AwsIdentityMode,
    /// Role assumed per certificate (`identity = "sts"`).
    #[serde(default)]
    pub execution_role_arn: Option<String>,
    /// Role assumed for reads and precondition checks (`identity = "sts"`).
    #[serde(default)]
    pub read_role_arn: Option<String>,
    /// Fixed credentials (`identity = "static"`): emulators and tests only, marked as such in
    /// every audit record.
    #[serde(default)]
    pub static_credentials: Option<StaticCredentialsConfig>,
    /// Fixed credentials for reads with `identity = "static"`; defaults to static_credentials.
    #[serde(default)]
    pub read_static_credentials: Option<StaticCredentialsConfig>,
    /// Reads (Describe/List/Get/Head) pass without a certificate.
    #[serde(default)]
    pub reads: bool,
    /// s3 GetObject needs a certificate even when reads pass.
    #[serde(default)]
    pub s3_get_object_needs_certificate: bool,
    /// More reads that need a certificate, as `service:Operation`.
    #[serde(default)]
    pub sensitive_reads: Vec<String>,
    /// Agent access keys: an agent whose SigV4 signature verifies with one of these is
    /// authenticated for reads (for clients without mTLS such as the aws CLI).
    #[serde(default)]
    pub agent_keys: Vec<AgentKeyConfig>,
    /// Certificates must name this target in `aud`; `false` admits certificates without
    /// `aud` (a migration switch: a certificate's kind alone does not tell staging from prod).
    #[serde(default = "yes")]
    pub require_audience: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a table { access_key_id, secret_access_key = { value_env or value_file } }")]
pub struct AgentKeyConfig {
    pub access_key_id: String,
    pub secret_access_key: SecretSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[serde(expecting = "\"sts\" or \"static\"")]
pub enum AwsIdentityMode {
    Sts,
    Static,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(
    expecting = "a table { access_key_id, secret_access_key, session_token }, each a secret source"
)]
pub struct StaticCredentialsConfig {
    pub access_key_id: SecretSource,
    pub secret_access_key: SecretSource,
    #[serde(default)]
    pub session_token: Option<SecretSource>,
}

impl StaticCredentialsConfig {
    fn sources(&mut self) -> impl Iterator<Item = &mut SecretSource> {
        [&mut self.access_key_id, &mut self.secret_access_key]
            .into_iter()
            .chain(self.session_token.as_mut())
    }
}

impl AwsTargetConfig {
    /// Errors are `(field path, message)`, `at` being this table's path (`targets[0].aws`).
    pub fn validate(&self, at: &str) -> Result<(), (String, String)> {
        let e = |f: &str, m: String| Err((format!("{at}.{f}"), m));
        for (f, url) in [
            ("endpoint", &self.endpoint),
            ("sts_endpoint", &self.sts_endpoint),
        ] {
            let Some(url) = url else { continue };
            let uri: http::Uri = match url.parse() {
                Ok(u) => u,
                Err(err) => return e(f, format!("invalid URL: {err}")),
            };
            if !matches!(uri.scheme_str(), Some("http") | Some("https"))
                || uri.host().is_none()
                || !matches!(uri.path(), "" | "/")
                || uri.query().is_some()
            {
                return e(
                    f,
                    "must be http(s)://host[:port] with no path or query".into(),
                );
            }
        }
        if self.services.is_empty() {
            return e("services", "name at least one service".into());
        }
        for s in &self.services {
            if super::model::service(s).is_none() {
                return e(
                    "services",
                    format!("{s:?} is not a service this broker knows"),
                );
            }
        }
        if self.regions.is_empty() {
            return e("regions", "name at least one region".into());
        }
        for r in &self.regions {
            if r.is_empty()
                || !r
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return e("regions", format!("{r:?} is not a region name"));
            }
        }
        for (i, s) in self.sensitive_reads.iter().enumerate() {
            if s.split_once(':')
                .is_none_or(|(a, b)| a.is_empty() || b.is_empty())
            {
                return e(
                    &format!("sensitive_reads[{i}]"),
                    format!("{s:?} is not service:Operation"),
                );
            }
        }
        for (i, k) in self.agent_keys.iter().enumerate() {
            if k.access_key_id.len() < 8
                || !k.access_key_id.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return e(
                    &format!("agent_keys[{i}].access_key_id"),
                    "must be at least 8 letters or digits".into(),
                );
            }
            k.secret_access_key
                .validate(&format!("{at}.agent_keys[{i}].secret_access_key"))?;
        }
        match self.identity {
            AwsIdentityMode::Sts => {
                for (f, arn) in [
                    ("execution_role_arn", &self.execution_role_arn),
                    ("read_role_arn", &self.read_role_arn),
                ] {
                    match arn {
                        Some(a) if !a.starts_with("arn:") || !a.contains(":role/") => {
                            return e(f, format!("{a:?} is not a role ARN"))
                        }
                        _ => {}
                    }
                }
                if self.execution_role_arn.is_none() {
                    return e(
                        "execution_role_arn",
                        "identity = \"sts\" needs the role to assume".into(),
                    );
                }
                if self.reads && self.read_role_arn.is_none() {
                    return e(
                        "read_role_arn",
                        "reads = true with identity = \"sts\" needs a read role".into(),
                    );
                }
                if self.static_credentials.is_some() || self.read_static_credentials.is_some() {
                    return e(
                        "static_credentials",
                        "only with identity = \"static\"".into(),
                    );
                }
            }
            AwsIdentityMode::Static => {
                let Some(c) = &self.static_credentials else {
                    return e(
                        "static_credentials",
                        "identity = \"static\" needs them".into(),
                    );
                };
                c.validate(&format!("{at}.static_credentials"))?;
                if let Some(c) = &self.read_static_credentials {
                    c.validate(&format!("{at}.read_static_credentials"))?;
                }
                if self.execution_role_arn.is_some() || self.read_role_arn.is_some() {
                    return e("execution_role_arn", "only with identity = \"sts\"".into());
                }
            }
        }
        Ok(())
    }

    /// Relative paths are relative to the config file's directory.
    /// Every secret this table names.
    pub fn secret_sources(&mut self) -> Vec<&mut SecretSource> {
        let mut out: Vec<&mut SecretSource> = [
            &mut self.static_credentials,
            &mut self.read_static_credentials,
        ]
        .into_iter()
        .flatten()
        .flat_map(|c| c.sources())
        .collect();
        out.extend(self.agent_keys.iter_mut().map(|k| &mut k.secret_access_key));
        out
    }

    pub fn resolve(&mut self, base: &Path) {
        if let Some(ca) = &mut self.upstream_ca {
            if ca.is_relative() {
                *ca = base.join(&*ca);
            }
        }
        for c in [
            &mut self.static_credentials,
            &mut self.read_static_credentials,
        ]
        .into_iter()
        .flatten()
        {
            for s in c.sources() {
                s.resolve(base);
            }
        }
    }
}

impl StaticCredentialsConfig {
    fn validate(&self, at: &str) -> Result<(), (String, String)> {
        self.access_key_id
            .validate(&format!("{at}.access_key_id"))?;
        self.secret_access_key
            .validate(&format!("{at}.secret_access_key"))?;
        if let Some(t) = &self.session_token {
            t.validate(&format!("{at}.session_token"))?;
        }
        Ok(())
    }
}
