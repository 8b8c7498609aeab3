//! Why `authorize` failed, worded for the person at the terminal: what happened and what to do.

use std::path::PathBuf;
use std::time::Duration;

use crate::google::CredentialError;

/// Why authorization failed. [`AuthorizeError::is_usage`] separates wrong input (a person must
/// pass other files or options) from failures while running. Never contains a secret or a code.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    /// The client secret file cannot be read or is not JSON.
    #[error(transparent)]
    File(#[from] CredentialError),
    /// A Google file of another kind, or no Google file at all.
    #[error("{} is {what}, not an OAuth client secret file: {hint}", path.display())]
    NotClientSecret {
        /// The file.
        path: PathBuf,
        /// What it is.
        what: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// A key of the client secret file is missing or unusable.
    #[error("{}: {key} {problem}", path.display())]
    ClientKey {
        /// The file.
        path: PathBuf,
        /// The key inside `installed` or `web`.
        key: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A web client that cannot redirect to this machine.
    #[error(
        "{}: this \"web\" OAuth client has no loopback redirect URI (http://127.0.0.1:PORT/ or \
         http://localhost:PORT/) among its redirect_uris ({uris}); create an OAuth client of type \
         \"Desktop app\", which accepts any loopback port, or register such a URI",
        path.display()
    )]
    NoLoopbackRedirect {
        /// The file.
        path: PathBuf,
        /// Its redirect URIs, comma-separated.
        uris: String,
    },
    /// `--port` names a port that none of the web client's loopback URIs uses.
    #[error(
        "{}: no loopback redirect URI of this \"web\" OAuth client uses port {port} ({uris}); \
         leave out --port or register http://127.0.0.1:{port}/",
        path.display()
    )]
    PortNotRegistered {
        /// The file.
        path: PathBuf,
        /// The port asked for.
        port: u16,
        /// Its redirect URIs, comma-separated.
        uris: String,
    },
    /// The options cannot work (no scopes, a token file path that cannot be written).
    #[error("{0}")]
    Usage(String),
    /// The loopback listener cannot be opened.
    #[error("cannot listen on 127.0.0.1:{port} for the redirect: {source}")]
    Listen {
        /// The port asked for.
        port: u16,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Access was refused on the consent screen.
    #[error(
        "access was not granted: Google answered error={error}{}; run authorize again and allow \
         access on the consent screen",
        detail(description)
    )]
    Denied {
        /// Google's error code, e.g. `access_denied`.
        error: String,
        /// Google's description, possibly empty.
        description: String,
    },
    /// The redirect's `state` is not the one in our URL.
    #[error(
        "the answer does not belong to this authorization (its state differs: an address from an \
         earlier run, or a forged request); run authorize again and use the address it prints"
    )]
    StateMismatch,
    /// Nobody completed the consent screen in time.
    #[error(
        "no answer within {}: neither did the browser come back to the loopback address nor was \
         the redirected address pasted; run authorize again (--timeout to wait longer)",
        humantime::format_duration(*.0)
    )]
    Timeout(Duration),
    /// The token endpoint refused the code.
    #[error(
        "Google refused the authorization code: {error}{}; codes expire within minutes and work \
         once, so run authorize again (invalid_client: download the client secret file again)",
        detail(description)
    )]
    Refused {
        /// The OAuth error code.
        error: String,
        /// Google's description, possibly empty.
        description: String,
    },
    /// The token endpoint could not be asked or gave no usable answer.
    #[error("cannot exchange the authorization code: {0}")]
    Exchange(String),
    /// Google granted access but sent no refresh token, so the relay could not renew it.
    #[error(
        "Google sent no refresh token, so access could not be renewed. It sends one only when \
         the consent screen was shown (smtp2gmail asks with prompt=consent); remove the app's \
         access at https://myaccount.google.com/permissions and run authorize again"
    )]
    NoRefreshToken,
    /// A scope the relay needs was left unticked on the consent screen.
    #[error(
        "the {0} permission was not granted (its box on the consent screen was left unticked); \
         run authorize again and allow it: sending needs it"
    )]
    ScopeNotGranted(String),
    /// The token file cannot be written.
    #[error("cannot write the token file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn detail(description: &str) -> String {
    if description.is_empty() {
        String::new()
    } else {
        format!(" ({description})")
    }
}

impl AuthorizeError {
    /// True when the files or options given are wrong (exit status 2), false for failures while
    /// running (exit status 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            AuthorizeError::File(_)
                | AuthorizeError::NotClientSecret { .. }
                | AuthorizeError::ClientKey { .. }
                | AuthorizeError::NoLoopbackRedirect { .. }
                | AuthorizeError::PortNotRegistered { .. }
                | AuthorizeError::Usage(_)
        )
    }
}
