//! The Microsoft 365 target: the same relay as Gmail's ([`Gmail`](super::Gmail): routing, the
//! shared recipient rules, the decision the queue stores, holds and readiness) with Microsoft's
//! accounts, tokens and API.
//!
//! An account is an Entra app registration sending through one mailbox (`mailbox`) or through
//! each envelope sender's own (`mailbox` empty, limited by `senders`). Its token source is the
//! one Gmail accounts use, with the client credentials grant ([`crate::microsoft`]); its limits
//! are Exchange Online's: concurrent sends per mailbox, Graph's concurrency per app, and a daily
//! recipient budget per mailbox ([`budget`]). The per-minute rate is the queue's pacing
//! (`queue.max_send_rate`, lowered to `max_messages_per_minute`).

pub mod budget;
pub mod graph;
pub mod smtp;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use super::gmail::Outgoing;
use super::gmail::accounts::{
    Account, AccountError, AccountParts, AccountProblem, Impersonate, Router, Settings,
};
use super::gmail::api::{SendError, Sent};
use crate::config::microsoft::{GRAPH_CONCURRENCY, RECIPIENTS_PER_DAY};
use crate::config::{LargeMessages, MicrosoftAccountConfig, MicrosoftConfig};
use crate::google::{Credentials, TokenError, TokenSource, resolve_secret};
use crate::locks::lock;
use crate::message::recipient_rules::{Provider, SendPolicy};
use crate::microsoft::delegated::USER_SMTP_SCOPE;
use crate::microsoft::{AppProof, Certificate, EntraApp, GRAPH_SCOPE, secret_source};
pub use budget::RecipientBudget;
use graph::GraphApi;
use smtp::{OUTLOOK_SCOPE, Submission};

/// What the relay needs to send through Microsoft: Graph and the size paths.
#[derive(Debug)]
pub struct Graph {
    /// Graph's sendMail.
    pub api: GraphApi,
    /// `large_messages = "smtp"`: where to submit.
    submission: Option<Submission>,
    /// App tokens for SMTP AUTH, per account and credentials generation.
    smtp_tokens: SmtpTokens,
    http: reqwest::Client,
    /// The largest Graph request (the base64 of a message).
    pub request_limit: u64,
    /// The path above it.
    pub large_messages: LargeMessages,
    /// The mailboxes' send size limit, the most the large path takes.
    pub mailbox_size_limit: u64,
}

impl Graph {
    /// From `[microsoft]`; the error names an unusable `smtp_ca`.
    pub fn from_config(config: &MicrosoftConfig, http: reqwest::Client) -> Result<Graph, String> {
        let submission = match config.large_messages {
            LargeMessages::Smtp => Some(Submission::new(
                &config.smtp_host,
                config.smtp_port,
                config.smtp_ca.as_deref(),
            )?),
            _ => None,
        };
        Ok(Graph {
            api: GraphApi::new(http.clone(), &config.graph_base),
            submission,
            smtp_tokens: SmtpTokens::default(),
            http,
            request_limit: config.graph_request_limit,
            large_messages: config.large_messages,
            mailbox_size_limit: config.mailbox_size_limit,
        })
    }

    /// The largest message one sendMail request takes.
    pub fn graph_message_limit(&self) -> u64 {
        graph::largest_message(self.request_limit)
    }

    /// The largest message any configured path takes: what is advertised as `SIZE` (less the
    /// room the recipient rules need) and checked before 250. The "upload" path is not built
    /// yet, so with it only Graph's own limit is promised: refusing at DATA beats accepting what
    /// cannot be sent (docs/microsoft-365.md).
    pub fn upload_limit(&self) -> u64 {
        match self.large_messages {
            LargeMessages::Smtp => self.mailbox_size_limit.max(self.graph_message_limit()),
            LargeMessages::Upload | LargeMessages::None => self.graph_message_limit(),
        }
    }

    /// A warning for the startup log when the configured large path is not available.
    pub fn large_path_warning(&self) -> Option<String> {
        (self.large_messages == LargeMessages::Upload).then(|| {
            format!(
                "microsoft.large_messages = {:?} is not available in this version: messages \
                 above {} bytes (one Graph request) are refused with 552 at DATA",
                self.large_messages,
                self.graph_message_limit()
            )
        })
    }
}

impl Graph {
    /// Sends `outgoing` through its mailbox: with sendMail while its request fits, else on the
    /// configured large path.
    pub async fn send(&self, outgoing: &Outgoing, access_token: &str) -> Result<Sent, SendError> {
        let account = &outgoing.account;
        let mailbox = outgoing.subject.as_deref().unwrap_or(&account.user_id);
        let upload = &outgoing.upload;
        if graph::request_len(upload.len()) <= self.request_limit {
            // A user's own token sends through /me: the mailbox is whoever signed in.
            let user = (account.impersonate != Impersonate::TokenUser).then_some(mailbox);
            return self.api.send_mail(user, access_token, upload).await;
        }
        if let Some(submission) = &self.submission {
            let tokens = self.smtp_tokens.source(account, &self.http);
            let token = tokens
                .access_token(None)
                .await
                .map_err(smtp_token_failure)?;
            let rcpt_to = &outgoing.rcpt_to;
            submission
                .submit(mailbox, token.expose(), rcpt_to, upload)
                .await?;
            return Ok(Sent {
                id: graph::guid(),
                thread_id: None,
            });
        }
        // The decision at DATA refuses what no configured path takes; what reaches here is for
        // a path this version cannot take yet.
        Err(SendError::Permanent {
            status: 413,
            reason: format!(
                "the message ({} bytes) is larger than one Microsoft Graph request takes ({} \
                 bytes), and large_messages = {:?} is not available in this version; set \
                 large_messages = \"none\" to refuse such messages at DATA",
                upload.len(),
                self.graph_message_limit(),
                self.large_messages
            ),
        })
    }
}

/// App tokens for SMTP AUTH: the account's Entra app asking for Exchange Online's resource
/// instead of Graph's, rebuilt when the account's credentials change (a new secret reaches both
/// paths without anything else to reload).
#[derive(Debug, Default)]
struct SmtpTokens(Mutex<HashMap<String, (u64, Arc<TokenSource>)>>);

impl SmtpTokens {
    fn source(&self, account: &Account, http: &reqwest::Client) -> Arc<TokenSource> {
        let generation = account.tokens.generation();
        let mut sources = lock(&self.0);
        if let Some((built, source)) = sources.get(&account.name)
            && *built == generation
        {
            return source.clone();
        }
        let credentials = account
            .tokens
            .credentials()
            .with_entra_scope(OUTLOOK_SCOPE, USER_SMTP_SCOPE);
        let source = Arc::new(TokenSource::new(&account.name, credentials, http.clone()));
        sources.insert(account.name.clone(), (generation, source.clone()));
        source
    }
}

/// A refused SMTP token is the app's setup (SMTP.SendAsApp), held like Graph's.
fn smtp_token_failure(err: TokenError) -> SendError {
    match err {
        TokenError::Credentials {
            error,
            description,
            fix,
        } => SendError::Configuration {
            reason: format!("Microsoft refused a token for SMTP AUTH ({error}: {description})"),
            fix,
            mailbox: false,
        },
        other => SendError::Temporary {
            reason: format!("no token for SMTP AUTH: {other}"),
            retry_after: None,
            cause: crate::relay::Cause::Outage,
        },
    }
}

/// Builds every configured Microsoft account: loads and checks each app's credential now, so a
/// bad secret reference or certificate stops the start.
pub fn router(config: &MicrosoftConfig, http: &reqwest::Client) -> Result<Router, AccountError> {
    let mut app_slots: HashMap<(String, String), Arc<Semaphore>> = HashMap::new();
    let mut named = Vec::new();
    let mut default = None;
    let configs = config.account_configs();
    let has_default = configs.len() > config.accounts.len();
    for (index, account) in configs.iter().enumerate() {
        let key = (
            account.tenant.clone().unwrap_or_default(),
            account.client_id.clone().unwrap_or_default(),
        );
        let slots = app_slots
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(config.graph_concurrency)))
            .clone();
        let built = Arc::new(account_from_config(
            account,
            &config.login_base,
            http,
            slots,
        )?);
        if has_default && index == configs.len() - 1 {
            default = Some(built);
        } else {
            named.push(built);
        }
    }
    Ok(Router::of(named, default))
}

/// One account as the server builds it, for `check` (its own app slots: it sends nothing).
pub fn account(
    config: &MicrosoftAccountConfig,
    login_base: &str,
    http: &reqwest::Client,
) -> Result<Account, AccountError> {
    let slots = Arc::new(Semaphore::new(GRAPH_CONCURRENCY));
    account_from_config(config, login_base, http, slots)
}

/// One account.
fn account_from_config(
    config: &MicrosoftAccountConfig,
    login_base: &str,
    http: &reqwest::Client,
    app_slots: Arc<Semaphore>,
) -> Result<Account, AccountError> {
    let credentials = load_credentials(config, login_base)?;
    let mailbox = config.mailbox.clone().filter(|m| !m.is_empty());
    let delegated = config.credentials.is_some();
    let impersonate = match &mailbox {
        Some(_) if delegated => {
            return Err(problem(
                config,
                "a user's token file (credentials) sends as that user through /me: remove mailbox",
            ));
        }
        None if delegated => Impersonate::TokenUser,
        Some(mailbox) => Impersonate::Fixed(mailbox.clone()),
        None if config.senders.is_empty() => {
            return Err(problem(
                config,
                "an app sending through each envelope sender's mailbox can send as anyone in the \
                 tenant: set mailbox, or list the allowed senders in senders",
            ));
        }
        None => Impersonate::Sender,
    };
    Ok(Account::new(AccountParts {
        name: config.name.clone(),
        senders: config.senders.clone(),
        // The signed-in user's address (the daily budget counts against it), else Graph's "me".
        user_id: mailbox
            .or_else(|| delegated.then(|| credentials.account().unwrap_or("me").to_string()))
            .unwrap_or_default(),
        tokens: Arc::new(TokenSource::new(
            config.name.clone(),
            credentials,
            http.clone(),
        )),
        impersonate,
        policy: SendPolicy {
            provider: Provider::Microsoft,
            header_only_recipients: config.header_only_recipients.unwrap_or_default(),
            send_as: config.send_as.clone(),
            from_policy: config.from_policy.unwrap_or_default(),
        },
        max_sends: config.max_concurrent_sends.unwrap_or(GRAPH_CONCURRENCY),
        budget: Some(RecipientBudget::new(
            config.max_recipients_per_day.unwrap_or(RECIPIENTS_PER_DAY),
        )),
        app_slots: Some(app_slots),
        settings: Settings::Microsoft(Box::new(config.clone()), login_base.to_string()),
    }))
}

/// Reads an account's app credential the way its configuration says (again, on a reload).
pub fn load_credentials(
    config: &MicrosoftAccountConfig,
    login_base: &str,
) -> Result<Credentials, AccountError> {
    if let Some(file) = &config.credentials {
        return crate::microsoft::delegated::load_token_file(file, login_base).map_err(|err| {
            AccountError {
                account: config.name.clone(),
                problem: AccountProblem::Credentials(err),
                fix: Some(crate::microsoft::authorize_user_again(file)),
            }
        });
    }
    let (Some(tenant), Some(client_id)) = (&config.tenant, &config.client_id) else {
        return Err(problem(
            config,
            "tenant and client_id are needed (the app registration's directory and application ids)",
        ));
    };
    let proof = match (&config.certificate, &config.client_secret) {
        (Some(certificate), _) => {
            let key = config.private_key.as_ref().unwrap_or(certificate);
            let loaded = Certificate::load(certificate, key)
                .map_err(|err| problem(config, &err.to_string()))?;
            AppProof::Certificate(loaded)
        }
        (None, Some(secret)) => AppProof::Secret {
            secret: resolve_secret(secret).map_err(|err| AccountError {
                account: config.name.clone(),
                problem: AccountProblem::Credentials(err),
                fix: None,
            })?,
            source: secret_source(secret),
        },
        (None, None) => {
            return Err(problem(
                config,
                "no credential: set client_secret (\"env:NAME\" or \"file:PATH\") or certificate \
                 (with private_key)",
            ));
        }
    };
    let app = EntraApp {
        tenant: tenant.clone(),
        client_id: client_id.clone(),
        proof,
        scope: GRAPH_SCOPE.to_string(),
    };
    let token_uri = app.token_uri(login_base);
    Ok(Credentials::entra_app(app, token_uri))
}

fn problem(config: &MicrosoftAccountConfig, what: &str) -> AccountError {
    AccountError {
        account: config.name.clone(),
        problem: AccountProblem::Microsoft(what.to_string()),
        fix: None,
    }
}
