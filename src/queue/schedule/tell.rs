//! The core telling senders and operators what became of a message, right where it applied the
//! outcome (`Scheduler::finish`): a webhook event for each outcome, a DSN for a dead letter or a
//! message still queued after `notify.delay_warning`. Only an outcome the state took (its
//! `settle` answered true) is told: with replicas, the one replica whose lease it was.
//! `queue::notice` says what each says; this module, when, and queues the DSNs.

use std::time::SystemTime;

use super::{MailboxKey, Note, Scheduler, State};
use crate::message::{HEAD_LIMIT, Message};
use crate::notify::{CredentialsEvent, CredentialsState, Detail, EventKind, MessageEvent};
use crate::queue::notice::{Cause, message_event};
use crate::queue::record::{Entry, Place};
use crate::relay::{DeliveryError, Receipt};
use crate::status::Status;

impl<S: State> Scheduler<S> {
    /// Gmail took `entry`.
    pub(super) fn tell_delivered(&self, entry: &Entry, receipt: &Receipt) {
        self.notices.event(EventKind::Delivered, || {
            Detail::Delivered(MessageEvent {
                status: Some(Status::OK),
                gmail_id: Some(receipt.id.clone()),
                attempts: entry.attempts + 1,
                ..message_event(entry)
            })
        });
    }

    /// `entry` failed temporarily with `error` and waits for its next attempt (or its hold).
    pub(super) fn tell_deferred(&self, entry: &Entry, error: &DeliveryError) {
        self.notices.event(EventKind::Deferred, || {
            Detail::Deferred(waiting(entry, error))
        });
    }

    /// `entry` became a dead letter for `cause`: the event, and the DSN. A DSN the queue made
    /// that cannot be delivered is dropped instead, with a log line: never a DSN about a DSN.
    pub(super) async fn tell_dead(&mut self, entry: &Entry, cause: Cause<'_>) {
        self.notices.event(EventKind::DeadLetter, || {
            Detail::DeadLetter(MessageEvent {
                status: Some(cause.status(entry)),
                reason: entry.dead_reason.clone(),
                ..message_event(entry)
            })
        });
        if let (None, Some(about)) = (&entry.mail_from, &entry.dsn_for) {
            tracing::warn!(
                id = %entry.id, dsn_for = %about,
                "undeliverable DSN dropped (there is never a DSN about a DSN)"
            );
            if let Err(err) = self.store.remove(Place::Dead, &entry.id).await {
                tracing::warn!(id = %entry.id, %err, "cannot drop the undeliverable DSN; it stays a dead letter");
            }
            return;
        }
        self.queue_dsn(entry, Place::Dead, cause).await;
    }

    /// Marks `entry` as warned when `notify.delay_warning` is on, it is older than that and not
    /// warned yet; true when it is to be warned about once its record is written.
    pub(super) fn due_for_warning(&self, entry: &mut Entry, now: SystemTime) -> bool {
        let Some(after) = self.notices.delay_warning() else {
            return false;
        };
        let age = now.duration_since(entry.received_at).unwrap_or_default();
        if entry.delay_warned || age < after {
            return false;
        }
        entry.delay_warned = true;
        true
    }

    /// `entry` is still queued after `notify.delay_warning` (it was marked and written): the
    /// event, and the `delayed` DSN.
    pub(super) async fn tell_delayed(&mut self, entry: &Entry, error: &DeliveryError) {
        tracing::info!(id = %entry.id, attempts = entry.attempts, "still queued after notify.delay_warning");
        let cause = Cause::Delayed {
            last: error,
            account_gone: self.courier.limits(&entry.account).is_none(),
        };
        self.notices.event(EventKind::Delayed, || {
            Detail::Delayed(waiting(entry, error))
        });
        self.queue_dsn(entry, Place::Queue, cause).await;
    }

    /// The account or mailbox `key` was held for its credentials or setup (`error`), news.
    pub(super) fn tell_held(&self, key: &MailboxKey, mailbox: bool, error: &DeliveryError) {
        let reason = match error {
            DeliveryError::Credentials { reason, fix, .. } => format!("{reason}; {fix}"),
            other => format!("{}; {}", other.summary(), super::verdict::PRECONDITION_FIX),
        };
        self.tell_credentials(key, mailbox, CredentialsState::Held, Some(reason));
    }

    /// The account of `key` was resumed: its pause and its mailboxes' holds ended (`why`).
    pub(super) fn tell_resumed(&self, key: &MailboxKey, why: &str) {
        tracing::info!(account = %key.account, "account resumed: {why}");
        self.tell_credentials(key, false, CredentialsState::Resumed, None);
    }

    fn tell_credentials(
        &self,
        key: &MailboxKey,
        mailbox: bool,
        state: CredentialsState,
        reason: Option<String>,
    ) {
        self.notices.event(EventKind::Credentials, || {
            Detail::Credentials(CredentialsEvent {
                account: key.account.clone(),
                mailbox: key.user.clone().filter(|_| mailbox),
                state,
                reason,
            })
        });
    }

    /// A send of an account seen paused went through: the account works again. Resumed in the
    /// state (on the spool this is the probe that went through; with replicas the first replica
    /// to see it: the state answers whether it was news), and told once.
    pub(super) async fn resume_after(&mut self, key: &MailboxKey) {
        let key = MailboxKey {
            account: key.account.clone(),
            user: None,
        };
        match self.state.note(&key, Note::Resumed).await {
            Ok(true) => self.tell_resumed(&key, "a held message went through"),
            Ok(false) => {}
            Err(err) => tracing::warn!(%err, "cannot resume the account in the queue"),
        }
    }

    /// Composes the DSN about `original` (stored in `place`) for `cause` and queues it, or says
    /// in the log why there is none. Its queue id is logged, so the operator can follow it.
    async fn queue_dsn(&mut self, original: &Entry, place: Place, cause: Cause<'_>) {
        if !self.notices.bounces() {
            return;
        }
        let head = match self.store.message(place, original).await {
            Ok(Some(message)) => message
                .head(HEAD_LIMIT)
                .await
                .map_err(|err| err.to_string()),
            // Deleted meanwhile: nothing to report on.
            Ok(None) => return,
            Err(err) => Err(err.to_string()),
        };
        let head = match head {
            Ok(head) => head,
            Err(err) => {
                tracing::error!(id = %original.id, %err, "cannot read the message for its DSN; the sender is not told");
                return;
            }
        };
        let sender = self.courier.dsn_sender(original);
        let now = self.clock.now();
        let (dsn, raw) = match self.notices.dsn(original, &head, cause, sender, now) {
            Ok(dsn) => dsn,
            Err(why) => {
                tracing::info!(id = %original.id, "no DSN: {why}");
                return;
            }
        };
        let (dsn_id, to) = (dsn.id.clone(), dsn.rcpt_to.join(", "));
        let delayed = matches!(cause, Cause::Delayed { .. });
        match self.state.enqueue(dsn, &Message::from_bytes(raw)).await {
            Ok(()) => tracing::info!(id = %original.id, dsn = %dsn_id, %to, delayed, "DSN queued"),
            Err(err) => {
                tracing::error!(id = %original.id, %err, "cannot queue the DSN; the sender is not told")
            }
        }
    }
}

/// The event data of `entry` waiting after `error`: its status and reason, and when it is tried
/// next (none for held mail: it goes out when the hold lifts).
fn waiting(entry: &Entry, error: &DeliveryError) -> MessageEvent {
    MessageEvent {
        status: Some(error.status()),
        reason: Some(error.summary()),
        next_attempt: entry.held.is_none().then_some(entry.next_attempt),
        ..message_event(entry)
    }
}
