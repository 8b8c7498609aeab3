//! The file target: each message becomes `<id>.eml` (the exact received bytes) and `<id>.json`
//! (the envelope), each written atomically so a reader never sees half a file.

use std::io;
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use super::{Deliver, DeliveryError, Receipt};
use crate::message::{Envelope, Message};

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
        let eml = self.dir.join(format!("{id}.eml"));
        write_atomically(&eml, Contents::Message(message)).await?;
        let json_path = self.dir.join(format!("{id}.json"));
        write_atomically(&json_path, Contents::Bytes(&json)).await?;
        sync_dir(&self.dir).await
    }
}

/// What goes into one file.
enum Contents<'a> {
    Message(&'a Message),
    Bytes(&'a [u8]),
}

/// Writes `path` via a temporary file in the same directory: write, fsync, rename.
async fn write_atomically(path: &Path, contents: Contents<'_>) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let (file, temp_path) = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)?
        .into_parts();
    let mut file = tokio::fs::File::from_std(file);
    match contents {
        Contents::Message(message) => message.copy_to(&mut file).await?,
        Contents::Bytes(bytes) => file.write_all(bytes).await?,
    }
    file.flush().await?;
    file.sync_all().await?;
    temp_path.persist(path).map_err(|err| err.error)
}

/// Makes renames in `dir` durable.
async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(io::Error::other)?
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
            Ok(()) => Ok(Receipt {
                id: envelope.id.to_string(),
            }),
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
