//! `seb audit export`: audit records in the shapes other tools ingest, one JSON object per
//! line: OCSF API Activity (`ocsf`) and CloudTrail Lake's `PutAuditEvents` input
//! (`cloudtrail`). docs/OPERATIONS.md has the field mapping.
//!
//! Decisions and outcomes are exported; start, recovery and label records are the log's own
//! bookkeeping and are not API activity.

pub mod cloudtrail;
pub mod ocsf;

use super::files::log_groups;
use super::query::{query_lines, Filter};
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// OCSF API Activity (class_uid 6003), one event per line.
    Ocsf,
    /// CloudTrail Lake `PutAuditEvents` input: `{"auditEvents": [...]}` per batch of 100.
    Cloudtrail,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// The logs (as for `seb audit query`).
    #[arg(required = true, num_args = 1..)]
    pub logs: Vec<PathBuf>,
    /// RFC 3339 time (inclusive).
    #[arg(long)]
    pub since: Option<String>,
    /// RFC 3339 time (exclusive).
    #[arg(long)]
    pub until: Option<String>,
}

/// PutAuditEvents takes at most 100 events per call.
const CLOUDTRAIL_BATCH: usize = 100;

fn is_request_record(v: &Value) -> bool {
    matches!(
        v.get("kind").and_then(Value::as_str),
        Some("decision" | "outcome")
    )
}

pub fn run(a: &ExportArgs) -> ExitCode {
    match export(a, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seb: {e:#}");
            ExitCode::from(2)
        }
    }
}

pub fn export(a: &ExportArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let time = |s: &Option<String>, f: &str| {
        s.as_deref()
            .map(|t| {
                humantime::parse_rfc3339_weak(t)
                    .map_err(|e| anyhow::anyhow!("--{f} {t:?}: not an RFC 3339 time: {e}"))
            })
            .transpose()
    };
    let filter = Filter {
        since: time(&a.since, "since")?,
        until: time(&a.until, "until")?,
        ..Filter::default()
    };
    let mut batch = Vec::new();
    for group in log_groups(&a.logs)? {
        for (_, v) in query_lines(&group, &filter)? {
            if !is_request_record(&v) {
                continue;
            }
            match a.format {
                ExportFormat::Ocsf => {
                    serde_json::to_writer(&mut *out, &ocsf::event(&v))?;
                    writeln!(out)?;
                }
                ExportFormat::Cloudtrail => {
                    batch.push(cloudtrail::audit_event(&v)?);
                    if batch.len() == CLOUDTRAIL_BATCH {
                        cloudtrail::write_batch(out, &mut batch)?;
                    }
                }
            }
        }
    }
    if !batch.is_empty() {
        cloudtrail::write_batch(out, &mut batch)?;
    }
    Ok(())
}
