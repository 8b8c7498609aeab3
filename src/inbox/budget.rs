//! The inbox's memory budget: how many bytes of messages may be in memory at once for requests,
//! captures and summaries. Every message the store reads is read under a [`Charge`] of its size,
//! taken before the read and held until whatever was made from it (a parse, a JSON answer, a
//! part's bytes) has been handed to the connection. Requests past the budget wait their turn
//! (first come, first served), so memory stays bounded however many arrive at once — sixty
//! parallel searches over 29 MB messages once took 3.2 GB.
//!
//! The budget counts the raw bytes; what a request holds is a small multiple of them (the parse,
//! the decoded parts, the answer), so the bound is a multiple of the budget, not the budget.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The smallest budget: one message as large as Gmail takes (35 MiB) and a few small ones beside
/// it. A configured `max_message_size` above it raises the budget to that size, so that every
/// message the server accepts fits.
pub const MIN_BUDGET: u64 = 40 * 1024 * 1024;
/// The budget is counted in KiB: a semaphore counts in `u32`.
const UNIT: u64 = 1024;
/// A charged answer is handed to the connection in copies of this size, so that the message's
/// bytes are freed with the charge, not when the last slice of them has been sent.
const CHUNK: usize = 64 * 1024;

/// The bytes of messages that may be in memory at once.
#[derive(Clone)]
pub struct Budget {
    units: Arc<Semaphore>,
    total: u32,
}

/// A part of the budget, held while the bytes it was taken for are in memory.
#[derive(Debug)]
pub struct Charge {
    _units: OwnedSemaphorePermit,
}

impl Budget {
    /// A budget of `bytes` (at least [`MIN_BUDGET`]).
    pub fn new(bytes: u64) -> Budget {
        let total = u32::try_from(bytes.max(MIN_BUDGET).div_ceil(UNIT)).unwrap_or(u32::MAX);
        Budget {
            units: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// The most bytes one charge may cover: a message larger than this cannot be read.
    pub fn limit(&self) -> u64 {
        u64::from(self.total) * UNIT
    }

    /// Waits until `bytes` fit in the budget and takes them (a message larger than the whole
    /// budget takes all of it; readers refuse those, see [`limit`](Self::limit)).
    pub async fn charge(&self, bytes: u64) -> Charge {
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total);
        let permit = self.units.clone().acquire_many_owned(units).await;
        Charge {
            // The semaphore is never closed.
            _units: permit.expect("the inbox's budget is never closed"),
        }
    }
}

/// A response body of `bytes` that keeps `charge` until the last byte has been handed to the
/// connection. It hands out copies of [`CHUNK`] bytes: slices would keep the whole buffer alive
/// after the charge is gone, while a slow client reads the end.
pub fn body(bytes: Bytes, charge: Charge) -> Body {
    let chunks = futures_util::stream::unfold(
        (bytes, 0usize, Some(charge)),
        |(bytes, at, mut charge)| async move {
            if at >= bytes.len() {
                charge.take();
                return None;
            }
            let end = (at + CHUNK).min(bytes.len());
            let chunk = Bytes::copy_from_slice(&bytes[at..end]);
            Some((Ok::<_, std::io::Error>(chunk), (bytes, end, charge)))
        },
    );
    Body::from_stream(chunks.fuse())
}

/// `response` with its body made by [`body`], keeping `charge`; the `Content-Length` stays.
pub async fn hold(response: axum::response::Response, charge: Charge) -> axum::response::Response {
    let (mut parts, whole) = response.into_parts();
    // Answers built in memory are one buffer: collecting them costs no copy.
    let bytes = axum::body::to_bytes(whole, usize::MAX)
        .await
        .unwrap_or_default();
    if let Ok(length) = axum::http::HeaderValue::from_str(&bytes.len().to_string()) {
        parts
            .headers
            .insert(axum::http::header::CONTENT_LENGTH, length);
    }
    axum::response::Response::from_parts(parts, body(bytes, charge))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn charges_wait_until_the_bytes_fit() {
        let budget = Budget::new(MIN_BUDGET);
        let big = budget.charge(MIN_BUDGET - UNIT).await;
        let small = budget.charge(1).await;
        // Full: the next charge waits until one is given back.
        let waiting = budget.charge(2 * UNIT);
        tokio::pin!(waiting);
        assert!(waiting.as_mut().now_or_never().is_none());
        drop(small);
        assert!(waiting.as_mut().now_or_never().is_none());
        drop(big);
        assert!(waiting.as_mut().now_or_never().is_some());
        // Larger than the budget: all of it, not never.
        let all = budget.charge(10 * MIN_BUDGET).await;
        assert!(budget.units.available_permits() == 0);
        drop(all);
        assert_eq!(Budget::new(MIN_BUDGET * 2).limit(), MIN_BUDGET * 2);
    }

    #[tokio::test]
    async fn a_charged_body_gives_the_charge_back_after_the_last_byte() {
        let budget = Budget::new(MIN_BUDGET);
        let bytes = Bytes::from(vec![7u8; 3 * CHUNK + 5]);
        let body = body(bytes.clone(), budget.charge(MIN_BUDGET).await);
        let mut stream = body.into_data_stream();
        let mut read = Vec::new();
        while let Some(chunk) = stream.next().await {
            assert_eq!(
                budget.units.available_permits(),
                0,
                "charge held while sending"
            );
            read.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(read, bytes);
        assert_eq!(budget.units.available_permits(), budget.total as usize);
    }
}
