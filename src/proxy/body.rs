//! Reading a request body the broker checks: within the size limit, without trailers, and,
//! when it is too large, refused in a way the client can read.
//!
//! A server that answers before the client has sent its whole body and then closes the
//! connection makes the kernel reset it (unread data in the receive buffer), and the reset
//! often reaches the client before the answer does: curl prints `000`, SDKs report a broken
//! pipe. So a declared length over the limit is refused before anything is read (an
//! `Expect: 100-continue` client then never sends the body), and a body that grows over the
//! limit is read to its end and discarded, within a bound, before the refusal is sent.

use crate::denial::{Denial, Reason};
use crate::upstream::BoxError;
use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::Instant;

/// How much of an over-limit body is read and discarded so the refusal can be delivered;
/// past this (or [`DRAIN_TIME`]) the connection is closed and the client may see a reset.
const DRAIN_BYTES: u64 = 64 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

fn too_large(limit: usize) -> Denial {
    Denial::new(
        Reason::RequestMalformed,
        format!("request body is over the {limit}-byte limit"),
    )
    .with_status(http::StatusCode::PAYLOAD_TOO_LARGE)
}

fn late() -> Denial {
    Denial::new(
        Reason::RequestMalformed,
        "request body was not received in time",
    )
}

/// The whole body, at most `limit` bytes, received by `deadline`. `expects_continue`: the
/// client waits for `100 Continue` before it sends the body.
pub async fn read_limited<B>(
    body: B,
    limit: usize,
    deadline: Instant,
    expects_continue: bool,
) -> Result<Bytes, Denial>
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    if body.size_hint().lower() > limit as u64 {
        // A client that waits for 100 Continue has sent nothing and never will; one that did
        // not ask is already sending, and must be let finish to read the answer.
        if !expects_continue {
            drain(body.as_mut(), deadline).await;
        }
        return Err(too_large(limit));
    }
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(late()),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => {
                let e: BoxError = e.into();
                return Err(Denial::new(
                    Reason::RequestMalformed,
                    format!("request body could not be read: {e}"),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                if buf.len() + data.len() > limit {
                    drain(body.as_mut(), deadline).await;
                    return Err(too_large(limit));
                }
                buf.extend_from_slice(&data);
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    crate::targets::headers::check_trailers(Some(&trailers))?;
                }
            }
        }
    }
}

/// Reads and discards the rest of a refused body, within [`DRAIN_BYTES`] and [`DRAIN_TIME`].
async fn drain<B>(mut body: std::pin::Pin<&mut B>, deadline: Instant)
where
    B: Body<Data = Bytes>,
{
    let until = deadline.min(Instant::now() + DRAIN_TIME);
    let mut drained: u64 = 0;
    while drained <= DRAIN_BYTES {
        match tokio::time::timeout_at(until, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                drained += frame.data_ref().map(|d| d.len() as u64).unwrap_or(0);
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn soon() -> Instant {
        Instant::now() + std::time::Duration::from_secs(5)
    }

    type Frames = std::vec::IntoIter<Result<http_body::Frame<Bytes>, std::convert::Infallible>>;

    fn frames(
        parts: Vec<http_body::Frame<Bytes>>,
    ) -> StreamBody<futures_util::stream::Iter<Frames>> {
        StreamBody::new(futures_util::stream::iter(
            parts.into_iter().map(Ok).collect::<Vec<_>>(),
        ))
    }

    #[tokio::test]
    async fn reads_within_the_limit() {
        let b = read_limited(Full::new(Bytes::from_static(b"abc")), 3, soon(), false)
            .await
            .unwrap();
        assert_eq!(&b[..], b"abc");
        let b = read_limited(
            frames(vec![
                http_body::Frame::data(Bytes::from_static(b"ab")),
                http_body::Frame::data(Bytes::from_static(b"c")),
            ]),
            3,
            soon(),
            false,
        )
        .await
        .unwrap();
        assert_eq!(&b[..], b"abc");
    }

    #[tokio::test]
    async fn over_the_limit_is_413_declared_or_not() {
        let e = read_limited(Full::new(Bytes::from_static(b"abcd")), 3, soon(), false)
            .await
            .unwrap_err();
        assert_eq!(
            e.status(crate::denial::Family::Http),
            http::StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(e.reason, Reason::RequestMalformed);
        let e = read_limited(
            frames(vec![
                http_body::Frame::data(Bytes::from_static(b"ab")),
                http_body::Frame::data(Bytes::from_static(b"cd")),
                http_body::Frame::data(Bytes::from_static(b"ef")),
            ]),
            3,
            soon(),
            false,
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.status(crate::denial::Family::Http),
            http::StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[tokio::test]
    async fn trailers_are_refused() {
        let mut t = http::HeaderMap::new();
        t.insert("x-checksum", http::HeaderValue::from_static("1"));
        let e = read_limited(
            frames(vec![
                http_body::Frame::data(Bytes::from_static(b"{}")),
                http_body::Frame::trailers(t),
            ]),
            100,
            soon(),
            false,
        )
        .await
        .unwrap_err();
        assert!(e.message.contains("x-checksum"), "{}", e.message);
    }
}
