//! Auto-release, for staging servers: a stage of its own after the console or file target (and
//! the inbox's capture) that also hands a message to the queue of gmail mode, addressed to the
//! envelope recipients `[inbox] release_matching` matches and `release_blocked` does not, and to
//! nobody else. Everything else about the message stays captured.
//!
//! The copy is made as a manual release makes it ([`release::readdress`]: the To, Cc and Bcc
//! fields replaced by one `To:` with exactly those recipients, since Gmail delivers to the
//! header recipients whatever the envelope says; a new Message-ID and Date) and takes the
//! message's own id, so that the inbox, the `queue` commands and the log name it alike. The
//! queue then applies gmail mode's rules before answering, stores the copy (fsync) and delivers
//! it with its pacing, retries, holds, dead letters and notices.
//!
//! The client's answer waits for the queue: 250 only once the copy is stored, so the queue's
//! promise holds for it. The message is captured first, so a copy the queue refuses (a Gmail
//! rule: 5xx; the spool: 4xx) is answered with the queue's refusal although the message is in
//! the inbox: a client that sends again captures it twice and releases it once.

use std::sync::Arc;

use super::release;
use super::rules::ReleaseRules;
use crate::message::mailbox::mailbox_key;
use crate::message::{Address, Envelope, Message};
use crate::relay::{Deliver, DeliveryError, Receipt};
use crate::status::Status;

/// Delivers through `inner` (the console or file target, with the inbox's capture), then queues
/// the copy for the recipients the rules release.
pub struct AutoRelease {
    inner: Arc<dyn Deliver>,
    queue: Arc<dyn Deliver>,
    rules: Arc<ReleaseRules>,
}

impl AutoRelease {
    /// Wraps `inner`; released copies go to `queue` (gmail mode's queue).
    pub fn new(
        inner: Arc<dyn Deliver>,
        queue: Arc<dyn Deliver>,
        rules: Arc<ReleaseRules>,
    ) -> AutoRelease {
        AutoRelease {
            inner,
            queue,
            rules,
        }
    }

    /// The envelope recipients the rules release, each mailbox once.
    fn released(&self, envelope: &Envelope) -> Vec<Address> {
        let mut seen = std::collections::HashSet::new();
        envelope
            .rcpt_to
            .iter()
            .filter(|rcpt| self.rules.is_released(rcpt.as_str()))
            .filter(|rcpt| seen.insert(mailbox_key(rcpt.as_str())))
            .cloned()
            .collect()
    }

    /// Queues the copy of `message` for `recipients`.
    async fn queue_copy(
        &self,
        envelope: &Envelope,
        message: &Message,
        recipients: Vec<Address>,
    ) -> Result<(), DeliveryError> {
        let raw = message.bytes().await.map_err(|err| {
            DeliveryError::local(format!("cannot read the message to release it: {err}"))
        })?;
        let addresses: Vec<String> = recipients.iter().map(|a| a.as_str().to_string()).collect();
        let copy = release::readdress(&raw, &addresses, &envelope.id).map_err(|reason| {
            DeliveryError::Permanent {
                status: Status::BAD_MESSAGE,
                reason,
            }
        })?;
        let copy_envelope = Envelope {
            rcpt_to: recipients,
            ..envelope.clone()
        };
        self.queue
            .deliver(&copy_envelope, &Message::from_bytes(copy))
            .await?;
        tracing::info!(id = %envelope.id, recipients = addresses.len(), "auto-release: queued for Gmail");
        Ok(())
    }
}

#[async_trait::async_trait]
impl Deliver for AutoRelease {
    // No `size_limit`: the capture has none (as `Capture`), and Gmail's would refuse mail to the
    // recipients that stay captured. A copy too large for Gmail is refused by the queue instead.
    async fn deliver(
        &self,
        envelope: &Envelope,
        message: &Message,
    ) -> Result<Receipt, DeliveryError> {
        match self.inner.deliver(envelope, message).await {
            Ok(captured) => self.release(envelope, message, captured).await,
            refused => refused,
        }
    }
}

impl AutoRelease {
    /// After `captured`: queues the copy when the rules release any recipient, and answers.
    async fn release(
        &self,
        envelope: &Envelope,
        message: &Message,
        captured: Receipt,
    ) -> Result<Receipt, DeliveryError> {
        let recipients = self.released(envelope);
        if recipients.is_empty() {
            return Ok(captured);
        }
        match self.queue_copy(envelope, message, recipients).await {
            // `250 … queued as ID`: the id names the copy in the queue as well.
            Ok(()) => Ok(Receipt {
                queued: true,
                ..captured
            }),
            Err(err) => {
                tracing::warn!(id = %envelope.id, err = %err.summary(), "auto-release: captured, not queued for Gmail");
                Err(not_released(err))
            }
        }
    }
}

/// The queue's refusal, saying that the message was captured all the same.
fn not_released(err: DeliveryError) -> DeliveryError {
    let said = |reason: String| format!("captured, but not released through Gmail: {reason}");
    match err {
        DeliveryError::Temporary {
            status,
            reason,
            retry_after,
            cause,
        } => DeliveryError::Temporary {
            status,
            reason: said(reason),
            retry_after,
            cause,
        },
        DeliveryError::Permanent { status, reason } => DeliveryError::Permanent {
            status,
            reason: said(reason),
        },
        credentials @ DeliveryError::Credentials { .. } => credentials,
    }
}
