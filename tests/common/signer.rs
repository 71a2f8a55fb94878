//! The signer in tests: its config over an [`Env`]'s keys and TLS files, the fake evidence
//! sources (`tests/upstream/evidence_fake.py`), approver keys, and the `seb signer serve`
//! process.

use super::*;

/// The code host and risk endpoint fake; its data is rewritten by [`EvidenceFake::set`].
pub struct EvidenceFake {
    pub port: u16,
    data: PathBuf,
    log: PathBuf,
    _child: KillOnDrop,
}

impl EvidenceFake {
    pub fn start(dir: &Path) -> EvidenceFake {
        let data = dir.join("evidence.json");
        let log = dir.join("evidence.jsonl");
        std::fs::write(&data, "{}").unwrap();
        let port_file = dir.join("evidence.port");
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/upstream/evidence_fake.py"))
            .arg("--data")
            .arg(&data)
            .arg("--log")
            .arg(&log)
            .arg("--port-file")
            .arg(&port_file);
        let (port, child) = spawn_with_port_file(cmd, &port_file, "the evidence fake");
        EvidenceFake {
            port,
            data,
            log,
            _child: child,
        }
    }

    pub fn set(&self, data: &Value) {
        seb::fsutil::write_atomic(&self.data, data.to_string().as_bytes(), 0o644).unwrap();
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Value> {
        read_jsonl(&self.log)
    }
}

/// A world where everything the low-risk deploy policy wants holds.
pub fn green_world() -> Value {
    json!({
        "pulls": {"acme/api#42": {"head": "9f2c1e7a4b", "files": ["services/api/handler.go", "charts/api/values.yaml"],
                  "checks": [{"name": "unit", "status": "completed", "conclusion": "success"},
                             {"name": "lint", "status": "completed", "conclusion": "skipped"}]}},
        "deployments": {"acme/api:prod": ["registry.example/api:1.4.1", "registry.example/api:1.4.2"]},
        "risk": 12
    })
}

pub struct Approver {
    pub name: String,
    pub key: PathBuf,
}

/// Approver key pairs `alice`, `bob` (configured) and `mallory` (not), in the env's directory.
pub fn approvers(env: &Env) -> Vec<Approver> {
    ["alice", "bob", "mallory"]
        .iter()
        .map(|n| {
            let prefix = env.path(&format!("approver-{n}"));
            if !prefix.with_extension("key").exists() {
                keys::write_keypair(&prefix, &keys::generate()).unwrap();
            }
            Approver {
                name: n.to_string(),
                key: prefix.with_extension("key"),
            }
        })
        .collect()
}

pub struct SignerConfigText {
    pub text: String,
    pub listen: u16,
    pub admin: u16,
}

/// The signer config: issuer "signer" with the env's signer key, the repository's
/// `policies/` (or `policies` given), evidence from `evidence_url`, `risk_url`, and
/// `extra` appended.
pub fn signer_config(
    env: &Env,
    evidence_url: &str,
    risk_url: &str,
    policies: &Path,
    extra: &str,
) -> SignerConfigText {
    approvers(env);
    if !env.path("signer-log.key").exists() {
        keys::write_keypair(&env.path("signer-log"), &keys::generate()).unwrap();
    }
    let listen = free_port();
    let admin = free_port();
    let text = format!(
        r#"
issuer = "signer"
listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin}"
policies = "{policies}"
state_dir = "signer-state"
[tls]
cert = "tls/server.pem"
key = "tls/server.key"
client_ca = "tls/ca.pem"
[[keys]]
private_key = "signer.key"
status = "active"
[audit]
path = "signer-audit/audit.jsonl"
signing_key = "signer-log.key"
[[agents]]
name = "agent:token-bot"
token = {{ value_env = "SEB_TEST_SIGNER_TOKEN" }}
[evidence.code_host]
url = "{evidence_url}"
timeout = "1s"
[evidence.risk]
url = "{risk_url}"
timeout = "1s"
[[approvers]]
name = "alice"
public_key = "approver-alice.pub"
[[approvers]]
name = "bob"
public_key = "approver-bob.pub"
[[windows]]
name = "api-prod"
timezone = "Europe/Berlin"
days = ["mon", "tue", "wed", "thu", "fri"]
from = "09:00"
to = "17:00"
{extra}
"#,
        policies = policies.display()
    );
    SignerConfigText {
        text,
        listen,
        admin,
    }
}

pub const SIGNER_TOKEN: &str = "signer-agent-token";

pub struct SignerProcess {
    pub child: Option<Child>,
    pub listen: u16,
    pub admin: u16,
    pub config: PathBuf,
}

impl SignerProcess {
    pub fn start(env: &Env, cfg: &SignerConfigText) -> SignerProcess {
        let config = env.path("signer.toml");
        std::fs::write(&config, &cfg.text).unwrap();
        let mut s = SignerProcess {
            child: None,
            listen: cfg.listen,
            admin: cfg.admin,
            config,
        };
        s.spawn(env);
        s
    }

    pub fn spawn(&mut self, env: &Env) {
        let log = std::fs::File::create(env.path(&format!("signer-{}.log", now()))).unwrap();
        let child = Command::new(seb_bin())
            .args(["signer", "serve", "--config"])
            .arg(&self.config)
            .env("SEB_TEST_SIGNER_TOKEN", SIGNER_TOKEN)
            .env("SEB_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.admin)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("the signer exited: {status}");
            }
            assert!(Instant::now() < deadline, "the signer did not start");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.listen)
    }

    pub fn admin(&self) -> String {
        format!("127.0.0.1:{}", self.admin)
    }
}

impl Drop for SignerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
