//! TLS for tests: a self-signed certificate for "localhost" made at test time (rcgen), server
//! configuration that uses it, and a client that trusts it.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use smtp2gmail::config::{SmtpConfig, TlsConfig};
use tokio_rustls::TlsConnector;

use super::{Stream, test_config};

/// A certificate and key on disk, removed with the value.
pub struct TestCert {
    dir: tempfile::TempDir,
    /// The certificate, PEM.
    pub pem: String,
}

impl TestCert {
    /// A fresh self-signed certificate for "localhost".
    pub fn new() -> TestCert {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pem = made.cert.pem();
        std::fs::write(dir.path().join("cert.pem"), &pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), made.signing_key.serialize_pem()).unwrap();
        TestCert { dir, pem }
    }

    /// Where the certificate is.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// Where the key is.
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// `[smtp.tls]` naming these files.
    pub fn tls_config(&self) -> TlsConfig {
        TlsConfig {
            cert: self.cert_path(),
            key: self.key_path(),
        }
    }

    /// The test configuration with TLS on.
    pub fn smtp_config(&self) -> SmtpConfig {
        SmtpConfig {
            tls: Some(self.tls_config()),
            ..test_config()
        }
    }

    /// The client side of a handshake, trusting only this certificate.
    pub async fn handshake(&self, stream: Box<dyn Stream>) -> io::Result<Box<dyn Stream>> {
        let mut roots = rustls::RootCertStore::empty();
        let cert = rustls::pki_types::CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap();
        roots.add(cert).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let stream = TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await?;
        Ok(Box::new(stream))
    }
}
