//! The AWS SDK's HTTP calls (STS, the credential chain's endpoints: container credentials,
//! IMDSv2, web identity) go through the broker's own upstream client: one TLS trust setting
//! (`upstream_ca`) for everything the target talks to, and connect errors that say where the
//! call was going and why.

use crate::upstream::UpstreamClient;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::Response;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use http_body_util::Full;
use std::time::Duration;

#[derive(Clone)]
pub struct Connector {
    client: UpstreamClient,
    /// The SDK's connect + read timeouts for this connector, applied to the whole exchange up
    /// to the response head (the body is read under the SDK's operation timeout).
    timeout: Option<Duration>,
}

impl Connector {
    pub fn new(client: UpstreamClient) -> Connector {
        Connector {
            client,
            timeout: None,
        }
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("seb upstream connector")
    }
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.client.clone();
        let timeout = self.timeout;
        HttpConnectorFuture::new(async move {
            let req = request
                .try_into_http1x()
                .map_err(|e| ConnectorError::user(e.into()))?;
            let (parts, body) = req.into_parts();
            // Every call the SDK makes for the broker (AssumeRole, credential endpoints) has a
            // small in-memory body; a streamed one would be a surprise worth refusing.
            let Some(bytes) = body.bytes() else {
                return Err(ConnectorError::user(
                    "a streamed request body to an AWS control endpoint".into(),
                ));
            };
            let req = http::Request::from_parts(parts, Full::new(Bytes::copy_from_slice(bytes)));
            let send = client.send(req);
            let resp = match timeout {
                Some(t) => tokio::time::timeout(t, send)
                    .await
                    .map_err(|e| ConnectorError::timeout(e.into()))?,
                None => send.await,
            }
            .map_err(|e| ConnectorError::io(e.0.into()))?;
            let resp = resp.map(SdkBody::from_body_1_x);
            Response::try_from(resp).map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

impl HttpClient for Connector {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let timeout = match (settings.connect_timeout(), settings.read_timeout()) {
            (Some(c), Some(r)) => Some(c + r),
            (c, r) => c.or(r),
        };
        SharedHttpConnector::new(Connector {
            client: self.client.clone(),
            timeout,
        })
    }
}
