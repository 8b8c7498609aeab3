//! The discard target: accepts and drops, for load tests of the SMTP front end.

use super::{Deliver, DeliveryError, Receipt};
use crate::message::{Envelope, Message};

/// Accepts every message and keeps nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Discard;

#[async_trait::async_trait]
impl Deliver for Discard {
    async fn deliver(
        &self,
        envelope: &Envelope,
        _message: &Message,
    ) -> Result<Receipt, DeliveryError> {
        Ok(Receipt::new(envelope.id.to_string()))
    }
}
