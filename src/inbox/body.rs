//! A message's bytes as the store holds them (in memory or in a file), and the only two ways
//! they are read: [`load`]ed whole under a [`Charge`] of the memory budget, or [`stream`]ed a
//! chunk at a time.

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use super::budget::{Budget, Charge};

/// A raw message is streamed in reads of this size.
const STREAM_CHUNK: u64 = 64 * 1024;

/// A message body as the inbox holds it: in memory, or in a file — console mode's temporary
/// files have no name (so nothing is left behind however the process ends; closing the last
/// handle frees the space), file mode's is `<id>.eml`, opened for this read.
#[derive(Debug)]
pub enum Body {
    /// Bytes in memory (console mode, small messages).
    Memory(Bytes),
    /// A file, read with `pread`, so that readers sharing it do not move each other's position.
    File(Arc<std::fs::File>),
}

impl Body {
    /// Another handle on the same bytes.
    pub fn share(&self) -> Body {
        match self {
            Body::Memory(bytes) => Body::Memory(bytes.clone()),
            Body::File(file) => Body::File(file.clone()),
        }
    }

    /// The size in bytes; blocking for a file.
    fn len(&self) -> io::Result<u64> {
        match self {
            Body::Memory(bytes) => Ok(bytes.len() as u64),
            Body::File(file) => Ok(file.metadata()?.len()),
        }
    }

    /// At most `len` bytes from `at`; blocking for a file.
    fn read(&self, at: u64, len: u64) -> io::Result<Bytes> {
        match self {
            Body::Memory(bytes) => {
                let start = (at as usize).min(bytes.len());
                let end = start.saturating_add(len as usize).min(bytes.len());
                Ok(bytes.slice(start..end))
            }
            Body::File(file) => {
                use std::io::Read;
                let mut bytes = Vec::new();
                let mut reader = PositionedReader { file, at };
                (&mut reader).take(len).read_to_end(&mut bytes)?;
                Ok(bytes.into())
            }
        }
    }
}

/// Reads a shared file from a position of its own (`pread`).
struct PositionedReader<'a> {
    file: &'a std::fs::File,
    at: u64,
}

impl io::Read for PositionedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(unix)]
        let n = std::os::unix::fs::FileExt::read_at(self.file, buf, self.at)?;
        // Moves the handle's cursor as well, which nothing here uses: every read names its offset.
        #[cfg(windows)]
        let n = std::os::windows::fs::FileExt::seek_read(self.file, buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// A message's bytes, with the charge they were read under: the charge goes when the bytes do
/// (or, through [`into_parts`](Self::into_parts), when what was made of them does).
#[derive(Debug)]
pub struct Loaded {
    bytes: Bytes,
    charge: Charge,
}

impl Loaded {
    /// The bytes, and the charge to hold as long as anything made from them is in memory.
    pub fn into_parts(self) -> (Bytes, Charge) {
        (self.bytes, self.charge)
    }
}

impl std::ops::Deref for Loaded {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The whole of `body`, read once a charge of its size has been taken. A body larger than the
/// whole budget (only a file put in `file.dir` by hand can be) is an error: reading it would
/// break the bound. At most the measured size is read, should the file grow meanwhile.
pub async fn load(body: Body, budget: &Budget) -> io::Result<Loaded> {
    let body = Arc::new(body);
    let len = blocking({
        let body = body.clone();
        move || body.len()
    })
    .await?;
    if len > budget.limit() {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!(
                "the message has {len} bytes, more than the inbox reads at once ({})",
                budget.limit()
            ),
        ));
    }
    let charge = budget.charge(len).await;
    let bytes = blocking(move || body.read(0, len)).await?;
    Ok(Loaded { bytes, charge })
}

/// Chunks of a raw message, read as the connection takes them.
pub type Chunks = Pin<Box<dyn futures_util::Stream<Item = io::Result<Bytes>> + Send>>;

/// `body` as chunks of at most [`STREAM_CHUNK`] bytes, with its size: a download holds one
/// chunk, not the message, so it needs no charge.
pub async fn stream(body: Body) -> io::Result<(u64, Chunks)> {
    let body = Arc::new(body);
    let len = blocking({
        let body = body.clone();
        move || body.len()
    })
    .await?;
    let chunks = futures_util::stream::unfold(0u64, move |at| {
        let body = body.clone();
        async move {
            if at >= len {
                return None;
            }
            let want = (len - at).min(STREAM_CHUNK);
            match blocking(move || body.read(at, want)).await {
                // The file shrank under us: end early; the length tells the client.
                Ok(chunk) if chunk.is_empty() => None,
                Ok(chunk) => {
                    let next = at + chunk.len() as u64;
                    Some((Ok(chunk), next))
                }
                Err(err) => Some((Err(err), len)),
            }
        }
    });
    Ok((len, Box::pin(chunks)))
}

/// Runs `work` on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)?
}
