//! Where an account's credentials come from, as the configuration states it (a file, inline values,
//! the environment), and loading them once. Files are recognised by content rather than by name
//! (people rename `token.json`); reading them is [`files`](super::files)' job.

use std::path::PathBuf;

use super::credential_error::CredentialError;
use super::credentials::{CredentialKind, Credentials};
use super::files;
use super::secret::{Secret, env_secret, env_var};

/// The environment variables django-gmailapi-backend users already have set.
pub const ENV_CLIENT_ID: &str = "GMAIL_API_CLIENT_ID";
/// See [`ENV_CLIENT_ID`].
pub const ENV_CLIENT_SECRET: &str = "GMAIL_API_CLIENT_SECRET";
/// See [`ENV_CLIENT_ID`].
pub const ENV_REFRESH_TOKEN: &str = "GMAIL_API_REFRESH_TOKEN";
/// Optional: the sending address; django-gmailapi-backend's default `me` means "unknown here".
pub const ENV_USER_ID: &str = "GMAIL_API_USER_ID";

/// Where an account's credentials come from, as the configuration states it.
#[derive(Debug, Clone)]
pub enum CredentialSpec {
    /// A JSON file: a quickstart `token.json`, a gcloud `authorized_user` file or a service account key.
    File(PathBuf),
    /// Values written in the configuration (each already resolved through
    /// [`resolve_secret`](super::resolve_secret), so they may come from `env:` or `file:`).
    Inline {
        /// The OAuth client id.
        client_id: String,
        /// The OAuth client secret (Google requires it on every refresh, even for desktop apps).
        client_secret: Secret,
        /// The long-lived refresh token from an earlier authorization.
        refresh_token: Secret,
    },
    /// `GMAIL_API_CLIENT_ID`, `GMAIL_API_CLIENT_SECRET`, `GMAIL_API_REFRESH_TOKEN`.
    Environment,
}

/// Loads credentials. The token URI is `token_uri_override` when given (tests and proxies need it
/// to win), else the file's `token_uri`, else Google's.
pub fn load(
    spec: &CredentialSpec,
    token_uri_override: Option<&str>,
) -> Result<Credentials, CredentialError> {
    let mut credentials = match spec {
        CredentialSpec::File(path) => files::load(path)?,
        CredentialSpec::Inline {
            client_id,
            client_secret,
            refresh_token,
        } => {
            let nonempty = |key, value: &str| {
                if value.is_empty() {
                    Err(CredentialError::EmptyInline { key })
                } else {
                    Ok(())
                }
            };
            nonempty("client_id", client_id)?;
            nonempty("client_secret", client_secret.expose())?;
            nonempty("refresh_token", refresh_token.expose())?;
            Credentials::refresh_token(
                CredentialKind::Inline,
                client_id.clone(),
                client_secret.clone(),
                refresh_token.clone(),
            )
        }
        CredentialSpec::Environment => {
            let client_id = env_var(ENV_CLIENT_ID).ok_or_else(|| CredentialError::MissingEnv {
                name: ENV_CLIENT_ID.to_string(),
            })?;
            let mut credentials = Credentials::refresh_token(
                CredentialKind::Environment,
                client_id,
                env_secret(ENV_CLIENT_SECRET)?,
                env_secret(ENV_REFRESH_TOKEN)?,
            );
            credentials.account = env_var(ENV_USER_ID).filter(|user| user != "me");
            credentials
        }
    };
    if let Some(uri) = token_uri_override {
        credentials.token_uri = uri.to_string();
    }
    if oauth2::TokenUrl::new(credentials.token_uri.clone()).is_err() {
        return Err(CredentialError::TokenUri {
            uri: credentials.token_uri,
        });
    }
    Ok(credentials)
}
