//! End to end for the kubernetes target: the real kubectl and the Python `kubernetes` client
//! as agents, the `seb` binary, and tests/kube/apiserver.py as the cluster. The central
//! assertion: the apiserver received exactly the admitted mutations, under the broker's token
//! and the configured impersonation, and none of the refused ones.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

struct Cluster {
    env: Env,
    api: KubeApiserver,
    broker: Broker,
    /// kubeconfig with the agent (read) token.
    kc: PathBuf,
}

fn cluster() -> Cluster {
    cluster_with("")
}

/// `extra` is appended to the broker's config.
fn cluster_with(extra: &str) -> Cluster {
    let env = Env::new();
    let api = KubeApiserver::start(&env);
    let mut cfg = env.kube_config(api.port);
    cfg.text.push_str(extra);
    let broker = Broker::start(&env, &cfg);
    let kc = kubeconfig(&env, &broker, AGENT_TOKEN, "agent.kubeconfig");
    Cluster {
        env,
        api,
        broker,
        kc,
    }
}

const DEPLOYMENT: &str = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","namespace":"shop","labels":{"app":"web"}},"spec":{"replicas":2,"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"app","image":"reg.local/app:1"},{"name":"side","image":"reg.local/side:1"}]}}}}"#;

fn write(env: &Env, name: &str, text: &str) -> PathBuf {
    let p = env.path(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn req(verb: &str, resource: &str, group: &str, name: Option<&str>) -> Value {
    let mut r = json!({"verb": verb, "group": group, "resource": resource, "namespace": "shop"});
    if let Some(n) = name {
        r["name"] = json!(n);
    }
    r
}

fn effect(mut r: Value) -> Value {
    r["effect"] = json!(true);
    r
}

fn deny(constraints: Value) -> Value {
    json!({"constraints": constraints, "others": "deny"})
}

/// Creates the `web` Deployment through the broker with a certificate for exactly that create.
fn create_web(c: &Cluster) {
    let file = write(&c.env, "web.json", DEPLOYMENT);
    let cert = c.env.kube_cert(
        effect(req("create", "deployments", "apps", None)),
        json!({"constraints": {"/metadata/name": {"eq": "web"}, "/spec/template/spec/containers/*/image": {"prefix": "reg.local/"}}, "others": "allow"}),
        |_| {},
    );
    let (code, out, err) = kubectl(
        &c.kc,
        Some(&cert),
        &["create", "--validate=false", "-f", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
}

fn count_mutations(api: &KubeApiserver) -> usize {
    api.mutations().len()
}

fn assert_refused(
    what: &str,
    r: (i32, String, String),
    code: &str,
    api: &KubeApiserver,
    before: usize,
) {
    assert_ne!(r.0, 0, "{what}: kubectl should fail: {}{}", r.1, r.2);
    assert!(
        r.2.contains(&format!("seb: {code}:")),
        "{what}: expected {code}, got: {}",
        r.2
    );
    assert_eq!(
        count_mutations(api),
        before,
        "{what}: a refused mutation reached the apiserver"
    );
}

fn last_mutation(api: &KubeApiserver) -> Value {
    api.mutations()
        .pop()
        .expect("a mutation reached the apiserver")
}

/// The admitted request ran as the configured user, named the certificate, and carried the
/// broker's own token (checked by the apiserver, which answers 401 to anything else).
fn assert_impersonated(m: &Value, cert: &str) {
    let jti = jti_of(cert);
    assert_eq!(
        m["impersonate"]["impersonate-user"],
        json!(["seb:exec:shop-deployer"]),
        "{m}"
    );
    assert_eq!(
        m["impersonate"]["impersonate-group"],
        json!(["seb:exec"]),
        "{m}"
    );
    assert_eq!(
        m["impersonate"]["impersonate-extra-seb-cert-id"],
        json!([jti]),
        "{m}"
    );
    assert_eq!(
        m["impersonate"]["impersonate-extra-seb-subject"],
        json!(["agent:demo"]),
        "{m}"
    );
    // The certificate id is unique per issuer only; the issuer names which (seb reconcile).
    assert_eq!(
        m["impersonate"]["impersonate-extra-seb-issuer"],
        json!(["signer"]),
        "{m}"
    );
}

fn jti_of(cert: &str) -> String {
    use base64::Engine;
    let payload = cert.split('.').nth(1).unwrap();
    let v: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    v["jti"].as_str().unwrap().to_string()
}

fn live(c: &Cluster, path: &str) -> Value {
    let (code, out, err) = kubectl(&c.kc, None, &["get", "--raw", path]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn kubectl_reads_with_the_agent_token_and_changes_only_with_a_certificate() {
    let c = cluster();
    create_web(&c);
    let created = last_mutation(&c.api);
    assert_eq!(created["method"], "POST");

    // Reads: the agent token as the bearer token; the apiserver sees the read identity.
    let (code, out, err) = kubectl(&c.kc, None, &["get", "deployments", "-o", "name"]);
    assert_eq!((code, out.trim()), (0, "deployment.apps/web"), "{err}");
    let read = c
        .api
        .requests()
        .into_iter()
        .rev()
        .find(|r| r["method"] == "GET" && r["path"].as_str().unwrap().contains("/deployments"))
        .unwrap();
    assert_eq!(
        read["impersonate"]["impersonate-user"],
        json!(["seb:read:shop"])
    );
    let bad = kubeconfig(&c.env, &c.broker, "not-the-agent-token", "bad.kubeconfig");
    let (code, _, err) = kubectl(&bad, None, &["get", "deployments"]);
    assert_ne!(code, 0);
    assert!(err.contains("provide credentials"), "{err}");
    let (code, _, err) = kubectl(&bad, None, &["get", "deployments", "-w"]);
    assert_ne!(code, 0, "a watch with an unknown token is refused");
    assert!(err.contains("provide credentials"), "{err}");

    // scale: refused without a certificate, with a certificate for another object, and over
    // the certified maximum; admitted within it.
    let n = count_mutations(&c.api);
    assert_refused(
        "scale without certificate",
        kubectl(&c.kc, None, &["scale", "deploy", "web", "--replicas=3"]),
        "cert_missing",
        &c.api,
        n,
    );
    let scale_req = json!({"verb": "patch", "group": "apps", "resource": "deployments", "subresource": "scale", "namespace": "shop", "name": "web", "effect": true});
    let scale_rule = deny(json!({"/spec/replicas": {"max": 5}}));
    let other = c.env.kube_cert(json!({"verb": "patch", "group": "apps", "resource": "deployments", "subresource": "scale", "namespace": "shop", "name": "api", "effect": true}), scale_rule.clone(), |_| {});
    assert_refused(
        "scale, certificate for another deployment",
        kubectl(
            &c.kc,
            Some(&other),
            &["scale", "deploy", "web", "--replicas=3"],
        ),
        "contract_mismatch",
        &c.api,
        n,
    );
    let cert = c
        .env
        .kube_cert(scale_req.clone(), scale_rule.clone(), |_| {});
    assert_refused(
        "scale beyond the maximum",
        kubectl(
            &c.kc,
            Some(&cert),
            &["scale", "deploy", "web", "--replicas=9"],
        ),
        "contract_mismatch",
        &c.api,
        n,
    );
    let rv_before = live(&c, "/apis/apps/v1/namespaces/shop/deployments/web")["metadata"]
        ["resourceVersion"]
        .clone();
    let cert = c
        .env
        .kube_cert(scale_req.clone(), scale_rule.clone(), |_| {});
    let (code, out, err) = kubectl(
        &c.kc,
        Some(&cert),
        &["scale", "deploy", "web", "--replicas=3"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let m = last_mutation(&c.api);
    assert_impersonated(&m, &cert);
    let sent: Value = serde_json::from_str(m["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent,
        json!({"spec": {"replicas": 3}, "metadata": {"resourceVersion": rv_before}}),
        "the forwarded patch pins the resourceVersion it was checked on"
    );
    assert_eq!(
        live(&c, "/apis/apps/v1/namespaces/shop/deployments/web")["spec"]["replicas"],
        3
    );
    // The broker's own audit log: the decision, durable before the change, names the
    // certificate and the identity it ran under.
    let jti = jti_of(&cert);
    let records = audit_records(&c.env);
    let decision = records
        .iter()
        .find(|r| {
            r["kind"] == "decision"
                && r["cert_id"] == jti.as_str()
                && r["request"]["method"] == "PATCH"
        })
        .expect("decision record");
    assert_eq!(decision["decision"], "allow");
    assert_eq!(decision["request"]["kube"]["subresource"], "scale");
    // kubectl's GET before the PATCH carried the certificate too: recorded as a read.
    assert!(records.iter().any(|r| r["cert_id"] == jti.as_str()
        && r["request"]["method"] == "GET"
        && r["identity"]["user"] == "seb:read:shop"));
    let outcome = records
        .iter()
        .find(|r| r["kind"] == "outcome" && r["cert_id"] == jti.as_str())
        .expect("outcome record");
    assert_eq!(outcome["identity"]["user"], "seb:exec:shop-deployer");
    assert_eq!(outcome["identity"]["extra"]["seb-cert-id"], json!([jti]));
    assert_eq!(outcome["upstream_status"], 200);
    // The same single-use certificate again.
    let n = count_mutations(&c.api);
    assert_refused(
        "scale replayed",
        kubectl(
            &c.kc,
            Some(&cert),
            &["scale", "deploy", "web", "--replicas=4"],
        ),
        "replayed",
        &c.api,
        n,
    );

    // set image: only the certified image on the certified container.
    let image_rule =
        deny(json!({"/spec/template/spec/containers/0/image": {"eq": "reg.local/app:2"}}));
    let patch_web = effect(req("patch", "deployments", "apps", Some("web")));
    let cert = c
        .env
        .kube_cert(patch_web.clone(), image_rule.clone(), |_| {});
    assert_refused(
        "set image to another image",
        kubectl(
            &c.kc,
            Some(&cert),
            &["set", "image", "deploy/web", "app=evil.io/app:2"],
        ),
        "contract_mismatch",
        &c.api,
        n,
    );
    let cert = c
        .env
        .kube_cert(patch_web.clone(), image_rule.clone(), |_| {});
    assert_refused(
        "set image on the other container",
        kubectl(
            &c.kc,
            Some(&cert),
            &["set", "image", "deploy/web", "side=reg.local/app:2"],
        ),
        "contract_mismatch",
        &c.api,
        n,
    );
    let cert = c.env.kube_cert(patch_web.clone(), image_rule, |_| {});
    let (code, out, err) = kubectl(
        &c.kc,
        Some(&cert),
        &["set", "image", "deploy/web", "app=reg.local/app:2"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_impersonated(&last_mutation(&c.api), &cert);
    let d = live(&c, "/apis/apps/v1/namespaces/shop/deployments/web");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"],
        json!([{"name": "app", "image": "reg.local/app:2"}, {"name": "side", "image": "reg.local/side:1"}])
    );

    // rollout restart: the restart annotation and nothing else.
    let n = count_mutations(&c.api);
    let restart_rule = deny(
        json!({"/spec/template/metadata/annotations/kubectl.kubernetes.io~1restartedAt": {"present": true}}),
    );
    let scale_cert = c.env.kube_cert(
        patch_web.clone(),
        deny(json!({"/spec/replicas": {"max": 5}})),
        |_| {},
    );
    assert_refused(
        "rollout restart under a replicas certificate",
        kubectl(
            &c.kc,
            Some(&scale_cert),
            &["rollout", "restart", "deploy/web"],
        ),
        "contract_mismatch",
        &c.api,
        n,
    );
    let cert = c.env.kube_cert(patch_web.clone(), restart_rule, |_| {});
    let (code, out, err) = kubectl(&c.kc, Some(&cert), &["rollout", "restart", "deploy/web"]);
    assert_eq!(code, 0, "{out}{err}");

    // label (a merge patch).
    let n = count_mutations(&c.api);
    let label_rule = deny(json!({"/metadata/labels/tier": {"eq": "front"}}));
    let cert = c
        .env
        .kube_cert(patch_web.clone(), label_rule.clone(), |_| {});
    assert_refused(
        "label with another value",
        kubectl(
            &c.kc,
            Some(&cert),
            &["label", "deploy", "web", "tier=admin"],
        ),
        "contract_mismatch",
        &c.api,
        n,
    );
    let cert = c.env.kube_cert(patch_web.clone(), label_rule, |_| {});
    let (code, out, err) = kubectl(
        &c.kc,
        Some(&cert),
        &["label", "deploy", "web", "tier=front"],
    );
    assert_eq!(code, 0, "{out}{err}");

    // apply (client side): the new image plus kubectl's last-applied annotation.
    let n = count_mutations(&c.api);
    let v3 = DEPLOYMENT.replace("reg.local/app:1", "reg.local/app:3");
    let file = write(&c.env, "web-v3.json", &v3);
    // Without a last-applied annotation, kubectl's three-way patch also sets every field of
    // the file that differs from the live object: replicas goes back to 2.
    let apply_rule = deny(json!({
        "/spec/replicas": {"eq": 2},
        "/spec/template/spec/containers/0/image": {"eq": "reg.local/app:3"},
        "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration": {"present": true},
    }));
    let cert = c
        .env
        .kube_cert(patch_web.clone(), apply_rule.clone(), |_| {});
    let privileged = v3.replace(
        r#""image":"reg.local/app:3"}"#,
        r#""image":"reg.local/app:3","securityContext":{"privileged":true}}"#,
    );
    let bad_file = write(&c.env, "web-priv.json", &privileged);
    assert_refused(
        "apply that also makes the container privileged",
        kubectl(
            &c.kc,
            Some(&cert),
            &[
                "apply",
                "--validate=false",
                "-f",
                bad_file.to_str().unwrap(),
            ],
        ),
        "contract_mismatch",
        &c.api,
        n,
    );
    let cert = c.env.kube_cert(patch_web.clone(), apply_rule, |_| {});
    let (code, out, err) = kubectl(
        &c.kc,
        Some(&cert),
        &["apply", "--validate=false", "-f", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    let d = live(&c, "/apis/apps/v1/namespaces/shop/deployments/web");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "reg.local/app:3"
    );
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(
        d["metadata"]["labels"]["tier"], "front",
        "apply without last-applied deletes nothing"
    );
}

/// Issue 22: kubectl prints seb's refusal on each of client-go's paths. Discovery is read with
/// `Result.Raw()`, which never decodes a `Status` (a JSON refusal there read "unknown"), so
/// its refusals are text, with a `Warning` where client-go prints a fixed sentence instead;
/// resource requests and changes decode the `Status`. Shown with the apiserver stopped.
#[test]
fn kubectl_prints_seb_refusals_on_every_client_go_path() {
    let mut c = cluster();
    create_web(&c);
    // Discovery cached while the apiserver is up (kubectl's cache is per kubeconfig here).
    let (code, _, err) = kubectl(&c.kc, None, &["get", "deployments"]);
    assert_eq!(code, 0, "{err}");
    let port = c.api.port;
    c.api.stop();
    // What the agent reads is generic (error hygiene): the host and port are the operator's,
    // in the audit record.
    let unreachable = "seb: upstream_error: the upstream could not be reached or did not \
                       answer; the operator finds the cause in the audit log (request "
        .to_string();

    // Discovery with nothing cached.
    let cold = kubeconfig(&c.env, &c.broker, AGENT_TOKEN, "cold.kubeconfig");
    let (code, _, err) = kubectl(&cold, None, &["get", "deployments"]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "Error from server (InternalError): an error on the server (\"{unreachable}"
        )),
        "{err}"
    );
    assert!(!err.contains("unknown"), "{err}");
    let (code, _, err) = kubectl(&cold, None, &["version"]);
    assert_ne!(code, 0);
    assert!(err.contains(&unreachable), "{err}");

    // A resource read, discovery cached.
    let (code, _, err) = kubectl(&c.kc, None, &["get", "deployments"]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("Error from server (InternalError): {unreachable}")),
        "{err}"
    );

    // A change whose live object seb cannot read: the message says what it could not reach.
    let cert = c.env.kube_cert(
        effect(req("create", "deployments", "apps", None)),
        json!({"constraints": {"/metadata/name": {"eq": "web"}}, "others": "allow"}),
        |_| {},
    );
    let file = write(&c.env, "web.json", DEPLOYMENT);
    let (code, _, err) = kubectl(
        &c.kc,
        Some(&cert),
        &["create", "--validate=false", "-f", file.to_str().unwrap()],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "Error from server (InternalError): error when creating {:?}: {unreachable}",
            file.to_str().unwrap()
        )),
        "{err}"
    );
    // The operator's record says what could not be reached.
    let why = audit_records(&c.env)
        .into_iter()
        .filter(|r| r["reason"]["code"] == "upstream_error")
        .filter_map(|r| r["reason"]["message"].as_str().map(str::to_owned))
        .find(|m| {
            m.contains("reading the live object /apis/apps/v1/namespaces/shop/deployments/web")
        });
    let why = why.expect("the refusal of the create is recorded with its cause");
    assert!(
        why.contains(&format!("could not connect to https://localhost:{port}")),
        "{why}"
    );

    // 401 on discovery: client-go prints a fixed sentence for it, and the warning says why.
    let stranger = kubeconfig(
        &c.env,
        &c.broker,
        "not-an-agent-token",
        "stranger.kubeconfig",
    );
    let (code, _, err) = kubectl(&stranger, None, &["get", "deployments"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("Warning: seb: unauthenticated: the agent token is not one this broker knows"),
        "{err}"
    );
}

#[test]
fn kubectl_create_apply_server_side_replace_delete_and_watch() {
    let c = cluster();
    let cm_req = |verb: &str, name: Option<&str>| effect(req(verb, "configmaps", "", name));

    // create -f (JSON): every field of the new object is named.
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cfg","namespace":"shop"},"data":{"x":"1"}}"#;
    let file = write(&c.env, "cfg.json", cm);
    let create_rule = deny(
        json!({"/apiVersion": {"eq": "v1"}, "/kind": {"eq": "ConfigMap"}, "/metadata": {"present": true}, "/data/x": {"eq": "1"}}),
    );
    let n = count_mutations(&c.api);
    let cert = c
        .env
        .kube_cert(cm_req("create", None), create_rule.clone(), |_| {});
    let extra = write(
        &c.env,
        "cfg-extra.json",
        &cm.replace(r#""x":"1""#, r#""x":"1","y":"2""#),
    );
    assert_refused(
        "create with an extra key",
        kubectl(
            &c.kc,
            Some(&cert),
            &["create", "--validate=false", "-f", extra.to_str().unwrap()],
        ),
        "contract_mismatch",
        &c.api,
        n,
    );
    // Typed create commands send protobuf: refused with 415 and a message saying to use JSON.
    let cert = c
        .env
        .kube_cert(cm_req("create", None), create_rule.clone(), |_| {});
    let r = kubectl(
        &c.kc,
        Some(&cert),
        &["create", "configmap", "cfg", "--from-literal=x=1"],
    );
    assert_refused(
        "kubectl create configmap (protobuf)",
        r.clone(),
        "request_malformed",
        &c.api,
        n,
    );
    assert!(r.2.contains("protobuf") && r.2.contains("JSON"), "{}", r.2);
    let cert = c
        .env
        .kube_cert(cm_req("create", None), create_rule.clone(), |_| {});
    let (code, out, err) = kubectl(
        &c.kc,
        Some(&cert),
        &["create", "--validate=false", "-f", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_impersonated(&last_mutation(&c.api), &cert);
    // A second create of the same object under a certificate that names only one field:
    // the effect of a create is its whole body, even though it equals what exists now.
    let n = count_mutations(&c.api);
    let narrow = c.env.kube_cert(
        cm_req("create", None),
        deny(json!({"/data/x": {"eq": "1"}})),
        |_| {},
    );
    let r = kubectl(
        &c.kc,
        Some(&narrow),
        &["create", "--validate=false", "-f", file.to_str().unwrap()],
    );
    assert!(
        r.2.contains("which the certificate does not name"),
        "{}",
        r.2
    );
    assert_refused(
        "create judged against the existing object",
        r,
        "contract_mismatch",
        &c.api,
        n,
    );
    // Under a certificate for the whole object it is forwarded, and the apiserver refuses.
    let whole = c
        .env
        .kube_cert(cm_req("create", None), create_rule.clone(), |_| {});
    let (code, _, err) = kubectl(
        &c.kc,
        Some(&whole),
        &["create", "--validate=false", "-f", file.to_str().unwrap()],
    );
    assert!(code != 0 && err.contains("AlreadyExists"), "{err}");

    // get -w: the watch stays open and streams the change made while it runs.
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&c.kc)
        .args(["--cache-dir"])
        .arg(c.env.path("watch.cache"))
        .args([
            "get",
            "configmaps",
            "-w",
            "-o",
            "jsonpath={.metadata.name}={.data.x}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let out = watch.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        })
    };
    wait_for("the watch to list cfg", || {
        lines.lock().unwrap().iter().any(|l| l == "cfg=1")
    });

    // replace (PUT) on the live object: data.x 1 -> 2.
    let n = count_mutations(&c.api);
    let replace_rule = deny(json!({"/data/x": {"eq": "2"}}));
    let v2 = write(
        &c.env,
        "cfg-v2.json",
        &cm.replace(r#""x":"1""#, r#""x":"2""#),
    );
    let cert = c
        .env
        .kube_cert(cm_req("update", Some("cfg")), replace_rule.clone(), |_| {});
    let v3 = write(
        &c.env,
        "cfg-v3.json",
        &cm.replace(r#""x":"1""#, r#""x":"3""#),
    );
    assert_refused(
        "replace with another value",
        kubectl(
            &c.kc,
            Some(&cert),
            &["replace", "--validate=false", "-f", v3.to_str().unwrap()],
        ),
        "contract_mismatch",
        &c.api,
        n,
    );
    let cert = c
        .env
        .kube_cert(cm_req("update", Some("cfg")), replace_rule, |_| {});
    let (code, out, err) = kubectl(
        &c.kc,
        Some(&cert),
        &["replace", "--validate=false", "-f", v2.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    wait_for("the watch to stream the replace", || {
        lines.lock().unwrap().iter().any(|l| l == "cfg=2")
    });
    let _ = watch.kill();
    let _ = watch.wait();
    let _ = reader.join();

    // apply --server-side creates a new object (an apply patch with a JSON body).
    let n = count_mutations(&c.api);
    let ssa = write(&c.env, "ssa.json", &cm.replace("\"cfg\"", "\"ssa\""));
    let ssa_rule = deny(
        json!({"/apiVersion": {"eq": "v1"}, "/kind": {"eq": "ConfigMap"}, "/metadata": {"present": true}, "/data/x": {"eq": "1"}}),
    );
    let wrong = c
        .env
        .kube_cert(cm_req("patch", Some("other")), ssa_rule.clone(), |_| {});
    assert_refused(
        "server-side apply under a certificate for another name",
        kubectl(
            &c.kc,
            Some(&wrong),
            &[
                "apply",
                "--server-side",
                "--validate=false",
                "-f",
                ssa.to_str().unwrap(),
            ],
        ),
        "contract_mismatch",
        &c.api,
        n,
    );
    let cert = c
        .env
        .kube_cert(cm_req("patch", Some("ssa")), ssa_rule, |_| {});
    let (code, out, err) = kubectl(
        &c.kc,
        Some(&cert),
        &[
            "apply",
            "--server-side",
            "--validate=false",
            "-f",
            ssa.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let m = last_mutation(&c.api);
    assert_eq!(m["content_type"], "application/apply-patch+yaml");

    // delete: kubectl sends DeleteOptions; the certificate names them.
    let n = count_mutations(&c.api);
    let delete_rule = deny(json!({"/propagationPolicy": {"eq": "Background"}}));
    let cert = c.env.kube_cert(
        req("delete", "configmaps", "", Some("ssa")),
        delete_rule.clone(),
        |_| {},
    );
    assert_refused(
        "delete of another object",
        kubectl(&c.kc, Some(&cert), &["delete", "configmap", "cfg"]),
        "contract_mismatch",
        &c.api,
        n,
    );
    let r = kubectl(&c.kc, None, &["delete", "configmap", "cfg"]);
    assert_refused("delete without certificate", r, "cert_missing", &c.api, n);
    let cert = c.env.kube_cert(
        req("delete", "configmaps", "", Some("cfg")),
        delete_rule,
        |p| {
            p["seb"]["precondition"] = json!({"fields": {"/data/x": "2"}});
        },
    );
    let (code, out, err) = kubectl(&c.kc, Some(&cert), &["delete", "configmap", "cfg"]);
    assert_eq!(code, 0, "{out}{err}");
    let m = last_mutation(&c.api);
    assert_eq!(m["method"], "DELETE");
    let opts: Value = serde_json::from_str(m["body"].as_str().unwrap()).unwrap();
    assert!(
        opts["preconditions"]["resourceVersion"].is_string(),
        "delete is pinned: {opts}"
    );
}

fn python_agent(kc: &Path, args: &[&str]) -> (i32, Value) {
    let out = Command::new("python3")
        .arg(repo().join("tests/kube/python_agent.py"))
        .arg(kc)
        .args(args)
        .output()
        .expect("python3 with the kubernetes package (pip install -r tests/requirements.txt)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("null");
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(last).unwrap_or_else(
            |_| json!({"raw": stdout, "stderr": String::from_utf8_lossy(&out.stderr)}),
        ),
    )
}

#[test]
fn python_client_reads_watches_and_changes_under_certificates() {
    // A request timeout shorter than the watch below: it limits the time to response
    // headers, and must not cut a stream that is already flowing.
    let c = cluster_with("[limits]\nrequest_timeout = \"2s\"\n");
    create_web(&c);
    let (code, v) = python_agent(&c.kc, &["list", "shop"]);
    assert_eq!((code, &v), (0, &json!({"names": ["web"]})));

    // Watch in the background; the certified scale below must show up as an event.
    let mut watcher = Command::new("python3")
        .arg(repo().join("tests/kube/python_agent.py"))
        .arg(&c.kc)
        .args(["watch", "shop", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let out = watcher.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        })
    };
    wait_for("the Python watch to see web", || {
        !lines.lock().unwrap().is_empty()
    });
    std::thread::sleep(std::time::Duration::from_secs(3));

    let scale_req = json!({"verb": "patch", "group": "apps", "resource": "deployments", "subresource": "scale", "namespace": "shop", "name": "web", "effect": true});
    let rule = deny(json!({"/spec/replicas": {"max": 5}}));
    let n = count_mutations(&c.api);
    let (code, v) = python_agent(&c.kc, &["scale", "shop", "web", "4"]);
    assert_eq!((code, v["status"].as_u64()), (3, Some(401)), "{v}");
    let cert = c.env.kube_cert(scale_req.clone(), rule.clone(), |_| {});
    let with_cert = kubeconfig(&c.env, &c.broker, &cert, "cert.kubeconfig");
    let (code, v) = python_agent(&with_cert, &["scale", "shop", "web", "8"]);
    assert_eq!((code, v["status"].as_u64()), (3, Some(403)), "{v}");
    assert!(
        v["body"]
            .as_str()
            .unwrap()
            .contains("seb: contract_mismatch"),
        "{v}"
    );
    assert_eq!(count_mutations(&c.api), n);
    let cert = c.env.kube_cert(scale_req, rule, |_| {});
    let with_cert = kubeconfig(&c.env, &c.broker, &cert, "cert.kubeconfig");
    let (code, v) = python_agent(&with_cert, &["scale", "shop", "web", "4"]);
    assert_eq!((code, &v), (0, &json!({"replicas": 4})));
    assert_impersonated(&last_mutation(&c.api), &cert);

    assert!(watcher.wait().unwrap().success());
    reader.join().unwrap();
    let text = lines.lock().unwrap().join("\n");
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(Value::is_array)
        .collect();
    assert_eq!(
        events,
        vec![json!(["ADDED", "web", 2]), json!(["MODIFIED", "web", 4])],
        "{text}"
    );

    // set image: another image under the certificate is refused; the certified one passes.
    let image_rule =
        deny(json!({"/spec/template/spec/containers/0/image": {"eq": "reg.local/app:2"}}));
    let n = count_mutations(&c.api);
    let cert = c.env.kube_cert(
        effect(req("patch", "deployments", "apps", Some("web"))),
        image_rule.clone(),
        |_| {},
    );
    let with_cert = kubeconfig(&c.env, &c.broker, &cert, "cert.kubeconfig");
    let (code, v) = python_agent(
        &with_cert,
        &["set-image", "shop", "web", "app", "evil.io/app:2"],
    );
    assert_eq!((code, v["status"].as_u64()), (3, Some(403)), "{v}");
    assert_eq!(count_mutations(&c.api), n);
    let cert = c.env.kube_cert(
        effect(req("patch", "deployments", "apps", Some("web"))),
        image_rule,
        |_| {},
    );
    let with_cert = kubeconfig(&c.env, &c.broker, &cert, "cert.kubeconfig");
    let (code, v) = python_agent(
        &with_cert,
        &["set-image", "shop", "web", "app", "reg.local/app:2"],
    );
    assert_eq!(
        (code, &v),
        (
            0,
            &json!({"images": ["reg.local/app:2", "reg.local/side:1"]})
        )
    );
}

/// Raw requests for what kubectl would never send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_requests_are_refused_before_the_apiserver() {
    let c = cluster();
    create_web(&c);
    let http = client(&c.env, false);
    let url = |p: &str| format!("https://localhost:{}{p}", c.broker.listen);
    let web = "/apis/apps/v1/namespaces/shop/deployments/web";
    let smp = ("content-type", "application/strategic-merge-patch+json");
    let image_rule =
        deny(json!({"/spec/template/spec/containers/0/image": {"eq": "reg.local/app:2"}}));
    let patch_web = effect(req("patch", "deployments", "apps", Some("web")));
    let cert = || {
        c.env
            .kube_cert(patch_web.clone(), image_rule.clone(), |_| {})
    };
    let bearer = |t: &str| format!("Bearer {t}");
    let n = count_mutations(&c.api);

    struct Case {
        name: &'static str,
        method: &'static str,
        path: String,
        headers: Vec<(&'static str, String)>,
        body: String,
        status: u16,
        code: &'static str,
    }
    let with = |ct: &'static str, t: &str| {
        vec![
            ("content-type", ct.to_string()),
            ("authorization", bearer(t)),
        ]
    };
    let cases = vec![
        Case {
            name: "duplicate JSON keys",
            method: "PATCH",
            path: web.into(),
            headers: with(smp.1, &cert()),
            body: r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"reg.local/app:2","image":"evil.io/x"}]}}}}"#.into(),
            status: 400,
            code: "request_malformed",
        },
        Case {
            name: "keys differing only in case",
            method: "PATCH",
            path: web.into(),
            headers: with(smp.1, &cert()),
            body: r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"reg.local/app:2","Image":"evil.io/x"}]}}}}"#.into(),
            status: 400,
            code: "request_malformed",
        },
        Case {
            name: "$patch: replace drops the sidecar",
            method: "PATCH",
            path: web.into(),
            headers: with(smp.1, &cert()),
            body: r#"{"spec":{"template":{"spec":{"$patch":"replace","containers":[{"name":"app","image":"reg.local/app:2"}]}}}}"#.into(),
            status: 403,
            code: "contract_mismatch",
        },
        Case {
            name: "$patch: delete removes the sidecar",
            method: "PATCH",
            path: web.into(),
            headers: with(smp.1, &cert()),
            body: r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"reg.local/app:2"},{"name":"side","$patch":"delete"}]}}}}"#.into(),
            status: 403,
            code: "contract_mismatch",
        },
        Case {
            name: "the permitted image plus a privileged container",
            method: "PATCH",
            path: web.into(),
            headers: with(smp.1, &cert()),
            body: r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"reg.local/app:2","securityContext":{"privileged":true}}]}}}}"#.into(),
            status: 403,
            code: "contract_mismatch",
        },
        Case {
            name: "JSON patch Content-Type with an object body",
            method: "PATCH",
            path: web.into(),
            headers: with("application/json-patch+json", &cert()),
            body: r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"reg.local/app:2"}]}}}}"#.into(),
            status: 400,
            code: "request_malformed",
        },
        Case {
            name: "PATCH with application/json",
            method: "PATCH",
            path: web.into(),
            headers: with("application/json", &cert()),
            body: r#"{"spec":{}}"#.into(),
            status: 415,
            code: "request_malformed",
        },
        Case {
            name: "protobuf",
            method: "PATCH",
            path: web.into(),
            headers: with("application/vnd.kubernetes.protobuf", &cert()),
            body: "k8s\u{0}\n".into(),
            status: 415,
            code: "request_malformed",
        },
        Case {
            name: "YAML apply patch",
            method: "PATCH",
            path: web.into(),
            headers: with("application/apply-patch+yaml", &cert()),
            body: "apiVersion: apps/v1\nkind: Deployment\n".into(),
            status: 415,
            code: "request_malformed",
        },
        Case {
            name: "agent-sent Impersonate-User on a mutation",
            method: "PATCH",
            path: web.into(),
            headers: {
                let mut h = with(smp.1, &cert());
                h.push(("impersonate-user", "system:admin".into()));
                h
            },
            body: r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"reg.local/app:2"}]}}}}"#.into(),
            status: 403,
            code: "contract_mismatch",
        },
        Case {
            name: "agent-sent Impersonate-Group on a read",
            method: "GET",
            path: "/api/v1/namespaces/shop/secrets".into(),
            headers: vec![("authorization", bearer(AGENT_TOKEN)), ("impersonate-group", "system:masters".into())],
            body: String::new(),
            status: 403,
            code: "contract_mismatch",
        },
        Case {
            name: "encoded slash",
            method: "DELETE",
            path: "/api/v1/namespaces/shop/configmaps/a%2Fb".into(),
            headers: with("application/json", &cert()),
            body: String::new(),
            status: 400,
            code: "request_malformed",
        },
        Case {
            name: "drift: the certificate was issued for another resourceVersion",
            method: "PATCH",
            path: web.into(),
            headers: with(smp.1, &c.env.kube_cert(patch_web.clone(), image_rule.clone(), |p| p["seb"]["precondition"] = json!({"resourceVersion": "1"}))),
            body: r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"reg.local/app:2"}]}}}}"#.into(),
            status: 409,
            code: "drift",
        },
    ];
    for case in &cases {
        let headers: Vec<(&str, &str)> =
            case.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = send(
            &http,
            case.method,
            &url(&case.path),
            &headers,
            case.body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, case.status, "{}: {}", case.name, r.body);
        assert_eq!(r.body["kind"], "Status", "{}", case.name);
        assert_eq!(r.body["code"], case.status, "{}", case.name);
        let msg = r.body["message"].as_str().unwrap_or("");
        assert!(
            msg.starts_with(&format!("seb: {}: ", case.code)),
            "{}: {msg}",
            case.name
        );
        assert_eq!(
            count_mutations(&c.api),
            n,
            "{}: reached the apiserver",
            case.name
        );
    }
    // Front-proxy identity headers are not forwarded.
    let r = send(
        &http,
        "GET",
        &url(web),
        &[
            ("authorization", &bearer(AGENT_TOKEN)),
            ("x-remote-user", "system:admin"),
            ("x-remote-group", "system:masters"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = c.api.requests().pop().unwrap();
    assert_eq!(
        seen["impersonate"],
        json!({"impersonate-user": ["seb:read:shop"], "impersonate-group": ["seb:read"]}),
        "{seen}"
    );

    // Dot segments, sent as raw bytes since URL libraries would clean them.
    for path in [
        "/api/v1/namespaces/shop/pods/../secrets",
        "/api/v1/namespaces/shop/pods/%2e%2e/secrets",
    ] {
        let r = send_raw(&c.env, c.broker.listen, &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {AGENT_TOKEN}\r\nConnection: close\r\n\r\n")).await;
        assert_eq!(r.status, 400, "{path}");
        assert!(
            !c.api
                .requests()
                .iter()
                .any(|q| q["path"].as_str().unwrap().contains("secrets")),
            "{path} reached the apiserver"
        );
    }

    // exec is a mutation: without a certificate, or with one that does not name the command
    // (here: an interactive shell), it is refused before the upgrade reaches the apiserver.
    let exec_cert = c.env.kube_cert(
        json!({"verb": "create", "group": "", "resource": "pods", "subresource": "exec", "namespace": "shop", "name": "web-1"}),
        Value::Null,
        |_| {},
    );
    for token in [AGENT_TOKEN, exec_cert.as_str()] {
        let r = send_raw(&c.env, c.broker.listen, &format!("POST /api/v1/namespaces/shop/pods/web-1/exec?command=sh&stdin=true HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade, close\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n\r\n")).await;
        let want = if token == AGENT_TOKEN {
            (401, "seb: cert_missing")
        } else {
            (403, "seb: contract_mismatch: the request asks for stdin")
        };
        assert_eq!(r.status, want.0, "{}", r.body);
        assert!(
            r.body["message"].as_str().unwrap().starts_with(want.1),
            "{}",
            r.body
        );
    }
    assert_eq!(count_mutations(&c.api), n);

    // The admitted patch: forwarded with the resourceVersion it was checked against, so a
    // change in between is the apiserver's 409, never a silent overwrite.
    let rv = live(&c, web)["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let body = r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"reg.local/app:2"}]}}}}"#;
    let r = send(
        &http,
        "PATCH",
        &url(web),
        &[smp, ("authorization", &bearer(&cert()))],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let m = last_mutation(&c.api);
    let sent: Value = serde_json::from_str(m["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["metadata"]["resourceVersion"], rv);
    // The test apiserver enforces that pin: the same patch body at a stale version is 409.
    let stale = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(c.env.path("tls/ca.pem")).unwrap())
                .unwrap(),
        )
        .build()
        .unwrap();
    let direct = format!("https://localhost:{}{web}", c.api.port);
    let r = send(
        &stale,
        "PATCH",
        &direct,
        &[smp, ("authorization", &bearer(KUBE_BROKER_TOKEN))],
        m["body"].as_str().unwrap().as_bytes(),
    )
    .await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (409, Some("Conflict"))
    );
    let r = send(
        &stale,
        "GET",
        &direct,
        &[("authorization", &bearer(AGENT_TOKEN))],
        b"",
    )
    .await;
    assert_eq!(
        r.status, 401,
        "the apiserver accepts only the broker's token"
    );
}

/// deploy/kubernetes renders with kustomize (kubectl's), every object passes the Kubernetes
/// schemas strictly (PyPI `kubernetes-validate`), and the broker config it ships loads.
#[test]
fn deploy_manifests_validate_against_the_kubernetes_schemas() {
    let dir = repo().join("deploy/kubernetes");
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl on PATH");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).unwrap();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "NetworkPolicy",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        assert!(
            rendered.contains(&format!("\nkind: {kind}\n"))
                || rendered.starts_with(&format!("kind: {kind}\n")),
            "no {kind}"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    let v = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate (pip install -r tests/requirements.txt)");
    assert!(
        v.status.success(),
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    // The security properties the Deployment promises, checked in the rendered text.
    for needle in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "- ALL",
        "port: admin",
        "allowPrivilegeEscalation: false",
    ] {
        assert!(rendered.contains(needle), "Deployment lacks {needle}");
    }
    // Impersonation limited by resourceNames to the identities seb.toml uses.
    let toml = std::fs::read_to_string(dir.join("seb.toml")).unwrap();
    let config =
        seb::config::Config::parse(&toml).unwrap_or_else(|(f, m)| panic!("seb.toml: {f}: {m}"));
    // Replicas: more than one, sharing state through etcd with the Secret's client
    // certificate, each naming itself in its records.
    assert!(
        rendered.contains("replicas: 2"),
        "Deployment is not replicated"
    );
    assert_eq!(config.state.backend, seb::state::config::Backend::Etcd);
    let etcd = config.state.etcd.as_ref().unwrap();
    assert!(etcd.cert.as_ref().unwrap().starts_with("/etc/seb/etcd/"));
    for needle in [
        "secretName: seb-etcd",
        "mountPath: /etc/seb/etcd",
        "name: SEB_BROKER_ID",
        "port: 2379",
    ] {
        assert!(rendered.contains(needle), "manifests lack {needle}");
    }
    let seb::config::TargetKindConfig::Kubernetes(k) = &config.targets[0].kind else {
        panic!("seb.toml: not a kubernetes target");
    };
    for name in [&k.execution.user, &k.read.user]
        .into_iter()
        .chain(&k.execution.groups)
        .chain(&k.read.groups)
    {
        assert!(
            rendered.contains(&format!("\"{name}\"")),
            "RBAC does not name {name}"
        );
    }
}

/// TokenRequest mode: the admitted change runs with a 10-minute token of the configured
/// service account, minted once per certificate, and without impersonation.
#[test]
fn token_request_mode_runs_changes_as_a_short_lived_service_account_token() {
    let c = cluster_with("");
    create_web(&c);
    drop(c.broker);
    let mut cfg = c.env.kube_config(c.api.port);
    cfg.text.push_str("token_request = { namespace = \"shop\", service_account = \"deployer\", audience = \"https://kubernetes.default.svc\" }\n");
    let broker = Broker::start(&c.env, &cfg);
    let kc = kubeconfig(&c.env, &broker, AGENT_TOKEN, "tr.kubeconfig");

    let scale = json!({"verb": "patch", "group": "apps", "resource": "deployments", "subresource": "scale", "namespace": "shop", "name": "web", "effect": true});
    let cert = c
        .env
        .kube_cert(scale, deny(json!({"/spec/replicas": {"max": 5}})), |p| {
            p["seb"]["max_uses"] = json!(2)
        });
    for replicas in ["--replicas=3", "--replicas=4"] {
        let (code, out, err) = kubectl(&kc, Some(&cert), &["scale", "deploy", "web", replicas]);
        assert_eq!(code, 0, "{out}{err}");
        let m = last_mutation(&c.api);
        assert_eq!(m["method"], "PATCH");
        assert_eq!(m["auth"], "system:serviceaccount:shop:deployer", "{m}");
        assert_eq!(m["impersonate"], json!({}), "{m}");
    }
    let minted: Vec<Value> = c
        .api
        .mutations()
        .into_iter()
        .filter(|m| {
            m["path"]
                .as_str()
                .unwrap()
                .ends_with("/serviceaccounts/deployer/token")
        })
        .collect();
    assert_eq!(minted.len(), 1, "one token per certificate");
    let req: Value = serde_json::from_str(minted[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        req["spec"],
        json!({"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 600})
    );
    assert_eq!(minted[0]["auth"], "broker");
    // Reads still run impersonated as the read identity, with the broker's token.
    let (code, _, err) = kubectl(&kc, None, &["get", "deploy", "web"]);
    assert_eq!(code, 0, "{err}");
    let read = c
        .api
        .requests()
        .into_iter()
        .rev()
        .find(|r| r["method"] == "GET" && r["path"].as_str().unwrap().contains("deployments/web"))
        .unwrap();
    assert_eq!(
        (
            read["auth"].as_str(),
            read["impersonate"]["impersonate-user"].clone()
        ),
        (Some("broker"), json!(["seb:read:shop"]))
    );
}

/// Not a test: the latency a certified, effect-checked patch adds over the same patch sent
/// straight to the apiserver. Run with
/// `cargo test --test kube_e2e bench_ -- --ignored --nocapture`; it prints p50/p99 and
/// asserts nothing about time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_certified_patch_latency() {
    const N: usize = 300;
    // SEB_BENCH_DURABILITY=flush separates the audit fsync from the rest of the cost.
    let durability = std::env::var("SEB_BENCH_DURABILITY").unwrap_or_else(|_| "fsync".into());
    let env = Env::new();
    let api = KubeApiserver::start(&env);
    let mut cfg = env.kube_config(api.port);
    cfg.text = cfg.text.replace(
        "signing_key = \"broker.key\"",
        &format!("signing_key = \"broker.key\"\ndurability = \"{durability}\""),
    );
    let broker = Broker::start(&env, &cfg);
    let kc = kubeconfig(&env, &broker, AGENT_TOKEN, "agent.kubeconfig");
    let c = Cluster {
        env,
        api,
        broker,
        kc,
    };
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"bench","namespace":"shop"},"data":{"x":"1"}}"#;
    let file = write(&c.env, "bench.json", cm);
    let cert = c.env.kube_cert(
        req("create", "configmaps", "", None),
        json!({"constraints": {"/metadata/name": {"eq": "bench"}}, "others": "allow"}),
        |_| {},
    );
    let (code, out, err) = kubectl(
        &c.kc,
        Some(&cert),
        &["create", "--validate=false", "-f", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    let http = client(&c.env, false);
    let path = "/api/v1/namespaces/shop/configmaps/bench";
    let rule = deny(json!({"/data/n": {"present": true}}));
    // SEB_BENCH_EFFECT=0: body constraints only, no live GET.
    let with_effect = std::env::var("SEB_BENCH_EFFECT")
        .map(|v| v != "0")
        .unwrap_or(true);
    let certs: Vec<String> = (0..N)
        .map(|_| {
            let r = req("patch", "configmaps", "", Some("bench"));
            c.env.kube_cert(
                if with_effect { effect(r) } else { r },
                rule.clone(),
                |_| {},
            )
        })
        .collect();
    let ct = ("content-type", "application/merge-patch+json");
    let run = |via_broker: bool| {
        let http = http.clone();
        let certs = certs.clone();
        let (port, api) = (c.broker.listen, c.api.port);
        async move {
            let mut times = Vec::with_capacity(N);
            for (i, cert) in certs.iter().enumerate() {
                let body = format!(r#"{{"data":{{"n":"{i}"}}}}"#);
                let (url, auth) = if via_broker {
                    (
                        format!("https://localhost:{port}{path}"),
                        format!("Bearer {cert}"),
                    )
                } else {
                    (
                        format!("https://localhost:{api}{path}"),
                        format!("Bearer {KUBE_BROKER_TOKEN}"),
                    )
                };
                let t = std::time::Instant::now();
                let r = send(
                    &http,
                    "PATCH",
                    &url,
                    &[ct, ("authorization", &auth)],
                    body.as_bytes(),
                )
                .await;
                times.push(t.elapsed());
                assert_eq!(r.status, 200, "{}", r.body);
            }
            times.sort();
            times
        }
    };
    let direct = run(false).await;
    let brokered = run(true).await;
    // Where the time goes: the broker's per-phase sums (admit includes the live GET).
    let metrics = http
        .get(c.broker.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("seb_phase_duration_seconds_sum"))
    {
        println!("  {l}");
    }
    // Reads through the broker (no certificate, no audit wait, no live GET) for comparison.
    let mut reads = Vec::with_capacity(N);
    for _ in 0..N {
        let t = std::time::Instant::now();
        let r = send(
            &http,
            "GET",
            &format!("https://localhost:{}{path}", c.broker.listen),
            &[("authorization", &format!("Bearer {AGENT_TOKEN}"))],
            b"",
        )
        .await;
        reads.push(t.elapsed());
        assert_eq!(r.status, 200);
    }
    reads.sort();
    let pct = |t: &[std::time::Duration], p: f64| {
        t[((t.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0
    };
    println!("certified merge patch, {N} sequential requests, effect matching {with_effect} (live GET), audit durability {durability}:");
    println!(
        "  direct to test apiserver: p50 {:.2} ms  p99 {:.2} ms",
        pct(&direct, 0.5),
        pct(&direct, 0.99)
    );
    println!(
        "  through seb:              p50 {:.2} ms  p99 {:.2} ms",
        pct(&brokered, 0.5),
        pct(&brokered, 0.99)
    );
    println!(
        "  a read through seb:       p50 {:.2} ms  p99 {:.2} ms",
        pct(&reads, 0.5),
        pct(&reads, 0.99)
    );
    println!(
        "  added:                    p50 {:.2} ms  p99 {:.2} ms",
        pct(&brokered, 0.5) - pct(&direct, 0.5),
        pct(&brokered, 0.99) - pct(&direct, 0.99)
    );
}

/// kubectl exec: a mutation; the certificate names the pod, the container and the command,
/// checked from the query string before the upgrade; then the websocket is proxied both ways.
#[test]
fn kubectl_exec_runs_only_the_certified_command() {
    let c = cluster();
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-1","namespace":"shop"},"spec":{"containers":[{"name":"app","image":"reg.local/app:1"}]}}"#;
    let file = write(&c.env, "pod.json", pod);
    let cert = c.env.kube_cert(
        req("create", "pods", "", None),
        json!({"constraints": {"/metadata/name": {"eq": "web-1"}}, "others": "allow"}),
        |_| {},
    );
    let (code, out, err) = kubectl(
        &c.kc,
        Some(&cert),
        &["create", "--validate=false", "-f", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");

    let exec_req = |command: &[&str]| {
        json!({"verb": "create", "group": "", "resource": "pods", "subresource": "exec", "namespace": "shop",
               "name": "web-1", "container": "app", "command": command})
    };
    let n = count_mutations(&c.api);
    assert_refused(
        "exec without certificate",
        kubectl(
            &c.kc,
            None,
            &["exec", "web-1", "-c", "app", "--", "echo", "hi"],
        ),
        "cert_missing",
        &c.api,
        n,
    );
    let other = c
        .env
        .kube_cert(exec_req(&["cat", "/etc/shadow"]), Value::Null, |_| {});
    assert_refused(
        "exec of another command",
        kubectl(
            &c.kc,
            Some(&other),
            &["exec", "web-1", "-c", "app", "--", "echo", "hi"],
        ),
        "contract_mismatch",
        &c.api,
        n,
    );
    let cert = c
        .env
        .kube_cert(exec_req(&["echo", "hi"]), Value::Null, |_| {});
    assert_refused(
        "exec with stdin under a non-interactive certificate",
        kubectl(
            &c.kc,
            Some(&cert),
            &["exec", "-i", "web-1", "-c", "app", "--", "echo", "hi"],
        ),
        "contract_mismatch",
        &c.api,
        n,
    );
    let cert = c
        .env
        .kube_cert(exec_req(&["echo", "hi"]), Value::Null, |_| {});
    let (code, out, err) = kubectl(
        &c.kc,
        Some(&cert),
        &["exec", "web-1", "-c", "app", "--", "echo", "hi"],
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "exec in web-1/app: echo hi\n"),
        "{err}"
    );
    let m = last_mutation(&c.api);
    assert!(
        m["path"].as_str().unwrap().contains("/pods/web-1/exec?"),
        "{m}"
    );
    assert_impersonated(&m, &cert);
}

/// Issue 14, all targets, for kubernetes: folded impersonation and front-proxy identity
/// headers, `Connection` tokens, override headers, charsets and bodies on reads are refused
/// before the apiserver sees anything, and the certificate is not spent by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_seams_are_refused_for_kubernetes_clients() {
    let c = cluster();
    create_web(&c);
    let web = "/apis/apps/v1/namespaces/shop/deployments/web";
    let cert = c.env.kube_cert(
        effect(req("patch", "deployments", "apps", Some("web"))),
        deny(json!({"/spec/template/spec/containers/0/image": {"eq": "reg.local/app:2"}})),
        |_| {},
    );
    let body = r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"reg.local/app:2"}]}}}}"#;
    let smp = "application/strategic-merge-patch+json";
    let n = count_mutations(&c.api);
    let raw = |method: &str, path: &str, token: &str, ct: &str, extra: &str, body: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    for (what, ct, extra, status, code) in [
        (
            "folded Impersonate-User",
            smp,
            "Impersonate_User: system:admin\r\n",
            400,
            "request_malformed",
        ),
        (
            "folded Impersonate-Group",
            smp,
            "impersonate-group: x\r\nImpersonate_Group: system:masters\r\n",
            400,
            "request_malformed",
        ),
        (
            "Impersonate-User",
            smp,
            "Impersonate-User: system:admin\r\n",
            403,
            "contract_mismatch",
        ),
        (
            "folded X-Remote-User",
            smp,
            "X_Remote_User: system:admin\r\n",
            400,
            "request_malformed",
        ),
        (
            "Connection naming Content-Type",
            smp,
            "Connection: Content-Type\r\n",
            400,
            "request_malformed",
        ),
        (
            "Connection naming a custom header",
            smp,
            "X-Trace: 1\r\nConnection: X-Trace\r\n",
            400,
            "request_malformed",
        ),
        (
            "X-Original-URL",
            smp,
            "X-Original-URL: /api/v1/namespaces/shop/secrets/db\r\n",
            400,
            "request_malformed",
        ),
        (
            "X-HTTP-Method-Override",
            smp,
            "X-HTTP-Method-Override: DELETE\r\n",
            400,
            "request_malformed",
        ),
        (
            "charset utf-16",
            "application/strategic-merge-patch+json; charset=utf-16",
            "",
            415,
            "request_malformed",
        ),
        (
            "unknown media type parameter",
            "application/strategic-merge-patch+json; v=2",
            "",
            415,
            "request_malformed",
        ),
    ] {
        let r = send_raw(
            &c.env,
            c.broker.listen,
            &raw("PATCH", web, &cert, ct, extra, body),
        )
        .await;
        let message = r.body["message"].as_str().unwrap_or("");
        assert_eq!(r.status, status, "{what}: {message}");
        assert!(
            message.starts_with(&format!("seb: {code}: ")),
            "{what}: {message}"
        );
    }
    // A read with a body, and a read with an override.
    for (what, extra, body) in [
        ("GET with a body", "", "{}"),
        (
            "GET with X-Original-URL",
            "X-Original-URL: /api/v1/namespaces/shop/secrets/db\r\n",
            "",
        ),
    ] {
        let r = send_raw(
            &c.env,
            c.broker.listen,
            &raw("GET", web, AGENT_TOKEN, "application/json", extra, body),
        )
        .await;
        let message = r.body["message"].as_str().unwrap_or("");
        assert_eq!(r.status, 400, "{what}: {message}");
        assert!(
            message.starts_with("seb: request_malformed: "),
            "{what}: {message}"
        );
    }
    // A head hyper's parser would refuse comes back as a Status kubectl prints, not a bare 400.
    let bad = format!(
        "PATCH {web} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {cert}\r\nContent-Type: {smp}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    let answers = exchange_raw(&c.env, c.broker.listen, bad.into_bytes()).await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    let status: serde_json::Value = serde_json::from_str(&answers[0].1).unwrap();
    assert_eq!(
        (answers[0].0, &status["kind"], &status["code"]),
        (400, &json!("Status"), &json!(400))
    );
    assert!(status["message"]
        .as_str()
        .unwrap()
        .starts_with("seb: request_malformed: more than one Transfer-Encoding"));
    assert_eq!(count_mutations(&c.api), n);
    // Nothing was spent: the same certificate is admitted once, without the extra headers.
    let r = send_raw(
        &c.env,
        c.broker.listen,
        &raw("PATCH", web, &cert, smp, "", body),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(count_mutations(&c.api), n + 1);
    let m = last_mutation(&c.api);
    assert_impersonated(&m, &cert);
}

/// Issue 14, Kubernetes target: requests whose effect at the apiserver would differ from what
/// seb checked are refused before anything reaches the apiserver, through the real path (raw
/// bytes where a client library would normalise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_effect_gaps_are_refused_before_the_apiserver() {
    let c = cluster();
    create_web(&c);
    let http = client(&c.env, false);
    let url = |p: &str| format!("https://localhost:{}{p}", c.broker.listen);
    let web = "/apis/apps/v1/namespaces/shop/deployments/web";
    let bearer = |t: &str| format!("Bearer {t}");
    let image_rule =
        deny(json!({"/spec/template/spec/containers/0/image": {"eq": "reg.local/app:2"}}));
    let patch_cert = || {
        c.env.kube_cert(
            effect(req("patch", "deployments", "apps", Some("web"))),
            image_rule.clone(),
            |_| {},
        )
    };
    let rv = live(&c, web)["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut put_body = live(&c, web);
    put_body["spec"]["template"]["spec"]["containers"][0]["image"] = json!("reg.local/app:2");
    put_body["metadata"]["resourceVersion"] = json!("");
    let mut apply_body: Value = serde_json::from_str(DEPLOYMENT).unwrap();
    apply_body["spec"]["template"]["spec"]["containers"][0]["image"] = json!("reg.local/app:2");
    apply_body["metadata"]["resourceVersion"] = Value::Null;
    let bomb: Vec<Value> = (0..40)
        .map(|i| json!({"op": "copy", "from": "/spec", "path": format!("/spec/x{i}")}))
        .collect();
    let n = count_mutations(&c.api);

    // (name, method, path, content type, certificate, body, status, code, message part)
    type Case = (
        &'static str,
        &'static str,
        String,
        &'static str,
        String,
        String,
        u16,
        &'static str,
        &'static str,
    );
    let smp = "application/strategic-merge-patch+json";
    let image2 = r#"{"name":"app","image":"reg.local/app:2"}"#;
    let cases: Vec<Case> = vec![
        (
            "$deleteFromPrimitiveList on containers (the apiserver merges the element)",
            "PATCH", web.into(), smp, patch_cert(),
            format!(r#"{{"spec":{{"template":{{"spec":{{"containers":[{image2}],"$deleteFromPrimitiveList/containers":[{{"name":"app","securityContext":{{"privileged":true}}}}]}}}}}}}}"#),
            403, "contract_mismatch", "$deleteFromPrimitiveList",
        ),
        (
            "$patch: delete in a container the live object lacks (the apiserver appends it)",
            "PATCH", web.into(), smp, patch_cert(),
            format!(r#"{{"spec":{{"template":{{"spec":{{"containers":[{image2},{{"name":"evil","$patch":"delete"}}]}}}}}}}}"#),
            403, "contract_mismatch", "$patch",
        ),
        (
            "a directive inside a new env element",
            "PATCH", web.into(), smp, patch_cert(),
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"reg.local/app:2","env":[{"name":"X","value":"1","$retainKeys":["name"]}]}]}}}}"#.into(),
            403, "contract_mismatch", "$retainKeys",
        ),
        (
            "$patch: merge, which seb does not model",
            "PATCH", web.into(), smp, patch_cert(),
            format!(r#"{{"metadata":{{"labels":{{"$patch":"merge"}}}},"spec":{{"template":{{"spec":{{"containers":[{image2}]}}}}}}}}"#),
            403, "contract_mismatch", "$patch: merge",
        ),
        (
            "metadata.managedFields rewritten alongside the certified change",
            "PATCH", web.into(), smp, patch_cert(),
            format!(r#"{{"metadata":{{"managedFields":[{{"manager":"evil","operation":"Apply","apiVersion":"apps/v1","fieldsType":"FieldsV1","fieldsV1":{{}}}}]}},"spec":{{"template":{{"spec":{{"containers":[{image2}]}}}}}}}}"#),
            403, "contract_mismatch", "managedFields",
        ),
        (
            "resourceVersion null in a merge patch (an unconditional write)",
            "PATCH", web.into(), "application/merge-patch+json", patch_cert(),
            format!(r#"{{"metadata":{{"resourceVersion":null}},"spec":{{"template":{{"spec":{{"containers":[{image2},{{"name":"side","image":"reg.local/side:1"}}]}}}}}}}}"#),
            400, "request_malformed", "resourceVersion",
        ),
        (
            "resourceVersion \"\" in a strategic merge patch",
            "PATCH", web.into(), smp, patch_cert(),
            format!(r#"{{"metadata":{{"resourceVersion":""}},"spec":{{"template":{{"spec":{{"containers":[{image2}]}}}}}}}}"#),
            400, "request_malformed", "resourceVersion",
        ),
        (
            "a stale resourceVersion in a strategic merge patch",
            "PATCH", web.into(), smp, patch_cert(),
            format!(r#"{{"metadata":{{"resourceVersion":"1"}},"spec":{{"template":{{"spec":{{"containers":[{image2}]}}}}}}}}"#),
            409, "drift", "resourceVersion",
        ),
        (
            "resourceVersion null in a server-side apply",
            "PATCH", format!("{web}?fieldManager=agent"), "application/apply-patch+yaml", patch_cert(),
            apply_body.to_string(),
            400, "request_malformed", "resourceVersion",
        ),
        (
            "server-side apply adding a container, where structured-merge-diff's placement is not modeled",
            "PATCH", format!("{web}?fieldManager=agent"), "application/apply-patch+yaml",
            c.env.kube_cert(
                effect(req("patch", "deployments", "apps", Some("web"))),
                json!({"constraints": {"/spec/template/spec/containers/*/image": {"prefix": "reg.local/"}}, "others": "allow"}),
                |_| {},
            ),
            DEPLOYMENT.replace(r#"{"name":"side","image":"reg.local/side:1"}"#, r#"{"name":"extra","image":"reg.local/x:1"},{"name":"side","image":"reg.local/side:1"}"#),
            403, "contract_mismatch", "adds an element",
        ),
        (
            "resourceVersion \"\" in a PUT",
            "PUT", web.into(), "application/json",
            c.env.kube_cert(effect(req("update", "deployments", "apps", Some("web"))), image_rule.clone(), |_| {}),
            put_body.to_string(),
            400, "request_malformed", "resourceVersion",
        ),
        (
            "preconditions.resourceVersion null in DeleteOptions",
            "DELETE", web.into(), "application/json",
            c.env.kube_cert(
                req("delete", "deployments", "apps", Some("web")),
                json!({"constraints": {"/kind": {"eq": "DeleteOptions"}}, "others": "allow"}),
                |p| p["seb"]["precondition"] = json!({"fields": {"/metadata/name": "web"}}),
            ),
            r#"{"kind":"DeleteOptions","apiVersion":"v1","preconditions":{"resourceVersion":null}}"#.into(),
            400, "request_malformed", "preconditions.resourceVersion",
        ),
        (
            "a JSON patch copying spec into itself, doubling it 40 times",
            "PATCH", web.into(), "application/json-patch+json", patch_cert(),
            Value::Array(bomb).to_string(),
            403, "contract_mismatch", "larger than",
        ),
        (
            "a create whose name would redirect seb's own live read",
            "POST", "/apis/apps/v1/namespaces/shop/deployments".into(), "application/json",
            c.env.kube_cert(effect(req("create", "deployments", "apps", None)), json!({"constraints": {"/metadata/name": {"prefix": ""}}, "others": "allow"}), |_| {}),
            DEPLOYMENT.replace(r#""name":"web""#, r#""name":"x?watch=true""#),
            400, "request_malformed", "DNS subdomain",
        ),
        (
            "a create named with dot segments",
            "POST", "/apis/apps/v1/namespaces/shop/deployments".into(), "application/json",
            c.env.kube_cert(effect(req("create", "deployments", "apps", None)), json!({"constraints": {"/metadata/name": {"prefix": ""}}, "others": "allow"}), |_| {}),
            DEPLOYMENT.replace(r#""name":"web""#, r#""name":"../../../../api/v1/namespaces/shop/secrets/db""#),
            400, "request_malformed", "DNS subdomain",
        ),
        (
            "DELETE on a /watch/ path is not a read",
            "DELETE", "/apis/apps/v1/watch/namespaces/shop/deployments/web".into(), "application/json",
            AGENT_TOKEN.into(), String::new(),
            400, "request_malformed", "only GET is a watch",
        ),
        (
            "PUT on a /watch/ path is not a read",
            "PUT", "/api/v1/watch/namespaces/shop/configmaps/cm".into(), "application/json",
            AGENT_TOKEN.into(), r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cm"},"data":{"a":"b"}}"#.into(),
            400, "request_malformed", "only GET is a watch",
        ),
        (
            "a JSON apply body with a duplicate key is told about the key",
            "PATCH", format!("{web}?fieldManager=agent"), "application/apply-patch+yaml", patch_cert(),
            r#"{"apiVersion":"apps/v1","apiVersion":"v1"}"#.into(),
            400, "request_malformed", "duplicate",
        ),
    ];
    for (name, method, path, ct, token, body, status, code, part) in &cases {
        let r = send(
            &http,
            method,
            &url(path),
            &[("content-type", ct), ("authorization", &bearer(token))],
            body.as_bytes(),
        )
        .await;
        let msg = r.body["message"].as_str().unwrap_or("").to_string();
        assert_eq!(r.status, *status, "{name}: {}", r.body);
        assert!(msg.starts_with(&format!("seb: {code}: ")), "{name}: {msg}");
        assert!(msg.contains(part), "{name}: {msg}");
        assert!(
            !msg.contains("server-side")
                || *code != "request_malformed"
                || !name.contains("duplicate"),
            "{name}: {msg}"
        );
        assert_eq!(count_mutations(&c.api), n, "{name}: reached the apiserver");
    }
    assert!(
        !c.api.requests().iter().any(|q| {
            let p = q["path"].as_str().unwrap_or("");
            p.contains("secrets") || p.contains("watch=true") || p.contains("/watch/")
        }),
        "a name or a /watch/ path reached the apiserver"
    );

    // exec and port-forward, as raw bytes: booleans the apiserver would read as true, or
    // read once where seb reads twice, and a ports restriction seb cannot hold.
    let exec_cert = || {
        c.env.kube_cert(
            json!({"verb": "create", "group": "", "resource": "pods", "subresource": "exec", "namespace": "shop",
                   "name": "web-1", "container": "app", "command": ["echo", "hi"]}),
            Value::Null,
            |_| {},
        )
    };
    let raw = |path: &str, token: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade, close\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n\r\n")
    };
    let exec = "/api/v1/namespaces/shop/pods/web-1/exec?command=echo&command=hi&container=app";
    for (q, status, part) in [
        ("&stdin=", 400, "stdin"),
        ("&stdin", 400, "stdin"),
        ("&tty=yes", 400, "tty"),
        ("&stdin=TRUE", 400, "stdin"),
        ("&stdin=false&stdin=true", 400, "more than once"),
        ("&stdout=true&stdout=0", 400, "more than once"),
        ("&command=x;y", 400, "';'"),
        ("&stdin=1", 403, "interactive"),
    ] {
        let r = send_raw(
            &c.env,
            c.broker.listen,
            &raw(&format!("{exec}{q}"), &exec_cert()),
        )
        .await;
        assert_eq!(r.status, status, "{q}: {}", r.body);
        let msg = r.body["message"].as_str().unwrap_or("");
        assert!(msg.contains(part), "{q}: {msg}");
    }
    let r = send_raw(
        &c.env,
        c.broker.listen,
        &raw(
            "/api/v1/namespaces/shop/pods/web-1/exec?command=ls&container=app",
            &exec_cert(),
        ),
    )
    .await;
    let msg = r.body["message"].as_str().unwrap_or("");
    assert_eq!(r.status, 403, "{msg}");
    assert!(
        msg.contains(r#"["echo","hi"]"#) && !msg.contains("Some("),
        "{msg}"
    );
    let pf_cert = c.env.kube_cert(
        json!({"verb": "create", "group": "", "resource": "pods", "subresource": "portforward",
               "namespace": "shop", "name": "web-1", "ports": []}),
        Value::Null,
        |_| {},
    );
    let r = send_raw(
        &c.env,
        c.broker.listen,
        &raw("/api/v1/namespaces/shop/pods/web-1/portforward", &pf_cert),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .starts_with("seb: cert_malformed: seb.request.ports"),
        "{}",
        r.body
    );
    assert_eq!(
        count_mutations(&c.api),
        n,
        "a refused stream reached the apiserver"
    );

    // A JSON patch that sets resourceVersion itself still carries the checked one last.
    let ops = json!([
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "reg.local/app:2"},
        {"op": "replace", "path": "/metadata/resourceVersion", "value": ""}
    ]);
    let r = send(
        &http,
        "PATCH",
        &url(web),
        &[
            ("content-type", "application/json-patch+json"),
            ("authorization", &bearer(&patch_cert())),
        ],
        ops.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let sent: Value =
        serde_json::from_str(last_mutation(&c.api)["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent.as_array().unwrap().last().unwrap(),
        &json!({"op": "replace", "path": "/metadata/resourceVersion", "value": rv})
    );

    // dryRun=All is forwarded and spends the use: the apiserver runs admission on it, and
    // seb cannot know what a webhook with side effects does with a dry run.
    let once = c.env.kube_cert(
        effect(req("patch", "deployments", "apps", Some("web"))),
        deny(json!({"/spec/replicas": {"max": 5}})),
        |_| {},
    );
    let scale = br#"{"spec":{"replicas":3}}"#;
    let r = send(
        &http,
        "PATCH",
        &url(&format!("{web}?dryRun=All")),
        &[("content-type", smp), ("authorization", &bearer(&once))],
        scale,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        live(&c, web)["spec"]["replicas"],
        2,
        "a dry run changed nothing"
    );
    let r = send(
        &http,
        "PATCH",
        &url(web),
        &[("content-type", smp), ("authorization", &bearer(&once))],
        scale,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .starts_with("seb: replayed:"),
        "{}",
        r.body
    );

    // A use that ended in the apiserver's 409: the retry (as kubectl makes) is told why.
    let update = c.env.kube_cert(
        req("update", "deployments", "apps", Some("web")),
        json!({"constraints": {"/metadata/name": {"eq": "web"}}, "others": "allow"}),
        |_| {},
    );
    let mut stale = live(&c, web);
    stale["metadata"]["resourceVersion"] = json!("1");
    let put = |token: String, body: String| {
        let http = &http;
        let target = url(web);
        async move {
            send(
                http,
                "PUT",
                &target,
                &[
                    ("content-type", "application/json"),
                    ("authorization", &bearer(&token)),
                ],
                body.as_bytes(),
            )
            .await
        }
    };
    let r = put(update.clone(), stale.to_string()).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = put(update, stale.to_string()).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let msg = r.body["message"].as_str().unwrap();
    assert!(
        msg.starts_with("seb: replayed:") && msg.contains("409 Conflict"),
        "{msg}"
    );
}

/// seb's strategic merge against the test apiserver's (tests/kube/apiserver.py, written from
/// apimachinery's strategicpatch): on random deployments and patches built from the constructs
/// agents use, whenever seb computes an effect, the apiserver computes the same object (after
/// its decoder drops nulls and unknown members). Refusals are not compared: refusing is always
/// safe. Bounded: one batch of cases, one Python process.
#[test]
fn strategic_merge_agrees_with_the_test_apiserver() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let name = || prop::sample::select(vec!["app", "side", "new", "x"]);
    let env = prop::collection::vec(
        (
            prop::sample::select(vec!["A", "B", "C"]),
            prop::option::of(prop::sample::select(vec!["1", "2"])),
        ),
        0..3,
    )
    .prop_map(|e| {
        Value::Array(
            e.into_iter()
                .map(|(n, v)| match v {
                    Some(v) => json!({"name": n, "value": v}),
                    None => json!({"name": n, "value": null}),
                })
                .collect(),
        )
    });
    let container = (
        name(),
        prop::option::of(prop::sample::select(vec!["img:1", "img:2"])),
        prop::option::of(env.clone()),
        prop::option::of(prop::sample::select(vec!["delete", "replace", "merge"])),
        any::<bool>(),
    )
        .prop_map(|(n, image, env, directive, retain)| {
            let mut c = json!({"name": n});
            if let Some(i) = image {
                c["image"] = json!(i);
            }
            if let Some(e) = env {
                c["env"] = e;
            }
            if let Some(d) = directive {
                c["$patch"] = json!(d);
            }
            if retain {
                c["$retainKeys"] = json!(["name", "image", "env"]);
            }
            c
        });
    let finalizers = prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 0..3);
    let live = (
        prop::collection::vec((name(), env.clone()), 0..4),
        finalizers.clone(),
    )
        .prop_map(|(cs, f)| {
            let mut seen = Vec::new();
            let cs: Vec<Value> = cs
                .into_iter()
                .filter(|(n, _)| {
                    let fresh = !seen.contains(n);
                    seen.push(*n);
                    fresh
                })
                .map(|(n, e)| json!({"name": n, "image": "img:1", "env": without_nulls(e)}))
                .collect();
            json!({"metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": f},
                   "spec": {"replicas": 1, "template": {"spec": {"containers": cs}}}})
        });
    let patch = (
        prop::option::of(prop::collection::vec(container, 0..4)),
        prop::option::of(prop::collection::vec(name(), 0..4)),
        prop::option::of(finalizers.clone()),
        prop::option::of(finalizers),
        prop::option::of(prop::sample::select(vec!["replace", "delete", "merge"])),
        any::<bool>(),
    )
        .prop_map(|(cs, order, fin, del, spec_directive, null_label)| {
            let mut pod = json!({});
            if let Some(cs) = cs {
                pod["containers"] = Value::Array(cs);
            }
            if let Some(o) = order {
                pod["$setElementOrder/containers"] =
                    Value::Array(o.into_iter().map(|n| json!({"name": n})).collect());
            }
            let mut meta = json!({});
            if let Some(f) = fin {
                meta["finalizers"] = json!(f);
            }
            if let Some(d) = del {
                meta["$deleteFromPrimitiveList/finalizers"] = json!(d);
            }
            if null_label {
                meta["labels"] = json!({"app": null, "tier": "web"});
            }
            let mut spec = json!({"template": {"spec": pod}});
            if let Some(d) = spec_directive {
                spec["template"]["$patch"] = json!(d);
            }
            json!({"metadata": meta, "spec": spec})
        });

    let mut runner = TestRunner::deterministic();
    let cases: Vec<(Value, Value)> = (0..600)
        .map(|_| {
            (
                live.new_tree(&mut runner).unwrap().current(),
                patch.new_tree(&mut runner).unwrap().current(),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.jsonl");
    let lines: Vec<String> = cases
        .iter()
        .map(|(l, p)| json!({"live": l, "patch": p}).to_string())
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = Command::new("python3")
        .arg(repo().join("tests/kube/apiserver.py"))
        .arg("--smp-oracle")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), cases.len());
    let mut computed = 0;
    for ((l, p), want) in cases.iter().zip(&answers) {
        let Ok(got) = seb::targets::kubernetes::patch::strategic_merge(l, p) else {
            continue;
        };
        computed += 1;
        assert_eq!(
            Some(&got),
            want.get("ok"),
            "seb and the apiserver disagree\nlive: {l}\npatch: {p}\napiserver: {want}"
        );
    }
    // The generator must reach the computed paths, or this test shows nothing.
    assert!(computed > 100, "only {computed} cases computed");
}

/// A live object never holds null members: the apiserver's decoder drops them.
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, c)| !c.is_null())
                .map(|(k, c)| (k, without_nulls(c)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

/// JSON patch and merge patch against the test apiserver's appliers, as for strategic merge:
/// wherever seb computes an object, the apiserver computes the same one.
#[test]
fn json_and_merge_patch_agree_with_the_test_apiserver() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use seb::targets::kubernetes::patch;

    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (0i64..3).prop_map(Value::from),
        prop::sample::select(vec!["a", "b"]).prop_map(Value::from),
    ];
    let doc = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c"]), inner, 0..3)
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
        ]
    });
    let pointer = prop::sample::select(vec![
        "", "/a", "/b", "/c", "/a/0", "/a/1", "/a/-", "/a/2", "/b/a", "/b/c/-", "/b/c/0", "/c/0",
    ]);
    let op = (
        prop::sample::select(vec!["add", "remove", "replace", "move", "copy", "test"]),
        pointer.clone(),
        pointer,
        doc.clone(),
    )
        .prop_map(
            |(op, path, from, value)| json!({"op": op, "path": path, "from": from, "value": value}),
        );
    // Documents with the shape the pointers name, so that most patches apply.
    let shaped = (doc.clone(), doc.clone(), doc.clone(), doc.clone())
        .prop_map(|(x, y, z, w)| json!({"a": [x, y], "b": {"a": z, "c": []}, "c": w}));
    let json_case = (shaped, prop::collection::vec(op, 1..4));
    let merge_case = (doc.clone(), doc);

    let mut runner = TestRunner::deterministic();
    let mut cases: Vec<(&str, Value, Value)> = Vec::new();
    for _ in 0..400 {
        let (live, ops) = json_case.new_tree(&mut runner).unwrap().current();
        cases.push(("json", live, Value::Array(ops)));
        let (live, p) = merge_case.new_tree(&mut runner).unwrap().current();
        cases.push(("merge", live, p));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.jsonl");
    let lines: Vec<String> = cases
        .iter()
        .map(|(k, l, p)| json!({"kind": k, "live": l, "patch": p}).to_string())
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = Command::new("python3")
        .arg(repo().join("tests/kube/apiserver.py"))
        .arg("--smp-oracle")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), cases.len());
    let mut computed = (0, 0);
    for ((kind, l, p), want) in cases.iter().zip(&answers) {
        let got = match *kind {
            "json" => match patch::json_patch(l, p) {
                Ok(v) => {
                    computed.0 += 1;
                    v
                }
                Err(_) => continue,
            },
            _ => {
                computed.1 += 1;
                patch::merge_patch(l, p)
            }
        };
        assert_eq!(
            Some(&got),
            want.get("ok"),
            "{kind} patch: seb and the apiserver disagree\nlive: {l}\npatch: {p}\napiserver: {want}"
        );
    }
    assert!(computed.0 > 50 && computed.1 > 300, "{computed:?}");
}

// --- issue 14, part B: the certificate's audience ---

/// One signer, two clusters: a certificate made for target `staging` is refused by target
/// `cluster` (this broker's), for the mutation and for the reads kubectl makes with it; so is
/// one naming no target, unless the target sets `require_audience = false`.
#[test]
fn a_kubernetes_certificate_for_staging_is_refused_by_prod() {
    let c = cluster();
    create_web(&c);
    let n = count_mutations(&c.api);
    let scale_req = json!({"verb": "patch", "group": "apps", "resource": "deployments", "subresource": "scale", "namespace": "shop", "name": "web", "effect": true});
    let scale_rule = deny(json!({"/spec/replicas": {"max": 5}}));
    let staging = c.env.kube_cert(scale_req.clone(), scale_rule.clone(), |p| {
        p["aud"] = json!("staging");
    });
    let r = kubectl(
        &c.kc,
        Some(&staging),
        &["scale", "deploy", "web", "--replicas=3"],
    );
    assert!(
        r.2.contains(
            r#"certificate is for target [\"staging\"] (aud), this is target \"cluster\""#
        ) || r
            .2
            .contains(r#"certificate is for target ["staging"] (aud), this is target "cluster""#),
        "{}",
        r.2
    );
    assert_refused(
        "a certificate for staging",
        r,
        "contract_mismatch",
        &c.api,
        n,
    );
    let unnamed = c.env.kube_cert(scale_req.clone(), scale_rule.clone(), |p| {
        p.as_object_mut().unwrap().remove("aud");
    });
    let r = kubectl(
        &c.kc,
        Some(&unnamed),
        &["scale", "deploy", "web", "--replicas=3"],
    );
    assert!(r.2.contains("names no target (aud)"), "{}", r.2);
    assert_refused(
        "a certificate naming no target",
        r,
        "contract_mismatch",
        &c.api,
        n,
    );
    let both = c.env.kube_cert(scale_req.clone(), scale_rule.clone(), |p| {
        p["aud"] = json!(["staging", "cluster"]);
    });
    let (code, out, err) = kubectl(
        &c.kc,
        Some(&both),
        &["scale", "deploy", "web", "--replicas=3"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(count_mutations(&c.api), n + 1);

    let lenient = cluster_with("require_audience = false\n");
    create_web(&lenient);
    let n = count_mutations(&lenient.api);
    let staging = lenient
        .env
        .kube_cert(scale_req.clone(), scale_rule.clone(), |p| {
            p["aud"] = json!("staging");
        });
    let r = kubectl(
        &lenient.kc,
        Some(&staging),
        &["scale", "deploy", "web", "--replicas=3"],
    );
    assert_refused(
        "staging, with require_audience = false",
        r,
        "contract_mismatch",
        &lenient.api,
        n,
    );
    let unnamed = lenient.env.kube_cert(scale_req, scale_rule, |p| {
        p.as_object_mut().unwrap().remove("aud");
    });
    let (code, out, err) = kubectl(
        &lenient.kc,
        Some(&unnamed),
        &["scale", "deploy", "web", "--replicas=3"],
    );
    assert_eq!(code, 0, "no aud under require_audience = false: {out}{err}");
    assert_eq!(count_mutations(&lenient.api), n + 1);
}
