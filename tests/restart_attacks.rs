//! Attacks on the restart-safety work of issue 15, through the real binary: ways a spent use
//! could run again after a restart, or a decision could vanish without trace. A test marked
//! `#[ignore = "hole: ..."]` shows a hole that is still open (it fails today); the others are
//! defences that held, kept as regression tests.

mod common;

use common::*;
use serde_json::{json, Value};
use sha2::Digest;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A spent use must stay spent: refused as replayed, or (after an unattributed loss) because
/// the broker cannot prove it unspent.
fn assert_still_spent(r: &Reply, what: &str) {
    assert!(
        [(403, "replayed"), (503, "state_unavailable")].contains(&(r.status, r.code())),
        "{what}: a spent use was admitted again: {} {:?}",
        r.status,
        r.body
    );
}

fn lines_of(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &std::path::Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

/// Starts `seb serve` on `env`'s files with a config of its own; returns Ok(exit status and
/// stderr) if it exits within `wait`, or Err(child) while it is still running.
fn start_second(
    env: &Env,
    cfg: &BrokerConfig,
    name: &str,
    wait: Duration,
) -> Result<(std::process::ExitStatus, String), std::process::Child> {
    let path = env.path(name);
    std::fs::write(&path, &cfg.text).unwrap();
    let err_path = env.path(&format!("{name}.stderr"));
    let mut child = Command::new(seb_bin())
        .args(["serve", "--config"])
        .arg(&path)
        .env("SEB_TEST_PAYMENTS_TOKEN", UPSTREAM_SECRET)
        .env("SEB_TEST_AGENT_TOKEN", AGENT_TOKEN)
        .env("SEB_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Ok((status, std::fs::read_to_string(&err_path).unwrap()));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(child)
}

/// A config on the same files with small log files, so decisions land in rotated ones.
fn rotating(env: &Env, port: u16, bytes: u64) -> BrokerConfig {
    let mut cfg = env.config(port, "");
    cfg.text = cfg.text.replace(
        "signing_key = \"broker.key\"",
        &format!("signing_key = \"broker.key\"\nrotate_bytes = {bytes}"),
    );
    cfg
}

fn rotated(env: &Env) -> Vec<std::path::PathBuf> {
    (1..)
        .map(|n| env.path(&format!("audit.jsonl.{n}")))
        .take_while(|p| p.exists())
        .collect()
}

/// An upstream that accepts connections and never answers; returns its port.
fn hanging_upstream() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

/// A torn decision is read for the use it held. The certificate's `evidence` (free-form, put
/// there by whoever asked the signer) comes before the record's own `request.use` and
/// `decision` members, so a prefix cut just after it must not be read as "denied" or as a use
/// of some other key that expired long ago. The decision is the last record (the broker was
/// killed while the upstream had not answered), and its end is cut as a torn write leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_decision_is_not_read_from_its_evidence() {
    let quoted = format!("{}\"x\\u0001", random_jti());
    for (evidence, cut_at, jti) in [
        (json!({"decision": "deny"}), ",\"target\":", None),
        (
            json!({"use": {"kid": "someone-else", "exp": 1}}),
            ",\"target\":",
            None,
        ),
        (
            json!({"use": {"kid": "someone-else", "exp": 1}}),
            ",\"decision\":",
            None,
        ),
        (json!({"ticket": "INC-7"}), ",\"decision\":", None),
        (json!({"ticket": "INC-7"}), ",\"evid", None),
        // A certificate id with a quote and an escape in it must not be read as a prefix.
        (
            json!({"ticket": "INC-7"}),
            ",\"decision\":",
            Some(quoted.as_str()),
        ),
    ] {
        let env = Env::new();
        let port = hanging_upstream();
        let mut broker = Broker::start(&env, &env.config(port, ""));
        let c = client(&env, false);
        let once = deploy_cert_edit(&env, 1, |p| {
            p["seb"]["evidence"] = evidence.clone();
            if let Some(jti) = jti {
                p["jti"] = json!(jti);
            }
        });
        let (c2, url, auth) = (
            c.clone(),
            broker.url("/v1/deploys"),
            format!("Bearer {once}"),
        );
        let pending = tokio::spawn(async move {
            c2.post(url)
                .header("content-type", "application/json")
                .header("authorization", auth)
                .body(r#"{"env":"prod"}"#)
                .send()
                .await
        });
        wait_for("the decision", || {
            audit_records(&env)
                .iter()
                .any(|r| r["kind"] == "decision" && r["decision"] == "allow")
        });
        broker.kill9();
        pending.abort();

        // Cut the decision where it says.
        let lines = lines_of(&env.path("audit.jsonl"));
        let d = lines.last().unwrap();
        assert!(d.contains("\"kind\":\"decision\""), "{d}");
        let at = d.find(cut_at).expect("the member to cut at");
        let mut text = lines[..lines.len() - 1].join("\n");
        text.push('\n');
        text.push_str(&d[..at]);
        std::fs::write(env.path("audit.jsonl"), text).unwrap();

        broker.spawn(&env);
        let rec = audit_records(&env)
            .into_iter()
            .find(|r| r["kind"] == "recovery")
            .expect("a recovery record");
        assert_eq!(rec["recovery"]["uses_known"], json!(true), "{rec}");
        // A refusal comes at once; an admitted use waits on the hanging upstream.
        let r = c
            .post(broker.url("/v1/deploys"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {once}"))
            .body(r#"{"env":"prod"}"#)
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "evidence {evidence}: the spent use was forwarded again ({e}); recovery {rec}"
                )
            });
        let status = r.status().as_u16();
        let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null);
        assert_eq!(
            (status, body["code"].as_str().unwrap_or("")),
            (403, "replayed"),
            "evidence {evidence}, cut at {cut_at}: {body}; recovery {rec}"
        );
    }
}

/// The lock file is what keeps a second broker off the log. Deleted while the first one runs
/// (a cleanup of dot files, a tmpfiles rule), the log must still have one writer: if the
/// first broker writes before a second one starts, it has taken a new lock and the second
/// refuses to start; if the second starts first, the first writes no more (its mutations are
/// refused) and the chain stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lock_file_does_not_let_a_second_writer_in() {
    for first_writes_first in [true, false] {
        let env = Env::new();
        let up = Upstream::start(env.dir.path());
        let mut first = Broker::start(&env, &env.config(up.port, ""));
        let c = client(&env, false);
        assert_eq!(deploy(&c, &first, &deploy_cert(&env, 1)).await.status, 200);
        // The outcome is written after the answer; once it is on disk, the first broker
        // writes nothing more until it is asked to.
        wait_for("the first outcome", || {
            audit_records(&env).iter().any(|r| r["kind"] == "outcome")
        });
        std::fs::remove_file(env.path(".audit.jsonl.lock")).unwrap();
        let second_cfg = env.config(up.port, "");
        if first_writes_first {
            assert_eq!(deploy(&c, &first, &deploy_cert(&env, 1)).await.status, 200);
            match start_second(&env, &second_cfg, "second.toml", Duration::from_secs(5)) {
                Ok((status, err)) => {
                    assert!(!status.success(), "{err}");
                    assert!(err.contains("is in use by"), "{err}");
                }
                Err(mut child) => {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    panic!("a second broker started on a log whose writer is still running");
                }
            }
            assert_eq!(deploy(&c, &first, &deploy_cert(&env, 1)).await.status, 200);
        } else {
            let second =
                match start_second(&env, &second_cfg, "second.toml", Duration::from_secs(3)) {
                    Ok((status, err)) => panic!("second broker exited ({status}): {err}"),
                    Err(child) => KillOnDrop(child),
                };
            let r = deploy(&c, &first, &deploy_cert(&env, 1)).await;
            assert_eq!(
                (r.status, r.code()),
                (503, "audit_unavailable"),
                "{:?}",
                r.body
            );
            let via_second = Broker {
                child: None,
                listen: second_cfg.listen,
                admin: second_cfg.admin,
                config_path: env.path("second.toml"),
                extra_env: Vec::new(),
            };
            assert_eq!(
                deploy(&c, &via_second, &deploy_cert(&env, 1)).await.status,
                200
            );
            let r = deploy(&c, &first, &deploy_cert(&env, 1)).await;
            assert_eq!((r.status, r.code()), (503, "audit_unavailable"));
            drop(second);
        }
        first.kill9();
        let key = env.path("broker.pub");
        let log = env.path("audit.jsonl");
        let (code, out, err) = seb(&[
            "audit",
            "verify",
            "--key",
            key.to_str().unwrap(),
            log.to_str().unwrap(),
        ]);
        assert_eq!(
            code, 0,
            "first writes first: {first_writes_first}: {out}{err}"
        );
    }
}

/// Two brokers started at the same moment on one log: exactly one serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_racing_at_start_one_wins() {
    for _ in 0..3 {
        let env = Env::new();
        let up = Upstream::start(env.dir.path());
        let (a, b) = (env.config(up.port, ""), env.config(up.port, ""));
        let (pa, pb) = (env.path("a.toml"), env.path("b.toml"));
        std::fs::write(&pa, &a.text).unwrap();
        std::fs::write(&pb, &b.text).unwrap();
        let spawn = |p: &std::path::Path| {
            Command::new(seb_bin())
                .args(["serve", "--config"])
                .arg(p)
                .env("SEB_TEST_PAYMENTS_TOKEN", UPSTREAM_SECRET)
                .env("SEB_TEST_AGENT_TOKEN", AGENT_TOKEN)
                .env("SEB_LOG", "error")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut children = [KillOnDrop(spawn(&pa)), KillOnDrop(spawn(&pb))];
        // Whoever lost exits; give the winner time to be ready.
        std::thread::sleep(Duration::from_secs(3));
        let running: Vec<bool> = children
            .iter_mut()
            .map(|c| c.0.try_wait().unwrap().is_none())
            .collect();
        assert_eq!(
            running.iter().filter(|r| **r).count(),
            1,
            "exactly one broker may hold the log: {running:?}"
        );
        let starts = audit_records(&env)
            .into_iter()
            .filter(|r| r["kind"] == "start")
            .count();
        assert_eq!(starts, 1);
    }
}

/// Rotated files are moved away between runs (compressed, shipped to an archive, deleted):
/// the uses they recorded are gone from the rebuild. The broker must not re-admit them; it
/// refuses the certificates issued before the gap, and admits those issued after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_file_moved_away_does_not_reopen_its_uses() {
    for case in ["oldest renamed", "middle deleted"] {
        let env = Env::new();
        let up = Upstream::start(env.dir.path());
        let mut broker = Broker::start(&env, &rotating(&env, up.port, 3000));
        let c = client(&env, false);
        let once = deploy_cert(&env, 1);
        if case == "middle deleted" {
            while rotated(&env).is_empty() {
                assert_eq!(deploy(&c, &broker, &deploy_cert(&env, 1)).await.status, 200);
            }
        }
        assert_eq!(deploy(&c, &broker, &once).await.status, 200);
        while rotated(&env).len() < 3 {
            assert_eq!(deploy(&c, &broker, &deploy_cert(&env, 1)).await.status, 200);
        }
        sigterm_and_wait(&mut broker);
        if case == "oldest renamed" {
            // logrotate's compress: audit.jsonl.1 becomes audit.jsonl.1.gz (here: renamed).
            std::fs::rename(env.path("audit.jsonl.1"), env.path("audit.jsonl.1.gz")).unwrap();
        } else {
            std::fs::remove_file(env.path("audit.jsonl.2")).unwrap();
        }
        let before = mutations_received(&up);
        broker.spawn(&env);
        let r = deploy(&c, &broker, &once).await;
        assert_still_spent(&r, case);
        assert_eq!(mutations_received(&up), before, "{case}");
        // Issued after the gap (and beyond the skew an iat may run ahead): admitted.
        let fresh = deploy_cert_edit(&env, 1, |p| {
            let t = now() + 31;
            p["iat"] = json!(t);
            p["nbf"] = json!(t - 60);
            p["exp"] = json!(t + 300);
        });
        assert_eq!(deploy(&c, &broker, &fresh).await.status, 200, "{case}");
    }
}

/// Rotation at odd sizes (a file per record or two, a file bigger than everything) and
/// restarts in between never re-open a use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_at_odd_sizes_keeps_every_use() {
    for bytes in [1u64, 700, 1_000_000] {
        let env = Env::new();
        let up = Upstream::start(env.dir.path());
        let mut broker = Broker::start(&env, &rotating(&env, up.port, bytes));
        let c = client(&env, false);
        let tokens: Vec<String> = (0..4).map(|_| deploy_cert(&env, 1)).collect();
        for (i, t) in tokens.iter().enumerate() {
            assert_eq!(deploy(&c, &broker, t).await.status, 200, "rotate {bytes}");
            if i % 2 == 1 {
                broker.kill9();
                broker.spawn(&env);
            }
        }
        sigterm_and_wait(&mut broker);
        broker.spawn(&env);
        for t in &tokens {
            assert_still_spent(&deploy(&c, &broker, t).await, &format!("rotate {bytes}"));
        }
        assert_eq!(mutations_received(&up), 4, "rotate {bytes}");
    }
}

/// Someone who can write the log but holds no key appends an outcome saying a use was
/// `returned`. The rebuild does not verify signatures; a count it lowers must be one the
/// broker itself signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_returned_outcome_does_not_give_a_use_back() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let mut broker = Broker::start(&env, &env.config(up.port, ""));
    let c = client(&env, false);
    let once = deploy_cert(&env, 1);
    assert_eq!(deploy(&c, &broker, &once).await.status, 200);
    wait_for("the outcome", || {
        audit_records(&env).iter().any(|r| r["kind"] == "outcome")
    });
    sigterm_and_wait(&mut broker);

    let mut lines = lines_of(&env.path("audit.jsonl"));
    let last = lines.last().unwrap().clone();
    let outcome: Value = serde_json::from_str(
        lines
            .iter()
            .rev()
            .find(|l| l.contains("\"kind\":\"outcome\""))
            .unwrap(),
    )
    .unwrap();
    let mut forged = outcome.clone();
    let last_seq = serde_json::from_str::<Value>(&last).unwrap()["seq"]
        .as_u64()
        .unwrap();
    forged["seq"] = json!(last_seq + 1);
    forged["outcome"] = json!("returned");
    forged["prev"] = json!(hex::encode(sha2::Sha256::digest(last.as_bytes())));
    lines.push(serde_json::to_string(&forged).unwrap());
    write_lines(&env.path("audit.jsonl"), &lines);

    broker.spawn(&env);
    let r = deploy(&c, &broker, &once).await;
    assert_still_spent(&r, "a forged returned outcome");
    assert_eq!(mutations_received(&up), 1);
}

/// The lock file's recorded head is how a cut log is noticed. If that file is garbage (or
/// gone) when the log is also cut by whole lines, nothing shows the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "hole: whole lines cut off the log go unnoticed when the lock file's head is also unreadable, lowered or deleted"]
async fn a_cut_log_with_a_damaged_lock_file_does_not_reopen_a_use() {
    for lock in ["garbage", "lowered", "deleted"] {
        let env = Env::new();
        let up = Upstream::start(env.dir.path());
        let mut broker = Broker::start(&env, &env.config(up.port, ""));
        let c = client(&env, false);
        let once = deploy_cert(&env, 1);
        assert_eq!(deploy(&c, &broker, &once).await.status, 200);
        sigterm_and_wait(&mut broker);
        let mut lines = lines_of(&env.path("audit.jsonl"));
        let decision = lines
            .iter()
            .rposition(|l| l.contains("\"kind\":\"decision\""))
            .unwrap();
        lines.truncate(decision);
        write_lines(&env.path("audit.jsonl"), &lines);
        let lock_path = env.path(".audit.jsonl.lock");
        match lock {
            "garbage" => std::fs::write(&lock_path, b"\x00\x01not a head").unwrap(),
            "lowered" => {
                let text = std::fs::read_to_string(&lock_path).unwrap();
                let mut head: Value = serde_json::from_str(text.trim()).unwrap();
                head["seq"] = json!(decision as u64);
                std::fs::write(&lock_path, serde_json::to_vec(&head).unwrap()).unwrap();
            }
            _ => std::fs::remove_file(&lock_path).unwrap(),
        }
        broker.spawn(&env);
        let r = deploy(&c, &broker, &once).await;
        assert_still_spent(&r, &format!("lock file {lock}"));
        assert_eq!(mutations_received(&up), 1, "lock file {lock}");
    }
}

/// The lock file edited between runs to a head beyond the log (seq raised): the log looks
/// cut, so the loss is recorded and older certificates wait; nothing is re-admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_head_in_the_lock_file_fails_closed() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let mut broker = Broker::start(&env, &env.config(up.port, ""));
    let c = client(&env, false);
    let once = deploy_cert(&env, 1);
    assert_eq!(deploy(&c, &broker, &once).await.status, 200);
    sigterm_and_wait(&mut broker);
    let lock_path = env.path(".audit.jsonl.lock");
    let text = std::fs::read_to_string(&lock_path).unwrap();
    let mut head: Value = serde_json::from_str(text.trim()).unwrap();
    head["seq"] = json!(head["seq"].as_u64().unwrap() + 5);
    std::fs::write(&lock_path, serde_json::to_vec(&head).unwrap()).unwrap();
    broker.spawn(&env);
    let r = deploy(&c, &broker, &once).await;
    assert_eq!(
        (r.status, r.code()),
        (503, "state_unavailable"),
        "{:?}",
        r.body
    );
    let rec = audit_records(&env)
        .into_iter()
        .find(|r| r["kind"] == "recovery")
        .expect("a recovery record");
    assert_eq!(rec["recovery"]["uses_known"], json!(false), "{rec}");
}

/// Rewrites the whole log (rotated files oldest first, then the active file) as the broker
/// would have written it: `edit` changes the lines of `target`, and every line is chained and
/// signed again with the broker's key, member order kept.
fn rewrite_signed(env: &Env, target: &std::path::Path, edit: impl Fn(&str) -> String) {
    use base64::Engine;
    use ed25519_dalek::Signer;
    let key = seb::cert::keys::load_signing_key(&env.path("broker.key")).unwrap();
    let mut prev: Option<String> = None;
    let mut files = rotated(env);
    files.push(env.path("audit.jsonl"));
    for file in files {
        let mut out = Vec::new();
        for line in lines_of(&file) {
            let mut l = if file == target { edit(&line) } else { line };
            if let Some(p) = &prev {
                let at = l.find(",\"prev\":\"").unwrap() + 9;
                l.replace_range(at..at + 64, p);
            }
            let at = l.rfind(",\"sig\":\"").unwrap();
            let mut msg = l[..at].to_owned();
            msg.push('}');
            let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(key.sign(msg.as_bytes()).to_bytes());
            let l = format!("{},\"sig\":\"{sig}\"}}", &l[..at]);
            prev = Some(hex::encode(sha2::Sha256::digest(l.as_bytes())));
            out.push(l);
        }
        write_lines(&file, &out);
    }
}

/// The clock stepped back for a while (an NTP step) while the broker wrote a rotated file,
/// then corrected: that file "begins before the horizon", and the rebuild stops there without
/// reading the older files, though they hold uses of certificates still valid. (Simulated by
/// rewriting the timestamps in that file, as the broker's clock would have written them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "hole: the horizon trusts record timestamps; a file written while the clock was behind stops the rebuild before older files with live uses"]
async fn a_clock_stepped_back_does_not_hide_older_files() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let mut broker = Broker::start(&env, &rotating(&env, up.port, 3000));
    let c = client(&env, false);
    let once = deploy_cert(&env, 1);
    assert_eq!(deploy(&c, &broker, &once).await.status, 200);
    while rotated(&env).len() < 2 {
        assert_eq!(deploy(&c, &broker, &deploy_cert(&env, 1)).await.status, 200);
    }
    sigterm_and_wait(&mut broker);
    let newest_rotated = rotated(&env).pop().unwrap();
    let behind = humantime::format_rfc3339_millis(
        std::time::SystemTime::now() - Duration::from_secs(3 * 86_400),
    )
    .to_string();
    rewrite_signed(&env, &newest_rotated, |l| {
        let at = l.find("\"ts\":\"").unwrap() + 6;
        let end = at + l[at..].find('"').unwrap();
        format!("{}{behind}{}", &l[..at], &l[end..])
    });
    // As the broker wrote it: the log verifies.
    let key = env.path("broker.pub");
    let mut args: Vec<String> = vec!["audit".into(), "verify".into(), "--key".into()];
    args.push(key.to_str().unwrap().into());
    args.extend(rotated(&env).iter().map(|p| p.to_str().unwrap().to_owned()));
    args.push(env.path("audit.jsonl").to_str().unwrap().into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = seb(&args);
    assert_eq!(code, 0, "{out}{err}");
    broker.spawn(&env);
    let r = deploy(&c, &broker, &once).await;
    assert_still_spent(&r, "after a clock step back");
}

/// A revocation pushed, then the state file rolled back between runs to the older document
/// (genuinely signed, epoch 1) that the polled source still serves, or deleted: the
/// revocation is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_state_file_does_not_unrevoke() {
    for case in ["rolled back", "deleted"] {
        let env = Env::new();
        let up = Upstream::start(env.dir.path());
        let mut broker = Broker::start(&env, &env.config(up.port, ""));
        let c = client(&env, false);
        let token = deploy_cert(&env, 3);
        assert_eq!(deploy(&c, &broker, &token).await.status, 200);
        let jti = audit_records(&env)
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
        sigterm_and_wait(&mut broker);
        let state = env.path(seb::admission::revocation::STATE_FILE);
        if case == "deleted" {
            std::fs::remove_file(&state).unwrap();
        } else {
            let mut file: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
            let old = std::fs::read_to_string(env.path("revocation.jws")).unwrap();
            file["issuers"]["signer"]["epoch"] = json!(1);
            file["issuers"]["signer"]["iat"] = json!(0);
            file["issuers"]["signer"]["document"] = json!(old.trim());
            std::fs::write(&state, serde_json::to_vec(&file).unwrap()).unwrap();
        }
        broker.spawn(&env);
        let r = deploy(&c, &broker, &token).await;
        assert_ne!(r.status, 200, "{case}: a revoked certificate was admitted");
        assert_eq!(mutations_received(&up), 1, "{case}");
        // The audit log is where the revocation was found again: a record of each document
        // applied (epoch 1 polled at the first start, epoch 2 pushed; the restored one is
        // not applied anew), a chain that verifies, and the state file at epoch 2 once more.
        let logged: Vec<Value> = audit_records(&env)
            .into_iter()
            .filter(|r| r["kind"] == "revocation")
            .map(|r| r["revocation"].clone())
            .collect();
        let epochs: Vec<&Value> = logged.iter().map(|r| &r["epoch"]).collect();
        assert_eq!(epochs, [&json!(1), &json!(2)], "{case}: {logged:?}");
        assert!(logged.iter().all(|r| r["iss"] == "signer"), "{case}");
        let (code, out) = audit_verify(&env);
        assert_eq!(code, 0, "{case}: {out}");
        assert!(out.contains("2 revocations applied"), "{case}: {out}");
        let file: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        assert_eq!(file["issuers"]["signer"]["epoch"], 2, "{case}");
    }
}

/// A state file that is not one (garbage, cut) stops the start, naming the file: starting
/// without it could forget pushed revocations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_file_stops_the_start() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let cfg = env.config(up.port, "");
    let state = env.path(seb::admission::revocation::STATE_FILE);
    for damage in [
        &b"{\"v\":1,\"issuers\":{\"signer\":"[..],
        b"\x00\x01garbage",
    ] {
        std::fs::write(&state, damage).unwrap();
        match start_second(&env, &cfg, "seb.toml", Duration::from_secs(10)) {
            Ok((status, err)) => {
                assert!(!status.success(), "{err}");
                assert!(err.contains("seb-revocation.json"), "{err}");
            }
            Err(mut child) => {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("a broker started on a damaged revocation state file");
            }
        }
    }
}

/// An upstream that accepts the connection, reads the whole request and closes without an
/// answer may have executed it: the use is not given back, now or after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_reads_and_hangs_up_keeps_the_use() {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read to the end of the body (`{"env":"prod"}`), then hang up.
            while !buf.ends_with(b"}") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            if buf.ends_with(b"}") {
                seen2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            drop(s);
        }
    });
    let env = Env::new();
    let mut broker = Broker::start(&env, &env.config(port, ""));
    let c = client(&env, false);
    let once = deploy_cert(&env, 1);
    let r = deploy(&c, &broker, &once).await;
    assert_eq!(
        (r.status, r.code()),
        (502, "upstream_error"),
        "{:?}",
        r.body
    );
    assert!(
        !r.body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("given back"),
        "{:?}",
        r.body
    );
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    let r = deploy(&c, &broker, &once).await;
    assert_eq!((r.status, r.code()), (403, "replayed"), "{:?}", r.body);
    broker.kill9();
    broker.spawn(&env);
    assert_still_spent(&deploy(&c, &broker, &once).await, "after a restart");
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A 2-use certificate hit by many agents at once, around a SIGKILL: two uses in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_uses_around_a_restart_stay_at_max_uses() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let mut broker = Broker::start(&env, &env.config(up.port, ""));
    let c = client(&env, false);
    let twice = deploy_cert(&env, 2);
    let burst = |broker: &Broker| {
        let reqs: Vec<_> = (0..12)
            .map(|_| {
                let (c, url, auth) = (
                    c.clone(),
                    broker.url("/v1/deploys"),
                    format!("Bearer {twice}"),
                );
                tokio::spawn(async move {
                    send(
                        &c,
                        "POST",
                        &url,
                        &[
                            ("content-type", "application/json"),
                            ("authorization", &auth),
                        ],
                        br#"{"env":"prod"}"#,
                    )
                    .await
                    .status
                })
            })
            .collect();
        async move {
            let mut ok = 0;
            for r in reqs {
                if r.await.unwrap() == 200 {
                    ok += 1;
                }
            }
            ok
        }
    };
    // One use, then a burst for the second, then SIGKILL at once and a burst after.
    assert_eq!(deploy(&c, &broker, &twice).await.status, 200);
    assert_eq!(burst(&broker).await, 1);
    broker.kill9();
    broker.spawn(&env);
    assert_eq!(burst(&broker).await, 0);
    assert_eq!(mutations_received(&up), 2);
}

/// SIGTERM right after an agent got its answer: the outcome of that request is in the log
/// once the broker has exited ("once stopped, the log is complete"). Before the drain this
/// was a race that lost the outcome about once in 25-60 rounds; the drain waits for the
/// writer and syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_an_answer_keeps_its_outcome() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    // `fsync` (the default): the outcome is queued to the writer thread, which batches and
    // syncs; the drain must wait for it.
    let mut broker = Broker::start(&env, &env.config(up.port, ""));
    let c = client(&env, false);
    for round in 0..60 {
        assert_eq!(deploy(&c, &broker, &deploy_cert(&env, 1)).await.status, 200);
        sigterm_and_wait(&mut broker);
        let recs = audit_records(&env);
        let decisions = recs
            .iter()
            .filter(|r| r["kind"] == "decision" && r["decision"] == "allow")
            .count();
        let outcomes: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "outcome").collect();
        assert_eq!(
            outcomes.len(),
            decisions,
            "round {round}: an answered request has no outcome after SIGTERM"
        );
        assert!(
            outcomes.iter().all(|o| o["outcome"] == "completed"),
            "round {round}: {outcomes:?}"
        );
        broker.spawn(&env);
    }
}

/// SIGKILL while the recovery record is being written: the torn tail found at the next start
/// is that recovery record, not the decision it was about (already moved aside). The use the
/// decision held must not be forgotten because "a recovery spends nothing".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_recovery_record_does_not_forget_the_use_it_recorded() {
    let env = Env::new();
    let port = hanging_upstream();
    let mut broker = Broker::start(&env, &env.config(port, ""));
    let c = client(&env, false);
    let once = deploy_cert(&env, 1);
    let (c2, url, auth) = (
        c.clone(),
        broker.url("/v1/deploys"),
        format!("Bearer {once}"),
    );
    let pending = tokio::spawn(async move {
        c2.post(url)
            .header("content-type", "application/json")
            .header("authorization", auth)
            .body(r#"{"env":"prod"}"#)
            .send()
            .await
    });
    wait_for("the decision", || {
        audit_records(&env)
            .iter()
            .any(|r| r["kind"] == "decision" && r["decision"] == "allow")
    });
    broker.kill9();
    pending.abort();
    // The decision torn where it says which use it took.
    let lines = lines_of(&env.path("audit.jsonl"));
    let d = lines.last().unwrap().clone();
    let at = d.find(",\"decision\":").unwrap();
    let mut text = lines[..lines.len() - 1].join("\n");
    text.push('\n');
    text.push_str(&d[..at]);
    std::fs::write(env.path("audit.jsonl"), &text).unwrap();
    let lock = std::fs::read(env.path(".audit.jsonl.lock")).unwrap();

    // The next start moves it aside and writes its recovery record; killed while writing it
    // (simulated: the log as the interrupted write leaves it, and the lock file as it was,
    // since the head is recorded only after a write).
    broker.spawn(&env);
    broker.kill9();
    let lines = lines_of(&env.path("audit.jsonl"));
    let r = lines
        .iter()
        .position(|l| l.contains("\"kind\":\"recovery\""))
        .expect("a recovery record");
    assert!(lines[r].contains("\"uses_known\":true"), "{}", lines[r]);
    let mut text = lines[..r].join("\n");
    text.push('\n');
    text.push_str(&lines[r][..lines[r].len() / 2]);
    std::fs::write(env.path("audit.jsonl"), &text).unwrap();
    std::fs::write(env.path(".audit.jsonl.lock"), &lock).unwrap();

    broker.spawn(&env);
    let r = c
        .post(broker.url("/v1/deploys"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {once}"))
        .body(r#"{"env":"prod"}"#)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .unwrap_or_else(|e| panic!("the spent use was forwarded again ({e})"));
    let status = r.status().as_u16();
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null);
    assert_still_spent(&Reply { status, body }, "a torn recovery record");
}

/// Someone who can write the log but holds no key edits the `cert_id` of a decision (so the
/// use would count for a certificate that does not exist), or edits it and appends a forged
/// line after it: the chain no longer holds, so the broker does not start on that log, and
/// says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_decision_does_not_reopen_a_use() {
    for append in [false, true] {
        let env = Env::new();
        let up = Upstream::start(env.dir.path());
        let cfg = env.config(up.port, "");
        let mut broker = Broker::start(&env, &cfg);
        let c = client(&env, false);
        let once = deploy_cert(&env, 1);
        assert_eq!(deploy(&c, &broker, &once).await.status, 200);
        wait_for("the outcome", || {
            audit_records(&env).iter().any(|r| r["kind"] == "outcome")
        });
        sigterm_and_wait(&mut broker);
        let jti = audit_records(&env)
            .into_iter()
            .find(|r| r["kind"] == "decision")
            .unwrap()["cert_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let text = std::fs::read_to_string(env.path("audit.jsonl")).unwrap();
        let mut lines: Vec<String> = text
            .replace(&jti, &"0".repeat(jti.len()))
            .lines()
            .map(str::to_owned)
            .collect();
        if append {
            // Re-chain every line after the edit; only the signatures cannot be redone.
            for i in 1..lines.len() {
                let mut v: Value = serde_json::from_str(&lines[i]).unwrap();
                let h = sha2::Sha256::digest(lines[i - 1].as_bytes());
                v["prev"] = json!(hex::encode(h));
                let mut s = serde_json::to_string(&v).unwrap();
                // Keep `sig` last, as the broker writes it.
                let sig = v["sig"].as_str().unwrap().to_owned();
                v.as_object_mut().unwrap().remove("sig");
                s.clear();
                s.push_str(&serde_json::to_string(&v).unwrap());
                s.truncate(s.len() - 1);
                s.push_str(&format!(",\"sig\":\"{sig}\"}}"));
                lines[i] = s;
            }
        }
        write_lines(&env.path("audit.jsonl"), &lines);
        match (
            append,
            start_second(&env, &cfg, "seb.toml", Duration::from_secs(4)),
        ) {
            // A link broken inside the log: the broker does not start on it.
            (false, Ok((status, err))) => {
                assert!(!status.success(), "{err}");
                assert!(err.contains("altered"), "{err}");
            }
            // Re-chained: the chain holds up to a last record nobody could sign, so nothing
            // issued before this start is proven unspent.
            (true, Err(child)) => {
                let _kill = KillOnDrop(child);
                let served = Broker {
                    child: None,
                    listen: cfg.listen,
                    admin: cfg.admin,
                    config_path: env.path("seb.toml"),
                    extra_env: Vec::new(),
                };
                wait_for("the listener", || {
                    std::net::TcpStream::connect(("127.0.0.1", cfg.listen)).is_ok()
                });
                let r = deploy(&c, &served, &once).await;
                assert_eq!(
                    (r.status, r.code()),
                    (503, "state_unavailable"),
                    "{:?}",
                    r.body
                );
            }
            (_, Ok((status, err))) => panic!("append {append}: exited {status}: {err}"),
            (_, Err(mut child)) => {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("append {append}: the broker started on a log with a broken chain");
            }
        }
        assert_eq!(mutations_received(&up), 1);
    }
}

/// The active file replaced under a running broker by a copy without its last decision (or
/// deleted just after a rotation), while requests flow: the certificate whose decision went
/// missing is never admitted again, before or after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_file_replaced_or_deleted_under_load_never_reopens_a_use() {
    for case in ["replaced by a shorter copy", "deleted after a rotation"] {
        let env = Env::new();
        let up = Upstream::start(env.dir.path());
        let bytes = if case.starts_with("replaced") {
            1_000_000
        } else {
            3000
        };
        let mut broker = Broker::start(&env, &rotating(&env, up.port, bytes));
        let c = client(&env, false);
        if case.starts_with("deleted") {
            while rotated(&env).is_empty() {
                assert_eq!(deploy(&c, &broker, &deploy_cert(&env, 1)).await.status, 200);
            }
            // Rotate once more so the active file is young.
            let n = rotated(&env).len();
            while rotated(&env).len() == n {
                assert_eq!(deploy(&c, &broker, &deploy_cert(&env, 1)).await.status, 200);
            }
        }
        let once = deploy_cert(&env, 1);
        assert_eq!(deploy(&c, &broker, &once).await.status, 200, "{case}");
        wait_for("the outcome", || {
            audit_records(&env)
                .last()
                .is_some_and(|r| r["kind"] == "outcome")
        });
        let log = env.path("audit.jsonl");
        if case.starts_with("replaced") {
            let mut lines = lines_of(&log);
            lines.truncate(lines.len() - 2);
            let tmp = env.path("audit.jsonl.tmp");
            write_lines(&tmp, &lines);
            std::fs::rename(&tmp, &log).unwrap();
        } else {
            std::fs::remove_file(&log).unwrap();
        }
        // Requests keep coming: refused until the chain goes on, then served.
        let mut served = 0;
        for _ in 0..4 {
            let r = deploy(&c, &broker, &deploy_cert(&env, 1)).await;
            if r.status == 200 {
                served += 1;
            } else {
                assert_eq!((r.status, r.code()), (503, "audit_unavailable"), "{case}");
            }
        }
        assert!(served >= 3, "{case}: the chain did not go on");
        assert_still_spent(&deploy(&c, &broker, &once).await, case);
        sigterm_and_wait(&mut broker);
        broker.spawn(&env);
        assert_still_spent(&deploy(&c, &broker, &once).await, case);
        let rec = rotated(&env)
            .into_iter()
            .chain([log])
            .flat_map(|p| lines_of(&p))
            .map(|l| serde_json::from_str::<Value>(&l).unwrap())
            .find(|r| r["kind"] == "recovery")
            .unwrap_or_else(|| panic!("{case}: no recovery record"));
        assert_eq!(rec["recovery"]["uses_known"], json!(false), "{case}: {rec}");
    }
}
