//! The command line: parses arguments, loads the configuration, and runs the chosen command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;

/// smtp2gmail: an SMTP server that sends mail through the Gmail API, or prints it for development.
#[derive(Debug, Parser)]
#[command(name = "smtp2gmail", version = env!("SMTP2GMAIL_VERSION"), about)]
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
    /// Obtain a token file: Google's consent screen in a browser, a loopback redirect, PKCE; or
    /// with --microsoft a Microsoft 365 user's sign-in with a device code
    Authorize(authorize::AuthorizeArgs),
    /// Run the SMTP server until SIGTERM or SIGINT
    Serve(serve::ServeArgs),
    /// Inspect and steer the spool (works while the server runs)
    Queue {
        /// What to do
        #[command(subcommand)]
        command: queue::QueueCommand,
    },
    /// Validate the config and every account's credentials (gets an access token)
    Check(check::CheckArgs),
    /// Send one test message through the configured relay and print the result
    Send(send::SendArgs),
    /// Ask a running server's /healthz (or /readyz); exit 0 when it answers 2xx (the container
    /// image's health check: no curl needed)
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout
    Completions(completions::CompletionsArgs),
    /// Read a password (from the terminal without echo, or from stdin) and print its argon2 hash
    /// for `password_hash` in [[smtp.users]]
    HashPassword,
}

mod authorize;
mod authorize_microsoft;
mod check;
mod completions;
mod hash_password;
mod healthcheck;
mod queue;
mod send;
mod serve;
mod signals;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines for terminals
    Text,
    /// One JSON object per line, for log collectors
    Json,
}

/// Exit status for bad usage or an invalid configuration.
pub const EXIT_USAGE: u8 = 2;
/// Exit status for a failure at run time (credentials rejected, Google unreachable).
pub const EXIT_FAILURE: u8 = 1;

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Needs no config, logging or runtime: a broken or missing config must not stop it.
    if let Command::Completions(args) = cli.command {
        return completions::run(args);
    }
    init_logging(cli.log_format, default_log_level(&cli.command));
    // These need no configuration: they are how one writes it, so a missing or broken
    // config.toml must not stop them.
    let command = match cli.command {
        Command::HashPassword => return hash_password::run(),
        Command::Authorize(args) => {
            let config = cli.config.as_deref();
            return with_runtime(|runtime| runtime.block_on(authorize::run(args, config)));
        }
        command => command,
    };
    let (config, source) = match Config::load(cli.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("smtp2gmail: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    with_runtime(|runtime| match command {
        Command::Serve(args) => runtime.block_on(serve::run(config, source, args)),
        Command::Queue { command } => runtime.block_on(queue::run(&config, command)),
        Command::Check(args) => runtime.block_on(check::run(config, source, args)),
        Command::Send(args) => runtime.block_on(send::run(config, args)),
        Command::Healthcheck(args) => runtime.block_on(healthcheck::run(&config, args)),
        Command::Authorize(args) => runtime.block_on(authorize::run(args, None)),
        Command::Completions(args) => completions::run(args),
        Command::HashPassword => hash_password::run(),
    })
}

/// Runs `command` on a new tokio runtime.
fn with_runtime(command: impl FnOnce(&tokio::runtime::Runtime) -> ExitCode) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => command(&runtime),
        Err(err) => {
            eprintln!("smtp2gmail: cannot start the async runtime: {err}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// The log level when RUST_LOG is unset. One-shot commands print their own report on stdout;
/// info lines about tokens on stderr would only repeat it.
fn default_log_level(command: &Command) -> &'static str {
    match command {
        Command::Check(_) | Command::Healthcheck(_) => "error",
        Command::Send(_) => "warn",
        _ => "info",
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colours only for a terminal: escape codes in a log file or the journal are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
