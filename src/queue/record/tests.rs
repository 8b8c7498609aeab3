use super::*;

/// A queued message's record as version 1 wrote it (no `version`, the Bcc as bytes).
const V1_QUEUED: &str = r#"{
  "id": "0196a1b2c3d4e5f6a7b", "mail_from": "app@example.com", "rcpt_to": ["b@x.org"],
  "remote": "127.0.0.1:40000", "helo": "client", "received_at": "2026-01-01T00:00:00Z",
  "size": 10, "account": "default", "attempts": 0, "next_attempt": "2026-01-01T00:00:00Z",
  "route": {"upload": [{"add": "Bcc: b@x.org\r\n"}, {"keep": {"start": 0, "end": 10}}]}
}"#;

#[test]
fn a_version_1_queued_record_keeps_its_decision() {
    let entry = Entry::from_json(V1_QUEUED.as_bytes()).unwrap();
    assert_eq!(entry.version, VERSION);
    let route = entry.route.expect("kept: its bytes are what to send");
    assert_eq!(route.upload[0], Piece::New(b"Bcc: b@x.org\r\n".to_vec()));
}

#[test]
fn a_version_1_held_transaction_is_routed_after_its_merge() {
    let held = V1_QUEUED.replace(
        r#""route""#,
        r#""split": {"group": "g", "message_id": "m@x", "header_recipients": 2}, "route""#,
    );
    let entry = Entry::from_json(held.as_bytes()).unwrap();
    assert!(entry.is_held_part());
    assert_eq!(entry.route, None, "its Bcc bytes cannot be merged");
    assert_eq!(entry.split.unwrap().incomplete, None);
}

#[test]
fn a_record_of_a_newer_version_is_refused_not_half_read() {
    let newer = V1_QUEUED.replacen('{', r#"{"version": 99, "#, 1);
    assert_eq!(
        Entry::from_json(newer.as_bytes()),
        Err(RecordError::Newer { found: 99 })
    );
    let merge = format!(
        r#"{{"entry": {newer}, "dead": false, "served": [], "at": "2026-01-01T00:00:00Z"}}"#
    );
    assert!(matches!(
        Merge::from_json(merge.as_bytes()),
        Err(RecordError::Newer { found: 99 })
    ));
}

#[test]
fn records_are_written_with_the_current_version() {
    let entry = Entry::from_json(V1_QUEUED.as_bytes()).unwrap();
    let written = serde_json::to_value(&entry).unwrap();
    assert_eq!(written["version"], VERSION);
    assert_eq!(Entry::from_json_value(written).unwrap(), entry);
}

#[test]
fn request_files_name_only_queue_ids() {
    let read = |json: &str| serde_json::from_str::<Request>(json).ok();
    assert_eq!(
        read(r#"{"action": "delete", "id": "0196a1b2c3d4e5f6a7b"}"#),
        Some(Request::Delete {
            id: "0196a1b2c3d4e5f6a7b".into()
        })
    );
    assert_eq!(
        read(r#"{"action": "retry", "id": null}"#),
        Some(Request::Retry { id: None })
    );
    assert_eq!(
        read(r#"{"action": "retry"}"#),
        Some(Request::Retry { id: None })
    );
    for bad in [
        r#"{"action": "delete", "id": "../../victim/token"}"#,
        r#"{"action": "retry", "id": "/etc/passwd"}"#,
    ] {
        assert_eq!(read(bad), None, "{bad}");
    }
}
