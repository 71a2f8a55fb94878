//! The broker's life through the real binary: draining on SIGTERM, a second signal, reload on
//! SIGHUP and `seb reload`, connection limits and timeouts, and config errors that say where.
//! Time bounds here are generous limits on waiting, not claims about speed.

mod common;

use common::*;
use seb::cert::{jws, keys, CERT_TYP};
use serde_json::{json, Value};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn signal(broker: &Broker, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), broker.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} failed");
}

/// The broker's exit code once it exits within `within` (None: still running).
fn wait_exit(broker: &mut Broker, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = broker.child.as_mut().unwrap().try_wait().unwrap() {
            broker.child = None;
            return Some(st.code().unwrap_or(-1));
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn running(broker: &mut Broker) -> bool {
    broker.child.as_mut().unwrap().try_wait().unwrap().is_none()
}

/// The broker's stderr (its log), all of it so far.
fn broker_log(env: &Env) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(env.dir.path()).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("seb-") {
            out.push_str(&std::fs::read_to_string(e.path()).unwrap());
        }
    }
    out
}

fn admin_get(broker: &Broker, path: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", broker.admin)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).unwrap().parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn client_trusting(ca: &std::path::Path, http1_only: bool) -> reqwest::Client {
    let ca = std::fs::read(ca).unwrap();
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(60));
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

async fn post(c: &reqwest::Client, url: &str, cert: &str) -> Reply {
    send(
        c,
        "POST",
        url,
        &[("authorization", &format!("Bearer {cert}"))],
        b"",
    )
    .await
}

/// A certificate like [`Env::cert`] (no body), signed by another key.
fn cert_signed_by(key: &ed25519_dalek::SigningKey, path: &str) -> String {
    let t = now();
    let p = json!({
        "iss": "signer", "sub": "agent:demo", "jti": random_jti(), "iat": t, "nbf": t, "exp": t + 300,
        "seb": {"v": 1, "action": "refund", "policy": "refunds-v1", "policy_epoch": 1, "revocation_epoch": 1,
                "target": "http", "request": {"upstream": "payments", "method": "POST", "path": path}}
    });
    jws::sign(key, CERT_TYP, &keys::key_id(&key.verifying_key()), &p)
}

/// A TLS connection to the broker that has sent nothing yet.
async fn tls_connect(
    env: &Env,
    port: u16,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = seb::tls::client_config(Some(&env.path("tls/ca.pem")), None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// Reads until the peer closes (EOF or an error); the bytes read.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

// === shutdown ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_fifty_requests_in_flight_finish_and_exits_zero() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let mut broker = Broker::start_with_env(
        &env,
        &env.config(up.port, "[limits]\nshutdown_grace = \"60s\"\n"),
        vec![("SEB_LOG".into(), "info".into())],
    );
    // Half over HTTP/2 streams on one connection, half over HTTP/1.1 connections of their own.
    let ca = env.path("tls/ca.pem");
    let (h2, h1) = (client_trusting(&ca, false), client_trusting(&ca, true));
    let mut certs = Vec::new();
    let mut pending = Vec::new();
    for i in 0..50 {
        let cert = env.cert("POST", "/pause/deploy", json!(null));
        certs.push(cert.clone());
        let c = if i % 2 == 0 { h2.clone() } else { h1.clone() };
        let url = broker.url("/pause/deploy");
        pending.push(tokio::spawn(async move {
            c.post(&url)
                .bearer_auth(&cert)
                .send()
                .await
                .map(|r| r.status())
        }));
    }
    // The upstream holds each request 5 s after it arrives.
    wait_for("the upstream to receive all 50", || {
        up.requests().len() == 50
    });
    let in_flight = pending.iter().filter(|p| !p.is_finished()).count();
    assert!(in_flight > 0, "no request was in flight at SIGTERM");
    signal(&broker, "TERM");

    // Draining: no new connections, not ready, but requests in flight go on.
    wait_for("the listener to close", || {
        std::net::TcpStream::connect(("127.0.0.1", broker.listen)).is_err()
    });
    let (status, ready) = admin_get(&broker, "/readyz");
    assert_eq!((status, &ready["draining"]), (503, &json!(true)), "{ready}");

    for (i, p) in pending.into_iter().enumerate() {
        let r = p.await.unwrap();
        assert!(matches!(r, Ok(s) if s == 200), "request {i}: {r:?}");
    }
    assert_eq!(wait_exit(&mut broker, Duration::from_secs(60)), Some(0));

    let recs = audit_records(&env);
    for cert in &certs {
        let jti = seb::cert::verify_signed(
            cert,
            &seb::cert::TrustedIssuers::new([seb::cert::Issuer {
                name: None,
                kid: env.kid.clone(),
                key: env.signer.verifying_key(),
            }]),
        )
        .unwrap()
        .claims
        .jti;
        let outcome = recs
            .iter()
            .find(|r| r["kind"] == "outcome" && r["cert_id"] == json!(jti))
            .unwrap_or_else(|| panic!("no outcome record for {jti}"));
        assert_eq!(outcome["upstream_status"], 200, "{outcome}");
    }
    assert_audit_verifies(&env);
    assert!(broker_log(&env).contains("draining"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let mut broker = Broker::start(
        &env,
        &env.config(up.port, "[limits]\nshutdown_grace = \"120s\"\n"),
    );
    let cert = env.cert("POST", "/slow/deploy", json!(null));
    let (c, url) = (client(&env, false), broker.url("/slow/deploy"));
    let pending = tokio::spawn(async move { c.post(url).bearer_auth(cert).send().await });
    wait_for("the upstream to receive the request", || {
        up.requests().len() == 1
    });
    signal(&broker, "TERM");
    wait_for("the listener to close", || {
        std::net::TcpStream::connect(("127.0.0.1", broker.listen)).is_err()
    });
    assert!(
        running(&mut broker),
        "the first SIGTERM waits for the request"
    );
    signal(&broker, "TERM");
    // The upstream answers after 30 s and the grace is 120 s: an exit within 10 s is the
    // second signal's doing.
    assert_eq!(
        wait_exit(&mut broker, Duration::from_secs(10)),
        Some(128 + 15)
    );
    assert!(pending.await.unwrap().is_err(), "the request was cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_outlives_the_grace_period_is_cut() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let mut broker = Broker::start(
        &env,
        &env.config(up.port, "[limits]\nshutdown_grace = \"2s\"\n"),
    );
    let cert = env.cert("POST", "/slow/deploy", json!(null));
    let (c, url) = (client(&env, false), broker.url("/slow/deploy"));
    let pending = tokio::spawn(async move { c.post(url).bearer_auth(cert).send().await });
    wait_for("the upstream to receive the request", || {
        up.requests().len() == 1
    });
    signal(&broker, "TERM");
    // The upstream answers after 30 s: an exit within 20 s is the grace period's end.
    assert_eq!(wait_exit(&mut broker, Duration::from_secs(20)), Some(0));
    assert!(pending.await.unwrap().is_err(), "the request was cut");
    let log = broker_log(&env);
    assert!(log.contains("1 connection(s) cut"), "{log}");
}

// === reload ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_trusted_keys_and_the_tls_certificate() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let cfg = env.config(up.port, "");
    let mut broker = Broker::start(&env, &cfg);
    let url = broker.url("/v1/deploy");
    let old_ca = env.path("tls/ca.pem");
    let old_client = client_trusting(&old_ca, true);
    let r = post(
        &old_client,
        &url,
        &env.cert("POST", "/v1/deploy", json!(null)),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // A new signer key replaces the old one, and a new server certificate from a new CA.
    let new_key = keys::generate();
    keys::write_keypair(&env.path("signer2"), &new_key).unwrap();
    seb::devcerts::write_dev_certs(&env.path("tls2"), "agent:demo").unwrap();
    // And a new revocation source, signed by the new key: the revocation state sees the
    // reloaded keys as admission does.
    let (code, _, err) = seb(&[
        "revocation",
        "issue",
        "--key",
        env.path("signer2.key").to_str().unwrap(),
        "--iss",
        "signer",
        "--epoch",
        "2",
        "--out",
        env.path("revocation2.jws").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let text = cfg
        .text
        .replace("\"signer.pub\"", "\"signer2.pub\"")
        .replace("\"tls/", "\"tls2/")
        .replace("\"revocation.jws\"", "\"revocation2.jws\"");
    std::fs::write(&broker.config_path, text).unwrap();
    signal(&broker, "HUP");

    let new_client = client_trusting(&env.path("tls2/ca.pem"), true);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = new_client
            .post(&url)
            .bearer_auth(cert_signed_by(&new_key, "/v1/deploy"))
            .send()
            .await;
        if matches!(&r, Ok(r) if r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "not reloaded: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(running(&mut broker), "SIGHUP must not end the process");
    wait_for("revocation epoch 2 from the new source", || {
        admin_get(&broker, "/readyz").1["revocation"]["issuers"]["signer"]["epoch"] == 2
    });
    // The old key is no longer trusted.
    let r = post(
        &new_client,
        &url,
        &env.cert("POST", "/v1/deploy", json!(null)),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (403, "unknown_issuer"),
        "{:?}",
        r.body
    );
    // A new connection sees the new certificate: a client trusting only the old CA fails.
    let old_only = client_trusting(&old_ca, true);
    assert!(old_only.get(broker.url("/v1/x")).send().await.is_err());
    assert!(broker_log(&env).contains("reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_at_reload_keeps_the_running_one() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let cfg = env.config(up.port, "");
    let mut broker = Broker::start(&env, &cfg);
    let c = client(&env, false);
    let url = broker.url("/v1/deploy");
    let admin = format!("127.0.0.1:{}", broker.admin);
    let config_file = broker.config_path.display().to_string();

    // A TOML syntax error, by SIGHUP: the process lives and serves as before, and says why.
    std::fs::write(&broker.config_path, cfg.text.replace("[audit]", "[audit")).unwrap();
    signal(&broker, "HUP");
    wait_for("the refusal in the log", || {
        broker_log(&env).contains("not reloaded")
    });
    assert!(running(&mut broker));
    let r = post(&c, &url, &env.cert("POST", "/v1/deploy", json!(null))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // The same through `seb reload`: refused, with the file, line and column.
    let (code, out, _) = seb(&["reload", "--admin", &admin]);
    assert_eq!(code, 1, "{out}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["reloaded"], false);
    let error = answer["error"].as_str().unwrap();
    assert!(error.starts_with(&format!("{config_file}:")), "{error}");

    // An issuer key that does not load: refused, naming the field and the key file.
    std::fs::write(
        &broker.config_path,
        cfg.text.replace("\"signer.pub\"", "\"missing.pub\""),
    )
    .unwrap();
    let (code, out, _) = seb(&["reload", "--admin", &admin]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("issuers[0].public_key") && out.contains("missing.pub"),
        "{out}"
    );
    let r = post(&c, &url, &env.cert("POST", "/v1/deploy", json!(null))).await;
    assert_eq!(r.status, 200, "the old key still works: {:?}", r.body);

    // A valid config that also moves the listener: reloaded, and the move named as needing
    // a restart.
    let moved = cfg.text.replace(
        &format!("127.0.0.1:{}", broker.listen),
        &format!("127.0.0.1:{}", free_port()),
    );
    std::fs::write(&broker.config_path, moved).unwrap();
    let (code, out, err) = seb(&["reload", "--config", &config_file]);
    assert_eq!(code, 0, "{out}{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["restart_needed"], json!(["targets"]), "{answer}");
    let r = post(&c, &url, &env.cert("POST", "/v1/deploy", json!(null))).await;
    assert_eq!(r.status, 200, "still on the old listener: {:?}", r.body);
}

// === connections ===

/// One HTTP/1.1 keep-alive connection: two refused POSTs (no certificate; nothing reaches the
/// upstream), then silence. Returns how long after its last answer the broker closed it.
async fn idle_connection(env: Arc<Env>, port: u16, gate: Arc<tokio::sync::Semaphore>) -> Duration {
    let io = {
        // Bounded handshakes at once, so that none waits past the handshake timeout.
        let _turn = gate.acquire().await.unwrap();
        tls_connect(&env, port).await.expect("TLS handshake")
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .unwrap();
    let closed = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    let mut last = Instant::now();
    for _ in 0..2 {
        let req = http::Request::post("/v1/refunds")
            .header("host", "localhost")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = sender
            .send_request(req)
            .await
            .expect("an answer on a kept-alive connection");
        assert_eq!(resp.status(), 401, "cert_missing");
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
        last = Instant::now();
    }
    let closed_at = tokio::time::timeout(Duration::from_secs(120), closed)
        .await
        .expect("the idle connection was never closed")
        .unwrap();
    closed_at.saturating_duration_since(last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_are_closed_while_traffic_is_served() {
    let env = Arc::new(Env::new());
    let up = Upstream::start(env.dir.path());
    let broker = Broker::start(
        &env,
        &env.config(
            up.port,
            "[limits]\nheader_read_timeout = \"10s\"\nidle_timeout = \"20s\"\n",
        ),
    );
    let gate = Arc::new(tokio::sync::Semaphore::new(20));
    let idle: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(idle_connection(env.clone(), broker.listen, gate.clone())))
        .collect();
    // Real traffic while they are open.
    let c = client(&env, false);
    let url = broker.url("/v1/deploy");
    for _ in 0..20 {
        let r = post(&c, &url, &env.cert("POST", "/v1/deploy", json!(null))).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    for (i, t) in idle.into_iter().enumerate() {
        let after = t.await.unwrap();
        // Closed for being idle, not before: the broker's clock starts when it sent the
        // answer, a little before the agent had it.
        assert!(
            after >= Duration::from_secs(10),
            "connection {i} closed after {after:?}"
        );
    }
    let r = post(&c, &url, &env.cert("POST", "/v1/deploy", json!(null))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_silent_connections_are_closed() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let broker = Broker::start(
        &env,
        &env.config(up.port, "[limits]\nheader_read_timeout = \"1s\"\n"),
    );
    // Silent before the TLS handshake.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", broker.listen))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), read_until_closed(&mut tcp))
        .await
        .expect("a silent connection must be closed");
    // Silent after the handshake.
    let mut tls = tls_connect(&env, broker.listen).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), read_until_closed(&mut tls))
        .await
        .expect("a connection without a request must be closed");
    // A head dripped one byte every 200 ms: 40 s to send in full, closed long before.
    let mut tls = tls_connect(&env, broker.listen).await.unwrap();
    let head = "POST /v1/refunds HTTP/1.1\r\nhost: localhost\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut cut = false;
    for b in head.bytes() {
        if tls.write_all(&[b]).await.is_err() || tls.flush().await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(200), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(_)) => panic!("the broker answered a head it never fully received"),
            Err(_) => {}
        }
    }
    assert!(cut, "the dripping connection was never closed");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "closed only after {:?}",
        started.elapsed()
    );
    // The broker still serves.
    let r = post(
        &client(&env, false),
        &broker.url("/v1/deploy"),
        &env.cert("POST", "/v1/deploy", json!(null)),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_get_a_readable_refusal() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let broker = Broker::start(
        &env,
        &env.config(
            up.port,
            "[limits]\nmax_connections = 3\nheader_read_timeout = \"60s\"\n",
        ),
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tls_connect(&env, broker.listen).await.unwrap());
    }
    let c = client(&env, false);
    let url = broker.url("/v1/deploy");
    let r = post(&c, &url, &env.cert("POST", "/v1/deploy", json!(null))).await;
    assert_eq!((r.status, r.code()), (503, "overloaded"), "{:?}", r.body);
    let detail = r.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("connection limit"), "{detail}");
    wait_for("the connection-limit refusal's record", || {
        audit_records(&env).iter().any(|r| {
            r["decision"] == "deny"
                && r["reason"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("connection limit"))
        })
    });
    assert!(
        up.requests().is_empty(),
        "nothing reached the upstream over the limit"
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = post(
            &client(&env, false),
            &url,
            &env.cert("POST", "/v1/deploy", json!(null)),
        )
        .await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// === config errors ===

#[test]
fn start_up_errors_name_the_file_line_and_field() {
    let env = Env::new();
    let cfg = env.config(free_port(), "");
    let path = env.path("seb.toml");
    let file = path.display().to_string();
    let serve = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let (code, _, err) = seb(&["serve", "--config", &file]);
        assert_eq!(code, 2, "{err}");
        err
    };
    let err = serve(&cfg.text.replace("\"signer.pub\"", "\"missing.pub\""));
    let line = cfg
        .text
        .lines()
        .position(|l| l.starts_with("public_key"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("{file}:{line}:1: issuers[0].public_key"))
            && err.contains("missing.pub"),
        "{err}"
    );
    let err = serve(&cfg.text.replace("[tls]", "[tls"));
    assert!(err.contains(&format!("{file}:")), "{err}");
    let err = serve(&format!(
        "{}\n[limits]\nmax_connections = 100000000\n",
        cfg.text
    ));
    assert!(
        err.contains("limits.max_connections") && err.contains("open file limit"),
        "{err}"
    );
}

/// Under a low open file limit the default connection limit is lowered to fit, with a
/// warning, and a limit too low for anything stops the start with a message.
#[test]
fn the_connection_limit_fits_the_open_file_limit() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    let cfg = env.config(up.port, "");
    let path = env.path("seb.toml");
    std::fs::write(&path, &cfg.text).unwrap();
    let log = env.path("low-limit.log");
    let mut child = KillOnDrop(
        Command::new("prlimit")
            .args(["--nofile=3000:3000", seb_bin(), "serve", "--config"])
            .arg(&path)
            .env("SEB_TEST_PAYMENTS_TOKEN", UPSTREAM_SECRET)
            .env("SEB_TEST_AGENT_TOKEN", AGENT_TOKEN)
            .env("SEB_LOG", "warn")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // 3000 less the reserve: 128 fixed, 1024 requests in flight, 256 idle upstream
    // connections for the one target, 32 refusal slots, 64 admin connections.
    let expected = 3000 - (128 + 1024 + 256 + 32 + 64);
    let metric = format!("seb_agent_connections_max {expected}");
    wait_for("the lowered limit in /metrics", || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", cfg.admin)) else {
            return false;
        };
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.lines().any(|l| l == metric)
    });
    let warned = std::fs::read_to_string(&log).unwrap();
    assert!(
        warned.contains("agent connections limited to fit"),
        "{warned}"
    );
    child.0.kill().unwrap();
    child.0.wait().unwrap();

    let out = Command::new("prlimit")
        .args(["--nofile=1024:1024", seb_bin(), "serve", "--config"])
        .arg(&path)
        .env("SEB_TEST_PAYMENTS_TOKEN", UPSTREAM_SECRET)
        .env("SEB_TEST_AGENT_TOKEN", AGENT_TOKEN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("limits.max_connections") && err.contains("open file limit of 1024"),
        "{err}"
    );
}
