//! Reading the DSNs the queue sends: with Python's `email` package (tests/notify/dsn_fields.py),
//! an implementation independent of the one that wrote them.

use serde_json::Value;

use super::fake_gmail::Upload;
use super::python;
use super::serving::{Serving, queued_id};

/// What Python's `email` package reads in a DSN (tests/notify/dsn_fields.py).
pub fn python_reads(raw: &[u8]) -> Value {
    let out = python::run_script("notify/dsn_fields.py", raw);
    serde_json::from_slice(&out).unwrap()
}

/// The value of the field `name` in a list of `[name, value]` pairs.
pub fn field<'a>(fields: &'a Value, name: &str) -> &'a str {
    let pairs = fields.as_array().unwrap();
    let pair = pairs.iter().find(|p| p[0].as_str() == Some(name));
    pair.unwrap_or_else(|| panic!("no {name} in {fields}"))[1]
        .as_str()
        .unwrap()
}

/// The part of content type `content_type`.
pub fn part<'a>(read: &'a Value, content_type: &str) -> &'a Value {
    let parts = read["parts"].as_array().unwrap();
    let part = parts.iter().find(|p| p["content_type"] == content_type);
    part.unwrap_or_else(|| panic!("no {content_type} part in {read}"))
}

/// True for an upload that is a DSN.
pub fn is_dsn(upload: &Upload) -> bool {
    String::from_utf8_lossy(&upload.body).contains("report-type=delivery-status")
}

/// Sends `wire` (dot-terminated) from `sender` to `rcpts`; the queue id.
pub async fn send_raw(server: &impl Serving, sender: &str, rcpts: &[&str], wire: &[u8]) -> String {
    let mut client = server.client().await;
    client.start_transaction(sender, rcpts).await;
    let id = queued_id(&client.data(wire).await);
    client.cmd("QUIT").await;
    id
}
