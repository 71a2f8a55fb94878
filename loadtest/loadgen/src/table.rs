//! The one comparison table of loadtest/run.sh, built from the per-path reports it saved:
//! `DIR/PATH-open.json` and `DIR/PATH-closed.json` (from `loadgen run --json`), and for
//! the processes whose CPU and memory were sampled, `DIR/PATH-proc.json`
//! (`{"cpu_open_s", "cpu_closed_s", "rss_before_kb", "rss_after_kb"}`).

use serde_json::Value;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    dir: PathBuf,
    /// Paths in table order, comma-separated.
    #[arg(long, value_delimiter = ',')]
    paths: Vec<String>,
    /// The baseline path (no proxy).
    #[arg(long, default_value = "direct")]
    direct: String,
    /// A path measured against its own baseline instead of --direct, as PATH=BASELINE
    /// (repeatable, or comma-separated): e.g. seb-aws=direct-aws, where the baseline sends the
    /// same request straight to the upstream.
    #[arg(long = "baseline", value_delimiter = ',', value_name = "PATH=BASELINE")]
    baselines: Vec<String>,
    /// The plain reverse proxy to compare with.
    #[arg(long, default_value = "nginx-tls")]
    nginx: String,
    /// criterion's output directory (target/criterion): when it holds the `floor` group of
    /// benches/hot_path.rs, CPU per request is also given as a multiple of the crypto floor.
    #[arg(long)]
    criterion: Option<PathBuf>,
}

/// The crypto floor of one admitted request in µs, from criterion's medians: one Ed25519
/// verify_strict + two Ed25519 signs + SHA-256 of the body + SHA-256 of two audit lines
/// (each line's hash is the next line's `prev`). Returns the floor and how it was summed.
pub fn crypto_floor(dir: &std::path::Path) -> Option<(f64, String)> {
    let median = |bench: &str| -> Option<f64> {
        let v = load(&dir.join("floor").join(bench).join("new"), "estimates.json")?;
        v["median"]["point_estimate"].as_f64()
    };
    let line_bench = std::fs::read_dir(dir.join("floor"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("sha256_audit_line"))?;
    let verify = median("ed25519_verify_strict")?;
    let sign2 = median("ed25519_sign_x2")?;
    let body = median("sha256_small_body")?;
    let line = median(&line_bench)?;
    let ns = verify + sign2 + body + 2.0 * line;
    Some((
        ns / 1000.0,
        format!(
            "one Ed25519 verify_strict {:.1} µs + two Ed25519 signs {:.1} µs + SHA-256 of the body {:.2} µs + SHA-256 of two audit lines {:.2} µs = {:.1} µs of CPU",
            verify / 1000.0,
            sign2 / 1000.0,
            body / 1000.0,
            2.0 * line / 1000.0,
            ns / 1000.0
        ),
    ))
}

/// What the STS stub saw during a path's fixed-rate phase, and the prepares the generator
/// sent, when there were any.
fn sts_line(dir: &std::path::Path, p: &str) -> String {
    let Some(s) = crate::targets::sts(dir, p) else {
        return String::new();
    };
    let report = load(dir, &format!("{p}-open.json"));
    let answered = report
        .as_ref()
        .and_then(|r| r["ok_including_warmup"].as_u64())
        .unwrap_or(0);
    let mut line = format!(
        "\n{p}: {:.0} STS AssumeRole calls during its fixed-rate phase (warm-up included) for {answered} 2xx answers; the stub held each answer {} on average (set to {:.0} ms).",
        s.calls,
        s.mean_hold_ms
            .map(|h| format!("{h:.3} ms"))
            .unwrap_or_else(|| "–".into()),
        s.delay_ms
    );
    if let Some(pr) = report
        .as_ref()
        .map(|r| &r["prepare"])
        .filter(|v| v.is_object())
    {
        let l = &pr["latency_us"];
        let ms = |k: &str| l[k].as_f64().map(|v| v / 1000.0).unwrap_or(0.0);
        line += &format!(
            " Prepares {} ms ahead (`POST {}`, {} connections): {} sent, {} answered 2xx, {} failed{}, {} answered after their certificate's use was due; prepare latency from its scheduled time p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms.",
            pr["lead_ms"],
            pr["path"].as_str().unwrap_or(""),
            pr["connections"],
            pr["sent"],
            pr["ok"],
            pr["failed"],
            match pr["status_errors"].as_object() {
                Some(m) if !m.is_empty() => format!(" (status {}, transport {})", pr["status_errors"], pr["transport_errors"]),
                _ => String::new(),
            },
            pr["answered_after_use_due"],
            ms("p50"),
            ms("p99"),
            ms("max"),
        );
    }
    line + "\n"
}

pub fn load(dir: &std::path::Path, name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(name)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn lat(r: &Value, k: &str) -> Option<f64> {
    r["latency_us"][k].as_f64()
}

fn ms(us: Option<f64>) -> String {
    us.map(|v| format!("{:.3}", v / 1000.0))
        .unwrap_or_else(|| "–".into())
}

/// CPU µs per 2xx answer of one phase (warm-up included, as the CPU was sampled over it).
pub fn cpu_us(proc_: &Option<Value>, phase: &str, report: &Option<Value>) -> Option<f64> {
    let s = proc_
        .as_ref()
        .and_then(|p| p[format!("cpu_{phase}_s")].as_f64())?;
    let n = report
        .as_ref()
        .and_then(|r| r["ok_including_warmup"].as_f64())?;
    (n > 0.0).then(|| s * 1e6 / n)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let direct = load(&a.dir, &format!("{}-open.json", a.direct));
    let mut own_baseline = std::collections::HashMap::new();
    for b in &a.baselines {
        let (p, base) = b
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--baseline {b:?} is not PATH=BASELINE"))?;
        own_baseline.insert(p.to_string(), base.to_string());
    }
    let baseline_names: std::collections::HashSet<&String> = own_baseline.values().collect();
    let nginx = load(&a.dir, &format!("{}-open.json", a.nginx));
    let floor = a.criterion.as_deref().and_then(crypto_floor);
    let mut out = String::new();
    out += "| path | rate req/s (target → achieved) | p50 ms | p90 ms | p99 ms | p99.9 ms | added p50 / p99 ms vs direct | ratio to direct p50 / p99 | ratio to nginx p50 / p99 | closed-loop req/s | CPU µs/req fixed-rate / closed | CPU / crypto floor (closed) | RSS MiB before → after | errors fixed / closed |\n";
    out += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for p in &a.paths {
        let open = load(&a.dir, &format!("{p}-open.json"));
        let closed = load(&a.dir, &format!("{p}-closed.json"));
        let proc_ = load(&a.dir, &format!("{p}-proc.json"));
        let Some(o) = open.as_ref() else {
            out += &format!("| {p} | (not run) | | | | | | | | | | | | |\n");
            continue;
        };
        let l = |k: &str| lat(o, k);
        // A path's baseline: its own (--baseline) or --direct; baselines compare with nothing.
        let (direct, direct_name) = match own_baseline.get(p) {
            Some(b) => (load(&a.dir, &format!("{b}-open.json")), b.as_str()),
            None => (direct.clone(), a.direct.as_str()),
        };
        let is_baseline = p == &a.direct || baseline_names.contains(p);
        let added = match &direct {
            Some(d) if !is_baseline => format!(
                "{:+.3} / {:+.3}",
                (l("p50").unwrap_or(0.0) - lat(d, "p50").unwrap_or(0.0)) / 1000.0,
                (l("p99").unwrap_or(0.0) - lat(d, "p99").unwrap_or(0.0)) / 1000.0
            ),
            _ => "–".into(),
        };
        let vs = |base: &Option<Value>, name: &str| match base {
            Some(b) if p != name && !(name == direct_name && is_baseline) => format!(
                "{} / {}",
                ratio(l("p50"), lat(b, "p50")),
                ratio(l("p99"), lat(b, "p99"))
            ),
            _ => "–".into(),
        };
        let closed_rps = closed
            .as_ref()
            .and_then(|c| c["ok_rps"].as_f64())
            .map(|v| format!("{v:.0} ({} conns)", closed.as_ref().unwrap()["connections"]))
            .unwrap_or_else(|| "–".into());
        let cpu_us = |phase: &str, report: &Option<Value>| cpu_us(&proc_, phase, report);
        let show = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into());
        let cpu_col = if proc_.is_some() {
            format!(
                "{} / {}",
                show(cpu_us("open", &open)),
                show(cpu_us("closed", &closed))
            )
        } else {
            "–".into()
        };
        let floor_col = match (floor.as_ref(), cpu_us("closed", &closed)) {
            (Some((f, _)), Some(c)) if p.starts_with("seb") => format!("{:.1}×", c / f),
            _ => "–".into(),
        };
        let rss = proc_
            .as_ref()
            .and_then(|p| Some((p["rss_before_kb"].as_f64()?, p["rss_after_kb"].as_f64()?)))
            .map(|(b, a)| format!("{:.1} → {:.1}", b / 1024.0, a / 1024.0))
            .unwrap_or_else(|| "–".into());
        let errs = format!(
            "{} / {}",
            o["errors"],
            closed
                .as_ref()
                .map(|c| c["errors"].to_string())
                .unwrap_or_else(|| "–".into())
        );
        let shown = match own_baseline.get(p) {
            Some(b) => format!("{p} (vs {b})"),
            None => p.clone(),
        };
        out += &format!(
            "| {shown} | {} → {:.0} | {} | {} | {} | {} | {added} | {} | {} | {closed_rps} | {cpu_col} | {floor_col} | {rss} | {errs} |\n",
            o["target_rate"].as_f64().map(|r| format!("{r:.0}")).unwrap_or_default(),
            o["ok_rps"].as_f64().unwrap_or(0.0),
            ms(l("p50")),
            ms(l("p90")),
            ms(l("p99")),
            ms(l("p99_9")),
            vs(&direct, direct_name),
            vs(&nginx, &a.nginx),
        );
    }
    match &floor {
        Some((_, how)) => out += &format!("\nCrypto floor per admitted request (criterion medians): {how}.\n"),
        None => out += "\nCrypto floor: no criterion results found (run `cargo bench --bench hot_path` first).\n",
    }
    for p in &a.paths {
        out += &sts_line(&a.dir, p);
    }
    print!("{out}");
    Ok(())
}
