//! The AWS target: unmodified AWS CLIs and SDKs point `AWS_ENDPOINT_URL` at the broker and put
//! their certificate in `AWS_SESSION_TOKEN` (so it arrives as `X-Amz-Security-Token`), with a
//! placeholder access key. The broker reads service and region from the credential scope,
//! ignores the agent's signature, checks the call against the certificate, and re-signs it
//! under an identity scoped to that one call.
//!
//! Modules: [`model`] (the generated service table), [`protocol`] (operation and parameters
//! for the query, ec2, json, rest-json and rest-xml protocols), [`policy`] (reads, sensitive
//! reads, session policies), [`identity`] (STS AssumeRole and static credentials),
//! [`sigv4`] (re-signing), [`denial`] (refusals in the agent's error dialect), [`drift`]
//! (precondition read calls).

mod agent;
pub mod answer;
pub mod config;
pub mod denial;
pub mod drift;
mod forward;
pub mod identity;
pub mod model;
pub mod policy;
pub mod protocol;
pub mod sigv4;
pub mod upload;

use super::{Identity, Parsed, Target};
use crate::cert::claims::BodyRule;
use crate::cert::{Certificate, TargetKind};
use crate::contract::{self, BodyView};
use crate::denial::{Denial, Reason};
use crate::upstream::{UpstreamBody, UpstreamClient};
use agent::signing_key_id;
pub use agent::{certificate, CERT_HINT};
use bytes::Bytes;
use config::{AwsIdentityMode, AwsTargetConfig};
use forward::header_rules;
use http::{HeaderMap, Request, Uri};
use http_body_util::Full;
use identity::{load_static, static_audit, AssumeRole, StsClient};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sigv4::{Credentials, Payload};
use std::time::SystemTime;

/// The access key id agents configure; any value works (the signature is never checked), this
/// one is documented so a log line shows at once that an agent is set up for the broker.
pub const PLACEHOLDER_ACCESS_KEY_ID: &str = "SEBAGENTPLACEHOLDER";

pub struct AwsTarget {
    pub name: String,
    /// Certificates must name this target in `aud` (see Target::check_certificate_target).
    pub require_audience: bool,
    endpoint: Option<Uri>,
    services: Vec<String>,
    regions: Vec<String>,
    mode: AwsIdentityMode,
    execution_role_arn: Option<String>,
    read_role_arn: Option<String>,
    static_credentials: Option<Credentials>,
    read_static_credentials: Option<Credentials>,
    reads: bool,
    s3_get_object_needs_certificate: bool,
    sensitive_reads: Vec<String>,
    /// Agent access key id -> secret, for authenticating reads by the agent's own signature.
    agent_keys: Vec<(String, String)>,
    sts: StsClient,
    pub(crate) headers: super::headers::HeaderRules,
    pub client: UpstreamClient,
}

/// `seb.request` for aws targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsContract {
    pub service: String,
    pub region: String,
    pub operation: String,
    #[serde(default)]
    pub resource: Option<String>,
}

fn contract_of(cert: &Certificate) -> Result<AwsContract, Denial> {
    let seb = &cert.claims.seb;
    if seb.target != TargetKind::Aws {
        return Err(Denial::new(
            Reason::ContractMismatch,
            format!(
                "certificate is for a {} target, this is an aws target",
                seb.target.as_str()
            ),
        ));
    }
    Deserialize::deserialize(&seb.request).map_err(|e| {
        Denial::new(
            Reason::CertMalformed,
            format!("seb.request for an aws target: {e}"),
        )
    })
}

fn mismatch(msg: impl Into<String>) -> Denial {
    Denial::new(Reason::ContractMismatch, msg)
}

impl AwsTarget {
    pub fn new(name: &str, cfg: &AwsTargetConfig) -> anyhow::Result<AwsTarget> {
        let at = format!("targets.{name}.aws");
        let static_credentials = cfg
            .static_credentials
            .as_ref()
            .map(|c| load_static(c, &format!("{at}.static_credentials")))
            .transpose()?;
        let read_static_credentials = cfg
            .read_static_credentials
            .as_ref()
            .map(|c| load_static(c, &format!("{at}.read_static_credentials")))
            .transpose()?;
        let client = UpstreamClient::new(cfg.upstream_ca.as_deref())?;
        Ok(AwsTarget {
            name: name.to_string(),
            require_audience: cfg.require_audience,
            endpoint: cfg.endpoint.as_deref().map(str::parse).transpose()?,
            services: cfg.services.clone(),
            regions: cfg.regions.clone(),
            mode: cfg.identity,
            execution_role_arn: cfg.execution_role_arn.clone(),
            read_role_arn: cfg.read_role_arn.clone(),
            static_credentials,
            read_static_credentials,
            reads: cfg.reads,
            s3_get_object_needs_certificate: cfg.s3_get_object_needs_certificate,
            sensitive_reads: cfg.sensitive_reads.clone(),
            agent_keys: cfg
                .agent_keys
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let secret = k
                        .secret_access_key
                        .load()
                        .map_err(|e| anyhow::anyhow!("{at}.agent_keys[{i}]: {e}"))?;
                    Ok((k.access_key_id.clone(), secret))
                })
                .collect::<anyhow::Result<_>>()?,
            sts: StsClient::new(
                cfg.sts_endpoint.clone().or_else(|| cfg.endpoint.clone()),
                cfg.regions.first().cloned().unwrap_or_default(),
                client.clone(),
            ),
            headers: header_rules(),
            client,
        })
    }

    /// Reads the call and checks it is for a service and region this target serves.
    fn call(&self, parts: &http::request::Parts, body: &[u8]) -> Result<protocol::Call, Denial> {
        let call = protocol::parse(parts, body)?;
        if !self.services.contains(&call.scope.service) {
            return Err(Denial::new(
                Reason::ContractMismatch,
                format!(
                    "service {:?} is not served by aws target {:?}",
                    call.scope.service, self.name
                ),
            ));
        }
        if !self.regions.contains(&call.scope.region) {
            return Err(Denial::new(
                Reason::ContractMismatch,
                format!(
                    "region {:?} is not served by aws target {:?}",
                    call.scope.region, self.name
                ),
            ));
        }
        Ok(call)
    }
}

impl Target for AwsTarget {
    type Request = protocol::Call;

    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> crate::cert::TargetKind {
        crate::cert::TargetKind::Aws
    }

    fn client(&self) -> &UpstreamClient {
        &self.client
    }

    fn header_rules(&self) -> &super::headers::HeaderRules {
        &self.headers
    }

    fn require_audience(&self) -> bool {
        self.require_audience
    }

    fn error_dialect(&self, parts: &http::request::Parts) -> super::Dialect {
        super::Dialect::Aws(denial::error_format(parts))
    }

    /// S3 object uploads stream: they can be larger than any body the broker buffers, and
    /// their certificate binds them by sha256 whatever their size.
    fn streams_upload(&self, parts: &http::request::Parts) -> bool {
        parts.method == http::Method::PUT
            && self.call(parts, &[]).is_ok_and(|c| {
                c.scope.service == "s3"
                    && matches!(c.operation.as_str(), "PutObject" | "UploadPart")
            })
    }

    fn parse(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
    ) -> Result<Parsed<protocol::Call>, Denial> {
        let call = self.call(parts, body)?;
        let is_read = self.reads
            && call.route.read
            && !policy::is_sensitive_read(
                &call,
                self.s3_get_object_needs_certificate,
                &self.sensitive_reads,
            );
        let describe = json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "service": call.scope.service,
            "region": call.scope.region,
            "protocol": call.service.protocol.as_str(),
            "operation": call.operation,
            "resource": call.resource,
        });
        Ok(Parsed {
            is_read,
            describe,
            request: call,
        })
    }

    /// The certificate the agent presented (presigned URLs carry it in the query).
    fn certificate(&self, parts: &http::request::Parts) -> Result<Option<String>, Denial> {
        certificate(parts)
    }

    fn certificate_hint(&self) -> &'static str {
        CERT_HINT
    }

    /// A certificate left in AWS_SESSION_TOKEN authenticates the reads it rides on.
    fn certificate_authenticates_reads(&self) -> bool {
        true
    }

    /// Authenticates a reading agent by its own SigV4 signature when it signed with one of the
    /// configured agent keys. A configured `agent_keys` list is authoritative: a read signed
    /// with any other key (the placeholder, a key id the broker does not know) authenticates
    /// nothing, and passes only if the broker's own rule (mTLS, agent token) admits it. An
    /// error when the request claims an agent key and the signature does not verify.
    fn authenticate_reader(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
    ) -> Result<super::ReaderAuth, Denial> {
        let akid = signing_key_id(parts)?;
        if let Some(akid) = &akid {
            if let Some((_, secret)) = self.agent_keys.iter().find(|(k, _)| k == akid) {
                sigv4::verify_agent_signature(parts, body, akid, secret, SystemTime::now())?;
                return Ok(super::ReaderAuth::Authenticated);
            }
        }
        if self.agent_keys.is_empty() {
            return Ok(super::ReaderAuth::BrokerRule);
        }
        let signed_with = match akid.as_deref() {
            Some(PLACEHOLDER_ACCESS_KEY_ID) => format!(
                "the request is signed with the placeholder access key {PLACEHOLDER_ACCESS_KEY_ID}, which authenticates nothing"
            ),
            Some(k) => format!("access key id {k:?} is not one of its agent_keys"),
            None => "the request carries no SigV4 access key id".to_string(),
        };
        Ok(super::ReaderAuth::Locked(Denial::new(
            Reason::Unauthenticated,
            format!(
                "reads on aws target {:?} need an agent key from its agent_keys \
                 (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), a client certificate or the agent token: {signed_with}",
                self.name
            ),
        )))
    }

    fn check_contract(
        &self,
        cert: &Certificate,
        parts: &http::request::Parts,
        parsed: &Parsed<protocol::Call>,
        body: &BodyView,
    ) -> Result<(), Denial> {
        let c = contract_of(cert)?;
        let call = &parsed.request;
        if c.service != call.scope.service || c.region != call.scope.region {
            return Err(mismatch(format!(
                "certificate allows {} in {}, the request is {} in {}",
                c.service, c.region, call.scope.service, call.scope.region
            )));
        }
        if c.operation != call.operation {
            return Err(mismatch(format!(
                "certificate allows {}:{}, the request is {}:{}",
                c.service, c.operation, call.scope.service, call.operation
            )));
        }
        if let Some(r) = &c.resource {
            if call.resource.as_deref() != Some(r.as_str()) {
                return Err(mismatch(format!(
                    "certificate allows resource {r:?}, the request is for {}",
                    call.resource
                        .as_deref()
                        .map(|r| format!("{r:?}"))
                        .unwrap_or_else(|| "no single resource".into())
                )));
            }
        }
        let params = call.params.as_object().map(|m| m.len()).unwrap_or(0);
        match cert.claims.seb.body.as_ref() {
            None if params == 0 && body.bytes.is_empty() => Ok(()),
            None => Err(mismatch(format!(
                "the certificate names no parameters and the request has {}; certify them in seb.body",
                param_names(&call.params)
            ))),
            Some(BodyRule::Sha256(rule)) => {
                if call.service.protocol == model::Protocol::RestXml
                    || call.service.protocol == model::Protocol::RestJson
                {
                    // The hash covers the body only; path, query and headers must say nothing
                    // the certificate did not: the resource pins the labels, nothing else may
                    // appear.
                    if c.resource.is_none() {
                        return Err(mismatch(
                            "a certificate binding a rest body by sha256 must name its resource",
                        ));
                    }
                    let route = &call.service.operations[&call.operation];
                    let extra: Vec<&String> = call
                        .params
                        .as_object()
                        .into_iter()
                        .flat_map(|m| m.keys())
                        .filter(|k| !route.labels.values().any(|l| l == *k))
                        .collect();
                    if !extra.is_empty() {
                        return Err(mismatch(format!(
                            "{} not certified: a sha256 certificate admits only the body and its resource",
                            extra.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        )));
                    }
                }
                if self.streams_upload(parts) {
                    // Held to the certified hash in flight (upload::VerifiedUpload) and by S3
                    // through x-amz-content-sha256; there are no bytes to hash yet.
                    return Ok(());
                }
                let actual = payload_sha256(call, body)?;
                if actual == rule.sha256 {
                    Ok(())
                } else {
                    Err(mismatch(format!(
                        "body sha256 is {actual}, the certificate allows {}",
                        rule.sha256
                    )))
                }
            }
            Some(BodyRule::Constraints(rule)) => {
                if policy::is_s3_copy(&c.service, &c.operation) {
                    // The session policy grants the read of exactly this source, so the
                    // request must name it exactly (the constraint below) and it must parse.
                    policy::certified_copy_source(cert.claims.seb.body.as_ref())?;
                }
                if (call.opaque_body && !body.bytes.is_empty()) || self.streams_upload(parts) {
                    return Err(mismatch(format!(
                        "the body of {} is not parameters the broker reads; the certificate must bind it by sha256",
                        call.operation
                    )));
                }
                contract::check_constraints(rule, &call.params)
            }
        }
    }

    /// A certified read call whose answer must still be what the certificate expects.
    async fn check_live_state(
        &self,
        cert: &Certificate,
        _parts: &http::request::Parts,
        parsed: &Parsed<protocol::Call>,
        body: Bytes,
    ) -> Result<super::LiveState, Denial> {
        let Some(pre) = &cert.claims.seb.precondition else {
            return Ok(super::LiveState::unrecorded(body));
        };
        let c = contract_of(cert)?;
        let p = drift::parse(pre, &c)?;
        // Before the read: a request that lacks the pin its precondition calls for is refused
        // whatever the live state.
        let empty = serde_json::Map::new();
        let pin = drift::pin::check(
            &c.service,
            &c.operation,
            parsed.request.params.as_object().unwrap_or(&empty),
            &p,
        )?;
        let creds = self.read_credentials(&c.region).await?;
        drift::check(self, &p, &c, &creds).await?;
        Ok(super::LiveState {
            body,
            drift: Some(pin.audit(&p.operation)),
        })
    }

    async fn shadow_identity(&self) -> Result<Identity, Denial> {
        // Config allows shadow mode only with static credentials: an STS session is scoped to
        // the certificate's call.
        let creds = match self.mode {
            AwsIdentityMode::Static => self.static_credentials.clone(),
            AwsIdentityMode::Sts => None,
        }
        .ok_or_else(|| {
            Denial::new(
                Reason::IdentityUnavailable,
                "shadow mode needs static execution credentials",
            )
        })?;
        let mut audit = static_audit(&creds, "execution");
        audit["shadow"] = true.into();
        Ok(Identity {
            audit,
            headers: Vec::new(),
            aws: Some(creds),
        })
    }

    async fn identity(&self, cert: Option<&Certificate>) -> Result<Identity, Denial> {
        let Some(cert) = cert else {
            let region = self.regions.first().cloned().unwrap_or_default();
            let (credentials, audit) = self.read_credentials(&region).await?;
            return Ok(Identity {
                audit,
                headers: Vec::new(),
                aws: Some(credentials),
            });
        };
        let c = contract_of(cert)?;
        match self.mode {
            AwsIdentityMode::Static => {
                let creds = self.static_credentials.clone().ok_or_else(|| {
                    Denial::new(Reason::IdentityUnavailable, "no static credentials")
                })?;
                Ok(Identity {
                    audit: static_audit(&creds, "execution"),
                    headers: Vec::new(),
                    aws: Some(creds),
                })
            }
            AwsIdentityMode::Sts => {
                let role = self.execution_role_arn.as_deref().ok_or_else(|| {
                    Denial::new(Reason::IdentityUnavailable, "no execution_role_arn")
                })?;
                let claims = &cert.claims;
                let policy = policy::session_policy(
                    &c.service,
                    &c.operation,
                    c.resource.as_deref(),
                    claims.seb.body.as_ref(),
                )?;
                let m = self
                    .sts
                    .assume_cached(
                        // jti is unique per issuer, not across issuers; the region and the
                        // session policy are in the key too, so that a session is only ever
                        // reused for the scope it was minted for, whatever an issuer reuses.
                        &format!(
                            "{}\u{0}{}\u{0}{}\u{0}{policy}",
                            claims.iss, claims.jti, c.region
                        ),
                        &c.region,
                        AssumeRole {
                            role_arn: role,
                            session_name: identity::sanitize_session_name(&claims.jti),
                            source_identity: Some(identity::sanitize_session_name(&claims.sub)),
                            policy: Some(policy),
                            tags: vec![
                                ("seb-cert", claims.jti.clone()),
                                ("seb-policy", claims.seb.policy.clone()),
                                ("seb-action", claims.seb.action.clone()),
                            ],
                        },
                    )
                    .await?;
                Ok(Identity {
                    audit: m.audit.clone(),
                    headers: Vec::new(),
                    aws: Some(m.credentials.clone()),
                })
            }
        }
    }

    fn upstream_request(
        &self,
        parts: &http::request::Parts,
        parsed: &Parsed<protocol::Call>,
        body: Bytes,
        identity: &Identity,
        request_id: &str,
    ) -> Result<Request<Full<Bytes>>, Denial> {
        let call = &parsed.request;
        let body = if call.aws_chunked {
            Bytes::from(protocol::decode_aws_chunked(&body)?)
        } else {
            body
        };
        let payload = if call.scope.service == "s3" {
            Payload::Sha256(hex::encode(Sha256::digest(&body)))
        } else {
            Payload::Bytes(&body)
        };
        let head = self.upstream_head(parts, call, identity, request_id, payload, None)?;
        Ok(head.map(|()| Full::new(body)))
    }

    /// A streamed S3 upload: signed over the certified sha256, its body checked in flight.
    fn upstream_upload(
        &self,
        parts: &http::request::Parts,
        body: UpstreamBody,
        identity: &Identity,
        request_id: &str,
        cert: &Certificate,
    ) -> Result<Request<UpstreamBody>, Denial> {
        let call = self.call(parts, &[])?;
        let Some(BodyRule::Sha256(rule)) = &cert.claims.seb.body else {
            return Err(mismatch("an S3 upload must be bound by seb.body.sha256"));
        };
        // The payload's length: S3 needs it up front, and it is what the stream is held to.
        let length_header = if call.aws_chunked {
            "x-amz-decoded-content-length"
        } else {
            "content-length"
        };
        let declared: u64 = parts
            .headers
            .get(length_header)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                Denial::new(
                    Reason::RequestMalformed,
                    format!("an S3 upload needs a {length_header} header"),
                )
            })?;
        let head = self.upstream_head(
            parts,
            &call,
            identity,
            request_id,
            Payload::Sha256(rule.sha256.clone()),
            Some(declared),
        )?;
        let verified = upload::VerifiedUpload::new(body, call.aws_chunked, &rule.sha256, declared);
        Ok(head.map(|()| http_body_util::BodyExt::boxed_unsync(verified)))
    }
}

fn param_names(params: &Value) -> String {
    params
        .as_object()
        .map(|m| m.keys().cloned().collect::<Vec<_>>().join(", "))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "a body".into())
}

/// The sha256 of the payload the upstream will receive (aws-chunked framing removed).
fn payload_sha256(call: &protocol::Call, body: &BodyView) -> Result<String, Denial> {
    if call.aws_chunked {
        Ok(hex::encode(Sha256::digest(protocol::decode_aws_chunked(
            body.bytes,
        )?)))
    } else {
        Ok(body.sha256_hex.to_string())
    }
}

#[cfg(test)]
mod tests;
