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

    /// The inbox's rules: a keepable number of messages, and no captured mail (nor release
    /// through Gmail) for whoever reaches the port.
    pub(super) fn validate_inbox(&self) -> Result<(), Broken> {
        if self.inbox.max_messages == 0 {
            return Err(Broken::new(
                "inbox.max_messages",
                "must be at least 1 (set inbox.enabled = false to turn the inbox off)",
            ));
        }
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
}
