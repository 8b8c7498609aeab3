//! Which Google credentials an account uses: loaded once from a file, the configuration or the
//! environment, and recognised by content rather than by file name (people rename `token.json`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use jsonwebtoken::EncodingKey;

use super::secret::{env_secret, env_var};
use super::{DEFAULT_TOKEN_URI, Secret, files};

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

/// What kind of credentials an account has and where they came from, so that `check`, logs and
/// error fixes can say exactly which file or setting to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    /// A refresh token in a quickstart `token.json` (google-auth `Credentials.to_json()`).
    TokenFile(PathBuf),
    /// A refresh token in a gcloud `authorized_user` file.
    AuthorizedUser(PathBuf),
    /// A service account key, used with domain-wide delegation.
    ServiceAccount(PathBuf),
    /// Values from the configuration file.
    Inline,
    /// The `GMAIL_API_*` environment variables.
    Environment,
}

/// An account's credentials, ready to obtain access tokens.
///
/// `Debug` is safe to print: every secret inside is a [`Secret`] or a redacting key type.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub(crate) kind: CredentialKind,
    pub(crate) grant: Grant,
    pub(crate) token_uri: String,
    pub(crate) account: Option<String>,
    pub(crate) scopes: Option<Vec<String>>,
    /// The Google Cloud project API calls are billed to (`quota_project_id` of a gcloud
    /// `authorized_user` file), sent as `x-goog-user-project`.
    pub(crate) quota_project: Option<String>,
    /// The access token a token.json carried (`token` + `expiry`), usable until it nears expiry,
    /// so a restart does not cost a refresh.
    pub(crate) cached_token: Option<(Secret, SystemTime)>,
}

/// How access tokens are obtained.
#[derive(Debug, Clone)]
pub(crate) enum Grant {
    /// The OAuth refresh-token grant.
    RefreshToken {
        client_id: String,
        client_secret: Secret,
        refresh_token: Secret,
    },
    /// A signed JWT per user to impersonate (RFC 7523 jwt-bearer grant).
    ServiceAccount(ServiceAccountKey),
}

/// The parts of a service account key the JWT grant needs.
#[derive(Debug, Clone)]
pub(crate) struct ServiceAccountKey {
    pub(crate) client_email: String,
    /// The JWT's `aud`: the key file's `token_uri` (Google's endpoint). A configured token URI
    /// changes where the request goes (a proxy, a test), not whom the assertion is for.
    pub(crate) audience: String,
    /// The numeric client id an administrator enters for domain-wide delegation.
    pub(crate) client_id: Option<String>,
    pub(crate) private_key_id: Option<String>,
    /// Parsed at load time so a broken key is reported at startup; its `Debug` is redacted.
    pub(crate) key: EncodingKey,
}

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

impl Credentials {
    /// Refresh-token credentials with Google's token URI and nothing else known.
    pub(crate) fn refresh_token(
        kind: CredentialKind,
        client_id: String,
        client_secret: Secret,
        refresh_token: Secret,
    ) -> Self {
        Credentials {
            kind,
            grant: Grant::RefreshToken {
                client_id,
                client_secret,
                refresh_token,
            },
            token_uri: DEFAULT_TOKEN_URI.to_string(),
            account: None,
            scopes: None,
            quota_project: None,
            cached_token: None,
        }
    }

    /// What kind of credentials these are and where they came from.
    pub fn kind(&self) -> &CredentialKind {
        &self.kind
    }

    /// The file they were loaded from, if any (the one `authorize` should rewrite).
    pub fn path(&self) -> Option<&Path> {
        match &self.kind {
            CredentialKind::TokenFile(path)
            | CredentialKind::AuthorizedUser(path)
            | CredentialKind::ServiceAccount(path) => Some(path),
            CredentialKind::Inline | CredentialKind::Environment => None,
        }
    }

    /// The token endpoint these credentials are exchanged at.
    pub fn token_uri(&self) -> &str {
        &self.token_uri
    }

    /// The Gmail address the token belongs to, when the source says so (token.json `account`,
    /// `GMAIL_API_USER_ID`). A service account's own address is not a mailbox, so it is `None`.
    pub fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    /// The scopes a token.json says were granted, for `check` to warn when gmail.send is missing.
    pub fn scopes(&self) -> Option<&[String]> {
        self.scopes.as_deref()
    }

    /// The project Gmail API calls are billed to, when the file names one (`quota_project_id`):
    /// sent as the `x-goog-user-project` header. User credentials minted for an OAuth client of
    /// another project (gcloud's own) are refused without it.
    pub fn quota_project(&self) -> Option<&str> {
        self.quota_project.as_deref()
    }

    /// True for service accounts, which need a user to impersonate on every token request.
    pub fn is_service_account(&self) -> bool {
        matches!(self.grant, Grant::ServiceAccount(_))
    }

    /// The OAuth client id (for a service account: the numeric id used for domain-wide delegation).
    pub fn client_id(&self) -> Option<&str> {
        match &self.grant {
            Grant::RefreshToken { client_id, .. } => Some(client_id),
            Grant::ServiceAccount(key) => key.client_id.as_deref(),
        }
    }

    /// A copy without the access token a token.json carried, so the first token request really
    /// goes to Google: `check` must prove the refresh token works, which a cached access token
    /// (valid for up to an hour after the refresh token died) cannot.
    pub fn without_cached_token(&self) -> Credentials {
        Credentials {
            cached_token: None,
            ..self.clone()
        }
    }

    /// True when `other` obtains tokens exactly as these do and calls the API the same way: same
    /// refresh token, client, token endpoint and quota project. The credential watcher uses it to ignore a rewrite that changes nothing (our own
    /// write-back of a rotated refresh token, or another tool saving a new access token), which
    /// would otherwise throw away a good cached token. Service-account keys never compare equal:
    /// their key material is not comparable, and replacing them costs only one token request.
    pub fn is_same_grant(&self, other: &Credentials) -> bool {
        let same_grant = match (&self.grant, &other.grant) {
            (
                Grant::RefreshToken {
                    client_id,
                    client_secret,
                    refresh_token,
                },
                Grant::RefreshToken {
                    client_id: other_id,
                    client_secret: other_secret,
                    refresh_token: other_token,
                },
            ) => {
                client_id == other_id
                    && client_secret == other_secret
                    && refresh_token == other_token
            }
            _ => false,
        };
        same_grant
            && self.kind == other.kind
            && self.token_uri == other.token_uri
            && self.quota_project == other.quota_project
    }

    /// A copy that uses a rotated refresh token from now on.
    pub(crate) fn with_refresh_token(&self, new: Secret) -> Self {
        let mut credentials = self.clone();
        if let Grant::RefreshToken { refresh_token, .. } = &mut credentials.grant {
            *refresh_token = new;
        }
        credentials
    }
}

impl fmt::Display for Credentials {
    /// A sentence fragment for `check` and logs, e.g. "refresh token from token.json file /etc/x.json".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.grant) {
            (CredentialKind::TokenFile(path), _) => {
                write!(f, "refresh token from token.json file {}", path.display())
            }
            (CredentialKind::AuthorizedUser(path), _) => {
                write!(
                    f,
                    "refresh token from authorized_user file {}",
                    path.display()
                )
            }
            (CredentialKind::ServiceAccount(path), Grant::ServiceAccount(key)) => write!(
                f,
                "service account {} from {}",
                key.client_email,
                path.display()
            ),
            (CredentialKind::ServiceAccount(path), _) => {
                write!(f, "service account from {}", path.display())
            }
            (CredentialKind::Inline, _) => f.write_str("refresh token from the configuration"),
            (CredentialKind::Environment, _) => f.write_str("environment variables GMAIL_API_*"),
        }
    }
}
