//! Targets: what the broker knows about one kind of upstream API. A target turns an incoming
//! request into something admission can judge (is it a read? what operation on what
//! resource?), checks it against a certificate's `seb.request`, supplies the identity the
//! request runs under, and renders refusals in the agent's own error format.
//!
//! Dispatch is an enum rather than a trait object: the set of targets is closed and small, and
//! a reader can follow every call to its code.

pub mod http;
pub mod kubernetes;
pub mod path;

use crate::cert::{Certificate, TargetKind};
use crate::contract::BodyView;
use crate::denial::Denial;
use crate::proxy::forward::{Body, UpstreamClient};
use bytes::Bytes;
use serde_json::Value;

pub enum Target {
    Http(http::HttpTarget),
    Kubernetes(kubernetes::KubeTarget),
}

/// What the request is, as far as the broker is concerned.
pub struct Parsed {
    pub is_read: bool,
    /// Audit record `request`: method, path, operation or verb, resource.
    pub describe: Value,
}

/// The identity a request is executed under, for the audit record; secrets stay inside.
pub struct Identity {
    pub audit: Value,
    pub(crate) header: Option<(::http::HeaderName, ::http::HeaderValue)>,
}

impl Target {
    pub fn name(&self) -> &str {
        match self {
            Target::Http(t) => &t.name,
            Target::Kubernetes(t) => &t.name,
        }
    }

    pub fn kind(&self) -> TargetKind {
        match self {
            Target::Http(_) => TargetKind::Http,
            Target::Kubernetes(_) => TargetKind::Kubernetes,
        }
    }

    pub fn client(&self) -> &UpstreamClient {
        match self {
            Target::Http(t) => &t.client,
            Target::Kubernetes(t) => &t.client,
        }
    }

    /// Reads the request: which operation on which resource, and whether it is a read.
    pub fn parse(&self, parts: &::http::request::Parts, body: &Bytes) -> Result<Parsed, Denial> {
        match self {
            Target::Http(t) => t.parse(parts, body),
            Target::Kubernetes(t) => t.parse(parts, body),
        }
    }

    /// The certificate the agent presented, if any.
    pub fn certificate<'a>(
        &self,
        headers: &'a ::http::HeaderMap,
    ) -> Result<Option<&'a str>, Denial> {
        match self {
            Target::Http(_) => http::certificate(headers),
            Target::Kubernetes(_) => kubernetes::certificate(headers),
        }
    }

    /// The token that authenticates an agent for reads: `X-Seb-Agent-Token`, or for
    /// kubernetes the bearer token (kubectl has no other place for it) when it is not a
    /// certificate.
    pub fn agent_token<'a>(&self, headers: &'a ::http::HeaderMap) -> Option<&'a str> {
        match self {
            Target::Http(_) => headers
                .get(crate::proxy::AGENT_TOKEN_HEADER)
                .and_then(|v| v.to_str().ok()),
            Target::Kubernetes(_) => kubernetes::agent_token(headers),
        }
    }

    /// Whether a verified certificate authenticates reads that carry it (see the pipeline).
    pub fn certificate_authenticates_reads(&self) -> bool {
        match self {
            Target::Http(_) => false,
            Target::Kubernetes(_) => true,
        }
    }

    pub fn check_contract(
        &self,
        cert: &Certificate,
        parts: &::http::request::Parts,
        body: &BodyView,
    ) -> Result<(), Denial> {
        match self {
            Target::Http(t) => t.check_contract(cert, parts, body),
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
            Target::Http(_) => Ok(body),
            Target::Kubernetes(t) => t.check_effect(cert, parts, body).await,
        }
    }

    /// Identity for an admitted mutation (`Some(cert)`) or a read (`None`).
    pub async fn identity(&self, cert: Option<&Certificate>) -> Result<Identity, Denial> {
        match self {
            Target::Http(t) => Ok(t.identity(cert)),
            Target::Kubernetes(t) => t.identity(cert).await,
        }
    }

    pub fn upstream_request(
        &self,
        parts: &::http::request::Parts,
        body: Bytes,
        identity: &Identity,
        request_id: &str,
    ) -> Result<::http::Request<http_body_util::Full<Bytes>>, Denial> {
        match self {
            Target::Http(t) => t.upstream_request(parts, body, identity, request_id),
            Target::Kubernetes(t) => t.upstream_request(parts, body, identity, request_id),
        }
    }

    pub fn render_denial(&self, denial: &Denial, request_id: &str) -> ::http::Response<Body> {
        match self {
            Target::Http(_) => http::problem(denial, request_id),
            Target::Kubernetes(t) => t.render_denial(denial, request_id),
        }
    }
}
