//! The OTLP/HTTP exporter behind `[tracing] otlp_endpoint`: the OpenTelemetry SDK's batch
//! processor and OTLP exporter (protobuf bodies), posting through the broker's own upstream
//! client so that an https collector on a private CA is trusted exactly as `otlp_ca` says.

use crate::config::TracingConfig;
use crate::upstream::UpstreamClient;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use std::sync::Arc;

/// The SDK's batch processor exports from a thread of its own and drives the export future
/// with a plain executor; the request itself needs the broker's tokio runtime, so it is
/// spawned there and only awaited from the exporter's thread.
#[derive(Clone)]
struct Client {
    client: Arc<UpstreamClient>,
    runtime: tokio::runtime::Handle,
    timeout: std::time::Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("seb upstream client")
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let (client, timeout) = (self.client.clone(), self.timeout);
        let task = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let send = client.send(http::Request::from_parts(parts, Full::new(body)));
            let resp = tokio::time::timeout(timeout, send)
                .await
                .map_err(|_| format!("no answer within {timeout:?}"))?
                .map_err(|e| e.0)?;
            let (parts, body) = resp.into_parts();
            // The collector's answer is a small protobuf (partial success) or an error text.
            let body = Limited::new(body, 64 * 1024)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>(http::Response::from_parts(parts, body))
        });
        Ok(task.await??)
    }
}

/// The provider that owns the batch processor; its tracer makes the broker's spans.
pub(super) fn provider(cfg: &TracingConfig, endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let client = Client {
        client: Arc::new(UpstreamClient::new(cfg.otlp_ca.as_deref()).context("tracing.otlp_ca")?),
        runtime: tokio::runtime::Handle::try_current()
            .context("the OTLP exporter needs the broker's runtime")?,
        timeout: cfg.otlp_timeout,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(cfg.otlp_timeout)
        .with_http_client(client)
        .build()
        .context("tracing.otlp_endpoint")?;
    // Spans leave within a second of their request; a full queue drops spans rather than
    // holding memory or slowing requests.
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(std::time::Duration::from_secs(1))
                .with_max_queue_size(8192)
                .build(),
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .build(),
        )
        .build())
}
