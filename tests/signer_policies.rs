//! Every example policy in `policies/`, judged by the real signer over evidence fetched from
//! a real HTTP fake of the code host and risk endpoint: proposal + evidence → verdict and the
//! reason the refusal names. Times are fixed, so deploy windows are judged exactly.

mod common;

use common::signer::*;
use common::*;
use seb::signer::config::SignerConfig;
use seb::signer::evidence::{sign_approval, ApprovalPayload};
use seb::signer::proposal::CertificateRequest;
use seb::signer::{AgentIdentity, Signer};
use serde_json::{json, Value};

/// Tuesday 2026-03-10 10:00 in Berlin (CET, UTC+1): inside api-prod's window.
const TUE_10_BERLIN: i64 = 1_773_133_200;
/// The same Tuesday 18:30 in Berlin: outside it.
const TUE_1830_BERLIN: i64 = TUE_10_BERLIN + 8 * 3600 + 1800;
/// Tuesday 2026-07-07 08:30 UTC is 10:30 in Berlin (CEST, UTC+2): inside, daylight saving applied.
const SUMMER_0830_UTC: i64 = 1_783_413_000;
/// Tuesday 2026-07-07 06:30 UTC is 08:30 CEST: outside, though 08:30 UTC would be inside in winter.
const SUMMER_0630_UTC: i64 = SUMMER_0830_UTC - 2 * 3600;

fn deploy(evidence: Value) -> Value {
    json!({"proposal": {"action": "deploy", "target": "aws", "aud": "prod-aws",
        "request": {"service": "ecs", "region": "us-east-1", "operation": "UpdateService"},
        "body": {"constraints": {"/cluster": {"eq": "prod"}, "/service": {"eq": "api"},
                                 "/taskDefinition": {"eq": "api:1"}}, "others": "deny"},
        "ttl_secs": 600},
        "evidence": evidence})
}

fn refund(max: i64, others: &str) -> Value {
    json!({"proposal": {"action": "refund", "target": "http",
        "request": {"upstream": "payments", "method": "POST", "path": "/v1/refunds"},
        "body": {"constraints": {"/amount": {"max": max}, "/order": {"prefix": "ord_"}}, "others": others},
        "ttl_secs": 3600, "max_uses": 5}})
}

fn scale(ns: &str, max: i64) -> Value {
    json!({"proposal": {"action": "scale", "target": "kubernetes", "aud": "cluster",
        "request": {"verb": "patch", "group": "apps", "resource": "deployments", "subresource": "scale",
                    "namespace": ns, "name": "web"},
        "body": {"constraints": {"/spec/replicas": {"max": max}}, "others": "deny"}}})
}

fn rollback(image: &str) -> Value {
    json!({"proposal": {"action": "rollback", "target": "kubernetes", "aud": "cluster",
        "request": {"verb": "patch", "group": "apps", "resource": "deployments", "namespace": "shop", "name": "api"},
        "body": {"constraints": {"/spec/template/spec/containers/0/image": {"eq": image}}, "others": "deny"}},
        "evidence": {"deployments": {"repo": "acme/api", "environment": "prod"}}})
}

fn break_glass() -> Value {
    json!({"proposal": {"action": "break_glass", "target": "http",
        "request": {"upstream": "payments", "method": "POST", "path": "/v1/accounts/acct_7/unfreeze"}}})
}

struct World {
    env: Env,
    fake: EvidenceFake,
    signer: Signer,
}

fn world(risk_url: Option<&str>) -> World {
    let env = Env::new();
    let fake = EvidenceFake::start(env.dir.path());
    fake.set(&green_world());
    let risk = risk_url
        .map(String::from)
        .unwrap_or(format!("{}/risk", fake.url()));
    let cfg = signer_config(&env, &fake.url(), &risk, &repo().join("policies"), "");
    std::fs::write(env.path("signer.toml"), &cfg.text).unwrap();
    let signer = Signer::new(&SignerConfig::load(&env.path("signer.toml")).unwrap()).unwrap();
    World { env, fake, signer }
}

fn approval(env: &Env, who: &str, req: &Value, now: i64) -> String {
    let key = seb::cert::keys::load_signing_key(&env.path(&format!("approver-{who}.key"))).unwrap();
    let r = CertificateRequest::parse(req.to_string().as_bytes()).unwrap();
    sign_approval(
        &key,
        &ApprovalPayload {
            approver: who.into(),
            proposal: r.proposal.digest(),
            iat: now,
            exp: now + 600,
        },
    )
}

fn with_approvals(mut req: Value, approvals: Vec<String>) -> Value {
    req["evidence"]["approvals"] = json!(approvals);
    req
}

fn agent(name: &str) -> AgentIdentity {
    AgentIdentity {
        name: name.into(),
        x5t_s256: None,
    }
}

enum Want {
    Allow {
        policy: &'static str,
        ttl: i64,
        uses: u32,
    },
    Deny {
        code: &'static str,
        says: &'static [&'static str],
    },
}

async fn judge(
    w: &World,
    who: &str,
    req: &Value,
    now: i64,
) -> Result<seb::signer::Issued, seb::signer::Refusal> {
    let r = CertificateRequest::parse(req.to_string().as_bytes()).unwrap();
    w.signer.issue_at(&agent(who), r, now).await
}

fn check(
    name: &str,
    got: Result<seb::signer::Issued, seb::signer::Refusal>,
    want: &Want,
) -> Option<seb::signer::Issued> {
    match (got, want) {
        (Ok(i), Want::Allow { policy, ttl, uses }) => {
            assert_eq!(i.claims.seb.policy, *policy, "{name}");
            assert_eq!(i.claims.exp - i.claims.nbf, *ttl, "{name}: lifetime");
            assert_eq!(i.claims.seb.max_uses, *uses, "{name}: uses");
            Some(i)
        }
        (Err(r), Want::Deny { code, says }) => {
            assert_eq!(r.code, *code, "{name}: {}", r.message);
            for s in *says {
                assert!(
                    r.message.contains(s),
                    "{name}: {:?} does not say {s:?}",
                    r.message
                );
            }
            None
        }
        (Ok(i), _) => panic!(
            "{name}: issued under {}, expected a refusal",
            i.claims.seb.policy
        ),
        (Err(r), _) => panic!("{name}: refused {}: {}", r.code, r.message),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_policy_over_real_evidence() {
    let w = world(None);
    let pr = json!({"pull_request": {"repo": "acme/api", "number": 42}, "risk": true});
    // (name, agent, request, judged at, expected, the evidence world to set first)
    type Case = (&'static str, &'static str, Value, i64, Want, Option<Value>);
    let cases: Vec<Case> = vec![
        (
            "low-risk deploy, all evidence holds",
            "agent:oncall",
            deploy(pr.clone()),
            TUE_10_BERLIN,
            Want::Allow {
                policy: "low-risk-deploy",
                ttl: 90,
                uses: 1,
            },
            None,
        ),
        (
            "low-risk deploy in summer, 10:30 CEST",
            "agent:oncall",
            deploy(pr.clone()),
            SUMMER_0830_UTC,
            Want::Allow {
                policy: "low-risk-deploy",
                ttl: 90,
                uses: 1,
            },
            None,
        ),
        (
            "red CI",
            "agent:oncall",
            deploy(pr.clone()),
            TUE_10_BERLIN,
            Want::Deny {
                code: "not_permitted",
                says: &["low-risk-deploy", "not green", "unit: failure"],
            },
            Some(
                json!({"pulls": {"acme/api#42": {"head": "9f2c1e7a4b", "files": ["services/api/handler.go"],
            "checks": [{"name": "unit", "status": "completed", "conclusion": "failure"}]}}, "risk": 12}),
            ),
        ),
        (
            "CI still running",
            "agent:oncall",
            deploy(pr.clone()),
            TUE_10_BERLIN,
            Want::Deny {
                code: "not_permitted",
                says: &["unit: in_progress"],
            },
            Some(
                json!({"pulls": {"acme/api#42": {"head": "9f2c1e7a4b", "files": ["services/api/handler.go"],
            "checks": [{"name": "unit", "status": "in_progress", "conclusion": null}]}}, "risk": 12}),
            ),
        ),
        (
            "no check runs at all",
            "agent:oncall",
            deploy(pr.clone()),
            TUE_10_BERLIN,
            Want::Deny {
                code: "not_permitted",
                says: &["no check runs"],
            },
            Some(
                json!({"pulls": {"acme/api#42": {"head": "9f2c1e7a4b", "files": ["services/api/handler.go"], "checks": []}}, "risk": 12}),
            ),
        ),
        (
            "a changed path outside the allowed set",
            "agent:oncall",
            deploy(pr.clone()),
            TUE_10_BERLIN,
            Want::Deny {
                code: "not_permitted",
                says: &["low-risk-deploy", "infra/prod.tf"],
            },
            Some(
                json!({"pulls": {"acme/api#42": {"head": "9f2c1e7a4b", "files": ["services/api/handler.go", "infra/prod.tf"],
            "checks": [{"name": "unit", "status": "completed", "conclusion": "success"}]}}, "risk": 12}),
            ),
        ),
        (
            "a path climbing out of an allowed prefix",
            "agent:oncall",
            deploy(pr.clone()),
            TUE_10_BERLIN,
            Want::Deny {
                code: "not_permitted",
                says: &["services/api/../../infra/x.tf"],
            },
            Some(
                json!({"pulls": {"acme/api#42": {"head": "9f2c1e7a4b", "files": ["services/api/../../infra/x.tf"],
            "checks": [{"name": "unit", "status": "completed", "conclusion": "success"}]}}, "risk": 12}),
            ),
        ),
        (
            "risk too high",
            "agent:oncall",
            deploy(pr.clone()),
            TUE_10_BERLIN,
            Want::Deny {
                code: "not_permitted",
                says: &["risk score 55"],
            },
            Some({
                let mut g = green_world();
                g["risk"] = json!(55);
                g
            }),
        ),
        (
            "outside the window, 18:30 Berlin",
            "agent:oncall",
            deploy(pr.clone()),
            TUE_1830_BERLIN,
            Want::Deny {
                code: "not_permitted",
                says: &["api-prod (closed at Tue 18:30 CET)"],
            },
            Some(green_world()),
        ),
        (
            "outside the window, 08:30 CEST",
            "agent:oncall",
            deploy(pr.clone()),
            SUMMER_0630_UTC,
            Want::Deny {
                code: "not_permitted",
                says: &["closed at Tue 08:30 CEST"],
            },
            None,
        ),
        (
            "deploy without naming its pull request",
            "agent:oncall",
            deploy(json!({"risk": true})),
            TUE_10_BERLIN,
            Want::Deny {
                code: "not_permitted",
                says: &["needs evidence not given: pull_request"],
            },
            None,
        ),
        (
            "code host slow",
            "agent:oncall",
            deploy(pr.clone()),
            TUE_10_BERLIN,
            Want::Deny {
                code: "evidence_unavailable",
                says: &["code_host", "no answer within 1s"],
            },
            Some({
                let mut g = green_world();
                g["faults"] = json!({"/repos/acme/api/commits": "slow"});
                g
            }),
        ),
        (
            "code host answers garbage",
            "agent:oncall",
            deploy(pr.clone()),
            TUE_10_BERLIN,
            Want::Deny {
                code: "evidence_unavailable",
                says: &["code_host", "not JSON"],
            },
            Some({
                let mut g = green_world();
                g["faults"] = json!({"/repos/acme/api/pulls/42/files": "garbage"});
                g
            }),
        ),
        (
            "code host errors",
            "agent:oncall",
            deploy(pr.clone()),
            TUE_10_BERLIN,
            Want::Deny {
                code: "evidence_unavailable",
                says: &["code_host", "status 502"],
            },
            Some({
                let mut g = green_world();
                g["faults"] = json!({"/repos": "502"});
                g
            }),
        ),
        (
            "an unknown pull request",
            "agent:oncall",
            deploy(json!({"pull_request": {"repo": "acme/api", "number": 99}, "risk": true})),
            TUE_10_BERLIN,
            Want::Deny {
                code: "evidence_unavailable",
                says: &["/repos/acme/api/pulls/99", "404"],
            },
            Some(green_world()),
        ),
        (
            "risk endpoint answers a score out of range",
            "agent:oncall",
            deploy(pr.clone()),
            TUE_10_BERLIN,
            Want::Deny {
                code: "evidence_unavailable",
                says: &["risk", "not 0 to 100"],
            },
            Some({
                let mut g = green_world();
                g["risk"] = json!(900);
                g
            }),
        ),
        (
            "refund under the limit, asking more than the policy's cap",
            "agent:oncall",
            refund(100, "deny"),
            TUE_10_BERLIN,
            Want::Allow {
                policy: "refunds-under-100",
                ttl: 300,
                uses: 1,
            },
            Some(green_world()),
        ),
        (
            "refund over the limit",
            "agent:oncall",
            refund(500, "deny"),
            TUE_10_BERLIN,
            Want::Deny {
                code: "not_permitted",
                says: &["refunds-under-100"],
            },
            None,
        ),
        (
            "refund leaving other fields open",
            "agent:oncall",
            refund(50, "allow"),
            TUE_10_BERLIN,
            Want::Deny {
                code: "not_permitted",
                says: &["refunds-under-100"],
            },
            None,
        ),
        (
            "refund by an agent on probation: forbid beats permit",
            "agent:probation-7",
            refund(50, "deny"),
            TUE_10_BERLIN,
            Want::Deny {
                code: "policy_forbid",
                says: &["no-refunds-on-probation"],
            },
            None,
        ),
        (
            "scale within bounds",
            "agent:oncall",
            scale("shop", 10),
            TUE_10_BERLIN,
            Want::Allow {
                policy: "scale-within-bounds",
                ttl: 90,
                uses: 1,
            },
            None,
        ),
        (
            "scale beyond bounds",
            "agent:oncall",
            scale("shop", 50),
            TUE_10_BERLIN,
            Want::Deny {
                code: "not_permitted",
                says: &["scale-within-bounds"],
            },
            None,
        ),
        (
            "scale in another namespace",
            "agent:oncall",
            scale("kube-system", 10),
            TUE_10_BERLIN,
            Want::Deny {
                code: "not_permitted",
                says: &["scale-within-bounds"],
            },
            None,
        ),
        (
            "rollback without an approval",
            "agent:oncall",
            rollback("registry.example/api:1.4.1"),
            TUE_1830_BERLIN,
            Want::Deny {
                code: "not_permitted",
                says: &["emergency-rollback", "approvers: none"],
            },
            None,
        ),
    ];
    for (name, who, req, now, want, world) in &cases {
        if let Some(v) = world {
            w.fake.set(v);
        }
        check(name, judge(&w, who, req, *now).await, want);
    }
    w.fake.set(&green_world());

    // Approvals are signed over the proposal's digest, so they are made per proposal.
    let now = TUE_1830_BERLIN;
    let rb = rollback("registry.example/api:1.4.1");
    let rb = with_approvals(rb.clone(), vec![approval(&w.env, "alice", &rb, now)]);
    let i = check(
        "rollback to a deployed image, one approver",
        judge(&w, "agent:oncall", &rb, now).await,
        &Want::Allow {
            policy: "emergency-rollback",
            ttl: 90,
            uses: 1,
        },
    )
    .unwrap();
    assert_eq!(
        i.claims.seb.evidence.as_ref().unwrap()["approvers"],
        json!(["alice"])
    );
    let never = rollback("registry.example/api:6.6.6");
    let never = with_approvals(never.clone(), vec![approval(&w.env, "alice", &never, now)]);
    check(
        "rollback to an image never deployed",
        judge(&w, "agent:oncall", &never, now).await,
        &Want::Deny {
            code: "not_permitted",
            says: &["emergency-rollback", "2 image(s) deployed before"],
        },
    );

    let bg = break_glass();
    let two = with_approvals(
        bg.clone(),
        vec![
            approval(&w.env, "alice", &bg, now),
            approval(&w.env, "bob", &bg, now),
        ],
    );
    let i = check(
        "break-glass, two approvers",
        judge(&w, "agent:oncall", &two, now).await,
        &Want::Allow {
            policy: "break-glass",
            ttl: 90,
            uses: 1,
        },
    )
    .unwrap();
    assert_eq!(
        i.claims.seb.evidence.as_ref().unwrap()["break_glass"],
        json!(true)
    );
    let one = with_approvals(bg.clone(), vec![approval(&w.env, "alice", &bg, now)]);
    let r = judge(&w, "agent:oncall", &one, now).await.unwrap_err();
    check(
        "break-glass, one approver",
        Err(r.clone()),
        &Want::Deny {
            code: "not_permitted",
            says: &["break-glass", "approvers: alice"],
        },
    );
    assert!(
        r.retry,
        "waiting for a second approval could change the answer"
    );
    let twice = with_approvals(
        bg.clone(),
        vec![
            approval(&w.env, "alice", &bg, now),
            approval(&w.env, "alice", &bg, now + 1),
        ],
    );
    check(
        "break-glass, one approver twice",
        judge(&w, "agent:oncall", &twice, now).await,
        &Want::Deny {
            code: "not_permitted",
            says: &["approvers: alice"],
        },
    );
    let forged = with_approvals(
        bg.clone(),
        vec![
            approval(&w.env, "alice", &bg, now),
            approval(&w.env, "mallory", &bg, now),
        ],
    );
    check(
        "break-glass, a forged approval (a key no approver has)",
        judge(&w, "agent:oncall", &forged, now).await,
        &Want::Deny {
            code: "evidence_invalid",
            says: &["approval 2", "no configured approver"],
        },
    );
    let other = with_approvals(
        bg.clone(),
        vec![
            approval(&w.env, "alice", &bg, now),
            approval(&w.env, "bob", &refund(1, "deny"), now),
        ],
    );
    check(
        "break-glass, an approval of another proposal",
        judge(&w, "agent:oncall", &other, now).await,
        &Want::Deny {
            code: "evidence_invalid",
            says: &["approval 2", "approves proposal"],
        },
    );
    let stale = with_approvals(
        bg.clone(),
        vec![
            approval(&w.env, "alice", &bg, now - 3600),
            approval(&w.env, "bob", &bg, now),
        ],
    );
    check(
        "break-glass, an expired approval",
        judge(&w, "agent:oncall", &stale, now).await,
        &Want::Deny {
            code: "evidence_invalid",
            says: &["approval 1", "not valid now"],
        },
    );
    check(
        "an action no policy schema knows",
        judge(
            &w,
            "agent:oncall",
            &json!({"proposal": {"action": "drop_database",
        "target": "http", "request": {"upstream": "payments", "method": "DELETE", "path": "/"}}}),
            now,
        )
        .await,
        &Want::Deny {
            code: "proposal_malformed",
            says: &["drop_database"],
        },
    );

    let mut two_bounds = scale("shop", 10);
    two_bounds["proposal"]["body"]["constraints"]["/spec/replicas"] = json!({"min": 2, "max": 10});
    check(
        "a body rule the broker would refuse as malformed",
        judge(&w, "agent:oncall", &two_bounds, now).await,
        &Want::Deny {
            code: "proposal_malformed",
            says: &["exactly one of"],
        },
    );
    // Every decision is in the signer's own log, which `seb audit verify` verifies and
    // `seb audit query --break-glass` filters.
    drop(w.signer);
    let log = w.env.path("signer-audit/audit.jsonl");
    let key = w.env.path("signer-log.pub");
    let (code, out, err) = seb(&[
        "audit",
        "verify",
        "--key",
        key.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = seb(&["audit", "query", log.to_str().unwrap(), "--break-glass"]);
    assert_eq!(code, 0);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["policy"], "break-glass");
    let (_, out, _) = seb(&[
        "audit",
        "query",
        log.to_str().unwrap(),
        "--decision",
        "deny",
        "--reason",
        "evidence_invalid",
    ]);
    assert_eq!(out.lines().count(), 3, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_risk_endpoint_that_is_down_is_named() {
    let w = world(Some(&format!("http://127.0.0.1:{}/risk", free_port())));
    let r = judge(
        &w,
        "agent:oncall",
        &deploy(json!({"pull_request": {"repo": "acme/api", "number": 42}, "risk": true})),
        TUE_10_BERLIN,
    )
    .await
    .unwrap_err();
    assert_eq!(r.code, "evidence_unavailable");
    assert!(
        r.message.contains("evidence source risk") && r.message.contains("could not connect"),
        "{}",
        r.message
    );
}

/// Every policy in `policies/` validates against the schema (strict mode), carries an `@id`,
/// and the set is exactly the example policies the README lists.
#[test]
fn every_policy_validates_against_the_schema() {
    let p = seb::signer::policy::Policies::load(&repo().join("policies")).unwrap();
    let mut ids = p.ids.clone();
    ids.sort();
    assert_eq!(
        ids,
        [
            "break-glass",
            "emergency-rollback",
            "low-risk-deploy",
            "no-refunds-on-probation",
            "refunds-under-100",
            "scale-within-bounds"
        ]
    );
}

/// A policy that reads what the schema does not have, a policy without `@id`, an unknown
/// annotation, and a repeated `@id` are refused at load, naming the file; the running set
/// is kept and the epoch only grows when the set that loads is different.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_policies_are_refused_and_changes_raise_the_epoch() {
    use seb::signer::policy::Policies;
    let env = Env::new();
    let dir = env.path("policies");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(repo().join("policies")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let fake = EvidenceFake::start(env.dir.path());
    let cfg = signer_config(&env, &fake.url(), &fake.url(), &dir, "");
    std::fs::write(env.path("signer.toml"), &cfg.text).unwrap();
    let signer = Signer::new(&SignerConfig::load(&env.path("signer.toml")).unwrap()).unwrap();
    assert_eq!(signer.epochs(), (1, 1));
    for (file, text, says) in [
        ("typo.cedar", "@id(\"typo\") permit (principal, action == Action::\"refund\", resource is HttpRoute) when { resource.amount < 5 };", "amount"),
        ("noid.cedar", "permit (principal, action == Action::\"refund\", resource);", "no @id"),
        ("annot.cedar", "@id(\"x\") @max_ttl_secs(\"5\") permit (principal, action == Action::\"refund\", resource);", "unknown annotation"),
        ("dup.cedar", "@id(\"break-glass\") permit (principal, action == Action::\"refund\", resource);", "used twice"),
        ("uses.cedar", "@id(\"y\") @max_uses(\"0\") permit (principal, action == Action::\"refund\", resource);", "max_uses"),
    ] {
        std::fs::write(dir.join(file), text).unwrap();
        let e = Policies::load(&dir).err().unwrap_or_else(|| panic!("{file} loaded"));
        assert!(format!("{e:#}").contains(says), "{file}: {e:#}");
        assert!(signer.reload_policies().is_err(), "{file}");
        assert_eq!(signer.epochs(), (1, 1), "a refused set changes nothing");
        std::fs::remove_file(dir.join(file)).unwrap();
    }
    assert!(
        !signer.reload_policies().unwrap(),
        "the same set is the same epoch"
    );
    std::fs::write(
        dir.join("extra.cedar"),
        "@id(\"no-deploys-on-sunday\") forbid (principal, action == Action::\"deploy\", resource) when { context.now.weekday == \"sun\" };",
    )
    .unwrap();
    assert!(signer.reload_policies().unwrap());
    assert_eq!(
        signer.epochs(),
        (2, 2),
        "a new policy set: new epoch, published as the new floor"
    );
    let doc = signer.revocation_document();
    let payload: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            doc.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["seb"]["min_policy_epoch"], 2);
    assert_eq!(payload["seb"]["revocation_epoch"], 2);
    drop(signer);
    // The epoch survives a restart; the same set does not raise it again.
    let signer = Signer::new(&SignerConfig::load(&env.path("signer.toml")).unwrap()).unwrap();
    assert_eq!(signer.epochs(), (2, 2));
}

/// Every example in `certs/` loads: proposals as `seb request` reads them, judged by the
/// example policies as certs/README.md says; claims files as `seb cert issue` reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_in_certs_loads() {
    let w = world(None);
    let now = TUE_10_BERLIN;
    let mut seen = Vec::new();
    for e in std::fs::read_dir(repo().join("certs")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        seen.push(name.clone());
        if name.ends_with("-claims.json") {
            let key = w.env.path("signer.key");
            let (code, out, err) = seb(&[
                "cert",
                "issue",
                "--key",
                key.to_str().unwrap(),
                "--iss",
                "signer",
                "--sub",
                "agent:demo",
                "--ttl",
                "5m",
                "--claims",
                path.to_str().unwrap(),
            ]);
            assert_eq!(code, 0, "{name}: {err}");
            assert_eq!(out.trim().split('.').count(), 3, "{name}");
            continue;
        }
        let req = seb::signer::agent::load_request(&path, None)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let mut v = serde_json::to_value(&req).unwrap();
        let approvers: &[&str] = match name.as_str() {
            "rollback.json" => &["alice"],
            "break-glass.json" => &["alice", "bob"],
            _ => &[],
        };
        let approvals = approvers
            .iter()
            .map(|a| approval(&w.env, a, &v, now))
            .collect();
        v = with_approvals(v, approvals);
        let want = match name.as_str() {
            "refund.json" => Some("refunds-under-100"),
            "deploy.json" => Some("low-risk-deploy"),
            "scale.json" => Some("scale-within-bounds"),
            "rollback.json" => Some("emergency-rollback"),
            "break-glass.json" => Some("break-glass"),
            "refund-too-large.json" => None,
            other => panic!("{other}: add it to this test and to certs/README.md"),
        };
        let got = judge(&w, "agent:oncall", &v, now).await;
        match (want, got) {
            (Some(p), Ok(i)) => assert_eq!(i.claims.seb.policy, p, "{name}"),
            (None, Err(r)) => assert_eq!(r.code, "not_permitted", "{name}"),
            (want, got) => panic!(
                "{name}: wanted {want:?}, got {:?}",
                got.map(|i| i.claims.seb.policy)
            ),
        }
    }
    seen.sort();
    assert_eq!(seen.len(), 7, "{seen:?}");
}
