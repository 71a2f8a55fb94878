//! Restarts, as an operator makes them, through the real binary: nothing a broker knew before
//! a restart (uses spent, revocations pushed) is forgotten after it, and the audit log keeps
//! one writer and never hides a loss.

mod common;

use common::*;
use serde_json::{json, Value};

async fn readyz(broker: &Broker) -> Value {
    let body = reqwest::get(broker.admin_url("/readyz"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// A use spent before a restart stays spent after it, whether the broker was killed or
/// stopped, and however the log was rotated in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_never_readmit_a_spent_use() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let mut cfg = env.config(up.port, "");
    // Small files: the decisions end up in rotated files, which the rebuild must read too.
    cfg.text = cfg.text.replace(
        "signing_key = \"broker.key\"",
        "signing_key = \"broker.key\"\nrotate_bytes = 3000",
    );
    let mut broker = Broker::start(&env, &cfg);
    let c = client(&env, false);

    let once = deploy_cert(&env, 1);
    let twice = deploy_cert(&env, 2);
    let half = deploy_cert(&env, 2);
    assert_eq!(deploy(&c, &broker, &once).await.status, 200);
    assert_eq!(deploy(&c, &broker, &twice).await.status, 200);
    assert_eq!(deploy(&c, &broker, &twice).await.status, 200);
    assert_eq!(deploy(&c, &broker, &half).await.status, 200);
    // Fill a few files so the first decisions are in rotated ones.
    for _ in 0..6 {
        let r = deploy(&c, &broker, &deploy_cert(&env, 1)).await;
        assert_eq!(r.status, 200);
    }
    assert!(
        env.path("audit.jsonl.1").exists(),
        "the log should have rotated"
    );
    let before = mutations_received(&up);

    broker.kill9();
    broker.spawn(&env);
    let r = deploy(&c, &broker, &once).await;
    assert_eq!((r.status, r.code()), (403, "replayed"), "{:?}", r.body);
    let r = deploy(&c, &broker, &twice).await;
    assert_eq!((r.status, r.code()), (403, "replayed"), "{:?}", r.body);
    // A use left over is still there, and only that one.
    assert_eq!(deploy(&c, &broker, &half).await.status, 200);
    let r = deploy(&c, &broker, &half).await;
    assert_eq!((r.status, r.code()), (403, "replayed"));

    sigterm_and_wait(&mut broker);
    broker.spawn(&env);
    for token in [&once, &twice, &half] {
        let r = deploy(&c, &broker, token).await;
        assert_eq!((r.status, r.code()), (403, "replayed"), "{:?}", r.body);
    }
    assert_eq!(
        mutations_received(&up),
        before + 1,
        "only the one use left reached the API"
    );
    // Outcomes are written after the answer; once stopped, the log is complete.
    sigterm_and_wait(&mut broker);
    let mut files: Vec<String> = vec![];
    for n in 1.. {
        let p = env.path(&format!("audit.jsonl.{n}"));
        if !p.exists() {
            break;
        }
        files.push(p.to_str().unwrap().to_owned());
    }
    files.push(env.path("audit.jsonl").to_str().unwrap().to_owned());
    let key = env.path("broker.pub");
    let mut args = vec!["audit", "verify", "--key", key.to_str().unwrap()];
    args.extend(files.iter().map(String::as_str));
    let (code, out, err) = seb(&args);
    assert_eq!(code, 0, "{out}{err}");
}

/// Decisions name the issuer key and expiry of the certificate and which use they took: what
/// a restarted broker rebuilds its counts from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_record_what_a_restart_needs() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let broker = Broker::start(&env, &env.config(up.port, ""));
    let c = client(&env, false);
    let token = deploy_cert(&env, 3);
    let r = deploy(&c, &broker, &token).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let d: Value = audit_records(&env)
        .into_iter()
        .find(|r| r["kind"] == "decision" && r["decision"] == "allow")
        .unwrap();
    let u = &d["request"]["use"];
    assert_eq!(u["n"], 1);
    assert_eq!(u["max"], 3);
    assert_eq!(u["kid"], env.kid.as_str());
    assert!(u["exp"].as_i64().unwrap() > now());
}

/// A request that provably never left (the upstream refused the connection) gives its use
/// back, says so in its outcome record, and a restart does not count it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_left_gives_its_use_back() {
    let env = Env::new();
    // Nothing listens on this port.
    let down = free_port();
    let mut broker = Broker::start(&env, &env.config(down, ""));
    let c = client(&env, false);
    let once = deploy_cert(&env, 1);
    for _ in 0..2 {
        let r = deploy(&c, &broker, &once).await;
        assert_eq!(
            (r.status, r.code()),
            (502, "upstream_error"),
            "{:?}",
            r.body
        );
        assert!(
            r.body["detail"].as_str().unwrap().contains("given back"),
            "{:?}",
            r.body
        );
    }
    sigterm_and_wait(&mut broker);
    let returned = audit_records(&env)
        .into_iter()
        .filter(|r| r["kind"] == "outcome" && r["outcome"] == "returned")
        .count();
    assert_eq!(returned, 2);
    broker.spawn(&env);
    let r = deploy(&c, &broker, &once).await;
    assert_eq!(
        (r.status, r.code()),
        (502, "upstream_error"),
        "{:?}",
        r.body
    );
}

/// A revocation pushed to the admin port outlives a restart, even though the polled source
/// still serves the older document; and the epoch never goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_revocations_survive_a_restart() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let mut broker = Broker::start(&env, &env.config(up.port, ""));
    let c = client(&env, false);
    let token = deploy_cert(&env, 3);
    assert_eq!(deploy(&c, &broker, &token).await.status, 200);
    let jti: String = audit_records(&env)
        .into_iter()
        .find(|r| r["kind"] == "decision")
        .unwrap()["cert_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let doc = env.revocation_doc(
        2,
        now(),
        seb::admission::revocation::Revoked {
            jti: vec![jti],
            ..Default::default()
        },
    );
    let pushed = reqwest::Client::new()
        .post(broker.admin_url("/v1/revocation"))
        .body(doc)
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), 200);
    let r = deploy(&c, &broker, &token).await;
    assert_eq!((r.status, r.code()), (403, "revoked"));

    for restart in ["SIGKILL", "SIGTERM"] {
        if restart == "SIGKILL" {
            broker.kill9();
        } else {
            sigterm_and_wait(&mut broker);
        }
        broker.spawn(&env);
        let r = deploy(&c, &broker, &token).await;
        assert_eq!((r.status, r.code()), (403, "revoked"), "after {restart}");
        let ready: Value = readyz(&broker).await;
        assert_eq!(ready["revocation"]["issuers"]["signer"]["epoch"], 2);
    }
    // The polled file's epoch 1 is older than what was pushed: refused as a rollback.
    let ready: Value = readyz(&broker).await;
    assert!(
        ready["revocation"]["last_refusal"]
            .as_str()
            .unwrap_or("")
            .contains("never goes backwards"),
        "{ready}"
    );
    assert_eq!(mutations_received(&up), 1);
}

/// A second broker on the same log refuses to start, naming the one that holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_on_one_log_refuses_to_start() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let first = Broker::start(&env, &env.config(up.port, ""));
    let second = env.config(up.port, "");
    let path = env.path("second.toml");
    std::fs::write(&path, &second.text).unwrap();
    let out = std::process::Command::new(seb_bin())
        .args(["serve", "--config"])
        .arg(&path)
        .env("SEB_TEST_PAYMENTS_TOKEN", UPSTREAM_SECRET)
        .env("SEB_TEST_AGENT_TOKEN", AGENT_TOKEN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is in use by broker \"test-broker\"")
            && err.contains(&format!("pid {}", first.pid())),
        "{err}"
    );
    // The first one still serves.
    let c = client(&env, false);
    assert_eq!(deploy(&c, &first, &deploy_cert(&env, 1)).await.status, 200);
}

/// The active log deleted under a running broker: readiness says so at once, the next write
/// is refused (nothing is forwarded under a decision nobody can read), and the chain goes on
/// in a new file whose first record says which records were lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_log_is_noticed_refused_and_recorded() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let mut broker = Broker::start(&env, &env.config(up.port, ""));
    let c = client(&env, false);
    for _ in 0..3 {
        assert_eq!(deploy(&c, &broker, &deploy_cert(&env, 1)).await.status, 200);
    }
    wait_for("the outcomes", || {
        audit_records(&env)
            .iter()
            .filter(|r| r["kind"] == "outcome")
            .count()
            == 3
    });
    let last_seq = audit_records(&env).last().unwrap()["seq"].as_u64().unwrap();
    std::fs::remove_file(env.path("audit.jsonl")).unwrap();
    let ready = reqwest::get(broker.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);

    let refused = deploy(&c, &broker, &deploy_cert(&env, 1)).await;
    assert_eq!(
        (refused.status, refused.code()),
        (503, "audit_unavailable"),
        "{:?}",
        refused.body
    );
    assert_eq!(
        mutations_received(&up),
        3,
        "nothing forwarded without a readable decision"
    );
    let r = deploy(&c, &broker, &deploy_cert(&env, 1)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(mutations_received(&up), 4);
    let recs = audit_records(&env);
    assert_eq!(recs[0]["kind"], "recovery", "{:?}", recs[0]);
    assert_eq!(recs[0]["recovery"]["what"], "deleted");
    assert_eq!(recs[0]["recovery"]["lost_seq"], json!([1, last_seq]));
    assert_eq!(recs[0]["seq"], last_seq + 1);

    // The certificates admitted before the loss cannot be counted by a restart: a restarted
    // broker refuses every certificate issued before it, and admits new ones.
    sigterm_and_wait(&mut broker);
    broker.spawn(&env);
    let r = deploy(&c, &broker, &cert_issued_at(&env, now() - 5)).await;
    assert_eq!(
        (r.status, r.code()),
        (503, "state_unavailable"),
        "{:?}",
        r.body
    );
    // Issued after the loss (and beyond the clock skew a certificate's iat may run ahead).
    let fresh = cert_issued_at(&env, now() + 31);
    let r = deploy(&c, &broker, &fresh).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (code, out) = audit_verify(&env);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("RECOVERY") && out.contains("deleted"), "{out}");
}

fn cert_issued_at(env: &Env, iat: i64) -> String {
    env.cert_with(
        "POST",
        "/v1/deploys",
        json!({"constraints": {"/env": {"eq": "prod"}}, "others": "deny"}),
        |p| {
            p["iat"] = json!(iat);
            p["nbf"] = json!(iat - 60);
            p["exp"] = json!(iat + 300);
        },
    )
}

/// A log whose end was cut, by a few bytes or by whole lines, while the broker was down: the
/// next start records the loss (and what it moved aside), verify reports it, and a use whose
/// decision was cut is not admitted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_tail_is_recorded_and_never_reopens_a_use() {
    for cut in [1usize, 10, 200, 0] {
        let env = Env::new();
        let up = Upstream::start(env.dir.path());
        let mut broker = Broker::start(&env, &env.config(up.port, ""));
        let c = client(&env, false);
        let once = deploy_cert(&env, 1);
        assert_eq!(deploy(&c, &broker, &once).await.status, 200);
        sigterm_and_wait(&mut broker);
        // The decision is the last record before the outcome; cut into or past it. `0`
        // cuts the outcome and the decision as whole lines.
        let data = std::fs::read(env.path("audit.jsonl")).unwrap();
        let lines: Vec<&[u8]> = data.split_inclusive(|&b| b == b'\n').collect();
        let outcome_len = lines.last().unwrap().len();
        let decision_len = lines[lines.len() - 2].len();
        let keep = match cut {
            0 => data.len() - outcome_len - decision_len,
            n => data.len() - outcome_len - n.min(decision_len - 1),
        };
        std::fs::write(env.path("audit.jsonl"), &data[..keep]).unwrap();

        broker.spawn(&env);
        let r = deploy(&c, &broker, &once).await;
        assert!(
            [(403, "replayed"), (503, "state_unavailable")].contains(&(r.status, r.code())),
            "cut {cut}: the spent use must stay spent: {:?}",
            r.body
        );
        assert_eq!(mutations_received(&up), 1, "cut {cut}");
        let recs = audit_records(&env);
        let rec = recs
            .iter()
            .find(|r| r["kind"] == "recovery")
            .unwrap_or_else(|| panic!("cut {cut}: no recovery record"));
        assert!(rec["recovery"]["lost_seq"].is_array(), "cut {cut}: {rec}");
        if cut != 0 {
            let dropped = &rec["recovery"]["dropped"];
            let moved = std::fs::read(dropped["file"].as_str().unwrap()).unwrap();
            assert_eq!(moved.len() as u64, dropped["bytes"].as_u64().unwrap());
        }
        sigterm_and_wait(&mut broker);
        let (code, out) = audit_verify(&env);
        assert_eq!(code, 3, "cut {cut}: {out}");
    }
}
