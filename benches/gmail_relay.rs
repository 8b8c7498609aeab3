//! Gmail relay benchmark: `cargo bench --bench gmail_relay -- [options]`.
//!
//! Starts the test suite's fake Google (token endpoint + Gmail upload endpoint) in this process,
//! answering every upload after `--latency-ms` (150 ms), and runs the real server binary
//! (`CARGO_BIN_EXE_smtp2gmail`, built with the bench profile, i.e. release, by `cargo bench`) as a
//! child process in Gmail mode against it, with `gmail.max_concurrent_sends = --limit`.
//!
//! For each C in `--concurrency`, C lettre clients send messages at once, each its messages one
//! after the other (lettre without its pool: one connection per message, as Django does by
//! default). Reported per C: messages/s against the target 0.9 × min(C, limit) / latency, latency
//! per message, and the server's CPU time per message (utime + stime of `/proc/PID/stat`, in clock
//! ticks of `getconf CLK_TCK`). Then a fresh server relays one `--big-mib` message and its peak RSS
//! (`VmHWM`) is compared with 2.5 × the uploaded size. Targets: issue 3, "Performance".
//!
//! Without `--bench` (that is, when `cargo test --all-targets` runs it) it only does a quick check
//! of the harness: two clients, two messages each, no large message.
//! Every wait is bounded (`--timeout` per step); the server is stopped with SIGTERM at the end.

/// The fake Google of the integration tests (tests/common/fake_google.rs and fake_gmail.rs), compiled
/// in here as it is; tests/common/mod.rs (the in-process server harness) is not needed.
#[path = "../tests/common"]
#[allow(dead_code)] // the benchmark uses a small part of it
mod common {
    pub mod credential_files;
    pub mod fake_gmail;
    pub mod fake_google;
    pub mod fake_oauth;

    /// The fakes' bound on any wait (tests/common/mod.rs has the same).
    pub const WAIT: std::time::Duration = std::time::Duration::from_secs(20);
}

#[path = "gmail_relay/clients.rs"]
mod clients;
#[path = "gmail_relay/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use clients::{ClientKind, Mail, Tally, client, message};
use common::fake_google::{self, FakeGoogle};
use server::{Server, clock_ticks};

/// The command line.
#[derive(Debug, Parser)]
#[command(about = "Gmail relay benchmark for smtp2gmail (against an in-process fake Gmail)")]
struct Args {
    /// Numbers of concurrent SMTP clients, one step each
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,5,8,10")]
    concurrency: Vec<usize>,
    /// Messages each client sends per step, at least
    #[arg(long, default_value_t = 20)]
    per_client: usize,
    /// Messages per step, at least (more per client for small C, so the CPU figure has enough ticks)
    #[arg(long, default_value_t = 100)]
    min_messages: usize,
    /// Size of the body of each small message in bytes
    #[arg(long, default_value_t = 2048)]
    size: usize,
    /// How long the fake Gmail takes to answer each upload, in milliseconds
    #[arg(long, default_value_t = 150)]
    latency_ms: u64,
    /// gmail.max_concurrent_sends of the server
    #[arg(long, default_value_t = 5)]
    limit: usize,
    /// Body size of the large message in MiB; 0 skips it
    #[arg(long, default_value_t = 30)]
    big_mib: usize,
    /// The SMTP client
    #[arg(long, value_enum, default_value_t = ClientKind::Nodelay)]
    client: ClientKind,
    /// Give up on a step after this many seconds
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Added by `cargo bench`; without it only a quick check runs
    #[arg(long, hide = true)]
    bench: bool,
}

/// Issue 3: throughput at least this share of the ideal C / latency, up to the limit.
const THROUGHPUT_SHARE: f64 = 0.9;
/// Issue 3: server CPU time per relayed message.
const CPU_TARGET_MS: f64 = 0.5;
/// Issue 3: peak RSS while relaying one large message, as a multiple of its size.
const RSS_FACTOR: f64 = 2.5;
const SENDER: &str = "bench@example.com";
const RECIPIENT: &str = "rcpt@example.com";

fn main() -> ExitCode {
    let quick = !std::env::args().any(|arg| arg == "--bench");
    // Under `cargo test` the arguments are the test harness's, not ours: ignore them.
    let args = if quick {
        Args::parse_from([
            "gmail_relay",
            "--concurrency=2",
            "--per-client=2",
            "--min-messages=0",
            "--big-mib=0",
        ])
    } else {
        Args::parse()
    };
    let outcome = tokio::runtime::Runtime::new().map_err(anyhow::Error::from);
    match outcome.and_then(|runtime| runtime.block_on(run(&args, quick))) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("gmail_relay: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The whole benchmark. Returns whether every message was relayed.
async fn run(args: &Args, quick: bool) -> anyhow::Result<bool> {
    ensure!(args.limit > 0, "--limit must be at least 1");
    ensure!(
        args.concurrency.iter().all(|&c| c > 0),
        "--concurrency values must be at least 1"
    );
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_smtp2gmail"));
    let build = if cfg!(debug_assertions) {
        "debug build (not a measurement)"
    } else {
        "release build (cargo bench's bench profile)"
    };
    if quick {
        println!("quick check only; the measurement runs with `cargo bench --bench gmail_relay`");
    }
    println!("server: {} ({build})", binary.display());
    let ticks = clock_ticks();
    println!(
        "machine: {} cores; CPU time from /proc/PID/stat at {} ticks/s{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        ticks.0,
        if ticks.1 { "" } else { " (assumed)" }
    );

    let google = FakeGoogle::start().await;
    let latency = Duration::from_millis(args.latency_ms);
    google.set_send_latency(latency);
    let dir = tempfile::tempdir()?;
    let config = write_config(&google, dir.path(), args.limit)?;
    println!(
        "fake Gmail: {}, answering after {latency:?}; max_concurrent_sends = {}",
        google.api_base(),
        args.limit
    );

    println!(
        "clients: {:?} (lettre {}), one connection per message, {} B bodies",
        args.client,
        match args.client {
            ClientKind::Nodelay => "SMTP client code over sockets with TCP_NODELAY",
            ClientKind::Transport => "AsyncSmtpTransport, no pool, Nagle on",
        },
        args.size
    );
    let mut all_ok = true;
    let server = Server::start(&binary, &config).await?;
    let sweep = sweep(args, &google, &server, ticks.0, latency).await;
    server.stop().await?;
    all_ok &= sweep?;

    if args.big_mib > 0 {
        let server = Server::start(&binary, &config).await?;
        let big = big_message(args, &google, &server).await;
        server.stop().await?;
        all_ok &= big?;
    }
    Ok(all_ok)
}

/// Writes a quickstart token.json the fake accepts and a Gmail-mode configuration; returns the
/// configuration's path.
fn write_config(google: &FakeGoogle, dir: &Path, limit: usize) -> anyhow::Result<PathBuf> {
    let token = fake_google::write_json(
        dir,
        "token.json",
        &fake_google::token_json(&google.token_uri()),
    );
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\nspill_dir = {spill}\n\n\
         [relay]\nmode = \"gmail\"\ndelivery = \"sync\"\n\n\
         [gmail]\napi_base = {api}\ncredentials = {token}\nmax_concurrent_sends = {limit}\n",
        spill = quote(&dir.to_string_lossy()),
        api = quote(&google.api_base()),
        token = quote(&token.to_string_lossy()),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// What the clients of one step achieved.
/// One row of the table.
struct Step {
    clients: usize,
    sent: usize,
    secs: f64,
    target: f64,
    latencies: Vec<Duration>,
    ticks: u64,
    ns: u64,
    most_in_flight: usize,
}

/// The concurrency sweep against one server. Returns whether every message was relayed.
async fn sweep(
    args: &Args,
    google: &FakeGoogle,
    server: &Server,
    ticks_per_sec: u64,
    latency: Duration,
) -> anyhow::Result<bool> {
    let limit = Duration::from_secs(args.timeout);
    let mail = Mail::new(&message(args.size, "gmail_relay bench")?);
    // Warm-up, not measured: the first token refresh and the first connection to the fake.
    let warm =
        tokio::time::timeout(limit, client(args.client, server.addr, 1, mail.clone())).await?;
    ensure!(warm.errors == 0, "warm-up failed: {:?}", warm.first_error);

    let mut steps = Vec::new();
    let mut errors = Tally::default();
    for &clients in &args.concurrency {
        let per_client = args.per_client.max(args.min_messages.div_ceil(clients));
        let uploads_before = google.uploads().len();
        let cpu_before = server.cpu()?;
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|_| tokio::spawn(client(args.client, server.addr, per_client, mail.clone())))
            .collect();
        let mut tally = Tally::default();
        let joined = tokio::time::timeout(limit, async {
            for task in tasks {
                tally.merge(task.await?);
            }
            anyhow::Ok(())
        })
        .await;
        joined.with_context(|| format!("C = {clients}: gave up after {limit:?}"))??;
        let secs = started.elapsed().as_secs_f64();
        let (ticks, ns) = server.cpu()?.since(&cpu_before);
        let sent = tally.latencies.len();
        let uploaded = google.uploads().len() - uploads_before;
        if uploaded != sent {
            tally.errors += 1;
            let why = format!("C = {clients}: {sent} accepted but {uploaded} uploaded");
            tally.first_error.get_or_insert(why);
        }
        let mut latencies = std::mem::take(&mut tally.latencies);
        latencies.sort_unstable();
        errors.merge(tally);
        steps.push(Step {
            clients,
            sent,
            secs,
            target: THROUGHPUT_SHARE * clients.min(args.limit) as f64 / latency.as_secs_f64(),
            latencies,
            ticks,
            ns,
            most_in_flight: google.most_concurrent_sends(),
        });
    }

    print_table(args, &steps, ticks_per_sec);
    let idle = Duration::from_secs(2);
    let before = server.cpu()?;
    tokio::time::sleep(idle).await;
    let (_, ns) = server.cpu()?.since(&before);
    println!(
        "server idle: {:.2} ms of CPU per second (included in the figures above)",
        ns as f64 / 1e6 / idle.as_secs_f64()
    );
    let rss = server.status_kb("VmRSS")?;
    let hwm = server.status_kb("VmHWM")?;
    println!("server after the sweep: VmRSS {rss} kB, VmHWM {hwm} kB");
    let why = errors.first_error.as_deref().unwrap_or("none");
    println!("errors: {} (first: {why})", errors.errors);
    Ok(errors.errors == 0)
}

fn print_table(args: &Args, steps: &[Step], ticks_per_sec: u64) {
    let ms_per_tick = 1000.0 / ticks_per_sec as f64;
    println!();
    println!(
        "{:>3} {:>5} {:>7} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>6}",
        "C",
        "msgs",
        "time s",
        "msg/s",
        "target",
        "ok",
        "p50 ms",
        "max ms",
        "CPU ms",
        "ms/msg",
        "≤0.5 ms",
        "sched/msg",
        "flight"
    );
    let (mut all_ticks, mut all_ns, mut all_sent) = (0, 0, 0);
    for step in steps {
        let rate = step.sent as f64 / step.secs;
        let cpu_ms = step.ticks as f64 * ms_per_tick;
        let per_msg = cpu_ms / step.sent.max(1) as f64;
        let at = |p: f64| {
            step.latencies
                .get(((step.latencies.len().max(1) - 1) as f64 * p).round() as usize)
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
        };
        println!(
            "{:>3} {:>5} {:>7.2} {:>8.1} {:>8.1} {:>7} {:>8.1} {:>8.1} {:>8.0} {:>7.3} {:>8} {:>8.3} {:>6}",
            step.clients,
            step.sent,
            step.secs,
            rate,
            step.target,
            verdict(rate >= step.target),
            at(0.5),
            at(1.0),
            cpu_ms,
            per_msg,
            verdict(per_msg <= CPU_TARGET_MS),
            step.ns as f64 / 1e6 / step.sent.max(1) as f64,
            step.most_in_flight,
        );
        all_ticks += step.ticks;
        all_ns += step.ns;
        all_sent += step.sent;
    }
    let per_msg = all_ticks as f64 * ms_per_tick / all_sent.max(1) as f64;
    println!(
        "all steps: {all_sent} messages, server CPU {:.0} ms, {per_msg:.3} ms per message: {} \
         (schedstat: {:.3} ms per message)",
        all_ticks as f64 * ms_per_tick,
        verdict(per_msg <= CPU_TARGET_MS),
        all_ns as f64 / 1e6 / all_sent.max(1) as f64
    );
    println!(
        "(target msg/s = {THROUGHPUT_SHARE} × min(C, {}) / {:.3} s; CPU resolution ±{ms_per_tick:.0} ms \
         per step; sched/msg: ms per message from the threads' schedstat, in ns; flight = most \
         uploads the fake saw at once so far)",
        args.limit,
        args.latency_ms as f64 / 1000.0
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// One large message through a fresh server: time, CPU, and peak RSS against 2.5 × its size.
async fn big_message(args: &Args, google: &FakeGoogle, server: &Server) -> anyhow::Result<bool> {
    let size = args.big_mib << 20;
    let mail = Mail::new(&message(size, "gmail_relay bench, large")?);
    let wire = mail.bytes.len();
    let rss_before = server.status_kb("VmRSS")?;
    let cpu_before = server.cpu()?;
    let uploads_before = google.uploads().len();
    let started = Instant::now();
    let limit = Duration::from_secs(args.timeout);
    let tally = tokio::time::timeout(limit, client(args.client, server.addr, 1, mail))
        .await
        .with_context(|| format!("large message: gave up after {limit:?}"))?;
    let secs = started.elapsed().as_secs_f64();
    let (ticks, _) = server.cpu()?.since(&cpu_before);
    let hwm = server.status_kb("VmHWM")?;
    let rss_after = server.status_kb("VmRSS")?;
    let uploads = google.uploads();
    let uploaded = uploads.get(uploads_before).map_or(0, |u| u.body.len());
    println!();
    if tally.errors > 0 || uploads.len() != uploads_before + 1 {
        println!(
            "large message ({wire} bytes): NOT relayed: {}",
            tally.first_error.as_deref().unwrap_or("no upload")
        );
        return Ok(false);
    }
    let hwm_bytes = hwm * 1024;
    let ratio = hwm_bytes as f64 / uploaded as f64;
    let ticks_per_sec = clock_ticks().0;
    println!(
        "large message: {wire} bytes sent by lettre, {uploaded} bytes uploaded, relayed in {secs:.2} s \
         (server CPU {:.0} ms)",
        ticks as f64 * 1000.0 / ticks_per_sec as f64
    );
    println!(
        "  VmRSS before {rss_before} kB, after {rss_after} kB; VmHWM {hwm} kB = {ratio:.2} × the size \
         (target ≤ {RSS_FACTOR} × = {} kB): {}",
        (uploaded as f64 * RSS_FACTOR / 1024.0) as u64,
        verdict(ratio <= RSS_FACTOR)
    );
    Ok(true)
}
