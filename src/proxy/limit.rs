//! What one forwarded request may make credstore hold. [`Bounded`] is the request body as the
//! router reads it:
//! - a message over `credstore.upstream.maxMessageBytes` is refused as soon as the gRPC frame
//!   header announcing it arrives, before it is buffered (tonic's own check answers
//!   OUT_OF_RANGE; Milvus, like grpc-go, answers RESOURCE_EXHAUSTED, which is what pymilvus
//!   users see from Milvus for an oversized insert);
//! - the announced size is reserved, before the message is buffered, in two [`Budget`]s: the
//!   replica's (`maxInFlightBytes`) and its connection's (`maxInFlightBytesPerConnection`, a
//!   [`ConnectionBudget`] the server puts into every request of a connection); a message that
//!   does not fit is refused at once with RESOURCE_EXHAUSTED. The reservation is given back
//!   when the call ends ([`Held`]): the message is forwarded from memory until then;
//! - a body not complete within `bodyTimeoutMs` of the call's start is refused with
//!   DEADLINE_EXCEEDED, which frees what it held.
//!
//! The replica's budget shows what it holds and what it refused in the metrics.
//! Must not: buffer anything itself, or wait for room (a refusal is at once).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use prost::bytes::Bytes;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::codegen::http;

use crate::metrics::Metrics;
use crate::proxy::Upstream;

/// gRPC's frame header: a compression flag and a big-endian u32 length.
const HEADER_LEN: usize = 5;

/// Bytes of request messages held at once, at most `limit`. The replica's budget shows its
/// use and its refusals in the metrics.
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    metrics: OnceLock<Metrics>,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
            metrics: OnceLock::new(),
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok();
        if taken && let Some(metrics) = self.metrics.get() {
            metrics.body_bytes(bytes as i64);
        }
        taken
    }

    fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        if let Some(metrics) = self.metrics.get() {
            metrics.body_bytes(-(bytes as i64));
        }
    }

    fn refused(&self, reason: &'static str) {
        if let Some(metrics) = self.metrics.get() {
            metrics.body_refused(reason);
        }
    }
}

/// One connection's [`Budget`], in the extensions of each of its requests.
#[derive(Clone)]
pub struct ConnectionBudget(Arc<Budget>);

/// The body limits of the proxy tier, from `credstore.upstream`.
pub struct BodyLimits {
    max_message: usize,
    replica: Arc<Budget>,
    per_connection: usize,
    timeout: Duration,
}

impl BodyLimits {
    pub fn new(upstream: &Upstream) -> BodyLimits {
        BodyLimits {
            max_message: upstream.max_message_bytes,
            replica: Budget::new(upstream.max_in_flight_bytes),
            per_connection: upstream.max_in_flight_bytes_per_connection,
            timeout: upstream.body_timeout,
        }
    }

    /// A fresh budget for one connection.
    pub fn connection_budget(&self) -> ConnectionBudget {
        ConnectionBudget(Budget::new(self.per_connection))
    }

    /// The replica's budget (what is held now).
    pub fn replica(&self) -> &Budget {
        &self.replica
    }

    /// Shows the bytes held and the bodies refused in `metrics` from now on.
    pub fn observe(&self, metrics: Metrics) {
        let _ = self.replica.metrics.set(metrics);
    }

    /// `request` with its body bounded, and what holds the body's reservation: keep it until
    /// the call has ended.
    pub fn bound<B>(&self, request: http::Request<B>) -> (http::Request<Bounded<B>>, Held) {
        let connection = request
            .extensions()
            .get::<ConnectionBudget>()
            .map(|budget| budget.0.clone());
        let reservation = Arc::new(Reservation {
            replica: self.replica.clone(),
            connection,
            held: AtomicUsize::new(0),
        });
        let held = Held {
            _reservation: reservation.clone(),
        };
        let deadline = Instant::now() + self.timeout;
        let limits = Limits {
            max_message: self.max_message,
            timeout: self.timeout,
        };
        let request = request.map(|inner| Bounded::new(inner, limits, reservation, deadline));
        (request, held)
    }
}

/// Bytes reserved for one request in the replica's and its connection's budgets; given back
/// when the last holder ([`Bounded`], [`Held`]) is gone.
struct Reservation {
    replica: Arc<Budget>,
    connection: Option<Arc<Budget>>,
    held: AtomicUsize,
}

impl Reservation {
    /// Grows the reservation to `bytes`, or says which budget has no room.
    fn grow(&self, bytes: usize) -> Result<(), Status> {
        let held = self.held.load(Ordering::Acquire);
        let Some(more) = bytes.checked_sub(held).filter(|more| *more > 0) else {
            return Ok(());
        };
        if !self.replica.take(more) {
            self.replica.refused("replica_budget");
            return Err(Status::resource_exhausted(format!(
                "request bodies in flight on this replica would exceed {} bytes (credstore.upstream.maxInFlightBytes); retry later",
                self.replica.limit
            )));
        }
        if let Some(connection) = &self.connection
            && !connection.take(more)
        {
            self.replica.give(more);
            self.replica.refused("connection_budget");
            return Err(Status::resource_exhausted(format!(
                "request bodies in flight on this connection would exceed {} bytes (credstore.upstream.maxInFlightBytesPerConnection); retry later",
                connection.limit
            )));
        }
        self.held.store(bytes, Ordering::Release);
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let held = *self.held.get_mut();
        self.replica.give(held);
        if let Some(connection) = &self.connection {
            connection.give(held);
        }
    }
}

/// Keeps a request's reservation until dropped (when its call has ended).
pub struct Held {
    _reservation: Arc<Reservation>,
}

#[derive(Clone, Copy)]
struct Limits {
    max_message: usize,
    timeout: Duration,
}

/// A request body held to the limits of [`BodyLimits`].
pub struct Bounded<B> {
    inner: B,
    limits: Limits,
    reservation: Arc<Reservation>,
    /// When the body must be complete; the timer is made only once the body makes the
    /// reader wait (most bodies arrive with their headers).
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    header: [u8; HEADER_LEN],
    /// Data bytes seen so far (header included).
    seen: usize,
}

impl<B> Bounded<B> {
    fn new(
        inner: B,
        limits: Limits,
        reservation: Arc<Reservation>,
        deadline: Instant,
    ) -> Bounded<B> {
        Bounded {
            inner,
            limits,
            reservation,
            deadline,
            timer: None,
            header: [0; HEADER_LEN],
            seen: 0,
        }
    }

    /// Accounts for one data chunk; an error when the message is (or is announced) too big,
    /// or does not fit in the budgets.
    fn admit(&mut self, data: &[u8]) -> Result<(), Status> {
        let start = self.seen;
        let wanted = HEADER_LEN.saturating_sub(start);
        for (i, byte) in data.iter().take(wanted).enumerate() {
            self.header[start + i] = *byte;
        }
        self.seen = start.saturating_add(data.len());
        if self.seen < HEADER_LEN {
            return Ok(());
        }
        let h = &self.header;
        let announced = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        // A unary body holds one message: anything past the limit is refused too.
        let received = self.seen - HEADER_LEN;
        let size = announced.max(received);
        if size > self.limits.max_message {
            return Err(too_large(size, self.limits.max_message));
        }
        self.reservation.grow(size)
    }
}

/// Milvus's (grpc-go's) answer to an oversized message.
pub fn too_large(size: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "grpc: received message larger than max ({size} vs. {limit})"
    ))
}

fn body_timeout(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "request body not complete within {} ms (credstore.upstream.bodyTimeoutMs)",
        timeout.as_millis()
    ))
}

impl<B> Body for Bounded<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let Poll::Ready(frame) = polled else {
            let deadline = this.deadline;
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            ready!(timer.as_mut().poll(cx));
            this.reservation.replica.refused("timeout");
            return Poll::Ready(Some(Err(body_timeout(this.limits.timeout))));
        };
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref()
                    && let Err(status) = this.admit(data)
                {
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Status::from_error(e.into())))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend_from_slice(&len.to_be_bytes());
        v
    }

    fn upstream(max_message: usize, replica: usize, per_connection: usize) -> Upstream {
        Upstream {
            uri: String::new(),
            token: crate::password::Secret::default(),
            max_message_bytes: max_message,
            max_in_flight_bytes: replica,
            max_in_flight_bytes_per_connection: per_connection,
            body_timeout: Duration::from_secs(30),
            default_timeout: Duration::from_secs(55),
            tls: Default::default(),
        }
    }

    /// A body on a connection with `connection`'s budget (none: no per-connection budget).
    fn body(limits: &BodyLimits, connection: Option<&ConnectionBudget>) -> (Bounded<()>, Held) {
        let mut request = http::Request::new(());
        if let Some(budget) = connection {
            request.extensions_mut().insert(budget.clone());
        }
        let (request, held) = limits.bound(request);
        (request.into_body(), held)
    }

    fn check(chunks: &[&[u8]], limit: usize, ok: bool) {
        let limits = BodyLimits::new(&upstream(limit, usize::MAX, usize::MAX));
        let (mut b, _held) = body(&limits, None);
        let got = chunks.iter().all(|c| b.admit(c).is_ok());
        assert_eq!(got, ok, "{chunks:?} limit {limit}");
    }

    #[test]
    fn the_announced_length_is_checked_before_the_message_arrives() {
        check(&[&frame(10), &[0; 10]], 10, true);
        check(&[&frame(11)], 10, false);
        // The header split over chunks.
        let f = frame(11);
        check(&[&f[..2], &f[2..]], 10, false);
        check(&[&frame(u32::MAX)], 1 << 20, false);
        // A body that keeps sending past its announced message.
        check(&[&frame(4), &[0; 4], &[0; 100]], 10, false);
        let status = too_large(11, 10);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "grpc: received message larger than max (11 vs. 10)"
        );
    }

    #[test]
    fn announced_sizes_are_reserved_per_replica_and_per_connection_until_the_call_ends() {
        let limits = BodyLimits::new(&upstream(100, 250, 150));
        let one = limits.connection_budget();
        let two = limits.connection_budget();
        let (mut a, held_a) = body(&limits, Some(&one));
        a.admit(&frame(100)).unwrap();
        assert_eq!(limits.replica().used(), 100);
        // The connection holds 100 of its 150.
        let (mut b, _held_b) = body(&limits, Some(&one));
        let refused = b.admit(&frame(60)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("maxInFlightBytesPerConnection"),
            "{refused:?}"
        );
        assert_eq!(limits.replica().used(), 100, "a refusal takes nothing");
        let (mut c, _held_c) = body(&limits, Some(&two));
        c.admit(&frame(100)).unwrap();
        // The replica holds 200 of its 250.
        let (mut d, _held_d) = body(&limits, None);
        let refused = d.admit(&frame(60)).unwrap_err();
        assert!(
            refused
                .message()
                .contains("(credstore.upstream.maxInFlightBytes)"),
            "{refused:?}"
        );
        // The body is read, the call goes on: still held; the call ends: given back.
        drop(a);
        assert_eq!(limits.replica().used(), 200);
        drop(held_a);
        assert_eq!(limits.replica().used(), 100);
        let (mut e, _held_e) = body(&limits, Some(&one));
        e.admit(&frame(60)).unwrap();
        assert_eq!(limits.replica().used(), 160);
    }

    /// A body that never yields a frame.
    struct Stalled;

    impl Body for Stalled {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_body_not_complete_in_time_is_refused() {
        let mut upstream = upstream(100, 1000, 1000);
        upstream.body_timeout = Duration::from_millis(150);
        let limits = BodyLimits::new(&upstream);
        let (request, held) = limits.bound(http::Request::new(Stalled));
        let mut body = request.into_body();
        let refused = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(
            refused.message(),
            "request body not complete within 150 ms (credstore.upstream.bodyTimeoutMs)"
        );
        drop((body, held));
    }
}
