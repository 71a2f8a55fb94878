//! Agent → signer → broker → upstream with real processes: `seb request` and `seb exec` as the
//! agent, `seb signer serve` judging the proposals in certs/ by the policies in policies/,
//! `seb serve` trusting the signer's key and polling (and being pushed) its revocation
//! document, and the recording upstream. Then the signer is stopped: mutations stop, reads go on.

mod common;

use common::signer::*;
use common::*;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const JSON: (&str, &str) = ("content-type", "application/json");

struct Stack {
    env: Env,
    up: Upstream,
    _fake: EvidenceFake,
    signer: SignerProcess,
    broker: Broker,
}

/// The broker polls the signer's revocation document every second and refuses mutations once
/// its copy is 4 s old; the signer re-signs it every second and pushes it to the broker.
fn stack() -> Stack {
    stack_in_mode("enforce")
}

fn stack_in_mode(mode: &str) -> Stack {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let fake = EvidenceFake::start(env.dir.path());
    fake.set(&green_world());
    let mut bcfg = env.config(up.port, "");
    bcfg.text = bcfg.text.replace(
        "[targets.http]",
        &format!("mode = \"{mode}\"\n[targets.http]"),
    );
    let signer_cfg = signer_config(
        &env,
        &fake.url(),
        &format!("{}/risk", fake.url()),
        &repo().join("policies"),
        &format!(
            "[revocation]\nheartbeat = \"1s\"\npush = [\"http://127.0.0.1:{}/v1/revocation\"]\n",
            bcfg.admin
        ),
    );
    bcfg.text = bcfg
        .text
        .replace(
            "file = \"revocation.jws\"",
            &format!(
                "url = \"https://localhost:{}/v1/revocation\"\nca = \"tls/ca.pem\"",
                signer_cfg.listen
            ),
        )
        .replace("max_staleness = \"5m\"", "max_staleness = \"4s\"");
    assert!(bcfg.text.contains("/v1/revocation"));
    let signer = SignerProcess::start(&env, &signer_cfg);
    let broker = Broker::start(&env, &bcfg);
    Stack {
        env,
        up,
        _fake: fake,
        signer,
        broker,
    }
}

fn request_args(s: &Stack, proposal: &str, mtls: bool) -> Vec<String> {
    let mut a = vec![
        "--signer".to_string(),
        s.signer.url(),
        "--ca".into(),
        s.env.path("tls/ca.pem").display().to_string(),
        "--proposal".into(),
        repo().join("certs").join(proposal).display().to_string(),
    ];
    if mtls {
        a.extend([
            "--client-cert".into(),
            s.env.path("tls/agent.pem").display().to_string(),
            "--client-key".into(),
            s.env.path("tls/agent.key").display().to_string(),
        ]);
    } else {
        a.extend(["--token".into(), SIGNER_TOKEN.into()]);
    }
    a
}

/// `seb request`: (exit code, the certificate or nothing, stderr).
fn request(s: &Stack, proposal: &str, mtls: bool) -> (i32, String, String) {
    let mut args = vec!["request".to_string()];
    args.extend(request_args(s, proposal, mtls));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = seb(&args);
    (code, out.trim().to_string(), err)
}

fn claims(token: &str) -> Value {
    use base64::Engine;
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

async fn refund(c: &reqwest::Client, s: &Stack, cert: &str, amount: u32) -> Reply {
    let auth = format!("Bearer {cert}");
    let body = format!(r#"{{"amount": {amount}, "currency": "EUR", "order": "ord_77"}}"#);
    send(
        c,
        "POST",
        &s.broker.url("/v1/refunds"),
        &[JSON, ("authorization", &auth)],
        body.as_bytes(),
    )
    .await
}

/// A change sent without any certificate; the status it got.
async fn uncertified(c: &reqwest::Client, s: &Stack, path: &str, amount: u32) -> u16 {
    let body = format!(r#"{{"amount": {amount}, "currency": "EUR", "order": "ord_77"}}"#);
    let r = send(c, "POST", &s.broker.url(path), &[JSON], body.as_bytes()).await;
    r.status
}

fn posts(up: &Upstream) -> usize {
    up.requests()
        .iter()
        .filter(|r| r["method"] == "POST")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_signer_broker_upstream_and_the_signer_stopped() {
    let mut s = stack();
    let mtls = client(&s.env, true);

    // The signer issues under refunds-under-100, to the agent its client certificate names,
    // bound to that certificate.
    let (code, cert, err) = request(&s, "refund.json", true);
    assert_eq!(code, 0, "{err}");
    let c = claims(&cert);
    assert_eq!(c["sub"], "spiffe://seb.local/agent/demo");
    assert_eq!(c["seb"]["policy"], "refunds-under-100");
    assert_eq!(c["cnf"]["x5t#S256"], s.env.agent_x5t.as_str());
    assert_eq!(c["exp"].as_i64().unwrap() - c["nbf"].as_i64().unwrap(), 300);

    // The broker admits it once; the upstream sees exactly that request.
    let r = refund(&mtls, &s, &cert, 42).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(posts(&s.up), 1);
    // Refused by the broker: the same certificate again, and a body beyond its bound.
    assert_eq!(refund(&mtls, &s, &cert, 42).await.code(), "replayed");
    let (_, cert2, _) = request(&s, "refund.json", true);
    let r = refund(&mtls, &s, &cert2, 150).await;
    assert_eq!(
        (r.status, r.code()),
        (403, "contract_mismatch"),
        "{:?}",
        r.body
    );
    // Bound to the agent's client certificate: without mTLS it is refused.
    let (_, cert3, _) = request(&s, "refund.json", true);
    let r = refund(&client(&s.env, false), &s, &cert3, 42).await;
    assert_eq!(r.code(), "binding_mismatch", "{:?}", r.body);
    // Refused by the signer: no policy permits a refund bound of 5000; nothing reaches the broker.
    let (code, out, err) = request(&s, "refund-too-large.json", true);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.contains("not_permitted") && err.contains("refunds-under-100"),
        "{err}"
    );
    assert_eq!(posts(&s.up), 1);

    // A token-authenticated agent: named by its token, not bound to a client certificate.
    let (code, cert, err) = request(&s, "refund.json", false);
    assert_eq!(code, 0, "{err}");
    let c = claims(&cert);
    assert_eq!(c["sub"], "agent:token-bot");
    assert!(c.get("cnf").is_none());
    assert_eq!(
        refund(&client(&s.env, false), &s, &cert, 10).await.status,
        200
    );
    assert_eq!(posts(&s.up), 2);

    // `seb exec` puts the certificate in SEB_CERTIFICATE for the command it runs.
    let mut args = vec!["exec".to_string()];
    args.extend(request_args(&s, "refund.json", true));
    args.extend(["--".into(), "sh".into(), "-c".into(), format!(
        "curl -sS -o /dev/null -w '%{{http_code}}' --cacert {ca} --cert {pem} --key {key} -H 'content-type: application/json' \
         -H \"authorization: Bearer $SEB_CERTIFICATE\" -d '{{\"amount\": 7, \"currency\": \"USD\", \"order\": \"ord_9\"}}' {url}",
        ca = s.env.path("tls/ca.pem").display(), pem = s.env.path("tls/agent.pem").display(),
        key = s.env.path("tls/agent.key").display(), url = s.broker.url("/v1/refunds"))]);
    let out = Command::new(seb_bin()).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert_eq!(posts(&s.up), 3);

    // Revoked at the signer: pushed to the broker before `seb signer revoke` returns.
    let (_, cert, _) = request(&s, "refund.json", true);
    let jti = claims(&cert)["jti"].as_str().unwrap().to_string();
    let (code, out, err) = seb(&[
        "signer",
        "revoke",
        "--admin",
        &s.signer.admin(),
        "--jti",
        &jti,
        "--reason",
        "test",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let r = refund(&mtls, &s, &cert, 42).await;
    assert_eq!(r.code(), "revoked", "{:?}", r.body);

    // The signer stops. No certificate can be had; a mutation without one is refused; reads
    // are served; and a certificate obtained before is refused once the broker's copy of the
    // revocation document is older than max_staleness (no heartbeat comes any more).
    let (_, held, _) = request(&s, "refund.json", true);
    s.signer.stop();
    let (code, _, err) = request(&s, "refund.json", true);
    assert_eq!(code, 1);
    assert!(
        err.contains("could not connect")
            || err.contains("Connection refused")
            || err.contains("connect"),
        "{err}"
    );
    let r = send(
        &mtls,
        "POST",
        &s.broker.url("/v1/refunds"),
        &[JSON],
        br#"{"amount":1}"#,
    )
    .await;
    assert_eq!(r.code(), "cert_missing");
    let r = send(
        &mtls,
        "GET",
        &s.broker.url("/v1/refunds/r1"),
        &[("x-seb-agent-token", AGENT_TOKEN)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "reads go on without the signer");
    // The broker says it is not ready once its copy is stale; then the held certificate is refused.
    let deadline = Instant::now() + Duration::from_secs(15);
    while reqwest::get(s.broker.admin_url("/readyz"))
        .await
        .unwrap()
        .status()
        == 200
    {
        assert!(
            Instant::now() < deadline,
            "the revocation data never went stale"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = refund(&mtls, &s, &held, 5).await;
    assert_eq!(r.code(), "revocation_data_stale", "{:?}", r.body);
    assert_eq!(posts(&s.up), 3);
    let r = send(
        &mtls,
        "GET",
        &s.broker.url("/v1/refunds/r2"),
        &[("x-seb-agent-token", AGENT_TOKEN)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "reads go on with stale revocation data");

    // Both logs verify; the broker's records name the signer's policy and the proposal.
    assert_audit_verifies(&s.env);
    let key = s.env.path("signer-log.pub");
    let log = s.env.path("signer-audit/audit.jsonl");
    let (code, out, err) = seb(&[
        "audit",
        "verify",
        "--key",
        key.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let admitted: Vec<Value> = audit_records(&s.env)
        .into_iter()
        .filter(|r| {
            r["kind"] == "decision" && r["decision"] == "allow" && r["request"]["method"] == "POST"
        })
        .collect();
    assert_eq!(admitted.len(), 3);
    assert!(admitted
        .iter()
        .all(|r| r["policy"] == "refunds-under-100" && r["evidence"]["proposal"].is_string()));
}

/// Break-glass through the real path: `seb request --wait` keeps asking while the signer says
/// approvals are missing (progress on stderr); two approvers post theirs with `seb approve
/// --post`; the certificate comes, marked break_glass, and the broker admits it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_waits_for_two_approvers() {
    let s = stack();
    let mut args = vec!["request".to_string()];
    args.extend(request_args(&s, "break-glass.json", true));
    args.extend(["--wait".into(), "30s".into()]);
    let waiting = Command::new(seb_bin())
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let approve = |who: &str| {
        let key = s.env.path(&format!("approver-{who}.key"));
        seb(&[
            "approve",
            "--key",
            key.to_str().unwrap(),
            "--name",
            who,
            "--proposal",
            repo().join("certs/break-glass.json").to_str().unwrap(),
            "--post",
            &s.signer.url(),
            "--ca",
            s.env.path("tls/ca.pem").to_str().unwrap(),
        ])
    };
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (code, _, err) = approve("alice");
    assert_eq!(code, 0, "{err}");
    // An approval by a key no approver has is refused where it is posted.
    let (code, _, err) = approve("mallory");
    assert_ne!(code, 0);
    assert!(err.contains("no configured approver"), "{err}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (code, _, err) = approve("bob");
    assert_eq!(code, 0, "{err}");
    let out = tokio::task::spawn_blocking(move || waiting.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("waiting for approvals"), "{stderr}");
    let cert = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let c = claims(&cert);
    assert_eq!(c["seb"]["policy"], "break-glass");
    assert_eq!(c["seb"]["evidence"]["break_glass"], true);
    assert_eq!(
        c["seb"]["evidence"]["approvers"],
        serde_json::json!(["alice", "bob"])
    );
    assert!(c["exp"].as_i64().unwrap() - c["nbf"].as_i64().unwrap() <= 120);
    let auth = format!("Bearer {cert}");
    let mtls = client(&s.env, true);
    let url = s.broker.url("/v1/accounts/acct_7/unfreeze");
    let r = send(&mtls, "POST", &url, &[("authorization", &auth)], b"").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = send(&mtls, "POST", &url, &[("authorization", &auth)], b"").await;
    assert_eq!(r.code(), "replayed");
    // Listed on its own in both logs.
    let broker_log = s.env.path("audit.jsonl");
    let (_, out, _) = seb(&[
        "audit",
        "query",
        broker_log.to_str().unwrap(),
        "--break-glass",
        "--kind",
        "decision",
        "--decision",
        "allow",
    ]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let signer_log = s.env.path("signer-audit/audit.jsonl");
    let (_, out, _) = seb(&[
        "audit",
        "query",
        signer_log.to_str().unwrap(),
        "--break-glass",
    ]);
    assert_eq!(out.lines().count(), 1, "{out}");
}

/// Who may ask: a wrong token, no credential, a client certificate from a CA the signer does
/// not trust, and a body over the limit are all refused before any policy is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signer_refuses_callers_it_cannot_name() {
    let s = stack();
    let url = format!("{}/v1/certificates", s.signer.url());
    let body = std::fs::read(repo().join("certs/refund.json")).unwrap();
    let plain = client(&s.env, false);
    let r = send(
        &plain,
        "POST",
        &url,
        &[JSON, ("authorization", "Bearer not-a-token")],
        &body,
    )
    .await;
    assert_eq!((r.status, r.code()), (401, "agent_unknown"));
    let r = send(&plain, "POST", &url, &[JSON], &body).await;
    assert_eq!((r.status, r.code()), (401, "agent_unknown"));
    let r = send(
        &plain,
        "POST",
        &url,
        &[JSON, ("authorization", &format!("Bearer {SIGNER_TOKEN}"))],
        &vec![b' '; 300 * 1024],
    )
    .await;
    assert_eq!((r.status, r.code()), (400, "proposal_malformed"));
    // A proposal naming its own subject is refused, not believed.
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    v["proposal"]["sub"] = "agent:root".into();
    let r = send(
        &plain,
        "POST",
        &url,
        &[JSON, ("authorization", &format!("Bearer {SIGNER_TOKEN}"))],
        v.to_string().as_bytes(),
    )
    .await;
    assert_eq!((r.status, r.code()), (400, "proposal_malformed"));
    // An agent certificate from another CA: the TLS handshake fails.
    let other = seb::devcerts::write_dev_certs(&s.env.path("other-ca"), "agent:intruder").unwrap();
    let mut pem = std::fs::read(other.dir.join("agent.pem")).unwrap();
    pem.extend(std::fs::read(other.dir.join("agent.key")).unwrap());
    let intruder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(s.env.path("tls/ca.pem")).unwrap())
                .unwrap(),
        )
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    assert!(
        intruder.post(&url).body(body.clone()).send().await.is_err(),
        "a foreign client certificate got through"
    );
    assert_eq!(posts(&s.up), 0);
}

/// The rollout report reads the signer's own log: a change the agent sent without the
/// certificate it was issued is out of contract, one the signer refused is the policy's, one
/// nobody asked for is unasked; the same broker log without the signer's log calls all three
/// unasked. Shadow mode, so every change reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_report_reads_the_signers_log() {
    let s = stack_in_mode("shadow");
    let mtls = client(&s.env, true);
    let since = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();

    let (code, cert, err) = request(&s, "refund.json", true);
    assert_eq!(code, 0, "{err}");
    // Issued, then sent without its certificate.
    assert_eq!(uncertified(&mtls, &s, "/v1/refunds", 50).await, 200);
    // Refused by the signer (no policy permits a bound of 5000), then sent anyway.
    let (code, _, _) = request(&s, "refund-too-large.json", true);
    assert_ne!(code, 0);
    assert_eq!(uncertified(&mtls, &s, "/v1/refunds", 4000).await, 200);
    // Never proposed.
    assert_eq!(uncertified(&mtls, &s, "/v1/payouts", 1).await, 200);
    // Certified and sent with its certificate.
    assert_eq!(refund(&mtls, &s, &cert, 50).await.status, 200);
    assert_eq!(posts(&s.up), 4, "shadow mode forwards every change");

    let until =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(2))
            .to_string();
    let broker_log = s.env.path("audit.jsonl").display().to_string();
    let signer_log = s.env.path("signer-audit/audit.jsonl").display().to_string();
    let report = |extra: &[&str]| {
        let mut args = vec![
            "audit",
            "report",
            &broker_log,
            "--since",
            &since,
            "--until",
            &until,
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = seb(&args);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        v["total"].clone()
    };
    let with = report(&["--signer-log", &signer_log]);
    assert_eq!(with["changes"], 4, "{with}");
    assert_eq!(with["would_block"], 3, "{with}");
    assert_eq!(
        with["causes"],
        serde_json::json!({"unasked": 1, "out_of_contract": 1, "policy": 1, "other": 0}),
        "{with}"
    );
    let without = report(&[]);
    assert_eq!(without["causes"]["unasked"], 3, "{without}");

    // The signer's log in the broker logs' place is refused, not counted as changes.
    let (code, _, err) = seb(&[
        "audit",
        "report",
        &broker_log,
        &signer_log,
        "--since",
        &since,
        "--until",
        &until,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--signer-log"), "{err}");
}
