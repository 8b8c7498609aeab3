//! Retention by age (`inbox.max_age`) in both modes, against the real binary: mail older than
//! the age is deleted by the periodic sweep — from memory, or with its files — and newer mail
//! stays.

mod common;

use common::inbox::{self, json, send, subjects, text};
use common::process::ServerProcess;
use serde_json::json;

/// The sweep's log line.
const SWEPT: &str = "messages older than inbox.max_age deleted";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_mode_forgets_mail_older_than_max_age() {
    let dir = tempfile::tempdir().unwrap();
    inbox::write_config(dir.path(), "[inbox]\nmax_age = \"1s\"\n");
    let server = ServerProcess::in_dir(dir.path()).await;
    send(
        server.smtp,
        text("a@example.com", "b@example.org", "old", "x"),
    )
    .await;
    assert_eq!(json(&server, "/api/v1/messages").await["total"], 1);
    let line = server.wait_for_log(SWEPT).await;
    assert!(
        line.contains("count=1") || line.contains("\"count\":1"),
        "{line}"
    );
    assert_eq!(json(&server, "/api/v1/messages").await["total"], 0);
    assert_eq!(
        json(&server, "/api/v1/info").await["RuntimeStats"]["MessagesDeleted"],
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_mode_deletes_old_files_and_keeps_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    std::fs::create_dir_all(&mail).unwrap();
    // A message of ours from 1970 (our ids start with the milliseconds of arrival).
    let old = "00000000001abcdef01";
    std::fs::write(
        mail.join(format!("{old}.eml")),
        "Subject: ancient\r\n\r\nold\r\n",
    )
    .unwrap();
    std::fs::write(
        mail.join(format!("{old}.json")),
        json!({"rcpt_to": []}).to_string(),
    )
    .unwrap();
    let server = inbox::file_mode_with(dir.path(), "[inbox]\nmax_age = \"1h\"\n").await;
    // The first sweep runs at start.
    server.wait_for_log(SWEPT).await;
    send(
        server.smtp,
        text("a@example.com", "b@example.org", "fresh", "x"),
    )
    .await;
    let list = json(&server, "/api/v1/messages").await;
    assert_eq!(subjects(&list), ["fresh"]);
    assert!(!mail.join(format!("{old}.eml")).exists());
    assert!(!mail.join(format!("{old}.json")).exists());
}
