//! `smtp2gmail queue list | show ID | retry ID | retry --all | delete ID`: inspect and steer the
//! spool, whether or not a server is running (see `queue::control` for how that is made safe).

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Subcommand;

use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::config::Config;
use crate::queue::control::{self, Request};
use crate::queue::spool::{self, Entry, Place, Spool};

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
    let dir = &config.queue.dir;
    if !dir.join("queue").is_dir() {
        println!(
            "no spool at {} (nothing has been queued there)",
            dir.display()
        );
        return ExitCode::SUCCESS;
    }
    let spool = match Spool::open(dir) {
        Ok(spool) => spool,
        Err(err) => return fail(EXIT_FAILURE, &format!("{}: {err}", dir.display())),
    };
    let id = match &command {
        QueueCommand::Show { id }
        | QueueCommand::Delete { id }
        | QueueCommand::Retry { id: Some(id), .. } => Some(id),
        _ => None,
    };
    if let Some(id) = id.filter(|id| !spool::is_valid_id(id)) {
        return fail(EXIT_USAGE, &format!("{id:?} is not a queue id"));
    }
    match command {
        QueueCommand::List => list(&spool),
        QueueCommand::Show { id } => show(&spool, &id),
        QueueCommand::Retry { id, .. } => steer(&spool, Request::Retry { id }).await,
        QueueCommand::Delete { id } => steer(&spool, Request::Delete { id }).await,
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

fn list(spool: &Spool) -> ExitCode {
    let mut total = 0;
    for place in [Place::Queue, Place::Held, Place::Dead] {
        let (entries, broken) = match spool.list(place) {
            Ok(listed) => listed,
            Err(err) => return fail(EXIT_FAILURE, &format!("cannot read the spool: {err}")),
        };
        for (id, err) in broken {
            println!("{id}  UNREADABLE RECORD: {err}");
        }
        for entry in &entries {
            let state = match place {
                Place::Queue => format!("next {}", until(entry.next_attempt)),
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

fn show(spool: &Spool, id: &str) -> ExitCode {
    let Some((place, entry)) = [Place::Queue, Place::Held, Place::Dead]
        .into_iter()
        .find_map(|place| spool.read(place, id).ok().map(|entry| (place, entry)))
    else {
        return fail(EXIT_FAILURE, &format!("{id}: no such message"));
    };
    print_entry(&entry, place);
    let mut raw = std::fs::read(spool.message_path(place, id)).unwrap_or_default();
    raw.truncate(entry.size as usize);
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
    match place {
        Place::Queue => println!("next attempt: {}", until(entry.next_attempt)),
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
fn print_split(split: &crate::queue::split::SplitRecord) {
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

/// Carries out a retry or delete: through the running server, or directly when none runs.
async fn steer(spool: &Spool, request: Request) -> ExitCode {
    let answer = match control::try_lock(spool) {
        Ok(Some(_lock)) => match &request {
            Request::Retry { id: Some(id) } => {
                control::retry(spool, id, std::time::SystemTime::now())
                    .await
                    .map(|(_, done)| done)
            }
            Request::Retry { id: None } => retry_all(spool).await,
            Request::Delete { id } => control::delete(spool, id).await,
        },
        Ok(None) => {
            let spool = spool.clone();
            let asked = tokio::task::spawn_blocking(move || {
                let name = control::submit(&spool, &request)?;
                control::await_answer(&spool, &name, Duration::from_secs(15))
            })
            .await;
            match asked {
                Ok(Ok(answer)) => answer,
                Ok(Err(err)) => Err(format!("the running server did not answer: {err}")),
                Err(err) => Err(err.to_string()),
            }
        }
        Err(err) => Err(format!("cannot lock the spool: {err}")),
    };
    match answer {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(why) => fail(EXIT_FAILURE, &why),
    }
}

async fn retry_all(spool: &Spool) -> Result<String, String> {
    let mut ids = Vec::new();
    for place in [Place::Queue, Place::Dead] {
        let (entries, _) = spool.list(place).map_err(|e| e.to_string())?;
        ids.extend(entries.into_iter().map(|e| e.id));
    }
    for id in &ids {
        control::retry(spool, id, std::time::SystemTime::now()).await?;
    }
    Ok(format!(
        "{} messages will be retried at the next start",
        ids.len()
    ))
}
