//! The startup lines: where the server listens, what it does with mail, where its configuration
//! came from. Operators read them first, and the tests and benchmarks that run the binary find the
//! bound addresses in them ("listening on", "HTTP endpoints on").

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{Config, Delivery, QueueBackend, RelayMode};
use crate::inbox::Inbox;
use crate::smtp;

/// Logs the first lines: the version, the SMTP addresses, the mode, the inbox and the source of
/// the configuration; then a note when SIZE is smaller than configured.
pub(super) fn startup(
    config: &Config,
    config_file: Option<&Path>,
    smtp: &smtp::Server,
    http: Option<SocketAddr>,
    inbox: Option<&Inbox>,
) {
    let addrs: Vec<String> = smtp.local_addrs().iter().map(ToString::to_string).collect();
    let mut mode = mode_description(config);
    if let (Some(inbox), Some(addr)) = (inbox, http) {
        mode.push_str(&format!(
            "; inbox at http://{addr}/ ({})",
            inbox_description(config, inbox)
        ));
    }
    let source = match config_file {
        Some(path) => format!("config {}", path.display()),
        None => "no config file, built-in defaults".to_string(),
    };
    tracing::info!(
        "smtp2gmail {} listening on {} ({mode}; {source})",
        env!("CARGO_PKG_VERSION"),
        addrs.join(", ")
    );
    if smtp.max_message_size() < config.smtp.max_message_size {
        tracing::info!(
            size = smtp.max_message_size(),
            max_message_size = config.smtp.max_message_size,
            "advertising a smaller SIZE than max_message_size: {} less room for the Bcc header \
             added for up to max_recipients recipients",
            match config.relay.mode {
                RelayMode::Microsoft =>
                    "the largest message Microsoft 365 takes on the configured paths",
                _ => "Gmail's upload limit",
            }
        );
    }
}

/// The line that says where the HTTP endpoints are.
pub(super) fn http_endpoints(addr: Option<SocketAddr>, inbox: bool) {
    if let Some(addr) = addr {
        let inbox = if inbox { "inbox, Mailpit API, " } else { "" };
        tracing::info!("HTTP endpoints on http://{addr}/ ({inbox}healthz, readyz, metrics)");
    }
}

/// What the relay mode does with mail, for the startup line and `check`.
pub fn mode_description(config: &Config) -> String {
    let mode = relay_description(config);
    match config.relay.mode != RelayMode::Gmail && config.releases_automatically() {
        true => format!(
            "{mode}; mail to recipients matching '{}' is also queued in {} and sent through the \
             Gmail API (auto-release)",
            config.inbox.release_matching,
            queue_description(config)
        ),
        false => mode,
    }
}

/// Where the queue keeps messages.
fn queue_description(config: &Config) -> String {
    match config.queue.backend {
        QueueBackend::Spool => config.queue.dir.display().to_string(),
        QueueBackend::Postgres => "PostgreSQL (shared by replicas)".into(),
    }
}

/// What the relay mode itself does with mail.
fn relay_description(config: &Config) -> String {
    match config.relay.mode {
        RelayMode::Console => "console mode: messages are printed on stdout".to_string(),
        RelayMode::File => format!(
            "file mode: messages are written to {}",
            config.file.dir.display()
        ),
        RelayMode::Discard => "discard mode: messages are accepted and dropped".to_string(),
        RelayMode::Gmail | RelayMode::Microsoft => {
            let (mode, api) = match config.relay.mode {
                RelayMode::Microsoft => ("microsoft", "Microsoft Graph"),
                _ => ("gmail", "the Gmail API"),
            };
            match config.relay.delivery {
                Delivery::Sync => {
                    format!("{mode} mode: messages are sent through {api} before 250")
                }
                Delivery::Queue => format!(
                    "{mode} mode: messages are queued in {} and sent through {api}",
                    queue_description(config)
                ),
            }
        }
    }
}

/// What the inbox keeps, for the startup line.
fn inbox_description(config: &Config, inbox: &Inbox) -> String {
    let kept = match config.relay.mode {
        RelayMode::File => format!("the messages in {}", inbox.location()),
        _ => format!("the last {} messages in memory", config.inbox.max_messages),
    };
    match inbox.requires_auth() {
        true => format!("{kept}; asks for an [[smtp.users]] password"),
        false => kept,
    }
}
