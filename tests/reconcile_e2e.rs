//! `seb reconcile` on provider logs from real runs through the broker.
//!
//! Kubernetes: tests/kube/apiserver.py writes `audit.k8s.io/v1` Events for every request it
//! serves; the admitted mutations come through the `seb` binary from kubectl, the bypass is
//! the agent's own token used directly, the unadmitted call is the broker's token used without
//! the broker. AWS: moto writes no CloudTrail, so its recorder keeps every request it served
//! and its STS state says whose each access key is; the test writes those as CloudTrail files
//! (one gzipped). The classes no real run can produce without breaking the broker (a decision
//! whose call never arrived, a call that is not what its decision admitted) are injected into
//! copies of those logs.

mod common;

use common::moto::Moto;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const BROKER_USER: &str = "system:serviceaccount:seb:seb";
const AGENT_OWN_TOKEN: &str = "agent-own-cluster-token-it-should-not-have";

fn classes(report: &Value) -> BTreeSet<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["class"].as_str().unwrap().to_string())
        .collect()
}

fn reconcile(args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["reconcile", "--grace", "0s", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = seb(&all);
    let report = serde_json::from_str(&out).unwrap_or(Value::Null);
    (code, report, err)
}

fn write_lines(path: &Path, lines: &[Value]) {
    let text: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    std::fs::write(path, text).unwrap();
}

// === kubernetes ===

fn configmap_cert(env: &Env, name: &str) -> String {
    env.kube_cert(
        json!({"verb": "create", "group": "", "resource": "configmaps", "namespace": "shop"}),
        json!({"constraints": {"/metadata/name": {"eq": name}}, "others": "allow"}),
        |_| {},
    )
}

fn create_configmap(env: &Env, kc: &Path, token: Option<&str>, name: &str, extra: &[&str]) {
    let file = env.path(&format!("{name}.json"));
    std::fs::write(
        &file,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "shop"}, "data": {"k": "v"}})
            .to_string(),
    )
    .unwrap();
    let mut args = vec!["create", "--validate=false", "-f", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, out, err) = kubectl(kc, token, &args);
    assert_eq!(code, 0, "kubectl create {name}: {out}{err}");
}

/// A kubeconfig straight at the apiserver, not the broker.
fn direct_kubeconfig(env: &Env, api: &KubeApiserver, token: &str, name: &str) -> PathBuf {
    let (code, out, err) = seb(&[
        "kubeconfig",
        "--server",
        &format!("https://localhost:{}", api.port),
        "--ca",
        env.path("tls/ca.pem").to_str().unwrap(),
        "--token",
        token,
        "--namespace",
        "shop",
    ]);
    assert_eq!(code, 0, "{err}");
    let p = env.path(name);
    std::fs::write(&p, out).unwrap();
    p
}

#[test]
fn kubernetes_events_from_a_real_run_are_reconciled() {
    let env = Env::new();
    let audit_log = env.path("k8s-audit.jsonl");
    let api = KubeApiserver::start_with(
        &env,
        &[
            "--audit-log",
            audit_log.to_str().unwrap(),
            "--broker-user",
            BROKER_USER,
            "--agent-token-env",
            "SEB_TEST_AGENT_OWN_TOKEN",
            "--agent-user",
            "agent:oncall",
            "--agent-can-write",
        ],
        &[("SEB_TEST_AGENT_OWN_TOKEN", AGENT_OWN_TOKEN)],
    );
    let broker = Broker::start(&env, &env.kube_config(api.port));
    let kc = kubeconfig(&env, &broker, AGENT_TOKEN, "agent.kubeconfig");
    for name in ["cm-a", "cm-b", "cm-c"] {
        create_configmap(&env, &kc, Some(&configmap_cert(&env, name)), name, &[]);
    }
    let seb_audit = env.path("audit.jsonl");
    let base = [
        "--audit",
        seb_audit.to_str().unwrap(),
        "--kube-broker-user",
        BROKER_USER,
        "--kube-audit",
    ];
    let with = |log: &Path| {
        let mut a: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        a.push(log.display().to_string());
        a
    };
    let run = |log: &Path| {
        let a = with(log);
        reconcile(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // Clean: every mutation is an admitted decision's, and every decision arrived.
    let (code, report, err) = run(&audit_log);
    assert_eq!(code, 0, "{report:#}{err}");
    assert_eq!(report["matched"], 3, "{report:#}");
    assert_eq!(report["decisions"], 3, "{report:#}");

    // The agent's own credential, used directly: a bypass.
    let own = direct_kubeconfig(&env, &api, AGENT_OWN_TOKEN, "own.kubeconfig");
    create_configmap(&env, &own, None, "cm-bypass", &[]);
    // The broker's credential used without the broker (stolen from its pod), impersonating
    // the execution user as the broker would: no decision accounts for it.
    let stolen = direct_kubeconfig(&env, &api, KUBE_BROKER_TOKEN, "stolen.kubeconfig");
    create_configmap(
        &env,
        &stolen,
        None,
        "cm-forged",
        &["--as", "seb:exec:shop-deployer", "--as-group", "seb:exec"],
    );
    let (code, report, _) = run(&audit_log);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        classes(&report),
        BTreeSet::from(["bypass".into(), "unadmitted".into()]),
        "{report:#}"
    );
    let bypass = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["class"] == "bypass")
        .unwrap();
    assert_eq!(bypass["event"]["principal"], "agent:oncall", "{report:#}");

    // Injected into a copy: cm-b's call never arrived, cm-c's ran in another namespace than
    // its decision admitted.
    let mut events: Vec<Value> = read_jsonl(&audit_log);
    let is_create = |e: &Value, name: &str| {
        e["verb"] == "create"
            && e["objectRef"]["name"] == name
            && e["user"]["username"] == BROKER_USER
    };
    let before = events.len();
    events.retain(|e| !is_create(e, "cm-b"));
    assert_eq!(events.len(), before - 1);
    let c = events.iter_mut().find(|e| is_create(e, "cm-c")).unwrap();
    c["objectRef"]["namespace"] = json!("locked");
    let injected = env.path("k8s-audit-injected.jsonl");
    write_lines(&injected, &events);
    let (code, report, _) = run(&injected);
    assert_eq!(code, 1);
    assert_eq!(
        classes(&report),
        BTreeSet::from([
            "bypass".into(),
            "unadmitted".into(),
            "unconfirmed".into(),
            "mismatch".into()
        ]),
        "{report:#}"
    );
    // The table names each too.
    let a = with(&injected);
    let mut args: Vec<&str> = vec!["reconcile", "--grace", "0s"];
    args.extend(a.iter().map(String::as_str));
    let (code, table, _) = seb(&args);
    assert_eq!(code, 1);
    for class in ["bypass", "unadmitted", "unconfirmed", "mismatch"] {
        assert!(
            table.lines().any(|l| l.starts_with(class)),
            "{class} missing:\n{table}"
        );
    }

    // A duplicate key in an event is refused, not read one way.
    let text = std::fs::read_to_string(&audit_log).unwrap();
    let dup = text.replacen(
        "\"verb\": \"create\"",
        "\"verb\": \"create\", \"verb\": \"get\"",
        1,
    );
    assert_ne!(dup, text);
    let dup_log = env.path("dup.jsonl");
    std::fs::write(&dup_log, dup).unwrap();
    let a = with(&dup_log);
    let mut args: Vec<&str> = vec!["reconcile"];
    args.extend(a.iter().map(String::as_str));
    let (code, _, err) = seb(&args);
    assert_eq!(code, 2);
    assert!(err.contains("duplicate"), "{err}");
}

// === aws ===

const REGION: &str = "us-east-1";

fn moto_post(moto: &Moto, path: &str, body: &str) {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method='POST', headers={'Content-Type': 'text/plain'})).read()",
            &format!("{}{path}", moto.endpoint()),
            body,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn aws_cert(env: &Env, request: Value, body: Value) -> String {
    let t = now();
    let p = json!({
        "iss": "signer", "sub": "agent:oncall", "jti": random_jti(), "iat": t, "nbf": t, "exp": t + 300,
        "aud": "aws",
        "seb": {"v": 1, "action": "remediate", "policy": "oncall-v1", "policy_epoch": 1, "revocation_epoch": 1,
                "target": "aws", "request": request, "body": body, "evidence": {"ticket": "INC-9"}}
    });
    seb::cert::jws::sign(&env.signer, seb::cert::CERT_TYP, &env.kid, &p)
}

/// The real aws CLI: through the broker with a certificate, or straight at moto with keys.
fn aws(env: &Env, endpoint: &str, session_token: Option<&str>, key: (&str, &str), args: &[&str]) {
    let cfg = env.path("aws-config");
    std::fs::write(
        &cfg,
        format!("[default]\nregion = {REGION}\nmax_attempts = 1\n"),
    )
    .unwrap();
    let mut c = Command::new("aws");
    c.args(args)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_CA_BUNDLE", env.path("tls/ca.pem"))
        .env("AWS_ACCESS_KEY_ID", key.0)
        .env("AWS_SECRET_ACCESS_KEY", key.1)
        .env("AWS_CONFIG_FILE", &cfg)
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_PAGER", "");
    if let Some(t) = session_token {
        c.env("AWS_SESSION_TOKEN", t);
    }
    let out = c.output().expect("the aws CLI");
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A recorded request's body (moto's recorder keeps bytes in base64).
fn recorded_body(entry: &Value) -> Vec<u8> {
    use base64::Engine;
    match entry["body_encoded"].as_bool() {
        Some(true) => base64::engine::general_purpose::STANDARD
            .decode(entry["body"].as_str().unwrap_or(""))
            .unwrap(),
        _ => entry["body"].as_str().unwrap_or("").as_bytes().to_vec(),
    }
}

/// One CloudTrail record for a request moto recorded: who from the access key (moto's STS
/// sessions and the fixture's users), what from the SigV4 scope and the body.
fn cloudtrail_record(entry: &Value, whose: &dyn Fn(&str) -> Value, n: usize) -> Option<Value> {
    let h = &entry["headers"];
    let auth = h["Authorization"].as_str()?;
    let scope = auth.split("Credential=").nth(1)?.split(',').next()?;
    let parts: Vec<&str> = scope.split('/').collect();
    let (key, service) = (parts[0], parts[3]);
    let body = recorded_body(entry);
    let (operation, params) = match h["X-Amz-Target"].as_str() {
        Some(t) => (
            t.rsplit('.').next().unwrap().to_string(),
            serde_json::from_slice::<Value>(&body).unwrap_or(json!({})),
        ),
        None => {
            let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
            let op = form.iter().find(|(k, _)| k == "Action")?.1.clone();
            let mut p = serde_json::Map::new();
            let mut instances = Vec::new();
            for (k, v) in form {
                if k.starts_with("InstanceId.") {
                    instances.push(json!({"instanceId": v}));
                } else if k != "Action" && k != "Version" {
                    p.insert(k, json!(v));
                }
            }
            if !instances.is_empty() {
                p.insert("instancesSet".into(), json!({"items": instances}));
            }
            (op, Value::Object(p))
        }
    };
    let date = h["X-Amz-Date"].as_str()?;
    let time = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &date[0..4],
        &date[4..6],
        &date[6..8],
        &date[9..11],
        &date[11..13],
        &date[13..15]
    );
    let read_only = [
        "Describe",
        "Get",
        "List",
        "Head",
        "Scan",
        "Query",
        "AssumeRole",
    ]
    .iter()
    .any(|p| operation.starts_with(p));
    Some(json!({
        "eventVersion": "1.09", "eventTime": time, "eventSource": format!("{service}.amazonaws.com"),
        "eventName": operation, "awsRegion": parts[2], "eventID": format!("moto-{n}"),
        "readOnly": read_only, "userIdentity": whose(key), "requestParameters": params,
        "eventType": "AwsApiCall", "recipientAccountId": "123456789012",
    }))
}

fn write_trail(path: &Path, records: &[Value], gzip: bool) {
    let doc = json!({"Records": records}).to_string();
    if gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(doc.as_bytes()).unwrap();
        std::fs::write(path, gz.finish().unwrap()).unwrap();
    } else {
        std::fs::write(path, doc).unwrap();
    }
}

#[test]
fn cloudtrail_built_from_a_real_moto_run_is_reconciled() {
    let env = Env::new();
    let moto = Moto::start(&env);
    // moto answers its own API only with its auth checks off: off for this one call, as
    // tests/aws/moto_fixture.py does to read state.
    moto_post(&moto, "/moto-api/reset-auth", "inf");
    moto_post(&moto, "/moto-api/recorder/start-recording", "");
    moto_post(&moto, "/moto-api/reset-auth", "0");
    let exec_role = moto.setup["seb_exec_arn"].as_str().unwrap().to_string();
    let endpoint = moto.endpoint();
    let cfg = broker_config(|listen| {
        format!(
            r#"
[[targets]]
name = "aws"
kind = "aws"
listen = "127.0.0.1:{listen}"
[targets.aws]
endpoint = "{endpoint}"
services = ["ec2", "dynamodb", "sqs"]
regions = ["{REGION}"]
reads = true
identity = "sts"
execution_role_arn = "{exec_role}"
read_role_arn = "{}"
"#,
            moto.setup["seb_read_arn"].as_str().unwrap()
        )
    });
    let (akid, secret) = moto.creds("broker");
    let broker = Broker::start_with_env(
        &env,
        &cfg,
        vec![
            ("AWS_ACCESS_KEY_ID".into(), akid),
            ("AWS_SECRET_ACCESS_KEY".into(), secret),
        ],
    );
    let via_broker = format!("https://localhost:{}", broker.listen);
    let placeholder = (
        seb::targets::aws::PLACEHOLDER_ACCESS_KEY_ID,
        "placeholder-not-a-secret",
    );
    let ids: Vec<String> = moto.setup["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    // Admitted through the broker: one STS session per certificate.
    let term = aws_cert(
        &env,
        json!({"service": "ec2", "region": REGION, "operation": "TerminateInstances", "resource": ids[0]}),
        json!({"constraints": {"/InstanceId.1": {"eq": ids[0]}}, "others": "deny"}),
    );
    aws(
        &env,
        &via_broker,
        Some(&term),
        placeholder,
        &["ec2", "terminate-instances", "--instance-ids", &ids[0]],
    );
    for id in ["o-1", "o-2"] {
        let put = aws_cert(
            &env,
            json!({"service": "dynamodb", "region": REGION, "operation": "PutItem", "resource": "orders"}),
            json!({"constraints": {"/TableName": {"eq": "orders"}, "/Item/id/S": {"eq": id}}, "others": "deny"}),
        );
        let item = format!(r#"{{"id": {{"S": "{id}"}}}}"#);
        aws(
            &env,
            &via_broker,
            Some(&put),
            placeholder,
            &[
                "dynamodb",
                "put-item",
                "--table-name",
                "orders",
                "--item",
                &item,
            ],
        );
    }
    let seb_audit = env.path("audit.jsonl");

    // What moto served, and whose each key is. moto's /moto-api/data.json would list its STS
    // sessions, but it fails (500) once the fixture's EC2 and Lambda state is in it; so a
    // session key's ARN comes from STS's answer as the broker recorded it (the outcome's
    // identity), checked against the AssumeRole calls moto itself recorded.
    let recording = env.path("moto-recording.jsonl");
    let assumed: Vec<String> = read_jsonl(&recording)
        .iter()
        .filter_map(|e| {
            let body = recorded_body(e);
            let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
            form.iter()
                .any(|(k, v)| k == "Action" && v == "AssumeRole")
                .then(|| {
                    form.iter()
                        .find(|(k, _)| k == "RoleSessionName")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                })
        })
        .collect();
    let sessions: Vec<Value> = audit_records(&env)
        .into_iter()
        .filter_map(|r| r["identity"].as_object().cloned().map(Value::Object))
        .filter(|i| i["kind"] == "sts")
        .collect();
    assert!(!sessions.is_empty(), "the broker minted sessions");
    for s in &sessions {
        let name = s["session"].as_str().unwrap();
        assert!(
            assumed.iter().any(|a| a == name),
            "moto saw no AssumeRole for {name}"
        );
    }
    let setup = moto.setup.clone();
    let whose = move |key: &str| -> Value {
        if let Some(s) = sessions.iter().find(|s| s["access_key_id"] == key) {
            let arn = s["arn"].as_str().unwrap();
            return json!({"type": "AssumedRole", "principalId": format!("AROA:{}", s["session"].as_str().unwrap()),
                "arn": arn, "accountId": "123456789012", "accessKeyId": key,
                "sessionContext": {"sessionIssuer": {"type": "Role", "arn": s["role"], "accountId": "123456789012"}}});
        }
        for (who, user) in [
            ("admin", "test-admin"),
            ("broker", "seb-broker"),
            ("static", "seb-static"),
        ] {
            if setup[who][0] == key {
                return json!({"type": "IAMUser", "principalId": format!("AIDA{user}"), "accountId": "123456789012",
                    "arn": format!("arn:aws:iam::123456789012:user/{user}"), "accessKeyId": key, "userName": user});
            }
        }
        panic!("moto served a key nobody in the test holds: {key}")
    };
    let trail = |entries: &[Value]| -> Vec<Value> {
        entries
            .iter()
            .enumerate()
            .filter_map(|(n, e)| cloudtrail_record(e, &whose, n))
            .collect()
    };
    let clean = trail(&read_jsonl(&recording));
    assert!(
        clean.iter().filter(|r| r["readOnly"] == false).count() >= 3,
        "the recording has the admitted calls: {clean:#?}"
    );
    // Split across a plain and a gzipped file, as CloudTrail delivers them.
    let (first, second) = clean.split_at(clean.len() / 2);
    let (f1, f2) = (env.path("trail-1.json"), env.path("trail-2.json.gz"));
    write_trail(&f1, first, false);
    write_trail(&f2, second, true);
    let args = |files: &[&Path]| {
        let mut a = vec![
            "--audit".to_string(),
            seb_audit.display().to_string(),
            "--cloudtrail".to_string(),
        ];
        a.extend(files.iter().map(|f| f.display().to_string()));
        a
    };
    let run = |files: &[&Path]| {
        let a = args(files);
        reconcile(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (code, report, err) = run(&[&f1, &f2]);
    assert_eq!(code, 0, "{report:#}{err}");
    assert_eq!(report["matched"], 3, "{report:#}");

    // A bypass for real: the admin's own keys, straight at moto.
    let admin = moto.creds("admin");
    aws(
        &env,
        &endpoint,
        None,
        (&admin.0, &admin.1),
        &["ec2", "terminate-instances", "--instance-ids", &ids[1]],
    );
    let mut all = trail(&read_jsonl(&recording));
    // Injected: a session of the execution role seb never minted (forged or replayed
    // credentials), the first PutItem never arriving, and the terminate hitting another
    // instance than its decision admitted.
    let mut forged = all
        .iter()
        .find(|r| r["eventName"] == "PutItem")
        .unwrap()
        .clone();
    forged["userIdentity"]["accessKeyId"] = json!("ASIAFORGEDSESSION000");
    forged["userIdentity"]["arn"] = json!("arn:aws:sts::123456789012:assumed-role/seb-exec/forged");
    forged["eventID"] = json!("forged");
    let first_put = all
        .iter()
        .position(|r| r["eventName"] == "PutItem")
        .unwrap();
    all.remove(first_put);
    let t = all
        .iter_mut()
        .find(|r| {
            r["eventName"] == "TerminateInstances" && r["userIdentity"]["type"] == "AssumedRole"
        })
        .unwrap();
    t["requestParameters"] = json!({"instancesSet": {"items": [{"instanceId": ids[1]}]}});
    all.push(forged);
    let injected = env.path("trail-injected.json.gz");
    write_trail(&injected, &all, true);
    let (code, report, _) = run(&[&injected]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        classes(&report),
        BTreeSet::from([
            "bypass".into(),
            "unadmitted".into(),
            "unconfirmed".into(),
            "mismatch".into()
        ]),
        "{report:#}"
    );
    let bypass = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["class"] == "bypass")
        .unwrap();
    assert_eq!(
        bypass["event"]["principal"],
        "arn:aws:iam::123456789012:user/test-admin"
    );
}
