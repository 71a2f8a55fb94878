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
