//! Why credentials could not be loaded: one error type for the credential files, the secrets
//! they refer to and the environment, in a module of its own so that every loader can use it
//! without depending on the others.

use std::path::PathBuf;

/// Why credentials could not be loaded. Messages name the file, variable and key, never a value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// An environment variable the configuration refers to is unset or empty.
    #[error("environment variable {name} is not set or is empty")]
    MissingEnv {
        /// The variable.
        name: String,
    },
    /// A credentials or secret file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A `file:` secret is empty.
    #[error("{path} is empty")]
    EmptySecretFile {
        /// The file.
        path: PathBuf,
    },
    /// The file is not JSON (the message gives only the position, never content).
    #[error("{path}: not valid JSON: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key is missing or has an unusable value.
    #[error("{path}: {key} {problem}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The JSON key.
        key: &'static str,
        /// What is wrong with it, e.g. "is missing".
        problem: &'static str,
    },
    /// An inline value is empty.
    #[error("inline credentials: {key} is empty")]
    EmptyInline {
        /// The configuration key.
        key: &'static str,
    },
    /// The token URI is not a URL.
    #[error("token URI {uri:?} is not a valid URL")]
    TokenUri {
        /// The configured URI (not a secret).
        uri: String,
    },
    /// A `client_secret.json` was given where a token was expected: a common first mistake.
    #[error(
        "{} is an OAuth client file (client_secret.json), not a token: run `smtp2gmail authorize --client-secret {}` to obtain a token file, and configure that file instead",
        path.display(), path.display()
    )]
    ClientSecretFile {
        /// The file.
        path: PathBuf,
    },
    /// A Google credentials type this bridge does not use (e.g. `external_account`).
    #[error(
        "{}: credentials of type {kind:?} are not supported; use a token file from `smtp2gmail authorize`, an authorized_user file or a service account key",
        path.display()
    )]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// Its `type` value.
        kind: String,
    },
    /// JSON, but none of the known shapes.
    #[error(
        "{} is not a Google credentials file: expected a token.json (refresh_token, client_id, client_secret), an authorized_user file or a service account key",
        path.display()
    )]
    Unrecognised {
        /// The file.
        path: PathBuf,
    },
}
