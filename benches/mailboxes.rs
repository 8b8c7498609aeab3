//! Scheduler benchmark for many Gmail mailboxes: `cargo bench --bench mailboxes -- [options]`.
//!
//! A service account impersonating its senders makes every sender a mailbox with limits of its
//! own, so the scheduler keeps state per mailbox. This measures what that costs: for each S in
//! `--senders` (1 and 10,000 by default) a fresh child process stores `--messages` messages from
//! S distinct senders in a spool on tmpfs (`/dev/shm` when it exists: the figures are the
//! scheduler's, not the disk's), then runs the real scheduler with a courier that delivers at once,
//! and reports the CPU time per delivered message (utime + stime of the delivery phase) and the
//! process's peak RSS (`VmHWM`). Flat means: 10,000 senders cost about what one does.
//!
//! Without `--bench` (when `cargo test --bench mailboxes` runs it) only a quick check runs: 200
//! messages from 1 and from 100 senders.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, ensure};
use clap::Parser;
use smtp2gmail::config::QueueConfig;
use smtp2gmail::message::{Address, Envelope, Message, MessageId};
use smtp2gmail::queue::courier::{Courier, Limits};
use smtp2gmail::queue::record::{Entry, Place};
use smtp2gmail::queue::schedule::Scheduler;
use smtp2gmail::queue::spool::Spool;
use smtp2gmail::queue::store::Store;
use smtp2gmail::relay::{DeliveryError, Receipt};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(about = "Scheduler cost per mailbox")]
struct Args {
    /// Messages per run
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Distinct senders (mailboxes) per run, comma-separated
    #[arg(long, value_delimiter = ',', default_values_t = [1, 10_000])]
    senders: Vec<usize>,
    /// Internal: measure one run in this process
    #[arg(long, hide = true)]
    one: Option<usize>,
    /// Added by `cargo bench`; without it only a quick check runs
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if !args.bench && args.one.is_none() {
        println!("quick check only; the measurement runs with `cargo bench --bench mailboxes`");
        args.messages = 200;
        args.senders = vec![1, 100];
    }
    let outcome = match args.one {
        Some(senders) => measure(args.messages, senders),
        None => compare(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mailboxes: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// One child process per configuration, so that each peak RSS is its own.
fn compare(args: &Args) -> anyhow::Result<()> {
    println!(
        "{:>9} {:>9} {:>14} {:>12} {:>10}",
        "senders", "messages", "CPU/msg (µs)", "msgs/s", "peak RSS"
    );
    for senders in &args.senders {
        let output = Command::new(std::env::current_exe()?)
            .args([
                "--one",
                &senders.to_string(),
                "--messages",
                &args.messages.to_string(),
            ])
            .output()
            .context("cannot run the measurement")?;
        ensure!(
            output.status.success(),
            "run with {senders} senders failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        print!("{}", String::from_utf8_lossy(&output.stdout));
    }
    Ok(())
}

/// Delivers every message at once, five at a time per mailbox.
struct AtOnce {
    delivered: AtomicUsize,
    done: tokio::sync::Notify,
    total: usize,
}

#[async_trait::async_trait]
impl Courier for AtOnce {
    async fn deliver(&self, entry: &Entry, _: &Message) -> Result<Receipt, DeliveryError> {
        if self.delivered.fetch_add(1, Ordering::SeqCst) + 1 == self.total {
            self.done.notify_one();
        }
        Ok(Receipt::new(entry.id.clone()))
    }

    fn limits(&self, _name: &str) -> Option<Limits> {
        Some(Limits {
            max_sends: 5,
            generation: 1,
        })
    }

    fn accounts(&self) -> Vec<String> {
        vec!["workspace".into()]
    }
}

fn measure(messages: usize, senders: usize) -> anyhow::Result<()> {
    let base = Path::new("/dev/shm");
    let dir = if base.is_dir() {
        tempfile::tempdir_in(base)?
    } else {
        tempfile::tempdir()?
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let spool = Spool::open(dir.path())?;
    runtime.block_on(async {
        let message = Message::from_bytes(b"Subject: bench\r\n\r\nhello\r\n".to_vec());
        for n in 0..messages {
            let sender = format!("user{}@example.com", n % senders);
            let envelope = Envelope {
                id: MessageId::generate(),
                mail_from: Some(Address::new(&sender)),
                rcpt_to: vec![Address::new("someone@example.org")],
                remote: ([127, 0, 0, 1], 40000).into(),
                helo: "bench".into(),
                auth_user: None,
                received_at: SystemTime::now(),
            };
            let entry =
                Entry::new(&envelope, message.len(), "workspace").with_mailbox(Some(&sender));
            spool.put(Place::Queue, &entry, &message).await?;
        }
        anyhow::Ok(())
    })?;
    let courier = Arc::new(AtOnce {
        delivered: AtomicUsize::new(0),
        done: tokio::sync::Notify::new(),
        total: messages,
    });
    let config = QueueConfig {
        dir: dir.path().to_path_buf(),
        // Gmail's pace is not what is measured: far above anything the loop can do.
        max_send_rate: 1_000_000.0,
        ..QueueConfig::default()
    };
    let (cpu_before, started) = (cpu_time()?, Instant::now());
    runtime.block_on(async {
        let (_announce, incoming) = tokio::sync::mpsc::unbounded_channel();
        let store: Arc<dyn Store> = Arc::new(spool.clone());
        let scheduler = Scheduler::new(store, courier.clone(), config, incoming).await;
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(scheduler.run(shutdown.clone(), Duration::from_secs(5)));
        let all = courier.done.notified();
        tokio::time::timeout(Duration::from_secs(600), all)
            .await
            .context("not every message was delivered within 10 minutes")?;
        shutdown.cancel();
        run.await?;
        anyhow::Ok(())
    })?;
    let (cpu, took) = (cpu_time()? - cpu_before, started.elapsed());
    println!(
        "{senders:>9} {messages:>9} {:>14.1} {:>12.0} {:>7.1} MB",
        cpu.as_secs_f64() * 1e6 / messages as f64,
        messages as f64 / took.as_secs_f64(),
        peak_rss_kib()? as f64 / 1024.0
    );
    Ok(())
}

/// This process's user + system CPU time.
fn cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let per_second = Command::new("getconf").arg("CLK_TCK").output()?;
    let per_second: u64 = String::from_utf8(per_second.stdout)?.trim().parse()?;
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

fn peak_rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    Ok(line.split_whitespace().nth(1).context("VmHWM")?.parse()?)
}
