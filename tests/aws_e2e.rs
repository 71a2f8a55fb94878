//! End to end for the aws target: moto in server mode as AWS (auth checks on, so it verifies
//! the broker's SigV4 signatures and IAM permissions), the `seb` binary, and the real `aws`
//! CLI and boto3 as agents. The central assertion: moto's state shows exactly the admitted
//! mutations, and none of the refused ones.
//!
//! Needs python3 with `moto[server]`, `boto3` and `awscli` (tests/requirements.txt).

mod common;

use common::moto::Moto;
use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

const REGION: &str = "us-east-1";
const AGENT_SECRET: &str = "agent-oncall-secret-for-reads";

#[derive(Clone, Copy)]
enum Mode {
    Sts,
    Static,
}

fn aws_config(moto: &Moto, mode: Mode, extra: &str) -> BrokerConfig {
    let identity = match mode {
        Mode::Sts => format!(
            "identity = \"sts\"\nexecution_role_arn = {:?}\nread_role_arn = {:?}",
            moto.setup["seb_exec_arn"].as_str().unwrap(),
            moto.setup["seb_read_arn"].as_str().unwrap()
        ),
        Mode::Static => "identity = \"static\"\nstatic_credentials = { access_key_id = { value_env = \"SEB_TEST_STATIC_AKID\" }, secret_access_key = { value_env = \"SEB_TEST_STATIC_SECRET\" } }".to_string(),
    };
    let endpoint = moto.endpoint();
    broker_config(|listen| {
        format!(
            r#"
[[targets]]
name = "aws"
kind = "aws"
listen = "127.0.0.1:{listen}"
[targets.aws]
endpoint = "{endpoint}"
services = ["s3", "ec2", "autoscaling", "ecs", "dynamodb", "sqs", "lambda", "sts", "secretsmanager", "ssm"]
regions = ["{REGION}"]
reads = true
{identity}
{extra}
[limits]
# Small on purpose: S3 uploads stream and must not be subject to it.
max_body_bytes = 1048576
"#
        )
    })
}

fn start_broker(env: &Env, moto: &Moto, mode: Mode, extra: &str) -> Broker {
    start_broker_with(env, moto, &aws_config(moto, mode, extra))
}

/// The broker with a config of the test's own, and the environment its secrets come from.
fn start_broker_with(env: &Env, moto: &Moto, cfg: &BrokerConfig) -> Broker {
    let (akid, secret) = moto.creds("broker");
    let (sakid, ssecret) = moto.creds("static");
    Broker::start_with_env(
        env,
        cfg,
        vec![
            ("AWS_ACCESS_KEY_ID".into(), akid),
            ("AWS_SECRET_ACCESS_KEY".into(), secret),
            ("SEB_TEST_STATIC_AKID".into(), sakid),
            ("SEB_TEST_STATIC_SECRET".into(), ssecret),
            ("SEB_TEST_AGENT_SECRET".into(), AGENT_SECRET.into()),
        ],
    )
}

/// An aws certificate valid now for 5 minutes.
fn aws_cert(env: &Env, request: Value, body: Value) -> String {
    aws_cert_with(env, request, body, None)
}

fn aws_cert_with(env: &Env, request: Value, body: Value, precondition: Option<Value>) -> String {
    let t = now();
    let mut p = json!({
        "iss": "signer", "sub": "agent:oncall", "jti": random_jti(), "iat": t, "nbf": t, "exp": t + 300,
        "aud": "aws",
        "seb": {"v": 1, "action": "remediate", "policy": "oncall-v1", "policy_epoch": 1, "revocation_epoch": 1,
                "target": "aws", "request": request, "evidence": {"ticket": "INC-9"}}
    });
    if !body.is_null() {
        p["seb"]["body"] = body;
    }
    if let Some(pre) = precondition {
        p["seb"]["precondition"] = pre;
    }
    seb::cert::jws::sign(&env.signer, seb::cert::CERT_TYP, &env.kid, &p)
}

fn req(service: &str, operation: &str, resource: Option<&str>) -> Value {
    let mut r = json!({"service": service, "region": REGION, "operation": operation});
    if let Some(res) = resource {
        r["resource"] = json!(res);
    }
    r
}

fn rule(constraints: Value) -> Value {
    json!({"constraints": constraints, "others": "deny"})
}

/// The agent's environment: the documented placeholders, the dev CA, and the certificate as
/// the session token. S3 uses path-style addressing (see deploy/aws/README.md).
fn agent_env(env: &Env, broker: &Broker, cert: Option<&str>) -> Vec<(String, String)> {
    let cfg = env.path("agent-aws-config");
    if !cfg.exists() {
        std::fs::write(
            &cfg,
            "[default]\nregion = us-east-1\nmax_attempts = 1\nretry_mode = standard\ns3 =\n    addressing_style = path\n",
        )
        .unwrap();
    }
    let mut v = vec![
        (
            "AWS_ENDPOINT_URL",
            format!("https://localhost:{}", broker.listen),
        ),
        (
            "AWS_CA_BUNDLE",
            env.path("tls/ca.pem").display().to_string(),
        ),
        (
            "AWS_ACCESS_KEY_ID",
            seb::targets::aws::PLACEHOLDER_ACCESS_KEY_ID.to_string(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY",
            "placeholder-not-a-secret".to_string(),
        ),
        ("AWS_CONFIG_FILE", cfg.display().to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".to_string()),
        ("AWS_DEFAULT_REGION", REGION.to_string()),
        ("AWS_PAGER", String::new()),
    ];
    if let Some(c) = cert {
        v.push(("AWS_SESSION_TOKEN", c.to_string()));
    }
    v.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

struct CliOut {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs the real `aws` CLI as the agent.
fn aws(env: &Env, broker: &Broker, cert: Option<&str>, args: &[&str]) -> CliOut {
    aws_with_key(env, broker, cert, None, args)
}

/// The aws CLI signing with an agent key instead of the placeholder.
fn aws_with_key(
    env: &Env,
    broker: &Broker,
    cert: Option<&str>,
    key: Option<(&str, &str)>,
    args: &[&str],
) -> CliOut {
    let mut vars = agent_env(env, broker, cert);
    if let Some((id, secret)) = key {
        vars.retain(|(k, _)| k != "AWS_ACCESS_KEY_ID" && k != "AWS_SECRET_ACCESS_KEY");
        vars.push(("AWS_ACCESS_KEY_ID".into(), id.into()));
        vars.push(("AWS_SECRET_ACCESS_KEY".into(), secret.into()));
    }
    let out = Command::new("aws")
        .args(args)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .envs(vars)
        .output()
        .expect("the aws CLI (pip install awscli)");
    CliOut {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn assert_refused(out: &CliOut, code: &str, what: &str) {
    assert!(!out.ok, "{what}: admitted\n{}", out.stdout);
    assert!(
        out.stderr.contains(&format!("seb: {code}")),
        "{what}: expected seb: {code}, got {}",
        out.stderr
    );
}

fn file(env: &Env, name: &str, bytes: &[u8]) -> PathBuf {
    let p = env.path(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn aws_mutations_are_admitted_exactly_as_certified() {
    let env = Env::new();
    let moto = Moto::start(&env);
    let broker = start_broker(&env, &moto, Mode::Sts, "");
    let before = moto.state();
    let run = |cert: Option<&str>, args: &[&str]| aws(&env, &broker, cert, args);
    // aws CLI v1 replaces the SQS endpoint with queue.amazonaws.com unless --endpoint-url is
    // given on the command line (awscli/customizations/overridesslcommonname.py), ignoring
    // AWS_ENDPOINT_URL; boto3 and CLI v2 honour the variable.
    let broker_url = format!("https://localhost:{}", broker.listen);
    let sqs = |cert: Option<&str>, args: &[&str]| {
        let mut a = vec!["--endpoint-url", broker_url.as_str(), "sqs"];
        a.extend_from_slice(args);
        aws(&env, &broker, cert, &a)
    };

    // --- s3 put-object: body bound by sha256 ---
    let body = b"quarterly numbers\n";
    let path = file(&env, "report.txt", body);
    let path = path.to_str().unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body));
    let put = |key: &str| {
        aws_cert(
            &env,
            req(
                "s3",
                "PutObject",
                Some(&format!("arn:aws:s3:::prod-artifacts/{key}")),
            ),
            json!({"sha256": sha}),
        )
    };
    let other = file(&env, "other.txt", b"something else");
    let out = run(
        Some(&put("reports/q3 final.txt")),
        &[
            "s3api",
            "put-object",
            "--bucket",
            "prod-artifacts",
            "--key",
            "reports/q3 final.txt",
            "--body",
            other.to_str().unwrap(),
        ],
    );
    assert_refused(&out, "contract_mismatch", "put-object with other bytes");
    let out = run(
        Some(&put("reports/q3 final.txt")),
        &[
            "s3api",
            "put-object",
            "--bucket",
            "prod-artifacts",
            "--key",
            "reports/elsewhere.txt",
            "--body",
            path,
        ],
    );
    assert_refused(&out, "contract_mismatch", "put-object to another key");
    let out = run(
        Some(&put("reports/q3 final.txt")),
        &[
            "s3api",
            "put-object",
            "--bucket",
            "prod-artifacts",
            "--key",
            "reports/q3 final.txt",
            "--body",
            path,
            "--acl",
            "public-read",
        ],
    );
    assert_refused(&out, "contract_mismatch", "put-object with an extra ACL");
    let out = run(
        Some(&put("reports/q3 final.txt")),
        &[
            "s3api",
            "delete-object",
            "--bucket",
            "prod-artifacts",
            "--key",
            "keep.txt",
        ],
    );
    assert_refused(
        &out,
        "contract_mismatch",
        "put-object certificate used for delete-object",
    );
    let out = run(
        None,
        &[
            "s3api",
            "put-object",
            "--bucket",
            "prod-artifacts",
            "--key",
            "x.txt",
            "--body",
            path,
        ],
    );
    assert_refused(&out, "cert_missing", "put-object without a certificate");
    let out = run(
        Some(&put("reports/q3 final.txt")),
        &[
            "s3api",
            "put-object",
            "--bucket",
            "prod-artifacts",
            "--key",
            "reports/q3 final.txt",
            "--body",
            path,
        ],
    );
    assert!(out.ok, "put-object admitted: {}", out.stderr);

    // --- s3 delete-object ---
    let del = || {
        aws_cert(
            &env,
            req(
                "s3",
                "DeleteObject",
                Some("arn:aws:s3:::prod-artifacts/old.txt"),
            ),
            rule(json!({"/Bucket": {"eq": "prod-artifacts"}, "/Key": {"eq": "old.txt"}})),
        )
    };
    let out = run(
        Some(&del()),
        &[
            "s3api",
            "delete-object",
            "--bucket",
            "prod-artifacts",
            "--key",
            "keep.txt",
        ],
    );
    assert_refused(&out, "contract_mismatch", "delete-object of another key");
    let out = run(
        Some(&del()),
        &[
            "s3api",
            "delete-object",
            "--bucket",
            "prod-artifacts",
            "--key",
            "old.txt",
            "--version-id",
            "v1",
        ],
    );
    assert_refused(
        &out,
        "contract_mismatch",
        "delete-object with an extra parameter",
    );
    let out = run(
        Some(&del()),
        &[
            "s3api",
            "delete-object",
            "--bucket",
            "prod-artifacts",
            "--key",
            "old.txt",
        ],
    );
    assert!(out.ok, "delete-object admitted: {}", out.stderr);

    // --- ec2 terminate-instances (query protocol, ec2 dialect) ---
    let ids: Vec<String> = moto.setup["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let (victim, bystander) = (&ids[0], &ids[1]);
    let term = || {
        aws_cert(
            &env,
            req("ec2", "TerminateInstances", Some(victim)),
            rule(json!({"/InstanceId.1": {"eq": victim}})),
        )
    };
    let out = run(
        Some(&term()),
        &["ec2", "terminate-instances", "--instance-ids", bystander],
    );
    assert_refused(&out, "contract_mismatch", "terminate another instance");
    let out = run(
        Some(&term()),
        &[
            "ec2",
            "terminate-instances",
            "--instance-ids",
            victim,
            bystander,
        ],
    );
    assert_refused(&out, "contract_mismatch", "terminate an extra instance");
    let out = run(
        Some(&term()),
        &["ec2", "stop-instances", "--instance-ids", victim],
    );
    assert_refused(
        &out,
        "contract_mismatch",
        "stop with a terminate certificate",
    );
    let out = run(
        Some(&term()),
        &["ec2", "terminate-instances", "--instance-ids", victim],
    );
    assert!(out.ok, "terminate-instances admitted: {}", out.stderr);

    // --- autoscaling set-desired-capacity (query protocol) ---
    let cap = || {
        aws_cert(
            &env,
            req("autoscaling", "SetDesiredCapacity", Some("web")),
            rule(json!({"/AutoScalingGroupName": {"eq": "web"}, "/DesiredCapacity": {"max": 4}})),
        )
    };
    let out = run(
        Some(&cap()),
        &[
            "autoscaling",
            "set-desired-capacity",
            "--auto-scaling-group-name",
            "web",
            "--desired-capacity",
            "9",
        ],
    );
    assert_refused(&out, "contract_mismatch", "desired capacity over the limit");
    let out = run(
        Some(&cap()),
        &[
            "autoscaling",
            "set-desired-capacity",
            "--auto-scaling-group-name",
            "batch",
            "--desired-capacity",
            "3",
        ],
    );
    assert_refused(&out, "contract_mismatch", "another group");
    let out = run(
        Some(&cap()),
        &[
            "autoscaling",
            "set-desired-capacity",
            "--auto-scaling-group-name",
            "web",
            "--desired-capacity",
            "3",
            "--honor-cooldown",
        ],
    );
    assert_refused(&out, "contract_mismatch", "extra HonorCooldown");
    let out = run(
        Some(&cap()),
        &[
            "autoscaling",
            "delete-auto-scaling-group",
            "--auto-scaling-group-name",
            "web",
        ],
    );
    assert_refused(
        &out,
        "contract_mismatch",
        "delete with a capacity certificate",
    );
    let out = run(
        Some(&cap()),
        &[
            "autoscaling",
            "set-desired-capacity",
            "--auto-scaling-group-name",
            "web",
            "--desired-capacity",
            "3",
        ],
    );
    assert!(out.ok, "set-desired-capacity admitted: {}", out.stderr);

    // --- ecs update-service (json 1.1) ---
    // With a drift check: the broker reads the service under the read role first.
    let upd_when = |count: u32| {
        aws_cert_with(
            &env,
            req("ecs", "UpdateService", Some("prod/api")),
            rule(
                json!({"/cluster": {"eq": "prod"}, "/service": {"eq": "api"}, "/desiredCount": {"in": [3, 4]}}),
            ),
            Some(
                json!({"operation": "DescribeServices", "params": {"cluster": "prod", "services": ["api"]},
                        "expect": {"/services/0/desiredCount": count}}),
            ),
        )
    };
    let upd = || upd_when(2);
    let out = run(
        Some(&upd_when(5)),
        &[
            "ecs",
            "update-service",
            "--cluster",
            "prod",
            "--service",
            "api",
            "--desired-count",
            "3",
        ],
    );
    assert_refused(
        &out,
        "drift",
        "the service changed since the certificate was issued",
    );
    let out = run(
        Some(&upd()),
        &[
            "ecs",
            "update-service",
            "--cluster",
            "prod",
            "--service",
            "api",
            "--desired-count",
            "50",
        ],
    );
    assert_refused(&out, "contract_mismatch", "ecs desired count not certified");
    let out = run(
        Some(&upd()),
        &[
            "ecs",
            "update-service",
            "--cluster",
            "prod",
            "--service",
            "worker",
            "--desired-count",
            "3",
        ],
    );
    assert_refused(&out, "contract_mismatch", "another ecs service");
    let out = run(
        Some(&upd()),
        &[
            "ecs",
            "update-service",
            "--cluster",
            "prod",
            "--service",
            "api",
            "--desired-count",
            "3",
            "--force-new-deployment",
        ],
    );
    assert_refused(&out, "contract_mismatch", "extra forceNewDeployment");
    let out = run(
        Some(&upd()),
        &[
            "ecs",
            "delete-service",
            "--cluster",
            "prod",
            "--service",
            "api",
        ],
    );
    assert_refused(
        &out,
        "contract_mismatch",
        "delete-service with an update certificate",
    );
    let out = run(
        Some(&upd()),
        &[
            "ecs",
            "update-service",
            "--cluster",
            "prod",
            "--service",
            "api",
            "--desired-count",
            "3",
        ],
    );
    assert!(out.ok, "update-service admitted: {}", out.stderr);

    // --- dynamodb put-item (json 1.0) ---
    let item = |id: &str| format!(r#"{{"id": {{"S": "{id}"}}}}"#);
    let pi = || {
        aws_cert(
            &env,
            req("dynamodb", "PutItem", Some("orders")),
            rule(json!({"/TableName": {"eq": "orders"}, "/Item/id/S": {"prefix": "o-"}})),
        )
    };
    let out = run(
        Some(&pi()),
        &[
            "dynamodb",
            "put-item",
            "--table-name",
            "orders",
            "--item",
            &item("x-1"),
        ],
    );
    assert_refused(&out, "contract_mismatch", "item id outside the prefix");
    let out = run(
        Some(&pi()),
        &[
            "dynamodb",
            "put-item",
            "--table-name",
            "audit",
            "--item",
            &item("o-1"),
        ],
    );
    assert_refused(&out, "contract_mismatch", "another table");
    let out = run(
        Some(&pi()),
        &[
            "dynamodb",
            "put-item",
            "--table-name",
            "orders",
            "--item",
            &item("o-1"),
            "--return-values",
            "ALL_OLD",
        ],
    );
    assert_refused(&out, "contract_mismatch", "extra ReturnValues");
    let out = run(
        Some(&pi()),
        &["dynamodb", "delete-table", "--table-name", "orders"],
    );
    assert_refused(
        &out,
        "contract_mismatch",
        "delete-table with a put-item certificate",
    );
    let out = run(
        Some(&pi()),
        &[
            "dynamodb",
            "put-item",
            "--table-name",
            "orders",
            "--item",
            &item("o-1"),
        ],
    );
    assert!(out.ok, "put-item admitted: {}", out.stderr);

    // --- sqs send-message (json 1.0) ---
    let jobs = moto.setup["queues"]["jobs"].as_str().unwrap();
    let other_q = moto.setup["queues"]["other"].as_str().unwrap();
    let send = || {
        aws_cert(
            &env,
            req("sqs", "SendMessage", Some(jobs)),
            rule(json!({"/QueueUrl": {"eq": jobs}, "/MessageBody": {"eq": "rebuild-index"}})),
        )
    };
    let out = sqs(
        Some(&send()),
        &[
            "send-message",
            "--queue-url",
            jobs,
            "--message-body",
            "drop-tables",
        ],
    );
    assert_refused(&out, "contract_mismatch", "another message body");
    let out = sqs(
        Some(&send()),
        &[
            "send-message",
            "--queue-url",
            other_q,
            "--message-body",
            "rebuild-index",
        ],
    );
    assert_refused(&out, "contract_mismatch", "another queue");
    let out = sqs(
        Some(&send()),
        &[
            "send-message",
            "--queue-url",
            jobs,
            "--message-body",
            "rebuild-index",
            "--delay-seconds",
            "5",
        ],
    );
    assert_refused(&out, "contract_mismatch", "extra DelaySeconds");
    let out = sqs(Some(&send()), &["purge-queue", "--queue-url", jobs]);
    assert_refused(&out, "contract_mismatch", "purge with a send certificate");
    let out = sqs(
        Some(&send()),
        &[
            "send-message",
            "--queue-url",
            jobs,
            "--message-body",
            "rebuild-index",
        ],
    );
    assert!(out.ok, "send-message admitted: {}", out.stderr);

    // --- lambda update-function-configuration (rest-json) ---
    let lam = || {
        aws_cert(
            &env,
            req("lambda", "UpdateFunctionConfiguration", Some("resize")),
            rule(json!({"/FunctionName": {"eq": "resize"}, "/MemorySize": {"max": 512}})),
        )
    };
    let out = run(
        Some(&lam()),
        &[
            "lambda",
            "update-function-configuration",
            "--function-name",
            "resize",
            "--memory-size",
            "4096",
        ],
    );
    assert_refused(&out, "contract_mismatch", "memory over the limit");
    let out = run(
        Some(&lam()),
        &[
            "lambda",
            "update-function-configuration",
            "--function-name",
            "billing",
            "--memory-size",
            "256",
        ],
    );
    assert_refused(&out, "contract_mismatch", "another function");
    let out = run(
        Some(&lam()),
        &[
            "lambda",
            "update-function-configuration",
            "--function-name",
            "resize",
            "--memory-size",
            "256",
            "--timeout",
            "30",
        ],
    );
    assert_refused(&out, "contract_mismatch", "extra Timeout");
    let out = run(
        Some(&lam()),
        &["lambda", "delete-function", "--function-name", "resize"],
    );
    assert_refused(
        &out,
        "contract_mismatch",
        "delete-function with a configuration certificate",
    );
    let out = run(
        Some(&lam()),
        &[
            "lambda",
            "update-function-configuration",
            "--function-name",
            "resize",
            "--memory-size",
            "256",
        ],
    );
    assert!(
        out.ok,
        "update-function-configuration admitted: {}",
        out.stderr
    );

    // moto's state: exactly the admitted changes.
    let after = moto.state();
    let mut expected = before.clone();
    expected["s3"]["reports/q3 final.txt"] = json!(body.len());
    expected["s3"].as_object_mut().unwrap().remove("old.txt");
    expected["ec2"][victim.as_str()] = json!("terminated");
    expected["asg"]["web"] = json!(3);
    expected["ecs"]["api"] = json!(3);
    expected["dynamodb"]["orders"] = json!(["o-1"]);
    expected["sqs"]["jobs"] = json!(1);
    expected["lambda"]["resize"] = json!(256);
    // Scaling "web" to 3 makes moto launch instances; compare only the fixture's instances.
    let pick = |s: &Value| json!(ids.iter().map(|i| s["ec2"][i].clone()).collect::<Vec<_>>());
    assert_eq!(pick(&after), pick(&expected));
    for k in ["s3", "asg", "ecs", "dynamodb", "sqs", "lambda"] {
        assert_eq!(after[k], expected[k], "{k}");
    }

    // The audit log names every admitted call, its STS session and its session policy.
    let records = audit_records(&env);
    let outcomes: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "outcome" && r["outcome"] == "completed")
        .collect();
    assert_eq!(outcomes.len(), 8, "{outcomes:#?}");
    let ecs = outcomes
        .iter()
        .find(|r| r["request"]["operation"] == "UpdateService")
        .unwrap();
    assert_eq!(ecs["identity"]["kind"], "sts");
    assert_eq!(ecs["identity"]["role"], moto.setup["seb_exec_arn"]);
    assert_eq!(ecs["identity"]["source_identity"], "agent_oncall");
    assert_eq!(
        ecs["identity"]["session_policy"]["Statement"][0]["Action"],
        json!(["ecs:UpdateService"])
    );
    assert!(!records
        .iter()
        .any(|r| r.to_string().contains("placeholder-not-a-secret")));
}

/// boto3 as the agent, over mTLS with the dev agent certificate; prints the outcome as JSON.
fn boto3(env: &Env, broker: &Broker, cert: Option<&str>, script: &str) -> Value {
    let program = format!(
        r#"
import json, os, boto3, botocore
from botocore.config import Config
cfg = Config(client_cert=(os.environ["AGENT_CERT"], os.environ["AGENT_KEY"]), retries={{"max_attempts": 1}}, s3={{"addressing_style": "path"}})
def client(name):
    return boto3.client(name, config=cfg)
try:
    result = (lambda: ({script}))()
    print(json.dumps({{"ok": True, "result": result}}, default=str))
except botocore.exceptions.ClientError as e:
    print(json.dumps({{"ok": False, "code": e.response["Error"]["Code"], "message": e.response["Error"]["Message"], "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}}))
"#
    );
    let out = Command::new("python3")
        .args(["-c", &program])
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .envs(agent_env(env, broker, cert))
        .env("AGENT_CERT", env.path("tls/agent.pem"))
        .env("AGENT_KEY", env.path("tls/agent.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_need_an_agent_sensitive_reads_a_certificate_and_static_identity_is_marked() {
    let env = Env::new();
    let moto = Moto::start(&env);
    let broker = start_broker(
        &env,
        &moto,
        Mode::Static,
        "s3_get_object_needs_certificate = true\nagent_keys = [{ access_key_id = \"SEBAGENTONCALL\", secret_access_key = { value_env = \"SEB_TEST_AGENT_SECRET\" } }]",
    );
    let ids: Vec<String> = moto.setup["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();

    // Reads pass for an authenticated agent (mTLS), under the read identity.
    let r = boto3(
        &env,
        &broker,
        None,
        "len(client('ec2').describe_instances()['Reservations'])",
    );
    assert_eq!(r["ok"], true, "{r}");
    let r = boto3(&env, &broker, None, "client('ecs').describe_services(cluster='prod', services=['api'])['services'][0]['desiredCount']");
    assert_eq!(r["result"], 2, "{r}");
    // The aws CLI presents no client certificate: its reads are refused, in the EC2 dialect.
    let out = aws(&env, &broker, None, &["ec2", "describe-instances"]);
    assert_refused(
        &out,
        "unauthenticated",
        "read without an authenticated agent",
    );
    assert!(out.stderr.contains("(AccessDenied)"), "{}", out.stderr);
    // Signing with a configured agent key authenticates the CLI for reads, in every protocol.
    let key = Some(("SEBAGENTONCALL", AGENT_SECRET));
    for args in [
        &["ec2", "describe-instances"][..],
        &[
            "ecs",
            "describe-services",
            "--cluster",
            "prod",
            "--services",
            "api",
        ],
        &["s3api", "list-objects-v2", "--bucket", "prod-artifacts"],
        &["autoscaling", "describe-auto-scaling-groups"],
    ] {
        let out = aws_with_key(&env, &broker, None, key, args);
        assert!(out.ok, "{args:?}: {}", out.stderr);
    }
    let out = aws_with_key(
        &env,
        &broker,
        None,
        Some(("SEBAGENTONCALL", "wrong")),
        &["ec2", "describe-instances"],
    );
    assert_refused(&out, "unauthenticated", "agent key with the wrong secret");
    // Sensitive reads need a certificate even from an authenticated agent.
    let r = boto3(
        &env,
        &broker,
        None,
        "client('s3').get_object(Bucket='prod-artifacts', Key='keep.txt')['Body'].read()",
    );
    assert_eq!(
        (r["ok"].clone(), r["code"].clone()),
        (json!(false), json!("AccessDenied")),
        "{r}"
    );
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .starts_with("seb: cert_missing"),
        "{r}"
    );
    let r = boto3(
        &env,
        &broker,
        None,
        "client('secretsmanager').get_secret_value(SecretId='db')",
    );
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .starts_with("seb: cert_missing"),
        "{r}"
    );
    // With a certificate, the sensitive read passes.
    let get = aws_cert(
        &env,
        req(
            "s3",
            "GetObject",
            Some("arn:aws:s3:::prod-artifacts/keep.txt"),
        ),
        rule(json!({"/Bucket": {"eq": "prod-artifacts"}, "/Key": {"eq": "keep.txt"}})),
    );
    let r = boto3(
        &env,
        &broker,
        Some(&get),
        "client('s3').get_object(Bucket='prod-artifacts', Key='keep.txt')['Body'].read().decode()",
    );
    assert_eq!(r["result"], "keep", "{r}");

    // A mutation under static credentials: admitted, and the audit record says static.
    let term = aws_cert(
        &env,
        req("ec2", "TerminateInstances", Some(&ids[0])),
        rule(json!({"/InstanceId.1": {"eq": ids[0]}})),
    );
    let r = boto3(&env, &broker, Some(&term), &format!("client('ec2').terminate_instances(InstanceIds=['{}'])['TerminatingInstances'][0]['InstanceId']", ids[0]));
    assert_eq!(r["result"], ids[0].as_str(), "{r}");
    let records = audit_records(&env);
    let done = records
        .iter()
        .find(|r| r["kind"] == "outcome" && r["request"]["operation"] == "TerminateInstances")
        .unwrap();
    assert_eq!(done["identity"]["kind"], "static");
    assert!(done["identity"]["note"]
        .as_str()
        .unwrap()
        .contains("not scoped"));

    // Ambiguity end to end: the same parameter twice, sent as raw bytes. Refused in the EC2
    // dialect, and the instance named second is untouched.
    let c = client(&env, true);
    let fresh = aws_cert(
        &env,
        req("ec2", "TerminateInstances", Some(&ids[1])),
        rule(json!({"/InstanceId.1": {"eq": ids[1]}})),
    );
    let resp = c
        .post(broker.url("/"))
        .header("authorization", "AWS4-HMAC-SHA256 Credential=SEBAGENTPLACEHOLDER/20240101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=00")
        .header("x-amz-security-token", &fresh)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("Action=DescribeInstances&Action=TerminateInstances&InstanceId.1={}", ids[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("<Response><Errors><Error><Code>AccessDenied</Code><Message>seb: request_malformed: parameter &quot;Action&quot; is given more than once"), "{text}");
    let state = moto.state();
    assert_eq!(state["ec2"][&ids[0]], "terminated");
    assert_eq!(state["ec2"][&ids[1]], "running");
}

/// Issue 22: a configured `agent_keys` list locks reads, also where neither a client CA nor an
/// agent token is configured (which alone left reads open): the placeholder key, a key id the
/// broker does not know and a wrong secret are refused as `unauthenticated`. An agent key
/// reads; so does an agent that left its certificate in AWS_SESSION_TOKEN, without spending it.
#[test]
fn agent_keys_lock_reads_and_a_certificate_left_in_the_session_token_reads() {
    let env = Env::new();
    let moto = Moto::start(&env);
    let mut cfg = aws_config(
        &moto,
        Mode::Static,
        "agent_keys = [{ access_key_id = \"SEBAGENTONCALL\", secret_access_key = { value_env = \"SEB_TEST_AGENT_SECRET\" } }]",
    );
    cfg.text = cfg
        .text
        .replace("client_ca = \"tls/ca.pem\"\n", "")
        .replace("tokens = [{ value_env = \"SEB_TEST_AGENT_TOKEN\" }]\n", "");
    assert!(
        !cfg.text.contains("client_ca") && !cfg.text.contains("tokens"),
        "{}",
        cfg.text
    );
    let broker = start_broker_with(&env, &moto, &cfg);
    let list = ["dynamodb", "list-tables"];
    let refused = |out: &CliOut, what: &str, detail: &str| {
        assert_refused(out, "unauthenticated", what);
        assert!(out.stderr.contains(detail), "{what}: {}", out.stderr);
        // The CLI prints the code of the JSON protocol's own error shape.
        assert!(
            out.stderr.contains("(AccessDeniedException)"),
            "{}",
            out.stderr
        );
    };
    refused(
        &aws(&env, &broker, None, &list),
        "placeholder key",
        "signed with the placeholder access key SEBAGENTPLACEHOLDER",
    );
    refused(
        &aws_with_key(
            &env,
            &broker,
            None,
            Some(("SEBAGENTSTRANGER", "anything")),
            &list,
        ),
        "unknown key",
        "access key id \"SEBAGENTSTRANGER\" is not one of its agent_keys",
    );
    refused(
        &aws_with_key(
            &env,
            &broker,
            None,
            Some(("SEBAGENTONCALL", "wrong")),
            &list,
        ),
        "wrong secret",
        "agent signature",
    );
    assert!(
        !audit_records(&env).iter().any(|r| r["decision"] == "allow"),
        "a refused read was forwarded"
    );
    let out = aws_with_key(
        &env,
        &broker,
        None,
        Some(("SEBAGENTONCALL", AGENT_SECRET)),
        &list,
    );
    assert!(out.ok, "agent key: {}", out.stderr);
    assert!(out.stdout.contains("TableNames"), "{}", out.stdout);

    // The certificate for a change, still in AWS_SESSION_TOKEN while the agent reads: it
    // authenticates the read (placeholder key), which spends none of its one use.
    let upd = aws_cert(
        &env,
        req("ecs", "UpdateService", Some("prod/api")),
        rule(
            json!({"/cluster": {"eq": "prod"}, "/service": {"eq": "api"}, "/desiredCount": {"eq": 3}}),
        ),
    );
    let out = aws(&env, &broker, Some(&upd), &list);
    assert!(out.ok, "read with a certificate: {}", out.stderr);
    let out = aws(
        &env,
        &broker,
        Some(&upd),
        &[
            "ecs",
            "update-service",
            "--cluster",
            "prod",
            "--service",
            "api",
            "--desired-count",
            "3",
        ],
    );
    assert!(out.ok, "the change after the read: {}", out.stderr);
    assert_eq!(moto.state()["ecs"]["api"], 3);
    // A certificate does not excuse a bad agent signature it comes with.
    let out = aws_with_key(
        &env,
        &broker,
        Some(&upd),
        Some(("SEBAGENTONCALL", "wrong")),
        &list,
    );
    assert_refused(
        &out,
        "unauthenticated",
        "certificate with a wrong agent signature",
    );
}

#[test]
fn s3_uploads_of_50_mib_stream_and_are_held_to_their_certified_hash() {
    let env = Env::new();
    let moto = Moto::start(&env);
    let broker = start_broker(&env, &moto, Mode::Sts, "");
    // 50 MiB, fifty times the broker's body limit: only a streamed upload can pass.
    let mut big = vec![0u8; 50 * 1024 * 1024];
    let mut x: u32 = 2463534242;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let good = file(&env, "big.bin", &big);
    big[30 * 1024 * 1024] ^= 1;
    let tampered = file(&env, "big-tampered.bin", &big);
    big[30 * 1024 * 1024] ^= 1;
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&big));
    let cert = || {
        aws_cert(
            &env,
            req(
                "s3",
                "PutObject",
                Some("arn:aws:s3:::prod-artifacts/big.bin"),
            ),
            json!({"sha256": sha}),
        )
    };
    let put = |c: &str, f: &PathBuf| {
        aws(
            &env,
            &broker,
            Some(c),
            &[
                "s3api",
                "put-object",
                "--bucket",
                "prod-artifacts",
                "--key",
                "big.bin",
                "--body",
                f.to_str().unwrap(),
            ],
        )
    };
    // One bit flipped in the middle: cut off in flight, never stored.
    let out = put(&cert(), &tampered);
    assert_refused(&out, "contract_mismatch", "50 MiB with one bit flipped");
    assert!(out.stderr.contains("sha256"), "{}", out.stderr);
    assert!(
        moto.state()["s3"].get("big.bin").is_none(),
        "a tampered upload was stored"
    );
    let started = Instant::now();
    let out = put(&cert(), &good);
    assert!(out.ok, "50 MiB upload: {}", out.stderr);
    eprintln!("50 MiB through the broker: {:?}", started.elapsed());
    assert_eq!(moto.state()["s3"]["big.bin"], json!(big.len()));
    let records = audit_records(&env);
    let rec = records
        .iter()
        .find(|r| {
            r["kind"] == "decision"
                && r["decision"] == "allow"
                && r["request"]["operation"] == "PutObject"
        })
        .unwrap();
    assert_eq!(rec["body_sha256"], sha.as_str());
}

/// Not a timed test: prints the broker's added latency next to direct calls to the same moto,
/// for the closing note. `cargo test --test aws_e2e -- --ignored latency --nocapture`.
#[test]
#[ignore]
fn latency_side_by_side_with_direct_calls() {
    let env = Env::new();
    let moto = Moto::start(&env);
    let broker = start_broker(&env, &moto, Mode::Sts, "");
    let t = now();
    let n = 200;
    let payload = json!({
        "iss": "signer", "sub": "agent:bench", "jti": random_jti(), "iat": t, "nbf": t, "exp": t + 600,
        "aud": "aws",
        "seb": {"v": 1, "action": "bench", "policy": "bench", "policy_epoch": 1, "revocation_epoch": 1,
                "max_uses": 1000, "target": "aws",
                "request": req("dynamodb", "PutItem", Some("orders")),
                "body": rule(json!({"/TableName": {"eq": "orders"}, "/Item/id/S": {"prefix": "o-"}}))}
    });
    let cert = seb::cert::jws::sign(&env.signer, seb::cert::CERT_TYP, &env.kid, &payload);
    let (a, s) = moto.creds("admin");
    let out = Command::new("python3")
        .arg(repo().join("tests/aws/latency.py"))
        .args(["--direct", &moto.endpoint(), "--admin", &a, &s])
        .args(["--broker", &format!("https://localhost:{}", broker.listen)])
        .args(["--certificate", &cert, "-n", &n.to_string()])
        .env("AWS_CA_BUNDLE", env.path("tls/ca.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("aws latency: {}", String::from_utf8_lossy(&out.stdout));
}

// === issue 14: what seb checks is what the upstream executes ===

/// A request exactly as written, with the placeholder credential scope the SDKs send.
/// `[service, method, path]`.
async fn raw(
    c: &reqwest::Client,
    broker: &Broker,
    cert: Option<&str>,
    [service, method, path]: [&str; 3],
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut r = c
        .request(method.parse().unwrap(), broker.url(path))
        .header(
            "authorization",
            format!("AWS4-HMAC-SHA256 Credential=SEBAGENTPLACEHOLDER/20240101/{REGION}/{service}/aws4_request, SignedHeaders=host, Signature=00"),
        )
        .body(body.to_vec());
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(cert) = cert {
        r = r.header("x-amz-security-token", cert);
    }
    let resp = r.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_content_types_and_copy_sources_are_read_as_aws_reads_them() {
    let env = Env::new();
    let moto = Moto::start(&env);
    let broker = start_broker(&env, &moto, Mode::Sts, "");
    let ids: Vec<String> = moto.setup["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let c = client(&env, false);
    let allow = |constraints: Value| json!({"constraints": constraints, "others": "allow"});

    // A member TerminateInstances does not take (VolumeId) once posed as the certified
    // instance while InstanceId.1 named another one.
    let cert = aws_cert(
        &env,
        req("ec2", "TerminateInstances", Some(&ids[0])),
        allow(json!({"/InstanceId.1": {"prefix": "i-"}})),
    );
    let (status, text) = raw(
        &c,
        &broker,
        Some(&cert),
        ["ec2", "POST", "/"],
        &[FORM],
        format!(
            "Action=TerminateInstances&Version=2016-11-15&InstanceId.1={}&VolumeId={}",
            ids[1], ids[0]
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains(
            "seb: request_malformed: parameter &quot;VolumeId&quot; is not in TerminateInstances"
        ),
        "{text}"
    );

    // The same through the json and rest-json protocols: a member of another operation
    // (FunctionName on PutItem, AutoScalingGroupName on a Lambda update).
    let cert = aws_cert(
        &env,
        req("dynamodb", "PutItem", Some("orders")),
        allow(json!({"/Item": {"present": true}})),
    );
    let (status, text) = raw(
        &c,
        &broker,
        Some(&cert),
        ["dynamodb", "POST", "/"],
        &[
            ("x-amz-target", "DynamoDB_20120810.PutItem"),
            ("content-type", "application/x-amz-json-1.0"),
        ],
        br#"{"TableName":"audit","FunctionName":"orders","Item":{"id":{"S":"evil"}}}"#,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("FunctionName"), "{text}");
    let cert = aws_cert(
        &env,
        req("lambda", "UpdateFunctionConfiguration", Some("resize")),
        allow(json!({"/MemorySize": {"max": 1024}})),
    );
    let (status, text) = raw(
        &c,
        &broker,
        Some(&cert),
        [
            "lambda",
            "PUT",
            "/2015-03-31/functions/billing/configuration",
        ],
        &[("content-type", "application/json")],
        br#"{"AutoScalingGroupName":"resize","MemorySize":512}"#,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("AutoScalingGroupName"), "{text}");

    // A json-protocol call in a form (or with no Content-Type, or the other json version):
    // refused, whatever the certificate admits.
    let cert = || {
        aws_cert(
            &env,
            req("dynamodb", "PutItem", Some("orders")),
            allow(json!({"/TableName": {"eq": "orders"}})),
        )
    };
    for ct in [
        Some("application/x-www-form-urlencoded"),
        Some("application/x-amz-json-1.1"),
        Some("application/x-amz-json-1.0; charset=utf-7"),
        None,
    ] {
        let mut h = vec![("x-amz-target", "DynamoDB_20120810.PutItem")];
        if let Some(ct) = ct {
            h.push(("content-type", ct));
        }
        let (status, text) = raw(
            &c,
            &broker,
            Some(&cert()),
            ["dynamodb", "POST", "/"],
            &h,
            br#"{"TableName":"orders","Item":{"id":{"S":"ct"}}}"#,
        )
        .await;
        assert_eq!(status, 400, "{ct:?}: {text}");
        assert!(text.contains("seb: request_malformed"), "{ct:?}: {text}");
        assert!(text.contains("Content-Type"), "{ct:?}: {text}");
    }
    // A query-protocol form in another charset.
    let cert = aws_cert(
        &env,
        req("autoscaling", "SetDesiredCapacity", Some("web")),
        allow(json!({"/AutoScalingGroupName": {"eq": "web"}})),
    );
    let (status, text) = raw(
        &c,
        &broker,
        Some(&cert),
        ["autoscaling", "POST", "/"],
        &[(
            "content-type",
            "application/x-www-form-urlencoded; charset=iso-8859-1",
        )],
        b"Action=SetDesiredCapacity&Version=2011-01-01&AutoScalingGroupName=web&DesiredCapacity=7",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("Content-Type"), "{text}");

    // A certified copy: its source is pinned, and the session may read exactly that object.
    let copy = |source: Value| {
        aws_cert(
            &env,
            req(
                "s3",
                "CopyObject",
                Some("arn:aws:s3:::prod-artifacts/copy.txt"),
            ),
            rule(
                json!({"/Bucket": {"eq": "prod-artifacts"}, "/Key": {"eq": "copy.txt"},
                        "/CopySource": source}),
            ),
        )
    };
    let cli_copy = |cert: &str, source: &str| {
        aws(
            &env,
            &broker,
            Some(cert),
            &[
                "s3api",
                "copy-object",
                "--bucket",
                "prod-artifacts",
                "--key",
                "copy.txt",
                "--copy-source",
                source,
            ],
        )
    };
    let out = cli_copy(
        &copy(json!({"prefix": "prod-artifacts/"})),
        "prod-artifacts/keep.txt",
    );
    assert_refused(&out, "contract_mismatch", "copy without a pinned source");
    assert!(out.stderr.contains("/CopySource"), "{}", out.stderr);
    let out = cli_copy(
        &copy(json!({"eq": "prod-artifacts/keep.txt"})),
        "prod-artifacts/old.txt",
    );
    assert_refused(&out, "contract_mismatch", "copy from another source");
    assert!(moto.state()["s3"].get("copy.txt").is_none());
    let out = cli_copy(
        &copy(json!({"eq": "prod-artifacts/keep.txt"})),
        "prod-artifacts/keep.txt",
    );
    assert!(out.ok, "certified copy: {}", out.stderr);
    assert_eq!(moto.state()["s3"]["copy.txt"], 4);
    // moto does not enforce session policies: the minted one is checked as a document.
    let records = audit_records(&env);
    let done = records
        .iter()
        .find(|r| r["kind"] == "outcome" && r["request"]["operation"] == "CopyObject")
        .expect("an outcome for the copy");
    assert_eq!(
        done["identity"]["session_policy"]["Statement"],
        json!([
            {"Sid": "SebCertifiedCall", "Effect": "Allow", "Action": ["s3:PutObject"],
             "Resource": "arn:aws:s3:::prod-artifacts/copy.txt"},
            {"Sid": "SebCopySource", "Effect": "Allow", "Action": ["s3:GetObject"],
             "Resource": "arn:aws:s3:::prod-artifacts/keep.txt"}
        ])
    );

    let state = moto.state();
    assert_eq!(state["ec2"][&ids[0]], "running");
    assert_eq!(state["ec2"][&ids[1]], "running");
    assert_eq!(state["dynamodb"]["audit"], json!([]));
    assert_eq!(state["dynamodb"]["orders"], json!([]));
    assert_eq!(state["lambda"]["billing"], 128);
    assert_eq!(state["asg"]["web"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_an_allow_list_and_an_agents_signature_covers_its_body() {
    let env = Env::new();
    let moto = Moto::start(&env);
    let broker = start_broker(
        &env,
        &moto,
        Mode::Static,
        "s3_get_object_needs_certificate = true\nagent_keys = [{ access_key_id = \"SEBAGENTONCALL\", secret_access_key = { value_env = \"SEB_TEST_AGENT_SECRET\" } }]",
    );
    let mtls = client(&env, true);

    // Named like reads, returning credentials or secrets: a certificate is needed.
    let (status, text) = raw(
        &mtls,
        &broker,
        None,
        ["sts", "POST", "/"],
        &[FORM],
        b"Action=GetWebIdentityToken&Version=2011-06-15",
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("seb: cert_missing"), "{text}");
    let r = boto3(
        &env,
        &broker,
        None,
        "client('lambda').get_function_configuration(FunctionName='resize')",
    );
    // rest-json's dialect spells it AccessDeniedException.
    assert_eq!(r["code"], "AccessDeniedException", "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .starts_with("seb: cert_missing"),
        "{r}"
    );
    // WithDecryption in a spelling AWS's JSON reader does not take as false: a secret read.
    for body in [
        &br#"{"Name":"db-password","WithDecryption":true}"#[..],
        br#"{"Name":"db-password","WithDecryption":"false"}"#,
    ] {
        let (status, text) = raw(
            &mtls,
            &broker,
            None,
            ["ssm", "POST", "/"],
            &[
                ("x-amz-target", "AmazonSSM.GetParameter"),
                ("content-type", "application/x-amz-json-1.1"),
            ],
            body,
        )
        .await;
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("seb: cert_missing"), "{text}");
    }
    // A read on the allow-list still passes.
    let r = boto3(
        &env,
        &broker,
        None,
        "len(client('ec2').describe_instances()['Reservations'])",
    );
    assert_eq!(r["ok"], true, "{r}");

    // An encoded separator in the bucket label: as a "list bucket" read it would have been
    // read by S3 as a GetObject, which this broker requires a certificate for.
    let (status, text) = raw(
        &mtls,
        &broker,
        None,
        ["s3", "GET", "/prod-artifacts%2Fkeep.txt"],
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("seb: request_malformed"), "{text}");
    assert!(text.contains("percent-encoded"), "{text}");

    // A read signed with an agent key, captured and replayed with another body: the declared
    // x-amz-content-sha256 is the captured body's, so the signature no longer authenticates.
    // HTTP/1.1, so the Host header the signature covers is a header on both ends.
    let plain = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(env.path("tls/ca.pem")).unwrap())
                .unwrap(),
        )
        .http1_only()
        .build()
        .unwrap();
    let captured = b"Action=DescribeInstances&Version=2016-11-15";
    let host = format!("localhost:{}", broker.listen);
    let signed = |body: &[u8]| {
        let mut r = http::Request::post(broker.url("/"))
            .header("host", host.as_str())
            .header("content-type", FORM.1)
            .header(
                "x-amz-content-sha256",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(captured)),
            )
            .body(())
            .unwrap();
        seb::targets::aws::sigv4::sign_request(
            &mut r,
            &seb::targets::aws::sigv4::Credentials {
                access_key_id: "SEBAGENTONCALL".into(),
                secret_access_key: AGENT_SECRET.into(),
                session_token: None,
            },
            "ec2",
            REGION,
            seb::targets::aws::sigv4::Payload::Bytes(captured),
            std::time::SystemTime::now(),
        )
        .unwrap();
        let mut req = plain.post(broker.url("/")).body(body.to_vec());
        for (k, v) in r.headers() {
            if k != "host" {
                req = req.header(k.as_str(), v.as_bytes());
            }
        }
        req
    };
    let resp = signed(captured).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let replayed = format!(
        "Action=DescribeInstances&Version=2016-11-15&InstanceId.1={}",
        moto.setup["instances"][0].as_str().unwrap()
    );
    let resp = signed(replayed.as_bytes()).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let text = resp.text().await.unwrap();
    assert!(text.contains("seb: unauthenticated"), "{text}");
    assert!(text.contains("x-amz-content-sha256"), "{text}");
}

/// Issue 14, all targets, through boto3: a `Connection` token naming a header seb checked
/// (a conditional delete's `If-Match`), a folded `x-amz-` name, and a path override are
/// refused before anything reaches moto or a use is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_seams_are_refused_for_aws_clients() {
    let env = Env::new();
    let moto = Moto::start(&env);
    let broker = start_broker(&env, &moto, Mode::Static, "");
    let before = moto.state();
    assert!(before["s3"]["old.txt"].is_number(), "{before}");
    let cert = aws_cert(
        &env,
        req(
            "s3",
            "DeleteObject",
            Some("arn:aws:s3:::prod-artifacts/old.txt"),
        ),
        rule(
            json!({"/Bucket": {"eq": "prod-artifacts"}, "/Key": {"eq": "old.txt"},
                    "/IfMatch": {"eq": "\"0000\""}}),
        ),
    );
    let hooked = |headers: &str| {
        format!(
            r#"(c := client("s3"), c.meta.events.register("before-send.s3.*", lambda request, **kw: request.headers.update({headers})), c.delete_object(Bucket="prod-artifacts", Key="old.txt", IfMatch='"0000"'))[-1]"#
        )
    };
    for (what, headers, needle) in [
        (
            "Connection naming If-Match",
            r#"{"Connection": "If-Match"}"#,
            "Connection token",
        ),
        (
            "folded x-amz- header",
            r#"{"X_Amz_Bypass_Governance_Retention": "true"}"#,
            "x_amz_bypass_governance_retention",
        ),
        (
            "path override",
            r#"{"X-Original-URL": "/prod-artifacts/keep.txt"}"#,
            "x-original-url",
        ),
    ] {
        let out = boto3(&env, &broker, Some(&cert), &hooked(headers));
        assert_eq!(out["ok"], false, "{what}: {out}");
        assert_eq!(out["code"], "AccessDenied", "{what}: {out}");
        let message = out["message"].as_str().unwrap();
        assert!(
            message.starts_with("seb: request_malformed") && message.contains(needle),
            "{what}: {message}"
        );
    }
    // A read is refused alike.
    let out = boto3(
        &env,
        &broker,
        None,
        r#"(c := client("s3"), c.meta.events.register("before-send.s3.*", lambda request, **kw: request.headers.update({"Connection": "x-amz-expected-bucket-owner", "x-amz-expected-bucket-owner": "111111111111"})), c.list_objects_v2(Bucket="prod-artifacts")["KeyCount"])[-1]"#,
    );
    assert_eq!(out["ok"], false, "{out}");
    assert!(out["message"]
        .as_str()
        .unwrap()
        .starts_with("seb: request_malformed"));
    // Heads hyper's parser would refuse with a bare 400 come back in the client's dialect:
    // S3's XML error for an S3-scoped request, the JSON one for a json-protocol call.
    let auth = |service: &str| {
        format!("AWS4-HMAC-SHA256 Credential=SEBAGENTPLACEHOLDER/20240101/{REGION}/{service}/aws4_request, SignedHeaders=host, Signature=00")
    };
    let s3 = format!(
        "DELETE /prod-artifacts/old.txt HTTP/1.1\r\nhost: localhost\r\nauthorization: {}\r\nx-amz-security-token: {cert}\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        auth("s3")
    );
    let answers = exchange_raw(&env, broker.listen, s3.into_bytes()).await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    let (status, body) = &answers[0];
    assert_eq!(*status, 400, "{body}");
    assert!(
        body.contains(
            "<Error><Code>AccessDenied</Code><Message>seb: request_malformed: Transfer-Encoding"
        ),
        "{body}"
    );
    let json = format!(
        "POST / HTTP/1.1\r\nhost: localhost\r\nauthorization: {}\r\nx-amz-target: DynamoDB_20120810.ListTables\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n{{}}",
        auth("dynamodb")
    );
    let answers = exchange_raw(&env, broker.listen, json.into_bytes()).await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    let v: Value = serde_json::from_str(&answers[0].1).unwrap();
    assert_eq!(v["__type"], "AccessDeniedException", "{v}");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("more than one Content-Length"));
    assert_eq!(moto.state()["s3"], before["s3"]);
}

// --- issue 14, part B: constraint matching and the certificate's audience ---

/// A query-protocol call as raw bytes: the aws CLI would refuse (or normalise) a capacity
/// that is not an integer, so the spellings are sent as an agent without it could send them.
async fn raw_set_capacity(
    c: &reqwest::Client,
    broker: &Broker,
    cert: &str,
    capacity: &str,
) -> (u16, String) {
    let resp = c
        .post(broker.url("/"))
        .header("authorization", "AWS4-HMAC-SHA256 Credential=SEBAGENTPLACEHOLDER/20240101/us-east-1/autoscaling/aws4_request, SignedHeaders=host, Signature=00")
        .header("x-amz-security-token", cert)
        .header("content-type", "application/x-www-form-urlencoded; charset=utf-8")
        .body(format!(
            "Action=SetDesiredCapacity&Version=2011-01-01&AutoScalingGroupName=web&DesiredCapacity={capacity}"
        ))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameters_are_numbers_only_in_their_plain_spelling() {
    let env = Env::new();
    let moto = Moto::start(&env);
    let broker = start_broker(&env, &moto, Mode::Sts, "");
    let c = client(&env, true);
    let cap = || {
        aws_cert(
            &env,
            req("autoscaling", "SetDesiredCapacity", Some("web")),
            rule(json!({"/AutoScalingGroupName": {"eq": "web"}, "/DesiredCapacity": {"max": 4}})),
        )
    };
    let cert = cap();
    // Each is over 4, or another number, or no number, to some reader of the string.
    for capacity in [
        "4.0000000000000001",
        "9e-1",
        "04",
        "%2B3",
        "%203",
        "3%20",
        "0x3",
        "3.",
        "",
    ] {
        let (status, text) = raw_set_capacity(&c, &broker, &cert, capacity).await;
        assert_eq!(status, 403, "{capacity}: {text}");
        assert!(
            text.contains("seb: contract_mismatch: /DesiredCapacity is"),
            "{capacity}: {text}"
        );
    }
    assert_eq!(moto.state()["asg"]["web"], 1, "a refused call reached moto");
    let (status, text) = raw_set_capacity(&c, &broker, &cap(), "3").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(moto.state()["asg"]["web"], 3);
}

/// One signer, two listeners of one kind: an aws certificate made for target `staging` is
/// refused by target `aws` (its name in this config), and so is one naming no target, unless
/// the target opts out with `require_audience = false`.
#[test]
fn an_aws_certificate_for_staging_is_refused_by_prod() {
    let env = Env::new();
    let moto = Moto::start(&env);
    let broker = start_broker(&env, &moto, Mode::Sts, "");
    let cert = |aud: Option<Value>| {
        let t = now();
        let mut p = json!({
            "iss": "signer", "sub": "agent:oncall", "jti": random_jti(), "iat": t, "nbf": t, "exp": t + 300,
            "seb": {"v": 1, "action": "remediate", "policy": "oncall-v1", "policy_epoch": 1, "revocation_epoch": 1,
                    "target": "aws", "request": req("autoscaling", "SetDesiredCapacity", Some("web")),
                    "body": rule(json!({"/AutoScalingGroupName": {"eq": "web"}, "/DesiredCapacity": {"max": 4}}))}
        });
        if let Some(aud) = aud {
            p["aud"] = aud;
        }
        seb::cert::jws::sign(&env.signer, seb::cert::CERT_TYP, &env.kid, &p)
    };
    let set = |broker: &Broker, cert: &str, n: &str| {
        aws(
            &env,
            broker,
            Some(cert),
            &[
                "autoscaling",
                "set-desired-capacity",
                "--auto-scaling-group-name",
                "web",
                "--desired-capacity",
                n,
            ],
        )
    };
    let out = set(&broker, &cert(Some(json!("staging"))), "2");
    assert_refused(&out, "contract_mismatch", "a certificate for staging");
    assert!(
        out.stderr
            .contains(r#"certificate is for target ["staging"] (aud), this is target "aws""#),
        "{}",
        out.stderr
    );
    let out = set(&broker, &cert(None), "2");
    assert_refused(&out, "contract_mismatch", "a certificate naming no target");
    assert!(
        out.stderr.contains("names no target (aud)"),
        "{}",
        out.stderr
    );
    assert_eq!(moto.state()["asg"]["web"], 1, "a refused call reached moto");
    let out = set(&broker, &cert(Some(json!(["staging", "aws"]))), "2");
    assert!(out.ok, "aud naming this target: {}", out.stderr);
    assert_eq!(moto.state()["asg"]["web"], 2);
    drop(broker);

    // The migration switch: certificates without aud are admitted, with aud still checked.
    let lenient = start_broker(&env, &moto, Mode::Sts, "require_audience = false");
    let out = set(&lenient, &cert(Some(json!("staging"))), "3");
    assert_refused(
        &out,
        "contract_mismatch",
        "staging, with require_audience = false",
    );
    let out = set(&lenient, &cert(None), "3");
    assert!(
        out.ok,
        "no aud under require_audience = false: {}",
        out.stderr
    );
    assert_eq!(moto.state()["asg"]["web"], 3);
}

/// A loopback HTTP/1.1 server for the broker's credential sources: `answer(method, path,
/// headers)` gives the status and body; every request head it saw is kept, lowercased.
fn fake_credentials_source(
    answer: impl Fn(&str, &str, &str) -> (u16, String) + Send + Sync + 'static,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line.to_ascii_lowercase());
            }
            let mut words = head.split_whitespace();
            let (method, path) = (
                words.next().unwrap_or("").to_uppercase(),
                words.next().unwrap_or("").to_string(),
            );
            let (status, body) = answer(&method, &path, &head);
            log.lock().unwrap().push(head);
            let _ = write!(
                conn,
                // The TTL header is IMDSv2's (its token answer must carry it); others ignore it.
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nx-aws-ec2-metadata-token-ttl-seconds: 21600\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

/// The broker's base credentials come from the AWS SDK's chain: here, a container credentials
/// endpoint with a token file (how EKS Pod Identity hands them out), then IMDSv2 (EC2), each
/// serving the session of a role that may only assume the execution and read roles; with no
/// source at all, mutations are refused as `identity_unavailable`.
#[test]
fn base_credentials_come_from_the_container_endpoint_or_imdsv2() {
    let env = Env::new();
    let moto = Moto::start(&env);
    let session = moto.setup["broker_session"].to_string();
    let cfg = aws_config(&moto, Mode::Sts, "");
    let nowhere = env.path("no-such-aws-file").display().to_string();
    let chain_env = |extra: &[(&str, String)]| {
        let mut v: Vec<(String, String)> = [
            // Blank: the SDK's environment provider then steps aside for the next source.
            ("AWS_ACCESS_KEY_ID", String::new()),
            ("AWS_SECRET_ACCESS_KEY", String::new()),
            ("AWS_SESSION_TOKEN", String::new()),
            ("AWS_CONFIG_FILE", nowhere.clone()),
            ("AWS_SHARED_CREDENTIALS_FILE", nowhere.clone()),
            ("SEB_TEST_AGENT_SECRET", AGENT_SECRET.to_string()),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
        v.dedup_by(|a, b| a.0 == b.0);
        v
    };
    let scale = |broker: &Broker, count: &str| {
        let cert = aws_cert(
            &env,
            req("ecs", "UpdateService", Some("prod/api")),
            rule(
                json!({"/cluster": {"eq": "prod"}, "/service": {"eq": "api"}, "/desiredCount": {"eq": count.parse::<u32>().unwrap()}}),
            ),
        );
        aws(
            &env,
            broker,
            Some(&cert),
            &[
                "ecs",
                "update-service",
                "--cluster",
                "prod",
                "--service",
                "api",
                "--desired-count",
                count,
            ],
        )
    };

    // --- container credentials, token from a file ---
    let token_file = env.path("pod-identity-token");
    std::fs::write(&token_file, "pod-identity-secret").unwrap();
    let body = session.clone();
    let (port, seen) = fake_credentials_source(move |method, path, head| {
        if method == "GET"
            && path == "/creds"
            && head.contains("authorization: pod-identity-secret")
        {
            (200, body.clone())
        } else {
            (403, "{}".into())
        }
    });
    let broker = Broker::start_with_env(
        &env,
        &cfg,
        chain_env(&[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("http://127.0.0.1:{port}/creds"),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                token_file.display().to_string(),
            ),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]),
    );
    let out = scale(&broker, "3");
    assert!(
        out.ok,
        "admitted under container credentials: {}",
        out.stderr
    );
    assert_eq!(moto.state()["ecs"]["api"], json!(3));
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|h| h.starts_with("get /creds ")),
        "the container endpoint was asked"
    );
    drop(broker);

    // --- IMDSv2: a session token first, then the role's credentials under it ---
    let body = session.clone();
    let (port, seen) = fake_credentials_source(move |method, path, head| {
        let authed = head.contains("x-aws-ec2-metadata-token: imds-session-1");
        match (method, path) {
            ("PUT", "/latest/api/token")
                if head.contains("x-aws-ec2-metadata-token-ttl-seconds:") =>
            {
                (200, "imds-session-1".into())
            }
            (_, _) if !authed => (401, String::new()),
            ("GET", "/latest/meta-data/iam/security-credentials/") => {
                (200, "seb-broker-role".into())
            }
            ("GET", "/latest/meta-data/iam/security-credentials/seb-broker-role") => {
                let mut v: Value = serde_json::from_str(&body).unwrap();
                v["Code"] = json!("Success");
                v["Type"] = json!("AWS-HMAC");
                v["LastUpdated"] = json!("2026-01-01T00:00:00Z");
                (200, v.to_string())
            }
            _ => (404, String::new()),
        }
    });
    let broker = Broker::start_with_env(
        &env,
        &cfg,
        chain_env(&[(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )]),
    );
    let out = scale(&broker, "4");
    assert!(out.ok, "admitted under IMDSv2 credentials: {}", out.stderr);
    assert_eq!(moto.state()["ecs"]["api"], json!(4));
    let seen = seen.lock().unwrap().clone();
    assert!(seen[0].starts_with("put /latest/api/token "), "{seen:#?}");
    assert!(
        seen.iter()
            .filter(|h| h.starts_with("get "))
            .all(|h| h.contains("x-aws-ec2-metadata-token: imds-session-1")),
        "every metadata read carried the session token: {seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|h| h
                .starts_with("get /latest/meta-data/iam/security-credentials/seb-broker-role ")),
        "{seen:#?}"
    );
    drop(broker);

    // --- no source: refused, nothing changed ---
    let broker = Broker::start_with_env(
        &env,
        &cfg,
        chain_env(&[("AWS_EC2_METADATA_DISABLED", "true".into())]),
    );
    let out = scale(&broker, "5");
    assert_refused(&out, "identity_unavailable", "no base credentials anywhere");
    assert_eq!(moto.state()["ecs"]["api"], json!(4));
}
