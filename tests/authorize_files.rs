//! What `authorize` reads and what it writes: client files it must refuse (exit status 2) or
//! accept (a web client's registered loopback URI), and the token file it writes, which the relay
//! then loads, refreshes with and sends through. Apart from the refusals these drive the library:
//! the command line adds nothing there.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use common::fake_google::{CLIENT_ID, CLIENT_SECRET, FakeGoogle, token_json, write_json};
use common::fake_oauth::{ACCOUNT, visit};
use common::{TestServer, assert_code, test_config};
use serde_json::json;
use smtp2gmail::google::authorize::{
    Authorization, AuthorizeError, AuthorizeOptions, Authorized, ClientSecretFile,
};
use smtp2gmail::google::{CredentialKind, CredentialSpec, TokenSource, load};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Runs authorize on a file with `content` and returns the exit code and stderr.
async fn with_client_file(content: &[u8]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client.json"), content).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_smtp2gmail"))
        .args([
            "authorize",
            "--no-browser",
            "--client-secret",
            "client.json",
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!dir.path().join("token.json").exists());
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

#[tokio::test]
async fn files_that_are_no_client_secret_are_usage_errors() {
    let token = token_json("https://oauth2.googleapis.com/token");
    let service_account =
        json!({"type": "service_account", "client_email": "x@y", "private_key": "k"});
    let web_without_loopback = json!({"web": {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "redirect_uris": ["https://app.example.com/oauth2callback"]}});
    let cases: [(Vec<u8>, &str); 6] = [
        (token.to_string().into(), "is a token file"),
        (
            service_account.to_string().into(),
            "is a service account key",
        ),
        (
            b"{\"type\": \"authorized_user\", \"refresh_token\": \"x\"}".to_vec(),
            "is a token file",
        ),
        (b"not json at all".to_vec(), "not valid JSON"),
        (b"{\"hello\": 1}".to_vec(), "JSON of an unknown kind"),
        (
            web_without_loopback.to_string().into(),
            "no loopback redirect URI",
        ),
    ];
    for (content, expected) in cases {
        let (code, stderr) = with_client_file(&content).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains("client.json") && stderr.contains(expected),
            "{stderr}"
        );
        assert!(!stderr.contains(CLIENT_SECRET), "{stderr}");
    }
}

/// A library flow in progress: the task waiting for the answer, and what it printed.
struct Flow {
    task: JoinHandle<Result<Authorized, AuthorizeError>>,
    /// Lines "pasted" into the flow.
    paste: mpsc::Sender<String>,
    url: String,
    redirect_uri: String,
}

/// Starts the flow on the client file at `path` with the default options.
async fn start(path: &Path) -> Flow {
    let client = ClientSecretFile::load(path).unwrap();
    let pending = Authorization::start(client, AuthorizeOptions::default())
        .await
        .unwrap();
    let (paste, pasted) = mpsc::channel(1);
    let (url, redirect_uri) = (
        pending.url().to_string(),
        pending.redirect_uri().to_string(),
    );
    let task = tokio::spawn(async move { pending.finish(pasted, &reqwest::Client::new()).await });
    Flow {
        task,
        paste,
        url,
        redirect_uri,
    }
}

#[tokio::test]
async fn a_web_client_uses_its_registered_loopback_uri() {
    let fake = FakeGoogle::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A port that was free a moment ago: a web client's port must be known before listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let registered = format!("http://127.0.0.1:{port}/oauth2callback");
    let mut client = fake.installed_client_json();
    client["installed"]["redirect_uris"] = json!(["https://app.example.com/cb", registered]);
    let client = json!({ "web": client["installed"] });
    let flow = start(&write_json(dir.path(), "web.json", &client)).await;
    assert_eq!(flow.redirect_uri, registered);

    let (status, _) = visit(&format!("http://127.0.0.1:{port}/")).await;
    assert_eq!(status, 404, "only the registered path is the redirect");
    let location = fake.consent(&flow.url).await;
    assert!(location.as_str().starts_with(&registered), "{location}");
    let (status, _) = visit(location.as_str()).await;
    assert_eq!(status, 200);
    let authorized = flow.task.await.unwrap().unwrap();
    assert_eq!(authorized.account.as_deref(), Some(ACCOUNT));
    let exchanges = fake.code_exchanges();
    assert_eq!(
        exchanges[0].redirect_uri.as_deref(),
        Some(registered.as_str())
    );
}

/// The library flow, then the relay: the new file loads as token.json credentials, its refresh
/// token works at the token endpoint, and a message goes out through the Gmail endpoint.
#[tokio::test]
async fn the_relay_sends_with_the_new_token_file() {
    let fake = FakeGoogle::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = write_json(dir.path(), "client.json", &fake.installed_client_json());
    let flow = start(&client).await;
    let location = fake.consent(&flow.url).await;
    flow.paste.send(location.to_string()).await.unwrap();
    let authorized = flow.task.await.unwrap().unwrap();
    let path = dir.path().join("token.json");
    authorized.write(&path).unwrap();

    let credentials = load(&CredentialSpec::File(path.clone()), None).unwrap();
    assert_eq!(credentials.kind(), &CredentialKind::TokenFile(path.clone()));
    assert_eq!(credentials.account(), Some(ACCOUNT));
    let source = TokenSource::new("new", credentials, reqwest::Client::new());
    let cached = source.access_token(None).await.unwrap();
    assert_eq!(cached.expose(), "fake-access-1", "the file's access token");
    source.invalidate(None, &cached);
    let refreshed = source.access_token(None).await.unwrap();
    assert_eq!(
        refreshed.expose(),
        "fake-access-2",
        "the new refresh token works"
    );
    assert_eq!(fake.token_requests(), 2);

    let gmail = smtp2gmail::config::GmailConfig {
        api_base: fake.api_base(),
        credentials: Some(path),
        ..Default::default()
    };
    let http = smtp2gmail::relay::http_client().unwrap();
    let relay = smtp2gmail::relay::Gmail::from_config(&gmail, http).unwrap();
    let server = TestServer::with_target(test_config(), Arc::new(relay)).await;
    let mut smtp = server.client().await;
    smtp.start_transaction("app@example.com", &["alice@example.com"])
        .await;
    let message = b"To: alice@example.com\r\nSubject: hi\r\n\r\nhello\r\n.\r\n";
    assert_code(&smtp.data(message).await, 250);
    assert_eq!(fake.uploads().len(), 1);
    drop(smtp);
    server.stop().await;
}
