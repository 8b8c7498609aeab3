//! The signed client assertion of certificate credentials: header `alg` PS256, `typ` JWT and
//! `x5t#S256` (the base64url SHA-256 of the certificate's DER); claims `aud` = the token URL,
//! `iss` = `sub` = the client id, `jti`, `nbf`, `iat` and `exp` ten minutes later (Microsoft's
//! certificate-credentials page).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// How long an assertion is valid: Microsoft accepts at most 10 minutes after `nbf`.
const LIFETIME_SECONDS: u64 = 600;

/// A certificate uploaded to the app registration and its private key.
#[derive(Clone)]
pub struct Certificate {
    /// The certificate file, for messages.
    pub path: PathBuf,
    /// `x5t#S256`.
    thumbprint: String,
    /// Parsed at load time so a broken key stops the start; its `Debug` is redacted.
    key: EncodingKey,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("path", &self.path)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

/// Why a certificate credential cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The certificate file holds no PEM certificate.
    #[error("{path}: no PEM certificate (-----BEGIN CERTIFICATE-----) could be read: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The key file holds no RSA private key in PEM.
    #[error("{path}: no RSA private key in PEM could be read{reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What went wrong, if known.
        reason: String,
    },
    /// The key cannot sign (not an RSA key, too short).
    #[error("the private key cannot sign the assertion: {0}")]
    Sign(String),
}

#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
}

impl Certificate {
    /// Reads the certificate at `certificate` and the RSA key at `private_key` (PKCS#1 or #8;
    /// the same file when it holds both).
    pub fn load(certificate: &Path, private_key: &Path) -> Result<Certificate, CertificateError> {
        let der = CertificateDer::from_pem_file(certificate).map_err(|err| {
            CertificateError::Certificate {
                path: certificate.to_path_buf(),
                reason: err.to_string(),
            }
        })?;
        let digest = Sha256::digest(der.as_ref());
        let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
        let key_error = |reason: String| CertificateError::Key {
            path: private_key.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(private_key).map_err(|e| key_error(format!(": {e}")))?;
        let block = private_key_block(&text).ok_or_else(|| key_error(String::new()))?;
        let key =
            EncodingKey::from_rsa_pem(block.as_bytes()).map_err(|e| key_error(format!(": {e}")))?;
        Ok(Certificate {
            path: certificate.to_path_buf(),
            thumbprint,
            key,
        })
    }

    /// A fresh assertion for `client_id` at the token endpoint `audience`.
    pub fn assertion(&self, client_id: &str, audience: &str) -> Result<String, CertificateError> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            aud: audience,
            iss: client_id,
            sub: client_id,
            jti: crate::message::MessageId::generate().to_string(),
            nbf: now,
            iat: now,
            exp: now + LIFETIME_SECONDS,
        };
        let mut header = Header::new(Algorithm::PS256);
        header.x5t_s256 = Some(self.thumbprint.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| CertificateError::Sign(e.to_string()))
    }
}

/// The first `-----BEGIN … PRIVATE KEY-----` block of a PEM text (a file may hold the
/// certificate too).
fn private_key_block(text: &str) -> Option<String> {
    let start = text
        .find("-----BEGIN RSA PRIVATE KEY-----")
        .or_else(|| text.find("-----BEGIN PRIVATE KEY-----"))?;
    let rest = &text[start..];
    let end_marker = if rest.starts_with("-----BEGIN RSA") {
        "-----END RSA PRIVATE KEY-----"
    } else {
        "-----END PRIVATE KEY-----"
    };
    let end = rest.find(end_marker)? + end_marker.len();
    Some(format!("{}\n", &rest[..end]))
}
