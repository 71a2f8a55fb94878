//! `seb preflight` with an agent's own credentials: AWS against moto (auth on; moto has no
//! IAM policy simulation, so the dry-runs and the AssumeRole decide), Kubernetes against
//! tests/kube/apiserver.py answering SelfSubjectAccessReviews. A guarded setup passes; one
//! where the agent can mutate directly is reported with exit 1.

mod common;

use common::moto::Moto;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn preflight(args: &[&str], envs: &[(&str, &Path)]) -> (i32, Vec<Value>, String) {
    let mut c = Command::new(seb_bin());
    c.arg("preflight").arg("--json").args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN");
    let out = c.output().unwrap();
    let rows = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (
        out.status.code().unwrap_or(-1),
        rows,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verdicts<'a>(rows: &'a [Value], verdict: &str) -> Vec<&'a str> {
    rows.iter()
        .filter(|r| r["verdict"] == verdict)
        .map(|r| r["check"].as_str().unwrap())
        .collect()
}

/// The aws CLI straight at moto with the given keys.
fn aws_direct(moto: &Moto, key: &(String, String), args: &[&str]) -> String {
    let out = Command::new("aws")
        .args(args)
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", &key.0)
        .env("AWS_SECRET_ACCESS_KEY", &key.1)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .output()
        .expect("the aws CLI");
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn aws_preflight_passes_a_guarded_agent_and_reports_one_that_can_mutate() {
    let env = Env::new();
    let moto = Moto::start(&env);
    let admin = moto.creds("admin");
    // The agent as it should be: reads only.
    aws_direct(
        &moto,
        &admin,
        &["iam", "create-user", "--user-name", "agent-oncall"],
    );
    aws_direct(
        &moto,
        &admin,
        &[
            "iam",
            "put-user-policy",
            "--user-name",
            "agent-oncall",
            "--policy-name",
            "reads",
            "--policy-document",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ec2:Describe*","s3:List*"],"Resource":"*"}]}"#,
        ],
    );
    let key: Value = serde_json::from_str(&aws_direct(
        &moto,
        &admin,
        &["iam", "create-access-key", "--user-name", "agent-oncall"],
    ))
    .unwrap();
    let broker = moto.creds("broker");
    let creds = env.path("aws-credentials");
    std::fs::write(
        &creds,
        format!(
            "[agent]\naws_access_key_id = {}\naws_secret_access_key = {}\n\n\
             [too-powerful]\naws_access_key_id = {}\naws_secret_access_key = {}\n\n\
             [broker]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            key["AccessKey"]["AccessKeyId"].as_str().unwrap(),
            key["AccessKey"]["SecretAccessKey"].as_str().unwrap(),
            admin.0,
            admin.1,
            broker.0,
            broker.1
        ),
    )
    .unwrap();
    let cfg = env.path("aws-config");
    std::fs::write(&cfg, "").unwrap();
    let files = [
        ("AWS_SHARED_CREDENTIALS_FILE", creds.as_path()),
        ("AWS_CONFIG_FILE", cfg.as_path()),
    ];
    let endpoint = moto.endpoint();
    let exec = moto.setup["seb_exec_arn"].as_str().unwrap();
    let common = [
        "--aws-endpoint",
        &endpoint,
        "--aws-execution-role",
        exec,
        "--broker-aws-profile",
        "broker",
    ];

    let mut args = vec!["--aws-profile", "agent"];
    args.extend_from_slice(&common);
    let (code, rows, err) = preflight(&args, &files);
    assert_eq!(code, 0, "{rows:#?}{err}");
    let ok = verdicts(&rows, "guarded");
    for check in ["dry-run ec2:TerminateInstances", "dry-run ec2:RunInstances"] {
        assert_eq!(
            ok.iter().filter(|c| **c == check).count(),
            2,
            "agent and broker: {rows:#?}"
        );
    }
    assert!(
        ok.iter().any(|c| c.starts_with("sts:AssumeRole")),
        "{rows:#?}"
    );
    assert!(rows
        .iter()
        .any(|r| r["identity"] == "arn:aws:iam::123456789012:user/agent-oncall"));

    // An agent holding keys that can change production directly.
    let mut args = vec!["--aws-profile", "too-powerful"];
    args.extend_from_slice(&common);
    let (code, rows, err) = preflight(&args, &files);
    assert_eq!(code, 1, "{rows:#?}{err}");
    let gaps = verdicts(&rows, "gap");
    assert!(
        gaps.contains(&"dry-run ec2:TerminateInstances"),
        "{rows:#?}"
    );
    assert!(gaps.contains(&"dry-run ec2:RunInstances"), "{rows:#?}");

    // Credentials that are not valid at all are an error, not a pass.
    let (code, _, err) = preflight(
        &["--aws-profile", "nobody", "--aws-endpoint", &endpoint],
        &files,
    );
    assert_eq!(code, 2, "{err}");
}

const AGENT_OWN_TOKEN: &str = "agent-own-cluster-token";

fn kube_preflight(can_write: bool) -> (i32, Vec<Value>, String) {
    let env = Env::new();
    let mut args = vec![
        "--agent-token-env",
        "SEB_TEST_AGENT_OWN_TOKEN",
        "--agent-user",
        "agent:oncall",
    ];
    if can_write {
        args.push("--agent-can-write");
    }
    let api = KubeApiserver::start_with(
        &env,
        &args,
        &[("SEB_TEST_AGENT_OWN_TOKEN", AGENT_OWN_TOKEN)],
    );
    let (code, out, err) = seb(&[
        "kubeconfig",
        "--server",
        &format!("https://localhost:{}", api.port),
        "--ca",
        env.path("tls/ca.pem").to_str().unwrap(),
        "--token",
        AGENT_OWN_TOKEN,
    ]);
    assert_eq!(code, 0, "{err}");
    let kc = env.path("agent.kubeconfig");
    std::fs::write(&kc, out).unwrap();
    preflight(
        &[
            "--kubeconfig",
            kc.to_str().unwrap(),
            "--namespace",
            "shop",
            "--namespace",
            "default",
            "--kube-execution-user",
            "seb:exec:shop-deployer",
        ],
        &[],
    )
}

#[test]
fn kubernetes_preflight_passes_a_read_only_agent_and_reports_one_that_can_mutate() {
    let (code, rows, err) = kube_preflight(false);
    assert_eq!(code, 0, "{rows:#?}{err}");
    assert!(verdicts(&rows, "gap").is_empty());
    assert!(verdicts(&rows, "guarded").len() > 20, "{rows:#?}");
    assert!(verdicts(&rows, "guarded").contains(&"impersonate user seb:exec:shop-deployer"));

    let (code, rows, err) = kube_preflight(true);
    assert_eq!(code, 1, "{rows:#?}{err}");
    let gaps = verdicts(&rows, "gap");
    assert!(
        gaps.contains(&"patch apps/deployments -n shop"),
        "{rows:#?}"
    );
    assert!(gaps.contains(&"create pods/exec -n default"), "{rows:#?}");
}
