//! `seb audit verify` and `seb audit query`: argument structs and runners for the main binary.

use super::query::{query_lines, Filter};
use super::record::{Kind, Verdict};
use super::verify::verify_logs;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The broker's public key (SPKI PEM). Repeat it for the logs of several replicas, each
    /// with its own key: each log is verified with the key that signed it.
    #[arg(long, required = true)]
    pub key: Vec<PathBuf>,
    /// The log: its path (audit.jsonl, which takes its rotated files audit.jsonl.N with it) or
    /// any of its files, in any order; seb puts them in the chain's order. Several logs (one
    /// per replica) are verified each as its own chain.
    #[arg(required = true, num_args = 1..)]
    pub logs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Matching lines exactly as stored.
    #[default]
    Jsonl,
    /// Aligned columns for people.
    Table,
}

#[derive(Debug, Clone, clap::Args)]
pub struct QueryArgs {
    /// The log: its path (audit.jsonl, which takes its rotated files audit.jsonl.N with it) or
    /// any of its files, in any order; records come out in the chain's order. With several
    /// logs (one per replica), records of all come out merged by time.
    #[arg(required = true, num_args = 1..)]
    pub logs: Vec<PathBuf>,
    #[arg(long)]
    pub sub: Option<String>,
    #[arg(long)]
    pub action: Option<String>,
    #[arg(long)]
    pub policy: Option<String>,
    #[arg(long, value_parser = PossibleValuesParser::new(["allow", "deny", "would_allow", "would_deny"]).map(|s| verdict(&s)))]
    pub decision: Option<Verdict>,
    /// Reason code, e.g. `expired`.
    #[arg(long)]
    pub reason: Option<String>,
    #[arg(long)]
    pub cert_id: Option<String>,
    /// W3C trace id (32 lowercase hex digits): the records of a traced request.
    #[arg(long)]
    pub trace_id: Option<String>,
    /// RFC 3339 time (inclusive), e.g. 2026-03-01T00:00:00Z.
    #[arg(long)]
    pub since: Option<String>,
    /// RFC 3339 time (exclusive).
    #[arg(long)]
    pub until: Option<String>,
    /// KEY=VALUE on the certificate's evidence; repeat to require several.
    #[arg(long)]
    pub evidence: Vec<String>,
    /// Only break-glass certificates (`evidence.break_glass` true): the signer's issuances
    /// under a break-glass policy, and the broker's records of their use.
    #[arg(long)]
    pub break_glass: bool,
    #[arg(long, value_parser = PossibleValuesParser::new(["decision", "outcome"]).map(|s| kind(&s)))]
    pub kind: Option<Kind>,
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
}

// The record types are the library's; the CLI spells them here, so the library does not
// depend on clap.
fn verdict(s: &str) -> Verdict {
    match s {
        "allow" => Verdict::Allow,
        "would_allow" => Verdict::WouldAllow,
        "would_deny" => Verdict::WouldDeny,
        _ => Verdict::Deny,
    }
}

fn kind(s: &str) -> Kind {
    if s == "decision" {
        Kind::Decision
    } else {
        Kind::Outcome
    }
}

/// Exit 0 when every file verifies as one chain, 1 when verification fails, 2 when the key
/// cannot be loaded, 3 when the chain verifies and holds recovery records: the broker found
/// records lost (a deleted file, a cut tail) and said so, which a script must not read as "all
/// is well".
pub fn run_verify(args: &VerifyArgs) -> ExitCode {
    let mut keys = Vec::new();
    for path in &args.key {
        match crate::cert::keys::load_verifying_key(path) {
            Ok(k) => keys.push(k),
            Err(e) => {
                eprintln!("audit verify: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let groups = match super::files::log_groups(&args.logs) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("audit verify: listing the log's files: {e}");
            return ExitCode::from(2);
        }
    };
    // One log: its lines as they always were. Several: each line names its log, and the
    // worst result is the exit code.
    let several = groups.len() > 1;
    let mut code = 0u8;
    for logs in &groups {
        let name = if several {
            format!(
                "{}: ",
                logs.last()
                    .map_or(String::new(), |p| p.display().to_string())
            )
        } else {
            String::new()
        };
        let c = verify_one(&name, logs, &keys);
        code = match (code, c) {
            (1, _) | (_, 1) => 1,
            (a, b) => a.max(b),
        };
    }
    if several {
        println!(
            "{} logs: {}",
            groups.len(),
            match code {
                0 => "all verified",
                3 => "all verified, with recovery records",
                _ => "NOT all verified",
            }
        );
    }
    ExitCode::from(code)
}

/// Verifies one log with whichever key signed it; prints its result, prefixed by `name`.
fn verify_one(name: &str, logs: &[PathBuf], keys: &[ed25519_dalek::VerifyingKey]) -> u8 {
    let mut failures = Vec::new();
    let mut verified = None;
    for key in keys {
        match verify_logs(logs, key) {
            Ok(r) => {
                verified = Some(r);
                break;
            }
            Err(f) => failures.push(f),
        }
    }
    let Some(r) = verified else {
        // The failure that got furthest: with the log's own key that is where it breaks;
        // with other keys it is at the first signature.
        let f = failures
            .into_iter()
            .max_by_key(|f| (logs.iter().position(|p| *p == f.file), f.line))
            .expect("at least one key");
        eprintln!("audit verify: {name}{f}");
        if let Some(hint) = order_hint(logs, &f) {
            eprintln!("{hint}");
        }
        return 1;
    };
    let files = if r.files == 1 { "file" } else { "files" };
    let range = match (r.first_seq, r.last_seq) {
        (Some(a), Some(b)) => format!(" (seq {a}..{b})"),
        _ => String::new(),
    };
    println!(
        "{name}verified {} records{range} in {} {files}: {} decisions, {} outcomes, {} starts{}",
        r.records,
        r.files,
        r.decisions,
        r.outcomes,
        r.starts,
        [(r.labels, "labels"), (r.revocations, "revocations applied")]
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!(", {n} {what}"))
            .collect::<String>()
    );
    if r.starts_mid_chain {
        println!("{name}note: the first record continues an earlier chain (older files not given)");
    }
    if !r.recoveries.is_empty() {
        for rec in &r.recoveries {
            println!("{name}RECOVERY {rec}");
        }
        println!(
            "{name}{} recovery record(s): the chain is intact, and the broker recorded that records were lost or moved aside",
            r.recoveries.len()
        );
        return 3;
    }
    0
}

/// For a chain broken where one file meets the next: the order the files were checked in,
/// since a file missing between them (or one from another log) breaks it there.
fn order_hint(logs: &[PathBuf], f: &super::VerifyFailure) -> Option<String> {
    let at = logs.iter().position(|p| *p == f.file)?;
    if logs.len() < 2 {
        return None;
    }
    let order: Vec<String> = logs.iter().map(|p| p.display().to_string()).collect();
    let mut hint = format!(
        "files checked in this order (rotated files by number, the active file last): {}",
        order.join(", ")
    );
    if at > 0 && f.line == 1 {
        hint.push_str(&format!(
            "\nthe first record of {} does not follow the last of {}: a file between them is missing, or they are not one log",
            logs[at].display(),
            logs[at - 1].display()
        ));
    }
    Some(hint)
}

/// Exit 0 on success (even with no matches), 2 on bad arguments or unreadable logs.
pub fn run_query(args: &QueryArgs) -> ExitCode {
    let filter = match filter_of(args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("audit query: {e}");
            return ExitCode::from(2);
        }
    };
    let groups = match super::files::log_groups(&args.logs) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("audit query: listing the log's files: {e}");
            return ExitCode::from(2);
        }
    };
    let mut found = Vec::new();
    for logs in &groups {
        match query_lines(logs, &filter) {
            Ok(f) => found.extend(f),
            Err(e) => {
                eprintln!("audit query: {e:#}");
                return ExitCode::from(2);
            }
        }
    }
    let several = groups.len() > 1;
    if several {
        // Each log is in its own chain's order; merged by time, a log's records that share a
        // millisecond keep that order (the sort is stable).
        found.sort_by_cached_key(|(_, v)| record_time(v));
    }
    let mut out = std::io::stdout().lock();
    let written = match args.format {
        Format::Jsonl => found
            .iter()
            .try_for_each(|(line, _)| writeln!(out, "{line}")),
        Format::Table => {
            let values: Vec<&Value> = found.iter().map(|(_, v)| v).collect();
            out.write_all(table(&values, several).as_bytes())
        }
    };
    // A closed pipe (`| head`) is not an error worth reporting.
    match written.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("audit query: {e}");
            ExitCode::from(2)
        }
    }
}

/// A record's `ts` as a time; a record without a readable one sorts first, where it shows.
fn record_time(v: &Value) -> Option<std::time::SystemTime> {
    v.get("ts")
        .and_then(Value::as_str)
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
}

fn filter_of(args: &QueryArgs) -> Result<Filter, String> {
    let time = |s: &Option<String>, flag: &str| {
        s.as_deref()
            .map(|t| {
                humantime::parse_rfc3339_weak(t)
                    .map_err(|e| format!("--{flag} {t:?}: not an RFC 3339 time ({e})"))
            })
            .transpose()
    };
    let mut evidence: Vec<(String, String)> = args
        .evidence
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("--evidence {kv:?}: expected KEY=VALUE"))
        })
        .collect::<Result<_, _>>()?;
    if args.break_glass {
        evidence.push(("break_glass".into(), "true".into()));
    }
    Ok(Filter {
        sub: args.sub.clone(),
        action: args.action.clone(),
        policy: args.policy.clone(),
        decision: args.decision,
        reason: args.reason.clone(),
        cert_id: args.cert_id.clone(),
        trace_id: args.trace_id.clone(),
        since: time(&args.since, "since")?,
        until: time(&args.until, "until")?,
        evidence,
        kind: args.kind,
    })
}

const COLUMNS: [&str; 11] = [
    "SEQ", "TS", "KIND", "DECISION", "REASON", "SUB", "ACTION", "POLICY", "CERT_ID", "REQUEST",
    "STATUS",
];

/// What the request did, in its target's words: `ecs:UpdateService prod/api` for AWS (every
/// AWS call is `POST /` or the like on the wire), `patch apps/deployments/scale shop/web` for
/// Kubernetes, `POST /v1/refunds` for HTTP; method and path for a request refused before it
/// was read.
fn request_cell(req: &Value) -> String {
    let s = |k: &str| req.get(k).and_then(Value::as_str);
    let Some(op) = s("operation") else {
        return match (s("method"), s("path")) {
            (Some(m), Some(p)) => format!("{m} {p}"),
            (Some(x), None) | (None, Some(x)) => x.to_owned(),
            (None, None) => "-".to_owned(),
        };
    };
    let mut out = match s("service") {
        Some(svc) => format!("{svc}:{op}"),
        None => op.to_owned(),
    };
    if let Some(r) = s("resource").filter(|r| !out.contains(r)) {
        out.push(' ');
        out.push_str(r);
    }
    let kube = |k: &str| req.pointer(&format!("/kube/{k}")).and_then(Value::as_str);
    match (kube("namespace"), kube("name")) {
        (Some(ns), Some(n)) => out.push_str(&format!(" {ns}/{n}")),
        (Some(ns), None) => out.push_str(&format!(" {ns}/")),
        (None, Some(n)) => out.push_str(&format!(" {n}")),
        (None, None) => {}
    }
    out
}

/// `with_broker`: records of several replicas' logs, whose `seq` alone is ambiguous; the
/// first column then names the broker too (`replica-2/17`).
fn table(records: &[&Value], with_broker: bool) -> String {
    let text = |v: Option<&Value>| match v {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let rows: Vec<[String; 11]> = records
        .iter()
        .map(|v| {
            let request = v
                .get("request")
                .map_or_else(|| "-".to_owned(), request_cell);
            let seq = match with_broker {
                true => format!("{}/{}", text(v.get("broker")), text(v.get("seq"))),
                false => text(v.get("seq")),
            };
            [
                seq,
                text(v.get("ts")),
                text(v.get("kind")),
                text(v.get("decision")),
                text(v.get("reason").and_then(|r| r.get("code"))),
                text(v.get("sub")),
                text(v.get("action")),
                text(v.get("policy")),
                text(v.get("cert_id")),
                request,
                text(v.get("upstream_status")),
            ]
        })
        .collect();
    let mut columns = COLUMNS;
    if with_broker {
        columns[0] = "BROKER/SEQ";
    }
    let mut widths = columns.map(|c| c.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push_row = |cells: &mut dyn Iterator<Item = &str>| {
        let mut line = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    push_row(&mut columns.iter().copied());
    for row in &rows {
        push_row(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser)]
    struct Q {
        #[command(flatten)]
        q: QueryArgs,
    }

    #[derive(Parser)]
    struct V {
        #[command(flatten)]
        v: VerifyArgs,
    }

    #[test]
    fn arguments_parse_into_a_filter() {
        let q = Q::try_parse_from([
            "q",
            "a.1",
            "a",
            "--sub",
            "s",
            "--decision",
            "deny",
            "--evidence",
            "ticket=OPS-1",
            "--evidence",
            "n=3",
            "--since",
            "2026-03-01T00:00:00Z",
            "--kind",
            "outcome",
            "--format",
            "table",
            "--cert-id",
            "c",
        ])
        .unwrap()
        .q;
        assert_eq!(q.logs.len(), 2);
        assert_eq!(q.format, Format::Table);
        let f = filter_of(&q).unwrap();
        assert_eq!(f.decision, Some(Verdict::Deny));
        assert_eq!(f.kind, Some(Kind::Outcome));
        assert_eq!(f.evidence.len(), 2);
        assert_eq!(f.cert_id.as_deref(), Some("c"));
        assert!(f.since.is_some());

        let mut bad = q.clone();
        bad.evidence = vec!["novalue".into()];
        assert!(filter_of(&bad).is_err());
        bad.evidence.clear();
        bad.until = Some("March".into());
        assert!(filter_of(&bad).is_err());

        assert!(V::try_parse_from(["v", "--key", "k.pub"]).is_err());
        let v = V::try_parse_from(["v", "--key", "k.pub", "x"]).unwrap().v;
        assert_eq!(v.logs, vec![PathBuf::from("x")]);
    }

    #[test]
    fn table_aligns_columns() {
        let a = json!({"seq": 1, "ts": "t", "kind": "decision", "decision": "deny",
            "reason": {"code": "expired", "message": "m"}, "sub": "agent",
            "request": {"method": "PUT", "path": "/bucket/key"}, "upstream_status": null});
        let b = json!({"seq": 12, "ts": "t", "kind": "outcome", "decision": "allow",
            "reason": null, "sub": "x", "request": {"method": "GET", "path": "/"},
            "upstream_status": 200});
        let t = table(&[&a, &b], false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = |l: &str, what: &str| l.find(what).unwrap();
        assert_eq!(col(lines[0], "REQUEST"), col(lines[1], "PUT /bucket/key"));
        assert_eq!(col(lines[0], "REQUEST"), col(lines[2], "GET /"));
        assert!(lines[1].contains("expired") && lines[2].ends_with("200"));
    }

    #[test]
    fn the_request_column_says_what_each_target_did() {
        let cell = |r: Value| request_cell(&r);
        assert_eq!(
            cell(
                json!({"method": "POST", "path": "/", "service": "ecs", "region": "eu-west-1",
                        "operation": "UpdateService", "resource": "prod/api"})
            ),
            "ecs:UpdateService prod/api"
        );
        assert_eq!(
            cell(json!({"method": "POST", "path": "/", "service": "dynamodb",
                        "operation": "ListTables", "resource": null})),
            "dynamodb:ListTables"
        );
        assert_eq!(
            cell(
                json!({"method": "PATCH", "path": "/apis/apps/v1/namespaces/shop/deployments/web/scale",
                        "operation": "patch", "resource": "apps/deployments/scale",
                        "kube": {"verb": "patch", "namespace": "shop", "name": "web"}})
            ),
            "patch apps/deployments/scale shop/web"
        );
        assert_eq!(
            cell(
                json!({"method": "GET", "path": "/api", "operation": "get", "resource": "/api",
                        "kube": {"verb": "get", "nonResourceURL": "/api"}})
            ),
            "get /api"
        );
        assert_eq!(
            cell(
                json!({"method": "POST", "path": "/v1/refunds", "operation": "POST /v1/refunds",
                        "resource": "/v1/refunds"})
            ),
            "POST /v1/refunds"
        );
        assert_eq!(cell(json!({"method": "PUT", "path": "/b/k"})), "PUT /b/k");
    }

    #[tokio::test]
    async fn run_verify_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::cert::keys::generate();
        let (_, public) =
            crate::cert::keys::write_keypair(&dir.path().join("broker"), &key).unwrap();
        let log = dir.path().join("audit.jsonl");
        let settings = crate::audit::AuditSettings {
            path: Some(log.clone()),
            durability: crate::audit::Durability::Flush,
            rotate_bytes: None,
            stdout: false,
            broker_id: "b".into(),
            shadow_targets: Vec::new(),
        };
        let audit = crate::audit::Audit::start(settings, key).unwrap();
        let e = crate::audit::record::tests::entry(Kind::Decision, Verdict::Deny);
        audit.record(e).await.unwrap();
        let code = |c: ExitCode| format!("{c:?}");
        let args = VerifyArgs {
            key: vec![public.clone()],
            logs: vec![log.clone()],
        };
        assert_eq!(code(run_verify(&args)), code(ExitCode::SUCCESS));
        let q = Q::try_parse_from(["q", log.to_str().unwrap(), "--format", "table"]).unwrap();
        assert_eq!(code(run_query(&q.q)), code(ExitCode::SUCCESS));

        let tampered = std::fs::read_to_string(&log)
            .unwrap()
            .replace("agent-7", "agent-8");
        std::fs::write(&log, tampered).unwrap();
        assert_eq!(code(run_verify(&args)), code(ExitCode::from(1)));
        let no_key = VerifyArgs {
            key: vec![dir.path().join("missing.pub")],
            logs: vec![log],
        };
        assert_eq!(code(run_verify(&no_key)), code(ExitCode::from(2)));
    }
}
