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

pub mod config;
pub mod denial;
pub mod drift;
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
use bytes::Bytes;
use config::{AwsIdentityMode, AwsTargetConfig, StaticCredentialsConfig};
use http::{HeaderMap, Request, Uri};
use http_body_util::Full;
use identity::{AssumeRole, StsClient};
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

fn load_static(c: &StaticCredentialsConfig, at: &str) -> anyhow::Result<Credentials> {
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

    async fn read_credentials(&self, region: &str) -> Result<(Credentials, Value), Denial> {
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
                            session_name: identity::sanitize_session_name(&format!(
                                "seb-read-{}",
                                self.name
                            )),
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

    /// Where a call for `service` in `region` goes.
    fn upstream_base(&self, service: &model::Service, region: &str) -> Result<Uri, Denial> {
        if let Some(e) = &self.endpoint {
            return Ok(e.clone());
        }
        let host = match &service.global_endpoint {
            Some(g) => g.clone(),
            None => format!("{}.{region}.amazonaws.com", service.endpoint_prefix),
        };
        format!("https://{host}")
            .parse()
            .map_err(|e| Denial::new(Reason::RequestMalformed, format!("bad endpoint: {e}")))
    }

    /// Method, URL and headers of the upstream request, signed over `payload`.
    fn upstream_head(
        &self,
        parts: &http::request::Parts,
        call: &protocol::Call,
        identity: &Identity,
        request_id: &str,
        payload: Payload<'_>,
        content_length: Option<u64>,
    ) -> Result<Request<()>, Denial> {
        let creds = identity.aws.as_ref().ok_or_else(|| {
            Denial::new(
                Reason::IdentityUnavailable,
                "no AWS credentials were minted",
            )
        })?;
        let base = self.upstream_base(call.service, &call.scope.region)?;
        let path_and_query = match forwarded_query(parts.uri.query().unwrap_or(""))? {
            q if q.is_empty() => parts.uri.path().to_string(),
            q => format!("{}?{q}", parts.uri.path()),
        };
        let uri = super::upstream_uri(&base, &path_and_query)?;
        let mut req = Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .body(())
            .map_err(|e| {
                Denial::new(
                    Reason::RequestMalformed,
                    format!("cannot build the upstream request: {e}"),
                )
            })?;
        copy_headers(
            &parts.headers,
            &self.headers,
            req.headers_mut(),
            call.aws_chunked,
        )?;
        if let Some(n) = content_length {
            req.headers_mut()
                .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
        }
        sigv4::sign_request(
            &mut req,
            creds,
            &call.service.signing_name,
            &call.scope.region,
            payload,
            SystemTime::now(),
        )?;
        // Added after signing: AWS ignores it, and it ties upstream logs to the audit record.
        if let Ok(v) = http::HeaderValue::from_str(request_id) {
            req.headers_mut().insert("x-request-id", v);
        }
        Ok(req)
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
        _parsed: &Parsed<protocol::Call>,
        body: Bytes,
    ) -> Result<Bytes, Denial> {
        let Some(pre) = &cert.claims.seb.precondition else {
            return Ok(body);
        };
        let c = contract_of(cert)?;
        let creds = self.read_credentials(&c.region).await?;
        drift::check(self, pre, &c, &creds).await?;
        Ok(body)
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
                        // jti is unique per issuer, not across issuers.
                        &format!("{}\u{0}{}", claims.iss, claims.jti),
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

fn static_audit(c: &Credentials, purpose: &str) -> Value {
    json!({
        "kind": "static",
        "purpose": purpose,
        "access_key_id": c.access_key_id,
        "note": "static credentials from the broker config (emulators and tests): not scoped per certificate",
    })
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

/// The agent's query string minus presigned-URL authentication, in its original spelling.
fn forwarded_query(q: &str) -> Result<String, Denial> {
    let mut kept = Vec::new();
    for piece in q.split('&').filter(|p| !p.is_empty()) {
        let key = protocol::percent_decode(piece.split('=').next().unwrap_or(""))?;
        if !key.to_ascii_lowercase().starts_with("x-amz-")
            || !matches!(
                key.to_ascii_lowercase().as_str(),
                "x-amz-algorithm"
                    | "x-amz-credential"
                    | "x-amz-date"
                    | "x-amz-expires"
                    | "x-amz-signedheaders"
                    | "x-amz-signature"
                    | "x-amz-security-token"
            )
        {
            kept.push(piece);
        }
    }
    Ok(kept.join("&"))
}

/// Which agent headers travel: the shared rules, plus the agent's signature and certificate
/// (the certificate rides in `X-Amz-Security-Token` and never goes upstream), which the broker
/// replaces when it re-signs. AWS reads any `x-amz-` header as a parameter, so no folded
/// spelling of one may travel; S3 metadata names (`x-amz-meta-`) are the user's own.
fn header_rules() -> super::headers::HeaderRules {
    use super::headers::{Exact, HeaderRules};
    let mut r = HeaderRules::new();
    for n in [
        "x-amz-security-token",
        "x-amz-date",
        "x-amz-content-sha256",
        "expect",
        "user-agent",
    ] {
        r = r.name(n, Exact::Strip);
    }
    r.user_prefix("x-amz-meta-").prefix("x-amz-", Exact::Keep)
}

/// The agent's headers as the header rules let them travel, and for aws-chunked bodies minus
/// the framing headers, since the broker forwards the decoded payload.
fn copy_headers(
    from: &HeaderMap,
    rules: &super::headers::HeaderRules,
    to: &mut HeaderMap,
    aws_chunked: bool,
) -> Result<(), Denial> {
    let mut copied = HeaderMap::new();
    super::headers::copy(from, rules, &mut copied)?;
    for (name, value) in &copied {
        let n = name.as_str();
        let drop = aws_chunked
            && matches!(
                n,
                "x-amz-decoded-content-length" | "x-amz-trailer" | "content-encoding"
            );
        if !drop {
            to.append(name.clone(), value.clone());
        }
    }
    if aws_chunked {
        // Keep any real content coding listed beside aws-chunked (S3 stores it as metadata).
        let rest: Vec<String> = from
            .get_all(http::header::CONTENT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("aws-chunked"))
            .collect();
        if let Ok(v) = http::HeaderValue::from_str(&rest.join(", ")) {
            if !rest.is_empty() {
                to.insert(http::header::CONTENT_ENCODING, v);
            }
        }
    }
    Ok(())
}

/// The access key id the request is signed with: from the `Authorization` header's
/// credential scope, or a presigned URL's `X-Amz-Credential`.
fn signing_key_id(parts: &http::request::Parts) -> Result<Option<String>, Denial> {
    if let Some(auth) = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return Ok(auth
            .split("Credential=")
            .nth(1)
            .and_then(|c| c.split('/').next())
            .map(str::to_string));
    }
    for (k, v) in protocol::query_pairs(parts.uri.query().unwrap_or(""))? {
        if k.eq_ignore_ascii_case("x-amz-credential") {
            return Ok(v.split('/').next().map(str::to_string));
        }
    }
    Ok(None)
}

/// `X-Amz-Security-Token` as a header or a presigned-URL query parameter; exactly one.
pub fn certificate(parts: &http::request::Parts) -> Result<Option<String>, Denial> {
    let mut found: Vec<String> = Vec::new();
    for v in parts.headers.get_all("x-amz-security-token") {
        found.push(
            v.to_str()
                .map_err(|_| {
                    Denial::new(Reason::CertMalformed, "X-Amz-Security-Token is not ASCII")
                })?
                .trim()
                .to_string(),
        );
    }
    for (k, v) in protocol::query_pairs(parts.uri.query().unwrap_or(""))? {
        if k.eq_ignore_ascii_case("x-amz-security-token") {
            found.push(v.trim().to_string());
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(Denial::new(
            Reason::CertMalformed,
            "more than one X-Amz-Security-Token was presented; send exactly one certificate",
        )),
    }
}

pub const CERT_HINT: &str = "this AWS call is not on the list of reads that pass without a certificate (it changes state or returns a secret) and carries none; set AWS_SESSION_TOKEN to the certificate";

#[cfg(test)]
mod tests;
