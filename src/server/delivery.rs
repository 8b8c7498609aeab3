//! Where accepted mail goes, built from the configuration: in gmail mode the accounts, the
//! watcher that reloads their credentials and, when gmail mode queues, the queue; in console and
//! file modes the relay and the development inbox that captures what it is given.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Seams, StartError};
use crate::config::{Config, Delivery, RelayMode, SmtpConfig};
use crate::inbox::Inbox;
use crate::inbox::capture::Capture;
use crate::inbox::guard::Guard;
use crate::inbox::release::Release;
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
    /// Gmail mode: reloads the accounts' credentials when their files change (and on SIGHUP).
    pub watcher: Option<Arc<CredentialWatcher>>,
    /// Gmail queue mode: the queue, not running yet.
    pub queue: Option<crate::queue::Started>,
    /// The Gmail accounts, for readiness.
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
    let TaskSets {
        shutdown,
        storage,
        notify,
    } = sets;
    if let Some(target) = &seams.deliver_to {
        return Ok(Target::only(target.clone()));
    }
    let queued = config.relay.mode == RelayMode::Gmail && config.relay.delivery == Delivery::Queue;
    if !queued && !config.notify.webhooks.is_empty() {
        tracing::warn!(
            "notify.webhooks tell of queued mail: they send nothing in this mode (gmail mode with \
             delivery = \"queue\" sends them)"
        );
    }
    if config.relay.mode != RelayMode::Gmail {
        let mut deliver = relay::from_config(config)?;
        let inbox = match config.inbox_active() {
            true => Some(build_inbox(config, shutdown)?),
            false => None,
        };
        if let Some(inbox) = &inbox {
            deliver = Arc::new(Capture::new(deliver, inbox.clone()));
        }
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
        return Ok(Target {
            inbox,
            backlog,
            ..Target::only(deliver)
        });
    }
    let mut gmail = Gmail::from_config(&config.gmail, relay::http_client()?)
        .map_err(relay::BuildError::from)?;
    if let Some(retry) = seams.gmail_retry {
        gmail = gmail.with_retry(retry);
    }
    if let Some(timeout) = seams.gmail_request_timeout {
        gmail = gmail.with_request_timeout(timeout);
    }
    let gmail = Arc::new(gmail);
    let accounts: Vec<Arc<Account>> = gmail.router().accounts().cloned().collect();
    let watcher = Some(Arc::new(CredentialWatcher::new(
        accounts.iter().cloned(),
        POLL_INTERVAL,
    )));
    if config.relay.delivery == Delivery::Sync {
        return Ok(Target {
            watcher,
            accounts,
            ..Target::only(gmail)
        });
    }
    let notifier = Notifier::from_config(&config.notify, notify.tracker(), notify.closing())?;
    let notices = Notices::from_config(config, notifier);
    let started = queue::start(&config.queue, gmail, notices, storage).await?;
    if smtp.spill_dir.is_none() {
        smtp.spill_dir = started.spill_dir.clone();
    }
    Ok(Target {
        deliver: started.acceptor.clone(),
        watcher,
        queue: Some(started),
        accounts,
        inbox: None,
        backlog: None,
    })
}

/// The inbox of console and file modes, with release through `[gmail]` when it is configured.
fn build_inbox(config: &Config, shutdown: &CancellationToken) -> Result<Arc<Inbox>, StartError> {
    let guard = Guard::from_config(config)?;
    let release = Release::from_config(config);
    Inbox::new(config, release, guard, shutdown.clone()).map_err(|source| StartError::Inbox {
        place: match config.relay.mode {
            RelayMode::File => format!(" in {}", config.file.dir.display()),
            _ => String::new(),
        },
        source,
    })
}
