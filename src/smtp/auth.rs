//! SMTP AUTH credentials: the configured users, argon2 password checks, SASL PLAIN/LOGIN
//! decoding, and which envelope senders a user may use.
//!
//! Passwords are only ever compared through argon2 (whose final comparison is constant-time), and
//! an unknown user is checked against a dummy hash with the same cost, so neither the reply nor
//! its timing tells a guesser whether the name exists.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use argon2::Argon2;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use password_hash::rand_core::OsRng;
use password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use tokio::sync::Semaphore;

use super::throttle::Throttle;
use crate::config::UserConfig;
use crate::message::Address;
use crate::message::mailbox::matches_pattern;

/// Why a SASL exchange or a password hash could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The client's response is not valid base64 or not the shape the mechanism needs.
    #[error("malformed SASL response")]
    Malformed,
    /// Hashing a new password failed (only with absurd inputs).
    #[error("cannot hash the password: {0}")]
    Hash(password_hash::Error),
}

/// Hashes a password with argon2id and a random salt, as a PHC string for `password_hash`.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(AuthError::Hash)
}

/// A hash of a random password with the same algorithm and parameters as `model`.
fn dummy_like(model: &str) -> Result<String, AuthError> {
    let model = PasswordHash::new(model).map_err(AuthError::Hash)?;
    let algorithm = argon2::Algorithm::try_from(model.algorithm).map_err(AuthError::Hash)?;
    let version = model
        .version
        .map_or(Ok(argon2::Version::default()), argon2::Version::try_from)
        .map_err(|_| AuthError::Hash(password_hash::Error::Version))?;
    let params = argon2::Params::try_from(&model).map_err(AuthError::Hash)?;
    let salt = SaltString::generate(&mut OsRng);
    let password = format!("{:x}", fastrand::u128(..));
    Argon2::new(algorithm, version, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(AuthError::Hash)
}

/// One account that may AUTH.
#[derive(Debug)]
pub struct User {
    /// The name given in AUTH (logged, and recorded in the envelope).
    pub name: String,
    hash: String,
    /// Allowed envelope senders; empty means any.
    senders: Vec<String>,
}

impl User {
    /// Whether this user may use `sender` in MAIL FROM. A restricted user may not send with the
    /// null sender either: bounces are the relay's business, not an application's.
    pub fn may_send_as(&self, sender: Option<&Address>) -> bool {
        match sender {
            Some(sender) => self.may_use(sender.as_str()),
            None => !self.is_restricted(),
        }
    }

    /// True when `senders` limits the addresses this user may use.
    pub fn is_restricted(&self) -> bool {
        !self.senders.is_empty()
    }

    /// Whether this user may use `sender` (in MAIL FROM or the From header).
    pub fn may_use(&self, sender: &str) -> bool {
        if !self.is_restricted() {
            return true;
        }
        self.senders
            .iter()
            .any(|allowed| matches_pattern(allowed, sender))
    }
}

/// The configured users, and the means to check a password.
pub struct Users {
    by_name: HashMap<String, Arc<User>>,
    /// Checked for unknown names so that they cost as much time as known ones.
    dummy: String,
    /// Each argon2 check takes ~19 MiB and tens of milliseconds of CPU: a flood of AUTH attempts
    /// must queue here instead of exhausting memory or starving the sessions' threads.
    checking: Semaphore,
    /// Slows down addresses that keep failing.
    throttle: Throttle,
}

impl Users {
    /// Builds the table; the users have passed [`UserConfig::check`] (config validation).
    pub fn new(users: &[UserConfig]) -> Result<Users, AuthError> {
        let by_name = users
            .iter()
            .map(|u| {
                let user = User {
                    name: u.name.clone(),
                    hash: u.password_hash.clone(),
                    senders: u.senders.clone(),
                };
                (u.name.clone(), Arc::new(user))
            })
            .collect();
        // Made with the first user's algorithm and cost, so an unknown name takes as long as a
        // known one. Only needed when somebody can log in.
        let dummy = match users.first() {
            None => String::new(),
            Some(user) => dummy_like(&user.password_hash)?,
        };
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Users {
            by_name,
            dummy,
            checking: Semaphore::new(parallel),
            throttle: Throttle::default(),
        })
    }

    /// True when at least one user is configured (AUTH is advertised only then).
    pub fn any(&self) -> bool {
        !self.by_name.is_empty()
    }

    /// The user if `password` is theirs. Unknown names and wrong passwords take the same path;
    /// a failure from an address that keeps failing is answered only after a growing delay.
    pub async fn verify(&self, from: IpAddr, name: &str, password: String) -> Option<Arc<User>> {
        let user = self.check(name, password).await;
        match &user {
            Some(_) => self.throttle.succeeded(from),
            None => tokio::time::sleep(self.throttle.failed(from, Instant::now())).await,
        }
        user
    }

    async fn check(&self, name: &str, password: String) -> Option<Arc<User>> {
        let user = self.by_name.get(name).cloned();
        let hash = user.as_ref().map_or(&self.dummy, |u| &u.hash).clone();
        let _permit = self.checking.acquire().await.ok()?;
        let matched = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        user.filter(|_| matched)
    }
}

/// The SASL mechanisms offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616: one response, `authzid NUL authcid NUL password`.
    Plain,
    /// The de-facto LOGIN: user name and password as two base64 responses.
    Login,
}

/// Decodes one base64 SASL response; `=` is the empty response (RFC 4954).
pub fn decode(response: &str) -> Result<String, AuthError> {
    let response = response.trim();
    if response == "=" {
        return Ok(String::new());
    }
    let bytes = BASE64.decode(response).map_err(|_| AuthError::Malformed)?;
    String::from_utf8(bytes).map_err(|_| AuthError::Malformed)
}

/// Splits a decoded PLAIN response into user name and password. An authorisation identity other
/// than the user's own would mean acting as someone else, which is never allowed here.
pub fn split_plain(decoded: &str) -> Result<(String, String), AuthError> {
    let mut parts = decoded.splitn(3, '\0');
    let (Some(authzid), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    if !authzid.is_empty() && authzid != user {
        return Err(AuthError::Malformed);
    }
    Ok((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(senders: &[&str]) -> User {
        User {
            name: "app".into(),
            hash: String::new(),
            senders: senders.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn senders_restrict_the_envelope_sender() {
        let addr = |s: &str| Address::new(s.to_string());
        let u = user(&["noreply@example.com", "*@example.org"]);
        assert!(u.may_send_as(Some(&addr("noreply@example.com"))));
        assert!(u.may_send_as(Some(&addr("NoReply@Example.com"))));
        assert!(u.may_send_as(Some(&addr("anyone@EXAMPLE.org"))));
        assert!(!u.may_send_as(Some(&addr("ceo@example.com"))));
        assert!(!u.may_send_as(Some(&addr("x@sub.example.org"))));
        assert!(!u.may_send_as(Some(&addr("x@example.org.evil"))));
        assert!(!u.may_send_as(None));
        assert!(user(&[]).may_send_as(None));
    }

    #[test]
    fn plain_responses() {
        assert_eq!(
            split_plain("\0app\0pw\0x").unwrap(),
            ("app".into(), "pw\0x".into())
        );
        assert_eq!(split_plain("app\0app\0pw").unwrap().0, "app");
        assert!(split_plain("admin\0app\0pw").is_err());
        assert!(split_plain("app\0pw").is_err());
        assert!(decode("!!!").is_err());
        assert_eq!(decode("=").unwrap(), "");
    }

    #[test]
    fn plaintext_and_foreign_hashes_are_refused() {
        let mut config = UserConfig {
            name: "app".into(),
            password_hash: "hunter2".into(),
            senders: vec![],
        };
        assert!(config.check().is_err());
        config.password_hash = "$5$rounds=5000$salt$hash".into();
        assert!(config.check().is_err());
        config.password_hash = hash_password("hunter2").unwrap();
        assert!(config.check().is_ok());
    }

    #[tokio::test]
    async fn verify_accepts_only_the_right_password() {
        let config = UserConfig {
            name: "app".into(),
            password_hash: hash_password("right").unwrap(),
            senders: vec![],
        };
        let users = Users::new(&[config]).unwrap();
        let ip = IpAddr::from([127, 0, 0, 1]);
        assert!(users.verify(ip, "app", "right".into()).await.is_some());
        assert!(users.verify(ip, "app", "wrong".into()).await.is_none());
        assert!(users.verify(ip, "nobody", "right".into()).await.is_none());
    }
}
