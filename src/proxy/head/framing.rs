//! Following a request body's framing (a length, or RFC 9112 chunks) to find where the next
//! request head begins. Where the bytes are not a body the gate can follow, it steps aside.

use super::*;

/// Where in a chunked body (RFC 9112 section 7.1) the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Chunk {
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

/// Consumes the body bytes at the start of `bytes` under `framing`, returning how many there
/// were; when the body ends there, `framing` becomes `Head`.
pub(super) fn follow(framing: &mut Framing, bytes: &[u8]) -> usize {
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

pub(super) enum Step {
    /// The next state, and how many bytes the step took.
    To(Chunk, usize),
    /// The body's last byte.
    Done,
    /// The bytes are not a chunked body.
    Lost,
}

/// One step of a chunked body over `bytes` (never empty).
pub(super) fn step(state: Chunk, bytes: &[u8]) -> Step {
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
