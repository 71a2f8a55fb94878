//! `POST /v1/prepare` (issue 21): an agent presents a certificate before using it and the
//! broker mints its STS session in the background, so the use waits only for what is not ready.
//! Real components: the `seb` binary, an AWS target with `identity = "sts"`, the recording
//! upstream as the AWS API and a second one standing for STS (AssumeRole answered after a
//! delay, each call recorded), reqwest as the agent sending DynamoDB calls as an SDK does.

mod common;

use common::*;
use serde_json::{json, Value};

const REGION: &str = "eu-west-1";
/// Long enough that a use sent right after its prepare finds the mint still in flight.
const STS_DELAY: f64 = 0.4;

struct World {
    env: Env,
    broker: Broker,
    sts: Upstream,
    upstream: Upstream,
    client: reqwest::Client,
}

fn world() -> World {
    let env = Env::new();
    let upstream = Upstream::start(env.dir.path());
    let sts = Upstream::start_sts(env.dir.path(), STS_DELAY);
    let (up, sp) = (upstream.port, sts.port);
    let cfg = broker_config(|listen| {
        format!(
            r#"
[[targets]]
name = "aws"
kind = "aws"
listen = "127.0.0.1:{listen}"
[targets.aws]
endpoint = "http://127.0.0.1:{up}"
sts_endpoint = "http://127.0.0.1:{sp}"
services = ["dynamodb"]
regions = ["{REGION}"]
identity = "sts"
execution_role_arn = "arn:aws:iam::123456789012:role/seb-exec"
"#
        )
    });
    let broker = Broker::start_with_env(
        &env,
        &cfg,
        vec![
            ("AWS_ACCESS_KEY_ID".into(), "AKIABROKERBASE".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "broker-base-secret".into()),
        ],
    );
    let client = client(&env, false);
    World {
        env,
        broker,
        sts,
        upstream,
        client,
    }
}

fn put_item_body(id: &str) -> Vec<u8> {
    json!({"TableName": "orders", "Item": {"id": {"S": id}}})
        .to_string()
        .into_bytes()
}

impl World {
    /// A single-use certificate for one PutItem with exactly `body`.
    fn cert(&self, jti: &str, body: &[u8], aud: &str) -> String {
        common::aws::put_item_cert(&self.env, body, REGION, aud, Some(jti))
    }

    async fn prepare(&self, cert: Option<&str>, body: &[u8]) -> (u16, String) {
        let mut r = self.client.post(self.broker.url("/v1/prepare"));
        if let Some(c) = cert {
            r = r.header("x-amz-security-token", c);
        }
        let resp = r.body(body.to_vec()).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// PutItem as an AWS SDK with AWS_SESSION_TOKEN set to the certificate sends it.
    async fn put(&self, cert: &str, body: &[u8]) -> (u16, String) {
        let mut r = self.client.post(self.broker.url("/"));
        for (k, v) in common::aws::dynamodb_headers("PutItem", REGION, Some(cert)) {
            r = r.header(k, v);
        }
        let resp = r.body(body.to_vec()).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// The AssumeRole calls STS has received for session `jti`.
    fn mints(&self, jti: &str) -> usize {
        self.sts
            .requests()
            .iter()
            .filter(|r| {
                r["body"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&format!("RoleSessionName={jti}&"))
            })
            .count()
    }

    /// The access key id the upstream request for `jti`'s item was signed with.
    fn signed_with(&self, item: &str) -> Vec<String> {
        self.upstream
            .requests()
            .iter()
            .filter(|r| r["body"].as_str().unwrap_or("").contains(item))
            .map(|r| {
                let auth = r["headers"]["authorization"].as_str().unwrap_or("");
                auth.split("Credential=")
                    .nth(1)
                    .and_then(|c| c.split('/').next())
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }
}

#[tokio::test]
async fn a_prepared_certificate_is_used_under_the_session_minted_for_it() {
    let w = world();
    let body = put_item_body("o-prepared");
    let cert = w.cert("prep-1", &body, "aws");
    let (status, answer) = w.prepare(Some(&cert), b"").await;
    assert_eq!(status, 202, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["prepared"], "prep-1");
    // The session is minted in the background, without the use.
    wait_for("the prepared session", || w.mints("prep-1") == 1);
    assert!(
        w.upstream.requests().is_empty(),
        "a prepare forwards nothing"
    );

    let (status, text) = w.put(&cert, &body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(w.mints("prep-1"), 1, "the use took the prepared session");
    assert_eq!(w.signed_with("o-prepared"), ["ASIAprep-1"]);
    // A prepare spends no use: the single use was this one, and there is no other.
    // (AWS's own statuses: a refusal an SDK reads is 403 AccessDenied.)
    let (status, text) = w.put(&cert, &body).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("seb: replayed"), "{text}");
    // No decision was written for the prepare; one allow for the use, one deny for the replay
    // (written behind the answer).
    wait_for("the replay's deny record", || {
        audit_records(&w.env)
            .iter()
            .any(|r| r["decision"] == "deny")
    });
    let decisions: Vec<(String, String)> = audit_records(&w.env)
        .iter()
        .filter(|r| r["kind"] == "decision")
        .map(|r| {
            (
                r["decision"].as_str().unwrap().to_string(),
                r["request"]["path"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        [
            ("allow".to_string(), "/".to_string()),
            ("deny".into(), "/".into())
        ]
    );
    assert_audit_verifies(&w.env);
}

#[tokio::test]
async fn a_use_right_after_its_prepare_waits_for_that_mint_not_a_second() {
    let w = world();
    let body = put_item_body("o-racing");
    let cert = w.cert("prep-2", &body, "aws");
    assert_eq!(w.prepare(Some(&cert), b"").await.0, 202);
    // Sent at once: the prepared mint is still waiting on STS.
    let (status, text) = w.put(&cert, &body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        w.mints("prep-2"),
        1,
        "one AssumeRole for the prepare and the use"
    );
    assert_eq!(w.signed_with("o-racing"), ["ASIAprep-2"]);

    // Without a prepare, the use mints its own session.
    let body = put_item_body("o-unprepared");
    let cert = w.cert("cold-1", &body, "aws");
    let (status, text) = w.put(&cert, &body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(w.mints("cold-1"), 1);
}

#[tokio::test]
async fn a_prepare_is_refused_as_the_use_would_be_and_mints_nothing() {
    let w = world();
    let body = put_item_body("o-refused");
    // Another target's certificate.
    let other = w.cert("prep-other", &body, "payments");
    let (status, text) = w.prepare(Some(&other), b"").await;
    assert!(status >= 400, "{status} {text}");
    assert!(text.contains("seb: "), "refused in the AWS dialect: {text}");
    // No certificate.
    let (status, text) = w.prepare(None, b"").await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("seb: cert_missing"), "{text}");
    // A body: a prepare says nothing but the certificate.
    let cert = w.cert("prep-body", &body, "aws");
    let (status, text) = w.prepare(Some(&cert), &body).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("seb: request_malformed"), "{text}");
    // A certificate signed by a key that is not the issuer's, under the issuer's key id.
    let t = now();
    let forged = seb::cert::jws::sign(
        &seb::cert::keys::generate(),
        seb::cert::CERT_TYP,
        &w.env.kid,
        &json!({"iss": "signer", "sub": "agent:oncall", "jti": "prep-forged", "iat": t, "nbf": t,
                "exp": t + 300, "aud": "aws",
                "seb": {"v": 1, "action": "write", "policy": "p-1", "policy_epoch": 1, "revocation_epoch": 1,
                        "target": "aws", "request": {"service": "dynamodb", "region": REGION, "operation": "PutItem"}}}),
    );
    let (status, text) = w.prepare(Some(&forged), b"").await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("seb: bad_signature"), "{text}");

    assert_eq!(w.sts.requests().len(), 0, "nothing was minted");
    // Deny records are written behind the answer.
    let denied = || -> Vec<Value> {
        audit_records(&w.env)
            .into_iter()
            .filter(|r| r["kind"] == "decision")
            .collect()
    };
    wait_for("four deny records", || denied().len() >= 4);
    let denied = denied();
    assert_eq!(denied.len(), 4, "{denied:#?}");
    assert!(denied
        .iter()
        .all(|r| r["decision"] == "deny" && r["request"]["path"] == "/v1/prepare"));
    // The refused prepare spent nothing: the certificate still works once.
    let (status, text) = w.put(&cert, &body).await;
    assert_eq!(status, 200, "{text}");
}
