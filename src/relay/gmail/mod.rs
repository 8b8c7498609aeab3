//! The Gmail target: route to an account, apply the recipient and From rules, get an access token,
//! upload the raw bytes. The Microsoft 365 target is this same relay with Microsoft's accounts
//! and Graph instead of the Gmail API ([`super::microsoft`]): the name stays `Gmail` in code until
//! a mechanical rename (docs/design.md, "Microsoft 365: the same relay, another API").
//!
//! [`Gmail::decide`] routes a message once, when it is accepted (the queue stores the
//! [`Decision`]); [`Gmail::outgoing`] builds the upload from it and [`Gmail::attempt`] sends it.
//! [`Deliver::deliver`] (synchronous delivery) does the three at once and adds a small retry
//! budget, so a transient 429 or 503 does not turn into a 451 while the client is still waiting.
//! [`reload`] switches an account to rewritten credential files while the server runs.

pub mod accounts;
pub mod api;
pub mod reload;
pub mod slots;
pub mod upload;

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::microsoft::{Graph, budget};
use super::{Cause, Deliver, DeliveryError, Receipt, Scope};
use crate::config::{GmailConfig, MicrosoftConfig};
use crate::google::TokenError;
use crate::message::gmail_size;
use crate::message::header_edits::Piece;
use crate::message::headers::Headers;
use crate::message::recipient_rules::{self, Prepared, Provider};
use crate::message::{Envelope, HEAD_LIMIT, Message};
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
    /// The user a service-account token is minted for (Microsoft: the mailbox).
    pub subject: Option<String>,
    /// The bytes to upload: the received bytes plus any added header.
    pub upload: Upload,
    /// The envelope recipients (Microsoft's daily recipient budget counts them; its SMTP path
    /// gives them as RCPT TO).
    pub rcpt_to: Vec<String>,
}

/// The API a relay sends through.
enum Api {
    /// The Gmail API.
    Gmail(GmailApi),
    /// Microsoft Graph (and the large-message path).
    Graph(Box<Graph>),
}

/// What was decided for one message when it was accepted (see [`Gmail::decide`]). The queue
/// stores it as its own type (`queue::record::Decision`, converted below) so that delivery does
/// exactly that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The account that sends it.
    pub account: String,
    /// The mailbox whose limits it counts against when the account impersonates each sender
    /// (lowercased, see `message::mailbox`); `None` when the account is one mailbox.
    pub mailbox: Option<String>,
    /// The user a service-account token is minted for.
    pub subject: Option<String>,
    /// The upload as pieces of the message: ranges of it, and what the rules added (a Bcc
    /// field, a rewritten From).
    pub upload: Vec<Piece>,
}

/// The queue's edge: the queue's record imports no relay module, so the relay's decision becomes
/// the queue's here, where the relay hands it over.
impl From<Decision> for crate::queue::record::Decision {
    fn from(decision: Decision) -> Self {
        crate::queue::record::Decision {
            account: decision.account,
            mailbox: decision.mailbox,
            route: crate::queue::record::Route {
                subject: decision.subject,
                upload: decision.upload,
            },
        }
    }
}

/// Delivers through the Gmail API, or Microsoft Graph.
pub struct Gmail {
    api: Api,
    router: Router,
    retry: RetryPolicy,
}

impl Gmail {
    /// Builds the target from `[gmail]`, loading every account's credentials.
    pub fn from_config(config: &GmailConfig, http: reqwest::Client) -> Result<Gmail, AccountError> {
        let router = Router::from_config(config, &http)?;
        Ok(Gmail {
            api: Api::Gmail(GmailApi::new(http, &config.api_base)),
            router,
            retry: RetryPolicy::default(),
        })
    }

    /// Builds the Microsoft 365 target from `[microsoft]`, loading every app's credential.
    pub fn from_microsoft(
        config: &MicrosoftConfig,
        http: reqwest::Client,
    ) -> Result<Gmail, AccountError> {
        let router = super::microsoft::router(config, &http)?;
        let graph = Graph::from_config(config, http).map_err(|problem| AccountError {
            account: "default".to_string(),
            problem: AccountProblem::Microsoft(problem),
            fix: None,
        })?;
        if let Some(warning) = graph.large_path_warning() {
            tracing::warn!("{warning}");
        }
        Ok(Gmail {
            api: Api::Graph(Box::new(graph)),
            router,
            retry: RetryPolicy::default(),
        })
    }

    /// The provider this relay sends through.
    pub fn provider(&self) -> Provider {
        match self.api {
            Api::Gmail(_) => Provider::Gmail,
            Api::Graph(_) => Provider::Microsoft,
        }
    }

    /// The most an upload may be (after the rules' additions).
    pub fn upload_limit(&self) -> u64 {
        match &self.api {
            Api::Gmail(_) => gmail_size::GMAIL_UPLOAD_LIMIT,
            Api::Graph(graph) => graph.upload_limit(),
        }
    }

    /// The same target with another retry policy (tests use short waits).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The same target with another base request timeout (tests of hung requests).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.api = match self.api {
            Api::Gmail(api) => Api::Gmail(api.with_timeout(timeout)),
            Api::Graph(mut graph) => {
                graph.api = graph.api.with_timeout(timeout);
                Api::Graph(graph)
            }
        };
        self
    }

    /// The configured accounts.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Routes the message and applies the account's rules (everything that can refuse a message
    /// before anything is sent), and builds the upload: synchronous delivery.
    pub async fn prepare(
        &self,
        envelope: &Envelope,
        message: &Message,
    ) -> Result<Outgoing, DeliveryError> {
        let decision = self.decide(envelope, message).await?;
        let (subject, upload) = (decision.subject.as_deref(), decision.upload);
        let mut outgoing = self
            .outgoing(&decision.account, subject, upload, message)
            .await?;
        outgoing.rcpt_to = envelope
            .rcpt_to
            .iter()
            .map(|a| a.as_str().to_string())
            .collect();
        Ok(outgoing)
    }

    /// The decision for a message: which account and mailbox, and the upload the rules make of
    /// it. Made once, when the message is accepted: the queue stores it with the message, and a
    /// message is never routed again. Reads only the head of the message (the queue calls this
    /// before 250 without reading a 35 MB body) and refuses, with the reason, what the account's
    /// rules refuse. Logs what the rules added.
    pub async fn decide(
        &self,
        envelope: &Envelope,
        message: &Message,
    ) -> Result<Decision, DeliveryError> {
        let head = message.head(HEAD_LIMIT).await.map_err(unreadable)?;
        self.decide_head(envelope, &head, &Headers::read(&head), message.len())
    }

    /// [`decide`](Self::decide) for a caller that has read the head (at most [`HEAD_LIMIT`]
    /// bytes) and its headers already; `total` is the size of the whole message.
    pub fn decide_head(
        &self,
        envelope: &Envelope,
        head: &[u8],
        headers: &Headers,
        total: u64,
    ) -> Result<Decision, DeliveryError> {
        // Fields after the head would reach Gmail unread by the rules (a Bcc among them, a
        // recipient nobody named in the envelope): a header section must end within it.
        if headers.end == head.len() && (head.len() as u64) < total {
            return Err(DeliveryError::Permanent {
                status: Status::BAD_MESSAGE,
                reason: format!(
                    "header section longer than {HEAD_LIMIT} bytes (no empty line before the body)"
                ),
            });
        }
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
                    "no {} account is configured for sender {}; add it to the senders of an account",
                    self.provider().service(),
                    envelope.sender_display()
                ),
            });
        };
        let prepared =
            recipient_rules::prepare_with_headers(&account.policy, envelope, head, headers)?;
        let limit = self.upload_limit();
        gmail_size::check_upload_within(self.provider(), limit, &prepared, head.len(), total)?;
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
        log_edits(envelope, account, &prepared);
        let subject = account.subject(sender);
        Ok(Decision {
            account: account.name.clone(),
            mailbox: subject
                .filter(|_| account.impersonate == accounts::Impersonate::Sender)
                .map(crate::message::mailbox::mailbox_key),
            subject: subject.map(str::to_string),
            upload: upload::extend_to(prepared.pieces, head.len(), total as usize),
        })
    }

    /// The upload of a message decided earlier ([`decide`](Self::decide)), exactly as decided:
    /// the rules are not applied again, even if the configuration changed since. Only an account
    /// that is no longer configured at all cannot send it: a temporary failure naming the
    /// account, so the message waits (up to `queue.max_age`) for the operator to restore it or
    /// delete the message — sending it from another account would change who it is from.
    pub async fn outgoing(
        &self,
        account: &str,
        subject: Option<&str>,
        upload: Vec<Piece>,
        message: &Message,
    ) -> Result<Outgoing, DeliveryError> {
        let Some(account) = self.router.account(account) else {
            return Err(DeliveryError::Temporary {
                status: Status::SYSTEM_TEMPORARY,
                reason: format!(
                    "account {account} is no longer configured; restore it in [[{}.accounts]] \
                     (and SIGHUP or restart), or `smtp2gmail queue delete` the message",
                    self.provider().table()
                ),
                retry_after: None,
                cause: Cause::Outage,
            });
        };
        let upload = Upload::of(message, upload).await.map_err(unreadable)?;
        Ok(Outgoing {
            account: account.clone(),
            subject: subject.map(str::to_string),
            upload,
            rcpt_to: Vec::new(),
        })
    }

    /// One attempt: token, upload, and after a 401 one refresh and one more upload.
    pub async fn attempt(&self, outgoing: &Outgoing) -> Result<Receipt, DeliveryError> {
        let started = Instant::now();
        let outcome = self.attempt_once(outgoing).await;
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
        // Graph's is per app as well: held for the request, after the mailbox's.
        let _app = match &account.app_slots {
            Some(slots) => Some(slots.acquire().await.map_err(|_| slots_closed())?),
            None => None,
        };
        let budget = budget::take(account, subject, outgoing.rcpt_to.len().max(1))?;
        let outcome = self.send_with_refresh(outgoing).await;
        if let (Some((budget, mailbox, count)), Err(_)) = (&budget, &outcome) {
            budget.give_back(mailbox, *count);
        }
        outcome
    }

    /// The send, and after a 401 one refresh and one more send.
    async fn send_with_refresh(&self, outgoing: &Outgoing) -> Result<Receipt, DeliveryError> {
        let account = &outgoing.account;
        let subject = outgoing.subject.as_deref();
        let mut refreshed = false;
        loop {
            let token = account
                .tokens
                .access_token(subject)
                .await
                .map_err(|err| token_failure(account, err))?;
            let sent = match &self.api {
                Api::Gmail(api) => {
                    let credentials = account.tokens.credentials();
                    let project = credentials.quota_project();
                    (api.send(&account.user_id, token.expose(), project, &outgoing.upload)).await
                }
                Api::Graph(graph) => graph.send(outgoing, token.expose()).await,
            };
            match sent {
                Err(SendError::Unauthorized(reason)) if !refreshed => {
                    tracing::debug!(account = %account.name, %reason, "access token rejected, refreshing");
                    account.tokens.invalidate(subject, &token);
                    refreshed = true;
                }
                // Only what Gmail answered is noted for readiness: a refused token is the token
                // source's state, which readiness and the log report already.
                sent => {
                    let outcome = sent
                        .map(|sent| Receipt::new(sent.id))
                        .map_err(|err| send_failure(account, subject, err, self.provider()));
                    account.note_outcome(subject, &outcome);
                    return outcome;
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Deliver for Gmail {
    fn size_limit(&self, max_recipients: usize) -> Option<u64> {
        Some(gmail_size::largest_message_within(
            self.upload_limit(),
            max_recipients,
        ))
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
        "headers added for {}",
        account.policy.provider.service()
    );
}

fn unreadable(err: std::io::Error) -> DeliveryError {
    DeliveryError::local(format!("cannot read the message: {err}"))
}

/// True when every From this account sends is one the operator listed in `send_as`.
fn declared_from(account: &Account) -> bool {
    !account.policy.send_as.is_empty()
        && account.policy.from_policy != crate::config::FromPolicy::Keep
}

fn slots_closed() -> DeliveryError {
    DeliveryError::local("the app's send slots are closed")
}

fn token_failure(account: &Account, err: TokenError) -> DeliveryError {
    let issuer = match account.tokens.credentials().kind() {
        kind if kind.is_microsoft() => "Microsoft",
        _ => "Google",
    };
    match err {
        TokenError::Credentials {
            error,
            description,
            fix,
        } => DeliveryError::Credentials {
            account: account.name.clone(),
            reason: format!("{issuer} rejected the credentials ({error}: {description})"),
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

fn send_failure(
    account: &Account,
    subject: Option<&str>,
    err: SendError,
    provider: Provider,
) -> DeliveryError {
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
        // ErrorSendAsDenied for a From the operator declared (send_as with a policy that lets
        // no other From through): Exchange's grant is missing, a setup problem to hold for.
        SendError::Permanent {
            status: 403,
            reason,
        } if provider == Provider::Microsoft && declared_from(account) => {
            DeliveryError::Credentials {
                account: account.name.clone(),
                reason,
                fix: "grant the mailbox Send As for the From addresses in send_as \
                      (Add-RecipientPermission <from> -AccessRights SendAs -Trustee <mailbox>); \
                      held mail is retried on SIGHUP"
                    .to_string(),
                scope: Scope::Mailbox,
            }
        }
        SendError::Permanent { status, reason } => DeliveryError::Permanent {
            status: match (status, provider) {
                (413, _) => Status::TOO_BIG,
                // Graph's 403 that is permanent: ErrorSendAsDenied.
                (403, Provider::Microsoft) => Status::POLICY,
                _ => Status::BAD_MESSAGE,
            },
            reason,
        },
        SendError::Unauthorized(reason) => DeliveryError::Credentials {
            account: account.name.clone(),
            reason: format!("the access token was refused even after a refresh ({reason})"),
            fix: match provider {
                Provider::Gmail => {
                    "check that the token was granted the gmail.send scope; run \
                                    `smtp2gmail authorize` again"
                }
                Provider::Microsoft => {
                    "check that the app has the application permission \
                                        Mail.Send with admin consent"
                }
            }
            .to_string(),
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
