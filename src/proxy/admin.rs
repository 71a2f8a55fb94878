//! The admin listener (loopback by default): health, readiness, metrics, revocation pushes and
//! the live audit stream. It changes nothing without a signature: a pushed revocation
//! document is verified exactly like a polled one.
//!
//! With `admin.token` set, every endpoint but `/healthz` and `/readyz` (what probes and load
//! balancers ask, and which reveal nothing an agent could use) needs `Authorization: Bearer
//! TOKEN`; the config refuses a non-loopback listener without one (`config::AdminConfig`).

use super::metrics::Sample;
use super::Broker;
use crate::admission::revocation::{Applied, RevocationState, ShareError};
use crate::upstream::{full_body, Body, BoxError};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::sync::Arc;
use tokio::net::TcpListener;

pub async fn serve(
    broker: Arc<Broker>,
    revocation: Arc<RevocationState>,
    listener: TcpListener,
    skew: i64,
    reloader: Arc<super::config_reload::Reloader>,
    token: Option<String>,
) {
    let token: Arc<Option<String>> = Arc::new(token);
    // Bounded, so that file descriptors set aside for the admin port (see
    // `lifecycle::fd_reserve`) are enough.
    let slots = Arc::new(tokio::sync::Semaphore::new(
        super::lifecycle::ADMIN_CONNECTIONS,
    ));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (broker, revocation, reloader, token) = (
            broker.clone(),
            revocation.clone(),
            reloader.clone(),
            token.clone(),
        );
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (broker, revocation, reloader) =
                    (broker.clone(), revocation.clone(), reloader.clone());
                let allowed = authorized(token.as_deref(), &req);
                async move {
                    Ok::<_, std::convert::Infallible>(match allowed {
                        true => route(&broker, &revocation, &reloader, req, skew).await,
                        false => unauthorized(),
                    })
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
            drop(slot);
        });
    }
}

/// Where `seb reload` sends its request, and with which token: the config's own, or
/// `SEB_ADMIN_TOKEN` with `--admin ADDR`.
pub fn client_target(
    admin: &str,
    config: Option<&std::path::Path>,
) -> anyhow::Result<(String, Option<String>)> {
    Ok(match config {
        Some(p) => {
            let c = crate::config::Config::load(p)?;
            let token = c.admin.token.as_ref().map(|t| t.load()).transpose()?;
            (c.admin.listen.to_string(), token)
        }
        None => (admin.to_string(), std::env::var("SEB_ADMIN_TOKEN").ok()),
    })
}

/// Probes stay open; anything else needs the token when one is configured. The comparison is
/// constant-time, and a header that is not exactly `Bearer TOKEN` (a second Authorization
/// header included) is refused.
fn authorized(token: Option<&str>, req: &Request<Incoming>) -> bool {
    let Some(token) = token else {
        return true;
    };
    if req.method() == Method::GET && matches!(req.uri().path(), "/healthz" | "/readyz") {
        return true;
    }
    let mut values = req.headers().get_all(http::header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return false;
    };
    subtle::ConstantTimeEq::ct_eq(given, token.as_bytes()).into()
}

fn unauthorized() -> Response<Body> {
    let mut r = json_response(
        StatusCode::UNAUTHORIZED,
        json!({"error": "this admin endpoint needs Authorization: Bearer <admin.token>"}),
    );
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"seb-admin\""),
    );
    r
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full_body(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    text(status, "application/json", v.to_string())
}

/// Ready means a mutation could be admitted now: fresh revocation data and a writable log.
pub fn readiness(broker: &Broker) -> (bool, serde_json::Value) {
    let now = crate::cert::now_secs();
    let state = &broker.admission.revocation;
    // Each issuer's certificates are governed by its own document: ready means every trusted
    // issuer's is loaded and fresh.
    let mut rev_ok = true;
    let mut issuers = serde_json::Map::new();
    for name in broker.admission.issuers.names() {
        let rev = state.current(&name);
        let fresh = rev
            .as_ref()
            .is_some_and(|r| now - r.iat <= broker.admission.max_staleness_secs);
        rev_ok &= fresh;
        issuers.insert(
            name,
            json!({
                "fresh": fresh,
                "epoch": rev.as_ref().map(|r| r.epoch),
                "age_seconds": rev.as_ref().map(|r| now - r.iat),
            }),
        );
    }
    let audit_ok = broker.audit.is_writable();
    // A draining broker takes no new connections: a load balancer should send none.
    let draining = broker.connections.draining();
    let uses_unavailable = broker.admission.uses.unavailable();
    (
        rev_ok && audit_ok && !draining && uses_unavailable.is_none(),
        json!({
            "draining": draining,
            "state": {
                "available": uses_unavailable.is_none(),
                "why": uses_unavailable,
            },
            "revocation": {
                "fresh": rev_ok,
                "issuers": issuers,
                "last_refusal": state.last_refusal(),
            },
            "audit": {"writable": audit_ok},
        }),
    )
}

async fn route(
    broker: &Broker,
    revocation: &RevocationState,
    reloader: &super::config_reload::Reloader,
    req: Request<Incoming>,
    skew: i64,
) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => {
            let (ok, detail) = readiness(broker);
            json_response(
                if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                detail,
            )
        }
        (&Method::GET, "/metrics") => {
            let now = crate::cert::now_secs();
            // Over every trusted issuer: the lowest epoch and the oldest document, the ones
            // that refuse first (-1 while any issuer has none).
            let revs: Vec<_> = broker
                .admission
                .issuers
                .names()
                .iter()
                .map(|n| broker.admission.revocation.current(n))
                .collect();
            let missing = revs.is_empty() || revs.iter().any(Option::is_none);
            let loaded = revs.iter().flatten();
            let epoch = loaded.clone().map(|r| r.epoch).min();
            let age = loaded.map(|r| now - r.iat).max();
            let extra = [
                (
                    "seb_revocation_epoch",
                    "Lowest loaded revocation epoch over the trusted issuers (-1: an issuer has none).",
                    Sample::Gauge(if missing { -1.0 } else { epoch.map_or(-1.0, |e| e as f64) }),
                ),
                (
                    "seb_revocation_age_seconds",
                    "Age of the oldest loaded revocation document (-1: an issuer has none).",
                    Sample::Gauge(if missing { -1.0 } else { age.map_or(-1.0, |a| a as f64) }),
                ),
                (
                    "seb_agent_connections",
                    "Agent connections open (and upgraded sessions), against limits.max_connections.",
                    Sample::Gauge(broker.connections.live() as f64),
                ),
                (
                    "seb_agent_connections_max",
                    "limits.max_connections as applied (lowered to fit the open file limit when not set).",
                    Sample::Gauge(broker.connections.max() as f64),
                ),
                (
                    "seb_requests_in_flight",
                    "Agent requests whose response has not been sent yet.",
                    Sample::Gauge(broker.connections.requests_in_flight() as f64),
                ),
                (
                    "seb_audit_writable",
                    "1 while the audit log accepts records.",
                    Sample::Gauge(if broker.audit.is_writable() { 1.0 } else { 0.0 }),
                ),
                (
                    "seb_audit_held",
                    "Refusal, outcome and read records held in memory while the audit log fails; written first once it works again.",
                    Sample::Gauge(broker.audit.held() as f64),
                ),
                (
                    "seb_audit_dropped_best_effort",
                    "Read and outcome records dropped while the log failed.",
                    Sample::Counter(broker.audit.dropped_best_effort() as f64),
                ),
                (
                    "seb_audit_writes",
                    "Writes to the audit log so far (a write carries one or more records).",
                    Sample::Counter(broker.audit.batches() as f64),
                ),
                (
                    "seb_audit_syncs",
                    "fdatasync calls on the audit log so far (group commit: fewer than records).",
                    Sample::Counter(broker.audit.syncs() as f64),
                ),
                (
                    "seb_audit_sync_seconds",
                    "Time spent in those fdatasync calls so far; divided by seb_audit_syncs, the mean sync, which every durable decision waits for.",
                    Sample::Counter(broker.audit.sync_seconds()),
                ),
            ];
            text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                broker.metrics.render(&extra),
            )
        }
        (&Method::POST, "/v1/revocation") => {
            let body = match Limited::new(req.into_body(), 1024 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        json!({"error": format!("body: {e}")}),
                    )
                }
            };
            let Ok(token) = std::str::from_utf8(&body) else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "body is not UTF-8"}),
                );
            };
            // With replicas, the answer comes once etcd holds the document: every other
            // replica then has it or is refusing mutations.
            match revocation
                .apply_shared(token, crate::cert::now_secs(), skew)
                .await
            {
                Ok(Applied::Updated { epoch }) => {
                    tracing::info!(epoch, "revocation data pushed");
                    json_response(StatusCode::OK, json!({"epoch": epoch, "updated": true}))
                }
                Ok(Applied::Unchanged { epoch }) => {
                    json_response(StatusCode::OK, json!({"epoch": epoch, "updated": false}))
                }
                Err(ShareError::Refused(e)) => {
                    json_response(StatusCode::CONFLICT, json!({"error": e}))
                }
                Err(ShareError::NotShared(e)) => {
                    tracing::error!(error = %e, "pushed revocation data not shared");
                    json_response(StatusCode::SERVICE_UNAVAILABLE, json!({"error": e}))
                }
            }
        }
        (&Method::GET, "/v1/audit/stream") => audit_stream(broker),
        // Same as SIGHUP; `seb reload` calls it. The answer says what was reloaded and what
        // needs a restart, or why nothing was (the running configuration stays).
        (&Method::POST, "/v1/reload") => match reloader.reload().await {
            Ok(r) => json_response(
                StatusCode::OK,
                json!({"reloaded": true, "applied": r.applied, "restart_needed": r.restart_needed}),
            ),
            Err(e) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"reloaded": false, "error": e}),
            ),
        },
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "no such admin endpoint"}),
        ),
    }
}

/// NDJSON live tail: each record line as it is written. A reader too slow to keep up is told
/// how many lines it missed rather than silently skipping them.
fn audit_stream(broker: &Broker) -> Response<Body> {
    let mut rx = broker.audit.subscribe();
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(64);
    tokio::spawn(async move {
        loop {
            let line = match rx.recv().await {
                Ok(line) => format!("{line}\n"),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    format!("{{\"lagged\":{n}}}\n")
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            };
            if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                break;
            }
        }
    });
    let stream = tokio_stream_from(body_rx);
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// `seb reload`: POST /v1/reload on the admin port, and print its answer.
pub fn run_reload(admin: &str, config: Option<&std::path::Path>) -> std::process::ExitCode {
    use std::process::ExitCode;
    let run = || -> anyhow::Result<(u16, String)> {
        let (addr, token) = client_target(admin, config)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            use http_body_util::BodyExt;
            let tcp = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                tokio::net::TcpStream::connect(&addr),
            )
            .await
            .map_err(|_| anyhow::anyhow!("{addr}: connect timed out"))?
            .map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let mut req = http::Request::post("/v1/reload").header(http::header::HOST, &addr);
            if let Some(t) = &token {
                req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let req = req.body(http_body_util::Empty::<bytes::Bytes>::new())?;
            // Loading keys and certificates is quick; a minute is a bound, not an estimate.
            let resp =
                tokio::time::timeout(std::time::Duration::from_secs(60), send.send_request(req))
                    .await
                    .map_err(|_| anyhow::anyhow!("{addr}: no answer"))??;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        })
    };
    match run() {
        Ok((200, body)) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            println!("{body}");
            eprintln!("seb: reload refused ({status}); the broker keeps its running configuration");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("seb: {e:#}");
            ExitCode::from(2)
        }
    }
}
