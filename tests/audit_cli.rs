//! `seb audit verify` and `seb audit query` as an operator runs them on a rotated log: with the
//! log's path, with the shell's `audit.jsonl*` (where `.10` sorts before `.2` and the active
//! file comes first), or with its files in any other order (issue 22). The log is written by
//! the broker's own audit writer, rotating every few records.

mod common;

use common::seb;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A log of `n` AWS refusals, rotated into many files; returns the broker's public key.
async fn rotated_log(dir: &Path, n: usize) -> PathBuf {
    let key = seb::cert::keys::generate();
    let (_, public) = seb::cert::keys::write_keypair(&dir.join("broker"), &key).unwrap();
    let settings = seb::audit::AuditSettings {
        path: Some(dir.join("audit.jsonl")),
        durability: seb::audit::Durability::Flush,
        rotate_bytes: Some(1500),
        stdout: false,
        broker_id: "seb-test".into(),
        shadow_targets: Vec::new(),
    };
    let audit = seb::audit::Audit::start(settings, key).unwrap();
    for i in 0..n {
        let subject = seb::audit::Subject {
            sub: Some(format!("agent:{i}")),
            target: "prod-aws".into(),
            request: json!({"method": "POST", "path": "/", "service": "ecs", "region": "eu-west-1",
                            "protocol": "json", "operation": "UpdateService", "resource": "prod/api"}),
            ..Default::default()
        };
        audit
            .record(seb::audit::Entry {
                kind: seb::audit::Kind::Decision,
                subject: Arc::new(subject),
                decision: seb::audit::Verdict::Deny,
                reason: Some(("cert_missing".into(), "no certificate".into())),
                identity: None,
                upstream_status: None,
                duration_ms: None,
                outcome: None,
                decision_seq: None,
            })
            .await
            .unwrap();
    }
    public
}

/// The log's files as the shell expands `audit.jsonl*`: byte order.
fn shell_glob(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("audit.jsonl"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| dir.join(n).to_string_lossy().into_owned())
        .collect()
}

fn run(args: &[&str], files: &[String]) -> (i32, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(files.iter().map(String::as_str));
    seb(&all)
}

fn seqs(jsonl: &str) -> Vec<u64> {
    jsonl
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_query_take_a_rotated_log_by_its_path_or_its_files_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = rotated_log(d, 40).await;
    let key = key.to_str().unwrap();
    let glob = shell_glob(d);
    assert!(
        glob.iter().any(|f| f.ends_with(".jsonl.10"))
            && glob.iter().any(|f| f.ends_with(".jsonl.2")),
        "want .2 and .10 files: {glob:?}"
    );
    assert!(glob[0].ends_with("audit.jsonl"), "{glob:?}");
    // One start record and 40 decisions.
    let verified = format!("verified 41 records (seq 1..41) in {} files", glob.len());
    let base = vec![d.join("audit.jsonl").to_string_lossy().into_owned()];
    let mut reversed = glob.clone();
    reversed.reverse();
    for (what, files) in [
        ("the log's path", &base),
        ("the shell's audit.jsonl*", &glob),
        ("reversed", &reversed),
    ] {
        let (code, out, err) = run(&["audit", "verify", "--key", key], files);
        assert_eq!(code, 0, "verify, {what}: {out}{err}");
        assert!(out.starts_with(&verified), "verify, {what}: {out}");
        assert!(!out.contains("continues an earlier chain"), "{what}: {out}");
        let (code, out, err) = run(&["audit", "query"], files);
        assert_eq!(code, 0, "query, {what}: {err}");
        assert_eq!(seqs(&out), (1..=41).collect::<Vec<_>>(), "query, {what}");
    }
    // A table shows what each AWS call was, not `POST /`.
    let (code, out, _) = run(
        &["audit", "query", "--format", "table", "--kind", "decision"],
        &base,
    );
    assert_eq!(code, 0);
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 40);
    assert!(
        rows.iter()
            .all(|r| r.contains("ecs:UpdateService prod/api")),
        "{out}"
    );

    // A file missing from the middle: the failure says which files met there, in which order.
    let gone = d.join("audit.jsonl.5");
    std::fs::rename(&gone, d.join("elsewhere")).unwrap();
    let (code, out, err) = run(&["audit", "verify", "--key", key], &base);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("audit.jsonl.6:1"), "{err}");
    assert!(
        err.contains(
            "files checked in this order (rotated files by number, the active file last): "
        ),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "the first record of {} does not follow the last of {}: a file between them is missing, or they are not one log",
            d.join("audit.jsonl.6").display(),
            d.join("audit.jsonl.4").display()
        )),
        "{err}"
    );
    std::fs::rename(d.join("elsewhere"), &gone).unwrap();

    // Another broker's key: the failure names the key the log's start record names.
    let (_, other) =
        seb::cert::keys::write_keypair(&d.join("other"), &seb::cert::keys::generate()).unwrap();
    let other_id = seb::cert::keys::key_id(&seb::cert::keys::load_verifying_key(&other).unwrap());
    let broker_id =
        seb::cert::keys::key_id(&seb::cert::keys::load_verifying_key(Path::new(key)).unwrap());
    let (code, _, err) = run(
        &["audit", "verify", "--key", other.to_str().unwrap()],
        &base,
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "signature does not verify with --key (key id {other_id}); the broker's start record names key id {broker_id}: verify with that broker's public key"
        )),
        "{err}"
    );
}
