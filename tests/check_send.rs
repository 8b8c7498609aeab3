//! `smtp2gmail check` and `smtp2gmail send` as a user runs them: the real binary as a child
//! process, the fake Google in this process (so the child runs on tokio's process support and the
//! fake keeps serving while the test waits).

mod common;

use std::path::Path;

use common::fake_google::{self, FakeGoogle, Fault};
use common::process::smtp2gmail;

/// `config.toml` for gmail mode against the fake, with `token` as `token.json`.
fn gmail_mode(google: &FakeGoogle, dir: &Path, token: &serde_json::Value) {
    fake_google::write_json(dir, "token.json", token);
    let config = format!(
        "[relay]\nmode = \"gmail\"\n[gmail]\ncredentials = \"token.json\"\napi_base = \"{}\"\n",
        google.api_base()
    );
    std::fs::write(dir.join("config.toml"), config).unwrap();
}

#[tokio::test]
async fn check_reports_a_working_account_with_a_fresh_token() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let mut token = fake_google::token_json(&google.token_uri());
    // A still-valid cached access token must not stand in for a working refresh token.
    token["token"] = "cached-token".into();
    token["expiry"] = "2999-01-01T00:00:00Z".into();
    token["account"] = "app@example.com".into();
    gmail_mode(&google, dir.path(), &token);
    let run = smtp2gmail(dir.path(), &["check"]).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    for expected in [
        "config config.toml: valid",
        "account default",
        "refresh token from token.json file token.json",
        "app@example.com",
        fake_google::GMAIL_SEND,
        "expires ",
        "status        ok",
    ] {
        assert!(
            run.stdout.contains(expected),
            "{expected:?} missing:\n{}",
            run.stdout
        );
    }
    assert_eq!(
        google.token_requests(),
        1,
        "check asks Google, not the file"
    );
    assert!(run.stderr.is_empty(), "{}", run.stderr);
}

#[tokio::test]
async fn check_names_the_authorize_command_for_invalid_grant() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    gmail_mode(
        &google,
        dir.path(),
        &fake_google::token_json(&google.token_uri()),
    );
    google.fail_token_requests(1, Fault::invalid_grant());
    let run = smtp2gmail(dir.path(), &["check"]).await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    for expected in [
        "invalid_grant",
        "smtp2gmail authorize --client-secret CLIENT_SECRET.json --token-file token.json",
        "\"Testing\"",
        "7 days",
        "1 of 1 account(s) need attention",
    ] {
        assert!(
            run.stdout.contains(expected),
            "{expected:?} missing:\n{}",
            run.stdout
        );
    }
    assert!(
        !run.stdout.contains(fake_google::REFRESH_TOKEN),
        "a secret was printed"
    );
}

#[tokio::test]
async fn check_refuses_a_token_whose_scopes_cannot_send() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    gmail_mode(
        &google,
        dir.path(),
        &fake_google::token_json(&google.token_uri()),
    );
    google.set_granted_scope("openid https://www.googleapis.com/auth/userinfo.email");
    let run = smtp2gmail(dir.path(), &["check"]).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(run.stdout.contains("cannot send mail"), "{}", run.stdout);
    assert!(
        run.stdout.contains("smtp2gmail authorize"),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn check_separates_unreachable_google_from_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 9 of the loopback interface: connection refused.
    let google_down = fake_google::token_json("http://127.0.0.1:9/token");
    fake_google::write_json(dir.path(), "token.json", &google_down);
    let config = "[relay]\nmode = \"gmail\"\n[gmail]\ncredentials = \"token.json\"\n\
                  [[gmail.accounts]]\nname = \"support\"\nsenders = [\"support@example.com\"]\n\
                  credentials = \"missing.json\"\n";
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let run = smtp2gmail(dir.path(), &["check"]).await;
    assert_eq!(
        run.code,
        Some(2),
        "an unusable file is a config error: {}",
        run.stdout
    );
    assert!(run.stdout.contains("account support"), "{}", run.stdout);
    assert!(run.stdout.contains("missing.json"), "{}", run.stdout);
    assert!(
        run.stdout.contains("cannot reach token endpoint"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("2 of 2 account(s)"), "{}", run.stdout);

    std::fs::write(
        dir.path().join("config.toml"),
        "[relay]\nmode = \"gmail\"\n[gmail]\ncredentials = \"token.json\"\n",
    )
    .unwrap();
    let run = smtp2gmail(dir.path(), &["check"]).await;
    assert_eq!(run.code, Some(1), "Google unreachable: {}", run.stdout);
}

#[tokio::test]
async fn check_impersonates_a_concrete_sender_for_service_accounts() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let key = fake_google::service_account_json(&google.token_uri());
    google.trust_service_account(&key);
    fake_google::write_json(dir.path(), "sa.json", &key);
    let config = |senders: &str| {
        let text = format!(
            "[relay]\nmode = \"gmail\"\n[gmail]\ncredentials = \"sa.json\"\nsenders = {senders}\n"
        );
        std::fs::write(dir.path().join("config.toml"), text).unwrap();
    };
    config(r#"["*@example.com", "app@example.com"]"#);
    let run = smtp2gmail(dir.path(), &["check"]).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(fake_google::SERVICE_ACCOUNT_EMAIL),
        "{}",
        run.stdout
    );
    assert_eq!(google.subjects(), ["app@example.com"]);

    config(r#"["*@example.com"]"#);
    let run = smtp2gmail(dir.path(), &["check"]).await;
    assert_eq!(run.code, Some(2), "{}", run.stdout);
    assert!(run.stdout.contains("--sender"), "{}", run.stdout);
    let run = smtp2gmail(dir.path(), &["check", "--sender", "ops@example.com"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    assert_eq!(google.subjects(), ["app@example.com", "ops@example.com"]);
}

#[tokio::test]
async fn check_in_console_mode_needs_no_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let run = smtp2gmail(dir.path(), &["check"]).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("console mode"), "{}", run.stdout);
    assert!(
        run.stdout.contains("No Google credentials are needed"),
        "{}",
        run.stdout
    );

    let run = smtp2gmail(dir.path(), &["check", "--config", "nope.toml"]).await;
    assert_eq!(run.code, Some(2));
}

#[tokio::test]
async fn send_in_file_mode_writes_a_complete_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[relay]\nmode = \"file\"\n[file]\ndir = \"mail\"\n",
    )
    .unwrap();
    let run = smtp2gmail(
        dir.path(),
        &[
            "send",
            "--from",
            "App <app@example.com>",
            "--to",
            "alice@example.org",
            "--to",
            "bob@example.org",
            "--subject",
            "Grüße",
            "--body",
            "Größe: 5 €",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let stored = run
        .stdout
        .trim()
        .strip_prefix("stored: ")
        .expect(&run.stdout);
    let eml = std::fs::read_to_string(dir.path().join(stored)).unwrap();
    for header in [
        "\r\nDate: ",
        "\r\nMessage-ID: <",
        "@example.com>\r\n",
        "\r\nMIME-Version: 1.0\r\n",
        "\r\nContent-Type: text/plain; charset=utf-8\r\n",
        "\r\nContent-Transfer-Encoding: quoted-printable\r\n",
        "\r\nSubject: =?utf-8?",
        "To: alice@example.org, bob@example.org\r\n",
    ] {
        assert!(eml.contains(header), "{header:?} missing:\n{eml}");
    }
    let json = std::fs::read_to_string(dir.path().join(stored.replace(".eml", ".json"))).unwrap();
    let envelope: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(envelope["mail_from"], "app@example.com");
    assert_eq!(
        envelope["rcpt_to"],
        serde_json::json!(["alice@example.org", "bob@example.org"])
    );
}

#[tokio::test]
async fn send_in_gmail_mode_prints_the_gmail_id() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    gmail_mode(
        &google,
        dir.path(),
        &fake_google::token_json(&google.token_uri()),
    );
    let args = [
        "send",
        "--from",
        "app@example.com",
        "--to",
        "alice@example.org",
    ];
    let run = smtp2gmail(dir.path(), &args).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.stdout, "sent: Gmail message id fake-gmail-1\n");
    let uploads = google.uploads();
    assert_eq!(uploads[0].recipients, ["alice@example.org"]);
    assert_eq!(uploads[0].from.as_deref(), Some("app@example.com"));

    google.fail_token_requests(1, Fault::invalid_grant());
    google.revoke_access_tokens();
    let run = smtp2gmail(dir.path(), &args).await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("not sent"), "{}", run.stderr);
    assert!(
        run.stderr.contains("smtp2gmail authorize"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn send_in_console_mode_prints_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let run = smtp2gmail(
        dir.path(),
        &[
            "send",
            "--from",
            "dev@example.com",
            "--to",
            "qa@example.com",
            "--subject",
            "hi there",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("hi there"), "{}", run.stdout);
    assert!(run.stdout.contains("printed: message "), "{}", run.stdout);

    let run = smtp2gmail(
        dir.path(),
        &["send", "--from", "dev@example.com", "--to", "x y"],
    )
    .await;
    assert_eq!(run.code, Some(2), "{}{}", run.stdout, run.stderr);
}
