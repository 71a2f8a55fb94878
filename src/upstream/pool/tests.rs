use super::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A real HTTP/1.1 server on loopback that counts the connections it accepted. `/close`
/// answers with `Connection: close`; `/big` streams 1 MiB; `/empty` answers 204; anything
/// else echoes the request line and Host.
async fn server(keep_alive: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    listen_counting(move |tcp, _| {
        let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
            let path = req.uri().path().to_string();
            let host = req.headers()[http::header::HOST]
                .to_str()
                .unwrap()
                .to_string();
            let line = format!("{} {} {host}", req.method(), req.uri());
            let sent = req.into_body().collect().await.unwrap().to_bytes();
            let mut resp = match path.as_str() {
                "/big" => Response::new(Full::new(Bytes::from(vec![7u8; 1 << 20]))),
                "/empty" => {
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = http::StatusCode::NO_CONTENT;
                    r
                }
                _ => Response::new(Full::new(Bytes::from(format!("{line} {}", sent.len())))),
            };
            if path == "/close" {
                resp.headers_mut()
                    .insert(http::header::CONNECTION, "close".parse().unwrap());
            }
            Ok::<_, std::convert::Infallible>(resp)
        });
        async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(keep_alive)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        }
    })
    .await
}

/// A loopback listener that runs `serve(connection, n)` for its n-th accepted connection
/// (from 0) and counts them.
async fn listen_counting<F, Fut>(serve: F) -> (std::net::SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream, usize) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(tcp, n));
        }
    });
    (addr, accepted)
}

fn pool() -> Pool {
    Pool::new(&crate::tls::client_config(None, None).unwrap())
}

fn post(addr: std::net::SocketAddr, path: &str, body: &'static str) -> Request<UpstreamBody> {
    Request::post(format!("http://{addr}{path}"))
        .body(crate::upstream::upstream_full(Full::new(Bytes::from(body))))
        .unwrap()
}

async fn text(resp: Response<DrivenBody>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn reuses_one_connection_for_sequential_requests() {
    let (addr, accepted) = server(true).await;
    let pool = pool();
    for i in 0..20 {
        let resp = pool.send(post(addr, "/x?i=1", "abc")).await.unwrap();
        assert_eq!(
            text(resp).await,
            format!("POST /x?i=1 {addr} 3"),
            "request {i}"
        );
        let resp = pool.send(post(addr, "/empty", "")).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::NO_CONTENT);
        drop(resp); // a body that is empty from the start is never polled
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_requests_use_separate_connections_then_share_them() {
    let (addr, accepted) = server(true).await;
    let pool = Arc::new(pool());
    for _ in 0..3 {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(
                    async move { text(pool.send(post(addr, "/", "x")).await.unwrap()).await },
                )
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), format!("POST / {addr} 1"));
        }
    }
    let n = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=8).contains(&n),
        "{n} connections for 8 concurrent requests, 3 rounds"
    );
}

#[tokio::test]
async fn streams_a_large_body_and_reuses_the_connection_after_it() {
    let (addr, accepted) = server(true).await;
    let pool = pool();
    let resp = pool.send(post(addr, "/big", "")).await.unwrap();
    let mut body = resp.into_body();
    let mut frames = 0;
    let mut len = 0;
    while let Some(f) = body.frame().await {
        frames += 1;
        len += f.unwrap().into_data().unwrap().len();
    }
    assert_eq!(len, 1 << 20);
    assert!(
        frames > 1,
        "the body arrived in {frames} frame(s): not streamed"
    );
    drop(body);
    text(pool.send(post(addr, "/", "")).await.unwrap()).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_dropped_before_its_end_closes_the_connection() {
    let (addr, accepted) = server(true).await;
    let pool = pool();
    let resp = pool.send(post(addr, "/big", "")).await.unwrap();
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    // The half-read connection must not be handed out again: the next answer is whole.
    let resp = pool.send(post(addr, "/", "yz")).await.unwrap();
    assert_eq!(text(resp).await, format!("POST / {addr} 2"));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connection_close_and_upstreams_without_keep_alive_get_new_connections() {
    let (addr, accepted) = server(true).await;
    let pool = pool();
    for _ in 0..3 {
        text(pool.send(post(addr, "/close", "")).await.unwrap()).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);

    // This server closes every connection after one answer, without saying so: the pool
    // finds the idle connection closed and opens another instead of failing the request.
    let (addr, accepted) = server(false).await;
    for _ in 0..3 {
        let resp = pool.send(post(addr, "/", "q")).await.unwrap();
        assert_eq!(text(resp).await, format!("POST / {addr} 1"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn explicit_host_header_is_kept_and_default_ports_are_left_out() {
    let (addr, _) = server(true).await;
    let pool = pool();
    let mut req = post(addr, "/h", "");
    req.headers_mut()
        .insert(http::header::HOST, "signed.example:8443".parse().unwrap());
    assert_eq!(
        text(pool.send(req).await.unwrap()).await,
        "POST /h signed.example:8443 0"
    );

    let key = Key::of(&"https://[::1]/p".parse().unwrap()).unwrap();
    assert_eq!((key.host.as_str(), key.port, key.tls), ("::1", 443, true));
    let req = origin_form(
        Request::get("https://api.example/a/b?c=d")
            .body(crate::upstream::upstream_full(Full::new(Bytes::new())))
            .unwrap(),
        &Key::of(&"https://api.example/".parse().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(req.uri(), "/a/b?c=d");
    assert_eq!(req.headers()[http::header::HOST], "api.example");
    assert!(Key::of(&"ftp://x/".parse().unwrap()).is_err());
}

/// An upstream that sends more than its Content-Length promised: the surplus must never
/// be read as the answer to the next request on the same connection.
#[tokio::test]
async fn bytes_past_an_answer_never_answer_the_next_request() {
    surplus_after_answer(false).await;
    surplus_after_answer(true).await;
}

async fn surplus_after_answer(delayed: bool) {
    // The surplus in the same write as the answer, or once the client has had time to put
    // the connection back as idle.
    let smuggled: &'static [u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled";
    let mut first = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
    if !delayed {
        first.extend_from_slice(smuggled);
    }
    let (addr, accepted) = misbehaving_once(first, delayed.then_some(smuggled)).await;
    let pool = pool();
    assert_eq!(
        text(pool.send(post(addr, "/", "a")).await.unwrap()).await,
        "ok"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = pool.send(post(addr, "/", "b")).await.unwrap();
    assert_eq!(text(second).await, "fresh", "delayed surplus: {delayed}");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// An upstream that switches protocols on a request that asked for no upgrade: what
/// follows the 101 is another protocol's bytes, and must never answer a later request.
#[tokio::test]
async fn a_switch_of_protocols_nobody_asked_for_is_not_reused() {
    let first = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled".to_vec();
    let (addr, accepted) = misbehaving_once(first, None).await;
    let pool = pool();
    // The pipeline refuses a 101 it did not ask for, whether it sees it or an error.
    if let Ok(resp) = pool.send(post(addr, "/", "a")).await {
        assert_eq!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        let _ = resp.into_body().collect().await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = pool.send(post(addr, "/", "b")).await.unwrap();
    assert_eq!(text(second).await, "fresh");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// An upstream whose first connection answers its first request with `first` (and `late`
/// 10 ms after), and every other request, on any connection, with 200 "fresh".
async fn misbehaving_once(
    first: Vec<u8>,
    late: Option<&'static [u8]>,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let first = Arc::new(first);
    listen_counting(move |mut tcp, n| {
        let first = first.clone();
        async move {
            let mut buf = vec![0u8; 4096];
            let mut answered = false;
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if n > 0 || answered {
                    let fresh = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh";
                    if tcp.write_all(fresh).await.is_err() {
                        return;
                    }
                    continue;
                }
                answered = true;
                if tcp.write_all(&first).await.is_err() {
                    return;
                }
                if let Some(late) = late {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let _ = tcp.write_all(late).await;
                }
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_request_never_written_comes_back_whole_for_one_retry() {
    // A connection whose upstream has already gone: the request is handed back unsent,
    // with its body, instead of failing (send() then retries it on a new connection).
    let (ours, theirs) = tokio::io::duplex(1024);
    drop(theirs);
    let (tx, conn) = http1::handshake(TokioIo::new(Box::new(ours) as Stream))
        .await
        .unwrap();
    let pool = pool();
    let key = Key::of(&"http://127.0.0.1:9/".parse().unwrap()).unwrap();
    let req = origin_form(post("127.0.0.1:9".parse().unwrap(), "/r", "payload"), &key).unwrap();
    let conn = Conn {
        tx,
        conn: Box::pin(conn),
    };
    match pool.attempt(conn, req, &key).await {
        Err(Attempt::NotSent(back)) => {
            assert_eq!(back.uri(), "/r");
            let body = back.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"payload");
        }
        Err(Attempt::Failed(e)) => panic!("reported as sent: {e}"),
        Ok(_) => panic!("answered by an upstream that is gone"),
    }
}

#[tokio::test]
async fn refused_connection_is_an_error_naming_the_upstream() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let Err(err) = pool().send(post(addr, "/", "")).await else {
        panic!("a closed port answered");
    };
    assert!(
        err.to_string()
            .contains(&format!("connect to 127.0.0.1:{}", addr.port())),
        "{err}"
    );
}
