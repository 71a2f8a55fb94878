//! The signer in front of the aws and kubernetes targets, with the agents' own tools:
//! `seb exec --proposal certs/deploy.json -- aws ecs update-service ...` against moto, and
//! `seb exec --proposal certs/scale.json -- kubectl scale ...` against the test apiserver. The
//! certificate goes where each tool looks for a credential (AWS_SESSION_TOKEN, the
//! kubeconfig's token); the broker admits exactly what the signer's policy certified.

mod common;

use common::moto::Moto;
use common::signer::*;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

/// A timezone in which it is about noon now, so a window from 00:00 to 23:59 there is open
/// for hours whatever the time of day the test runs.
fn noon_zone() -> String {
    let hour = now().rem_euclid(86_400) / 3600;
    let mut off = 12 - hour;
    if off > 12 {
        off -= 24;
    }
    match off {
        0 => "Etc/GMT".into(),
        // POSIX-style names: Etc/GMT-2 is two hours ahead of UTC.
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    }
}

fn signer_for(env: &Env, fake: &EvidenceFake) -> SignerProcess {
    let mut cfg = signer_config(
        env,
        &fake.url(),
        &format!("{}/risk", fake.url()),
        &repo().join("policies"),
        "",
    );
    cfg.text = cfg
        .text
        .replace(
            "timezone = \"Europe/Berlin\"",
            &format!("timezone = \"{}\"", noon_zone()),
        )
        .replace(
            "days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]",
            "days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]",
        )
        .replace(
            "from = \"09:00\"\nto = \"17:00\"",
            "from = \"00:00\"\nto = \"23:59\"",
        );
    assert!(cfg.text.contains("23:59"));
    SignerProcess::start(env, &cfg)
}

/// `seb exec` as the token-authenticated agent, with `extra_env` for the tool.
fn exec(
    env: &Env,
    signer: &SignerProcess,
    proposal: &Path,
    extra_env: &[(String, String)],
    cmd: &[&str],
) -> (i32, String, String) {
    exec_with(env, signer, proposal, extra_env, &[], cmd)
}

/// `exec` with more of `seb exec`'s own options (`--prepare URL`).
fn exec_with(
    env: &Env,
    signer: &SignerProcess,
    proposal: &Path,
    extra_env: &[(String, String)],
    options: &[&str],
    cmd: &[&str],
) -> (i32, String, String) {
    let out = Command::new(seb_bin())
        .args(["exec", "--signer", &signer.url(), "--ca"])
        .arg(env.path("tls/ca.pem"))
        .args(["--token", SIGNER_TOKEN, "--proposal"])
        .arg(proposal)
        .args(options)
        .arg("--")
        .args(cmd)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .envs(extra_env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn kubectl_scale_through_the_signer() {
    let env = Env::new();
    let fake = EvidenceFake::start(env.dir.path());
    fake.set(&green_world());
    let api = KubeApiserver::start(&env);
    let broker = Broker::start(&env, &env.kube_config(api.port));
    let signer = signer_for(&env, &fake);
    let kc = kubeconfig(&env, &broker, AGENT_TOKEN, "agent.kubeconfig");
    // The deployment to scale, created under a certificate made by hand (setup, not the subject).
    let web = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","namespace":"shop"},"spec":{"replicas":2,"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"app","image":"reg.local/app:1"}]}}}}"#;
    std::fs::write(env.path("web.json"), web).unwrap();
    let create = env.kube_cert(
        json!({"verb": "create", "group": "apps", "resource": "deployments", "namespace": "shop"}),
        json!({"constraints": {"/metadata/name": {"eq": "web"}}, "others": "allow"}),
        |_| {},
    );
    let (code, _, err) = kubectl(
        &kc,
        Some(&create),
        &[
            "create",
            "--validate=false",
            "-f",
            env.path("web.json").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let mutations = api.mutations().len();

    let kube_env = [
        ("KUBECONFIG".to_string(), kc.display().to_string()),
        ("HOME".to_string(), env.dir.path().display().to_string()),
    ];
    let scale = repo().join("certs/scale.json");
    let cache = env.path("kube-cache").display().to_string();
    let (code, out, err) = exec(
        &env,
        &signer,
        &scale,
        &kube_env,
        &[
            "kubectl",
            "--cache-dir",
            &cache,
            "scale",
            "deploy",
            "web",
            "-n",
            "shop",
            "--replicas=3",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("scaled"), "{out}");
    let m = api.mutations().pop().unwrap();
    assert_eq!(m["method"], "PATCH");
    assert!(
        m["path"]
            .as_str()
            .unwrap()
            .ends_with("/deployments/web/scale"),
        "{m}"
    );
    assert_eq!(api.mutations().len(), mutations + 1);
    // Refused by the broker: the signer certified 2 to 10 replicas.
    let (code, _, err) = exec(
        &env,
        &signer,
        &scale,
        &kube_env,
        &[
            "kubectl",
            "--cache-dir",
            &cache,
            "scale",
            "deploy",
            "web",
            "-n",
            "shop",
            "--replicas=50",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("seb: contract_mismatch"), "{err}");
    assert_eq!(api.mutations().len(), mutations + 1);
    // Refused by the signer: a proposal for more than the policy's bound never gets a certificate.
    let mut big: Value = serde_json::from_slice(&std::fs::read(&scale).unwrap()).unwrap();
    big["proposal"]["body"]["constraints"]["/spec/replicas"]["max"] = json!(50);
    std::fs::write(env.path("scale-50.json"), big.to_string()).unwrap();
    let (code, _, err) = exec(
        &env,
        &signer,
        &env.path("scale-50.json"),
        &kube_env,
        &[
            "kubectl",
            "--cache-dir",
            &cache,
            "scale",
            "deploy",
            "web",
            "-n",
            "shop",
            "--replicas=50",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("not_permitted") && err.contains("scale-within-bounds"),
        "{err}"
    );
    assert_eq!(api.mutations().len(), mutations + 1);
    // The broker's record of the change names the signer's policy (kubectl's discovery reads
    // under the same certificate are recorded too, as reads).
    let admitted: Vec<Value> = audit_records(&env)
        .into_iter()
        .filter(|r| {
            r["kind"] == "decision" && r["decision"] == "allow" && r["request"]["method"] == "PATCH"
        })
        .collect();
    assert_eq!(admitted.len(), 1, "{admitted:?}");
    assert_eq!(admitted[0]["policy"], "scale-within-bounds");
}

#[test]
fn aws_cli_deploy_through_the_signer_against_moto() {
    let env = Env::new();
    let fake = EvidenceFake::start(env.dir.path());
    fake.set(&green_world());
    let moto = Moto::start(&env);
    let endpoint = moto.endpoint();
    let cfg = broker_config(|listen| {
        format!(
            r#"
[[targets]]
name = "prod-aws"
kind = "aws"
listen = "127.0.0.1:{listen}"
[targets.aws]
endpoint = "{endpoint}"
services = ["ecs"]
regions = ["us-east-1"]
reads = true
identity = "sts"
execution_role_arn = {exec:?}
read_role_arn = {read:?}
"#,
            exec = moto.setup["seb_exec_arn"].as_str().unwrap(),
            read = moto.setup["seb_read_arn"].as_str().unwrap(),
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
    let signer = signer_for(&env, &fake);
    std::fs::write(
        env.path("aws-config"),
        "[default]\nregion = us-east-1\nmax_attempts = 1\n",
    )
    .unwrap();
    let aws_env: Vec<(String, String)> = [
        (
            "AWS_ENDPOINT_URL",
            format!("https://localhost:{}", broker.listen),
        ),
        (
            "AWS_CA_BUNDLE",
            env.path("tls/ca.pem").display().to_string(),
        ),
        (
            "AWS_CONFIG_FILE",
            env.path("aws-config").display().to_string(),
        ),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".to_string()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
        ("AWS_PAGER", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let deploy = repo().join("certs/deploy.json");
    let update = |task: &str| {
        [
            "aws",
            "ecs",
            "update-service",
            "--cluster",
            "prod",
            "--service",
            "api",
            "--task-definition",
            task,
        ]
        .map(String::from)
    };
    let run = |proposal: &Path, args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        exec(&env, &signer, proposal, &aws_env, &args)
    };
    // Everything low-risk-deploy wants holds: green CI, allowed paths, risk 12, window open.
    let (code, out, err) = run(&deploy, &update("api:1"));
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["service"]["serviceName"], "api");
    // Prepared: `seb exec --prepare` presents the certificate before the CLI starts, and the
    // broker mints its STS session (an AssumeRole at moto) in the background.
    let metric = |outcome: &str| {
        let text = http_get(broker.admin, "/metrics");
        let line = format!("seb_prepares_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .map_or(0, |n| n.trim().parse::<u64>().unwrap())
    };
    let listener = format!("https://localhost:{}", broker.listen);
    let args: Vec<String> = update("api:1").to_vec();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = exec_with(
        &env,
        &signer,
        &deploy,
        &aws_env,
        &["--prepare", &listener],
        &args,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("did not prepare"), "{err}");
    assert_eq!(metric("accepted"), 1);
    // The use waited for the prepared mint; its counter follows a moment after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric("minted") + metric("mint_failed") == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!((metric("minted"), metric("mint_failed")), (1, 0));
    // A prepare that fails (here sent to the admin port, which is no target listener) is
    // reported, and the command still runs and is judged in full.
    let (code, _, err) = exec_with(
        &env,
        &signer,
        &deploy,
        &aws_env,
        &["--prepare", &format!("https://localhost:{}", broker.admin)],
        &args,
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("did not prepare"), "{err}");
    // Refused by the broker: the certificate pins task definition api:1.
    let (code, _, err) = run(&deploy, &update("api:2"));
    assert_ne!(code, 0);
    assert!(err.contains("seb: contract_mismatch"), "{err}");
    // Refused by the signer: CI went red; nothing reaches the broker.
    let before = audit_records(&env).len();
    let mut red = green_world();
    red["pulls"]["acme/api#42"]["checks"][0]["conclusion"] = json!("failure");
    fake.set(&red);
    let (code, _, err) = run(&deploy, &update("api:1"));
    assert_ne!(code, 0);
    assert!(
        err.contains("not_permitted") && err.contains("unit: failure"),
        "{err}"
    );
    assert_eq!(audit_records(&env).len(), before);
    // The admitted call is on record under the signer's policy, with its evidence.
    let admitted: Vec<Value> = audit_records(&env)
        .into_iter()
        .filter(|r| {
            r["kind"] == "decision" && r["decision"] == "allow" && r["policy"] == "low-risk-deploy"
        })
        .collect();
    assert_eq!(admitted.len(), 3);
    assert_eq!(admitted[0]["evidence"]["pull_request"], "acme/api#42");
    assert_eq!(admitted[0]["evidence"]["risk"], 12);
}

/// A plain HTTP GET on a loopback port (the broker's admin listener); the body.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}
