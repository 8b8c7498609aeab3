//! One SMTP session: the state machine, with one method per verb (STARTTLS and AUTH, and the
//! sender checks that AUTH implies, are in [`secure`]; the lines and error counts that end a
//! session in [`conduct`]; what the end of DATA refuses in [`content`]).
//!
//! smtp-proto parses each command line; everything else — state, limits, replies, reading the body —
//! is here. Every verb method returns the reply to queue; the end of DATA hands the envelope and
//! body to the delivery target and turns its answer into the reply, so a 4xx/5xx there leaves the
//! session exactly where a 250 would: ready for RSET, MAIL or QUIT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use smtp_proto::{MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8, MailFrom, RcptTo, Request};

use conduct::{NotSmtp, Strikes};
use lines::{LineFacts, parse_error_reply};
use tokio_util::sync::CancellationToken;

use super::address::{self, AddressProblem};
use super::auth::{User, Users};
use super::connection::{BODY_READ, Connection, Line, ReadError};
use super::data::DotDecoder;
use super::faults::{Faults, SessionStep};
use super::reply::Reply;
use super::tls::Tls;
use crate::config::SmtpConfig;
use crate::message::{Address, BodyError, BodyWriter, Envelope, MessageId};
use crate::relay::Deliver;
use crate::status::Status;

/// Longest command line accepted. RFC 5321 says 512 octets; real clients (long AUTH responses,
/// DSN parameters) need more, so be lenient up to a few KiB.
pub const MAX_LINE: usize = 4096;

mod conduct;
mod content;
mod lines;
mod secure;

pub use conduct::{MAX_ERRORS, MAX_JUNK_COMMANDS};
pub use secure::Origin;

/// What every session of one server shares.
pub struct SessionContext {
    /// Limits and names from `[smtp]`.
    pub config: SmtpConfig,
    /// Where accepted messages go.
    pub deliver: Arc<dyn Deliver>,
    /// Fires when the server stops accepting: idle sessions close at once, open transactions finish.
    pub shutdown: CancellationToken,
    /// The TLS identity; `None` when `[smtp.tls]` is not set (no STARTTLS then).
    pub tls: Option<Arc<Tls>>,
    /// The accounts that may AUTH.
    pub users: Arc<Users>,
    /// What fails session steps on purpose (the inbox's chaos triggers), if anything does.
    pub faults: Option<Arc<dyn Faults>>,
}

impl SessionContext {
    /// The reply of a failure injected at `step` (the inbox's chaos API), if one fires.
    fn injected_failure(&self, step: SessionStep) -> Option<Reply> {
        let code = self.faults.as_ref()?.failure(step)?;
        Some(injected_reply(step, code))
    }
}

/// Whether the session goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close,
}

/// One mail transaction: from MAIL to the end of DATA (or RSET).
struct Transaction {
    mail_from: Option<Address>,
    /// The client said SMTPUTF8 on MAIL: non-ASCII addresses are allowed.
    smtputf8: bool,
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
    /// Where the connection came in; `origin.tls` turns true after STARTTLS.
    origin: Origin,
    /// The authenticated user, once AUTH succeeded.
    user: Option<Arc<User>>,
    /// Failed AUTH attempts in this session; too many close it.
    auth_failures: u32,
    /// Bad and idle commands so far; too many close the session.
    strikes: Strikes,
}

impl Session {
    /// A session over an accepted connection.
    pub fn new(
        conn: Connection,
        ctx: Arc<SessionContext>,
        remote: SocketAddr,
        origin: Origin,
    ) -> Self {
        Session {
            conn,
            ctx,
            remote,
            helo: None,
            transaction: None,
            origin,
            user: None,
            auth_failures: 0,
            strikes: Strikes::default(),
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
                    Status::CONNECTION_DROPPED,
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
            if self.conn.must_flush() {
                // About to wait for the client (or too many replies queued): send them, here
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
                    let reply = Reply::new(500, Status::SYNTAX, "line too long");
                    match self.bad_command(reply) {
                        Flow::Close => return Ok(()),
                        Flow::Continue => continue,
                    }
                }
                Line::Complete(len) => len,
            };
            let line = &self.conn.buffered()[..len];
            // Before anything else: whatever follows such a line must not be read as commands.
            if let Some(not_smtp) = NotSmtp::of(line) {
                self.conn.consume(len);
                self.refuse_not_smtp(not_smtp);
                return Ok(());
            }
            let facts = LineFacts::of(line);
            let parsed = Request::parse(&mut line.iter()).map(Request::into_owned);
            self.conn.consume(len);
            let flow = match parsed {
                _ if facts.oversized_number => self.oversized_number(facts.bdat),
                Ok(request) => self.dispatch(request, facts.names_postmaster).await?,
                Err(err) => self.bad_command(parse_error_reply(err)),
            };
            if flow == Flow::Close {
                return Ok(());
            }
        }
    }

    async fn dispatch(
        &mut self,
        request: Request<String>,
        names_postmaster: bool,
    ) -> Result<Flow, ReadError> {
        let reply = match request {
            Request::Ehlo { host } => self.ehlo(host),
            Request::Helo { host } => self.helo(host),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to, names_postmaster),
            Request::Data => self.data().await?,
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last).await?,
            Request::Rset => {
                let reply = self.rset();
                return Ok(self.junk_command(reply));
            }
            Request::Noop { .. } => {
                return Ok(self.junk_command(Reply::new(250, Status::OK, "OK")));
            }
            Request::Vrfy { .. } => {
                let text = "cannot verify, but will accept the message";
                return Ok(self.junk_command(Reply::new(252, Status::RECIPIENT_OK, text)));
            }
            Request::Help { .. } => return Ok(self.junk_command(help())),
            Request::StartTls => return self.starttls().await,
            Request::Auth {
                mechanism,
                initial_response,
            } => return self.auth(mechanism, initial_response).await,
            Request::Quit => {
                self.conn.reply(&Reply::new(221, Status::OK, "bye"));
                return Ok(Flow::Close);
            }
            other => {
                let text = format!("{} not implemented", other.name());
                return Ok(self.bad_command(Reply::new(502, Status::INVALID_COMMAND, text)));
            }
        };
        self.conn.reply(&reply);
        Ok(Flow::Continue)
    }

    fn ehlo(&mut self, host: String) -> Reply {
        let config = &self.ctx.config;
        let mut text = format!(
            "{} greets {host}\nPIPELINING\nSIZE {}\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES\nCHUNKING\nHELP",
            config.hostname, config.max_message_size
        );
        if self.starttls_offered() {
            text.push_str("\nSTARTTLS");
        }
        if self.auth_offered() {
            text.push_str("\nAUTH PLAIN LOGIN");
        }
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
            return Reply::new(503, Status::BAD_SEQUENCE, "send EHLO or HELO first");
        }
        if self.transaction.is_some() {
            return Reply::new(503, Status::BAD_SEQUENCE, "nested MAIL command");
        }
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            return Reply::new(
                555,
                Status::BAD_PARAMETERS,
                "BODY=BINARYMIME is not supported",
            );
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        let address = match address::check(&from.address, smtputf8) {
            Ok(address) => address.into_owned(),
            Err(problem) => return address_refused(problem, Status::BAD_SENDER_SYNTAX, "sender"),
        };
        let limit = self.ctx.config.max_message_size;
        if from.size as u64 > limit {
            return Reply::new(
                552,
                Status::TOO_BIG,
                format!("message size exceeds fixed limit of {limit} bytes"),
            );
        }
        let mail_from = (!address.is_empty()).then(|| Address::new(address));
        if let Some(refused) = self.sender_refused(mail_from.as_ref()) {
            return refused;
        }
        if let Some(injected) = self.ctx.injected_failure(SessionStep::Sender) {
            return injected;
        }
        self.transaction = Some(Transaction {
            mail_from,
            smtputf8,
            rcpt_to: Vec::new(),
            chunks: None,
        });
        Reply::new(250, Status::SENDER_OK, "OK")
    }

    fn rcpt(&mut self, to: RcptTo<String>, names_postmaster: bool) -> Reply {
        let max = self.ctx.config.max_recipients;
        let Some(transaction) = self.transaction.as_mut() else {
            return Reply::new(503, Status::BAD_SEQUENCE, "send MAIL first");
        };
        let address = match address::check(&to.address, transaction.smtputf8) {
            // smtp-proto reports both <> and the special recipient <postmaster> as empty.
            Ok(address) if address.is_empty() && names_postmaster => "postmaster".to_string(),
            Ok(address) if address.is_empty() => {
                return Reply::new(
                    501,
                    Status::BAD_RECIPIENT_SYNTAX,
                    "the null address is not a recipient",
                );
            }
            Ok(address) => address.into_owned(),
            Err(problem) => {
                return address_refused(problem, Status::BAD_RECIPIENT_SYNTAX, "recipient");
            }
        };
        if transaction
            .rcpt_to
            .iter()
            .any(|known| known.same_mailbox(&address))
        {
            return Reply::new(250, Status::RECIPIENT_OK, "OK (duplicate recipient)");
        }
        if let Some(injected) = self.ctx.injected_failure(SessionStep::Recipient) {
            return injected;
        }
        if transaction.rcpt_to.len() >= max {
            return Reply::new(
                452,
                Status::TOO_MANY_RECIPIENTS,
                format!("too many recipients (at most {max} per message)"),
            );
        }
        transaction.rcpt_to.push(Address::new(address));
        Reply::new(250, Status::RECIPIENT_OK, "OK")
    }

    /// A size no message can have: refuse MAIL; for BDAT the chunk cannot be skipped, so the
    /// session can no longer tell data from commands and must end.
    fn oversized_number(&mut self, bdat: bool) -> Flow {
        let limit = self.ctx.config.max_message_size;
        let text = format!("message size exceeds fixed limit of {limit} bytes");
        if bdat {
            self.transaction = None;
            self.conn.reply(&Reply::new(
                552,
                Status::TOO_BIG,
                format!("{text}; closing connection"),
            ));
            return Flow::Close;
        }
        self.conn.reply(&Reply::new(552, Status::TOO_BIG, text));
        Flow::Continue
    }

    fn rset(&mut self) -> Reply {
        self.transaction = None;
        Reply::new(250, Status::OK, "OK")
    }

    /// Checks that a transaction is ready for its body; the reply says why not.
    fn ready_for_body(&self) -> Result<(), Reply> {
        match &self.transaction {
            None => Err(Reply::new(503, Status::BAD_SEQUENCE, "send MAIL first")),
            Some(t) if t.rcpt_to.is_empty() => {
                Err(Reply::new(503, Status::BAD_SEQUENCE, "send RCPT first"))
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
            return Ok(Reply::new(
                503,
                Status::BAD_SEQUENCE,
                "DATA cannot follow BDAT",
            ));
        }
        self.conn
            .reply(&Reply::plain(354, "end data with <CR><LF>.<CR><LF>"));
        let mut decoder = DotDecoder::default();
        let mut body = self.body_writer();
        let mut fair = FairShare::default();
        loop {
            let (used, done) = decoder.decode(self.conn.buffered(), body.staging());
            self.conn.consume(used);
            body.commit().await;
            if done {
                break;
            }
            fair.took(used).await;
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
        let mut fair = FairShare::default();
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
            fair.took(take).await;
        }
        if last {
            return Ok(self.end_of_message(body).await);
        }
        if let Some(transaction) = self.transaction.as_mut() {
            transaction.chunks = Some(body);
        }
        Ok(Reply::new(
            250,
            Status::OK,
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
                crate::telemetry::message_received("too_large");
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
        if let Some(refused) = content::refused(self.user.as_ref(), self.remote, &message).await {
            crate::telemetry::message_received("permanent");
            return refused;
        }
        let envelope = Envelope {
            id: MessageId::generate(),
            mail_from: transaction.mail_from,
            rcpt_to: transaction.rcpt_to,
            remote: self.remote,
            helo: self.helo.clone().unwrap_or_default(),
            auth_user: self.user.as_ref().map(|user| user.name.clone()),
            received_at: SystemTime::now(),
        };
        let outcome = self.ctx.deliver.deliver(&envelope, &message).await;
        crate::telemetry::message_received(match &outcome {
            Ok(_) => "accepted",
            Err(err) if err.is_permanent() => "permanent",
            Err(_) => "temporary",
        });
        if outcome.is_ok() {
            self.strikes.message_accepted();
        }
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

/// Makes a session reading a large body step aside now and then. A socket that always has data
/// ready never makes the task wait, so without this one 35 MB upload could hold a worker thread
/// for its whole duration while new clients wait for their greeting.
#[derive(Default)]
struct FairShare {
    since_yield: usize,
}

impl FairShare {
    /// Bytes a session may take in one go before letting other tasks run.
    const QUANTUM: usize = 256 * 1024;

    async fn took(&mut self, bytes: usize) {
        self.since_yield += bytes;
        if self.since_yield >= Self::QUANTUM {
            self.since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
}

fn shutting_down() -> Reply {
    Reply::new(
        421,
        Status::NOT_ACCEPTING,
        "server shutting down, try again later",
    )
}

fn help() -> Reply {
    Reply::new(
        214,
        Status::OK,
        "smtp2gmail: commands EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT",
    )
}

/// The reply of an injected failure: its code, with the enhanced status a real server would give
/// at that step (a temporary failure is a mail system problem, a permanent one names the address
/// or the credentials).
fn injected_reply(step: SessionStep, code: u16) -> Reply {
    let temporary = code < 500;
    let (status, what) = match step {
        SessionStep::Sender if temporary => (Status::SYSTEM_TEMPORARY, "sender"),
        SessionStep::Sender => (Status::BAD_ADDRESS, "sender"),
        SessionStep::Recipient if temporary => (Status::SYSTEM_TEMPORARY, "recipient"),
        SessionStep::Recipient => (Status::NO_SUCH_MAILBOX, "recipient"),
        SessionStep::Authentication if temporary => (Status::SECURITY_TEMPORARY, "authentication"),
        SessionStep::Authentication => (Status::BAD_CREDENTIALS, "authentication"),
    };
    let text = format!("{what} refused: a simulated failure (the inbox's chaos triggers)");
    Reply::new(code, status, text)
}

/// The reply for an address [`address::check`] refused; `status` is 5.1.7 (sender) or 5.1.3.
fn address_refused(problem: AddressProblem, status: Status, role: &str) -> Reply {
    match problem {
        AddressProblem::ControlCharacter => {
            Reply::new(501, status, format!("bad {role} address syntax"))
        }
        AddressProblem::NeedsSmtpUtf8 => Reply::new(
            553,
            Status::NEEDS_SMTPUTF8,
            format!("non-ASCII {role} address requires the SMTPUTF8 parameter on MAIL"),
        ),
    }
}
