//! Body types shared by the agent side and the upstream side.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request provably never reached the upstream: no connection could be made, or the
/// connection closed before a byte of the request was written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NeverSent(pub String);
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A request body on its way upstream: buffered, or streamed from the agent (S3 uploads).
/// Not `Sync`, so any agent body fits.
pub type UpstreamBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn upstream_full(bytes: Full<Bytes>) -> UpstreamBody {
    bytes.map_err(|never| match never {}).boxed_unsync()
}

pub fn stream_body(incoming: Incoming) -> Body {
    incoming.map_err(|e| Box::new(e) as BoxError).boxed()
}
