//! One SMTP session: the state machine, with one method per verb.
//!
//! smtp-proto parses each command line; everything else — state, limits, replies, reading the body —
//! is here. Every verb method returns the reply to queue; the end of DATA hands the envelope and
//! body to the delivery target and turns its answer into the reply, so a 4xx/5xx there leaves the
//! session exactly where a 250 would: ready for RSET, MAIL or QUIT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use smtp_proto::{Error as ParseError, MailFrom, RcptTo, Request};
use tokio_util::sync::CancellationToken;

use super::connection::{BODY_READ, Connection, Line, ReadError};
use super::data::DotDecoder;
use super::reply::Reply;
use crate::config::SmtpConfig;
use crate::message::{Address, BodyError, BodyWriter, Envelope, MessageId};
use crate::relay::{Deliver, Status};

/// Longest command line accepted. RFC 5321 says 512 octets; real clients (long AUTH responses,
/// DSN parameters) need more, so be lenient up to a few KiB.
pub const MAX_LINE: usize = 4096;

/// What every session of one server shares.
pub struct SessionContext {
    /// Limits and names from `[smtp]`.
    pub config: SmtpConfig,
    /// Where accepted messages go.
    pub deliver: Arc<dyn Deliver>,
    /// Fires when the server stops accepting: idle sessions close at once, open transactions finish.
    pub shutdown: CancellationToken,
}

/// Whether the session goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// One mail transaction: from MAIL to the end of DATA (or RSET).
struct Transaction {
    mail_from: Option<Address>,
    rcpt_to: Vec<Address>,
    /// The body collected so far by BDAT chunks; `None` until the first BDAT.
    chunks: Option<BodyWriter>,
}

/// One client connection.
pub struct Session {
    conn: Connection,
    ctx: Arc<SessionContext>,
    remote: SocketAddr,
    /// The name from HELO/EHLO; `None` until the client has greeted.
    helo: Option<String>,
    transaction: Option<Transaction>,
}

impl Session {
    /// A session over an accepted connection.
    pub fn new(conn: Connection, ctx: Arc<SessionContext>, remote: SocketAddr) -> Self {
        Session {
            conn,
            ctx,
            remote,
            helo: None,
            transaction: None,
        }
    }

    /// Runs the session to its end. Errors are logged here: there is nobody else to tell.
    pub async fn run(mut self) {
        tracing::debug!(remote = %self.remote, "connection opened");
        let greeting = format!("{} ESMTP smtp2gmail ready", self.ctx.config.hostname);
        self.conn.reply(&Reply::plain(220, greeting));
        let ended = self.serve().await;
        match ended {
            Ok(()) | Err(ReadError::Closed) => {}
            Err(ReadError::Timeout) => {
                self.conn.reply(&Reply::new(
                    421,
                    Status(4, 4, 2),
                    "idle timeout, closing connection",
                ));
            }
            Err(ReadError::Shutdown) => self.conn.reply(&shutting_down()),
            Err(ReadError::Io(err)) => {
                tracing::debug!(remote = %self.remote, %err, "connection failed")
            }
        }
        // Best effort: the client may already be gone.
        let _ = self.conn.flush().await;
        tracing::debug!(remote = %self.remote, "connection closed");
    }

    /// The command loop.
    async fn serve(&mut self) -> Result<(), ReadError> {
        loop {
            if self.ctx.shutdown.is_cancelled() && self.transaction.is_none() {
                self.conn.reply(&shutting_down());
                return Ok(());
            }
            if !self.conn.buffered().contains(&b'\n') {
                // About to wait for the client: send the replies to everything it pipelined, here
                // rather than inside the select below, where a shutdown could cut a write short.
                self.conn.flush().await?;
            }
            let shutdown = self.ctx.shutdown.clone();
            let idle = self.transaction.is_none();
            let line = tokio::select! {
                line = self.conn.read_line(MAX_LINE) => line?,
                _ = shutdown.cancelled(), if idle => continue,
            };
            let len = match line {
                Line::TooLong => {
                    self.conn
                        .reply(&Reply::new(500, Status(5, 5, 2), "line too long"));
                    continue;
                }
                Line::Complete(len) => len,
            };
            let parsed =
                Request::parse(&mut self.conn.buffered()[..len].iter()).map(Request::into_owned);
            self.conn.consume(len);
            let flow = match parsed {
                Ok(request) => self.dispatch(request).await?,
                Err(err) => {
                    self.conn.reply(&parse_error_reply(err));
                    Flow::Continue
                }
            };
            if flow == Flow::Close {
                return Ok(());
            }
        }
    }

    async fn dispatch(&mut self, request: Request<String>) -> Result<Flow, ReadError> {
        let reply = match request {
            Request::Ehlo { host } => self.ehlo(host),
            Request::Helo { host } => self.helo(host),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => self.data().await?,
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last).await?,
            Request::Rset => self.rset(),
            Request::Noop { .. } => Reply::new(250, Status(2, 0, 0), "OK"),
            Request::Vrfy { .. } => Reply::new(
                252,
                Status(2, 1, 5),
                "cannot verify, but will accept the message",
            ),
            Request::Help { .. } => help(),
            Request::Quit => {
                self.conn.reply(&Reply::new(221, Status(2, 0, 0), "bye"));
                return Ok(Flow::Close);
            }
            other => Reply::new(
                502,
                Status(5, 5, 1),
                format!("{} not implemented", other.name()),
            ),
        };
        self.conn.reply(&reply);
        Ok(Flow::Continue)
    }

    fn ehlo(&mut self, host: String) -> Reply {
        let config = &self.ctx.config;
        let text = format!(
            "{} greets {host}\nPIPELINING\nSIZE {}\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES\nCHUNKING\nHELP",
            config.hostname, config.max_message_size
        );
        self.greeted(host);
        Reply::plain(250, text)
    }

    fn helo(&mut self, host: String) -> Reply {
        self.greeted(host);
        Reply::plain(250, self.ctx.config.hostname.clone())
    }

    /// HELO/EHLO start over: any transaction in progress is forgotten (RFC 5321 4.1.4).
    fn greeted(&mut self, host: String) {
        self.helo = Some(host);
        self.transaction = None;
    }

    fn mail(&mut self, from: MailFrom<String>) -> Reply {
        if self.helo.is_none() {
            return Reply::new(503, Status(5, 5, 1), "send EHLO or HELO first");
        }
        if self.transaction.is_some() {
            return Reply::new(503, Status(5, 5, 1), "nested MAIL command");
        }
        if has_control_chars(&from.address) {
            return Reply::new(501, Status(5, 1, 7), "bad sender address syntax");
        }
        let limit = self.ctx.config.max_message_size;
        if from.size as u64 > limit {
            return Reply::new(
                552,
                Status(5, 3, 4),
                format!("message size exceeds fixed limit of {limit} bytes"),
            );
        }
        let mail_from = (!from.address.is_empty()).then(|| Address::new(from.address));
        self.transaction = Some(Transaction {
            mail_from,
            rcpt_to: Vec::new(),
            chunks: None,
        });
        Reply::new(250, Status(2, 1, 0), "OK")
    }

    fn rcpt(&mut self, to: RcptTo<String>) -> Reply {
        let max = self.ctx.config.max_recipients;
        let Some(transaction) = self.transaction.as_mut() else {
            return Reply::new(503, Status(5, 5, 1), "send MAIL first");
        };
        if has_control_chars(&to.address) {
            return Reply::new(501, Status(5, 1, 3), "bad recipient address syntax");
        }
        // smtp-proto reports the special recipient <postmaster> as an empty address.
        let address = if to.address.is_empty() {
            "postmaster".to_string()
        } else {
            to.address
        };
        if transaction
            .rcpt_to
            .iter()
            .any(|known| known.as_str().eq_ignore_ascii_case(&address))
        {
            return Reply::new(250, Status(2, 1, 5), "OK (duplicate recipient)");
        }
        if transaction.rcpt_to.len() >= max {
            return Reply::new(
                452,
                Status(4, 5, 3),
                format!("too many recipients (at most {max} per message)"),
            );
        }
        transaction.rcpt_to.push(Address::new(address));
        Reply::new(250, Status(2, 1, 5), "OK")
    }

    fn rset(&mut self) -> Reply {
        self.transaction = None;
        Reply::new(250, Status(2, 0, 0), "OK")
    }

    /// Checks that a transaction is ready for its body; the reply says why not.
    fn ready_for_body(&self) -> Result<(), Reply> {
        match &self.transaction {
            None => Err(Reply::new(503, Status(5, 5, 1), "send MAIL first")),
            Some(t) if t.rcpt_to.is_empty() => {
                Err(Reply::new(503, Status(5, 5, 1), "send RCPT first"))
            }
            Some(_) => Ok(()),
        }
    }

    fn body_writer(&self) -> BodyWriter {
        let config = &self.ctx.config;
        BodyWriter::new(config.max_message_size, &config.spill_dir())
    }

    async fn data(&mut self) -> Result<Reply, ReadError> {
        if let Err(reply) = self.ready_for_body() {
            return Ok(reply);
        }
        if self
            .transaction
            .as_ref()
            .is_some_and(|t| t.chunks.is_some())
        {
            return Ok(Reply::new(503, Status(5, 5, 1), "DATA cannot follow BDAT"));
        }
        self.conn
            .reply(&Reply::plain(354, "end data with <CR><LF>.<CR><LF>"));
        let mut decoder = DotDecoder::default();
        let mut body = self.body_writer();
        loop {
            let (used, done) = decoder.decode(self.conn.buffered(), body.staging());
            self.conn.consume(used);
            body.commit().await;
            if done {
                break;
            }
            self.conn.fill(BODY_READ).await?;
        }
        Ok(self.end_of_message(body).await)
    }

    async fn bdat(&mut self, size: usize, last: bool) -> Result<Reply, ReadError> {
        // The chunk follows the command whatever we answer: read it first to stay in step.
        if let Err(reply) = self.ready_for_body() {
            self.conn.skip(size).await?;
            return Ok(reply);
        }
        let mut body = match self.transaction.as_mut().and_then(|t| t.chunks.take()) {
            Some(body) => body,
            None => self.body_writer(),
        };
        let mut left = size;
        while left > 0 {
            if self.conn.buffered().is_empty() {
                self.conn.fill(BODY_READ.min(left)).await?;
            }
            let take = left.min(self.conn.buffered().len());
            body.staging()
                .extend_from_slice(&self.conn.buffered()[..take]);
            self.conn.consume(take);
            body.commit().await;
            left -= take;
        }
        if last {
            return Ok(self.end_of_message(body).await);
        }
        if let Some(transaction) = self.transaction.as_mut() {
            transaction.chunks = Some(body);
        }
        Ok(Reply::new(
            250,
            Status(2, 0, 0),
            format!("{size} octets received"),
        ))
    }

    /// The body is complete: hand it over and end the transaction whatever the outcome.
    async fn end_of_message(&mut self, body: BodyWriter) -> Reply {
        let started = Instant::now();
        let transaction = self
            .transaction
            .take()
            .expect("a transaction is open at end of data");
        let message = match body.finish().await {
            Ok(message) => message,
            Err(err @ BodyError::TooLarge { .. }) => {
                return Reply::new(552, Status::TOO_BIG, err.to_string());
            }
            Err(err) => {
                tracing::error!(remote = %self.remote, %err, "message not accepted");
                return Reply::new(
                    451,
                    Status::SYSTEM_TEMPORARY,
                    "cannot store the message, try again later",
                );
            }
        };
        let envelope = Envelope {
            id: MessageId::generate(),
            mail_from: transaction.mail_from,
            rcpt_to: transaction.rcpt_to,
            remote: self.remote,
            helo: self.helo.clone().unwrap_or_default(),
            auth_user: None,
            received_at: SystemTime::now(),
        };
        let outcome = self.ctx.deliver.deliver(&envelope, &message).await;
        let reply = Reply::from_delivery(&outcome);
        let outcome_text = match &outcome {
            Ok(receipt) => format!("accepted {}", receipt.id),
            Err(err) => format!(
                "{} {}",
                if err.is_permanent() {
                    "rejected"
                } else {
                    "deferred"
                },
                err
            ),
        };
        tracing::info!(
            id = %envelope.id,
            from = %envelope.sender_display(),
            recipients = envelope.rcpt_to.len(),
            size = message.len(),
            outcome = %outcome_text,
            reply = reply.code,
            duration_ms = started.elapsed().as_millis() as u64,
            remote = %self.remote,
            "message"
        );
        reply
    }
}

fn shutting_down() -> Reply {
    Reply::new(
        421,
        Status(4, 3, 2),
        "server shutting down, try again later",
    )
}

fn help() -> Reply {
    Reply::new(
        214,
        Status(2, 0, 0),
        "smtp2gmail: commands EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT",
    )
}

/// NUL and other control characters are never valid in an address, even quoted.
fn has_control_chars(address: &str) -> bool {
    address.chars().any(|c| c.is_control())
}

fn parse_error_reply(err: ParseError) -> Reply {
    match err {
        ParseError::UnknownCommand => Reply::new(500, Status(5, 5, 1), "command not recognized"),
        ParseError::InvalidSenderAddress => {
            Reply::new(501, Status(5, 1, 7), "bad sender address syntax")
        }
        ParseError::InvalidRecipientAddress => {
            Reply::new(501, Status(5, 1, 3), "bad recipient address syntax")
        }
        ParseError::SyntaxError { syntax } => {
            Reply::new(501, Status(5, 5, 4), format!("syntax: {syntax}"))
        }
        ParseError::InvalidParameter { param } => Reply::new(
            501,
            Status(5, 5, 4),
            format!("invalid value for parameter {param}"),
        ),
        ParseError::UnsupportedParameter { param } => {
            let param: String = param.chars().filter(|c| !c.is_control()).take(64).collect();
            Reply::new(
                555,
                Status(5, 5, 4),
                format!("unsupported parameter {param}"),
            )
        }
        _ => Reply::new(500, Status(5, 5, 2), "syntax error"),
    }
}
