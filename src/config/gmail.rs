//! `[gmail]` and `[[gmail.accounts]]`: which Google accounts send, with which credentials, and the
//! recipient and From rules applied before upload.
//!
//! The `[gmail]` table is itself an account (the default one, used when no named account's
//! `senders` match) and holds the defaults that named accounts inherit for the policy keys.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Google's Gmail API base URL; tests point `api_base` at a fake.
pub const GMAIL_API_BASE: &str = "https://gmail.googleapis.com";

/// What to do with addresses in To/Cc/Bcc that are not envelope recipients (Gmail would deliver to
/// them anyway, since it ignores the envelope).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderOnlyRecipients {
    /// Refuse the message with 550 5.7.1: the client did not ask for those deliveries.
    #[default]
    Reject,
    /// Send as Gmail would: every header address receives the message.
    Allow,
}

/// What to do with a From address that is not in `send_as` (Gmail would silently replace it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FromPolicy {
    /// Send unchanged; warn once per unknown address.
    #[default]
    Keep,
    /// Replace the address with the first `send_as` address, keeping the display name, and add a
    /// Reply-To with the original address.
    Rewrite,
    /// Refuse the message with 550 5.7.1.
    Reject,
}

/// Declares a struct with the keys every account has, plus `$extra` fields, so `[gmail]` and
/// `[[gmail.accounts]]` cannot drift apart.
macro_rules! account_struct {
    ($(#[$meta:meta])* pub struct $name:ident { $($extra:tt)* }) => {
        account_with_rules! {
            $(#[$meta])*
            pub struct $name {
                $($extra)*
                /// A credentials file: quickstart token.json, gcloud authorized_user, or a
                /// service-account key (detected by content).
                #[serde(skip_serializing_if = "Option::is_none")]
                pub credentials: Option<PathBuf>,
                /// OAuth client id, instead of a file; may be `env:NAME` or `file:PATH`.
                #[serde(skip_serializing_if = "Option::is_none")]
                pub client_id: Option<String>,
                /// OAuth client secret, instead of a file; may be `env:NAME` or `file:PATH`.
                #[serde(skip_serializing_if = "Option::is_none")]
                pub client_secret: Option<String>,
                /// Refresh token, instead of a file; may be `env:NAME` or `file:PATH`.
                #[serde(skip_serializing_if = "Option::is_none")]
                pub refresh_token: Option<String>,
                /// The Gmail `userId` in API paths; `me` is the authenticated account.
                #[serde(skip_serializing_if = "Option::is_none")]
                pub user_id: Option<String>,
                /// Token endpoint; default: the one in the credentials file, else Google's.
                #[serde(skip_serializing_if = "Option::is_none")]
                pub token_uri: Option<String>,
                /// Service accounts only: `"sender"` (the envelope sender) or a fixed `user@domain`.
                #[serde(skip_serializing_if = "Option::is_none")]
                pub impersonate: Option<String>,
            }
        }
    };
}

account_struct! {
    /// `[gmail]`: the default account and the settings named accounts inherit.
    pub struct GmailConfig {
        /// The Gmail API base URL.
        pub api_base: String,
        /// Further accounts, chosen by envelope sender or From header.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        pub accounts: Vec<AccountConfig>,
    }
}

account_struct! {
    /// `[[gmail.accounts]]`: one more account.
    #[derive(Default)]
    pub struct AccountConfig {
        /// A name for logs, errors and metrics.
        pub name: String,
    }
}

impl GmailConfig {
    /// The settings of the `[gmail]` table itself, as an account named "default".
    pub fn default_account(&self) -> AccountConfig {
        AccountConfig {
            name: "default".to_string(),
            credentials: self.credentials.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            refresh_token: self.refresh_token.clone(),
            user_id: self.user_id.clone(),
            token_uri: self.token_uri.clone(),
            senders: self.senders.clone(),
            send_as: self.send_as.clone(),
            from_policy: self.from_policy,
            header_only_recipients: self.header_only_recipients,
            impersonate: self.impersonate.clone(),
            max_concurrent_sends: self.max_concurrent_sends,
        }
    }

    /// True when `[gmail]` configures credentials of its own (a file or inline values).
    pub fn has_own_credentials(&self) -> bool {
        self.credentials.is_some()
            || self.client_id.is_some()
            || self.client_secret.is_some()
            || self.refresh_token.is_some()
    }

    /// A named account with the policy keys it leaves unset taken from `[gmail]`.
    pub fn inherit(&self, account: &AccountConfig) -> AccountConfig {
        let mut merged = account.clone();
        merged.token_uri = merged.token_uri.or_else(|| self.token_uri.clone());
        merged.from_policy = merged.from_policy.or(self.from_policy);
        merged.header_only_recipients = merged
            .header_only_recipients
            .or(self.header_only_recipients);
        merged.max_concurrent_sends = merged.max_concurrent_sends.or(self.max_concurrent_sends);
        merged
    }
}

impl Default for GmailConfig {
    fn default() -> Self {
        GmailConfig {
            api_base: GMAIL_API_BASE.to_string(),
            accounts: Vec::new(),
            credentials: None,
            client_id: None,
            client_secret: None,
            refresh_token: None,
            user_id: None,
            token_uri: None,
            senders: Vec::new(),
            send_as: Vec::new(),
            from_policy: None,
            header_only_recipients: None,
            impersonate: None,
            max_concurrent_sends: None,
        }
    }
}

impl GmailConfig {
    /// Checks what can be checked without reading credentials: names, patterns, URLs.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if url::Url::parse(&self.api_base).is_err() {
            return Err((
                "gmail.api_base",
                format!("{:?} is not a URL", self.api_base),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for account in &self.accounts {
            if account.name.is_empty() || !names.insert(account.name.as_str()) {
                let message = format!(
                    "account names must be unique and non-empty: {:?}",
                    account.name
                );
                return Err(("gmail.accounts.name", message));
            }
        }
        if let Some(account) = self.accounts.iter().find(|a| a.senders.is_empty()) {
            let message = format!(
                "account {} needs senders: a named account is chosen by its senders",
                account.name
            );
            return Err(("gmail.accounts.senders", message));
        }
        let default = self.default_account();
        for account in std::iter::once(&default).chain(&self.accounts) {
            // send_as[0] is written into a From header by from_policy = "rewrite".
            if let Some(bad) = account
                .send_as
                .iter()
                .find(|a| a.chars().any(|c| c.is_control() || c.is_whitespace()))
            {
                return Err((
                    "gmail.send_as",
                    format!("account {}: {bad:?} is not a plain address", account.name),
                ));
            }
            let bad = account
                .senders
                .iter()
                .chain(&account.send_as)
                .find(|p| !p.contains('@'));
            if let Some(bad) = bad {
                let message = format!(
                    "account {}: {bad:?} is not an address or *@domain",
                    account.name
                );
                return Err(("gmail.senders", message));
            }
            if account.max_concurrent_sends == Some(0) {
                return Err((
                    "gmail.max_concurrent_sends",
                    format!("account {}: must be at least 1", account.name),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_inherit_policy_not_identity() {
        let gmail = GmailConfig {
            from_policy: Some(FromPolicy::Reject),
            senders: vec!["*@default.example".into()],
            accounts: vec![AccountConfig {
                name: "support".into(),
                ..AccountConfig::default()
            }],
            ..GmailConfig::default()
        };
        let merged = gmail.inherit(&gmail.accounts[0]);
        assert_eq!(merged.from_policy, Some(FromPolicy::Reject));
        assert!(merged.senders.is_empty());
    }
}
