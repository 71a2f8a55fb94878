//! Certificate v1 interoperability: tokens and keys made by independent implementations
//! (Python joserfc, hand-assembled JWS over `cryptography`, openssl) work with seb, and seb's
//! work with them.

mod common;

use common::*;
use serde_json::json;
use std::process::Command;

fn python(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(repo().join("tests/interop/jose_interop.py"))
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn payload() -> serde_json::Value {
    let t = now();
    json!({
        "iss": "signer", "sub": "agent:py", "jti": random_jti(), "iat": t, "nbf": t, "exp": t + 120,
        "seb": {"v": 1, "action": "deploy", "policy": "p", "policy_epoch": 1, "revocation_epoch": 1,
                "target": "http", "request": {"upstream": "u", "method": "POST", "path": "/x"}}
    })
}

#[test]
fn tokens_from_python_implementations_verify_in_seb() {
    let env = Env::new();
    let p = payload();
    let payload_file = env.path("payload.json");
    std::fs::write(&payload_file, p.to_string()).unwrap();
    for mode in ["sign-joserfc", "sign-raw"] {
        let token = python(&[
            mode,
            env.path("signer.key").to_str().unwrap(),
            payload_file.to_str().unwrap(),
            &env.kid,
        ]);
        let (code, out, err) = seb(&[
            "cert",
            "verify",
            "--trust",
            env.path("signer.pub").to_str().unwrap(),
            &token,
        ]);
        assert_eq!(code, 0, "{mode}: {out}{err}");
        assert!(out.contains(p["jti"].as_str().unwrap()), "{out}");
        // And the same token with one payload byte changed does not.
        let parts: Vec<&str> = token.split('.').collect();
        let mut edited = p.clone();
        edited["sub"] = json!("agent:root");
        use base64::Engine;
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(edited.to_string()),
            parts[2]
        );
        let (code, out, _) = seb(&[
            "cert",
            "verify",
            "--trust",
            env.path("signer.pub").to_str().unwrap(),
            &forged,
        ]);
        assert_eq!(code, 1);
        assert!(out.starts_with("bad_signature"), "{out}");
    }
}

#[test]
fn seb_tokens_verify_in_python_implementations() {
    let env = Env::new();
    let claims = env.path("claims.json");
    std::fs::write(
        &claims,
        json!({"action": "deploy", "policy": "p", "policy_epoch": 1, "revocation_epoch": 1, "target": "http",
               "request": {"upstream": "u", "method": "POST", "path": "/x"}})
        .to_string(),
    )
    .unwrap();
    let (code, token, err) = seb(&[
        "cert",
        "issue",
        "--key",
        env.path("signer.key").to_str().unwrap(),
        "--iss",
        "signer",
        "--sub",
        "agent:a",
        "--ttl",
        "5m",
        "--claims",
        claims.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    for mode in ["verify-joserfc", "verify-raw"] {
        let out = python(&[mode, env.path("signer.pub").to_str().unwrap(), token.trim()]);
        let payload: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(payload["sub"], "agent:a", "{mode}");
        assert_eq!(payload["seb"]["v"], 1);
    }
}

#[test]
fn openssl_keys_work_in_seb_and_seb_keys_in_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let ok = |cmd: &mut Command| {
        let out = cmd.output().expect("openssl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    ok(Command::new("openssl").args(["genpkey", "-algorithm", "ed25519", "-out", &d("ossl.key")]));
    ok(Command::new("openssl").args([
        "pkey",
        "-in",
        &d("ossl.key"),
        "-pubout",
        "-out",
        &d("ossl.pub"),
    ]));
    std::fs::write(
        d("claims.json"),
        json!({"action": "a", "policy": "p", "policy_epoch": 1, "revocation_epoch": 1, "target": "http",
               "request": {"upstream": "u", "method": "POST", "path": "/x"}})
        .to_string(),
    )
    .unwrap();
    let (code, token, err) = seb(&[
        "cert",
        "issue",
        "--key",
        &d("ossl.key"),
        "--iss",
        "s",
        "--sub",
        "a",
        "--ttl",
        "1m",
        "--claims",
        &d("claims.json"),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = seb(&["cert", "verify", "--trust", &d("ossl.pub"), token.trim()]);
    assert_eq!(code, 0, "{out}");

    let (code, kid, _) = seb(&["keygen", "--out", &d("seb")]);
    assert_eq!(code, 0);
    assert_eq!(kid.trim().len(), 43, "a base64url SHA-256 thumbprint");
    let derived = ok(Command::new("openssl").args(["pkey", "-in", &d("seb.key"), "-pubout"]));
    assert_eq!(derived, std::fs::read_to_string(d("seb.pub")).unwrap());
    ok(Command::new("openssl").args(["pkey", "-pubin", "-in", &d("seb.pub"), "-noout"]));
}

#[test]
fn cli_reports_reasons_and_reads_stdin() {
    let env = Env::new();
    let expired = env.cert_with("POST", "/x", json!(null), |p| {
        p["nbf"] = json!(now() - 900);
        p["iat"] = json!(now() - 900);
        p["exp"] = json!(now() - 600);
    });
    let (code, out, _) = seb(&[
        "cert",
        "verify",
        "--trust",
        env.path("signer.pub").to_str().unwrap(),
        &expired,
    ]);
    assert_eq!(code, 1);
    assert!(out.starts_with("expired: "), "{out}");
    let other = tempfile::tempdir().unwrap();
    seb(&["keygen", "--out", other.path().join("k").to_str().unwrap()]);
    let good = env.cert("POST", "/x", json!(null));
    let (code, out, _) = seb(&[
        "cert",
        "verify",
        "--trust",
        other.path().join("k.pub").to_str().unwrap(),
        &good,
    ]);
    assert_eq!(code, 1);
    assert!(out.starts_with("unknown_issuer: "), "{out}");
    let mut child = Command::new(seb_bin())
        .args([
            "cert",
            "verify",
            "--trust",
            env.path("signer.pub").to_str().unwrap(),
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(good.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let (code, out, err) = seb(&["cert", "inspect", &good]);
    assert_eq!(code, 0);
    assert!(err.contains("NOT VERIFIED"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["header"]["alg"], "EdDSA");
    assert_eq!(v["payload"]["seb"]["action"], "refund");
}
