//! The admin listener's authentication (issue 20, safe defaults), through the real binary:
//! off loopback without `admin.token` the broker does not start; with a token, the probes
//! stay open and everything that reveals or changes state answers 401 without it.

mod common;

use common::*;
use seb::admission::revocation::Revoked;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "admin-token-for-the-test-0123456789";

/// The broker config of `env` with its admin listener on all addresses, and `token` lines.
fn off_loopback(env: &Env, up: u16, token: &str) -> BrokerConfig {
    let mut cfg = env.config(up, "");
    cfg.text = cfg.text.replace(
        &format!("[admin]\nlisten = \"127.0.0.1:{}\"\n", cfg.admin),
        &format!("[admin]\nlisten = \"0.0.0.0:{}\"\n{token}\n", cfg.admin),
    );
    assert!(cfg.text.contains("0.0.0.0"), "the admin table moved");
    cfg
}

#[test]
fn admin_listener_off_loopback_without_a_token_does_not_start() {
    let env = Env::new();
    let cfg = off_loopback(&env, free_port(), "");
    let path = env.path("seb.toml");
    std::fs::write(&path, &cfg.text).unwrap();
    let mut child = Command::new(seb_bin())
        .args(["serve", "--config"])
        .arg(&path)
        .env("SEB_TEST_PAYMENTS_TOKEN", UPSTREAM_SECRET)
        .env("SEB_TEST_AGENT_TOKEN", AGENT_TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("seb serve started with an unauthenticated admin port on 0.0.0.0");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("admin.token: required")
            && stderr.contains(&format!("0.0.0.0:{}", cfg.admin))
            && stderr.contains("not a loopback address"),
        "{stderr}"
    );
    // Nothing listens on it.
    assert!(std::net::TcpStream::connect(("127.0.0.1", cfg.admin)).is_err());
}

async fn get(url: &str, auth: Option<&str>) -> reqwest::Response {
    let mut r = reqwest::Client::new().get(url);
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    r.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guards_everything_but_the_probes() {
    let env = Env::new();
    let up = Upstream::start(env.dir.path());
    std::fs::write(env.path("admin-token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    let cfg = off_loopback(&env, up.port, "token = { value_file = \"admin-token\" }");
    let broker = Broker::start(&env, &cfg);
    let bearer = format!("Bearer {ADMIN_TOKEN}");

    // Probes answer anyone (Broker::start waited on /readyz already).
    assert_eq!(get(&broker.admin_url("/healthz"), None).await.status(), 200);
    assert_eq!(get(&broker.admin_url("/readyz"), None).await.status(), 200);

    for path in ["/metrics", "/v1/audit/stream"] {
        let r = get(&broker.admin_url(path), None).await;
        assert_eq!(r.status(), 401, "{path} without a token");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"seb-admin\""
        );
        for wrong in [
            "Bearer wrong".to_string(),
            format!("Bearer {ADMIN_TOKEN}x"),
            format!("Bearer {}", &ADMIN_TOKEN[1..]),
            format!("bearer {ADMIN_TOKEN}"),
            format!("Basic {ADMIN_TOKEN}"),
            ADMIN_TOKEN.to_string(),
        ] {
            let r = get(&broker.admin_url(path), Some(&wrong)).await;
            assert_eq!(r.status(), 401, "{path} with {wrong:?}");
        }
        let r = get(&broker.admin_url(path), Some(&bearer)).await;
        assert_eq!(r.status(), 200, "{path} with the token");
    }
    // Two Authorization headers, one right: refused (which one would a proxy in front read?).
    let r = reqwest::Client::new()
        .get(broker.admin_url("/metrics"))
        .header("authorization", "Bearer wrong")
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // A revocation push without the token changes nothing; with it, it is applied.
    let doc = env.revocation_doc(
        2,
        now(),
        Revoked {
            sub: vec!["agent:demo".into()],
            ..Default::default()
        },
    );
    let push = |auth: Option<String>| {
        let doc = doc.clone();
        let url = broker.admin_url("/v1/revocation");
        async move {
            let mut r = reqwest::Client::new().post(url).body(doc);
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(push(None).await, 401);
    assert_eq!(push(Some("Bearer nope".into())).await, 401);
    assert_eq!(
        etcd::epoch_at(&broker).await,
        Some(1),
        "an unauthenticated push applied"
    );
    assert_eq!(push(Some(bearer.clone())).await, 200);
    assert_eq!(etcd::epoch_at(&broker).await, Some(2));

    // Reload: `seb reload --config` sends the config's token; `--admin` sends SEB_ADMIN_TOKEN.
    let config = broker.config_path.to_str().unwrap().to_string();
    let (code, out, err) = seb(&["reload", "--config", &config]);
    assert_eq!(code, 0, "{out}{err}");
    let admin = format!("127.0.0.1:{}", broker.admin);
    let reload = |token: Option<&str>| {
        let mut c = Command::new(seb_bin());
        c.args(["reload", "--admin", &admin])
            .env_remove("SEB_ADMIN_TOKEN");
        if let Some(t) = token {
            c.env("SEB_ADMIN_TOKEN", t);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = reload(None);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("Authorization: Bearer"), "{out}");
    assert_eq!(reload(Some(ADMIN_TOKEN)).0, Some(0));
}
