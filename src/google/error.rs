//! Why no access token could be had, split by who must act: a person (`Credentials`) or time
//! (`Temporary`). The relay turns the first into "hold mail and report loudly", the second into
//! "retry with backoff".

use super::GMAIL_SEND_SCOPE;
use super::credentials::{CredentialKind, Credentials, Grant};

/// Why [`TokenSource::access_token`](super::TokenSource::access_token) failed. Never contains a
/// secret: only Google's error code and description, and our own advice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The credentials were refused; retrying cannot help until a person acts on `fix`.
    #[error("credentials refused: {error}{}; to fix: {fix}", describe(description))]
    Credentials {
        /// The OAuth error code (`invalid_grant`, `invalid_client`, `unauthorized_client`, ...),
        /// or our own code for problems found before asking Google (`missing_subject`).
        error: String,
        /// Google's `error_description`, possibly empty.
        description: String,
        /// One sentence saying what to do.
        fix: String,
    },
    /// The token endpoint could not answer properly now (5xx, timeout, connection failure).
    #[error("no access token for now: {reason}")]
    Temporary {
        /// What happened, for logs and the SMTP reply.
        reason: String,
    },
    /// A service account may not act for this one user because Google knows no such user in the
    /// domain (400 `invalid_grant` "Invalid email or User ID"): that sender's problem, not the
    /// key's. The key works for everyone else, so nothing account-wide needs attention.
    #[error(
        "{subject} is not a user of the Google Workspace domain of service account {service_account} \
         (invalid_grant: {description})"
    )]
    UnknownUser {
        /// The user the token was asked for (the sender).
        subject: String,
        /// The service account's address.
        service_account: String,
        /// Google's `error_description`.
        description: String,
    },
}

fn describe(description: &str) -> String {
    if description.is_empty() {
        String::new()
    } else {
        format!(" ({description})")
    }
}

impl TokenError {
    /// True when waiting and retrying may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(self, TokenError::Temporary { .. })
    }

    /// True when the credentials themselves need a person, for every sender of the account (as
    /// opposed to a passing failure, or one user the key cannot act for).
    pub fn is_account_wide(&self) -> bool {
        matches!(self, TokenError::Credentials { .. })
    }

    /// What is wrong, without the fix (which readiness reports beside it).
    pub fn problem(&self) -> String {
        match self {
            TokenError::Credentials {
                error, description, ..
            } => format!("credentials refused: {error}{}", describe(description)),
            other => other.to_string(),
        }
    }

    /// What a person should do, for credential problems.
    pub fn fix(&self) -> Option<&str> {
        match self {
            TokenError::Credentials { fix, .. } => Some(fix),
            TokenError::Temporary { .. } | TokenError::UnknownUser { .. } => None,
        }
    }

    /// Classifies an OAuth error response. Google uses `error` codes for its own outages too, so
    /// those become temporary; every other code needs a person.
    pub(crate) fn from_oauth(
        code: &str,
        description: Option<&str>,
        credentials: &Credentials,
        subject: Option<&str>,
    ) -> TokenError {
        let description = description.unwrap_or_default().to_string();
        if let (Grant::ServiceAccount(key), Some(subject)) = (&credentials.grant, subject)
            && code == "invalid_grant"
            && is_unknown_user(&description)
        {
            return TokenError::UnknownUser {
                subject: subject.to_string(),
                service_account: key.client_email.clone(),
                description,
            };
        }
        if matches!(
            code,
            "server_error" | "temporarily_unavailable" | "internal_failure"
        ) {
            return TokenError::Temporary {
                reason: format!(
                    "token endpoint {} answered {code}{}",
                    credentials.token_uri,
                    describe(&description)
                ),
            };
        }
        TokenError::Credentials {
            error: code.to_string(),
            description,
            fix: fix(code, credentials, subject),
        }
    }

    /// A credentials problem found locally, before any request.
    pub(crate) fn local(code: &str, description: &str, fix: String) -> TokenError {
        TokenError::Credentials {
            error: code.to_string(),
            description: description.to_string(),
            fix,
        }
    }
}

/// Google gives an unknown impersonated user the same code as a deleted key or a skewed clock
/// (`invalid_grant`); only the description tells that one user apart: "Invalid email or User ID".
fn is_unknown_user(description: &str) -> bool {
    description
        .to_ascii_lowercase()
        .contains("invalid email or user id")
}

/// The advice for an OAuth error code, naming the file, client and user involved.
fn fix(code: &str, credentials: &Credentials, subject: Option<&str>) -> String {
    let source = credentials.to_string();
    let token_uri = &credentials.token_uri;
    let key = match &credentials.grant {
        Grant::ServiceAccount(key) => key,
        Grant::EntraApp(app) => return format!("check the credentials of {app}"),
        Grant::EntraUser(_) => return authorize_again(&credentials.kind),
        Grant::RefreshToken { .. } => {
            return match code {
                "invalid_grant" => format!(
                    "the refresh token has expired or was revoked; {}. Apps whose OAuth consent screen \
                     is in \"Testing\" publishing status get refresh tokens that expire after 7 days: \
                     set it to \"In production\" to keep them. Tokens also end after 6 months unused, \
                     a password change, or revocation by the user or an administrator",
                    authorize_again(&credentials.kind)
                ),
                "invalid_client" => format!(
                    "the client_id/client_secret ({source}) are wrong, or the OAuth client was \
                     deleted; download the client secret file again from the Google Cloud console \
                     (APIs & Services > Credentials), then {}",
                    authorize_again(&credentials.kind)
                ),
                "unauthorized_client" => format!(
                    "the refresh token belongs to a different OAuth client than the client_id \
                     ({source}); {} with the client secret file of the client you use",
                    authorize_again(&credentials.kind)
                ),
                "invalid_scope" => format!(
                    "the token was not granted the {GMAIL_SEND_SCOPE} scope; {}",
                    authorize_again(&credentials.kind)
                ),
                _ => format!("check the credentials ({source}) and the token endpoint {token_uri}"),
            };
        }
    };
    let email = &key.client_email;
    let client_id = key.client_id.as_deref().unwrap_or("(client_id of the key)");
    match code {
        "invalid_grant" => format!(
            "check that the key of service account {email} still exists and is enabled, that {} \
             is a user of the Workspace domain, and that this machine's clock is correct",
            subject.unwrap_or("the user to send as")
        ),
        "unauthorized_client" | "invalid_scope" => format!(
            "domain-wide delegation is not granted to service account {email}: in the Google Admin \
             console (admin.google.com > Security > Access and data control > API controls > \
             Manage Domain Wide Delegation) add client ID {client_id} with the OAuth scope \
             {GMAIL_SEND_SCOPE}; a new grant can take up to 24 hours to take effect"
        ),
        "invalid_client" => format!(
            "the service account {email} or its key was deleted or disabled; create a new key in \
             the Google Cloud console (IAM & Admin > Service accounts)"
        ),
        _ => format!("check the service account key ({source}) and the token endpoint {token_uri}"),
    }
}

/// "run `smtp2gmail authorize ...`" pointed at the file the credentials came from, for every
/// fix that needs a new refresh token (here, and `check` when a token's scopes cannot send).
pub fn authorize_again(kind: &CredentialKind) -> String {
    let command = |target: &str| {
        format!(
            "run `smtp2gmail authorize --client-secret CLIENT_SECRET.json --token-file {target}`"
        )
    };
    match kind {
        CredentialKind::TokenFile(path) | CredentialKind::AuthorizedUser(path) => {
            command(&path.display().to_string())
        }
        CredentialKind::Inline => format!(
            "{} and configure that file (or copy its refresh_token into the configuration)",
            command("token.json")
        ),
        CredentialKind::Environment => format!(
            "{} and put its refresh_token into GMAIL_API_REFRESH_TOKEN",
            command("token.json")
        ),
        CredentialKind::ServiceAccount(_) => command("token.json"),
        CredentialKind::EntraApp => "check the app's credential in [microsoft]".to_string(),
        CredentialKind::EntraUser(path) => crate::microsoft::authorize_user_again(path),
    }
}

/// The fix for Google's 403 "... requires a quota project, which is not set by default": user
/// credentials of an OAuth client from another project (gcloud's own) must name the project the
/// calls are billed to. Enabling the API, the usual fix for `accessNotConfigured`, does not help.
pub fn set_quota_project(credentials: &Credentials) -> String {
    let project = "the ID of the Google Cloud project where the Gmail API is enabled";
    let Some(file) = credentials.path() else {
        // Only a file can name a quota project.
        return format!(
            "use a gcloud authorized_user file with \"quota_project_id\" set to {project} \
             (`gcloud auth application-default login --client-id-file=CLIENT_SECRET.json \
             --scopes=https://www.googleapis.com/auth/gmail.send`, then \
             `gcloud auth application-default set-quota-project PROJECT_ID`)"
        );
    };
    let now = match credentials.quota_project() {
        Some(current) => format!("quota project {current} was not accepted; "),
        None => String::new(),
    };
    format!(
        "{now}set the quota project: add \"quota_project_id\": \"PROJECT_ID\" to {}, or run \
         `gcloud auth application-default set-quota-project PROJECT_ID`, with {project} (the file \
         is reloaded by itself)",
        file.display()
    )
}
