use super::*;
use crate::targets::aws::config::AwsIdentityMode;

const MINIMAL: &str = r#"
plaintext = true
[[issuers]]
name = "signer"
public_key = "signer.pub"
[revocation]
file = "revocation.jws"
[audit]
path = "audit.jsonl"
signing_key = "broker.key"
[[targets]]
name = "payments"
kind = "http"
listen = "127.0.0.1:8443"
[targets.http]
upstream = "http://127.0.0.1:9000"
"#;

fn field_error(text: &str) -> (String, String) {
    Config::parse(text).unwrap_err()
}

#[test]
fn minimal_config_gets_safe_defaults() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.certificates.clock_skew, Duration::from_secs(30));
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9901");
    assert_eq!(c.audit.durability, crate::audit::Durability::Fsync);
}

#[test]
fn unknown_fields_are_refused_with_their_path() {
    let (f, m) = field_error(&MINIMAL.replace("upstream = ", "upstreams = "));
    assert_eq!(f, "targets[0].http.upstreams");
    assert!(m.contains("upstreams"), "{m}");
    let (f, _) = field_error(&format!("{MINIMAL}\n[certificates]\nclock_skw = \"1s\"\n"));
    assert_eq!(f, "certificates.clock_skw");
}

#[test]
fn bad_values_name_their_field() {
    let (f, _) = field_error(&MINIMAL.replace("http://127.0.0.1:9000", "ftp://x"));
    assert_eq!(f, "targets[0].http.upstream");
    let (f, _) = field_error(&MINIMAL.replace("127.0.0.1:8443", "nowhere"));
    assert_eq!(f, "targets[0].listen");
    let (f, m) = field_error(&format!(
        "{MINIMAL}\n[certificates]\nclock_skew = \"10m\"\n"
    ));
    assert_eq!(
        (f.as_str(), m.as_str()),
        ("certificates.clock_skew", "at most 5m")
    );
    let (f, _) = field_error(&format!("{MINIMAL}\n[certificates]\nmax_ttl = \"soon\"\n"));
    assert_eq!(f, "certificates.max_ttl");
    let (f, _) = field_error(&format!("{MINIMAL}\n[runtime]\nshards = 5000\n"));
    assert_eq!(f, "runtime.shards");
    let (f, _) = field_error(&format!("{MINIMAL}\n[runtime]\nshards = -1\n"));
    assert_eq!(f, "runtime.shards");
    let (f, _) = field_error(&MINIMAL.replace("plaintext = true", ""));
    assert_eq!(f, "tls");
    let (f, _) = field_error(&MINIMAL.replace("kind = \"http\"", "kind = \"smtp\""));
    assert_eq!(f, "targets[0].kind");
    let (f, _) = field_error(&MINIMAL.replace("file = \"revocation.jws\"", ""));
    assert_eq!(f, "revocation");
}

/// Durations are humantime's spellings, the ones the docs and examples use.
#[test]
fn durations_read_as_people_write_them() {
    for (text, ms) in [
        ("10ms", 10),
        ("2s", 2_000),
        ("90s", 90_000),
        ("5m", 300_000),
        ("1h 30m", 5_400_000),
    ] {
        let c = Config::parse(&format!(
            "{MINIMAL}\n[limits]\nrequest_timeout = \"{text}\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.limits.request_timeout,
            Duration::from_millis(ms),
            "{text}"
        );
    }
    for bad in ["30", "\"30\"", "\"soon\""] {
        let (f, m) = field_error(&format!("{MINIMAL}\n[limits]\nrequest_timeout = {bad}\n"));
        assert_eq!(f, "limits.request_timeout", "{bad}");
        assert!(m.contains("expected a duration"), "{bad}: {m}");
    }
}

#[test]
fn second_target_errors_name_index_one() {
    let two = format!(
        "{MINIMAL}\n[[targets]]\nname = \"b\"\nkind = \"http\"\nlisten = \"127.0.0.1:8444\"\n[targets.http]\nupstream = \"nope\"\n"
    );
    assert_eq!(field_error(&two).0, "targets[1].http.upstream");
    let dup = two
        .replace("name = \"b\"", "name = \"payments\"")
        .replace("\"nope\"", "\"http://x\"");
    assert_eq!(field_error(&dup).0, "targets[1].name");
}

const AWS: &str = r#"
plaintext = true
[[issuers]]
name = "signer"
public_key = "signer.pub"
[revocation]
file = "revocation.jws"
[audit]
path = "audit.jsonl"
signing_key = "broker.key"
[[targets]]
name = "aws"
kind = "aws"
listen = "127.0.0.1:8443"
[targets.aws]
endpoint = "http://127.0.0.1:5000"
services = ["s3", "ec2"]
regions = ["us-east-1"]
identity = "sts"
execution_role_arn = "arn:aws:iam::123456789012:role/seb-exec"
"#;

#[test]
fn aws_targets_validate_with_field_paths() {
    let c = Config::parse(AWS).unwrap();
    let TargetKindConfig::Aws(a) = &c.targets[0].kind else {
        panic!("not an aws target: {:?}", c.targets[0]);
    };
    assert_eq!(a.identity, AwsIdentityMode::Sts);
    assert!(!a.reads);
    let cases = [
        (
            AWS.replace("\"s3\", \"ec2\"", "\"s3\", \"nosuch\""),
            "targets[0].aws.services",
        ),
        (
            AWS.replace("\"us-east-1\"", "\"US East\""),
            "targets[0].aws.regions",
        ),
        (
            AWS.replace("http://127.0.0.1:5000", "http://127.0.0.1:5000/x"),
            "targets[0].aws.endpoint",
        ),
        (
            AWS.replace("role/seb-exec", "user/x"),
            "targets[0].aws.execution_role_arn",
        ),
        (
            AWS.replace(
                "execution_role_arn = \"arn:aws:iam::123456789012:role/seb-exec\"",
                "",
            ),
            "targets[0].aws.execution_role_arn",
        ),
        (
            format!("{AWS}reads = true\n"),
            "targets[0].aws.read_role_arn",
        ),
        (
            AWS.replace("identity = \"sts\"", "identity = \"static\""),
            "targets[0].aws.static_credentials",
        ),
        (
            AWS.replace("identity = \"sts\"", "identity = \"magic\""),
            "targets[0].aws.identity",
        ),
        (
            format!("{AWS}sensitive_reads = [\"GetObject\"]\n"),
            "targets[0].aws.sensitive_reads[0]",
        ),
        (format!("{AWS}regoins = []\n"), "targets[0].aws.regoins"),
        (
            AWS.replace("[targets.aws]", "[targets.awz]"),
            "targets[0].awz",
        ),
    ];
    for (text, field) in cases {
        assert_eq!(field_error(&text).0, field, "{text}");
    }
    let st = AWS
        .replace("identity = \"sts\"", "identity = \"static\"")
        .replace("execution_role_arn = \"arn:aws:iam::123456789012:role/seb-exec\"", "static_credentials = { access_key_id = { value_env = \"A\" }, secret_access_key = { value_env = \"B\", value_file = \"x\" } }");
    assert_eq!(
        field_error(&st).0,
        "targets[0].aws.static_credentials.secret_access_key"
    );
}

#[test]
fn kubernetes_targets_name_their_bad_fields() {
    let kube = format!(
        "{MINIMAL}[[targets]]\nname = \"cluster\"\nkind = \"kubernetes\"\nlisten = \"127.0.0.1:8444\"\n[targets.kubernetes]\napiserver = \"https://10.0.0.1:6443\"\nca = \"ca.pem\"\ncredential = {{ value_file = \"token\" }}\nexecution = {{ user = \"seb:exec:deployer\", groups = [\"seb:exec\"] }}\nread = {{ user = \"seb:read\" }}\n"
    );
    let c = Config::parse(&kube).unwrap();
    let TargetKindConfig::Kubernetes(k) = &c.targets[1].kind else {
        panic!("not a kubernetes target: {:?}", c.targets[1]);
    };
    assert_eq!(k.execution.groups, ["seb:exec"]);
    let cases = [
        (
            "https://10.0.0.1:6443",
            "http://10.0.0.1:6443",
            "targets[1].kubernetes.apiserver",
        ),
        (
            "user = \"seb:read\"",
            "user = \"system:admin\"",
            "targets[1].kubernetes.read.user",
        ),
        (
            "[\"seb:exec\"]",
            "[\"system:masters\"]",
            "targets[1].kubernetes.execution.groups[0]",
        ),
        (
            "value_file = \"token\"",
            "value_file = \"token\", value_env = \"T\"",
            "targets[1].kubernetes.credential",
        ),
        (
            "ca = ",
            "cert_authority = ",
            "targets[1].kubernetes.cert_authority",
        ),
    ];
    for (from, to, field) in cases {
        assert_eq!(field_error(&kube.replace(from, to)).0, field, "{to}");
    }
    let missing = kube
        .split("[targets.kubernetes]")
        .next()
        .unwrap()
        .to_string();
    assert_eq!(field_error(&missing).0, "targets[1]");
}

/// `kind` picks the table: the table of another kind is refused where it is written, and a
/// kind without its table is refused at the target.
#[test]
fn a_target_has_the_table_of_its_kind_and_no_other() {
    let aws_table =
        "[targets.aws]\nservices = [\"s3\"]\nregions = [\"us-east-1\"]\nidentity = \"sts\"\n";
    assert_eq!(
        field_error(&format!("{MINIMAL}{aws_table}")),
        (
            "targets[0].aws".to_string(),
            "only for kind = \"aws\"".to_string()
        )
    );
    let no_table = MINIMAL.split("[targets.http]").next().unwrap();
    assert_eq!(
        field_error(no_table),
        (
            "targets[0]".to_string(),
            "kind = \"http\" needs an [targets.http] table".to_string()
        )
    );
    let kube = no_table.replace("kind = \"http\"", "kind = \"kubernetes\"");
    assert_eq!(
        field_error(&format!("{kube}[targets.http]\nupstream = \"http://x\"\n")).0,
        "targets[0].http"
    );
    // A table written above `kind` (inline, or dotted keys): the mismatch is at `kind`.
    let above = no_table.replace(
        "kind = \"http\"",
        "http = { upstream = \"http://x\" }\nkind = \"aws\"",
    );
    let (f, m) = field_error(&above);
    assert_eq!(f, "targets[0].kind");
    assert!(m.contains("[targets.http]"), "{m}");
    let two = no_table.replace(
        "kind = \"http\"",
        "http = { upstream = \"http://x\" }\naws.services = [\"s3\"]\nkind = \"http\"",
    );
    assert_eq!(field_error(&two).0, "targets[0].aws");
    assert_eq!(
        field_error(&MINIMAL.replace("kind = \"http\"\n", "")),
        ("targets[0]".to_string(), "missing field `kind`".to_string())
    );
}

/// Every way a config can be wrong names the file, the line and column where the field
/// is written, and the field.
#[test]
fn load_errors_name_file_line_column_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("seb.toml");
    let load = |text: &str| {
        std::fs::write(&p, text).unwrap();
        Config::load(&p).unwrap_err().to_string()
    };
    let file = p.display().to_string();
    // A syntax error keeps toml's line and column. MINIMAL starts with a newline, so
    // `plaintext` is on line 2.
    let e = load(&MINIMAL.replace("plaintext = true", "plaintext = = true"));
    assert!(e.starts_with(&format!("{file}:2:")), "{e}");
    // An unknown field, a bad value, and a rule broken across fields.
    let e = load(&MINIMAL.replace("upstream = ", "upstreams = "));
    assert!(
        e.starts_with(&format!("{file}:16:1: targets[0].http.upstreams:")),
        "{e}"
    );
    let e = load(&MINIMAL.replace("http://127.0.0.1:9000", "ftp://x"));
    assert!(
        e.starts_with(&format!("{file}:16:1: targets[0].http.upstream:")),
        "{e}"
    );
    let e = load(&format!("{MINIMAL}[limits]\nidle_timeout = \"0s\"\n"));
    assert!(
        e.starts_with(&format!("{file}:18:1: limits.idle_timeout:")),
        "{e}"
    );
    // A table of another kind, at its header.
    let e = load(&format!(
        "{MINIMAL}[targets.aws]\nservices = [\"s3\"]\nregions = [\"us-east-1\"]\nidentity = \"sts\"\n"
    ));
    assert!(
        e.starts_with(&format!("{file}:17:1: targets[0].aws: only for kind")),
        "{e}"
    );
    // A field that is missing is reported at its table.
    let e = load(&MINIMAL.replace("file = \"revocation.jws\"", ""));
    assert!(e.starts_with(&format!("{file}:6:2: revocation:")), "{e}");
    // Errors found after loading (a key that does not load) read the same way.
    std::fs::write(&p, MINIMAL).unwrap();
    let c = Config::load(&p).unwrap();
    assert_eq!(
        c.at("issuers[0].public_key"),
        format!("{file}:5:1: issuers[0].public_key")
    );
    assert_eq!(
        c.at("limits.max_connections"),
        format!("{file}: limits.max_connections")
    );
}

#[test]
fn relative_paths_resolve_against_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("seb.toml");
    std::fs::write(&p, MINIMAL).unwrap();
    let c = Config::load(&p).unwrap();
    assert_eq!(c.audit.signing_key, dir.path().join("broker.key"));
    let e = anyhow::Error::new(Config::load(&dir.path().join("missing.toml")).unwrap_err());
    let e = format!("{e:#}");
    assert!(e.contains("missing.toml"));
    assert_eq!(e.matches("No such file").count(), 1, "{e}");
}

#[test]
fn state_etcd_is_checked_with_field_paths() {
    let etcd =
        |body: &str| format!("{MINIMAL}\n[state]\nbackend = \"etcd\"\n[state.etcd]\n{body}\n");
    let ok = Config::parse(&etcd("endpoints = [\"http://127.0.0.1:2379\"]")).unwrap();
    let e = ok.state.etcd.as_ref().unwrap();
    assert_eq!(ok.state.backend, crate::state::config::Backend::Etcd);
    assert_eq!(
        (e.prefix.as_str(), e.request_timeout),
        ("/seb/", Duration::from_secs(2))
    );
    for (body, field) in [
        ("endpoints = []", "state.etcd.endpoints"),
        ("prefix = \"/x/\"", "state.etcd.endpoints"),
        (
            "endpoints = [\"http://a:1\"]\nendpoints_file = \"members\"",
            "state.etcd.endpoints_file",
        ),
        (
            "endpoints = [\"127.0.0.1:2379\"]",
            "state.etcd.endpoints[0]",
        ),
        ("endpoints = [\"http://a:1/v3\"]", "state.etcd.endpoints[0]"),
        (
            "endpoints = [\"http://a:1\"]\nca = \"ca.pem\"",
            "state.etcd.endpoints[0]",
        ),
        (
            "endpoints = [\"http://a:1\"]\nprefix = \"/seb\"",
            "state.etcd.prefix",
        ),
        (
            "endpoints = [\"https://a:1\"]\ncert = \"c.pem\"",
            "state.etcd.cert",
        ),
        (
            "endpoints = [\"http://a:1\"]\nusername = \"seb\"",
            "state.etcd.username",
        ),
        (
            "endpoints = [\"http://a:1\"]\nrequest_timeout = \"0s\"",
            "state.etcd.request_timeout",
        ),
        (
            "endpoints = [\"http://a:1\"]\nendpoint = \"x\"",
            "state.etcd.endpoint",
        ),
    ] {
        assert_eq!(field_error(&etcd(body)).0, field, "{body}");
    }
    // The backend and its table go together.
    let (f, _) = field_error(&format!("{MINIMAL}\n[state]\nbackend = \"etcd\"\n"));
    assert_eq!(f, "state.etcd");
    let (f, _) = field_error(&format!(
        "{MINIMAL}\n[state.etcd]\nendpoints = [\"http://a:1\"]\n"
    ));
    assert_eq!(f, "state.etcd");
    let (f, _) = field_error(&format!("{MINIMAL}\n[state]\nbackend = \"redis\"\n"));
    assert_eq!(f, "state.backend");
}

#[test]
fn shadow_is_never_a_default_and_only_where_a_request_without_a_certificate_has_an_identity() {
    assert_eq!(
        Config::parse(MINIMAL).unwrap().targets[0].mode,
        TargetMode::Enforce
    );
    let shadow = MINIMAL.replace("kind = \"http\"", "kind = \"http\"\nmode = \"shadow\"");
    assert_eq!(
        Config::parse(&shadow).unwrap().targets[0].mode,
        TargetMode::Shadow
    );
    let (f, m) =
        field_error(&MINIMAL.replace("kind = \"http\"", "kind = \"http\"\nmode = \"shadows\""));
    assert_eq!(f, "targets[0].mode");
    assert!(m.contains("`enforce` or `shadow`"), "{m}");
    // An STS session is scoped to the certificate's call: no certificate, no session.
    let (f, m) = field_error(&AWS.replace("kind = \"aws\"", "kind = \"aws\"\nmode = \"shadow\""));
    assert_eq!(f, "targets[0].mode");
    assert!(m.contains("identity = \"static\""), "{m}");
    let kube = format!(
        "{MINIMAL}[[targets]]\nname = \"cluster\"\nkind = \"kubernetes\"\nmode = \"shadow\"\nlisten = \"127.0.0.1:8444\"\n[targets.kubernetes]\napiserver = \"https://10.0.0.1:6443\"\ncredential = {{ value_file = \"token\" }}\nexecution = {{ user = \"seb:exec:d\" }}\nread = {{ user = \"seb:read\" }}\n"
    );
    assert_eq!(
        Config::parse(&kube).unwrap().targets[1].mode,
        TargetMode::Shadow
    );
    let (f, m) = field_error(&format!(
        "{kube}token_request = {{ namespace = \"seb\", service_account = \"exec\", audience = \"https://k\" }}\n"
    ));
    assert_eq!(f, "targets[1].mode");
    assert!(m.contains("token_request"), "{m}");
}
