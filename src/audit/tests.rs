//! The writer, recovery and rotation against real files.

use super::record::tests::entry;
use super::writer::{LogFile, Opener};
use super::*;
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::AtomicBool;

fn settings(path: &Path) -> AuditSettings {
    AuditSettings {
        path: Some(path.to_path_buf()),
        durability: Durability::Fsync,
        rotate_bytes: None,
        stdout: false,
        broker_id: "b1".into(),
        shadow_targets: Vec::new(),
    }
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| crate::json::parse_strict(l.as_bytes()).unwrap())
        .collect()
}

fn decision(sub: &str) -> Entry {
    let mut e = entry(Kind::Decision, Verdict::Allow);
    std::sync::Arc::make_mut(&mut e.subject).sub = Some(sub.into());
    e
}

fn outcome_of(seq: u64) -> Entry {
    let mut e = entry(Kind::Outcome, Verdict::Allow);
    e.outcome = Some("completed".into());
    e.decision_seq = Some(seq);
    e.upstream_status = Some(200);
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_chain_and_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = crate::cert::keys::generate();
    let audit = Audit::start(settings(&path), key.clone()).unwrap();
    let mut tail = audit.subscribe();
    let syncs_before = audit.syncs();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let a = audit.clone();
            tokio::spawn(async move { a.record(decision(&format!("agent-{i}"))).await })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().unwrap());
    }
    seqs.sort();
    // seq 1 is the start record.
    assert_eq!(seqs, (2..=201).collect::<Vec<u64>>());
    let syncs = audit.syncs() - syncs_before;
    assert!(syncs < 200, "group commit: {syncs} syncs for 200 records");
    assert!(audit.is_writable());

    let report = verify_logs(std::slice::from_ref(&path), &key.verifying_key()).unwrap();
    assert_eq!(
        (report.records, report.decisions, report.starts),
        (201, 200, 1)
    );
    assert!(!report.starts_mid_chain);
    let first = tail.recv().await.unwrap();
    assert!(first.starts_with("{\"seq\":2,"));
    let v = lines(&path);
    assert_eq!(v[0]["kind"], "start");
    assert_eq!(v[0]["durability"], "fsync");
    assert_eq!(
        v[0]["key_id"],
        crate::cert::keys::key_id(&key.verifying_key())
    );
    assert_eq!(v[0]["prev"], "0".repeat(64));
}

#[tokio::test]
async fn restart_records_unknown_outcomes_and_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = crate::cert::keys::generate();
    {
        let audit = Audit::start(settings(&path), key.clone()).unwrap();
        let done = audit.record(decision("finished")).await.unwrap();
        audit.record(outcome_of(done)).await.unwrap();
        let mut denied = decision("denied");
        denied.decision = Verdict::Deny;
        audit.record(denied).await.unwrap();
        audit.record(decision("dangling")).await.unwrap();
    }
    let before = lines(&path).len();
    let audit = Audit::start(settings(&path), key.clone()).unwrap();
    let v = lines(&path);
    assert_eq!(v.len(), before + 2);
    let unknown = &v[before];
    assert_eq!(unknown["kind"], "outcome");
    assert_eq!(unknown["outcome"], "unknown");
    assert_eq!(unknown["decision_seq"], 5);
    assert_eq!(unknown["sub"], "dangling");
    assert_eq!(unknown["decision"], "allow");
    assert_eq!(unknown["reason"]["code"], "outcome_unknown");
    assert_eq!(unknown["request"], v[4]["request"]);
    assert_eq!(unknown["evidence"], v[4]["evidence"]);
    assert_eq!(v[before + 1]["kind"], "start");
    assert_eq!(audit.record(decision("after")).await.unwrap(), 8);
    drop(audit);

    // The third start closes only "after"; seq 5 already has its unknown outcome.
    let _audit = Audit::start(settings(&path), key.clone()).unwrap();
    let v = lines(&path);
    assert_eq!(v.len(), 10);
    assert_eq!(
        (&v[8]["outcome"], &v[8]["decision_seq"]),
        (&Value::from("unknown"), &Value::from(8))
    );
    assert_eq!(v[9]["kind"], "start");
    let r = verify_logs(std::slice::from_ref(&path), &key.verifying_key()).unwrap();
    assert_eq!((r.last_seq, r.outcomes, r.starts), (Some(10), 3, 3));
}

/// A torn tail is never silently dropped nor its number reused: its bytes are moved aside,
/// and a signed recovery record names the lost number and the hash of what was dropped.
#[tokio::test]
async fn partial_trailing_line_is_moved_aside_and_recorded_on_start() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = crate::cert::keys::generate();
    {
        let audit = Audit::start(settings(&path), key.clone()).unwrap();
        let mut e = decision("x");
        e.decision = Verdict::Deny;
        audit.record(e).await.unwrap();
    }
    let good = std::fs::read(&path).unwrap();
    let tail = b"{\"seq\":3,\"ts\":\"2026-";
    let mut torn = good.clone();
    torn.extend_from_slice(tail);
    std::fs::write(&path, &torn).unwrap();
    let audit = Audit::start(settings(&path), key.clone()).unwrap();
    let after = std::fs::read(&path).unwrap();
    assert!(after.starts_with(&good));
    let v = lines(&path);
    assert_eq!(v.len(), 4);
    let rec = &v[2];
    assert_eq!(
        (rec["seq"].as_u64(), &rec["kind"]),
        (Some(4), &Value::from("recovery"))
    );
    assert_eq!(rec["recovery"]["lost_seq"], serde_json::json!([3, 3]));
    assert_eq!(rec["recovery"]["what"], "torn_tail");
    let dropped = &rec["recovery"]["dropped"];
    assert_eq!(dropped["bytes"], tail.len());
    assert_eq!(dropped["sha256"], hex::encode(sha2::Sha256::digest(tail)));
    assert_eq!(
        std::fs::read(dropped["file"].as_str().unwrap()).unwrap(),
        tail
    );
    assert_eq!(
        (v[3]["seq"].as_u64(), &v[3]["kind"]),
        (Some(5), &Value::from("start"))
    );
    assert_eq!(audit.record(decision("y")).await.unwrap(), 6);
    let r = verify_logs(std::slice::from_ref(&path), &key.verifying_key()).unwrap();
    assert_eq!(r.recoveries.len(), 1, "{:?}", r.recoveries);
}

/// Whole lines cut off the end leave a log that looks complete; the head the last writer
/// recorded beside it shows the loss, and the next start records it.
#[tokio::test]
async fn lines_cut_off_the_end_are_found_by_the_recorded_head() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = crate::cert::keys::generate();
    {
        let audit = Audit::start(settings(&path), key.clone()).unwrap();
        for i in 0..4 {
            let mut e = decision(&format!("x{i}"));
            e.decision = Verdict::Deny;
            audit.record(e).await.unwrap();
        }
    }
    let data = std::fs::read(&path).unwrap();
    // Keep the start record and two decisions: seq 4 and 5 are gone.
    let keep: usize = data
        .split_inclusive(|&b| b == b'\n')
        .take(3)
        .map(<[u8]>::len)
        .sum();
    std::fs::write(&path, &data[..keep]).unwrap();
    let _audit = Audit::start(settings(&path), key.clone()).unwrap();
    let v = lines(&path);
    assert_eq!(v[3]["kind"], "recovery");
    assert_eq!(v[3]["seq"], 6);
    assert_eq!(v[3]["recovery"]["lost_seq"], serde_json::json!([4, 5]));
    let r = verify_logs(std::slice::from_ref(&path), &key.verifying_key()).unwrap();
    assert_eq!(r.recoveries.len(), 1);
}

/// A second writer on the same log is refused, naming the holder.
#[tokio::test]
async fn a_log_has_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = crate::cert::keys::generate();
    let _first = Audit::start(settings(&path), key.clone()).unwrap();
    let e = Audit::start(settings(&path), key.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("in use by broker") && e.contains("pid"), "{e}");
}

#[tokio::test]
async fn a_missing_log_directory_is_created_for_the_group_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("var/audit/audit.jsonl");
    let audit = Audit::start(settings(&path), crate::cert::keys::generate()).unwrap();
    audit.record(decision("a")).await.unwrap();
    assert_eq!(lines(&path).len(), 2);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o007, 0, "{mode:o}");
}

#[tokio::test]
async fn rotation_continues_the_chain_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = crate::cert::keys::generate();
    let vk = key.verifying_key();
    let mut s = settings(&path);
    s.rotate_bytes = Some(2000);
    s.durability = Durability::Flush;
    let audit = Audit::start(s.clone(), key.clone()).unwrap();
    for i in 0..10 {
        // Denied, so the restart below has no outcomes to close.
        let mut e = decision(&format!("a{i}"));
        e.decision = Verdict::Deny;
        audit.record(e).await.unwrap();
    }
    let rotated = super::paths::rotated_files(&path).unwrap();
    assert!(rotated.len() >= 2, "{rotated:?}");
    assert_eq!(rotated[0].0, 1);
    let mut all: Vec<_> = rotated.iter().map(|(_, p)| p.clone()).collect();
    all.push(path.clone());
    for p in &all {
        assert!(std::fs::metadata(p).unwrap().len() <= 2000);
    }
    let r = verify_logs(&all, &vk).unwrap();
    assert_eq!(
        (r.records, r.first_seq, r.last_seq),
        (11, Some(1), Some(11))
    );
    assert!(!r.starts_mid_chain);
    let last = verify_logs(std::slice::from_ref(&path), &vk).unwrap();
    assert!(last.starts_mid_chain);
    drop(audit);

    // After a restart with an empty active file, the head comes from the newest archive.
    std::fs::rename(&path, dir.path().join("audit.jsonl.99")).unwrap();
    let audit = Audit::start(s, key.clone()).unwrap();
    assert_eq!(audit.record(decision("z")).await.unwrap(), 13);
    let mut all: Vec<_> = super::paths::rotated_files(&path)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    all.push(path.clone());
    let r = verify_logs(&all, &vk).unwrap();
    assert_eq!(r.last_seq, Some(13));
}

mod faults;
