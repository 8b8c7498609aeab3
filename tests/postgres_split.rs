//! Messages an MTA splits, held and merged by replicas sharing one queue on a real PostgreSQL
//! server (a private instance per test, tests/common/postgres.rs): the transactions of one
//! message reach different replicas and Gmail still gets it once, naming every recipient once;
//! an incomplete message is handled by `header_only_recipients` as on the spool; a replica killed
//! in the middle of a merge leaves it to another; a transaction sent again after the merge is
//! dropped; a database of the previous schema with mail in it is migrated and its held
//! transactions merged; a real Postfix as the relayhost client bounces nothing.
//!
//! Without PostgreSQL (or Postfix) installed the tests are ignored, saying how to install it.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::WAIT;
use common::fake_google::FakeGoogle;
use common::pg_store;
use common::postfix::Postfix;
use common::postgres::PgServer;
use common::process::ServerProcess;
use common::server::TestServer;
use common::serving::{Serving, gmail_mode, queue_command};
use common::split_message::{
    self, MESSAGE_ID, assert_once_each, everyone, header_recipients, message, transactions,
};
use smtp2gmail::config::{Config, Delivery, HeaderOnlyRecipients, QueueBackend};
use smtp2gmail::message::{Address, Envelope, Message, MessageId};
use smtp2gmail::queue::postgres::schema::MIGRATIONS;
use smtp2gmail::queue::record::{Entry, IfIncomplete, Merge, Place, SplitRecord};
use smtp2gmail::queue::split::shared::SharedGroups;
use smtp2gmail::queue::store::Store;

/// A replica of the shared queue at `db`.
fn replica_config(google: &FakeGoogle, dir: &Path, db: &PgServer) -> Config {
    let mut config = gmail_mode(google, dir, Delivery::Queue);
    config.queue.backend = QueueBackend::Postgres;
    config.queue.url = db.url();
    config
}

/// The line with `needle` that either replica logs next (whichever of them did it).
async fn logged_by_either(a: &ServerProcess, b: &ServerProcess, needle: &str) -> String {
    tokio::select! {
        line = a.wait_for_log(needle) => line,
        line = b.wait_for_log(needle) => line,
    }
}

/// Waits until `queue list` (run with `config`) shows what `shows` accepts; returns it.
async fn until_listed(config: &Path, shows: impl Fn(&str) -> bool) -> String {
    let listed = tokio::time::timeout(WAIT, async {
        loop {
            let (ok, listed) = queue_command(config, &["list"]).await;
            assert!(ok, "{listed}");
            if shows(&listed) {
                return listed;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let last = || async { queue_command(config, &["list"]).await.1 };
    match listed.await {
        Ok(listed) => listed,
        Err(_) => panic!("queue list never showed it:\n{}", last().await),
    }
}

/// Waits until the shared queue holds nothing: no message, held transaction or dead letter.
async fn until_empty(config: &Path) {
    until_listed(config, |listed| listed.contains("the queue is empty")).await;
}

/// One SQL value from the queue's database.
fn sql(db: &PgServer, query: &str) -> String {
    db.psql_in(common::postgres::DATABASE, query)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn transactions_reaching_two_replicas_are_merged_and_sent_once() {
    let db = PgServer::start();
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let config = replica_config(&google, dir.path(), &db);
    let a = ServerProcess::with_config(&config, dir.path()).await;
    let b = ServerProcess::with_config(&config, dir.path()).await;
    let parts = transactions();

    // Two transactions, one to each replica: held, and listed as such from any host.
    let held = split_message::send(&[(a.smtp, &parts[0]), (b.smtp, &parts[1])]).await;
    let (ok, listed) = a.queue_command(&["list"]).await;
    assert!(ok, "{listed}");
    let marker = format!("HELD for the other transactions of <{MESSAGE_ID}>");
    assert_eq!(listed.matches(&marker).count(), 2, "{listed}");
    assert!(
        held.iter().all(|id| listed.contains(id.as_str())),
        "{listed}"
    );
    assert!(google.uploads().is_empty(), "nothing sent while incomplete");

    // The last one to the second replica: the three are one message.
    split_message::send(&[(b.smtp, &parts[2])]).await;
    google.wait_for_uploads(1).await;
    logged_by_either(&a, &b, "transactions of a split message merged").await;
    until_empty(a.config_file()).await;
    let upload = split_message::assert_one_send_to_everyone(&google);
    split_message::assert_bcc_in_front_of_the_message(&upload.body);
    assert_eq!(sql(&db, "SELECT count(*) FROM smtp2gmail.merges"), "1");

    // A transaction sent again (its 250 lost), to either replica: nobody new, nothing sent.
    split_message::send(&[(a.smtp, &parts[0])]).await;
    logged_by_either(&a, &b, "repeats a message already released; dropped").await;
    until_empty(a.config_file()).await;
    assert_eq!(google.uploads().len(), 1, "no second copy");
    a.stop().await;
    b.stop().await;
}

/// Two replicas in this process with a one-second `split_window`, and `rule` for header-only
/// recipients; two of the three transactions sent, one to each.
async fn incomplete_across_two_replicas(
    rule: HeaderOnlyRecipients,
) -> (PgServer, FakeGoogle, tempfile::TempDir, [TestServer; 2]) {
    let db = PgServer::start();
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let mut config = replica_config(&google, dir.path(), &db);
    config.queue.split_window = Duration::from_secs(1);
    config.gmail.header_only_recipients = Some(rule);
    let a = TestServer::assembled(config.clone()).await;
    let b = TestServer::assembled(config).await;
    // The third transaction (r100..r119 and two Bcc recipients) never comes.
    let parts = transactions();
    split_message::send(&[(a.addr, &parts[0]), (b.addr, &parts[1])]).await;
    (db, google, dir, [a, b])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn transactions_that_never_name_everyone_become_one_dead_letter_under_reject() {
    let (_db, google, _dir, [a, b]) =
        incomplete_across_two_replicas(HeaderOnlyRecipients::Reject).await;
    until_listed(a.config_file(), |l| l.contains("DEAD LETTER")).await;
    split_message::assert_dead_letter_of_the_first_two(&b).await;
    // Nothing went to the recipients; the sender is told by one DSN, from the one replica whose
    // release committed (the other's core never hears of it).
    google.wait_for_uploads(1).await;
    let uploads = google.uploads();
    assert_eq!(uploads.len(), 1, "one DSN, nothing else");
    assert_eq!(uploads[0].recipients, ["app@example.com"]);
    let dsn = String::from_utf8_lossy(&uploads[0].body);
    assert!(
        dsn.contains("Status: 5.7.1") && dsn.contains("In-Reply-To: <split-test-1@example.com>"),
        "{dsn}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn transactions_that_never_name_everyone_are_sent_once_under_allow() {
    let (_db, google, _dir, [a, b]) =
        incomplete_across_two_replicas(HeaderOnlyRecipients::Allow).await;
    google.wait_for_uploads(1).await;
    until_empty(a.config_file()).await;
    split_message::assert_one_send_for_the_first_two(&google);
    a.stop().await;
    b.stop().await;
}

/// The merge of `parts` (the first one the oldest), as a replica would record it.
fn merge_of(parts: &[&Entry]) -> Merge {
    let mut entry = parts[0].clone();
    entry.rcpt_to = parts.iter().flat_map(|p| p.rcpt_to.clone()).collect();
    let split = entry.split.as_mut().unwrap();
    split.parts = parts.iter().map(|p| p.id.clone()).collect();
    Merge {
        entry,
        dead: false,
        served: Default::default(),
        at: SystemTime::now(),
    }
}

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn a_group_is_released_only_as_it_was_read_and_only_once() {
    let db = PgServer::start();
    let store = pg_store::store(&db, pg_store::MINUTE).await;
    let header = ["a@x.org", "b@x.org"].map(String::from).into();
    let bytes = Message::from_bytes(b"To: a@x.org, b@x.org\r\n\r\nhi\r\n".to_vec());
    let now = SystemTime::now();
    let first = held_record(&["a@x.org".to_string()], "g");
    store.hold(&first, &header, &bytes, now).await.unwrap();
    let read = store.due_groups(now, 10).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(
        (read[0].parts.len(), read[0].header.as_ref()),
        (1, Some(&header))
    );
    let due = store.next_group_due().await.unwrap();
    assert!(due.is_some_and(|due| due <= now), "due at once: {due:?}");

    // Another transaction joins after the group was read: what was decided on the group as it
    // was read is not written.
    let second = held_record(&["b@x.org".to_string()], "g");
    store.hold(&second, &header, &bytes, now).await.unwrap();
    let stale = read[0].version;
    let later = now + Duration::from_secs(60);
    assert!(!store.reschedule("g", stale, later).await.unwrap());
    assert!(
        !store
            .settle("g", stale, &merge_of(&[&first]))
            .await
            .unwrap()
    );
    assert_eq!(store.count(Place::Held).await.unwrap(), 2, "nothing moved");

    // Read again, it is released once: two replicas releasing it find it gone the second time.
    let read = store.due_groups(now, 10).await.unwrap();
    assert_eq!(read[0].parts.len(), 2);
    let merge = merge_of(&[&first, &second]);
    let version = read[0].version;
    let (one, other) = tokio::join!(
        store.settle("g", version, &merge),
        store.settle("g", version, &merge)
    );
    assert_eq!(
        [one.unwrap(), other.unwrap()]
            .iter()
            .filter(|x| **x)
            .count(),
        1,
        "released exactly once"
    );
    assert_eq!(store.count(Place::Held).await.unwrap(), 0);
    let queued = store.read(Place::Queue, &first.id).await.unwrap().unwrap();
    assert_eq!(queued, merge.entry, "the oldest, under the merged record");
    assert_eq!(store.next_group_due().await.unwrap(), None);
    assert_eq!(
        sql(
            &db,
            "SELECT count(*) FROM smtp2gmail.merges WHERE group_key = 'g'"
        ),
        "1"
    );
}

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn a_window_that_ended_while_no_replica_ran_starts_again() {
    let db = PgServer::start();
    let store = pg_store::store(&db, pg_store::MINUTE).await;
    let header = ["a@x.org", "b@x.org"].map(String::from).into();
    let bytes = Message::from_bytes(b"To: a@x.org, b@x.org\r\n\r\nhi\r\n".to_vec());
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let mut ended = held_record(&["a@x.org".to_string()], "ended");
    ended.next_attempt = now - hour;
    let open = held_record(&["a@x.org".to_string()], "open");
    for part in [&ended, &open] {
        store.hold(part, &header, &bytes, now).await.unwrap();
    }
    let window = Duration::from_secs(900);
    let restarted = store
        .restart_windows(now - pg_store::MINUTE, now + window, now)
        .await
        .unwrap();
    assert_eq!(restarted, 1, "only the group whose window ended unreleased");
    let deadlines = "SELECT string_agg(key || ':' || (deadline > now()), ',' ORDER BY key) \
                     FROM smtp2gmail.split_groups";
    assert_eq!(sql(&db, deadlines), "ended:true,open:true");
}

/// Waits until a session of the queue's database waits for a row lock.
async fn until_a_session_waits_for_a_lock(db: &PgServer) {
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE datname = 'queue' AND wait_event_type = 'Lock'";
    let waited = tokio::time::timeout(WAIT, async {
        while sql(db, waiting) == "0" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(waited.await.is_ok(), "no merge waited for the locked row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn a_replica_killed_in_the_middle_of_a_merge_leaves_it_to_another() {
    let db = PgServer::start();
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let config = replica_config(&google, dir.path(), &db);
    let doomed = ServerProcess::with_config(&config, dir.path()).await;
    let parts = transactions();
    let first = split_message::send(&[(doomed.smtp, &parts[0])]).await;

    // The test holds the first transaction's row, so the merge stops at it, midway: the merge
    // record written, the group locked, nothing moved yet.
    let (locker, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    locker.batch_execute("BEGIN").await.unwrap();
    locker
        .execute(
            "SELECT FROM smtp2gmail.messages WHERE id = $1 FOR UPDATE",
            &[&first[0]],
        )
        .await
        .unwrap();
    split_message::send(&[(doomed.smtp, &parts[1]), (doomed.smtp, &parts[2])]).await;
    until_a_session_waits_for_a_lock(&db).await;
    doomed.kill().await; // SIGKILL in the middle of the merge's transaction
    locker.batch_execute("ROLLBACK").await.unwrap();
    drop(locker);
    driver.await.unwrap().unwrap();

    // Nothing of the interrupted merge remains; another replica merges the held transactions.
    let survivor = ServerProcess::with_config(&config, dir.path()).await;
    survivor
        .wait_for_log("transactions of a split message merged")
        .await;
    google.wait_for_uploads(1).await;
    until_empty(survivor.config_file()).await;
    // No loss, no second copy.
    split_message::assert_one_send_to_everyone(&google);
    assert_eq!(sql(&db, "SELECT count(*) FROM smtp2gmail.merges"), "1");
    assert_eq!(
        sql(&db, "SELECT count(*) FROM smtp2gmail.split_groups"),
        "0"
    );
    survivor.stop().await;
}

/// A record as the previous release stored it: from app@example.com to `rcpt`, accepted now.
fn record(rcpt: &[String]) -> Entry {
    let envelope = Envelope {
        id: MessageId::generate(),
        mail_from: Some(Address::new("app@example.com")),
        rcpt_to: rcpt.iter().map(Address::new).collect(),
        remote: ([127, 0, 0, 1], 40000).into(),
        helo: "client.example".into(),
        auth_user: None,
        received_at: SystemTime::now(),
    };
    Entry::new(&envelope, 0, "default")
}

/// A held transaction of [`message`] in group `group`, its window ending in 15 minutes.
fn held_record(rcpt: &[String], group: &str) -> Entry {
    let mut entry = record(rcpt);
    entry.size = message().len() as u64;
    entry.next_attempt = entry.received_at + Duration::from_secs(900);
    entry.split = Some(SplitRecord {
        group: group.into(),
        message_id: MESSAGE_ID.into(),
        header_recipients: header_recipients().len(),
        incomplete: Some(IfIncomplete::Refuse),
        parts: Vec::new(),
        uncovered: Vec::new(),
    });
    entry
}

/// Stores a message as schema version 2 did: its row (no group column yet) and one chunk.
async fn store_v2(client: &tokio_postgres::Client, place: &str, entry: &Entry, bytes: &[u8]) {
    let record = serde_json::to_value(entry).unwrap();
    client
        .execute(
            "INSERT INTO smtp2gmail.messages (id, place, entry, account, mailbox, size, next_attempt)
             VALUES ($1, $2, $3, $4, '', $5, $6)",
            &[
                &entry.id,
                &place,
                &record,
                &entry.account,
                &(bytes.len() as i64),
                &entry.next_attempt,
            ],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO smtp2gmail.message_chunks (id, seq, data) VALUES ($1, 0, $2)",
            &[&entry.id, &bytes],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn a_database_of_the_previous_schema_with_mail_in_it_is_migrated_and_merged() {
    let db = PgServer::start();
    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // Schema version 2, as the previous release left it.
    client
        .batch_execute(
            "CREATE SCHEMA smtp2gmail;
             CREATE TABLE smtp2gmail.schema_migrations (
                 version integer PRIMARY KEY, name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .unwrap();
    for migration in MIGRATIONS.iter().filter(|m| m.version <= 2) {
        client.batch_execute(migration.sql).await.unwrap();
        client
            .execute(
                "INSERT INTO smtp2gmail.schema_migrations (version, name) VALUES ($1, $2)",
                &[&migration.version, &migration.name],
            )
            .await
            .unwrap();
    }
    // Mail in it: a queued message, the three transactions of a split message held (grouped
    // by nothing but their records), and the record of an earlier merge.
    let queued = record(&["alice@example.com".to_string()]);
    let plain = b"From: app@example.com\r\nTo: alice@example.com\r\nSubject: queued\r\n\r\nhi\r\n";
    store_v2(&client, "queue", &queued, plain).await;
    for rcpt in transactions() {
        store_v2(&client, "held", &held_record(&rcpt, "upgraded"), &message()).await;
    }
    let earlier = Merge {
        entry: held_record(&["x@example.org".to_string()], "earlier"),
        dead: false,
        served: Default::default(),
        at: SystemTime::now(),
    };
    client
        .execute(
            "INSERT INTO smtp2gmail.merges (id, record, at) VALUES ($1, $2, now())",
            &[&earlier.entry.id, &serde_json::to_value(&earlier).unwrap()],
        )
        .await
        .unwrap();

    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let server = TestServer::assembled(replica_config(&google, dir.path(), &db)).await;
    assert_eq!(
        sql(&db, "SELECT max(version) FROM smtp2gmail.schema_migrations"),
        "3"
    );
    let backfilled = format!(
        "SELECT group_key FROM smtp2gmail.merges WHERE id = '{}'",
        earlier.entry.id
    );
    assert_eq!(sql(&db, &backfilled), "earlier");
    google.wait_for_uploads(2).await;
    until_empty(server.config_file()).await;
    let uploads = google.uploads();
    assert_eq!(uploads.len(), 2, "the queued message and the merged one");
    let merged = uploads.iter().find(|u| u.recipients.len() > 1).unwrap();
    assert_once_each(&merged.recipients, everyone());
    assert!(
        uploads
            .iter()
            .any(|u| u.recipients == ["alice@example.com"])
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    any(missing_postgres, missing_postfix),
    ignore = "needs PostgreSQL and Postfix: bash tests/postgres/install.sh, bash tests/postfix/install.sh"
)]
async fn postfix_as_the_relayhost_client_of_a_replica_bounces_nothing() {
    let db = PgServer::start();
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let config = replica_config(&google, dir.path(), &db);
    let a = ServerProcess::with_config(&config, dir.path()).await;
    // A second replica, which may release the group the first one holds.
    let b = ServerProcess::with_config(&config, dir.path()).await;
    // Its own directory: Postfix's daemons (user `postfix`) must be able to enter it.
    let postfix_dir = tempfile::tempdir().unwrap();
    let postfix = Postfix::start(postfix_dir.path(), a.smtp.port());
    postfix
        .submit("app@example.com", &everyone(), &message())
        .await;

    google.wait_for_uploads(1).await;
    let transactions = postfix.until_relayed(125).await;
    assert_eq!(transactions.len(), 3, "{transactions:?}");
    logged_by_either(&a, &b, "transactions of a split message merged").await;
    until_empty(a.config_file()).await;
    // And no bounce relayed.
    split_message::assert_one_send_to_everyone(&google);
    drop(postfix);
    a.stop().await;
    b.stop().await;
}
