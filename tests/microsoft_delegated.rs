//! One Microsoft 365 user's mailbox (delegated Mail.Send): `smtp2gmail authorize --microsoft`
//! through the real binary against the fake Microsoft (the test approves, declines or expires
//! the device code the binary printed, as the user would on another device), then `check`,
//! `send` and the server sending through `/me/sendMail` with the token file it wrote; the
//! refresh token's rotation written back; a revoked sign-in holding mail with 451 until the user
//! signs in again, without a restart; a large message submitted by SMTP with the user's token.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::fake_exchange_smtp::FakeExchangeSmtp;
use common::fake_microsoft::{self, FakeMicrosoft};
use common::process::smtp2gmail;
use common::serving::{Serving, queue_config, queued_id};
use common::{TestServer, WAIT, assert_code};
use serde_json::Value;
use smtp2gmail::config::{Config, Delivery, LargeMessages, MicrosoftConfig, RelayMode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// The user who signs in.
const USER: &str = "alice@contoso.example";

/// `[microsoft]` for the fake with the user's token file `m365-token.json` in `dir`.
fn microsoft(fake: &FakeMicrosoft, dir: &Path) -> MicrosoftConfig {
    MicrosoftConfig {
        tenant: Some(fake_microsoft::TENANT.into()),
        client_id: Some(fake_microsoft::CLIENT_ID.into()),
        credentials: Some(dir.join("m365-token.json")),
        graph_base: fake.base_url(),
        login_base: fake.base_url(),
        large_messages: LargeMessages::None,
        max_messages_per_minute: Some(60_000),
        ..MicrosoftConfig::default()
    }
}

/// `config.toml` in `dir` for the binary: microsoft mode with the user's token file.
fn write_config(fake: &FakeMicrosoft, dir: &Path) {
    let mut config = Config {
        microsoft: microsoft(fake, dir),
        queue: queue_config(&dir.join("spool")),
        ..Config::default()
    };
    config.relay.mode = RelayMode::Microsoft;
    common::serving::write_config(&config, &dir.join("config.toml"));
}

/// How `authorize --microsoft` ended.
struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `authorize --microsoft` in `dir`; once it has printed a user code, `decide` plays the
/// user with it (approve, decline, let it expire).
async fn authorize(dir: &Path, fake: &FakeMicrosoft, decide: impl FnOnce(&str)) -> Finished {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_smtp2gmail"))
        .args(["authorize", "--microsoft"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut printed = String::new();
    let code = tokio::time::timeout(WAIT, async {
        loop {
            let line = stderr.next_line().await.unwrap().expect("a user code");
            printed.push_str(&line);
            printed.push('\n');
            if let Some(code) = fake.user_codes().last()
                && line.trim() == code
            {
                return code.clone();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no user code printed: {printed}"));
    assert!(
        printed.contains(fake_microsoft::delegated::VERIFICATION_URI),
        "{printed}"
    );
    decide(&code);
    let mut stdout = String::new();
    let mut rest = String::new();
    let finished = tokio::time::timeout(WAIT, async {
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .await
            .unwrap();
        while let Some(line) = stderr.next_line().await.unwrap() {
            rest.push_str(&line);
            rest.push('\n');
        }
        child.wait().await.unwrap()
    })
    .await
    .expect("authorize ends");
    Finished {
        code: finished.code(),
        stdout,
        stderr: printed + &rest,
    }
}

/// The server in this process, delivering synchronously with the user's token file in `dir`;
/// `adjust` may change the configuration.
async fn serve(fake: &FakeMicrosoft, dir: &Path, adjust: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config {
        microsoft: microsoft(fake, dir),
        queue: queue_config(&dir.join("spool")),
        ..Config::default()
    };
    config.relay.mode = RelayMode::Microsoft;
    config.relay.delivery = Delivery::Sync;
    adjust(&mut config);
    config.smtp.listen = vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))];
    config.http.listen = "127.0.0.1:0".to_string();
    TestServer::assembled(config).await
}

fn token_file(dir: &Path) -> (PathBuf, Value) {
    let path = dir.join("m365-token.json");
    let value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    (path, value)
}

#[tokio::test]
async fn authorize_microsoft_signs_in_with_a_device_code_and_the_token_sends_through_me() {
    let (fake, dir) = (FakeMicrosoft::start().await, tempfile::tempdir().unwrap());
    write_config(&fake, dir.path());
    // The user takes a while, and the fake asks the poller to slow down once.
    fake.script_polls(&["authorization_pending", "slow_down"]);
    let finished = authorize(dir.path(), &fake, |code| fake.approve(code, USER)).await;
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert!(
        finished.stdout.contains(&format!("Authorized {USER}."))
            && finished.stdout.contains("credentials = "),
        "{}",
        finished.stdout
    );
    let (path, file) = token_file(dir.path());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(file["type"], "microsoft_user");
    assert_eq!(file["account"], USER);
    assert_eq!(file["tenant"], fake_microsoft::TENANT);
    let first = fake.latest_refresh_token().unwrap();
    assert_eq!(file["refresh_token"], first.as_str());

    // check refreshes (a fresh token, not the file's): the rotated refresh token is written back.
    let run = smtp2gmail(dir.path(), &["check"]).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(fake.refreshes(), 1);
    let rotated = fake.latest_refresh_token().unwrap();
    assert_ne!(rotated, first);
    assert_eq!(token_file(dir.path()).1["refresh_token"], rotated.as_str());

    let args = ["send", "--from", USER, "--to", "bob@example.com"];
    let run = smtp2gmail(dir.path(), &args).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let accepted = fake.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].mailbox, USER, "sent through /me as the user");
}

#[tokio::test]
async fn a_declined_or_expired_code_ends_with_a_clear_message() {
    let (fake, dir) = (FakeMicrosoft::start().await, tempfile::tempdir().unwrap());
    write_config(&fake, dir.path());
    let declined = authorize(dir.path(), &fake, |code| fake.decline(code)).await;
    assert_eq!(declined.code, Some(1));
    assert!(
        declined.stderr.contains("declined") && declined.stderr.contains("accept"),
        "{}",
        declined.stderr
    );
    let expired = authorize(dir.path(), &fake, |code| fake.expire_code(code)).await;
    assert_eq!(expired.code, Some(1));
    assert!(
        expired.stderr.contains("expired") && expired.stderr.contains("run the command again"),
        "{}",
        expired.stderr
    );
    assert!(!dir.path().join("m365-token.json").exists());
}

#[tokio::test]
async fn a_revoked_sign_in_holds_mail_with_451_until_the_user_signs_in_again() {
    let (fake, dir) = (FakeMicrosoft::start().await, tempfile::tempdir().unwrap());
    write_config(&fake, dir.path());
    let signed_in = authorize(dir.path(), &fake, |code| fake.approve(code, USER)).await;
    assert_eq!(signed_in.code, Some(0), "{}", signed_in.stderr);
    let server = serve(&fake, dir.path(), |_| {}).await;
    assert_code(&server.send_as(USER, &["bob@example.com"]).await, 250);

    // The sign-in ends (idle for 90 days, a password reset): the access token is refused, the
    // refresh token too.
    fake.revoke_sign_ins();
    let reply = server.send_as(USER, &["bob@example.com"]).await;
    assert!(reply.starts_with("451 4.7.0 "), "{reply}");
    let (path, _) = token_file(dir.path());
    assert!(
        reply.contains("AADSTS700082")
            && reply.contains(&format!(
                "authorize --microsoft --token-file {}",
                path.display()
            )),
        "{reply}"
    );

    // The user signs in again; the running server picks the file up by itself.
    let account = server.account("default");
    let generation = account.tokens.generation();
    let again = authorize(dir.path(), &fake, |code| fake.approve(code, USER)).await;
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    let reloaded = tokio::time::timeout(WAIT, async {
        while account.tokens.generation() == generation {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(reloaded.await.is_ok(), "the new token file was not read");
    assert_code(&server.send_as(USER, &["bob@example.com"]).await, 250);
    let accepted = fake.accepted();
    assert_eq!(accepted.len(), 2);
    assert!(accepted.iter().all(|a| a.mailbox == USER));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_goes_by_smtp_as_the_signed_in_user() {
    let fake = Arc::new(FakeMicrosoft::start().await);
    let exchange = FakeExchangeSmtp::start(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(&fake, dir.path());
    let signed_in = authorize(dir.path(), &fake, |code| fake.approve(code, USER)).await;
    assert_eq!(signed_in.code, Some(0), "{}", signed_in.stderr);
    let server = serve(&fake, dir.path(), |config| {
        let microsoft = &mut config.microsoft;
        microsoft.large_messages = LargeMessages::Smtp;
        microsoft.graph_request_limit = 4096;
        microsoft.smtp_host = "localhost".into();
        microsoft.smtp_port = exchange.addr.port();
        microsoft.smtp_ca = Some(exchange.cert.cert_path());
    })
    .await;
    let body = format!("{}\r\n", "x".repeat(76)).repeat(100);
    let message = format!("From: {USER}\r\nTo: bob@example.com\r\nSubject: large\r\n\r\n{body}");
    let mut client = server.client().await;
    client.start_transaction(USER, &["bob@example.com"]).await;
    assert_code(
        &client.data(format!("{message}.\r\n").as_bytes()).await,
        250,
    );
    let submitted = exchange.submitted();
    assert_eq!(submitted.len(), 1);
    assert_eq!(
        submitted[0].user, USER,
        "XOAUTH2 as the user, with the user's SMTP token"
    );
    assert_eq!(submitted[0].data, message.as_bytes());
    assert!(fake.accepted().is_empty(), "nothing through Graph");
    server.stop().await;
}

#[tokio::test]
async fn queued_mail_waits_for_a_new_sign_in_and_goes_when_the_file_is_rewritten() {
    let (fake, dir) = (FakeMicrosoft::start().await, tempfile::tempdir().unwrap());
    write_config(&fake, dir.path());
    let signed_in = authorize(dir.path(), &fake, |code| fake.approve(code, USER)).await;
    assert_eq!(signed_in.code, Some(0), "{}", signed_in.stderr);
    let server = serve(&fake, dir.path(), |config| {
        config.relay.delivery = Delivery::Queue;
        // Without the new sign-in the message would wait an hour.
        config.queue.retry_min = Duration::from_secs(3600);
        config.queue.retry_max = Duration::from_secs(3600);
    })
    .await;
    fake.revoke_sign_ins();
    queued_id(&server.send_as(USER, &["bob@example.com"]).await);
    server.until_unready_naming("authorize --microsoft").await;
    assert!(fake.accepted().is_empty());
    let again = authorize(dir.path(), &fake, |code| fake.approve(code, USER)).await;
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    fake.wait_for_accepted(1).await;
    server.until_files("queue", 0).await;
    assert_eq!(fake.accepted()[0].mailbox, USER);
    server.stop().await;
}
