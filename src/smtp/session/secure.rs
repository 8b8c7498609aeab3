//! STARTTLS and AUTH for a session, and what authentication decides about MAIL.
//!
//! What is offered depends on where the connection came in ([`Origin`]): STARTTLS
//! only while TLS is configured and not yet on; AUTH only under TLS, on a loopback listener, or
//! on a listener where the operator allowed plaintext AUTH, so that passwords never cross a
//! network in clear by default.

use std::net::SocketAddr;
use std::sync::Arc;

use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};

use super::{Flow, MAX_LINE, Session};
use crate::message::Address;
use crate::message::headers::Headers;
use crate::smtp::auth::{self, Mechanism, User};
use crate::smtp::connection::{Line, ReadError};
use crate::smtp::faults::SessionStep;
use crate::smtp::reply::Reply;
use crate::status::Status;

/// Where a connection came in, which decides what it is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The listener that accepted the connection, as written in `smtp.listen`/`listen_tls`.
    pub listener: SocketAddr,
    /// The connection came in on a loopback address (decided per connection, so a `0.0.0.0`
    /// listener reached through 127.0.0.1 counts, and so does a dual-stack `[::]` listener, which
    /// sees `::ffff:127.0.0.1`): only this machine can have sent it, so AUTH without TLS is fine.
    pub loopback: bool,
    /// TLS is on: a `listen_tls` listener, or after STARTTLS.
    pub tls: bool,
}

/// Failed AUTH attempts allowed in one session; the next failure closes it with 421. Three is
/// what a person mistyping needs, and makes guessing cost a new connection (and handshake).
pub const MAX_AUTH_FAILURES: u32 = 3;

/// The outcome of reading the client's credentials.
enum Credentials {
    /// A user name and password to check.
    Given(String, String),
    /// The exchange ended without credentials; the reply says why.
    Refused(Reply),
}

impl Session {
    /// Whether EHLO lists STARTTLS.
    pub(super) fn starttls_offered(&self) -> bool {
        self.ctx.tls.is_some() && !self.origin.tls
    }

    /// Whether AUTH may be used on this connection at all (whatever the session state).
    fn auth_allowed_here(&self) -> bool {
        let plaintext = &self.ctx.config.allow_auth_without_tls;
        self.origin.tls || self.origin.loopback || plaintext.allows(self.origin.listener)
    }

    /// Whether EHLO lists AUTH.
    pub(super) fn auth_offered(&self) -> bool {
        self.ctx.users.any() && self.user.is_none() && self.auth_allowed_here()
    }

    /// STARTTLS (RFC 3207): 220, the handshake, then a fresh start.
    pub(super) async fn starttls(&mut self) -> Result<Flow, ReadError> {
        let tls = match &self.ctx.tls {
            Some(_) if self.origin.tls => {
                return self.answer(Reply::new(503, Status::BAD_SEQUENCE, "TLS already active"));
            }
            Some(tls) => tls.clone(),
            None => {
                return self.answer(Reply::new(
                    502,
                    Status::INVALID_COMMAND,
                    "STARTTLS not offered",
                ));
            }
        };
        self.conn
            .reply(&Reply::new(220, Status::OK, "ready to start TLS"));
        self.conn.start_tls(&tls).await?;
        self.origin.tls = true;
        // RFC 3207 4.2: everything learnt in plaintext is forgotten; the client greets again.
        self.helo = None;
        self.transaction = None;
        self.user = None;
        Ok(Flow::Continue)
    }

    /// AUTH (RFC 4954) with PLAIN or LOGIN.
    pub(super) async fn auth(
        &mut self,
        mechanism: u64,
        initial_response: String,
    ) -> Result<Flow, ReadError> {
        if let Err(reply) = self.auth_precondition() {
            return self.answer(reply);
        }
        let mechanism = match mechanism {
            AUTH_PLAIN => Mechanism::Plain,
            AUTH_LOGIN => Mechanism::Login,
            _ => {
                let reply = Reply::new(504, Status::BAD_PARAMETERS, "mechanism not supported");
                return self.answer(reply);
            }
        };
        let (name, password) = match self.credentials(mechanism, initial_response).await? {
            Credentials::Given(name, password) => (name, password),
            Credentials::Refused(reply) => return self.answer(reply),
        };
        if let Some(injected) = self.ctx.injected_failure(SessionStep::Authentication) {
            return self.answer(injected);
        }
        // The name is client input: bounded and escaped before it reaches a log line.
        let shown: String = name.chars().take(64).collect();
        match self
            .ctx
            .users
            .verify(self.remote.ip(), &name, password)
            .await
        {
            Some(user) => {
                tracing::info!(remote = %self.remote, user = %user.name, "authenticated");
                self.user = Some(user);
                self.answer(Reply::new(235, Status::AUTH_OK, "authentication succeeded"))
            }
            None => {
                self.auth_failures += 1;
                crate::telemetry::auth_failure();
                tracing::warn!(
                    remote = %self.remote,
                    user = ?shown,
                    failures = self.auth_failures,
                    "authentication failed"
                );
                if self.auth_failures >= MAX_AUTH_FAILURES {
                    crate::telemetry::session_dropped("auth_failures");
                    self.conn.reply(&Reply::new(
                        421,
                        Status::SECURITY_TEMPORARY,
                        "too many failed authentication attempts, closing connection",
                    ));
                    return Ok(Flow::Close);
                }
                // One reply for unknown users and wrong passwords alike.
                self.answer(Reply::new(
                    535,
                    Status::BAD_CREDENTIALS,
                    "authentication credentials invalid",
                ))
            }
        }
    }

    /// Why AUTH cannot start now, if it cannot.
    fn auth_precondition(&self) -> Result<(), Reply> {
        let refuse = |code, status, text| Err(Reply::new(code, status, text));
        if !self.ctx.users.any() {
            return refuse(502, Status::INVALID_COMMAND, "AUTH not offered");
        }
        if !self.auth_allowed_here() {
            return refuse(
                538,
                Status::ENCRYPTION_REQUIRED,
                "encryption required: send STARTTLS first",
            );
        }
        if self.helo.is_none() {
            return refuse(503, Status::BAD_SEQUENCE, "send EHLO first");
        }
        if self.user.is_some() {
            return refuse(503, Status::BAD_SEQUENCE, "already authenticated");
        }
        if self.transaction.is_some() {
            return refuse(
                503,
                Status::BAD_SEQUENCE,
                "AUTH not allowed during a transaction",
            );
        }
        Ok(())
    }

    /// Reads the user name and password the mechanism carries, prompting where needed.
    async fn credentials(
        &mut self,
        mechanism: Mechanism,
        initial_response: String,
    ) -> Result<Credentials, ReadError> {
        let malformed = || {
            Credentials::Refused(Reply::new(
                501,
                Status::SYNTAX,
                "cannot decode the response",
            ))
        };
        let first = if initial_response.is_empty() {
            // PLAIN's prompt is empty; LOGIN's is "Username:" in base64.
            let prompt = match mechanism {
                Mechanism::Plain => "",
                Mechanism::Login => "VXNlcm5hbWU6",
            };
            match self.challenge(prompt).await? {
                Ok(response) => response,
                Err(refused) => return Ok(refused),
            }
        } else {
            initial_response
        };
        let Ok(first) = auth::decode(&first) else {
            return Ok(malformed());
        };
        if mechanism == Mechanism::Plain {
            return Ok(match auth::split_plain(&first) {
                Ok((name, password)) => Credentials::Given(name, password),
                Err(_) => malformed(),
            });
        }
        let password = match self.challenge("UGFzc3dvcmQ6").await? {
            Ok(response) => response,
            Err(refused) => return Ok(refused),
        };
        Ok(match auth::decode(&password) {
            Ok(password) => Credentials::Given(first, password),
            Err(_) => malformed(),
        })
    }

    /// Sends a `334` prompt and reads the client's response line; `*` cancels the exchange.
    async fn challenge(
        &mut self,
        prompt: &'static str,
    ) -> Result<Result<String, Credentials>, ReadError> {
        self.conn.reply(&Reply::plain(334, prompt));
        let len = match self.conn.read_line(MAX_LINE).await? {
            Line::Complete(len) => len,
            Line::TooLong => {
                let reply = Reply::new(
                    500,
                    Status::AUTH_LINE_TOO_LONG,
                    "authentication exchange line too long",
                );
                return Ok(Err(Credentials::Refused(reply)));
            }
        };
        let line = String::from_utf8_lossy(&self.conn.buffered()[..len])
            .trim_end_matches(['\r', '\n'])
            .to_string();
        self.conn.consume(len);
        if line.trim() == "*" {
            let reply = Reply::new(501, Status::AUTH_CANCELLED, "authentication cancelled");
            return Ok(Err(Credentials::Refused(reply)));
        }
        Ok(Ok(line))
    }

    /// The reply to MAIL when authentication forbids it: 530 before AUTH where it is required,
    /// 550 for a sender the user may not use.
    pub(super) fn sender_refused(&self, sender: Option<&Address>) -> Option<Reply> {
        match &self.user {
            None if self.ctx.config.auth_required() => Some(Reply::new(
                530,
                Status::AUTH_REQUIRED,
                "authentication required",
            )),
            None => None,
            Some(user) if !user.may_send_as(sender) => Some(not_allowed(user, sender)),
            Some(_) => None,
        }
    }

    /// Queues `reply` and goes on.
    fn answer(&mut self, reply: Reply) -> Result<Flow, ReadError> {
        self.conn.reply(&reply);
        Ok(Flow::Continue)
    }
}

/// The reply to the end of DATA when the From header names an address the user may not use.
/// Without this check `senders` would be cosmetic: Gmail shows the From, and with a service
/// account impersonating the sender, the From is who the mail is sent as. `head` is the start of
/// the message ([`HEAD_LIMIT`](crate::message::HEAD_LIMIT) bytes at most).
pub(super) fn from_refused(user: Option<&Arc<User>>, head: &[u8]) -> Option<Reply> {
    let user = user.filter(|user| user.is_restricted())?;
    let headers = Headers::read(head);
    let mut fields = headers.from.iter();
    let bad = fields.find(|field| {
        !field.unparsed.is_empty() || field.addresses.iter().any(|a| !user.may_use(a))
    })?;
    let shown = bad.addresses.join(", ");
    Some(Reply::new(
        550,
        Status::POLICY,
        format!("user {} may not send with From: {shown}", user.name),
    ))
}

fn not_allowed(user: &Arc<User>, sender: Option<&Address>) -> Reply {
    let sender = sender.map_or("", Address::as_str);
    Reply::new(
        550,
        Status::POLICY,
        format!("user {} may not send as <{sender}>", user.name),
    )
}
