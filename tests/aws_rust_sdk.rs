//! The official Rust AWS SDK (`aws-sdk-dynamodb`), unmodified, as the agent of the aws target
//! (issue 3: "the aws CLI, boto3 and the Rust AWS SDK work unchanged"). The SDK is configured
//! the documented way (deploy/aws/README.md): the broker as endpoint, the dev CA as trust
//! root, the placeholder access key id and secret, the certificate as session token, one
//! attempt. Upstream is moto in server mode with auth on (so it verifies the broker's SigV4
//! signatures), and moto's state, read directly with the test's admin credentials, is the
//! evidence of what ran.
//!
//! Needs python3 with `moto[server]` and `boto3` (tests/requirements.txt).

mod common;

use aws_sdk_dynamodb as ddb;
use aws_smithy_http_client::tls;
use common::moto::Moto;
use common::*;
use ddb::config::retry::RetryConfig;
use ddb::config::timeout::TimeoutConfig;
use ddb::config::{BehaviorVersion, Credentials, Region, SharedHttpClient};
use ddb::error::{DisplayErrorContext, ProvideErrorMetadata};
use ddb::types::{AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

const REGION: &str = "us-east-1";
const TABLE: &str = "sdk-orders";
/// The agent's access key id and secret, as deploy/aws/README.md documents them.
const PLACEHOLDER_AKID: &str = "SEBAGENTPLACEHOLDER";
const PLACEHOLDER_SECRET: &str = "placeholder-not-a-secret";

/// The broker with one aws target in front of moto, STS identity (as tests/aws_e2e.rs).
fn start_broker(env: &Env, moto: &Moto) -> Broker {
    let config = broker_config(|listen| {
        format!(
            r#"
[[targets]]
name = "aws"
kind = "aws"
listen = "127.0.0.1:{listen}"
[targets.aws]
endpoint = "{endpoint}"
services = ["dynamodb", "sts"]
regions = ["{REGION}"]
reads = true
identity = "sts"
execution_role_arn = {exec:?}
read_role_arn = {read:?}
"#,
            endpoint = moto.endpoint(),
            exec = moto.setup["seb_exec_arn"].as_str().unwrap(),
            read = moto.setup["seb_read_arn"].as_str().unwrap(),
        )
    });
    let (akid, secret) = moto.creds("broker");
    Broker::start_with_env(
        env,
        &config,
        vec![
            ("AWS_ACCESS_KEY_ID".into(), akid),
            ("AWS_SECRET_ACCESS_KEY".into(), secret),
        ],
    )
}

/// A certificate for one DynamoDB PutItem of exactly `item` (string attributes) into TABLE,
/// valid now for 5 minutes, single use.
fn put_item_cert(env: &Env, item: &[(&str, &str)]) -> String {
    let mut constraints = json!({"/TableName": {"eq": TABLE}});
    for (name, value) in item {
        constraints[format!("/Item/{name}/S")] = json!({"eq": value});
    }
    let t = now();
    let p = json!({
        "iss": "signer", "sub": "agent:oncall", "jti": random_jti(), "iat": t, "nbf": t, "exp": t + 300,
        "aud": "aws",
        "seb": {"v": 1, "action": "remediate", "policy": "oncall-v1", "policy_epoch": 1, "revocation_epoch": 1,
                "target": "aws",
                "request": {"service": "dynamodb", "region": REGION, "operation": "PutItem", "resource": TABLE},
                "body": {"constraints": constraints, "others": "deny"},
                "evidence": {"ticket": "INC-9"}}
    });
    seb::cert::jws::sign(&env.signer, seb::cert::CERT_TYP, &env.kid, &p)
}

/// The SDK's own hyper/rustls HTTPS client (ring), trusting only the dev CA: the Rust SDK's
/// counterpart of `AWS_CA_BUNDLE`. It speaks plain http too (for moto).
fn http_client(env: &Env) -> SharedHttpClient {
    let ca = std::fs::read(env.path("tls/ca.pem")).unwrap();
    let trust = tls::TrustStore::empty()
        .with_native_roots(false)
        .with_pem_certificate(ca);
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .tls_context(
            tls::TlsContext::builder()
                .with_trust_store(trust)
                .build()
                .unwrap(),
        )
        .build_https()
}

/// A stock DynamoDB client: static credentials, an endpoint, a region, one attempt.
fn dynamodb(http: &SharedHttpClient, endpoint: &str, creds: Credentials) -> ddb::Client {
    let conf = ddb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .http_client(http.clone())
        // deploy/aws/README.md: a retry after a refusal would spend the certificate again.
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(20))
                .build(),
        )
        .build();
    ddb::Client::from_conf(conf)
}

/// The agent: the SDK pointed at the broker, the certificate as its session token.
fn agent(http: &SharedHttpClient, broker: &Broker, cert: &str) -> ddb::Client {
    let creds = Credentials::new(
        PLACEHOLDER_AKID,
        PLACEHOLDER_SECRET,
        Some(cert.to_string()),
        None,
        "seb-certificate",
    );
    dynamodb(http, &format!("https://localhost:{}", broker.listen), creds)
}

fn item(attrs: &[(&str, &str)]) -> HashMap<String, AttributeValue> {
    attrs
        .iter()
        .map(|(k, v)| (k.to_string(), AttributeValue::S(v.to_string())))
        .collect()
}

async fn put(client: &ddb::Client, attrs: &[(&str, &str)]) -> Result<(), String> {
    match client
        .put_item()
        .table_name(TABLE)
        .set_item(Some(item(attrs)))
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => {
            // The refusal must reach the SDK's own error metadata, as the CLI prints it.
            let (code, message) = (e.code().unwrap_or(""), e.message().unwrap_or(""));
            Err(format!("{code}: {message} ({})", DisplayErrorContext(&e)))
        }
    }
}

fn assert_refused(r: Result<(), String>, reason: &str, what: &str) {
    let err = r.err().unwrap_or_else(|| panic!("{what}: admitted"));
    // DynamoDB's json dialect names the code AccessDeniedException.
    assert!(
        err.starts_with(&format!("AccessDeniedException: seb: {reason}: ")),
        "{what}: expected AccessDeniedException with seb: {reason}, got {err}"
    );
}

/// moto's copy of the item with id `id` (string attributes), read directly as admin.
async fn stored(admin: &ddb::Client, id: &str) -> Option<HashMap<String, String>> {
    let out = admin
        .get_item()
        .table_name(TABLE)
        .key("id", AttributeValue::S(id.into()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| DisplayErrorContext(e).to_string())
        .expect("moto GetItem");
    out.item.map(|i| {
        i.into_iter()
            .map(|(k, v)| (k, v.as_s().cloned().unwrap_or_default()))
            .collect()
    })
}

fn strings(attrs: &[(&str, &str)]) -> HashMap<String, String> {
    attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_sdk_unmodified_is_an_agent() {
    assert_eq!(
        PLACEHOLDER_AKID,
        seb::targets::aws::PLACEHOLDER_ACCESS_KEY_ID,
        "the documented placeholder"
    );
    let env = Env::new();
    let moto = Moto::start(&env);
    let broker = start_broker(&env, &moto);
    let http = http_client(&env);

    // Setup, directly against moto (not through the broker), as the fixture's admin.
    let (a, s) = moto.creds("admin");
    let admin = dynamodb(
        &http,
        &moto.endpoint(),
        Credentials::new(a, s, None, None, "moto-admin"),
    );
    admin
        .create_table()
        .table_name(TABLE)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ddb::types::ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .map_err(|e| DisplayErrorContext(e).to_string())
        .expect("CreateTable on moto");

    let order = [("id", "o-1"), ("status", "open")];

    // (1) A certificate for exactly this item admits it, and moto has it.
    let first = put_item_cert(&env, &order);
    let r = put(&agent(&http, &broker, &first), &order).await;
    assert!(r.is_ok(), "certified PutItem: {r:?}");
    assert_eq!(stored(&admin, "o-1").await, Some(strings(&order)));

    // (2) Another attribute value under a fresh certificate for the original one: refused,
    // and the changed item never reaches moto. Once with a different key (a new item),
    // once with a different non-key value (the stored item must stay as it was).
    let other_id = [("id", "o-2"), ("status", "open")];
    let r = put(
        &agent(&http, &broker, &put_item_cert(&env, &order)),
        &other_id,
    )
    .await;
    assert_refused(r, "contract_mismatch", "PutItem of another id");
    assert_eq!(stored(&admin, "o-2").await, None, "a refused item stored");
    let closed = [("id", "o-1"), ("status", "closed")];
    let r = put(
        &agent(&http, &broker, &put_item_cert(&env, &order)),
        &closed,
    )
    .await;
    assert_refused(r, "contract_mismatch", "PutItem of another status");
    assert_eq!(
        stored(&admin, "o-1").await,
        Some(strings(&order)),
        "a refused change reached moto"
    );

    // (3) The certificate from (1) again: refused as replayed. The item is deleted directly
    // in moto first, so a replay that ran would show.
    admin
        .delete_item()
        .table_name(TABLE)
        .key("id", AttributeValue::S("o-1".into()))
        .send()
        .await
        .map_err(|e| DisplayErrorContext(e).to_string())
        .expect("DeleteItem on moto");
    let r = put(&agent(&http, &broker, &first), &order).await;
    assert_refused(r, "replayed", "replay of the first certificate");
    assert_eq!(stored(&admin, "o-1").await, None, "a replay ran");

    // One admitted PutItem in the audit log, and the log verifies.
    let admitted = audit_records(&env)
        .into_iter()
        .filter(|r| {
            r["kind"] == "decision"
                && r["decision"] == "allow"
                && r["request"]["operation"] == "PutItem"
        })
        .count();
    assert_eq!(admitted, 1);
    assert_audit_verifies(&env);
}
