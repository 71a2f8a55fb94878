//! The operator commands that read files: `seb audit export` (OCSF, CloudTrail Lake) on a
//! log from a real broker run, and `seb config schema` / `seb config check` on every config in
//! the repository. (`seb reconcile`: tests/reconcile_e2e.rs; `seb preflight`:
//! tests/preflight_e2e.rs.)

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

// === audit export ===

/// A log with an admitted request (decision and outcome) and a refused one, from the broker.
async fn real_log(env: &Env) -> PathBuf {
    let up = Upstream::start(env.dir.path());
    let broker = Broker::start(env, &env.config(up.port, ""));
    let c = client(env, false);
    let cert = env.cert(
        "POST",
        "/v1/refunds",
        json!({"constraints": {"/amount": {"max": 100}}, "others": "deny"}),
    );
    let auth = format!("Bearer {cert}");
    let ok = send(
        &c,
        "POST",
        &broker.url("/v1/refunds"),
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
        br#"{"amount":50}"#,
    )
    .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let refused = send(
        &c,
        "DELETE",
        &broker.url("/v1/refunds/1"),
        &[("content-type", "application/json")],
        b"",
    )
    .await;
    assert_eq!(refused.status, 401);
    wait_for("three request records", || {
        audit_records(env)
            .iter()
            .filter(|r| r["kind"] != "start")
            .count()
            >= 3
    });
    env.path("audit.jsonl")
}

fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .filter(|v| !v.is_null())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsf_export_has_every_required_field_of_api_activity() {
    let env = Env::new();
    let log = real_log(&env).await;
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/ocsf/api_activity_required.json")).unwrap(),
    )
    .unwrap();
    let (code, out, err) = seb(&["audit", "export", "--format", "ocsf", log.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 3, "decision, outcome, denial: {out}");
    for e in &events {
        for path in spec["required"].as_array().unwrap() {
            let path = path.as_str().unwrap();
            assert!(at(e, path).is_some(), "missing {path}: {e:#}");
        }
        for (path, any) in spec["at_least_one"].as_object().unwrap() {
            let obj = at(e, path).unwrap_or_else(|| panic!("missing {path}: {e:#}"));
            assert!(
                any.as_array()
                    .unwrap()
                    .iter()
                    .any(|k| at(obj, k.as_str().unwrap()).is_some()),
                "{path} needs one of {any}: {e:#}"
            );
        }
        for (field, allowed) in spec["enums"].as_object().unwrap() {
            if let Some(v) = e.get(field) {
                assert!(allowed.as_array().unwrap().contains(v), "{field} = {v}");
            }
        }
        assert_eq!(e["class_uid"], spec["class_uid"]);
        assert_eq!(e["category_uid"], spec["category_uid"]);
        assert_eq!(
            e["type_uid"].as_u64().unwrap(),
            6003 * 100 + e["activity_id"].as_u64().unwrap()
        );
        assert!(
            e["time"].as_i64().unwrap() > 1_700_000_000_000,
            "time is epoch ms"
        );
    }
    let (allow, outcome, deny) = (&events[0], &events[1], &events[2]);
    assert_eq!(allow["activity_id"], 1, "POST is a create");
    assert_eq!(allow["status_id"], 1);
    assert_eq!(allow["actor"]["user"]["name"], "agent:demo");
    assert!(allow["unmapped"]["cert_id"].is_string());
    assert_eq!(allow["src_endpoint"]["ip"], "127.0.0.1");
    assert_eq!(outcome["api"]["response"]["code"], 200);
    assert_eq!(
        outcome["metadata"]["correlation_uid"], allow["metadata"]["uid"],
        "an outcome points at its decision"
    );
    assert_eq!(deny["activity_id"], 4, "DELETE is a delete");
    assert_eq!(
        (deny["status_id"].clone(), deny["severity_id"].clone()),
        (json!(2), json!(3))
    );
    assert_eq!(deny["status_code"], "cert_missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudtrail_lake_export_is_put_audit_events_input() {
    use base64::Engine;
    use sha2::Digest;
    let env = Env::new();
    let log = real_log(&env).await;
    let (code, out, err) = seb(&[
        "audit",
        "export",
        "--format",
        "cloudtrail",
        log.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let batches: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(batches.len(), 1);
    let events = batches[0]["auditEvents"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    let mut ids = std::collections::BTreeSet::new();
    for e in events {
        let id = e["id"].as_str().unwrap();
        assert!(
            id.len() <= 128
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{id}"
        );
        assert!(ids.insert(id.to_string()), "ids are unique");
        let data = e["eventData"].as_str().expect("eventData is a JSON string");
        let sum =
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data.as_bytes()));
        assert_eq!(e["eventDataChecksum"], sum);
        let d: Value = serde_json::from_str(data).unwrap();
        for k in [
            "version",
            "userIdentity",
            "eventSource",
            "eventName",
            "eventTime",
            "UID",
        ] {
            assert!(!d[k].is_null(), "eventData.{k}: {d:#}");
        }
        assert!(
            d["userIdentity"]["type"].is_string() && d["userIdentity"]["principalId"].is_string()
        );
        let t = d["eventTime"].as_str().unwrap();
        assert!(
            t.len() == 20 && t.ends_with('Z'),
            "yyyy-MM-ddTHH:mm:ssZ: {t}"
        );
    }
    let denied: Value = serde_json::from_str(events[2]["eventData"].as_str().unwrap()).unwrap();
    assert_eq!(denied["errorCode"], "cert_missing");
    assert_eq!(denied["eventSource"], "seb.payments");
}

// === config schema and check ===

fn tomls(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            tomls(&p, out);
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
}

fn example_configs() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for d in ["deploy", "policies"] {
        tomls(&repo().join(d), &mut found);
    }
    assert!(!found.is_empty());
    found
}

fn is_signer(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("signer"))
}

/// Validates JSON instances against a schema with Python's `jsonschema`; one line of errors
/// (empty when valid) per instance.
fn jsonschema(schema: &Path, instances: &[Value]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("instances.json");
    std::fs::write(&list, Value::Array(instances.to_vec()).to_string()).unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, jsonschema\n\
             schema = json.load(open(sys.argv[1]))\n\
             jsonschema.Draft202012Validator.check_schema(schema)\n\
             v = jsonschema.Draft202012Validator(schema)\n\
             for inst in json.load(open(sys.argv[2])):\n\
             \x20   print(json.dumps(sorted(e.message for e in v.iter_errors(inst))))\n",
        ])
        .arg(schema)
        .arg(&list)
        .output()
        .expect("python3 with jsonschema (tests/requirements.txt)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let errs: Vec<String> = serde_json::from_str(l).unwrap();
            errs.join("; ")
        })
        .collect()
}

fn schema_file(dir: &Path, signer: bool) -> PathBuf {
    let mut args = vec!["config", "schema"];
    if signer {
        args.push("--signer");
    }
    let (code, out, err) = seb(&args);
    assert_eq!(code, 0, "{err}");
    let p = dir.join(if signer {
        "signer.schema.json"
    } else {
        "broker.schema.json"
    });
    std::fs::write(&p, out).unwrap();
    p
}

fn toml_json(t: &toml::Table) -> Value {
    serde_json::to_value(t).unwrap()
}

/// Every table of the document, by its path of keys and array indexes.
fn tables(v: &toml::Value, path: Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        toml::Value::Table(t) => {
            out.push(path.clone());
            for (k, x) in t {
                let mut p = path.clone();
                p.push(k.clone());
                tables(x, p, out);
            }
        }
        toml::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let mut p = path.clone();
                p.push(i.to_string());
                tables(x, p, out);
            }
        }
        _ => {}
    }
}

fn table_at<'a>(v: &'a mut toml::Value, path: &[String]) -> &'a mut toml::Table {
    let mut cur = v;
    for k in path {
        cur = match cur {
            toml::Value::Table(t) => t.get_mut(k).unwrap(),
            toml::Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
            _ => unreachable!(),
        };
    }
    cur.as_table_mut().unwrap()
}

#[test]
fn every_example_config_passes_the_schema_and_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = [
        schema_file(dir.path(), false),
        schema_file(dir.path(), true),
    ];
    for p in example_configs() {
        let (code, out, err) = seb(&["config", "check", "--syntax-only", p.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {err}", p.display());
        let kind = if is_signer(&p) {
            "signer config"
        } else {
            "broker config"
        };
        assert!(out.contains(kind), "{}: detected as {out}", p.display());
        let doc: toml::Table = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let errors = jsonschema(&schemas[usize::from(is_signer(&p))], &[toml_json(&doc)]);
        assert_eq!(
            errors,
            [""],
            "{}: the schema refuses a config the loader accepts",
            p.display()
        );
    }
}

#[test]
fn a_misspelt_field_is_refused_by_the_schema_wherever_the_loader_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = [
        schema_file(dir.path(), false),
        schema_file(dir.path(), true),
    ];
    let mut checked = 0;
    for p in example_configs() {
        let doc: toml::Value = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let mut paths = Vec::new();
        tables(&doc, Vec::new(), &mut paths);
        let mut instances = Vec::new();
        for path in &paths {
            let mut bad = doc.clone();
            table_at(&mut bad, path).insert("misspelt_feild".into(), toml::Value::Boolean(true));
            let file = dir.path().join(format!(
                "{}-{checked}.toml",
                if is_signer(&p) { "signer" } else { "broker" }
            ));
            checked += 1;
            std::fs::write(&file, toml::to_string(&bad).unwrap()).unwrap();
            let (code, _, err) = seb(&["config", "check", "--syntax-only", file.to_str().unwrap()]);
            assert_eq!(
                code,
                2,
                "{} at {path:?}: the loader took a misspelt field",
                p.display()
            );
            assert!(err.contains("misspelt_feild"), "{err}");
            instances.push(serde_json::to_value(&bad).unwrap());
        }
        let errors = jsonschema(&schemas[usize::from(is_signer(&p))], &instances);
        for (path, e) in paths.iter().zip(&errors) {
            assert!(
                !e.is_empty(),
                "{} at {path:?}: the schema took a misspelt field",
                p.display()
            );
        }
    }
    assert!(checked > 20, "only {checked} tables checked");
}

#[test]
fn config_check_loads_keys_and_secrets_as_serve_does_and_starts_nothing() {
    let env = Env::new();
    let cfg = env.config(free_port(), "");
    let path = env.path("seb.toml");
    std::fs::write(&path, &cfg.text).unwrap();
    let check_with = |p: &Path, payments: bool| {
        let mut c = Command::new(seb_bin());
        c.args(["config", "check"])
            .arg(p)
            .env("SEB_TEST_AGENT_TOKEN", AGENT_TOKEN);
        if payments {
            c.env("SEB_TEST_PAYMENTS_TOKEN", UPSTREAM_SECRET);
        } else {
            c.env_remove("SEB_TEST_PAYMENTS_TOKEN");
        }
        let out = c.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let check = |p: &Path| check_with(p, true);
    let (code, out, err) = check(&path);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok (broker config)"), "{out}");
    // It started nothing: the port it names is still free, no audit log was opened.
    assert!(std::net::TcpListener::bind(("127.0.0.1", cfg.listen)).is_ok());
    assert!(!env.path("audit.jsonl").exists());
    // A secret serve would read and cannot: named with its target.
    let (code, _, err) = check_with(&path, false);
    assert_eq!(code, 2);
    assert!(
        err.contains("targets[0]") && err.contains("SEB_TEST_PAYMENTS_TOKEN"),
        "{err}"
    );
    // A key file that does not load is named with its field, as serve names it.
    std::fs::write(env.path("broken.key"), "not a key").unwrap();
    let broken = env.path("broken.toml");
    std::fs::write(
        &broken,
        cfg.text.replace(
            "signing_key = \"broker.key\"",
            "signing_key = \"broken.key\"",
        ),
    )
    .unwrap();
    let (code, _, err) = check(&broken);
    assert_eq!(code, 2);
    assert!(
        err.contains("broken.toml") && err.contains("audit.signing_key"),
        "{err}"
    );
}
