//! Everything that talks to an upstream: the client, its connection pool, and the body types
//! both sides of the broker share. It uses neither `proxy` nor `targets`, which both use it.

mod body;
mod client;
mod pool;

pub use body::{full_body, stream_body, upstream_full, Body, BoxError, NeverSent, UpstreamBody};
pub use client::{error_chain, UpstreamClient};
