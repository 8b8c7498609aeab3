//! The id of a message in the inbox, checked once where it comes in — a request, a file name in
//! `file.dir`, the SMTP session — so that a file path built from one always names a file in the
//! inbox's own folder. The store builds paths only from an [`InboxId`], and [`InboxId::parse`] is
//! the only way to make one.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Longest id: with `.json` it must stay a legal file name (255 bytes on Linux and macOS).
const MAX_LEN: usize = 200;

/// A message's id: the SMTP session's message id, or in file mode the name of a `<id>.eml` in
/// `file.dir` (which may have been put there by hand, so any name that is one file in that folder
/// is an id, not only the server's own hex ids).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InboxId(Arc<str>);

/// Why a text is not an [`InboxId`]. It does not repeat the text: that came from the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a message id (ids are file names in the inbox: no '/', '\\' or control characters, \
     not starting with '.', at most {MAX_LEN} bytes)"
)]
pub struct InvalidId;

impl InboxId {
    /// `text` as an id when it names one file inside a folder: not empty, no path separator, no
    /// control character (the read log is one id per line), not hidden and not `.`/`..`.
    pub fn parse(text: &str) -> Result<InboxId, InvalidId> {
        let one_file_name = !text.is_empty()
            && text.len() <= MAX_LEN
            && !text.starts_with('.')
            && !text
                .chars()
                .any(|c| c == '/' || c == '\\' || c.is_control());
        match one_file_name {
            true => Ok(InboxId(text.into())),
            false => Err(InvalidId),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of this message's file with `extension` (`eml`, `json`): a single path
    /// component, so joined to a folder it stays in that folder.
    pub fn file_name(&self, extension: &str) -> String {
        format!("{}.{extension}", self.0)
    }
}

impl Deref for InboxId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for InboxId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_single_file_names() {
        for ok in [
            "0196a1b2c3d4e5f6a7b",
            "handmade",
            "a b (copy)",
            "résumé",
            "x..y",
        ] {
            assert_eq!(InboxId::parse(ok).unwrap().as_str(), ok);
        }
        let long = "a".repeat(MAX_LEN + 1);
        for bad in [
            "",
            ".",
            "..",
            "../victim/token",
            "/etc/passwd",
            "a/b",
            "a\\b",
            ".hidden",
            "a\nr b",
            "a\0b",
            long.as_str(),
        ] {
            assert_eq!(InboxId::parse(bad), Err(InvalidId), "{bad:?}");
        }
        let id = InboxId::parse("abc").unwrap();
        assert_eq!(id.file_name("eml"), "abc.eml");
    }
}
