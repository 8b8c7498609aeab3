//! The bytes of one upload: chunks already in memory, or pieces of a spool file streamed from disk.
//!
//! The queue delivers from its `.msg` files. Reading a 35 MB message into memory for each of an
//! account's five parallel uploads would cost 175 MB; streaming the file costs a 64 KiB buffer.

use std::io::SeekFrom;
use std::path::PathBuf;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::message::Message;
use crate::message::header_edits::{self, Piece};

/// What an upload consists of. Cheap to turn into a request body again for a retry.
#[derive(Debug, Clone)]
pub enum Upload {
    /// The message is in memory (synchronous delivery).
    Memory(Vec<Bytes>),
    /// The message is a file; the pieces say which ranges of it to send and what to add.
    File {
        /// The spool file.
        path: PathBuf,
        /// New bytes and ranges of the file, in order.
        pieces: Vec<Piece>,
    },
}

impl Upload {
    /// The upload of `message` made of `pieces` (see [`extend_to`]): a message in a file is
    /// streamed from it, one in memory is sliced without copying.
    pub async fn of(message: &Message, pieces: Vec<Piece>) -> std::io::Result<Upload> {
        if let Some(path) = message.file() {
            return Ok(Upload::File {
                path: path.to_path_buf(),
                pieces,
            });
        }
        let raw = message.to_bytes().await?;
        Ok(Upload::Memory(header_edits::to_chunks(&pieces, &raw)))
    }

    /// The size in bytes (the Content-Length).
    pub fn len(&self) -> u64 {
        match self {
            Upload::Memory(chunks) => chunks.iter().map(|c| c.len() as u64).sum(),
            Upload::File { pieces, .. } => pieces.iter().map(piece_len).sum(),
        }
    }

    /// True for an empty upload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A fresh request body.
    pub fn body(&self) -> reqwest::Body {
        reqwest::Body::wrap_stream(self.stream())
    }

    /// The bytes in one buffer: for an API that takes them encoded (Graph's base64 body, at
    /// most a few MB).
    pub async fn to_vec(&self) -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::with_capacity(self.len() as usize);
        let mut stream = self.stream();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        Ok(bytes)
    }

    /// The bytes as a stream, never joined into one buffer.
    pub fn stream(&self) -> ByteStream {
        match self {
            Upload::Memory(chunks) => {
                futures_util::stream::iter(chunks.clone().into_iter().map(Ok)).boxed()
            }
            Upload::File { path, pieces } => {
                let path = path.clone();
                futures_util::stream::iter(pieces.clone())
                    .then(move |piece| open_piece(path.clone(), piece))
                    .try_flatten()
                    .boxed()
            }
        }
    }
}

fn piece_len(piece: &Piece) -> u64 {
    piece.len() as u64
}

/// An upload's bytes, chunk by chunk.
pub type ByteStream = futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>;

async fn open_piece(path: PathBuf, piece: Piece) -> std::io::Result<ByteStream> {
    match piece {
        Piece::Original(range) => {
            let mut file = tokio::fs::File::open(&path).await?;
            file.seek(SeekFrom::Start(range.start as u64)).await?;
            let part = file.take(range.len() as u64);
            Ok(tokio_util::io::ReaderStream::with_capacity(part, 64 * 1024).boxed())
        }
        written => {
            let bytes = Bytes::from(written.written().unwrap_or_default());
            Ok(futures_util::stream::once(async move { Ok(bytes) }).boxed())
        }
    }
}

/// Pieces computed on the first `head_len` bytes of a file of `file_len` bytes, made to cover the
/// whole file: the rules only edit headers, so everything after the head is sent as it is.
pub fn extend_to(mut pieces: Vec<Piece>, head_len: usize, file_len: usize) -> Vec<Piece> {
    if file_len > head_len {
        match pieces.last_mut() {
            Some(Piece::Original(range)) if range.end == head_len => range.end = file_len,
            _ => pieces.push(Piece::Original(head_len..file_len)),
        }
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(upload: &Upload) -> Vec<u8> {
        let mut stream = upload.stream();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn file_pieces_stream_the_whole_file_with_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.eml");
        let content: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let head = 1000;
        let pieces = extend_to(
            vec![
                Piece::New(b"Bcc: x@y\r\n".to_vec()),
                Piece::Original(0..head),
            ],
            head,
            content.len(),
        );
        let upload = Upload::File { path, pieces };
        let mut expected = b"Bcc: x@y\r\n".to_vec();
        expected.extend_from_slice(&content);
        assert_eq!(upload.len(), expected.len() as u64);
        assert!(collect(&upload).await == expected);
        // A retry gets a fresh body with the same bytes.
        assert!(collect(&upload).await == expected);
    }

    #[test]
    fn extending_pieces() {
        assert_eq!(
            extend_to(vec![Piece::Original(0..10)], 10, 50),
            vec![Piece::Original(0..50)]
        );
        assert_eq!(
            extend_to(vec![Piece::Original(0..10)], 10, 10),
            vec![Piece::Original(0..10)]
        );
        let ended_new = extend_to(vec![Piece::Original(0..10), Piece::New(vec![1])], 10, 20);
        assert_eq!(ended_new.last(), Some(&Piece::Original(10..20)));
    }
}
