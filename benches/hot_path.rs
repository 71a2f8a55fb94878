//! Micro-benchmarks of seb's hot path: what one admitted mutation costs in CPU, piece by piece.
//!
//! Groups:
//! * `cert`      certificate verification (`seb::cert::verify`);
//! * `contract`  body matching: constraints on a small body and on a ~100 KiB body, and the
//!   sha256 form over 100 KiB (hash included, as the pipeline hashes every body);
//! * `audit`     one decision record signed, hash-chained and appended, `flush` durability;
//! * `audit_fsync` the same with `fsync` (one `fdatasync` per record here: no concurrency, so
//!   no group commit);
//! * `admission` the whole admission path without network I/O: body hash, http target parse,
//!   certificate checks (signature, window, epochs, revocation), http contract, one use taken
//!   from the in-memory store, with a fresh `jti` per iteration;
//! * `floor`     the crypto floor pieces alone: one Ed25519 `verify_strict`, two Ed25519 signs,
//!   SHA-256 of a small body and of one ~600-byte audit line.
//!
//! The crypto floor of one admitted request is
//! `floor/ed25519_verify_strict + floor/ed25519_sign_x2 + floor/sha256_small_body + 2 × floor/sha256_audit_line`
//! (two audit lines are chained per admitted request: decision and outcome). See
//! loadtest/README.md.
//!
//! Kept short (3 s measurement, small samples) so the whole file runs in about two minutes.
//!
//! Single-threaded groups (`floor`, `cert`, `contract`, `admission`) are measured in the
//! benchmark thread's **CPU time** (`/proc/thread-self/schedstat`), not wall time: on a small
//! machine shared with other work, wall time counts the slices other processes took, which
//! would inflate the crypto floor and flatter the "CPU per request / floor" ratio. schedstat
//! is updated at scheduler ticks (4 ms here), so those groups use flat sampling with ~300 ms
//! samples (tick error ≈ 1%). The audit groups involve the writer thread and the disk, so they
//! are wall time.

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput,
};
use ed25519_dalek::{Signer, SigningKey};
use seb::admission::revocation::RevocationState;
use seb::admission::revocation::{self, RevocationClaims, RevocationPayload, Revoked};
use seb::admission::Admission;
use seb::audit::{Audit, AuditSettings, Durability, Entry, Kind, Subject, Verdict};
use seb::cert::{self, keys, BodyRule, Issuer, TrustedIssuers, WindowPolicy, CERT_TYP};
use seb::contract::{check_body, BodyView};
use seb::state::memory::MemoryUseStore;
use seb::targets::http::config::HttpTargetConfig;
use seb::targets::http::HttpTarget;
use seb::targets::Target;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TARGET: &str = "payments";
const PATH: &str = "/v1/transfers";
/// The fixed body of the load test and of these benches.
const SMALL_BODY: &[u8] =
    br#"{"amount":1250,"currency":"EUR","to":"acct-000123","memo":"invoice 42"}"#;

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

struct TestSigner {
    key: SigningKey,
    kid: String,
}

impl TestSigner {
    fn new() -> Self {
        let key = keys::generate();
        let kid = keys::key_id(&key.verifying_key());
        TestSigner { key, kid }
    }
    fn trusted(&self) -> TrustedIssuers {
        TrustedIssuers::new([Issuer {
            name: Some("signer".into()),
            kid: self.kid.clone(),
            key: self.key.verifying_key(),
        }])
    }
    fn sign(&self, payload: &Value) -> String {
        cert::jws::sign(&self.key, CERT_TYP, &self.kid, payload)
    }
}

/// A certificate payload like the load test's: one POST to one path, body pinned by sha256.
fn payload(now: i64, jti: &str, body: Value) -> Value {
    json!({
        "iss": "signer", "sub": "agent:bench", "jti": jti, "iat": now, "nbf": now, "exp": now + 300,
        "seb": {"v": 1, "action": "transfer", "policy": "payments-small", "policy_epoch": 1,
                "revocation_epoch": 1, "target": "http",
                "request": {"upstream": TARGET, "method": "POST", "path": PATH},
                "body": body}
    })
}

fn bench_cert(c: &mut Criterion<ThreadCpu>) {
    let s = TestSigner::new();
    let trusted = s.trusted();
    let now = cert::now_secs();
    let token = s.sign(&payload(
        now,
        "c-1",
        json!({"sha256": sha256_hex(SMALL_BODY)}),
    ));
    let mut g = c.benchmark_group("cert");
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("verify", |b| {
        b.iter(|| {
            cert::verify(
                black_box(&token),
                &trusted,
                WindowPolicy::default(),
                black_box(now),
            )
            .unwrap()
        })
    });
    g.finish();
}

fn rule(v: Value) -> BodyRule {
    serde_json::from_value(v).unwrap()
}

/// ~100 KiB: `{"order": "...", "items": [{"sku", "qty", "name"}, ...]}`.
fn big_body() -> Vec<u8> {
    let items: Vec<Value> = (0..1700)
        .map(|i| json!({"sku": format!("SKU-{i:06}"), "qty": (i % 9) + 1, "name": format!("item number {i}")}))
        .collect();
    serde_json::to_vec(&json!({"order": "o-000042", "items": items})).unwrap()
}

fn bench_contract(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("contract");
    g.sampling_mode(SamplingMode::Flat);
    let small_rule = rule(json!({"constraints": {
        "/amount": {"max": 5000}, "/currency": {"in": ["EUR", "USD"]},
        "/to": {"prefix": "acct-"}, "/memo": {"present": true}}, "others": "deny"}));
    let small_sha = sha256_hex(SMALL_BODY);
    let view = BodyView {
        bytes: SMALL_BODY,
        sha256_hex: &small_sha,
        content_type: Some("application/json"),
        content_encoding: None,
    };
    check_body(Some(&small_rule), &view).unwrap();
    g.bench_function("constraints_small", |b| {
        b.iter(|| check_body(Some(black_box(&small_rule)), black_box(&view)).unwrap())
    });

    let big = big_body();
    let big_sha = sha256_hex(&big);
    let big_rule = rule(json!({"constraints": {
        "/order": {"prefix": "o-"}, "/items/*/sku": {"prefix": "SKU-"},
        "/items/*/qty": {"min": 1}, "/items/*/name": {"present": true}}, "others": "deny"}));
    let big_view = BodyView {
        bytes: &big,
        sha256_hex: &big_sha,
        content_type: Some("application/json"),
        content_encoding: None,
    };
    check_body(Some(&big_rule), &big_view).unwrap();
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("constraints_100k", |b| {
        b.iter(|| check_body(Some(black_box(&big_rule)), black_box(&big_view)).unwrap())
    });
    let sha_rule = rule(json!({"sha256": big_sha}));
    // The pipeline hashes every body before matching, so the hash is part of this form's cost.
    g.bench_function("sha256_100k_hash_and_match", |b| {
        b.iter(|| {
            let h = sha256_hex(black_box(&big));
            let v = BodyView {
                bytes: &big,
                sha256_hex: &h,
                content_type: Some("application/json"),
                content_encoding: None,
            };
            check_body(Some(&sha_rule), &v).unwrap()
        })
    });
    g.finish();
}

/// A decision record shaped like the pipeline's `Draft::allow()`.
fn entry(jti: &str) -> Entry {
    Entry {
        kind: Kind::Decision,
        subject: std::sync::Arc::new(Subject {
            cert_id: Some(jti.to_string()),
            iss: Some("signer".into()),
            sub: Some("agent:bench".into()),
            action: Some("transfer".into()),
            policy: Some("payments-small".into()),
            evidence: None,
            target: TARGET.into(),
            request: json!({"method": "POST", "path": PATH, "operation": format!("POST {PATH}"),
                            "resource": PATH, "remote": "127.0.0.1:54321", "use": {"n": 1, "max": 1}}),
            body_sha256: Some(sha256_hex(SMALL_BODY)),
            trace_id: None,
        }),
        decision: Verdict::Allow,
        reason: None,
        identity: Some(
            json!({"kind": "broker-credential", "upstream": TARGET, "header": "authorization"}),
        ),
        upstream_status: None,
        duration_ms: None,
        outcome: None,
        decision_seq: None,
    }
}

fn bench_audit_with(c: &mut Criterion, group: &str, durability: Durability, samples: usize) {
    let dir = tempfile::Builder::new()
        .prefix("seb-bench-audit")
        // Under the target directory, on a real disk: /tmp may be tmpfs elsewhere, where
        // fsync would cost nothing.
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let audit = Audit::start(
        AuditSettings {
            path: Some(dir.path().join("audit.jsonl")),
            durability,
            rotate_bytes: None,
            stdout: false,
            broker_id: "bench".into(),
            shadow_targets: Vec::new(),
        },
        keys::generate(),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let e = entry("c-audit");
    let mut g = c.benchmark_group(group);
    g.sample_size(samples);
    g.bench_function(format!("sign_append_{}", durability.as_str()), |b| {
        b.iter_batched(
            || e.clone(),
            |e| rt.block_on(audit.record(e)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_audit(c: &mut Criterion) {
    bench_audit_with(c, "audit", Durability::Flush, 30);
}

fn bench_audit_fsync(c: &mut Criterion) {
    bench_audit_with(c, "audit_fsync", Durability::Fsync, 10);
}

fn bench_admission(c: &mut Criterion<ThreadCpu>) {
    let s = TestSigner::new();
    let trusted = s.trusted();
    let now = cert::now_secs();
    let revocation = Arc::new(RevocationState::new(trusted.clone()));
    let doc = revocation::sign(
        &s.key,
        &s.kid,
        &RevocationPayload {
            iss: "signer".into(),
            iat: now,
            seb: RevocationClaims {
                v: 1,
                revocation_epoch: 1,
                min_policy_epoch: 1,
                revoked: Revoked::default(),
            },
        },
    );
    revocation.apply(&doc, now, 30).unwrap();
    let admission = Admission {
        issuers: trusted,
        window: WindowPolicy::default(),
        min_policy_epoch: 1,
        max_staleness_secs: 300,
        revocation,
        uses: Arc::new(MemoryUseStore::new(10_000_000, Duration::from_secs(30))),
        uses_unknown_before: None,
    };
    let target = HttpTarget::new(
        TARGET,
        &HttpTargetConfig {
            upstream: "http://127.0.0.1:9".into(),
            upstream_ca: None,
            credential: None,
            reads: Vec::new(),
            read_credential: None,
        },
    )
    .unwrap();
    let (parts, ()) = http::Request::post(PATH)
        .header("content-type", "application/json")
        .body(())
        .unwrap()
        .into_parts();
    let body = bytes::Bytes::from_static(SMALL_BODY);
    let body_rule = json!({"sha256": sha256_hex(SMALL_BODY)});
    let counter = AtomicU64::new(0);

    let mut g = c.benchmark_group("admission");
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("check_contract_take_use", |b| {
        b.iter_batched(
            // Signing is the issuer's job, done before the request: kept out of the timing.
            || {
                let jti = format!("j-{}", counter.fetch_add(1, Ordering::Relaxed));
                s.sign(&payload(now, &jti, body_rule.clone()))
            },
            |token| {
                let sha = sha256_hex(&body);
                let parsed = target.parse(&parts, &body).unwrap();
                let cert = admission.authenticate(&token).unwrap();
                admission
                    .check_certificate(&cert, None, cert::now_secs())
                    .unwrap();
                let view = BodyView {
                    bytes: &body,
                    sha256_hex: &sha,
                    content_type: Some("application/json"),
                    content_encoding: None,
                };
                target
                    .check_contract(&cert, &parts, &parsed, &view)
                    .unwrap();
                let used = futures_util::FutureExt::now_or_never(admission.take_use(&cert))
                    .expect("the memory store answers at once")
                    .unwrap();
                assert_eq!(used, (1, 1));
                cert
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_floor(c: &mut Criterion<ThreadCpu>) {
    let key = keys::generate();
    let vk = key.verifying_key();
    // A certificate's signing input is ~600 bytes; an audit line is ~600 bytes too.
    let msg = vec![b'x'; 600];
    let sig = key.sign(&msg);
    let line = {
        let mut l = serde_json::to_vec(&json!({"seq": 12345, "ts": "2026-01-01T00:00:00.000Z", "broker": "seb-1",
            "kind": "decision", "cert_id": "j-123456", "iss": "signer", "sub": "agent:bench",
            "action": "transfer", "policy": "payments-small", "evidence": null, "target": TARGET,
            "request": {"method": "POST", "path": PATH, "operation": "POST /v1/transfers", "resource": PATH,
                        "remote": "127.0.0.1:54321", "use": {"n": 1, "max": 1}},
            "body_sha256": sha256_hex(SMALL_BODY), "decision": "allow", "reason": null,
            "identity": {"kind": "broker-credential", "upstream": TARGET, "header": "authorization"},
            "upstream_status": null, "duration_ms": null, "prev": sha256_hex(b"prev")}))
        .unwrap();
        l.extend_from_slice(b",\"sig\":\"");
        l.extend_from_slice(&[b'A'; 86]);
        l
    };
    let mut g = c.benchmark_group("floor");
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("ed25519_verify_strict", |b| {
        b.iter(|| vk.verify_strict(black_box(&msg), black_box(&sig)).unwrap())
    });
    g.bench_function("ed25519_sign_x2", |b| {
        b.iter(|| {
            let a = key.sign(black_box(&msg));
            let b2 = key.sign(black_box(&line));
            (a, b2)
        })
    });
    g.bench_function("sha256_small_body", |b| {
        b.iter(|| Sha256::digest(black_box(SMALL_BODY)))
    });
    g.bench_function(format!("sha256_audit_line_{}B", line.len()), |b| {
        b.iter(|| Sha256::digest(black_box(&line)))
    });
    g.finish();
}

/// What tracing adds to every request when no spans are exported (the default): looking for a
/// `traceparent` that is not there, and, when an agent sends one, parsing it and drawing the
/// broker's span id.
fn bench_trace(c: &mut Criterion<ThreadCpu>) {
    let tracing = seb::proxy::trace::Tracing::off();
    let method = http::Method::POST;
    let about = || seb::proxy::trace::Describe {
        request_id: "0a1b2c3d-42",
        target: TARGET,
        method: &method,
        path: PATH,
    };
    let mut plain = http::HeaderMap::new();
    plain.insert("content-type", "application/json".parse().unwrap());
    plain.insert("authorization", "Bearer x".parse().unwrap());
    let mut traced = plain.clone();
    traced.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let mut g = c.benchmark_group("trace");
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("off_without_traceparent", |b| {
        b.iter(|| tracing.start(black_box(&plain), about()).is_some())
    });
    g.bench_function("off_with_traceparent", |b| {
        b.iter(|| {
            tracing
                .start(black_box(&traced), about())
                .map(|t| t.trace_id())
        })
    });
    g.finish();
}

/// On-CPU time of the calling thread, in ns, from `/proc/thread-self/schedstat`.
pub struct ThreadCpu;

fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("/proc/thread-self/schedstat (Linux with CONFIG_SCHED_INFO) is needed")
}

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

struct CpuFormatter;

impl CpuFormatter {
    fn unit(typical_ns: f64) -> (f64, &'static str) {
        match typical_ns {
            t if t < 1e3 => (1.0, "ns cpu"),
            t if t < 1e6 => (1e-3, "µs cpu"),
            t if t < 1e9 => (1e-6, "ms cpu"),
            _ => (1e-9, "s cpu"),
        }
    }
}

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (f, u) = Self::unit(typical);
        values.iter_mut().for_each(|v| *v *= f);
        u
    }
    fn scale_throughputs(&self, typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let per = match t {
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) => *n as f64,
            Throughput::Elements(n) => *n as f64,
        };
        // bytes (or elements) per CPU second
        let _ = typical;
        values.iter_mut().for_each(|v| *v = per * 1e9 / *v / 1e6);
        match t {
            Throughput::Elements(_) => "M elem/cpu-s",
            _ => "MB/cpu-s",
        }
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn cpu_config() -> Criterion<ThreadCpu> {
    Criterion::default()
        .with_measurement(ThreadCpu)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
}

fn wall_config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = cpu_benches;
    config = cpu_config();
    targets = bench_floor, bench_cert, bench_contract, bench_admission, bench_trace
}
criterion_group! {
    name = wall_benches;
    config = wall_config();
    targets = bench_audit, bench_audit_fsync
}
criterion_main!(cpu_benches, wall_benches);
