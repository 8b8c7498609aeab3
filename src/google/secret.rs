//! Secret values (client secrets, refresh and access tokens, private keys) and the `env:` / `file:`
//! indirection the configuration uses to keep them out of the configuration file.

use std::fmt;
use std::path::PathBuf;

use super::credential_error::CredentialError;

/// A value that must never reach a log line, an error message or `Debug` output.
///
/// Debug and Display print `[redacted]`, so a stray `{:?}` on a struct holding one cannot leak it;
/// code that really needs the value calls [`Secret::expose`], which is easy to find in review.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value that is already known (read from a file or a token response).
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that sends it over the wire or writes it to its file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Resolves a configured secret: `env:NAME` reads an environment variable, `file:PATH` reads a file
/// (such as a Docker or Kubernetes secret) without its trailing newline, anything else is the value.
///
/// Errors name the variable or the path, never the value.
pub fn resolve_secret(value: &str) -> Result<Secret, CredentialError> {
    if let Some(name) = value.strip_prefix("env:") {
        return env_secret(name);
    }
    if let Some(path) = value.strip_prefix("file:") {
        let path = PathBuf::from(path);
        let text = std::fs::read_to_string(&path).map_err(|source| CredentialError::Read {
            path: path.clone(),
            source,
        })?;
        // Editors and `echo` add a newline; the secret itself never ends in one.
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            return Err(CredentialError::EmptySecretFile { path });
        }
        return Ok(Secret::new(text));
    }
    Ok(Secret::new(value))
}

/// Reads a secret from the environment variable `name`; unset and empty are both errors.
pub(crate) fn env_secret(name: &str) -> Result<Secret, CredentialError> {
    env_var(name)
        .map(Secret::new)
        .ok_or_else(|| CredentialError::MissingEnv {
            name: name.to_string(),
        })
}

/// The value of an environment variable, treating an empty value as unset.
pub(crate) fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Serde for an optional [`Secret`], for responses the `oauth2` crate requires to serialize.
pub(crate) mod optional {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Secret;

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Secret>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        value.as_ref().map(Secret::expose).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(Secret::new))
    }
}
