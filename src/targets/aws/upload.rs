//! S3 object uploads (PutObject, UploadPart) stream through the broker without being buffered.
//! The certificate binds the object by sha256, and two independent checks hold the upload to it:
//!
//! - the broker signs the upstream request with `x-amz-content-sha256` set to the certified
//!   hash, so S3 itself refuses a payload with any other hash;
//! - [`VerifiedUpload`] hashes the bytes as they pass and holds back the last piece until the
//!   stream has ended: on a mismatch (or a length other than declared) it fails the stream
//!   instead of sending that piece, so the upstream never receives a complete body at all.
//!
//! `aws-chunked` bodies (what SDKs send for unsigned or trailer-checksummed uploads) are
//! decoded on the fly; their chunk signatures and trailers are the agent's and are dropped.

use crate::denial::{Denial, Reason};
use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

type BoxError = crate::upstream::BoxError;

/// Longest chunk header or trailer line accepted (they carry a size and a signature).
const MAX_LINE: usize = 8 * 1024;

fn bad(msg: impl Into<String>) -> Denial {
    Denial::new(
        Reason::RequestMalformed,
        format!("aws-chunked body: {}", msg.into()),
    )
}

#[derive(Debug, PartialEq)]
enum State {
    /// Reading `SIZE[;chunk-signature=..]\r\n`.
    Header,
    /// This many data bytes of the current chunk are still to come.
    Data(u64),
    /// The CRLF after a chunk's data; how many of its bytes are still to come.
    DataEnd(u8),
    /// Trailer lines after the final chunk, up to an empty line.
    Trailer,
    Done,
}

/// Incremental `aws-chunked` decoder: feed it the raw bytes as they arrive.
#[derive(Debug)]
pub struct ChunkDecoder {
    state: State,
    line: BytesMut,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        ChunkDecoder {
            state: State::Header,
            line: BytesMut::new(),
        }
    }
}

impl ChunkDecoder {
    /// Decodes `input`, appending payload pieces to `out`.
    pub fn feed(&mut self, mut input: Bytes, out: &mut Vec<Bytes>) -> Result<(), Denial> {
        while input.has_remaining() {
            match self.state {
                State::Header | State::Trailer => {
                    let Some(pos) = input.iter().position(|b| *b == b'\n') else {
                        self.push_line(&input)?;
                        return Ok(());
                    };
                    self.push_line(&input[..=pos])?;
                    input.advance(pos + 1);
                    let line = std::mem::take(&mut self.line);
                    let text = line
                        .strip_suffix(b"\r\n")
                        .ok_or_else(|| bad("line does not end in CRLF"))?;
                    self.end_line(text)?;
                }
                State::Data(n) => {
                    let take = (n.min(input.len() as u64)) as usize;
                    out.push(input.split_to(take));
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd(2)
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd(k) => {
                    let expected = if k == 2 { b'\r' } else { b'\n' };
                    if input[0] != expected {
                        return Err(bad("chunk data is not followed by CRLF"));
                    }
                    input.advance(1);
                    self.state = if k == 2 {
                        State::DataEnd(1)
                    } else {
                        State::Header
                    };
                }
                State::Done => return Err(bad("data after the final chunk")),
            }
        }
        Ok(())
    }

    fn push_line(&mut self, part: &[u8]) -> Result<(), Denial> {
        if self.line.len() + part.len() > MAX_LINE {
            return Err(bad("chunk header or trailer line is too long"));
        }
        self.line.extend_from_slice(part);
        Ok(())
    }

    fn end_line(&mut self, text: &[u8]) -> Result<(), Denial> {
        match self.state {
            State::Header => {
                let text =
                    std::str::from_utf8(text).map_err(|_| bad("chunk header is not ASCII"))?;
                let size = text.split(';').next().unwrap_or("").trim();
                let size =
                    u64::from_str_radix(size, 16).map_err(|_| bad("chunk size is not hex"))?;
                self.state = if size == 0 {
                    State::Trailer
                } else {
                    State::Data(size)
                };
            }
            State::Trailer if text.is_empty() => self.state = State::Done,
            State::Trailer => {}
            _ => unreachable!("end_line runs only for header and trailer lines"),
        }
        Ok(())
    }

    pub fn finish(&self) -> Result<(), Denial> {
        if self.state == State::Done {
            Ok(())
        } else {
            Err(bad("the body ended before its final chunk"))
        }
    }
}

/// The agent's upload body on its way upstream: decoded, hashed, and cut off unless it is
/// exactly the certified payload.
pub struct VerifiedUpload<B> {
    inner: B,
    decoder: Option<ChunkDecoder>,
    hasher: Sha256,
    expected_sha256: String,
    declared_len: u64,
    seen_len: u64,
    /// Pieces ready to send; the last piece of the body is kept back until it is verified.
    ready: VecDeque<Bytes>,
    held: Option<Bytes>,
    ended: bool,
}

impl<B> VerifiedUpload<B> {
    pub fn new(inner: B, aws_chunked: bool, expected_sha256: &str, declared_len: u64) -> Self {
        VerifiedUpload {
            inner,
            decoder: aws_chunked.then(ChunkDecoder::default),
            hasher: Sha256::new(),
            expected_sha256: expected_sha256.to_string(),
            declared_len,
            seen_len: 0,
            ready: VecDeque::new(),
            held: None,
            ended: false,
        }
    }

    fn accept(&mut self, piece: Bytes) -> Result<(), Denial> {
        if piece.is_empty() {
            return Ok(());
        }
        self.seen_len += piece.len() as u64;
        if self.seen_len > self.declared_len {
            return Err(Denial::new(
                Reason::ContractMismatch,
                format!(
                    "the upload is longer than its declared {} bytes",
                    self.declared_len
                ),
            ));
        }
        self.hasher.update(&piece);
        if let Some(prev) = self.held.replace(piece) {
            self.ready.push_back(prev);
        }
        Ok(())
    }

    fn verify(&mut self) -> Result<(), Denial> {
        if let Some(d) = &self.decoder {
            d.finish()?;
        }
        let actual = hex::encode(self.hasher.clone().finalize());
        if self.seen_len != self.declared_len {
            return Err(Denial::new(
                Reason::ContractMismatch,
                format!(
                    "the upload is {} bytes, it declared {}",
                    self.seen_len, self.declared_len
                ),
            ));
        }
        if actual != self.expected_sha256 {
            return Err(Denial::new(
                Reason::ContractMismatch,
                format!(
                    "uploaded body sha256 is {actual}, the certificate allows {}; the upload was cut off before its last bytes",
                    self.expected_sha256
                ),
            ));
        }
        Ok(())
    }
}

impl<B> Body for VerifiedUpload<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(piece) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            if this.ended {
                return Poll::Ready(this.held.take().map(|p| Ok(Frame::data(p))));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers from the agent are dropped: its checksums are not the authority.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let mut pieces = Vec::new();
                    let result = match &mut this.decoder {
                        Some(d) => d.feed(data, &mut pieces),
                        None => {
                            pieces.push(data);
                            Ok(())
                        }
                    };
                    if let Err(e) =
                        result.and_then(|_| pieces.into_iter().try_for_each(|p| this.accept(p)))
                    {
                        this.held = None;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    this.ended = true;
                    if let Err(e) = this.verify() {
                        this.held = None;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.declared_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn stream(pieces: Vec<&'static [u8]>) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        StreamBody::new(futures_util::stream::iter(
            pieces
                .into_iter()
                .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p)))),
        ))
    }

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    async fn run(
        body: impl Body<Data = Bytes, Error = BoxError> + Unpin,
        chunked: bool,
        want: &[u8],
    ) -> (Vec<u8>, Option<String>) {
        let mut up = VerifiedUpload::new(body, chunked, &sha(want), want.len() as u64);
        let mut sent = Vec::new();
        while let Some(f) = up.frame().await {
            match f {
                Ok(f) => sent.extend_from_slice(&f.into_data().unwrap()),
                Err(e) => return (sent, Some(e.to_string())),
            }
        }
        (sent, None)
    }

    #[tokio::test]
    async fn the_certified_body_passes_whole() {
        let (sent, err) = run(
            stream(vec![b"hello ", b"wor", b"ld"]),
            false,
            b"hello world",
        )
        .await;
        assert_eq!((sent.as_slice(), err), (&b"hello world"[..], None));
    }

    #[tokio::test]
    async fn another_body_never_gets_its_last_piece_sent() {
        let (sent, err) = run(
            stream(vec![b"hello ", b"wor", b"lD"]),
            false,
            b"hello world",
        )
        .await;
        assert!(err.unwrap().contains("sha256"));
        assert_eq!(sent, b"hello wor", "the last piece was withheld");
        let (sent, err) = run(stream(vec![b"hello world", b"!"]), false, b"hello world").await;
        assert!(err.unwrap().contains("longer"));
        assert!(sent.len() < 11);
        let (_, err) = run(stream(vec![b"hello"]), false, b"hello world").await;
        assert!(err.unwrap().contains("declared"));
    }

    #[tokio::test]
    async fn aws_chunked_framing_is_decoded_across_any_split() {
        let raw: &[u8] = b"6;chunk-signature=aa\r\nhello \r\n5;chunk-signature=bb\r\nworld\r\n0;chunk-signature=cc\r\nx-amz-checksum-crc32:AAAA\r\n\r\n";
        for cut in 1..raw.len() {
            let (a, b) = raw.split_at(cut);
            let a: &'static [u8] = Box::leak(a.to_vec().into_boxed_slice());
            let b: &'static [u8] = Box::leak(b.to_vec().into_boxed_slice());
            let (sent, err) = run(stream(vec![a, b]), true, b"hello world").await;
            assert_eq!(
                (sent.as_slice(), err),
                (&b"hello world"[..], None),
                "cut at {cut}"
            );
        }
        let (_, err) = run(stream(vec![b"5\r\nhello\r\n"]), true, b"hello").await;
        assert!(err.unwrap().contains("final chunk"));
        let (_, err) = run(stream(vec![b"5\r\nhelloXY0\r\n\r\n"]), true, b"hello").await;
        assert!(err.unwrap().contains("CRLF"));
    }
}
