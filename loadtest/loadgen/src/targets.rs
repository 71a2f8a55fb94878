//! The targets against one run's figures, from the same files as the table: which
//! were met is computed here, not written by hand, so RESULTS.md cannot claim more than
//! the run measured.

use crate::table::{cpu_us, crypto_floor, lat, load};
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    dir: PathBuf,
    /// criterion's output directory, for the crypto floor.
    #[arg(long)]
    criterion: Option<PathBuf>,
}

/// Soaks shorter than this do not count for the memory target (10 minutes).
const SOAK_TARGET_S: f64 = 600.0;

fn added(dir: &Path, path: &str, base: &str, q: &str) -> Option<f64> {
    let p = load(dir, &format!("{path}-open.json"))?;
    let b = load(dir, &format!("{base}-open.json"))?;
    Some((lat(&p, q)? - lat(&b, q)?) / 1000.0)
}

fn closed_cpu(dir: &Path, path: &str) -> Option<f64> {
    cpu_us(
        &load(dir, &format!("{path}-proc.json")),
        "closed",
        &load(dir, &format!("{path}-closed.json")),
    )
}

/// Mean `fdatasync` under load, ms, from the seb metrics run.sh read after the fixed-rate phase.
fn mean_sync_ms(dir: &Path, path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(format!("{path}-open.metrics"))).ok()?;
    let gauge = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    let (syncs, secs) = (
        gauge("seb_audit_syncs_total")?,
        gauge("seb_audit_sync_seconds_total")?,
    );
    (syncs > 0.0).then(|| secs / syncs * 1000.0)
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "not measured",
    }
}

fn show(v: Option<f64>, fmt: impl Fn(f64) -> String) -> String {
    v.map(fmt).unwrap_or_else(|| "–".into())
}

/// RSS samples (`seconds KiB` per line, every 10 s): growth over the whole run and over its
/// last 40%, once the use store (one entry per live certificate) has filled and turns over.
fn soak_growth(dir: &Path) -> Option<(f64, f64, f64, f64)> {
    let text = std::fs::read_to_string(dir.join("soak-rss.txt")).ok()?;
    let samples: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .filter(|&(_, kb)| kb > 0.0)
        .collect();
    // The first sample is taken before any load.
    let from = usize::from(samples.len() > 1);
    let last = *samples.last()?;
    let first = samples[from];
    let late = samples[from + (samples.len() - 1 - from) * 6 / 10];
    let pct = |a: (f64, f64)| (last.1 - a.1) * 100.0 / a.1;
    Some((pct(first), pct(late), late.0, last.0))
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let d = a.dir.as_path();
    let floor = a.criterion.as_deref().and_then(crypto_floor).map(|f| f.0);
    let ms = |v: f64| format!("{v:+.3} ms");
    let mut out = String::from("| target (issue 5) | this run | met? |\n|---|---|---|\n");
    let mut row = |target: &str, figure: String, ok: Option<bool>| {
        out += &format!("| {target} | {figure} | {} |\n", verdict(ok));
    };

    // What the machine itself puts under each latency figure, measured in the same run: a
    // miss reads differently when the disk's sync or a plain TLS proxy alone takes most of it.
    let sync = mean_sync_ms(d, "seb-fsync");
    let nginx = |q: &str| added(d, "nginx-tls", "direct", q);
    for (q, limit) in [("p50", 0.5), ("p99", 2.0)] {
        let seb = added(d, "seb-fsync", "direct", q);
        let aws = added(d, "seb-aws", "direct-aws", q);
        row(
            &format!("added {q} ≤ {limit} ms at 2,000 req/s, durable audit"),
            format!(
                "seb-fsync {} (seb-aws, not a target: {}); in this run a decision waits for one fdatasync ({} mean under load) and nginx-tls alone adds {}",
                show(seb, ms),
                show(aws, ms),
                show(sync, |v| format!("{v:.3} ms")),
                show(nginx(q), ms)
            ),
            seb.map(|v| v <= limit),
        );
    }
    let flush = added(d, "seb-flush", "direct", "p50");
    row(
        "added p50 ≤ 0.15 ms at 2,000 req/s, relaxed audit",
        format!(
            "seb-flush {}; in this run nginx-tls alone adds {}",
            show(flush, ms),
            show(nginx("p50"), ms)
        ),
        flush.map(|v| v <= 0.15),
    );
    let rps = |p: &str| load(d, &format!("{p}-closed.json")).and_then(|c| c["ok_rps"].as_f64());
    let (fsync_rps, aws_rps) = (rps("seb-fsync"), rps("seb-aws"));
    row(
        "≥ 5,000 admitted single-use mutations/s closed-loop, durable audit",
        format!(
            "seb-fsync {}/s (seb-aws: {}/s)",
            show(fsync_rps, |v| format!("{v:.0}")),
            show(aws_rps, |v| format!("{v:.0}"))
        ),
        fsync_rps.map(|v| v >= 5000.0),
    );
    let times = |p: &str| Some(closed_cpu(d, p)? / floor?);
    let (cf, cr, ca) = (times("seb-fsync"), times("seb-flush"), times("seb-aws"));
    let x = |v: f64| format!("{v:.2}×");
    row(
        "CPU per admitted request ≤ 2× the crypto floor (closed loop)",
        format!(
            "seb-fsync {}, seb-flush {} (seb-aws: {}); floor {}",
            show(cf, x),
            show(cr, x),
            show(ca, x),
            show(floor, |f| format!("{f:.1} µs"))
        ),
        cf.zip(cr).map(|(f, r)| f <= 2.0 && r <= 2.0),
    );
    let soak: Option<Value> = load(d, "soak.json");
    let soak_s = soak.as_ref().and_then(|s| s["duration_s"].as_f64());
    let soak_errors = soak.as_ref().and_then(|s| s["errors"].as_u64());
    match (soak_growth(d), soak_s, soak_errors) {
        (Some((whole, steady, from, to)), Some(secs), Some(errors)) => row(
            "RSS growth < 5% over a 10-minute run at 50% of the maximum rate; no errors",
            format!(
                "{secs:.0} s: {steady:+.2}% from {from:.0} s to {to:.0} s, after the use store \
                 filled ({whole:+.0}% from the first sample: one entry per live certificate); \
                 {errors} errors"
            ),
            Some(secs >= SOAK_TARGET_S && steady < 5.0 && errors == 0),
        ),
        _ => row(
            "RSS growth < 5% over a 10-minute run at 50% of the maximum rate; no errors",
            "no soak in this run (`--soak 600`)".into(),
            None,
        ),
    }
    print!("{out}");
    Ok(())
}
