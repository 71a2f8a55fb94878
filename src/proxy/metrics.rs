//! Prometheus text metrics: request counts by target, decision and reason, and latency
//! histograms per pipeline phase. Written by hand: a few atomics and one small map are all it
//! takes, and the hot path stays free of a registry's locking.

use crate::denial::Reason;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Parse the request, read the body.
    Parse,
    /// Certificate, contract, drift, use count.
    Admit,
    /// Durable decision record.
    Audit,
    /// Mint the execution identity.
    Identity,
    /// Upstream round trip to response headers.
    Forward,
    /// Whole request to response headers.
    Total,
}

const PHASES: [Phase; 6] = [
    Phase::Parse,
    Phase::Admit,
    Phase::Audit,
    Phase::Identity,
    Phase::Forward,
    Phase::Total,
];

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Parse => "parse",
            Phase::Admit => "admit",
            Phase::Audit => "audit",
            Phase::Identity => "identity",
            Phase::Forward => "forward",
            Phase::Total => "total",
        }
    }
}

/// Upper bounds in seconds.
const BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Decision {
    Allow,
    Deny,
    Read,
}

impl Decision {
    fn name(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Read => "read",
        }
    }
}

pub struct Metrics {
    phases: [Histogram; PHASES.len()],
    requests: Mutex<BTreeMap<(String, Decision, &'static str), u64>>,
    pub upstream_errors: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            phases: std::array::from_fn(|_| Histogram::new()),
            requests: Mutex::new(BTreeMap::new()),
            upstream_errors: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn observe(&self, phase: Phase, d: Duration) {
        self.phases[PHASES.iter().position(|p| *p == phase).unwrap_or(0)].observe(d);
    }

    pub fn count(&self, target: &str, decision: Decision, reason: Option<Reason>) {
        let key = (
            target.to_string(),
            decision,
            reason.map(Reason::as_str).unwrap_or(""),
        );
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert(0) += 1;
    }

    pub fn render(&self, extra: &[(&str, &str, f64)]) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP seb_requests_total Requests by target, decision and denial reason.\n");
        out.push_str("# TYPE seb_requests_total counter\n");
        for ((target, decision, reason), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "seb_requests_total{{target=\"{}\",decision=\"{}\",reason=\"{}\"}} {n}",
                escape(target),
                decision.name(),
                reason
            );
        }
        out.push_str("# HELP seb_phase_duration_seconds Time spent in each pipeline phase.\n");
        out.push_str("# TYPE seb_phase_duration_seconds histogram\n");
        for (phase, h) in PHASES.iter().zip(&self.phases) {
            let mut cumulative = 0;
            for (b, c) in BUCKETS.iter().zip(&h.buckets) {
                cumulative += c.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "seb_phase_duration_seconds_bucket{{phase=\"{}\",le=\"{b}\"}} {cumulative}",
                    phase.name()
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "seb_phase_duration_seconds_bucket{{phase=\"{}\",le=\"+Inf\"}} {count}",
                phase.name()
            );
            let _ = writeln!(
                out,
                "seb_phase_duration_seconds_sum{{phase=\"{}\"}} {}",
                phase.name(),
                h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
            );
            let _ = writeln!(
                out,
                "seb_phase_duration_seconds_count{{phase=\"{}\"}} {count}",
                phase.name()
            );
        }
        for (name, help, value) in extra {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = Metrics::default();
        m.count("pay", Decision::Deny, Some(Reason::Expired));
        m.count("pay", Decision::Deny, Some(Reason::Expired));
        m.count("pay", Decision::Allow, None);
        m.observe(Phase::Admit, Duration::from_micros(80));
        m.observe(Phase::Admit, Duration::from_millis(3));
        let text = m.render(&[("seb_revocation_epoch", "Loaded revocation epoch.", 7.0)]);
        assert!(text
            .contains("seb_requests_total{target=\"pay\",decision=\"deny\",reason=\"expired\"} 2"));
        assert!(
            text.contains("seb_requests_total{target=\"pay\",decision=\"allow\",reason=\"\"} 1")
        );
        assert!(text.contains("seb_phase_duration_seconds_bucket{phase=\"admit\",le=\"0.0001\"} 1"));
        assert!(text.contains("seb_phase_duration_seconds_bucket{phase=\"admit\",le=\"0.005\"} 2"));
        assert!(text.contains("seb_phase_duration_seconds_count{phase=\"admit\"} 2"));
        assert!(text.contains("seb_revocation_epoch 7"));
    }
}
