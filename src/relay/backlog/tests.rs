use std::sync::Mutex;

use futures_util::FutureExt;
use std::time::SystemTime;

use super::*;
use crate::message::{Address, MessageId};

/// Records what it is given, in order, and can be held shut.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(String, Vec<u8>)>>,
    gate: tokio::sync::RwLock<()>,
}

#[async_trait::async_trait]
impl Deliver for Recorder {
    async fn deliver(
        &self,
        envelope: &Envelope,
        message: &Message,
    ) -> Result<Receipt, DeliveryError> {
        let _open = self.gate.read().await;
        let bytes = message.to_bytes().await.unwrap().to_vec();
        self.seen
            .lock()
            .unwrap()
            .push((envelope.id.to_string(), bytes));
        Ok(Receipt::new(envelope.id.to_string()))
    }
}

fn envelope() -> Envelope {
    Envelope {
        id: MessageId::generate(),
        mail_from: Some(Address::new("a@example.com")),
        rcpt_to: vec![Address::new("b@example.com")],
        remote: "127.0.0.1:1".parse().unwrap(),
        helo: "client".into(),
        auth_user: None,
        received_at: SystemTime::now(),
    }
}

/// Every accepted message reaches the target, in the order accepted, including those still
/// waiting when the senders go away (a shutdown): the worker drains before it ends.
#[tokio::test]
async fn every_message_is_handed_on_in_order_and_drained_at_the_end() {
    let recorder = Arc::new(Recorder::default());
    let (backlog, worker) = Backlog::bounded(recorder.clone(), 1000, 1 << 20);
    let mut sent = Vec::new();
    for n in 0..300 {
        let envelope = envelope();
        let message = Message::from_bytes(format!("Subject: {n}\r\n\r\nbody\r\n").into_bytes());
        backlog.deliver(&envelope, &message).await.unwrap();
        sent.push((
            envelope.id.to_string(),
            message.to_bytes().await.unwrap().to_vec(),
        ));
    }
    // Nothing ran yet: the worker starts only now, after the last session let go.
    assert!(recorder.seen.lock().unwrap().is_empty());
    drop(backlog);
    worker.run().await;
    assert_eq!(*recorder.seen.lock().unwrap(), sent);
}

/// A client faster than the target waits for room (back-pressure) rather than growing the
/// backlog past its bound.
#[tokio::test]
async fn a_full_backlog_holds_the_next_client_back() {
    let recorder = Arc::new(Recorder::default());
    let shut = recorder.gate.write().await;
    let (backlog, worker) = Backlog::bounded(recorder.clone(), 2, 1 << 20);
    let worker = tokio::spawn(worker.run());
    let message = Message::from_bytes(b"Subject: x\r\n\r\nbody\r\n".to_vec());
    // One in the target (held at the gate), two waiting.
    for _ in 0..3 {
        backlog.deliver(&envelope(), &message).await.unwrap();
    }
    let why = "a fourth message was taken with the backlog full";
    waits_until_opened(&backlog, &message, shut, why).await;
    drop(backlog);
    worker.await.unwrap();
    assert_eq!(recorder.seen.lock().unwrap().len(), 4);
}

/// Asserts that delivering `message` now waits; then opens the target (`shut`) and lets it in.
async fn waits_until_opened(
    backlog: &Backlog,
    message: &Message,
    shut: tokio::sync::RwLockWriteGuard<'_, ()>,
    why: &str,
) {
    let envelope = envelope();
    let mut next = backlog.deliver(&envelope, message);
    assert!((&mut next).now_or_never().is_none(), "{why}");
    drop(shut);
    next.await.unwrap();
}

/// The memory bound counts bodies held in memory: with room for one, a second waits.
#[tokio::test]
async fn bodies_in_memory_are_bounded_in_bytes() {
    let recorder = Arc::new(Recorder::default());
    let shut = recorder.gate.write().await;
    let (backlog, worker) = Backlog::bounded(recorder.clone(), 100, 64 * 1024);
    let worker = tokio::spawn(worker.run());
    let big = Message::from_bytes(vec![b'x'; 40 * 1024]);
    backlog.deliver(&envelope(), &big).await.unwrap();
    let why = "a second 40 KiB body was taken with 64 KiB allowed";
    waits_until_opened(&backlog, &big, shut, why).await;
    drop(backlog);
    worker.await.unwrap();
    assert_eq!(recorder.seen.lock().unwrap().len(), 2);
}

/// A spilled body is shared by a hard link: it outlives the session's message, and the link is
/// gone once the target is done with it.
#[tokio::test]
async fn a_spilled_body_outlives_the_session_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Arc::new(Recorder::default());
    let (backlog, worker) = Backlog::bounded(recorder.clone(), 10, 1 << 20);
    let path = dir.path().join("spill");
    std::fs::write(&path, b"Subject: big\r\n\r\nspilled body\r\n").unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    let message = Message::from_temp_file(tempfile::TempPath::try_from_path(&path).unwrap(), len);
    backlog.deliver(&envelope(), &message).await.unwrap();
    drop(message); // the session is done with it: its spill file is removed
    drop(backlog);
    worker.run().await;
    assert_eq!(
        recorder.seen.lock().unwrap()[0].1,
        b"Subject: big\r\n\r\nspilled body\r\n"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A reader that waits for `caught_up` after a 250 finds that message handed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caught_up_waits_for_what_was_accepted_before() {
    let recorder = Arc::new(Recorder::default());
    let shut = recorder.gate.write().await;
    let (backlog, worker) = Backlog::bounded(recorder.clone(), 100, 1 << 20);
    let progress = backlog.progress();
    let worker = tokio::spawn(worker.run());
    let message = Message::from_bytes(b"Subject: x\r\n\r\nbody\r\n".to_vec());
    for _ in 0..5 {
        backlog.deliver(&envelope(), &message).await.unwrap();
    }
    {
        let mut reader = Box::pin(progress.caught_up());
        assert!(
            (&mut reader).now_or_never().is_none(),
            "caught up with the target shut"
        );
        drop(shut);
        reader.await;
    }
    assert_eq!(recorder.seen.lock().unwrap().len(), 5);
    drop(backlog);
    worker.await.unwrap();
}
