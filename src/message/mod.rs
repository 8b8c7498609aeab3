//! What one accepted message is: the envelope the SMTP dialogue established, and the raw bytes the
//! client sent (after dot-unstuffing), never re-serialised.
//!
//! Large bodies do not live in memory: [`BodyWriter`] keeps the first [`SPILL_THRESHOLD`] bytes in a
//! buffer and moves the rest to an unlinked-on-drop temporary file, so twenty clients sending 35 MB
//! each cost disk, not RAM.

/// The most of a message read to decide routing and policy: far more than any real header section.
pub const HEAD_LIMIT: usize = 256 * 1024;

pub mod date;
pub mod gmail_size;
pub mod header_edits;
pub mod headers;
pub mod mailbox;
pub mod recipient_rules;

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use tempfile::TempPath;

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Bodies up to about this size stay in memory; larger ones are spilled to a temporary file.
pub const SPILL_THRESHOLD: usize = 1024 * 1024;
/// Room for one more socket read's worth of body, so the staging buffer never doubles past the
/// threshold before it is spilled.
const STAGING_HEADROOM: usize = 128 * 1024;
/// Once spilling, staged bytes are written out whenever this much has gathered.
const SPILL_CHUNK: usize = 256 * 1024;

/// A mailbox as it appeared in `MAIL FROM` or `RCPT TO`, without the angle brackets.
///
/// Kept as the client wrote it (local parts are case-sensitive in principle); only the parser in
/// the SMTP layer decides what is acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Address(String);

impl Address {
    /// Wraps an address the SMTP parser has already validated.
    pub fn new(address: impl Into<String>) -> Self {
        Address(address.into())
    }

    /// The address as text, e.g. `user@example.com`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The server's own identifier for an accepted message: the name of its files in file mode, the
/// queue id later, and the id in the `250 2.0.0 OK <id>` reply and in every log line about it.
///
/// Time-ordered (milliseconds since the epoch, then 32 random bits) so that a directory listing is
/// in arrival order and ids from different processes do not collide.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct MessageId(String);

impl MessageId {
    /// A fresh id for a message being received now.
    pub fn generate() -> Self {
        let millis = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        MessageId(format!("{millis:011x}{:08x}", fastrand::u32(..)))
    }

    /// An id read back from storage (the spool), where it was written by [`MessageId::generate`].
    pub fn from_stored(id: &str) -> Self {
        MessageId(id.to_string())
    }

    /// The id as text: lowercase hex, safe as a file name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the SMTP dialogue established about one message. The envelope, not the headers, is the
/// source of truth for who receives it.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The id this message is known by from acceptance on.
    pub id: MessageId,
    /// The reverse path; `None` for the null sender `MAIL FROM:<>` (bounces).
    pub mail_from: Option<Address>,
    /// The accepted recipients, in the order given, duplicates removed.
    pub rcpt_to: Vec<Address>,
    /// The client's address, for logs and the file-mode record.
    pub remote: SocketAddr,
    /// The name the client gave in HELO/EHLO.
    pub helo: String,
    /// The SMTP AUTH identity, when the client authenticated.
    pub auth_user: Option<String>,
    /// When the end of the message was received.
    pub received_at: SystemTime,
}

impl Envelope {
    /// The reverse path as it is written in SMTP: `<>` for the null sender.
    pub fn sender_display(&self) -> Cow<'_, str> {
        match &self.mail_from {
            Some(address) => Cow::Borrowed(address.as_str()),
            None => Cow::Borrowed("<>"),
        }
    }
}

/// The raw bytes of one message, held in memory or (when large) in a temporary file that is removed
/// when the message is dropped.
#[derive(Debug)]
pub struct Message {
    len: u64,
    body: Body,
}

#[derive(Debug)]
enum Body {
    /// `Bytes`, so handing the body to an HTTP upload is a reference count, not a copy.
    Memory(Bytes),
    Spilled(TempPath),
    /// The first `len` bytes of a file someone else owns (a queue store's).
    Stored(PathBuf),
}

/// Where a message's bytes are (see [`Message::source`]).
#[derive(Debug)]
pub enum Source<'a> {
    /// In memory.
    Memory(&'a Bytes),
    /// The first [`Message::len`] bytes of a temporary file the message owns and removes when
    /// dropped: whoever stores the message may write after them and link the file.
    OwnFile(&'a Path),
    /// The first [`Message::len`] bytes of a file someone else owns: read it, never change it.
    File(&'a Path),
}

impl Message {
    /// A message held in memory (tests, the `send` command, small bodies).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Message {
            len: bytes.len() as u64,
            body: Body::Memory(bytes.into()),
        }
    }

    /// The size in bytes, as counted for `SIZE` and `max_message_size`.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for the empty message (`DATA` followed at once by `.`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole message in memory; reads the spill file if there is one.
    pub async fn bytes(&self) -> io::Result<Cow<'_, [u8]>> {
        match &self.body {
            Body::Memory(bytes) => Ok(Cow::Borrowed(bytes)),
            Body::Spilled(_) | Body::Stored(_) => Ok(Cow::Owned(self.to_bytes().await?.into())),
        }
    }

    /// The whole message as shareable bytes (for uploads); reads the spill file if there is one.
    pub async fn to_bytes(&self) -> io::Result<Bytes> {
        match &self.body {
            Body::Memory(bytes) => Ok(bytes.clone()),
            Body::Spilled(path) => read_head(path, self.len).await,
            Body::Stored(path) => read_head(path, self.len).await,
        }
    }

    /// The first `limit` bytes (or all of a shorter message): enough to read the headers without
    /// loading a large body.
    pub async fn head(&self, limit: usize) -> io::Result<Bytes> {
        match &self.body {
            Body::Memory(bytes) => Ok(bytes.slice(..bytes.len().min(limit))),
            Body::Spilled(path) => read_head(path, self.len.min(limit as u64)).await,
            Body::Stored(path) => read_head(path, self.len.min(limit as u64)).await,
        }
    }

    /// A message whose bytes are the first `len` bytes of `path`, a file it does not own (a queue
    /// store's file: the store keeps its record after the message).
    pub fn stored(path: PathBuf, len: u64) -> Self {
        Message {
            len,
            body: Body::Stored(path),
        }
    }

    /// A message whose bytes are the first `len` bytes of `path`, a temporary file it now owns
    /// and removes when dropped (a queue store that reads a large message out of a database
    /// writes it there rather than into memory).
    pub fn from_temp_file(path: TempPath, len: u64) -> Self {
        Message {
            len,
            body: Body::Spilled(path),
        }
    }

    /// A second handle on the same bytes that outlives this one, without copying them: the same
    /// `Bytes`, a hard link to the spill file (removed when the new handle is dropped), or the
    /// same stored file. For work done after the session has let go of its message (the
    /// console's summary and the inbox's capture, `relay::backlog`).
    pub async fn share(&self) -> io::Result<Message> {
        let body = match &self.body {
            Body::Memory(bytes) => Body::Memory(bytes.clone()),
            Body::Stored(path) => Body::Stored(path.clone()),
            Body::Spilled(path) => {
                let source = path.to_path_buf();
                let linked = tokio::task::spawn_blocking(move || {
                    let dir = crate::safeio::parent_dir(&source);
                    tempfile::Builder::new()
                        .prefix(".shared-")
                        // A copy only where the filesystem has no hard links.
                        .make_in(dir, |link| {
                            std::fs::hard_link(&source, link)
                                .or_else(|_| std::fs::copy(&source, link).map(drop))
                        })
                        .map(tempfile::NamedTempFile::into_temp_path)
                })
                .await
                .map_err(io::Error::other)??;
                Body::Spilled(linked)
            }
        };
        Ok(Message {
            len: self.len,
            body,
        })
    }

    /// The bytes held in memory (0 for a body in a file): what keeping this handle costs.
    pub fn in_memory(&self) -> u64 {
        match &self.body {
            Body::Memory(_) => self.len,
            Body::Spilled(_) | Body::Stored(_) => 0,
        }
    }

    /// The file holding the bytes, if they are not in memory.
    pub fn file(&self) -> Option<&Path> {
        match &self.body {
            Body::Memory(_) => None,
            Body::Spilled(path) => Some(path),
            Body::Stored(path) => Some(path),
        }
    }

    /// Where the bytes are, for a store that writes them with as few copies as it can.
    pub fn source(&self) -> Source<'_> {
        match &self.body {
            Body::Memory(bytes) => Source::Memory(bytes),
            Body::Spilled(path) => Source::OwnFile(path),
            Body::Stored(path) => Source::File(path),
        }
    }

    /// Writes the message to `path`, a new file, and fsyncs it; never replaces an existing file.
    /// A spilled body is hard-linked when the spill file is on the same filesystem (no copy of a
    /// 35 MB message) and copied only where a link cannot be made. Not atomic: a crash can leave
    /// a short file. The directory entry is made durable by the caller.
    pub async fn store(&self, path: &Path) -> io::Result<()> {
        let (path, len) = (path.to_path_buf(), self.len);
        let stored = match &self.body {
            Body::Memory(bytes) => {
                let bytes = bytes.clone();
                tokio::task::spawn_blocking(move || {
                    let mut file = std::fs::File::options()
                        .write(true)
                        .create_new(true)
                        .open(&path)?;
                    file.write_all(&bytes)?;
                    file.sync_all()
                })
                .await
            }
            Body::Spilled(temp) => {
                let source = temp.to_path_buf();
                tokio::task::spawn_blocking(move || {
                    let file = std::fs::File::options().write(true).open(&source)?;
                    file.set_len(len)?;
                    file.sync_all()?;
                    crate::safeio::link_new(&source, &path)
                })
                .await
            }
            Body::Stored(source) => {
                let source = source.clone();
                tokio::task::spawn_blocking(move || {
                    crate::safeio::copy_new_prefix(&source, len, &path)
                })
                .await
            }
        };
        stored.map_err(io::Error::other)?
    }

    /// Streams the message into `out` without holding it all in memory.
    pub async fn copy_to<W: AsyncWrite + Unpin>(&self, out: &mut W) -> io::Result<()> {
        match &self.body {
            Body::Memory(bytes) => out.write_all(bytes).await,
            Body::Spilled(_) | Body::Stored(_) => {
                use tokio::io::AsyncReadExt;
                let path = self.file().expect("a file body");
                let file = tokio::fs::File::open(path).await?;
                tokio::io::copy(&mut file.take(self.len), out)
                    .await
                    .map(drop)
            }
        }
    }
}

/// The first `limit` bytes of a stored message (or all of a shorter one).
pub async fn read_head(path: &Path, limit: u64) -> io::Result<Bytes> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let file = tokio::fs::File::open(path).await?;
    file.take(limit).read_to_end(&mut head).await?;
    Ok(head.into())
}

/// Collects a message body as it arrives, enforcing the size limit without buffering what is over it.
///
/// The DATA and BDAT readers append decoded bytes to [`BodyWriter::staging`] and then call
/// [`BodyWriter::commit`], which spills to disk past [`SPILL_THRESHOLD`] and, once the body is
/// refused (too large, or the spill file failed), throws away whatever else arrives: the client is
/// still read to the end of its message, then told why, and memory stays flat meanwhile.
#[derive(Debug)]
pub struct BodyWriter {
    limit: u64,
    spill_dir: PathBuf,
    staging: Vec<u8>,
    /// The spill file and how many bytes it holds.
    spill: Option<(std::fs::File, TempPath)>,
    spilled: u64,
    /// Set once the body cannot be accepted; reported by [`finish`](Self::finish).
    refused: Option<BodyError>,
}

impl BodyWriter {
    /// A writer that accepts at most `limit` bytes, spilling large bodies into `spill_dir`.
    pub fn new(limit: u64, spill_dir: &Path) -> Self {
        BodyWriter {
            limit,
            spill_dir: spill_dir.to_path_buf(),
            staging: Vec::new(),
            spill: None,
            spilled: 0,
            refused: None,
        }
    }

    /// The buffer decoded bytes go into; call [`commit`](Self::commit) after appending.
    pub fn staging(&mut self) -> &mut Vec<u8> {
        &mut self.staging
    }

    /// Accounts for what was appended to the staging buffer since the last call.
    pub async fn commit(&mut self) {
        if self.refused.is_some() {
            self.staging.clear();
            return;
        }
        if self.spilled + self.staging.len() as u64 > self.limit {
            return self.refuse(BodyError::TooLarge { limit: self.limit });
        }
        // Spill before the buffer would grow past the threshold; once spilling, write in modest
        // pieces so each session holds little memory while its body streams to disk.
        let due = match self.spill {
            None => SPILL_THRESHOLD - STAGING_HEADROOM,
            Some(_) => SPILL_CHUNK,
        };
        if self.staging.len() >= due
            && let Err(err) = self.write_staging().await
        {
            self.refuse(BodyError::Storage(err));
        }
    }

    fn refuse(&mut self, why: BodyError) {
        self.refused = Some(why);
        self.staging = Vec::new();
        self.spill = None;
    }

    /// Moves the staged bytes to the spill file (created on first use). The write runs on the
    /// blocking pool with the buffer moved in and back out: no copy, no stalled worker thread.
    async fn write_staging(&mut self) -> io::Result<()> {
        let (file, path) = match self.spill.take() {
            Some(spill) => spill,
            None => tempfile::Builder::new()
                .prefix(".smtp2gmail-body-")
                .tempfile_in(&self.spill_dir)?
                .into_parts(),
        };
        let buffer = std::mem::take(&mut self.staging);
        let (file, mut buffer, written) = tokio::task::spawn_blocking(move || {
            let written = (&file).write_all(&buffer);
            (file, buffer, written)
        })
        .await
        .map_err(io::Error::other)?;
        written?;
        self.spilled += buffer.len() as u64;
        buffer.clear();
        if buffer.capacity() > 2 * SPILL_CHUNK {
            // The buffer that filled up before the first spill; later pieces are smaller.
            buffer = Vec::with_capacity(SPILL_CHUNK);
        }
        self.staging = buffer;
        self.spill = Some((file, path));
        Ok(())
    }

    /// Finishes the body: the complete message, or why it cannot be had.
    pub async fn finish(mut self) -> Result<Message, BodyError> {
        self.commit().await;
        if let Some(why) = self.refused {
            return Err(why);
        }
        if self.spill.is_none() {
            return Ok(Message::from_bytes(self.staging));
        }
        self.write_staging().await.map_err(BodyError::Storage)?;
        let (_, path) = self
            .spill
            .take()
            .expect("write_staging keeps the spill file");
        Ok(Message {
            len: self.spilled,
            body: Body::Spilled(path),
        })
    }
}

/// Why a received body cannot become a [`Message`].
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// More than `max_message_size` bytes arrived.
    #[error("message exceeds the size limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The temporary file for a large body could not be written.
    #[error("cannot store the message body: {0}")]
    Storage(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spill_files(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[tokio::test]
    async fn small_bodies_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = BodyWriter::new(100, dir.path());
        writer.staging().extend_from_slice(b"hello");
        writer.commit().await;
        let message = writer.finish().await.unwrap();
        assert!(matches!(message.body, Body::Memory(_)));
        assert_eq!(&*message.bytes().await.unwrap(), b"hello");
        assert_eq!(spill_files(dir.path()), 0);
    }

    #[tokio::test]
    async fn large_bodies_spill_to_a_file_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = BodyWriter::new(10 * SPILL_THRESHOLD as u64, dir.path());
        let expected: Vec<u8> = (0..3 * SPILL_THRESHOLD + 7).map(|i| i as u8).collect();
        for piece in expected.chunks(64 * 1024) {
            writer.staging().extend_from_slice(piece);
            writer.commit().await;
            assert!(
                writer.staging.len() < SPILL_THRESHOLD,
                "memory bounded while receiving"
            );
        }
        let message = writer.finish().await.unwrap();
        assert!(matches!(message.body, Body::Spilled(_)));
        assert_eq!(spill_files(dir.path()), 1);
        assert_eq!(message.len(), expected.len() as u64);
        assert!(message.bytes().await.unwrap() == expected);
        let mut copied = Vec::new();
        message.copy_to(&mut copied).await.unwrap();
        assert!(copied == expected);
        drop(message);
        assert_eq!(spill_files(dir.path()), 0);
    }

    #[tokio::test]
    async fn over_the_limit_is_refused_and_nothing_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = BodyWriter::new(SPILL_THRESHOLD as u64 + 10, dir.path());
        for _ in 0..40 {
            writer.staging().extend_from_slice(&[b'x'; 64 * 1024]);
            writer.commit().await;
        }
        assert!(writer.staging.is_empty() && writer.spill.is_none());
        assert_eq!(spill_files(dir.path()), 0);
        assert!(matches!(
            writer.finish().await,
            Err(BodyError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn unwritable_spill_directory_is_a_storage_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let mut writer = BodyWriter::new(u64::MAX, &missing);
        writer
            .staging()
            .extend_from_slice(&vec![b'x'; SPILL_THRESHOLD]);
        writer.commit().await;
        assert!(matches!(writer.finish().await, Err(BodyError::Storage(_))));
    }

    #[test]
    fn ids_are_unique_and_file_name_safe() {
        let a = MessageId::generate();
        let b = MessageId::generate();
        assert_ne!(a, b);
        assert!(a.as_str().chars().all(|c| c.is_ascii_hexdigit()));
    }
}
