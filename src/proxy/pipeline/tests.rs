//! The pipeline's phases with a fake target: which phases run, in which order, and what a
//! refusal in each one leaves behind (a record, a spent or unspent use, nothing upstream).

use super::*;
use crate::admission::revocation::{self, RevocationClaims, RevocationPayload, RevocationState};
use crate::admission::Admission;
use crate::audit::{AuditSettings, Durability};
use crate::cert::{keys, Certificate, Issuer, TargetKind, TrustedIssuers, WindowPolicy, CERT_TYP};
use crate::contract::BodyView;
use crate::state::memory::MemoryUseStore;
use crate::targets::{headers::HeaderRules, Identity, Parsed};
use crate::upstream::UpstreamClient;
use serde_json::{json, Value};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

/// Where the fake target says no, if anywhere.
#[derive(Clone, Copy, PartialEq)]
enum Fail {
    Nowhere,
    Contract,
    LiveState,
    Identity,
}

struct Fake {
    client: UpstreamClient,
    headers: HeaderRules,
    /// Nothing listens there: a forwarded request provably never leaves.
    upstream: http::Uri,
    fail: Fail,
    calls: Mutex<Vec<&'static str>>,
}

impl Fake {
    fn new(fail: Fail) -> Fake {
        // A port that was free a moment ago: connecting to it is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Fake {
            client: UpstreamClient::new(None).unwrap(),
            headers: HeaderRules::new(),
            upstream: format!("http://127.0.0.1:{port}").parse().unwrap(),
            fail,
            calls: Mutex::new(Vec::new()),
        }
    }

    fn called(&self, phase: &'static str) {
        self.calls.lock().unwrap().push(phase);
    }

    fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().clone()
    }

    fn refuse(&self, at: Fail, reason: Reason) -> Result<(), Denial> {
        if self.fail == at {
            return Err(Denial::new(reason, "the fake target says no here"));
        }
        Ok(())
    }
}

impl Target for Fake {
    type Request = &'static str;

    fn name(&self) -> &str {
        "fake"
    }
    fn kind(&self) -> TargetKind {
        TargetKind::Http
    }
    fn client(&self) -> &UpstreamClient {
        &self.client
    }
    fn header_rules(&self) -> &HeaderRules {
        &self.headers
    }
    fn require_audience(&self) -> bool {
        false
    }
    fn check_head(&self, _: &http::request::Parts) -> Result<(), Denial> {
        self.called("check_head");
        Ok(())
    }
    fn parse(
        &self,
        parts: &http::request::Parts,
        _: &Bytes,
    ) -> Result<Parsed<&'static str>, Denial> {
        self.called("parse");
        Ok(Parsed {
            is_read: parts.method == http::Method::GET,
            describe: json!({"path": parts.uri.path()}),
            request: "its own request type",
        })
    }
    fn certificate(&self, parts: &http::request::Parts) -> Result<Option<String>, Denial> {
        self.called("certificate");
        Ok(parts
            .headers
            .get("x-cert")
            .map(|v| v.to_str().unwrap().to_string()))
    }
    fn certificate_hint(&self) -> &'static str {
        "fake: send x-cert"
    }
    fn check_contract(
        &self,
        _: &Certificate,
        _: &http::request::Parts,
        parsed: &Parsed<&'static str>,
        _: &BodyView,
    ) -> Result<(), Denial> {
        self.called("check_contract");
        assert_eq!(parsed.request, "its own request type");
        self.refuse(Fail::Contract, Reason::ContractMismatch)
    }
    async fn check_live_state(
        &self,
        _: &Certificate,
        _: &http::request::Parts,
        _: &Parsed<&'static str>,
        body: Bytes,
    ) -> Result<crate::targets::LiveState, Denial> {
        self.called("check_live_state");
        self.refuse(Fail::LiveState, Reason::Drift)?;
        Ok(crate::targets::LiveState::unrecorded(body))
    }
    async fn identity(&self, cert: Option<&Certificate>) -> Result<Identity, Denial> {
        self.called(if cert.is_some() {
            "identity"
        } else {
            "read_identity"
        });
        self.refuse(Fail::Identity, Reason::IdentityUnavailable)?;
        Ok(Identity {
            audit: json!({"kind": "fake"}),
            headers: Vec::new(),
            aws: None,
        })
    }
    async fn shadow_identity(&self) -> Result<Identity, Denial> {
        self.called("shadow_identity");
        Ok(Identity {
            audit: json!({"kind": "fake", "shadow": true}),
            headers: Vec::new(),
            aws: None,
        })
    }
    fn upstream_request(
        &self,
        parts: &http::request::Parts,
        _: &Parsed<&'static str>,
        body: Bytes,
        _: &Identity,
        _: &str,
    ) -> Result<http::Request<http_body_util::Full<Bytes>>, Denial> {
        self.called("upstream_request");
        let uri = crate::targets::upstream_uri(&self.upstream, parts.uri.path())?;
        Ok(http::Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .body(http_body_util::Full::new(body))
            .unwrap())
    }
}

struct World {
    broker: Arc<Broker>,
    key: ed25519_dalek::SigningKey,
    kid: String,
    dir: tempfile::TempDir,
}

fn world() -> World {
    world_in(false)
}

/// `shadow`: the fake target runs in shadow mode.
fn world_in(shadow: bool) -> World {
    let key = keys::generate();
    let kid = keys::key_id(&key.verifying_key());
    let issuers = TrustedIssuers::new([Issuer {
        name: Some("signer".into()),
        kid: kid.clone(),
        key: key.verifying_key(),
    }]);
    let now = crate::cert::now_secs();
    let revocation = Arc::new(RevocationState::new(issuers.clone()));
    let doc = revocation::sign(
        &key,
        &kid,
        &RevocationPayload {
            iss: "signer".into(),
            iat: now,
            seb: RevocationClaims {
                v: 1,
                revocation_epoch: 1,
                ..Default::default()
            },
        },
    );
    revocation.apply(&doc, now, 30).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let audit = crate::audit::Audit::start(
        AuditSettings {
            path: Some(dir.path().join("audit.jsonl")),
            durability: Durability::Flush,
            rotate_bytes: None,
            stdout: false,
            broker_id: "test".into(),
            shadow_targets: Vec::new(),
        },
        keys::generate(),
    )
    .unwrap();
    let broker = Arc::new(Broker {
        admission: Admission {
            issuers,
            window: WindowPolicy::default(),
            min_policy_epoch: 0,
            max_staleness_secs: 300,
            revocation,
            uses: Arc::new(MemoryUseStore::new(1000, Duration::from_secs(30))),
            uses_unknown_before: None,
        },
        audit,
        metrics: super::super::metrics::Metrics::new(["fake"]),
        max_body_bytes: 1 << 20,
        request_timeout: Duration::from_secs(5),
        connections: super::super::lifecycle::Connections::new(16),
        shadow: if shadow {
            vec!["fake".into()]
        } else {
            Vec::new()
        },
        agent_tokens: Vec::new(),
        reads_need_agent: false,
        request_prefix: "t".into(),
        request_counter: AtomicU64::new(1),
        expose_upstream_errors: true,
        tracing: crate::proxy::trace::Tracing::off(),
    });
    World {
        broker,
        key,
        kid,
        dir,
    }
}

impl World {
    /// A single-use certificate for the fake (http-kind) target.
    fn cert(&self, jti: &str) -> String {
        let now = crate::cert::now_secs();
        let payload = json!({
            "iss": "signer", "sub": "agent:test", "jti": jti, "iat": now, "nbf": now,
            "exp": now + 60,
            "seb": {"v": 1, "action": "a", "policy": "p", "policy_epoch": 0,
                    "revocation_epoch": 1, "target": "http",
                    "request": {"upstream": "fake", "method": "POST", "path": "/x"}}
        });
        crate::cert::jws::sign(&self.key, CERT_TYP, &self.kid, &payload)
    }

    async fn send(&self, target: &Arc<Fake>, method: &str, cert: Option<&str>) -> (u16, String) {
        let mut req = http::Request::builder().method(method).uri("/x");
        if let Some(c) = cert {
            req = req.header("x-cert", c);
        }
        let body: &'static [u8] = if method == "GET" { b"" } else { b"{}" };
        let req = req
            .body(http_body_util::Full::new(Bytes::from_static(body)))
            .unwrap();
        let conn = Arc::new(ConnInfo {
            remote: "127.0.0.1:1".parse().unwrap(),
            peer: None,
        });
        let resp = handle(self.broker.clone(), target.clone(), req, conn).await;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn records(&self) -> Vec<Value> {
        // Best-effort records are written by tasks spawned on this runtime: let them run.
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
        self.broker.audit.flush(Duration::from_secs(5)).unwrap();
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|r: &Value| r["kind"] != "start")
            .collect()
    }
}

const ADMIT_PHASES: [&str; 7] = [
    "check_head",
    "parse",
    "certificate",
    "check_contract",
    "check_live_state",
    "identity",
    "upstream_request",
];

#[tokio::test]
async fn an_admitted_mutation_runs_every_phase_in_order_and_records_before_it_forwards() {
    let w = world();
    let t = Arc::new(Fake::new(Fail::Nowhere));
    let cert = w.cert("j-1");
    let (status, body) = w.send(&t, "POST", Some(&cert)).await;
    // Nothing listens upstream: the request never left, so it is refused and its use given
    // back; the decision was recorded before the attempt all the same.
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("given back"), "{body}");
    assert_eq!(t.calls(), ADMIT_PHASES);
    let records = w.records().await;
    let kinds: Vec<(&Value, &Value)> = records
        .iter()
        .map(|r| (&r["kind"], &r["decision"]))
        .collect();
    assert_eq!(
        kinds,
        [
            (&json!("decision"), &json!("allow")),
            (&json!("outcome"), &json!("allow"))
        ]
    );
    assert_eq!(records[1]["outcome"], "returned");
    // Given back: the single-use certificate is admitted again.
    assert_eq!(w.send(&t, "POST", Some(&cert)).await.0, 502);
}

#[tokio::test]
async fn each_refusing_phase_stops_the_pipeline_there_and_spends_nothing() {
    for (fail, code, last) in [
        (Fail::Contract, "contract_mismatch", "check_contract"),
        (Fail::LiveState, "drift", "check_live_state"),
    ] {
        let w = world();
        let t = Arc::new(Fake::new(fail));
        let cert = w.cert("j-2");
        let (_, body) = w.send(&t, "POST", Some(&cert)).await;
        assert!(body.contains(code), "{code}: {body}");
        let calls = t.calls();
        assert_eq!(calls.last(), Some(&last), "{code}: {calls:?}");
        assert!(!calls.contains(&"upstream_request"), "{code}: {calls:?}");
        let records = w.records().await;
        assert_eq!(records.len(), 1, "{code}: {records:?}");
        assert_eq!(records[0]["decision"], "deny");
        assert_eq!(records[0]["reason"]["code"], code);
        // Not spent: the same certificate is taken by the store once more.
        assert_eq!(
            w.broker
                .admission
                .take_use(&w.broker.admission.authenticate(&cert).unwrap())
                .await
                .unwrap()
                .0,
            1,
            "{code}"
        );
    }
}

#[tokio::test]
async fn an_identity_that_cannot_be_minted_gives_its_use_back_after_the_decision() {
    // The identity is minted while the decision is made durable: a failed mint finds the
    // decision written, so its outcome records the refusal and the use given back.
    let w = world();
    let t = Arc::new(Fake::new(Fail::Identity));
    let cert = w.cert("j-3");
    let (status, body) = w.send(&t, "POST", Some(&cert)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("identity_unavailable"), "{body}");
    assert!(body.contains("given back"), "{body}");
    assert!(!t.calls().contains(&"upstream_request"), "{:?}", t.calls());
    let records = w.records().await;
    let kinds: Vec<(&Value, &Value)> = records
        .iter()
        .map(|r| (&r["kind"], &r["decision"]))
        .collect();
    assert_eq!(
        kinds,
        [
            (&json!("decision"), &json!("allow")),
            (&json!("outcome"), &json!("allow"))
        ]
    );
    assert_eq!(records[1]["outcome"], "returned");
    assert_eq!(records[1]["reason"]["code"], "identity_unavailable");
    // Given back: the single-use certificate is taken by the store once more.
    assert_eq!(
        w.broker
            .admission
            .take_use(&w.broker.admission.authenticate(&cert).unwrap())
            .await
            .unwrap()
            .0,
        1
    );
}

#[tokio::test]
async fn a_mutation_without_a_certificate_goes_no_further_than_parsing() {
    let w = world();
    let t = Arc::new(Fake::new(Fail::Nowhere));
    let (status, body) = w.send(&t, "POST", None).await;
    assert_eq!(status, 401);
    assert!(
        body.contains("cert_missing") && body.contains("fake: send x-cert"),
        "{body}"
    );
    assert_eq!(t.calls(), ["check_head", "parse", "certificate"]);
    assert_eq!(w.records().await[0]["reason"]["code"], "cert_missing");
}

#[tokio::test]
async fn a_read_takes_the_read_identity_and_no_certificate_phase() {
    let w = world();
    let t = Arc::new(Fake::new(Fail::Nowhere));
    let (status, _) = w.send(&t, "GET", None).await;
    assert_eq!(status, 502, "nothing listens upstream");
    assert_eq!(
        t.calls(),
        [
            "check_head",
            "parse",
            "certificate",
            "read_identity",
            "upstream_request"
        ]
    );
}

#[tokio::test]
async fn shadow_records_what_each_phase_would_refuse_and_forwards_it_under_the_shadow_identity() {
    for (fail, cert, code) in [
        (Fail::Nowhere, false, "cert_missing"),
        (Fail::Contract, true, "contract_mismatch"),
        (Fail::LiveState, true, "drift"),
    ] {
        let w = world_in(true);
        let t = Arc::new(Fake::new(fail));
        let c = w.cert("j-s");
        let (status, body) = w.send(&t, "POST", cert.then_some(c.as_str())).await;
        // Forwarded: nothing listens upstream, so the answer is the upstream's failure, not
        // the refusal that enforcing would have given.
        assert_eq!(status, 502, "{code}: {body}");
        assert!(!body.contains(code), "{code}: {body}");
        let calls = t.calls();
        assert_eq!(
            &calls[calls.len() - 2..],
            ["shadow_identity", "upstream_request"],
            "{code}: {calls:?}"
        );
        let records = w.records().await;
        assert_eq!(records.len(), 2, "{code}: {records:?}");
        assert_eq!(records[0]["kind"], "decision");
        assert_eq!(records[0]["decision"], "would_deny");
        assert_eq!(records[0]["reason"]["code"], code);
        assert_eq!(records[1]["kind"], "outcome");
        assert_eq!(records[1]["decision"], "would_deny");
        assert_eq!(records[1]["decision_seq"], records[0]["seq"]);
        assert_eq!(records[1]["identity"]["shadow"], true);
        // No use taken for a verdict enforcing would not have admitted.
        if cert {
            let parsed = w.broker.admission.authenticate(&c).unwrap();
            assert_eq!(
                w.broker.admission.take_use(&parsed).await.unwrap().0,
                1,
                "{code}"
            );
        }
    }
}

#[tokio::test]
async fn shadow_spends_the_use_enforcing_would_and_a_replay_is_a_would_deny() {
    let w = world_in(true);
    let t = Arc::new(Fake::new(Fail::Nowhere));
    let c = w.cert("j-r");
    let (status, _) = w.send(&t, "POST", Some(&c)).await;
    assert_eq!(status, 502);
    let records = w.records().await;
    assert_eq!(records[0]["decision"], "would_allow");
    assert_eq!(records[0]["request"]["use"]["n"], 1);
    // Never sent: given back, as enforcing would.
    assert_eq!(records[1]["outcome"], "returned");
    // Spent for real this time (taken directly), the next request is a replay: would_deny.
    let parsed = w.broker.admission.authenticate(&c).unwrap();
    w.broker.admission.take_use(&parsed).await.unwrap();
    w.send(&t, "POST", Some(&c)).await;
    let records = w.records().await;
    assert_eq!(records[2]["decision"], "would_deny");
    assert_eq!(records[2]["reason"]["code"], "replayed");
}

/// The identity is minted after the verdict, beside the decision's sync: a would-allow whose
/// identity cannot be minted is not forwarded at all (there is nothing to run it under), and
/// its use goes back, as when enforcing.
#[tokio::test]
async fn shadow_cannot_forward_without_an_identity_and_gives_the_use_back() {
    let w = world_in(true);
    let t = Arc::new(Fake::new(Fail::Identity));
    let (status, body) = w.send(&t, "POST", Some(&w.cert("j-i"))).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("identity_unavailable"), "{body}");
    assert!(!t.calls().contains(&"upstream_request"));
    let records = w.records().await;
    assert_eq!(records[0]["decision"], "would_allow");
    assert_eq!(
        (&records[1]["decision"], &records[1]["outcome"]),
        (&json!("would_allow"), &json!("returned"))
    );
}

#[tokio::test]
async fn a_read_on_a_shadow_target_is_an_ordinary_read() {
    let w = world_in(true);
    let t = Arc::new(Fake::new(Fail::Nowhere));
    w.send(&t, "GET", None).await;
    assert!(!t.calls().contains(&"shadow_identity"));
}
