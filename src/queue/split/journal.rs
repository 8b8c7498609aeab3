//! The record of each merge, written before anything moves (the spool keeps it in
//! `merged/<id>.json`).
//!
//! Releasing a group moves its oldest transaction to the queue (or the dead letters) under the
//! merged record and removes the other transactions: several steps, so a crash can stop it
//! midway. The record is written first and made durable; at start every record whose
//! transactions are still held is carried out again (the move if the oldest is still held, then the removals). A
//! crash therefore leaves either the held transactions, which are grouped again, or the merged
//! message with its record: never both sent, never neither.
//!
//! The record stays for `queue.max_age` after the merge. A transaction that arrives again later —
//! the client resending one whose 250 it never saw — and names only recipients who already have
//! the message is recognised by it and dropped, instead of starting a group that would end in a
//! second copy or a dead letter.

use crate::queue::record::{Merge, Place};
use crate::queue::store::{MergeJournal, Store, StoreError};

/// Carries out a merge: its record durably first, then the moves (see the module docs).
pub(super) async fn carry_out(
    store: &dyn Store,
    journal: &dyn MergeJournal,
    merge: &Merge,
) -> Result<(), StoreError> {
    journal.save_merge(merge).await?;
    complete(store, merge).await.map(drop)
}

/// Does whatever of a recorded merge is not done yet. Returns true when it moved the merged
/// message into place (which the scheduler then has to hear about).
pub(super) async fn complete(store: &dyn Store, merge: &Merge) -> Result<bool, StoreError> {
    let id = &merge.entry.id;
    let moved = store.contains(Place::Held, id).await?;
    if moved {
        store
            .move_to(Place::Held, merge.place(), &merge.entry)
            .await?;
    }
    for part in merge.parts().iter().filter(|part| *part != id) {
        store.remove(Place::Held, part).await?;
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::queue::record::Entry;
    use crate::queue::spool::Spool;
    use std::time::SystemTime;

    async fn held(spool: &Spool, id: &str) -> Entry {
        let entry = Entry {
            size: 7,
            ..crate::queue::split::test_part(id, SystemTime::now(), &["a@x"])
        };
        let message = Message::from_bytes(b"To: a@x".to_vec());
        spool.put(Place::Held, &entry, &message).await.unwrap();
        entry
    }

    fn merge_of(parts: &[&Entry]) -> Merge {
        let mut entry = parts[0].clone();
        entry.rcpt_to = vec!["a@x".into(), "b@x".into()];
        if let Some(split) = &mut entry.split {
            split.parts = parts.iter().map(|p| p.id.clone()).collect();
        }
        Merge {
            entry,
            dead: false,
            served: ["a@x".to_string(), "b@x".to_string()].into(),
            at: SystemTime::now(),
        }
    }

    #[tokio::test]
    async fn a_merge_moves_the_oldest_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (first, second) = (held(&spool, "01").await, held(&spool, "02").await);
        let merge = merge_of(&[&first, &second]);
        carry_out(&spool, &spool, &merge).await.unwrap();
        assert_eq!(
            spool.read(Place::Queue, "01").await.unwrap().unwrap(),
            merge.entry
        );
        assert!(spool.list(Place::Held).await.unwrap().0.is_empty());
        let (loaded, broken) = spool.merges().await.unwrap();
        assert!(broken.is_empty());
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].parts(), ["01", "02"]);
        assert!(
            !complete(&spool, &loaded[0]).await.unwrap(),
            "nothing left to do"
        );
        spool.forget_merge("01").await.unwrap();
        assert!(spool.merges().await.unwrap().0.is_empty());
    }

    #[tokio::test]
    async fn a_merge_cut_short_is_completed_from_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (first, second) = (held(&spool, "01").await, held(&spool, "02").await);
        let merge = merge_of(&[&first, &second]);
        // The record was written, then the server died before moving anything.
        spool.save_merge(&merge).await.unwrap();
        let (loaded, _) = spool.merges().await.unwrap();
        assert!(complete(&spool, &loaded[0]).await.unwrap());
        assert_eq!(
            spool
                .read(Place::Queue, "01")
                .await
                .unwrap()
                .unwrap()
                .rcpt_to
                .len(),
            2
        );
        assert!(spool.list(Place::Held).await.unwrap().0.is_empty());

        // Died after the move, before removing the other transaction: only the removal is left.
        let (third, fourth) = (held(&spool, "03").await, held(&spool, "04").await);
        let merge = merge_of(&[&third, &fourth]);
        spool
            .move_to(Place::Held, Place::Queue, &merge.entry)
            .await
            .unwrap();
        assert!(!complete(&spool, &merge).await.unwrap());
        assert!(spool.list(Place::Held).await.unwrap().0.is_empty());
        assert_eq!(
            spool.read(Place::Queue, "03").await.unwrap().unwrap(),
            merge.entry
        );
    }
}
