//! The OAuth 2.0 device authorization grant (RFC 8628) against the Microsoft identity platform:
//! how `smtp2gmail authorize --microsoft` signs a user in on a machine without a browser (over
//! SSH). The user opens the verification URI on any device and enters the code; meanwhile this
//! side polls the token endpoint every `interval` the server asked for, 5 s longer after each
//! `slow_down`, until the user approves, declines, or the code expires (15 minutes).

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::time::Instant;

use super::delegated::{EntraUser, USER_GRAPH_SCOPE, token_file_json};
use crate::google::{Secret, form_urlencoded, write_json};

/// RFC 8628's default poll interval, when the server names none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// How much longer to wait after each `slow_down` (RFC 8628 3.5).
const SLOW_DOWN: Duration = Duration::from_secs(5);
/// Bound on each request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Whom to sign in, where.
#[derive(Debug, Clone)]
pub struct DeviceLogin {
    /// The identity platform's base URL.
    pub login_base: String,
    /// The tenant id or domain.
    pub tenant: String,
    /// The app registration (a public client).
    pub client_id: String,
    /// Scopes asked for; the first resource's token is the one issued.
    pub scopes: Vec<String>,
}

/// Why signing in failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceCodeError {
    /// The endpoint could not be reached or answered something unreadable.
    #[error("{0}")]
    Unreachable(String),
    /// The identity platform refused the request.
    #[error("Microsoft refused: {error} ({description}); to fix: {fix}")]
    Refused {
        /// The OAuth error.
        error: String,
        /// The AADSTS description's first line.
        description: String,
        /// What to do.
        fix: String,
    },
    /// The user declined on the sign-in page.
    #[error("the sign-in was declined ({0}); run the command again and accept the permissions")]
    Declined(String),
    /// Nobody entered the code in time.
    #[error("the code expired before the sign-in was completed; run the command again")]
    Expired,
    /// Approved, but without `offline_access` there is no refresh token to keep.
    #[error("Microsoft issued no refresh token: the scopes must include offline_access")]
    NoRefreshToken,
    /// The token file could not be written.
    #[error("cannot write the token file {path}: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The device authorization response.
#[derive(Deserialize)]
struct CodeResponse {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    interval: Option<u64>,
    #[serde(default)]
    message: Option<String>,
}

/// The identity platform's error body.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// The token response on approval.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
}

/// A code waiting for the user.
pub struct PendingLogin {
    login: DeviceLogin,
    device_code: Secret,
    /// Where the user goes, e.g. `https://microsoft.com/devicelogin`.
    pub verification_uri: String,
    /// What the user types there.
    pub user_code: String,
    /// Microsoft's own sentence for the user, when it sent one.
    pub message: Option<String>,
    interval: Duration,
    expires_at: Instant,
}

/// A signed-in user, ready to be written to a token file.
#[derive(Debug)]
pub struct SignedIn {
    /// The user's address from the ID token (`preferred_username`, else `email`).
    pub account: Option<String>,
    /// The scopes granted.
    pub scopes: Vec<String>,
    user: EntraUser,
    token_uri: String,
    access_token: Secret,
    expiry: SystemTime,
}

impl DeviceLogin {
    /// Asks for a device code.
    pub async fn start(&self, http: &reqwest::Client) -> Result<PendingLogin, DeviceCodeError> {
        let scope = self.scopes.join(" ");
        let form = [
            ("client_id", self.client_id.as_str()),
            ("scope", scope.as_str()),
        ];
        let url = super::endpoint(&self.login_base, &self.tenant, "devicecode");
        let (ok, body) = post(http, &url, &form).await?;
        if !ok {
            return Err(self.refused(&body));
        }
        let code: CodeResponse = serde_json::from_slice(&body).map_err(|_| {
            DeviceCodeError::Unreachable(format!("{url} sent an unreadable device code"))
        })?;
        Ok(PendingLogin {
            login: self.clone(),
            device_code: Secret::new(code.device_code),
            verification_uri: code.verification_uri,
            user_code: code.user_code,
            message: code.message,
            interval: code.interval.map_or(DEFAULT_INTERVAL, Duration::from_secs),
            expires_at: Instant::now() + Duration::from_secs(code.expires_in.unwrap_or(900)),
        })
    }

    fn refused(&self, body: &[u8]) -> DeviceCodeError {
        let body: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
        let description = body.error_description.lines().next().unwrap_or_default();
        let id = &self.client_id;
        let fix = if description.contains("AADSTS7000218") || description.contains("AADSTS700025") {
            format!(
                "Entra admin center > App registrations > the app {id} > Authentication > \"Allow \
                 public client flows\" = Yes"
            )
        } else {
            format!(
                "check tenant {} and client_id {id}, and that the app has the delegated \
                 permission Mail.Send",
                self.tenant
            )
        };
        DeviceCodeError::Refused {
            error: body.error,
            description: description.to_string(),
            fix,
        }
    }
}

impl PendingLogin {
    /// Polls until the user approves, declines, or the code expires.
    pub async fn wait(self, http: &reqwest::Client) -> Result<SignedIn, DeviceCodeError> {
        let login = &self.login;
        let url = super::endpoint(&login.login_base, &login.tenant, "token");
        let mut interval = self.interval;
        loop {
            if Instant::now() + interval > self.expires_at {
                return Err(DeviceCodeError::Expired);
            }
            tokio::time::sleep(interval).await;
            let form = [
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", login.client_id.as_str()),
                ("device_code", self.device_code.expose()),
            ];
            let (ok, body) = match post(http, &url, &form).await {
                Ok(answer) => answer,
                // A network hiccup while the user signs in: keep polling until the code expires.
                Err(err) => {
                    eprintln!("({err}; still waiting)");
                    continue;
                }
            };
            if ok {
                return self.signed_in(&url, &body);
            }
            let error: ErrorBody = serde_json::from_slice(&body).unwrap_or_default();
            match error.error.as_str() {
                "authorization_pending" => {}
                "slow_down" => interval += SLOW_DOWN,
                "expired_token" | "code_expired" => return Err(DeviceCodeError::Expired),
                "access_denied" | "authorization_declined" => {
                    return Err(DeviceCodeError::Declined(error.error));
                }
                _ => return Err(login.refused(&body)),
            }
        }
    }

    fn signed_in(&self, token_uri: &str, body: &[u8]) -> Result<SignedIn, DeviceCodeError> {
        let token: TokenResponse = serde_json::from_slice(body).map_err(|_| {
            DeviceCodeError::Unreachable(format!("{token_uri} sent an unreadable token response"))
        })?;
        let refresh_token = token.refresh_token.ok_or(DeviceCodeError::NoRefreshToken)?;
        let login = &self.login;
        let scopes = match token.scope {
            Some(scope) => scope.split_whitespace().map(str::to_string).collect(),
            None => login.scopes.clone(),
        };
        Ok(SignedIn {
            account: token.id_token.as_deref().and_then(address_in_id_token),
            scopes,
            user: EntraUser {
                tenant: login.tenant.clone(),
                client_id: login.client_id.clone(),
                refresh_token: Secret::new(refresh_token),
                scope: USER_GRAPH_SCOPE.to_string(),
            },
            token_uri: token_uri.to_string(),
            access_token: Secret::new(token.access_token),
            expiry: SystemTime::now() + Duration::from_secs(token.expires_in.unwrap_or(3600)),
        })
    }
}

impl SignedIn {
    /// Writes the token file: atomically, mode 0600.
    pub fn write(&self, path: &Path) -> Result<(), DeviceCodeError> {
        let value = token_file_json(
            &self.user,
            &self.token_uri,
            &self.access_token,
            self.expiry,
            &self.scopes,
            self.account.as_deref(),
        );
        write_json(path, &value).map_err(|source| DeviceCodeError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The user's address in an ID token: `preferred_username` (the UPN, which in Exchange Online is
/// normally the primary address), else `email`. Not verified: it came straight from the token
/// endpoint over TLS in answer to our request (OpenID Connect Core 3.1.3.7), and it is only a
/// label for the file, the budget and the SMTP path's `user=`; Graph sends through `/me`.
fn address_in_id_token(id_token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Claims {
        preferred_username: Option<String>,
        email: Option<String>,
    }
    let claims = jsonwebtoken::dangerous::insecure_decode_claims::<Claims>(id_token).ok()?;
    [claims.preferred_username, claims.email]
        .into_iter()
        .flatten()
        .find(|address| address.contains('@'))
}

/// POSTs a form; `(2xx, body)`, or why there is no answer (5xx counts as none).
async fn post(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> Result<(bool, Vec<u8>), DeviceCodeError> {
    let unreachable = |err: &dyn std::fmt::Display| {
        DeviceCodeError::Unreachable(format!("cannot reach {url}: {err}"))
    };
    let response = http
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .timeout(REQUEST_TIMEOUT)
        .body(form_urlencoded(form.iter().copied()))
        .send()
        .await
        .map_err(|err| unreachable(&err))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|err| unreachable(&err))?;
    if status.is_server_error() {
        return Err(unreachable(&format!("HTTP {status}")));
    }
    Ok((status.is_success(), body.to_vec()))
}
