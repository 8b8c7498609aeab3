//! The configuration file: one struct tree deserialised from TOML, with defaults for every key.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default), and every error names
//! the file, the line and the key, so the operator can fix it without guessing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Declares an account struct of a provider's table: `$fields` (the provider's own keys), then
/// the keys of the recipient and From rules every provider's accounts share, so that `[gmail]`
/// and `[microsoft]` (and their named accounts) cannot drift apart. `FromPolicy` and
/// `HeaderOnlyRecipients` resolve where it is used.
macro_rules! account_with_rules {
    ($(#[$meta:meta])* pub struct $name:ident { $($fields:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $($fields)*
            /// Envelope senders this account serves (`user@domain` or `*@domain`); empty = any.
            pub senders: Vec<String>,
            /// From addresses the provider keeps for this account (the account itself, its
            /// verified aliases or Send As grants).
            pub send_as: Vec<String>,
            /// What to do with a From address not in `send_as`.
            #[serde(skip_serializing_if = "Option::is_none")]
            pub from_policy: Option<FromPolicy>,
            /// What to do with header recipients that are not envelope recipients.
            #[serde(skip_serializing_if = "Option::is_none")]
            pub header_only_recipients: Option<HeaderOnlyRecipients>,
            /// Most simultaneous sends per mailbox (Gmail answers 429 at about 10).
            #[serde(skip_serializing_if = "Option::is_none")]
            pub max_concurrent_sends: Option<usize>,
        }
    };
}

pub mod gmail;
mod inbox;
pub mod microsoft;
mod notify;
mod queue;
mod smtp;

pub use gmail::{AccountConfig, FromPolicy, GmailConfig, HeaderOnlyRecipients};
pub use inbox::InboxConfig;
pub use microsoft::{LargeMessages, MicrosoftAccountConfig, MicrosoftConfig};
pub use notify::{NotifyConfig, WebhookConfig};
pub use queue::{DatabaseUrl, MIN_LEASE_TIME, QueueBackend, RootCerts, SslMode, UrlError};
pub use smtp::{AuthWithoutTls, SmtpConfig, TlsConfig, UserConfig};

/// Gmail's upload limit for `users.messages.send` (35 MiB); also our default SMTP `SIZE`.
pub const GMAIL_MAX_MESSAGE_SIZE: u64 = 36_700_160;

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The SMTP listener.
    pub smtp: SmtpConfig,
    /// Which delivery target accepted mail goes to.
    pub relay: RelayConfig,
    /// Console mode output.
    pub console: ConsoleConfig,
    /// File mode output.
    pub file: FileConfig,
    /// Gmail mode: accounts, credentials, recipient and From rules.
    pub gmail: GmailConfig,
    /// Microsoft mode: Entra apps, mailboxes, the same recipient and From rules, limits.
    pub microsoft: MicrosoftConfig,
    /// The durable queue (gmail mode with `relay.delivery = "queue"`).
    pub queue: QueueConfig,
    /// The operator's HTTP endpoints.
    pub http: HttpConfig,
    /// The development inbox (console and file modes).
    pub inbox: InboxConfig,
    /// DSNs to senders and events to webhooks when queued mail cannot be delivered.
    pub notify: NotifyConfig,
}

/// `[http]`: `/healthz`, `/readyz`, `/metrics`, and the inbox in console and file modes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The address to serve on; `""` turns the endpoints off.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9925".to_string(),
        }
    }
}

impl HttpConfig {
    /// The address, or `None` when the endpoints are off.
    pub fn address(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

/// `[relay]`: where mail goes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// The delivery target.
    pub mode: RelayMode,
    /// Gmail mode: answer 250 once queued on disk, or only after Gmail accepted the message.
    pub delivery: Delivery,
}

/// When the client gets its 250 in gmail mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// Once the message is fsynced in the spool; delivered in the background with retries.
    #[default]
    Queue,
    /// Only after Gmail answered 200 (the reply carries Gmail's id); nothing is stored.
    Sync,
}

/// `[queue]`: the spool and the retry schedule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// The spool directory (created if missing).
    pub dir: PathBuf,
    /// A message still undelivered after this long becomes a dead letter.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// The wait after the first failed attempt; doubled after each further one.
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    /// The longest wait between attempts.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Most sends per second per Gmail mailbox: 1.0 fits the quota of Cloud projects created
    /// since 1 May 2026 (6,000 units per user per minute, 100 per send); older projects have
    /// 15,000 (2.5 per second). Lowered on its own after rate-limit answers, regained gradually.
    pub max_send_rate: f64,
    /// How long a transaction that names only some of its header recipients is held for the other
    /// transactions of the same message (an MTA splitting a long recipient list); zero turns
    /// holding off.
    #[serde(with = "humantime_serde")]
    pub split_window: Duration,
    /// Where messages are kept: the spool in `dir`, or PostgreSQL at `url`.
    pub backend: QueueBackend,
    /// With `backend = "postgres"`: a `postgres://` URL, or `env:NAME` / `file:PATH` holding one.
    pub url: String,
    /// With `backend = "postgres"`: how long a replica's claim on a message lasts without
    /// renewal, so the messages of a replica that died are sent by another after at most this.
    #[serde(with = "humantime_serde")]
    pub lease_time: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            dir: PathBuf::from("spool"),
            max_age: Duration::from_secs(5 * 24 * 3600),
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            max_send_rate: 1.0,
            split_window: Duration::from_secs(15 * 60),
            backend: QueueBackend::Spool,
            url: String::new(),
            lease_time: Duration::from_secs(60),
        }
    }
}

/// The delivery targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// Print each message on stdout (the development catch-all).
    #[default]
    Console,
    /// Store each message as `<id>.eml` + `<id>.json` in `[file] dir`.
    File,
    /// Accept and drop (load tests).
    Discard,
    /// Send through the Gmail API.
    Gmail,
    /// Send through Microsoft Graph (and Exchange Online SMTP for large messages).
    Microsoft,
}

impl RelayMode {
    /// True for the modes that send through a mail provider's API (gmail, microsoft): accounts,
    /// credentials, the queue.
    pub fn is_provider(self) -> bool {
        matches!(self, RelayMode::Gmail | RelayMode::Microsoft)
    }
}

/// `[console]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// How each message is printed.
    pub format: ConsoleFormat,
}

/// How console mode prints a message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleFormat {
    /// Envelope, main headers, decoded text body, attachment list.
    #[default]
    Summary,
    /// The exact received bytes.
    Raw,
}

/// `[file]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// The directory messages are written to (created if missing).
    pub dir: PathBuf,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            dir: PathBuf::from("mail"),
        }
    }
}

/// Why a configuration could not be loaded. The message is meant for the operator as it stands.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a key has a bad value or name.
    #[error("{path}:{line}:{column}: {key}{message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column of the offending text.
        column: usize,
        /// The dotted key, followed by ": ", or empty when the error is not about one key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The values parse but make no sense together.
    #[error("{path}: {key}: {message}")]
    Semantic {
        /// The file, or "built-in defaults".
        path: PathBuf,
        /// The dotted key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Loads the configuration: `path` if given, else `./config.toml` if it exists, else the
    /// built-in defaults. Returns the config and where it came from (for the startup log line).
    pub fn load(path: Option<&Path>) -> Result<(Config, Option<PathBuf>), ConfigError> {
        let path = match path {
            Some(path) => Some(path.to_path_buf()),
            None => Some(PathBuf::from("config.toml")).filter(|p| p.exists()),
        };
        let config = match &path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Config::parse(&text, path)?
            }
            None => Config::default(),
        };
        Ok((config, path))
    }

    /// Parses configuration text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |span: Option<std::ops::Range<usize>>, key: String, message: String| {
            let offset = span.map_or(0, |s| s.start).min(text.len());
            let before = &text[..offset];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                key,
                message,
            }
        };
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| invalid(e.span(), String::new(), e.message().to_string()))?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." {
                String::new()
            } else {
                format!("{key}: ")
            };
            let inner = e.into_inner();
            invalid(inner.span(), key, inner.message().to_string())
        })?;
        config.validate().map_err(|broken| {
            let key = broken.key;
            match broken.span(text) {
                Some(span) => invalid(Some(span), format!("{key}: "), broken.message),
                // A key left at its default is not in the file: name the key alone.
                None => ConfigError::Semantic {
                    path: path.to_path_buf(),
                    key,
                    message: broken.message,
                },
            }
        })?;
        Ok(config)
    }

    /// Replaces the listening addresses with those given on the command line (`serve --listen`,
    /// `--http-listen`) and checks the rules again: a listener moved off loopback must meet the
    /// same rules (AUTH, the inbox's password) as one written in the file.
    pub fn override_listeners(
        &mut self,
        smtp: Vec<SocketAddr>,
        http: Option<String>,
    ) -> Result<(), ConfigError> {
        if !smtp.is_empty() {
            self.smtp.listen = smtp;
        }
        if let Some(http) = http {
            self.http.listen = http;
        }
        self.validate().map_err(|broken| ConfigError::Semantic {
            path: PathBuf::from("the command line (--listen, --http-listen) with the config"),
            key: broken.key,
            message: broken.message,
        })
    }

    /// The rules between keys, checked once every value has parsed.
    fn validate(&self) -> Result<(), Broken> {
        self.smtp.validate()?;
        if !self.http.listen.is_empty() && self.http.address().is_none() {
            // Parsed as an address or not served at all: a host name here would otherwise turn
            // the endpoints (and the inbox) off without a word.
            return Err(Broken::new(
                "http.listen",
                "must be an IP address and port such as \"127.0.0.1:9925\" (or \"\" to turn the \
                 HTTP endpoints off)",
            ));
        }
        self.validate_inbox()?;
        self.validate_release()?;
        let rate = self.queue.max_send_rate;
        if !(rate.is_finite() && rate >= 1.0 / 3600.0) {
            return Err(Broken::new(
                "queue.max_send_rate",
                "must be a number of sends per second of at least 1/3600 (one an hour)",
            ));
        }
        if self.queue.split_window > self.queue.max_age {
            // A held transaction would outlive what the queue promises for any message.
            return Err(Broken::new(
                "queue.split_window",
                "must not be longer than queue.max_age",
            ));
        }
        self.queue.validate_backend()?;
        self.validate_notify()?;
        if self.relay.mode == RelayMode::Microsoft
            && self.smtp.max_recipients > microsoft::MAX_RECIPIENTS_PER_MESSAGE
        {
            return Err(Broken::new(
                "smtp.max_recipients",
                "must be at most 500 in microsoft mode (Exchange Online's per-message limit)",
            ));
        }
        self.microsoft
            .validate()
            .map_err(|(key, message)| Broken::new(key, &message))?;
        self.gmail
            .validate()
            .map_err(|(key, message)| Broken::new(key, &message))
    }
}

/// A rule broken by values that each parsed on their own. [`Config::parse`] points at the key in
/// the text (at the entry, for a list), so these errors name a line like every other.
#[derive(Debug)]
pub(crate) struct Broken {
    /// The dotted key.
    key: &'static str,
    /// The entry of a list value at fault, when it is one entry.
    entry: Option<usize>,
    /// What is wrong.
    message: String,
}

impl Broken {
    /// The rule about `key` that is broken, and how.
    pub(crate) fn new(key: &'static str, message: &str) -> Broken {
        Broken {
            key,
            entry: None,
            message: message.to_string(),
        }
    }

    /// Points at one entry of the list `key` holds.
    pub(crate) fn at_entry(mut self, entry: usize) -> Broken {
        self.entry = Some(entry);
        self
    }

    /// Where in `text` the key (or its entry) is, if it is written there at all.
    fn span(&self, text: &str) -> Option<std::ops::Range<usize>> {
        let document = toml::de::DeTable::parse(text).ok()?;
        let mut table = document.get_ref();
        let mut parts = self.key.split('.').peekable();
        while let Some(part) = parts.next() {
            let (key, value) = table.get_key_value(part)?;
            if parts.peek().is_some() {
                table = value.get_ref().as_table()?;
                continue;
            }
            return match self.entry {
                None => Some(key.span()),
                Some(entry) => Some(value.get_ref().get(entry)?.span()),
            };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dotted names of every key in a TOML table (arrays of tables count as their keys).
    fn keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (key, value) in table {
            let name = format!("{prefix}{key}");
            match value {
                toml::Value::Table(inner) => keys(inner, &format!("{name}."), out),
                toml::Value::Array(items)
                    if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
                {
                    for item in items {
                        keys(item.as_table().unwrap(), &format!("{name}."), out);
                    }
                }
                _ => out.push(name),
            }
        }
        out.sort();
        out.dedup();
    }

    /// A configuration with every optional key set, so that serialising it names every key.
    /// Struct literals without `..`: adding a field breaks this until the docs are updated too.
    fn every_key() -> Vec<String> {
        let account = |name: &str| AccountConfig {
            name: name.to_string(),
            credentials: Some("token.json".into()),
            client_id: Some("x".into()),
            client_secret: Some("x".into()),
            refresh_token: Some("x".into()),
            user_id: Some("me".into()),
            token_uri: Some("x".into()),
            senders: vec![],
            send_as: vec![],
            from_policy: Some(FromPolicy::Keep),
            header_only_recipients: Some(HeaderOnlyRecipients::Reject),
            impersonate: Some("sender".into()),
            max_concurrent_sends: Some(1),
        };
        let a = account("a");
        let gmail = GmailConfig {
            api_base: "x".into(),
            accounts: vec![account("b")],
            credentials: a.credentials,
            client_id: a.client_id,
            client_secret: a.client_secret,
            refresh_token: a.refresh_token,
            user_id: a.user_id,
            token_uri: a.token_uri,
            senders: a.senders,
            send_as: a.send_as,
            from_policy: a.from_policy,
            header_only_recipients: a.header_only_recipients,
            impersonate: a.impersonate,
            max_concurrent_sends: a.max_concurrent_sends,
        };
        let microsoft = microsoft::every_key();
        let config = Config {
            microsoft,
            smtp: SmtpConfig {
                spill_dir: Some("x".into()),
                auth_required: Some(true),
                tls: Some(TlsConfig {
                    cert: "x".into(),
                    key: "x".into(),
                }),
                users: vec![UserConfig {
                    name: "x".into(),
                    password_hash: "x".into(),
                    senders: vec!["x".into()],
                }],
                ..SmtpConfig::default()
            },
            gmail,
            inbox: InboxConfig {
                allowed_hosts: vec!["x".into()],
                auth_required: true,
                ..InboxConfig::default()
            },
            notify: NotifyConfig {
                bounce_to: vec!["x".into()],
                webhooks: vec![WebhookConfig {
                    url: "x".into(),
                    events: vec![],
                    secret: "x".into(),
                }],
                ..NotifyConfig::default()
            },
            ..Config::default()
        };
        let mut all = Vec::new();
        keys(&toml::Table::try_from(config).unwrap(), "", &mut all);
        all
    }

    #[test]
    fn example_shows_the_defaults_and_every_key() {
        let text = include_str!("../../config.toml.example");
        let parsed = Config::parse(text, Path::new("config.toml.example")).unwrap();
        assert_eq!(
            parsed,
            Config::default(),
            "the example must show the defaults"
        );
        for key in every_key() {
            let leaf = key.rsplit('.').next().unwrap();
            let shown = text.lines().any(|line| {
                let line = line.trim_start_matches('#').trim_start();
                line.starts_with(&format!("{leaf} = "))
            });
            assert!(shown, "config.toml.example does not show {key}");
        }
    }

    #[test]
    fn reference_documents_every_key() {
        let reference = include_str!("../../docs/configuration.md");
        for key in every_key() {
            assert!(
                reference.contains(&format!("`{key}`")),
                "docs/configuration.md lacks {key}"
            );
        }
    }

    #[test]
    fn a_split_window_longer_than_max_age_is_refused() {
        let text = "[queue]\nmax_age = \"1h\"\nsplit_window = \"2h\"\n";
        let err = Config::parse(text, Path::new("c.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.toml:3:1: queue.split_window: must not be longer than queue.max_age"
        );
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(
            Config::parse("", Path::new("x.toml")).unwrap(),
            Config::default()
        );
    }
}
