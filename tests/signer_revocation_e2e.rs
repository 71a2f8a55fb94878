//! Revocation from the signer to brokers, measured: `POST /v1/revoke` on the signer's admin
//! port (what `seb signer revoke` sends) until a broker refuses the certificate as `revoked`,
//! for a broker the signer pushes to and for one that only polls (every second). The figures
//! are printed, not asserted: a timed assertion would fail on a busy machine and prove
//! nothing on an idle one. What is asserted is that every revocation arrives.

mod common;

use common::signer::*;
use common::*;
use std::time::{Duration, Instant};

const ROUNDS: usize = 30;

/// A body the certificate does not allow: refused as `contract_mismatch` while the
/// certificate is good (no use spent), as `revoked` once the broker knows.
async fn probe(c: &reqwest::Client, broker: &Broker, cert: &str) -> String {
    let auth = format!("Bearer {cert}");
    send(
        c,
        "POST",
        &broker.url("/v1/refunds"),
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
        br#"{"amount": 100000, "currency": "EUR", "order": "ord_1"}"#,
    )
    .await
    .code()
    .to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_pushed_and_polling_brokers() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let fake = EvidenceFake::start(env.dir.path());
    let pushed_cfg = env.config(up.port, "");
    let mut polling_cfg = env.config(up.port, "");
    let scfg = signer_config(
        &env,
        &fake.url(),
        &fake.url(),
        &repo().join("policies"),
        &format!(
            "[revocation]\nheartbeat = \"30s\"\npush = [\"http://127.0.0.1:{}/v1/revocation\"]\n",
            pushed_cfg.admin
        ),
    );
    let signer = SignerProcess::start(&env, &scfg);
    let from_signer = |text: &str| {
        text.replace(
            "file = \"revocation.jws\"",
            &format!(
                "url = \"{}/v1/revocation\"\nca = \"tls/ca.pem\"",
                signer.url()
            ),
        )
    };
    let mut pushed_cfg = pushed_cfg;
    pushed_cfg.text = from_signer(&pushed_cfg.text);
    polling_cfg.text = from_signer(&polling_cfg.text)
        .replace("path = \"audit.jsonl\"", "path = \"polling/audit.jsonl\"");
    let pushed = Broker::start(&env, &pushed_cfg);
    let polling = Broker::start(&env, &polling_cfg);
    let c = client(&env, false);
    let admin = reqwest::Client::new();
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
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
        let cert = out.trim().to_string();
        let jti = {
            use base64::Engine;
            let p = cert.split('.').nth(1).unwrap();
            let v: serde_json::Value = serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .unwrap(),
            )
            .unwrap();
            v["jti"].as_str().unwrap().to_string()
        };
        // Both brokers hold the epoch the certificate was issued at before the clock starts.
        for b in [&pushed, &polling] {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let code = probe(&c, b, &cert).await;
                if code == "contract_mismatch" {
                    break;
                }
                assert!(Instant::now() < deadline, "round {round}: {code}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let start = Instant::now();
        let r = admin
            .post(format!("http://{}/v1/revoke", signer.admin()))
            .body(format!(
                r#"{{"jti": "{jti}", "reason": "propagation test"}}"#
            ))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let mut done = [None, None];
        while done.iter().any(Option::is_none) {
            for (i, b) in [&pushed, &polling].into_iter().enumerate() {
                if done[i].is_none() && probe(&c, b, &cert).await == "revoked" {
                    done[i] = Some(start.elapsed());
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "round {round}: not revoked everywhere"
            );
        }
        for i in 0..2 {
            times[i].push(done[i].unwrap());
        }
    }
    for (name, t) in ["push", "poll (1s interval)"].iter().zip(times.iter_mut()) {
        t.sort();
        eprintln!(
            "revoke -> refusal, {name}: p50 {:?}, p99 {:?}, max {:?} over {ROUNDS} revocations",
            percentile(t, 0.5),
            percentile(t, 0.99),
            t[t.len() - 1]
        );
    }
    assert_eq!(up.requests().len(), 0, "no probe was admitted");
}
