//! `smtp2gmail queue list | show ID | retry ID | retry --all | delete ID`: inspect and steer the
//! spool, whether or not a server is running (see `queue::control` for how that is made safe).

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Subcommand;

use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::config::Config;
use crate::message::HEAD_LIMIT;
use crate::queue::Commands;
use crate::queue::record::{Entry, Place, Request, SplitRecord, is_valid_id};
use crate::queue::schedule::verdict;
use crate::queue::store::Store;

/// What to do with the queue.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List queued messages and dead letters
    List,
    /// Show one message: envelope, headers, attempt history
    Show {
        /// The queue id
        id: String,
    },
    /// Deliver now (dead letters move back to the queue)
    Retry {
        /// The queue id
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// Every queued message and dead letter
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Remove a message from the queue or the dead letters
    Delete {
        /// The queue id
        id: String,
    },
}

/// Runs a queue command.
pub async fn run(config: &Config, command: QueueCommand) -> ExitCode {
    let commands = match crate::queue::open_for_commands(&config.queue).await {
        Ok(Some(commands)) => commands,
        Ok(None) => {
            println!(
                "no spool at {} (nothing has been queued there)",
                config.queue.dir.display()
            );
            return ExitCode::SUCCESS;
        }
        Err(err) => return fail(EXIT_FAILURE, &err.to_string()),
    };
    let id = match &command {
        QueueCommand::Show { id }
        | QueueCommand::Delete { id }
        | QueueCommand::Retry { id: Some(id), .. } => Some(id),
        _ => None,
    };
    if let Some(id) = id.filter(|id| !is_valid_id(id)) {
        return fail(EXIT_USAGE, &format!("{id:?} is not a queue id"));
    }
    match command {
        QueueCommand::List => list(commands.store()).await,
        QueueCommand::Show { id } => show(commands.store(), &id).await,
        QueueCommand::Retry { id, .. } => steer(&commands, Request::Retry { id }).await,
        QueueCommand::Delete { id } => steer(&commands, Request::Delete { id }).await,
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("smtp2gmail: {message}");
    ExitCode::from(code)
}

fn ago(at: SystemTime) -> String {
    let seconds = SystemTime::now()
        .duration_since(at)
        .unwrap_or_default()
        .as_secs();
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

fn until(at: SystemTime) -> String {
    match at.duration_since(SystemTime::now()) {
        Ok(wait) => format!(
            "in {}",
            humantime::format_duration(Duration::from_secs(wait.as_secs()))
        ),
        Err(_) => "due".to_string(),
    }
}

async fn list(store: &dyn Store) -> ExitCode {
    let mut total = 0;
    for place in [Place::Queue, Place::Held, Place::Dead] {
        let (entries, broken) = match store.list(place).await {
            Ok(listed) => listed,
            Err(err) => {
                let what = store.describe();
                return fail(EXIT_FAILURE, &format!("cannot read {what}: {err}"));
            }
        };
        for (id, err) in broken {
            println!("{id}  UNREADABLE RECORD: {err}");
        }
        let holds = Holds::of(&entries);
        for entry in &entries {
            let state = match place {
                Place::Queue => match holds.of_entry(entry) {
                    Some(why) => format!("HELD: {why}"),
                    None => format!(
                        "next attempt {}",
                        until(entry.next_attempt).replace("due", "now")
                    ),
                },
                Place::Held => format!(
                    "HELD for the other transactions of <{}> (window ends {})",
                    entry.split.as_ref().map_or("", |s| s.message_id.as_str()),
                    until(entry.next_attempt).replace("due", "now")
                ),
                Place::Dead => "DEAD LETTER".to_string(),
            };
            println!(
                "{}  age {}  from {}  to {}  {} bytes  {} attempts  {}{}",
                entry.id,
                ago(entry.received_at),
                entry.mail_from.as_deref().unwrap_or("<>"),
                entry.rcpt_to.join(","),
                entry.size,
                entry.attempts,
                state,
                entry
                    .last_error
                    .as_deref()
                    .map(|e| format!("  last error: {e}"))
                    .unwrap_or_default(),
            );
        }
        total += entries.len();
    }
    if total == 0 {
        println!("the queue is empty");
    }
    ExitCode::SUCCESS
}

/// What holds the queued mail back, read off the records: a paused account (or held mailbox)
/// tries one message at a time, so the rest of its mail is as held as the one whose record says
/// so, although their due times have passed.
struct Holds<'a> {
    accounts: HashMap<&'a str, &'a str>,
    mailboxes: HashMap<(&'a str, Option<&'a str>), &'a str>,
}

impl<'a> Holds<'a> {
    fn of(entries: &'a [Entry]) -> Holds<'a> {
        let mut holds = Holds {
            accounts: HashMap::new(),
            mailboxes: HashMap::new(),
        };
        for entry in entries {
            let Some(why) = entry.held.as_deref() else {
                continue;
            };
            if why == verdict::HELD_FOR_ACCOUNT {
                holds.accounts.insert(&entry.account, why);
            } else {
                let mailbox = (entry.account.as_str(), entry.mailbox.as_deref());
                holds.mailboxes.insert(mailbox, why);
            }
        }
        holds
    }

    /// Why `entry` waits, if it is held: its own record, or its account's or mailbox's hold
    /// when it is due and would otherwise go now.
    fn of_entry(&self, entry: &'a Entry) -> Option<&'a str> {
        if let Some(why) = entry.held.as_deref() {
            return Some(why);
        }
        if entry.next_attempt > SystemTime::now() {
            return None;
        }
        let mailbox = (entry.account.as_str(), entry.mailbox.as_deref());
        self.accounts
            .get(entry.account.as_str())
            .or_else(|| self.mailboxes.get(&mailbox))
            .copied()
    }
}

async fn show(store: &dyn Store, id: &str) -> ExitCode {
    let mut found = None;
    for place in [Place::Queue, Place::Held, Place::Dead] {
        match store.read(place, id).await {
            Ok(Some(entry)) => {
                found = Some((place, entry));
                break;
            }
            Ok(None) => {}
            Err(err) => return fail(EXIT_FAILURE, &format!("{id}: {err}")),
        }
    }
    let Some((place, entry)) = found else {
        return fail(EXIT_FAILURE, &format!("{id}: no such message"));
    };
    print_entry(&entry, place);
    let raw = match store.message(place, &entry).await {
        Ok(Some(message)) => message.head(HEAD_LIMIT).await.unwrap_or_default(),
        _ => Default::default(),
    };
    let end = crate::message::headers::header_end(&raw);
    println!(
        "\nheaders:\n{}",
        String::from_utf8_lossy(&raw[..end]).trim_end()
    );
    ExitCode::SUCCESS
}

fn print_entry(entry: &Entry, place: Place) {
    println!("id:           {}", entry.id);
    println!(
        "state:        {}",
        match place {
            Place::Queue => "queued",
            Place::Held => "held: one transaction of a split message, waiting for the others",
            Place::Dead => "dead letter",
        }
    );
    println!(
        "received:     {} ago from {} ({})",
        ago(entry.received_at),
        entry.remote,
        entry.helo
    );
    println!(
        "from:         {}",
        entry.mail_from.as_deref().unwrap_or("<>")
    );
    println!("to:           {}", entry.rcpt_to.join(", "));
    println!("size:         {} bytes", entry.size);
    println!("account:      {}", entry.account);
    println!("attempts:     {}", entry.attempts);
    if let Some(about) = &entry.dsn_for {
        println!("DSN about:    {about}");
    }
    if entry.delay_warned {
        println!("delay warning sent");
    }
    match place {
        Place::Queue => match &entry.held {
            Some(why) => println!("held:         {why}"),
            None => println!("next attempt: {}", until(entry.next_attempt)),
        },
        Place::Held => println!("held until:   {} at most", until(entry.next_attempt)),
        Place::Dead => {}
    }
    if let Some(split) = &entry.split {
        print_split(split);
    }
    if let Some(reason) = &entry.dead_reason {
        println!("dead because: {reason}");
    }
    for attempt in &entry.history {
        println!(
            "  {}  {}",
            humantime::format_rfc3339_seconds(attempt.at),
            attempt.outcome
        );
    }
}

/// What a held or merged message's record says about the transactions it came in.
fn print_split(split: &SplitRecord) {
    println!("message-id:   <{}>", split.message_id);
    println!("header rcpts: {}", split.header_recipients);
    if !split.parts.is_empty() {
        println!(
            "merged from:  {} transactions: {}",
            split.parts.len(),
            split.parts.join(", ")
        );
    }
    if !split.uncovered.is_empty() {
        println!(
            "in no envelope: {} header recipients: {}",
            split.uncovered.len(),
            split.uncovered.join(", ")
        );
    }
}

/// Carries out a retry or delete: the store knows how (through the running server, or directly).
async fn steer(commands: &Commands, request: Request) -> ExitCode {
    match commands.steer(request).await {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(why) => fail(EXIT_FAILURE, &why.to_string()),
    }
}
