//! File mode's inbox is `file.dir`: it shows files written by earlier runs, keeps its read
//! state across restarts, and deleting a message deletes its files.

mod common;

use std::path::Path;

use common::inbox::{ids, json, send, send_json, subjects, text};
use common::running::Running;
use reqwest::Method;
use serde_json::json;

fn file_mode(dir: &Path) -> Running {
    let config = format!(
        "[relay]\nmode = \"file\"\n[file]\ndir = '{}'\n",
        dir.join("mail").display()
    );
    common::inbox::write_config(dir, &config);
    Running::start(dir)
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_is_the_inbox_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    let server = file_mode(dir.path());
    assert!(
        server
            .startup
            .contains(&format!("the messages in {}", mail.display()))
    );
    send(
        server.smtp,
        text("a@example.com", "b@example.org", "first", "one"),
    )
    .await;
    send(
        server.smtp,
        text("a@example.com", "c@example.org", "second", "two"),
    )
    .await;
    let list = json(&server, "/api/v1/messages").await;
    assert_eq!(subjects(&list), ["second", "first"]);
    let first = ids(&list)[1].clone();
    assert_eq!(
        json(&server, &format!("/api/v1/message/{first}")).await["Subject"],
        "first"
    );
    assert!(server.stop().success());

    // Files from elsewhere: one of ours from an earlier run, one hand-made without envelope.
    let earlier = "00000000001abcdef01";
    let old_message = "Subject: from an earlier run\r\nTo: old@example.org\r\n\r\nold\r\n";
    std::fs::write(mail.join(format!("{earlier}.eml")), old_message).unwrap();
    std::fs::write(
        mail.join(format!("{earlier}.json")),
        json!({"id": earlier, "mail_from": "old@example.com", "rcpt_to": ["old@example.org", "hidden@example.org"]}).to_string(),
    )
    .unwrap();
    std::fs::write(mail.join("handmade.eml"), "Subject: by hand\r\n\r\nhi\r\n").unwrap();

    let server = file_mode(dir.path());
    let list = json(&server, "/api/v1/messages").await;
    assert_eq!(list["total"], 4);
    // Newest first: our ids carry the time of arrival, other names their file's time.
    let shown = subjects(&list);
    assert_eq!(shown, ["by hand", "second", "first", "from an earlier run"]);
    assert_eq!(list["unread"], 3, "the read state survived the restart");
    let old = &list["messages"][3];
    assert_eq!(
        old["Bcc"],
        json!([{"Name": "", "Address": "hidden@example.org"}])
    );
    assert_eq!(old["Size"], old_message.len());
    let info = json(&server, "/api/v1/info").await;
    assert_eq!(info["Database"], mail.display().to_string());
    let found = json(&server, "/api/v1/search?query=subject%3Aearlier").await;
    assert_eq!(subjects(&found), ["from an earlier run"]);

    // Deleting deletes the files.
    let body = json!({"IDs": [earlier, "handmade"]});
    let deleted = send_json(&server, Method::DELETE, "/api/v1/messages", Some(body)).await;
    assert_eq!(deleted.0, 200);
    assert_eq!(files(&mail).len(), 4, "{:?}", files(&mail));
    assert_eq!(
        send_json(&server, Method::DELETE, "/api/v1/messages", None)
            .await
            .0,
        200
    );
    assert!(files(&mail).is_empty(), "{:?}", files(&mail));
    assert_eq!(json(&server, "/api/v1/messages").await["total"], 0);
}
