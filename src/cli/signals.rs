//! What tells a running `serve` to stop or to reload, per platform. The one place with
//! `#[cfg(unix)]`/`#[cfg(windows)]` for it:
//!
//! | | stop (graceful; a second one stops at once) | reload credentials and TLS now |
//! |---|---|---|
//! | Unix | SIGTERM, SIGINT (Ctrl-C) | SIGHUP |
//! | Windows | Ctrl-C, Ctrl-Break, closing the console, system shutdown; a service wrapper's stop (WinSW, NSSM, shawl send Ctrl-C or Ctrl-Break) | none: the files are watched (below) |
//!
//! On every platform the credential files and the TLS certificate are also polled and reloaded
//! when they change, so nothing depends on SIGHUP; `smtp2gmail queue retry --all` retries held
//! mail at once, the other thing SIGHUP does.

use crate::server::ServerHandle;

/// The stop and reload handlers, installed before the server says it listens: a signal sent
/// once it does must meet them, not the default action (terminate).
pub struct Signals {
    stop: Option<platform::Stop>,
    reload: Option<platform::Reload>,
}

impl Signals {
    /// Installs the handlers; one that cannot be installed is logged with what still works.
    pub fn install() -> Signals {
        let stop = platform::Stop::install()
            .inspect_err(|err| {
                tracing::error!(%err, "cannot install the stop handlers; {}", platform::KILL_HINT)
            })
            .ok();
        let reload = platform::Reload::install();
        Signals { stop, reload }
    }

    /// Reloads `server` on each reload request (credentials and the TLS certificate, as daemons
    /// conventionally reload on SIGHUP; with nothing to reload the request must still not stop
    /// it) until a stop request.
    pub async fn until_stop(&mut self, server: &ServerHandle) {
        if let Some(note) = platform::START_NOTE {
            tracing::info!("{note}");
        }
        loop {
            let reload = async {
                match &mut self.reload {
                    Some(reload) => reload.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = Self::stop_request(&mut self.stop) => return,
                received = reload => match received {
                    Some(()) => {
                        server.reload(platform::RELOAD_NAME).await;
                    }
                    None => self.reload = None,
                },
            }
        }
    }

    /// Returns on the next stop request (never, when the handlers could not be installed).
    pub async fn stop(&mut self) {
        Self::stop_request(&mut self.stop).await
    }

    async fn stop_request(stop: &mut Option<platform::Stop>) {
        match stop {
            Some(stop) => stop.recv().await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(unix)]
mod platform {
    use tokio::signal::unix::{Signal, SignalKind, signal};

    pub const KILL_HINT: &str = "stop the server with SIGKILL";
    pub const RELOAD_NAME: &str = "SIGHUP";
    pub const START_NOTE: Option<&str> = None;

    /// SIGTERM or SIGINT.
    pub struct Stop {
        term: Signal,
        int: Signal,
    }

    impl Stop {
        pub fn install() -> std::io::Result<Stop> {
            Ok(Stop {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }

        pub async fn recv(&mut self) {
            tokio::select! { _ = self.term.recv() => {}, _ = self.int.recv() => {} }
        }
    }

    /// SIGHUP.
    pub struct Reload(Signal);

    impl Reload {
        pub fn install() -> Option<Reload> {
            signal(SignalKind::hangup())
                .inspect_err(|err| tracing::warn!(%err, "cannot install the SIGHUP handler; credentials and the TLS certificate still reload when their files change"))
                .ok()
                .map(Reload)
        }

        pub async fn recv(&mut self) -> Option<()> {
            self.0.recv().await
        }
    }
}

#[cfg(windows)]
mod platform {
    use tokio::signal::windows::{CtrlBreak, CtrlC, CtrlClose, CtrlShutdown};
    use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close, ctrl_shutdown};

    pub const KILL_HINT: &str = "stop the server with `taskkill /F`";
    pub const RELOAD_NAME: &str = "reload";
    /// Said once after the startup line.
    pub const START_NOTE: Option<&str> = Some(
        "no SIGHUP on Windows: credentials and the TLS certificate reload when their files \
         change (checked every 2 s); `smtp2gmail queue retry --all` retries held mail now",
    );

    /// Ctrl-C, Ctrl-Break (what service wrappers send on a service stop), the console window
    /// closing, and system shutdown.
    pub struct Stop {
        c: CtrlC,
        brk: CtrlBreak,
        close: CtrlClose,
        shutdown: CtrlShutdown,
    }

    impl Stop {
        pub fn install() -> std::io::Result<Stop> {
            Ok(Stop {
                c: ctrl_c()?,
                brk: ctrl_break()?,
                close: ctrl_close()?,
                shutdown: ctrl_shutdown()?,
            })
        }

        pub async fn recv(&mut self) {
            tokio::select! {
                _ = self.c.recv() => {},
                _ = self.brk.recv() => {},
                _ = self.close.recv() => {},
                _ = self.shutdown.recv() => {},
            }
        }
    }

    /// Windows has no SIGHUP ([`START_NOTE`] says what replaces it).
    pub enum Reload {}

    impl Reload {
        pub fn install() -> Option<Reload> {
            None
        }

        pub async fn recv(&mut self) -> Option<()> {
            match *self {}
        }
    }
}
