//! `[inbox]`: the development inbox served on `http.listen` in console and file modes.

use serde::{Deserialize, Serialize};

use super::{Broken, Config, RelayMode};

/// `[inbox]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboxConfig {
    /// Serve the web inbox and the Mailpit-compatible API (console and file modes).
    pub enabled: bool,
    /// Console mode: how many captured messages are kept in memory (the oldest go first).
    pub max_messages: usize,
    /// Host names, besides localhost, that browsers and clients may use to reach the inbox
    /// (`Host` header; IP addresses always may): the DNS-rebinding guard refuses other names.
    pub allowed_hosts: Vec<String>,
    /// Ask for one of `[[smtp.users]]` even on loopback: every local user, and a reverse proxy
    /// on this machine, reach a loopback inbox and could read the mail and release it.
    pub auth_required: bool,
    /// Captured mail older than this (`"7d"`, `"12h"`) is deleted, in console and file modes;
    /// empty keeps it (up to `max_messages` in console mode).
    pub max_age: String,
    /// Serve Mailpit's chaos API (`/api/v1/chaos`), as Mailpit's `--enable-chaos`.
    pub chaos: bool,
    /// Mailpit's `--webhook-url`: each captured message's summary JSON is POSTed here.
    pub webhook_url: String,
    /// Signs the webhook's requests as the queue's webhooks are (Standard Webhooks):
    /// `whsec_<base64>`, or `env:NAME` / `file:PATH` holding one; empty sends them unsigned.
    pub webhook_secret: String,
    /// Tag messages with the `+tag` of their addresses (`app+signup@example.com`), as Mailpit.
    pub tags_plus_addresses: bool,
    /// A regular expression: mail to envelope recipients matching it (and not blocked) is also
    /// queued for delivery through Gmail to exactly those recipients, as it arrives. Empty: off.
    pub release_matching: String,
    /// Addresses (exact) or regular expressions that release never sends to, whether a person
    /// releases a message or `release_matching` does.
    pub release_blocked: Vec<String>,
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig {
            enabled: true,
            max_messages: 1000,
            allowed_hosts: Vec::new(),
            auth_required: false,
            max_age: String::new(),
            chaos: false,
            webhook_url: String::new(),
            webhook_secret: String::new(),
            tags_plus_addresses: false,
            release_matching: String::new(),
            release_blocked: Vec::new(),
        }
    }
}

impl Config {
    /// Whether the inbox is served: console or file mode, `[inbox] enabled` and an HTTP address.
    pub fn inbox_active(&self) -> bool {
        self.inbox.enabled
            && matches!(self.relay.mode, RelayMode::Console | RelayMode::File)
            && self.http.address().is_some()
    }

    /// Whether the inbox needs a password: asked for (`inbox.auth_required`), or reachable from
    /// other machines — an `http.listen` beyond loopback, or host names besides localhost (a
    /// proxy or a container network forwards to it).
    pub fn inbox_needs_auth(&self) -> bool {
        let remote = self.http.address().is_some_and(|a| !a.ip().is_loopback());
        let asked = self.inbox.auth_required || !self.inbox.allowed_hosts.is_empty();
        self.inbox_active() && (remote || asked)
    }

    /// `inbox.max_age` as a duration, when set (validation has checked it parses).
    pub fn inbox_max_age(&self) -> Option<std::time::Duration> {
        let text = self.inbox.max_age.trim();
        (!text.is_empty())
            .then(|| humantime::parse_duration(text).ok())
            .flatten()
            .filter(|age| !age.is_zero())
    }

    /// The inbox's rules: a keepable number of messages, and no captured mail (nor release
    /// through Gmail) for whoever reaches the port.
    pub(super) fn validate_inbox(&self) -> Result<(), Broken> {
        if self.inbox.max_messages == 0 {
            return Err(Broken::new(
                "inbox.max_messages",
                "must be at least 1 (set inbox.enabled = false to turn the inbox off)",
            ));
        }
        self.validate_inbox_additions()?;
        if self.inbox_needs_auth() && self.smtp.users.is_empty() && self.inbox.auth_required {
            return Err(Broken::new(
                "inbox.auth_required",
                "the inbox would ask for one of [[smtp.users]] and there are none: add \
                 [[smtp.users]] (hashes from `smtp2gmail hash-password`)",
            ));
        }
        if self.inbox_needs_auth() && self.smtp.users.is_empty() {
            let key = if self.inbox.allowed_hosts.is_empty() {
                "http.listen"
            } else {
                "inbox.allowed_hosts"
            };
            return Err(Broken::new(
                key,
                "the inbox would show captured mail (and release it through Gmail) to anyone who \
                 can reach it: add [[smtp.users]] (the inbox then asks for one of them with HTTP \
                 Basic authentication), listen on loopback, or set inbox.enabled = false",
            ));
        }
        Ok(())
    }

    /// Whether mail is released through Gmail as it arrives (`inbox.release_matching` is set).
    pub fn releases_automatically(&self) -> bool {
        !self.inbox.release_matching.is_empty()
    }

    /// Whether Gmail credentials are configured for release, in any way gmail mode reads them:
    /// `[gmail]` itself, named accounts, or the `GMAIL_API_*` environment.
    pub fn release_credentials_configured(&self) -> bool {
        self.gmail.has_own_credentials()
            || !self.gmail.accounts.is_empty()
            || std::env::var_os(crate::google::ENV_REFRESH_TOKEN).is_some()
    }

    /// The release rules: patterns that compile, a mode that captures mail, and Gmail to release
    /// through when mail is released as it arrives.
    pub(super) fn validate_release(&self) -> Result<(), Broken> {
        crate::inbox::rules::ReleaseRules::from_config(&self.inbox).map_err(|err| {
            let broken = Broken::new(err.key, &err.message);
            match err.entry {
                Some(entry) => broken.at_entry(entry),
                None => broken,
            }
        })?;
        let capturing = matches!(self.relay.mode, RelayMode::Console | RelayMode::File);
        let automatic = self.releases_automatically();
        if !capturing && (automatic || !self.inbox.release_blocked.is_empty()) {
            let key = match automatic {
                true => "inbox.release_matching",
                false => "inbox.release_blocked",
            };
            return Err(Broken::new(
                key,
                "release applies to captured mail, and only console and file modes capture it \
                 (gmail mode sends every message it accepts to all its recipients): set \
                 relay.mode = \"console\" or \"file\", or remove the key",
            ));
        }
        if automatic && !self.release_credentials_configured() {
            return Err(Broken::new(
                "inbox.release_matching",
                "releases through Gmail and no Gmail credentials are configured: add [gmail] \
                 credentials = \"token.json\" (the file `smtp2gmail authorize --client-secret \
                 client_secret.json` writes), [[gmail.accounts]], or set GMAIL_API_CLIENT_ID, \
                 GMAIL_API_CLIENT_SECRET and GMAIL_API_REFRESH_TOKEN",
            ));
        }
        Ok(())
    }

    /// The rules of the keys of retention, chaos and the webhook.
    fn validate_inbox_additions(&self) -> Result<(), Broken> {
        let age = self.inbox.max_age.trim();
        if !age.is_empty() && humantime::parse_duration(age).map_or(true, |a| a.is_zero()) {
            return Err(Broken::new(
                "inbox.max_age",
                "must be a duration such as \"7d\" or \"12h\", or \"\" to keep mail",
            ));
        }
        let url = self.inbox.webhook_url.trim();
        if !url.is_empty() {
            let parsed = url::Url::parse(url).ok();
            let web = parsed
                .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !web {
                return Err(Broken::new(
                    "inbox.webhook_url",
                    "must be an http:// or https:// URL, or \"\" for no webhook",
                ));
            }
        }
        let secret = self.inbox.webhook_secret.trim();
        if !secret.is_empty()
            && let Err(err) = crate::notify::signature::SigningKey::from_config(secret)
        {
            return Err(Broken::new("inbox.webhook_secret", &err.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn inbox(section: &str) -> Result<Config, String> {
        let text = format!("[inbox]\n{section}\n");
        Config::parse(&text, Path::new("config.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn retention_chaos_and_webhook_keys() {
        let config = inbox("max_age = \"7d\"\nchaos = true").unwrap();
        assert_eq!(
            config.inbox_max_age(),
            Some(std::time::Duration::from_secs(7 * 86400))
        );
        assert!(config.inbox.chaos);
        assert_eq!(inbox("").unwrap().inbox_max_age(), None);
        for (bad, key) in [
            ("max_age = \"soon\"", "inbox.max_age"),
            ("max_age = \"0s\"", "inbox.max_age"),
            ("webhook_url = \"ftp://example.com/\"", "inbox.webhook_url"),
            (
                "webhook_url = \"http://127.0.0.1:1/\"\nwebhook_secret = \"plain\"",
                "inbox.webhook_secret",
            ),
        ] {
            let err = inbox(bad).unwrap_err();
            assert!(err.contains(key), "{bad}: {err}");
        }
        let secret = "whsec_KioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
        let signed =
            format!("webhook_url = \"http://127.0.0.1:1/\"\nwebhook_secret = \"{secret}\"");
        assert!(inbox(&signed).is_ok());
    }
}
