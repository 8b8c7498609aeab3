//! The `.msg` format and crash recovery, on real files.

use std::path::Path;
use std::time::SystemTime;

use super::format::FOOTER_LEN;
use super::{Entry, Place, Spool};
use crate::message::{BodyWriter, Message, SPILL_THRESHOLD};
use crate::queue::store::{Store, StoreError};
use crate::queue::test_envelope;

fn entry_for(message: &Message) -> Entry {
    Entry::new(&test_envelope(SystemTime::now()), message.len(), "default")
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_message_is_one_file_holding_the_exact_bytes_then_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let bytes = b"Subject: hi\r\n\r\nbody without a final newline".to_vec();
    let message = Message::from_bytes(bytes.clone());
    let entry = entry_for(&message);
    spool.put(Place::Queue, &entry, &message).await.unwrap();

    assert_eq!(
        files(&dir.path().join("queue")),
        [format!("{}.msg", entry.id)]
    );
    let stored = std::fs::read(spool.msg(Place::Queue, &entry.id)).unwrap();
    assert_eq!(&stored[..bytes.len()], &bytes[..]);
    assert!(stored.ends_with(b"\n") && stored.len() > bytes.len() + FOOTER_LEN);
    assert_eq!(
        spool.read(Place::Queue, &entry.id).await.unwrap().unwrap(),
        entry
    );
    let (listed, broken) = spool.list(Place::Queue).await.unwrap();
    assert_eq!((listed, broken.len()), (vec![entry], 0));
}

#[tokio::test]
async fn the_record_file_supersedes_the_first_record_and_goes_with_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let message = Message::from_bytes(b"Subject: hi\r\n\r\nx\r\n".to_vec());
    let mut entry = entry_for(&message);
    spool.put(Place::Queue, &entry, &message).await.unwrap();
    entry.record(SystemTime::now(), "Gmail answered 503".into());
    spool.update(Place::Queue, &entry).await.unwrap();
    assert_eq!(
        spool
            .read(Place::Queue, &entry.id)
            .await
            .unwrap()
            .unwrap()
            .attempts,
        1
    );

    entry.dead_reason = Some("400 invalidArgument".into());
    spool
        .move_to(Place::Queue, Place::Dead, &entry)
        .await
        .unwrap();
    assert!(files(&dir.path().join("queue")).is_empty());
    assert_eq!(
        spool.read(Place::Dead, &entry.id).await.unwrap().unwrap(),
        entry
    );

    spool.remove(Place::Dead, &entry.id).await.unwrap();
    assert!(files(&dir.path().join("dead")).is_empty());
}

#[tokio::test]
async fn recovery_removes_unfinished_accepts_and_leftovers_but_keeps_acknowledged_mail() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let message = Message::from_bytes(b"Subject: hi\r\n\r\nx\r\n".to_vec());
    let complete = entry_for(&message);
    spool.put(Place::Queue, &complete, &message).await.unwrap();
    let with_history = entry_for(&message);
    spool
        .put(Place::Queue, &with_history, &message)
        .await
        .unwrap();
    spool.update(Place::Queue, &with_history).await.unwrap();
    let queue = dir.path().join("queue");
    // A crash mid-write: the file is cut short anywhere, even inside the footer.
    let whole = std::fs::read(spool.msg(Place::Queue, &complete.id)).unwrap();
    for (name, cut) in [("aa01", 0), ("aa02", 10), ("aa03", whole.len() - 3)] {
        std::fs::write(queue.join(format!("{name}.msg")), &whole[..cut]).unwrap();
        assert!(spool.read(Place::Queue, name).await.is_err());
    }
    // A record left behind by a removal that stopped halfway, and a spilled body.
    std::fs::write(queue.join("bb01.json"), b"{}").unwrap();
    std::fs::write(dir.path().join("incoming/.tmpXYZ"), b"partial").unwrap();
    // A damaged message whose record says it was acknowledged is kept for the operator.
    std::fs::write(queue.join("cc01.msg"), b"damaged").unwrap();
    std::fs::copy(
        queue.join(format!("{}.json", with_history.id)),
        queue.join("cc01.json"),
    )
    .unwrap();

    assert_eq!(spool.recover().unwrap(), 3);
    let mut expected = vec![
        format!("{}.msg", complete.id),
        format!("{}.json", with_history.id),
        format!("{}.msg", with_history.id),
        "cc01.json".to_string(),
        "cc01.msg".to_string(),
    ];
    expected.sort();
    assert_eq!(files(&queue), expected);
    assert!(files(&dir.path().join("incoming")).is_empty());
    assert_eq!(
        spool
            .read(Place::Queue, &complete.id)
            .await
            .unwrap()
            .unwrap(),
        complete
    );
}

#[tokio::test]
async fn a_spilled_message_never_replaces_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut writer = BodyWriter::new(4 * SPILL_THRESHOLD as u64, &spool.incoming());
    writer
        .staging()
        .extend_from_slice(&vec![b'x'; 2 * SPILL_THRESHOLD]);
    writer.commit().await;
    let message = writer.finish().await.unwrap();
    let entry = entry_for(&message);
    let path = spool.msg(Place::Queue, &entry.id);
    std::fs::write(&path, b"another message's file").unwrap();
    let refused = spool.put(Place::Queue, &entry, &message).await.unwrap_err();
    assert!(matches!(refused, StoreError::Exists(_)), "{refused}");
    assert_eq!(std::fs::read(&path).unwrap(), b"another message's file");
}

#[tokio::test]
async fn a_spilled_message_is_linked_with_its_record_and_still_reads_as_itself() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut writer = BodyWriter::new(4 * SPILL_THRESHOLD as u64, &spool.incoming());
    let bytes: Vec<u8> = (0..2 * SPILL_THRESHOLD + 3).map(|i| i as u8).collect();
    for piece in bytes.chunks(64 * 1024) {
        writer.staging().extend_from_slice(piece);
        writer.commit().await;
    }
    let message = writer.finish().await.unwrap();
    let entry = entry_for(&message);
    spool.put(Place::Queue, &entry, &message).await.unwrap();

    assert_eq!(
        spool.read(Place::Queue, &entry.id).await.unwrap().unwrap(),
        entry
    );
    let stored = std::fs::read(spool.msg(Place::Queue, &entry.id)).unwrap();
    assert!(stored[..bytes.len()] == bytes[..]);
    // The session's view of the message is unchanged by the record appended to its file.
    assert!(message.bytes().await.unwrap() == bytes);
    let mut copied = Vec::new();
    message.copy_to(&mut copied).await.unwrap();
    assert!(copied == bytes);
    drop(message);
    assert!(files(&spool.incoming()).is_empty());
}

#[tokio::test]
async fn a_spool_of_the_two_file_format_is_upgraded_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let bytes = b"Subject: queued by an older server\r\n\r\nbody\r\n".to_vec();
    let mut entry = entry_for(&Message::from_bytes(bytes.clone()));
    entry.record(SystemTime::now(), "Gmail answered 503".into());
    let queue = dir.path().join("queue");
    std::fs::write(queue.join(format!("{}.eml", entry.id)), &bytes).unwrap();
    std::fs::write(
        queue.join(format!("{}.json", entry.id)),
        serde_json::to_vec_pretty(&entry).unwrap(),
    )
    .unwrap();
    // An old-format accept that never got its record (no 250 was given).
    std::fs::write(queue.join("dd01.eml"), b"half").unwrap();

    assert_eq!(spool.recover().unwrap(), 1);
    let mut expected = vec![format!("{}.json", entry.id), format!("{}.msg", entry.id)];
    expected.sort();
    assert_eq!(files(&queue), expected);
    assert_eq!(
        spool.read(Place::Queue, &entry.id).await.unwrap().unwrap(),
        entry
    );
    let stored = std::fs::read(spool.msg(Place::Queue, &entry.id)).unwrap();
    assert_eq!(&stored[..bytes.len()], &bytes[..]);
    // Once the history file goes, the record inside the `.msg` still describes the message.
    std::fs::remove_file(queue.join(format!("{}.json", entry.id))).unwrap();
    assert_eq!(
        spool.read(Place::Queue, &entry.id).await.unwrap().unwrap(),
        entry
    );
}

#[tokio::test]
async fn recovery_keeps_what_it_cannot_read_and_what_a_newer_version_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let queue = dir.path().join("queue");
    // An old-format message whose record does not parse: the upgrade cannot convert it, and the
    // leftover sweep must not take its record (then the body would go at the next start).
    std::fs::write(queue.join("ee01.eml"), b"Subject: old\r\n\r\nx\r\n").unwrap();
    std::fs::write(queue.join("ee01.json"), b"{ not json").unwrap();
    // A message file from a newer server (a downgrade): complete, just not ours to read.
    let mut newer = b"Subject: new\r\n\r\nx\r\n{}".to_vec();
    newer.extend_from_slice(b"\nsmtp2gmail record v2 0000000002\n");
    std::fs::write(queue.join("ee02.msg"), &newer).unwrap();

    for _ in 0..2 {
        assert_eq!(spool.recover().unwrap(), 0);
        assert_eq!(files(&queue), ["ee01.eml", "ee01.json", "ee02.msg"]);
    }
    let err = spool.read(Place::Queue, "ee02").await.unwrap_err();
    assert!(err.to_string().contains("record v2"), "{err}");
    let (_, broken) = spool.list(Place::Queue).await.unwrap();
    assert_eq!(broken.len(), 1, "reported by queue list");
}

/// Mail queued by the previous version (records without `"version"`) is read and delivered by
/// this one; a record of a newer version is kept and reported, never removed as cut short.
#[tokio::test]
async fn records_of_the_previous_version_are_read_and_of_a_newer_one_kept() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let queue = dir.path().join("queue");
    let bytes = b"Subject: queued before the upgrade\r\n\r\nbody\r\n".to_vec();
    let entry = entry_for(&Message::from_bytes(bytes.clone()));
    let write = |id: &str, version: Option<u32>| {
        let mut record = serde_json::to_value(Entry {
            id: id.into(),
            ..entry.clone()
        })
        .unwrap();
        match version {
            Some(version) => record["version"] = version.into(),
            None => drop(record.as_object_mut().unwrap().remove("version")),
        }
        let record = serde_json::to_vec(&record).unwrap();
        let mut file = bytes.clone();
        file.extend_from_slice(&record);
        file.extend_from_slice(&super::format::footer(record.len()));
        std::fs::write(queue.join(format!("{id}.msg")), file).unwrap();
    };
    write("ab01", None);
    write("ab02", Some(99));

    assert_eq!(spool.recover().unwrap(), 0, "both are complete files");
    let old = spool.read(Place::Queue, "ab01").await.unwrap().unwrap();
    assert_eq!(old.version, crate::queue::record::VERSION);
    assert_eq!((old.size, old.rcpt_to), (entry.size, entry.rcpt_to.clone()));
    let err = spool.read(Place::Queue, "ab02").await.unwrap_err();
    assert!(err.to_string().contains("newer smtp2gmail"), "{err}");
    let (listed, broken) = spool.list(Place::Queue).await.unwrap();
    assert_eq!((listed.len(), broken.len()), (1, 1));
}

/// Many sessions storing and removing at once share directory syncs (group commit): each put
/// and remove still completes, and a spool opened afresh sees exactly what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_and_removals_share_syncs_and_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut sessions = Vec::new();
    for n in 0..64 {
        let spool = spool.clone();
        sessions.push(tokio::spawn(async move {
            let message = Message::from_bytes(format!("Subject: {n}\r\n\r\nx\r\n").into_bytes());
            let entry = entry_for(&message);
            spool.put(Place::Queue, &entry, &message).await.unwrap();
            // Every other one is delivered at once: its removal shares the syncs too.
            if n % 2 == 0 {
                assert!(spool.remove_delivered(&entry.id).await.is_ok());
                None
            } else {
                Some(entry.id)
            }
        }));
    }
    let mut kept = Vec::new();
    for session in sessions {
        kept.extend(session.await.unwrap());
    }
    kept.sort();
    let reopened = Spool::open(dir.path()).unwrap();
    let (listed, broken) = reopened.list(Place::Queue).await.unwrap();
    let mut ids: Vec<String> = listed.into_iter().map(|e| e.id).collect();
    ids.sort();
    assert_eq!((ids, broken.len()), (kept, 0));
}
