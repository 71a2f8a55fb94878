use super::*;
use proptest::prelude::*;
use serde_json::json;

fn rec(seq: u64, ts: &str, decision: &str, code: Option<&str>, request: Value) -> Value {
    json!({
        "seq": seq, "ts": ts, "broker": "b", "kind": "decision",
        "cert_id": code.is_none_or(|c| c != "cert_missing").then_some("c"),
        "iss": "i", "sub": if code == Some("cert_missing") { Value::Null } else { json!("agent:a") },
        "action": "refund", "policy": if code == Some("cert_missing") { Value::Null } else { json!("p1") },
        "evidence": null, "target": "pay", "request": request, "body_sha256": null,
        "decision": decision,
        "reason": code.map(|c| json!({"code": c, "message": "m"})),
        "identity": null, "upstream_status": null, "duration_ms": null, "prev": "0", "sig": "s"
    })
}

fn change(path: &str) -> Value {
    json!({"method": "POST", "path": path, "operation": format!("POST {path}"), "resource": path})
}

fn write(dir: &std::path::Path, name: &str, lines: &[Value]) -> PathBuf {
    let p = dir.join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&p, text).unwrap();
    p
}

fn at(s: &str) -> SystemTime {
    humantime::parse_rfc3339_weak(s).unwrap()
}

fn input(logs: Vec<PathBuf>, labels: Vec<PathBuf>, proposals: Vec<PathBuf>) -> ReportInput {
    ReportInput {
        logs,
        labels,
        proposals,
        signer_logs: Vec::new(),
        since: at("2026-03-01T00:00:00Z"),
        until: at("2026-03-04T00:00:00Z"),
        bucket: Duration::from_secs(86_400),
    }
}

#[test]
fn each_record_lands_in_its_cause_its_day_and_its_label() {
    let dir = tempfile::tempdir().unwrap();
    let mut used = change("/v1/a");
    used["use"] = json!({"n": 1, "max": 1});
    let mut read = change("/v1/r");
    read["read"] = json!(true);
    let records = vec![
        rec(
            1,
            "2026-03-01T10:00:00.000Z",
            "would_allow",
            None,
            used.clone(),
        ),
        rec(2, "2026-03-01T10:00:01.000Z", "allow", None, used),
        // A read, in either spelling: not a change.
        rec(
            3,
            "2026-03-01T10:00:02.000Z",
            "allow",
            None,
            change("/v1/r"),
        ),
        rec(
            4,
            "2026-03-01T10:00:03.000Z",
            "deny",
            Some("unauthenticated"),
            read,
        ),
        rec(
            5,
            "2026-03-01T11:00:00.000Z",
            "would_deny",
            Some("cert_missing"),
            change("/v1/none"),
        ),
        rec(
            6,
            "2026-03-02T11:00:00.000Z",
            "would_deny",
            Some("cert_missing"),
            change("/v1/refused"),
        ),
        rec(
            7,
            "2026-03-02T11:00:00.000Z",
            "would_deny",
            Some("cert_missing"),
            change("/v1/issued"),
        ),
        rec(
            8,
            "2026-03-02T12:00:00.000Z",
            "deny",
            Some("contract_mismatch"),
            change("/v1/a"),
        ),
        rec(
            9,
            "2026-03-02T12:00:00.000Z",
            "would_deny",
            Some("revocation_data_stale"),
            change("/v1/a"),
        ),
        // Outside the range (until is exclusive).
        rec(
            10,
            "2026-03-04T00:00:00.000Z",
            "would_deny",
            Some("expired"),
            change("/v1/a"),
        ),
    ];
    let log = write(dir.path(), "audit.jsonl", &records);
    let line = |i: usize| format!("{}", records[i]);
    let sha = |i: usize| hex::encode(Sha256::digest(line(i).as_bytes()));
    let labels = write(
        dir.path(),
        "labels.jsonl",
        &[
            json!({"seq": 1, "kind": "label", "label": {"record": {"seq": 5, "sha256": sha(4)}, "verdict": "harmful"}}),
            // The later label of the same record wins.
            json!({"seq": 2, "kind": "label", "label": {"record": {"seq": 5, "sha256": sha(4)}, "verdict": "legitimate"}}),
            json!({"seq": 3, "kind": "label", "label": {"record": {"seq": 8, "sha256": sha(7)}, "verdict": "harmful"}}),
        ],
    );
    let proposals = write(
        dir.path(),
        "proposals.jsonl",
        &[
            json!({"ts": "2026-03-02T10:00:00Z", "target": "pay", "decision": "refused",
                   "request": {"upstream": "pay", "method": "POST", "path": "/v1/refused"}}),
            json!({"ts": "2026-03-02T10:00:00Z", "target": "pay", "decision": "issued",
                   "request": {"upstream": "pay", "method": "POST", "path": "/v1/issued"}}),
            // After the change, or for another target: no match.
            json!({"ts": "2026-03-01T12:00:00Z", "target": "pay", "decision": "refused",
                   "request": {"method": "POST", "path": "/v1/none"}}),
            json!({"ts": "2026-03-01T09:00:00Z", "target": "other", "decision": "refused",
                   "request": {"method": "POST", "path": "/v1/none"}}),
        ],
    );
    let r = report(&input(vec![log], vec![labels], vec![proposals])).unwrap();
    assert_eq!(r.by_bucket.len(), 3);
    let d1 = &r.by_bucket[0].stats;
    assert_eq!((d1.changes, d1.would_block, d1.causes.unasked), (3, 1, 1));
    assert_eq!(d1.labelled_legitimate, 1);
    assert_eq!(d1.would_block_rate, Some(1.0 / 3.0));
    assert_eq!(d1.false_block_rate, Some(1.0));
    let d2 = &r.by_bucket[1].stats;
    assert_eq!(
        d2.causes,
        Causes {
            unasked: 0,
            out_of_contract: 2,
            policy: 1,
            other: 1
        }
    );
    assert_eq!((d2.labelled_harmful, d2.false_block_rate), (1, Some(0.0)));
    // An empty day is there, with no rate rather than a rate of zero.
    let d3 = &r.by_bucket[2].stats;
    assert_eq!(
        (d3.changes, d3.would_block_rate, d3.false_block_rate),
        (0, None, None)
    );
    assert_eq!(r.total.changes, 7);
    assert_eq!(r.by_agent["(no certificate)"].causes.unasked, 1);
    assert_eq!(r.by_policy["(none)"].would_block, 3);
    assert_eq!(r.by_target["pay"].would_block, 5);
    let text = table(&r);
    assert!(text.contains("2026-03-02T00:00:00Z"), "{text}");
}

#[test]
fn bad_inputs_are_refused_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let log = write(dir.path(), "a.jsonl", &[]);
    let p = write(
        dir.path(),
        "p.jsonl",
        &[json!({"ts": "2026-03-01T00:00:00Z", "target": "t", "request": {}, "decision": "maybe"})],
    );
    let e = report(&input(vec![log.clone()], vec![], vec![p]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("p.jsonl:1") && e.contains("issued"), "{e}");
    let mut i = input(vec![log.clone()], vec![], vec![]);
    i.until = i.since;
    assert!(report(&i).unwrap_err().to_string().contains("--until"));
    let mut i = input(vec![log.clone()], vec![], vec![]);
    i.bucket = Duration::from_millis(1500);
    assert!(report(&i).unwrap_err().to_string().contains("whole number"));
    let mut i = input(vec![log], vec![], vec![]);
    i.bucket = Duration::from_secs(1);
    assert!(report(&i)
        .unwrap_err()
        .to_string()
        .contains("at most 10000"));
}

#[test]
fn the_page_escapes_names_and_has_one_point_per_bucket_per_rate() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rec(
        1,
        "2026-03-01T10:00:00.000Z",
        "would_deny",
        Some("expired"),
        change("/x"),
    );
    r["sub"] = json!("<script>alert(1)</script>");
    let log = write(dir.path(), "audit.jsonl", &[r]);
    let page = html::render(&report(&input(vec![log], vec![], vec![])).unwrap());
    assert!(!page.contains("<script"), "{page}");
    assert!(page.contains("&lt;script&gt;"));
    assert_eq!(page.matches("<circle").count(), 2 * 3);
    // Nothing is fetched from anywhere: the one URL is the SVG namespace.
    assert_eq!(page.matches("://").count(), 1, "{page}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any bytes as a proposals file: an error naming the file, or proposals; never a panic.
    #[test]
    fn proposals_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.jsonl");
        std::fs::write(&p, &bytes).unwrap();
        if let Err(e) = read_proposals(&[p], at("2100-01-01T00:00:00Z")) {
            prop_assert!(e.to_string().contains("p.jsonl"));
        }
    }

    /// A proposal names a change only when every member the record describes is equal.
    #[test]
    fn a_proposal_matches_only_its_own_change(
        method in "(GET|POST|PUT)", path in "/[a-z]{1,6}", other in "/[a-z]{1,6}",
    ) {
        let record = change(&path);
        let p = json!({"upstream": "u", "method": method, "path": path}).as_object().unwrap().clone();
        prop_assert_eq!(same_change(&p, &record), method == "POST");
        let q = json!({"method": "POST", "path": other}).as_object().unwrap().clone();
        prop_assert_eq!(same_change(&q, &record), other == path);
        // Nothing in common is no match.
        prop_assert!(!same_change(&serde_json::Map::new(), &record));
    }
}
