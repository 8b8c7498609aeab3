//! `[microsoft]` and `[[microsoft.accounts]]`: which Entra app registrations send, as which
//! Exchange Online mailboxes, with the same recipient and From rules as `[gmail]`.
//!
//! The `[microsoft]` table is itself an account (the default one) and holds what named accounts
//! inherit: unlike Gmail, where every account is its own Google identity, several mailboxes
//! usually send through one app registration, so the app (tenant, client id, secret or
//! certificate) is inherited as well as the policy and the limits. `senders`, `mailbox` and
//! `send_as` belong to each account.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{FromPolicy, HeaderOnlyRecipients};

/// Microsoft Graph's base URL; tests point `graph_base` at a fake.
pub const GRAPH_BASE: &str = "https://graph.microsoft.com";
/// The Microsoft identity platform's base URL; tests point `login_base` at a fake.
pub const LOGIN_BASE: &str = "https://login.microsoftonline.com";
/// Exchange Online's per-mailbox sending rate (messages per minute).
pub const MESSAGES_PER_MINUTE: u32 = 30;
/// Exchange Online's per-mailbox recipient limit over a rolling 24 hours.
pub const RECIPIENTS_PER_DAY: u32 = 10_000;
/// Exchange Online's per-message recipient limit.
pub const MAX_RECIPIENTS_PER_MESSAGE: usize = 500;
/// Graph's request limit ("The maximum request length supported is 4MB"): the exact number is
/// not documented (microsoft.md), so this errs low and is a setting.
pub const GRAPH_REQUEST_LIMIT: u64 = 4_000_000;
/// Concurrent Graph requests per app: 4 in Microsoft's throttling text (per app and mailbox in
/// older text, per app in newer: the stricter reading).
pub const GRAPH_CONCURRENCY: usize = 4;
/// Exchange Online's default send size limit for a mailbox (35 MB).
pub const MAILBOX_SEND_LIMIT: u64 = 36_700_160;

/// How a message larger than one Graph request goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LargeMessages {
    /// SMTP submission with XOAUTH2 to Exchange Online (byte-exact; needs SMTP AUTH enabled).
    #[default]
    Smtp,
    /// A Graph draft and an upload session (needs Mail.ReadWrite; Exchange rebuilds the MIME).
    Upload,
    /// None: larger messages are refused with 552 at DATA.
    None,
}

/// Declares a struct with the keys every Microsoft account has, plus `$extra` fields, so that
/// `[microsoft]` and `[[microsoft.accounts]]` cannot drift apart.
macro_rules! microsoft_account_struct {
    ($(#[$meta:meta])* pub struct $name:ident { $($extra:tt)* }) => {
        account_with_rules! {
            $(#[$meta])*
            pub struct $name {
                $($extra)*
                /// The directory (tenant) id or a verified domain such as `contoso.onmicrosoft.com`.
                #[serde(skip_serializing_if = "Option::is_none")]
                pub tenant: Option<String>,
                /// The app registration's application (client) id.
                #[serde(skip_serializing_if = "Option::is_none")]
                pub client_id: Option<String>,
                /// A client secret; may be `env:NAME` or `file:PATH` (a file is watched).
                #[serde(skip_serializing_if = "Option::is_none")]
                pub client_secret: Option<String>,
                /// A PEM certificate uploaded to the app registration: a signed assertion is sent
                /// instead of a secret (preferred).
                #[serde(skip_serializing_if = "Option::is_none")]
                pub certificate: Option<PathBuf>,
                /// The certificate's PEM private key (RSA); default: the `certificate` file itself.
                #[serde(skip_serializing_if = "Option::is_none")]
                pub private_key: Option<PathBuf>,
                /// A user's token file written by `smtp2gmail authorize --microsoft`: mail is sent
                /// as that user (delegated `Mail.Send`, `/me/sendMail`) instead of as the app.
                #[serde(skip_serializing_if = "Option::is_none")]
                pub credentials: Option<PathBuf>,
                /// The mailbox mail is sent through (`/users/{mailbox}/sendMail`); empty or unset:
                /// the envelope sender's own mailbox.
                #[serde(skip_serializing_if = "Option::is_none")]
                pub mailbox: Option<String>,
                /// Most messages a minute per mailbox (Exchange Online: 30).
                #[serde(skip_serializing_if = "Option::is_none")]
                pub max_messages_per_minute: Option<u32>,
                /// Most recipients per mailbox over a rolling 24 hours (Exchange Online: 10,000);
                /// further mail waits in the queue instead of coming back as an NDR.
                #[serde(skip_serializing_if = "Option::is_none")]
                pub max_recipients_per_day: Option<u32>,
            }
        }
    };
}

microsoft_account_struct! {
    /// `[microsoft]`: the default account and the settings named accounts inherit.
    pub struct MicrosoftConfig {
        /// Graph's base URL.
        pub graph_base: String,
        /// The identity platform's base URL (the token endpoint is `{login_base}/{tenant}/oauth2/v2.0/token`).
        pub login_base: String,
        /// The path for messages larger than one Graph request.
        pub large_messages: LargeMessages,
        /// The largest Graph request, in bytes (the base64 of the message).
        pub graph_request_limit: u64,
        /// Concurrent Graph requests per app.
        pub graph_concurrency: usize,
        /// The mailboxes' send size limit, for the large path (Exchange Online default: 35 MB).
        pub mailbox_size_limit: u64,
        /// `large_messages = "smtp"`: Exchange Online's SMTP submission host.
        pub smtp_host: String,
        /// `large_messages = "smtp"`: its port (STARTTLS).
        pub smtp_port: u16,
        /// `large_messages = "smtp"`: CA certificates (PEM) trusted besides the public ones.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub smtp_ca: Option<PathBuf>,
        /// Further accounts, chosen by envelope sender or From header.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        pub accounts: Vec<MicrosoftAccountConfig>,
    }
}

microsoft_account_struct! {
    /// `[[microsoft.accounts]]`: one more account (mailbox or set of senders).
    #[derive(Default)]
    pub struct MicrosoftAccountConfig {
        /// A name for logs, errors and metrics.
        pub name: String,
    }
}

impl Default for MicrosoftConfig {
    fn default() -> Self {
        MicrosoftConfig {
            graph_base: GRAPH_BASE.to_string(),
            login_base: LOGIN_BASE.to_string(),
            large_messages: LargeMessages::default(),
            graph_request_limit: GRAPH_REQUEST_LIMIT,
            graph_concurrency: GRAPH_CONCURRENCY,
            mailbox_size_limit: MAILBOX_SEND_LIMIT,
            smtp_host: "smtp.office365.com".to_string(),
            smtp_port: 587,
            smtp_ca: None,
            accounts: Vec::new(),
            tenant: None,
            client_id: None,
            client_secret: None,
            certificate: None,
            private_key: None,
            credentials: None,
            mailbox: None,
            senders: Vec::new(),
            send_as: Vec::new(),
            from_policy: None,
            header_only_recipients: None,
            max_concurrent_sends: None,
            max_messages_per_minute: None,
            max_recipients_per_day: None,
        }
    }
}

impl MicrosoftConfig {
    /// The settings of the `[microsoft]` table itself, as an account named "default".
    pub fn default_account(&self) -> MicrosoftAccountConfig {
        MicrosoftAccountConfig {
            name: "default".to_string(),
            tenant: self.tenant.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            certificate: self.certificate.clone(),
            private_key: self.private_key.clone(),
            credentials: self.credentials.clone(),
            mailbox: self.mailbox.clone(),
            senders: self.senders.clone(),
            send_as: self.send_as.clone(),
            from_policy: self.from_policy,
            header_only_recipients: self.header_only_recipients,
            max_concurrent_sends: self.max_concurrent_sends,
            max_messages_per_minute: self.max_messages_per_minute,
            max_recipients_per_day: self.max_recipients_per_day,
        }
    }

    /// A named account with what it leaves unset taken from `[microsoft]`: the app and its
    /// credential, the policy and the limits; never the senders, mailbox, send-as addresses or a
    /// user's token file (`credentials`: one user's mailbox is one account's).
    pub fn inherit(&self, account: &MicrosoftAccountConfig) -> MicrosoftAccountConfig {
        let own_credential = account.client_secret.is_some()
            || account.certificate.is_some()
            || account.credentials.is_some();
        let defaults = self.default_account();
        let mut merged = account.clone();
        merged.tenant = merged.tenant.or(defaults.tenant);
        merged.client_id = merged.client_id.or(defaults.client_id);
        if !own_credential {
            merged.client_secret = defaults.client_secret;
            merged.certificate = defaults.certificate;
            merged.private_key = defaults.private_key;
        }
        merged.from_policy = merged.from_policy.or(self.from_policy);
        merged.header_only_recipients = merged
            .header_only_recipients
            .or(self.header_only_recipients);
        merged.max_concurrent_sends = merged.max_concurrent_sends.or(self.max_concurrent_sends);
        merged.max_messages_per_minute = merged
            .max_messages_per_minute
            .or(self.max_messages_per_minute);
        merged.max_recipients_per_day = merged
            .max_recipients_per_day
            .or(self.max_recipients_per_day);
        merged
    }

    /// Every account's settings: the named accounts (merged with `[microsoft]`), then the
    /// `[microsoft]` account itself when there is no named account or it names its own mailbox
    /// or senders.
    pub fn account_configs(&self) -> Vec<MicrosoftAccountConfig> {
        let mut accounts: Vec<_> = self.accounts.iter().map(|a| self.inherit(a)).collect();
        let own = self.mailbox.as_deref().is_some_and(|m| !m.is_empty())
            || !self.senders.is_empty()
            || self.credentials.is_some();
        if accounts.is_empty() || own {
            accounts.push(self.default_account());
        }
        accounts
    }

    /// The most messages a minute any mailbox may send (the queue paces each mailbox to it).
    pub fn messages_per_minute(&self) -> u32 {
        self.account_configs()
            .iter()
            .map(|a| a.max_messages_per_minute.unwrap_or(MESSAGES_PER_MINUTE))
            .min()
            .unwrap_or(MESSAGES_PER_MINUTE)
    }

    /// Checks what can be checked without reading credentials: names, addresses, URLs, limits.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, base) in [
            ("microsoft.graph_base", &self.graph_base),
            ("microsoft.login_base", &self.login_base),
        ] {
            if url::Url::parse(base).is_err() {
                return Err((key, format!("{base:?} is not a URL")));
            }
        }
        if self.graph_request_limit < 1024 || self.graph_concurrency == 0 {
            return Err((
                "microsoft.graph_request_limit",
                "graph_request_limit must be at least 1024 and graph_concurrency at least 1"
                    .to_string(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for account in &self.accounts {
            if account.name.is_empty() || !names.insert(account.name.as_str()) {
                let message = format!(
                    "account names must be unique and non-empty: {:?}",
                    account.name
                );
                return Err(("microsoft.accounts.name", message));
            }
            if account.senders.is_empty() {
                let message = format!(
                    "account {} needs senders: a named account is chosen by its senders",
                    account.name
                );
                return Err(("microsoft.accounts.senders", message));
            }
        }
        for account in self.account_configs() {
            let name = &account.name;
            let bad = account
                .senders
                .iter()
                .chain(&account.send_as)
                .chain(account.mailbox.iter().filter(|m| !m.is_empty()))
                .find(|p| {
                    !p.contains('@') || p.chars().any(|c| c.is_control() || c.is_whitespace())
                });
            if let Some(bad) = bad {
                let message = format!("account {name}: {bad:?} is not an address or *@domain");
                return Err(("microsoft.senders", message));
            }
            if account.max_concurrent_sends == Some(0)
                || account.max_messages_per_minute == Some(0)
                || account.max_recipients_per_day == Some(0)
            {
                let message = format!(
                    "account {name}: max_concurrent_sends, max_messages_per_minute and \
                     max_recipients_per_day must be at least 1"
                );
                return Err(("microsoft.max_concurrent_sends", message));
            }
        }
        Ok(())
    }
}

/// A `[microsoft]` with every optional key set, for the test that every key is documented.
/// Struct literals without `..`: adding a field breaks this until the docs are updated too.
#[cfg(test)]
pub(super) fn every_key() -> MicrosoftConfig {
    let app = |name: &str| MicrosoftAccountConfig {
        name: name.to_string(),
        tenant: Some("x".into()),
        client_id: Some("x".into()),
        client_secret: Some("x".into()),
        certificate: Some("x".into()),
        private_key: Some("x".into()),
        credentials: Some("x".into()),
        mailbox: Some("x".into()),
        senders: vec![],
        send_as: vec![],
        from_policy: Some(FromPolicy::Keep),
        header_only_recipients: Some(HeaderOnlyRecipients::Reject),
        max_concurrent_sends: Some(1),
        max_messages_per_minute: Some(1),
        max_recipients_per_day: Some(1),
    };
    let m = app("a");
    MicrosoftConfig {
        graph_base: "x".into(),
        login_base: "x".into(),
        large_messages: LargeMessages::None,
        graph_request_limit: 1,
        graph_concurrency: 1,
        mailbox_size_limit: 1,
        smtp_host: "x".into(),
        smtp_port: 1,
        smtp_ca: Some("x".into()),
        accounts: vec![app("b")],
        tenant: m.tenant,
        client_id: m.client_id,
        client_secret: m.client_secret,
        certificate: m.certificate,
        private_key: m.private_key,
        credentials: m.credentials,
        mailbox: m.mailbox,
        senders: m.senders,
        send_as: m.send_as,
        from_policy: m.from_policy,
        header_only_recipients: m.header_only_recipients,
        max_concurrent_sends: m.max_concurrent_sends,
        max_messages_per_minute: m.max_messages_per_minute,
        max_recipients_per_day: m.max_recipients_per_day,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_accounts_inherit_the_app_but_not_the_mailbox() {
        let microsoft = MicrosoftConfig {
            tenant: Some("contoso.onmicrosoft.com".into()),
            client_id: Some("app".into()),
            client_secret: Some("env:SECRET".into()),
            mailbox: Some("relay@contoso.com".into()),
            senders: vec!["*@contoso.com".into()],
            accounts: vec![MicrosoftAccountConfig {
                name: "support".into(),
                senders: vec!["support@contoso.com".into()],
                certificate: Some("support.pem".into()),
                ..MicrosoftAccountConfig::default()
            }],
            ..MicrosoftConfig::default()
        };
        let accounts = microsoft.account_configs();
        assert_eq!(accounts.len(), 2);
        let support = &accounts[0];
        assert_eq!(support.tenant.as_deref(), Some("contoso.onmicrosoft.com"));
        assert_eq!(
            support.client_secret, None,
            "its own certificate, not the secret"
        );
        assert_eq!(support.mailbox, None);
        assert_eq!(accounts[1].name, "default");
    }
}
