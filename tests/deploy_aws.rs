//! deploy/aws: the CloudFormation template passes cfn-lint (PyPI `cfn-lint`, in
//! tests/requirements.txt) and the example broker config loads.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn cloudformation_template_passes_cfn_lint() {
    let out = Command::new("cfn-lint")
        .arg(repo().join("deploy/aws/seb-broker.yaml"))
        .output()
        .expect("cfn-lint on PATH (pip install -r tests/requirements.txt)");
    assert!(
        out.status.success(),
        "cfn-lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn example_broker_config_loads() {
    let c = seb::config::Config::load(&repo().join("deploy/aws/seb.toml")).unwrap();
    let seb::config::TargetKindConfig::Aws(aws) = &c.targets[0].kind else {
        panic!("deploy/aws/seb.toml: not an aws target");
    };
    assert_eq!(
        aws.identity,
        seb::targets::aws::config::AwsIdentityMode::Sts
    );
    assert!(aws.reads && aws.s3_get_object_needs_certificate);
}

/// With BrokerCount above 1 the template adds a `[state]` table for etcd to the broker's
/// config (the task's SEB_STATE_TOML): that table, filled in as CloudFormation would, makes a
/// config that loads with the etcd backend; and a rule refuses replicas without endpoints.
#[test]
fn replicated_template_adds_an_etcd_state_table_that_loads() {
    let template = std::fs::read_to_string(repo().join("deploy/aws/seb-broker.yaml")).unwrap();
    let start = template
        .find("                    [state]\n")
        .expect("the template writes a [state] table");
    let end = start
        + template[start..]
            .find("                  - Endpoints:")
            .unwrap();
    let state: String = template[start..end]
        .lines()
        .map(|l| l.trim_start())
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "${Endpoints}",
            &["https://10.0.1.10:2379", "https://10.0.2.10:2379"].join("\", \""),
        )
        .replace("${AWS::StackName}", "seb-prod");
    // With EtcdUsername and EtcdPasswordSecretArn, ${Auth} is the template's own !Sub text
    // (a YAML double-quoted string), unescaped as YAML would; without them, nothing.
    let auth_line = template
        .lines()
        .map(str::trim_start)
        .find(|l| l.starts_with("- !Sub \"username = "))
        .expect("the template's password auth lines");
    let auth = auth_line["- !Sub \"".len()..auth_line.len() - 1]
        .replace("\\n", "\n")
        .replace("\\\"", "\"")
        .replace("${EtcdUsername}", "seb-broker");
    let base = std::fs::read_to_string(repo().join("deploy/aws/seb.toml")).unwrap();
    for (variant, auth) in [("mTLS", ""), ("mTLS and a password", auth.as_str())] {
        let state = state.replace("${Auth}", auth);
        let config = seb::config::Config::parse(&format!("{base}\n{state}\n"))
            .unwrap_or_else(|(f, m)| panic!("{variant}: {f}: {m}\n{state}"));
        assert_eq!(config.state.backend, seb::state::config::Backend::Etcd);
        let etcd = config.state.etcd.unwrap();
        assert_eq!(etcd.endpoints.len(), 2);
        assert_eq!(etcd.prefix, "/seb/seb-prod/");
        assert_eq!(
            etcd.cert.as_deref(),
            Some(std::path::Path::new("/etc/seb/etcd/client.pem")),
            "{variant}"
        );
        assert!(etcd.ca.is_some() && etcd.key.is_some(), "{variant}");
        assert_eq!(
            etcd.username.as_deref(),
            (!auth.is_empty()).then_some("seb-broker"),
            "{variant}"
        );
        assert_eq!(etcd.password.is_some(), !auth.is_empty(), "{variant}");
    }
    assert!(template.contains("DesiredCount: !Ref BrokerCount"));
    assert!(template.contains("ReplicasNeedEtcd:"));
}
