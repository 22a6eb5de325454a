//! The connection's outbound side: one ordered, bounded queue shared by the session actor
//! (which fills it) and the HTTP response body (which drains it).
//!
//! Both live on the same worker thread (the actor is started by the upgrade handler on
//! that worker's arbiter, and the same worker's dispatcher polls the body), so the queue is
//! an `Rc<RefCell<..>>` with a waker: no channel, no extra task, and every frame that is
//! ready when the dispatcher polls goes out in one buffer — one socket write for a burst.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How long the body may go unpolled, with frames waiting, before a full queue counts as
/// a slow consumer (a burst on a reading connection is not).
const STALL_GRACE: Duration = Duration::from_millis(250);
/// Hard bound on the queue, in multiples of `max`, whatever the grace.
const HARD_FACTOR: usize = 64;
/// Hard bound on the queued bytes, in multiples of the byte limit, whatever the grace.
const BYTES_HARD_FACTOR: usize = 4;
/// The most encoded bytes handed to the connection per poll.
const MAX_CHUNK: usize = 8 * 1024;

use actix_codec::Encoder;
use actix_http::ws::{CloseReason, Codec, Message};
use actix_web::body::{BodySize, BoxBody, MessageBody};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

/// A frame waiting to go out.
#[derive(Debug)]
pub(crate) enum Frame {
    Text(ByteString),
    Ping(Bytes),
    Pong(Bytes),
    Close(Option<CloseReason>),
}

impl Frame {
    fn size(&self) -> usize {
        match self {
            Frame::Text(t) => t.len(),
            Frame::Ping(b) | Frame::Pong(b) => b.len(),
            Frame::Close(_) => 0,
        }
    }
}

/// How much one client may have waiting before it counts as too slow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    /// Frames (`server.max_queue`).
    pub frames: usize,
    /// Bytes queued before a frame is added (`server.max_queue_bytes`): one frame of any
    /// size joins a queue under it, so a large replay is never refused on its own.
    pub bytes: usize,
    /// Age of the oldest frame still waiting (`server.max_lag_ms`).
    pub lag: Duration,
}

/// How far behind a client was when it was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behind {
    Frames(usize),
    Bytes(usize),
    Lag(Duration),
}

impl Behind {
    /// With the limit it went past, for the reason a client is told.
    pub(crate) fn describe(self, limits: &QueueLimits) -> String {
        match self {
            Behind::Frames(_) => format!("{self} (limit {})", limits.frames),
            Behind::Bytes(_) => format!("{self} (limit {})", limits.bytes),
            Behind::Lag(_) => format!("{self} (limit {} ms)", limits.lag.as_millis()),
        }
    }
}

impl std::fmt::Display for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Behind::Frames(n) => write!(f, "{n} messages queued"),
            Behind::Bytes(n) => write!(f, "{n} bytes queued"),
            Behind::Lag(d) => write!(f, "{} ms behind", d.as_millis()),
        }
    }
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The client is not keeping up.
    Full(Behind),
    /// The connection is closing or gone.
    Closed,
}

struct Inner {
    /// Last time the response body asked for frames.
    last_poll: Instant,
    /// Each frame with when it was queued.
    queue: VecDeque<(Instant, Frame)>,
    /// Bytes of payload queued.
    bytes: usize,
    waker: Option<Waker>,
    /// A close frame is queued (or the actor is gone): end the body after the queue.
    closing: bool,
    /// Drop the connection now, without flushing (slow consumer, dead peer).
    aborted: bool,
    /// The body was dropped: the connection is gone.
    body_gone: bool,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            last_poll: Instant::now(),
            queue: VecDeque::new(),
            bytes: 0,
            waker: None,
            closing: false,
            aborted: false,
            body_gone: false,
        }
    }
}

/// The actor's handle on the queue.
pub(crate) struct Outbox {
    inner: Rc<RefCell<Inner>>,
    limits: QueueLimits,
}

/// Drops the connection later, if it has not ended by then (see [`Outbox::cut`]).
pub(crate) struct AbortLater(Rc<RefCell<Inner>>);

impl AbortLater {
    pub(crate) fn abort(&self) {
        abort(&mut self.0.borrow_mut());
    }
}

fn abort(inner: &mut Inner) {
    inner.aborted = true;
    inner.queue.clear();
    inner.bytes = 0;
    if let Some(w) = inner.waker.take() {
        w.wake();
    }
}

impl Outbox {
    /// A queue of at most `max` frames, and the response body that drains it. `keep`
    /// is actix-ws's own response body: it is held (never polled) so that actix-ws's
    /// incoming stream learns the connection ended exactly when this body is dropped.
    pub(crate) fn new(limits: QueueLimits, keep: BoxBody) -> (Outbox, OutboundBody) {
        let inner = Rc::new(RefCell::new(Inner::default()));
        (
            Outbox {
                inner: inner.clone(),
                limits: QueueLimits {
                    frames: limits.frames.max(1),
                    ..limits
                },
            },
            OutboundBody {
                inner,
                codec: Codec::new(),
                buf: BytesMut::with_capacity(8 * 1024),
                _keep: keep,
                done: false,
            },
        )
    }

    /// Queues a frame.
    pub(crate) fn push(&self, frame: Frame) -> Result<(), PushError> {
        self.push_at(frame, Instant::now())
    }

    /// Queues a frame at `now` (read once by the caller for a batch of frames).
    pub(crate) fn push_at(&self, frame: Frame, now: Instant) -> Result<(), PushError> {
        let mut inner = self.inner.borrow_mut();
        if inner.closing || inner.aborted || inner.body_gone {
            return Err(PushError::Closed);
        }
        if inner.waker.is_some() {
            // The body is parked waiting for frames: the connection is keeping up.
            inner.last_poll = now;
        }
        if let Some((queued, _)) = inner.queue.front() {
            let lag = now.saturating_duration_since(*queued);
            if lag > self.limits.lag {
                return Err(PushError::Full(Behind::Lag(lag)));
            }
        }
        let stalled = now.saturating_duration_since(inner.last_poll) >= STALL_GRACE;
        if inner.bytes > self.limits.bytes
            && (stalled || inner.bytes > self.limits.bytes.saturating_mul(BYTES_HARD_FACTOR))
        {
            return Err(PushError::Full(Behind::Bytes(inner.bytes)));
        }
        let max = self.limits.frames;
        if inner.queue.len() >= max
            && (stalled || inner.queue.len() >= max.saturating_mul(HARD_FACTOR))
        {
            return Err(PushError::Full(Behind::Frames(inner.queue.len())));
        }
        let closing = matches!(frame, Frame::Close(_));
        inner.bytes += frame.size();
        inner.queue.push_back((now, frame));
        inner.closing |= closing;
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
        Ok(())
    }

    /// Queues a close frame (after everything queued so far) and ends the stream.
    pub(crate) fn close(&self, reason: Option<CloseReason>) {
        let mut inner = self.inner.borrow_mut();
        if inner.closing || inner.aborted {
            return;
        }
        // A close frame goes out even when the queue is at its bound.
        inner
            .queue
            .push_back((Instant::now(), Frame::Close(reason)));
        inner.closing = true;
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
    }

    pub(crate) fn limits(&self) -> &QueueLimits {
        &self.limits
    }

    /// Drops the connection without flushing what is queued.
    pub(crate) fn abort(&self) {
        abort(&mut self.inner.borrow_mut());
    }

    /// Cuts a client that fell behind: what is queued is dropped and only a close frame
    /// saying why is left, to go out when the client reads again (then it can resume).
    /// Returns the handle to drop the connection with if it never does.
    pub(crate) fn cut(&self, reason: CloseReason) -> AbortLater {
        let mut inner = self.inner.borrow_mut();
        inner.queue.clear();
        inner.bytes = 0;
        inner
            .queue
            .push_back((Instant::now(), Frame::Close(Some(reason))));
        inner.closing = true;
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
        AbortLater(self.inner.clone())
    }

    /// Frames waiting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.borrow().queue.len()
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // The actor is gone: whatever is queued still goes out, then the body ends.
        let mut inner = self.inner.borrow_mut();
        inner.closing = true;
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
    }
}

/// The WebSocket response body: encodes queued frames, as many as are ready per poll.
pub struct OutboundBody {
    inner: Rc<RefCell<Inner>>,
    codec: Codec,
    buf: BytesMut,
    _keep: BoxBody,
    done: bool,
}

impl MessageBody for OutboundBody {
    type Error = actix_http::ws::ProtocolError;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut inner = this.inner.borrow_mut();
        inner.last_poll = Instant::now();
        if inner.aborted {
            this.done = true;
            return Poll::Ready(None);
        }
        let mut end = false;
        // At most one chunk's worth per poll: what the socket has not taken yet stays in
        // the queue, as shared event bytes counted by its limits, instead of as an
        // encoded copy growing in the connection's write buffer.
        while this.buf.len() < MAX_CHUNK {
            let Some((_, frame)) = inner.queue.pop_front() else {
                break;
            };
            inner.bytes -= frame.size();
            let msg = match frame {
                Frame::Text(t) => Message::Text(t),
                Frame::Ping(p) => Message::Ping(p),
                Frame::Pong(p) => Message::Pong(p),
                Frame::Close(reason) => {
                    end = true;
                    Message::Close(reason.map(truncate_reason))
                }
            };
            if let Err(e) = this.codec.encode(msg, &mut this.buf) {
                this.done = true;
                return Poll::Ready(Some(Err(e)));
            }
            if end {
                inner.queue.clear();
                inner.bytes = 0;
                break;
            }
        }
        if end || (inner.closing && inner.queue.is_empty()) {
            this.done = true;
        }
        if !this.buf.is_empty() {
            return Poll::Ready(Some(Ok(this.buf.split().freeze())));
        }
        if this.done {
            return Poll::Ready(None);
        }
        match &inner.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inner.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for OutboundBody {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.inner.try_borrow_mut() {
            inner.body_gone = true;
            inner.queue.clear();
        }
    }
}

/// RFC 6455: a close frame's reason is at most 123 bytes.
fn truncate_reason(mut r: CloseReason) -> CloseReason {
    if let Some(d) = r.description.as_mut() {
        if d.len() > 123 {
            let mut end = 123;
            while !d.is_char_boundary(end) {
                end -= 1;
            }
            d.truncate(end);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn limits() -> QueueLimits {
        QueueLimits {
            frames: 3,
            bytes: 1 << 20,
            lag: Duration::from_secs(60),
        }
    }

    fn body() -> (Outbox, OutboundBody) {
        Outbox::new(limits(), BoxBody::new(()))
    }

    async fn next(b: &mut OutboundBody) -> Option<Bytes> {
        poll_fn(|cx| Pin::new(&mut *b).poll_next(cx))
            .await
            .map(|r| r.unwrap())
    }

    #[actix_rt::test]
    async fn frames_batch_in_order_and_bound_holds() {
        let (out, mut b) = body();
        out.push(Frame::Text("a".into())).unwrap();
        out.push(Frame::Text("b".into())).unwrap();
        out.push(Frame::Text("c".into())).unwrap();
        let bytes = next(&mut b).await.unwrap();
        // Three unmasked text frames: 0x81 len payload, in order, in one chunk.
        assert_eq!(&bytes[..], b"\x81\x01a\x81\x01b\x81\x01c");
        assert_eq!(out.len(), 0);
        // A burst past the bound on a connection that is reading is tolerated...
        for _ in 0..3 * HARD_FACTOR {
            out.push(Frame::Text("x".into())).unwrap();
        }
        // ...up to the hard bound.
        assert_eq!(
            out.push(Frame::Text("y".into())),
            Err(PushError::Full(Behind::Frames(3 * HARD_FACTOR)))
        );
    }

    #[actix_rt::test]
    async fn a_body_that_stops_polling_is_a_slow_consumer() {
        let (out, _b) = body();
        for _ in 0..3 {
            out.push(Frame::Text("a".into())).unwrap();
        }
        out.inner.borrow_mut().last_poll = Instant::now() - STALL_GRACE;
        assert_eq!(
            out.push(Frame::Text("d".into())),
            Err(PushError::Full(Behind::Frames(3)))
        );
    }

    #[actix_rt::test]
    async fn bytes_and_lag_bound_the_queue_too() {
        let (out, mut b) = Outbox::new(
            QueueLimits {
                frames: 1000,
                bytes: 30,
                lag: Duration::from_millis(50),
            },
            BoxBody::new(()),
        );
        // One frame of any size joins a queue under the byte bound...
        out.push(Frame::Text("x".repeat(100).into())).unwrap();
        // ...and the next one finds it over: allowed while the body keeps polling...
        out.push(Frame::Text("y".into())).unwrap();
        // ...not once it stalls.
        out.inner.borrow_mut().last_poll = Instant::now() - STALL_GRACE;
        assert_eq!(
            out.push(Frame::Text("y".into())),
            Err(PushError::Full(Behind::Bytes(101)))
        );
        let _ = next(&mut b).await.unwrap();
        out.push(Frame::Text("z".into())).unwrap();
        out.inner.borrow_mut().queue[0].0 = Instant::now() - Duration::from_millis(80);
        assert!(matches!(
            out.push(Frame::Text("w".into())),
            Err(PushError::Full(Behind::Lag(d))) if d >= Duration::from_millis(80)
        ));
    }

    #[actix_rt::test]
    async fn one_poll_hands_over_at_most_a_chunk() {
        let (out, mut b) = Outbox::new(
            QueueLimits {
                frames: 1000,
                bytes: 1 << 20,
                lag: Duration::from_secs(60),
            },
            BoxBody::new(()),
        );
        for _ in 0..40 {
            out.push(Frame::Text("x".repeat(4000).into())).unwrap();
        }
        let first = next(&mut b).await.unwrap();
        assert!(first.len() >= MAX_CHUNK && first.len() < MAX_CHUNK + 4100);
        assert_eq!(out.len(), 40 - first.len() / 4004);
        let mut total = first.len();
        while out.len() > 0 {
            total += next(&mut b).await.unwrap().len();
        }
        assert_eq!(total, 40 * 4004, "every frame, each 4 header bytes + 4000");
    }

    #[actix_rt::test]
    async fn a_cut_client_gets_only_the_close_frame() {
        let (out, mut b) = body();
        out.push(Frame::Text("x".into())).unwrap();
        let later = out.cut(CloseReason {
            code: actix_http::ws::CloseCode::Again,
            description: Some("behind".into()),
        });
        let bytes = next(&mut b).await.unwrap();
        assert_eq!(&bytes[..2], b"\x88\x08", "a close frame only: {bytes:?}");
        assert_eq!(&bytes[2..4], &1013u16.to_be_bytes());
        assert!(next(&mut b).await.is_none());
        later.abort();
    }

    #[actix_rt::test]
    async fn close_ends_after_queue_and_abort_drops() {
        let (out, mut b) = body();
        out.push(Frame::Text("x".into())).unwrap();
        out.close(None);
        assert_eq!(out.push(Frame::Text("y".into())), Err(PushError::Closed));
        let bytes = next(&mut b).await.unwrap();
        assert_eq!(&bytes[..], b"\x81\x01x\x88\x00");
        assert!(next(&mut b).await.is_none());

        let (out, mut b) = body();
        out.push(Frame::Text("x".into())).unwrap();
        out.abort();
        assert!(next(&mut b).await.is_none());
    }
}
