//! gcloud application-default credentials (`authorized_user` files) against a fake Google that,
//! like Google, refuses user credentials without a quota project when the OAuth client belongs to
//! another project: `quota_project_id` is sent as `x-goog-user-project`, and the 403 "… requires a
//! quota project …" is reported with that fix, not "enable the Gmail API".

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_google::{FakeGoogle, authorized_user_json, write_json, write_token_atomically};
use common::{TestServer, assert_code, send_simple, test_config};
use smtp2gmail::config::GmailConfig;
use smtp2gmail::relay::gmail::RetryPolicy;
use smtp2gmail::relay::gmail::reload::CredentialWatcher;
use smtp2gmail::relay::{Gmail, http_client};

/// A sync-mode server on the fake with the `authorized_user` file at `credentials`, and the
/// credential watcher of its accounts (polled by hand).
async fn start(
    google: &FakeGoogle,
    credentials: std::path::PathBuf,
) -> (TestServer, CredentialWatcher) {
    let config = GmailConfig {
        api_base: google.api_base(),
        credentials: Some(credentials),
        ..GmailConfig::default()
    };
    let once = RetryPolicy {
        attempts: 1,
        ..RetryPolicy::default()
    };
    let gmail = Gmail::from_config(&config, http_client().unwrap())
        .unwrap()
        .with_retry(once);
    let watcher = CredentialWatcher::new(gmail.router().accounts().cloned(), Duration::MAX);
    let server = TestServer::with_target(test_config(), Arc::new(gmail)).await;
    (server, watcher)
}

#[tokio::test]
async fn the_quota_project_is_sent_as_x_goog_user_project() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    google.require_quota_project();
    let adc = authorized_user_json(&google.token_uri(), Some("fake-quota-project"));
    let (server, _watcher) = start(&google, write_json(dir.path(), "adc.json", &adc)).await;
    assert_code(&send_simple(server.addr).await, 250);
    let uploads = google.uploads();
    assert_eq!(
        uploads[0].quota_project.as_deref(),
        Some("fake-quota-project")
    );
    server.stop().await;
}

#[tokio::test]
async fn a_missing_quota_project_is_reported_with_that_fix_and_fixed_by_editing_the_file() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    google.require_quota_project();
    let file = write_json(
        dir.path(),
        "adc.json",
        &authorized_user_json(&google.token_uri(), None),
    );
    let (server, watcher) = start(&google, file.clone()).await;
    let reply = send_simple(server.addr).await;
    assert!(
        reply.starts_with("451 4.7.0 "),
        "held, not bounced: {reply}"
    );
    assert!(
        reply.contains("requires a quota project")
            && reply.contains("\"quota_project_id\"")
            && reply.contains(&file.display().to_string())
            && reply.contains("gcloud auth application-default set-quota-project"),
        "{reply}"
    );
    assert!(!reply.contains("enable the Gmail API"), "{reply}");
    assert!(google.uploads().is_empty());

    // What `gcloud auth application-default set-quota-project` does: the same credentials, now
    // with a quota project. The running server takes it up.
    let fixed = authorized_user_json(&google.token_uri(), Some("fake-quota-project"));
    write_token_atomically(&file, &fixed);
    assert_eq!(watcher.poll(), 1, "a new quota project is a change");
    assert_code(&send_simple(server.addr).await, 250);
    assert_eq!(
        google.uploads()[0].quota_project.as_deref(),
        Some("fake-quota-project")
    );
    server.stop().await;
}
