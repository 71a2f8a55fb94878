use super::*;
use proptest::prelude::*;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A socket that yields the given reads one by one, then the end of input, and keeps what
/// is written to it.
struct Script {
    reads: VecDeque<Vec<u8>>,
    written: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Script {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(mut chunk) = self.reads.pop_front() {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            if n < chunk.len() {
                self.reads.push_front(chunk.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.written.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

struct Idle;
impl Quiet for Idle {
    fn quiet(&self, _: u64, _: &Waker) -> bool {
        true
    }
}

/// What hyper would read through the gate, and what the gate answered on shutdown.
async fn through(reads: Vec<Vec<u8>>, h2: bool) -> (Vec<u8>, String) {
    let written = Arc::new(Mutex::new(Vec::new()));
    let script = Script {
        reads: reads.into(),
        written: written.clone(),
    };
    let render: Render =
        Arc::new(|r: Refusal| format!("{} {}", r.status.as_u16(), r.message).into_bytes());
    let mut gate = Gate::new(script, h2, render, Arc::new(Idle));
    let mut seen = Vec::new();
    gate.read_to_end(&mut seen).await.unwrap();
    gate.shutdown().await.unwrap();
    let answer = String::from_utf8(written.lock().unwrap().clone()).unwrap();
    (seen, answer)
}

fn split(bytes: &[u8], at: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = at.iter().map(|a| a % (bytes.len() + 1)).collect();
    cuts.sort();
    let mut out = Vec::new();
    let mut last = 0;
    for c in cuts.into_iter().chain([bytes.len()]) {
        // An empty read is the end of input.
        if c > last {
            out.push(bytes[last..c].to_vec());
        }
        last = c;
    }
    out
}

const GOOD: &[u8] = b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
GET /b?q=1 HTTP/1.1\r\nhost: x\r\n\r\n\
PUT /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: Chunked\r\n\r\n5;ext=1\r\nhello\r\n1A \r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n\
DELETE /d HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n";

#[tokio::test]
async fn valid_pipelined_requests_pass_byte_for_byte_whatever_the_reads() {
    for at in 0..GOOD.len() {
        let (seen, answer) = through(split(GOOD, &[at]), false).await;
        assert_eq!(seen, GOOD, "split at {at}");
        assert_eq!(answer, "");
    }
    let bytewise = GOOD.iter().map(|b| vec![*b]).collect();
    assert_eq!(through(bytewise, false).await.0, GOOD);
}

#[tokio::test]
async fn a_bad_head_is_answered_after_the_good_ones_and_never_reaches_hyper() {
    let cases: &[(&str, &str, &str)] = &[
        ("transfer-encoding: xchunked\r\n", "400", "is not `chunked`"),
        (
            "transfer-encoding: chunked, identity\r\n",
            "400",
            "is not `chunked`",
        ),
        (
            "transfer-encoding: gzip, chunked\r\n",
            "400",
            "is not `chunked`",
        ),
        (
            "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
            "400",
            "more than one Transfer-Encoding",
        ),
        (
            "transfer-encoding: chunked\r\ncontent-length: 3\r\n",
            "400",
            "ambiguous",
        ),
        (
            "content-length: 3\r\ncontent-length: 3\r\n",
            "400",
            "more than one Content-Length",
        ),
        (
            "content-length: 3\r\ncontent-length: 4\r\n",
            "400",
            "more than one",
        ),
        ("content-length: +3\r\n", "400", "plain decimal"),
        ("content-length: 3, 3\r\n", "400", "plain decimal"),
        (
            "content-length: 99999999999999999999\r\n",
            "400",
            "plain decimal",
        ),
        ("x-a: a\0b\r\n", "400", "control character"),
        ("x-a: a\rb\r\n", "400", "control character"),
        ("x-a : b\r\n", "400", "header name"),
        ("x(a): b\r\n", "400", "header name"),
        (" x-a: folded\r\n", "400", "header name"),
    ];
    let first = b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n";
    for (headers, status, words) in cases {
        let bad = format!("POST /p HTTP/1.1\r\nhost: x\r\n{headers}\r\nabc");
        let mut bytes = first.to_vec();
        bytes.extend_from_slice(bad.as_bytes());
        let (seen, answer) = through(vec![bytes], false).await;
        assert_eq!(seen, first, "{headers:?}");
        assert!(answer.starts_with(status), "{headers:?}: {answer}");
        assert!(answer.contains(words), "{headers:?}: {answer}");
    }
}

#[tokio::test]
async fn request_lines_hyper_would_refuse_and_fragments_are_answered() {
    for (line, words) in [
        ("POST /a#frag HTTP/1.1", "#fragment"),
        ("POST /a HTTP/1.2", "version"),
        ("POST /a HTTP/2.0", "version"),
        ("P(ST /a HTTP/1.1", "method"),
        ("POST /a\x7fb HTTP/1.1", "request target"),
        ("POST /a<b> HTTP/1.1", "not a valid URI"),
        ("CONNECT example.com:443 HTTP/1.1", "tunnels nothing"),
    ] {
        let bytes = format!("{line}\r\nhost: x\r\ncontent-length: 0\r\n\r\n");
        let (seen, answer) = through(vec![bytes.into_bytes()], false).await;
        assert!(seen.is_empty(), "{line}");
        assert!(
            answer.starts_with("400") && answer.contains(words),
            "{line}: {answer}"
        );
    }
    let te10 = b"POST /a HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".to_vec();
    assert!(through(vec![te10], false).await.1.contains("HTTP/1.0"));
}

#[tokio::test]
async fn too_many_or_too_long_headers_are_431() {
    let mut many = String::from("GET / HTTP/1.1\r\n");
    for i in 0..=MAX_HEADERS {
        many.push_str(&format!("x-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (seen, answer) = through(vec![many.into_bytes()], false).await;
    assert!(seen.is_empty());
    assert!(
        answer.starts_with("431") && answer.contains("100 header fields"),
        "{answer}"
    );
    // One endless header line, in small reads: refused once over the limit, not read on.
    let mut reads = vec![b"GET / HTTP/1.1\r\nx-long: ".to_vec()];
    reads.extend(std::iter::repeat_n(vec![b'a'; 1000], 200));
    let (seen, answer) = through(reads, false).await;
    assert!(seen.is_empty());
    assert!(answer.starts_with("431"), "{answer}");
    let long = format!(
        "GET / HTTP/1.1\r\nx-long: {}\r\n\r\n",
        "a".repeat(MAX_HEAD_BYTES)
    );
    assert!(through(vec![long.into_bytes()], false)
        .await
        .1
        .starts_with("431"));
}

#[tokio::test]
async fn http2_and_upgrades_pass_untouched() {
    let mut h2c = H2_PREFACE.to_vec();
    h2c.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00garbage\0\r\n");
    assert_eq!(
        through(split(&h2c, &[3, 10]), false).await,
        (h2c.clone(), String::new())
    );
    // After ALPN h2 nothing is an HTTP/1 head.
    let junk = b"\0\0\0 not http".to_vec();
    assert_eq!(
        through(vec![junk.clone()], true).await,
        (junk, String::new())
    );
    // After an upgrade request the stream is the upgraded protocol's.
    let up = b"GET /exec HTTP/1.1\r\nconnection: upgrade\r\nupgrade: SPDY/3.1\r\n\r\n\x01\x02 raw \0 bytes".to_vec();
    assert_eq!(through(vec![up.clone()], false).await, (up, String::new()));
}

#[tokio::test]
async fn a_head_cut_off_by_the_end_of_input_goes_to_hyper_as_it_is() {
    let cut = b"POST /a HTTP/1.1\r\nhost: x\r\n".to_vec();
    assert_eq!(
        through(vec![cut.clone()], false).await,
        (cut, String::new())
    );
}

fn arb_message() -> impl Strategy<Value = Vec<u8>> {
    let body = proptest::collection::vec(any::<u8>(), 0..40);
    let chunks = proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..20), 0..4);
    prop_oneof![
        body.prop_map(|b| {
            let mut m =
                format!("POST /x HTTP/1.1\r\ncontent-length: {}\r\n\r\n", b.len()).into_bytes();
            m.extend(b);
            m
        }),
        chunks.prop_map(|cs| {
            let mut m = b"POST /y HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            for c in cs {
                m.extend(format!("{:x}\r\n", c.len()).into_bytes());
                m.extend(c);
                m.extend(b"\r\n");
            }
            m.extend(b"0\r\n\r\n");
            m
        }),
        Just(b"GET /z HTTP/1.1\r\nhost: h\r\n\r\n".to_vec()),
    ]
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the reads, valid requests pass unchanged and nothing is refused.
    #[test]
    fn valid_streams_pass_unchanged(
        messages in proptest::collection::vec(arb_message(), 1..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let bytes: Vec<u8> = messages.concat();
        let (seen, answer) = run(through(split(&bytes, &cuts), false));
        prop_assert_eq!(seen, bytes);
        prop_assert_eq!(answer, "");
    }

    /// Any input: no panic, and hyper sees a prefix of what was sent, never other bytes.
    #[test]
    fn any_bytes_reach_hyper_as_a_prefix(
        head in proptest::collection::vec(any::<u8>(), 0..300),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut bytes = b"POST /a HTTP/1.1\r\n".to_vec();
        bytes.extend(head);
        let (seen, _) = run(through(split(&bytes, &cuts), false));
        prop_assert!(bytes.starts_with(&seen));
    }
}
