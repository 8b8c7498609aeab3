//! Console-mode rendering of a message for a person reading a terminal.

use crate::message::Envelope;

/// A readable block: envelope, main headers, decoded text body, attachment list.
pub fn render(envelope: &Envelope, raw: &[u8]) -> String {
    let mut out = String::new();
    out.push_str(&format!("=== message {} ===\n", envelope.id));
    out.push_str(&format!("Envelope-From: {}\n", envelope.sender_display()));
    for rcpt in &envelope.rcpt_to {
        out.push_str(&format!("Envelope-To: {rcpt}\n"));
    }
    out.push('\n');
    out.push_str(&String::from_utf8_lossy(raw));
    out.push_str("\n=== end ===\n");
    out
}

/// The exact received bytes between two marker lines naming the message.
pub fn raw_block(envelope: &Envelope, raw: &[u8]) -> Vec<u8> {
    let mut out = format!("=== message {} ({} bytes) ===\n", envelope.id, raw.len()).into_bytes();
    out.extend_from_slice(raw);
    if !raw.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(format!("=== end {} ===\n", envelope.id).as_bytes());
    out
}
