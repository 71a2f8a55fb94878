//! Traces: an agent's W3C `traceparent` is honoured, the broker's own span goes upstream as
//! the parent of whatever the upstream traces, and (with `[tracing] otlp_endpoint`) the spans
//! of the pipeline's phases are exported over OTLP/HTTP.
//!
//! Off by default, and then it costs one header lookup per request: a request without a valid
//! `traceparent` has no [`RequestTrace`], nothing is recorded and no header is added. With a
//! `traceparent` and no exporter, the broker's span id is a random one and the trace id goes to
//! the audit records and upstream. With an exporter, every request is traced: a `seb.request`
//! span (server, child of the agent's span when it sent one) with a child per phase:
//! `seb.parse`, `seb.admit`, `seb.audit.decision`, `seb.identity`, `seb.forward` (client),
//! `seb.audit.outcome`. The agent's `sampled` flag is respected (parent-based sampling).
//!
//! Span attributes name the request by id, target, method and path, never its query: a
//! presigned URL carries a certificate and a signature there.

mod export;
pub mod traceparent;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, TraceContextExt, TraceFlags, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};
pub use traceparent::TraceParent;

/// The broker's tracing: the exporter, when one is configured.
pub struct Tracing {
    sdk: Option<(SdkTracerProvider, SdkTracer)>,
}

impl Tracing {
    pub fn off() -> Tracing {
        Tracing { sdk: None }
    }

    /// Needs the broker's tokio runtime (the exporter sends through it).
    pub fn from_config(cfg: &crate::config::TracingConfig) -> anyhow::Result<Tracing> {
        let Some(endpoint) = &cfg.otlp_endpoint else {
            return Ok(Tracing::off());
        };
        let provider = export::provider(cfg, endpoint)?;
        let tracer = provider.tracer("seb");
        tracing::info!(endpoint = %endpoint, "exporting traces over OTLP/HTTP");
        Ok(Tracing {
            sdk: Some((provider, tracer)),
        })
    }

    /// A request's trace, or None: no valid `traceparent` and nothing exported.
    pub fn start(&self, headers: &http::HeaderMap, about: Describe<'_>) -> Option<RequestTrace> {
        let agent = TraceParent::from_headers(headers);
        let Some((_, tracer)) = &self.sdk else {
            let agent = agent?;
            let mut span_id = [0u8; 8];
            // A failed random source leaves the trace out rather than reuse an id.
            getrandom::getrandom(&mut span_id).ok()?;
            return Some(RequestTrace {
                upstream: TraceParent {
                    parent_id: span_id,
                    ..agent
                },
                exported: None,
            });
        };
        let parent = match agent {
            Some(tp) => Context::new().with_remote_span_context(SpanContext::new(
                opentelemetry::trace::TraceId::from_bytes(tp.trace_id),
                opentelemetry::trace::SpanId::from_bytes(tp.parent_id),
                if tp.sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let now = (SystemTime::now(), Instant::now());
        let span = tracer
            .span_builder("seb.request")
            .with_kind(SpanKind::Server)
            .with_start_time(now.0)
            .with_attributes([
                KeyValue::new("seb.request_id", about.request_id.to_string()),
                KeyValue::new("seb.target", about.target.to_string()),
                KeyValue::new("http.request.method", about.method.to_string()),
                KeyValue::new("url.path", about.path.to_string()),
            ])
            .start_with_context(tracer, &parent);
        let sc = span.span_context();
        let upstream = TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            parent_id: sc.span_id().to_bytes(),
            sampled: sc.is_sampled(),
        };
        Some(RequestTrace {
            upstream,
            exported: Some(Exported {
                tracer: tracer.clone(),
                base: now,
                state: Mutex::new((Some(span), Vec::new())),
            }),
        })
    }

    /// Exports what is queued; waits at most `timeout`. Blocking: call it off the runtime.
    pub fn shutdown(&self, timeout: std::time::Duration) {
        if let Some((provider, _)) = &self.sdk {
            if let Err(e) = provider.shutdown_with_timeout(timeout) {
                tracing::warn!(error = %e, "traces not all exported at shutdown");
            }
        }
    }
}

/// What the request span says about its request.
pub struct Describe<'a> {
    pub request_id: &'a str,
    pub target: &'a str,
    pub method: &'a http::Method,
    pub path: &'a str,
}

/// One request's trace.
pub struct RequestTrace {
    /// What goes upstream: the trace id, the broker's request span as the parent, and the
    /// sampled flag.
    pub upstream: TraceParent,
    exported: Option<Exported>,
}

type Phases = Vec<(&'static str, Instant, Instant)>;

struct Exported {
    tracer: SdkTracer,
    /// The wall clock and the monotonic clock at the request's start: phase times are taken
    /// from the monotonic one and placed on the wall clock from here.
    base: (SystemTime, Instant),
    state: Mutex<(Option<opentelemetry_sdk::trace::Span>, Phases)>,
}

impl RequestTrace {
    pub fn trace_id(&self) -> [u8; 16] {
        self.upstream.trace_id
    }

    /// A phase from `from` to now, when spans are exported.
    pub fn phase(&self, name: &'static str, from: Instant) {
        if let Some(e) = &self.exported {
            if let Ok(mut s) = e.state.lock() {
                s.1.push((name, from, Instant::now()));
            }
        }
    }

    /// Ends the request span (and writes its phases as children) with what came of it.
    pub fn finish(&self, status: u16, refused: Option<&str>) {
        let Some(e) = &self.exported else {
            return;
        };
        let Some((span, phases)) = e
            .state
            .lock()
            .ok()
            .and_then(|mut s| Some((s.0.take()?, std::mem::take(&mut s.1))))
        else {
            return;
        };
        let at = |i: Instant| e.base.0 + i.saturating_duration_since(e.base.1);
        let cx = Context::new().with_span(span);
        if cx.span().is_recording() {
            for (name, from, to) in phases {
                let kind = match name {
                    "seb.forward" => SpanKind::Client,
                    _ => SpanKind::Internal,
                };
                e.tracer
                    .span_builder(name)
                    .with_kind(kind)
                    .with_start_time(at(from))
                    .start_with_context(&e.tracer, &cx)
                    .end_with_timestamp(at(to));
            }
        }
        let span = cx.span();
        span.set_attribute(KeyValue::new("http.response.status_code", status as i64));
        if let Some(code) = refused {
            span.set_attribute(KeyValue::new("seb.refused", code.to_string()));
        }
        span.end_with_timestamp(SystemTime::now());
    }
}
