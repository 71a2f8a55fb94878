//! `aws-chunked` request bodies (S3 uploads signed chunk by chunk): the payload is read out of
//! its chunk framing, which must be exact.

use super::*;

/// Undoes `Content-Encoding: aws-chunked` framing (`SIZE[;chunk-signature=..]\r\nDATA\r\n`
/// ... `0\r\n` then optional trailers and `\r\n`). Chunk signatures are the agent's and are not
/// checked: the certificate binds the decoded payload by sha256 and the broker re-signs it.
pub fn decode_aws_chunked(raw: &[u8]) -> Result<Vec<u8>, Denial> {
    let bad = |m: &str| malformed(format!("aws-chunked body: {m}"));
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    loop {
        let line_end = find_crlf(raw, i).ok_or_else(|| bad("chunk header has no CRLF"))?;
        let header =
            std::str::from_utf8(&raw[i..line_end]).map_err(|_| bad("chunk header is not ASCII"))?;
        let size_hex = header.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad("chunk size is not hex"))?;
        i = line_end + 2;
        if size == 0 {
            // Trailers (checksums of the agent's choosing) until an empty line; dropped, since
            // the upstream verifies the broker's x-amz-content-sha256 instead.
            loop {
                let end = find_crlf(raw, i).ok_or_else(|| bad("trailer has no CRLF"))?;
                let empty = end == i;
                i = end + 2;
                if empty {
                    break;
                }
            }
            if i != raw.len() {
                return Err(bad("data after the final chunk"));
            }
            return Ok(out);
        }
        let data_end = i
            .checked_add(size)
            .filter(|e| *e + 2 <= raw.len())
            .ok_or_else(|| bad("chunk is shorter than its size"))?;
        out.extend_from_slice(&raw[i..data_end]);
        if &raw[data_end..data_end + 2] != b"\r\n" {
            return Err(bad("chunk data is not followed by CRLF"));
        }
        i = data_end + 2;
    }
}

fn find_crlf(b: &[u8], from: usize) -> Option<usize> {
    b.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| p + from)
}
