use super::*;
use crate::devcerts::{write_dev_certs, DevCerts};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the test server saw for one connection: the peer identity after a successful
/// handshake, or the handshake error.
type Seen = Result<Option<PeerIdentity>, String>;

struct TestServer {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl TestServer {
    async fn next(&mut self) -> Seen {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.seen.recv())
            .await
            .expect("server saw no connection")
            .expect("server task ended")
    }
}

async fn serve(config: Arc<rustls::ServerConfig>) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let id = peer_identity(tls.get_ref().1.peer_certificates());
                let _ = tx.send(Ok(id.clone()));
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let body = id.and_then(|id| id.name).unwrap_or_else(|| "-".into());
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    TestServer { addr, seen }
}

fn settings(dc: &DevCerts, client_ca: Option<&Path>, require: bool) -> TlsSettings {
    TlsSettings {
        cert: dc.server_cert.clone(),
        key: dc.server_key.clone(),
        client_ca: client_ca.map(Path::to_path_buf),
        require_client_cert: require,
    }
}

fn reqwest_client(ca: &Path, identity: Option<&DevCerts>, addr: SocketAddr) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        // The test server speaks HTTP/1.1 by hand even though it advertises h2.
        .http1_only()
        .resolve("localhost", addr);
    if let Some(dc) = identity {
        let mut pem = std::fs::read(&dc.agent_cert).unwrap();
        pem.extend(std::fs::read(&dc.agent_key).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

async fn get(client: &reqwest::Client, addr: SocketAddr) -> reqwest::Result<String> {
    let url = format!("https://localhost:{}/", addr.port());
    client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await
}

fn err_text(e: anyhow::Error) -> String {
    format!("{e:#}")
}

#[tokio::test]
async fn optional_mtls_with_and_without_client_cert() {
    let tmp = tempfile::tempdir().unwrap();
    let dc = write_dev_certs(tmp.path(), "agent:demo").unwrap();
    let config = server_config(&settings(&dc, Some(&dc.ca), false)).unwrap();
    let mut server = serve(config).await;

    let with_cert = reqwest_client(&dc.ca, Some(&dc), server.addr);
    assert_eq!(
        get(&with_cert, server.addr).await.unwrap(),
        "spiffe://seb.local/agent/demo"
    );
    assert_eq!(
        server.next().await.unwrap(),
        Some(PeerIdentity {
            name: Some("spiffe://seb.local/agent/demo".into()),
            x5t_s256: dc.agent_x5t.clone(),
        })
    );

    let anonymous = reqwest_client(&dc.ca, None, server.addr);
    assert_eq!(get(&anonymous, server.addr).await.unwrap(), "-");
    assert_eq!(server.next().await.unwrap(), None);
}

#[tokio::test]
async fn required_mtls_refuses_anonymous_client() {
    let tmp = tempfile::tempdir().unwrap();
    let dc = write_dev_certs(tmp.path(), "agent:demo").unwrap();
    let config = server_config(&settings(&dc, Some(&dc.ca), true)).unwrap();
    let mut server = serve(config).await;

    let anonymous = reqwest_client(&dc.ca, None, server.addr);
    assert!(get(&anonymous, server.addr).await.is_err());
    let err = server.next().await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");

    let with_cert = reqwest_client(&dc.ca, Some(&dc), server.addr);
    get(&with_cert, server.addr).await.unwrap();
    assert!(server.next().await.unwrap().is_some());
}

#[tokio::test]
async fn client_cert_from_other_ca_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dc = write_dev_certs(&tmp.path().join("a"), "agent:demo").unwrap();
    let other = write_dev_certs(&tmp.path().join("b"), "agent:demo").unwrap();
    // Optional mTLS: a presented certificate must still verify.
    let config = server_config(&settings(&dc, Some(&dc.ca), false)).unwrap();
    let mut server = serve(config).await;

    let stranger = reqwest_client(&dc.ca, Some(&other), server.addr);
    assert!(get(&stranger, server.addr).await.is_err());
    let err = server.next().await.unwrap_err();
    assert!(err.to_lowercase().contains("issuer"), "{err}");
}

#[tokio::test]
async fn no_client_ca_means_no_client_auth() {
    let tmp = tempfile::tempdir().unwrap();
    let dc = write_dev_certs(tmp.path(), "agent:demo").unwrap();
    let config = server_config(&settings(&dc, None, false)).unwrap();
    assert_eq!(
        config.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let mut server = serve(config).await;
    // The server does not ask, so the client's certificate is never sent.
    let client = reqwest_client(&dc.ca, Some(&dc), server.addr);
    assert_eq!(get(&client, server.addr).await.unwrap(), "-");
    assert_eq!(server.next().await.unwrap(), None);
}

#[tokio::test]
async fn client_config_presents_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dc = write_dev_certs(tmp.path(), "agent:demo").unwrap();
    let mut server = serve(server_config(&settings(&dc, Some(&dc.ca), true)).unwrap()).await;

    let config = client_config(Some(&dc.ca), Some((&dc.agent_cert, &dc.agent_key))).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    tls.read_to_string(&mut resp).await.unwrap();
    assert!(
        resp.ends_with("\r\n\r\nspiffe://seb.local/agent/demo"),
        "{resp}"
    );
    let id = server.next().await.unwrap().unwrap();
    assert_eq!(id.x5t_s256, dc.agent_x5t);

    // Server certificate not from the trusted CA: the client refuses.
    let other = write_dev_certs(&tmp.path().join("other"), "agent:demo").unwrap();
    let config = client_config(Some(&other.ca), None).unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    assert!(tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .is_err());
}

#[test]
fn bad_inputs_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dc = write_dev_certs(tmp.path(), "agent:demo").unwrap();
    let missing = tmp.path().join("missing.pem");
    let empty = tmp.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let ok = settings(&dc, Some(&dc.ca), false);
    let cases = [
        (
            TlsSettings {
                cert: missing.clone(),
                ..ok.clone()
            },
            &missing,
            "cannot read certificates",
        ),
        (
            TlsSettings {
                cert: empty.clone(),
                ..ok.clone()
            },
            &empty,
            "no certificates in file",
        ),
        // A key file holds no certificate either.
        (
            TlsSettings {
                cert: dc.server_key.clone(),
                ..ok.clone()
            },
            &dc.server_key,
            "no certificates in file",
        ),
        (
            TlsSettings {
                key: missing.clone(),
                ..ok.clone()
            },
            &missing,
            "private key unreadable",
        ),
        (
            TlsSettings {
                key: dc.server_cert.clone(),
                ..ok.clone()
            },
            &dc.server_cert,
            "no private key in file",
        ),
        (
            TlsSettings {
                key: dc.agent_key.clone(),
                ..ok.clone()
            },
            &dc.agent_key,
            "does not match the certificate",
        ),
        (
            TlsSettings {
                client_ca: Some(empty.clone()),
                ..ok.clone()
            },
            &empty,
            "no certificates in file",
        ),
    ];
    for (s, path, what) in cases {
        let err = err_text(server_config(&s).unwrap_err());
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(what), "{err}");
    }
    let mismatch = err_text(
        server_config(&TlsSettings {
            key: dc.agent_key.clone(),
            ..ok.clone()
        })
        .unwrap_err(),
    );
    assert!(
        mismatch.contains(&dc.server_cert.display().to_string()),
        "{mismatch}"
    );

    let err = err_text(
        server_config(&TlsSettings {
            client_ca: None,
            require_client_cert: true,
            ..ok
        })
        .unwrap_err(),
    );
    assert!(err.contains("no client CA"), "{err}");

    let err =
        err_text(client_config(Some(&dc.ca), Some((&dc.agent_cert, &dc.server_key))).unwrap_err());
    assert!(err.contains(&dc.server_key.display().to_string()), "{err}");
    assert!(err.contains("does not match"), "{err}");
    let err = err_text(client_config(Some(&missing), None).unwrap_err());
    assert!(err.contains(&missing.display().to_string()), "{err}");
}

fn issue(params: rcgen::CertificateParams) -> CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().clone()
}

fn with_cn(mut params: rcgen::CertificateParams, cn: &str) -> rcgen::CertificateParams {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, cn);
    params.distinguished_name = dn;
    params
}

#[test]
fn peer_identity_name_sources() {
    // CN only, no SAN extension at all.
    let der = issue(with_cn(
        rcgen::CertificateParams::default(),
        "agent:cn-only",
    ));
    let id = peer_identity(Some(std::slice::from_ref(&der))).unwrap();
    assert_eq!(id.name.as_deref(), Some("agent:cn-only"));
    assert_eq!(id.x5t_s256, x5t_s256(&der));

    // SANs without a URI: still the CN.
    let params = rcgen::CertificateParams::new(vec!["agent.example".to_string()]).unwrap();
    let der = issue(with_cn(params, "agent:dns"));
    let id = peer_identity(Some(&[der])).unwrap();
    assert_eq!(id.name.as_deref(), Some("agent:dns"));

    // The first URI SAN wins over DNS SANs and the CN.
    let mut params = rcgen::CertificateParams::new(vec!["agent.example".to_string()]).unwrap();
    for uri in ["spiffe://seb.local/first", "spiffe://seb.local/second"] {
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().unwrap()));
    }
    let id = peer_identity(Some(&[issue(with_cn(params, "agent:cn"))])).unwrap();
    assert_eq!(id.name.as_deref(), Some("spiffe://seb.local/first"));

    // Neither: no name, thumbprint still there.
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let id = peer_identity(Some(&[issue(params)])).unwrap();
    assert_eq!(id.name, None);
    assert_eq!(id.x5t_s256.len(), 43);

    assert_eq!(peer_identity(None), None);
    assert_eq!(peer_identity(Some(&[])), None);
}

#[test]
fn x5t_is_base64url_sha256() {
    // SHA-256("abc") from FIPS 180-2, in base64url without padding.
    assert_eq!(
        x5t_s256(b"abc"),
        "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
    );
}

/// Runs `cmd` on a blocking thread (it talks to the async test server).
async fn run(mut cmd: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn on_path(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_python_interoperate() {
    let tmp = tempfile::tempdir().unwrap();
    let dc = write_dev_certs(tmp.path(), "agent:demo").unwrap();
    let mut server = serve(server_config(&settings(&dc, Some(&dc.ca), true)).unwrap()).await;
    let port = server.addr.port().to_string();

    if on_path("curl") {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--http1.1", "--resolve"])
            .arg(format!("localhost:{port}:127.0.0.1"))
            .arg("--cacert")
            .arg(&dc.ca)
            .arg("--cert")
            .arg(&dc.agent_cert)
            .arg("--key")
            .arg(&dc.agent_key)
            .arg(format!("https://localhost:{port}/"));
        let out = run(cmd).await;
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "spiffe://seb.local/agent/demo"
        );
        assert_eq!(server.next().await.unwrap().unwrap().x5t_s256, dc.agent_x5t);
    } else {
        eprintln!("note: curl not on PATH, skipping the curl check");
    }

    if on_path("python3") {
        let script = "import socket, ssl, sys\n\
            ca, cert, key, port = sys.argv[1:]\n\
            ctx = ssl.create_default_context(cafile=ca)\n\
            ctx.load_cert_chain(cert, key)\n\
            with socket.create_connection(('127.0.0.1', int(port))) as raw:\n\
            \x20   with ctx.wrap_socket(raw, server_hostname='localhost') as s:\n\
            \x20       s.sendall(b'GET / HTTP/1.1\\r\\nhost: localhost\\r\\n\\r\\n')\n\
            \x20       data = b''\n\
            \x20       while chunk := s.recv(4096):\n\
            \x20           data += chunk\n\
            sys.stdout.write(data.split(b'\\r\\n\\r\\n', 1)[1].decode())\n";
        let mut cmd = std::process::Command::new("python3");
        cmd.arg("-c")
            .arg(script)
            .arg(&dc.ca)
            .arg(&dc.agent_cert)
            .arg(&dc.agent_key)
            .arg(&port);
        let out = run(cmd).await;
        assert!(
            out.status.success(),
            "python3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "spiffe://seb.local/agent/demo"
        );
        assert_eq!(server.next().await.unwrap().unwrap().x5t_s256, dc.agent_x5t);
    } else {
        eprintln!("note: python3 not on PATH, skipping the Python check");
    }
}
