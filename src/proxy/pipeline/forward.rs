//! Sending the rebuilt request upstream within the request's deadline, and the two helpers
//! the pipeline's phases share: a step bounded by that deadline and the body read within its
//! limit.

use super::upgrade;
use crate::denial::{Denial, Reason};
use crate::proxy::metrics::Phase;
use crate::proxy::Broker;
use crate::targets::Target;
use crate::upstream::{Body, UpstreamBody};
use bytes::Bytes;
use http::{Request, Response};
use std::time::Instant;

pub(super) async fn forward<T: Target>(
    broker: &Broker,
    target: &T,
    req: Request<UpstreamBody>,
    deadline: tokio::time::Instant,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response<Body>, Failed> {
    let started = Instant::now();
    let failed = |detail: String| {
        broker.metrics.upstream_error();
        Denial::new(
            Reason::UpstreamError,
            format!("upstream {} {detail}", target.name()),
        )
    };
    let mut resp = match tokio::time::timeout_at(deadline, target.client().forward(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            // A streamed body that failed its check in flight says why; that is the refusal.
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
            let mut never_sent = false;
            while let Some(s) = source {
                if let Some(d) = s.downcast_ref::<Denial>() {
                    return Err(d.clone().into());
                }
                never_sent |= s.is::<crate::upstream::NeverSent>();
                source = s.source();
            }
            return Err(Failed {
                denial: failed(format!("did not answer: {e}")),
                never_sent,
            });
        }
        Err(_) => {
            // A deadline names nothing of the upstream's: the agent may read it.
            return Err(failed(format!(
                "did not answer within {:?}",
                broker.request_timeout
            ))
            .in_own_words()
            .into());
        }
    };
    broker.metrics.observe(Phase::Forward, started.elapsed());
    let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let Some(client_upgrade) = client_upgrade else {
            return Err(Denial::new(
                Reason::UpstreamError,
                "the upstream switched protocols on a request that asked for no upgrade",
            )
            .into());
        };
        // The HTTP connection ends here and the session lives on in its own task: held, so
        // a drain waits for it until the grace period ends.
        let session = broker.connections.hold();
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            upgrade::join_upgraded(client_upgrade, upstream_upgrade).await;
            drop(session);
        });
    }
    let (mut parts, body) = resp.into_parts();
    let mut headers = http::HeaderMap::new();
    crate::targets::headers::copy_response(&parts.headers, &mut headers);
    if switching {
        // The upgrade headers describe the connection the agent is switching to.
        if let Some(up) = parts.headers.get(http::header::UPGRADE) {
            headers.insert(http::header::UPGRADE, up.clone());
            headers.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("Upgrade"),
            );
        }
    }
    parts.headers = headers;
    Ok(Response::from_parts(parts, body))
}

/// Why forwarding failed, and whether the request provably never reached the upstream.
pub(super) struct Failed {
    pub(super) denial: Denial,
    pub(super) never_sent: bool,
}

impl From<Denial> for Failed {
    fn from(denial: Denial) -> Failed {
        Failed {
            denial,
            never_sent: false,
        }
    }
}

/// Runs a step that calls out (live state, identity service) inside the request's deadline.
pub(super) async fn within<T>(
    deadline: tokio::time::Instant,
    what: &str,
    step: impl std::future::Future<Output = Result<T, Denial>>,
) -> Result<T, Denial> {
    tokio::time::timeout_at(deadline, step)
        .await
        .unwrap_or_else(|_| {
            Err(Denial::new(
                Reason::UpstreamError,
                format!("{what} did not finish within the request's deadline"),
            )
            .in_own_words())
        })
}

pub(super) async fn read_body<B>(
    body: B,
    headers: &http::HeaderMap,
    limit: usize,
    deadline: tokio::time::Instant,
) -> Result<Bytes, Denial>
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<crate::upstream::BoxError>,
{
    let expects_continue = headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    // 413 the client can read, and no unchecked trailers: see proxy::body.
    crate::proxy::body::read_limited(body, limit, deadline, expects_continue).await
}
