//! The file target: each message becomes `<id>.eml` (the exact received bytes) and `<id>.json`
//! (the envelope), each written atomically so a reader never sees half a file.

use std::io;
use std::path::PathBuf;

use super::{Deliver, DeliveryError, Receipt};
use crate::message::{Envelope, Message};
use crate::safeio;

/// Writes messages into a directory.
#[derive(Debug, Clone)]
pub struct FileDrop {
    dir: PathBuf,
}

/// The `<id>.json` record: what the envelope said, since the .eml file cannot carry it.
#[derive(Debug, serde::Serialize)]
struct EnvelopeRecord<'a> {
    id: &'a str,
    /// `null` for the null sender `<>`.
    mail_from: Option<&'a str>,
    rcpt_to: Vec<&'a str>,
    /// RFC 3339, UTC.
    received_at: String,
    remote_addr: String,
    helo: &'a str,
    size: u64,
}

impl FileDrop {
    /// A target writing into `dir` (created on first use).
    pub fn new(dir: PathBuf) -> Self {
        FileDrop { dir }
    }

    async fn store(&self, envelope: &Envelope, message: &Message) -> io::Result<()> {
        tokio::fs::create_dir_all(&self.dir).await?;
        let id = envelope.id.as_str();
        let record = EnvelopeRecord {
            id,
            mail_from: envelope.mail_from.as_ref().map(|a| a.as_str()),
            rcpt_to: envelope.rcpt_to.iter().map(|a| a.as_str()).collect(),
            received_at: rfc3339(envelope.received_at),
            remote_addr: envelope.remote.to_string(),
            helo: &envelope.helo,
            size: message.len(),
        };
        let mut json = serde_json::to_vec_pretty(&record)?;
        json.push(b'\n');
        // The .eml first: whoever waits for the .json finds the message complete.
        message.store(&self.dir.join(format!("{id}.eml"))).await?;
        let (dir, id) = (self.dir.clone(), id.to_string());
        tokio::task::spawn_blocking(move || {
            safeio::write_atomically(&dir.join(format!("{id}.json")), &json)?;
            safeio::sync_dir(&dir)
        })
        .await
        .map_err(io::Error::other)?
    }
}

/// Formats a time as RFC 3339 in UTC.
pub(crate) fn rfc3339(at: std::time::SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

#[async_trait::async_trait]
impl Deliver for FileDrop {
    async fn deliver(
        &self,
        envelope: &Envelope,
        message: &Message,
    ) -> Result<Receipt, DeliveryError> {
        match self.store(envelope, message).await {
            Ok(()) => Ok(Receipt::new(envelope.id.to_string())),
            Err(err) => {
                tracing::error!(id = %envelope.id, dir = %self.dir.display(), %err, "cannot store message");
                Err(DeliveryError::local(format!(
                    "cannot store the message in {}",
                    self.dir.display()
                )))
            }
        }
    }
}
