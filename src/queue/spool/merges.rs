//! The spool's merge records: `merged/<id>.json`, one per merge of held transactions (see
//! `queue::split`), written atomically and made durable before anything of the merge moves.

use std::io;
use std::path::PathBuf;

use super::{Spool, blocking};
use crate::queue::record::Merge;
use crate::queue::store::StoreError;
use crate::safeio;

impl Spool {
    fn merged_dir(&self) -> PathBuf {
        self.root().join("merged")
    }

    fn merge_path(&self, id: &str) -> PathBuf {
        self.merged_dir().join(format!("{id}.json"))
    }

    pub(super) async fn write_merge(&self, merge: &Merge) -> io::Result<()> {
        let (dir, file) = (self.merged_dir(), self.merge_path(&merge.entry.id));
        let bytes = serde_json::to_vec_pretty(merge).map_err(io::Error::other)?;
        blocking(move || {
            std::fs::create_dir_all(&dir)?;
            safeio::write_atomically(&file, &bytes)?;
            safeio::sync_dir(&dir)
        })
        .await
    }

    pub(super) fn read_merges(&self) -> (Vec<Merge>, Vec<(String, StoreError)>) {
        let (mut merges, mut broken) = (Vec::new(), Vec::new());
        let Ok(items) = std::fs::read_dir(self.merged_dir()) else {
            return (merges, broken);
        };
        for item in items.filter_map(Result::ok) {
            let path = item.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let read = std::fs::read(&path)
                .map_err(StoreError::from)
                .and_then(|bytes| Merge::from_json(&bytes).map_err(StoreError::from));
            match read {
                Ok(merge) => merges.push(merge),
                Err(err) => broken.push((path.display().to_string(), err)),
            }
        }
        merges.sort_by_key(|m: &Merge| m.at);
        (merges, broken)
    }

    pub(super) async fn remove_merge(&self, id: &str) -> io::Result<()> {
        let file = self.merge_path(id);
        blocking(move || match std::fs::remove_file(file) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        })
        .await
    }
}
