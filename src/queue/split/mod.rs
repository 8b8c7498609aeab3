//! Messages an MTA splits into several transactions: held, merged, sent once.
//!
//! Postfix as a relayhost sends a message with more recipients than its
//! `smtp_destination_recipient_limit` (50) as several SMTP transactions with the same bytes: the
//! To/Cc headers name everyone, each envelope only its share. Gmail delivers to every header
//! address whatever the envelope says, so relaying each transaction would refuse the first
//! (header-only recipients) or, under `header_only_recipients = "allow"`, send everyone one copy
//! per transaction.
//!
//! In queue mode such a transaction — one whose envelope leaves out some of its header
//! recipients — is stored durably like any queued message (fsync before 250), but in `held/`
//! ([`Intake`]). Transactions with the same sender and the same exact bytes (so the same
//! Message-ID) form one group ([`group`]); once the union of their envelopes names every header
//! recipient, and no further transaction arrived for [`SETTLE`], one message with the union
//! envelope is queued and the held transactions are removed ([`Splitter`]). Envelope-only
//! recipients of the union become Bcc as for any message. A group still incomplete when
//! `queue.split_window` has passed since its first transaction is left to the account's
//! `header_only_recipients`: `reject` makes it a dead letter with the reason (250 was already
//! given), `allow` queues it once with the union envelope.
//!
//! Who keeps the groups depends on the backend; what a release makes does not ([`release`]):
//! - the spool's one server keeps them in its memory ([`Splitter`]). A merge is crash-safe
//!   through a record written before anything moves ([`journal`]): at start an interrupted merge
//!   is completed from it;
//! - replicas keep them in the database, where any replica releases a group that is due, even
//!   one whose transactions another replica held before it died ([`shared`]). A merge is one
//!   database transaction.
//!
//! The record of a merge stays for `queue.max_age` on both, so a transaction the client sends
//! again later (its 250 was lost) is recognised and dropped instead of sending the message a
//! second time.

mod group;
mod journal;
mod release;
pub mod shared;
mod splitter;

use std::collections::BTreeSet;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use super::record::{Entry, IfIncomplete, Place, SplitRecord};
use super::store::{MergeJournal, Store};
use crate::config::{HeaderOnlyRecipients, QueueConfig};
use crate::message::headers::{Headers, header_end};
use crate::message::recipient_rules::Provider;
use crate::message::{Envelope, HEAD_LIMIT, Message};
use crate::relay::{DeliveryError, Gmail, Receipt};
use release::Rules;
use shared::{SharedGroups, SharedSplitter};

pub use splitter::Splitter;

/// What the splitter needs from the relay: the account's rule for header-only recipients, which
/// decides what becomes of a message whose transactions never all arrive. Read when a
/// transaction is held and stored with it: the merge itself decides nothing again (the merged
/// message's Bcc is the union of its transactions' stored decisions).
pub trait Routing: Send + Sync + 'static {
    /// `header_only_recipients` of the account called `account` (the default when it is gone).
    fn header_only_recipients(&self, account: &str) -> HeaderOnlyRecipients;

    /// The provider and the most its upload may be: a merged message's Bcc may take it over.
    fn upload_limit(&self) -> (Provider, u64) {
        (
            Provider::Gmail,
            crate::message::gmail_size::GMAIL_UPLOAD_LIMIT,
        )
    }
}

impl Routing for Gmail {
    fn header_only_recipients(&self, account: &str) -> HeaderOnlyRecipients {
        self.router()
            .account(account)
            .map_or(HeaderOnlyRecipients::default(), |a| {
                a.policy.header_only_recipients
            })
    }

    fn upload_limit(&self) -> (Provider, u64) {
        (self.provider(), Gmail::upload_limit(self))
    }
}

/// The queue's word for an account's `header_only_recipients`, stored with a held transaction.
fn if_incomplete(rule: HeaderOnlyRecipients) -> IfIncomplete {
    match rule {
        HeaderOnlyRecipients::Allow => IfIncomplete::Send,
        HeaderOnlyRecipients::Reject => IfIncomplete::Refuse,
    }
}

/// After the last transaction that completed a group, how long more of them may still arrive
/// (envelope-only recipients in a transaction of their own) before the merged message is queued.
/// An MTA hands all transactions of a message to its delivery agents at once, so they arrive
/// within a fraction of a second of each other.
pub const SETTLE: Duration = Duration::from_secs(2);

/// A transaction recognised as one part of a split message.
#[derive(Debug)]
pub struct Part {
    message_id: String,
    /// The header recipients, normalized.
    header: BTreeSet<String>,
}

impl Part {
    /// The envelope the merged message will have once every part has arrived: this one plus
    /// every header recipient. Routing and the From rules are checked with it before the 250, so
    /// a held transaction is refused for what would refuse the message, not for being a part.
    pub fn completed(&self, envelope: &Envelope) -> Envelope {
        let mut completed = envelope.clone();
        let named = named(envelope);
        let missing = self.header.iter().filter(|a| !named.contains(*a));
        completed
            .rcpt_to
            .extend(missing.map(|a| crate::message::Address::new(a.clone())));
        completed
    }
}

/// The envelope recipients, normalized.
fn named(envelope: &Envelope) -> BTreeSet<String> {
    let rcpt_to = envelope.rcpt_to.iter();
    rcpt_to.map(crate::message::Address::mailbox_key).collect()
}

/// The header recipients of a message head, normalized; `None` when an entry names no readable
/// address (no transaction could ever cover it).
fn header_recipients(headers: &Headers) -> Option<BTreeSet<String>> {
    if headers.recipient_fields().any(|f| !f.unparsed.is_empty()) {
        return None;
    }
    Some(headers.recipients().into_iter().collect())
}

/// The header recipients of a held transaction, read from its stored head; `None` when it is
/// gone or its headers cannot be read.
async fn header_of(store: &dyn Store, entry: &Entry) -> Option<BTreeSet<String>> {
    let head = match store.message(Place::Held, entry).await {
        Ok(Some(message)) => message.head(HEAD_LIMIT).await.ok()?,
        _ => return None,
    };
    header_recipients(&Headers::read(&head))
}

/// The Message-ID of a message head, without its angle brackets.
fn message_id(head: &[u8]) -> Option<String> {
    let section = &head[..header_end(head)];
    let parsed = mail_parser::MessageParser::new().parse_headers(section)?;
    let id = parsed.message_id()?.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// The accepting side: recognises parts and holds them.
pub struct Intake {
    routing: Arc<dyn Routing>,
    window: Duration,
    keeping: Keeping,
}

/// Who keeps the groups, and how a held part reaches them.
enum Keeping {
    /// The spool's splitter, in the one server's memory: the part is stored, then announced.
    Memory {
        store: Arc<dyn Store>,
        parts: mpsc::UnboundedSender<HeldPart>,
    },
    /// The database every replica shares: the part is stored with its group, then this
    /// replica's splitter is woken to look at the group.
    Shared {
        groups: Arc<dyn SharedGroups>,
        wake: Arc<Notify>,
    },
}

/// A held part announced to the [`Splitter`].
#[derive(Debug)]
pub struct HeldPart {
    entry: Entry,
    header: BTreeSet<String>,
}

impl Intake {
    /// Recognises a transaction to hold: holding is on, the message has a Message-ID (every MTA
    /// that splits writes one; without it parts could not be told apart from unrelated mail),
    /// every header entry is a readable address, and the envelope leaves some of them out.
    pub fn recognise(&self, envelope: &Envelope, head: &[u8], headers: &Headers) -> Option<Part> {
        if self.window.is_zero() {
            return None;
        }
        let header = header_recipients(headers)?;
        if header.is_subset(&named(envelope)) {
            return None;
        }
        Some(Part {
            message_id: message_id(head)?,
            header,
        })
    }

    /// Stores `part` durably as held and hands it to whoever groups it; the receipt is its
    /// queue id.
    pub async fn hold(
        &self,
        part: Part,
        envelope: &Envelope,
        message: &Message,
        mut entry: Entry,
    ) -> Result<Receipt, DeliveryError> {
        let group = group_key(envelope, message).await.map_err(|err| {
            DeliveryError::local(format!("cannot read the message, try again later: {err}"))
        })?;
        entry.next_attempt = envelope.received_at + self.window;
        entry.split = Some(SplitRecord {
            group,
            message_id: part.message_id.clone(),
            header_recipients: part.header.len(),
            incomplete: Some(if_incomplete(
                self.routing.header_only_recipients(&entry.account),
            )),
            parts: Vec::new(),
            uncovered: Vec::new(),
        });
        let (stored, store): (_, &dyn Store) = match &self.keeping {
            Keeping::Memory { store, .. } => {
                (store.put(Place::Held, &entry, message).await, &**store)
            }
            Keeping::Shared { groups, .. } => {
                let now = std::time::SystemTime::now();
                let held = groups.hold(&entry, &part.header, message, now).await;
                (held, &**groups)
            }
        };
        if let Err(err) = stored {
            tracing::error!(id = %envelope.id, %err, store = %store.describe(), "cannot hold the message");
            return Err(DeliveryError::local(
                "cannot queue the message, try again later",
            ));
        }
        tracing::info!(
            id = %entry.id,
            message_id = %part.message_id,
            recipients = entry.rcpt_to.len(),
            header_recipients = part.header.len(),
            "held for the other transactions of its message"
        );
        match &self.keeping {
            // The splitter stops only at shutdown; the part is stored and is loaded at the next
            // start.
            Keeping::Memory { parts, .. } => {
                let _ = parts.send(HeldPart {
                    entry,
                    header: part.header,
                });
            }
            Keeping::Shared { wake, .. } => wake.notify_one(),
        }
        Ok(Receipt {
            id: envelope.id.to_string(),
            queued: true,
        })
    }
}

/// The group a transaction belongs to: the same sender and AUTH identity and the same bytes
/// (Message-ID included). Two applications sending identical bytes from the same sender are the
/// same message as far as anyone can tell.
async fn group_key(envelope: &Envelope, message: &Message) -> io::Result<String> {
    let mut hash = Hashing(Sha256::new());
    hash.0.update(b"smtp2gmail split v1\0");
    hash.0.update(envelope.sender_display().as_bytes());
    hash.0.update(b"\0");
    hash.0
        .update(envelope.auth_user.as_deref().unwrap_or_default().as_bytes());
    hash.0.update(b"\0");
    message.copy_to(&mut hash).await?;
    let digest = hash.0.finalize();
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// Hashes whatever is written to it, so a spilled 35 MB body is hashed as it streams.
struct Hashing(Sha256);

impl tokio::io::AsyncWrite for Hashing {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().0.update(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The splitter of a queue, to run until shutdown: the spool's or the replicas'.
pub enum Task {
    /// Groups in the one server's memory.
    Memory(Box<Splitter>),
    /// Groups in the database replicas share.
    Shared(SharedSplitter),
}

impl Task {
    /// Runs until `shutdown`; held transactions stay stored.
    pub async fn run(self, shutdown: CancellationToken) {
        match self {
            Task::Memory(splitter) => splitter.run(shutdown).await,
            Task::Shared(splitter) => splitter.run(shutdown).await,
        }
    }
}

fn rules(config: &QueueConfig, routing: Arc<dyn Routing>) -> Rules {
    Rules {
        window: config.split_window,
        routing,
    }
}

/// The intake and the splitter of the spool: groups in the one server's memory, merges through
/// `journal`, merged messages announced to the scheduler through `scheduled`, split messages
/// given up through `given_up` (the core tells of them).
pub fn in_memory(
    store: &Arc<dyn Store>,
    journal: Arc<dyn MergeJournal>,
    config: &QueueConfig,
    routing: Arc<dyn Routing>,
    (scheduled, given_up): (mpsc::UnboundedSender<Entry>, mpsc::UnboundedSender<Entry>),
) -> (Intake, Task) {
    let (parts, incoming) = mpsc::unbounded_channel();
    let intake = Intake {
        routing: routing.clone(),
        window: config.split_window,
        keeping: Keeping::Memory {
            store: store.clone(),
            parts,
        },
    };
    let rules = rules(config, routing);
    let splitter = Splitter::new(
        store.clone(),
        journal,
        config,
        rules,
        (scheduled, given_up),
        incoming,
    );
    (intake, Task::Memory(Box::new(splitter)))
}

/// The intake and the splitter of one replica: groups in the database `groups` every replica
/// shares (a merged message wakes the replicas' schedulers through it).
pub fn shared(
    groups: Arc<dyn SharedGroups>,
    config: &QueueConfig,
    routing: Arc<dyn Routing>,
    given_up: mpsc::UnboundedSender<Entry>,
) -> (Intake, Task) {
    let wake = Arc::new(Notify::new());
    let intake = Intake {
        routing: routing.clone(),
        window: config.split_window,
        keeping: Keeping::Shared {
            groups: groups.clone(),
            wake: wake.clone(),
        },
    };
    let rules = rules(config, routing);
    let splitter = SharedSplitter::new(groups, rules, config.max_age, wake, given_up);
    (intake, Task::Shared(splitter))
}

/// The relay's side for the splitter's tests: `reject`.
#[cfg(test)]
struct Rejecting;

#[cfg(test)]
impl Routing for Rejecting {
    fn header_only_recipients(&self, _: &str) -> HeaderOnlyRecipients {
        HeaderOnlyRecipients::Reject
    }
}

/// A held transaction's record for the tests: group `g`, Message-ID `m@x`, `size` 0.
#[cfg(test)]
fn test_part(id: &str, at: std::time::SystemTime, rcpt: &[&str]) -> Entry {
    let mut envelope = crate::queue::test_envelope(at);
    envelope.id = crate::message::MessageId::from_stored(id);
    envelope.rcpt_to = rcpt
        .iter()
        .map(|a| crate::message::Address::new(*a))
        .collect();
    let mut entry = Entry::new(&envelope, 0, "default");
    entry.split = Some(SplitRecord {
        group: "g".into(),
        message_id: "m@x".into(),
        header_recipients: 0,
        incomplete: None,
        parts: Vec::new(),
        uncovered: Vec::new(),
    });
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"Message-ID: <m1@example.com>\r\nTo: a@x.org, B <B@x.org>\r\n\
        Cc: c@x.org\r\n\r\nbody";

    fn intake(window: Duration) -> Intake {
        Intake {
            routing: Arc::new(Rejecting),
            window,
            keeping: Keeping::Memory {
                store: Arc::new(
                    crate::queue::spool::Spool::open(tempfile::tempdir().unwrap().path()).unwrap(),
                ),
                parts: mpsc::unbounded_channel().0,
            },
        }
    }

    fn envelope(rcpt: &[&str]) -> Envelope {
        let mut envelope = crate::queue::test_envelope(std::time::SystemTime::now());
        envelope.rcpt_to = rcpt
            .iter()
            .map(|a| crate::message::Address::new(*a))
            .collect();
        envelope
    }

    #[test]
    fn a_transaction_naming_some_header_recipients_is_a_part() {
        let intake = intake(Duration::from_secs(60));
        let part = intake
            .recognise(
                &envelope(&["a@x.org", "bcc@y.org"]),
                HEAD,
                &Headers::read(HEAD),
            )
            .unwrap();
        assert_eq!(part.message_id, "m1@example.com");
        let completed = part.completed(&envelope(&["a@x.org", "bcc@y.org"]));
        let names: Vec<&str> = completed.rcpt_to.iter().map(|a| a.as_str()).collect();
        assert_eq!(names, ["a@x.org", "bcc@y.org", "b@x.org", "c@x.org"]);
        // Every header recipient named (in another case): an ordinary message.
        let whole = envelope(&["A@X.org", "b@x.org", "c@x.org", "bcc@y.org"]);
        assert!(
            intake
                .recognise(&whole, HEAD, &Headers::read(HEAD))
                .is_none()
        );
    }

    #[test]
    fn what_is_never_held() {
        let part = envelope(&["a@x.org"]);
        assert!(
            intake(Duration::ZERO)
                .recognise(&part, HEAD, &Headers::read(HEAD))
                .is_none()
        );
        let intake = intake(Duration::from_secs(60));
        let no_id = b"To: a@x.org, b@x.org\r\n\r\nbody";
        assert!(
            intake
                .recognise(&part, no_id, &Headers::read(no_id))
                .is_none()
        );
        let unreadable = b"Message-ID: <m@x>\r\nTo: a@x.org, bob\r\n\r\n";
        assert!(
            intake
                .recognise(&part, unreadable, &Headers::read(unreadable))
                .is_none()
        );
    }

    #[tokio::test]
    async fn the_group_is_the_sender_and_the_exact_bytes() {
        let key = |from: &str, auth: Option<&str>, bytes: &[u8]| {
            let mut envelope = envelope(&["a@x.org"]);
            envelope.mail_from = Some(crate::message::Address::new(from));
            envelope.auth_user = auth.map(str::to_string);
            let message = Message::from_bytes(bytes.to_vec());
            async move { group_key(&envelope, &message).await.unwrap() }
        };
        let base = key("s@x.org", None, HEAD).await;
        assert_eq!(base.len(), 64);
        assert_eq!(base, key("s@x.org", None, HEAD).await);
        assert_ne!(base, key("t@x.org", None, HEAD).await);
        assert_ne!(base, key("s@x.org", Some("app"), HEAD).await);
        assert_ne!(base, key("s@x.org", None, &HEAD[1..]).await);
    }
}
