//! Prometheus metrics (prometheus-client): requests by target, decision and reason, latency
//! per pipeline phase, upstream errors, and the broker's own state read at each scrape.
//!
//! Counting stays off any lock: each (target, decision, reason) counter is looked up in the
//! family once and kept, and the phase histograms are held directly.

use crate::denial::Reason;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
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

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Decision {
    Allow,
    Deny,
    Read,
    /// Shadow mode: checked, would have been admitted, forwarded.
    WouldAllow,
    /// Shadow mode: checked, would have been refused, forwarded anyway.
    WouldDeny,
}

const DECISIONS: [Decision; 5] = [
    Decision::Allow,
    Decision::Deny,
    Decision::Read,
    Decision::WouldAllow,
    Decision::WouldDeny,
];

impl Decision {
    fn name(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Read => "read",
            Decision::WouldAllow => "would_allow",
            Decision::WouldDeny => "would_deny",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    target: String,
    decision: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

/// One slot per decision and reason (none first, then `Reason::ALL`).
const SLOTS: usize = DECISIONS.len() * (1 + Reason::ALL.len());

fn slot(decision: Decision, reason: Option<Reason>) -> usize {
    let d = DECISIONS.iter().position(|x| *x == decision).unwrap_or(0);
    let r = reason.map_or(0, |r| {
        1 + Reason::ALL.iter().position(|x| *x == r).unwrap_or(0)
    });
    d * (1 + Reason::ALL.len()) + r
}

type PhaseFamily = Family<PhaseLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    /// Per target, the family's counters once first used.
    by_target: Vec<(String, Box<[OnceLock<Counter>]>)>,
    phase_family: PhaseFamily,
    phases: [Histogram; PHASES.len()],
    upstream_errors: Counter,
    /// 1 per target in shadow mode, so that a dashboard cannot miss one.
    shadow: Family<TargetLabel, prometheus_client::metrics::gauge::Gauge>,
    prepares: Prepares,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrepareLabels {
    outcome: &'static str,
}

/// Accepted prepares and what became of their background mints: whether agents prepare, and
/// whether it helps, is otherwise invisible (an accepted prepare writes no record).
#[derive(Clone, Default)]
pub struct Prepares(Family<PrepareLabels, Counter>);

impl Prepares {
    /// `accepted`, then one of `minted`, `mint_failed`, `mint_timeout`.
    pub fn count(&self, outcome: &'static str) {
        self.0.get_or_create(&PrepareLabels { outcome }).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: String,
}

/// A value read at scrape time from the broker's own state.
pub enum Sample {
    Gauge(f64),
    /// A total so far (exported with the `_total` suffix).
    Counter(f64),
}

impl Metrics {
    /// `targets`: the names requests are counted under.
    pub fn new<'a>(targets: impl IntoIterator<Item = &'a str>) -> Metrics {
        let phase_family: PhaseFamily =
            Family::new_with_constructor(|| Histogram::new(BUCKETS.iter().copied()));
        let phases = PHASES.map(|p| {
            phase_family
                .get_or_create(&PhaseLabels { phase: p.name() })
                .clone()
        });
        Metrics {
            requests: Family::default(),
            by_target: targets
                .into_iter()
                .map(|t| (t.to_string(), (0..SLOTS).map(|_| OnceLock::new()).collect()))
                .collect(),
            phase_family,
            phases,
            upstream_errors: Counter::default(),
            shadow: Family::default(),
            prepares: Prepares::default(),
        }
    }

    /// The prepare counters, cloned into the task that mints in the background.
    pub fn prepares(&self) -> Prepares {
        self.prepares.clone()
    }

    /// Marks these targets as in shadow mode (`seb_target_shadow_mode{target} 1`).
    pub fn with_shadow(self, targets: &[String]) -> Metrics {
        for t in targets {
            self.shadow
                .get_or_create(&TargetLabel { target: t.clone() })
                .set(1);
        }
        self
    }

    pub fn observe(&self, phase: Phase, d: Duration) {
        let i = PHASES.iter().position(|p| *p == phase).unwrap_or(0);
        self.phases[i].observe(d.as_secs_f64());
    }

    pub fn upstream_error(&self) {
        self.upstream_errors.inc();
    }

    pub fn count(&self, target: &str, decision: Decision, reason: Option<Reason>) {
        let labels = || RequestLabels {
            target: target.to_string(),
            decision: decision.name(),
            reason: reason.map(Reason::as_str).unwrap_or(""),
        };
        match self.by_target.iter().find(|(t, _)| t == target) {
            Some((_, slots)) => slots[slot(decision, reason)]
                .get_or_init(|| self.requests.get_or_create(&labels()).clone())
                .inc(),
            // Not a configured target (never expected): counted all the same.
            None => self.requests.get_or_create(&labels()).inc(),
        };
    }

    /// The OpenMetrics text exposition, with `extra` values read by the caller.
    pub fn render(&self, extra: &[(&str, &str, Sample)]) -> String {
        let mut registry = Registry::default();
        registry.register(
            "seb_requests",
            "Requests by target, decision and denial reason",
            self.requests.clone(),
        );
        registry.register(
            "seb_phase_duration_seconds",
            "Time spent in each pipeline phase",
            self.phase_family.clone(),
        );
        registry.register(
            "seb_upstream_errors",
            "Forwarded requests the upstream did not answer",
            self.upstream_errors.clone(),
        );
        registry.register(
            "seb_target_shadow_mode",
            "1 for a target in shadow mode: it refuses nothing, it records would_allow and would_deny",
            self.shadow.clone(),
        );
        registry.register(
            "seb_prepares",
            "Accepted prepares (POST /v1/prepare) and the outcome of their background identity mints",
            self.prepares.0.clone(),
        );
        for (name, help, sample) in extra {
            // The encoder ends every help text with a period of its own.
            let help = help.trim_end_matches('.');
            // Whole numbers print as integers (`1496`, not `1496.0`), as they always have.
            let whole = |v: f64| (v.fract() == 0.0 && v.abs() < 9.0e15).then_some(v as i64);
            match *sample {
                Sample::Gauge(v) => match whole(v) {
                    Some(n) => registry.register(*name, help, ConstGauge::new(n)),
                    None => registry.register(*name, help, ConstGauge::new(v)),
                },
                Sample::Counter(v) => match whole(v).and_then(|n| u64::try_from(n).ok()) {
                    Some(n) => registry.register(*name, help, ConstCounter::new(n)),
                    None => registry.register(*name, help, ConstCounter::new(v)),
                },
            }
        }
        let mut out = String::with_capacity(8192);
        // Writing to a String does not fail; an encoding error would be a bug in a label.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "metrics could not be encoded");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = Metrics::new(["pay"]);
        m.count("pay", Decision::Deny, Some(Reason::Expired));
        m.count("pay", Decision::Deny, Some(Reason::Expired));
        m.count("pay", Decision::Allow, None);
        m.observe(Phase::Admit, Duration::from_micros(80));
        m.observe(Phase::Admit, Duration::from_millis(3));
        m.count("other", Decision::Read, None);
        let text = m.render(&[
            (
                "seb_revocation_epoch",
                "Loaded revocation epoch",
                Sample::Gauge(7.0),
            ),
            ("seb_audit_syncs", "fdatasync calls", Sample::Counter(3.0)),
        ]);
        assert!(text
            .contains("seb_requests_total{target=\"pay\",decision=\"deny\",reason=\"expired\"} 2"));
        assert!(
            text.contains("seb_requests_total{target=\"pay\",decision=\"allow\",reason=\"\"} 1")
        );
        assert!(text.contains("seb_phase_duration_seconds_bucket{le=\"0.0001\",phase=\"admit\"} 1"));
        assert!(text.contains("seb_phase_duration_seconds_bucket{le=\"0.005\",phase=\"admit\"} 2"));
        assert!(text.contains("seb_phase_duration_seconds_count{phase=\"admit\"} 2"));
        assert!(text.contains("seb_revocation_epoch 7"), "{text}");
        assert!(
            text.contains("# TYPE seb_audit_syncs counter\nseb_audit_syncs_total 3"),
            "{text}"
        );
        assert!(
            text.contains("seb_requests_total{target=\"other\",decision=\"read\",reason=\"\"} 1")
        );
    }
}
