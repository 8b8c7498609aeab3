//! The command line: parses arguments, loads the configuration, and runs the chosen command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RelayMode};
use crate::{relay, smtp};

/// smtp2gmail: an SMTP server that sends mail through the Gmail API, or prints it for development.
#[derive(Debug, Parser)]
#[command(name = "smtp2gmail", version, about)]
pub struct Cli {
    /// Configuration file [default: ./config.toml if it exists, else built-in defaults]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log format on stderr; RUST_LOG sets the level (default info)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the SMTP server until SIGTERM or SIGINT
    Serve,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines for terminals
    Text,
    /// One JSON object per line, for log collectors
    Json,
}

/// Exit status for bad usage or an invalid configuration.
const EXIT_USAGE: u8 = 2;
/// Exit status for a failure at run time.
const EXIT_FAILURE: u8 = 1;

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let (config, source) = match Config::load(cli.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("smtp2gmail: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("smtp2gmail: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match cli.command {
        Command::Serve => runtime.block_on(serve(config, source)),
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(config: Config, source: Option<PathBuf>) -> ExitCode {
    // Every connection is a descriptor; the usual soft limit of 1024 is below max_connections.
    let nofile = rlimit::increase_nofile_limit(u64::MAX);
    let deliver = match relay::from_config(&config) {
        Ok(deliver) => deliver,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let server = match smtp::Server::bind(config.smtp.clone(), deliver).await {
        Ok(server) => server,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let addrs: Vec<String> = server
        .local_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    let mode = match config.relay.mode {
        RelayMode::Console => "console mode: messages are printed on stdout".to_string(),
        RelayMode::File => format!(
            "file mode: messages are written to {}",
            config.file.dir.display()
        ),
        RelayMode::Discard => "discard mode: messages are accepted and dropped".to_string(),
        RelayMode::Gmail => "gmail mode: messages are sent through the Gmail API".to_string(),
    };
    let source = match &source {
        Some(path) => format!("config {}", path.display()),
        None => "no config file, built-in defaults".to_string(),
    };
    tracing::info!(
        "smtp2gmail {} listening on {} ({mode}; {source})",
        env!("CARGO_PKG_VERSION"),
        addrs.join(", ")
    );
    match nofile {
        Ok(limit) if (limit as usize) < config.smtp.max_connections + 64 => tracing::warn!(
            limit,
            max_connections = config.smtp.max_connections,
            "the open-file limit is below max_connections; raise it (ulimit -n, LimitNOFILE=)"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(%err, "cannot raise the open-file limit"),
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signals(shutdown.clone()));
    server.run(shutdown).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// The first SIGTERM/SIGINT starts a graceful shutdown; a second one exits at once.
async fn wait_for_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!(
        "shutting down: finishing open transactions (send the signal again to stop at once)"
    );
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: stopping now");
    std::process::exit(i32::from(EXIT_FAILURE));
}
