//! The log when its file fails (writes, syncs, a panic mid-write), when the writer is busy,
//! and at shutdown: refusals, no gaps, nothing lost.

use super::*;

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
