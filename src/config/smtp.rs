//! `[smtp]`, `[smtp.tls]` and `[[smtp.users]]`: the listeners, their limits, TLS and AUTH, and the
//! rules that keep a listener beyond loopback from becoming an open relay.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use password_hash::PasswordHash;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use super::{Broken, GMAIL_MAX_MESSAGE_SIZE};

/// `[smtp]`: the listener and the limits it enforces.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Addresses for plain SMTP (STARTTLS is offered on them when `tls` is set).
    pub listen: Vec<SocketAddr>,
    /// Addresses for implicit TLS (SMTPS, port 465 style): the handshake comes before the greeting.
    pub listen_tls: Vec<SocketAddr>,
    /// Whether MAIL needs a successful AUTH first. `None` means the safe default: required unless
    /// every listener is on loopback (see [`SmtpConfig::auth_required`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_required: Option<bool>,
    /// Lets the server start with a non-loopback listener and no AUTH: an open relay for whoever
    /// can reach the port. Off unless the operator says so, because that is how relays get abused.
    pub allow_unauthenticated_remote: bool,
    /// Where AUTH is offered on plaintext connections of non-loopback listeners too (passwords
    /// then cross the network in clear). For private networks such as a Docker bridge.
    pub allow_auth_without_tls: AuthWithoutTls,
    /// Most simultaneous connections from one IP address, so one client cannot take every slot.
    /// Loopback clients are not counted (this machine's own programs); `max_connections` holds.
    pub max_connections_per_ip: usize,
    /// Certificate and key for STARTTLS and `listen_tls`; without them no TLS is offered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// The accounts that may AUTH.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<UserConfig>,
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Largest message accepted, in bytes; advertised as `SIZE`.
    pub max_message_size: u64,
    /// Most recipients per message; more get 452 (Gmail's per-message limit is 100).
    pub max_recipients: usize,
    /// Most simultaneous connections; more are told 421 at once.
    pub max_connections: usize,
    /// A client silent for this long is told 421 and disconnected (RFC 5321 suggests 5 minutes).
    /// It also bounds the TLS handshake, so a client that connects and says nothing never holds
    /// a connection slot for longer.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// On shutdown, how long open transactions may take to finish before sessions are closed.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Where bodies larger than 1 MiB are kept while being received; default: the system temp dir.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spill_dir: Option<PathBuf>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            listen_tls: Vec::new(),
            auth_required: None,
            allow_unauthenticated_remote: false,
            allow_auth_without_tls: AuthWithoutTls::Nowhere,
            max_connections_per_ip: 50,
            tls: None,
            users: Vec::new(),
            hostname: "localhost".to_string(),
            max_message_size: GMAIL_MAX_MESSAGE_SIZE,
            max_recipients: 100,
            max_connections: 1000,
            idle_timeout: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(30),
            spill_dir: None,
        }
    }
}

/// `smtp.allow_auth_without_tls`: `false`, `true`, or a list of `smtp.listen` addresses.
///
/// A list lets one server keep AUTH under TLS on a public address while a private one (a Docker
/// bridge, a VPN) takes clear-text AUTH from clients that cannot do TLS. The addresses are the
/// ones written in `smtp.listen`, not the addresses clients connect to, so `"0.0.0.0:2525"` names
/// that listener whichever interface a client reaches it through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AuthWithoutTls {
    /// `false`: AUTH needs TLS off loopback.
    #[default]
    Nowhere,
    /// `true`: every plaintext listener offers AUTH.
    Everywhere,
    /// Only these listeners of `smtp.listen` offer AUTH in plaintext.
    On(Vec<SocketAddr>),
}

impl AuthWithoutTls {
    /// Whether the plaintext listener configured as `listener` may offer AUTH without TLS.
    pub fn allows(&self, listener: SocketAddr) -> bool {
        match self {
            AuthWithoutTls::Nowhere => false,
            AuthWithoutTls::Everywhere => true,
            AuthWithoutTls::On(listeners) => listeners.contains(&listener),
        }
    }
}

impl Serialize for AuthWithoutTls {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            AuthWithoutTls::Nowhere => serializer.serialize_bool(false),
            AuthWithoutTls::Everywhere => serializer.serialize_bool(true),
            AuthWithoutTls::On(listeners) => listeners.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for AuthWithoutTls {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor rather than `#[serde(untagged)]`: untagged enums answer every mistake with
        // "did not match any variant", and lose the position of a bad address in the list.
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = AuthWithoutTls;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or a list of addresses from smtp.listen")
            }

            fn visit_bool<E: de::Error>(self, yes: bool) -> Result<Self::Value, E> {
                Ok(match yes {
                    true => AuthWithoutTls::Everywhere,
                    false => AuthWithoutTls::Nowhere,
                })
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut listeners = Vec::new();
                while let Some(addr) = seq.next_element::<SocketAddr>()? {
                    listeners.push(addr);
                }
                Ok(AuthWithoutTls::On(listeners))
            }
        }
        deserializer.deserialize_any(Either)
    }
}

impl SmtpConfig {
    /// The directory large bodies are spilled into while they are received.
    pub fn spill_dir(&self) -> PathBuf {
        self.spill_dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    /// Every address listened on, plain and implicit TLS.
    pub fn all_listeners(&self) -> impl Iterator<Item = &SocketAddr> {
        self.listen.iter().chain(&self.listen_tls)
    }

    /// True when no listener can be reached from another machine.
    pub fn loopback_only(&self) -> bool {
        self.all_listeners().all(|addr| addr.ip().is_loopback())
    }

    /// Whether MAIL needs AUTH: as configured, else when some listener is not on loopback
    /// (unless the operator allowed unauthenticated remote clients).
    pub fn auth_required(&self) -> bool {
        self.auth_required
            .unwrap_or(!self.loopback_only() && !self.allow_unauthenticated_remote)
    }

    /// The rules between keys: limits that must be positive, users that must be usable, and the
    /// open-relay guard.
    pub(super) fn validate(&self) -> Result<(), Broken> {
        let fail = |key, message: &str| Err(Broken::new(key, message));
        if self.listen.is_empty() && self.listen_tls.is_empty() {
            return fail("smtp.listen", "at least one address is needed");
        }
        if !self.listen_tls.is_empty() && self.tls.is_none() {
            return fail(
                "smtp.listen_tls",
                "implicit TLS needs [smtp.tls] cert and key",
            );
        }
        self.check_auth_without_tls_listeners()?;
        if self.max_connections_per_ip == 0 {
            return fail("smtp.max_connections_per_ip", "must be at least 1");
        }
        for (entry, user) in self.users.iter().enumerate() {
            if let Err(message) = user.check() {
                return Err(Broken::new("smtp.users", &message).at_entry(entry));
            }
        }
        self.check_open_relay()?;
        if self.hostname.is_empty()
            || self
                .hostname
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return fail("smtp.hostname", "must be a non-empty name without spaces");
        }
        if self.max_message_size == 0 {
            return fail("smtp.max_message_size", "must be at least 1");
        }
        if self.max_recipients == 0 {
            return fail("smtp.max_recipients", "must be at least 1");
        }
        if self.max_connections == 0 {
            return fail("smtp.max_connections", "must be at least 1");
        }
        if self.idle_timeout.is_zero() {
            return fail("smtp.idle_timeout", "must be longer than 0s");
        }
        Ok(())
    }

    /// Every address in an `allow_auth_without_tls` list must be a plaintext listener: a typo
    /// would otherwise leave the intended listener without AUTH, or silently name nothing.
    fn check_auth_without_tls_listeners(&self) -> Result<(), Broken> {
        let AuthWithoutTls::On(listeners) = &self.allow_auth_without_tls else {
            return Ok(());
        };
        let Some((entry, addr)) = listeners
            .iter()
            .enumerate()
            .find(|(_, addr)| !self.listen.contains(addr))
        else {
            return Ok(());
        };
        let why = if self.listen_tls.contains(addr) {
            "is a listen_tls listener, where AUTH is always under TLS"
        } else {
            "is not in smtp.listen"
        };
        let message =
            format!("{addr} {why}; list addresses exactly as they are written in smtp.listen");
        Err(Broken::new("smtp.allow_auth_without_tls", &message).at_entry(entry))
    }

    /// A listener beyond loopback needs AUTH (unless explicitly allowed to run open), AUTH needs
    /// users, and each such plaintext listener needs a way for them to authenticate.
    fn check_open_relay(&self) -> Result<(), Broken> {
        let remote = self.all_listeners().find(|addr| !addr.ip().is_loopback());
        let open_relay = |key, why: &str| {
            let addr = remote.map_or(String::new(), ToString::to_string);
            let message = format!(
                "refusing to run an open relay: {addr} is not on loopback and {why}; add \
                 [[smtp.users]] (`smtp2gmail hash-password` makes the password_hash), listen \
                 on 127.0.0.1, or set allow_unauthenticated_remote = true if every client \
                 that can reach the port may send as you"
            );
            Err(Broken::new(key, &message))
        };
        match (
            remote.is_some(),
            self.auth_required(),
            self.users.is_empty(),
        ) {
            (true, true, true) => {
                return open_relay("smtp.users", "no [[smtp.users]] are configured for AUTH");
            }
            (true, false, _) if !self.allow_unauthenticated_remote => {
                return open_relay("smtp.auth_required", "auth_required is false");
            }
            (false, true, true) => {
                return Err(Broken::new(
                    "smtp.users",
                    "auth_required is true but no [[smtp.users]] are configured",
                ));
            }
            _ => {}
        }
        // Per listener: one where nobody could ever authenticate is a mistake, not a policy.
        let stranded = self
            .listen
            .iter()
            .find(|addr| !addr.ip().is_loopback() && !self.allow_auth_without_tls.allows(**addr));
        if let (true, None, Some(addr)) = (self.auth_required(), &self.tls, stranded) {
            let message = format!(
                "AUTH is required but {addr} is not on loopback, where AUTH is only offered \
                 under TLS; set [smtp.tls] cert and key (or list {addr} in \
                 allow_auth_without_tls)"
            );
            let entry = self.listen.iter().position(|a| a == addr).unwrap_or(0);
            return Err(Broken::new("smtp.listen", &message).at_entry(entry));
        }
        Ok(())
    }
}

/// `[smtp.tls]`: the server's certificate chain and private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (e.g. Let's Encrypt's fullchain.pem).
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[[smtp.users]]`: one account that may AUTH.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name given in AUTH.
    pub name: String,
    /// An argon2 PHC string from `smtp2gmail hash-password`; never the password itself.
    pub password_hash: String,
    /// Envelope senders this user may use (`user@domain` or `*@domain`); empty means any.
    #[serde(default)]
    pub senders: Vec<String>,
}

impl UserConfig {
    /// Checks this `[[smtp.users]]` entry; the message is for the operator. Here rather than in
    /// `smtp::auth` so that loading the configuration does not depend on the SMTP server.
    pub fn check(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.chars().any(char::is_control) {
            return Err("a user name must be non-empty, without control characters".to_string());
        }
        let is_argon2 = PasswordHash::new(&self.password_hash)
            .is_ok_and(|hash| hash.algorithm.as_str().starts_with("argon2"));
        if !is_argon2 {
            return Err(format!(
                "user {:?}: password_hash is not an argon2 PHC string (\"$argon2id$...\"); plaintext \
                 passwords are refused, make a hash with `smtp2gmail hash-password`",
                self.name
            ));
        }
        if let Some(bad) = self.senders.iter().find(|s| !s.contains('@')) {
            return Err(format!(
                "user {:?}: sender {bad:?} is neither user@domain nor *@domain",
                self.name
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, ConfigError};

    /// A well-formed argon2id PHC string (the tests never verify a password against it).
    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXphYmNkZWY";

    /// `[smtp]` with `keys`, then a user, and TLS unless `tls` is false.
    fn parse_with(keys: &str, tls: bool) -> Result<Config, ConfigError> {
        let tls = if tls {
            "[smtp.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n"
        } else {
            ""
        };
        let text = format!(
            "[smtp]\n{keys}{tls}[[smtp.users]]\nname = \"app\"\npassword_hash = \"{HASH}\"\n"
        );
        Config::parse(&text, Path::new("c.toml"))
    }

    fn parse(keys: &str) -> Result<Config, ConfigError> {
        parse_with(keys, true)
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_bool_still_means_every_listener_or_none() {
        let everywhere = parse("allow_auth_without_tls = true\n").unwrap();
        let setting = everywhere.smtp.allow_auth_without_tls;
        assert_eq!(setting, AuthWithoutTls::Everywhere);
        assert!(setting.allows(addr("10.0.0.5:2525")));
        let nowhere = parse("allow_auth_without_tls = false\n").unwrap();
        let setting = nowhere.smtp.allow_auth_without_tls;
        assert_eq!(setting, AuthWithoutTls::Nowhere);
        assert!(!setting.allows(addr("10.0.0.5:2525")));
    }

    #[test]
    fn a_list_names_listeners_of_smtp_listen() {
        let config = parse(
            "listen = [\"10.0.0.5:2525\", \"0.0.0.0:2525\"]\n\
             allow_auth_without_tls = [\"10.0.0.5:2525\"]\n",
        )
        .unwrap();
        let setting = config.smtp.allow_auth_without_tls;
        assert_eq!(setting, AuthWithoutTls::On(vec![addr("10.0.0.5:2525")]));
        assert!(setting.allows(addr("10.0.0.5:2525")));
        assert!(!setting.allows(addr("0.0.0.0:2525")));
        // Written back as it was read: the config can round-trip through TOML.
        let text = toml::to_string(&SmtpConfig {
            allow_auth_without_tls: setting,
            ..SmtpConfig::default()
        })
        .unwrap();
        assert!(
            text.contains("allow_auth_without_tls = [\"10.0.0.5:2525\"]"),
            "{text}"
        );
    }

    #[test]
    fn an_address_that_is_not_a_plain_listener_is_an_error_at_its_line() {
        let err = parse(
            "listen = [\"10.0.0.5:2525\"]\nlisten_tls = [\"10.0.0.5:465\"]\n\
             allow_auth_without_tls = [\"10.0.0.5:2525\", \"10.0.0.6:2525\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "c.toml:4:44: smtp.allow_auth_without_tls: 10.0.0.6:2525 is not in smtp.listen"
            ),
            "{err}"
        );
        let err = parse(
            "listen = [\"10.0.0.5:2525\"]\nlisten_tls = [\"10.0.0.5:465\"]\n\
             allow_auth_without_tls = [\"10.0.0.5:465\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("c.toml:4:27: "), "{err}");
        assert!(err.contains("listen_tls"), "{err}");
        let err = parse("allow_auth_without_tls = [\"not an address\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("c.toml:2:27: smtp.allow_auth_without_tls[0]: "),
            "{err}"
        );
        let err = parse("allow_auth_without_tls = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("true, false, or a list of addresses"), "{err}");
    }

    #[test]
    fn a_remote_listener_without_tls_must_be_listed_to_be_usable() {
        let parse = |allowed: &str| {
            let listen = "listen = [\"10.0.0.5:2525\", \"10.0.0.6:2525\"]\n";
            parse_with(
                &format!("{listen}allow_auth_without_tls = {allowed}\n"),
                false,
            )
        };
        let err = parse("[\"10.0.0.5:2525\"]").unwrap_err().to_string();
        // Pointed at the stranded listener's entry in smtp.listen.
        assert!(
            err.starts_with("c.toml:2:28: smtp.listen: AUTH is required but 10.0.0.6:2525"),
            "{err}"
        );
        parse("[\"10.0.0.5:2525\", \"10.0.0.6:2525\"]").unwrap();
        parse("true").unwrap();
        let err = parse("false").unwrap_err().to_string();
        assert!(err.contains("10.0.0.5:2525"), "{err}");
    }

    #[test]
    fn a_bad_user_is_reported_at_its_own_entry() {
        let text = format!(
            "[smtp]\n[[smtp.users]]\nname = \"a\"\npassword_hash = \"{HASH}\"\n\
             [[smtp.users]]\nname = \"b\"\npassword_hash = \"plain text\"\n"
        );
        let err = Config::parse(&text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.toml:5:"), "{err}");
    }
}
