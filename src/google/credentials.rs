//! What Google credentials an account has: the grant (refresh token or service account key), where
//! it came from, and what the file said beside it. Loading them is [`spec`](super::spec)'s job.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use jsonwebtoken::EncodingKey;

use super::{DEFAULT_TOKEN_URI, Secret};

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
    /// A Microsoft Entra app registration's client credentials (`[microsoft]`).
    EntraApp,
    /// A Microsoft user's refresh token in the file `smtp2gmail authorize --microsoft` wrote
    /// (`[microsoft] credentials`).
    EntraUser(PathBuf),
}

impl CredentialKind {
    /// True for Microsoft's credentials (app or user), whose errors and fixes are Microsoft's.
    pub fn is_microsoft(&self) -> bool {
        matches!(
            self,
            CredentialKind::EntraApp | CredentialKind::EntraUser(_)
        )
    }
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
    /// Microsoft's client credentials grant: one token for the app, whichever mailbox it sends
    /// through.
    EntraApp(crate::microsoft::EntraApp),
    /// Microsoft's refresh-token grant for one user (delegated Mail.Send): a public client, so
    /// no secret, and the scope says which resource the token is for.
    EntraUser(crate::microsoft::EntraUser),
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

    /// The credentials of a Microsoft Entra app, exchanged at `token_uri`.
    pub fn entra_app(app: crate::microsoft::EntraApp, token_uri: String) -> Self {
        Credentials {
            kind: CredentialKind::EntraApp,
            grant: Grant::EntraApp(app),
            token_uri,
            account: None,
            scopes: None,
            quota_project: None,
            cached_token: None,
        }
    }

    /// A Microsoft user's delegated credentials from the token file at `path`.
    pub(crate) fn entra_user(
        user: crate::microsoft::EntraUser,
        path: PathBuf,
        token_uri: String,
    ) -> Self {
        Credentials {
            kind: CredentialKind::EntraUser(path),
            grant: Grant::EntraUser(user),
            token_uri,
            account: None,
            scopes: None,
            quota_project: None,
            cached_token: None,
        }
    }

    /// The same Entra app (or user) asking for tokens for another resource: `app_scope` for an
    /// app, `user_scope` for a user; other credentials unchanged.
    pub fn with_entra_scope(&self, app_scope: &str, user_scope: &str) -> Credentials {
        let mut credentials = self.without_cached_token();
        match &mut credentials.grant {
            Grant::EntraApp(app) => app.scope = app_scope.to_string(),
            Grant::EntraUser(user) => user.scope = user_scope.to_string(),
            _ => {}
        }
        credentials
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
            | CredentialKind::ServiceAccount(path)
            | CredentialKind::EntraUser(path) => Some(path),
            CredentialKind::Inline | CredentialKind::Environment | CredentialKind::EntraApp => None,
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
            Grant::EntraApp(app) => Some(&app.client_id),
            Grant::EntraUser(user) => Some(&user.client_id),
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
            (Grant::EntraApp(app), Grant::EntraApp(other)) => app.is_same(other),
            (Grant::EntraUser(user), Grant::EntraUser(other)) => user == other,
            _ => false,
        };
        same_grant
            && self.kind == other.kind
            && self.token_uri == other.token_uri
            && self.quota_project == other.quota_project
    }

    /// The refresh token, for the grants that have one (Google's and a Microsoft user's).
    pub(crate) fn current_refresh_token(&self) -> Option<&Secret> {
        match &self.grant {
            Grant::RefreshToken { refresh_token, .. } => Some(refresh_token),
            Grant::EntraUser(user) => Some(&user.refresh_token),
            Grant::ServiceAccount(_) | Grant::EntraApp(_) => None,
        }
    }

    /// A copy that uses a rotated refresh token from now on.
    pub(crate) fn with_refresh_token(&self, new: Secret) -> Self {
        let mut credentials = self.clone();
        match &mut credentials.grant {
            Grant::RefreshToken { refresh_token, .. } => *refresh_token = new,
            Grant::EntraUser(user) => user.refresh_token = new,
            Grant::ServiceAccount(_) | Grant::EntraApp(_) => {}
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
            (CredentialKind::EntraApp, Grant::EntraApp(app)) => write!(f, "{app}"),
            (CredentialKind::EntraApp, _) => f.write_str("Entra app"),
            (CredentialKind::EntraUser(path), _) => write!(
                f,
                "Microsoft 365 user {} signed in with authorize --microsoft, token file {}",
                self.account.as_deref().unwrap_or("(address unknown)"),
                path.display()
            ),
        }
    }
}
