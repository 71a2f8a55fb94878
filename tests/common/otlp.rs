//! An OTLP/HTTP trace receiver (tests/otlp/otlp_receiver.py, decoding with the PyPI
//! `opentelemetry-proto` classes): every span the broker exports is a JSON line.

use super::{read_jsonl, repo, spawn_with_port_file, KillOnDrop};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct OtlpReceiver {
    pub port: u16,
    log: PathBuf,
    _child: KillOnDrop,
}

impl OtlpReceiver {
    pub fn start(dir: &Path) -> OtlpReceiver {
        let log = dir.join("otlp.jsonl");
        let port_file = dir.join("otlp.port");
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/otlp/otlp_receiver.py"))
            .arg("--log")
            .arg(&log)
            .arg("--port-file")
            .arg(&port_file);
        let (port, child) = spawn_with_port_file(
            cmd,
            &port_file,
            "the OTLP receiver (pip install -r tests/requirements.txt)",
        );
        OtlpReceiver {
            port,
            log,
            _child: child,
        }
    }

    /// The `[tracing]` table that exports to this receiver.
    pub fn config(&self) -> String {
        format!(
            "\n[tracing]\notlp_endpoint = \"http://127.0.0.1:{}/v1/traces\"\nservice_name = \"seb-test\"\n",
            self.port
        )
    }

    /// Every span received so far (a decoding failure is a test failure).
    pub fn spans(&self) -> Vec<Value> {
        let all = read_jsonl(&self.log);
        if let Some(e) = all.iter().find(|s| s.get("error").is_some()) {
            panic!("the OTLP receiver could not decode an export: {e}");
        }
        all
    }

    /// The spans of one trace, once `n` of them have arrived (the broker exports in batches).
    pub fn wait_trace(&self, trace_id: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let spans: Vec<Value> = self
                .spans()
                .into_iter()
                .filter(|s| s["trace_id"] == trace_id)
                .collect();
            if spans.len() >= n {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} spans of trace {trace_id} arrived: {spans:?}",
                spans.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
