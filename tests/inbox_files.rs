//! File mode's inbox is `file.dir`: it shows files written by earlier runs, keeps its read
//! state across restarts, and deleting a message deletes its files.

mod common;

use std::path::Path;

use common::inbox::{ids, json, send, send_json, subjects, text};
use common::process::ServerProcess;
use common::serving::Serving;
use reqwest::Method;
use serde_json::json;

async fn file_mode(dir: &Path) -> ServerProcess {
    common::inbox::file_mode_with(dir, "").await
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
    let server = file_mode(dir.path()).await;
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
    server.stop().await;

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

    let server = file_mode(dir.path()).await;
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

/// A file the inbox must never touch: outside `file.dir`, where `../victim/token` points.
fn victim(dir: &Path) -> std::path::PathBuf {
    let victim = dir.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    for ext in ["eml", "json"] {
        std::fs::write(
            victim.join(format!("token.{ext}")),
            "Subject: SECRET\r\n\r\nx\r\n",
        )
        .unwrap();
    }
    victim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_are_paths_reach_no_file_outside_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let victim = victim(dir.path());
    let server = file_mode(dir.path()).await;
    send(
        server.smtp,
        text("a@example.com", "b@example.org", "keep me", "x"),
    )
    .await;
    let absolute = victim.join("token").display().to_string();
    for id in ["../victim/token", absolute.as_str(), "..", "."] {
        let body = json!({"IDs": [id]});
        let (status, text) =
            send_json(&server, Method::DELETE, "/api/v1/messages", Some(body)).await;
        assert_eq!(status, 400, "DELETE {id}: {text}");
        assert!(!text.contains(&*dir.path().to_string_lossy()), "{text}");
        let body = json!({"IDs": [id], "Read": true});
        let (status, _) = send_json(&server, Method::PUT, "/api/v1/messages", Some(body)).await;
        assert_eq!(status, 400, "PUT {id}");
    }
    // The same through the paths of the API (the slashes escaped, as a client would).
    let escaped = "..%2Fvictim%2Ftoken";
    for path in [
        format!("/api/v1/message/{escaped}"),
        format!("/api/v1/message/{escaped}/raw"),
        format!("/api/v1/message/{escaped}/headers"),
        format!("/api/v1/message/{escaped}/part/1"),
        format!("/view/{escaped}.html"),
        format!("/view/{escaped}.txt"),
    ] {
        let response = reqwest::get(server.url(&path)).await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, 404, "GET {path}: {text}");
        assert!(!text.contains("SECRET"), "{path}: {text}");
    }
    let release = json!({"To": ["x@example.org"]});
    let path = format!("/api/v1/message/{escaped}/release");
    let (status, _) = send_json(&server, Method::POST, &path, Some(release)).await;
    assert_ne!(status, 200, "release is off here, and the id is none");

    assert!(victim.join("token.json").exists() && victim.join("token.eml").exists());
    assert_eq!(json(&server, "/api/v1/messages").await["total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_failure_is_logged_not_told_to_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = file_mode(dir.path()).await;
    send(
        server.smtp,
        text("a@example.com", "b@example.org", "stuck", "x"),
    )
    .await;
    let id = ids(&json(&server, "/api/v1/messages").await)[0].clone();
    // A directory where the envelope file was: removing it fails with an OS error.
    let envelope = dir.path().join("mail").join(format!("{id}.json"));
    std::fs::remove_file(&envelope).unwrap();
    std::fs::create_dir_all(envelope.join("inside")).unwrap();
    let body = json!({"IDs": [id]});
    let (status, text) = send_json(&server, Method::DELETE, "/api/v1/messages", Some(body)).await;
    assert_eq!(status, 500);
    assert!(
        !text.contains("os error") && !text.contains(&id) && !text.contains("mail"),
        "{text}"
    );
    server.stop().await;
}
