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

    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(req.map(upstream_full)).await
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
