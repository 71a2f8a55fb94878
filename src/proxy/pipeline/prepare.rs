//! `POST /v1/prepare`: an agent presents a certificate before it uses it, and the broker mints
//! the certificate's execution identity in the background (for the aws target with
//! `identity = "sts"`, the per-certificate `AssumeRole`, ~100 ms at AWS), so that the use
//! itself waits only for what is not ready yet.
//!
//! The certificate is checked as a use would check it (signature, issuer, window, epochs,
//! revocation, holder binding, target) but no use is spent and nothing is forwarded. A refusal
//! is recorded and rendered like any other; an accepted prepare writes no decision, since
//! nothing was decided: the use that follows is judged in full.

use super::record::Draft;
use super::{read_body, ConnInfo};
use crate::admission::Peer;
use crate::denial::{Denial, Reason};
use crate::proxy::Broker;
use crate::targets::{check_certificate_target, Target};
use crate::upstream::{full_body, Body};
use bytes::Bytes;
use http::{Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// The path on every target listener. It shadows the same path of the upstream API (for S3,
/// an object `prepare` in a bucket `v1`), which agents then cannot reach through the broker.
pub const PATH: &str = "/v1/prepare";

/// How long a background mint may take before it is given up (the use then mints again).
const MINT_TIMEOUT: Duration = Duration::from_secs(30);

pub fn is_prepare(parts: &http::request::Parts) -> bool {
    parts.method == http::Method::POST && parts.uri.path() == PATH
}

pub(super) async fn prepare<T: Target, B>(
    broker: &Broker,
    target: &Arc<T>,
    parts: &http::request::Parts,
    body: B,
    conn: &ConnInfo,
    request_id: &str,
    record: &mut Draft,
) -> Result<Response<Body>, Denial>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<crate::upstream::BoxError>,
{
    target.check_head(parts)?;
    let deadline = tokio::time::Instant::now() + broker.request_timeout;
    let body = read_body(body, &parts.headers, broker.max_body_bytes, deadline).await?;
    if !body.is_empty() {
        return Err(Denial::new(
            Reason::RequestMalformed,
            format!(
                "a prepare carries no body ({} bytes were sent): the certificate alone says what will be done",
                body.len()
            ),
        ));
    }
    let Some(token) = target.certificate(parts)? else {
        return Err(Denial::new(
            Reason::CertMissing,
            format!(
                "a prepare presents the certificate it prepares, where the request would: {}",
                target.certificate_hint()
            ),
        ));
    };
    let cert = broker.admission.authenticate(&token)?;
    record.certificate(&cert);
    let peer = conn.peer.as_ref().map(|p| Peer {
        x5t_s256: &p.x5t_s256,
    });
    broker
        .admission
        .check_certificate(&cert, peer, crate::cert::now_secs())?;
    check_certificate_target(&**target, &cert)?;

    let (t, c, id) = (target.clone(), cert.clone(), request_id.to_string());
    let counts = broker.metrics.prepares();
    counts.count("accepted");
    tokio::spawn(async move {
        match tokio::time::timeout(MINT_TIMEOUT, t.identity(Some(&c))).await {
            Ok(Ok(_)) => {
                counts.count("minted");
                tracing::debug!(request_id = %id, jti = %c.claims.jti, "identity prepared")
            }
            Ok(Err(d)) => {
                counts.count("mint_failed");
                tracing::warn!(request_id = %id, jti = %c.claims.jti, code = %d.reason, detail = %d.message, "preparing the identity failed; the use will mint it")
            }
            Err(_) => {
                counts.count("mint_timeout");
                tracing::warn!(request_id = %id, jti = %c.claims.jti, "preparing the identity did not finish in time; the use will mint it")
            }
        }
    });
    // Debug, not info: on a prepared path this runs once per request, beside the use's own line.
    tracing::debug!(request_id, target = target.name(), jti = %cert.claims.jti, "prepare accepted");
    let answer = serde_json::json!({
        "prepared": cert.claims.jti,
        "target": target.name(),
        "exp": cert.claims.exp,
    });
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full_body(answer.to_string()))
        .map_err(|e| Denial::new(Reason::RequestMalformed, format!("prepare answer: {e}")))
}
