//! etcd members from Debian's `etcd-server`, started on free loopback ports with temporary
//! data directories: one member for most tests, three for the replica tests.

use super::{free_port, Broker, Env, KillOnDrop, Upstream};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    data: PathBuf,
    log: PathBuf,
    process: Option<KillOnDrop>,
}

pub struct Etcd {
    pub members: Vec<Member>,
    initial_cluster: String,
    /// The members' data, in memory where the machine has /dev/shm: these tests are about
    /// seb's behaviour, and four builds sharing one disk made etcd's fsyncs take seconds.
    _data: tempfile::TempDir,
    /// Client TLS: the members serve https with this (CA, certificate, key) and require a
    /// client certificate signed by the CA.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl Etcd {
    /// Starts `n` members (logs under `dir`) and waits until the cluster answers writes.
    pub fn start(dir: &Path, n: usize) -> Etcd {
        Etcd::start_tls(dir, n, None)
    }

    /// [`Etcd::start`], serving clients over mutual TLS with (CA, certificate, key).
    pub fn start_tls(dir: &Path, n: usize, tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Etcd {
        let data = match Path::new("/dev/shm").is_dir() {
            true => tempfile::Builder::new()
                .prefix("seb-etcd")
                .tempdir_in("/dev/shm"),
            false => tempfile::Builder::new().prefix("seb-etcd").tempdir_in(dir),
        }
        .unwrap();
        assert!(
            which("etcd"),
            "etcd is not installed: `apt-get install etcd-server` (scripts/test.sh does)"
        );
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data: data.path().join(format!("m{i}")),
                log: dir.join(format!("etcd-m{i}.log")),
                process: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            members,
            initial_cluster,
            _data: data,
            tls,
        };
        for i in 0..n {
            etcd.spawn(i);
        }
        etcd.wait_writable();
        etcd
    }

    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.members
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The `[state]` section for a broker on this cluster.
    pub fn state_section(&self, prefix: &str) -> String {
        let eps: Vec<String> = self.endpoints().iter().map(|e| format!("{e:?}")).collect();
        format!(
            "\n[state]\nbackend = \"etcd\"\n[state.etcd]\nendpoints = [{}]\nprefix = {prefix:?}\nrequest_timeout = \"2s\"\ndial_timeout = \"500ms\"\n",
            eps.join(", ")
        )
    }

    /// Starts member `i` again (same name, same data directory).
    pub fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut tls_args: Vec<std::ffi::OsString> = Vec::new();
        if let Some((ca, cert, key)) = &self.tls {
            for (flag, path) in [
                ("--trusted-ca-file", ca),
                ("--cert-file", cert),
                ("--key-file", key),
            ] {
                tls_args.push(flag.into());
                tls_args.push(path.into());
            }
            tls_args.push("--client-cert-auth".into());
        }
        let child = Command::new("etcd")
            .args(tls_args)
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &self.initial_cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "seb-test",
                // Fast elections: a killed leader is replaced in well under a second.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        m.process = Some(KillOnDrop(child));
    }

    /// SIGKILL to member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].process.take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
    }

    /// Until every running member answers `/health` (which needs a leader and a quorum).
    pub fn wait_writable(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        if self.tls.is_some() {
            // No plain /health to ask: the port opening (and a moment for the election of a
            // one-member cluster) will do; the broker's own readiness says the rest.
            for m in &self.members {
                while std::net::TcpStream::connect(("127.0.0.1", m.client_port)).is_err() {
                    assert!(Instant::now() < deadline, "etcd {} never listened", m.name);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            std::thread::sleep(Duration::from_millis(500));
            return;
        }
        for m in self.members.iter().filter(|m| m.process.is_some()) {
            while !http(m.client_port, "GET", "/health", "").contains("\"health\":\"true\"") {
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} did not become healthy; see {}",
                    m.name,
                    m.log.display()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// A call to etcd's v3 JSON gateway on the first running member; the response body.
    pub fn gateway(&self, path: &str, body: &str) -> String {
        let m = self
            .members
            .iter()
            .find(|m| m.process.is_some())
            .expect("a running member");
        http(m.client_port, "POST", path, body)
    }

    /// Compacts the history up to the current revision, as an operator's maintenance would.
    pub fn compact_now(&self) {
        let status = self.gateway("/v3/maintenance/status", "{}");
        // Read by search, not parsed: the body may come chunked.
        let rev: String = status
            .split_once("\"revision\":\"")
            .map(|(_, r)| r.chars().take_while(char::is_ascii_digit).collect())
            .unwrap_or_else(|| panic!("no revision in {status}"));
        let r = self.gateway(
            "/v3/kv/compaction",
            &format!("{{\"revision\": {rev}, \"physical\": true}}"),
        );
        assert!(r.contains("header"), "compaction failed: {r}");
    }
}

/// One HTTP/1.1 request on loopback, the response body (empty when nothing answers).
fn http(port: u16, method: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

// === for the replica tests ===

pub fn signal(b: &Broker, sig: i32) {
    // SAFETY: a plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(b.pid() as i32, sig) }, 0);
}

pub fn b64(s: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Whether any broker log in the test's directory mentions `what`.
pub fn logs_mention(env: &Env, what: &str) -> bool {
    std::fs::read_dir(env.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("seb-"))
        .any(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .contains(what)
        })
}

/// A replica: its own config file, audit log, state directory, broker id and ports.
pub fn replica(env: &Env, up: &Upstream, etcd: &Etcd, n: usize) -> Broker {
    replica_with(env, up, etcd, n, "", true)
}

/// [`replica`] with more `[state.etcd]` lines; started, and waited for when `ready`.
pub fn replica_with(
    env: &Env,
    up: &Upstream,
    etcd: &Etcd,
    n: usize,
    more: &str,
    ready: bool,
) -> Broker {
    let cfg = env.config(up.port, "");
    let dir = env.path(&format!("r{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    // Replica 3 reads the members from a file, as the Kubernetes deployment does from its
    // Secret (state.etcd.endpoints_file); the others from the config.
    let mut state = etcd.state_section("/seb-test/");
    if n == 3 {
        let file = dir.join("etcd-endpoints");
        std::fs::write(
            &file,
            format!("# members\n{}\n", etcd.endpoints().join("\n")),
        )
        .unwrap();
        let list = state
            .lines()
            .find(|l| l.starts_with("endpoints = "))
            .unwrap();
        state = state.replace(
            list,
            &format!("endpoints_file = {:?}", file.display().to_string()),
        );
    }
    // Its own audit key: a replica's log is its own signed chain.
    seb::cert::keys::write_keypair(&dir.join("broker"), &seb::cert::keys::generate()).unwrap();
    let text = cfg
        .text
        .replace(
            "broker_id = \"test-broker\"",
            &format!("broker_id = \"replica-{n}\""),
        )
        .replace(
            "path = \"audit.jsonl\"",
            &format!("path = \"r{n}/audit.jsonl\""),
        )
        .replace(
            "signing_key = \"broker.key\"",
            &format!("signing_key = \"r{n}/broker.key\""),
        )
        + &state
        + more;
    let config_path = env.path(&format!("seb-r{n}.toml"));
    std::fs::write(&config_path, text).unwrap();
    let mut b = Broker {
        child: None,
        listen: cfg.listen,
        admin: cfg.admin,
        config_path,
        extra_env: Vec::new(),
    };
    if ready {
        b.spawn(env);
    } else {
        b.spawn_unready(env);
    }
    b
}

pub async fn readyz(broker: &Broker) -> (u16, Value) {
    let Ok(r) = reqwest::get(broker.admin_url("/readyz")).await else {
        return (0, Value::Null);
    };
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap_or_default();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

pub async fn push_revocation(c: &reqwest::Client, broker: &Broker, doc: &str) -> (u16, Value) {
    let r = c
        .post(broker.admin_url("/v1/revocation"))
        .body(doc.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap_or_default();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The epoch replica `b` has loaded for the test signer, per `/readyz`.
pub async fn epoch_at(b: &Broker) -> Option<u64> {
    readyz(b).await.1["revocation"]["issuers"]["signer"]["epoch"].as_u64()
}

pub async fn wait_epoch(b: &Broker, epoch: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while epoch_at(b).await != Some(epoch) {
        assert!(
            Instant::now() < deadline,
            "replica never got epoch {epoch}: {:?}",
            readyz(b).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
