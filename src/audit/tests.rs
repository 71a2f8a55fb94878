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

/// A file whose writes (half-done, like a full disk) and syncs fail while `fail` is set.
struct Faulty {
    inner: std::fs::File,
    fail: Arc<AtomicBool>,
    fail_sync: Arc<AtomicBool>,
}

impl LogFile for Faulty {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            std::io::Write::write_all(&mut self.inner, &buf[..buf.len() / 2])?;
            return Err(std::io::Error::other("No space left on device (injected)"));
        }
        std::io::Write::write_all(&mut self.inner, buf)
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        if self.fail.load(Ordering::SeqCst) || self.fail_sync.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("EIO (injected)"));
        }
        self.inner.sync_data()
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.inner.metadata()?.len())
    }
}

fn faulty_opener(fail: Arc<AtomicBool>) -> Opener {
    faulty_sync_opener(fail, Arc::new(AtomicBool::new(false)))
}

/// `fail`: writes and syncs fail; `fail_sync`: only syncs fail (writes reach the page cache).
fn faulty_sync_opener(fail: Arc<AtomicBool>, fail_sync: Arc<AtomicBool>) -> Opener {
    Box::new(move |path| {
        let inner = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)?;
        Ok(Box::new(Faulty {
            inner,
            fail: fail.clone(),
            fail_sync: fail_sync.clone(),
        }) as Box<dyn LogFile>)
    })
}

#[tokio::test]
async fn failed_writes_refuse_then_resume_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = crate::cert::keys::generate();
    let fail = Arc::new(AtomicBool::new(false));
    let audit =
        Audit::start_with(settings(&path), key.clone(), faulty_opener(fail.clone())).unwrap();
    assert_eq!(audit.record(decision("ok")).await.unwrap(), 2);
    let len_ok = std::fs::metadata(&path).unwrap().len();

    fail.store(true, Ordering::SeqCst);
    let err = audit.record(decision("lost")).await.unwrap_err();
    assert!(
        err.to_string().starts_with("audit log unavailable: "),
        "{err}"
    );
    assert!(!audit.is_writable());
    // The half-written line was taken back off the file.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len_ok);
    // A record nobody waits on is held while the log fails, not dropped.
    audit.record_best_effort(decision("read"));
    assert_eq!((audit.held(), audit.dropped_best_effort()), (1, 0));
    assert!(audit.record(decision("lost too")).await.is_err());

    fail.store(false, Ordering::SeqCst);
    // The held record goes first, then the one that found the log working.
    assert_eq!(audit.record(decision("back")).await.unwrap(), 4);
    assert!(audit.is_writable());
    assert_eq!(audit.held(), 0);
    audit.record_best_effort(decision("read 2"));
    assert_eq!(audit.record(decision("last")).await.unwrap(), 6);
    let r = verify_logs(std::slice::from_ref(&path), &key.verifying_key()).unwrap();
    assert_eq!(r.records, 6);
    let subs: Vec<_> = lines(&path)
        .iter()
        .map(|v| v["sub"].as_str().unwrap_or("-").to_owned())
        .collect();
    assert_eq!(subs, ["-", "ok", "read", "back", "read 2", "last"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_appends_on_the_caller_chain_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = crate::cert::keys::generate();
    let mut s = settings(&path);
    s.durability = Durability::Flush;
    let audit = Audit::start(s, key.clone()).unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let a = audit.clone();
            tokio::spawn(async move {
                let sub = format!("agent-{i}");
                let seq = a.record(decision(&sub)).await.unwrap();
                let mut o = outcome_of(seq);
                std::sync::Arc::make_mut(&mut o.subject).sub = Some(sub);
                a.record_best_effort(o);
                seq
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    // Outcomes are spawned tasks: wait until all 400 records are on file.
    for _ in 0..500 {
        if lines(&path).len() == 401 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let r = verify_logs(std::slice::from_ref(&path), &key.verifying_key()).unwrap();
    assert_eq!((r.records, r.decisions, r.outcomes), (401, 200, 200));
    // Every outcome points at a decision of the same agent.
    let v = lines(&path);
    for o in v.iter().filter(|l| l["kind"] == "outcome") {
        let d = &v[o["decision_seq"].as_u64().unwrap() as usize - 1];
        assert_eq!(
            (&d["kind"], &d["sub"]),
            (&Value::from("decision"), &o["sub"])
        );
    }
    assert_eq!(audit.syncs(), 1, "flush syncs only the start record");
}

/// A file whose next write, once `hold` is set, says so on `entered` and then waits for
/// `go` (and then panics, with `panic`): a writer caught in the middle of a write, lock held.
struct Held {
    inner: std::fs::File,
    hold: Arc<AtomicBool>,
    panic: bool,
    entered: std::sync::mpsc::SyncSender<()>,
    go: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>,
}

impl LogFile for Held {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.hold.swap(false, Ordering::SeqCst) {
            let _ = self.entered.send(());
            let _ = self.go.lock().unwrap().recv();
            assert!(
                !self.panic,
                "injected panic in the middle of an audit write"
            );
        }
        std::io::Write::write_all(&mut self.inner, buf)
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        self.inner.sync_data()
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.inner.metadata()?.len())
    }
}

/// A flush-mode log on a `Held` file; returns it with `hold`, `entered` and `go`.
#[allow(clippy::type_complexity)]
fn held_log(
    path: &Path,
    key: &ed25519_dalek::SigningKey,
    panic: bool,
) -> (
    Audit,
    Arc<AtomicBool>,
    std::sync::mpsc::Receiver<()>,
    std::sync::mpsc::Sender<()>,
) {
    let hold = Arc::new(AtomicBool::new(false));
    let (entered_tx, entered) = std::sync::mpsc::sync_channel(1);
    let (go, go_rx) = std::sync::mpsc::channel();
    let go_rx = Arc::new(std::sync::Mutex::new(go_rx));
    let h = hold.clone();
    let opener: Opener = Box::new(move |path| {
        let inner = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)?;
        Ok(Box::new(Held {
            inner,
            hold: h.clone(),
            panic,
            entered: entered_tx.clone(),
            go: go_rx.clone(),
        }) as Box<dyn LogFile>)
    });
    let mut s = settings(path);
    s.durability = Durability::Flush;
    let audit = Audit::start_with(s, key.clone(), opener).unwrap();
    (audit, hold, entered, go)
}

fn job(sub: &str) -> Job {
    Job {
        payload: record::Payload::Entry(Box::new(decision(sub))),
        reply: None,
    }
}

/// With `flush`, a caller that finds the writer busy leaves its record to the holder and
/// returns at once; the holder writes it before it returns, so nothing is left behind once
/// every caller has returned (the file is read then, with nothing waited for).
#[test]
fn flush_record_left_while_the_writer_is_busy_is_written_by_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = crate::cert::keys::generate();
    let (audit, hold, entered, go) = held_log(&path, &key, false);
    let log = &audit.inner.log;
    hold.store(true, Ordering::SeqCst);
    std::thread::scope(|scope| {
        let holder = scope.spawn(|| log.submit(job("holder")));
        entered.recv().unwrap();
        log.submit(job("left"));
        assert_eq!(lines(&path).len(), 1, "the second caller did not wait");
        go.send(()).unwrap();
        holder.join().unwrap();
    });
    let subs: Vec<_> = lines(&path)
        .iter()
        .map(|v| v["sub"].as_str().unwrap_or("-").to_owned())
        .collect();
    assert_eq!(subs, ["-", "holder", "left"]);
    let r = verify_logs(std::slice::from_ref(&path), &key.verifying_key()).unwrap();
    assert_eq!(r.records, 3);
    assert_eq!(audit.syncs(), 1, "flush syncs only the start record");
}

/// A writer that panicked in the middle of a write may hold a half-updated chain: from then
/// on every record is refused, the one left for it included (answered at once, not when the
/// request times out), and readiness says so.
#[tokio::test]
async fn flush_writer_poisoned_by_a_panic_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = crate::cert::keys::generate();
    let (audit, hold, entered, go) = held_log(&path, &key, true);
    hold.store(true, Ordering::SeqCst);
    let log = audit.inner.log.clone();
    let (reply, own) = oneshot::channel();
    let holder = std::thread::spawn(move || {
        log.submit(Job {
            payload: record::Payload::Entry(Box::new(decision("panics"))),
            reply: Some(reply),
        })
    });
    entered.recv().unwrap();
    // Left for the holder: the writer is busy, so this task parks on its answer.
    let a = audit.clone();
    let left = tokio::spawn(async move { a.record(decision("left")).await });
    tokio::task::yield_now().await;
    go.send(()).unwrap();
    let panicked = holder.join();
    assert!(panicked.is_err());
    let own = tokio::time::timeout(std::time::Duration::from_secs(5), own)
        .await
        .expect("the holder's own caller is answered, not left waiting");
    assert!(own.is_err());
    let left = tokio::time::timeout(std::time::Duration::from_secs(5), left)
        .await
        .expect("the record left for the holder is answered, not stranded")
        .unwrap();
    assert!(left.is_err());
    assert!(audit.record(decision("after")).await.is_err());
    assert!(!audit.is_writable());
    audit.record_best_effort(decision("best effort"));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(audit.dropped_best_effort(), 1);
    assert_eq!(lines(&path).len(), 1, "only the start record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_best_effort_records_ride_on_decision_syncs_or_sync_lazily() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = crate::cert::keys::generate();
    let audit = Audit::start(settings(&path), key.clone()).unwrap();
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let before = audit.syncs();
    let synced_before = audit.sync_seconds();
    let first = audit.record(decision("a")).await.unwrap();
    assert_eq!(audit.syncs(), before + 1);
    assert!(
        audit.sync_seconds() > synced_before,
        "the decision's sync was not timed"
    );

    // An outcome is written at once but not synced on its own...
    audit.record_best_effort(outcome_of(first));
    wait_for("the outcome on file", &|| lines(&path).len() == 3);
    assert_eq!(
        audit.syncs(),
        before + 1,
        "the outcome was synced by itself"
    );
    // ...the next decision's sync covers it, and nothing is left to sync afterwards.
    audit.record(decision("b")).await.unwrap();
    assert_eq!(audit.syncs(), before + 2);
    tokio::time::sleep(super::writer::LAZY_SYNC * 3).await;
    assert_eq!(
        audit.syncs(),
        before + 2,
        "a sync with nothing left to sync"
    );

    // With no decision after it, an outcome is synced on its own after LAZY_SYNC.
    audit.record_best_effort(outcome_of(4));
    wait_for("the lazy sync", &|| audit.syncs() == before + 3);
    let r = verify_logs(std::slice::from_ref(&path), &key.verifying_key()).unwrap();
    assert_eq!((r.records, r.outcomes), (5, 2));
}

#[tokio::test]
async fn failed_sync_takes_back_unsynced_records_and_hides_them_from_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = crate::cert::keys::generate();
    let fail_sync = Arc::new(AtomicBool::new(false));
    let audit = Audit::start_with(
        settings(&path),
        key.clone(),
        faulty_sync_opener(Arc::new(AtomicBool::new(false)), fail_sync.clone()),
    )
    .unwrap();
    let mut tail = audit.subscribe();
    assert_eq!(audit.record(decision("ok")).await.unwrap(), 2);
    let len_ok = std::fs::metadata(&path).unwrap().len();

    // Writes still succeed, syncs do not: the outcome reaches the file unsynced, then the
    // decision's sync (or the outcome's lazy one) fails, and neither may stay.
    fail_sync.store(true, Ordering::SeqCst);
    audit.record_best_effort(outcome_of(2));
    let err = audit.record(decision("lost")).await.unwrap_err();
    assert!(err.to_string().contains("EIO (injected)"), "{err}");
    assert!(!audit.is_writable());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len_ok);
    assert_eq!(audit.dropped_best_effort(), 1);

    fail_sync.store(false, Ordering::SeqCst);
    // The chain continues from the last synced record: seq 3 again, now for "back".
    assert_eq!(audit.record(decision("back")).await.unwrap(), 3);
    assert!(audit.is_writable());
    let r = verify_logs(std::slice::from_ref(&path), &key.verifying_key()).unwrap();
    assert_eq!(r.records, 3);
    let subs: Vec<_> = lines(&path)
        .iter()
        .map(|v| v["sub"].as_str().unwrap_or("-").to_owned())
        .collect();
    assert_eq!(subs, ["-", "ok", "back"]);
    // A stream reader never saw the records that were taken back.
    let streamed: Vec<Value> = [tail.recv().await.unwrap(), tail.recv().await.unwrap()]
        .iter()
        .map(|l| crate::json::parse_strict(l.as_bytes()).unwrap())
        .collect();
    assert_eq!(
        (
            &streamed[0]["sub"],
            &streamed[1]["sub"],
            &streamed[1]["seq"]
        ),
        (&Value::from("ok"), &Value::from("back"), &Value::from(3))
    );
    assert!(tail.try_recv().is_err());
}

#[tokio::test]
async fn no_sink_fails_closed_and_stdout_alone_is_a_sink() {
    let key = crate::cert::keys::generate();
    let mut s = AuditSettings {
        path: None,
        durability: Durability::Fsync,
        rotate_bytes: None,
        stdout: false,
        broker_id: "b".into(),
        shadow_targets: Vec::new(),
    };
    let audit = Audit::start(s.clone(), key.clone()).unwrap();
    assert!(!audit.is_writable());
    assert!(audit.record(decision("x")).await.is_err());
    s.stdout = true;
    let audit = Audit::start(s, key).unwrap();
    assert!(audit.is_writable());
    assert_eq!(audit.record(decision("x")).await.unwrap(), 2);
    // A best-effort record on stdout has nothing to sync and nothing to take back: once its
    // lazy-sync time has passed, the chain still counts it.
    audit.record_best_effort(outcome_of(2));
    tokio::time::sleep(super::writer::LAZY_SYNC * 3).await;
    assert_eq!(audit.record(decision("y")).await.unwrap(), 4);
    assert_eq!(audit.dropped_best_effort(), 0);
}

/// Shutdown: records queued just before `flush` (nobody waits on them) are on disk when it
/// returns, in the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_at_shutdown_writes_every_queued_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = crate::cert::keys::generate();
    let audit = Audit::start(settings(&path), key.clone()).unwrap();
    let seq = audit.record(decision("agent")).await.unwrap();
    for _ in 0..500 {
        audit.record_best_effort(outcome_of(seq));
    }
    let a = audit.clone();
    tokio::task::spawn_blocking(move || a.flush(std::time::Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
    let recs = lines(&path);
    assert_eq!(
        recs.iter().filter(|r| r["kind"] == "outcome").count(),
        500,
        "every queued outcome is written"
    );
    let report = verify_logs(std::slice::from_ref(&path), &key.verifying_key()).unwrap();
    assert_eq!((report.decisions, report.outcomes), (1, 500));
}
