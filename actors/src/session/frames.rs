//! A look at every incoming frame's header as its bytes arrive, before actix-http's parser
//! buffers the payload (that parser checks its size limit only once the whole frame is in,
//! so a header declaring 1 GiB would be read into memory first). Between the socket and
//! actix-ws's `MessageStream`, this ends the stream at the first header that declares more
//! than the session's limit, at the fragment that takes a message over it, and at a frame
//! with a reserved bit set (no extension is negotiated, so RFC 6455 §5.2 says fail at once).
//! The session reads the verdict from [`FrameCheck`] and closes with 1009 or 1002.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;

/// Why the incoming stream was ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameViolation {
    /// One frame's header declared more than the limit.
    FrameTooLarge { declared: u64, limit: usize },
    /// The fragments of one message add up to more than the limit.
    MessageTooLarge { total: u64, limit: usize },
    /// RSV1–3 set with no extension negotiated.
    ReservedBits,
    /// A control frame that is fragmented or longer than 125 bytes.
    BadControlFrame,
}

impl FrameViolation {
    /// 1009 for sizes, 1002 for protocol errors.
    pub(crate) fn is_size(self) -> bool {
        matches!(
            self,
            FrameViolation::FrameTooLarge { .. } | FrameViolation::MessageTooLarge { .. }
        )
    }
}

impl std::fmt::Display for FrameViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameViolation::FrameTooLarge { declared, limit } => write!(
                f,
                "a frame declared {declared} bytes; the limit is {limit} bytes"
            ),
            FrameViolation::MessageTooLarge { total, limit } => write!(
                f,
                "a fragmented message reached {total} bytes; the limit is {limit} bytes"
            ),
            FrameViolation::ReservedBits => {
                f.write_str("a frame has reserved bits set (no extension was negotiated)")
            }
            FrameViolation::BadControlFrame => {
                f.write_str("a control frame is fragmented or longer than 125 bytes")
            }
        }
    }
}

/// The largest message a connection may send, before and after it authenticates.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameLimits {
    /// Until authenticated: `max_frame_bytes` (a stranger gets no more).
    pub before_auth: usize,
    /// Afterwards: 4x `max_frame_bytes`. Between the two a message is read and answered
    /// `too_large`, and the connection goes on; above it the connection is closed 1009.
    pub hard_cap: usize,
}

impl FrameLimits {
    pub(crate) fn new(s: &super::SessionSettings) -> FrameLimits {
        FrameLimits {
            before_auth: s.max_frame_bytes,
            hard_cap: s.max_frame_bytes.saturating_mul(4).max(1024),
        }
    }
}

/// The session's side: the limit it sets (it may change, e.g. after authentication) and
/// the verdict it reads when the stream ends with an error.
#[derive(Debug, Clone)]
pub(crate) struct FrameCheck(Rc<Shared>);

#[derive(Debug)]
struct Shared {
    limit: Cell<usize>,
    violation: Cell<Option<FrameViolation>>,
}

impl FrameCheck {
    pub(crate) fn new(limit: usize) -> FrameCheck {
        FrameCheck(Rc::new(Shared {
            limit: Cell::new(limit),
            violation: Cell::new(None),
        }))
    }

    pub(crate) fn set_limit(&self, limit: usize) {
        self.0.limit.set(limit);
    }

    /// What ended the stream, if this check did.
    pub(crate) fn violation(&self) -> Option<FrameViolation> {
        self.0.violation.get()
    }

    /// Wraps the upgrade request's body.
    pub(crate) fn guard<S>(&self, inner: S) -> CheckedPayload<S> {
        CheckedPayload {
            inner,
            check: self.clone(),
            scan: Scanner::default(),
            failed: None,
            paused: false,
        }
    }
}

/// Where the scanner is in the byte stream.
#[derive(Debug)]
enum At {
    /// Collecting a header: the bytes so far.
    Header { buf: [u8; 14], have: usize },
    /// Inside a payload: bytes still to skip.
    Payload(u64),
}

#[derive(Debug)]
struct Scanner {
    at: At,
    /// Data bytes of the message being fragmented, when one is.
    message: Option<u64>,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            at: At::Header {
                buf: [0; 14],
                have: 0,
            },
            message: None,
        }
    }
}

impl Scanner {
    /// Reads `chunk`; on a violation, returns the offset of the offending frame's header
    /// (everything before it is whole frames the session may still read).
    fn feed(&mut self, chunk: &[u8], limit: usize) -> Result<(), (usize, FrameViolation)> {
        let mut i = 0;
        let mut header_start = 0;
        while i < chunk.len() {
            match &mut self.at {
                At::Payload(left) => {
                    let n = (*left).min((chunk.len() - i) as u64);
                    *left -= n;
                    i += n as usize;
                    if *left == 0 {
                        self.at = At::Header {
                            buf: [0; 14],
                            have: 0,
                        };
                    }
                }
                At::Header { buf, have } => {
                    if *have == 0 {
                        header_start = i;
                    }
                    buf[*have] = chunk[i];
                    *have += 1;
                    i += 1;
                    let Some(need) = header_len(&buf[..*have]) else {
                        continue;
                    };
                    if *have < need {
                        continue;
                    }
                    let (b0, len) = (buf[0], payload_len(&buf[..*have]));
                    let at_fail = |v| Err((header_start, v));
                    if b0 & 0x70 != 0 {
                        return at_fail(FrameViolation::ReservedBits);
                    }
                    let opcode = b0 & 0x0f;
                    let fin = b0 & 0x80 != 0;
                    if opcode >= 8 {
                        if len > 125 || !fin {
                            return at_fail(FrameViolation::BadControlFrame);
                        }
                    } else {
                        if len > limit as u64 {
                            return at_fail(FrameViolation::FrameTooLarge {
                                declared: len,
                                limit,
                            });
                        }
                        let total = match (opcode, self.message) {
                            (0, Some(so_far)) => so_far.saturating_add(len),
                            _ => len,
                        };
                        if total > limit as u64 {
                            return at_fail(FrameViolation::MessageTooLarge { total, limit });
                        }
                        self.message = (!fin).then_some(total);
                    }
                    self.at = if len == 0 {
                        At::Header {
                            buf: [0; 14],
                            have: 0,
                        }
                    } else {
                        At::Payload(len)
                    };
                }
            }
        }
        Ok(())
    }
}

/// The header's length once enough of it is known.
fn header_len(h: &[u8]) -> Option<usize> {
    if h.len() < 2 {
        return None;
    }
    let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
    Some(
        2 + mask
            + match h[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            },
    )
}

/// The declared payload length of a complete header.
fn payload_len(h: &[u8]) -> u64 {
    match h[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
        n => u64::from(n),
    }
}

/// The request body with every frame header checked as it goes by.
pub(crate) struct CheckedPayload<S> {
    inner: S,
    check: FrameCheck,
    scan: Scanner,
    /// Set once a violation was found: the bytes before it went out, the error is next.
    failed: Option<FrameViolation>,
    paused: bool,
}

impl<S> Stream for CheckedPayload<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.failed.is_none() {
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    match this.scan.feed(&chunk, this.check.0.limit.get()) {
                        Ok(()) => return Poll::Ready(Some(Ok(chunk))),
                        Err((at, v)) => {
                            this.failed = Some(v);
                            if at > 0 {
                                return Poll::Ready(Some(Ok(chunk.slice(..at))));
                            }
                        }
                    }
                }
                other => return other,
            }
        }
        let Some(v) = this.failed else {
            return Poll::Pending;
        };
        if !this.paused {
            // actix-ws reads every ready chunk before decoding any, and an error ends its
            // read at once: one pause lets it decode the whole frames sent before this one.
            this.paused = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.check.0.violation.set(Some(v));
        Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::other(
            v.to_string(),
        )))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame header.
    fn header(b0: u8, len: u64) -> Vec<u8> {
        let mut h = vec![b0];
        if len < 126 {
            h.push(0x80 | len as u8);
        } else if len <= u16::MAX as u64 {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            h.push(0x80 | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    fn frame(b0: u8, payload: usize) -> Vec<u8> {
        let mut f = header(b0, payload as u64);
        f.resize(f.len() + payload, b'x');
        f
    }

    #[test]
    fn whole_frames_pass_byte_by_byte_and_in_one_chunk() {
        let mut bytes = frame(0x81, 10);
        bytes.extend(frame(0x82, 300));
        bytes.extend(frame(0x89, 4));
        bytes.extend(frame(0x81, 70_000));
        let mut s = Scanner::default();
        assert_eq!(s.feed(&bytes, 100_000), Ok(()));
        let mut s = Scanner::default();
        for b in &bytes {
            assert_eq!(s.feed(std::slice::from_ref(b), 100_000), Ok(()));
        }
        assert!(matches!(s.at, At::Header { have: 0, .. }));
    }

    #[test]
    fn a_declared_length_over_the_limit_fails_at_its_header() {
        let mut bytes = frame(0x81, 10);
        let at = bytes.len();
        bytes.extend(header(0x81, 1 << 30));
        let mut s = Scanner::default();
        assert_eq!(
            s.feed(&bytes, 1024),
            Err((
                at,
                FrameViolation::FrameTooLarge {
                    declared: 1 << 30,
                    limit: 1024
                }
            ))
        );
    }

    #[test]
    fn fragments_count_toward_one_message() {
        let mut bytes = frame(0x01, 600); // text, not final
        bytes.extend(frame(0x89, 0)); // a ping between fragments is fine
        bytes.extend(frame(0x00, 300)); // continuation
        let at = bytes.len();
        bytes.extend(frame(0x80, 200)); // final continuation: 1100 > 1024
        let mut s = Scanner::default();
        assert_eq!(
            s.feed(&bytes, 1024),
            Err((
                at,
                FrameViolation::MessageTooLarge {
                    total: 1100,
                    limit: 1024
                }
            ))
        );
        // A finished message starts the count again.
        let mut bytes = frame(0x01, 600);
        bytes.extend(frame(0x80, 300));
        bytes.extend(frame(0x81, 900));
        assert_eq!(Scanner::default().feed(&bytes, 1024), Ok(()));
    }

    #[test]
    fn reserved_bits_and_bad_control_frames_fail() {
        let mut s = Scanner::default();
        assert_eq!(
            s.feed(&frame(0xC1, 5), 1024),
            Err((0, FrameViolation::ReservedBits))
        );
        let mut s = Scanner::default();
        assert_eq!(
            s.feed(&frame(0x89, 126), 1024),
            Err((0, FrameViolation::BadControlFrame))
        );
        let mut s = Scanner::default();
        assert_eq!(
            s.feed(&frame(0x09, 3), 1024),
            Err((0, FrameViolation::BadControlFrame))
        );
    }
}
