//! Live-state drift on every AWS protocol, end to end: moto in server mode (auth checks on) as
//! AWS, a forwarding proxy between the broker and moto that can hold the write
//! (tests/aws/hold_proxy.py), the `seb` binary, and boto3 as the agent. One test per protocol
//! (ec2, rest-xml, query, rest-json, json), each in three acts:
//!
//! 1. the world unchanged since issuance: admitted, and moto shows the change;
//! 2. the world changed between issuance and use: `drift`, and nothing reached moto;
//! 3. the world changed between the broker's read and the write (the proxy holds the write
//!    while the test changes the world): a pinned write fails at AWS, an unpinned one runs and
//!    its decision record says `pinned: false`.
//!
//! Plus the detection rate over a scripted run of 200 changes with a known fraction drifted.
//!
//! Needs python3 with `moto[server]` and `boto3` (tests/requirements.txt).

mod common;

use common::moto::Moto;
use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;

const REGION: &str = "us-east-1";

/// moto, the holding proxy in front of it, and the broker pointed at the proxy.
struct World {
    env: Env,
    moto: Moto,
    proxy_port: u16,
    proxy_log: PathBuf,
    broker: Broker,
    _proxy: KillOnDrop,
}

impl World {
    fn start() -> World {
        let env = Env::new();
        let moto = Moto::start(&env);
        let proxy_log = env.path("proxy.jsonl");
        let port_file = env.path("proxy.port");
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/aws/hold_proxy.py")).args([
            "--upstream",
            &moto.endpoint(),
            "--log",
            proxy_log.to_str().unwrap(),
            "--port-file",
            port_file.to_str().unwrap(),
        ]);
        let (proxy_port, proxy) = spawn_with_port_file(cmd, &port_file, "hold_proxy.py");
        let cfg = broker_config(|listen| {
            format!(
                r#"
[[targets]]
name = "aws"
kind = "aws"
listen = "127.0.0.1:{listen}"
[targets.aws]
endpoint = "http://127.0.0.1:{proxy_port}"
services = ["s3", "ec2", "autoscaling", "dynamodb", "lambda"]
regions = ["{REGION}"]
reads = true
identity = "sts"
execution_role_arn = {:?}
read_role_arn = {:?}
"#,
                moto.setup["seb_exec_arn"].as_str().unwrap(),
                moto.setup["seb_read_arn"].as_str().unwrap()
            )
        });
        // The detection-rate run makes 200 changes on a machine that may be busy: revocation
        // data written once at the start must stay fresh for the whole test.
        let mut cfg = cfg;
        cfg.text = cfg
            .text
            .replace("max_staleness = \"5m\"", "max_staleness = \"1h\"");
        let (akid, secret) = moto.creds("broker");
        let broker = Broker::start_with_env(
            &env,
            &cfg,
            vec![
                ("AWS_ACCESS_KEY_ID".into(), akid),
                ("AWS_SECRET_ACCESS_KEY".into(), secret),
            ],
        );
        World {
            env,
            moto,
            proxy_port,
            proxy_log,
            broker,
            _proxy: proxy,
        }
    }

    fn cert(&self, service: &str, op: &str, resource: &str, body: Value, pre: Value) -> String {
        let t = now();
        let p = json!({
            "iss": "signer", "sub": "agent:oncall", "jti": random_jti(), "iat": t, "nbf": t, "exp": t + 300,
            "aud": "aws",
            "seb": {"v": 1, "action": "remediate", "policy": "oncall-v1", "policy_epoch": 1, "revocation_epoch": 1,
                    "target": "aws", "request": {"service": service, "region": REGION, "operation": op, "resource": resource},
                    "body": {"constraints": body, "others": "deny"},
                    "precondition": pre, "evidence": {"ticket": "INC-23"}}
        });
        seb::cert::jws::sign(&self.env.signer, seb::cert::CERT_TYP, &self.env.kid, &p)
    }

    /// boto3 through the broker with `cert` as its session token: `{"ok": true, "result"}`
    /// or `{"ok": false, "code", "message", "status"}`.
    fn agent(&self, cert: &str, script: &str) -> Value {
        agent_command(&self.env, &self.broker, cert, script)
    }

    /// boto3 straight at moto with the test's admin credentials: the world changing.
    fn admin(&self, script: &str) -> Value {
        let (a, s) = self.moto.creds("admin");
        let program = format!(
            r#"
import json, boto3
from botocore.config import Config
def client(name):
    return boto3.client(name, endpoint_url="{}", region_name="{REGION}", aws_access_key_id="{a}",
                        aws_secret_access_key="{s}", config=Config(s3={{"addressing_style": "path"}}))
print(json.dumps((lambda: ({script}))(), default=str))
"#,
            self.moto.endpoint()
        );
        let out = Command::new("python3")
            .args(["-c", &program])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "admin: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn proxy(&self, path: &str, body: &str) -> String {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sys, urllib.request; print(urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method='POST' if sys.argv[2] else 'GET')).read().decode())",
                &format!("http://127.0.0.1:{}{path}", self.proxy_port),
                body,
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn proxy_to_moto_auth_off(&self) {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=b'inf', method='POST', headers={'Content-Type': 'text/plain'})).read()",
                &format!("{}/moto-api/reset-auth", self.moto.endpoint()),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Requests that reached moto whose method, path, operation or body contains `needle`
    /// (the broker's STS calls go through the proxy too; their session policies name the
    /// operation, but never as `Action=Op`).
    fn reached(&self, needle: &str) -> Vec<Value> {
        read_jsonl(&self.proxy_log)
            .into_iter()
            .filter(|r| {
                format!(
                    "{} {} {} {}",
                    r["method"], r["path"], r["headers"]["x-amz-target"], r["body"]
                )
                .contains(needle)
            })
            .collect()
    }

    /// Runs the agent while the proxy holds the request matching `hold`; changes the world
    /// with `change` once it is held (the broker has read and checked by then), releases it,
    /// and returns the agent's result.
    fn race(&self, cert: &str, script: &str, hold: &str, change: &str) -> Value {
        self.proxy("/__hold", hold);
        let (env_dir, listen) = (self.env.path(""), self.broker.listen);
        let agent = {
            let env = agent_env_vars(&self.env, listen);
            let (cert, script) = (cert.to_string(), script.to_string());
            std::thread::spawn(move || run_boto3(env, &cert, &script))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.proxy("/__held", "") == "0" {
            assert!(
                std::time::Instant::now() < deadline,
                "the write never reached the proxy ({env_dir:?})"
            );
            assert!(
                !agent.is_finished(),
                "the agent finished without its write being held"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.admin(change);
        self.proxy("/__release", "x");
        agent.join().unwrap()
    }

    /// The decision records' `request.drift`, newest last.
    fn drift_records(&self) -> Vec<Value> {
        audit_records(&self.env)
            .into_iter()
            .filter(|r| r["kind"] == "decision")
            .map(|r| {
                json!({"decision": r["decision"], "reason": r["reason"], "drift": r["request"]["drift"]})
            })
            .collect()
    }
}

fn agent_env_vars(env: &Env, listen: u16) -> Vec<(String, String)> {
    let cfg = env.path("agent-aws-config");
    if !cfg.exists() {
        std::fs::write(
            &cfg,
            "[default]\nregion = us-east-1\nmax_attempts = 1\nretry_mode = standard\ns3 =\n    addressing_style = path\n",
        )
        .unwrap();
    }
    vec![
        (
            "AWS_ENDPOINT_URL".into(),
            format!("https://localhost:{listen}"),
        ),
        (
            "AWS_CA_BUNDLE".into(),
            env.path("tls/ca.pem").display().to_string(),
        ),
        (
            "AWS_ACCESS_KEY_ID".into(),
            seb::targets::aws::PLACEHOLDER_ACCESS_KEY_ID.to_string(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".into(),
            "placeholder-not-a-secret".into(),
        ),
        ("AWS_CONFIG_FILE".into(), cfg.display().to_string()),
        ("AWS_DEFAULT_REGION".into(), REGION.into()),
        (
            "AGENT_CERT".into(),
            env.path("tls/agent.pem").display().to_string(),
        ),
        (
            "AGENT_KEY".into(),
            env.path("tls/agent.key").display().to_string(),
        ),
    ]
}

fn agent_command(env: &Env, broker: &Broker, cert: &str, script: &str) -> Value {
    run_boto3(agent_env_vars(env, broker.listen), cert, script)
}

fn run_boto3(vars: Vec<(String, String)>, cert: &str, script: &str) -> Value {
    let program = format!(
        r#"
import json, os, boto3, botocore
from botocore.config import Config
cfg = Config(client_cert=(os.environ["AGENT_CERT"], os.environ["AGENT_KEY"]), retries={{"max_attempts": 1}},
             s3={{"addressing_style": "path"}}, read_timeout=120)
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
        .envs(vars)
        .env("AWS_SESSION_TOKEN", cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_drift(out: &Value, what: &str) {
    assert_eq!(out["ok"], false, "{what}: admitted: {out}");
    assert!(
        out["message"]
            .as_str()
            .unwrap_or_default()
            .contains("seb: drift"),
        "{what}: expected seb: drift, got {out}"
    );
}

#[test]
fn ec2_terminate_is_checked_against_the_instance_state_and_recorded_unpinned() {
    let w = World::start();
    let ids: Vec<String> = w.moto.setup["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    w.admin(&format!(
        "client('ec2').create_tags(Resources={ids:?}, Tags=[{{'Key': 'tier', 'Value': 'canary'}}])"
    ));
    let cert = |id: &str, state: &str| {
        w.cert(
            "ec2",
            "TerminateInstances",
            id,
            json!({"/InstanceId.1": {"eq": id}}),
            json!({"operation": "DescribeInstances", "params": {"InstanceId.1": id},
                   "expect": {"/Reservations/0/Instances/0/State/Name": state,
                              "/Reservations/0/Instances/0/Tags/0/Value": "canary"}}),
        )
    };
    let terminate = |id: &str| {
        format!("client('ec2').terminate_instances(InstanceIds=['{id}'])['TerminatingInstances'][0]['CurrentState']['Name']")
    };

    // Unchanged: admitted.
    let out = w.agent(&cert(&ids[0], "running"), &terminate(&ids[0]));
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(w.moto.state()["ec2"][&ids[0]], "terminated");

    // Changed since issuance (the tag moved on): drift, nothing reached moto.
    let c = cert(&ids[1], "running");
    w.admin(&format!(
        "client('ec2').create_tags(Resources=['{}'], Tags=[{{'Key': 'tier', 'Value': 'prod'}}])",
        ids[1]
    ));
    assert_drift(&w.agent(&c, &terminate(&ids[1])), "retagged instance");
    assert_eq!(w.reached("Action=TerminateInstances").len(), 1);
    assert_eq!(w.moto.state()["ec2"][&ids[1]], "running");

    // Changed between the broker's read and the write: EC2 has no condition, so the write
    // runs on the changed instance, and the decision record says it was unpinned.
    w.admin(&format!(
        "client('ec2').create_tags(Resources=['{}'], Tags=[{{'Key': 'tier', 'Value': 'canary'}}])",
        ids[1]
    ));
    let out = w.race(
        &cert(&ids[1], "running"),
        &terminate(&ids[1]),
        "Action=TerminateInstances",
        &format!("client('ec2').create_tags(Resources=['{}'], Tags=[{{'Key': 'tier', 'Value': 'prod'}}])", ids[1]),
    );
    assert_eq!(out["ok"], true, "{out}");
    let last = w.drift_records().pop().unwrap();
    assert_eq!(last["decision"], "allow");
    assert_eq!(last["drift"]["pinned"], false, "{last}");
    assert_eq!(last["drift"]["precondition"], "DescribeInstances");
    assert_audit_verifies(&w.env);
}

#[test]
fn s3_delete_is_pinned_to_the_checked_etag() {
    let w = World::start();
    let etag = |key: &str| {
        w.admin(&format!(
            "client('s3').head_object(Bucket='prod-artifacts', Key='{key}')['ETag']"
        ))
        .as_str()
        .unwrap()
        .to_string()
    };
    let cert = |key: &str, etag: &str| {
        w.cert(
            "s3",
            "DeleteObject",
            &format!("arn:aws:s3:::prod-artifacts/{key}"),
            json!({"/Bucket": {"eq": "prod-artifacts"}, "/Key": {"eq": key}, "/IfMatch": {"eq": etag}}),
            json!({"operation": "HeadObject", "params": {"Bucket": "prod-artifacts", "Key": key},
                   "expect": {"/ETag": etag}}),
        )
    };
    let delete = |key: &str, etag: &str| {
        format!("client('s3').delete_object(Bucket='prod-artifacts', Key='{key}', IfMatch={etag:?})['ResponseMetadata']['HTTPStatusCode']")
    };

    // Unchanged: admitted, and the If-Match that was certified went to S3.
    let e = etag("old.txt");
    let out = w.agent(&cert("old.txt", &e), &delete("old.txt", &e));
    assert_eq!(out["ok"], true, "{out}");
    assert!(w.moto.state()["s3"].get("old.txt").is_none());
    let sent = w.reached("DELETE");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["headers"]["if-match"], e);
    assert_eq!(w.drift_records().pop().unwrap()["drift"]["how"], "If-Match");

    // A precondition on the ETag without the If-Match in the request: refused before any call.
    let e = etag("keep.txt");
    let bare = w.cert(
        "s3",
        "DeleteObject",
        "arn:aws:s3:::prod-artifacts/keep.txt",
        json!({"/Bucket": {"eq": "prod-artifacts"}, "/Key": {"eq": "keep.txt"}}),
        json!({"operation": "HeadObject", "params": {"Bucket": "prod-artifacts", "Key": "keep.txt"}, "expect": {"/ETag": e}}),
    );
    let out = w.agent(
        &bare,
        "client('s3').delete_object(Bucket='prod-artifacts', Key='keep.txt')",
    );
    assert_eq!(out["ok"], false);
    assert!(
        out["message"].as_str().unwrap().contains("If-Match"),
        "{out}"
    );

    // Changed since issuance: drift, nothing reached S3.
    let c = cert("keep.txt", &e);
    w.admin("client('s3').put_object(Bucket='prod-artifacts', Key='keep.txt', Body=b'changed')");
    assert_drift(&w.agent(&c, &delete("keep.txt", &e)), "rewritten object");
    assert_eq!(w.reached("DELETE").len(), 1);

    // Changed between the read and the write: S3 refuses the pinned delete (412).
    let e = etag("keep.txt");
    let out = w.race(
        &cert("keep.txt", &e),
        &delete("keep.txt", &e),
        "DELETE /prod-artifacts/keep.txt",
        "client('s3').put_object(Bucket='prod-artifacts', Key='keep.txt', Body=b'changed again')",
    );
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["status"], 412, "{out}");
    assert_eq!(w.moto.state()["s3"]["keep.txt"], 13);
    let last = w.drift_records().pop().unwrap();
    assert_eq!(
        (last["drift"]["pinned"].clone(), last["decision"].clone()),
        (json!(true), json!("allow"))
    );
    assert_audit_verifies(&w.env);
}

#[test]
fn autoscaling_capacity_is_checked_against_the_groups_size_and_recorded_unpinned() {
    let w = World::start();
    let cert = |desired: u32, to: u32| {
        w.cert(
            "autoscaling",
            "SetDesiredCapacity",
            "web",
            json!({"/AutoScalingGroupName": {"eq": "web"}, "/DesiredCapacity": {"eq": to}}),
            json!({"operation": "DescribeAutoScalingGroups", "params": {"AutoScalingGroupNames.member.1": "web"},
                   "expect": {"/AutoScalingGroups/0/DesiredCapacity": desired}}),
        )
    };
    let set = |n: u32| {
        format!("client('autoscaling').set_desired_capacity(AutoScalingGroupName='web', DesiredCapacity={n})['ResponseMetadata']['HTTPStatusCode']")
    };

    let out = w.agent(&cert(1, 2), &set(2));
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(w.moto.state()["asg"]["web"], 2);

    let c = cert(2, 3);
    w.admin(
        "client('autoscaling').set_desired_capacity(AutoScalingGroupName='web', DesiredCapacity=4)",
    );
    assert_drift(&w.agent(&c, &set(3)), "resized group");
    assert_eq!(w.reached("Action=SetDesiredCapacity").len(), 1);
    assert_eq!(w.moto.state()["asg"]["web"], 4);

    let out = w.race(
        &cert(4, 3),
        &set(3),
        "Action=SetDesiredCapacity",
        "client('autoscaling').set_desired_capacity(AutoScalingGroupName='web', DesiredCapacity=6)",
    );
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(w.moto.state()["asg"]["web"], 3);
    let last = w.drift_records().pop().unwrap();
    assert_eq!(last["drift"]["pinned"], false, "{last}");
    assert!(last["drift"]["how"]
        .as_str()
        .unwrap()
        .contains("no condition"));
    assert_audit_verifies(&w.env);
}

#[test]
fn lambda_update_is_checked_on_the_configuration_over_rest_json() {
    let w = World::start();
    // moto rejects the SigV4 signature of every body-less rest-json GET, botocore's own
    // included (its bug; see tests/aws/moto_fixture.py), and GetFunctionConfiguration is
    // one: this test runs with moto's auth checks off. The other tests keep them on.
    w.proxy_to_moto_auth_off();
    let conf = || {
        w.admin("(lambda c: {'CodeSha256': c['CodeSha256'], 'Timeout': c['Timeout'], 'RevisionId': c.get('RevisionId')})(client('lambda').get_function_configuration(FunctionName='resize'))")
    };
    // moto's functions have no RevisionId (AWS's do, and change it on every update), so the
    // precondition here reads the timeout and the code hash; the RevisionId pin is
    // covered by drift::pin's tests and by the refusal below.
    assert_eq!(
        conf()["RevisionId"],
        Value::Null,
        "moto grew RevisionId: pin it here"
    );
    let sha = conf()["CodeSha256"].as_str().unwrap().to_string();
    let cert = |timeout: u64, to: u64| {
        w.cert(
            "lambda",
            "UpdateFunctionConfiguration",
            "resize",
            json!({"/FunctionName": {"eq": "resize"}, "/Timeout": {"eq": to}}),
            json!({"operation": "GetFunctionConfiguration", "params": {"FunctionName": "resize"},
                   "expect": {"/Timeout": timeout, "/CodeSha256": sha}}),
        )
    };
    let update = |to: u64| {
        format!("client('lambda').update_function_configuration(FunctionName='resize', Timeout={to})['Timeout']")
    };
    let puts = || {
        w.reached("/configuration")
            .into_iter()
            .filter(|r| r["method"] == "PUT")
            .count()
    };

    // Unchanged: admitted.
    let out = w.agent(&cert(3, 10), &update(10));
    assert_eq!(out, json!({"ok": true, "result": 10}));
    assert_eq!(puts(), 1);

    // Changed since issuance: drift, and the live value is not echoed
    // (GetFunctionConfiguration's answer holds the function's environment).
    let c = cert(10, 20);
    w.admin("client('lambda').update_function_configuration(FunctionName='resize', Timeout=15)");
    let out = w.agent(&c, &update(20));
    assert_drift(&out, "updated function");
    assert!(!out["message"].as_str().unwrap().contains("15"), "{out}");
    assert_eq!(puts(), 1);
    assert_eq!(conf()["Timeout"], 15);

    // A precondition on the RevisionId: the request must carry it (checked before any read),
    // and a function without one is drift, never a pass.
    let rev = |carry: bool| {
        let mut body = json!({"/FunctionName": {"eq": "resize"}, "/Timeout": {"eq": 30}});
        if carry {
            body["/RevisionId"] = json!({"eq": "r-1"});
        }
        w.cert(
            "lambda",
            "UpdateFunctionConfiguration",
            "resize",
            body,
            json!({"operation": "GetFunctionConfiguration", "params": {"FunctionName": "resize"},
                   "expect": {"/RevisionId": "r-1"}}),
        )
    };
    let out = w.agent(&rev(false), &update(30));
    assert_eq!(out["ok"], false);
    assert!(
        out["message"]
            .as_str()
            .unwrap()
            .contains("seb: contract_mismatch")
            && out["message"].as_str().unwrap().contains("RevisionId"),
        "{out}"
    );
    let out = w.agent(
        &rev(true),
        "client('lambda').update_function_configuration(FunctionName='resize', Timeout=30, RevisionId='r-1')['Timeout']",
    );
    assert_drift(&out, "a function with no revision id");
    assert!(out["message"].as_str().unwrap().contains("absent"), "{out}");
    assert_eq!(puts(), 1);

    // Changed between the read and the write: without a checked RevisionId the write is
    // unpinned, runs, and is recorded so.
    let out = w.race(
        &cert(15, 25),
        &update(25),
        "PUT /2015-03-31/functions/resize/configuration",
        "client('lambda').update_function_configuration(FunctionName='resize', Timeout=5)",
    );
    assert_eq!(out, json!({"ok": true, "result": 25}));
    let last = w.drift_records().pop().unwrap();
    assert_eq!(last["drift"]["pinned"], false, "{last}");
    assert!(
        last["drift"]["how"]
            .as_str()
            .unwrap()
            .contains("RevisionId"),
        "{last}"
    );
    assert_audit_verifies(&w.env);
}

#[test]
fn dynamodb_put_is_pinned_to_the_items_version() {
    let w = World::start();
    w.admin("client('dynamodb').put_item(TableName='orders', Item={'id': {'S': 'o-1'}, 'version': {'N': '1'}, 'state': {'S': 'new'}})");
    let cert = |version: u32, state: &str| {
        let v = version.to_string();
        w.cert(
            "dynamodb",
            "PutItem",
            "orders",
            json!({"/TableName": {"eq": "orders"}, "/Item/id/S": {"eq": "o-1"}, "/Item/version/N": {"eq": (version + 1).to_string()},
                   "/Item/state/S": {"eq": state}, "/ConditionExpression": {"eq": "#v = :v"},
                   "/ExpressionAttributeNames/#v": {"eq": "version"}, "/ExpressionAttributeValues/:v/N": {"eq": v}}),
            json!({"operation": "GetItem", "params": {"TableName": "orders", "Key": {"id": {"S": "o-1"}}, "ConsistentRead": true},
                   "expect": {"/Item/version": {"N": v}}}),
        )
    };
    let put = |version: u32, state: &str| {
        format!(
            "client('dynamodb').put_item(TableName='orders', Item={{'id': {{'S': 'o-1'}}, 'version': {{'N': '{}'}}, 'state': {{'S': '{state}'}}}}, \
             ConditionExpression='#v = :v', ExpressionAttributeNames={{'#v': 'version'}}, ExpressionAttributeValues={{':v': {{'N': '{version}'}}}})['ResponseMetadata']['HTTPStatusCode']",
            version + 1
        )
    };
    let item = || {
        w.admin("client('dynamodb').get_item(TableName='orders', Key={'id': {'S': 'o-1'}})['Item']")
    };

    let out = w.agent(&cert(1, "paid"), &put(1, "paid"));
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(item()["version"]["N"], "2");

    let c = cert(2, "shipped");
    w.admin("client('dynamodb').update_item(TableName='orders', Key={'id': {'S': 'o-1'}}, UpdateExpression='SET version = :n', ExpressionAttributeValues={':n': {'N': '3'}})");
    assert_drift(
        &w.agent(&c, &put(2, "shipped")),
        "a newer version of the item",
    );
    assert_eq!(w.reached("DynamoDB_20120810.PutItem").len(), 1);

    let out = w.race(
        &cert(3, "shipped"),
        &put(3, "shipped"),
        "DynamoDB_20120810.PutItem",
        "client('dynamodb').update_item(TableName='orders', Key={'id': {'S': 'o-1'}}, UpdateExpression='SET version = :n', ExpressionAttributeValues={':n': {'N': '9'}})",
    );
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["code"], "ConditionalCheckFailedException", "{out}");
    assert_eq!(item()["version"]["N"], "9");
    assert_eq!(w.drift_records().pop().unwrap()["drift"]["pinned"], true);
    assert_audit_verifies(&w.env);
}

/// The detection rate: 200 certified changes, every fifth of them to a group whose size moved
/// after its certificate was issued. Every drifted one must be refused as `drift`, and no
/// undrifted one refused. Prints the counts (a correctness figure, not a timing).
#[test]
fn drift_detection_rate_over_200_scripted_changes() {
    let w = World::start();
    const N: usize = 200;
    // One boto3 process runs every change; each has its own certificate (max_uses 1).
    let mut plan = Vec::new();
    let mut size = 1u32;
    for i in 0..N {
        let drifted = i % 5 == 4;
        let to = if size >= 8 { 1 } else { size + 1 };
        let cert = w.cert(
            "autoscaling",
            "SetDesiredCapacity",
            "batch",
            json!({"/AutoScalingGroupName": {"eq": "batch"}, "/DesiredCapacity": {"eq": to}}),
            json!({"operation": "DescribeAutoScalingGroups", "params": {"AutoScalingGroupNames.member.1": "batch"},
                   "expect": {"/AutoScalingGroups/0/DesiredCapacity": size}}),
        );
        plan.push(json!({"cert": cert, "to": to, "drifted": drifted, "size": size}));
        if !drifted {
            size = to;
        }
    }
    let plan_file = w.env.path("plan.json");
    std::fs::write(&plan_file, serde_json::to_vec(&plan).unwrap()).unwrap();
    let (a, s) = w.moto.creds("admin");
    let program = format!(
        r#"
import json, os, boto3, botocore
from botocore.config import Config
cfg = Config(client_cert=(os.environ["AGENT_CERT"], os.environ["AGENT_KEY"]), retries={{"max_attempts": 1}})
admin = boto3.client("autoscaling", endpoint_url="{endpoint}", region_name="{REGION}", aws_access_key_id="{a}", aws_secret_access_key="{s}")
out = []
for step in json.load(open("{plan}")):
    if step["drifted"]:
        # The world moves after issuance: someone else resizes the group, then sets it back
        # to a size other than the one the certificate saw.
        admin.set_desired_capacity(AutoScalingGroupName="batch", DesiredCapacity=9)
    agent = boto3.client("autoscaling", config=cfg, aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                         aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"], aws_session_token=step["cert"])
    try:
        agent.set_desired_capacity(AutoScalingGroupName="batch", DesiredCapacity=step["to"])
        out.append("admitted")
    except botocore.exceptions.ClientError as e:
        out.append(e.response["Error"]["Message"])
    if step["drifted"]:
        admin.set_desired_capacity(AutoScalingGroupName="batch", DesiredCapacity=step["size"])
print(json.dumps(out))
"#,
        endpoint = w.moto.endpoint(),
        plan = plan_file.display()
    );
    let out = Command::new("python3")
        .args(["-c", &program])
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .envs(agent_env_vars(&w.env, w.broker.listen))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), N);
    let (mut drifted, mut drifted_refused, mut clean, mut clean_refused) = (0, 0, 0, 0);
    for (step, r) in plan.iter().zip(&results) {
        if step["drifted"] == true {
            drifted += 1;
            if r.contains("seb: drift") {
                drifted_refused += 1;
            }
        } else {
            clean += 1;
            if r != "admitted" {
                clean_refused += 1;
                eprintln!("undrifted change refused: {r}");
            }
        }
    }
    println!(
        "drift detection: {drifted_refused}/{drifted} drifted changes refused, {clean_refused}/{clean} undrifted changes refused"
    );
    assert_eq!((drifted, clean), (40, 160));
    assert_eq!(drifted_refused, drifted);
    assert_eq!(clean_refused, 0);
    assert_eq!(w.reached("Action=SetDesiredCapacity").len(), clean);
}
