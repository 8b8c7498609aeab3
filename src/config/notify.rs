//! `[notify]`: delivery status notifications (bounces) to senders when queued mail cannot be
//! delivered, and `[[notify.webhooks]]`, signed events for the operator.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::{Broken, Config, Delivery};
use crate::message::mailbox::mailbox_key;
use crate::notify::dsn::address_fits_header;
use crate::notify::event::EventKind;
use crate::notify::signature::SigningKey;

/// `[notify]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Send a DSN (RFC 3464) when queued mail becomes a dead letter (gmail mode with the queue).
    pub bounces: bool,
    /// Whether the envelope sender gets the DSN; off, only `bounce_to` does.
    pub bounce_to_sender: bool,
    /// Addresses that get every DSN too (a postmaster), or instead of the sender.
    pub bounce_to: Vec<String>,
    /// One `delayed` DSN per message still queued after this long; zero turns warnings off.
    #[serde(with = "humantime_serde")]
    pub delay_warning: Duration,
    /// The operator's webhooks.
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            bounces: true,
            bounce_to_sender: true,
            bounce_to: Vec::new(),
            delay_warning: Duration::ZERO,
            webhooks: Vec::new(),
        }
    }
}

/// One `[[notify.webhooks]]` entry.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed: an `http://` or `https://` URL.
    pub url: String,
    /// The kinds of event it gets; every kind when not given.
    #[serde(default = "every_event")]
    pub events: Vec<EventKind>,
    /// The signing secret, `whsec_<base64>`, or `env:NAME` / `file:PATH` holding one.
    pub secret: String,
}

fn every_event() -> Vec<EventKind> {
    EventKind::ALL.to_vec()
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret may be written inline; `env:`/`file:` references are harmless but are
        // hidden alike, so that no Debug output ever needs checking.
        f.debug_struct("WebhookConfig")
            .field("url", &"[not shown]")
            .field("events", &self.events)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl WebhookConfig {
    /// The URL, when it is an http(s) URL with a host.
    pub fn parsed_url(&self) -> Option<Url> {
        let url = Url::parse(self.url.trim()).ok()?;
        (matches!(url.scheme(), "http" | "https") && url.host().is_some()).then_some(url)
    }
}

impl NotifyConfig {
    /// Who gets the DSN of a message from `sender` (`None` for `<>`): the sender (unless
    /// `bounce_to_sender` is off) and every `bounce_to` address, each mailbox once.
    pub fn bounce_recipients(&self, sender: Option<&str>) -> Vec<String> {
        let sender = sender.filter(|_| self.bounce_to_sender);
        let mut seen = std::collections::HashSet::new();
        sender
            .into_iter()
            .chain(self.bounce_to.iter().map(String::as_str))
            .filter(|address| seen.insert(mailbox_key(address)))
            .map(str::to_string)
            .collect()
    }

    /// The delay warning's age, when warnings are on.
    pub fn delay_warning(&self) -> Option<Duration> {
        Some(self.delay_warning).filter(|age| !age.is_zero())
    }
}

impl Config {
    /// Whether DSNs are sent: `notify.bounces` where a queue delivers — gmail mode with the
    /// queue, and auto-release in console and file modes (sync mode answers the client
    /// directly; console, file and discard modes otherwise deliver at once).
    pub fn bounces_active(&self) -> bool {
        let provider_queue =
            self.relay.mode.is_provider() && self.relay.delivery == Delivery::Queue;
        let auto_release = !self.relay.mode.is_provider() && self.releases_automatically();
        self.notify.bounces && (provider_queue || auto_release)
    }

    /// The rules of `[notify]`, for [`Config::validate`].
    pub(super) fn validate_notify(&self) -> Result<(), Broken> {
        let notify = &self.notify;
        for (i, address) in notify.bounce_to.iter().enumerate() {
            if !address_fits_header(address.trim()) {
                return Err(Broken::new(
                    "notify.bounce_to",
                    "must be addresses such as \"postmaster@example.com\" (no names, spaces or \
                     angle brackets)",
                )
                .at_entry(i));
            }
        }
        if notify.bounces && !notify.bounce_to_sender && notify.bounce_to.is_empty() {
            return Err(Broken::new(
                "notify.bounce_to_sender",
                "is false and notify.bounce_to is empty: nobody would get the DSNs (set \
                 notify.bounces = false to send none)",
            ));
        }
        if notify
            .delay_warning()
            .is_some_and(|age| age >= self.queue.max_age)
        {
            return Err(Broken::new(
                "notify.delay_warning",
                "must be shorter than queue.max_age (a message is given up then, and would \
                 never be warned about); \"0s\" turns warnings off",
            ));
        }
        for (i, webhook) in notify.webhooks.iter().enumerate() {
            let broken = |key, message: &str| Err(Broken::new(key, message).at_entry(i));
            if webhook.parsed_url().is_none() {
                return broken(
                    "notify.webhooks",
                    "url must be an http:// or https:// URL such as \
                     \"https://hooks.example.com/smtp2gmail\"",
                );
            }
            if webhook.events.is_empty() {
                return broken(
                    "notify.webhooks",
                    "events is empty: list some of \"dead_letter\", \"delayed\", \"deferred\", \
                     \"delivered\", \"credentials\" (or leave it out for all)",
                );
            }
            if let Err(err) = SigningKey::from_config(&webhook.secret) {
                return broken("notify.webhooks", &format!("secret {err}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("c.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn bounces_are_on_by_default_only_where_the_queue_answers() {
        let gmail_queue = parse("[relay]\nmode = \"gmail\"\n").unwrap();
        assert!(gmail_queue.bounces_active());
        let sync = parse("[relay]\nmode = \"gmail\"\ndelivery = \"sync\"\n").unwrap();
        assert!(!sync.bounces_active());
        assert!(!Config::default().bounces_active(), "console mode");
        let off = parse("[relay]\nmode = \"gmail\"\n[notify]\nbounces = false\n").unwrap();
        assert!(!off.bounces_active());
    }

    #[test]
    fn bounce_recipients_are_the_sender_and_the_fixed_addresses_once_each() {
        let mut notify = NotifyConfig {
            bounce_to: vec!["postmaster@example.com".into(), "APP@example.com".into()],
            ..NotifyConfig::default()
        };
        assert_eq!(
            notify.bounce_recipients(Some("app@example.com")),
            ["app@example.com", "postmaster@example.com"]
        );
        assert_eq!(
            notify.bounce_recipients(None),
            ["postmaster@example.com", "APP@example.com"]
        );
        notify.bounce_to_sender = false;
        assert_eq!(
            notify.bounce_recipients(Some("other@example.com")),
            ["postmaster@example.com", "APP@example.com"]
        );
    }

    #[test]
    fn nobody_to_bounce_to_is_refused() {
        let err = parse("[notify]\nbounce_to_sender = false\n").unwrap_err();
        assert!(
            err.starts_with("c.toml:2:1: notify.bounce_to_sender: is false"),
            "{err}"
        );
        let err = parse("[notify]\nbounce_to = [\"ok@x.org\", \"Post Master <pm@x.org>\"]\n")
            .unwrap_err();
        assert!(
            err.starts_with("c.toml:2:26: notify.bounce_to: must be addresses"),
            "{err}"
        );
    }

    #[test]
    fn a_delay_warning_must_come_before_max_age() {
        let ok = parse("[notify]\ndelay_warning = \"4h\"\n").unwrap();
        assert_eq!(
            ok.notify.delay_warning(),
            Some(Duration::from_secs(4 * 3600))
        );
        assert_eq!(Config::default().notify.delay_warning(), None);
        let err =
            parse("[queue]\nmax_age = \"1h\"\n[notify]\ndelay_warning = \"2h\"\n").unwrap_err();
        assert!(
            err.starts_with("c.toml:4:1: notify.delay_warning: must be shorter"),
            "{err}"
        );
    }

    #[test]
    fn webhooks_take_every_event_by_default_and_check_url_and_secret() {
        let text =
            format!("[[notify.webhooks]]\nurl = \"https://h.example/x\"\nsecret = \"{SECRET}\"\n");
        let config = parse(&text).unwrap();
        assert_eq!(config.notify.webhooks[0].events, EventKind::ALL);

        let some = format!(
            "[[notify.webhooks]]\nurl = \"http://127.0.0.1:8080/\"\nevents = [\"dead_letter\", \
             \"credentials\"]\nsecret = \"{SECRET}\"\n"
        );
        let config = parse(&some).unwrap();
        assert_eq!(
            config.notify.webhooks[0].events,
            [EventKind::DeadLetter, EventKind::Credentials]
        );

        let unknown = format!(
            "[[notify.webhooks]]\nurl = \"https://h.example/\"\nevents = [\"bounced\"]\n\
             secret = \"{SECRET}\"\n"
        );
        let err = parse(&unknown).unwrap_err();
        assert!(err.contains("unknown variant `bounced`"), "{err}");

        let ftp =
            format!("[[notify.webhooks]]\nurl = \"ftp://h.example/\"\nsecret = \"{SECRET}\"\n");
        let err = parse(&ftp).unwrap_err();
        assert!(
            err.contains("notify.webhooks: url must be an http:// or https:// URL"),
            "{err}"
        );

        let none = format!(
            "[[notify.webhooks]]\nurl = \"https://h.example/\"\nevents = []\n\
             secret = \"{SECRET}\"\n"
        );
        assert!(parse(&none).unwrap_err().contains("events is empty"));
    }

    #[test]
    fn a_bad_secret_is_refused_without_showing_it() {
        for (secret, expected) in [
            (
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "must start with \"whsec_\"",
            ),
            ("whsec_MfKQ9r8G", "bytes once decoded"),
            (
                "env:SMTP2GMAIL_TEST_UNSET_WEBHOOK_SECRET",
                "SMTP2GMAIL_TEST_UNSET_WEBHOOK_SECRET is not set",
            ),
        ] {
            let text = format!(
                "[[notify.webhooks]]\nurl = \"https://h.example/\"\nsecret = \"{secret}\"\n"
            );
            let err = parse(&text).unwrap_err();
            assert!(err.contains(expected), "{err}");
            assert!(
                err.starts_with("c.toml:1:1: notify.webhooks: secret"),
                "{err}"
            );
            assert!(!err.contains("MfKQ"), "{err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, format!("{SECRET}\n")).unwrap();
        let text = format!(
            "[[notify.webhooks]]\nurl = \"https://h.example/\"\nsecret = \"file:{}\"\n",
            file.display()
        );
        assert!(parse(&text).is_ok(), "a file: secret, with its newline");
    }

    #[test]
    fn debug_shows_neither_secret_nor_url() {
        let webhook = WebhookConfig {
            url: "https://h.example/token-in-path".into(),
            events: vec![EventKind::Delivered],
            secret: SECRET.into(),
        };
        let debug = format!("{webhook:?}");
        assert!(
            !debug.contains("MfKQ") && !debug.contains("token-in-path"),
            "{debug}"
        );
    }
}
