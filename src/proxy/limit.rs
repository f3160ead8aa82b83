//! [`Bounded`]: a request body that refuses a message over the size limit as soon as the
//! gRPC frame header announcing it arrives, before the message is buffered. (tonic's own
//! check answers OUT_OF_RANGE; Milvus, like grpc-go, answers RESOURCE_EXHAUSTED, which is
//! what pymilvus users see from Milvus for an oversized insert.)

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use prost::bytes::Bytes;
use tonic::Status;

/// gRPC's frame header: a compression flag and a big-endian u32 length.
const HEADER_LEN: usize = 5;

/// A body whose gRPC message may be at most `limit` bytes.
pub struct Bounded<B> {
    inner: B,
    limit: usize,
    header: [u8; HEADER_LEN],
    /// Data bytes seen so far (header included).
    seen: usize,
}

impl<B> Bounded<B> {
    pub fn new(inner: B, limit: usize) -> Bounded<B> {
        Bounded {
            inner,
            limit,
            header: [0; HEADER_LEN],
            seen: 0,
        }
    }

    /// Accounts for one data chunk; an error when the message is (or is announced) too big.
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
        if announced > self.limit || received > self.limit {
            return Err(too_large(announced.max(received), self.limit));
        }
        Ok(())
    }
}

/// Milvus's (grpc-go's) answer to an oversized message.
pub fn too_large(size: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "grpc: received message larger than max ({size} vs. {limit})"
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
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
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

    fn check(chunks: &[&[u8]], limit: usize, ok: bool) {
        let mut b = Bounded::new((), limit);
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
}
