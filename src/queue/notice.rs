//! What the queue tells about its messages: the webhook events built from queue records, and the
//! delivery status notifications (RFC 3464) for a message that became a dead letter or waits too
//! long, as queue entries of their own.
//!
//! The scheduler core decides *when* — at the one place each outcome is applied, so that with
//! several replicas the replica that applied it is the one that tells (docs/design.md, "Telling
//! senders and operators: wired in the core") — and this module decides *what*: the status and
//! the words for each cause, who receives the DSN, and the record it is queued under: the null
//! reverse-path, the original's account and user (the stored decision: a DSN is never routed by
//! its sender, which is empty), and `dsn_for` naming the original.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::courier::DsnSender;
use super::record::{Decision, Entry, Route};
use crate::config::{Config, NotifyConfig};
use crate::message::header_edits::Piece;
use crate::message::mailbox::mailbox_key;
use crate::message::recipient_rules::Provider;
use crate::message::{Address, Envelope, MessageId};
use crate::notify::dsn::{self, Action, RecipientOutcome};
use crate::notify::{Detail, Event, EventKind, MessageEvent, Notifier};
use crate::relay::DeliveryError;
use crate::status::Status;

/// What the queue tells, and to whom: the operator's webhooks, and (in gmail mode with the
/// queue, unless `notify.bounces` is off) DSNs to senders.
#[derive(Debug, Clone)]
pub struct Notices {
    notifier: Notifier,
    bounces: Option<Bounces>,
    delay_warning: Option<Duration>,
    max_age: Duration,
    /// When set, the only addresses a DSN may go to (auto-release: those the release rules send
    /// to); `None`: whoever `[notify]` names.
    dsn_only_to: Option<AllowedRecipients>,
}

/// A test of the addresses a DSN may go to.
#[derive(Clone)]
struct AllowedRecipients(Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for AllowedRecipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AllowedRecipients(..)")
    }
}

/// Where DSNs go and what they say of this server.
#[derive(Debug, Clone)]
struct Bounces {
    notify: NotifyConfig,
    /// `smtp.hostname`: the DSN's `Reporting-MTA` and the right side of its Message-ID.
    reporting_host: String,
    /// Whose answers the DSN reports (its wording and `Diagnostic-Code` type).
    provider: Provider,
}

/// Why the queue tells about a message: why it became a dead letter, or that it waits too long.
#[derive(Debug, Clone, Copy)]
pub enum Cause<'a> {
    /// Gmail (or Google, refusing the sender) answered that it will never take the message.
    Refused(&'a DeliveryError),
    /// `queue.max_age` passed; the last attempt failed with this. `account_gone`: the account it
    /// was routed to is no longer configured.
    Expired {
        /// The last attempt's failure.
        last: &'a DeliveryError,
        /// True when the account is no longer configured.
        account_gone: bool,
    },
    /// Given up without an attempt, for the reason in its record: a split message incomplete
    /// under `header_only_recipients = "reject"`, or too large once merged.
    GivenUp,
    /// Still queued after `notify.delay_warning` (a warning; the message is retried).
    Delayed {
        /// The last attempt's failure.
        last: &'a DeliveryError,
        /// True when the account is no longer configured.
        account_gone: bool,
    },
}

impl Notices {
    /// Tells nobody anything (tests of the core, the `queue` commands).
    pub fn off() -> Notices {
        Notices {
            notifier: Notifier::off(),
            bounces: None,
            delay_warning: None,
            max_age: Duration::MAX,
            dsn_only_to: None,
        }
    }

    /// What `config` asks for, with events going to `notifier`. DSNs only where
    /// [`Config::bounces_active`] says so; delay warnings only with DSNs or webhooks to tell.
    pub fn from_config(config: &Config, notifier: Notifier) -> Notices {
        let bounces = config.bounces_active().then(|| Bounces {
            notify: config.notify.clone(),
            reporting_host: config.smtp.hostname.clone(),
            provider: match config.relay.mode {
                crate::config::RelayMode::Microsoft => Provider::Microsoft,
                _ => Provider::Gmail,
            },
        });
        Notices {
            notifier,
            bounces,
            delay_warning: config.notify.delay_warning(),
            max_age: config.queue.max_age,
            dsn_only_to: None,
        }
    }

    /// DSNs go only to the addresses `allowed` accepts, and to `notify.bounce_to` (the
    /// operator's own); with none left there is no DSN. Auto-release passes its release rules: a staging server
    /// sends nothing through Gmail to an address they do not release.
    pub fn only_to(self, allowed: impl Fn(&str) -> bool + Send + Sync + 'static) -> Notices {
        Notices {
            dsn_only_to: Some(AllowedRecipients(Arc::new(allowed))),
            ..self
        }
    }

    /// Sends an event of `kind` that happens now to the webhooks that want it (never waits);
    /// `detail` is built only when one does.
    pub fn event(&self, kind: EventKind, detail: impl FnOnce() -> Detail) {
        if self.notifier.wants(kind) {
            self.notifier.event(Event::now(detail()));
        }
    }

    /// How long a message may wait before its delay warning, when warnings are on.
    pub fn delay_warning(&self) -> Option<Duration> {
        self.delay_warning
    }

    /// True when DSNs are sent at all (so the core reads no message head for nothing).
    pub fn bounces(&self) -> bool {
        self.bounces.is_some()
    }

    /// The DSN about `original` (whose header section is `head`) for `cause`, as the queue entry
    /// and the bytes to queue: to [`NotifyConfig::bounce_recipients`], from `sender.address` (else
    /// the original sender, whom the account serves). `Err` says why there is none, for the log.
    pub fn dsn(
        &self,
        original: &Entry,
        head: &[u8],
        cause: Cause<'_>,
        sender: DsnSender,
        now: SystemTime,
    ) -> Result<(Entry, Vec<u8>), String> {
        let Some(bounces) = &self.bounces else {
            return Err("DSNs are off".into());
        };
        dsn::deserves_dsn(original.mail_from.as_deref(), head).map_err(|no| no.to_string())?;
        let mut to = bounces
            .notify
            .bounce_recipients(original.mail_from.as_deref());
        if let Some(allowed) = &self.dsn_only_to {
            // The operator's own `bounce_to` addresses keep theirs: the rules keep staging mail
            // away from customers, and a postmaster named in the config is not one.
            let fixed = &bounces.notify.bounce_to;
            to.retain(|address| {
                (allowed.0)(address) || fixed.iter().any(|f| mailbox_key(f) == mailbox_key(address))
            });
            if to.is_empty() {
                return Err("no recipient of the DSN is one the release rules send to".into());
            }
        }
        let from = sender
            .address
            .or_else(|| original.mail_from.clone())
            .unwrap_or_default();
        let action = match cause {
            Cause::Delayed { .. } => Action::Delayed,
            _ => Action::Failed,
        };
        let recipients: Vec<RecipientOutcome> = original
            .rcpt_to
            .iter()
            .map(|address| RecipientOutcome {
                address: address.clone(),
                action,
                status: cause.status(original),
                diagnostic: cause.diagnostic(),
                last_attempt: original.history.last().map(|attempt| attempt.at),
            })
            .collect();
        let envelope = original.envelope();
        let explanation = cause.explanation(original, self.max_age, bounces.provider);
        let report = dsn::Report {
            original: &envelope,
            original_head: head,
            recipients: &recipients,
            explanation: &explanation,
            reporting_host: &bounces.reporting_host,
            diagnostic_type: match bounces.provider {
                Provider::Gmail => dsn::GMAIL_DIAGNOSTIC_TYPE,
                Provider::Microsoft => dsn::GRAPH_DIAGNOSTIC_TYPE,
            },
            from: &from,
            to: &to,
            will_retry_until: Some(original.received_at + self.max_age)
                .filter(|_| action == Action::Delayed),
            now,
        };
        let composed = dsn::compose(&report).map_err(|err| err.to_string())?;
        let size = composed.raw.len();
        let decision = Decision {
            account: original.account.clone(),
            mailbox: original.mailbox.clone(),
            route: Route {
                subject: sender.subject,
                upload: vec![Piece::Original(0..size)],
            },
        };
        let envelope = dsn_envelope(&to, &bounces.reporting_host, now);
        let entry = Entry {
            message_id: Some(composed.message_id),
            dsn_for: Some(original.id.clone()),
            ..Entry::decided(&envelope, size as u64, decision)
        };
        Ok((entry, composed.raw))
    }
}

/// The envelope of a DSN to `to`, made now by this server: the null reverse-path.
fn dsn_envelope(to: &[String], reporting_host: &str, now: SystemTime) -> Envelope {
    Envelope {
        id: MessageId::generate(),
        mail_from: None,
        rcpt_to: to.iter().map(Address::new).collect(),
        remote: ([127, 0, 0, 1], 0).into(),
        helo: reporting_host.to_string(),
        auth_user: None,
        received_at: now,
    }
}

impl Cause<'_> {
    /// The enhanced status code it reports: Google's, 4.4.7 for an expired message, 5.3.4 or
    /// 5.7.1 for a split message given up (too large, or incomplete).
    pub fn status(&self, entry: &Entry) -> Status {
        match self {
            Cause::Refused(error) | Cause::Delayed { last: error, .. } => error.status(),
            Cause::Expired { .. } => Status::EXPIRED,
            Cause::GivenUp => {
                let route = entry.route.iter().flat_map(|r| &r.upload);
                let upload: usize = route.map(Piece::len).sum();
                match upload as u64 > crate::message::gmail_size::GMAIL_UPLOAD_LIMIT {
                    true => Status::TOO_BIG,
                    false => Status::POLICY,
                }
            }
        }
    }

    /// Google's answer, when there was one: the `Diagnostic-Code`. Failures of this server
    /// itself (its disk, an account no longer configured, a bug) are none.
    fn diagnostic(&self) -> Option<String> {
        match self {
            Cause::Refused(error)
            | Cause::Expired { last: error, .. }
            | Cause::Delayed { last: error, .. } => match error.status() {
                Status::SYSTEM_TEMPORARY | Status::SYSTEM_PERMANENT => None,
                _ => Some(error.summary()),
            },
            Cause::GivenUp => None,
        }
    }

    /// What the sender reads: what happened, and what the operator of the relay can do.
    fn explanation(&self, original: &Entry, max_age: Duration, provider: Provider) -> String {
        let service = provider.service();
        let (issuer, renew) = match provider {
            Provider::Gmail => (
                "Google",
                "`smtp2gmail authorize`, or the service account's key and delegation",
            ),
            Provider::Microsoft => ("Microsoft", "a new client secret or certificate"),
        };
        let retry = format!(
            "the operator of the relay can send it again with `smtp2gmail queue retry {}`",
            original.id
        );
        let account = &original.account;
        let given_up = format!(
            "The relay could not send it within {} (queue.max_age) and gave it up",
            humantime::format_duration(max_age)
        );
        match self {
            Cause::Refused(error) if error.status() == Status::SYSTEM_PERMANENT => format!(
                "The relay failed while sending it ({error}).\n\nOnce smtp2gmail is upgraded, \
                 {retry}."
            ),
            Cause::Refused(_) => format!(
                "{service} refused the message permanently: retrying cannot change its answer.\n\n\
                 If the message should go out after all (the recipient's address was \
                 corrected, an alias was verified), {retry}."
            ),
            Cause::Expired {
                account_gone: true, ..
            } => format!(
                "{given_up}: the {service} account it was routed to ({account}) is no longer \
                 configured on the relay.\n\nIf the account is restored, {retry}."
            ),
            Cause::Expired {
                last: DeliveryError::Credentials { .. },
                ..
            } => format!(
                "{given_up}: {issuer} refused the credentials of the {service} account it is \
                 sent through ({account}).\n\nOnce they are renewed ({renew}), {retry}."
            ),
            Cause::Expired { last, .. } => format!(
                "{given_up}. Its last attempt failed: {}.\n\nOnce the cause is fixed, {retry}.",
                last.summary()
            ),
            Cause::GivenUp => format!(
                "The relay gave the message up without sending it: {}",
                original
                    .dead_reason
                    .as_deref()
                    .unwrap_or("no reason recorded")
            ),
            Cause::Delayed {
                account_gone: true, ..
            } => format!(
                "The {service} account it was routed to ({account}) is no longer configured on the \
                 relay; it goes out if the account is restored."
            ),
            Cause::Delayed {
                last: DeliveryError::Credentials { .. },
                ..
            } => format!(
                "{issuer} refused the credentials of the {service} account it is sent through \
                 ({account}); it goes out once the operator of the relay renews them."
            ),
            Cause::Delayed { last, .. } => format!(
                "Its last attempt failed temporarily ({}); the relay keeps trying.",
                last.summary()
            ),
        }
    }
}

/// The event data about `entry`: who, what, and how far it got; the caller adds the outcome
/// (status, reason, next attempt, Gmail's id).
pub fn message_event(entry: &Entry) -> MessageEvent {
    MessageEvent {
        queue_id: entry.id.clone(),
        message_id: entry.message_id.clone(),
        account: entry.account.clone(),
        mailbox: entry.mailbox.clone(),
        sender: entry.mail_from.clone(),
        recipients: entry.rcpt_to.clone(),
        status: None,
        reason: None,
        received_at: entry.received_at,
        attempts: entry.attempts,
        next_attempt: None,
        gmail_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"From: app@example.com\r\nTo: bob@example.org\r\nMessage-ID: <m1@x>\r\n\
        Subject: Invoice\r\n\r\nbody";

    fn notices(bounce_to: &[&str]) -> Notices {
        let mut config = Config::default();
        config.relay.mode = crate::config::RelayMode::Gmail;
        config.smtp.hostname = "relay.example.com".into();
        config.notify.bounce_to = bounce_to.iter().map(|a| a.to_string()).collect();
        Notices::from_config(&config, Notifier::off())
    }

    fn original() -> Entry {
        let mut entry = Entry::new(
            &crate::queue::test_envelope(SystemTime::now()),
            (HEAD.len()) as u64,
            "support",
        );
        entry.mailbox = Some("app@example.com".into());
        entry.route = Some(Route {
            subject: Some("app@example.com".into()),
            upload: vec![Piece::Original(0..HEAD.len())],
        });
        entry
    }

    fn refused() -> DeliveryError {
        DeliveryError::Permanent {
            status: Status::BAD_MESSAGE,
            reason: "Invalid To header".into(),
        }
    }

    #[test]
    fn a_dsn_is_queued_with_the_null_sender_through_the_original_s_account() {
        let original = original();
        let sender = DsnSender {
            address: Some("relay@example.com".into()),
            subject: Some("app@example.com".into()),
        };
        let error = refused();
        let notices = notices(&["postmaster@example.com"]);
        let (entry, raw) = notices
            .dsn(
                &original,
                HEAD,
                Cause::Refused(&error),
                sender,
                SystemTime::now(),
            )
            .unwrap();
        assert_eq!(entry.mail_from, None);
        assert_eq!(entry.rcpt_to, ["app@example.com", "postmaster@example.com"]);
        assert_eq!(
            (entry.account.as_str(), entry.mailbox.as_deref()),
            ("support", Some("app@example.com"))
        );
        let route = entry.route.as_ref().unwrap();
        assert_eq!(route.subject.as_deref(), Some("app@example.com"));
        assert_eq!(route.upload, [Piece::Original(0..raw.len())]);
        assert_eq!(entry.size, raw.len() as u64);
        assert_eq!(entry.dsn_for.as_deref(), Some(original.id.as_str()));
        let text = String::from_utf8(raw).unwrap();
        assert!(
            text.contains("From: Mail Delivery System <relay@example.com>"),
            "{text}"
        );
        assert!(text.contains("Status: 5.6.0"), "{text}");
        assert!(
            text.contains("Diagnostic-Code: X-Gmail-API; Invalid To header"),
            "{text}"
        );
        assert!(
            text.contains(&format!("smtp2gmail queue retry {}", original.id)),
            "{text}"
        );
        // A DSN about the DSN: never.
        let error = refused();
        let why = notices
            .dsn(
                &entry,
                text.as_bytes(),
                Cause::Refused(&error),
                DsnSender::default(),
                SystemTime::now(),
            )
            .unwrap_err();
        assert!(why.contains("its sender is <>"), "{why}");
    }

    #[test]
    fn each_cause_has_its_status_diagnostic_and_words() {
        let original = original();
        let gone = DeliveryError::local("account support is no longer configured");
        let expired = Cause::Expired {
            last: &gone,
            account_gone: true,
        };
        assert_eq!(expired.status(&original), Status::EXPIRED);
        assert_eq!(expired.diagnostic(), None, "not Google's answer");
        let words = expired.explanation(&original, Duration::from_secs(5 * 86400), Provider::Gmail);
        assert!(
            words.contains("within 5days (queue.max_age)")
                && words.contains("(support) is no longer configured"),
            "{words}"
        );
        let denied = DeliveryError::Credentials {
            account: "support".into(),
            reason: "invalid_grant".into(),
            fix: "run authorize".into(),
            scope: crate::relay::Scope::Account,
        };
        let delayed = Cause::Delayed {
            last: &denied,
            account_gone: false,
        };
        assert_eq!(delayed.status(&original), Status::CREDENTIALS);
        assert_eq!(
            delayed.diagnostic().as_deref(),
            Some("account support: invalid_grant")
        );
        let words = delayed.explanation(&original, Duration::from_secs(3600), Provider::Gmail);
        assert!(words.contains("refused the credentials"), "{words}");
        let mut split = original.clone();
        split.dead_reason = Some("split message <m@x> incomplete".into());
        assert_eq!(Cause::GivenUp.status(&split), Status::POLICY);
        assert!(
            Cause::GivenUp
                .explanation(&split, Duration::MAX, Provider::Gmail)
                .ends_with("without sending it: split message <m@x> incomplete")
        );
    }

    /// The code block of `page` that starts with `first` (its first line), without the fences.
    fn block<'a>(page: &'a str, first: &str) -> &'a str {
        let start = page.find(&format!("```\n{first}")).unwrap() + 4;
        let end = start + page[start..].find("\n```").unwrap();
        &page[start..=end]
    }

    /// The DSN docs/operations.md shows is what this code composes for that dead letter.
    #[test]
    fn the_documented_dsn_is_what_is_composed() {
        let page = include_str!("../../docs/operations.md");
        let received = SystemTime::UNIX_EPOCH + Duration::from_secs(1_777_888_800);
        let mut envelope = crate::queue::test_envelope(received);
        envelope.id = MessageId::from_stored("019de0a1b2c3d4e5f6");
        envelope.rcpt_to = vec![Address::new("bob@example.org")];
        let head = b"From: app@example.com\r\nTo: bob@example.org\r\nSubject: Invoice 42\r\n\
            Message-ID: <inv42@example.com>\r\n\r\n";
        let mut original = Entry::new(&envelope, head.len() as u64, "default");
        let error = DeliveryError::Permanent {
            status: Status::BAD_MESSAGE,
            reason: "Gmail API 400 invalidArgument: Invalid To header".into(),
        };
        original.record(received + Duration::from_secs(930), error.summary());
        let sender = DsnSender {
            address: Some("relay@example.com".into()),
            subject: None,
        };
        let now = received + Duration::from_secs(931);
        let cause = Cause::Refused(&error);
        let (_, raw) = notices(&[])
            .dsn(&original, head, cause, sender, now)
            .unwrap();
        let raw = String::from_utf8(raw).unwrap().replace("\r\n", "\n");

        let shown = block(page, "From: Mail Delivery System");
        let (fields, text) = shown.split_once("\n\n").unwrap();
        for field in fields.lines() {
            assert!(
                raw.contains(&format!("\n{field}\n")) || raw.starts_with(field),
                "{field}"
            );
        }
        let text_part = raw
            .split("Content-Transfer-Encoding: 7bit\n\n")
            .nth(1)
            .unwrap();
        assert_eq!(&text_part[..text.len()], text);
        let report = block(page, "Content-Type: message/delivery-status");
        assert!(raw.contains(report), "{raw}");
    }

    #[test]
    fn without_bounces_there_is_no_dsn() {
        let error = refused();
        let why = Notices::off()
            .dsn(
                &original(),
                HEAD,
                Cause::Refused(&error),
                DsnSender::default(),
                SystemTime::now(),
            )
            .unwrap_err();
        assert_eq!(why, "DSNs are off");
    }
}
