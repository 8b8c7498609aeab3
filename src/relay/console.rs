//! The console target: prints each message on stdout, for local development.
//!
//! Logs go to stderr, so stdout carries nothing but mail and can be piped or captured on its own.

use std::io::Write;

use super::{Deliver, DeliveryError, Receipt, summary};
use crate::config::ConsoleFormat;
use crate::message::{Envelope, Message};

/// Prints messages as a readable summary or as the exact received bytes.
#[derive(Debug, Clone, Copy)]
pub struct Console {
    format: ConsoleFormat,
}

impl Console {
    /// A console target printing in `format`.
    pub fn new(format: ConsoleFormat) -> Self {
        Console { format }
    }
}

#[async_trait::async_trait]
impl Deliver for Console {
    async fn deliver(
        &self,
        envelope: &Envelope,
        message: &Message,
    ) -> Result<Receipt, DeliveryError> {
        let bytes = message
            .to_bytes()
            .await
            .map_err(|err| DeliveryError::local(format!("cannot read message body: {err}")))?;
        // Parsing a large message takes milliseconds: not on the threads that serve sessions.
        let (format, envelope_copy) = (self.format, envelope.clone());
        let block = tokio::task::spawn_blocking(move || match format {
            ConsoleFormat::Summary => summary::render(&envelope_copy, &bytes).into_bytes(),
            ConsoleFormat::Raw => summary::raw_block(&envelope_copy, &bytes),
        })
        .await
        .map_err(|err| DeliveryError::local(format!("cannot render the message: {err}")))?;
        // One write under the lock, so concurrent sessions never interleave their messages.
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&block)
            .and_then(|()| stdout.flush())
            .map_err(|err| DeliveryError::local(format!("cannot write to stdout: {err}")))?;
        Ok(Receipt::new(envelope.id.to_string()))
    }
}
