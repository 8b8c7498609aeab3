//! Obtaining a refresh token: the OAuth authorization code flow with a loopback redirect and PKCE,
//! as Google requires for installed apps since the out-of-band flow was blocked.
//!
//! [`Authorization::start`] binds the loopback listener first (so the URL carries the real port)
//! and builds the consent URL; [`Authorization::finish`] waits for the browser's redirect on that
//! listener and, at the same time, for the redirected address pasted by a person whose browser
//! runs elsewhere; then it exchanges the code. [`Authorized::write`] saves the result in the
//! Python quickstart's token.json format, which the relay (and google-auth) load as they are.

mod client_file;
mod error;
mod redirect;

use std::path::Path;
use std::time::{Duration, SystemTime};

use oauth2::basic::BasicErrorResponse;
use oauth2::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointSet, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, TokenResponse,
};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub use client_file::{ClientSecretFile, ClientType};
pub use error::AuthorizeError;
use redirect::Outcome;

use super::grant::{Http, HttpFailure};
use super::{DEFAULT_TIMEOUT, GMAIL_SEND_SCOPE, GoogleClient, Secret, files};

/// What `authorize` asks for: sending, plus `openid email` so the ID token names the account
/// (`gmail.send` alone cannot read the address).
pub const DEFAULT_SCOPES: [&str; 3] = [GMAIL_SEND_SCOPE, "openid", "email"];

/// How long a person has to complete the consent screen, unless told otherwise.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// How to run the flow.
#[derive(Debug, Clone)]
pub struct AuthorizeOptions {
    /// Scopes to request.
    pub scopes: Vec<String>,
    /// Loopback port for the redirect; 0 lets the system choose a free one.
    pub port: u16,
    /// How long to wait for the redirect or a pasted answer.
    pub timeout: Duration,
}

impl Default for AuthorizeOptions {
    fn default() -> Self {
        AuthorizeOptions {
            scopes: DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect(),
            port: 0,
            timeout: DEFAULT_WAIT,
        }
    }
}

/// Checks, before anyone spends time on the consent screen, that the token file can be written
/// where asked and would not replace the client secret file.
pub fn check_token_file(path: &Path, client: &ClientSecretFile) -> Result<(), AuthorizeError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(AuthorizeError::Usage(format!(
            "the directory of the token file {} does not exist",
            path.display()
        )));
    }
    if path.is_dir() {
        return Err(AuthorizeError::Usage(format!(
            "the token file {} is a directory",
            path.display()
        )));
    }
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
    if same(path, client.path()) {
        return Err(AuthorizeError::Usage(format!(
            "the token file {} is the client secret file; choose another --token-file",
            path.display()
        )));
    }
    Ok(())
}

/// A started authorization: the listener is bound and the consent URL is ready.
pub struct Authorization {
    client: ClientSecretFile,
    oauth: GoogleClient<EndpointSet, EndpointSet>,
    listener: TcpListener,
    url: url::Url,
    redirect_uri: String,
    path: String,
    state: CsrfToken,
    verifier: PkceCodeVerifier,
    scopes: Vec<String>,
    timeout: Duration,
}

impl Authorization {
    /// Binds the loopback listener, then builds the consent URL with the port actually bound,
    /// a fresh PKCE verifier and a random `state`.
    pub async fn start(
        client: ClientSecretFile,
        options: AuthorizeOptions,
    ) -> Result<Authorization, AuthorizeError> {
        if options.scopes.is_empty() {
            return Err(AuthorizeError::Usage("no scopes to ask for".into()));
        }
        let plan = client.redirect_plan(options.port)?;
        let listen = |source| AuthorizeError::Listen {
            port: plan.port(),
            source,
        };
        let listener = TcpListener::bind(("127.0.0.1", plan.port()))
            .await
            .map_err(listen)?;
        let bound = listener.local_addr().map_err(listen)?.port();
        let (redirect_uri, path) = plan.resolve(bound);
        let redirect = RedirectUrl::new(redirect_uri.clone()).map_err(|_| {
            AuthorizeError::Usage(format!("{redirect_uri} is not a valid redirect URI"))
        })?;
        let oauth = GoogleClient::new(ClientId::new(client.client_id.clone()))
            // Google wants the secret on the exchange even with PKCE (it is not secret for
            // installed apps); in the form body, as Google's own libraries send it.
            .set_client_secret(ClientSecret::new(client.client_secret.expose().to_string()))
            .set_auth_type(AuthType::RequestBody)
            .set_auth_uri(client.auth_uri.clone())
            .set_token_uri(client.token_uri.clone())
            .set_redirect_uri(redirect);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state) = oauth
            .authorize_url(CsrfToken::new_random)
            .add_scopes(options.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge)
            // A refresh token, and a fresh one even if this client was authorized before.
            .add_extra_param("access_type", "offline")
            .add_extra_param("prompt", "consent")
            .url();
        Ok(Authorization {
            client,
            oauth,
            listener,
            url,
            redirect_uri,
            path,
            state,
            verifier,
            scopes: options.scopes,
            timeout: options.timeout,
        })
    }

    /// The consent URL to open in a browser. It holds no secret: the client id, the PKCE
    /// challenge (not the verifier) and the state.
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// Where the browser is sent back to, e.g. `http://127.0.0.1:41234/`.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// The loopback port the listener is bound to (for `ssh -L PORT:127.0.0.1:PORT`).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Waits for the answer (redirect or pasted line), checks it, and exchanges the code.
    pub async fn finish(
        self,
        pasted: mpsc::Receiver<String>,
        http: &reqwest::Client,
    ) -> Result<Authorized, AuthorizeError> {
        let outcome = redirect::wait(
            self.listener,
            &self.path,
            self.state.secret(),
            pasted,
            self.timeout,
        )
        .await
        .map_err(|_| AuthorizeError::Timeout(self.timeout))?;
        let code = match outcome {
            Outcome::Code(code) => code,
            Outcome::Denied { error, description } => {
                return Err(AuthorizeError::Denied { error, description });
            }
            Outcome::StateMismatch => return Err(AuthorizeError::StateMismatch),
        };
        let token_uri = self.client.token_uri.to_string();
        let http = Http(http);
        let exchange = self
            .oauth
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(self.verifier)
            .request_async(&http);
        let response = tokio::time::timeout(DEFAULT_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                AuthorizeError::Exchange(format!(
                    "token endpoint {token_uri} did not answer within {}",
                    humantime::format_duration(DEFAULT_TIMEOUT)
                ))
            })?
            .map_err(|error| refused(error, &token_uri))?;
        let refresh_token = response
            .refresh_token()
            .ok_or(AuthorizeError::NoRefreshToken)?;
        let scopes = match response.scopes() {
            Some(granted) => granted.iter().map(|s| s.to_string()).collect(),
            None => self.scopes.clone(),
        };
        let wanted = |scope: &str| self.scopes.iter().any(|s| s == scope);
        if wanted(GMAIL_SEND_SCOPE) && !scopes.iter().any(|s| s == GMAIL_SEND_SCOPE) {
            return Err(AuthorizeError::ScopeNotGranted(GMAIL_SEND_SCOPE.into()));
        }
        let lifetime = response.expires_in().unwrap_or(Duration::from_secs(3600));
        Ok(Authorized {
            account: response.id_token().and_then(account_from_id_token),
            scopes,
            expiry: SystemTime::now() + lifetime,
            access_token: Secret::new(response.access_token().secret().as_str()),
            refresh_token: Secret::new(refresh_token.secret().as_str()),
            client_id: self.client.client_id,
            client_secret: self.client.client_secret,
            token_uri,
        })
    }
}

fn refused(
    error: RequestTokenError<HttpFailure, BasicErrorResponse>,
    token_uri: &str,
) -> AuthorizeError {
    match error {
        RequestTokenError::ServerResponse(e) => AuthorizeError::Refused {
            error: e.error().as_ref().to_string(),
            description: e.error_description().cloned().unwrap_or_default(),
        },
        RequestTokenError::Request(failure) => {
            AuthorizeError::Exchange(failure.describe(token_uri))
        }
        // The body of a response that failed to parse might hold a token: leave it out.
        RequestTokenError::Parse(..) => AuthorizeError::Exchange(format!(
            "token endpoint {token_uri} sent a response that is not an OAuth token response"
        )),
        RequestTokenError::Other(message) => {
            AuthorizeError::Exchange(format!("token endpoint {token_uri}: {message}"))
        }
    }
}

/// The `email` claim of an ID token.
///
/// The signature is not verified, on purpose: the token came straight from the token endpoint
/// over TLS in answer to our own request, which is what OpenID Connect Core 3.1.3.7 accepts in
/// place of a signature check. The address is only a label for the token file and messages.
fn account_from_id_token(id_token: &Secret) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Claims {
        email: Option<String>,
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Claims>(id_token.expose())
        .ok()?
        .email
        .filter(|email| !email.is_empty())
}

/// The result of a successful authorization. `Debug` shows no secret.
#[derive(Debug)]
pub struct Authorized {
    /// The account's address, from the ID token (`None` without the `openid email` scopes).
    pub account: Option<String>,
    /// The scopes Google granted.
    pub scopes: Vec<String>,
    /// When the access token expires.
    pub expiry: SystemTime,
    access_token: Secret,
    refresh_token: Secret,
    client_id: String,
    client_secret: Secret,
    token_uri: String,
}

impl Authorized {
    /// Writes the token file: the Gmail Python quickstart's token.json (google-auth
    /// `Credentials.to_json()`), so either tool reads the other's file. Atomic, mode 0600.
    pub fn write(&self, path: &Path) -> Result<(), AuthorizeError> {
        let value = json!({
            "token": self.access_token.expose(),
            "refresh_token": self.refresh_token.expose(),
            "token_uri": self.token_uri,
            "client_id": self.client_id,
            "client_secret": self.client_secret.expose(),
            "scopes": self.scopes,
            "universe_domain": "googleapis.com",
            // google-auth writes "" when it does not know the account.
            "account": self.account.as_deref().unwrap_or_default(),
            "expiry": humantime::format_rfc3339_seconds(self.expiry).to_string(),
        });
        files::write_json(path, &value).map_err(|source| AuthorizeError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}
