//! moto in server mode as the AWS upstream of the aws-target tests.

use super::{free_port, repo, Env, KillOnDrop};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Creates the IAM principals and resources the tests use, then turns moto's auth on.
pub const FIXTURE: &str = "tests/aws/moto_fixture.py";

/// moto on a free loopback port, with IAM principals and resources from the fixture.
pub struct Moto {
    pub port: u16,
    pub setup: Value,
    _child: KillOnDrop,
}

impl Moto {
    pub fn start(env: &Env) -> Moto {
        // free_port() releases the port before moto binds it, and with many servers starting
        // in parallel (etcd members, other motos) another one can take it first: our moto
        // then exits, and the port answers for someone else or not at all. A moto that is not
        // alive once its port answers, or dies during the fixture, is started again elsewhere.
        for attempt in 1.. {
            let port = free_port();
            let log = std::fs::File::create(env.path("moto.log")).unwrap();
            let child = Command::new("python3")
                .args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                // Where moto's recorder writes when a test starts it
                // (`/moto-api/recorder/start-recording`); nothing is recorded otherwise.
                .env("MOTO_RECORDER_FILEPATH", env.path("moto-recording.jsonl"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("python3 -m moto.server (pip install -r tests/requirements.txt)");
            let mut child = KillOnDrop(child);
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "moto did not start");
                if child.0.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let out = match child.0.try_wait().unwrap() {
                None => Command::new("python3")
                    .arg(repo().join(FIXTURE))
                    .args(["setup", "--endpoint", &format!("http://127.0.0.1:{port}")])
                    .output()
                    .unwrap(),
                Some(_) if attempt < 3 => continue,
                Some(status) => panic!("moto exited ({status}); see moto.log"),
            };
            if !out.status.success() && child.0.try_wait().unwrap().is_some() && attempt < 3 {
                continue;
            }
            assert!(
                out.status.success(),
                "fixture setup: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return Moto {
                port,
                setup: serde_json::from_slice(&out.stdout).unwrap(),
                _child: child,
            };
        }
        unreachable!("the loop returns or panics")
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn creds(&self, who: &str) -> (String, String) {
        let c = &self.setup[who];
        (c[0].as_str().unwrap().into(), c[1].as_str().unwrap().into())
    }

    /// moto's state, read with the test's own admin credentials (not through the broker).
    pub fn state(&self) -> Value {
        let (a, s) = self.creds("admin");
        let out = Command::new("python3")
            .arg(repo().join(FIXTURE))
            .args(["state", "--endpoint", &self.endpoint(), "--admin", &a, &s])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fixture state: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}
