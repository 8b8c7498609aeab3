//! The durable queue end to end: an SMTP client, the queue acceptor, the spool on disk, the
//! scheduler, the fake Google — and the `queue` commands against the running server.

mod common;

use std::path::Path;
use std::time::Duration;

use common::fake_gmail::{SendFault, gmail_config};
use common::fake_google::{FakeGoogle, Fault};
use common::serving::{MESSAGE, Serving, queue_command_on_spool, queue_config, queued_id};
use common::{TestServer, WAIT, assert_code};
use smtp2gmail::config::QueueConfig;
use smtp2gmail::google::{CredentialSpec, load};
use smtp2gmail::queue;

#[tokio::test]
async fn a_250_means_on_disk_then_delivered_with_retries() {
    let (google, _dir, queued) = TestServer::queued_with_defaults().await;
    // Before the first message: the queue sends nothing until then.
    google.fail_sends([SendFault::google(503, "backendError")]);
    let id = queued_id(&queued.send(&["alice@example.com"]).await);
    google.wait_for_uploads(1).await;
    queued.until_files("queue", 0).await;
    let upload = &google.uploads()[0];
    assert_eq!(
        upload.body,
        &MESSAGE[..MESSAGE.len() - 3],
        "the exact bytes, once"
    );
    assert!(!id.is_empty());
    assert!(
        queued.files("incoming").is_empty(),
        "no leftover spill files"
    );
    queued.stop().await;
}

#[tokio::test]
async fn a_401_refreshes_the_token_and_the_queued_message_is_delivered_once() {
    let (google, _dir, queued) = TestServer::queued_with_defaults().await;
    queued_id(&queued.send(&["alice@example.com"]).await);
    google.wait_for_uploads(1).await;
    let tokens = google.token_requests();
    // Google stops honouring the access token the server holds (revoked, or expired early).
    google.revoke_access_tokens();
    queued_id(&queued.send(&["alice@example.com"]).await);
    google.wait_for_uploads(2).await;
    queued.until_files("queue", 0).await;
    assert_eq!(google.unauthorized_sends(), 1, "one 401");
    assert_eq!(google.token_requests(), tokens + 1, "one refresh");
    assert_eq!(google.uploads().len(), 2, "each message once");
    queued.stop().await;
}

#[tokio::test]
async fn shutdown_lets_the_delivery_in_flight_finish_and_keeps_the_rest_queued() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    google.set_send_latency(Duration::from_millis(200));
    let queued = TestServer::queued(
        &gmail_config(&google, dir.path()),
        QueueConfig {
            // One start per 100 s: the second message cannot start before the shutdown.
            max_send_rate: 0.01,
            ..queue_config(&dir.path().join("spool"))
        },
    )
    .await;
    let first = queued_id(&queued.send(&["alice@example.com"]).await);
    let second = queued_id(&queued.send(&["alice@example.com"]).await);
    let started = tokio::time::timeout(WAIT, async {
        while google.most_concurrent_sends() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert!(started.await.is_ok(), "the first delivery never started");
    queued.stop().await;
    assert_eq!(google.uploads().len(), 1, "the delivery in flight finished");
    let left = std::fs::read_dir(dir.path().join("spool/queue"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(
        left,
        [format!("{second}.msg")],
        "{first} was delivered and removed"
    );
}

#[tokio::test]
async fn policy_is_decided_before_250_and_nothing_is_queued() {
    let (_google, _dir, queued) = TestServer::queued_with_defaults().await;
    // To: alice is in the header, but the envelope names only bob: a header-only recipient.
    let reply = queued.send(&["bob@example.com"]).await;
    assert!(reply.starts_with("550 5.7.1 "), "{reply}");
    assert!(queued.files("queue").is_empty());
    queued.stop().await;
}

#[tokio::test]
async fn a_spool_that_cannot_be_written_is_451() {
    let (_google, _dir, queued) = TestServer::queued_with_defaults().await;
    // Root ignores permissions, so break the spool by putting a file where its directory was.
    std::fs::remove_dir_all(queued.spool().join("queue")).unwrap();
    std::fs::write(queued.spool().join("queue"), b"not a directory").unwrap();
    let reply = queued.send(&["alice@example.com"]).await;
    assert!(reply.starts_with("451 4.3.0 "), "{reply}");
    queued.stop().await;
}

#[tokio::test]
async fn permanent_failures_become_dead_letters_that_can_be_retried() {
    let (google, _dir, queued) = TestServer::queued_with_defaults().await;
    // Before the first message: the queue sends nothing until then.
    google.fail_sends([SendFault::google(400, "invalidArgument")]);
    let id = queued_id(&queued.send(&["alice@example.com"]).await);
    queued.until_files("dead", 2).await;
    queued.until_files("queue", 0).await;
    let (ok, listed) = queued.queue_command(&["list"]).await;
    assert!(
        ok && listed.contains(&id) && listed.contains("DEAD LETTER"),
        "{listed}"
    );
    let (ok, shown) = queued.queue_command(&["show", &id]).await;
    assert!(
        ok && shown.contains("invalidArgument") && shown.contains("Subject: queued"),
        "{shown}"
    );
    // The server is running: the command goes through it.
    let (ok, retried) = queued.queue_command(&["retry", &id]).await;
    assert!(ok, "{retried}");
    google.wait_for_uploads(1).await;
    queued.until_files("dead", 0).await;
    queued.until_files("queue", 0).await;
    let (ok, missing) = queued.queue_command(&["delete", &id]).await;
    assert!(!ok && missing.contains("no such message"), "{missing}");
    queued.stop().await;
}

#[tokio::test]
async fn dead_credentials_pause_the_account_until_new_credentials_arrive() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let mut config = queue_config(&dir.path().join("spool"));
    config.retry_max = Duration::from_secs(3600);
    let gmail = gmail_config(&google, dir.path());
    let queued = TestServer::queued(&gmail, config).await;
    // The server asks for a token at start; the credentials die after that, before the message.
    let verified = tokio::time::timeout(WAIT, async {
        while google.token_requests() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert!(verified.await.is_ok(), "no token request at start");
    google.fail_token_requests(1, Fault::invalid_grant());
    google.revoke_access_tokens();
    queued_id(&queued.send(&["alice@example.com"]).await);
    // The refusal is recorded on disk, and the account waits (an hour, in this configuration).
    queued.until_failed_once(1).await;
    // What the file watcher does when `authorize` writes a new token file.
    let account = queued.account("default");
    let credentials = load(
        &CredentialSpec::File(gmail.credentials.clone().unwrap()),
        None,
    )
    .unwrap();
    account.tokens.replace(credentials);
    google.wait_for_uploads(1).await;
    queued.until_files("queue", 0).await;
    queued.stop().await;
}

#[tokio::test]
async fn queued_messages_survive_a_restart() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let spool = dir.path().join("spool");
    let mut config = queue_config(&spool);
    config.retry_min = Duration::from_secs(3600);
    config.retry_max = Duration::from_secs(3600);
    google.fail_sends([
        SendFault::google(503, "backendError"),
        SendFault::google(503, "backendError"),
    ]);
    let queued = TestServer::queued(&gmail_config(&google, dir.path()), config.clone()).await;
    for _ in 0..2 {
        queued_id(&queued.send(&["alice@example.com"]).await);
    }
    // Both failed once and now wait an hour; the server stops.
    queued.until_failed_once(2).await;
    queued.stop().await;
    assert!(google.uploads().is_empty());
    // With no server running the command changes the spool itself, and says when mail goes out.
    let (ok, out) = queue_command_on_spool(&spool, &["retry", "--all"]).await;
    assert!(
        ok && out.contains("2 messages will be retried at the next start"),
        "{out}"
    );
    // A message file whose accept never finished (no record at its end, so no 250 was given) is cleaned up.
    std::fs::write(spool.join("queue").join("0123456789abcdef.msg"), b"half").unwrap();
    config.retry_min = Duration::from_millis(20);
    let queued = TestServer::queued(&gmail_config(&google, dir.path()), config).await;
    let (ok, _) = queue_command_on_spool(&spool, &["retry", "--all"]).await;
    assert!(ok);
    google.wait_for_uploads(2).await;
    queued.until_files("queue", 0).await;
    queued.stop().await;
}

#[test]
fn backoff_doubles_from_retry_min_to_retry_max_with_jitter() {
    let config = QueueConfig {
        retry_min: Duration::from_secs(60),
        retry_max: Duration::from_secs(3600),
        ..QueueConfig::default()
    };
    for (attempts, base) in [(1, 60), (2, 120), (3, 240), (7, 3600), (40, 3600)] {
        let wait = queue::schedule::backoff(&config, attempts).as_secs_f64();
        let base = base as f64;
        assert!(
            wait >= base * 0.8 && wait <= base * 1.2,
            "attempt {attempts}: {wait}"
        );
    }
}

#[tokio::test]
async fn the_queue_accepts_while_gmail_is_down() {
    let (google, _dir, queued) = TestServer::queued_with_defaults().await;
    // Before the first message: the queue sends nothing until then.
    google.fail_sends(std::iter::repeat_n(
        SendFault::google(503, "backendError"),
        1000,
    ));
    for _ in 0..3 {
        assert_code(&queued.send(&["alice@example.com"]).await, 250);
    }
    let files = queued.files("queue");
    let messages = files.iter().filter(|name| name.ends_with(".msg")).count();
    assert_eq!(messages, 3, "{files:?}");
    queued.stop().await;
}

#[tokio::test]
async fn large_queued_messages_are_streamed_from_the_spool_with_the_bcc_added() {
    let (google, _dir, queued) = TestServer::queued_with_defaults().await;
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n";
    let message = format!(
        "From: app@example.com\r\nTo: alice@example.com\r\n\r\n{}",
        line.repeat(5_000_000 / line.len())
    );
    let mut client = queued.client().await;
    client
        .start_transaction("app@example.com", &["alice@example.com", "bob@example.com"])
        .await;
    queued_id(&client.data(format!("{message}.\r\n").as_bytes()).await);
    drop(client);
    google.wait_for_uploads(1).await;
    let expected = format!("Bcc: bob@example.com\r\n{message}");
    assert!(
        google.uploads()[0].body == expected.as_bytes(),
        "the streamed upload differs"
    );
    queued.until_files("queue", 0).await;
    queued.stop().await;
}

/// The record of the one queued message.
fn only_record(spool: &Path) -> serde_json::Value {
    let records: Vec<_> = std::fs::read_dir(spool.join("queue"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    serde_json::from_slice(&std::fs::read(&records[0]).unwrap()).unwrap()
}

#[tokio::test]
async fn the_daily_sending_limit_defers_for_hours_not_seconds() {
    let (google, _dir, queued) = TestServer::queued_with_defaults().await;
    // Before the first message: the queue sends nothing until then.
    google.fail_sends([SendFault::RetryAfter {
        status: 429,
        seconds: 3 * 3600,
    }]);
    queued_id(&queued.send(&["alice@example.com"]).await);
    queued.until_failed_once(1).await;
    let record = only_record(&queued.spool());
    let next: std::time::SystemTime =
        humantime::parse_rfc3339(record["next_attempt"].as_str().unwrap()).unwrap();
    let wait = next.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(
        wait > Duration::from_secs(2 * 3600),
        "retry in {wait:?}, not hours"
    );
    assert!(google.uploads().is_empty());
    queued.stop().await;
}

#[tokio::test]
async fn an_unreachable_gmail_keeps_the_message_queued() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut gmail = gmail_config(&google, dir.path());
    gmail.api_base = format!("http://{closed}");
    let queued = TestServer::queued(&gmail, queue_config(&dir.path().join("spool"))).await;
    queued_id(&queued.send(&["alice@example.com"]).await);
    queued.until_failed_once(1).await;
    let record = only_record(&queued.spool());
    assert!(
        record["last_error"]
            .as_str()
            .unwrap()
            .contains("could not connect"),
        "{record}"
    );
    assert!(record["dead_reason"].is_null());
    queued.stop().await;
}

#[tokio::test]
async fn messages_older_than_max_age_become_dead_letters() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    google.fail_sends([SendFault::google(503, "backendError")]);
    let mut config = queue_config(&dir.path().join("spool"));
    config.max_age = Duration::from_millis(1);
    // What a config file must say with such a max_age (the `queue` commands read the file).
    config.split_window = Duration::ZERO;
    let queued = TestServer::queued(&gmail_config(&google, dir.path()), config).await;
    let id = queued_id(&queued.send(&["alice@example.com"]).await);
    queued.until_files("dead", 2).await;
    queued.until_files("queue", 0).await;
    let (_, shown) = queued.queue_command(&["show", &id]).await;
    assert!(shown.contains("dead because: too old"), "{shown}");
    queued.stop().await;
}

#[tokio::test]
async fn a_corrupt_record_is_reported_and_the_rest_of_the_queue_works() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(spool.join("queue")).unwrap();
    std::fs::write(spool.join("queue/00000000000000000001.json"), b"{ not json").unwrap();
    std::fs::write(
        spool.join("queue/00000000000000000001.msg"),
        b"kept for the operator",
    )
    .unwrap();
    let queued = TestServer::queued(&gmail_config(&google, dir.path()), queue_config(&spool)).await;
    queued_id(&queued.send(&["alice@example.com"]).await);
    google.wait_for_uploads(1).await;
    let (ok, listed) = queue_command_on_spool(&spool, &["list"]).await;
    assert!(
        ok && listed.contains("00000000000000000001  UNREADABLE RECORD"),
        "{listed}"
    );
    queued.until_files("queue", 2).await;
    assert!(
        spool.join("queue/00000000000000000001.msg").exists(),
        "nothing acknowledged is deleted"
    );
    queued.stop().await;
}

/// A "Gmail" at a loopback address that accepts connections and then hangs up (`hang_up`) or
/// never answers.
async fn broken_gmail(hang_up: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            if !hang_up {
                held.push(socket);
            }
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn dropped_connections_and_timeouts_keep_the_message_queued() {
    for (hang_up, expected) in [(true, "Gmail API"), (false, "timed out")] {
        let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
        let mut gmail = gmail_config(&google, dir.path());
        gmail.api_base = broken_gmail(hang_up).await;
        let queued = TestServer::queued(&gmail, queue_config(&dir.path().join("spool"))).await;
        queued_id(&queued.send(&["alice@example.com"]).await);
        queued.until_failed_once(1).await;
        let record = only_record(&queued.spool());
        let error = record["last_error"].as_str().unwrap();
        assert!(error.contains(expected), "{error}");
        assert!(
            record["dead_reason"].is_null(),
            "a temporary failure, not a dead letter"
        );
        queued.stop().await;
    }
}

#[tokio::test]
async fn queue_commands_take_only_queue_ids() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let dead = spool.join("dead");
    std::fs::create_dir_all(spool.join("queue")).unwrap();
    std::fs::create_dir_all(&dead).unwrap();
    // Where `queue/../../victim/token` would point, with each of the spool's extensions.
    let victim = dir.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    for ext in ["msg", "json"] {
        std::fs::write(victim.join(format!("token.{ext}")), b"keep").unwrap();
    }
    let absolute = victim.join("token").display().to_string();
    for id in ["../../victim/token", absolute.as_str(), ".."] {
        for command in [["delete", id], ["show", id], ["retry", id]] {
            let (ok, said) = queue_command_on_spool(&spool, &command).await;
            assert!(
                !ok && said.contains("is not a queue id"),
                "{command:?}: {said}"
            );
        }
    }
    assert!(victim.join("token.msg").exists() && victim.join("token.json").exists());
}
