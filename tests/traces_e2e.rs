//! Traces (issue 20), through the real binary: an agent's W3C `traceparent` puts its trace id
//! in the audit records and, under the broker's own span id, in the `traceparent` the upstream
//! receives; with `[tracing] otlp_endpoint`, a real OTLP/HTTP receiver (Python, decoding with
//! `opentelemetry-proto`) gets the request's spans, the broker's request span a child of the
//! agent's and the phases children of it.

mod common;

use common::otlp::OtlpReceiver;
use common::*;
use serde_json::{json, Value};

fn rule() -> Value {
    json!({"constraints": {"/amount": {"max": 100}, "/order": {"prefix": "ord_"}}, "others": "deny"})
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).unwrap();
    hex::encode(b)
}

async fn refund(
    c: &reqwest::Client,
    broker: &Broker,
    cert: Option<&str>,
    extra: &[(&str, &str)],
) -> Reply {
    let auth = cert.map(|c| format!("Bearer {c}"));
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    headers.extend_from_slice(extra);
    send(
        c,
        "POST",
        &broker.url("/v1/refunds"),
        &headers,
        br#"{"amount":5,"order":"ord_1"}"#,
    )
    .await
}

/// The `traceparent` the upstream received on its `n`th POST, parsed.
fn upstream_traceparent(up: &Upstream, n: usize) -> Option<(String, String, String)> {
    let posts: Vec<Value> = up
        .requests()
        .into_iter()
        .filter(|r| r["method"] == "POST")
        .collect();
    let h = &posts[n]["headers"];
    assert!(
        h.get("tracestate").is_none() && h.get("baggage").is_none(),
        "{h}"
    );
    let tp = h.get("traceparent")?.as_str()?;
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!((parts.len(), parts[0], tp.len()), (4, "00", 55), "{tp}");
    Some((parts[1].into(), parts[2].into(), parts[3].into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_traceparent_reaches_the_audit_log_and_the_upstream_without_otlp() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let broker = Broker::start(&env, &env.config(up.port, ""));
    let c = client(&env, false);
    let (trace, parent) = (random_hex(16), random_hex(8));
    let tp = format!("00-{trace}-{parent}-01");

    let cert = env.cert("POST", "/v1/refunds", rule());
    let r = refund(
        &c,
        &broker,
        Some(&cert),
        &[
            ("traceparent", &tp),
            ("tracestate", "vendor=x"),
            ("baggage", "user=alice"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Upstream: the same trace, the broker's span as parent (not the agent's), sampled kept;
    // the agent's tracestate and baggage are not forwarded.
    let (t, p, f) = upstream_traceparent(&up, 0).expect("a traceparent upstream");
    assert_eq!((t.as_str(), f.as_str()), (trace.as_str(), "01"));
    assert_ne!(p, parent, "the upstream's parent is the broker's span");
    assert_ne!(p, "0000000000000000");
    // Audit: the decision and its outcome carry the trace id.
    wait_for("the outcome record", || {
        audit_records(&env).iter().any(|r| r["kind"] == "outcome")
    });
    let records = audit_records(&env);
    let traced: Vec<&Value> = records
        .iter()
        .filter(|r| r["trace_id"] == trace.as_str())
        .collect();
    let kinds: Vec<&str> = traced.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["decision", "outcome"], "{records:?}");

    // A refusal is traced too: its deny record names the trace.
    let refused_trace = random_hex(16);
    let tp2 = format!("00-{refused_trace}-{parent}-00");
    let r = refund(&c, &broker, None, &[("traceparent", &tp2)]).await;
    assert_eq!(r.status, 401);
    wait_for("the deny record", || {
        audit_records(&env)
            .iter()
            .any(|r| r["trace_id"] == refused_trace.as_str())
    });

    // Without a traceparent (and no exporter): nothing is traced, nothing is added upstream,
    // and the records are as before (no trace_id member).
    let cert = env.cert("POST", "/v1/refunds", rule());
    assert_eq!(refund(&c, &broker, Some(&cert), &[]).await.status, 200);
    assert_eq!(upstream_traceparent(&up, 1), None);
    // Malformed ones are ignored the same way: served, untraced, nothing of them upstream.
    for bad in [
        format!("00-{}-{parent}-01", trace.to_uppercase()),
        format!("01-{trace}-{parent}-01"),
        format!("00-{trace}-{parent}-01-extra"),
        format!("00-{trace}-0000000000000000-01"),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nx-evil: 1".replace("\r\n", " "),
    ] {
        let cert = env.cert("POST", "/v1/refunds", rule());
        let r = refund(&c, &broker, Some(&cert), &[("traceparent", &bad)]).await;
        assert_eq!(r.status, 200, "{bad}: {:?}", r.body);
    }
    let posts = up
        .requests()
        .into_iter()
        .filter(|r| r["method"] == "POST")
        .count();
    assert_eq!(posts, 7);
    for n in 1..posts {
        assert_eq!(upstream_traceparent(&up, n), None, "request {n}");
    }
    wait_for("every outcome", || {
        audit_records(&env)
            .iter()
            .filter(|r| r["kind"] == "outcome")
            .count()
            == 7
    });
    let traced = audit_records(&env)
        .iter()
        .filter(|r| r.get("trace_id").is_some())
        .count();
    assert_eq!(
        traced, 3,
        "the first request's two records and the refusal's one"
    );
    assert_audit_verifies(&env);
    // `seb audit query --trace-id` finds a decision from its trace.
    let log = env.path("audit.jsonl");
    let (code, out, err) = seb(&[
        "audit",
        "query",
        log.to_str().unwrap(),
        "--trace-id",
        &trace,
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines.iter().all(|l| l["trace_id"] == trace.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otlp_receiver_gets_the_spans_of_an_admitted_request_under_the_agents_parent() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let otlp = OtlpReceiver::start(env.dir.path());
    let mut cfg = env.config(up.port, "");
    cfg.text.push_str(&otlp.config());
    let broker = Broker::start(&env, &cfg);
    let c = client(&env, false);

    // An agent that does not sample: the broker passes that on and exports nothing of it.
    let unsampled = random_hex(16);
    let cert = env.cert("POST", "/v1/refunds", rule());
    let tp = format!("00-{unsampled}-{}-00", random_hex(8));
    assert_eq!(
        refund(&c, &broker, Some(&cert), &[("traceparent", &tp)])
            .await
            .status,
        200
    );
    let (t, _, f) = upstream_traceparent(&up, 0).unwrap();
    assert_eq!((t.as_str(), f.as_str()), (unsampled.as_str(), "00"));

    let (trace, parent) = (random_hex(16), random_hex(8));
    let cert = env.cert("POST", "/v1/refunds", rule());
    let tp = format!("00-{trace}-{parent}-01");
    let r = refund(&c, &broker, Some(&cert), &[("traceparent", &tp)]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (t, broker_span, f) = upstream_traceparent(&up, 1).unwrap();
    assert_eq!((t.as_str(), f.as_str()), (trace.as_str(), "01"));

    let phases = [
        "seb.parse",
        "seb.admit",
        "seb.audit.decision",
        "seb.identity",
        "seb.forward",
        "seb.audit.outcome",
    ];
    let spans = otlp.wait_trace(&trace, 1 + phases.len());
    let request = spans
        .iter()
        .find(|s| s["name"] == "seb.request")
        .unwrap_or_else(|| panic!("no seb.request span: {spans:?}"));
    // The broker's request span: a server span, child of the agent's, and the parent the
    // upstream was given.
    assert_eq!(request["parent_span_id"], parent.as_str());
    assert_eq!(request["span_id"], broker_span.as_str());
    assert_eq!(request["kind"], 2, "SPAN_KIND_SERVER");
    assert_eq!(request["service"], "seb-test");
    assert_eq!(request["attributes"]["url.path"], "/v1/refunds");
    assert_eq!(request["attributes"]["http.response.status_code"], 200);
    for name in phases {
        let s = spans
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} span: {spans:?}"));
        assert_eq!(s["parent_span_id"], broker_span.as_str(), "{name}");
        assert!(
            s["start"].as_u64() >= request["start"].as_u64(),
            "{name} starts inside"
        );
        assert!(
            s["end"].as_u64() <= request["end"].as_u64(),
            "{name} ends inside"
        );
    }
    assert_eq!(
        spans.iter().find(|s| s["name"] == "seb.forward").unwrap()["kind"],
        3,
        "SPAN_KIND_CLIENT"
    );
    // The audit records of that request name the same trace.
    wait_for("the outcome", || {
        audit_records(&env)
            .iter()
            .any(|r| r["kind"] == "outcome" && r["trace_id"] == trace.as_str())
    });
    // Spans are exported in order: the unsampled request's would have come first.
    assert!(otlp
        .spans()
        .iter()
        .all(|s| s["trace_id"] != unsampled.as_str()));

    // Without a traceparent the broker starts the trace: a root span, sampled, and the same
    // trace id upstream and in the audit log.
    let cert = env.cert("POST", "/v1/refunds", rule());
    assert_eq!(refund(&c, &broker, Some(&cert), &[]).await.status, 200);
    let (own, own_span, f) =
        upstream_traceparent(&up, 2).expect("the broker's own trace goes upstream");
    assert_eq!(f, "01");
    let spans = otlp.wait_trace(&own, 1 + phases.len());
    let root = spans.iter().find(|s| s["name"] == "seb.request").unwrap();
    assert_eq!(
        (root["parent_span_id"].as_str(), root["span_id"].as_str()),
        (Some(""), Some(own_span.as_str()))
    );
    wait_for("its records", || {
        audit_records(&env)
            .iter()
            .filter(|r| r["trace_id"] == own.as_str())
            .count()
            == 2
    });
    assert_audit_verifies(&env);
}
