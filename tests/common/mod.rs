//! Test harness: real processes on loopback. A recording upstream (Python), the `seb` binary
//! with a config written per test, and reqwest as the agent.
#![allow(dead_code)]

pub mod aws;
pub mod etcd;
pub mod moto;
pub mod otlp;
pub mod signer;

use seb::admission::revocation::{self, RevocationClaims, RevocationPayload, Revoked};
use seb::cert::{jws, keys, CERT_TYP};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn seb_bin() -> &'static str {
    env!("CARGO_BIN_EXE_seb")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn now() -> i64 {
    seb::cert::now_secs()
}

/// A free loopback port for a server a test starts. The port is released before the server
/// binds it, so it is taken below the kernel's ephemeral range (32768 and up by default): a
/// port from `bind(0)` is one that any outgoing connection of this machine may take as its
/// source port in between, which once left a broker unable to bind its listener in CI. Ports
/// are handed out in turn from an offset of this process's pid, so tests running in parallel
/// in one binary never get the same one, and one still bound (by an earlier binary's leftover
/// server) is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 7919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {}", LOW + SPAN);
}

pub struct KillOnDrop(pub Child);

/// Starts a test server that writes its listening port to `port_file` once it listens.
pub fn spawn_with_port_file(mut cmd: Command, port_file: &Path, what: &str) -> (u16, KillOnDrop) {
    let child = KillOnDrop(
        cmd.stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}")),
    );
    // Generous: a Python server starting on a machine busy with builds can take many seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(p) = std::fs::read_to_string(port_file) {
            return (p.trim().parse().unwrap(), child);
        }
        assert!(Instant::now() < deadline, "{what} did not start within 30s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every line of a JSON-lines file, parsed (nothing yet: empty).
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The recording upstream: every request it receives is a line in its log.
pub struct Upstream {
    pub port: u16,
    log: PathBuf,
    _child: KillOnDrop,
}

impl Upstream {
    pub fn start(dir: &Path) -> Upstream {
        Upstream::start_with(dir, "upstream", &[])
    }

    /// The recording upstream standing for STS too: AssumeRole answered after `delay` seconds.
    pub fn start_sts(dir: &Path, delay: f64) -> Upstream {
        Upstream::start_with(dir, "sts", &["--sts-delay", &delay.to_string()])
    }

    fn start_with(dir: &Path, name: &str, args: &[&str]) -> Upstream {
        let log = dir.join(format!("{name}.jsonl"));
        let port_file = dir.join(format!("{name}.port"));
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/upstream/recording_upstream.py"))
            .arg("--log")
            .arg(&log)
            .arg("--port-file")
            .arg(&port_file)
            .args(args);
        let (port, child) = spawn_with_port_file(cmd, &port_file, "the recording upstream");
        Upstream {
            port,
            log,
            _child: child,
        }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Value> {
        read_jsonl(&self.log)
    }
}

/// Keys, TLS material and revocation data in one temporary directory.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub signer: ed25519_dalek::SigningKey,
    pub kid: String,
    pub agent_x5t: String,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let signer = keys::generate();
        keys::write_keypair(&dir.path().join("signer"), &signer).unwrap();
        keys::write_keypair(&dir.path().join("broker"), &keys::generate()).unwrap();
        let certs = seb::devcerts::write_dev_certs(&dir.path().join("tls"), "agent:demo").unwrap();
        let kid = keys::key_id(&signer.verifying_key());
        let env = Env {
            dir,
            signer,
            kid,
            agent_x5t: certs.agent_x5t,
        };
        env.write_revocation(1, now(), Revoked::default());
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn revocation_doc(&self, epoch: u64, iat: i64, revoked: Revoked) -> String {
        revocation::sign(
            &self.signer,
            &self.kid,
            &RevocationPayload {
                iss: "signer".into(),
                iat,
                seb: RevocationClaims {
                    v: 1,
                    revocation_epoch: epoch,
                    min_policy_epoch: 0,
                    revoked,
                },
            },
        )
    }

    pub fn write_revocation(&self, epoch: u64, iat: i64, revoked: Revoked) {
        let doc = self.revocation_doc(epoch, iat, revoked);
        seb::fsutil::write_atomic(&self.path("revocation.jws"), doc.as_bytes(), 0o644).unwrap();
    }

    /// A certificate for `method path` on the `payments` upstream, valid now for 5 minutes.
    pub fn cert(&self, method: &str, path: &str, body: Value) -> String {
        self.cert_with(method, path, body, |_| {})
    }

    pub fn cert_with(
        &self,
        method: &str,
        path: &str,
        body: Value,
        edit: impl FnOnce(&mut Value),
    ) -> String {
        let t = now();
        let mut p = json!({
            "iss": "signer", "sub": "agent:demo", "jti": random_jti(), "iat": t, "nbf": t, "exp": t + 300,
            "seb": {"v": 1, "action": "refund", "policy": "refunds-v1", "policy_epoch": 1, "revocation_epoch": 1,
                    "target": "http", "request": {"upstream": "payments", "method": method, "path": path},
                    "evidence": {"ticket": "INC-7"}}
        });
        if !body.is_null() {
            p["seb"]["body"] = body;
        }
        edit(&mut p);
        jws::sign(&self.signer, CERT_TYP, &self.kid, &p)
    }

    pub fn config(&self, upstream_port: u16, extra: &str) -> BrokerConfig {
        broker_config(|listen| {
            format!(
                r#"
[[targets]]
name = "payments"
kind = "http"
listen = "127.0.0.1:{listen}"
[targets.http]
upstream = "http://127.0.0.1:{upstream_port}"
credential = {{ header = "Authorization", value_env = "SEB_TEST_PAYMENTS_TOKEN", prefix = "Bearer " }}
reads = [{{ methods = ["GET"], path_prefix = "/v1/" }}]
{extra}
"#
            )
        })
    }
}

/// A broker config for the files an [`Env`] makes, on free ports, with the target section
/// (and anything after it) written by `target` for the listen port it is given.
pub fn broker_config(target: impl FnOnce(u16) -> String) -> BrokerConfig {
    let listen = free_port();
    let admin = free_port();
    let text = format!(
        r#"
broker_id = "test-broker"
[tls]
cert = "tls/server.pem"
key = "tls/server.key"
client_ca = "tls/ca.pem"
[admin]
listen = "127.0.0.1:{admin}"
[[issuers]]
name = "signer"
public_key = "signer.pub"
[revocation]
file = "revocation.jws"
poll_interval = "1s"
max_staleness = "5m"
[audit]
path = "audit.jsonl"
signing_key = "broker.key"
[agents]
tokens = [{{ value_env = "SEB_TEST_AGENT_TOKEN" }}]
{}"#,
        target(listen)
    );
    BrokerConfig {
        text,
        listen,
        admin,
    }
}

pub fn random_jti() -> String {
    let mut b = [0u8; 12];
    getrandom::getrandom(&mut b).unwrap();
    hex::encode(b)
}

pub struct BrokerConfig {
    pub text: String,
    pub listen: u16,
    pub admin: u16,
}

pub const UPSTREAM_SECRET: &str = "upstream-secret-the-agent-never-sees";
pub const AGENT_TOKEN: &str = "agent-read-token";

pub struct Broker {
    pub child: Option<Child>,
    pub listen: u16,
    pub admin: u16,
    pub config_path: PathBuf,
    /// More environment for the broker process (the AWS target's base credentials).
    pub extra_env: Vec<(String, String)>,
}

impl Broker {
    pub fn start(env: &Env, cfg: &BrokerConfig) -> Broker {
        Broker::start_with_env(env, cfg, Vec::new())
    }

    pub fn start_with_env(
        env: &Env,
        cfg: &BrokerConfig,
        extra_env: Vec<(String, String)>,
    ) -> Broker {
        let config_path = env.path("seb.toml");
        std::fs::write(&config_path, &cfg.text).unwrap();
        let mut b = Broker {
            child: None,
            listen: cfg.listen,
            admin: cfg.admin,
            config_path,
            extra_env,
        };
        b.spawn(env);
        b
    }

    pub fn spawn(&mut self, env: &Env) {
        self.spawn_unready(env);
        self.wait_ready();
    }

    /// Starts the process without waiting for it to be ready (or to fail).
    pub fn spawn_unready(&mut self, env: &Env) {
        let log = std::fs::File::create(env.path(&format!("seb-{}.log", now()))).unwrap();
        let child = Command::new(seb_bin())
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .env("SEB_TEST_PAYMENTS_TOKEN", UPSTREAM_SECRET)
            .env("SEB_TEST_AGENT_TOKEN", AGENT_TOKEN)
            .env("SEB_TEST_KUBE_TOKEN", KUBE_BROKER_TOKEN)
            .env("SEB_LOG", "warn")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.admin)) {
                use std::io::{Read, Write};
                let _ =
                    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1.1 200")
                    && std::net::TcpStream::connect(("127.0.0.1", self.listen)).is_ok()
                {
                    return;
                }
            }
            if let Some(status) = self.exited() {
                panic!(
                    "broker exited before it was ready ({status}): {}",
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "broker did not become ready: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The end of the newest broker log in the test's directory, so that a broker that did not
    /// start says why in the test's own failure.
    fn log_tail(&self) -> String {
        let dir = self.config_path.parent().unwrap();
        let newest = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("seb-"))
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
        match newest {
            Some(e) => {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let mut start = text.len().saturating_sub(2000);
                while !text.is_char_boundary(start) {
                    start += 1;
                }
                format!("{}:\n{}", e.path().display(), &text[start..])
            }
            None => "no broker log".into(),
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.listen)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An agent: reqwest over TLS trusting the dev CA; `mtls` adds the agent's client certificate.
pub fn client(env: &Env, mtls: bool) -> reqwest::Client {
    let ca = std::fs::read(env.path("tls/ca.pem")).unwrap();
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(20));
    if mtls {
        let mut pem = std::fs::read(env.path("tls/agent.pem")).unwrap();
        pem.extend(std::fs::read(env.path("tls/agent.key")).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

pub async fn send(
    c: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut r = c.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.body(body.to_vec()).send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    Reply {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// Every complete line of the broker's audit log, parsed. A last line without its newline is
/// being written while the test reads (a reader can see part of an append): it is left for
/// the next read, not parsed half.
pub fn audit_records(env: &Env) -> Vec<Value> {
    std::fs::read_to_string(env.path("audit.jsonl"))
        .unwrap_or_default()
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `seb` with arguments; returns (exit code, stdout, stderr).
pub fn seb(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(seb_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A TLS connection to a broker listener, trusting the dev CA, for raw bytes.
async fn raw_tls(env: &Env, port: u16) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = seb::tls::client_config(Some(&env.path("tls/ca.pem")), None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// Sends request bytes exactly as given over TLS, for paths a URL library would normalize
/// before sending (dot segments, encoded dots). Returns (status, body as JSON).
pub async fn send_raw(env: &Env, port: u16, request: &str) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = raw_tls(env, port).await;
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    Reply {
        status,
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

/// Raw bytes to a TLS listener, written while the answer is read (as a client that keeps
/// uploading would), and every response read back until the broker closes: status and body
/// of each, in order.
pub async fn exchange_raw(env: &Env, port: u16, request: Vec<u8>) -> Vec<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = raw_tls(env, port).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        // The broker may close before all of it is taken; that is its right.
        let _ = wr.write_all(&request).await;
        wr
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut out)).await;
    writer.abort();
    let mut responses = Vec::new();
    let mut rest = &out[..];
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let body_end = (end + 4 + length).min(rest.len());
        let body = String::from_utf8_lossy(&rest[end + 4..body_end]).into_owned();
        responses.push((status, body));
        rest = &rest[body_end..];
    }
    responses
}

/// `seb audit verify` over the broker's active log: exit code, and what it printed.
pub fn audit_verify(env: &Env) -> (i32, String) {
    let key = env.path("broker.pub");
    let log = env.path("audit.jsonl");
    let (code, out, err) = seb(&[
        "audit",
        "verify",
        "--key",
        key.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    (code, format!("{out}{err}"))
}

/// `seb audit verify` over the broker's log must pass.
pub fn assert_audit_verifies(env: &Env) {
    let (code, out) = audit_verify(env);
    assert_eq!(code, 0, "{out}");
}
// === kubernetes ===

/// The only bearer token the test apiserver accepts: the broker's own credential.
pub const KUBE_BROKER_TOKEN: &str = "kube-broker-token-the-agent-never-sees";

/// tests/kube/apiserver.py over TLS with the dev server certificate (it is for localhost).
pub struct KubeApiserver {
    pub port: u16,
    log: PathBuf,
    _child: KillOnDrop,
}

impl KubeApiserver {
    pub fn start(env: &Env) -> KubeApiserver {
        KubeApiserver::start_with(env, &[], &[])
    }

    /// With more arguments for tests/kube/apiserver.py (`--audit-log`, an agent's own token)
    /// and the environment variables they name.
    pub fn start_with(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> KubeApiserver {
        let log = env.path("apiserver.jsonl");
        let port_file = env.path("apiserver.port");
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/kube/apiserver.py"))
            .arg("--log")
            .arg(&log)
            .arg("--cert")
            .arg(env.path("tls/server.pem"))
            .arg("--key")
            .arg(env.path("tls/server.key"))
            .args(["--token-env", "SEB_TEST_KUBE_TOKEN", "--port-file"])
            .arg(&port_file)
            .env("SEB_TEST_KUBE_TOKEN", KUBE_BROKER_TOKEN)
            .args(args)
            .envs(vars.iter().copied());
        let (port, child) = spawn_with_port_file(cmd, &port_file, "the test apiserver");
        KubeApiserver {
            port,
            log,
            _child: child,
        }
    }

    /// Stops the apiserver; the broker in front of it stays up and finds it unreachable.
    pub fn stop(&mut self) {
        let _ = self._child.0.kill();
        let _ = self._child.0.wait();
    }

    /// Every request the apiserver received, in order.
    pub fn requests(&self) -> Vec<Value> {
        read_jsonl(&self.log)
    }

    /// The requests that could change something: anything but GET, and GETs that open a
    /// stream into a pod (websocket exec, attach, port-forward).
    pub fn mutations(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| {
                let path = r["path"].as_str().unwrap_or("");
                r["method"] != "GET"
                    || ["/exec?", "/attach?", "/portforward?"]
                        .iter()
                        .any(|s| path.contains(s))
            })
            .collect()
    }
}

impl Env {
    /// A certificate for one kubernetes request, valid now for 5 minutes.
    pub fn kube_cert(&self, request: Value, body: Value, edit: impl FnOnce(&mut Value)) -> String {
        self.cert_with("", "", body, |p| {
            p["seb"]["target"] = json!("kubernetes");
            p["seb"]["action"] = json!("deploy");
            p["seb"]["request"] = request;
            p["aud"] = json!("cluster");
            edit(p);
        })
    }

    /// A broker config with one kubernetes target, `cluster`, in front of the test apiserver.
    pub fn kube_config(&self, apiserver_port: u16) -> BrokerConfig {
        broker_config(|listen| {
            format!(
                r#"
[[targets]]
name = "cluster"
kind = "kubernetes"
listen = "127.0.0.1:{listen}"
[targets.kubernetes]
apiserver = "https://localhost:{apiserver_port}"
ca = "tls/ca.pem"
credential = {{ value_env = "SEB_TEST_KUBE_TOKEN" }}
execution = {{ user = "seb:exec:shop-deployer", groups = ["seb:exec"] }}
read = {{ user = "seb:read:shop", groups = ["seb:read"] }}
"#
            )
        })
    }
}

/// A kubeconfig from `seb kubeconfig`, written to `name` in the test directory.
pub fn kubeconfig(env: &Env, broker: &Broker, token: &str, name: &str) -> PathBuf {
    let (code, out, err) = seb(&[
        "kubeconfig",
        "--server",
        &format!("https://localhost:{}", broker.listen),
        "--ca",
        env.path("tls/ca.pem").to_str().unwrap(),
        "--token",
        token,
        "--namespace",
        "shop",
    ]);
    assert_eq!(code, 0, "{err}");
    let path = env.path(name);
    std::fs::write(&path, out).unwrap();
    path
}

/// Runs kubectl with a kubeconfig and an optional `--token` override; returns (exit code,
/// stdout, stderr).
pub fn kubectl(kubeconfig: &Path, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new("kubectl");
    c.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=20s");
    if let Some(t) = token {
        c.arg("--token").arg(t);
    }
    // A scratch cache directory: discovery results must come from this test's broker.
    let cache = kubeconfig.with_extension("cache");
    c.arg("--cache-dir").arg(&cache);
    let out = c.args(args).output().expect("kubectl on PATH");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// === end kubernetes ===

// === restarts: one kind of mutation, certified per use count ===

/// `POST /v1/deploys` with the body a [`deploy_cert`] allows.
pub async fn deploy(c: &reqwest::Client, broker: &Broker, cert: &str) -> Reply {
    let auth = format!("Bearer {cert}");
    send(
        c,
        "POST",
        &broker.url("/v1/deploys"),
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
        br#"{"env":"prod"}"#,
    )
    .await
}

/// A certificate for [`deploy`] good for `max_uses` uses, edited by `edit`.
pub fn deploy_cert_edit(env: &Env, max_uses: u32, edit: impl FnOnce(&mut Value)) -> String {
    env.cert_with(
        "POST",
        "/v1/deploys",
        json!({"constraints": {"/env": {"eq": "prod"}}, "others": "deny"}),
        |p| {
            p["seb"]["max_uses"] = json!(max_uses);
            edit(p);
        },
    )
}

pub fn deploy_cert(env: &Env, max_uses: u32) -> String {
    deploy_cert_edit(env, max_uses, |_| {})
}

/// Requests other than reads the upstream received.
pub fn mutations_received(up: &Upstream) -> usize {
    up.requests()
        .into_iter()
        .filter(|r| r["method"] != "GET")
        .count()
}

/// SIGTERM, then wait (bounded) for the broker to exit.
pub fn sigterm_and_wait(broker: &mut Broker) {
    let mut child = broker.child.take().expect("a running broker");
    // SAFETY: a plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "broker did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
