//! The HTTP/1 request head, judged before hyper reads it.
//!
//! hyper refuses a head it cannot parse (a bad byte, a `Transfer-Encoding` that is not
//! `chunked`, two `Content-Length`s that differ, too many or too long headers) with a bare
//! 400 or 431 and no body, so an agent cannot tell what was wrong. The gate sits between the
//! socket and hyper and holds each request head back until it has it whole. It parses it with
//! the parser hyper uses (httparse, same configuration), adds the framing rules seb keeps
//! stricter than hyper (one `Content-Length` of plain digits; `Transfer-Encoding` exactly
//! `chunked`, once, never beside a length, never in HTTP/1.0; no `#fragment`), and only then
//! lets hyper have it. A refused head never reaches hyper: hyper sees the end of input once
//! the responses in progress are done, and when it shuts the connection the gate writes the
//! refusal, rendered in the target's own format, then lingers (reading and discarding within
//! a bound) so that bytes the agent still sends do not turn the close into a reset that
//! overtakes the answer.
//!
//! To find the next head on a keep-alive connection the gate follows each body's framing.
//! Where it cannot (HTTP/2, an upgrade, a chunked body it cannot follow) it steps aside for
//! the rest of the connection and hyper alone reads what follows: hyper still refuses what
//! it cannot parse, only without a readable body. The gate never lets through anything hyper
//! would refuse, and never changes a byte it lets through.

use bytes::{Buf, BytesMut};
use http::StatusCode;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longer heads are refused with 431. hyper allows ~400 KiB; no API seb fronts needs more
/// than this, and the gate parses a held head again each time its end may have arrived.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// hyper's own limit on header fields; more is refused with 431.
pub const MAX_HEADERS: usize = 100;
/// After a refusal, at most this much of what the agent still sends is read and discarded.
const LINGER_BYTES: usize = 1 << 20;
/// How much is read at a time while a head is held.
const READ_CHUNK: usize = 8 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A request head the gate refuses, and what could be read of it.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
    /// The method, target and (when the head parsed) headers, for the error dialect: AWS
    /// clients are answered in XML or JSON by what they sent.
    pub parts: Option<http::request::Parts>,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
            parts: None,
        }
    }
}

/// Renders a refusal as the bytes of a complete HTTP/1.1 response that closes the connection.
pub type Render = Arc<dyn Fn(Refusal) -> Vec<u8> + Send + Sync>;

/// Whether the responses to the first `heads` requests of the connection have all been sent.
/// When not, `waker` is woken once they have: a refused head is answered only after the
/// responses before it. (Counted by requests, not by "none in progress": hyper calls the
/// service some time after it read the head.)
pub trait Quiet: Send + Sync {
    fn quiet(&self, heads: u64, waker: &Waker) -> bool;
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// The next bytes are a request head.
    Head,
    /// This many bytes of a body remain.
    Length(u64),
    Chunked(Chunk),
    /// Not followed any more: everything goes to hyper as it comes.
    Aside,
    /// A head was refused: hyper gets nothing more.
    Refused,
}

/// Where in a chunked body (RFC 9112 section 7.1) the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// Hex digits of a chunk size; `digits` read so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size, before `;` or the line end.
    SizeSpace {
        size: u64,
    },
    /// A chunk extension, up to the line end.
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// The start of a trailer line, or of the final empty line.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
}

pub struct Gate<S> {
    inner: S,
    framing: Framing,
    /// Bytes read from the socket and not yet given to hyper.
    held: BytesMut,
    /// How many of `held` (from its start) hyper may have.
    ready: usize,
    /// Nothing has been judged yet: the bytes may be HTTP/2's preface.
    first: bool,
    /// Request heads approved so far.
    heads: u64,
    render: Render,
    quiet: Arc<dyn Quiet>,
    /// The refusal's bytes, and how many of them are written.
    answer: Option<(Vec<u8>, usize)>,
    answer_shut: bool,
    lingered: usize,
}

impl<S> Gate<S> {
    /// `h2`: the connection speaks HTTP/2 (ALPN), so there are no HTTP/1 heads to judge.
    pub fn new(inner: S, h2: bool, render: Render, quiet: Arc<dyn Quiet>) -> Gate<S> {
        Gate {
            inner,
            framing: if h2 { Framing::Aside } else { Framing::Head },
            held: BytesMut::new(),
            ready: 0,
            first: true,
            heads: 0,
            render,
            quiet,
            answer: None,
            answer_shut: false,
            lingered: 0,
        }
    }

    /// Approves as much of the held bytes as the framing and the judged heads allow.
    fn advance(&mut self) {
        loop {
            let rest = &self.held[self.ready..];
            if rest.is_empty() {
                return;
            }
            match self.framing {
                Framing::Refused => return,
                Framing::Head => match judge(rest, self.first) {
                    Verdict::More => return,
                    Verdict::Preface => {
                        self.framing = Framing::Aside;
                        self.ready = self.held.len();
                    }
                    Verdict::Refuse(refusal) => return self.refuse(*refusal),
                    Verdict::Head { len, next } => {
                        self.first = false;
                        self.heads += 1;
                        self.ready += len;
                        self.framing = next;
                    }
                },
                _ => {
                    let used = follow(&mut self.framing, rest);
                    self.ready += used;
                }
            }
        }
    }

    fn refuse(&mut self, refusal: Refusal) {
        self.framing = Framing::Refused;
        // What was approved before the refused head still goes to hyper.
        self.held.truncate(self.ready);
        self.answer = Some(((self.render)(refusal), 0));
    }

    /// Hands hyper what is approved; false when nothing is.
    fn deliver(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let n = self.ready.min(buf.remaining());
        if n == 0 {
            return false;
        }
        buf.put_slice(&self.held[..n]);
        self.held.advance(n);
        self.ready -= n;
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gate<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.deliver(buf) {
                return Poll::Ready(Ok(()));
            }
            match this.framing {
                // End of input for hyper, once the requests before the refused one are done.
                Framing::Refused => {
                    return if this.quiet.quiet(this.heads, cx.waker()) {
                        Poll::Ready(Ok(()))
                    } else {
                        Poll::Pending
                    };
                }
                Framing::Aside if this.held.is_empty() => {
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                // Inside a body with nothing held: read straight into hyper's buffer and hold
                // back only what follows the body's end.
                Framing::Length(_) | Framing::Chunked(_) if this.held.is_empty() => {
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                    let new = &buf.filled()[before..];
                    if new.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    let used = follow(&mut this.framing, new);
                    if used < new.len() {
                        this.held.extend_from_slice(&new[used..]);
                        buf.set_filled(before + used);
                        this.advance();
                    }
                    if buf.filled().len() > before {
                        return Poll::Ready(Ok(()));
                    }
                }
                _ => {
                    let start = this.held.len();
                    let mut scratch = [0u8; READ_CHUNK];
                    let mut rb = ReadBuf::new(&mut scratch);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                    let n = rb.filled().len();
                    if n == 0 {
                        // The agent stopped sending mid-head: hyper reads what there is and
                        // ends the connection as it would have.
                        this.framing = Framing::Aside;
                        this.ready = this.held.len();
                        if this.ready == 0 {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    this.held.extend_from_slice(rb.filled());
                    if this.framing == Framing::Head && !head_may_end(&this.held, start) {
                        if this.held.len() - this.ready > MAX_HEAD_BYTES {
                            this.refuse(too_large());
                        }
                        continue;
                    }
                    this.advance();
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Gate<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let Some((answer, written)) = &mut this.answer else {
            return Pin::new(&mut this.inner).poll_shutdown(cx);
        };
        while *written < answer.len() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        if !this.answer_shut {
            ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.answer_shut = true;
        }
        // Linger: an agent that is still sending would otherwise get a reset on close, and a
        // reset can discard the answer before the agent reads it.
        let mut scratch = [0u8; 4096];
        while this.lingered < LINGER_BYTES {
            let mut rb = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb)) {
                Ok(()) if !rb.filled().is_empty() => this.lingered += rb.filled().len(),
                _ => break,
            }
        }
        Poll::Ready(Ok(()))
    }
}

fn too_large() -> Refusal {
    Refusal::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        format!("the request head is longer than {MAX_HEAD_BYTES} bytes"),
    )
}

/// Whether the bytes read from `start` on may complete a head: a line end followed by an
/// empty line. Parsing only then keeps a head sent a byte at a time from costing a parse
/// per byte.
fn head_may_end(held: &[u8], start: usize) -> bool {
    let from = start.saturating_sub(3);
    let window = &held[from..];
    memchr::memmem::find(window, b"\n\r\n").is_some()
        || memchr::memmem::find(window, b"\n\n").is_some()
}

enum Verdict {
    More,
    Preface,
    Refuse(Box<Refusal>),
    Head { len: usize, next: Framing },
}

fn judge(bytes: &[u8], first: bool) -> Verdict {
    if first {
        let n = bytes.len().min(H2_PREFACE.len());
        if bytes[..n] == H2_PREFACE[..n] {
            return if n == H2_PREFACE.len() {
                Verdict::Preface
            } else {
                Verdict::More
            };
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Partial) if bytes.len() > MAX_HEAD_BYTES => {
            return Verdict::Refuse(Box::new(too_large()))
        }
        Ok(httparse::Status::Partial) => return Verdict::More,
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => {
            return Verdict::Refuse(Box::new(too_large()))
        }
        Ok(httparse::Status::Complete(len)) => len,
        Err(e) => {
            let (status, what) = unreadable(e, &req);
            let mut refusal = Refusal::new(
                status,
                format!("the request head is not valid HTTP/1.1: {what}"),
            );
            refusal.parts = line_parts(&req);
            return Verdict::Refuse(Box::new(refusal));
        }
    };
    match framing(&req) {
        Ok(next) => Verdict::Head { len, next },
        Err(message) => {
            let mut refusal = Refusal::new(StatusCode::BAD_REQUEST, message);
            refusal.parts = head_parts(&req);
            Verdict::Refuse(Box::new(refusal))
        }
    }
}

fn unreadable(e: httparse::Error, req: &httparse::Request) -> (StatusCode, &'static str) {
    use httparse::Error as E;
    let what = match e {
        E::TooManyHeaders => {
            return (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "more than 100 header fields",
            )
        }
        E::HeaderName => {
            "a header name holds a character that is not allowed there (or space before the colon)"
        }
        E::HeaderValue => "a header value holds a control character (NUL, CR, ...)",
        E::NewLine => "a line does not end in CRLF",
        E::Version => "the version is not HTTP/1.0 or HTTP/1.1",
        E::Token if req.method.is_none() => "the method is not a token",
        E::Token => "the request target holds a character that is not allowed there",
        E::Status => "the request line is malformed",
    };
    (StatusCode::BAD_REQUEST, what)
}

/// The body's framing after a complete head, or why seb will not guess it.
fn framing(req: &httparse::Request) -> Result<Framing, String> {
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    if http::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(format!("the method {method:?} is not valid"));
    }
    if target.contains('#') {
        return Err("the request target carries a #fragment; a fragment is never sent to a server, so seb will not guess what was meant".into());
    }
    if target.parse::<http::Uri>().is_err() {
        return Err(format!("the request target {target:?} is not a valid URI"));
    }
    let http10 = req.version == Some(0);
    let (mut length, mut chunked, mut upgrade) = (None, false, method == "CONNECT");
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err("more than one Content-Length header".into());
            }
            length = Some(plain_length(h.value)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked {
                return Err("more than one Transfer-Encoding header".into());
            }
            if !h.value.eq_ignore_ascii_case(b"chunked") {
                return Err(format!(
                    "Transfer-Encoding {:?} is not `chunked`; seb reads no other transfer coding",
                    String::from_utf8_lossy(h.value)
                ));
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            // hyper upgrades HTTP/1.1 only.
            upgrade |= !http10;
        }
    }
    if chunked && length.is_some() {
        return Err(
            "both Transfer-Encoding and Content-Length: the body's length is ambiguous".into(),
        );
    }
    if chunked && http10 {
        return Err("Transfer-Encoding in an HTTP/1.0 request".into());
    }
    Ok(if upgrade {
        Framing::Aside
    } else if chunked {
        Framing::Chunked(Chunk::Size { size: 0, digits: 0 })
    } else {
        match length.unwrap_or(0) {
            0 => Framing::Head,
            n => Framing::Length(n),
        }
    })
}

fn plain_length(value: &[u8]) -> Result<u64, String> {
    let bad = || {
        format!(
            "Content-Length {:?} is not a plain decimal number of bytes",
            String::from_utf8_lossy(value)
        )
    };
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)
}

/// Consumes the body bytes at the start of `bytes` under `framing`, returning how many there
/// were; when the body ends there, `framing` becomes `Head`.
fn follow(framing: &mut Framing, bytes: &[u8]) -> usize {
    match framing {
        Framing::Length(n) => {
            let k = (*n).min(bytes.len() as u64);
            *n -= k;
            if *n == 0 {
                *framing = Framing::Head;
            }
            k as usize
        }
        Framing::Chunked(state) => {
            let mut state = *state;
            let mut i = 0;
            while i < bytes.len() {
                match step(state, &bytes[i..]) {
                    Step::To(next, used) => {
                        state = next;
                        i += used;
                    }
                    Step::Done => {
                        *framing = Framing::Head;
                        return i + 1;
                    }
                    Step::Lost => {
                        // Not a chunked body seb can follow; hyper refuses it itself.
                        *framing = Framing::Aside;
                        return bytes.len();
                    }
                }
            }
            *framing = Framing::Chunked(state);
            i
        }
        Framing::Aside => bytes.len(),
        Framing::Head | Framing::Refused => 0,
    }
}

enum Step {
    /// The next state, and how many bytes the step took.
    To(Chunk, usize),
    /// The body's last byte.
    Done,
    /// The bytes are not a chunked body.
    Lost,
}

/// One step of a chunked body over `bytes` (never empty).
fn step(state: Chunk, bytes: &[u8]) -> Step {
    let b = bytes[0];
    let next = match state {
        Chunk::Size { size, digits } => match b {
            b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                if digits >= 15 {
                    return Step::Lost;
                }
                let Some(d) = (b as char).to_digit(16) else {
                    return Step::Lost;
                };
                let d = d as u64;
                Chunk::Size {
                    size: size * 16 + d,
                    digits: digits + 1,
                }
            }
            _ if digits == 0 => return Step::Lost,
            b' ' | b'\t' => Chunk::SizeSpace { size },
            b';' => Chunk::Extension { size },
            b'\r' => Chunk::SizeLf { size },
            _ => return Step::Lost,
        },
        Chunk::SizeSpace { size } => match b {
            b' ' | b'\t' => Chunk::SizeSpace { size },
            b';' => Chunk::Extension { size },
            b'\r' => Chunk::SizeLf { size },
            _ => return Step::Lost,
        },
        Chunk::Extension { size } => match b {
            b'\r' => Chunk::SizeLf { size },
            b'\n' => return Step::Lost,
            _ => Chunk::Extension { size },
        },
        Chunk::SizeLf { size } => match b {
            b'\n' if size == 0 => Chunk::TrailerStart,
            b'\n' => Chunk::Data(size),
            _ => return Step::Lost,
        },
        Chunk::Data(n) => {
            let k = n.min(bytes.len() as u64);
            let rest = n - k;
            let next = if rest == 0 {
                Chunk::DataCr
            } else {
                Chunk::Data(rest)
            };
            return Step::To(next, k as usize);
        }
        Chunk::DataCr => match b {
            b'\r' => Chunk::DataLf,
            _ => return Step::Lost,
        },
        Chunk::DataLf => match b {
            b'\n' => Chunk::Size { size: 0, digits: 0 },
            _ => return Step::Lost,
        },
        Chunk::TrailerStart => match b {
            b'\r' => Chunk::EndLf,
            _ => Chunk::Trailer,
        },
        Chunk::Trailer => match b {
            b'\r' => Chunk::TrailerLf,
            _ => Chunk::Trailer,
        },
        Chunk::TrailerLf => match b {
            b'\n' => Chunk::TrailerStart,
            _ => return Step::Lost,
        },
        Chunk::EndLf => match b {
            b'\n' => return Step::Done,
            _ => return Step::Lost,
        },
    };
    Step::To(next, 1)
}

/// Method and target only: the head did not parse, so its headers are not to be trusted.
fn line_parts(req: &httparse::Request) -> Option<http::request::Parts> {
    let mut b = http::Request::builder();
    if let Some(m) = req.method {
        b = b.method(m);
    }
    if let Some(p) = req.path {
        b = b.uri(p);
    }
    b.body(()).ok().map(|r| r.into_parts().0)
}

fn head_parts(req: &httparse::Request) -> Option<http::request::Parts> {
    let mut parts = line_parts(req)?;
    for h in req.headers.iter() {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) {
            parts.headers.append(name, value);
        }
    }
    Some(parts)
}

/// The bytes of a refusal response: status line, the renderer's headers, the body with its
/// length, and `Connection: close` (the gate closes after it).
pub fn serialize(resp: http::Response<crate::upstream::Body>) -> Vec<u8> {
    use http_body::Body as _;
    let (parts, mut body) = resp.into_parts();
    let mut content = Vec::new();
    // Refusal bodies are whole in memory: one poll yields every frame.
    let mut cx = Context::from_waker(Waker::noop());
    while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
        if let Ok(data) = frame.into_data() {
            content.extend_from_slice(&data);
        }
    }
    let status = parts.status;
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        if name == http::header::CONTENT_LENGTH || name == http::header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            content.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&content);
    out
}

#[cfg(test)]
mod tests {
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
}
