//! Standard Webhooks signatures (<https://www.standardwebhooks.com>, spec version 1.0.0): every
//! event is signed with HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}` with the
//! endpoint's secret, written `whsec_<base64>`, so receivers can verify it with the published
//! verifier libraries (`standardwebhooks` for Python, JavaScript, Go, Rust, …) or a few lines
//! of their own.

use std::fmt;

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::google::{CredentialError, resolve_secret};

/// How a symmetric Standard Webhooks secret starts.
pub const SECRET_PREFIX: &str = "whsec_";
/// The spec's bounds on the decoded secret: at least 24 bytes (192 bits), at most 64 (512 bits).
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// Base64 that takes the secret with or without its `=` padding, as the reference libraries do.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The key an endpoint's events are signed with: the bytes of its `whsec_` secret. Debug shows
/// nothing of it; it is used only to sign.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

/// Why a configured webhook secret is unusable. Messages name the variable or file, never the
/// value.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `env:NAME` or `file:PATH` could not be read.
    #[error(transparent)]
    Resolve(#[from] CredentialError),
    /// The value does not start with `whsec_`.
    #[error("is not a Standard Webhooks secret: it must start with \"whsec_\" followed by base64")]
    Prefix,
    /// The part after `whsec_` is not base64.
    #[error("is not a Standard Webhooks secret: the part after \"whsec_\" is not base64")]
    Base64,
    /// The decoded secret is too short or too long.
    #[error(
        "is {0} bytes once decoded; Standard Webhooks secrets are 24 to 64 random bytes (e.g. \
         \"whsec_$(openssl rand -base64 32)\")"
    )]
    Length(usize),
}

impl SigningKey {
    /// The key of a configured `secret`: `env:NAME`, `file:PATH` or the value itself, which must
    /// be `whsec_<base64>`.
    pub fn from_config(secret: &str) -> Result<SigningKey, KeyError> {
        SigningKey::parse(resolve_secret(secret.trim())?.expose())
    }

    /// The key of a `whsec_<base64>` secret.
    pub fn parse(secret: &str) -> Result<SigningKey, KeyError> {
        let encoded = secret
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(KeyError::Prefix)?;
        let key = LENIENT.decode(encoded).map_err(|_| KeyError::Base64)?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(KeyError::Length(key.len()));
        }
        Ok(SigningKey(key))
    }

    /// The `webhook-signature` header value for an event with this id, sent at `timestamp`
    /// (seconds since the epoch) with this body: `v1,<base64 of the HMAC-SHA256>`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        // Any key length is valid for HMAC; `new_from_slice` cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The three Standard Webhooks headers of a request sending `body` as event `id` now
/// (`webhook-id`, `webhook-timestamp`, `webhook-signature`); unsigned, without a key, only the
/// first two.
pub fn webhook_headers(
    key: Option<&SigningKey>,
    id: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    // The attempt's time, not the event's: receivers reject old timestamps (replays).
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut headers = vec![
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", timestamp.to_string()),
    ];
    if let Some(key) = key {
        headers.push(("webhook-signature", key.sign(id, timestamp, body)));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of the Standard Webhooks reference libraries (test_sign_function in
    /// libraries/python/tests/test_webhooks.py, and the same in the other languages).
    #[test]
    fn the_published_test_vector_signs_alike() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            key.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_must_be_whsec_base64_of_24_to_64_bytes() {
        let padded = format!("whsec_{}", STANDARD.encode([7u8; 32]));
        assert!(SigningKey::parse(&padded).is_ok());
        assert!(
            SigningKey::parse(padded.trim_end_matches('=')).is_ok(),
            "unpadded"
        );
        assert!(matches!(
            SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(KeyError::Prefix)
        ));
        assert!(matches!(
            SigningKey::parse("whsec_not base64!"),
            Err(KeyError::Base64)
        ));
        let short = format!("whsec_{}", STANDARD.encode([7u8; 16]));
        assert!(matches!(
            SigningKey::parse(&short),
            Err(KeyError::Length(16))
        ));
        let long = format!("whsec_{}", STANDARD.encode([7u8; 65]));
        assert!(matches!(
            SigningKey::parse(&long),
            Err(KeyError::Length(65))
        ));
    }

    #[test]
    fn neither_errors_nor_debug_show_the_secret() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let key = SigningKey::parse(secret).unwrap();
        assert!(!format!("{key:?}").contains("MfKQ"));
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_MfKQ9r8GK!",
            "whsec_MfKQ",
        ] {
            let err = SigningKey::parse(bad).unwrap_err();
            assert!(!err.to_string().contains("MfKQ"), "{err}");
        }
    }
}
