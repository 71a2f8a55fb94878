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
use framing::*;
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
                    // Straight into the held buffer's spare room: no scratch to zero and copy.
                    this.held.reserve(READ_CHUNK);
                    let n = ready!(tokio_util::io::poll_read_buf(
                        Pin::new(&mut this.inner),
                        cx,
                        &mut this.held
                    ))?;
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
    if method == "CONNECT" {
        // No target tunnels; hyper would hand the connection over on any 2xx answer.
        return Err("CONNECT: seb is not a forward proxy and tunnels nothing".into());
    }
    let (mut length, mut chunked, mut upgrade) = (None, false, false);
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

mod framing;
#[cfg(test)]
mod tests;
