//! The foundations of the shared queue against a real PostgreSQL server (a private instance per
//! test, tests/common/postgres.rs): migrations on an empty database, again, and from three
//! replicas at once; the errors an operator sees for a wrong password, a missing database, a
//! closed port and missing privileges; claims and leases; an outage and the recovery after it;
//! LISTEN for new mail. The config errors at load need no server.
//!
//! Without PostgreSQL installed the server tests are ignored, saying how to install it
//! (tests/common/postgres.rs).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::WAIT;
use common::postgres::{DATABASE, PASSWORD, PgServer, ROLE};
use smtp2gmail::config::DatabaseUrl;
use smtp2gmail::queue::postgres::{Database, DatabaseError, NEW_MAIL_CHANNEL, SCHEMA, Step, lease};

/// The queue's database on `server`, opened (connected and migrated) as a replica does at start.
async fn open(url: &str) -> Result<(Database, Vec<i32>), DatabaseError> {
    let url = DatabaseUrl::parse(url).expect("a valid URL");
    let (database, migrated) = tokio::time::timeout(WAIT, Database::open(url, 4))
        .await
        .expect("opening the database hangs")?;
    Ok((database, migrated.applied))
}

/// The error of opening `url`, as the operator reads it.
async fn open_error(url: &str) -> (DatabaseError, String) {
    let err = open(url).await.err().expect("opening must fail");
    let text = err.to_string();
    eprintln!("{text}");
    assert!(!text.contains(PASSWORD), "the password leaked: {text}");
    (err, text)
}

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn migrations_apply_to_an_empty_database_and_a_second_run_changes_nothing() {
    let server = PgServer::start();
    let (_, applied) = open(&server.url()).await.unwrap();
    assert_eq!(applied, vec![1, 2, 3]);
    let tables = server.psql_in(
        DATABASE,
        &format!("SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = '{SCHEMA}'"),
    );
    assert_eq!(
        tables,
        "account_limits,mailbox_limits,merges,message_chunks,messages,schema_migrations,split_groups"
    );
    let owner = server.psql_in(
        DATABASE,
        &format!("SELECT tableowner FROM pg_tables WHERE schemaname = '{SCHEMA}' AND tablename = 'messages'"),
    );
    assert_eq!(owner, ROLE);

    let (_, applied) = open(&server.url()).await.unwrap();
    assert_eq!(applied, Vec::<i32>::new(), "a current schema is left alone");
    let versions = server.psql_in(
        DATABASE,
        &format!(
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM {SCHEMA}.schema_migrations"
        ),
    );
    assert_eq!(versions, "1,2,3");
}

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn three_replicas_migrating_at_once_all_start_on_one_schema() {
    let server = PgServer::start();
    let url = server.url();
    let (a, b, c) = tokio::join!(open(&url), open(&url), open(&url));
    let mut applied: Vec<Vec<i32>> = [a, b, c]
        .into_iter()
        .map(|opened| opened.expect("every replica starts").1)
        .collect();
    applied.sort();
    assert_eq!(
        applied,
        vec![vec![], vec![], vec![1, 2, 3]],
        "exactly one replica migrates"
    );
    let versions = server.psql_in(
        DATABASE,
        &format!("SELECT count(*) FROM {SCHEMA}.schema_migrations"),
    );
    assert_eq!(versions, "3");
}

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn a_wrong_password_names_the_role_and_not_the_password() {
    let server = PgServer::start();
    let (err, text) = open_error(&server.url_as(ROLE, "fake-wrong-password", DATABASE)).await;
    assert!(
        matches!(err, DatabaseError::Authentication { .. }),
        "{text}"
    );
    assert!(text.contains(&format!("role \"{ROLE}\"")), "{text}");
    assert!(text.contains("password"), "{text}");
    assert!(!text.contains("fake-wrong-password"), "{text}");
    assert!(!err.is_outage(), "a wrong password does not fix itself");
}

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn a_missing_database_says_how_to_create_it() {
    let server = PgServer::start();
    let (err, text) = open_error(&server.url_as(ROLE, PASSWORD, "no_such_db")).await;
    assert!(matches!(err, DatabaseError::NoDatabase { .. }), "{text}");
    assert!(
        text.contains("CREATE DATABASE \"no_such_db\" OWNER \"smtp2gmail\""),
        "{text}"
    );
}

#[tokio::test]
async fn a_closed_port_asks_whether_the_server_runs() {
    // No server needed: a port nothing listens on.
    let port = common::free_port();
    let url = format!("postgres://{ROLE}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}?sslmode=disable");
    let (err, text) = open_error(&url).await;
    assert!(matches!(err, DatabaseError::Unreachable { .. }), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("is the server running"), "{text}");
    assert!(err.is_outage());
}

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn a_role_without_create_is_told_the_grant_it_needs() {
    let server = PgServer::start();
    server.psql("CREATE ROLE app LOGIN PASSWORD 'fake-app-password'");
    let app = server.url_as("app", "fake-app-password", DATABASE);
    let (err, text) = open_error(&app).await;
    assert!(
        matches!(err, DatabaseError::PermissionDenied { .. }),
        "{text}"
    );
    assert!(
        text.contains("CREATE SCHEMA smtp2gmail AUTHORIZATION \"app\""),
        "{text}"
    );

    // The owner migrates; `app` may then see the schema but use no table.
    open(&server.url()).await.unwrap();
    server.psql_in(DATABASE, "GRANT USAGE ON SCHEMA smtp2gmail TO app");
    let (_, text) = open_error(&app).await;
    assert!(
        text.contains(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA smtp2gmail TO \"app\""
        ),
        "{text}"
    );

    // With the privileges the message named, a role that may create nothing starts.
    server.psql_in(
        DATABASE,
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA smtp2gmail TO app",
    );
    let (_, applied) = open(&app)
        .await
        .expect("a role with table privileges starts");
    assert!(applied.is_empty());
}

/// Inserts a due message for `mailbox` (the queue's store does this later; SQL is enough here).
fn queue_message(server: &PgServer, id: &str, mailbox: &str) {
    server.psql_in(
        DATABASE,
        &format!(
            "INSERT INTO smtp2gmail.messages (id, entry, account, mailbox, size, next_attempt)
             VALUES ('{id}', '{{\"id\": \"{id}\"}}', 'default', '{mailbox}', 10, now() - interval '1s')"
        ),
    );
}

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn claims_are_disjoint_and_a_lapsed_lease_passes_to_another_replica() {
    let server = PgServer::start();
    let (database, _) = open(&server.url()).await.unwrap();
    for i in 0..6 {
        queue_message(&server, &format!("m{i}"), "a@example.com");
    }
    queue_message(&server, "other", "b@example.com");
    let a = ("default", "a@example.com");
    let target = database.target().clone();
    let (one, two) = (
        database.client().await.unwrap(),
        database.client().await.unwrap(),
    );
    let minute = Duration::from_secs(60);
    let (first, second) = tokio::join!(
        lease::claim(&one, &target, "replica-1", minute, 4, a),
        lease::claim(&two, &target, "replica-2", minute, 4, a),
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(
        first.len() + second.len(),
        6,
        "every due message of the mailbox claimed once"
    );
    assert!(
        first
            .iter()
            .chain(&second)
            .all(|m| m.mailbox == "a@example.com")
    );
    assert!(first.iter().all(|m| !second.iter().any(|n| n.id == m.id)));
    let nothing = lease::claim(&one, &target, "replica-3", minute, 10, a)
        .await
        .unwrap();
    assert!(nothing.is_empty(), "leased messages are not due");

    // replica-1 dies: its leases lapse (made to, here) and replica-2 takes its messages.
    server.psql_in(
        DATABASE,
        "UPDATE smtp2gmail.messages SET lease_until = now() - interval '1s' WHERE lease_owner = 'replica-1'",
    );
    let taken = lease::claim(&two, &target, "replica-2", minute, 10, a)
        .await
        .unwrap();
    assert_eq!(taken.len(), first.len());

    // A failed attempt goes back with its next attempt.
    let kept = &taken.last().unwrap();
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    assert!(
        lease::release(&two, &target, &kept.id, "replica-2", later, &kept.entry)
            .await
            .unwrap()
    );
    assert_eq!(
        lease::renew(&two, &target, "replica-2", minute)
            .await
            .unwrap(),
        5,
        "the six taken over minus the one released"
    );
    // The other mailbox's mail was never touched.
    let other = ("default", "b@example.com");
    let only_b = lease::claim(&one, &target, "replica-1", minute, 10, other)
        .await
        .unwrap();
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].id, "other");
}

/// How many messages are queued: one statement through the pool.
async fn count(database: &Database) -> Result<i64, DatabaseError> {
    let client = database.client().await?;
    client
        .query_one("SELECT count(*) FROM smtp2gmail.messages", &[])
        .await
        .map(|row| row.get(0))
        .map_err(|err| database.target().classify(&err, Step::Use, "counting"))
}

/// The outage tests stop a server and start it again on its port: meanwhile nothing else may get
/// that port (another test's free port, a connection's source port), or the restart fails.
#[test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
fn a_stopped_test_server_keeps_its_port_and_refuses_clients() {
    let mut server = PgServer::start();
    server.stop();
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    assert!(
        other.bind(([127, 0, 0, 1], server.port()).into()).is_err(),
        "the stopped server's port was free for others"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", server.port())).is_err());
    server.start_again();
}

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn an_outage_is_reported_as_one_and_the_pool_recovers_after_it() {
    let mut server = PgServer::start();
    let (database, _) = open(&server.url()).await.unwrap();
    assert_eq!(count(&database).await.unwrap(), 0);

    server.stop();
    // The pooled connection the server closed, then a new one that cannot connect: both outages.
    for _ in 0..2 {
        let err = tokio::time::timeout(WAIT, count(&database))
            .await
            .expect("a statement during an outage hangs")
            .unwrap_err();
        assert!(err.is_outage(), "{err}");
    }

    server.start_again();
    assert_eq!(count(&database).await.unwrap(), 0, "recovered by itself");
}

#[tokio::test]
#[cfg_attr(
    missing_postgres,
    ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
)]
async fn new_mail_is_announced_to_listening_replicas() {
    let server = PgServer::start();
    let (database, _) = open(&server.url()).await.unwrap();
    let (_session, mut notifications) = database.listen_for_new_mail().await.unwrap();
    server.psql_in(
        DATABASE,
        &format!("SELECT pg_notify('{NEW_MAIL_CHANNEL}', 'a@example.com')"),
    );
    let notification = tokio::time::timeout(WAIT, notifications.recv())
        .await
        .expect("no notification")
        .expect("the session ended");
    assert_eq!(notification.channel(), NEW_MAIL_CHANNEL);
    assert_eq!(notification.payload(), "a@example.com");
}

/// `serve` with `config`: the exit code and stderr.
fn serve(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("smtp.toml"), config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_smtp2gmail"))
        .current_dir(dir.path())
        .envs(env.iter().copied())
        .env_remove("SMTP2GMAIL_TEST_DATABASE_URL")
        .args(["serve", "--config"])
        .arg(Path::new("smtp.toml"))
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_postgres_backend_without_a_usable_url_is_a_config_error() {
    let config = |url: &str| format!("[queue]\nbackend = \"postgres\"\nurl = \"{url}\"\n");
    let (code, stderr) = serve(&config("env:SMTP2GMAIL_TEST_DATABASE_URL"), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("smtp.toml:3:1: queue.url"), "{stderr}");
    assert!(stderr.contains("SMTP2GMAIL_TEST_DATABASE_URL"), "{stderr}");

    let (code, stderr) = serve(&config("postgres://mail:fake-secret@db:notaport/q"), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("queue.url: is not a valid URL"), "{stderr}");
    assert!(!stderr.contains("fake-secret"), "{stderr}");

    let (code, stderr) = serve("[queue]\nbackend = \"postgres\"\n", &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("queue.url: is empty"), "{stderr}");
}
