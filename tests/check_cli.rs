//! `seb check` against the broker: one table of requests, each sent through a running
//! enforcing broker by reqwest and described to `seb check` with the same config file; the
//! verdicts and reason codes must be the same (both run `proxy::pipeline::admit`). Then the
//! exit codes: 0 allow, 1 deny, 2 usage; with `--shadow` 0 whatever the verdict, and the
//! verdicts land as signed would_allow/would_deny records in a shadow log that verifies.

mod common;

use common::*;
use seb::admission::revocation::Revoked;
use serde_json::{json, Value};

fn refund_rule() -> Value {
    json!({"constraints": {"/amount": {"max": 100}, "/order": {"prefix": "ord_"}}, "others": "deny"})
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: &'static str,
    cert: Option<String>,
    /// The reason code, or "" for allowed.
    want: &'static str,
}

const GOOD: &str = r#"{"amount":50,"order":"ord_1"}"#;

fn cases(env: &Env, revoked_cert: String, other_signer: &ed25519_dalek::SigningKey) -> Vec<Case> {
    let json_ct = || vec![("content-type", "application/json".to_string())];
    let cert = |path: &str| Some(env.cert("POST", path, refund_rule()));
    let edited = {
        let c = env.cert("POST", "/v1/refunds", refund_rule());
        let (head, rest) = c.split_once('.').unwrap();
        let (payload, sig) = rest.split_once('.').unwrap();
        // One character of the signature changed: it no longer verifies.
        let mut g = sig.to_string();
        let first = g.remove(0);
        g.insert(0, if first == 'A' { 'B' } else { 'A' });
        Some(format!("{head}.{payload}.{g}"))
    };
    let unknown_issuer = {
        let t = now();
        let p = json!({
            "iss": "signer", "sub": "agent:demo", "jti": random_jti(), "iat": t, "nbf": t, "exp": t + 300,
            "seb": {"v": 1, "action": "refund", "policy": "refunds-v1", "policy_epoch": 1, "revocation_epoch": 1,
                    "target": "http", "request": {"upstream": "payments", "method": "POST", "path": "/v1/refunds"},
                    "body": refund_rule()}
        });
        let kid = seb::cert::keys::key_id(&other_signer.verifying_key());
        Some(seb::cert::jws::sign(
            other_signer,
            seb::cert::CERT_TYP,
            &kid,
            &p,
        ))
    };
    let expired = Some(env.cert_with("POST", "/v1/refunds", refund_rule(), |p| {
        let t = now() - 3600;
        p["iat"] = t.into();
        p["nbf"] = t.into();
        p["exp"] = (t + 300).into();
    }));
    vec![
        Case {
            name: "certified",
            method: "POST",
            path: "/v1/refunds",
            headers: json_ct(),
            body: GOOD,
            cert: cert("/v1/refunds"),
            want: "",
        },
        Case {
            name: "no certificate",
            method: "POST",
            path: "/v1/refunds",
            headers: json_ct(),
            body: GOOD,
            cert: None,
            want: "cert_missing",
        },
        Case {
            name: "over the limit",
            method: "POST",
            path: "/v1/refunds",
            headers: json_ct(),
            body: r#"{"amount":500,"order":"ord_1"}"#,
            cert: cert("/v1/refunds"),
            want: "contract_mismatch",
        },
        Case {
            name: "field not allowed",
            method: "POST",
            path: "/v1/refunds",
            headers: json_ct(),
            body: r#"{"amount":5,"order":"ord_1","to":"x"}"#,
            cert: cert("/v1/refunds"),
            want: "contract_mismatch",
        },
        Case {
            name: "other path",
            method: "POST",
            path: "/v1/payouts",
            headers: json_ct(),
            body: GOOD,
            cert: cert("/v1/refunds"),
            want: "contract_mismatch",
        },
        Case {
            name: "duplicate key",
            method: "POST",
            path: "/v1/refunds",
            headers: json_ct(),
            body: r#"{"amount":5,"amount":500,"order":"ord_1"}"#,
            cert: cert("/v1/refunds"),
            want: "request_malformed",
        },
        Case {
            name: "edited",
            method: "POST",
            path: "/v1/refunds",
            headers: json_ct(),
            body: GOOD,
            cert: edited,
            want: "bad_signature",
        },
        Case {
            name: "unknown issuer",
            method: "POST",
            path: "/v1/refunds",
            headers: json_ct(),
            body: GOOD,
            cert: unknown_issuer,
            want: "unknown_issuer",
        },
        Case {
            name: "expired",
            method: "POST",
            path: "/v1/refunds",
            headers: json_ct(),
            body: GOOD,
            cert: expired,
            want: "expired",
        },
        Case {
            name: "revoked",
            method: "POST",
            path: "/v1/refunds",
            headers: json_ct(),
            body: GOOD,
            cert: Some(revoked_cert),
            want: "revoked",
        },
        Case {
            name: "content-type twice",
            method: "POST",
            path: "/v1/refunds",
            headers: vec![
                ("content-type", "application/json".into()),
                ("content-type", "text/plain".into()),
            ],
            body: GOOD,
            cert: cert("/v1/refunds"),
            want: "request_malformed",
        },
        Case {
            name: "encoded separator",
            method: "POST",
            path: "/v1/refunds%2Fx",
            headers: json_ct(),
            body: GOOD,
            cert: cert("/v1/refunds%2Fx"),
            want: "request_malformed",
        },
    ]
}

fn describe(env: &Env, i: usize, c: &Case) -> std::path::PathBuf {
    let file = env.path(&format!("request-{i}.json"));
    let headers: Vec<Value> = c.headers.iter().map(|(k, v)| json!([k, v])).collect();
    std::fs::write(
        &file,
        json!({"target": "payments", "method": c.method, "path": c.path, "headers": headers, "body": c.body}).to_string(),
    )
    .unwrap();
    file
}

fn check(
    env: &Env,
    req: &std::path::Path,
    cert: Option<&str>,
    extra: &[&str],
) -> (i32, Value, String) {
    let mut args: Vec<String> = vec![
        "check".into(),
        "--config".into(),
        env.path("seb.toml").to_str().unwrap().to_owned(),
        "--request".into(),
        req.to_str().unwrap().to_owned(),
    ];
    if let Some(c) = cert {
        args.push("--cert".into());
        args.push(c.into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = seb(&refs);
    (
        code,
        serde_json::from_str(out.trim()).unwrap_or(Value::Null),
        err,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_gives_the_brokers_verdicts_and_shadow_records_them() {
    let env = Env::new();
    let revoked_jti = random_jti();
    let revoked_cert = env.cert_with("POST", "/v1/refunds", refund_rule(), |p| {
        p["jti"] = revoked_jti.clone().into()
    });
    env.write_revocation(
        1,
        now(),
        Revoked {
            jti: vec![revoked_jti.clone()],
            ..Default::default()
        },
    );
    let other_signer = seb::cert::keys::generate();
    let up = Upstream::start(env.dir.path());
    let broker = Broker::start(&env, &env.config(up.port, ""));
    let c = client(&env, false);
    let table = cases(&env, revoked_cert, &other_signer);

    for (i, case) in table.iter().enumerate() {
        let req = describe(&env, i, case);
        // seb check first: a check spends nothing, so the broker then sees an unused certificate.
        let (code, answer, err) = check(&env, &req, case.cert.as_deref(), &[]);
        let auth = case.cert.as_ref().map(|c| format!("Bearer {c}"));
        let mut headers: Vec<(&str, &str)> =
            case.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if let Some(a) = &auth {
            headers.push(("authorization", a));
        }
        let reply = send(
            &c,
            case.method,
            &broker.url(case.path),
            &headers,
            case.body.as_bytes(),
        )
        .await;
        let broker_code = if reply.status == 200 {
            ""
        } else {
            reply.code()
        };
        assert_eq!(
            broker_code, case.want,
            "{}: the broker said {:?}",
            case.name, reply.body
        );
        assert!(
            answer.is_object(),
            "{}: seb check exited {code}: {err}",
            case.name
        );
        let check_code = answer["code"].as_str().unwrap_or("");
        assert_eq!(
            check_code, case.want,
            "{}: seb check said {answer} {err}",
            case.name
        );
        let (want_exit, want_verdict) = if case.want.is_empty() {
            (0, "allow")
        } else {
            (1, "deny")
        };
        assert_eq!(
            (code, answer["verdict"].as_str().unwrap()),
            (want_exit, want_verdict),
            "{}",
            case.name
        );
        assert!(answer["not_checked"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().starts_with("live state")));
    }

    // A read passes without a certificate, as at the broker.
    let read = Case {
        name: "read",
        method: "GET",
        path: "/v1/refunds/1",
        headers: vec![],
        body: "",
        cert: None,
        want: "",
    };
    let (code, answer, _) = check(&env, &describe(&env, 100, &read), None, &[]);
    assert_eq!((code, answer["verdict"].as_str().unwrap()), (0, "read"));

    // --shadow: exit 0 whatever the verdict, each verdict a signed record in the shadow log;
    // the same certificate checked twice into one shadow log is a replay, as at the broker.
    let log = env.path("ci-shadow.jsonl");
    let once = env.cert("POST", "/v1/refunds", refund_rule());
    let req = describe(&env, 200, &table[0]);
    let mut want = Vec::new();
    for (i, case) in table.iter().enumerate() {
        let (code, answer, err) = check(
            &env,
            &describe(&env, i, case),
            case.cert.as_deref(),
            &["--shadow", "--shadow-log", log.to_str().unwrap()],
        );
        assert_eq!(code, 0, "{}: {err}", case.name);
        assert_eq!(answer["shadow_log"], log.to_str().unwrap());
        want.push(case.want.to_string());
    }
    for expect in ["", "replayed"] {
        let (code, answer, err) = check(
            &env,
            &req,
            Some(&once),
            &["--shadow", "--shadow-log", log.to_str().unwrap()],
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(answer["code"].as_str().unwrap_or(""), expect);
        want.push(expect.to_string());
    }
    // A shadow log is only named for --shadow.
    let (code, answer, _) = check(
        &env,
        &req,
        Some(&once),
        &["--shadow-log", log.to_str().unwrap()],
    );
    assert_eq!(code, 2, "--shadow-log needs --shadow: {answer}");
    let decisions: Vec<Value> = read_jsonl(&log)
        .into_iter()
        .filter(|r| r["kind"] == "decision")
        .collect();
    let got: Vec<String> = decisions
        .iter()
        .map(|d| d["reason"]["code"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(got, want);
    for d in &decisions {
        let verdict = if d["reason"].is_null() {
            "would_allow"
        } else {
            "would_deny"
        };
        assert_eq!(d["decision"], verdict, "{d}");
        assert_eq!(d["request"]["via"], "seb check");
        assert_eq!(d["target"], "payments");
    }
    let (code, out, err) = seb(&[
        "audit",
        "verify",
        "--key",
        env.path("broker.pub").to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    // The report reads a shadow log like a broker's.
    let (code, out, err) = seb(&[
        "audit",
        "report",
        log.to_str().unwrap(),
        "--since",
        "2000-01-01T00:00:00Z",
        "--until",
        "2100-01-01T00:00:00Z",
        "--bucket",
        "36500d",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["total"]["changes"].as_u64().unwrap(), want.len() as u64);
    assert_eq!(
        r["total"]["would_block"].as_u64().unwrap(),
        want.iter().filter(|w| !w.is_empty()).count() as u64
    );

    // The broker's own log is held by the broker: --shadow does not write into it, and says so.
    let (code, _, err) = check(
        &env,
        &req,
        Some(&once),
        &[
            "--shadow",
            "--shadow-log",
            env.path("audit.jsonl").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("shadow log"), "{err}");

    // Usage errors exit 2 and say what was wrong.
    std::fs::write(
        env.path("bad.json"),
        r#"{"method":"POST","path":"/v1/refunds","path":"/x"}"#,
    )
    .unwrap();
    let (code, _, err) = check(&env, &env.path("bad.json"), None, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("strict JSON"), "{err}");
    std::fs::write(
        env.path("other.json"),
        r#"{"target":"nope","method":"POST","path":"/"}"#,
    )
    .unwrap();
    let (code, _, err) = check(
        &env,
        &env.path("other.json"),
        None,
        &["--shadow", "--shadow-log", log.to_str().unwrap()],
    );
    assert_eq!(
        code, 2,
        "a usage error is not a verdict, even with --shadow"
    );
    assert!(err.contains("no target named \"nope\""), "{err}");
}

/// name, path, headers, body, certificate, expected code.
type KubeCase<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, String)>,
    String,
    Option<String>,
    &'a str,
);

/// The same parity for a kubernetes target in front of the test apiserver: the target's own
/// request-info rules and contract, through the broker and through `seb check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_gives_the_brokers_verdicts_for_a_kubernetes_target() {
    let env = Env::new();
    let api = KubeApiserver::start(&env);
    let broker = Broker::start(&env, &env.kube_config(api.port));
    let c = client(&env, false);
    let create =
        json!({"verb": "create", "group": "", "resource": "configmaps", "namespace": "shop"});
    let rule = json!({"constraints": {"/metadata/name": {"eq": "cfg"}}, "others": "allow"});
    let cert = |aud: &str| {
        let aud = aud.to_string();
        env.kube_cert(create.clone(), rule.clone(), move |p| p["aud"] = json!(aud))
    };
    let body = |name: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "shop"}, "data": {"a": "1"}}).to_string()
    };
    let ct = || vec![("content-type", "application/json".to_string())];
    let shop = "/api/v1/namespaces/shop/configmaps";
    let table: Vec<KubeCase> = vec![
        (
            "certified",
            shop,
            ct(),
            body("cfg"),
            Some(cert("cluster")),
            "",
        ),
        (
            "other name",
            shop,
            ct(),
            body("other"),
            Some(cert("cluster")),
            "contract_mismatch",
        ),
        (
            "no certificate",
            shop,
            ct(),
            body("cfg"),
            None,
            "cert_missing",
        ),
        (
            "other namespace",
            "/api/v1/namespaces/prod/configmaps",
            ct(),
            body("cfg"),
            Some(cert("cluster")),
            "contract_mismatch",
        ),
        (
            "for staging",
            shop,
            ct(),
            body("cfg"),
            Some(cert("staging")),
            "contract_mismatch",
        ),
        (
            "content-type twice",
            shop,
            vec![
                ("content-type", "application/json".into()),
                ("content-type", "application/yaml".into()),
            ],
            body("cfg"),
            Some(cert("cluster")),
            "request_malformed",
        ),
    ];
    for (i, (name, path, headers, body, cert, want)) in table.into_iter().enumerate() {
        let file = env.path(&format!("kube-{i}.json"));
        let hs: Vec<Value> = headers.iter().map(|(k, v)| json!([k, v])).collect();
        std::fs::write(
            &file,
            json!({"method": "POST", "path": path, "headers": hs, "body": body}).to_string(),
        )
        .unwrap();
        let (code, answer, err) = check(&env, &file, cert.as_deref(), &[]);
        assert!(answer.is_object(), "{name}: seb check exited {code}: {err}");
        let auth = cert.as_ref().map(|c| format!("Bearer {c}"));
        let mut hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if let Some(a) = &auth {
            hs.push(("authorization", a));
        }
        let reply = send(&c, "POST", &broker.url(path), &hs, body.as_bytes()).await;
        // A kubernetes refusal is a Status whose message starts "seb: CODE: ".
        let message = reply.body["message"].as_str().unwrap_or("");
        let broker_code = if reply.status < 300 {
            ""
        } else {
            message
                .strip_prefix("seb: ")
                .and_then(|m| m.split(':').next())
                .unwrap_or("?")
        };
        assert_eq!(
            broker_code, want,
            "{name}: the broker said {} {:?}",
            reply.status, reply.body
        );
        assert_eq!(
            answer["code"].as_str().unwrap_or(""),
            want,
            "{name}: seb check said {answer}"
        );
        assert_eq!(code, if want.is_empty() { 0 } else { 1 }, "{name}");
    }
    assert_eq!(
        api.mutations().len(),
        1,
        "only the certified create reached the apiserver"
    );
}

/// (name, headers, body, the broker's code: `Some("")` admitted, `None` any refusal).
type AwsCase<'a> = (&'a str, Vec<(String, String)>, String, Option<&'a str>);

/// The same parity for an aws target (DynamoDB, the JSON protocol): the broker's own
/// operation parsing and contract, through the broker and through `seb check`. The broker's
/// refusal code comes from its `x-seb-reason` header; the agent's SigV4 signature is not what
/// admits a change, so a placeholder one is sent, as SDKs with the certificate as session
/// token do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_gives_the_brokers_verdicts_for_an_aws_target() {
    const REGION: &str = "eu-west-1";
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let port = up.port;
    let cfg = broker_config(|listen| {
        format!(
            r#"
[[targets]]
name = "aws"
kind = "aws"
listen = "127.0.0.1:{listen}"
[targets.aws]
endpoint = "http://127.0.0.1:{port}"
services = ["dynamodb"]
regions = ["{REGION}"]
identity = "static"
static_credentials = {{ access_key_id = {{ value_env = "SEB_TEST_STATIC_AKID" }}, secret_access_key = {{ value_env = "SEB_TEST_STATIC_SECRET" }} }}
"#
        )
    });
    let broker = Broker::start_with_env(
        &env,
        &cfg,
        vec![
            ("SEB_TEST_STATIC_AKID".into(), "AKIASTATICTEST".into()),
            ("SEB_TEST_STATIC_SECRET".into(), "static-secret".into()),
        ],
    );
    let c = client(&env, false);
    let item = |id: &str| json!({"TableName": "orders", "Item": {"id": {"S": id}}}).to_string();
    let cert = |body: &str, aud: &str| {
        common::aws::put_item_cert(&env, body.as_bytes(), REGION, aud, None)
    };
    let headers = common::aws::dynamodb_headers;
    let a = item("a");
    let table: Vec<AwsCase> = vec![
        (
            "certified",
            headers("PutItem", REGION, Some(&cert(&a, "aws"))),
            a.clone(),
            Some(""),
        ),
        (
            "another item",
            headers("PutItem", REGION, Some(&cert(&a, "aws"))),
            item("b"),
            Some("contract_mismatch"),
        ),
        (
            "no certificate",
            headers("PutItem", REGION, None),
            a.clone(),
            Some("cert_missing"),
        ),
        (
            "another operation",
            headers("DeleteItem", REGION, Some(&cert(&a, "aws"))),
            json!({"TableName": "orders", "Key": {"id": {"S": "a"}}}).to_string(),
            Some("contract_mismatch"),
        ),
        (
            "a member the operation does not have",
            headers("DeleteItem", REGION, Some(&cert(&a, "aws"))),
            a.clone(),
            Some("request_malformed"),
        ),
        (
            "for staging",
            headers("PutItem", REGION, Some(&cert(&a, "staging"))),
            a.clone(),
            Some("contract_mismatch"),
        ),
        (
            "another region",
            headers("PutItem", "us-east-1", Some(&cert(&a, "aws"))),
            a.clone(),
            None,
        ),
        (
            "x-amz-target twice",
            {
                let mut h = headers("PutItem", REGION, Some(&cert(&a, "aws")));
                h.push((
                    "x-amz-target".into(),
                    "DynamoDB_20120810.DeleteTable".into(),
                ));
                h
            },
            a.clone(),
            Some("request_malformed"),
        ),
    ];
    for (i, (name, headers, body, want)) in table.into_iter().enumerate() {
        let file = env.path(&format!("aws-{i}.json"));
        let hs: Vec<Value> = headers.iter().map(|(k, v)| json!([k, v])).collect();
        std::fs::write(
            &file,
            json!({"method": "POST", "path": "/", "headers": hs, "body": body}).to_string(),
        )
        .unwrap();
        let (code, answer, err) = check(&env, &file, None, &[]);
        assert!(answer.is_object(), "{name}: seb check exited {code}: {err}");
        let mut r = c.post(broker.url("/"));
        for (k, v) in &headers {
            r = r.header(k.as_str(), v.as_str());
        }
        let resp = r.body(body.clone()).send().await.unwrap();
        let status = resp.status().as_u16();
        let broker_code = match resp.headers().get("x-seb-reason") {
            Some(v) => v.to_str().unwrap().to_string(),
            None => String::new(),
        };
        assert_eq!(broker_code.is_empty(), status < 300, "{name}: {status}");
        let checked = answer["code"].as_str().unwrap_or("");
        assert_eq!(checked, broker_code, "{name}: seb check said {answer}");
        match want {
            Some(w) => assert_eq!(broker_code, w, "{name}"),
            None => assert!(!broker_code.is_empty(), "{name}: admitted"),
        }
        assert_eq!(code, if broker_code.is_empty() { 0 } else { 1 }, "{name}");
    }
    let mutations = up
        .requests()
        .iter()
        .filter(|r| r["method"] == "POST")
        .count();
    assert_eq!(
        mutations, 1,
        "only the certified PutItem reached the upstream"
    );
}
