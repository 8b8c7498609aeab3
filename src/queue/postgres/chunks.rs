//! A message's bytes in `message_chunks`: written and read one chunk of at most [`CHUNK`] bytes
//! at a time, so that neither storing nor reading a 35 MiB message holds it whole in memory.
//!
//! Memory per message being stored or read: a few MiB whatever its size — one chunk buffer
//! (1 MiB) plus the client library's copy of it (the encoded statement, or the received row: its
//! response channel holds one batch). A message
//! of at most one chunk is returned in memory; a larger one is written chunk by chunk to a
//! temporary file that is removed when the [`Message`] is dropped.

use std::io;

use deadpool_postgres::Transaction;
use futures_util::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::{Step, Target};
use crate::message::{Message, Source};
use crate::queue::store::StoreError;

/// The largest chunk: PostgreSQL stores (TOASTs) each value apart, and a client sends and
/// receives a value whole, so this is the unit of memory on both sides.
pub const CHUNK: usize = 1024 * 1024;

/// Writes `message`'s bytes as the chunks of `id`, inside the caller's transaction.
pub async fn write(
    tx: &Transaction<'_>,
    target: &Target,
    id: &str,
    message: &Message,
) -> Result<(), StoreError> {
    let fail = |err: tokio_postgres::Error| -> StoreError {
        target
            .classify(&err, Step::Use, "storing a message's bytes")
            .into()
    };
    let insert = tx
        .prepare_cached("INSERT INTO smtp2gmail.message_chunks (id, seq, data) VALUES ($1, $2, $3)")
        .await
        .map_err(fail)?;
    let path = match message.source() {
        Source::Memory(bytes) => {
            for (seq, chunk) in bytes.chunks(CHUNK).enumerate() {
                let seq = seq as i32;
                tx.execute(&insert, &[&id, &seq, &chunk])
                    .await
                    .map_err(fail)?;
            }
            return Ok(());
        }
        Source::OwnFile(path) | Source::File(path) => path,
    };
    let mut file = tokio::fs::File::open(path).await?.take(message.len());
    let mut buffer = vec![0; CHUNK];
    let (mut seq, mut written) = (0i32, 0u64);
    loop {
        let filled = fill(&mut file, &mut buffer).await?;
        if filled == 0 {
            break;
        }
        tx.execute(&insert, &[&id, &seq, &&buffer[..filled]])
            .await
            .map_err(fail)?;
        seq += 1;
        written += filled as u64;
    }
    if written != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the message's file holds {written} of its {} bytes",
                message.len()
            ),
        )
        .into());
    }
    Ok(())
}

/// Reads until `buffer` is full or the input ends; returns how much it holds.
async fn fill(input: &mut (impl AsyncReadExt + Unpin), buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match input.read(&mut buffer[filled..]).await? {
            0 => break,
            read => filled += read,
        }
    }
    Ok(filled)
}

/// A message's size beside each of its chunks, in order (one row with no data for an empty
/// message).
const READ: &str = "
    SELECT m.size, c.data
      FROM smtp2gmail.messages m
      LEFT JOIN smtp2gmail.message_chunks c ON c.id = m.id
     WHERE m.id = $1 AND m.place = $2
     ORDER BY c.seq";

/// The bytes of message `id` in `place` (its column value), from one consistent snapshot:
/// `None` when it is not there (removed meanwhile).
pub async fn read(
    client: &mut deadpool_postgres::Client,
    target: &Target,
    id: &str,
    place: &str,
) -> Result<Option<Message>, StoreError> {
    let fail = |err: tokio_postgres::Error| -> StoreError {
        target
            .classify(&err, Step::Use, "reading a message's bytes")
            .into()
    };
    // One statement, so one snapshot: the size and the chunks are of the same moment even if a
    // replica delivers and removes the message meanwhile (and no transaction to begin and end
    // around it: a round trip each, for every message sent). No row: not there.
    let statement = client.prepare_cached(READ).await.map_err(fail)?;
    let rows = client
        .query_raw(&statement, [id, place])
        .await
        .map_err(fail)?;
    futures_util::pin_mut!(rows);
    let Some(first) = rows.try_next().await.map_err(fail)? else {
        return Ok(None);
    };
    let size = first.get::<_, i64>(0) as u64;
    let rows = futures_util::StreamExt::chain(
        futures_util::stream::iter([Ok::<_, tokio_postgres::Error>(first)]),
        rows,
    );
    futures_util::pin_mut!(rows);
    let short = |read: u64| {
        StoreError::Unreadable(format!("{id}: {read} bytes stored of the message's {size}"))
    };
    if size <= CHUNK as u64 {
        let mut bytes = Vec::with_capacity(size as usize);
        while let Some(row) = rows.try_next().await.map_err(fail)? {
            bytes.extend_from_slice(row.get::<_, Option<&[u8]>>(1).unwrap_or_default());
        }
        if bytes.len() as u64 != size {
            return Err(short(bytes.len() as u64));
        }
        return Ok(Some(Message::from_bytes(bytes)));
    }
    let (file, path) = tempfile::Builder::new()
        .prefix(".smtp2gmail-message-")
        .tempfile()?
        .into_parts();
    let mut file = tokio::fs::File::from_std(file);
    let mut read = 0u64;
    while let Some(row) = rows.try_next().await.map_err(fail)? {
        let data = row.get::<_, Option<&[u8]>>(1).unwrap_or_default();
        file.write_all(data).await?;
        read += data.len() as u64;
    }
    file.flush().await?;
    if read != size {
        return Err(short(read));
    }
    Ok(Some(Message::from_temp_file(path, size)))
}
