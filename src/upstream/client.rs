//! The client for everything seb sends upstream: forwarded requests over the pool, upgrades
//! and control calls (revocation data, identity, live reads) over hyper-util's client.

use super::body::{stream_body, upstream_full, Body, BoxError, UpstreamBody};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::Path;

/// A control call that got no answer, with where it was going and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SendError(pub String);

/// An error and its sources as one line, each cause said once (a source whose text its
/// parent already includes is skipped).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

#[derive(Clone)]
pub struct UpstreamClient {
    /// Control calls (revocation data, identity, live reads) and protocol upgrades.
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, UpstreamBody>,
    /// Forwarded requests: connections driven by the request's own task.
    pool: std::sync::Arc<super::pool::Pool>,
}

impl UpstreamClient {
    /// `ca`: trust only this CA bundle for HTTPS upstreams (private CAs, tests); otherwise the
    /// platform's roots.
    pub fn new(ca: Option<&Path>) -> anyhow::Result<UpstreamClient> {
        let tls = match ca {
            Some(ca) => (*crate::tls::client_config(Some(ca), None)?).clone(),
            None => {
                let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
                let mut roots = rustls::RootCertStore::empty();
                // A machine without system roots can still use http:// upstreams and private CAs.
                for cert in rustls_native_roots() {
                    let _ = roots.add(cert);
                }
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth()
            }
        };
        let pool = std::sync::Arc::new(super::pool::Pool::new(&tls));
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(https);
        Ok(UpstreamClient { client, pool })
    }

    /// A control call of the broker's own (a live object, STS, a precondition read). Its
    /// error says where it was going and why it failed, down to the OS error: hyper-util's
    /// own text is only "client error (Connect)".
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, SendError> {
        let scheme = req.uri().scheme_str().unwrap_or("http").to_string();
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        self.client
            .request(req.map(upstream_full))
            .await
            .map_err(|e| {
                let what = if e.is_connect() {
                    "could not connect to"
                } else {
                    "no answer from"
                };
                // The top-level text is the generic "client error (…)"; the sources say why.
                let why = match std::error::Error::source(&e) {
                    Some(s) => error_chain(s),
                    None => e.to_string(),
                };
                SendError(format!("{what} {scheme}://{authority}: {why}"))
            })
    }

    /// Forwards an agent's request. An upgrade (kubernetes exec, attach, port-forward) goes
    /// through the client that can hand over the connection after `101 Switching Protocols`.
    pub async fn forward(&self, req: Request<UpstreamBody>) -> Result<Response<Body>, BoxError> {
        if req.headers().contains_key(http::header::UPGRADE) {
            let resp = self.client.request(req).await?;
            return Ok(resp.map(stream_body));
        }
        let resp = self.pool.send(req).await?;
        Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()))
    }

    /// A small GET for control data (revocation documents), with a size cap.
    pub async fn get_text(&self, url: &str, limit: usize) -> anyhow::Result<String> {
        let req = Request::get(url).body(upstream_full(Full::new(Bytes::new())))?;
        let resp =
            tokio::time::timeout(std::time::Duration::from_secs(10), self.client.request(req))
                .await
                .map_err(|_| anyhow::anyhow!("GET {url}: timed out"))??;
        if !resp.status().is_success() {
            anyhow::bail!("GET {url}: status {}", resp.status());
        }
        let body = http_body_util::Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?
            .to_bytes();
        Ok(String::from_utf8(body.to_vec())?)
    }
}

fn rustls_native_roots() -> Vec<rustls_pki_types::CertificateDer<'static>> {
    rustls_native_certs::load_native_certs().certs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of a control call names where it was going and the OS error, not just
    /// hyper-util's "client error (Connect)".
    #[tokio::test]
    async fn a_control_call_that_cannot_connect_says_where_and_why() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = UpstreamClient::new(None).unwrap();
        let req = Request::get(format!("http://127.0.0.1:{port}/x"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let e = client.send(req).await.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("could not connect to http://127.0.0.1:{port}: ")),
            "{e}"
        );
        assert!(e.contains("Connection refused"), "{e}");
        assert!(!e.contains("client error"), "{e}");
    }
}
