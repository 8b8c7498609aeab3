//! Google credentials and the access tokens the Gmail API needs.
//!
//! An account's credentials are loaded once ([`load`]) from whatever the operator already has:
//! a quickstart `token.json`, a gcloud `authorized_user` file, a service account key (for
//! Workspace domain-wide delegation), values in the configuration, or the `GMAIL_API_*`
//! environment variables of django-gmailapi-backend. Each account then gets one [`TokenSource`],
//! which hands out cached access tokens, refreshes them once shortly before they expire however
//! many deliveries ask, and remembers whether the credentials need a person's attention.
//!
//! Nothing here ever prints a secret: they live in [`Secret`], whose `Debug` is `[redacted]`, and
//! errors carry only Google's error code and description plus our advice.
//!
//! New refresh tokens come from [`authorize`]: the consent flow with a loopback redirect and PKCE
//! that writes a token file.
//!
//! Every Google endpoint is configurable (the token URI comes from the file or an override), so
//! tests run against a fake on 127.0.0.1.

pub mod authorize;
mod credential_error;
mod credentials;
mod error;
mod files;
mod grant;
mod secret;
mod source;
mod spec;

pub use credential_error::CredentialError;
pub use credentials::{CredentialKind, Credentials};
pub use error::{TokenError, authorize_again, set_quota_project};
pub(crate) use files::{Fields, key_error, read_json, write_json};
pub use grant::{GoogleClient, GoogleTokenResponse};
pub(crate) use grant::{Granted, form_urlencoded, granted, token_endpoint};
pub use secret::{Secret, resolve_secret};
pub use source::{AccessToken, CredentialState, DEFAULT_TIMEOUT, REFRESH_MARGIN, TokenSource};
pub use spec::{
    CredentialSpec, ENV_CLIENT_ID, ENV_CLIENT_SECRET, ENV_REFRESH_TOKEN, ENV_USER_ID, load,
};

/// Google's OAuth token endpoint, used when neither the file nor the configuration names one.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// The one scope sending needs; service accounts ask for exactly this.
pub const GMAIL_SEND_SCOPE: &str = "https://www.googleapis.com/auth/gmail.send";
