//! Where accepted mail goes, built from the configuration: in gmail mode the accounts, the
//! watcher that reloads their credentials and, when gmail mode queues, the queue; in console and
//! file modes the relay and the development inbox that captures what it is given.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Seams, StartError};
use crate::config::{Config, Delivery, RelayMode, SmtpConfig};
use crate::inbox::Inbox;
use crate::inbox::auto_release::AutoRelease;
use crate::inbox::guard::Guard;
use crate::inbox::release::Release;
use crate::inbox::rules::ReleaseRules;
use crate::notify::Notifier;
use crate::queue;
use crate::queue::notice::Notices;
use crate::relay::backlog::{Backlog, BacklogWorker};
use crate::relay::gmail::accounts::Account;
use crate::relay::gmail::reload::{CredentialWatcher, POLL_INTERVAL};
use crate::relay::{self, Deliver, Gmail};
use crate::tasks::Tasks;

/// The delivery target and what comes with it.
pub(super) struct Target {
    /// What the SMTP sessions hand accepted mail to.
    pub deliver: Arc<dyn Deliver>,
    /// Gmail mode and auto-release: reloads the accounts' credentials when their files change
    /// (and on SIGHUP).
    pub watcher: Option<Arc<CredentialWatcher>>,
    /// Gmail queue mode, and auto-release in console and file modes: the queue, not running yet.
    pub queue: Option<crate::queue::Started>,
    /// The Gmail accounts (gmail mode, auto-release), for readiness.
    pub accounts: Vec<Arc<Account>>,
    /// Console and file modes: the development inbox, which the delivery target feeds.
    pub inbox: Option<Arc<Inbox>>,
    /// Console mode: what prints (and captures) accepted mail after the 250; it must run.
    pub backlog: Option<BacklogWorker>,
}

impl Target {
    /// Only `deliver`: nothing to watch, queue or capture.
    fn only(deliver: Arc<dyn Deliver>) -> Target {
        Target {
            deliver,
            watcher: None,
            queue: None,
            accounts: Vec::new(),
            inbox: None,
            backlog: None,
        }
    }
}

/// The task sets the delivery target's parts run on.
pub(super) struct TaskSets<'a> {
    /// The server's shutdown (the inbox's listeners watch it).
    pub shutdown: &'a CancellationToken,
    /// The queue's storage (the database's connections and listener).
    pub storage: &'a Tasks,
    /// The webhook senders, closed after the scheduler.
    pub notify: &'a Tasks,
}

/// Builds the target `config` asks for (or the one `seams` hands in). Gmail is built here rather
/// than through [`relay::from_config`] because the watcher and the queue need the concrete
/// accounts, which `Arc<dyn Deliver>` hides. In queue mode, large bodies are spilled inside the
/// spool unless `smtp.spill_dir` says otherwise, so storing them is a link.
pub(super) async fn build(
    config: &Config,
    seams: &Seams,
    smtp: &mut SmtpConfig,
    sets: TaskSets<'_>,
) -> Result<Target, StartError> {
    if let Some(target) = &seams.deliver_to {
        return Ok(Target::only(target.clone()));
    }
    let queued = config.relay.mode.is_provider() && config.relay.delivery == Delivery::Queue;
    let auto_release = !config.relay.mode.is_provider() && config.releases_automatically();
    if !queued && !auto_release && !config.notify.webhooks.is_empty() {
        tracing::warn!(
            "notify.webhooks tell of queued mail: they send nothing in this mode (gmail mode with \
             delivery = \"queue\", or [inbox] release_matching in console and file modes, sends \
             them)"
        );
    }
    if !config.relay.mode.is_provider() {
        return capturing(config, seams, sets).await;
    }
    let GmailParts {
        gmail,
        accounts,
        watcher,
    } = gmail_parts(config, seams)?;
    if config.relay.delivery == Delivery::Sync {
        return Ok(Target {
            watcher: Some(watcher),
            accounts,
            ..Target::only(gmail)
        });
    }
    let started = start_queue(config, gmail, &sets, None).await?;
    if smtp.spill_dir.is_none() {
        smtp.spill_dir = started.spill_dir.clone();
    }
    Ok(Target {
        deliver: started.acceptor.clone(),
        watcher: Some(watcher),
        queue: Some(started),
        accounts,
        inbox: None,
        backlog: None,
    })
}

/// Console and file modes: the relay, the inbox that captures what it is given (with release
/// through `[gmail]` when it is configured), and with `[inbox] release_matching` the stage that
/// also queues the matched recipients' copy for Gmail ([`AutoRelease`]), on gmail mode's queue,
/// accounts and credential watcher.
async fn capturing(
    config: &Config,
    seams: &Seams,
    sets: TaskSets<'_>,
) -> Result<Target, StartError> {
    let rules = Arc::new(ReleaseRules::from_config(&config.inbox)?);
    let mut deliver = relay::from_config(config)?;
    let auto = match rules.releases_automatically() {
        true => Some(gmail_parts(config, seams)?),
        false => None,
    };
    let release = match &auto {
        Some(parts) => Release::through(parts.gmail.clone()),
        None => Release::from_config(config),
    };
    let inbox = match config.inbox_active() {
        true => Some(build_inbox(
            config,
            release.with_rules(rules.clone()),
            sets.shutdown,
        )?),
        false => None,
    };
    if let Some(inbox) = &inbox {
        deliver = inbox.capturing(deliver);
    }
    let Some(GmailParts {
        gmail,
        accounts,
        watcher,
    }) = auto
    else {
        // What the console prints and the inbox shows is read later by a person: the client
        // does not wait for it (relay::backlog). The file target's 250 still means "on disk".
        let mut backlog = None;
        if config.relay.mode == RelayMode::Console {
            let (front, worker) = Backlog::new(deliver);
            if let Some(inbox) = &inbox {
                inbox.captures_through(front.progress());
            }
            (deliver, backlog) = (Arc::new(front), Some(worker));
        }
        if let Some(inbox) = &inbox {
            inbox.injects_into(&deliver);
        }
        return Ok(Target {
            inbox,
            backlog,
            ..Target::only(deliver)
        });
    };
    let started = start_queue(config, gmail, &sets, Some(rules.clone())).await?;
    let deliver: Arc<dyn Deliver> =
        Arc::new(AutoRelease::new(deliver, started.acceptor.clone(), rules));
    if let Some(inbox) = &inbox {
        // Mail posted to the send API is released as SMTP mail is.
        inbox.injects_into(&deliver);
    }
    Ok(Target {
        deliver,
        watcher: Some(watcher),
        queue: Some(started),
        accounts,
        inbox,
        // Auto-release answers once the copy is queued, so capture stays in the transaction.
        backlog: None,
    })
}

/// The provider's relay, its accounts, and the watcher that reloads their credentials.
struct GmailParts {
    gmail: Arc<Gmail>,
    accounts: Vec<Arc<Account>>,
    watcher: Arc<CredentialWatcher>,
}

/// Builds the provider's relay (`[gmail]` in console and file modes, where it releases) with
/// the seams' retries and timeout.
fn gmail_parts(config: &Config, seams: &Seams) -> Result<GmailParts, StartError> {
    let mut gmail = relay::provider(config, relay::http_client()?)?;
    if let Some(retry) = seams.gmail_retry {
        gmail = gmail.with_retry(retry);
    }
    if let Some(timeout) = seams.gmail_request_timeout {
        gmail = gmail.with_request_timeout(timeout);
    }
    let gmail = Arc::new(gmail);
    let accounts: Vec<Arc<Account>> = gmail.router().accounts().cloned().collect();
    let watcher = Arc::new(CredentialWatcher::new(
        accounts.iter().cloned(),
        POLL_INTERVAL,
    ));
    Ok(GmailParts {
        gmail,
        accounts,
        watcher,
    })
}

/// The queue of `[queue]` delivering through `gmail`, with `[notify]`'s DSNs and webhooks; with
/// `release` (auto-release), DSNs only to addresses the release rules send to.
async fn start_queue(
    config: &Config,
    gmail: Arc<Gmail>,
    sets: &TaskSets<'_>,
    release: Option<Arc<ReleaseRules>>,
) -> Result<queue::Started, StartError> {
    let notifier =
        Notifier::from_config(&config.notify, sets.notify.tracker(), sets.notify.closing())?;
    let mut notices = Notices::from_config(config, notifier);
    if let Some(rules) = release {
        notices = notices.only_to(move |address| rules.is_released(address));
    }
    Ok(queue::start(&queue_config(config), gmail, notices, sets.storage).await?)
}

/// `[queue]` as the scheduler obeys it: in microsoft mode no mailbox sends faster than Exchange
/// Online's `max_messages_per_minute` (30), whatever `max_send_rate` says.
fn queue_config(config: &Config) -> crate::config::QueueConfig {
    let mut queue = config.queue.clone();
    if config.relay.mode == RelayMode::Microsoft {
        let per_second = f64::from(config.microsoft.messages_per_minute()) / 60.0;
        queue.max_send_rate = queue.max_send_rate.min(per_second);
    }
    queue
}

/// The inbox of console and file modes, releasing through `release`.
fn build_inbox(
    config: &Config,
    release: Release,
    shutdown: &CancellationToken,
) -> Result<Arc<Inbox>, StartError> {
    let guard = Guard::from_config(config)?;
    Inbox::new(config, release, guard, shutdown.clone()).map_err(|source| StartError::Inbox {
        place: match config.relay.mode {
            RelayMode::File => format!(" in {}", config.file.dir.display()),
            _ => String::new(),
        },
        source,
    })
}
