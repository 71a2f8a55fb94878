//! `seb audit label` and `seb audit report`: argument structs and runners for the main binary.

use super::query::{query_lines, Filter};
use super::record::{LabelInfo, LabelledRecord};
use super::report::{self, ReportInput};
use super::{Audit, AuditSettings, Durability};
use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("verdict").required(true).args(["legitimate", "harmful"])))]
pub struct LabelArgs {
    /// The `seq` of the would-block (a `deny` or `would_deny` decision) in --log.
    pub seq: u64,
    /// The change was legitimate: blocking it would have been a false block.
    #[arg(long)]
    pub legitimate: bool,
    /// The change was rightly blocked.
    #[arg(long)]
    pub harmful: bool,
    #[arg(long)]
    pub note: Option<String>,
    /// The log the record is in (broker or shadow log; rotated files come with it).
    #[arg(long)]
    pub log: PathBuf,
    /// The label log to append to (created when missing).
    #[arg(long)]
    pub labels: PathBuf,
    /// The labelling operator's Ed25519 key (PKCS#8 PEM); `seb audit verify --key` with its
    /// public half verifies the label log.
    #[arg(long)]
    pub key: PathBuf,
    /// Who labels, written as the label log's `broker` member.
    #[arg(long, default_value = "operator")]
    pub by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReportFormat {
    #[default]
    Table,
    Json,
    Html,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Broker and shadow logs (each path takes its rotated files with it).
    #[arg(required = true, num_args = 1..)]
    pub logs: Vec<PathBuf>,
    /// Label logs written by `seb audit label`.
    #[arg(long)]
    pub labels: Vec<PathBuf>,
    /// The signer's proposals as NDJSON (docs/FORMATS.md, "Proposals"): tells a change the
    /// signer refused from one nobody asked for.
    #[arg(long)]
    pub proposals: Vec<PathBuf>,
    /// The signer's own audit log (each path takes its rotated files with it): its issuances
    /// and refusals are the proposals.
    #[arg(long)]
    pub signer_log: Vec<PathBuf>,
    /// RFC 3339 time (inclusive).
    #[arg(long)]
    pub since: String,
    /// RFC 3339 time (exclusive).
    #[arg(long)]
    pub until: String,
    /// Width of one point of the trend.
    #[arg(long, default_value = "1d", value_parser = humantime::parse_duration)]
    pub bucket: std::time::Duration,
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
}

pub fn run_report(a: &ReportArgs) -> ExitCode {
    let run = || -> anyhow::Result<String> {
        let time = |s: &str, what: &str| {
            humantime::parse_rfc3339_weak(s)
                .map_err(|e| anyhow!("--{what} {s:?} is not an RFC 3339 time: {e}"))
        };
        let r = report::report(&ReportInput {
            logs: a.logs.clone(),
            labels: a.labels.clone(),
            proposals: a.proposals.clone(),
            signer_logs: a.signer_log.clone(),
            since: time(&a.since, "since")?,
            until: time(&a.until, "until")?,
            bucket: a.bucket,
        })?;
        Ok(match a.format {
            ReportFormat::Table => report::table(&r),
            ReportFormat::Json => format!("{}\n", serde_json::to_string_pretty(&r)?),
            ReportFormat::Html => report::html::render(&r),
        })
    };
    match run() {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("seb audit report: {e:#}");
            ExitCode::from(2)
        }
    }
}

pub fn run_label(a: &LabelArgs) -> ExitCode {
    match label(a) {
        Ok(seq) => {
            println!(
                "labelled seq {} of {} {} (label seq {seq} in {})",
                a.seq,
                a.log.display(),
                if a.legitimate {
                    "legitimate"
                } else {
                    "harmful"
                },
                a.labels.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("seb audit label: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn label(a: &LabelArgs) -> anyhow::Result<u64> {
    let (line, v) = find(&a.log, a.seq)?;
    let decision = v.get("decision").and_then(Value::as_str);
    if v.get("kind").and_then(Value::as_str) != Some("decision")
        || !matches!(decision, Some("deny" | "would_deny"))
    {
        bail!(
            "seq {} in {} is a {} record with decision {:?}: only would-blocks (decision deny or would_deny) are labelled",
            a.seq,
            a.log.display(),
            v.get("kind").and_then(Value::as_str).unwrap_or("?"),
            decision.unwrap_or("none")
        );
    }
    let key = crate::cert::keys::load_signing_key(&a.key)
        .with_context(|| format!("--key {}", a.key.display()))?;
    let info = LabelInfo {
        record: LabelledRecord {
            broker: v.get("broker").and_then(Value::as_str).map(str::to_owned),
            seq: a.seq,
            sha256: hex::encode(Sha256::digest(line.as_bytes())),
        },
        verdict: if a.legitimate {
            "legitimate"
        } else {
            "harmful"
        },
        note: a.note.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let audit = Audit::start(
            AuditSettings {
                path: Some(a.labels.clone()),
                durability: Durability::Fsync,
                rotate_bytes: None,
                stdout: false,
                broker_id: a.by.clone(),
                shadow_targets: Vec::new(),
            },
            key,
        )
        .with_context(|| format!("opening the label log {}", a.labels.display()))?;
        let seq = audit
            .record_label(info)
            .await
            .map_err(|e| anyhow!("the label was not written: {e}"))?;
        tokio::task::spawn_blocking(move || drop(audit)).await?;
        Ok(seq)
    })
}

/// The record with this seq, and its line as stored.
fn find(log: &Path, seq: u64) -> anyhow::Result<(String, Value)> {
    let files = super::files::log_files(&[log.to_path_buf()])
        .with_context(|| format!("listing {}", log.display()))?;
    query_lines(&files, &Filter::default())?
        .into_iter()
        .find(|(_, v)| v.get("seq").and_then(Value::as_u64) == Some(seq))
        .ok_or_else(|| anyhow!("no record with seq {seq} in {}", log.display()))
}
