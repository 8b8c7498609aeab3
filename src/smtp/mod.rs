//! The SMTP front end: listeners, the connection caps, TLS, sessions, and graceful shutdown.
//!
//! Each accepted connection becomes a [`session::Session`] task; on a `listen_tls` listener the
//! TLS handshake comes first, inside that task. A semaphore caps how many run at once and a
//! per-IP count stops one remote address (loopback is exempt) from taking every slot; a client
//! over either cap is told `421 4.7.0` at once instead of waiting unanswered. On shutdown the
//! listeners stop accepting, idle sessions are told 421, open transactions get `shutdown_grace`
//! to finish, and then every session is closed.

pub mod address;
pub mod auth;
pub mod connection;
pub mod data;
pub mod faults;
mod peers;
mod quickack;
pub mod reply;
pub mod session;
mod throttle;
pub mod tls;

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
use auth::{AuthError, Users};
use connection::Connection;
use faults::Faults;
use peers::Peers;
use session::{Origin, Session, SessionContext};
use tls::{Tls, TlsError};

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
    /// The certificate or key of `[smtp.tls]` is unusable (a configuration error).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The users of `[[smtp.users]]` are unusable (a configuration error).
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl StartError {
    /// True when the operator's configuration is at fault rather than the environment.
    pub fn is_config(&self) -> bool {
        !matches!(self, StartError::Bind { .. })
    }
}

/// A bound SMTP server, ready to [`run`](Server::run).
pub struct Server {
    /// Each socket, the address it was configured as, and whether it speaks implicit TLS.
    listeners: Vec<(TcpListener, SocketAddr, bool)>,
    config: SmtpConfig,
    deliver: Arc<dyn Deliver>,
    tls: Option<Arc<Tls>>,
    users: Arc<Users>,
    faults: Option<Arc<dyn Faults>>,
}

impl Server {
    /// Loads the TLS identity and the users, then binds every address in `config.listen` and
    /// `config.listen_tls` (port 0 picks a free port, for tests).
    /// `max_message_size` is lowered to what the target can take (Gmail's limit less room for
    /// the Bcc header), so that SIZE tells clients the truth.
    pub async fn bind(
        mut config: SmtpConfig,
        deliver: Arc<dyn Deliver>,
    ) -> Result<Server, StartError> {
        if let Some(limit) = deliver.size_limit(config.max_recipients) {
            config.max_message_size = config.max_message_size.min(limit);
        }
        let tls = config
            .tls
            .as_ref()
            .map(Tls::load)
            .transpose()?
            .map(Arc::new);
        let users = Arc::new(Users::new(&config.users)?);
        let mut listeners = Vec::new();
        let plain = config.listen.iter().map(|addr| (addr, false));
        let implicit = config.listen_tls.iter().map(|addr| (addr, true));
        for (addr, implicit_tls) in plain.chain(implicit) {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: *addr,
                    source,
                })?;
            listeners.push((listener, *addr, implicit_tls));
        }
        Ok(Server {
            listeners,
            config,
            deliver,
            tls,
            users,
            faults: None,
        })
    }

    /// Lets `faults` (the inbox's chaos triggers) fail session steps on purpose.
    pub fn with_faults(self, faults: Option<Arc<dyn Faults>>) -> Server {
        Server { faults, ..self }
    }

    /// The addresses actually bound: `config.listen`, then `config.listen_tls`.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _, _)| l.local_addr().ok())
            .collect()
    }

    /// The largest message accepted and advertised as `SIZE`: `max_message_size`, or less when
    /// the delivery target cannot take that much (see [`Deliver::size_limit`]).
    pub fn max_message_size(&self) -> u64 {
        self.config.max_message_size
    }

    /// The TLS identity, so that SIGHUP can reload it while the server runs.
    pub fn tls(&self) -> Option<Arc<Tls>> {
        self.tls.clone()
    }

    /// Serves until `shutdown` fires, then drains: returns once every session has ended.
    pub async fn run(self, shutdown: CancellationToken) {
        let abort = CancellationToken::new();
        let grace = self.config.shutdown_grace;
        let permits = Arc::new(Semaphore::new(self.config.max_connections));
        let peers = Arc::new(Peers::new(self.config.max_connections_per_ip));
        let ctx = Arc::new(SessionContext {
            config: self.config,
            deliver: self.deliver,
            shutdown: shutdown.clone(),
            tls: self.tls,
            users: self.users,
            faults: self.faults,
        });
        let sessions = TaskTracker::new();
        let acceptors = TaskTracker::new();
        for (listener, configured, implicit_tls) in self.listeners {
            let acceptor = Acceptor {
                listener,
                configured,
                implicit_tls,
                peers: peers.clone(),
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

/// Tells a client over a connection cap to come back later. A fresh socket's send buffer is
/// empty, so this short write completes at once; on a TLS listener the client cannot read it,
/// but it sees the connection close, which is as good.
fn refuse(stream: &TcpStream) {
    let _ = stream.try_write(b"421 4.7.0 too many connections, try again later\r\n");
}

/// The accept loop of one listening socket.
struct Acceptor {
    listener: TcpListener,
    /// The address as written in the config, which is how per-listener settings name it (port 0
    /// and `0.0.0.0` included: the bound address is not what the operator wrote).
    configured: SocketAddr,
    /// The handshake comes before the greeting (`listen_tls`).
    implicit_tls: bool,
    peers: Arc<Peers>,
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
                // A dual-stack listener sees IPv4 clients as `::ffff:a.b.c.d`: canonical from
                // here on, so the per-IP cap, the AUTH throttle and the logs see one address.
                Ok((stream, remote)) => {
                    let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
                    self.start_session(stream, remote)
                }
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
            refuse(&stream);
            return;
        };
        let Some(peer) = self.peers.admit(remote.ip()) else {
            tracing::warn!(%remote, "connection refused: max_connections_per_ip reached");
            crate::telemetry::connection_rejected("max_connections_per_ip");
            refuse(&stream);
            return;
        };
        let _ = stream.set_nodelay(true);
        let loopback = stream
            .local_addr()
            .is_ok_and(|a| a.ip().to_canonical().is_loopback());
        let ctx = self.ctx.clone();
        let abort = self.abort.clone();
        let implicit_tls = self.implicit_tls;
        let listener = self.configured;
        crate::telemetry::connection_opened();
        self.sessions.spawn(async move {
            // Counted closed however the task ends, handshake failures included.
            let _open = OpenConnection;
            let mut stream: Box<dyn tls::Io> = Box::new(quickack::QuickAck(stream));
            let timeout = ctx.config.idle_timeout;
            if let (true, Some(tls)) = (implicit_tls, &ctx.tls) {
                // A failed handshake ends this connection only; the log says why at debug level,
                // since scanners and health checks fail handshakes all day long.
                let handshake = tokio::select! {
                    handshake = tls.accept(stream, timeout) => handshake,
                    _ = abort.cancelled() => return,
                };
                stream = match handshake {
                    Ok(stream) => stream,
                    Err(err) => {
                        tracing::debug!(%remote, %err, "TLS handshake failed");
                        return;
                    }
                };
            }
            let origin = Origin {
                listener,
                loopback,
                tls: implicit_tls,
            };
            let conn = Connection::new(stream, timeout, abort);
            Session::new(conn, ctx, remote, origin).run().await;
            drop((permit, peer));
        });
    }
}

/// Marks a connection closed in the metrics when its task ends, whichever way it ends.
struct OpenConnection;

impl Drop for OpenConnection {
    fn drop(&mut self) {
        crate::telemetry::connection_closed();
    }
}
