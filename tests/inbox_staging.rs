//! Auto-release for staging (`[inbox] release_matching`, `release_blocked`): mail to matched
//! envelope recipients is captured and also queued for the fake Gmail, to exactly those
//! recipients, through gmail mode's queue (its spool, retries and `queue` commands); every other
//! recipient, and every blocked one, is never sent to — by the rule or by a person's release.

mod common;

use std::time::Duration;

use common::fake_gmail::SendFault;
use common::fake_google::{self, FakeGoogle};
use common::inbox::with_gmail;
use common::process::ServerProcess;
use common::serving::{Serving, gmail_mode, queue_config, queued_id};
use common::{Client, TestServer, WAIT};
use serde_json::{Value, json};
use smtp2gmail::config::{Config, Delivery, FromPolicy, RelayMode};
use tempfile::TempDir;

/// The team's domain: released.
const TEAM: &str = r"@team\.example$";
/// On the team, but never to be sent to.
const BLOCKED: &str = "boss@team.example";

/// A message to a team member, a customer and the blocked team address (To and Cc).
const MAIL: &[u8] = b"From: app@example.com\r\nTo: dev@team.example, customer@example.org\r\n\
Cc: boss@team.example\r\nSubject: Your staging order\r\nMessage-ID: <order-1@app.example>\r\n\r\n\
Order 1 confirmed.\r\n.\r\n";

/// A new fake Google, a temporary directory, and console mode against them auto-releasing to
/// the team but not to [`BLOCKED`], the spool in the directory with the tests' fast retries;
/// `adjust` may change the configuration first.
async fn staging(adjust: impl FnOnce(&mut Config)) -> (FakeGoogle, TempDir, TestServer) {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let mut config = gmail_mode(&google, dir.path(), Delivery::Queue);
    config.relay.mode = RelayMode::Console;
    config.inbox.release_matching = TEAM.to_string();
    config.inbox.release_blocked = vec![BLOCKED.to_string()];
    config.queue = queue_config(&dir.path().join("spool"));
    adjust(&mut config);
    let server = TestServer::assembled(config).await;
    (google, dir, server)
}

/// Sends [`MAIL`] and checks that it was refused with `reply` (its start) and captured all the
/// same, and that nothing reached Gmail; stops the server.
async fn refused_but_captured(server: TestServer, google: &FakeGoogle, reply: &str) {
    let got = send_order(&server).await;
    assert!(got.starts_with(reply), "{got}");
    let list = json_at(&server, "/api/v1/messages").await;
    assert_eq!(list["total"], 1);
    assert!(server.files("queue").is_empty());
    server.stop().await;
    assert!(google.uploads().is_empty());
}

/// Sends [`MAIL`] to the team member, the customer and the blocked address; the reply to DATA.
async fn send_order(server: &TestServer) -> String {
    let mut client: Client = server.client().await;
    let rcpts = ["dev@team.example", "customer@example.org", BLOCKED];
    client.start_transaction("app@example.com", &rcpts).await;
    client.data(MAIL).await
}

/// GET `path` as JSON (200 asserted).
async fn json_at(server: &TestServer, path: &str) -> Value {
    let (status, body) = server.get(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until `done` holds, polling the fake (bounded by the harness's wait).
async fn until(what: &str, done: impl Fn() -> bool) {
    let waited = tokio::time::timeout(WAIT, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert!(waited.await.is_ok(), "waited in vain for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matched_recipients_get_one_copy_through_the_queue_and_the_others_stay_captured() {
    let (google, _dir, server) = staging(|_| {}).await;
    google.hold_sends();
    let id = queued_id(&send_order(&server).await);

    // The 250 came once the copy was in the spool: it is there, and the `queue` commands see it.
    assert_eq!(server.files("queue"), [format!("{id}.msg")]);
    let (listed, list) = server.queue_command(&["list"]).await;
    assert!(listed && list.contains(&id), "{list}");
    let (shown, show) = server.queue_command(&["show", &id]).await;
    assert!(shown && show.contains("dev@team.example"), "{show}");
    assert!(
        !show.contains("customer@example.org") && !show.contains(BLOCKED),
        "{show}"
    );
    let (ready, readiness) = server.readiness().await;
    assert_eq!(ready, 200, "{readiness}");

    // …and the message is captured as sent, every recipient included.
    let captured = json_at(&server, &format!("/api/v1/message/{id}")).await;
    assert_eq!(captured["Subject"], "Your staging order");
    let to = captured["To"].to_string();
    assert!(to.contains("customer@example.org"), "{to}");

    google.release_sends();
    google.wait_for_uploads(1).await;
    server.until_files("queue", 0).await;
    let uploads = google.uploads();
    assert_eq!(uploads.len(), 1, "released once");
    assert_eq!(uploads[0].recipients, ["dev@team.example"]);
    let body = String::from_utf8_lossy(&uploads[0].body);
    assert!(
        !body.contains("customer@example.org") && !body.contains(BLOCKED),
        "{body}"
    );
    assert!(body.contains("Subject: Your staging order") && body.contains("Order 1 confirmed."));
    assert!(
        !body.contains("order-1@app.example"),
        "a new Message-ID: {body}"
    );
    assert_eq!(google.send_requests(), 1);
    assert!(server.files("dead").is_empty());

    // Mail to nobody the rule releases is only captured.
    let mut client = server.client().await;
    client
        .start_transaction("app@example.com", &["customer@example.org", BLOCKED])
        .await;
    let reply = client.data(MAIL).await;
    assert!(reply.starts_with("250 2.0.0 OK "), "{reply}");
    assert!(server.files("queue").is_empty());
    let list = json_at(&server, "/api/v1/messages").await;
    assert_eq!(list["total"], 2);
    drop(client);
    server.stop().await;
    assert_eq!(google.uploads().len(), 1, "nothing more was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gmail_outage_keeps_the_released_copy_queued_until_gmail_recovers() {
    let (google, _dir, server) = staging(|_| {}).await;
    google.fail_sends_from("app@example.com", SendFault::google(503, "backendError"));
    let id = queued_id(&send_order(&server).await);
    until("two failed attempts", || google.send_requests() >= 2).await;
    assert!(google.uploads().is_empty());
    let queued = server.files("queue");
    assert!(
        queued.contains(&format!("{id}.msg")),
        "kept in the queue: {queued:?}"
    );
    let (_, show) = server.queue_command(&["show", &id]).await;
    assert!(
        show.contains("503") || show.contains("backendError"),
        "{show}"
    );

    google.clear_faults_from("app@example.com");
    google.wait_for_uploads(1).await;
    server.until_files("queue", 0).await;
    let uploads = google.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].recipients, ["dev@team.example"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_never_sends_to_a_blocked_address() {
    let (google, _dir, server) = staging(|_| {}).await;
    let mut client = server.client().await;
    client
        .start_transaction("app@example.com", &["customer@example.org"])
        .await;
    let reply = client.data(MAIL).await;
    assert!(reply.starts_with("250 2.0.0 OK "), "{reply}");
    let id = reply.trim_end().rsplit(' ').next().unwrap().to_string();

    let webui = json_at(&server, "/api/v1/webui").await;
    assert_eq!(webui["AutoRelease"], TEAM);
    assert_eq!(
        webui["MessageRelay"]["BlockedRecipients"],
        r"(?i)(?:^boss@team\.example$)"
    );

    // As Mailpit answers a relay-blocked recipient: 400, the entries named, nothing sent.
    let release = |to: Value| {
        let url = server.url(&format!("/api/v1/message/{id}/release"));
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .json(&json!({ "To": to }))
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let refused = release(json!(["qa@example.org", "Boss <BOSS@team.example>"])).await;
    assert_eq!(
        refused,
        (
            400,
            "Failed: Address found on blocklist: Boss <BOSS@team.example>".to_string()
        )
    );
    assert!(google.uploads().is_empty());
    let (status, text) = release(json!(["qa@example.org"])).await;
    assert_eq!((status, text.as_str()), (200, "ok"));
    assert_eq!(google.uploads().len(), 1);
    assert_eq!(google.uploads()[0].recipients, ["qa@example.org"]);
    drop(client);
    server.stop().await;
}

/// A copy the queue refuses is refused to the client although the message is captured: the
/// spool cannot take it (451), or gmail mode would refuse it (here a From that is not one of
/// the account's addresses, with `from_policy = "reject"`: 550).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_the_queue_refuses_is_refused_with_its_reason_and_the_message_captured() {
    let (google, _dir, server) = staging(|_| {}).await;
    // Root ignores permissions, so break the spool by putting a file where its directory was.
    std::fs::remove_dir_all(server.spool().join("queue")).unwrap();
    std::fs::write(server.spool().join("queue"), b"not a directory").unwrap();
    let refusal = "451 4.3.0 captured, but not released through Gmail";
    refused_but_captured(server, &google, refusal).await;

    let (google, _dir, server) = staging(|config| {
        config.gmail.send_as = vec!["staging@team.example".to_string()];
        config.gmail.from_policy = Some(FromPolicy::Reject);
    })
    .await;
    let refusal = "550 5.7.1 captured, but not released through Gmail";
    refused_but_captured(server, &google, refusal).await;
}

/// A released copy Gmail refuses becomes a dead letter, and its DSN goes only to addresses the
/// release rules send to and to the operator's own `bounce_to`: a customer who is the envelope
/// sender (a contact form) gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dsn_of_a_released_copy_goes_only_where_release_may_send() {
    let (google, _dir, server) = staging(|config| {
        config.notify.bounce_to = vec!["postmaster@example.org".to_string()];
    })
    .await;
    google.fail_sends([SendFault::google(400, "invalidArgument")]);
    let id = queued_id(
        &server
            .send_as("customer@example.org", &["dev@team.example"])
            .await,
    );
    google.wait_for_uploads(1).await;
    server.until_files("queue", 0).await;
    assert!(server.files("dead").contains(&format!("{id}.msg")));
    let dsn = &google.uploads()[0];
    assert_eq!(dsn.recipients, ["postmaster@example.org"]);
    let body = String::from_utf8_lossy(&dsn.body);
    assert!(body.contains("message/delivery-status"), "{body}");

    // A sender of the team gets the DSN as well.
    google.fail_sends([SendFault::google(400, "invalidArgument")]);
    queued_id(
        &server
            .send_as("app@team.example", &["dev@team.example"])
            .await,
    );
    google.wait_for_uploads(2).await;
    server.until_files("queue", 0).await;
    let mut to = google.uploads()[1].recipients.clone();
    to.sort();
    assert_eq!(to, ["app@team.example", "postmaster@example.org"]);
    server.stop().await;
}

/// The binary, killed while Gmail is down with a released copy in its spool, sends it once
/// Gmail is back and the server runs again; its startup line says what it auto-releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_copy_survives_a_crash_of_the_server() {
    let extra = format!(
        "[inbox]\nrelease_matching = '{TEAM}'\n\
         [queue]\nretry_min = \"20ms\"\nretry_max = \"100ms\"\nmax_send_rate = 1000.0\n"
    );
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    google.fail_sends_from("app@example.com", SendFault::google(503, "backendError"));
    let server = with_gmail(dir.path(), &google, &extra).await;
    assert!(
        server.startup.contains("is also queued in spool")
            && server.startup.contains("auto-release"),
        "{}",
        server.startup
    );
    let id = queued_id(
        &server
            .send(&["dev@team.example", "customer@example.org"])
            .await,
    );
    until("a failed attempt", || google.send_requests() >= 1).await;
    server.kill().await;

    google.clear_faults_from("app@example.com");
    let server = ServerProcess::in_dir(dir.path()).await;
    google.wait_for_uploads(1).await;
    server.until_files("queue", 0).await;
    let uploads = google.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].recipients, ["dev@team.example"]);
    let (_, list) = server.queue_command(&["list"]).await;
    assert!(!list.contains(&id), "{list}");
    server.stop().await;
}

/// `smtp2gmail check` (as `serve`) refuses release rules that cannot work, naming the key.
#[tokio::test]
async fn broken_release_rules_are_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let google = FakeGoogle::start().await;
    fake_google::write_json(
        dir.path(),
        "token.json",
        &fake_google::token_json(&google.token_uri()),
    );
    let gmail = "[gmail]\ncredentials = \"token.json\"\n";
    let cases = [
        (
            format!("{gmail}[inbox]\nrelease_matching = '(unclosed'\n"),
            "inbox.release_matching: not a regular expression",
        ),
        (
            format!("{gmail}[inbox]\nrelease_blocked = ['ok@x.example', '[z-a]']\n"),
            "inbox.release_blocked: not a regular expression",
        ),
        (
            "[inbox]\nrelease_matching = '@team$'\n".to_string(),
            "inbox.release_matching: releases through Gmail and no Gmail credentials",
        ),
        (
            format!("[relay]\nmode = \"gmail\"\n{gmail}[inbox]\nrelease_matching = '@team$'\n"),
            "only console and file modes capture",
        ),
        (
            format!(
                "[relay]\nmode = \"gmail\"\n{gmail}[inbox]\nrelease_blocked = ['a@x.example']\n"
            ),
            "inbox.release_blocked: release applies to captured mail",
        ),
    ];
    for (config, expected) in cases {
        std::fs::write(dir.path().join("config.toml"), &config).unwrap();
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_smtp2gmail"))
            .args(["--config", "config.toml", "check"])
            .current_dir(dir.path())
            .env_remove("GMAIL_API_REFRESH_TOKEN")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{config}: {stderr}");
        assert!(stderr.contains(expected), "{config}: {stderr}");
    }
}

/// The auto-release stage hides nothing of the inbox: a message posted to the send API is
/// released as SMTP mail is (to the team member only), and the chaos triggers still refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_mail_is_released_and_chaos_still_answers() {
    let (google, _dir, server) = staging(|config| config.inbox.chaos = true).await;
    let post = json!({
        "From": {"Email": "app@example.com"},
        "To": [{"Email": "dev@team.example"}, {"Email": "customer@example.org"}],
        "Subject": "Posted order",
        "Text": "posted"
    });
    let http = reqwest::Client::new();
    let sent = http
        .post(server.url("/api/v1/send"))
        .json(&post)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200, "{}", sent.text().await.unwrap());
    google.wait_for_uploads(1).await;
    server.until_files("queue", 0).await;
    assert_eq!(google.uploads()[0].recipients, ["dev@team.example"]);

    let trigger = json!({"Recipient": {"ErrorCode": 451, "Probability": 100}});
    let set = http
        .put(server.url("/api/v1/chaos"))
        .json(&trigger)
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let mut client: Client = server.client().await;
    client.cmd("EHLO test.example").await;
    let reply = client.cmd("MAIL FROM:<app@example.com>").await;
    assert!(reply.starts_with("250"), "{reply}");
    let reply = client.cmd("RCPT TO:<dev@team.example>").await;
    assert!(reply.starts_with("451"), "{reply}");
    server.stop().await;
    assert_eq!(google.uploads().len(), 1);
}
