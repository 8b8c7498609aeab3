//! The Gmail target: route to an account, apply the recipient and From rules, get an access token,
//! upload the raw bytes.
//!
//! [`Gmail::prepare`] and [`Gmail::attempt`] are the two halves the durable queue will call too;
//! [`Deliver::deliver`] adds a small retry budget for synchronous delivery, so a transient 429 or
//! 503 does not turn into a 451 while the client is still waiting. [`reload`] switches an
//! account to rewritten credential files while the server runs.

pub mod accounts;
pub mod api;
pub mod reload;
pub mod slots;
pub mod upload;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Cause, Deliver, DeliveryError, Receipt, Scope};
use crate::config::GmailConfig;
use crate::google::TokenError;
use crate::message::gmail_rules::{self, Prepared};
use crate::message::gmail_size;
use crate::message::headers::Headers;
use crate::message::{Envelope, HEAD_LIMIT, Message, read_head};
use crate::status::Status;
use accounts::{Account, Router};
pub use accounts::{AccountError, AccountProblem};
use api::{GmailApi, SendError};
use upload::Upload;

/// How hard synchronous delivery tries before answering 451.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    pub attempts: u32,
    /// Give up when the next attempt would start later than this after the first.
    pub budget: Duration,
    /// Wait before the second attempt; doubled for each further one, with ±20 % jitter.
    pub first_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            budget: Duration::from_secs(20),
            first_backoff: Duration::from_secs(1),
        }
    }
}

/// A message ready to upload: which account, as whom, and the bytes.
pub struct Outgoing {
    /// The account that sends it.
    pub account: Arc<Account>,
    /// The user a service-account token is minted for.
    pub subject: Option<String>,
    /// The bytes to upload: the received bytes plus any added header.
    pub upload: Upload,
}

/// Delivers through the Gmail API.
pub struct Gmail {
    api: GmailApi,
    router: Router,
    retry: RetryPolicy,
}

impl Gmail {
    /// Builds the target from `[gmail]`, loading every account's credentials.
    pub fn from_config(config: &GmailConfig, http: reqwest::Client) -> Result<Gmail, AccountError> {
        let router = Router::from_config(config, &http)?;
        Ok(Gmail {
            api: GmailApi::new(http, &config.api_base),
            router,
            retry: RetryPolicy::default(),
        })
    }

    /// The same target with another retry policy (tests use short waits).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The same target with another base request timeout (tests of hung requests).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.api = self.api.with_timeout(timeout);
        self
    }

    /// The configured accounts.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Routes the message and applies the account's rules: everything that can refuse a message
    /// before anything is sent.
    pub async fn prepare(
        &self,
        envelope: &Envelope,
        message: &Message,
    ) -> Result<Outgoing, DeliveryError> {
        let raw = message.to_bytes().await.map_err(unreadable)?;
        let (account, subject, prepared) = self.decide(envelope, &raw, raw.len() as u64)?;
        log_edits(envelope, &account, &prepared);
        Ok(Outgoing {
            account,
            subject,
            upload: Upload::Memory(prepared.to_chunks(raw)),
        })
    }

    /// What [`prepare`](Self::prepare) decides, from the head of the message only: the account, or
    /// why the message is refused. The queue calls this before 250 without reading a 35 MB body.
    pub async fn check(
        &self,
        envelope: &Envelope,
        message: &Message,
    ) -> Result<Arc<Account>, DeliveryError> {
        let head = message.head(HEAD_LIMIT).await.map_err(unreadable)?;
        Ok(self.decide(envelope, &head, message.len())?.0)
    }

    /// [`prepare`](Self::prepare) for a message stored in a file (the queue's `.msg`), whose first
    /// `len` bytes are the message: only the head is read, and the upload streams the file.
    pub async fn prepare_file(
        &self,
        envelope: &Envelope,
        path: &Path,
        len: u64,
    ) -> Result<Outgoing, DeliveryError> {
        let head = read_head(path, len.min(HEAD_LIMIT as u64))
            .await
            .map_err(unreadable)?;
        let (account, subject, prepared) = self.decide(envelope, &head, len)?;
        log_edits(envelope, &account, &prepared);
        let pieces = upload::extend_to(prepared.pieces, head.len(), len as usize);
        Ok(Outgoing {
            account,
            subject,
            upload: Upload::File {
                path: path.to_path_buf(),
                pieces,
            },
        })
    }

    /// The account, the user a service-account token is for, and the rules' edits. `raw` is the
    /// message or its head; `total` the size of the whole message, so that an upload that the
    /// edits would take over Gmail's limit is refused here, before 250.
    fn decide(
        &self,
        envelope: &Envelope,
        raw: &[u8],
        total: u64,
    ) -> Result<(Arc<Account>, Option<String>, Prepared), DeliveryError> {
        let headers = Headers::read(raw);
        let sender = envelope.mail_from.as_ref().map(|a| a.as_str());
        let from = headers
            .from
            .iter()
            .flat_map(|field| &field.addresses)
            .next()
            .map(String::as_str);
        let Some(account) = self.router.route(sender, from) else {
            return Err(DeliveryError::Permanent {
                status: Status::POLICY,
                reason: format!(
                    "no Gmail account is configured for sender {}; add it to the senders of an account",
                    envelope.sender_display()
                ),
            });
        };
        let prepared = gmail_rules::prepare_with_headers(&account.policy, envelope, raw, &headers)?;
        gmail_size::check_upload_size(&prepared, raw.len(), total)?;
        if let Some(address) = &prepared.unknown_from
            && account.first_warning_for(address)
        {
            tracing::warn!(
                account = %account.name,
                from = %address,
                "From address is not in send_as: Gmail will replace it with the account's address \
                 (set from_policy = \"rewrite\" or \"reject\", or add it to send_as)"
            );
        }
        Ok((
            account.clone(),
            account.subject(sender).map(str::to_string),
            prepared,
        ))
    }

    /// One attempt: token, upload, and after a 401 one refresh and one more upload.
    pub async fn attempt(&self, outgoing: &Outgoing) -> Result<Receipt, DeliveryError> {
        let started = Instant::now();
        let outcome = self.attempt_once(outgoing).await;
        outgoing
            .account
            .note_outcome(outgoing.subject.as_deref(), &outcome);
        let word = match &outcome {
            Ok(_) => "sent",
            Err(DeliveryError::Temporary { .. }) => "temporary",
            Err(DeliveryError::Permanent { .. }) => "permanent",
            Err(DeliveryError::Credentials { .. }) => "credentials",
        };
        crate::telemetry::delivery(&outgoing.account.name, word, started.elapsed());
        outcome
    }

    async fn attempt_once(&self, outgoing: &Outgoing) -> Result<Receipt, DeliveryError> {
        let account = &outgoing.account;
        let subject = outgoing.subject.as_deref();
        // Gmail's concurrency limit is per mailbox: senders impersonated through one key do not
        // share it.
        let _slot = account.sends.acquire(subject).await;
        let mut refreshed = false;
        loop {
            let token = account
                .tokens
                .access_token(subject)
                .await
                .map_err(|err| token_failure(account, err))?;
            let credentials = account.tokens.credentials();
            match self
                .api
                .send(
                    &account.user_id,
                    token.expose(),
                    credentials.quota_project(),
                    &outgoing.upload,
                )
                .await
            {
                Ok(sent) => return Ok(Receipt::new(sent.id)),
                Err(SendError::Unauthorized(reason)) if !refreshed => {
                    tracing::debug!(account = %account.name, %reason, "access token rejected, refreshing");
                    account.tokens.invalidate(subject, &token);
                    refreshed = true;
                }
                Err(err) => return Err(send_failure(account, subject, err)),
            }
        }
    }
}

#[async_trait::async_trait]
impl Deliver for Gmail {
    fn size_limit(&self, max_recipients: usize) -> Option<u64> {
        Some(gmail_size::largest_message(max_recipients))
    }

    async fn deliver(
        &self,
        envelope: &Envelope,
        message: &Message,
    ) -> Result<Receipt, DeliveryError> {
        let outgoing = self.prepare(envelope, message).await?;
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let error = match self.attempt(&outgoing).await {
                Ok(receipt) => return Ok(receipt),
                Err(error @ DeliveryError::Temporary { .. }) => error,
                Err(error) => return Err(error),
            };
            let DeliveryError::Temporary { retry_after, .. } = &error else {
                unreachable!()
            };
            let wait = retry_after.unwrap_or_else(|| {
                crate::backoff::with_jitter(self.retry.first_backoff, Duration::MAX, attempt)
            });
            if attempt >= self.retry.attempts || started.elapsed() + wait > self.retry.budget {
                return Err(error);
            }
            tracing::debug!(id = %envelope.id, attempt, ?wait, %error, "temporary failure, retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

/// Says what the bridge changed in a message it is about to upload: Postfix logs each
/// recipient's fate, and an operator asking "why did X get it" needs to see the added Bcc.
fn log_edits(envelope: &Envelope, account: &Account, prepared: &Prepared) {
    if prepared.added_bcc.is_empty() && !prepared.from_rewritten {
        return;
    }
    let bcc: Vec<&str> = prepared.added_bcc.iter().map(|a| a.as_str()).collect();
    tracing::info!(
        id = %envelope.id,
        account = %account.name,
        added_bcc = ?bcc,
        from_rewritten = prepared.from_rewritten,
        "headers added for Gmail"
    );
}

fn unreadable(err: std::io::Error) -> DeliveryError {
    DeliveryError::local(format!("cannot read the message: {err}"))
}

fn token_failure(account: &Account, err: TokenError) -> DeliveryError {
    match err {
        TokenError::Credentials {
            error,
            description,
            fix,
        } => DeliveryError::Credentials {
            account: account.name.clone(),
            reason: format!("Google rejected the credentials ({error}: {description})"),
            fix,
            scope: Scope::Account,
        },
        TokenError::Temporary { reason } => DeliveryError::Temporary {
            status: Status::NO_ANSWER,
            reason: format!("cannot get an access token: {reason}"),
            retry_after: None,
            cause: Cause::Outage,
        },
        // The sender, not the key: refuse this message for good and leave the account alone.
        // 5.1.0 as Postfix answers an unknown sender of its own domains ("User unknown").
        unknown @ TokenError::UnknownUser { .. } => DeliveryError::Permanent {
            status: Status::BAD_ADDRESS,
            reason: format!(
                "sender refused: {unknown}; send as an existing user of the domain, or remove \
                 the address from the senders of account {}",
                account.name
            ),
        },
    }
}

fn send_failure(account: &Account, subject: Option<&str>, err: SendError) -> DeliveryError {
    match err {
        SendError::Temporary {
            reason,
            retry_after,
            cause,
        } => DeliveryError::Temporary {
            status: if cause == Cause::RateLimit {
                Status::CONGESTION
            } else {
                Status::NO_ANSWER
            },
            reason,
            retry_after,
            cause,
        },
        SendError::Permanent { status, reason } => DeliveryError::Permanent {
            status: if status == 413 {
                Status::TOO_BIG
            } else {
                Status::BAD_MESSAGE
            },
            reason,
        },
        SendError::Unauthorized(reason) => DeliveryError::Credentials {
            account: account.name.clone(),
            reason: format!("the access token was refused even after a refresh ({reason})"),
            fix: "check that the token was granted the gmail.send scope; run `smtp2gmail authorize` again".to_string(),
            scope: Scope::Account,
        },
        SendError::NoQuotaProject { reason } => DeliveryError::Credentials {
            account: account.name.clone(),
            reason,
            fix: crate::google::set_quota_project(&account.tokens.credentials()),
            scope: Scope::Account,
        },
        SendError::Configuration {
            reason,
            fix,
            mailbox,
        } => DeliveryError::Credentials {
            account: account.name.clone(),
            reason: match subject {
                Some(user) if mailbox => format!("{user}: {reason}"),
                _ => reason,
            },
            fix,
            // A mailbox problem is the whole account's when the account is one mailbox.
            scope: if mailbox && account.impersonate == accounts::Impersonate::Sender {
                Scope::Mailbox
            } else {
                Scope::Account
            },
        },
    }
}
