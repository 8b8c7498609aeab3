//! Tags, as Mailpit has them: from the `X-Tags` header when a message is captured (and, with
//! `inbox.tags_plus_addresses`, from the `+tag` of its addresses), set, renamed and deleted
//! through `/api/v1/tags`, searched with `tag:`.
//!
//! A message's tags are those its summary gives until the API sets them; from then on the set
//! ones, kept here by id. File mode records them in `file.dir/.smtp2gmail-inbox-tags` beside the
//! read log, the same way: lines appended, later ones winning, the file rewritten at start with
//! only the messages still there.
//!
//! Mailpit's rules: a tag is made of letters, digits, `-`, `_`, `.` and spaces (anything else
//! becomes a space, runs of spaces one, ends trimmed); a message's tags are unique whatever their
//! case, sorted.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::id::InboxId;
use super::index::{Entry, Index};
use super::mime::{Mailbox, Summary};

/// The tag log in `file.dir`.
pub const TAG_LOG: &str = ".smtp2gmail-inbox-tags";

/// One tag cleaned: characters Mailpit does not allow become spaces, runs of whitespace one
/// space, the ends trimmed. Empty when nothing is left.
pub fn clean(tag: &str) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ');
    let spaced: String = tag
        .chars()
        .map(|c| if allowed(c) { c } else { ' ' })
        .collect();
    spaced.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The comma-separated tags of an `X-Tags` value, not yet cleaned.
pub fn split(value: &str) -> Vec<String> {
    value.split(',').map(str::to_string).collect()
}

/// `tags` cleaned, without empty ones and without repeats whatever their case (the first
/// spelling stays), sorted.
pub fn normalized(tags: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<String> = tags
        .into_iter()
        .map(|t| clean(&t))
        .filter(|t| !t.is_empty() && seen.insert(t.to_lowercase()))
        .collect();
    out.sort();
    out
}

/// The `+tag` parts of addresses (`app+signup+eu@example.com` gives `signup` and `eu`).
fn plus_tags<'a>(mailboxes: impl Iterator<Item = &'a Mailbox>) -> Vec<String> {
    mailboxes
        .filter_map(|m| m.address.split_once('@').map(|(local, _)| local))
        .filter_map(|local| local.split_once('+').map(|(_, tags)| tags))
        .flat_map(|tags| tags.split('+').map(str::to_string))
        .collect()
}

/// The tags of every message: those set through the API, else those of its summary.
pub struct Tags {
    set: Mutex<HashMap<InboxId, Vec<String>>>,
    plus_addresses: bool,
    /// File mode: where the tag log is.
    dir: Option<PathBuf>,
}

impl Tags {
    /// Console mode: tags in memory only.
    pub fn memory(plus_addresses: bool) -> Tags {
        Tags {
            set: Mutex::default(),
            plus_addresses,
            dir: None,
        }
    }

    /// File mode: the tags `dir`'s log records for the messages of `index`; the log is
    /// rewritten with only those.
    pub fn dir(dir: &Path, index: &Index, plus_addresses: bool) -> io::Result<Tags> {
        let path = dir.join(TAG_LOG);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => String::new(),
            Err(err) => return Err(err),
        };
        let mut set = HashMap::new();
        for line in text.lines() {
            let Some((id, json)) = line.split_once(' ') else {
                continue;
            };
            let (Ok(id), Ok(tags)) = (InboxId::parse(id), serde_json::from_str(json)) else {
                continue;
            };
            if index.get(&id).is_some() {
                set.insert(id, tags);
            }
        }
        if !text.is_empty() {
            crate::safeio::write_atomically(&path, log_lines(set.iter()).as_bytes())?;
        }
        Ok(Tags {
            set: Mutex::new(set),
            plus_addresses,
            dir: Some(dir.to_path_buf()),
        })
    }

    fn set_tags(&self) -> std::sync::MutexGuard<'_, HashMap<InboxId, Vec<String>>> {
        self.set.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tags of `entry`.
    pub fn of(&self, entry: &Entry) -> Vec<String> {
        let set = self.set_tags().get(&entry.id).cloned();
        effective(set, entry, self.plus_addresses)
    }

    /// A copy to read many messages' tags by, without holding the lock (searches run on the
    /// blocking pool).
    pub fn snapshot(&self) -> TagView {
        TagView {
            set: self.set_tags().clone(),
            plus_addresses: self.plus_addresses,
        }
    }

    /// Sets the tags of `ids` (cleaned); returns them as set.
    pub async fn set(&self, ids: &[InboxId], tags: Vec<String>) -> Vec<String> {
        let tags = normalized(tags);
        let changed: Vec<(InboxId, Vec<String>)> =
            ids.iter().map(|id| (id.clone(), tags.clone())).collect();
        self.record(changed).await;
        tags
    }

    /// Records new tags for messages (file mode: appends them to the log).
    pub async fn record(&self, changed: Vec<(InboxId, Vec<String>)>) {
        if changed.is_empty() {
            return;
        }
        let text = log_lines(changed.iter().map(|(id, tags)| (id, tags)));
        self.set_tags().extend(changed);
        let Some(dir) = self.dir.clone() else {
            return;
        };
        let appended = tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(TAG_LOG))?
                .write_all(text.as_bytes())
        })
        .await;
        if let Ok(Err(err)) | Err(err) = appended.map_err(io::Error::other) {
            tracing::warn!(%err, "cannot record tags in {TAG_LOG}; they last until restart");
        }
    }

    /// Forgets the tags of deleted messages.
    pub fn forget(&self, gone: &[InboxId]) {
        let mut set = self.set_tags();
        for id in gone {
            set.remove(id);
        }
    }
}

/// A copy of the tags set through the API, to read many messages' tags by.
pub struct TagView {
    set: HashMap<InboxId, Vec<String>>,
    plus_addresses: bool,
}

impl TagView {
    /// The tags of `entry`.
    pub fn of(&self, entry: &Entry) -> Vec<String> {
        effective(self.set.get(&entry.id).cloned(), entry, self.plus_addresses)
    }

    /// Every tag in use with how many messages carry it, by name.
    pub fn counts<'a>(&self, entries: impl Iterator<Item = &'a Entry>) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for entry in entries {
            for tag in self.of(entry) {
                *counts.entry(tag).or_insert(0) += 1;
            }
        }
        counts
    }
}

/// The tags set through the API, else those of the entry's summary.
fn effective(set: Option<Vec<String>>, entry: &Entry, plus_addresses: bool) -> Vec<String> {
    set.unwrap_or_else(|| {
        let summary = entry.summary.as_deref();
        summary.map_or_else(Vec::new, |s| from_summary(s, plus_addresses))
    })
}

fn from_summary(summary: &Summary, plus_addresses: bool) -> Vec<String> {
    if !plus_addresses {
        return summary.tags.clone();
    }
    let addresses = summary
        .from
        .iter()
        .chain(&summary.to)
        .chain(&summary.cc)
        .chain(&summary.bcc);
    let plus = plus_tags(addresses);
    normalized(summary.tags.iter().cloned().chain(plus))
}

fn log_lines<'a>(entries: impl Iterator<Item = (&'a InboxId, &'a Vec<String>)>) -> String {
    entries
        .map(|(id, tags)| format!("{id} {}\n", serde_json::to_string(tags).unwrap_or_default()))
        .collect()
}

/// What renaming or deleting a tag does to one message's tags: `None` when it does not carry it.
pub fn renamed(tags: &[String], from: &str, to: Option<&str>) -> Option<Vec<String>> {
    let carries = tags.iter().any(|t| t.eq_ignore_ascii_case(from));
    carries.then(|| {
        let kept = tags
            .iter()
            .filter(|t| !t.eq_ignore_ascii_case(from))
            .cloned();
        normalized(kept.chain(to.map(str::to_string)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_cleaned_deduplicated_and_sorted_as_mailpit_does() {
        assert_eq!(clean("  hello,  wörld!! "), "hello w rld");
        assert_eq!(clean("v1.2_beta-3"), "v1.2_beta-3");
        assert_eq!(clean("@@@"), "");
        let tags = normalized(split(" signup, Welcome ,, SIGNUP,b@d ,welcome"));
        assert_eq!(tags, ["Welcome", "b d", "signup"]);
    }

    #[test]
    fn plus_addresses_give_tags() {
        let summary = Summary {
            to: vec![Mailbox {
                name: String::new(),
                address: "app+signup+eu@example.com".into(),
            }],
            from: Some(Mailbox {
                name: String::new(),
                address: "plain@example.com".into(),
            }),
            tags: vec!["x".into()],
            ..Summary::default()
        };
        assert_eq!(from_summary(&summary, true), ["eu", "signup", "x"]);
        assert_eq!(from_summary(&summary, false), ["x"]);
    }

    #[test]
    fn renaming_and_deleting_touch_only_carriers() {
        let tags = vec!["a".to_string(), "Old".to_string()];
        assert_eq!(renamed(&tags, "old", Some("new")).unwrap(), ["a", "new"]);
        assert_eq!(renamed(&tags, "old", None).unwrap(), ["a"]);
        assert!(renamed(&tags, "zzz", None).is_none());
    }
}
