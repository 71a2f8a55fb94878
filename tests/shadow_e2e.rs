//! Shadow mode and the rollout report, end to end: the `seb` binary with a target in shadow
//! mode in front of the recording upstream, reqwest as a scripted agent over simulated days,
//! `seb audit label` and `seb audit report` as an operator would run them, and the HTML page
//! read back by a real HTML parser.
//!
//! Simulated days: the broker's clock is the real one (certificates, records), so a "day" is
//! a report bucket of a few seconds (`--bucket 4s`), and the agent waits for the next bucket
//! before each day's work. Records are written by the real broker with their real times; the
//! report groups them by those times, as it groups real days.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BUCKET: u64 = 4;

fn shadow_config(upstream_port: u16) -> BrokerConfig {
    broker_config(|listen| {
        format!(
            r#"
[[targets]]
name = "payments"
kind = "http"
listen = "127.0.0.1:{listen}"
mode = "shadow"
[targets.http]
upstream = "http://127.0.0.1:{upstream_port}"
credential = {{ header = "Authorization", value_env = "SEB_TEST_PAYMENTS_TOKEN", prefix = "Bearer " }}
reads = [{{ methods = ["GET"], path_prefix = "/v1/" }}]
"#
        )
    })
}

fn refund_rule() -> Value {
    json!({"constraints": {"/amount": {"max": 100}, "/order": {"prefix": "ord_"}}, "others": "deny"})
}

fn secs_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Sleeps until 300 ms into the next bucket; returns that bucket's number.
fn next_bucket() -> u64 {
    let now = secs_now();
    let b = (now / BUCKET as f64).floor() as u64 + 1;
    std::thread::sleep(Duration::from_secs_f64(
        b as f64 * BUCKET as f64 + 0.3 - now,
    ));
    b
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// One change by the agent: `ok` certified, `none` without a certificate, `over` certified
/// for the path but with an amount over the certificate's maximum.
async fn change(
    c: &reqwest::Client,
    env: &Env,
    broker: &Broker,
    path: &str,
    case: &str,
    cert: Option<&str>,
) {
    let body = if case == "over" {
        br#"{"amount":500,"order":"ord_1"}"#.as_slice()
    } else {
        br#"{"amount":50,"order":"ord_1"}"#.as_slice()
    };
    let own;
    let cert = match (case, cert) {
        (_, Some(c)) => Some(c),
        ("none", None) => None,
        _ => {
            own = env.cert("POST", path, refund_rule());
            Some(own.as_str())
        }
    };
    let auth = cert.map(|c| format!("Bearer {c}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    let r = send(c, "POST", &broker.url(path), &headers, body).await;
    // Shadow mode: whatever the verdict, the request went through.
    assert_eq!(r.status, 200, "{path}: {:?}", r.body);
}

#[derive(Default, Debug, PartialEq)]
struct Expected {
    changes: u64,
    would_block: u64,
    unasked: u64,
    out_of_contract: u64,
    legitimate: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_days_report_counts_equal_what_the_upstream_received() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let broker = Broker::start(&env, &shadow_config(up.port));
    seb::cert::keys::write_keypair(&env.path("operator"), &seb::cert::keys::generate()).unwrap();
    let c = client(&env, false);

    // Loud: the start record, /metrics and the log name the shadow target.
    let records = audit_records(&env);
    assert_eq!(records[0]["kind"], "start");
    assert_eq!(records[0]["shadow_targets"], json!(["payments"]));
    let metrics = reqwest::get(broker.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("seb_target_shadow_mode{target=\"payments\"} 1"),
        "{metrics}"
    );
    let logs: String = std::fs::read_dir(env.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("seb-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(
        logs.contains("SHADOW MODE: target payments enforces nothing"),
        "{logs}"
    );

    // The script: fewer uncertified changes each day, a replayed certificate on the last.
    let days: [&[&str]; 3] = [
        &["ok", "none", "ok", "none", "over", "none"],
        &["ok", "ok", "none", "over", "ok"],
        &["ok", "ok", "replay", "ok", "ok"],
    ];
    let mut first_bucket = None;
    let mut last_bucket = 0;
    for (d, script) in days.iter().enumerate() {
        let b = next_bucket();
        first_bucket.get_or_insert(b);
        last_bucket = b;
        let mut last_ok: Option<(String, String)> = None;
        for (i, case) in script.iter().enumerate() {
            match *case {
                "replay" => {
                    let (path, cert) = last_ok.clone().unwrap();
                    change(&c, &env, &broker, &path, "ok", Some(&cert)).await;
                }
                "ok" => {
                    let path = format!("/v1/refunds/ok-{d}-{i}");
                    let cert = env.cert("POST", &path, refund_rule());
                    change(&c, &env, &broker, &path, "ok", Some(&cert)).await;
                    last_ok = Some((path, cert));
                }
                case => {
                    change(
                        &c,
                        &env,
                        &broker,
                        &format!("/v1/refunds/{case}-{d}-{i}"),
                        case,
                        None,
                    )
                    .await
                }
            }
        }
        assert!(
            secs_now() < ((b + 1) * BUCKET) as f64,
            "day {d} ran past its bucket"
        );
    }
    let first_bucket = first_bucket.unwrap();

    // The operator labels would-blocks from the log: the first uncertified change of the
    // first two days legitimate, the over-limit ones and the replay harmful.
    let decisions: Vec<Value> = audit_records(&env)
        .into_iter()
        .filter(|r| r["kind"] == "decision")
        .collect();
    let mut legit_paths = HashSet::new();
    let label = |seq: u64, how: &str| {
        let (code, out, err) = seb(&[
            "audit",
            "label",
            &seq.to_string(),
            how,
            "--note",
            "checked with the on-call",
            "--log",
            env.path("audit.jsonl").to_str().unwrap(),
            "--labels",
            env.path("labels.jsonl").to_str().unwrap(),
            "--key",
            env.path("operator.key").to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{out}{err}");
    };
    let mut replay_seen = false;
    for d in &decisions {
        let path = d["request"]["path"].as_str().unwrap();
        let seq = d["seq"].as_u64().unwrap();
        if path == "/v1/refunds/none-0-1" || path == "/v1/refunds/none-1-2" {
            label(seq, "--legitimate");
            legit_paths.insert(path.to_string());
        } else if path.starts_with("/v1/refunds/over-") {
            label(seq, "--harmful");
        } else if d["decision"] == "would_deny" && d["reason"]["code"] == "replayed" {
            label(seq, "--harmful");
            replay_seen = true;
        }
    }
    assert!(
        replay_seen,
        "the replayed certificate was spent in shadow mode too"
    );
    // Only would-blocks are labelled.
    let allowed = decisions
        .iter()
        .find(|d| d["decision"] == "would_allow")
        .unwrap();
    let (code, _, err) = seb(&[
        "audit",
        "label",
        &allowed["seq"].to_string(),
        "--legitimate",
        "--log",
        env.path("audit.jsonl").to_str().unwrap(),
        "--labels",
        env.path("labels.jsonl").to_str().unwrap(),
        "--key",
        env.path("operator.key").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("only would-blocks"), "{err}");

    // Independently, from what the upstream received: every change went through (shadow),
    // under the broker's credential; the case is in the path, a path seen before is a replay.
    let received: Vec<Value> = up
        .requests()
        .into_iter()
        .filter(|r| r["method"] == "POST")
        .collect();
    assert_eq!(received.len(), days.iter().map(|d| d.len()).sum::<usize>());
    let mut expected: BTreeMap<u64, Expected> = BTreeMap::new();
    let mut seen = HashSet::new();
    for r in &received {
        assert_eq!(
            r["headers"]["authorization"],
            format!("Bearer {UPSTREAM_SECRET}")
        );
        let path = r["path"].as_str().unwrap();
        let bucket = (r["time"].as_f64().unwrap() / BUCKET as f64).floor() as u64;
        let e = expected.entry(bucket).or_default();
        e.changes += 1;
        let repeat = !seen.insert(path.to_string());
        let case = path
            .trim_start_matches("/v1/refunds/")
            .split('-')
            .next()
            .unwrap();
        match (case, repeat) {
            ("ok", false) => continue,
            ("none", _) => e.unasked += 1,
            _ => e.out_of_contract += 1,
        }
        e.would_block += 1;
        if legit_paths.contains(path) {
            e.legitimate += 1;
        }
    }
    assert_eq!(
        expected.keys().copied().collect::<Vec<_>>(),
        (first_bucket..=last_bucket).collect::<Vec<_>>()
    );

    let since = rfc3339(first_bucket * BUCKET);
    let until = rfc3339((last_bucket + 1) * BUCKET);
    let report = |format: &str| {
        let (code, out, err) = seb(&[
            "audit",
            "report",
            env.path("audit.jsonl").to_str().unwrap(),
            "--labels",
            env.path("labels.jsonl").to_str().unwrap(),
            "--since",
            &since,
            "--until",
            &until,
            "--bucket",
            "4s",
            "--format",
            format,
        ]);
        assert_eq!(code, 0, "{err}");
        out
    };
    let r: Value = serde_json::from_str(&report("json")).unwrap();
    let buckets = r["by_bucket"].as_array().unwrap();
    assert_eq!(buckets.len(), days.len());
    let mut total = Expected::default();
    for (b, (_, e)) in buckets.iter().zip(&expected) {
        let got = Expected {
            changes: b["changes"].as_u64().unwrap(),
            would_block: b["would_block"].as_u64().unwrap(),
            unasked: b["causes"]["unasked"].as_u64().unwrap(),
            out_of_contract: b["causes"]["out_of_contract"].as_u64().unwrap(),
            legitimate: b["labelled_legitimate"].as_u64().unwrap(),
        };
        assert_eq!(&got, e, "bucket {}", b["start"]);
        assert_eq!(b["causes"]["policy"], 0);
        assert_eq!(b["causes"]["other"], 0);
        assert_eq!(
            b["would_block_rate"].as_f64().unwrap(),
            e.would_block as f64 / e.changes as f64
        );
        assert_eq!(
            b["false_block_rate"].as_f64().unwrap(),
            e.legitimate as f64 / e.would_block as f64
        );
        total.changes += e.changes;
        total.would_block += e.would_block;
        total.legitimate += e.legitimate;
    }
    assert_eq!(r["total"]["changes"].as_u64().unwrap(), total.changes);
    assert_eq!(
        r["total"]["would_block"].as_u64().unwrap(),
        total.would_block
    );
    assert_eq!(
        r["total"]["labelled_legitimate"].as_u64().unwrap(),
        total.legitimate
    );
    assert_eq!(
        r["by_target"]["payments"]["changes"].as_u64().unwrap(),
        total.changes
    );
    // Uncertified changes have no agent or policy to name.
    assert!(
        r["by_agent"]["(no certificate)"]["causes"]["unasked"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(r["by_policy"]["refunds-v1"]["causes"]["unasked"], 0);

    // The HTML page: one point per day on each rate's line, the same rates, nothing external.
    std::fs::write(env.path("report.html"), report("html")).unwrap();
    let out = std::process::Command::new("python3")
        .arg(repo().join("tests/report/parse_report_html.py"))
        .arg(env.path("report.html"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(html["scripts"], 0);
    assert_eq!(html["external"], json!([]));
    assert_eq!(html["unclosed"], json!([]), "{html}");
    assert_eq!(html["stray_end_tags"], json!([]), "{html}");
    for (series, key) in [
        ("would-block rate", "would_block_rate"),
        ("false-block rate", "false_block_rate"),
    ] {
        let points = html["points"][series].as_array().unwrap();
        assert_eq!(points.len(), days.len(), "{series}: one point per day");
        for (p, b) in points.iter().zip(buckets) {
            assert_eq!(p["bucket"], b["start"]);
            let rate = p["rate"].as_f64().unwrap();
            assert!((rate - b[key].as_f64().unwrap()).abs() < 1e-6, "{series}");
        }
        // Left to right in time; a higher rate is drawn higher.
        assert!(points
            .windows(2)
            .all(|w| w[0]["cx"].as_f64() < w[1]["cx"].as_f64()));
    }

    // Both logs verify: the broker's under its key, the labels under the operator's.
    let (code, out, err) = seb(&[
        "audit",
        "verify",
        "--key",
        env.path("broker.pub").to_str().unwrap(),
        env.path("audit.jsonl").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = seb(&[
        "audit",
        "verify",
        "--key",
        env.path("operator.pub").to_str().unwrap(),
        env.path("labels.jsonl").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("5 labels"), "{out}");

    // Every shadow decision and its outcome: would_deny names its reason and the shadow identity.
    let metrics = reqwest::get(broker.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let unasked: u64 = expected.values().map(|e| e.unasked).sum();
    assert!(
        metrics.contains(&format!("seb_requests_total{{target=\"payments\",decision=\"would_deny\",reason=\"cert_missing\"}} {unasked}")),
        "{metrics}"
    );
    let (code, out, _) = seb(&[
        "audit",
        "query",
        env.path("audit.jsonl").to_str().unwrap(),
        "--decision",
        "would_deny",
        "--reason",
        "cert_missing",
        "--kind",
        "decision",
    ]);
    assert_eq!((code, out.lines().count() as u64), (0, unasked));
    wait_for("every outcome", || {
        audit_records(&env)
            .iter()
            .filter(|r| r["kind"] == "outcome")
            .count()
            == received.len()
    });
    for d in audit_records(&env)
        .iter()
        .filter(|r| r["kind"] == "decision" || r["kind"] == "outcome")
    {
        match (d["kind"].as_str().unwrap(), d["decision"].as_str().unwrap()) {
            ("decision", "would_deny") => assert!(d["reason"]["code"].is_string(), "{d}"),
            ("decision", "would_allow") => assert!(
                d["reason"].is_null() && d["request"]["use"]["n"] == 1,
                "{d}"
            ),
            // The outcome names the identity it ran under: the shadow one when it would have
            // been refused, the certificate's otherwise.
            ("outcome", "would_deny") => assert!(
                d["identity"]["shadow"] == true && d["upstream_status"] == 200,
                "{d}"
            ),
            ("outcome", "would_allow") => assert!(
                d["identity"]["kind"] == "broker-credential" && d["identity"]["shadow"].is_null(),
                "{d}"
            ),
            other => panic!("an enforcing record {other:?} from a shadow target: {d}"),
        }
    }
}

/// A use a shadow broker spent is still spent after a kill -9 and a restart, and a shadow
/// decision the broker was killed before finishing gets its `unknown` outcome with its own
/// verdict at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_uses_and_unfinished_shadow_decisions_survive_a_crash() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let mut broker = Broker::start(&env, &shadow_config(up.port));
    let c = client(&env, false);
    let cert = env.cert("POST", "/v1/refunds/x", refund_rule());
    change(&c, &env, &broker, "/v1/refunds/x", "ok", Some(&cert)).await;
    // Uncertified, to a path the upstream holds for 30 s: the decision is durable, the
    // outcome never comes.
    let url = broker.url("/slow/change");
    let slow = tokio::spawn({
        let c = c.clone();
        async move { c.post(url).body("{}").send().await }
    });
    wait_for("the slow request upstream", || {
        up.requests().iter().any(|r| r["path"] == "/slow/change")
    });
    broker.kill9();
    slow.abort();
    broker.spawn(&env);

    let records = audit_records(&env);
    let decision = records
        .iter()
        .find(|r| r["kind"] == "decision" && r["request"]["path"] == "/slow/change")
        .unwrap();
    assert_eq!(decision["decision"], "would_deny");
    let outcome = records
        .iter()
        .find(|r| r["kind"] == "outcome" && r["decision_seq"] == decision["seq"])
        .expect("an outcome written at restart");
    assert_eq!(
        (&outcome["outcome"], &outcome["decision"]),
        (&json!("unknown"), &json!("would_deny"))
    );
    // The restarted broker still says shadow, and counts the use spent before the crash.
    assert_eq!(
        records
            .iter()
            .filter(|r| r["kind"] == "start" && r["shadow_targets"] == json!(["payments"]))
            .count(),
        2
    );
    change(&c, &env, &broker, "/v1/refunds/x", "ok", Some(&cert)).await;
    let last = audit_records(&env)
        .into_iter()
        .rfind(|r| r["kind"] == "decision" && r["request"]["path"] == "/v1/refunds/x")
        .unwrap();
    assert_eq!(
        (&last["decision"], &last["reason"]["code"]),
        (&json!("would_deny"), &json!("replayed"))
    );
    let (code, out, err) = seb(&[
        "audit",
        "verify",
        "--key",
        env.path("broker.pub").to_str().unwrap(),
        env.path("audit.jsonl").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
}
