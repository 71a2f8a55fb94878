//! The request path, top to bottom in one place:
//!
//! 1. classify: the listener a request arrives on fixes its target;
//! 2. parse: the target reads the request (canonical path, operation, read or mutation) and
//!    the body is read within its limit, unless the target streams it (S3 uploads, bound by
//!    their certified sha256 and verified in flight);
//! 3. admit: certificate (signature, issuer, window, epochs, revocation, binding), contract
//!    (operation, resource, body), drift; then one use is spent;
//! 4. audit: the signed decision record is durable before anything is sent; meanwhile the
//!    scoped execution identity the agent never sees is minted (a failed mint gives the use
//!    back, so an identity outage spends nothing);
//! 5. sign + forward: the request is rebuilt with that identity and sent upstream (a request
//!    that provably never left gives its use back);
//! 6. audit: the outcome record, while the response streams back.
//!
//! Any `Err(Denial)` ends the request; [`handle`] writes the deny record and renders the
//! refusal in the agent's own format. Nothing is forwarded unless every step said yes.

pub(crate) mod admit;
mod forward;
mod prepare;
pub(crate) mod record;
mod upgrade;

pub use prepare::PATH as PREPARE_PATH;

use super::metrics::{Decision, Phase};
use super::trace::RequestTrace;
use super::Broker;
use crate::audit::{Entry, Kind, Verdict};
use crate::denial::{Denial, Reason};
use crate::targets::{Parsed, Target};
use crate::tls::PeerIdentity;
use crate::upstream::{upstream_full, Body};
use bytes::Bytes;
use forward::{forward, read_body, within, Failed};
use http::{Request, Response};
use http_body_util::BodyExt;
use record::Draft;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Instant;

/// A request's id and what the pipeline has recorded of it, shared with the layers around it
/// (`proxy::stack`): a layer that refuses the request after its decision was written must
/// record an outcome for that decision, not a second decision.
pub struct RequestContext {
    pub id: String,
    /// The agent's error format, fixed from the request before anything consumes it.
    pub dialect: crate::denial::Dialect,
    /// The request's trace, when it has one (`proxy::trace`).
    pub trace: Option<RequestTrace>,
    decided: std::sync::OnceLock<(u64, Arc<crate::audit::Subject>, Verdict)>,
}

impl RequestContext {
    pub fn new(id: String, dialect: crate::denial::Dialect) -> Arc<RequestContext> {
        RequestContext::traced(id, dialect, None)
    }

    pub fn traced(
        id: String,
        dialect: crate::denial::Dialect,
        trace: Option<RequestTrace>,
    ) -> Arc<RequestContext> {
        Arc::new(RequestContext {
            id,
            dialect,
            trace,
            decided: std::sync::OnceLock::new(),
        })
    }

    /// One pipeline phase, from `from` to now, in the request's trace if spans are exported.
    fn phase(&self, name: &'static str, from: Instant) {
        if let Some(t) = &self.trace {
            t.phase(name, from);
        }
    }

    /// The broker's span as the upstream's parent, on a request about to be forwarded.
    fn propagate<B>(&self, req: &mut Request<B>) {
        if let Some(t) = &self.trace {
            req.headers_mut()
                .insert("traceparent", t.upstream.to_header());
        }
    }
}

/// What the broker knows about the connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: std::net::SocketAddr,
    pub peer: Option<PeerIdentity>,
}

/// Takes its context by `Arc` rather than by reference: the future is spawned per connection,
/// and owned handles keep it `Send` without higher-ranked lifetime trouble.
pub async fn handle<T: Target, B>(
    broker: Arc<Broker>,
    target: Arc<T>,
    req: Request<B>,
    conn: Arc<ConnInfo>,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<crate::upstream::BoxError>,
{
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let ctx = parts
        .extensions
        .remove::<Arc<RequestContext>>()
        .unwrap_or_else(|| {
            let id = broker.next_request_id();
            let about = describe(&id, &*target, &parts);
            let trace = broker.tracing.start(&parts.headers, about);
            RequestContext::traced(id, target.error_dialect(&parts), trace)
        });
    let request_id = &ctx.id;
    let shared_target = target.clone();
    let (broker, target, conn) = (&*broker, &*target, &*conn);
    let mut record = Draft::new(target, &parts.method, parts.uri.path_and_query(), conn);
    record.subject.trace_id = ctx.trace.as_ref().map(RequestTrace::trace_id);
    let dialect = ctx.dialect;
    // An HTTP/1 request that asks for an upgrade hands the connection over if the answer is
    // 101. When it is not, the connection ends after the answer: hyper reads nothing after such
    // a request, and bytes pipelined behind it must not be read past the request head gate,
    // which stepped aside for the upgrade.
    let close_unless_switched = parts.version <= http::Version::HTTP_11
        && (parts.method == http::Method::CONNECT
            || parts.headers.contains_key(http::header::UPGRADE));
    let result = if prepare::is_prepare(&parts) {
        let r = &mut record;
        prepare::prepare(broker, &shared_target, &parts, body, conn, request_id, r).await
    } else {
        run(
            broker,
            target,
            parts,
            body,
            conn,
            &ctx,
            &mut record,
            started,
        )
        .await
    };
    broker.metrics.observe(Phase::Total, started.elapsed());
    let refused = result.as_ref().err().map(|d| d.reason.as_str());
    let mut resp = answer(
        broker,
        target,
        result,
        &mut record,
        started,
        dialect,
        request_id,
    );
    if let Some(t) = &ctx.trace {
        t.finish(resp.status().as_u16(), refused);
    }
    if close_unless_switched && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// The response, or the refusal rendered, counted and recorded.
fn answer<T: Target>(
    broker: &Broker,
    target: &T,
    result: Result<Response<Body>, Denial>,
    record: &mut Draft,
    started: Instant,
    dialect: crate::denial::Dialect,
    request_id: &str,
) -> Response<Body> {
    match result {
        Ok(resp) => resp,
        Err(denial) => {
            broker
                .metrics
                .count(target.name(), Decision::Deny, Some(denial.reason));
            tracing::info!(request_id, target = target.name(), code = %denial.reason, detail = %denial.message, "refused");
            match record.decision_seq {
                // Allowed and recorded, then failed (identity, upstream): the outcome says so.
                Some(seq) => broker.audit.record_best_effort(record.outcome(
                    seq,
                    None,
                    Some(&denial),
                    started,
                )),
                None => broker.audit.record_best_effort(record.deny(&denial)),
            }
            let told = denial.for_agent(broker.expose_upstream_errors, request_id);
            crate::denial::render(&told, dialect, request_id)
        }
    }
}

/// A refusal made by a layer around the pipeline (load shedding, the backstop timeout):
/// counted, recorded and rendered like the pipeline's own. After a recorded decision it is
/// that decision's outcome, and since the pipeline was cut wherever it was, an unknown one.
pub(super) fn refused_around<T: Target>(
    broker: &Broker,
    target: &T,
    ctx: &RequestContext,
    line: (&http::Method, Option<&http::uri::PathAndQuery>),
    conn: &ConnInfo,
    denial: Denial,
) -> Response<Body> {
    broker
        .metrics
        .count(target.name(), Decision::Deny, Some(denial.reason));
    tracing::info!(request_id = %ctx.id, target = target.name(), code = %denial.reason, detail = %denial.message, "refused");
    let entry = match ctx.decided.get() {
        Some((seq, subject, verdict)) => Entry {
            kind: Kind::Outcome,
            subject: subject.clone(),
            decision: *verdict,
            reason: Some((denial.reason.as_str().to_string(), denial.message.clone())),
            identity: None,
            upstream_status: None,
            duration_ms: None,
            outcome: Some("unknown".into()),
            decision_seq: Some(*seq),
        },
        None => {
            let mut draft = Draft::new(target, line.0, line.1, conn);
            draft.subject.trace_id = ctx.trace.as_ref().map(RequestTrace::trace_id);
            draft.deny(&denial)
        }
    };
    broker.audit.record_best_effort(entry);
    let told = denial.for_agent(broker.expose_upstream_errors, &ctx.id);
    crate::denial::render(&told, ctx.dialect, &ctx.id)
}

#[allow(clippy::too_many_arguments)]
async fn run<T: Target, B>(
    broker: &Broker,
    target: &T,
    mut parts: http::request::Parts,
    body: B,
    conn: &ConnInfo,
    ctx: &RequestContext,
    record: &mut Draft,
    started: Instant,
) -> Result<Response<Body>, Denial>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<crate::upstream::BoxError>,
{
    let request_id = ctx.id.as_str();
    // 2. parse
    // One deadline for the whole request, enforced here rather than only by the outer timeout
    // layer, so that a slow agent or upstream ends in a recorded refusal or outcome instead of
    // a dropped future.
    let deadline = tokio::time::Instant::now() + broker.request_timeout;
    // Headers first: a request they refuse costs no body read.
    admit::check_head(target, &parts)?;
    let (body, upload) = if target.streams_upload(&parts) {
        (Bytes::new(), Some(body))
    } else {
        (
            read_body(body, &parts.headers, broker.max_body_bytes, deadline).await?,
            None,
        )
    };
    let body_sha256 = hex::encode(Sha256::digest(&body));
    if upload.is_none() {
        record.unfrozen().body_sha256 = Some(body_sha256.clone());
    }
    let (parsed, token) = admit::parse(target, &parts, &body, record)?;
    broker.metrics.observe(Phase::Parse, started.elapsed());
    ctx.phase("seb.parse", started);

    if parsed.is_read && token.is_none() {
        broker.authenticate_reader(
            target.authenticate_reader(&parts, &body)?,
            target.agent_token(&parts.headers),
            conn,
        )?;
        return read_pass_through(
            broker,
            target,
            &parts,
            &parsed,
            body,
            ctx,
            record,
            (started, deadline),
        )
        .await;
    }

    // 3. admit
    let admit_started = Instant::now();
    // A shadow target judges a mutation as an enforcing one would, and forwards it whatever
    // the verdict; a read is a read in either mode. Parse refusals above stay refusals: a
    // request the broker cannot read is not one it can rebuild and forward.
    let shadow = broker.is_shadow(target.name()) && !parsed.is_read;
    let kept_body = shadow.then(|| body.clone());
    let judged = admit::mutation(
        broker,
        target,
        &parts,
        &parsed,
        (body, &body_sha256),
        token,
        upload.is_some(),
        conn,
        record,
        deadline,
    )
    .await;
    let (cert, body, verdict, would_deny) = match judged {
        Ok(admit::Judged::Read(body)) => {
            return read_pass_through(
                broker,
                target,
                &parts,
                &parsed,
                body,
                ctx,
                record,
                (started, deadline),
            )
            .await
        }
        Ok(admit::Judged::Admitted { cert, body }) if shadow => {
            (Some(cert), body, Verdict::WouldAllow, None)
        }
        Ok(admit::Judged::Admitted { cert, body }) => (Some(cert), body, Verdict::Allow, None),
        Err(denial) if shadow && upload.is_none() => match kept_body {
            Some(body) => (None, body, Verdict::WouldDeny, Some(denial)),
            None => return Err(denial),
        },
        Err(mut denial) if shadow => {
            denial.message.push_str(
                "; shadow mode forwards no streamed upload it would refuse (a stream is held in flight to its certificate's hash)",
            );
            return Err(denial);
        }
        Err(denial) => return Err(denial),
    };
    broker
        .metrics
        .observe(Phase::Admit, admit_started.elapsed());
    ctx.phase("seb.admit", admit_started);

    // 4. audit the decision, durably, before anything reaches the upstream; meanwhile the
    //    execution identity is minted (or taken from its cache), so that a mint (one STS
    //    AssumeRole) and the decision's sync cost the longer of the two, not their sum. A
    //    shadow would-deny has no certificate to scope one to: it runs under the target's
    //    shadow identity.
    let decision = record.entry(Kind::Decision, verdict, would_deny.as_ref());
    let (identity, seq) = tokio::join!(
        async {
            let started = Instant::now();
            let minted = match &cert {
                Some(cert) => {
                    within(
                        deadline,
                        "minting the execution identity",
                        target.identity(Some(cert)),
                    )
                    .await
                }
                None => {
                    within(
                        deadline,
                        "minting the shadow execution identity",
                        target.shadow_identity(),
                    )
                    .await
                }
            };
            broker.metrics.observe(Phase::Identity, started.elapsed());
            ctx.phase("seb.identity", started);
            minted
        },
        async {
            let started = Instant::now();
            let seq = broker.audit.record(decision).await;
            broker.metrics.observe(Phase::Audit, started.elapsed());
            ctx.phase("seb.audit.decision", started);
            seq
        }
    );
    let seq = seq.map_err(|e| {
        Denial::new(
            Reason::AuditUnavailable,
            format!("the decision could not be recorded durably: {}", e.0),
        )
    })?;
    record.decision_seq = Some(seq);
    record.verdict = verdict;
    let _ = ctx.decided.set((seq, record.subject(), verdict));
    if let Some(d) = &would_deny {
        tracing::warn!(request_id, target = target.name(), code = %d.reason, detail = %d.message, "SHADOW: would deny; forwarded anyway");
    }
    let identity = match identity {
        Ok(identity) => identity,
        Err(mut denial) => {
            // An identity service that is down must not burn a single-use certificate: the
            // use goes back, and the outcome record says so, so a restart does not count it.
            if let Some(cert) = &cert {
                broker.admission.give_back(cert).await;
                record.returned = true;
                denial.message.push_str(crate::denial::GIVEN_BACK);
            }
            return Err(denial);
        }
    };

    // 5. sign + forward (an admitted upgrade, such as a kubernetes exec, is joined to the
    //    upstream's once both sides have switched protocols)
    let client_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let upstream_req = match (upload, &cert) {
        (Some(upload), Some(cert)) => target.upstream_upload(
            &parts,
            http_body_util::BodyExt::map_err(upload, Into::into).boxed_unsync(),
            &identity,
            request_id,
            cert,
        ),
        _ => target
            .upstream_request(&parts, &parsed, body, &identity, request_id)
            .map(|r| r.map(upstream_full)),
    };
    // Moved, not copied: nothing after the rebuilt request reads it.
    record.identity = Some(identity.audit);
    let mut upstream_req = upstream_req?;
    ctx.propagate(&mut upstream_req);
    let forward_started = Instant::now();
    let resp = match forward(broker, target, upstream_req, deadline, client_upgrade).await {
        Ok(resp) => resp,
        Err(Failed {
            mut denial,
            never_sent: true,
        }) => {
            // The request provably never left (no connection to the upstream): the use goes
            // back, and the outcome record says so, so that a restart does not count it either.
            if let Some(cert) = &cert {
                broker.admission.give_back(cert).await;
                record.returned = true;
                denial.message.push_str(crate::denial::GIVEN_BACK);
            }
            return Err(denial);
        }
        Err(f) => return Err(f.denial),
    };
    ctx.phase("seb.forward", forward_started);
    if let Some(cert) = &cert {
        target.observe_outcome(cert, resp.status());
    }

    // 6. outcome (not waited on: the decision is already durable, and a crash before this
    //    record lands is written as `unknown` on restart)
    let (decision, reason) = match (verdict, &would_deny) {
        (Verdict::WouldAllow, _) => (Decision::WouldAllow, None),
        (_, Some(d)) => (Decision::WouldDeny, Some(d.reason)),
        _ => (Decision::Allow, None),
    };
    broker.metrics.count(target.name(), decision, reason);
    let outcome_started = Instant::now();
    broker.audit.record_best_effort(record.outcome(
        seq,
        Some(resp.status().as_u16()),
        None,
        started,
    ));
    ctx.phase("seb.audit.outcome", outcome_started);
    Ok(resp)
}

/// A read, already authenticated by the caller.
#[allow(clippy::too_many_arguments)]
async fn read_pass_through<T: Target>(
    broker: &Broker,
    target: &T,
    parts: &http::request::Parts,
    parsed: &Parsed<T::Request>,
    body: Bytes,
    ctx: &RequestContext,
    record: &mut Draft,
    (started, deadline): (Instant, tokio::time::Instant),
) -> Result<Response<Body>, Denial> {
    let identity = target.identity(None).await?;
    let upstream_req = target.upstream_request(parts, parsed, body, &identity, &ctx.id);
    record.identity = Some(identity.audit);
    let mut upstream_req = upstream_req?.map(upstream_full);
    ctx.propagate(&mut upstream_req);
    let resp = forward(broker, target, upstream_req, deadline, None)
        .await
        .map_err(|f| f.denial)?;
    broker.metrics.count(target.name(), Decision::Read, None);
    let mut entry = record.allow();
    entry.upstream_status = Some(resp.status().as_u16());
    entry.duration_ms = Some(started.elapsed().as_millis() as u64);
    broker.audit.record_best_effort(entry);
    Ok(resp)
}

/// What a request's span says about it: never the query (a presigned URL's certificate).
pub(super) fn describe<'a, T: Target>(
    id: &'a str,
    target: &'a T,
    parts: &'a http::request::Parts,
) -> super::trace::Describe<'a> {
    super::trace::Describe {
        request_id: id,
        target: target.name(),
        method: &parts.method,
        path: parts.uri.path(),
    }
}

#[cfg(test)]
mod tests;
