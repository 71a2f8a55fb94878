//! Replicas sharing use counts and revocation documents through etcd (issue 17), through the
//! real path: etcd members from Debian, three `seb serve` processes in front of one recording
//! upstream, reqwest as the agent.

mod common;

use common::etcd::*;
use common::*;
use seb::admission::revocation::Revoked;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Sends `per_replica` uses of `cert` to every replica at once; the (status, code) of each.
async fn storm(
    c: &reqwest::Client,
    replicas: &[&Broker],
    cert: &str,
    per_replica: usize,
) -> Vec<(u16, String)> {
    let mut tasks = Vec::new();
    for r in replicas {
        for _ in 0..per_replica {
            let (c, url, cert) = (c.clone(), r.url("/v1/deploys"), cert.to_string());
            tasks.push(tokio::spawn(async move {
                let reply = send(
                    &c,
                    "POST",
                    &url,
                    &[
                        ("content-type", "application/json"),
                        ("authorization", &format!("Bearer {cert}")),
                    ],
                    br#"{"env":"prod"}"#,
                )
                .await;
                let why = reply.body["detail"].as_str().unwrap_or("").to_string();
                (
                    reply.status,
                    format!("{} {why}", reply.code()).trim().to_string(),
                )
            }));
        }
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn admitted(results: &[(u16, String)]) -> usize {
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    // Every other answer is a refusal for the count, not some other failure.
    for (s, code) in results.iter().filter(|(s, _)| *s != 200) {
        assert!(*s == 403 && code.starts_with("replayed "), "{results:?}");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_admit_exactly_max_uses_under_concurrency() {
    let env = Env::new();
    let etcd = Etcd::start(env.dir.path(), 3);
    let up = Upstream::start(env.dir.path());
    let rs: Vec<Broker> = (1..=3).map(|n| replica(&env, &up, &etcd, n)).collect();
    let refs: Vec<&Broker> = rs.iter().collect();
    let c = client(&env, false);

    // 3 replicas x 30 concurrent uses of one single-use certificate.
    let once = deploy_cert(&env, 1);
    let results = storm(&c, &refs, &once, 30).await;
    assert_eq!(results.len(), 90);
    assert_eq!(admitted(&results), 1, "{results:?}");

    // max_uses = 5, spread over the replicas: exactly five.
    let five = deploy_cert(&env, 5);
    let results = storm(&c, &refs, &five, 30).await;
    assert_eq!(admitted(&results), 5, "{results:?}");

    assert_eq!(
        mutations_received(&up),
        6,
        "the upstream saw exactly the admitted uses"
    );
    // Each replica wrote its own log, under its own broker id, and every admission is in
    // exactly one of them.
    let mut allowed = 0;
    for n in 1..=3 {
        let recs = read_jsonl(&env.path(&format!("r{n}/audit.jsonl")));
        assert!(recs.iter().all(|r| r["broker"] == format!("replica-{n}")));
        allowed += recs
            .iter()
            .filter(|r| r["kind"] == "decision" && r["decision"] == "allow")
            .count();
    }
    assert_eq!(allowed, 6);

    // A restart of any replica re-admits nothing: the counts are in etcd, not in its memory.
    let mut rs = rs;
    rs[0].kill9();
    rs[0].spawn(&env);
    sigterm_and_wait(&mut rs[1]);
    rs[1].spawn(&env);
    for r in &rs {
        for cert in [&once, &five] {
            let reply = deploy(&c, r, cert).await;
            assert_eq!(
                (reply.status, reply.code()),
                (403, "replayed"),
                "{:?}",
                reply.body
            );
        }
    }
    assert_eq!(mutations_received(&up), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_pushed_to_one_replica_is_refused_at_the_others() {
    let env = Env::new();
    let etcd = Etcd::start(env.dir.path(), 3);
    let up = Upstream::start(env.dir.path());
    let rs: Vec<Broker> = (1..=3).map(|n| replica(&env, &up, &etcd, n)).collect();
    let c = client(&env, false);

    let cert = deploy_cert_edit(&env, 10, |p| p["jti"] = "to-revoke".into());
    for r in &rs {
        assert_eq!(deploy(&c, r, &cert).await.status, 200);
    }

    let doc = env.revocation_doc(
        2,
        now(),
        Revoked {
            jti: vec!["to-revoke".into()],
            ..Default::default()
        },
    );
    let (status, body) = push_revocation(&c, &rs[0], &doc).await;
    assert_eq!(status, 200, "{body}");
    let acked = Instant::now();
    // Replicas 2 and 3 learn it from the watch; each is checked as soon as it reports it.
    for r in &rs[1..] {
        while epoch_at(r).await != Some(2) {
            assert!(
                acked.elapsed() < Duration::from_secs(10),
                "replica never got epoch 2"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let reply = deploy(&c, r, &cert).await;
        assert_eq!(
            (reply.status, reply.code()),
            (403, "revoked"),
            "{:?}",
            reply.body
        );
    }
    assert_eq!(mutations_received(&up), 3);

    // An older document pushed to another replica is refused there, and etcd keeps epoch 2.
    let old = env.revocation_doc(1, now(), Revoked::default());
    let (status, _) = push_revocation(&c, &rs[2], &old).await;
    assert_eq!(status, 409);
    let stored = etcd.gateway(
        "/v3/kv/range",
        r#"{"key": "L3NlYi10ZXN0L3Jldm9jYXRpb24v", "range_end": "L3NlYi10ZXN0L3Jldm9jYXRpb24w"}"#,
    );
    assert!(stored.contains("\"count\":\"1\""), "{stored}");

    // A replica that joins later, with an empty state directory, reads it from etcd before
    // it admits anything.
    let late = replica(&env, &up, &etcd, 4);
    assert_eq!(epoch_at(&late).await, Some(2));
    let reply = deploy(&c, &late, &cert).await;
    assert_eq!((reply.status, reply.code()), (403, "revoked"));

    // Four logs, four keys: `seb audit verify` checks each log with the key that signed it,
    // and `seb audit query` merges them by time.
    let mut rs = rs;
    rs.push(late);
    for r in &mut rs {
        sigterm_and_wait(r);
    }
    let logs: Vec<String> = (1..=4)
        .map(|n| env.path(&format!("r{n}/audit.jsonl")).display().to_string())
        .collect();
    let keys: Vec<String> = (1..=4)
        .map(|n| env.path(&format!("r{n}/broker.pub")).display().to_string())
        .collect();
    let mut args = vec!["audit", "verify"];
    for k in &keys {
        args.extend(["--key", k]);
    }
    args.extend(logs.iter().map(String::as_str));
    let (code, out, err) = seb(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches(": verified ").count(), 4, "{out}");
    assert!(out.ends_with("4 logs: all verified\n"), "{out}");
    // Without replica 3's key its log does not verify, and the run says so.
    let mut without = vec!["audit", "verify"];
    for k in keys.iter().filter(|k| !k.ends_with("r3/broker.pub")) {
        without.extend(["--key", k]);
    }
    without.extend(logs.iter().map(String::as_str));
    let (code, out, err) = seb(&without);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("r3/audit.jsonl: "), "{err}");

    let mut args = vec!["audit", "query", "--kind", "decision"];
    args.extend(logs.iter().map(String::as_str));
    let (code, out, err) = seb(&args);
    assert_eq!(code, 0, "{err}");
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let times: Vec<&str> = records.iter().map(|r| r["ts"].as_str().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "merged by time: {times:?}"
    );
    let brokers: std::collections::BTreeSet<&str> = records
        .iter()
        .map(|r| r["broker"].as_str().unwrap())
        .collect();
    assert_eq!(brokers.len(), 4, "{brokers:?}");
    assert_eq!(
        records.iter().filter(|r| r["decision"] == "allow").count(),
        3
    );
    let revoked = records
        .iter()
        .filter(|r| r["reason"]["code"] == "revoked")
        .count();
    assert_eq!(revoked, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_down_refuses_with_state_unavailable_and_recovers_without_restart() {
    let env = Env::new();
    let mut etcd = Etcd::start(env.dir.path(), 1);
    let up = Upstream::start(env.dir.path());
    let r = replica(&env, &up, &etcd, 1);
    let c = client(&env, false);

    let spent = deploy_cert(&env, 1);
    assert_eq!(deploy(&c, &r, &spent).await.status, 200);

    etcd.kill(0);
    let started = Instant::now();
    let reply = deploy(&c, &r, &deploy_cert(&env, 1)).await;
    assert_eq!(
        (reply.status, reply.code()),
        (503, "state_unavailable"),
        "{:?}",
        reply.body
    );
    // Refused within the configured 2s request timeout, not after minutes.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    // /readyz says why.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = readyz(&r).await;
        if status == 503 {
            assert_eq!(body["state"]["available"], false, "{body}");
            assert!(
                body["state"]["why"].as_str().unwrap().contains("etcd"),
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "readyz stayed ready: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reads go on: they spend nothing.
    let read = send(
        &c,
        "GET",
        &r.url("/v1/deploys"),
        &[("x-seb-agent-token", AGENT_TOKEN)],
        b"",
    )
    .await;
    assert_eq!(read.status, 200, "{:?}", read.body);

    // etcd back (same data): admissions resume in the same process, and what was spent
    // before stays spent.
    etcd.spawn(0);
    etcd.wait_writable();
    let deadline = Instant::now() + Duration::from_secs(15);
    while readyz(&r).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "never ready again: {:?}",
            readyz(&r).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(deploy(&c, &r, &deploy_cert(&env, 1)).await.status, 200);
    let reply = deploy(&c, &r, &spent).await;
    assert_eq!((reply.status, reply.code()), (403, "replayed"));
    assert_eq!(mutations_received(&up), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_three_members_killed_the_service_continues() {
    let env = Env::new();
    let mut etcd = Etcd::start(env.dir.path(), 3);
    let up = Upstream::start(env.dir.path());
    let rs: Vec<Broker> = (1..=3).map(|n| replica(&env, &up, &etcd, n)).collect();
    let refs: Vec<&Broker> = rs.iter().collect();
    let c = client(&env, false);

    // Every member in turn: whichever leads, two of three keep a quorum.
    let mut expected = 0;
    for m in 0..3 {
        etcd.kill(m);
        // Killing the leader leaves etcd itself without one for an election (refusals then
        // are the safe side); from the moment the other two have elected one, every replica
        // must admit, even while its client still sends some calls to the dead member.
        etcd.wait_writable();
        let once = deploy_cert(&env, 1);
        let results = storm(&c, &refs, &once, 10).await;
        assert_eq!(admitted(&results), 1, "{results:?}");
        expected += 1;
        let cert = deploy_cert(&env, 3);
        let results = storm(&c, &refs, &cert, 10).await;
        assert_eq!(admitted(&results), 3, "{results:?}");
        expected += 3;
        etcd.spawn(m);
        etcd.wait_writable();
    }
    assert_eq!(mutations_received(&up), expected);
}

/// A replica whose watch broke while revocations were written gets them when it resumes:
/// from the revision after its last event, or, when etcd compacted that away, by reading
/// every document again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_watch_resumes_from_its_revision_and_rereads_after_compaction() {
    let env = Env::new();
    let mut etcd = Etcd::start(env.dir.path(), 1);
    let up = Upstream::start(env.dir.path());
    let r1 = replica(&env, &up, &etcd, 1);
    let r2 = replica(&env, &up, &etcd, 2);
    let c = client(&env, false);
    let revoke = |epoch: u64, jti: &[&str]| {
        env.revocation_doc(
            epoch,
            now(),
            Revoked {
                jti: jti.iter().map(|j| j.to_string()).collect(),
                ..Default::default()
            },
        )
    };
    let a = deploy_cert_edit(&env, 10, |p| p["jti"] = "cert-a".into());
    let b = deploy_cert_edit(&env, 10, |p| p["jti"] = "cert-b".into());

    // 1. Resume: r2 frozen, etcd restarted under it (its stream is gone), a revocation
    // written meanwhile.
    signal(&r2, libc::SIGSTOP);
    etcd.kill(0);
    etcd.spawn(0);
    etcd.wait_writable();
    let (status, body) = push_revocation(&c, &r1, &revoke(2, &["cert-a"])).await;
    assert_eq!(status, 200, "{body}");
    signal(&r2, libc::SIGCONT);
    wait_epoch(&r2, 2).await;
    let reply = deploy(&c, &r2, &a).await;
    assert_eq!((reply.status, reply.code()), (403, "revoked"));

    // 2. Compaction: the same, and etcd's history compacted past r2's revision.
    signal(&r2, libc::SIGSTOP);
    etcd.kill(0);
    etcd.spawn(0);
    etcd.wait_writable();
    let (status, body) = push_revocation(&c, &r1, &revoke(3, &["cert-a", "cert-b"])).await;
    assert_eq!(status, 200, "{body}");
    // More history after it, then compacted up to now.
    for _ in 0..3 {
        etcd.gateway(
            "/v3/kv/put",
            &format!(
                r#"{{"key": "{}", "value": "{}"}}"#,
                b64(b"/other/x"),
                b64(b"y")
            ),
        );
    }
    etcd.compact_now();
    signal(&r2, libc::SIGCONT);
    wait_epoch(&r2, 3).await;
    let reply = deploy(&c, &r2, &b).await;
    assert_eq!((reply.status, reply.code()), (403, "revoked"));
    wait_for("r2 to log the compaction", || {
        logs_mention(&env, "etcd compacted the revisions")
    });
    drop(r1);
}
