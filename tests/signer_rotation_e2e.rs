//! Key rotation without restarting the broker: the broker trusts the signer by its JWKS URL
//! (polled, pinned to the issuer, withdrawn when stale); the signer publishes a new key before
//! it signs with it, keeps a retired key published while its certificates live, and drops it
//! after. The broker process is the same one throughout.

mod common;

use common::signer::*;
use common::*;
use seb::cert::keys;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn keys_section(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(file, status)| {
            format!("[[keys]]\nprivate_key = \"{file}\"\nstatus = \"{status}\"\n")
        })
        .collect()
}

/// The signer config with its `[[keys]]` replaced.
fn with_keys(text: &str, entries: &[(&str, &str)]) -> String {
    text.replace(
        "[[keys]]\nprivate_key = \"signer.key\"\nstatus = \"active\"\n",
        &keys_section(entries),
    )
}

fn kid_of(token: &str) -> String {
    use base64::Engine;
    let h = token.split('.').next().unwrap();
    let v: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .unwrap(),
    )
    .unwrap();
    v["kid"].as_str().unwrap().to_string()
}

fn request(env: &Env, signer: &SignerProcess) -> String {
    let (code, out, err) = seb(&[
        "request",
        "--signer",
        &signer.url(),
        "--ca",
        env.path("tls/ca.pem").to_str().unwrap(),
        "--token",
        SIGNER_TOKEN,
        "--proposal",
        repo().join("certs/refund.json").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    out.trim().to_string()
}

async fn refund(c: &reqwest::Client, broker: &Broker, cert: &str) -> Reply {
    let auth = format!("Bearer {cert}");
    send(
        c,
        "POST",
        &broker.url("/v1/refunds"),
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
        br#"{"amount": 5, "currency": "EUR", "order": "ord_1"}"#,
    )
    .await
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_without_restarting_the_broker() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let fake = EvidenceFake::start(env.dir.path());
    let next = keys::generate();
    keys::write_keypair(&env.path("signer-next"), &next).unwrap();
    let next_kid = keys::key_id(&next.verifying_key());
    let mut scfg = signer_config(
        &env,
        &fake.url(),
        &fake.url(),
        &repo().join("policies"),
        "[revocation]\nheartbeat = \"1s\"\n",
    );
    let base = scfg.text.clone();
    // Before the rotation: the current key signs, the next one is already published.
    scfg.text = with_keys(
        &base,
        &[("signer.key", "active"), ("signer-next.key", "next")],
    );
    let mut signer = SignerProcess::start(&env, &scfg);
    let jwks = send(
        &client(&env, false),
        "GET",
        &format!("{}/.well-known/jwks.json", signer.url()),
        &[],
        b"",
    )
    .await
    .body;
    let published: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(published, [env.kid.as_str(), next_kid.as_str()]);

    // The broker knows the signer only by its JWKS URL.
    let mut bcfg = env.config(up.port, "");
    bcfg.text = bcfg
        .text
        .replace(
            "public_key = \"signer.pub\"",
            &format!("jwks_url = \"{}/.well-known/jwks.json\"\njwks_ca = \"tls/ca.pem\"\njwks_refresh = \"1s\"\njwks_max_staleness = \"3s\"", signer.url()),
        )
        .replace("file = \"revocation.jws\"", &format!("url = \"{}/v1/revocation\"\nca = \"tls/ca.pem\"", signer.url()));
    assert!(bcfg.text.contains("jwks_url"));
    let broker = Broker::start(&env, &bcfg);
    let c = client(&env, false);

    let old = request(&env, &signer);
    assert_eq!(kid_of(&old), env.kid);
    let old_unused = request(&env, &signer);
    assert_eq!(refund(&c, &broker, &old).await.status, 200);

    // Pinned to its issuer: a published key signing for another `iss` is refused.
    let t = now();
    let forged = seb::cert::jws::sign(
        &next,
        seb::cert::CERT_TYP,
        &next_kid,
        &json!({
        "iss": "another-signer", "sub": "agent:x", "jti": random_jti(), "iat": t, "nbf": t, "exp": t + 60,
        "seb": {"v": 1, "action": "refund", "policy": "p", "policy_epoch": 1, "revocation_epoch": 1, "target": "http",
                "request": {"upstream": "payments", "method": "POST", "path": "/v1/refunds"},
                "body": {"constraints": {"/amount": {"max": 100}}, "others": "allow"}}}),
    );
    assert_eq!(refund(&c, &broker, &forged).await.code(), "unknown_issuer");

    // Rotation: the next key becomes active, the old one is retired but still published. Only
    // the signer restarts.
    signer.stop();
    std::fs::write(
        &signer.config,
        with_keys(
            &base,
            &[("signer.key", "retired"), ("signer-next.key", "active")],
        ),
    )
    .unwrap();
    signer.spawn(&env);
    let new = request(&env, &signer);
    assert_eq!(kid_of(&new), next_kid);
    assert_eq!(
        refund(&c, &broker, &new).await.status,
        200,
        "the new key was published before it signed"
    );
    assert_eq!(
        refund(&c, &broker, &old_unused).await.status,
        200,
        "a retired key's certificates live out their time"
    );

    // The retired key's last certificate has expired: it leaves the set, and the broker
    // stops trusting it within a refresh.
    let old_left = {
        signer.stop();
        std::fs::write(
            &signer.config,
            with_keys(
                &base,
                &[("signer.key", "active"), ("signer-next.key", "next")],
            ),
        )
        .unwrap();
        signer.spawn(&env);
        let t = request(&env, &signer);
        signer.stop();
        std::fs::write(
            &signer.config,
            with_keys(&base, &[("signer-next.key", "active")]),
        )
        .unwrap();
        signer.spawn(&env);
        t
    };
    assert_eq!(kid_of(&old_left), env.kid);
    // Until the broker's next refresh the key is still trusted: the certificate may be
    // admitted once in that window (it is single-use), never after.
    let admitted = std::cell::Cell::new(0);
    eventually("the dropped key is no longer trusted", async || {
        let r = refund(&c, &broker, &old_left).await;
        admitted.set(admitted.get() + usize::from(r.status == 200));
        r.code() == "unknown_issuer"
    })
    .await;
    let newer = request(&env, &signer);
    assert_eq!(refund(&c, &broker, &newer).await.status, 200);

    // The signer goes away: once the set is older than jwks_max_staleness it is withdrawn,
    // and even a certificate from the current key is refused.
    let held = request(&env, &signer);
    signer.stop();
    eventually("the stale set is withdrawn", async || {
        let r = refund(&c, &broker, &held).await;
        admitted.set(admitted.get() + usize::from(r.status == 200));
        r.code() == "unknown_issuer"
    })
    .await;
    assert!(admitted.get() <= 2);
    assert_eq!(posts(&up), 4 + admitted.get());
    assert_audit_verifies(&env);
}

fn posts(up: &Upstream) -> usize {
    up.requests()
        .iter()
        .filter(|r| r["method"] == "POST")
        .count()
}
