//! The bytes of a `.msg`: the message exactly as received, its first record as JSON, and a
//! fixed-size footer giving the record's length, so that a reader finds the record from the end and
//! a file cut short by a crash is recognised.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::message::{Message, Source};
use crate::queue::record::{Entry, RecordError};
use crate::safeio;

/// Where a message's bytes are, owned so that the write can run on a blocking thread while the
/// message itself stays with the caller (its temporary file lives as long as it does).
pub(super) struct Bytes {
    len: u64,
    source: Owned,
}

enum Owned {
    Memory(bytes::Bytes),
    OwnFile(PathBuf),
    File(PathBuf),
}

impl Bytes {
    pub(super) fn of(message: &Message) -> Bytes {
        let source = match message.source() {
            Source::Memory(bytes) => Owned::Memory(bytes.clone()),
            Source::OwnFile(path) => Owned::OwnFile(path.to_path_buf()),
            Source::File(path) => Owned::File(path.to_path_buf()),
        };
        Bytes {
            len: message.len(),
            source,
        }
    }
}

/// Writes `<message><record><footer>` as the new file `path` and fsyncs it; never replaces a
/// file. A spilled body gets the record appended in its own temporary file, which is then linked
/// (no copy of a 35 MB message; copied only across filesystems); every reader of the message stops
/// at its length, so the appended record is invisible to it. Not atomic: a crash leaves a file
/// without a valid footer, which recovery removes.
pub(super) fn write_msg(path: &Path, message: &Bytes, entry: &Entry) -> io::Result<()> {
    let mut trailer = serde_json::to_vec(entry).map_err(io::Error::other)?;
    trailer.extend_from_slice(&footer(trailer.len()));
    let len = message.len;
    match &message.source {
        Owned::Memory(bytes) => {
            let mut file = std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(path)?;
            file.write_all(bytes)?;
            file.write_all(&trailer)?;
            file.sync_all()
        }
        Owned::OwnFile(source) => {
            let mut file = std::fs::File::options().write(true).open(source)?;
            // Written at the message's end, not appended: a second store of the same message
            // must not stack records.
            file.set_len(len)?;
            file.seek(SeekFrom::Start(len))?;
            file.write_all(&trailer)?;
            file.sync_all()?;
            safeio::link_new(source, path)
        }
        Owned::File(source) => safeio::write_new_with(path, |file| {
            io::copy(&mut std::fs::File::open(source)?.take(len), file)?;
            file.write_all(&trailer)
        }),
    }
}

/// Ends a `.msg`: a newline (so `tail` shows the record on a line of its own), a marker, and the
/// record's length in ten digits. Fixed size, so a reader finds the record from the file's end.
const FOOTER_MARK: &[u8] = b"\nsmtp2gmail record v1 ";
/// The start of every version's footer.
const FOOTER_FAMILY: &[u8] = b"\nsmtp2gmail record v";
pub(super) const FOOTER_LEN: usize = FOOTER_MARK.len() + 10 + 1;

pub(super) fn footer(record_len: usize) -> Vec<u8> {
    let mut footer = FOOTER_MARK.to_vec();
    footer.extend_from_slice(format!("{record_len:010}\n").as_bytes());
    footer
}

/// Why the record inside a `.msg` could not be read.
#[derive(Debug)]
pub(super) enum TrailerError {
    /// No footer at the end, or one that does not add up: the write was cut short.
    Incomplete,
    /// A complete file that cannot be used: unreadable now, a record that does not parse or does
    /// not match, a footer of another version.
    Unusable(io::Error),
}

impl From<io::Error> for TrailerError {
    fn from(err: io::Error) -> Self {
        TrailerError::Unusable(err)
    }
}

impl From<TrailerError> for io::Error {
    fn from(err: TrailerError) -> Self {
        match err {
            TrailerError::Incomplete => {
                invalid("incomplete message file (being received, or cut short by a crash)")
            }
            TrailerError::Unusable(err) => err,
        }
    }
}

/// The record inside a `.msg`.
pub(super) fn read_trailer(path: &Path) -> Result<Entry, TrailerError> {
    let mut file = std::fs::File::open(path)?;
    let file_len = file.metadata()?.len();
    if file_len < FOOTER_LEN as u64 {
        return Err(TrailerError::Incomplete);
    }
    let mut footer = [0u8; FOOTER_LEN];
    file.seek(SeekFrom::End(-(FOOTER_LEN as i64)))?;
    file.read_exact(&mut footer)?;
    let Some(rest) = footer.strip_prefix(FOOTER_MARK) else {
        if footer.starts_with(FOOTER_FAMILY) {
            let footer = String::from_utf8_lossy(&footer).trim().to_string();
            return Err(TrailerError::Unusable(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("written by another version of smtp2gmail ({footer})"),
            )));
        }
        return Err(TrailerError::Incomplete);
    };
    let record_len: u64 = rest
        .strip_suffix(b"\n")
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse().ok())
        .ok_or(TrailerError::Incomplete)?;
    let size = (file_len - FOOTER_LEN as u64)
        .checked_sub(record_len)
        .ok_or(TrailerError::Incomplete)?;
    let mut record = vec![0u8; record_len as usize];
    file.seek(SeekFrom::Start(size))?;
    file.read_exact(&mut record)?;
    let entry = Entry::from_json(&record).map_err(record_error)?;
    if entry.size != size {
        return Err(TrailerError::Unusable(invalid(format!(
            "the record says {} bytes, the file holds {size}",
            entry.size
        ))));
    }
    Ok(entry)
}

pub(super) fn invalid(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

/// A record that cannot be used, as the spool reports it: unsupported when a newer version wrote
/// it (kept in place at recovery), invalid otherwise.
pub(super) fn record_error(err: RecordError) -> io::Error {
    match err {
        RecordError::Newer { .. } => io::Error::new(io::ErrorKind::Unsupported, err.to_string()),
        RecordError::Unparseable(_) => invalid(err.to_string()),
    }
}

pub(super) fn to_json(entry: &Entry) -> io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(entry).map_err(io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}
