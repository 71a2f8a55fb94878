//! `[tracing]`: spans of every request's pipeline phases exported over OTLP/HTTP (protobuf).
//! Off unless `otlp_endpoint` is set. An agent's W3C `traceparent` is honoured either way: its
//! trace id goes to the audit records and, under the broker's own span id, upstream.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [tracing] table")]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// CA bundle (PEM) for an https endpoint on a private CA.
    #[serde(default)]
    pub otlp_ca: Option<PathBuf>,
    /// How long one export may take before it is given up (spans are dropped, never queued
    /// without bound).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub otlp_timeout: Duration,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service")]
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            otlp_ca: None,
            otlp_timeout: default_timeout(),
            service_name: default_service(),
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_service() -> String {
    "seb".into()
}

impl TracingConfig {
    /// Errors are `(field path, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, m: &str| Err((format!("tracing.{f}"), m.to_string()));
        if let Some(u) = &self.otlp_endpoint {
            match u.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.host().is_some() => {}
                _ => {
                    return err(
                        "otlp_endpoint",
                        "must be an http:// or https:// URL (the collector's /v1/traces)",
                    )
                }
            }
        } else if self.otlp_ca.is_some() {
            return err("otlp_ca", "set without otlp_endpoint");
        }
        if self.otlp_timeout.is_zero() || self.otlp_timeout > Duration::from_secs(60) {
            return err("otlp_timeout", "must be between 1ms and 60s");
        }
        if self.service_name.is_empty() {
            return err("service_name", "must not be empty");
        }
        Ok(())
    }

    pub fn resolve(&mut self, base: &Path) {
        if let Some(p) = &mut self.otlp_ca {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}
