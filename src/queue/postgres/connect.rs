//! Connections: TLS by the URL's `sslmode` (rustls with the ring provider, like the rest of the
//! server), a pool of them for the queue's statements, and single connections outside the pool
//! for `LISTEN`, which must keep one session open.
//!
//! Every connection has a driver task (tokio-postgres does its I/O there). They run as the
//! database's [`Tasks`], so that the server's shutdown waits for them, and a pooled connection's
//! driver ends when those tasks close: shutdown leaves no session open behind it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    Connect, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime,
};
use futures_util::StreamExt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::error::{DatabaseError, Step, Target};
use crate::config::{DatabaseUrl, RootCerts};
use crate::tasks::Tasks;

/// How long a statement waits for a free pooled connection (or a new one) before the caller
/// hears [`DatabaseError::Timeout`]; the SMTP client gets its 451 well within its own timeout.
pub const POOL_WAIT: Duration = Duration::from_secs(10);

/// The TLS side of every connection to `url`. Without `sslmode=disable` the client offers TLS;
/// which certificate is accepted follows `url.roots` (docs/design.md, "PostgreSQL client").
pub fn tls(url: &DatabaseUrl) -> MakeRustlsConnect {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions");
    let config = match &url.roots {
        RootCerts::Unverified => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
        RootCerts::System => {
            let roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        RootCerts::File(certs) => {
            let mut roots = RootCertStore::empty();
            // A certificate rustls cannot use is skipped; the handshake then names the problem.
            roots.add_parsable_certificates(certs.iter().cloned());
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    MakeRustlsConnect::new(config)
}

/// A pool of at most `size` connections to `url`, their drivers run as `tasks`. Connections open
/// lazily; use [`check`] to find out at start whether the URL works at all.
pub fn pool(url: &DatabaseUrl, size: usize, tasks: &Tasks) -> Pool {
    let connect = TrackedConnect {
        tls: tls(url),
        tasks: tasks.clone(),
    };
    let manager = Manager::from_connect(
        url.config.clone(),
        connect,
        // A connection the server closed (a restart) is noticed by the client's own task; the
        // first statement on one closed in between fails as an outage, and the next gets a new one.
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .recycle_timeout(Some(POOL_WAIT))
        .build()
        .expect("a pool with a runtime always builds")
}

/// Opens the pool's connections as deadpool's own connector does, but runs each driver as one of
/// the database's [`Tasks`]. When they close, a driver drops its connection (the socket closes; an
/// idle session ends quietly on the server): by then the deliveries that used the pool are over.
struct TrackedConnect {
    tls: MakeRustlsConnect,
    tasks: Tasks,
}

/// What [`Connect::connect`] returns.
type Connecting<'a> = Pin<
    Box<
        dyn Future<
                Output = Result<
                    (tokio_postgres::Client, tokio::task::JoinHandle<()>),
                    tokio_postgres::Error,
                >,
            > + Send
            + 'a,
    >,
>;

impl Connect for TrackedConnect {
    fn connect(&self, config: &tokio_postgres::Config) -> Connecting<'_> {
        let (config, tls, tasks) = (config.clone(), self.tls.clone(), self.tasks.clone());
        Box::pin(async move {
            let (client, connection) = config.connect(tls).await?;
            let closing = tasks.closing().clone();
            let driver = tasks.spawn(async move {
                tokio::select! {
                    ended = connection => if let Err(err) = ended {
                        tracing::debug!(%err, "a pooled database connection ended");
                    },
                    _ = closing.cancelled() => {}
                }
            });
            Ok((client, driver))
        })
    }
}

/// A connection from `pool`, with the failure in the operator's terms.
pub async fn client(
    pool: &Pool,
    target: &Target,
) -> Result<deadpool_postgres::Client, DatabaseError> {
    pool.get().await.map_err(|err| match err {
        PoolError::Backend(err) => target.classify(&err, Step::Connect, "connecting"),
        PoolError::Timeout(_) => DatabaseError::Timeout {
            servers: target.servers.clone(),
            waited: POOL_WAIT,
        },
        other => DatabaseError::Unavailable {
            servers: target.servers.clone(),
            reason: other.to_string(),
        },
    })
}

/// A session of its own (outside the pool) listening on `channel`: the client, which must be
/// kept for as long as notifications are wanted, and the notifications. The receiver ends when
/// the session does (the server restarted or went away): then listen again, and look for work
/// missed meanwhile. The session's driver runs as one of `tasks` and ends when the client is
/// dropped (saying goodbye to the server first).
pub async fn listen(
    url: &DatabaseUrl,
    target: &Target,
    channel: &str,
    tasks: &Tasks,
) -> Result<
    (
        tokio_postgres::Client,
        mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    ),
    DatabaseError,
> {
    let (client, mut connection) = url
        .config
        .connect(tls(url))
        .await
        .map_err(|err| target.classify(&err, Step::Connect, "connecting"))?;
    let (sender, receiver) = mpsc::unbounded_channel();
    tasks.spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        // Ends on the session's end (an error or the client dropped) or the receiver's.
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(notification) = message
                && sender.send(notification).is_err()
            {
                break;
            }
        }
    });
    // A quoted identifier: the channel name is ours, but quoting keeps any name safe.
    client
        .batch_execute(&format!("LISTEN \"{}\"", channel.replace('"', "\"\"")))
        .await
        .map_err(|err| target.classify(&err, Step::Use, "listening for new mail"))?;
    Ok((client, receiver))
}

/// Opens one pooled connection and runs a trivial statement: a wrong URL, password or database
/// is then an error at start, not on the first message.
pub async fn check(pool: &Pool, target: &Target) -> Result<(), DatabaseError> {
    let client = client(pool, target).await?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|err| target.classify(&err, Step::Connect, "checking the connection"))?;
    Ok(())
}

/// Accepts any certificate but still checks the handshake's signatures: libpq's `prefer` and
/// `require` without a root certificate, which protect against eavesdroppers only.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
