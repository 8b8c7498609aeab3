//! TLS for STARTTLS and implicit-TLS listeners: loading the PEM certificate chain and key into a
//! rustls configuration (TLS 1.2 and 1.3 only, ring provider), reloading it when its files change
//! (polled, on every platform) and on SIGHUP (Unix), and the server side of the handshake.
//!
//! Each handshake takes the configuration current at that moment, so a reload affects new
//! connections only and never disturbs one in progress.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;
use crate::fingerprint::{FileFingerprint, Polls};
use crate::locks::lock;

/// Any byte stream a session can run over: plain TCP, the TLS stream
/// [`Tls::accept`] makes of it, an in-memory pipe in tests. Defined here, not in `connection`, so
/// that the connection depends on TLS and not the other way round.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why the certificate or key could not be used. The message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file holds no usable PEM section of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected and not found.
        what: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("smtp.tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server's TLS identity, replaceable while serving.
pub struct Tls {
    files: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    /// The certificate's and the key's fingerprints at the last look, for [`Tls::reload_if_changed`].
    seen: Mutex<[Option<FileFingerprint>; 2]>,
}

impl Tls {
    /// Loads the certificate chain and key named in `[smtp.tls]`.
    pub fn load(files: &TlsConfig) -> Result<Tls, TlsError> {
        // Before reading them: a renewal written while they load is seen at the next look.
        let seen = Mutex::new(fingerprints(files));
        let config = server_config(files)?;
        Ok(Tls {
            files: files.clone(),
            current: RwLock::new(Arc::new(config)),
            seen,
        })
    }

    /// Reloads when the certificate or the key changed since the last look (a renewal by certbot
    /// or cert-manager, which send no SIGHUP, and Windows, which has none); `None` when neither
    /// changed. A renewal caught between its two files fails and is retried when the second
    /// file changes.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = fingerprints(&self.files);
        let mut seen = lock(&self.seen);
        // A file that vanished for a moment (a secret being swapped) is no renewal yet.
        if now == *seen || now.iter().any(Option::is_none) {
            *seen = now;
            return None;
        }
        *seen = now;
        Some(self.reload())
    }

    /// Polls the files every `interval` until `shutdown`, reloading when they change.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut polls = Polls::new(interval, shutdown);
        while polls.next().await {
            let tls = self.clone();
            // stat and small reads: blocking calls, kept off the SMTP sessions' threads.
            match tokio::task::spawn_blocking(move || tls.reload_if_changed()).await {
                Ok(Some(Ok(()))) => tracing::info!("TLS certificate reloaded: its files changed"),
                Ok(Some(Err(err))) => {
                    tracing::error!("keeping the previous TLS certificate: {err}")
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(%err, "TLS certificate check failed"),
            }
        }
    }

    /// Reads the files again (SIGHUP, a change of the files). On error the previous
    /// identity stays in use: a half-written renewal must not take TLS down.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(server_config(&self.files)?);
        // A poisoned lock only means another reload panicked; the value is still whole.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    /// The server side of a handshake over `stream`, bounded by `timeout` so that a client that
    /// stalls mid-handshake holds its connection slot no longer than an idle one would.
    pub async fn accept(&self, stream: Box<dyn Io>, timeout: Duration) -> io::Result<Box<dyn Io>> {
        let config = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let handshake = TlsAcceptor::from(config).accept(stream);
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(stream)) => Ok(Box::new(stream)),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

fn fingerprints(files: &TlsConfig) -> [Option<FileFingerprint>; 2] {
    [
        FileFingerprint::of(&files.cert),
        FileFingerprint::of(&files.key),
    ]
}

fn server_config(files: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let certs = read_pem(&files.cert, |pem| {
        CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: files.cert.clone(),
            what: "no CERTIFICATE section found".to_string(),
        });
    }
    let key = read_pem(&files.key, PrivateKeyDer::from_pem_slice)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(config)
}

fn read_pem<T>(
    path: &Path,
    parse: impl FnOnce(&[u8]) -> Result<T, rustls_pki_types::pem::Error>,
) -> Result<T, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&bytes).map_err(|err| TlsError::Pem {
        path: path.to_path_buf(),
        what: err.to_string(),
    })
}
