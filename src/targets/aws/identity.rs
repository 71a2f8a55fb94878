//! The identity an AWS call runs under.
//!
//! `sts`: per certificate, `AssumeRole` on the target's execution role, signed with the broker's
//! base credentials, with an inline session policy allowing only the certified call, the agent
//! as `SourceIdentity`, and session tags naming the certificate. The credentials are cached per
//! certificate id for its remaining uses and never leave the broker. Reads and precondition
//! checks assume the read role, cached for the broker.
//!
//! The base credentials come from the AWS SDK's default chain, in the SDK's order: environment
//! variables, the shared config and credentials files (`AWS_PROFILE`), web identity (IRSA),
//! container credentials (ECS task roles, EKS Pod Identity), then IMDSv2. They are looked up
//! on first use, not at start, and a missing source is an `identity_unavailable` refusal.
//!
//! `static`: fixed credentials from the config, for emulators and tests; every audit record
//! says so.

pub mod connector;
mod form;

use super::config::{AwsIdentityMode, StaticCredentialsConfig};
use super::sigv4::Credentials;
use crate::denial::{Denial, Reason};
use crate::upstream::{error_chain, UpstreamClient};
use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::provider_config::ProviderConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_sts::error::SdkError;
use aws_sdk_sts::types::Tag;
use aws_smithy_types::timeout::TimeoutConfig;
use connector::Connector;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Session length asked of STS: the shortest it grants.
pub const SESSION_SECONDS: i32 = 900;
/// The whole AssumeRole call, the base credentials' lookup and the SDK's retries included.
const STS_TIMEOUT: Duration = Duration::from_secs(10);
/// Cached sessions are used for at most this long, so a call never starts on credentials about
/// to expire.
const CACHE_SECONDS: u64 = 600;

/// One minted (or fixed) identity.
#[derive(Debug)]
pub struct Minted {
    pub credentials: Credentials,
    pub audit: serde_json::Value,
}

/// What goes into one AssumeRole call.
pub struct AssumeRole<'a> {
    pub role_arn: &'a str,
    pub session_name: String,
    pub source_identity: Option<String>,
    pub policy: Option<String>,
    pub tags: Vec<(&'static str, String)>,
}

pub struct StsClient {
    /// STS URL (emulator, VPC endpoint); otherwise the regional endpoint of the call's region.
    endpoint: Option<String>,
    region: String,
    connector: Connector,
    sts: tokio::sync::OnceCell<aws_sdk_sts::Client>,
    cache: moka::future::Cache<String, Arc<Minted>>,
}

fn unavailable(msg: impl Into<String>) -> Denial {
    Denial::new(Reason::IdentityUnavailable, msg)
}

/// `[\w+=,.@-]`, 2 to 64 characters: what STS accepts for RoleSessionName and SourceIdentity.
pub fn sanitize_session_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    while out.len() < 2 {
        out.push('_');
    }
    out
}

/// Session tag values allow letters, digits, spaces and `_.:/=+-@`, up to 256 characters.
fn sanitize_tag(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_alphanumeric() || " _.:/=+-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(256)
        .collect()
}

impl StsClient {
    /// `region`: where the credential chain's own STS calls (web identity) go, the target's
    /// first region.
    pub fn new(endpoint: Option<String>, region: String, client: UpstreamClient) -> StsClient {
        StsClient {
            endpoint,
            region,
            connector: Connector::new(client),
            sts: tokio::sync::OnceCell::new(),
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(CACHE_SECONDS))
                .build(),
        }
    }

    /// The STS client, built on first use: the chain's providers read their files and
    /// environment then, so a broker started before its role is attached still starts.
    async fn client(&self) -> &aws_sdk_sts::Client {
        self.sts
            .get_or_init(|| async {
                let region = Region::new(self.region.clone());
                let chain = DefaultCredentialsChain::builder()
                    .configure(
                        ProviderConfig::without_region()
                            .with_http_client(self.connector.clone())
                            .with_region(Some(region.clone())),
                    )
                    .build()
                    .await;
                let mut conf = aws_sdk_sts::Config::builder()
                    .behavior_version(BehaviorVersion::latest())
                    .http_client(self.connector.clone())
                    .interceptor(form::Respell)
                    .credentials_provider(chain)
                    .region(region)
                    .timeout_config(
                        TimeoutConfig::builder()
                            .operation_timeout(STS_TIMEOUT)
                            .build(),
                    );
                if let Some(e) = &self.endpoint {
                    conf = conf.endpoint_url(e.trim_end_matches('/'));
                }
                aws_sdk_sts::Client::from_conf(conf.build())
            })
            .await
    }

    /// Cached by `key` (the certificate id, or the read role). Callers asking for a key whose
    /// session is being minted wait for that one mint (a prepare, then the use it prepared),
    /// and a failed mint is not cached: the next caller tries again.
    pub async fn assume_cached(
        &self,
        key: &str,
        region: &str,
        req: AssumeRole<'_>,
    ) -> Result<Arc<Minted>, Denial> {
        self.cache
            .try_get_with_by_ref(key, async { self.assume(region, req).await.map(Arc::new) })
            .await
            .map_err(|e| (*e).clone())
    }

    pub async fn assume(&self, region: &str, req: AssumeRole<'_>) -> Result<Minted, Denial> {
        let mut call = self
            .client()
            .await
            .assume_role()
            .role_arn(req.role_arn)
            .role_session_name(&req.session_name)
            .duration_seconds(SESSION_SECONDS);
        if let Some(s) = &req.source_identity {
            call = call.source_identity(s);
        }
        if let Some(p) = &req.policy {
            call = call.policy(p);
        }
        for (k, v) in &req.tags {
            let tag = Tag::builder()
                .key(*k)
                .value(sanitize_tag(v))
                .build()
                .map_err(|e| unavailable(format!("session tag {k}: {e}")))?;
            call = call.tags(tag);
        }
        let out = call
            .customize()
            .config_override(
                aws_sdk_sts::config::Builder::default().region(Region::new(region.to_string())),
            )
            .send()
            .await
            .map_err(|e| match &e {
                SdkError::ServiceError(se) => {
                    let meta = se.err().meta();
                    let why: String = [meta.code(), meta.message()]
                        .into_iter()
                        .flatten()
                        .map(|s| format!(": {s}"))
                        .collect();
                    unavailable(format!(
                        "STS AssumeRole on {} failed ({}){why}",
                        req.role_arn,
                        se.raw().status()
                    ))
                }
                // No base credentials, STS unreachable or slow: the chain of causes names which.
                _ => unavailable(format!(
                    "STS AssumeRole on {} failed: {}",
                    req.role_arn,
                    error_chain(&e)
                )),
            })?;
        let c = out
            .credentials()
            .ok_or_else(|| unavailable("STS answer has no Credentials"))?;
        let credentials = Credentials {
            access_key_id: c.access_key_id().to_string(),
            secret_access_key: c.secret_access_key().to_string(),
            session_token: Some(c.session_token().to_string()),
        };
        Ok(Minted {
            audit: serde_json::json!({
                "kind": "sts",
                "role": req.role_arn,
                "session": req.session_name,
                "arn": out.assumed_role_user().map(|u| u.arn()),
                "access_key_id": credentials.access_key_id,
                "source_identity": req.source_identity,
                "expires": c.expiration().fmt(aws_smithy_types::date_time::Format::DateTime).ok(),
                "session_policy": req.policy.as_deref().map(|p| serde_json::from_str::<serde_json::Value>(p).unwrap_or_default()),
            }),
            credentials,
        })
    }
}

impl super::AwsTarget {
    pub(super) async fn read_credentials(
        &self,
        region: &str,
    ) -> Result<(Credentials, Value), Denial> {
        match self.mode {
            AwsIdentityMode::Static => {
                let c = self
                    .read_static_credentials
                    .as_ref()
                    .or(self.static_credentials.as_ref())
                    .ok_or_else(|| {
                        Denial::new(Reason::IdentityUnavailable, "no static read credentials")
                    })?;
                Ok((c.clone(), static_audit(c, "read")))
            }
            AwsIdentityMode::Sts => {
                let role = self.read_role_arn.as_deref().ok_or_else(|| {
                    Denial::new(
                        Reason::IdentityUnavailable,
                        format!(
                            "aws target {:?} has no read_role_arn for reads and preconditions",
                            self.name
                        ),
                    )
                })?;
                let m = self
                    .sts
                    .assume_cached(
                        &format!("\u{0}read\u{0}{region}"),
                        region,
                        AssumeRole {
                            role_arn: role,
                            session_name: sanitize_session_name(&format!("seb-read-{}", self.name)),
                            source_identity: None,
                            policy: None,
                            tags: vec![("seb-purpose", "read".into())],
                        },
                    )
                    .await?;
                Ok((m.credentials.clone(), m.audit.clone()))
            }
        }
    }
}

pub(super) fn static_audit(c: &Credentials, purpose: &str) -> Value {
    json!({
        "kind": "static",
        "purpose": purpose,
        "access_key_id": c.access_key_id,
        "note": "static credentials from the broker config (emulators and tests): not scoped per certificate",
    })
}

pub(super) fn load_static(c: &StaticCredentialsConfig, at: &str) -> anyhow::Result<Credentials> {
    let load = |s: &crate::secret::SecretSource, f: &str| {
        s.load().map_err(|e| anyhow::anyhow!("{at}.{f}: {e}"))
    };
    Ok(Credentials {
        access_key_id: load(&c.access_key_id, "access_key_id")?,
        secret_access_key: load(&c.secret_access_key, "secret_access_key")?,
        session_token: c
            .session_token
            .as_ref()
            .map(|t| load(t, "session_token"))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_fit_sts_rules() {
        assert_eq!(sanitize_session_name("c1"), "c1");
        assert_eq!(sanitize_session_name("x"), "x_");
        assert_eq!(
            sanitize_session_name("agent:oncall v3/é"),
            "agent_oncall_v3__"
        );
        let long = sanitize_session_name(&"a".repeat(100));
        assert_eq!(long.len(), 64);
        assert_eq!(sanitize_session_name("ok+=,.@-_"), "ok+=,.@-_");
    }
}
