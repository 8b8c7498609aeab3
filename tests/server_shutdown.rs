//! The server's shutdown leaves nothing behind (docs/design.md, "Lifecycle: every task tracked,
//! one shutdown order"): the handle's shutdown returns once every task the server started has
//! ended — the queue's database sessions included, which the database then sees closed — and
//! readiness says "shutting down" from its first moment. In process, through the library's
//! assembly that `smtp2gmail serve` runs.

mod common;

use std::time::Duration;

use common::fake_google::FakeGoogle;
use common::postgres::{PgServer, ROLE};
use common::serving::{Serving, gmail_mode, queued_id};
use common::{TestServer, WAIT, assert_code};
use smtp2gmail::config::{Delivery, QueueBackend};

/// The sessions the queue's role has open on `db`.
fn sessions(db: &PgServer) -> usize {
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{ROLE}'");
    db.psql(&sql).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn a_postgres_queue_closes_every_database_session_at_shutdown() {
    let db = PgServer::start();
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let mut config = gmail_mode(&google, dir.path(), Delivery::Queue);
    config.queue.backend = QueueBackend::Postgres;
    config.queue.url = db.url();
    let server = TestServer::assembled(config).await;
    queued_id(&server.send(&["alice@example.com"]).await);
    google.wait_for_uploads(1).await;
    // The new-mail listener's session and the pool's.
    assert!(sessions(&db) >= 2, "{} sessions", sessions(&db));
    // Whatever still holds the queue's storage after the shutdown (here the test; a request
    // being answered, a task outliving its bound) must not keep a database session open.
    let store = server.handle().queue().unwrap().clone();

    server.stop().await; // asserts that every task the server started has ended

    // The database notices a closed connection when its backend does: wait for that, bounded.
    let closed = tokio::time::timeout(WAIT, async {
        while sessions(&db) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(
        closed.await.is_ok(),
        "sessions left open after the shutdown: {}",
        db.psql(&format!(
            "SELECT application_name, state, query FROM pg_stat_activity WHERE usename = '{ROLE}'"
        ))
    );
    drop(store);
}

#[tokio::test]
async fn readiness_says_shutting_down_while_a_transaction_finishes() {
    let (_google, _dir, server) = TestServer::gmail(Delivery::Queue, |_, _, _| {}).await;
    assert!(
        server.handle().is_ready(),
        "{}",
        server.handle().readiness()
    );
    let mut client = server.client().await;
    client
        .start_transaction("app@example.com", &["alice@example.com"])
        .await;
    server.begin_shutdown();
    let readiness = server.handle().readiness();
    assert!(!server.handle().is_ready(), "{readiness}");
    assert_eq!(readiness["problems"][0]["problem"], "shutting down");
    // The open transaction may still finish, and is queued.
    let reply = client
        .data(b"From: app@example.com\r\nTo: alice@example.com\r\n\r\nlast\r\n.\r\n")
        .await;
    assert_code(&reply, 250);
    drop(client);
    server.stop().await;
}
