//! The scheduler core's state interface: what the core needs to remember between attempts, and
//! where. Two implementations: [`super::memory::MemoryState`] (the one server on a spool keeps
//! it in memory) and `queue::shared::SharedState` (replicas keep it in PostgreSQL, where every
//! replica sees the same mailboxes and accounts).
//!
//! The interface has no policy in it: which outcome pauses an account, how long a message waits,
//! when a streak of "Precondition check failed." holds a mailbox, what an operator's retry lifts
//! are decided once, in the core (`schedule`), and the state only keeps what was decided. A
//! behaviour added to the core therefore works on both backends.
//!
//! # What the backends do differently
//!
//! This is the one place that says so:
//! - [`State::MAX_IN_FLIGHT`]: the database bounds one replica's deliveries at once (a claim is
//!   a few round trips; replicas share the work), the spool does not (its mailboxes bound it).
//! - [`State::IDLE`] and [`State::BLOCKED`]: how long the core sleeps with nothing claimable.
//!   The spool's state changes only in this process (new mail is announced to it, outcomes come
//!   back to it), the database's also in other replicas (it wakes on `NOTIFY`, and polls for
//!   what no notification reports: a lease lapsing, a deferral ending).
//! - The probe of a paused account: the spool lets one mailbox send one message when the
//!   account's probe time comes; the database lets every replica claim again from then on (a
//!   failure pauses the account again). Holding the probe to one message across replicas would
//!   need a claim on the account's row; not done yet.
//! - A retry of a message whose delivery is running is refused on both: the spool's server knows
//!   its deliveries in flight; the database knows a live lease, looked up just before the retry's
//!   update (a claim between the two is not caught).
//! - The `queue` commands: the spool's state is in the server's memory, so a command reaches it
//!   through the spool's request files ([`crate::queue::store::CommandChannel`]); the database's
//!   state is in the tables every replica and every command uses, so commands act directly.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::mailboxes::MailboxKey;
use crate::message::Message;
use crate::queue::control::ControlError;
use crate::queue::record::Entry;
use crate::queue::store::{Store, StoreError};
use crate::relay::gmail::accounts::DEFAULT_CONCURRENT_SENDS;

/// A consequence of an attempt's outcome for a mailbox or (for `Paused` and `Resumed`) its
/// account, decided by the core and kept by the state.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// A delivery went through (or failed for the message's own sake): the mailbox's rate
    /// recovers a step, its streak of failed preconditions ends, and a probing account resumes.
    Sent,
    /// Rate limited: the mailbox's rate halves.
    Throttled,
    /// The daily sending limit: the mailbox sends nothing before this time.
    Deferred(SystemTime),
    /// The mailbox cannot send until it is fixed; probed again at this time.
    Held(SystemTime),
    /// The account's credentials are refused; probed again at this time.
    Paused(SystemTime),
    /// The account's credentials changed (or an operator asked): its pause and its mailboxes'
    /// holds end now.
    Resumed,
}

/// How a claimed message's attempt ended, to be written down (and its claim ended).
#[derive(Debug)]
pub enum Settled {
    /// Gmail took it; the delivery removed it already.
    Sent(Entry),
    /// It waits for its `next_attempt` (or its hold), under this record.
    Retry(Entry),
    /// A dead letter, under this record.
    Dead(Entry),
}

/// The limits every backend applies the same way, from the configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `queue.max_send_rate`: the most sends per second per mailbox (the adaptive rate starts
    /// here and never goes above).
    pub max_send_rate: f64,
    /// The most deliveries at once per mailbox, by account (`max_concurrent_sends`).
    pub max_sends: HashMap<String, usize>,
}

impl Limits {
    /// The most deliveries at once for a mailbox of `account`. An account that is no longer
    /// configured gets the default, like any account that does not set it: its messages either
    /// fail at once without reaching Google or (records older than stored decisions) are routed
    /// again to a configured account, whose Gmail limits are real (docs/design.md, "One
    /// scheduler core, two state backends").
    pub fn max_sends(&self, account: &str) -> usize {
        self.max_sends
            .get(account)
            .copied()
            .unwrap_or(DEFAULT_CONCURRENT_SENDS)
    }
}

/// What the scheduler core keeps between attempts (see the module docs).
#[async_trait::async_trait]
pub trait State: Send + 'static {
    /// The most deliveries this process runs at once, over all mailboxes.
    const MAX_IN_FLIGHT: usize;
    /// The longest sleep when nothing is claimable.
    const IDLE: Duration;
    /// The sleep when something is due but not claimable (a mailbox at its concurrency limit).
    const BLOCKED: Duration;

    /// The records, for what the core reads itself (metrics, the commands).
    fn store(&self) -> &dyn Store;

    /// How often the core looks at the commands, reports metrics and runs [`State::upkeep`].
    fn tick(&self) -> Duration;

    /// Returns once new mail may be claimable (announced to this process, or another replica
    /// said so), or after `timeout`; with a zero timeout, takes in what was announced already.
    async fn wait_for_mail(&mut self, timeout: Duration);

    /// Claims up to `room` messages that may be sent now: due, their mailbox neither deferred nor
    /// held and with a send slot and a concurrency slot free (`limits`), their account not paused.
    /// Each keeps its concurrency slot until it is [settled](State::settle).
    async fn claim(
        &mut self,
        limits: &Limits,
        room: usize,
        now: SystemTime,
    ) -> Result<Vec<Entry>, StoreError>;

    /// When the earliest queued message may become claimable; `None` when nothing is queued.
    async fn next_due(&mut self, now: SystemTime) -> Result<Option<SystemTime>, StoreError>;

    /// Writes down how a claimed message's attempt ended and ends its claim. False when the
    /// message is no longer this process's to write: deleted meanwhile, or taken over by another
    /// replica after its lease lapsed (that outcome counts).
    async fn settle(&mut self, limits: &Limits, settled: Settled) -> Result<bool, StoreError>;

    /// Queues a message the core made itself (a DSN), durably, to be claimed like any other: the
    /// spool's state schedules it, replicas hear of it from the database.
    async fn enqueue(&mut self, entry: Entry, message: &Message) -> Result<(), StoreError>;

    /// Keeps a consequence for a mailbox or its account. True when it is news (the mailbox was
    /// not held, the account not paused, already): the core then says so in the log once.
    async fn note(&mut self, key: &MailboxKey, note: Note) -> Result<bool, StoreError>;

    /// Counts one more "Precondition check failed." for the mailbox; returns how many in a row
    /// (a send that goes through, [`Note::Sent`], ends the streak, as does [`Note::Resumed`]).
    async fn precondition(&mut self, key: &MailboxKey) -> Result<u32, StoreError>;

    /// An operator's retry: the message is due now (a dead letter moves back to the queue).
    /// Returns its record and what was done.
    async fn due_now(&mut self, id: &str, now: SystemTime)
    -> Result<(Entry, String), ControlError>;

    /// An operator's retry lifts the mailbox's deferral and hold and, if its account is paused,
    /// resumes the account. True when anything was lifted.
    async fn lift(&mut self, key: &MailboxKey) -> Result<bool, StoreError>;

    /// An operator's delete, from the queue, the held transactions or the dead letters.
    async fn delete(&mut self, id: &str) -> Result<String, ControlError>;

    /// How many messages wait per account and when the oldest was received, for `/metrics`;
    /// `None` when this tick should not report (counting costs the database a query).
    async fn depths(&mut self) -> Option<Result<HashMap<String, (usize, SystemTime)>, StoreError>>;

    /// Runs every [`State::tick`]: the spool forgets idle mailboxes, a replica renews the leases
    /// of its `in_flight` deliveries.
    async fn upkeep(&mut self, in_flight: usize, now: SystemTime);
}
