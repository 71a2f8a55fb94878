//! Targets: what the broker knows about one kind of upstream API. A target turns an incoming
//! request into something admission can judge (is it a read? what operation on what
//! resource?), checks it against a certificate's `seb.request`, supplies the identity the
//! request runs under, and renders refusals in the agent's own error format.
//!
//! [`Target`] names the phases the pipeline calls, in its order, with defaults for what a
//! target has no part in. The pipeline is generic over it (one listener serves one target
//! type), so every call is static and a reader can follow it to its code.

pub mod aws;
pub mod headers;
pub mod http;
pub mod kubernetes;
pub mod path;

use crate::cert::{Certificate, TargetKind};
use crate::contract::BodyView;
use crate::denial::Denial;
use crate::upstream::{UpstreamBody, UpstreamClient};
use bytes::Bytes;
use serde_json::Value;
use std::future::Future;

pub use crate::denial::Dialect;

/// What the request is, as far as the broker is concerned.
pub struct Parsed<R> {
    pub is_read: bool,
    /// Audit record `request`: method, path, operation or verb, resource.
    pub describe: Value,
    /// What the target read from the request, in its own terms, kept so that later phases do
    /// not read (and for JSON bodies, parse) it again.
    pub request: R,
}

/// What the live-state check leaves: the body to forward, and for the audit record's
/// `request.drift` what was checked and whether the write is pinned to it.
pub struct LiveState {
    pub body: Bytes,
    pub drift: Option<Value>,
}

impl LiveState {
    /// Nothing recorded about drift (no precondition, or a target that records none).
    pub fn unrecorded(body: Bytes) -> LiveState {
        LiveState { body, drift: None }
    }
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
    /// The headers the forwarded request carries for it (a credential, a bearer token,
    /// impersonation), built when the identity is, beside the audit value that describes
    /// them: nothing downstream reads the audit value to decide what to send.
    pub(crate) headers: Vec<(::http::HeaderName, ::http::HeaderValue)>,
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

type Parts = ::http::request::Parts;

/// One kind of upstream API, as the pipeline sees it. The methods are the pipeline's phases in
/// the order it calls them (`proxy::pipeline` reads top to bottom alike); a default is what a
/// target with no part in that phase does.
pub trait Target: Send + Sync + 'static {
    /// The request as this target reads it (an AWS call: protocol, operation, members).
    type Request: Send + Sync;

    // --- what the target is
    fn name(&self) -> &str;
    fn kind(&self) -> TargetKind;
    fn client(&self) -> &UpstreamClient;
    /// Which agent headers travel upstream, and which make a request ambiguous.
    fn header_rules(&self) -> &headers::HeaderRules;
    /// Whether a certificate must name this target in `aud` (see [`check_certificate_target`]).
    fn require_audience(&self) -> bool;

    /// How a refusal must look to this request's client, read before anything consumes it.
    fn error_dialect(&self, _parts: &Parts) -> Dialect {
        Dialect::Problem
    }

    // --- parse
    /// The request head alone: headers the upstream could read differently are refused
    /// whatever the request is (reads included). Runs before the body is read, so such a
    /// request costs no body read or hash, and before [`Target::parse`], which relies on it.
    fn check_head(&self, parts: &Parts) -> Result<(), Denial> {
        headers::check(&parts.headers, self.header_rules())
    }

    /// Whether the request body goes upstream as a stream instead of being read first.
    fn streams_upload(&self, _parts: &Parts) -> bool {
        false
    }

    /// Reads the request: which operation on which resource, and whether it is a read.
    fn parse(&self, parts: &Parts, body: &Bytes) -> Result<Parsed<Self::Request>, Denial>;

    /// The certificate the agent presented, if any.
    fn certificate(&self, parts: &Parts) -> Result<Option<String>, Denial>;

    /// What to tell an agent that sent a mutation without a certificate.
    fn certificate_hint(&self) -> &'static str;

    // --- authenticate a read
    /// The token that authenticates an agent for reads.
    fn agent_token<'a>(&self, headers: &'a ::http::HeaderMap) -> Option<&'a str> {
        headers
            .get(headers::AGENT_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
    }

    /// Whether a verified certificate authenticates reads that carry it (see the pipeline).
    fn certificate_authenticates_reads(&self) -> bool {
        false
    }

    /// Target-specific agent authentication for reads (AWS: the agent's SigV4 signature with
    /// an agent key). An error when the request claims a target credential that does not
    /// verify.
    fn authenticate_reader(&self, _parts: &Parts, _body: &Bytes) -> Result<ReaderAuth, Denial> {
        Ok(ReaderAuth::BrokerRule)
    }

    // --- check the contract
    /// The request against the certificate's `seb.request` and `seb.body`. The certificate
    /// has passed [`check_certificate_target`].
    fn check_contract(
        &self,
        cert: &Certificate,
        parts: &Parts,
        parsed: &Parsed<Self::Request>,
        body: &BodyView,
    ) -> Result<(), Denial>;

    // --- check live state
    /// Does the target still look as it did when the change was certified
    /// (`seb.precondition`), and (where the target can compute it) is the change's effect on
    /// the live object the certified one? Returns the body to forward, which may pin the state
    /// that was checked (no gap between check and use), and what the audit record says about
    /// the check. Runs before a use is spent.
    fn check_live_state(
        &self,
        _cert: &Certificate,
        _parts: &Parts,
        _parsed: &Parsed<Self::Request>,
        body: Bytes,
    ) -> impl Future<Output = Result<LiveState, Denial>> + Send {
        std::future::ready(Ok(LiveState::unrecorded(body)))
    }

    // --- identity
    /// Identity for an admitted mutation (`Some(cert)`) or a read (`None`).
    fn identity(
        &self,
        cert: Option<&Certificate>,
    ) -> impl Future<Output = Result<Identity, Denial>> + Send;

    /// The execution identity a target in shadow mode forwards a request under when the
    /// request would have been refused: there may be no certificate to scope it to. Only
    /// targets whose config allows shadow mode (see `config::target`) have one.
    fn shadow_identity(&self) -> impl Future<Output = Result<Identity, Denial>> + Send {
        std::future::ready(Err(Denial::new(
            crate::denial::Reason::IdentityUnavailable,
            "this target has no execution identity without a certificate, so it cannot run in shadow mode",
        )))
    }

    /// A refusal of a certificate, with what the target knows about its earlier uses.
    fn explain(&self, _cert: &Certificate, denial: Denial) -> Denial {
        denial
    }

    // --- upstream request
    fn upstream_request(
        &self,
        parts: &Parts,
        parsed: &Parsed<Self::Request>,
        body: Bytes,
        identity: &Identity,
        request_id: &str,
    ) -> Result<::http::Request<http_body_util::Full<Bytes>>, Denial>;

    /// The upstream request for a streamed body (only where [`Target::streams_upload`]).
    fn upstream_upload(
        &self,
        _parts: &Parts,
        _body: UpstreamBody,
        _identity: &Identity,
        _request_id: &str,
        _cert: &Certificate,
    ) -> Result<::http::Request<UpstreamBody>, Denial> {
        Err(Denial::new(
            crate::denial::Reason::RequestMalformed,
            "this target does not stream request bodies",
        ))
    }

    /// How an admitted request's upstream call ended, for targets that explain later
    /// refusals of the same certificate with it.
    fn observe_outcome(&self, _cert: &Certificate, _status: ::http::StatusCode) {}
}

/// Is the certificate for this listener? Its `seb.target` must be this target's kind and its
/// `aud` must name this target (`[[targets]] name`): two listeners of one kind may trust the
/// same signer (staging and prod), and the kind alone would let a certificate made for one be
/// spent on the other. A certificate without `aud` is refused where the target requires one;
/// http targets do not, since their certificates name the target in
/// `seb.request.upstream` already (v1).
pub fn check_certificate_target<T: Target + ?Sized>(
    target: &T,
    cert: &Certificate,
) -> Result<(), Denial> {
    let mismatch = |m: String| Denial::new(crate::denial::Reason::ContractMismatch, m);
    let kind = cert.claims.seb.target;
    if kind != target.kind() {
        return Err(mismatch(format!(
            "certificate is for a {} target, this is {} target {:?}",
            kind.as_str(),
            target.kind().as_str(),
            target.name()
        )));
    }
    match &cert.claims.aud {
        Some(aud) if aud.contains(target.name()) => Ok(()),
        Some(aud) => Err(mismatch(format!(
            "certificate is for target {} (aud), this is target {:?}",
            serde_json::to_string(&aud.0).unwrap_or_default(),
            target.name()
        ))),
        None if target.require_audience() => Err(mismatch(format!(
            "certificate names no target (aud); target {:?} admits only certificates whose aud names it \
             (require_audience = false admits them while signers migrate)",
            target.name()
        ))),
        None => Ok(()),
    }
}
