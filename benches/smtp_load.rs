//! SMTP load generator: `cargo bench --bench smtp_load -- [--addr HOST:PORT] [options]`.
//!
//! Sends `--messages` messages of `--size` bytes over `--connections` connections at once: EHLO,
//! then per message MAIL+RCPT+DATA pipelined in one write, the body after the 354, the 250; QUIT.
//! Reports messages/s, p50/p99/max latency (MAIL sent to the 250 after the body) and errors.
//! `--idle N` first opens N connections that stay open, idle, for the whole run, and times fresh
//! clients from connect to greeting meanwhile (the "greeted within 10 ms" target); greetings are
//! also timed during the load. `--server-pid` adds the server's VmRSS/VmHWM from `/proc`.
//!
//! Without `--addr` a discard-mode server runs in this process on a free loopback port, assembled
//! by the library as `smtp2gmail serve` does (its figures then include the generator's own CPU
//! use). Only loopback targets are accepted; every run
//! is bounded by `--messages` and `--timeout`. The client is raw tokio TCP, not an SMTP library.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use smtp2gmail::config::{Config, RelayMode};
use smtp2gmail::server::{Server, ServerHandle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The command line.
#[derive(Debug, Parser)]
#[command(about = "SMTP load generator for smtp2gmail")]
struct Args {
    /// Server to load (loopback only); omitted: start one in-process in discard mode
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Messages to send in all
    #[arg(long, default_value_t = 5000)]
    messages: usize,
    /// Size of each message in bytes (headers included, before dot-stuffing and the final dot)
    #[arg(long, default_value_t = 10240)]
    size: usize,
    /// Concurrent sending connections
    #[arg(long, default_value_t = 20)]
    connections: usize,
    /// Idle connections to open first and keep open during the run
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// Fresh clients timed from connect to greeting while the idle connections are open
    #[arg(long, default_value_t = 50)]
    probes: usize,
    /// Process whose VmRSS/VmHWM to report [default: this process if the server is in-process]
    #[arg(long)]
    server_pid: Option<u32>,
    /// Give up after this many seconds
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Added by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

/// The envelope of every message: MAIL, RCPT and DATA pipelined in one write (RFC 2920).
const ENVELOPE: &[u8] = b"MAIL FROM:<load@localhost>\r\nRCPT TO:<sink@localhost>\r\nDATA\r\n";
/// The greeting target from the issue.
const GREETING_TARGET: Duration = Duration::from_millis(10);

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = tokio::runtime::Runtime::new().map_err(anyhow::Error::from);
    match outcome.and_then(|runtime| runtime.block_on(run(args))) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("smtp_load: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Picks the target (starting the in-process server if needed), measures, and stops the server.
/// Returns whether every message was accepted.
async fn run(args: Args) -> anyhow::Result<bool> {
    ensure!(args.connections > 0, "--connections must be at least 1");
    let (addr, server) = match args.addr {
        Some(addr) => {
            ensure!(addr.ip().is_loopback(), "--addr must be a loopback address");
            (addr, None)
        }
        None => {
            let slots = args.idle + args.connections + 8;
            let server = start_server(slots).await?;
            let addr = *server.smtp_addrs().first().context("no address bound")?;
            println!("server: in-process, discard mode, {addr} (shares the CPU with the load)");
            (addr, Some(server))
        }
    };
    let pid = args.server_pid.or(server.is_some().then(std::process::id));
    let limit = Duration::from_secs(args.timeout);
    let outcome = tokio::time::timeout(limit, measure(&args, addr, pid)).await;
    if let Some(server) = server {
        let stopped = server.shutdown().await;
        ensure!(
            stopped.is_clean(),
            "the in-process server left tasks running"
        );
    }
    outcome.with_context(|| format!("gave up after {limit:?}"))?
}

/// Starts the server in this process, assembled as `serve` does: discard mode, a free loopback
/// port, enough connection slots, no HTTP endpoints.
async fn start_server(slots: usize) -> anyhow::Result<ServerHandle> {
    let mut config = Config::default();
    config.relay.mode = RelayMode::Discard;
    config.smtp.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    config.smtp.max_connections = config.smtp.max_connections.max(slots);
    config.smtp.shutdown_grace = Duration::from_secs(1);
    config.http.listen = String::new();
    Ok(Server::new(config).start().await?)
}

/// The whole measurement against `addr`: idle connections, greeting probes, the load, memory.
async fn measure(args: &Args, addr: SocketAddr, pid: Option<u32>) -> anyhow::Result<bool> {
    let start_rss = report_memory("at start", pid, None);
    let mut idle = Vec::with_capacity(args.idle);
    if args.idle > 0 {
        let started = Instant::now();
        for _ in 0..args.idle {
            idle.push(Client::connect(addr).await?);
        }
        println!(
            "idle: {} connections greeted in {:.2?}",
            idle.len(),
            started.elapsed()
        );
        report_memory("with the idle connections", pid, start_rss);
        let quiet = probe(addr, args.probes, CancellationToken::new()).await;
        report_greetings("with the idle connections open, before the load", quiet);
    }

    let load_done = CancellationToken::new();
    let probes = tokio::spawn(probe(addr, usize::MAX, load_done.clone()));
    let body: Arc<[u8]> = message(args.size).into();
    let mut tally = run_load(args, addr, body.clone()).await?;
    load_done.cancel();
    let during = probes.await?;
    tally.report(args, body.len() - b".\r\n".len());
    report_greetings("during the load", during);
    report_memory("after the load (VmHWM is the peak)", pid, start_rss);

    if !idle.is_empty() {
        let mut alive = 0;
        for client in &mut idle {
            alive += usize::from(client.command(b"NOOP\r\n", 250).await.is_ok());
        }
        println!("idle: {alive}/{} still answer NOOP", idle.len());
    }
    Ok(tally.errors == 0)
}

/// One SMTP client connection: raw writes of commands, buffered reads of replies.
struct Client {
    io: BufReader<TcpStream>,
    line: Vec<u8>,
}

impl Client {
    /// Connects and reads the 220 greeting.
    async fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut client = Client {
            io: BufReader::new(stream),
            line: Vec::with_capacity(128),
        };
        client.expect(220).await?;
        Ok(client)
    }

    /// Writes raw bytes: commands, or a whole message body.
    async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        Ok(self.io.get_mut().write_all(bytes).await?)
    }

    /// Reads one reply, following `NNN-` continuation lines, and returns its code. The last line
    /// stays in `self.line` for error messages.
    async fn reply(&mut self) -> anyhow::Result<u16> {
        loop {
            self.line.clear();
            if self.io.read_until(b'\n', &mut self.line).await? == 0 {
                bail!("connection closed by the server");
            }
            let code = std::str::from_utf8(self.line.get(..3).unwrap_or_default())
                .ok()
                .and_then(|code| code.parse().ok())
                .with_context(|| format!("not an SMTP reply: {}", self.last_line()))?;
            if self.line.get(3) != Some(&b'-') {
                return Ok(code);
            }
        }
    }

    /// Reads one reply and fails unless it has the expected code.
    async fn expect(&mut self, code: u16) -> anyhow::Result<()> {
        let got = self.reply().await?;
        ensure!(got == code, "expected {code}, got: {}", self.last_line());
        Ok(())
    }

    /// Sends one command and expects one reply code.
    async fn command(&mut self, command: &[u8], code: u16) -> anyhow::Result<()> {
        self.send(command).await?;
        self.expect(code).await
    }

    fn last_line(&self) -> String {
        String::from_utf8_lossy(&self.line).trim_end().to_string()
    }
}

/// How long a fresh client waits from connect until its greeting; then it says QUIT.
async fn greeting_time(addr: SocketAddr) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut client = Client::connect(addr).await?;
    let waited = started.elapsed();
    client.command(b"QUIT\r\n", 221).await?;
    Ok(waited)
}

/// Up to `count` greeting probes 20 ms apart, stopping early when `done` fires. A probe that is
/// refused (421 at `max_connections`) or fails is kept as its error.
async fn probe(
    addr: SocketAddr,
    count: usize,
    done: CancellationToken,
) -> Vec<anyhow::Result<Duration>> {
    let mut times = Vec::new();
    while times.len() < count && !done.is_cancelled() {
        times.push(greeting_time(addr).await);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = done.cancelled() => {}
        }
    }
    times
}

/// What the sending connections achieved.
#[derive(Debug, Default)]
struct Tally {
    /// One per accepted message.
    latencies: Vec<Duration>,
    /// Messages not accepted, or not sent because their connection failed.
    errors: usize,
    /// The first failure, to show what went wrong.
    first_error: Option<String>,
    /// How long the whole load took.
    elapsed: Duration,
}

impl Tally {
    fn fail(&mut self, messages: usize, why: String) {
        self.errors += messages;
        self.first_error.get_or_insert(why);
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        if let Some(why) = other.first_error {
            self.first_error.get_or_insert(why);
        }
    }

    /// Prints the results; `size` is the size of each message actually sent.
    fn report(&mut self, args: &Args, size: usize) {
        self.latencies.sort_unstable();
        let secs = self.elapsed.as_secs_f64();
        let sent = self.latencies.len();
        println!(
            "load: {sent}/{} messages of {size} bytes over {} connections in {secs:.3} s",
            args.messages, args.connections
        );
        println!(
            "  rate: {:.0} messages/s ({:.1} MB/s of message data)",
            sent as f64 / secs,
            (sent * size) as f64 / secs / 1e6
        );
        println!("  latency, MAIL to 250: {}", summary(&self.latencies));
        let why = self.first_error.as_deref().unwrap_or("none");
        println!("  errors: {} (first: {why})", self.errors);
    }
}

/// Sends `args.messages` messages over `args.connections` connections at once.
async fn run_load(args: &Args, addr: SocketAddr, body: Arc<[u8]>) -> anyhow::Result<Tally> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.connections)
        .map(|i| {
            // Spread the messages as evenly as possible.
            let count = args.messages / args.connections
                + usize::from(i < args.messages % args.connections);
            tokio::spawn(sender(addr, count, body.clone()))
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await?);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// One sending connection: EHLO, `count` transactions, QUIT. A refused message is counted and its
/// transaction reset; when the connection fails, the messages it did not send count as errors.
async fn sender(addr: SocketAddr, count: usize, body: Arc<[u8]>) -> Tally {
    let mut tally = Tally::default();
    let session = async {
        let mut client = Client::connect(addr).await?;
        client.command(b"EHLO smtp-load.localhost\r\n", 250).await?;
        for _ in 0..count {
            let started = Instant::now();
            client.send(ENVELOPE).await?;
            let envelope = [client.reply().await?, client.reply().await?];
            let accepted = if client.reply().await? == 354 {
                client.send(&body).await?;
                client.reply().await? == 250 && envelope == [250, 250]
            } else {
                false
            };
            if accepted {
                tally.latencies.push(started.elapsed());
            } else {
                tally.fail(1, format!("message refused: {}", client.last_line()));
                client.command(b"RSET\r\n", 250).await?;
            }
        }
        client.command(b"QUIT\r\n", 221).await
    };
    if let Err(err) = session.await {
        let unsent = count - tally.latencies.len() - tally.errors;
        tally.fail(unsent, format!("{err:#}"));
    }
    tally
}

/// A message of `size` bytes (more if `size` is smaller than the headers), as sent after the
/// 354: CRLF lines of at most 78 characters, none starting with a dot, then `.` CRLF.
fn message(size: usize) -> Vec<u8> {
    let mut text =
        b"From: <load@localhost>\r\nTo: <sink@localhost>\r\nSubject: smtp_load\r\n\r\n".to_vec();
    let mut letter = 0;
    while text.len() + 2 < size {
        let len = (size - text.len() - 2).min(76);
        text.extend((0..len).map(|i| b'a' + ((letter + i) % 26) as u8));
        text.extend_from_slice(b"\r\n");
        letter += 1;
    }
    text.extend_from_slice(b".\r\n");
    text
}

/// "p50 …, p99 …, max …" of sorted durations.
fn summary(sorted: &[Duration]) -> String {
    let Some(max) = sorted.last() else {
        return "no samples".to_string();
    };
    let at = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    let [p50, p99] = [0.5, 0.99].map(|p| ms(at(p)));
    format!("p50 {p50}, p99 {p99}, max {}", ms(*max))
}

/// Prints the greeting wait times, how many met the 10 ms target, and the failed probes.
fn report_greetings(when: &str, probes: Vec<anyhow::Result<Duration>>) {
    let count = probes.len();
    let (times, failed): (Vec<_>, Vec<_>) = probes.into_iter().partition(Result::is_ok);
    let mut times: Vec<Duration> = times.into_iter().flatten().collect();
    times.sort_unstable();
    let within = times.iter().filter(|&&t| t <= GREETING_TARGET).count();
    println!(
        "greeting {when}: {} ({within}/{count} within {GREETING_TARGET:?})",
        summary(&times)
    );
    if let Some(Err(first)) = failed.first() {
        println!("  failed probes: {} (first: {first:#})", failed.len());
    }
}

/// Prints VmRSS (with its growth since `base`) and VmHWM of `pid` from `/proc/PID/status`, and
/// returns VmRSS in kB.
fn report_memory(when: &str, pid: Option<u32>, base: Option<u64>) -> Option<u64> {
    let pid = pid?;
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        println!("memory of pid {pid} {when}: unreadable");
        return None;
    };
    let kb = |name: &str| -> Option<u64> {
        let line = status.lines().find_map(|line| line.strip_prefix(name))?;
        line.trim().strip_suffix("kB")?.trim().parse().ok()
    };
    let (rss, hwm) = (kb("VmRSS:")?, kb("VmHWM:")?);
    let growth = base.map_or(String::new(), |b| {
        format!(" (+{} kB)", rss.saturating_sub(b))
    });
    println!("memory of pid {pid} {when}: VmRSS {rss} kB{growth}, VmHWM {hwm} kB");
    Some(rss)
}
