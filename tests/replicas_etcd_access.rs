//! Replicas on etcd (issue 17): what reaches etcd and who may. etcd over mutual TLS and with
//! authentication, and what a writer with access to etcd can and cannot do.

mod common;

use common::etcd::*;
use common::*;
use seb::admission::revocation::Revoked;
use std::time::{Duration, Instant};

/// etcd is a shared store, not a trusted one: what a writer with access to it puts there
/// cannot admit a use or undo a revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_others_write_into_etcd_cannot_admit_or_unrevoke() {
    let env = Env::new();
    let etcd = Etcd::start(env.dir.path(), 1);
    let up = Upstream::start(env.dir.path());
    let rs: Vec<Broker> = (1..=2).map(|n| replica(&env, &up, &etcd, n)).collect();
    let c = client(&env, false);

    // A count that is not one seb wrote: refused (state_unavailable), never admitted.
    let cert = deploy_cert_edit(&env, 3, |p| p["jti"] = "garbled".into());
    let key = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(env.kid.as_bytes());
        h.update([0]);
        h.update(b"garbled");
        format!("/seb-test/uses/{}", hex::encode(h.finalize()))
    };
    for junk in ["-1", "one", "", "00"] {
        etcd.gateway(
            "/v3/kv/put",
            &format!(
                r#"{{"key": "{}", "value": "{}"}}"#,
                b64(key.as_bytes()),
                b64(junk.as_bytes())
            ),
        );
        let reply = deploy(&c, &rs[0], &cert).await;
        assert_eq!(
            (reply.status, reply.code()),
            (503, "state_unavailable"),
            "{junk:?}"
        );
    }
    assert_eq!(mutations_received(&up), 0);

    // Revoke, then try to undo it through etcd: a document signed by a key no replica
    // trusts, a genuine but older one, and deleting the entry.
    let revoked = deploy_cert_edit(&env, 10, |p| p["jti"] = "revoked-one".into());
    let doc = env.revocation_doc(
        2,
        now(),
        Revoked {
            jti: vec!["revoked-one".into()],
            ..Default::default()
        },
    );
    assert_eq!(push_revocation(&c, &rs[0], &doc).await.0, 200);
    wait_epoch(&rs[1], 2).await;
    let rev_key = format!("/seb-test/revocation/{}", hex::encode("signer"));
    let mallory = seb::cert::keys::generate();
    let forged = seb::admission::revocation::sign(
        &mallory,
        &env.kid,
        &seb::admission::revocation::RevocationPayload {
            iss: "signer".into(),
            iat: now(),
            seb: seb::admission::revocation::RevocationClaims {
                v: 1,
                revocation_epoch: 9,
                min_policy_epoch: 0,
                revoked: Revoked::default(),
            },
        },
    );
    let older = env.revocation_doc(1, now(), Revoked::default());
    for document in [&forged, &older] {
        let stored = serde_json::json!({"epoch": 99, "iat": now(), "document": document});
        etcd.gateway(
            "/v3/kv/put",
            &format!(
                r#"{{"key": "{}", "value": "{}"}}"#,
                b64(rev_key.as_bytes()),
                b64(stored.to_string().as_bytes())
            ),
        );
    }
    etcd.gateway(
        "/v3/kv/deleterange",
        &format!(r#"{{"key": "{}"}}"#, b64(rev_key.as_bytes())),
    );
    // The watch delivers in order: once a genuine epoch 3 (revoking the same certificate)
    // has reached both replicas, so had everything written before it.
    let doc3 = env.revocation_doc(
        3,
        now(),
        Revoked {
            jti: vec!["revoked-one".into()],
            ..Default::default()
        },
    );
    assert_eq!(push_revocation(&c, &rs[0], &doc3).await.0, 200);
    for r in &rs {
        wait_epoch(r, 3).await;
        let reply = deploy(&c, r, &revoked).await;
        assert_eq!((reply.status, reply.code()), (403, "revoked"));
    }
    assert_eq!(mutations_received(&up), 0);
}

/// etcd over mutual TLS, as `deploy/kubernetes` runs it: with the client certificate a
/// replica admits and counts; without one it cannot reach etcd and refuses, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_over_mutual_tls() {
    let env = Env::new();
    let tls = |f: &str| env.path(&format!("tls/{f}"));
    let etcd = Etcd::start_tls(
        env.dir.path(),
        1,
        Some((tls("ca.pem"), tls("server.pem"), tls("server.key"))),
    );
    let up = Upstream::start(env.dir.path());
    let c = client(&env, false);
    let with_cert = format!(
        "ca = {:?}\ncert = {:?}\nkey = {:?}\n",
        tls("ca.pem"),
        tls("agent.pem"),
        tls("agent.key")
    );
    let r = replica_with(&env, &up, &etcd, 1, &with_cert, true);
    let once = deploy_cert(&env, 1);
    assert_eq!(deploy(&c, &r, &once).await.status, 200);
    let reply = deploy(&c, &r, &once).await;
    assert_eq!((reply.status, reply.code()), (403, "replayed"));

    // Trusting the CA but presenting no certificate: etcd ends the handshake.
    let r2 = replica_with(
        &env,
        &up,
        &etcd,
        2,
        &format!("ca = {:?}\n", tls("ca.pem")),
        false,
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = readyz(&r2).await;
        if status == 503 && body["state"]["why"].as_str().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = deploy(&c, &r2, &deploy_cert(&env, 1)).await;
    assert_eq!((reply.status, reply.code()), (503, "state_unavailable"));
    assert_eq!(mutations_received(&up), 1);
}

/// etcd with authentication on: the replica's user, limited to seb's prefix, is enough; a
/// wrong password stops the broker at start, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_with_authentication() {
    let env = Env::new();
    let etcd = Etcd::start(env.dir.path(), 1);
    let up = Upstream::start(env.dir.path());
    let c = client(&env, false);
    let call = |path: &str, body: String| {
        let r = etcd.gateway(path, &body);
        assert!(!r.contains("\"error\""), "{path}: {r}");
    };
    call(
        "/v3/auth/user/add",
        r#"{"name": "root", "password": "root-pw"}"#.into(),
    );
    call(
        "/v3/auth/user/grant",
        r#"{"user": "root", "role": "root"}"#.into(),
    );
    call("/v3/auth/role/add", r#"{"name": "seb"}"#.into());
    call(
        "/v3/auth/role/grant",
        format!(
            r#"{{"name": "seb", "perm": {{"permType": "READWRITE", "key": "{}", "range_end": "{}"}}}}"#,
            b64(b"/seb-test/"),
            b64(b"/seb-test0")
        ),
    );
    call(
        "/v3/auth/user/add",
        r#"{"name": "seb", "password": "seb-pw"}"#.into(),
    );
    call(
        "/v3/auth/user/grant",
        r#"{"user": "seb", "role": "seb"}"#.into(),
    );
    call("/v3/auth/enable", "{}".into());

    let auth = "username = \"seb\"\npassword = { value_file = \"etcd-password\" }\n";
    std::fs::write(env.path("etcd-password"), "seb-pw\n").unwrap();
    let r = replica_with(&env, &up, &etcd, 1, auth, true);
    let once = deploy_cert(&env, 1);
    assert_eq!(deploy(&c, &r, &once).await.status, 200);
    let reply = deploy(&c, &r, &once).await;
    assert_eq!((reply.status, reply.code()), (403, "replayed"));

    std::fs::write(env.path("etcd-password"), "wrong\n").unwrap();
    let mut bad = replica_with(&env, &up, &etcd, 2, auth, false);
    let mut child = bad.child.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the broker started with a wrong etcd password"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    assert!(
        logs_mention(&env, "state.etcd"),
        "the error names the field"
    );
}
