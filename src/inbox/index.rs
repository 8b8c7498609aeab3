//! The inbox's index: every message it holds, newest first, with its read state and (once
//! read) its summary. Both stores keep one; only the bodies live elsewhere.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::id::InboxId;
use super::mime::Summary;

/// One message in the index.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The id (the SMTP session's message id, the file name stem in file mode).
    pub id: InboxId,
    /// When it was received, milliseconds since the epoch.
    pub received_ms: i64,
    /// Size in bytes.
    pub size: u64,
    /// Whether it was opened (or marked read).
    pub read: bool,
    /// The summary, once the message has been read from its store (file mode loads lazily).
    pub summary: Option<Arc<Summary>>,
}

/// Entries ordered by arrival, with a lookup by id.
#[derive(Debug, Default)]
pub struct Index {
    ordered: BTreeMap<(i64, InboxId), Entry>,
    by_id: HashMap<InboxId, i64>,
    unread: usize,
}

impl Index {
    /// Adds (or replaces) an entry.
    pub fn insert(&mut self, entry: Entry) {
        self.remove(&entry.id);
        if !entry.read {
            self.unread += 1;
        }
        self.by_id.insert(entry.id.clone(), entry.received_ms);
        self.ordered
            .insert((entry.received_ms, entry.id.clone()), entry);
    }

    /// Removes an entry, returning it.
    pub fn remove(&mut self, id: &str) -> Option<Entry> {
        let (id, received) = self.by_id.remove_entry(id)?;
        let entry = self.ordered.remove(&(received, id))?;
        if !entry.read {
            self.unread -= 1;
        }
        Some(entry)
    }

    /// The entry `id`.
    pub fn get(&self, id: &str) -> Option<&Entry> {
        let (id, received) = self.by_id.get_key_value(id)?;
        self.ordered.get(&(*received, id.clone()))
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Entry> {
        let (id, received) = self.by_id.get_key_value(id)?;
        self.ordered.get_mut(&(*received, id.clone()))
    }

    /// Sets the read state; true when it changed.
    pub fn set_read(&mut self, id: &str, read: bool) -> bool {
        let Some(entry) = self.get_mut(id) else {
            return false;
        };
        if entry.read == read {
            return false;
        }
        entry.read = read;
        if read {
            self.unread -= 1;
        } else {
            self.unread += 1;
        }
        true
    }

    /// Records a loaded summary.
    pub fn set_summary(&mut self, id: &str, summary: Arc<Summary>) {
        if let Some(entry) = self.get_mut(id) {
            entry.summary = Some(summary);
        }
    }

    /// The newest entries first, skipping `start`.
    pub fn newest_first(&self) -> impl Iterator<Item = &Entry> {
        self.ordered.values().rev()
    }

    /// The newest entry.
    pub fn newest(&self) -> Option<&Entry> {
        self.ordered.values().next_back()
    }

    /// The oldest entry's id.
    pub fn oldest(&self) -> Option<InboxId> {
        self.ordered.values().next().map(|e| e.id.clone())
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// How many are unread.
    pub fn unread(&self) -> usize {
        self.unread
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, received_ms: i64) -> Entry {
        Entry {
            id: InboxId::parse(id).unwrap(),
            received_ms,
            size: 1,
            read: false,
            summary: None,
        }
    }

    #[test]
    fn newest_first_with_counts() {
        let mut index = Index::default();
        index.insert(entry("b", 2));
        index.insert(entry("a", 1));
        index.insert(entry("c", 2));
        let ids: Vec<&str> = index.newest_first().map(|e| &*e.id).collect();
        assert_eq!(ids, ["c", "b", "a"]);
        assert_eq!((index.len(), index.unread()), (3, 3));
        assert!(index.set_read("b", true) && !index.set_read("b", true));
        assert_eq!(index.unread(), 2);
        assert_eq!(&*index.newest().unwrap().id, "c");
        assert_eq!(index.oldest().as_deref(), Some("a"));
        assert!(index.remove("b").unwrap().read);
        assert_eq!((index.len(), index.unread()), (2, 2));
        index.insert(entry("a", 5));
        assert_eq!(&*index.newest().unwrap().id, "a", "replaced, not doubled");
        assert_eq!(index.len(), 2);
        assert!(index.remove("zz").is_none() && !index.set_read("zz", true));
    }
}
