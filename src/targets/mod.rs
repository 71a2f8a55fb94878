//! Targets: what the broker knows about one kind of upstream API. A target turns an incoming
//! request into something admission can judge (is it a read? what operation on what
//! resource?), checks it against a certificate's `seb.request`, supplies the identity the
//! request runs under, and renders refusals in the agent's own error format.
//!
//! Dispatch is an enum rather than a trait object: the set of targets is closed and small, and
//! a reader can follow every call to its code.

pub mod aws;
pub mod headers;
pub mod http;
pub mod kubernetes;
pub mod path;

use crate::cert::{Certificate, TargetKind};
use crate::contract::BodyView;
use crate::denial::Denial;
use crate::upstream::{Body, UpstreamBody, UpstreamClient};
use bytes::Bytes;
use serde_json::Value;

// One Target per listener, built once and shared behind an Arc: variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Target {
    Http(http::HttpTarget),
    Aws(aws::AwsTarget),
    Kubernetes(kubernetes::KubeTarget),
}

/// How a refusal must look to this request's client, read from the request before the
/// pipeline consumes it (an AWS client expects its own service's error dialect).
#[derive(Clone, Copy, Debug)]
pub enum ErrorDialect {
    Native,
    Aws(aws::ErrorFormat),
    /// A Kubernetes request that client-go reads with `Result.Raw()` (discovery, `/version`,
    /// `/openapi`): its error is built from the answer's text, never from a `Status`.
    KubeRaw,
}

/// What the request is, as far as the broker is concerned.
pub struct Parsed {
    pub is_read: bool,
    /// Audit record `request`: method, path, operation or verb, resource.
    pub describe: Value,
    /// What the target read from the request, kept so that later phases do not read (and
    /// for JSON bodies, parse) it again.
    pub(crate) call: Option<aws::protocol::Call>,
}

/// What a target says about the agent behind a read, before the broker's own rule (an mTLS
/// client certificate, an agent token) is applied.
#[derive(Debug)]
pub enum ReaderAuth {
    /// The target authenticated the agent (AWS: an agent key's signature verified).
    Authenticated,
    /// The target has no say: the broker's rule decides.
    BrokerRule,
    /// The target requires authenticated reads and this request is not (AWS with
    /// `agent_keys`): the broker's rule may still admit it, otherwise this is the refusal.
    Locked(Denial),
}

/// The identity a request is executed under, for the audit record; secrets stay inside.
pub struct Identity {
    pub audit: Value,
    pub(crate) header: Option<(::http::HeaderName, ::http::HeaderValue)>,
    /// AWS: the credentials the forwarded request is signed with.
    pub(crate) aws: Option<aws::sigv4::Credentials>,
}

/// The upstream URL for a request: the configured base (scheme, authority, and any path
/// prefix) followed by the request's path and query, byte for byte (never re-encoded or
/// normalized: the bytes checked are the bytes sent).
pub fn upstream_uri(base: &::http::Uri, path_and_query: &str) -> Result<::http::Uri, Denial> {
    let base_path = base.path().trim_end_matches('/');
    ::http::Uri::builder()
        .scheme(base.scheme_str().unwrap_or("https"))
        .authority(base.authority().map(|a| a.as_str()).unwrap_or_default())
        .path_and_query(format!("{base_path}{path_and_query}"))
        .build()
        .map_err(|e| {
            Denial::new(
                crate::denial::Reason::RequestMalformed,
                format!("cannot build the upstream URL: {e}"),
            )
        })
}

/// The forwarded request as far as every target builds it alike: the agent's method, its
/// path and query under the upstream's base, its end-to-end headers. Each target then takes
/// off what must not pass and adds its execution identity.
pub fn forwarded_request(
    base: &::http::Uri,
    parts: &::http::request::Parts,
    rules: &headers::HeaderRules,
) -> Result<::http::request::Builder, Denial> {
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut req = ::http::Request::builder()
        .method(parts.method.clone())
        .uri(upstream_uri(base, pq)?);
    if let Some(to) = req.headers_mut() {
        headers::copy(&parts.headers, rules, to)?;
    }
    Ok(req)
}

/// A refusal's response in any target's dialect: status, media type, and `no-store`, since a
/// refusal describes one request at one moment and no cache between agent and broker may
/// replay it for another.
pub fn refusal_response(
    status: ::http::StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> ::http::Response<Body> {
    let mut resp = ::http::Response::new(crate::upstream::full_body(body.into()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        ::http::header::CONTENT_TYPE,
        ::http::HeaderValue::from_static(content_type),
    );
    h.insert(
        ::http::header::CACHE_CONTROL,
        ::http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// A header that may appear at most once, as text: two values (or bytes that are not ASCII)
/// could be read differently by the broker and the upstream, so both are refused.
pub fn single_header(
    headers: &::http::HeaderMap,
    name: impl ::http::header::AsHeaderName + Clone + std::fmt::Display,
) -> Result<Option<&str>, Denial> {
    let mut values = headers.get_all(name.clone()).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Denial::new(
            crate::denial::Reason::RequestMalformed,
            format!("{name} appears more than once"),
        ));
    }
    first.to_str().map(Some).map_err(|_| {
        Denial::new(
            crate::denial::Reason::RequestMalformed,
            format!("{name} is not ASCII"),
        )
    })
}

impl Target {
    pub fn name(&self) -> &str {
        match self {
            Target::Http(t) => &t.name,
            Target::Aws(t) => &t.name,
            Target::Kubernetes(t) => &t.name,
        }
    }

    pub fn kind(&self) -> TargetKind {
        match self {
            Target::Http(_) => TargetKind::Http,
            Target::Aws(_) => TargetKind::Aws,
            Target::Kubernetes(_) => TargetKind::Kubernetes,
        }
    }

    pub fn client(&self) -> &UpstreamClient {
        match self {
            Target::Http(t) => &t.client,
            Target::Aws(t) => &t.client,
            Target::Kubernetes(t) => &t.client,
        }
    }

    /// Which agent headers travel upstream, and which make a request ambiguous.
    pub fn header_rules(&self) -> &headers::HeaderRules {
        match self {
            Target::Http(t) => &t.headers,
            Target::Aws(t) => &t.headers,
            Target::Kubernetes(t) => &t.headers,
        }
    }

    /// The request head alone: headers the upstream could read differently are refused
    /// whatever the request is (reads included). The pipeline calls this before it reads the
    /// body, so such a request costs no body read or hash, and before [`Target::parse`],
    /// which relies on it.
    pub fn check_head(&self, parts: &::http::request::Parts) -> Result<(), Denial> {
        headers::check(&parts.headers, self.header_rules())
    }

    /// Reads the request: which operation on which resource, and whether it is a read. The
    /// head has passed [`Target::check_head`].
    pub fn parse(&self, parts: &::http::request::Parts, body: &Bytes) -> Result<Parsed, Denial> {
        headers::check_read_method_body(&parts.method, body.len())?;
        match self {
            Target::Http(t) => t.parse(parts, body),
            Target::Aws(t) => t.parse(parts, body),
            Target::Kubernetes(t) => t.parse(parts, body),
        }
    }

    /// The certificate the agent presented, if any (AWS presigned URLs carry it in the query).
    pub fn certificate(&self, parts: &::http::request::Parts) -> Result<Option<String>, Denial> {
        match self {
            Target::Http(_) => Ok(http::certificate(&parts.headers)?.map(str::to_string)),
            Target::Aws(_) => aws::certificate(parts),
            Target::Kubernetes(_) => {
                Ok(kubernetes::certificate(&parts.headers)?.map(str::to_string))
            }
        }
    }

    /// What to tell an agent that sent a mutation without a certificate.
    pub fn certificate_hint(&self) -> &'static str {
        match self {
            Target::Http(_) => "this request changes state and carries no certificate; present one as \"Authorization: Bearer <certificate>\"",
            Target::Aws(_) => aws::CERT_HINT,
            Target::Kubernetes(_) => "this request changes the cluster and carries no certificate; present one as the bearer token (kubectl --token \"$CERT\")",
        }
    }

    pub fn error_dialect(&self, parts: &::http::request::Parts) -> ErrorDialect {
        match self {
            Target::Http(_) => ErrorDialect::Native,
            Target::Kubernetes(_) if kubernetes::read_raw_by_client_go(parts) => {
                ErrorDialect::KubeRaw
            }
            Target::Kubernetes(_) => ErrorDialect::Native,
            Target::Aws(_) => ErrorDialect::Aws(aws::denial::error_format(parts)),
        }
    }

    /// The token that authenticates an agent for reads: `X-Seb-Agent-Token`, or for
    /// kubernetes the bearer token (kubectl has no other place for it) when it is not a
    /// certificate.
    pub fn agent_token<'a>(&self, headers: &'a ::http::HeaderMap) -> Option<&'a str> {
        match self {
            Target::Http(_) | Target::Aws(_) => headers
                .get(crate::targets::headers::AGENT_TOKEN_HEADER)
                .and_then(|v| v.to_str().ok()),
            Target::Kubernetes(_) => kubernetes::agent_token(headers),
        }
    }

    /// Whether a verified certificate authenticates reads that carry it (see the pipeline).
    pub fn certificate_authenticates_reads(&self) -> bool {
        match self {
            Target::Http(_) => false,
            Target::Aws(_) | Target::Kubernetes(_) => true,
        }
    }

    /// Is the certificate for this listener? Its `seb.target` must be this target's kind and
    /// its `aud` must name this target (`[[targets]] name`): two listeners of one kind may
    /// trust the same signer (staging and prod), and the kind alone would let a certificate
    /// made for one be spent on the other. A certificate without `aud` is refused where the
    /// target requires one; http targets do not, since their certificates name the target in
    /// `seb.request.upstream` already (v1).
    pub fn check_certificate_target(&self, cert: &Certificate) -> Result<(), Denial> {
        let mismatch = |m: String| Denial::new(crate::denial::Reason::ContractMismatch, m);
        let kind = cert.claims.seb.target;
        if kind != self.kind() {
            return Err(mismatch(format!(
                "certificate is for a {} target, this is {} target {:?}",
                kind.as_str(),
                self.kind().as_str(),
                self.name()
            )));
        }
        match &cert.claims.aud {
            Some(aud) if aud.contains(self.name()) => Ok(()),
            Some(aud) => Err(mismatch(format!(
                "certificate is for target {} (aud), this is target {:?}",
                serde_json::to_string(&aud.0).unwrap_or_default(),
                self.name()
            ))),
            None if self.require_audience() => Err(mismatch(format!(
                "certificate names no target (aud); target {:?} admits only certificates whose aud names it \
                 (require_audience = false admits them while signers migrate)",
                self.name()
            ))),
            None => Ok(()),
        }
    }

    fn require_audience(&self) -> bool {
        match self {
            Target::Http(_) => false,
            Target::Aws(t) => t.require_audience,
            Target::Kubernetes(t) => t.require_audience,
        }
    }

    pub fn check_contract(
        &self,
        cert: &Certificate,
        parts: &::http::request::Parts,
        parsed: &Parsed,
        body: &BodyView,
    ) -> Result<(), Denial> {
        self.check_certificate_target(cert)?;
        match self {
            Target::Http(t) => t.check_contract(cert, parts, body),
            Target::Aws(t) => t.check_contract(cert, parts, body, parsed.call.as_ref()),
            Target::Kubernetes(t) => t.check_contract(cert, parts, body),
        }
    }

    /// Live-state drift: does the target still look as it did when the change was certified
    /// (`seb.precondition`)? Runs after the contract matched and before a use is spent.
    pub async fn check_drift(&self, cert: &Certificate, _parsed: &Parsed) -> Result<(), Denial> {
        match self {
            // The http target refuses certificates with a precondition in check_contract: it
            // has no live state to read.
            Target::Http(_) => {
                debug_assert!(cert.claims.seb.precondition.is_none());
                Ok(())
            }
            Target::Aws(t) => t.check_drift(cert).await,
            // Kubernetes checks its precondition in check_effect, on the same read of the
            // live object that the effect is computed from.
            Target::Kubernetes(_) => Ok(()),
        }
    }

    /// Effect matching against the live object, for targets that can compute it. Returns
    /// the body to forward, which may carry a precondition pinning the state that was
    /// checked (no time-of-check/time-of-use gap).
    pub async fn check_effect(
        &self,
        cert: &Certificate,
        parts: &::http::request::Parts,
        body: Bytes,
    ) -> Result<Bytes, Denial> {
        match self {
            Target::Http(_) | Target::Aws(_) => Ok(body),
            Target::Kubernetes(t) => t.check_effect(cert, parts, body).await,
        }
    }

    /// How an admitted request's upstream call ended, for targets that explain later
    /// refusals of the same certificate with it.
    pub fn observe_outcome(&self, cert: &Certificate, status: ::http::StatusCode) {
        if let Target::Kubernetes(t) = self {
            t.observe_outcome(cert, status)
        }
    }

    /// A refusal of a certificate, with what the target knows about its earlier uses.
    pub fn explain(&self, cert: &Certificate, denial: Denial) -> Denial {
        match self {
            Target::Kubernetes(t) => t.explain(cert, denial),
            Target::Http(_) | Target::Aws(_) => denial,
        }
    }

    /// Identity for an admitted mutation (`Some(cert)`) or a read (`None`).
    pub async fn identity(&self, cert: Option<&Certificate>) -> Result<Identity, Denial> {
        match self {
            Target::Http(t) => Ok(t.identity(cert)),
            Target::Aws(t) => t.identity(cert).await,
            Target::Kubernetes(t) => t.identity(cert).await,
        }
    }

    pub fn upstream_request(
        &self,
        parts: &::http::request::Parts,
        parsed: &Parsed,
        body: Bytes,
        identity: &Identity,
        request_id: &str,
    ) -> Result<::http::Request<http_body_util::Full<Bytes>>, Denial> {
        match self {
            Target::Http(t) => t.upstream_request(parts, body, identity, request_id),
            Target::Aws(t) => {
                t.upstream_request(parts, body, identity, request_id, parsed.call.as_ref())
            }
            Target::Kubernetes(t) => t.upstream_request(parts, body, identity, request_id),
        }
    }

    /// Target-specific agent authentication for reads (AWS: the agent's SigV4 signature with
    /// an agent key). An error when the request claims a target credential that does not
    /// verify.
    pub fn authenticate_reader(
        &self,
        parts: &::http::request::Parts,
        body: &Bytes,
    ) -> Result<ReaderAuth, Denial> {
        match self {
            Target::Http(_) | Target::Kubernetes(_) => Ok(ReaderAuth::BrokerRule),
            Target::Aws(t) => t.authenticate_reader(parts, body),
        }
    }

    /// Whether the request body goes upstream as a stream instead of being read first.
    pub fn streams_upload(&self, parts: &::http::request::Parts) -> bool {
        match self {
            Target::Http(_) | Target::Kubernetes(_) => false,
            Target::Aws(t) => t.streams_upload(parts),
        }
    }

    /// The upstream request for a streamed body (only where [`Target::streams_upload`]).
    pub fn upstream_upload(
        &self,
        parts: &::http::request::Parts,
        body: UpstreamBody,
        identity: &Identity,
        request_id: &str,
        cert: &Certificate,
    ) -> Result<::http::Request<UpstreamBody>, Denial> {
        match self {
            Target::Http(_) | Target::Kubernetes(_) => Err(Denial::new(
                crate::denial::Reason::RequestMalformed,
                "only aws targets stream request bodies",
            )),
            Target::Aws(t) => t.upstream_upload(parts, body, identity, request_id, cert),
        }
    }

    pub fn render_denial(
        &self,
        denial: &Denial,
        dialect: ErrorDialect,
        request_id: &str,
    ) -> ::http::Response<Body> {
        match (self, dialect) {
            (Target::Aws(_), ErrorDialect::Aws(f)) => aws::denial::render(denial, f, request_id),
            (Target::Kubernetes(_), ErrorDialect::KubeRaw) => {
                kubernetes::status::render_text(denial)
            }
            (Target::Kubernetes(t), _) => t.render_denial(denial, request_id),
            _ => http::problem(denial, request_id),
        }
    }
}
