//! Gmail accounts and the router that picks one per message.
//!
//! An account is everything needed to send as one Google identity: its token source, its rules
//! (send-as addresses, From and header-recipient policy) and its concurrency limit, which is shared
//! by every session (and later the queue) so that Gmail's per-user limit of about ten parallel
//! requests is never reached.

use crate::locks::lock;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::slots::SendSlots;

use crate::config::{AccountConfig, GmailConfig, MicrosoftAccountConfig};
use crate::google::{self, CredentialError, CredentialSpec, Credentials, TokenSource};
use crate::message::mailbox::{mailbox_key, matches_pattern};
use crate::message::recipient_rules::{Provider, SendPolicy};
use crate::relay::microsoft::RecipientBudget;
use crate::relay::{DeliveryError, Receipt, Scope};

/// Parallel sends per account unless configured: below the ~10 at which Gmail answers 429
/// "Too many concurrent requests for user".
pub const DEFAULT_CONCURRENT_SENDS: usize = 5;

/// Who a service account sends as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Impersonate {
    /// Refresh-token credentials: the token's own user.
    TokenUser,
    /// Service account: the envelope sender (restricted by `senders`).
    Sender,
    /// Service account: always this user.
    Fixed(String),
}

/// One Google identity that can send.
pub struct Account {
    /// The name in logs and errors ("default" for `[gmail]`).
    pub name: String,
    /// Envelope senders this account serves; empty = any.
    pub senders: Vec<String>,
    /// The Gmail `userId` in API paths.
    pub user_id: String,
    /// Access tokens for this account.
    pub tokens: Arc<TokenSource>,
    /// Who the token is for.
    pub impersonate: Impersonate,
    /// Recipient and From rules.
    pub policy: SendPolicy,
    /// Caps simultaneous sends per mailbox.
    pub sends: SendSlots,
    /// The cap itself, so the queue dispatches no more than can run.
    pub max_sends: usize,
    /// Setup problems Google reported when sending (not when issuing a token), by mailbox
    /// (`None`: the whole account), until a send to that mailbox succeeds: for `/readyz`.
    attention: Mutex<HashMap<Option<String>, Attention>>,
    /// The credentials file, for the `authorize` hint in errors.
    pub token_file: Option<PathBuf>,
    /// From addresses already warned about under `from_policy = "keep"`: one warning each.
    warned_from: Mutex<HashSet<String>>,
    /// Microsoft accounts: recipients per mailbox over a rolling day, counted before each send.
    pub budget: Option<RecipientBudget>,
    /// Microsoft accounts: Graph's concurrency per app, shared by the app's accounts.
    pub app_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// The account's settings, kept so its credentials can be loaded again the same way.
    settings: Settings,
}

/// Where an account's credentials are configured, to load them again on a reload.
#[derive(Debug, Clone)]
pub enum Settings {
    /// `[gmail]` or `[[gmail.accounts]]`.
    Gmail(Box<AccountConfig>),
    /// `[microsoft]` or `[[microsoft.accounts]]`, with `login_base`.
    Microsoft(Box<MicrosoftAccountConfig>, String),
}

/// What a provider's account is made of; [`Account::new`] adds the bookkeeping.
pub struct AccountParts {
    /// The account's name.
    pub name: String,
    /// Envelope senders it serves.
    pub senders: Vec<String>,
    /// The API's user or mailbox in paths.
    pub user_id: String,
    /// Its token source.
    pub tokens: Arc<TokenSource>,
    /// Whom it sends as.
    pub impersonate: Impersonate,
    /// Its recipient and From rules.
    pub policy: SendPolicy,
    /// Simultaneous sends per mailbox.
    pub max_sends: usize,
    /// A daily recipient budget per mailbox, if the provider has one.
    pub budget: Option<RecipientBudget>,
    /// A concurrency limit per app, if the provider has one.
    pub app_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Where its credentials are configured.
    pub settings: Settings,
}

impl Account {
    /// The user a token can be asked for without a message: `Some(None)` for the token's own user,
    /// `Some(Some(user))` for a service account with a fixed user, `None` when the user is each
    /// message's sender.
    pub fn probe_subject(&self) -> Option<Option<&str>> {
        match &self.impersonate {
            Impersonate::TokenUser => Some(None),
            Impersonate::Fixed(user) => Some(Some(user)),
            Impersonate::Sender => None,
        }
    }

    /// An account of `parts`, with no problem noted yet.
    pub fn new(parts: AccountParts) -> Account {
        Account {
            name: parts.name,
            senders: parts.senders,
            user_id: parts.user_id,
            tokens: parts.tokens,
            impersonate: parts.impersonate,
            policy: parts.policy,
            sends: SendSlots::new(parts.max_sends),
            max_sends: parts.max_sends,
            attention: Mutex::new(HashMap::new()),
            token_file: None,
            warned_from: Mutex::new(HashSet::new()),
            budget: parts.budget,
            app_slots: parts.app_slots,
            settings: parts.settings,
        }
    }

    /// Builds an account: loads and checks its credentials now, so a bad file stops the start.
    pub fn from_config(
        config: &AccountConfig,
        http: &reqwest::Client,
    ) -> Result<Account, AccountError> {
        let name = &config.name;
        let (spec, credentials) = load_credentials(config)?;
        let impersonate = match (
            credentials.is_service_account(),
            config.impersonate.as_deref(),
        ) {
            (false, None) => Impersonate::TokenUser,
            (false, Some(_)) => {
                return Err(AccountError::new(name, AccountProblem::ImpersonateNeedsKey));
            }
            (true, None | Some("sender")) if config.senders.is_empty() => {
                return Err(AccountError::new(name, AccountProblem::SendersNeeded));
            }
            (true, None | Some("sender")) => Impersonate::Sender,
            (true, Some(user)) => Impersonate::Fixed(user.to_string()),
        };
        let max_sends = config
            .max_concurrent_sends
            .unwrap_or(DEFAULT_CONCURRENT_SENDS);
        let (token_file, from_environment) = match &spec {
            CredentialSpec::File(path) => (Some(path.clone()), false),
            CredentialSpec::Environment => (None, true),
            CredentialSpec::Inline { .. } => (None, false),
        };
        let user_id = config.user_id.clone().or_else(|| {
            from_environment
                .then(|| std::env::var(google::ENV_USER_ID).ok())
                .flatten()
        });
        let mut account = Account::new(AccountParts {
            name: name.clone(),
            senders: config.senders.clone(),
            user_id: user_id.unwrap_or_else(|| "me".to_string()),
            tokens: Arc::new(TokenSource::new(name.clone(), credentials, http.clone())),
            impersonate,
            policy: SendPolicy {
                provider: Provider::Gmail,
                header_only_recipients: config.header_only_recipients.unwrap_or_default(),
                send_as: config.send_as.clone(),
                from_policy: config.from_policy.unwrap_or_default(),
            },
            max_sends,
            budget: None,
            app_slots: None,
            settings: Settings::Gmail(Box::new(config.clone())),
        });
        account.token_file = token_file;
        Ok(account)
    }

    /// Loads the credentials again from where the configuration says they are (file, `file:`
    /// and `env:` values, the environment), for a reload while the server runs. The account
    /// keeps using its current credentials until the caller hands these to
    /// [`TokenSource::replace`].
    pub fn load_credentials(&self) -> Result<Credentials, AccountError> {
        match &self.settings {
            Settings::Gmail(config) => load_credentials(config).map(|(_, credentials)| credentials),
            Settings::Microsoft(config, login_base) => {
                crate::relay::microsoft::load_credentials(config, login_base)
            }
        }
    }

    /// The files the credentials are read from: the `credentials` file and any `file:PATH`
    /// values. Watching them is how a token written by `authorize` reaches a running server.
    pub fn credential_files(&self) -> Vec<PathBuf> {
        let config = match &self.settings {
            Settings::Gmail(config) => config,
            Settings::Microsoft(config, _) => {
                let mut files = crate::microsoft::credential_files(
                    config.client_secret.as_deref(),
                    config.certificate.as_ref(),
                    config.private_key.as_ref().or(config.certificate.as_ref()),
                );
                files.extend(config.credentials.clone());
                return files;
            }
        };
        let secret_files = [
            &config.client_id,
            &config.client_secret,
            &config.refresh_token,
        ]
        .into_iter()
        .flatten()
        .filter_map(|value| value.strip_prefix("file:"))
        .map(PathBuf::from);
        config
            .credentials
            .iter()
            .cloned()
            .chain(secret_files)
            .collect()
    }

    /// True when this account may send for `sender`.
    pub fn serves(&self, sender: &str) -> bool {
        self.senders.is_empty() || self.senders.iter().any(|p| matches_pattern(p, sender))
    }

    /// The user a service-account token must be minted for; `None` for refresh tokens.
    pub fn subject<'a>(&'a self, sender: Option<&'a str>) -> Option<&'a str> {
        match &self.impersonate {
            Impersonate::TokenUser => None,
            Impersonate::Sender => sender,
            Impersonate::Fixed(user) => Some(user),
        }
    }

    /// The address mail sent through this account as `subject` (the user a service-account token
    /// is minted for) is from, as Gmail sees it: that user for a service account; for refresh-token
    /// credentials the token's own address when it is known (token.json's `account`, a `user_id`
    /// that is an address), else the first `send_as` address. `None` when none is known.
    pub fn address(&self, subject: Option<&str>) -> Option<String> {
        let address = |text: &str| text.contains('@').then(|| text.to_string());
        match &self.impersonate {
            Impersonate::Sender | Impersonate::Fixed(_) => subject.and_then(address),
            Impersonate::TokenUser => (self.tokens.credentials().account())
                .and_then(address)
                .or_else(|| address(&self.user_id))
                .or_else(|| self.policy.send_as.first().and_then(|a| address(a))),
        }
    }

    /// Remembers a setup problem from a send's outcome, or forgets it once a send to that
    /// mailbox works again.
    pub fn note_outcome(&self, subject: Option<&str>, outcome: &Result<Receipt, DeliveryError>) {
        let mut attention = lock(&self.attention);
        let mailbox = subject.map(crate::message::mailbox::mailbox_key);
        match outcome {
            Ok(_) => {
                attention.remove(&mailbox);
                attention.remove(&None);
            }
            Err(DeliveryError::Credentials {
                reason, fix, scope, ..
            }) => {
                let key = (*scope == Scope::Mailbox).then_some(mailbox).flatten();
                if !attention.contains_key(&key) {
                    // Once per problem, with the fix; each message's own log line does without.
                    tracing::warn!(
                        account = %self.name, mailbox = key.as_deref().unwrap_or("(all)"),
                        %reason, %fix, "setup needs attention"
                    );
                }
                let since = attention.get(&key).map_or(SystemTime::now(), |a| a.since);
                attention.insert(
                    key,
                    Attention {
                        since,
                        reason: reason.clone(),
                        fix: fix.clone(),
                    },
                );
            }
            Err(_) => {}
        }
    }

    /// The setup problems reported by sends and not yet cleared: `(mailbox, problem)`, where
    /// `None` means the whole account.
    pub fn attention(&self) -> Vec<(Option<String>, Attention)> {
        let attention = lock(&self.attention);
        attention
            .iter()
            .map(|(mailbox, problem)| (mailbox.clone(), problem.clone()))
            .collect()
    }

    /// True the first time `address` is reported; later calls stay quiet.
    pub fn first_warning_for(&self, address: &str) -> bool {
        let mut warned = lock(&self.warned_from);
        warned.insert(mailbox_key(address))
    }
}

/// A setup problem a send ran into, for readiness.
#[derive(Debug, Clone)]
pub struct Attention {
    /// When it was first seen (kept while it repeats).
    pub since: SystemTime,
    /// What Google said.
    pub reason: String,
    /// What to do about it.
    pub fix: String,
}

/// Why an account cannot be built or its credentials reloaded; the message names the account
/// and, for the usual first-run problems, the command that fixes them (`serve` stops on this
/// error, and the person reading it should not need `check` to learn what to do).
#[derive(Debug, thiserror::Error)]
#[error("account {account}: {problem}{}", .fix.as_ref().map(|fix| format!("; fix: {fix}")).unwrap_or_default())]
pub struct AccountError {
    /// The account's name.
    pub account: String,
    /// What is wrong with it, without the account's name (for `check`, which prints the name
    /// above it).
    pub problem: AccountProblem,
    /// What to do about it, when that is known without asking Google.
    pub fix: Option<String>,
}

impl AccountError {
    fn new(account: &str, problem: AccountProblem) -> Self {
        AccountError {
            account: account.to_string(),
            problem,
            fix: None,
        }
    }
}

/// The fix for the usual first-run problems: no token file yet, or no credentials at all.
fn first_run_fix(config: &AccountConfig) -> Option<String> {
    let authorize = |target: &str| {
        format!("smtp2gmail authorize --client-secret CLIENT_SECRET.json --token-file {target}")
    };
    match &config.credentials {
        Some(path) if !path.exists() => Some(format!(
            "create it with `{}`, or point credentials at the file you have",
            authorize(&path.display().to_string())
        )),
        Some(_) => None,
        None if config.client_id.is_none()
            && config.client_secret.is_none()
            && config.refresh_token.is_none() =>
        {
            Some(format!(
                "run `{}` and set credentials = \"token.json\" for the account, or set {}, {} and {}",
                authorize("token.json"),
                google::ENV_CLIENT_ID,
                google::ENV_CLIENT_SECRET,
                google::ENV_REFRESH_TOKEN
            ))
        }
        None => None,
    }
}

/// What is wrong with an account's configuration or credentials.
#[derive(Debug, thiserror::Error)]
pub enum AccountProblem {
    /// `impersonate` is set for credentials that are not a service account key.
    #[error("impersonate applies to service-account keys only")]
    ImpersonateNeedsKey,
    /// A service account impersonating the envelope sender with no `senders` to limit it.
    #[error(
        "a service account sending as the envelope sender can send as anyone in the domain; \
         list the allowed senders in `senders`"
    )]
    SendersNeeded,
    /// Some but not all of the inline credential keys are set.
    #[error("client_id, client_secret and refresh_token must be given together")]
    PartialInline,
    /// The credentials (file, secret, environment) cannot be loaded.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// A Microsoft account's app or credential is incomplete or unusable.
    #[error("{0}")]
    Microsoft(String),
}

/// Reads an account's credentials the way its configuration says; errors name the account.
fn load_credentials(config: &AccountConfig) -> Result<(CredentialSpec, Credentials), AccountError> {
    let fail = |problem| AccountError::new(&config.name, problem);
    let spec = credential_spec(config).map_err(fail)?;
    let token_uri = config.token_uri.as_deref().filter(|u| !u.is_empty());
    let credentials = google::load(&spec, token_uri).map_err(|err| AccountError {
        fix: first_run_fix(config),
        ..fail(err.into())
    })?;
    Ok((spec, credentials))
}

/// Where an account's credentials come from: a file, inline values, or the environment variables
/// django-gmailapi-backend users already have.
fn credential_spec(config: &AccountConfig) -> Result<CredentialSpec, AccountProblem> {
    if let Some(path) = &config.credentials {
        return Ok(CredentialSpec::File(path.clone()));
    }
    let resolve = google::resolve_secret;
    match (
        &config.client_id,
        &config.client_secret,
        &config.refresh_token,
    ) {
        (None, None, None) => Ok(CredentialSpec::Environment),
        (Some(id), Some(secret), Some(refresh)) => Ok(CredentialSpec::Inline {
            client_id: resolve(id)?.expose().to_string(),
            client_secret: resolve(secret)?,
            refresh_token: resolve(refresh)?,
        }),
        _ => Err(AccountProblem::PartialInline),
    }
}

/// Picks the account for each message.
#[derive(Default)]
pub struct Router {
    /// Named accounts, in configuration order.
    named: Vec<Arc<Account>>,
    /// The `[gmail]` account, when it has credentials (or there are no named accounts).
    default: Option<Arc<Account>>,
}

impl Router {
    /// Builds every configured account.
    pub fn from_config(
        config: &GmailConfig,
        http: &reqwest::Client,
    ) -> Result<Router, AccountError> {
        let (named, default) = Router::account_configs(config);
        let build = |account: &AccountConfig| Account::from_config(account, http).map(Arc::new);
        Ok(Router {
            named: named.iter().map(build).collect::<Result<_, _>>()?,
            default: default.as_ref().map(build).transpose()?,
        })
    }

    /// The settings of every account the configuration asks for, without loading anything: the
    /// named accounts (with the policy keys they inherit), and the `[gmail]` account when it has
    /// credentials of its own, the environment provides them, or there is no other account.
    /// `check` builds the accounts one by one from this, so one bad account does not hide the
    /// state of the others.
    pub fn account_configs(config: &GmailConfig) -> (Vec<AccountConfig>, Option<AccountConfig>) {
        let named: Vec<AccountConfig> = config
            .accounts
            .iter()
            .map(|account| config.inherit(account))
            .collect();
        let env_configured = std::env::var_os(google::ENV_REFRESH_TOKEN).is_some();
        let default = (config.has_own_credentials() || named.is_empty() || env_configured)
            .then(|| config.default_account());
        (named, default)
    }

    /// A router over accounts built elsewhere (Microsoft's): `named` are chosen by their
    /// senders, `default` serves the rest.
    pub fn of(named: Vec<Arc<Account>>, default: Option<Arc<Account>>) -> Router {
        Router { named, default }
    }

    /// The account with this name, if it still exists.
    pub fn account(&self, name: &str) -> Option<&Arc<Account>> {
        self.accounts().find(|a| a.name == name)
    }

    /// Every account, for `check` and status reports.
    pub fn accounts(&self) -> impl Iterator<Item = &Arc<Account>> {
        self.named.iter().chain(&self.default)
    }

    /// The account for a message: the first named account serving the envelope sender, else the
    /// first serving the From address, else the default account if it serves the sender.
    pub fn route(&self, sender: Option<&str>, from_header: Option<&str>) -> Option<&Arc<Account>> {
        let named_for = |address: Option<&str>| {
            let address = address?;
            self.named
                .iter()
                .find(|a| !a.senders.is_empty() && a.serves(address))
        };
        named_for(sender)
            .or_else(|| named_for(from_header))
            .or_else(|| {
                let default = self.default.as_ref()?;
                let claimed = sender.or(from_header);
                (default.senders.is_empty() || claimed.is_some_and(|s| default.serves(s)))
                    .then_some(default)
            })
    }
}
