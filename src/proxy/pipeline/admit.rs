//! The checks that judge a request, shared by the broker's pipeline and `seb check`: the
//! request head and its parse, then the certificate (signature, issuer, the admission checks
//! in their order) and the contract (target, audience, `seb.request`, `seb.body`). Whatever
//! calls out (live state, identity) or spends a use stays in the pipeline; `seb check` runs
//! exactly these functions, so a verdict it gives is the broker's.

use super::record::Draft;
use super::{within, ConnInfo};
use crate::admission::{Admission, Peer};
use crate::cert::Certificate;
use crate::contract::BodyView;
use crate::denial::{Denial, Reason};
use crate::proxy::Broker;
use crate::targets::{check_certificate_target, Parsed, Target};
use bytes::Bytes;

/// The request head, before the body is read: headers the upstream could read differently.
pub(crate) fn check_head<T: Target>(
    target: &T,
    parts: &http::request::Parts,
) -> Result<(), Denial> {
    target.check_head(parts)
}

/// The request read as the target reads it, and the certificate it carries (if any). The
/// description of the request goes to the record.
pub(crate) fn parse<T: Target>(
    target: &T,
    parts: &http::request::Parts,
    body: &Bytes,
    record: &mut Draft,
) -> Result<(Parsed<T::Request>, Option<String>), Denial> {
    crate::targets::headers::check_read_method_body(&parts.method, body.len())?;
    let mut parsed = target.parse(parts, body)?;
    // Only the audit record reads the description. A read says so, so that a reader of the
    // log (the rollout report) tells a refused read from a refused change.
    let mut describe = std::mem::take(&mut parsed.describe);
    if parsed.is_read {
        if let Some(o) = describe.as_object_mut() {
            o.insert("read".into(), true.into());
        }
    }
    record.unfrozen().request = describe;
    let token = target.certificate(parts)?;
    Ok((parsed, token))
}

/// A mutation without a certificate.
pub(crate) fn missing<T: Target>(target: &T) -> Denial {
    Denial::new(Reason::CertMissing, target.certificate_hint())
}

/// Is the certificate genuine, and good right now for this peer? Its claims go to the record
/// once the signature verified, so a refusal for an expired or revoked certificate is still
/// audited with them.
pub(crate) fn certificate(
    admission: &Admission,
    token: &str,
    peer: Option<Peer<'_>>,
    now: i64,
    record: &mut Draft,
) -> Result<Certificate, Denial> {
    let cert = admission.authenticate(token)?;
    record.certificate(&cert);
    admission.check_certificate(&cert, peer, now)?;
    Ok(cert)
}

/// Is this request what the certificate allows, on this target? `streamed`: the body goes
/// upstream as a stream, held in flight to the hash the certificate names, which the record
/// then names instead of the hash of the (empty) body read here.
pub(crate) fn contract<T: Target>(
    target: &T,
    cert: &Certificate,
    parts: &http::request::Parts,
    parsed: &Parsed<T::Request>,
    body: (&Bytes, &str),
    streamed: bool,
    record: &mut Draft,
) -> Result<(), Denial> {
    let view = BodyView {
        bytes: body.0,
        sha256_hex: body.1,
        content_type: crate::targets::single_header(&parts.headers, http::header::CONTENT_TYPE)?,
        content_encoding: crate::targets::single_header(
            &parts.headers,
            http::header::CONTENT_ENCODING,
        )?,
    };
    check_certificate_target(target, cert)?;
    target.check_contract(cert, parts, parsed, &view)?;
    if streamed {
        if let Some(crate::cert::BodyRule::Sha256(r)) = &cert.claims.seb.body {
            record.unfrozen().body_sha256 = Some(r.sha256.clone());
        }
    }
    Ok(())
}

/// What admission made of a request that carries a certificate or is a mutation.
// Lives on the stack for one request and is matched at once: boxing the larger variant
// would cost an allocation on every admitted request to save a few bytes of stack.
#[allow(clippy::large_enum_variant)]
pub(super) enum Judged {
    /// A read the certificate authenticates: it passes under the read identity.
    Read(Bytes),
    /// A mutation every check said yes to, its use spent; `body` is the body to forward,
    /// which the live-state check may have pinned.
    Admitted { cert: Certificate, body: Bytes },
}

/// The certificate, the contract, the live state and the use, in that order; the first that
/// says no is the verdict. The identity is minted after, beside the decision's sync.
#[allow(clippy::too_many_arguments)]
pub(super) async fn mutation<T: Target>(
    broker: &Broker,
    target: &T,
    parts: &http::request::Parts,
    parsed: &Parsed<T::Request>,
    (body, body_sha256): (Bytes, &str),
    token: Option<String>,
    streamed: bool,
    conn: &ConnInfo,
    record: &mut Draft,
    deadline: tokio::time::Instant,
) -> Result<Judged, Denial> {
    let Some(token) = token else {
        return Err(missing(target));
    };
    let peer = conn.peer.as_ref().map(|p| Peer {
        x5t_s256: &p.x5t_s256,
    });
    let cert = certificate(
        &broker.admission,
        &token,
        peer,
        crate::cert::now_secs(),
        record,
    )?;
    if parsed.is_read && target.certificate_authenticates_reads() {
        // kubectl has one bearer token per invocation and sends it on the discovery and
        // GET requests around a mutation too, and an AWS SDK sends AWS_SESSION_TOKEN on
        // every call: a certificate that verifies authenticates those reads, which spend no
        // use and run under the read identity. A target credential the request also claims
        // (an agent key's signature) must still verify.
        target.authenticate_reader(parts, &body)?;
        check_certificate_target(target, &cert).map_err(|d| {
            Denial::new(
                d.reason,
                format!("it does not authenticate reads here: {}", d.message),
            )
        })?;
        return Ok(Judged::Read(body));
    }
    contract(
        target,
        &cert,
        parts,
        parsed,
        (&body, body_sha256),
        streamed,
        record,
    )?;
    // Every call to the upstream or an identity service runs inside the request's one
    // deadline, so a slow dependency ends in a recorded refusal, never in a request cut off by
    // the backstop after its decision.
    let live = within(
        deadline,
        "the live-state check",
        target.check_live_state(&cert, parts, parsed, body),
    )
    .await?;
    if let (Some(drift), Some(request)) = (live.drift, record.unfrozen().request.as_object_mut()) {
        // What the precondition read and whether the write is pinned to it (an addition to
        // the v1 `request` object; see docs/FORMATS.md).
        request.insert("drift".into(), drift);
    }
    let body = live.body;
    let (n, max) = broker
        .admission
        .take_use(&cert)
        .await
        .map_err(|d| target.explain(&cert, d))?;
    record.took_use(n, max, &cert);
    Ok(Judged::Admitted { cert, body })
}
