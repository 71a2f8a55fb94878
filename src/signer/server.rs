//! The signer's listeners: HTTPS for agents and brokers (certificates, approvals, JWKS, the
//! revocation document) and a loopback admin listener for the operator (revoke, reload).
//! Also the heartbeat: the revocation document re-signed and pushed to brokers on a timer.

use super::config::SignerConfig;
use super::issue::AgentIdentity;
use super::proposal::CertificateRequest;
use super::state::Revoke;
use super::Signer;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

const MAX_BODY: usize = 256 * 1024;

pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub signer: Arc<Signer>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Returns when a listener stops (it does not, but for an error).
    pub async fn wait(&mut self) {
        if let Some(t) = self.tasks.first_mut() {
            let _ = t.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Tokens(Vec<(String, String)>);

impl Tokens {
    fn agent(&self, presented: &str) -> Option<String> {
        use subtle::ConstantTimeEq;
        self.0
            .iter()
            .find(|(_, t)| bool::from(t.as_bytes().ct_eq(presented.as_bytes())))
            .map(|(n, _)| n.clone())
    }
}

pub async fn serve(cfg: SignerConfig) -> anyhow::Result<Running> {
    let signer = Arc::new(Signer::new(&cfg)?);
    let tls = crate::tls::server_config(&crate::tls::TlsSettings {
        cert: cfg.tls.cert.clone(),
        key: cfg.tls.key.clone(),
        client_ca: cfg.tls.client_ca.clone(),
        require_client_cert: false,
    })?;
    let mut tokens = Vec::new();
    for a in &cfg.agents {
        tokens.push((a.name.clone(), a.token.load()?));
    }
    let tokens = Arc::new(Tokens(tokens));
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("listen {}: {e}", cfg.listen))?;
    let admin = tokio::net::TcpListener::bind(cfg.admin_listen)
        .await
        .map_err(|e| anyhow::anyhow!("admin_listen {}: {e}", cfg.admin_listen))?;
    let addr = listener.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let push_token = cfg.revocation.push_token.as_ref().map(|t| t.load());
    let push_token = push_token
        .transpose()
        .map_err(|e| anyhow::anyhow!("revocation.push_token: {e}"))?;
    let push = Arc::new(Pusher::new(cfg.revocation.push.clone(), push_token)?);
    let mut tasks = Vec::new();
    {
        let (signer, push) = (signer.clone(), push.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (signer, tokens, acceptor, push) = (
                    signer.clone(),
                    tokens.clone(),
                    acceptor.clone(),
                    push.clone(),
                );
                tokio::spawn(async move {
                    let Ok(Ok(stream)) = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(tcp),
                    )
                    .await
                    else {
                        return;
                    };
                    let peer = crate::tls::peer_identity(stream.get_ref().1.peer_certificates());
                    let svc = hyper::service::service_fn(move |req| {
                        let (signer, tokens, peer, push) =
                            (signer.clone(), tokens.clone(), peer.clone(), push.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                public(req, &signer, &tokens, peer, &push).await,
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                });
            }
        }));
    }
    {
        let (signer, push) = (signer.clone(), push.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = admin.accept().await else {
                    continue;
                };
                let (signer, push) = (signer.clone(), push.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (signer, push) = (signer.clone(), push.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                admin_route(req, &signer, &push).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        }));
    }
    {
        let (signer, push) = (signer.clone(), push.clone());
        let every = cfg.revocation.heartbeat;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let doc = signer.resign_revocation();
                push.push(&doc).await;
            }
        }));
    }
    Ok(Running {
        addr,
        admin_addr,
        signer,
        tasks,
    })
}

/// Pushes revocation documents to brokers' admin endpoints. A broker that is down misses the
/// push and catches up by polling; each push is bounded so one slow broker delays no other.
struct Pusher {
    urls: Vec<String>,
    /// The brokers' admin token, when their admin ports need one.
    token: Option<String>,
    client: crate::upstream::UpstreamClient,
}

impl Pusher {
    fn new(urls: Vec<String>, token: Option<String>) -> anyhow::Result<Pusher> {
        Ok(Pusher {
            urls,
            token,
            client: crate::upstream::UpstreamClient::new(None)?,
        })
    }

    async fn push(&self, doc: &str) {
        let sends = self.urls.iter().map(|u| async move {
            let mut req = Request::post(u.as_str());
            if let Some(t) = &self.token {
                req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let req = match req.body(Full::new(Bytes::from(doc.to_string()))) {
                Ok(r) => r,
                Err(e) => return tracing::warn!(url = %u, error = %e, "revocation push"),
            };
            match tokio::time::timeout(std::time::Duration::from_secs(5), self.client.send(req))
                .await
            {
                Ok(Ok(r)) if r.status().is_success() => {}
                Ok(Ok(r)) => {
                    tracing::warn!(url = %u, status = %r.status(), "revocation push refused")
                }
                Ok(Err(e)) => tracing::warn!(url = %u, error = %e.0, "revocation push failed"),
                Err(_) => tracing::warn!(url = %u, "revocation push timed out"),
            }
        });
        futures_util::future::join_all(sends).await;
    }
}

fn reply(status: StatusCode, v: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn problem(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, json!({"code": code, "message": message.into()}))
}

async fn body(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| {
            problem(
                StatusCode::BAD_REQUEST,
                "proposal_malformed",
                format!("body: {e}"),
            )
        })
}

async fn public(
    req: Request<Incoming>,
    signer: &Signer,
    tokens: &Tokens,
    peer: Option<crate::tls::PeerIdentity>,
    push: &Pusher,
) -> Response<Full<Bytes>> {
    let _ = push;
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/.well-known/jwks.json") => reply(StatusCode::OK, signer.keys.jwks()),
        (Method::GET, "/v1/revocation") => {
            let mut r = Response::new(Full::new(Bytes::from(signer.revocation_document())));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/jose"),
            );
            r
        }
        (Method::GET, "/healthz") => {
            let (policy_epoch, revocation_epoch) = signer.epochs();
            reply(
                StatusCode::OK,
                json!({"issuer": signer.issuer, "policy_epoch": policy_epoch,
                       "revocation_epoch": revocation_epoch, "kid": signer.keys.active_kid,
                       "log_writable": signer.audit().is_writable()}),
            )
        }
        (Method::POST, "/v1/approvals") => {
            let b = match body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match std::str::from_utf8(&b)
                .map_err(|e| e.to_string())
                .and_then(|s| signer.post_approval(s))
            {
                Ok(digest) => reply(StatusCode::OK, json!({"proposal": digest})),
                Err(m) => problem(StatusCode::BAD_REQUEST, "evidence_invalid", m),
            }
        }
        (Method::POST, "/v1/certificates") => {
            // The agent is whoever the TLS client certificate says, else whoever the token
            // belongs to; nothing in the body names it.
            let bearer = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string);
            let agent = match (&peer, bearer) {
                (Some(p), _) => match &p.name {
                    Some(n) => AgentIdentity {
                        name: n.clone(),
                        x5t_s256: Some(p.x5t_s256.clone()),
                    },
                    None => {
                        return problem(
                            StatusCode::UNAUTHORIZED,
                            "agent_unknown",
                            "the client certificate names no agent (no URI SAN or CN)",
                        )
                    }
                },
                (None, Some(t)) => match tokens.agent(&t) {
                    Some(name) => AgentIdentity { name, x5t_s256: None },
                    None => {
                        return problem(StatusCode::UNAUTHORIZED, "agent_unknown", "the bearer token is not a configured agent's")
                    }
                },
                (None, None) => {
                    return problem(
                        StatusCode::UNAUTHORIZED,
                        "agent_unknown",
                        "authenticate with a client certificate (mTLS) or an agent token (Authorization: Bearer)",
                    )
                }
            };
            let b = match body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let creq = match CertificateRequest::parse(&b) {
                Ok(r) => r,
                Err(m) => return problem(StatusCode::BAD_REQUEST, "proposal_malformed", m),
            };
            match signer.issue(&agent, creq).await {
                Ok(i) => reply(
                    StatusCode::OK,
                    json!({"certificate": i.token, "jti": i.claims.jti, "exp": i.claims.exp,
                           "policy": i.claims.seb.policy, "max_uses": i.claims.seb.max_uses}),
                ),
                Err(r) => reply(
                    StatusCode::from_u16(r.status()).unwrap_or(StatusCode::FORBIDDEN),
                    json!({"code": r.code, "message": r.message, "policy": r.policy, "retry": r.retry}),
                ),
            }
        }
        _ => problem(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    }
}

async fn admin_route(
    req: Request<Incoming>,
    signer: &Signer,
    push: &Pusher,
) -> Response<Full<Bytes>> {
    match (req.method().clone(), req.uri().path()) {
        (Method::POST, "/v1/revoke") => {
            let b = match body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Ask {
                jti: Option<String>,
                sub: Option<String>,
                kid: Option<String>,
                #[serde(default)]
                reason: String,
            }
            let ask: Ask = match crate::json::check_strict(&b)
                .map_err(|e| e.to_string())
                .and_then(|_| crate::json::from_checked(&b))
            {
                Ok(a) => a,
                Err(m) => return problem(StatusCode::BAD_REQUEST, "request_malformed", m),
            };
            let what = match (ask.jti, ask.sub, ask.kid) {
                (Some(j), None, None) if !j.is_empty() => Revoke::Jti(j),
                (None, Some(s), None) if !s.is_empty() => Revoke::Sub(s),
                (None, None, Some(k)) if !k.is_empty() => Revoke::Kid(k),
                _ => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "request_malformed",
                        "name exactly one non-empty jti, sub or kid",
                    )
                }
            };
            match signer.revoke(what, &ask.reason) {
                Ok((epoch, changed)) => {
                    let doc = signer.revocation_document();
                    push.push(&doc).await;
                    reply(StatusCode::OK, json!({"epoch": epoch, "updated": changed}))
                }
                Err(e) => problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "state_unavailable",
                    format!("{e:#}"),
                ),
            }
        }
        (Method::POST, "/v1/reload") => match signer.reload_policies() {
            Ok(changed) => {
                if changed {
                    push.push(&signer.revocation_document()).await;
                }
                let (p, r) = signer.epochs();
                reply(
                    StatusCode::OK,
                    json!({"changed": changed, "policy_epoch": p, "revocation_epoch": r}),
                )
            }
            Err(e) => problem(StatusCode::CONFLICT, "policies_invalid", format!("{e:#}")),
        },
        _ => problem(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    }
}
