//! Credentials replaced while the server runs: a revoked token answers 451 with the fix, and once
//! a new token file is written (as `authorize` does) the next message goes through, no restart.
//! In process with the credential watcher, and through the real binary with SIGHUP.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fake_google::{self, FakeGoogle};
use common::process::ServerProcess;
use common::{TestServer, WAIT, assert_code, test_config};
use smtp2gmail::config::{AccountConfig, GmailConfig};
use smtp2gmail::google::CredentialState;
use smtp2gmail::relay::gmail::RetryPolicy;
use smtp2gmail::relay::gmail::reload::CredentialWatcher;
use smtp2gmail::relay::{Gmail, http_client};
use tokio_util::sync::CancellationToken;

const FAST: RetryPolicy = RetryPolicy {
    attempts: 1,
    budget: Duration::from_secs(1),
    first_backoff: Duration::from_millis(10),
};

/// A Gmail relay on the fake with its watcher, and the token file it reads.
struct Relay {
    gmail: Arc<Gmail>,
    watcher: Arc<CredentialWatcher>,
    token_file: PathBuf,
}

fn relay(google: &FakeGoogle, dir: &Path, poll: Duration) -> Relay {
    let token_file = fake_google::write_json(
        dir,
        "token.json",
        &fake_google::token_json(&google.token_uri()),
    );
    let config = GmailConfig {
        api_base: google.api_base(),
        credentials: Some(token_file.clone()),
        ..GmailConfig::default()
    };
    let gmail = Arc::new(
        Gmail::from_config(&config, http_client().unwrap())
            .unwrap()
            .with_retry(FAST),
    );
    let watcher = Arc::new(CredentialWatcher::new(
        gmail.router().accounts().cloned(),
        poll,
    ));
    Relay {
        gmail,
        watcher,
        token_file,
    }
}

/// The first message works; then the refresh token is revoked (and the access token with it).
async fn revoke_after_one_message(google: &FakeGoogle, server: &TestServer) {
    assert_code(&common::send_simple(server.addr).await, 250);
    google.accept_only_refresh_token(fake_google::NEW_REFRESH_TOKEN);
    google.revoke_access_tokens();
    let reply = common::send_simple(server.addr).await;
    assert!(reply.starts_with("451 4.7.0 "), "{reply}");
    assert!(
        reply.contains("invalid_grant") && reply.contains("smtp2gmail authorize"),
        "{reply}"
    );
}

#[tokio::test]
async fn a_new_token_file_is_used_without_restart() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let relay = relay(&google, dir.path(), Duration::from_millis(20));
    let stop = CancellationToken::new();
    let watching = tokio::spawn(relay.watcher.clone().run(stop.clone()));
    let server = TestServer::with_target(test_config(), relay.gmail.clone()).await;
    revoke_after_one_message(&google, &server).await;

    fake_google::write_token_atomically(&relay.token_file, &fake_google::authorized_token(&google));
    // The watcher's own signal that it switched: the state starts again from Unknown.
    let account = relay.gmail.router().accounts().next().unwrap().clone();
    let deadline = Instant::now() + WAIT;
    while matches!(
        account.tokens.state(),
        CredentialState::NeedsAttention { .. }
    ) {
        assert!(
            Instant::now() < deadline,
            "the new file was never picked up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_code(&common::send_simple(server.addr).await, 250);
    assert!(matches!(account.tokens.state(), CredentialState::Ok { .. }));

    stop.cancel();
    tokio::time::timeout(WAIT, watching)
        .await
        .expect("the watcher stops on shutdown")
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn reload_all_switches_now_and_keeps_credentials_when_the_file_is_bad() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    // Never polls within the test: only reload_all (what SIGHUP calls) acts.
    let relay = relay(&google, dir.path(), Duration::from_secs(3600));
    let server = TestServer::with_target(test_config(), relay.gmail.clone()).await;
    assert_code(&common::send_simple(server.addr).await, 250);

    std::fs::write(&relay.token_file, "{ half a file").unwrap();
    assert_eq!(relay.watcher.reload_all().await, 0);
    google.revoke_access_tokens();
    assert_code(&common::send_simple(server.addr).await, 250);
    assert_eq!(
        google.token_requests(),
        2,
        "the old refresh token is still in use"
    );

    // The same credentials again (as after our own write-back): nothing is thrown away.
    let same = fake_google::token_json(&google.token_uri());
    fake_google::write_token_atomically(&relay.token_file, &same);
    assert_eq!(relay.watcher.reload_all().await, 0);

    google.accept_only_refresh_token(fake_google::NEW_REFRESH_TOKEN);
    google.revoke_access_tokens();
    fake_google::write_token_atomically(&relay.token_file, &fake_google::authorized_token(&google));
    assert_eq!(relay.watcher.reload_all().await, 1);
    assert_code(&common::send_simple(server.addr).await, 250);
    assert_eq!(google.token_requests(), 3);
    server.stop().await;
}

#[tokio::test]
async fn accounts_sharing_a_file_each_reload_once() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let token_file = fake_google::write_json(
        dir.path(),
        "token.json",
        &fake_google::token_json(&google.token_uri()),
    );
    let config = GmailConfig {
        api_base: google.api_base(),
        credentials: Some(token_file.clone()),
        accounts: vec![AccountConfig {
            name: "support".into(),
            senders: vec!["support@example.org".into()],
            credentials: Some(token_file.clone()),
            ..AccountConfig::default()
        }],
        ..GmailConfig::default()
    };
    let gmail = Gmail::from_config(&config, http_client().unwrap()).unwrap();
    let watcher = CredentialWatcher::new(gmail.router().accounts().cloned(), WAIT);
    assert_eq!(watcher.poll(), 0, "nothing changed yet");
    fake_google::write_token_atomically(&token_file, &fake_google::authorized_token(&google));
    assert_eq!(watcher.poll(), 2, "both accounts use the file");
    assert_eq!(watcher.poll(), 0, "a change is acted on once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_running_server() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    fake_google::write_json(
        dir.path(),
        "token.json",
        &fake_google::token_json(&google.token_uri()),
    );
    let config = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n[relay]\nmode = \"gmail\"\ndelivery = \"sync\"\n\
         [gmail]\ncredentials = \"token.json\"\napi_base = \"{}\"\n",
        google.api_base()
    );
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    // Before the start: the server asks for its first access token at once, in the background,
    // and a token obtained before the refusal would send the first message.
    google.accept_only_refresh_token(fake_google::NEW_REFRESH_TOKEN);
    let serve = ServerProcess::in_dir(dir.path()).await;
    let addr = serve.smtp;

    let reply = common::send_simple(addr).await;
    assert!(reply.starts_with("451 4.7.0 "), "{reply}");

    fake_google::write_token_atomically(
        &dir.path().join("token.json"),
        &fake_google::authorized_token(&google),
    );
    serve.signal("-HUP").await;
    serve.wait_for_log("SIGHUP: reloading credentials").await;
    serve.wait_for_log("credentials for account default").await;
    assert_code(&common::send_simple(addr).await, 250);
    let status = serve.terminate().await;
    assert_eq!(status.code(), Some(0), "SIGHUP must not stop the server");
}

#[tokio::test]
async fn sighup_in_console_mode_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[http]\nlisten = \"127.0.0.1:0\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n",
    )
    .unwrap();
    let serve = ServerProcess::in_dir(dir.path()).await;
    let addr = serve.smtp;
    serve.signal("-HUP").await;
    serve
        .wait_for_log("SIGHUP: no Google credentials to reload")
        .await;
    assert_code(&common::send_simple(addr).await, 250);
    serve.stop().await;
}
