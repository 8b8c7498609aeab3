//! The two token requests: the OAuth refresh-token grant (through the `oauth2` crate) and the
//! service-account JWT grant, with one classification of what the token endpoint answered.

use std::error::Error as _;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AsyncHttpClient, AuthType, ClientId, ClientSecret, EndpointNotSet, HttpRequest, HttpResponse,
    RequestTokenError, Scope, StandardRevocableToken, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};

use super::credentials::{Credentials, Grant, ServiceAccountKey};
use super::{GMAIL_SEND_SCOPE, Secret, TokenError};

/// What a successful token request yields.
pub(crate) struct Granted {
    pub(crate) access_token: Secret,
    pub(crate) expires_in: Duration,
    /// Set when Google rotated the refresh token.
    pub(crate) refresh_token: Option<Secret>,
    /// The scopes Google says the token carries, when it says so (`check` reports them).
    pub(crate) scopes: Option<Vec<String>>,
}

/// Google's token response. The `oauth2` crate's standard response insists on a numeric
/// `expires_in`, but Google has been seen sending `"3599"`, which would fail every refresh.
#[derive(Debug, Serialize, Deserialize)]
pub struct GoogleTokenResponse {
    access_token: oauth2::AccessToken,
    #[serde(
        default = "bearer",
        deserialize_with = "oauth2::helpers::deserialize_untagged_enum_case_insensitive"
    )]
    token_type: BasicTokenType,
    #[serde(
        default,
        deserialize_with = "number_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    expires_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<oauth2::RefreshToken>,
    #[serde(
        rename = "scope",
        default,
        deserialize_with = "oauth2::helpers::deserialize_space_delimited_vec",
        serialize_with = "oauth2::helpers::serialize_space_delimited_vec",
        skip_serializing_if = "Option::is_none"
    )]
    scopes: Option<Vec<Scope>>,
    /// The OpenID Connect ID token, present when `openid` was among the scopes: `authorize`
    /// reads the account's address from it.
    #[serde(
        default,
        with = "super::secret::optional",
        skip_serializing_if = "Option::is_none"
    )]
    id_token: Option<Secret>,
}

impl GoogleTokenResponse {
    /// The ID token (a JWT), when `openid` was requested.
    pub fn id_token(&self) -> Option<&Secret> {
        self.id_token.as_ref()
    }
}

fn bearer() -> BasicTokenType {
    BasicTokenType::Bearer
}

fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lifetime {
        Number(u64),
        Text(String),
    }
    match Option::<Lifetime>::deserialize(d)? {
        None => Ok(None),
        Some(Lifetime::Number(n)) => Ok(Some(n)),
        Some(Lifetime::Text(s)) => s.trim().parse().map(Some).map_err(|_| {
            serde::de::Error::custom("expires_in is neither a number nor a numeric string")
        }),
    }
}

impl TokenResponse for GoogleTokenResponse {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &oauth2::AccessToken {
        &self.access_token
    }
    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }
    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.map(Duration::from_secs)
    }
    fn refresh_token(&self) -> Option<&oauth2::RefreshToken> {
        self.refresh_token.as_ref()
    }
    fn scopes(&self) -> Option<&Vec<Scope>> {
        self.scopes.as_ref()
    }
}

impl From<GoogleTokenResponse> for Granted {
    fn from(response: GoogleTokenResponse) -> Self {
        Granted {
            access_token: Secret::new(response.access_token.secret().as_str()),
            // Google always sends it; an hour is what it would have said.
            expires_in: response.expires_in().unwrap_or(Duration::from_secs(3600)),
            refresh_token: response
                .refresh_token
                .map(|t| Secret::new(t.secret().as_str())),
            scopes: response
                .scopes
                .map(|scopes| scopes.iter().map(|s| s.to_string()).collect()),
        }
    }
}

/// An `oauth2` client that understands Google's token responses; `authorize` can use it too.
pub type GoogleClient<HasAuthUrl = EndpointNotSet, HasTokenUrl = EndpointNotSet> = oauth2::Client<
    BasicErrorResponse,
    GoogleTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    HasAuthUrl,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    HasTokenUrl,
>;

/// Asks the token endpoint for an access token, giving up after `timeout`.
pub(crate) async fn request(
    http: &reqwest::Client,
    credentials: &Credentials,
    subject: Option<&str>,
    timeout: Duration,
) -> Result<Granted, TokenError> {
    let exchange = async {
        match &credentials.grant {
            Grant::RefreshToken {
                client_id,
                client_secret,
                refresh_token,
            } => refresh(http, credentials, client_id, client_secret, refresh_token).await,
            Grant::ServiceAccount(key) => jwt_bearer(http, credentials, key, subject).await,
            Grant::EntraApp(app) => {
                crate::microsoft::request(http, credentials, app)
                    .await
                    .map(|token| Granted {
                        access_token: token.access_token,
                        expires_in: token.expires_in,
                        refresh_token: None,
                        scopes: None,
                    })
            }
            Grant::EntraUser(user) => crate::microsoft::refresh_user(http, credentials, user).await,
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(TokenError::Temporary {
                reason: format!(
                    "token endpoint {} did not answer within {}",
                    credentials.token_uri,
                    humantime::format_duration(timeout)
                ),
            })
        })
}

async fn refresh(
    http: &reqwest::Client,
    credentials: &Credentials,
    client_id: &str,
    client_secret: &Secret,
    refresh_token: &Secret,
) -> Result<Granted, TokenError> {
    let token_uri = TokenUrl::new(credentials.token_uri.clone()).map_err(|_| {
        TokenError::local(
            "invalid_token_uri",
            "",
            format!("set a valid token URI instead of {}", credentials.token_uri),
        )
    })?;
    let client = GoogleClient::new(ClientId::new(client_id.to_string()))
        .set_client_secret(ClientSecret::new(client_secret.expose().to_string()))
        // The form body, as Google's own libraries do; Basic auth would work as well.
        .set_auth_type(AuthType::RequestBody)
        .set_token_uri(token_uri);
    let refresh_token = oauth2::RefreshToken::new(refresh_token.expose().to_string());
    let response = client
        .exchange_refresh_token(&refresh_token)
        .request_async(&Http(http))
        .await;
    response.map(Granted::from).map_err(|error| match error {
        RequestTokenError::ServerResponse(e) => TokenError::from_oauth(
            e.error().as_ref(),
            e.error_description().map(String::as_str),
            credentials,
            None,
        ),
        RequestTokenError::Request(failure) => failure.into_token_error(credentials),
        // Neither carries secrets, but a parse error's body might: leave the body out.
        RequestTokenError::Parse(..) => garbled(credentials),
        RequestTokenError::Other(message) => TokenError::Temporary {
            reason: format!("token endpoint {}: {message}", credentials.token_uri),
        },
    })
}

/// The claims of a service account's token request (RFC 7523 with Google's `scope`).
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    sub: &'a str,
}

async fn jwt_bearer(
    http: &reqwest::Client,
    credentials: &Credentials,
    key: &ServiceAccountKey,
    subject: Option<&str>,
) -> Result<Granted, TokenError> {
    let subject = subject.ok_or_else(|| {
        TokenError::local(
            "missing_subject",
            "a service account needs the address of the user to send as",
            format!(
                "configure the Workspace address that service account {} sends as",
                key.client_email
            ),
        )
    })?;
    let assertion = sign(key, subject)?;
    let body = form_urlencoded([
        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
        ("assertion", assertion.as_str()),
    ]);
    let response = token_endpoint(http, credentials, body).await?;
    let body = response.body();
    if response.status().is_success() {
        let granted: GoogleTokenResponse =
            serde_json::from_slice(body).map_err(|_| garbled(credentials))?;
        return Ok(granted.into());
    }
    let error: BasicErrorResponse =
        serde_json::from_slice(body).map_err(|_| garbled(credentials))?;
    Err(TokenError::from_oauth(
        error.error().as_ref(),
        error.error_description().map(String::as_str),
        credentials,
        Some(subject),
    ))
}

/// POSTs a form to the credentials' token endpoint: the answer, or why there is none.
pub(crate) async fn token_endpoint(
    http: &reqwest::Client,
    credentials: &Credentials,
    body: String,
) -> Result<HttpResponse, TokenError> {
    let request = oauth2::http::Request::post(&credentials.token_uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(body.into_bytes())
        .map_err(|_| {
            TokenError::local(
                "invalid_token_uri",
                "",
                format!("set a valid token URI instead of {}", credentials.token_uri),
            )
        })?;
    execute(http, request)
        .await
        .map_err(|failure| failure.into_token_error(credentials))
}

/// The access token and lifetime of a token response.
pub(crate) fn granted(response: GoogleTokenResponse) -> (Secret, Option<Duration>) {
    let lifetime = response.expires_in();
    (
        Secret::new(response.access_token.secret().as_str()),
        lifetime,
    )
}

/// Signs the one-hour assertion for Google's token endpoint as the key file names it, wherever
/// the request is actually posted.
fn sign(key: &ServiceAccountKey, subject: &str) -> Result<String, TokenError> {
    let iat = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        iss: &key.client_email,
        scope: GMAIL_SEND_SCOPE,
        aud: &key.audience,
        iat,
        exp: iat + 3600,
        sub: subject,
    };
    let mut header = Header::new(Algorithm::RS256);
    header.kid = key.private_key_id.clone();
    let signing_key: &EncodingKey = &key.key;
    jsonwebtoken::encode(&header, &claims, signing_key).map_err(|_| {
        TokenError::local(
            "invalid_key",
            "the private key cannot sign",
            format!(
                "create a new key for {} and use that file",
                key.client_email
            ),
        )
    })
}

pub(crate) fn form_urlencoded<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    oauth2::url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn garbled(credentials: &Credentials) -> TokenError {
    TokenError::Temporary {
        reason: format!(
            "token endpoint {} sent a response that is not an OAuth token response",
            credentials.token_uri
        ),
    }
}

/// Why an HTTP exchange with the token endpoint failed before an OAuth answer could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpFailure {
    /// Connection, TLS or protocol failure.
    #[error("{0}")]
    Transport(#[from] reqwest::Error),
    /// 408, 429 or 5xx: Google's side, try again later.
    #[error("HTTP {0}")]
    Retryable(u16),
    /// Another 4xx without an OAuth error body: most likely a wrong token URI.
    #[error("HTTP {0} without an OAuth error")]
    Unexpected(u16),
}

impl HttpFailure {
    pub(crate) fn into_token_error(self, credentials: &Credentials) -> TokenError {
        let uri = &credentials.token_uri;
        match self {
            HttpFailure::Transport(_) | HttpFailure::Retryable(_) => TokenError::Temporary {
                reason: self.describe(uri),
            },
            HttpFailure::Unexpected(status) => TokenError::local(
                &format!("http_{status}"),
                "the token endpoint answered without an OAuth error",
                format!(
                    "check the token URI {uri} (the token_uri setting or the file's token_uri)"
                ),
            ),
        }
    }

    /// What went wrong talking to the token endpoint at `uri`, as one line.
    pub(crate) fn describe(&self, uri: &str) -> String {
        match self {
            HttpFailure::Transport(error) => {
                // reqwest's own message is generic; the cause ("connection refused") is in the chain.
                let mut reason = format!("cannot reach token endpoint {uri}: {error}");
                let mut source = error.source();
                while let Some(cause) = source {
                    reason.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                reason
            }
            HttpFailure::Retryable(status) => {
                format!("token endpoint {uri} answered HTTP {status}")
            }
            HttpFailure::Unexpected(status) => {
                format!("token endpoint {uri} answered HTTP {status} without an OAuth error")
            }
        }
    }
}

/// The shared client as the `oauth2` crate wants it. A named type with a boxed `Send` future,
/// because a closure here makes the whole refresh future fail the `Send` check (a higher-ranked
/// lifetime the compiler cannot see through).
pub(crate) struct Http<'a>(pub(crate) &'a reqwest::Client);

impl<'c> AsyncHttpClient<'c> for Http<'_> {
    type Error = HttpFailure;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpFailure>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(execute(self.0, request))
    }
}

/// Sends one request with the shared client. Statuses the `oauth2` crate would lump together as
/// "parse error" are sorted here, while the status code is still known.
pub(crate) async fn execute(
    http: &reqwest::Client,
    request: HttpRequest,
) -> Result<HttpResponse, HttpFailure> {
    let response = http.execute(reqwest::Request::try_from(request)?).await?;
    let status = response.status();
    let mut builder = oauth2::http::Response::builder().status(status);
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    let body = response.bytes().await?.to_vec();
    let code = status.as_u16();
    if code == 408 || code == 429 || status.is_server_error() {
        return Err(HttpFailure::Retryable(code));
    }
    if status.is_client_error() && serde_json::from_slice::<BasicErrorResponse>(&body).is_err() {
        return Err(HttpFailure::Unexpected(code));
    }
    builder
        .body(body)
        .map_err(|_| HttpFailure::Unexpected(code))
}
