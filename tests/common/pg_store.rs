//! Helpers for the tests of the queue's storage on PostgreSQL (tests/postgres_store.rs,
//! tests/postgres_claims.rs): a replica's store on a private server, records and limits.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use super::WAIT;
use super::postgres::PgServer;
use smtp2gmail::config::DatabaseUrl;
use smtp2gmail::message::{Address, Envelope, Message, MessageId};
use smtp2gmail::queue::postgres::{Database, PgStore};
use smtp2gmail::queue::record::{Entry, Place};
use smtp2gmail::queue::schedule::{Limits, MailboxKey};
use smtp2gmail::queue::store::Store;

pub const MINUTE: Duration = Duration::from_secs(60);
pub const MIB: usize = 1024 * 1024;

/// A replica's store on `server`, connected and migrated as at start.
pub async fn store(server: &PgServer, lease_time: Duration) -> PgStore {
    store_at(&server.url(), lease_time).await
}

/// A replica's store on the database at `url`, connected and migrated as at start.
pub async fn store_at(url: &str, lease_time: Duration) -> PgStore {
    let url = DatabaseUrl::parse(url).unwrap();
    let (database, _) = tokio::time::timeout(WAIT, Database::open(url, 4))
        .await
        .expect("opening the database hangs")
        .unwrap();
    PgStore::new(database, lease_time)
}

/// A record for a message from app@example.com accepted now, sent by account `default` as
/// `user` (or as the account's one mailbox).
pub fn entry(user: Option<&str>) -> Entry {
    let envelope = Envelope {
        id: MessageId::generate(),
        mail_from: Some(Address::new("app@example.com")),
        rcpt_to: vec![Address::new("someone@example.org")],
        remote: ([127, 0, 0, 1], 40000).into(),
        helo: "client.example".into(),
        auth_user: None,
        received_at: SystemTime::now(),
    };
    Entry::new(&envelope, 5, "default").with_mailbox(user)
}

pub async fn put(store: &PgStore, user: Option<&str>) -> Entry {
    let entry = entry(user);
    store
        .put(
            Place::Queue,
            &entry,
            &Message::from_bytes(b"hello".to_vec()),
        )
        .await
        .unwrap();
    entry
}

/// Limits with `max_sends` per mailbox of `default` and `rate` sends per second.
pub fn limits(max_sends: usize, rate: f64) -> Limits {
    Limits {
        max_send_rate: rate,
        max_sends: HashMap::from([("default".to_string(), max_sends)]),
    }
}

pub fn ids(entries: &[Entry]) -> HashSet<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

pub fn key(user: Option<&str>) -> MailboxKey {
    MailboxKey {
        account: "default".into(),
        user: user.map(str::to_string),
    }
}
