//! Crash recovery, and the upgrade of spools written by older versions.

use std::io;

use super::format::{Bytes, TrailerError, invalid, read_trailer, write_msg};
use super::{Spool, ignore_missing};
use crate::message::Message;
use crate::queue::record::{Entry, Place};
use crate::safeio;

impl Spool {
    /// Cleans up after a crash: removes messages whose accept never completed, records left
    /// behind by an interrupted removal or move, spilled bodies and temporary files. Returns how
    /// many incomplete accepts it removed. Runs before the server accepts or delivers anything.
    pub fn recover(&self) -> io::Result<usize> {
        let mut removed = self.upgrade_eml_pairs()?;
        for place in [Place::Queue, Place::Held] {
            for id in self.ids(place, "msg")? {
                let msg = self.msg(place, &id);
                // With a `.json` it had attempts, so it was acknowledged: never removed here. Only
                // a file cut short is removed; one that cannot be read now (EIO, permissions) or
                // was written by a newer version is kept and reported by `list`.
                if !self.json(place, &id).exists()
                    && matches!(read_trailer(&msg), Err(TrailerError::Incomplete))
                {
                    std::fs::remove_file(&msg)?;
                    removed += 1;
                }
            }
        }
        for place in [Place::Queue, Place::Dead, Place::Held] {
            for id in self.ids(place, "json")? {
                // Beside an `.eml` it is an old-format record the upgrade could not read: kept.
                let eml = self.dir(place).join(format!("{id}.eml"));
                if !self.msg(place, &id).exists() && !eml.exists() {
                    std::fs::remove_file(self.json(place, &id)).or_else(ignore_missing)?;
                }
            }
        }
        for dir in [
            self.incoming(),
            self.dir(Place::Queue),
            self.dir(Place::Dead),
            self.dir(Place::Held),
        ] {
            for item in std::fs::read_dir(&dir)? {
                let item = item?;
                let name = item.file_name();
                let name = name.to_string_lossy();
                if dir == self.incoming() || name.starts_with(".tmp-") {
                    std::fs::remove_file(item.path()).or_else(ignore_missing)?;
                }
            }
        }
        safeio::sync_dir(&self.dir(Place::Queue))?;
        safeio::sync_dir(&self.dir(Place::Dead))?;
        safeio::sync_dir(&self.dir(Place::Held))?;
        Ok(removed)
    }

    /// Spools written before a message became one file held `<id>.eml` (the bytes) and `<id>.json`
    /// (the record, the same [`Entry`] as now). Each pair becomes a `.msg`, the `.json` staying as
    /// the current record, so mail queued by an older server is delivered by a newer one. An
    /// `.eml` without its record was an unfinished accept then too: removed (and counted).
    fn upgrade_eml_pairs(&self) -> io::Result<usize> {
        let (mut upgraded, mut removed) = (0, 0);
        for place in [Place::Queue, Place::Dead] {
            for id in self.ids(place, "eml")? {
                let eml = self.dir(place).join(format!("{id}.eml"));
                if self.msg(place, &id).exists() {
                    // Converted (complete: written under a temporary name) before a crash.
                    std::fs::remove_file(&eml)?;
                    continue;
                }
                let record = match std::fs::read(self.json(place, &id)) {
                    Ok(bytes) => Entry::from_json(&bytes).map_err(invalid),
                    Err(err) => Err(err),
                };
                match record {
                    Ok(mut entry) => {
                        entry.size = std::fs::metadata(&eml)?.len();
                        let message = Message::stored(eml.clone(), entry.size);
                        write_msg(&self.msg(place, &id), &Bytes::of(&message), &entry)?;
                        std::fs::remove_file(&eml)?;
                        upgraded += 1;
                    }
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        std::fs::remove_file(&eml)?;
                        removed += 1;
                    }
                    Err(err) => {
                        tracing::error!(id, %err, "unreadable record beside an old-format message file; left in place (see docs/queue.md)")
                    }
                }
            }
            safeio::sync_dir(&self.dir(place))?;
        }
        if upgraded > 0 {
            tracing::info!(
                upgraded,
                "queued messages converted to the one-file spool format"
            );
        }
        Ok(removed)
    }
}
