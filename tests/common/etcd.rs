//! etcd members from Debian's `etcd-server`, started on free loopback ports with temporary
//! data directories: one member for most tests, three for the replica tests.

use super::{free_port, KillOnDrop};
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
}

impl Etcd {
    /// Starts `n` members (logs under `dir`) and waits until the cluster answers writes.
    pub fn start(dir: &Path, n: usize) -> Etcd {
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
        };
        for i in 0..n {
            etcd.spawn(i);
        }
        etcd.wait_writable();
        etcd
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
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
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new("etcd")
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

pub fn signal(b: &super::Broker, sig: i32) {
    // SAFETY: a plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(b.pid() as i32, sig) }, 0);
}

pub fn b64(s: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Whether any broker log in the test's directory mentions `what`.
pub fn logs_mention(env: &super::Env, what: &str) -> bool {
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
