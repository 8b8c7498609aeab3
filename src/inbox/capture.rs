//! The hook between the relay and the inbox: a delivery target that delivers through the
//! console or file target and then hands the message to the inbox. Neither target knows about
//! the inbox, and the inbox never changes what they answer.

use std::sync::Arc;

use super::Inbox;
use crate::message::{Envelope, Message};
use crate::relay::{Deliver, DeliveryError, Receipt};

/// Delivers through `inner`, then captures what it accepted.
pub struct Capture {
    inner: Arc<dyn Deliver>,
    inbox: Arc<Inbox>,
}

impl Capture {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Deliver>, inbox: Arc<Inbox>) -> Capture {
        Capture { inner, inbox }
    }
}

#[async_trait::async_trait]
impl Deliver for Capture {
    async fn deliver(
        &self,
        envelope: &Envelope,
        message: &Message,
    ) -> Result<Receipt, DeliveryError> {
        let receipt = self.inner.deliver(envelope, message).await?;
        self.inbox.capture(envelope, message).await;
        Ok(receipt)
    }
}

/// The middleware in front of every inbox route (see [`Inbox::captures_through`]).
pub async fn caught_up(
    axum::extract::State(inbox): axum::extract::State<Arc<Inbox>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(backlog) = inbox.captures.get() {
        backlog.caught_up().await;
    }
    next.run(request).await
}
