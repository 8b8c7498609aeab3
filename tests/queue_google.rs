//! The queue against Google's unkind answers: held mail released at once when the credentials
//! are fixed, mailbox problems that hold one sender and not the others, failed preconditions,
//! and a "Retry after" in the past.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::fake_gmail::{Quota, SendFault, gmail_config};
use common::fake_google::{
    self, FakeGoogle, NEW_REFRESH_TOKEN, authorized_token, write_token_atomically,
};
use common::process::ServerProcess;
use common::serving::{Serving, gmail_mode, queue_config, queued_id};
use common::{TestServer, assert_code, send_simple, test_config};
use smtp2gmail::config::{Delivery, GmailConfig};
use smtp2gmail::relay::gmail::RetryPolicy;
use smtp2gmail::relay::gmail::reload::CredentialWatcher;
use smtp2gmail::relay::{Gmail, http_client};

/// A queue whose backoff is an hour: anything delivered within the test's wait was not backed off.
fn hour_long_backoff(dir: &std::path::Path) -> smtp2gmail::config::QueueConfig {
    let mut config = queue_config(&dir.join("spool"));
    config.retry_min = Duration::from_secs(3600);
    config.retry_max = Duration::from_secs(3600);
    config
}

fn watcher(queued: &TestServer) -> Arc<CredentialWatcher> {
    let accounts = queued.handle().accounts().iter().cloned();
    Arc::new(CredentialWatcher::new(accounts, Duration::from_secs(3600)))
}

#[tokio::test]
async fn a_new_token_file_releases_all_held_mail_at_once() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let gmail = gmail_config(&google, dir.path());
    // The refresh token in token.json is revoked: Google only knows the one `authorize` will get.
    google.accept_only_refresh_token(NEW_REFRESH_TOKEN);
    let queued = TestServer::queued(&gmail, hour_long_backoff(dir.path())).await;
    let watcher = watcher(&queued);
    for _ in 0..20 {
        queued_id(&queued.send(&["alice@example.com"]).await);
    }
    queued.until_failed_once(1).await;
    assert!(google.uploads().is_empty());
    // `smtp2gmail authorize` writes the new token file; the watcher notices it.
    write_token_atomically(
        gmail.credentials.as_ref().unwrap(),
        &authorized_token(&google),
    );
    assert_eq!(watcher.poll(), 1);
    // Within seconds, not after the hour of backoff the failed attempts would otherwise wait.
    google.wait_for_uploads(20).await;
    queued.until_files("queue", 0).await;
    queued.stop().await;
}

#[tokio::test]
async fn mail_service_not_enabled_holds_the_mail_reports_the_fix_and_sighup_resumes() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let gmail = gmail_config(&google, dir.path());
    google.fail_sends_from("app@example.com", SendFault::mail_service_not_enabled());
    let queued = TestServer::queued(&gmail, hour_long_backoff(dir.path())).await;
    let id = queued_id(&queued.send(&["alice@example.com"]).await);
    queued.until_failed_once(1).await;
    // Held, not a dead letter; the account reports the problem with its fix.
    assert!(queued.files("dead").is_empty());
    let account = queued.account("default");
    let problems = account.attention();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].1.fix.contains("turn Gmail on"), "{problems:?}");
    // An administrator turns Gmail on; the operator sends SIGHUP.
    google.clear_faults_from("app@example.com");
    assert_eq!(
        queued.handle().reload("SIGHUP").await,
        0,
        "same credentials"
    );
    google.wait_for_uploads(1).await;
    queued.until_files("queue", 0).await;
    assert!(account.attention().is_empty(), "cleared by the delivery");
    assert!(!queued.files("dead").contains(&format!("{id}.msg")));
    queued.stop().await;
}

/// A service account sending as each envelope sender of example.com.
fn service_account(google: &FakeGoogle, dir: &std::path::Path) -> GmailConfig {
    let key = fake_google::service_account_json(&google.token_uri());
    google.trust_service_account(&key);
    GmailConfig {
        api_base: google.api_base(),
        credentials: Some(fake_google::write_json(dir, "sa.json", &key)),
        senders: vec!["*@example.com".into()],
        ..GmailConfig::default()
    }
}

#[tokio::test]
async fn one_user_without_gmail_does_not_hold_the_other_senders() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let gmail = service_account(&google, dir.path());
    google.fail_sends_from("nogmail@example.com", SendFault::mail_service_not_enabled());
    let queued = TestServer::queued(&gmail, hour_long_backoff(dir.path())).await;
    queued_id(
        &queued
            .send_as("nogmail@example.com", &["alice@example.com"])
            .await,
    );
    queued.until_failed_once(1).await;
    for n in 0..3 {
        let sender = format!("user{n}@example.com");
        queued_id(&queued.send_as(&sender, &["alice@example.com"]).await);
    }
    google.wait_for_uploads(3).await;
    let senders: Vec<_> = google
        .uploads()
        .into_iter()
        .filter_map(|u| u.from)
        .collect();
    assert!(!senders.contains(&"nogmail@example.com".to_string()));
    // One mailbox's problem is reported for that mailbox, not as the account's.
    let account = queued.account("default");
    let problems = account.attention();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].0.as_deref(), Some("nogmail@example.com"));
    // Its message (.msg and its record) waits.
    queued.until_files("queue", 2).await;
    queued.stop().await;
}

#[tokio::test]
async fn a_failed_precondition_is_retried_not_a_dead_letter() {
    let (google, _dir, queued) = TestServer::queued_with_defaults().await;
    google.fail_sends([
        SendFault::precondition_check_failed(),
        SendFault::precondition_check_failed(),
    ]);
    queued_id(&queued.send(&["alice@example.com"]).await);
    google.wait_for_uploads(1).await;
    queued.until_files("queue", 0).await;
    assert!(queued.files("dead").is_empty());
    queued.stop().await;
}

#[tokio::test]
async fn a_retry_after_in_the_past_is_ordinary_backoff_not_a_retry_loop() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let gmail = gmail_config(&google, dir.path());
    let queued = TestServer::queued(&gmail, hour_long_backoff(dir.path())).await;
    let skewed = SystemTime::now() - Duration::from_secs(300);
    google.fail_sends([SendFault::retry_after_in_message(skewed)]);
    queued_id(&queued.send(&["alice@example.com"]).await);
    queued.until_failed_once(1).await;
    let record = std::fs::read_dir(queued.spool().join("queue"))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(record.path()).unwrap()).unwrap();
    let next = humantime::parse_rfc3339(record["next_attempt"].as_str().unwrap()).unwrap();
    let wait = next.duration_since(SystemTime::now()).unwrap_or_default();
    assert!(
        wait > Duration::from_secs(30 * 60),
        "retried after {wait:?}: the past time must not mean now"
    );
    queued.stop().await;
}

/// The synchronous relay with retries short enough for a test.
async fn sync_server(gmail: &GmailConfig) -> TestServer {
    let retry = RetryPolicy {
        attempts: 3,
        budget: Duration::from_secs(5),
        first_backoff: Duration::from_millis(10),
    };
    let relay = Gmail::from_config(gmail, http_client().unwrap())
        .unwrap()
        .with_retry(retry);
    TestServer::with_target(test_config(), Arc::new(relay)).await
}

#[tokio::test]
async fn in_sync_mode_a_missing_mailbox_is_451_with_the_fix_and_a_precondition_is_retried() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let server = sync_server(&gmail_config(&google, dir.path())).await;
    google.fail_sends([SendFault::mail_service_not_enabled()]);
    let reply = send_simple(server.addr).await;
    assert!(reply.starts_with("451 4.7.0"), "{reply}");
    assert!(reply.contains("turn Gmail on"), "{reply}");
    google.fail_sends([SendFault::precondition_check_failed()]);
    assert_code(&send_simple(server.addr).await, 250);
    assert_eq!(google.uploads().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_per_user_quota_below_the_configured_rate_slows_the_mailbox_and_everything_arrives() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    // As Google counts it: sends per user per window (here 3 per second, to keep the test short).
    google.set_quota(Quota {
        sends: 3,
        window: Duration::from_secs(1),
    });
    let queued = TestServer::queued(
        &gmail_config(&google, dir.path()),
        queue_config(&dir.path().join("spool")),
    )
    .await;
    for _ in 0..8 {
        queued_id(&queued.send(&["alice@example.com"]).await);
    }
    google.wait_for_uploads(8).await;
    queued.until_files("queue", 0).await;
    assert!(
        google.over_quota() > 0,
        "the configured 1000/s met the quota"
    );
    assert!(queued.files("dead").is_empty());
    queued.stop().await;
}

/// A token that dies while mail is queued: the fix is told once (the account's warning, and
/// `/readyz` beside the problem, not inside it), each held message's log line names the problem
/// without the paragraph, and `queue list` says the mail is held rather than giving it a due time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_token_is_told_once_with_its_fix_and_held_mail_says_so() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let config = gmail_mode(&google, dir.path(), Delivery::Queue);
    google.accept_only_refresh_token(NEW_REFRESH_TOKEN);
    let served = ServerProcess::with_config(&config, dir.path()).await;
    for _ in 0..3 {
        assert_code(&send_simple(served.smtp).await, 250);
    }
    let held = served.wait_for_log("held: its account's credentials").await;
    assert!(!held.contains("authorize"), "{held}");
    let fix = "smtp2gmail authorize";
    let log = served.log();
    let with_fix: Vec<&String> = log.iter().filter(|l| l.contains(fix)).collect();
    assert_eq!(with_fix.len(), 1, "the fix once in the log: {log:#?}");
    assert!(
        with_fix[0].contains("credentials need attention"),
        "{log:#?}"
    );

    let (_, body) = served.get("/readyz").await;
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    let problems = ready["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "one problem for one dead token: {body}");
    assert!(
        problems[0]["problem"]
            .as_str()
            .unwrap()
            .contains("invalid_grant"),
        "{body}"
    );
    assert_eq!(body.matches(fix).count(), 1, "{body}");

    let (ok, list) = served.queue_command(&["list"]).await;
    assert!(ok, "{list}");
    assert!(list.contains("HELD: its account's credentials"), "{list}");
    assert!(!list.contains("next"), "no due time for held mail: {list}");
    served.stop().await;
}
