//! `seb reconcile`: every mutation the providers recorded, matched to a seb decision.
//!
//! The broker's guarantee holds only if the upstream refuses every identity but the broker's.
//! This turns that from an assumption into a check: it reads CloudTrail log files
//! (`cloudtrail`) and Kubernetes audit logs (`kube_audit`), seb's audit logs (`decisions`),
//! and reports (`matching`) mutations by other identities (bypass), mutations by the broker's
//! identity no decision admitted (unadmitted), admitted decisions the provider never saw
//! (unconfirmed), and calls that are not what their decision admitted (mismatch).
//!
//! AWS events are matched by the access key id of the STS session seb minted for the
//! certificate (unique per session, where the session name, the certificate id, is unique only
//! per issuer); Kubernetes events by the impersonated user with the `seb-issuer` and
//! `seb-cert-id` extra values.

pub mod cloudtrail;
pub mod decisions;
pub mod event;
pub mod kube_audit;
pub mod matching;
#[cfg(test)]
mod tests;

use event::{Provider, ProviderEvent};
use matching::{Report, Scope};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, clap::Args)]
pub struct ReconcileArgs {
    /// seb's audit logs (each replica's audit.jsonl; rotated files come with it).
    #[arg(long, required = true, num_args = 1..)]
    pub audit: Vec<PathBuf>,
    /// CloudTrail log files (`{"Records": [...]}`, gzipped or not).
    #[arg(long, num_args = 1.., required_unless_present = "kube_audit")]
    pub cloudtrail: Vec<PathBuf>,
    /// Kubernetes audit logs (audit.k8s.io/v1 Event JSON lines).
    #[arg(long, num_args = 1..)]
    pub kube_audit: Vec<PathBuf>,
    /// RFC 3339; decisions and mutations before it are not checked.
    #[arg(long)]
    pub since: Option<String>,
    /// RFC 3339 (exclusive). Provider events after it still confirm decisions before it.
    #[arg(long)]
    pub until: Option<String>,
    /// How long a decision may wait for its provider event, counted against the last event in
    /// the provider's logs (CloudTrail delivers within about 15 minutes).
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub grace: std::time::Duration,
    /// How far the provider's clock may be behind the broker's.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub skew: std::time::Duration,
    /// An AWS role ARN whose sessions are the broker's (the execution and read roles); the
    /// roles the audit log names are always included.
    #[arg(long = "aws-role")]
    pub aws_roles: Vec<String>,
    /// The Kubernetes user the broker authenticates as (its service account, e.g.
    /// system:serviceaccount:seb:seb). Required with --kube-audit.
    #[arg(long = "kube-broker-user")]
    pub kube_users: Vec<String>,
    /// An identity whose mutations are expected (a controller): exact, or a prefix ending in
    /// `*` (`system:node:*`). Repeat for several.
    #[arg(long = "ignore-identity")]
    pub ignore: Vec<String>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Exit 0: every mutation accounted for; 1: findings; 2: the input could not be read.
pub fn run(a: &ReconcileArgs) -> ExitCode {
    match reconcile(a) {
        Ok(report) => {
            let mut out = std::io::stdout().lock();
            let written = if a.json {
                serde_json::to_writer_pretty(&mut out, &report)
                    .map_err(std::io::Error::other)
                    .and_then(|_| writeln!(out))
            } else {
                write_table(&mut out, &report)
            };
            if let Err(e) = written {
                eprintln!("seb: {e}");
                return ExitCode::from(2);
            }
            if report.findings.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("seb: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn time_arg(v: &Option<String>, flag: &str) -> anyhow::Result<Option<jiff::Timestamp>> {
    v.as_deref()
        .map(|s| {
            s.parse::<jiff::Timestamp>()
                .map_err(|e| anyhow::anyhow!("--{flag} {s:?}: not an RFC 3339 time: {e}"))
        })
        .transpose()
}

pub fn reconcile(a: &ReconcileArgs) -> anyhow::Result<Report> {
    if !a.kube_audit.is_empty() && a.kube_users.is_empty() {
        anyhow::bail!(
            "--kube-audit needs --kube-broker-user: the user the broker authenticates as, so \
             that every other user's mutation is a bypass"
        );
    }
    let span = |d: std::time::Duration, flag: &str| {
        jiff::SignedDuration::try_from(d).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
    };
    let mut providers = Vec::new();
    let mut events: Vec<ProviderEvent> = Vec::new();
    type Parser = fn(&str, &[u8]) -> Result<Vec<ProviderEvent>, String>;
    for (files, provider, parse) in [
        (
            &a.cloudtrail,
            Provider::Aws,
            cloudtrail::parse_file as Parser,
        ),
        (
            &a.kube_audit,
            Provider::Kubernetes,
            kube_audit::parse_file as Parser,
        ),
    ] {
        if files.is_empty() {
            continue;
        }
        providers.push(provider);
        for f in files {
            let raw = std::fs::read(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            events.extend(parse(&f.display().to_string(), &raw).map_err(anyhow::Error::msg)?);
        }
    }
    let scope = Scope {
        since: time_arg(&a.since, "since")?,
        until: time_arg(&a.until, "until")?,
        grace: span(a.grace, "grace")?,
        skew: span(a.skew, "skew")?,
        aws_roles: a.aws_roles.clone(),
        kube_users: a.kube_users.clone(),
        ignore: a.ignore.clone(),
        providers,
    };
    let decisions = decisions::read(&a.audit)?;
    Ok(matching::reconcile(&decisions, &events, &scope))
}

fn write_table(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    writeln!(
        out,
        "decisions {}  provider events {}  mutations {}  matched {}  pending {}  refused {}  ignored {}  findings {}",
        r.decisions,
        r.provider_events,
        r.mutations,
        r.matched,
        r.pending,
        r.refused,
        r.ignored,
        r.findings.len()
    )?;
    if r.findings.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "{:<12} {:<10} {:<26} {:<40} {:<24} MESSAGE",
        "CLASS", "PROVIDER", "TIME", "IDENTITY", "DECISION"
    )?;
    for f in &r.findings {
        let time = f
            .event
            .as_ref()
            .map(|e| e.time.clone())
            .or_else(|| f.decision.as_ref().map(|d| d.time.clone()))
            .unwrap_or_default();
        let who = f
            .event
            .as_ref()
            .map(|e| e.principal.clone())
            .unwrap_or_else(|| "-".into());
        let decision = f
            .decision
            .as_ref()
            .map(|d| format!("{}#{}", d.broker, d.seq))
            .unwrap_or_else(|| "-".into());
        let at = f
            .event
            .as_ref()
            .map(|e| format!(" ({})", e.at))
            .unwrap_or_default();
        writeln!(
            out,
            "{:<12} {:<10} {:<26} {:<40} {:<24} {}{at}",
            f.class.as_str(),
            f.provider.as_str(),
            time,
            who,
            decision,
            f.message
        )?;
    }
    Ok(())
}
