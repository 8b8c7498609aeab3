//! The SMTP front end: listeners, the connection cap, sessions, and graceful shutdown.
//!
//! Each accepted connection becomes a [`session::Session`] task. A semaphore caps how many run at
//! once; a client over the cap is told `421 4.7.0` at once instead of waiting unanswered. On
//! shutdown the listeners stop accepting, idle sessions are told 421, open transactions get
//! `shutdown_grace` to finish, and then every session is closed.

pub mod address;
pub mod connection;
pub mod data;
pub mod reply;
pub mod session;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::SmtpConfig;
use crate::relay::Deliver;
use connection::Connection;
use session::{Session, SessionContext};

/// A bound SMTP server, ready to [`run`](Server::run).
pub struct Server {
    listeners: Vec<TcpListener>,
    config: SmtpConfig,
    deliver: Arc<dyn Deliver>,
}

impl Server {
    /// Binds every address in `config.listen` (port 0 picks a free port, for tests).
    pub async fn bind(config: SmtpConfig, deliver: Arc<dyn Deliver>) -> io::Result<Server> {
        let mut listeners = Vec::new();
        for addr in &config.listen {
            let listener = TcpListener::bind(addr).await.map_err(|err| {
                io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}"))
            })?;
            listeners.push(listener);
        }
        Ok(Server {
            listeners,
            config,
            deliver,
        })
    }

    /// The addresses actually bound, in the order of `config.listen`.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` fires, then drains: returns once every session has ended.
    pub async fn run(self, shutdown: CancellationToken) {
        let abort = CancellationToken::new();
        let grace = self.config.shutdown_grace;
        let permits = Arc::new(Semaphore::new(self.config.max_connections));
        let ctx = Arc::new(SessionContext {
            config: self.config,
            deliver: self.deliver,
            shutdown: shutdown.clone(),
        });
        let sessions = TaskTracker::new();
        let acceptors = TaskTracker::new();
        for listener in self.listeners {
            let acceptor = Acceptor {
                listener,
                permits: permits.clone(),
                ctx: ctx.clone(),
                sessions: sessions.clone(),
                abort: abort.clone(),
            };
            acceptors.spawn(acceptor.run());
        }
        acceptors.close();
        acceptors.wait().await;
        sessions.close();
        tracing::info!(
            open_sessions = sessions.len(),
            "stopped accepting connections"
        );
        if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
            tracing::warn!(
                open_sessions = sessions.len(),
                ?grace,
                "grace period over, closing sessions"
            );
            abort.cancel();
            sessions.wait().await;
        }
    }
}

/// The accept loop of one listening socket.
struct Acceptor {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    ctx: Arc<SessionContext>,
    sessions: TaskTracker,
    abort: CancellationToken,
}

impl Acceptor {
    async fn run(self) {
        let addr = self.listener.local_addr().ok();
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = self.ctx.shutdown.cancelled() => return,
            };
            match accepted {
                Ok((stream, remote)) => self.start_session(stream, remote),
                Err(err) => {
                    // Usually EMFILE: pausing lets sessions finish and free descriptors instead of
                    // spinning on a listener that cannot accept.
                    tracing::warn!(?addr, %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn start_session(&self, stream: TcpStream, remote: SocketAddr) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "connection refused: max_connections reached");
            crate::telemetry::connection_rejected("max_connections");
            // A fresh socket's send buffer is empty, so this short write completes at once.
            let _ = stream.try_write(b"421 4.7.0 too many connections, try again later\r\n");
            return;
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection::new(
            Box::new(stream),
            self.ctx.config.idle_timeout,
            self.abort.clone(),
        );
        let session = Session::new(conn, self.ctx.clone(), remote);
        crate::telemetry::connection_opened();
        self.sessions.spawn(async move {
            session.run().await;
            crate::telemetry::connection_closed();
            drop(permit);
        });
    }
}
