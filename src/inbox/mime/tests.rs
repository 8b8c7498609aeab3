//! The views, parts and header fields of messages, malformed ones included.
use super::*;

const MIXED: &[u8] = b"From: \"Ann Example\" <ann@example.com>\r\n\
To: bob@example.com, =?utf-8?q?J=C3=B6rg?= <jorg@example.com>\r\n\
Cc: carol@example.com\r\n\
Reply-To: replies@example.com\r\n\
Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= and welcome\r\n\
Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\
Message-ID: <abc@example.com>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: multipart/alternative; boundary=\"b2\"\r\n\
\r\n\
--b2\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Hello   Bob,\r\n\r\nyour code is 123456.\r\n\
--b2\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>Hello <b>Bob</b></p><img src=\"cid:logo@x\">\r\n\
--b2--\r\n\
--b1\r\n\
Content-Type: image/png\r\n\
Content-ID: <logo@x>\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
iVBORw0KGgo=\r\n\
--b1\r\n\
Content-Type: application/pdf; name=\"../../etc/report.pdf\"\r\n\
Content-Disposition: attachment; filename=\"../../etc/report.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0xLjQK\r\n\
--b1--\r\n";

#[test]
fn summary_reads_addresses_subject_and_snippet() {
    let envelope = Envelope {
        mail_from: Some("bounces@example.com".into()),
        rcpt_to: vec!["bob@example.com".into(), "dave@example.com".into()],
    };
    let summary = summarize(MIXED, &envelope);
    assert_eq!(summary.return_path, "bounces@example.com");
    assert_eq!(summary.subject, "Grüße and welcome");
    assert_eq!(summary.message_id, "abc@example.com");
    let from = summary.from.unwrap();
    assert_eq!(
        (from.name.as_str(), from.address.as_str()),
        ("Ann Example", "ann@example.com")
    );
    assert_eq!(summary.to[1].name, "Jörg");
    assert_eq!(summary.cc[0].address, "carol@example.com");
    assert_eq!(summary.reply_to[0].address, "replies@example.com");
    // Only the envelope named dave: a blind copy.
    assert_eq!(
        summary.bcc,
        [Mailbox {
            name: String::new(),
            address: "dave@example.com".into()
        }]
    );
    assert_eq!(summary.snippet, "Hello Bob, your code is 123456.");
    assert_eq!(summary.attachments, 2);
    assert_eq!(summary.date, Some(1_796_119_200));
}

#[test]
fn view_splits_inline_parts_from_attachments() {
    let view = view(MIXED);
    assert!(view.html.contains("<b>Bob</b>"));
    assert!(view.text.contains("123456"));
    assert_eq!(view.inline.len(), 1);
    assert_eq!(view.inline[0].content_id, "logo@x");
    assert_eq!(view.attachments.len(), 1);
    let pdf = &view.attachments[0];
    assert_eq!(pdf.file_name, "report.pdf", "no path in a download name");
    assert_eq!(pdf.content_type, "application/pdf");
    let part = part(MIXED, &pdf.part_id).unwrap();
    assert_eq!(part.bytes, b"%PDF-1.4\n");
    assert!(super::part(MIXED, "0").is_none() && super::part(MIXED, "99").is_none());
    assert!(super::part(MIXED, "x").is_none());
}

#[test]
fn many_parts_are_listed_in_one_pass() {
    // 200,000 attachments: looking each part up among all attachments (as before) took
    // 2·10^10 steps, minutes; one pass over them takes well under a second.
    let parts = 200_000;
    let mut raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
    for n in 0..parts {
        raw.extend_from_slice(
            format!("--b\r\nContent-Type: application/x-{n}\r\n\r\nx\r\n").as_bytes(),
        );
    }
    raw.extend_from_slice(b"--b--\r\n");
    let view = view(&raw);
    assert_eq!(view.attachments.len(), MAX_PARTS_SHOWN);
    assert_eq!(view.attachments[0].content_type, "application/x-0");
    assert_eq!(view.attachments[999].content_type, "application/x-999");
}

#[test]
fn file_names_lose_controls_that_reorder_or_hide_text() {
    let raw = "Content-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: application/octet-stream\r\n\
Content-Disposition: attachment; filename=\"invoice\u{202E}fdp.exe\"\r\n\r\nx\r\n\
--b\r\nContent-Type: application/octet-stream\r\nContent-ID: <a\u{2066}b\u{200F}c>\r\n\r\ny\r\n--b--\r\n";
    let view = view(raw.as_bytes());
    assert_eq!(view.attachments[0].file_name, "invoicefdp.exe");
    assert_eq!(
        part(raw.as_bytes(), &view.attachments[0].part_id)
            .unwrap()
            .file_name,
        "invoicefdp.exe"
    );
    // No file name: the Content-ID is the download name, cleaned the same way.
    let inline = &view.inline[0];
    assert_eq!(
        part(raw.as_bytes(), &inline.part_id).unwrap().file_name,
        "abc"
    );
    assert_eq!(
        displayable(
            "a\u{202A}\u{202B}\u{202C}\u{202D}\u{2067}\u{2068}\u{2069}\u{200E}\u{061C}\tb\u{7f}"
        ),
        "ab"
    );
}

#[test]
fn referenced_inline_parts_become_data_urls_of_plain_types() {
    let view = view(MIXED);
    assert_eq!(view.cid_urls.len(), 1);
    assert_eq!(
        view.cid_urls["logo@x"],
        "data:image/png;base64,iVBORw0KGgo="
    );
    let refs: Vec<&str> = cid_references("<a href='cid:x'>CID:y\") cid:z")
        .map(|(_, c)| c)
        .collect();
    assert_eq!(refs, ["x", "y", "z"]);
    assert!(is_plain_type("image/svg+xml") && is_plain_type("application/vnd.ms-excel"));
    for bad in [
        "text/plain,text/html",
        "text/html;x=1",
        "text",
        "/html",
        "text/",
        "te xt/html",
        "text/-x",
    ] {
        assert!(!is_plain_type(bad), "{bad}");
    }
}

#[test]
fn a_text_only_message_has_no_html() {
    let view = view(b"Subject: s\r\n\r\nplain\r\n");
    assert_eq!(view.html, "");
    assert_eq!(view.text.trim(), "plain");
}

#[test]
fn headers_are_canonical_sorted_and_unfolded() {
    let raw = b"subject: one\r\n two\r\nX-TEST: a\r\nx-test: b\r\nMessage-ID: <m@x>\r\n\r\nbody";
    let headers = headers(raw);
    let names: Vec<&str> = headers.keys().map(String::as_str).collect();
    assert_eq!(names, ["Message-Id", "Subject", "X-Test"]);
    assert_eq!(headers["Subject"], ["one two"]);
    assert_eq!(headers["X-Test"], ["a", "b"]);
}

#[test]
fn snippets_are_cut_at_250_characters() {
    let long = "ä ".repeat(400);
    let cut = snippet(&long);
    assert_eq!(cut.chars().count(), SNIPPET_CHARS);
}

#[test]
fn hostile_input_never_panics() {
    let mut deep = Vec::new();
    for i in 0..3000 {
        deep.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n")
                .as_bytes(),
        );
    }
    deep.extend_from_slice(
        b"Content-Type: text/plain; charset=x-unknown-charset\r\n\r\n\xff\xfe bad\r\n",
    );
    let mut rng = fastrand::Rng::with_seed(11);
    let alphabet = b"Content-Type: multipart/mixed; boundary=b\r\n--b=?utf-8?b?\xff\xc3(<>\"";
    let mut inputs = vec![deep, Vec::new(), b"\r\n\r\n".to_vec()];
    for _ in 0..500 {
        let len = rng.usize(0..400);
        inputs.push(
            (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect(),
        );
    }
    for raw in inputs {
        let envelope = Envelope {
            mail_from: None,
            rcpt_to: vec!["x@y".into()],
        };
        let _ = summarize(&raw, &envelope);
        let v = view(&raw);
        for a in v.attachments.iter().chain(&v.inline) {
            let _ = part(&raw, &a.part_id);
        }
        let _ = headers(&raw);
        let _ = search_text(&raw);
    }
}
