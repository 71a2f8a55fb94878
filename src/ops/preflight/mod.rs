//! `seb preflight`: proves, with the agent's own credentials, that the bypass guard is in
//! place: the agent cannot mutate AWS or the cluster directly (AWS: IAM policy simulation
//! where the agent may run it, then denied dry-runs and a refused AssumeRole of the broker's
//! role; Kubernetes: SelfSubjectAccessReviews), and the broker's base AWS identity cannot
//! mutate directly either (deploy/aws grants it only AssumeRole).
//!
//! Every probe either proves a refusal or is a gap: an answer preflight cannot read is not a
//! proof.

pub mod aws;
pub mod kube;

use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, clap::Args)]
pub struct PreflightArgs {
    /// The agent's AWS profile (shared config/credentials files); the SDK's default chain
    /// when --aws is given without it.
    #[arg(long)]
    pub aws_profile: Option<String>,
    /// Check AWS with the default credential chain (implied by --aws-profile).
    #[arg(long)]
    pub aws: bool,
    /// Send AWS calls here instead of the regional endpoints (emulators, VPC endpoints).
    #[arg(long)]
    pub aws_endpoint: Option<String>,
    #[arg(long, default_value = "us-east-1")]
    pub aws_region: String,
    /// Actions the agent must not be allowed, for IAM policy simulation (`ec2:TerminateInstances`).
    #[arg(long = "aws-action")]
    pub aws_actions: Vec<String>,
    /// The broker's execution role: the agent must not be able to assume it.
    #[arg(long)]
    pub aws_execution_role: Option<String>,
    /// The broker's base credentials (a profile): they must not mutate directly either.
    #[arg(long)]
    pub broker_aws_profile: Option<String>,
    /// The agent's kubeconfig (read by kubectl, so any auth it supports works).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context; its current context otherwise.
    #[arg(long)]
    pub kube_context: Option<String>,
    /// Namespaces to check; repeat for several.
    #[arg(long = "namespace", default_value = "default")]
    pub namespaces: Vec<String>,
    /// The user the broker impersonates for mutations: the agent must not impersonate it.
    #[arg(long)]
    pub kube_execution_user: Option<String>,
    /// Print the rows as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// A refusal was proven.
    Guarded,
    /// The identity can do it, or nothing proved it cannot.
    Gap,
    /// Context, not a check (who the credentials are).
    Info,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub provider: &'static str,
    pub identity: String,
    pub check: String,
    pub verdict: Verdict,
    pub detail: String,
}

/// Exit 0: every check proved a refusal; 1: a gap; 2: nothing could be checked.
pub fn run(a: &PreflightArgs) -> ExitCode {
    if a.aws_profile.is_none() && !a.aws && a.kubeconfig.is_none() {
        eprintln!("seb: preflight needs --aws-profile (or --aws) and/or --kubeconfig");
        return ExitCode::from(2);
    }
    let rows = match preflight(a) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("seb: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    let written = if a.json {
        serde_json::to_writer_pretty(&mut out, &rows)
            .map_err(std::io::Error::other)
            .and_then(|_| writeln!(out))
    } else {
        write_table(&mut out, &rows)
    };
    if let Err(e) = written {
        eprintln!("seb: {e}");
        return ExitCode::from(2);
    }
    if rows.iter().any(|r| r.verdict == Verdict::Gap) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

pub fn preflight(a: &PreflightArgs) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    if a.aws || a.aws_profile.is_some() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rows.extend(rt.block_on(aws::check(a))?);
    }
    if let Some(k) = &a.kubeconfig {
        rows.extend(kube::check(a, k)?);
    }
    Ok(rows)
}

fn write_table(out: &mut impl Write, rows: &[Row]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<10} {:<8} {:<46} {:<44} DETAIL",
        "PROVIDER", "RESULT", "IDENTITY", "CHECK"
    )?;
    for r in rows {
        let verdict = match r.verdict {
            Verdict::Guarded => "ok",
            Verdict::Gap => "GAP",
            Verdict::Info => "-",
        };
        writeln!(
            out,
            "{:<10} {:<8} {:<46} {:<44} {}",
            r.provider, verdict, r.identity, r.check, r.detail
        )?;
    }
    Ok(())
}
