//! `smtp2gmail serve`: the server, until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::signals::{Reloadable, Signals};
use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::config::{Config, Delivery, RelayMode, SmtpConfig};
use crate::inbox::Inbox;
use crate::inbox::capture::Capture;
use crate::inbox::guard::Guard;
use crate::inbox::release::Release;
use crate::relay::gmail::accounts::Account;
use crate::relay::gmail::reload::{CredentialWatcher, POLL_INTERVAL};
use crate::relay::{Deliver, Gmail};
use crate::{http, queue, relay, smtp};

/// How long the background tasks may take beyond the shutdown grace (an HTTP request finishing).
const SHUTDOWN_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Options of `serve` for a one-off run; the config file holds the lasting settings.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Listen for SMTP on this address instead of [smtp] listen (repeatable), e.g. 127.0.0.1:2526
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Serve the HTTP endpoints (and the inbox) on this address instead of [http] listen; "" turns
    /// them off
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<String>,
}

/// Runs the server until a signal, then drains.
pub async fn run(mut config: Config, source: Option<PathBuf>, args: ServeArgs) -> ExitCode {
    if let Err(err) = config.override_listeners(args.listen, args.http_listen) {
        eprintln!("smtp2gmail: {err}");
        return ExitCode::from(EXIT_USAGE);
    }
    // Every connection is a descriptor; the usual soft limit of 1024 is below max_connections.
    let nofile = rlimit::increase_nofile_limit(u64::MAX);
    let mut smtp_config = config.smtp.clone();
    let shutdown = CancellationToken::new();
    let Relay {
        deliver,
        watcher,
        queue,
        accounts,
        inbox,
    } = match build_relay(&config, &mut smtp_config, &shutdown).await {
        Ok(relay) => relay,
        Err(err) => {
            tracing::error!("{err}");
            // A database that is down at start is not a setting to fix: 1, as for Google.
            let outage = err
                .downcast_ref::<queue::StartError>()
                .is_some_and(queue::StartError::is_outage);
            return ExitCode::from(if outage { EXIT_FAILURE } else { EXIT_USAGE });
        }
    };
    // Installed before the first log line, so a SIGTERM or SIGHUP sent once the server says it
    // is listening never meets the default action (terminate).
    let signals = Signals::install();
    let server = match smtp::Server::bind(smtp_config, deliver).await {
        Ok(server) => server,
        Err(err) => {
            let code = if err.is_config() {
                tracing::error!("{err}");
                EXIT_USAGE
            } else {
                let hint = match &err {
                    smtp::StartError::Bind { source, .. } => {
                        listen_hint(source, "[smtp] listen", "--listen")
                    }
                    _ => String::new(),
                };
                tracing::error!("{err}{hint}");
                EXIT_FAILURE
            };
            return ExitCode::from(code);
        }
    };
    let http = match config.http.address() {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(err) => {
                let hint =
                    listen_hint(&err, "[http] listen (\"\" turns them off)", "--http-listen");
                tracing::error!("cannot serve the HTTP endpoints on {addr}: {err}{hint}");
                return ExitCode::from(EXIT_FAILURE);
            }
        },
        None => None,
    };
    let addrs: Vec<String> = server
        .local_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut mode = mode_description(&config);
    if let (Some(inbox), Some(Ok(addr))) = (&inbox, http.as_ref().map(|l| l.local_addr())) {
        mode.push_str(&format!(
            "; inbox at http://{addr}/ ({})",
            inbox_description(&config, inbox)
        ));
    }
    let source = match &source {
        Some(path) => format!("config {}", path.display()),
        None => "no config file, built-in defaults".to_string(),
    };
    tracing::info!(
        "smtp2gmail {} listening on {} ({mode}; {source})",
        env!("CARGO_PKG_VERSION"),
        addrs.join(", ")
    );
    if server.max_message_size() < config.smtp.max_message_size {
        tracing::info!(
            size = server.max_message_size(),
            max_message_size = config.smtp.max_message_size,
            "advertising a smaller SIZE than max_message_size: Gmail's upload limit less room for \
             the Bcc header added for up to max_recipients recipients"
        );
    }
    match nofile {
        Ok(limit) if (limit as usize) < config.smtp.max_connections + 64 => tracing::warn!(
            limit,
            max_connections = config.smtp.max_connections,
            "the open-file limit is below max_connections; raise it (ulimit -n, LimitNOFILE=)"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(%err, "cannot raise the open-file limit"),
    }
    // Every task of the server but one is tracked and waited for at shutdown (see the end). The
    // stop-signal task is not: it keeps listening for a second signal ("stop at once") while the
    // others drain, and ends the process itself.
    let tasks = TaskTracker::new();
    // After the startup lines, so that what it logs comes after them.
    let verify = accounts.clone();
    if let Some(listener) = http {
        if let Ok(addr) = listener.local_addr() {
            let inbox = if inbox.is_some() {
                "inbox, Mailpit API, "
            } else {
                ""
            };
            tracing::info!("HTTP endpoints on http://{addr}/ ({inbox}healthz, readyz, metrics)");
        }
        let readiness = Arc::new(http::Readiness {
            accounts,
            queue: queue.as_ref().map(|started| started.store.clone()),
            shutdown: shutdown.clone(),
        });
        let routes = inbox.as_ref().map(|inbox| inbox.router());
        tasks.spawn(http::serve(listener, readiness, routes, shutdown.clone()));
    }
    if let Some(inbox) = &inbox {
        tasks.spawn(inbox.loading());
        tasks.spawn(inbox.closing());
    }
    verify_credentials(&verify, &tasks);
    let reload = Reloadable {
        credentials: watcher.clone(),
        tls: server.tls(),
    };
    signals.start(reload, &tasks, &shutdown);
    if let Some(watcher) = watcher {
        tasks.spawn(watcher.run(shutdown.clone()));
    }
    let grace = config.smtp.shutdown_grace;
    let spool_lock = queue.map(|started| {
        tasks.spawn(started.scheduler.run(shutdown.clone(), grace));
        tasks.spawn(started.splitter.run(shutdown.clone()));
        started.lock
    });
    // Shutdown, in this order: the signal cancels `shutdown`; the listeners stop accepting and
    // the open SMTP sessions finish their transactions (within the grace); meanwhile the scheduler
    // lets the deliveries in flight finish (within the grace) and leaves the rest queued, and the
    // HTTP endpoints (the inbox's live-update listeners closed), the credential watcher and the
    // SIGHUP task end. Then the spool lock goes: only when nothing can still write to the spool
    // may another server take it.
    server.run(shutdown).await;
    tasks.close();
    // Bounded: an HTTP client holding a connection open must not keep the process alive.
    if tokio::time::timeout(grace + SHUTDOWN_MARGIN, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = tasks.len(),
            "background tasks still running after the grace period; stopping anyway"
        );
    }
    drop(spool_lock);
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// What to do about an address that cannot be bound: the likely cause, the setting, and the
/// flag for a one-off run (the README's first command collides with any server already running).
fn listen_hint(err: &std::io::Error, key: &str, flag: &str) -> String {
    use std::io::ErrorKind;
    let cause = match err.kind() {
        ErrorKind::AddrInUse => "another server, perhaps another smtp2gmail, has it: stop it, or ",
        ErrorKind::PermissionDenied => "ports below 1024 need privileges (CAP_NET_BIND_SERVICE): ",
        ErrorKind::AddrNotAvailable => "no interface of this machine has that address: ",
        _ => "",
    };
    format!(
        " ({cause}choose another address with {key} in the config or, for this run, \
         `smtp2gmail serve {flag} 127.0.0.1:PORT`)"
    )
}

/// What the relay mode does with mail, for the startup line and `check`.
pub(super) fn mode_description(config: &Config) -> String {
    match config.relay.mode {
        RelayMode::Console => "console mode: messages are printed on stdout".to_string(),
        RelayMode::File => format!(
            "file mode: messages are written to {}",
            config.file.dir.display()
        ),
        RelayMode::Discard => "discard mode: messages are accepted and dropped".to_string(),
        RelayMode::Gmail if config.relay.delivery == Delivery::Queue => format!(
            "gmail mode: messages are queued in {} and sent through the Gmail API",
            match config.queue.backend {
                crate::config::QueueBackend::Spool => config.queue.dir.display().to_string(),
                crate::config::QueueBackend::Postgres => "PostgreSQL (shared by replicas)".into(),
            }
        ),
        RelayMode::Gmail => {
            "gmail mode: messages are sent through the Gmail API before 250".to_string()
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

/// The delivery target; in gmail mode the watcher that reloads the accounts' credentials, and
/// the queue when gmail mode queues; in console and file modes the inbox.
struct Relay {
    deliver: Arc<dyn Deliver>,
    watcher: Option<Arc<CredentialWatcher>>,
    queue: Option<queue::Started>,
    /// The Gmail accounts, for readiness.
    accounts: Vec<Arc<Account>>,
    /// The development inbox, which the delivery target feeds.
    inbox: Option<Arc<Inbox>>,
}

/// Gmail is built here rather than through [`relay::from_config`] because the watcher and the
/// queue need the concrete accounts, which `Arc<dyn Deliver>` hides. In queue mode, large bodies
/// are spilled inside the spool unless `smtp.spill_dir` says otherwise, so storing them is a link.
async fn build_relay(
    config: &Config,
    smtp: &mut SmtpConfig,
    shutdown: &CancellationToken,
) -> Result<Relay, Box<dyn std::error::Error>> {
    if config.relay.mode != RelayMode::Gmail {
        let mut deliver = relay::from_config(config)?;
        let inbox = match config.inbox_active() {
            true => Some(build_inbox(config, shutdown)?),
            false => None,
        };
        if let Some(inbox) = &inbox {
            deliver = Arc::new(Capture::new(deliver, inbox.clone()));
        }
        return Ok(Relay {
            deliver,
            watcher: None,
            queue: None,
            accounts: Vec::new(),
            inbox,
        });
    }
    let gmail = Arc::new(Gmail::from_config(&config.gmail, relay::http_client()?)?);
    let accounts: Vec<Arc<Account>> = gmail.router().accounts().cloned().collect();
    let watcher = Some(Arc::new(CredentialWatcher::new(
        accounts.iter().cloned(),
        POLL_INTERVAL,
    )));
    if config.relay.delivery == Delivery::Sync {
        return Ok(Relay {
            deliver: gmail,
            watcher,
            queue: None,
            accounts,
            inbox: None,
        });
    }
    let started = queue::start(&config.queue, gmail).await?;
    if smtp.spill_dir.is_none() {
        smtp.spill_dir = started.spill_dir.clone();
    }
    Ok(Relay {
        deliver: started.acceptor.clone(),
        watcher,
        queue: Some(started),
        accounts,
        inbox: None,
    })
}

/// The inbox of console and file modes, with release through `[gmail]` when it is configured.
fn build_inbox(config: &Config, shutdown: &CancellationToken) -> Result<Arc<Inbox>, String> {
    let guard = Guard::from_config(config).map_err(|err| err.to_string())?;
    let release = Release::from_config(config);
    Inbox::new(config, release, guard, shutdown.clone()).map_err(|err| match config.relay.mode {
        RelayMode::File => format!(
            "cannot open the inbox in {}: {err}",
            config.file.dir.display()
        ),
        _ => format!("cannot open the inbox: {err}"),
    })
}

/// Asks Google for each account's first access token in the background, so that credentials that
/// died while the server was down show in the log and in `/readyz` at start, not with the first
/// message. The server does not wait: the queue accepts mail while Google is unreachable. A
/// service account that impersonates each sender has no user to ask for until a message names one.
fn verify_credentials(accounts: &[Arc<Account>], tasks: &TaskTracker) {
    for account in accounts {
        let Some(subject) = account.probe_subject().map(|s| s.map(str::to_string)) else {
            continue;
        };
        let account = account.clone();
        tasks.spawn(async move {
            match account.tokens.access_token(subject.as_deref()).await {
                Ok(_) => {
                    tracing::info!(account = %account.name, "credentials verified: Google issued an access token")
                }
                // A refusal is logged by the token source, with its fix, and shown in /readyz.
                Err(err) if !err.is_temporary() => {}
                Err(err) => {
                    tracing::warn!(account = %account.name, %err, "cannot verify the credentials now; will try again with the first message")
                }
            }
        });
    }
}
