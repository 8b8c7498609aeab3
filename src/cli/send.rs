//! `smtp2gmail send`: one test message through the configured relay, without an SMTP client.
//!
//! The message is built here as a well-formed RFC 5322 / MIME text message (lettre's builder:
//! Date, a Message-ID in the sender's domain, encoded-word Subject, 7bit or quoted-printable body)
//! and handed straight to [`relay::Deliver`], so what is tested is exactly the relay and its
//! credentials, and the printed result is the relay's own answer (Gmail's id in gmail mode).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::SystemTime;

use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox, SinglePart};

use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::config::{Config, RelayMode};
use crate::message::mailbox::same_mailbox;
use crate::message::{Address, Envelope, Message, MessageId};
use crate::relay::{self, DeliveryError, Receipt};

/// Options of `send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Sender: `user@example.com` or `"Name <user@example.com>"`; also the envelope sender
    #[arg(long, value_name = "ADDR")]
    pub from: String,
    /// Recipient (repeat for more); each goes into the To header and the envelope
    #[arg(long, value_name = "ADDR", required = true)]
    pub to: Vec<String>,
    /// Subject line
    #[arg(long, value_name = "S", default_value = "smtp2gmail test message")]
    pub subject: String,
    /// Plain-text body [default: a line saying which relay sent it]
    #[arg(long, value_name = "TEXT")]
    pub body: Option<String>,
}

/// Where a message that never crossed a socket "came from", for the envelope record.
const LOCAL: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// Builds the message, delivers it, prints the outcome.
pub async fn run(config: Config, args: SendArgs) -> ExitCode {
    let (envelope, raw) = match build(&args, &config, SystemTime::now()) {
        Ok(built) => built,
        Err(err) => {
            eprintln!("smtp2gmail: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let target = match relay::from_config(&config) {
        Ok(target) => target,
        Err(err) => {
            eprintln!("smtp2gmail: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match target.deliver(&envelope, &Message::from_bytes(raw)).await {
        Ok(receipt) => {
            println!("{}", describe_receipt(&config, &receipt));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("smtp2gmail: not sent: {}", describe_failure(&err));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// The envelope and the message bytes; errors are about the arguments.
fn build(args: &SendArgs, config: &Config, now: SystemTime) -> Result<(Envelope, Vec<u8>), String> {
    let parse = |text: &str, what: &str| {
        text.parse::<Mailbox>()
            .map_err(|err| format!("{what} {text:?} is not an address: {err}"))
    };
    let from = parse(&args.from, "--from")?;
    let mut to: Vec<Mailbox> = Vec::new();
    for text in &args.to {
        let mailbox = parse(text, "--to")?;
        // The envelope holds each mailbox once, as an SMTP session would record it.
        if !to
            .iter()
            .any(|m| same_mailbox(m.email.as_ref(), mailbox.email.as_ref()))
        {
            to.push(mailbox);
        }
    }
    if to.len() > config.smtp.max_recipients {
        return Err(format!(
            "{} recipients, more than smtp.max_recipients ({})",
            to.len(),
            config.smtp.max_recipients
        ));
    }
    let id = MessageId::generate();
    let body = args.body.clone().unwrap_or_else(|| default_body(config));
    // lettre ends the part with a line break of its own; one more would add an empty line.
    let body = body.trim_end_matches(['\r', '\n']).to_string();
    // 7bit when the text allows it (readable everywhere); otherwise quoted-printable, which
    // keeps mostly-ASCII text readable and is safe on any 7-bit path.
    let body = Body::new_with_encoding(body.clone(), ContentTransferEncoding::SevenBit)
        .or_else(|_| Body::new_with_encoding(body, ContentTransferEncoding::QuotedPrintable))
        .unwrap_or_else(Body::new);
    let mut builder = lettre::Message::builder()
        .from(from.clone())
        .subject(args.subject.clone())
        .date(now)
        // The sender's domain, as RFC 5322 suggests, so the id is unique and plausible there.
        .message_id(Some(format!("<{id}.send@{}>", from.email.domain())))
        .user_agent(concat!("smtp2gmail/", env!("CARGO_PKG_VERSION")).to_string());
    for mailbox in &to {
        builder = builder.to(mailbox.clone());
    }
    let part = SinglePart::builder()
        .header(ContentType::TEXT_PLAIN)
        .body(body);
    let message = builder
        .singlepart(part)
        .map_err(|err| format!("cannot build the message: {err}"))?;
    let envelope = Envelope {
        id,
        mail_from: Some(Address::new(from.email.to_string())),
        rcpt_to: to
            .iter()
            .map(|m| Address::new(m.email.to_string()))
            .collect(),
        remote: LOCAL,
        helo: "smtp2gmail-send".to_string(),
        auth_user: None,
        received_at: now,
    };
    Ok((envelope, message.formatted()))
}

fn default_body(config: &Config) -> String {
    let mode = match config.relay.mode {
        RelayMode::Console => "console",
        RelayMode::File => "file",
        RelayMode::Discard => "discard",
        RelayMode::Gmail => "gmail",
        RelayMode::Microsoft => "microsoft",
    };
    format!(
        "This is a test message from `smtp2gmail send` ({mode} mode).\n\
         If you can read it where it was meant to arrive, the relay works.\n"
    )
}

/// What happened to the message, in the terms of the mode.
fn describe_receipt(config: &Config, receipt: &Receipt) -> String {
    let id = &receipt.id;
    match config.relay.mode {
        RelayMode::Gmail => format!("sent: Gmail message id {id}"),
        // Graph answers 202 without an id: ours is the request's client-request-id.
        RelayMode::Microsoft => format!("accepted by Microsoft Graph: request id {id}"),
        RelayMode::File => format!(
            "stored: {}",
            config.file.dir.join(format!("{id}.eml")).display()
        ),
        RelayMode::Console => format!("printed: message {id}"),
        RelayMode::Discard => format!("accepted and discarded (discard mode): message {id}"),
    }
}

/// The error with what it means for the sender: retry later, or never.
fn describe_failure(err: &DeliveryError) -> String {
    let status = err.status();
    match err {
        DeliveryError::Permanent { .. } => format!("{err} ({status}, permanent)"),
        DeliveryError::Temporary { .. } => {
            format!("{err} ({status}, temporary: try again later)")
        }
        DeliveryError::Credentials { .. } => format!("{err} ({status})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(subject: &str, body: &str) -> SendArgs {
        SendArgs {
            from: "App <app@example.com>".into(),
            to: vec![
                "a@example.org".into(),
                "a@EXAMPLE.org".into(),
                "b@example.org".into(),
            ],
            subject: subject.into(),
            body: Some(body.into()),
        }
    }

    fn text(raw: &[u8]) -> String {
        String::from_utf8(raw.to_vec()).unwrap()
    }

    #[test]
    fn ascii_message_has_every_header_and_a_7bit_body() {
        let (envelope, raw) = build(
            &args("hello", "line\n"),
            &Config::default(),
            SystemTime::now(),
        )
        .unwrap();
        let raw = text(&raw);
        for header in [
            "Date: ",
            "MIME-Version: 1.0\r\n",
            "Content-Type: text/plain; charset=utf-8\r\n",
            "Content-Transfer-Encoding: 7bit\r\n",
            "Subject: hello\r\n",
        ] {
            assert!(raw.contains(header), "{header:?} missing: {raw}");
        }
        assert!(
            raw.contains(&format!("Message-ID: <{}.send@example.com>", envelope.id)),
            "{raw}"
        );
        assert!(raw.ends_with("\r\n\r\nline\r\n"), "{raw:?}");
        assert_eq!(envelope.mail_from.unwrap().as_str(), "app@example.com");
        let rcpts: Vec<&str> = envelope.rcpt_to.iter().map(Address::as_str).collect();
        assert_eq!(
            rcpts,
            ["a@example.org", "b@example.org"],
            "duplicates removed"
        );
    }

    #[test]
    fn non_ascii_is_encoded() {
        let (_, raw) = build(
            &args("Grüße", "Größe: 5 €\n"),
            &Config::default(),
            SystemTime::now(),
        )
        .unwrap();
        let raw = text(&raw);
        assert!(raw.is_ascii(), "{raw}");
        assert!(raw.contains("Subject: =?utf-8?"), "{raw}");
        assert!(
            raw.contains("Content-Transfer-Encoding: quoted-printable"),
            "{raw}"
        );
        assert!(raw.contains("Gr=C3=B6=C3=9Fe"), "{raw}");
    }

    #[test]
    fn bad_addresses_are_usage_errors() {
        let mut bad = args("s", "b");
        bad.to = vec!["not an address".into()];
        let err = build(&bad, &Config::default(), SystemTime::now()).unwrap_err();
        assert!(
            err.contains("--to") && err.contains("not an address"),
            "{err}"
        );
    }
}
