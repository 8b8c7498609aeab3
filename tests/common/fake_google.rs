//! An in-process fake of Google's endpoints on 127.0.0.1, so tests exercise the real HTTP code.
//!
//! It serves the OAuth token endpoint (`POST /token`, refresh-token and jwt-bearer grants), from
//! fake_oauth.rs the consent screen and the authorization-code grant, and from fake_gmail.rs the
//! Gmail upload endpoint. More endpoints go into [`router`] with their own part of [`State`] and
//! their own fault methods. The credential files it accepts are written by credential_files.rs.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Form, State as Shared};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::json;

pub use super::credential_files::*;

/// The OAuth client the fake accepts. Values are obviously fake on purpose.
pub const CLIENT_ID: &str = "fake-client-id.apps.googleusercontent.com";
/// See [`CLIENT_ID`].
pub const CLIENT_SECRET: &str = "fake-client-secret";
/// The refresh token the fake accepts until it rotates it.
pub const REFRESH_TOKEN: &str = "fake-refresh-token";
/// The service account the fake trusts (with [`test_key`]'s public half).
pub const SERVICE_ACCOUNT_EMAIL: &str = "fake-sender@fake-project.iam.gserviceaccount.com";
/// The `private_key_id` of that service account's key.
pub const SERVICE_ACCOUNT_KEY_ID: &str = "fake-key-id";
/// The scope a service account must ask for.
pub const GMAIL_SEND: &str = "https://www.googleapis.com/auth/gmail.send";

/// What the next token requests should suffer instead of a normal answer.
#[derive(Debug, Clone)]
pub enum Fault {
    /// This status with a Google-style `{"error", "error_description"}` body.
    OAuth {
        status: u16,
        error: &'static str,
        description: &'static str,
    },
    /// This status with a plain-text body (a proxy or load balancer speaking).
    Status(u16),
    /// Answer normally, but only after this long.
    Delay(Duration),
}

impl Fault {
    /// What Google says about a revoked or expired refresh token.
    pub fn invalid_grant() -> Fault {
        Fault::OAuth {
            status: 400,
            error: "invalid_grant",
            description: "Token has been expired or revoked.",
        }
    }
}

/// How `expires_in` is written in token responses (Google has sent both).
#[derive(Debug, Clone, Copy)]
pub enum ExpiresIn {
    Number(u64),
    Text(u64),
}

/// The token endpoint's configuration and records.
struct TokenEndpoint {
    accepted_refresh_tokens: Vec<String>,
    rotate: bool,
    expires_in: ExpiresIn,
    requests: usize,
    issued: usize,
    faults: VecDeque<Fault>,
    service_account_key: Option<String>,
    /// The `aud` a service account's JWT must carry: its key file's `token_uri`.
    jwt_audience: String,
    /// The users of the Workspace domain a service account may act for; `None` = anyone.
    domain_users: Option<Vec<String>>,
    /// Domain-wide delegation granted to the service account (for the gmail.send scope).
    delegation_granted: bool,
    subjects: Vec<String>,
    rejections: Vec<String>,
    /// Access tokens numbered up to this one are revoked.
    revoked_below: usize,
    /// The numbers of the access tokens issued to service accounts (the rest are user tokens).
    service_account_tokens: std::collections::HashSet<usize>,
    /// The `scope` of token responses.
    scope: String,
}

/// Everything the fake knows; one part per endpoint.
pub struct State {
    token: TokenEndpoint,
    /// The Gmail send endpoint (fake_gmail.rs).
    pub(super) gmail: super::fake_gmail::GmailEndpoint,
    /// The consent screen and code exchanges (fake_oauth.rs).
    pub(super) oauth: super::fake_oauth::ConsentEndpoint,
}

impl State {
    /// True when `token` is an access token this fake issued and has not revoked.
    pub(super) fn is_valid_access_token(&self, token: &str) -> bool {
        token
            .strip_prefix("fake-access-")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n > self.token.revoked_below && n <= self.token.issued)
    }

    /// True when `token` was issued for user credentials (refresh token or code), not to a
    /// service account.
    pub(super) fn is_user_access_token(&self, token: &str) -> bool {
        token
            .strip_prefix("fake-access-")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| !self.token.service_account_tokens.contains(&n))
    }

    /// Issues an access token, and accepts `refresh_token` from now on (the code grant).
    pub(super) fn grant(&mut self, refresh_token: Option<&str>) -> String {
        if let Some(refresh_token) = refresh_token {
            let accepted = &mut self.token.accepted_refresh_tokens;
            accepted.push(refresh_token.to_string());
        }
        self.token.issued += 1;
        format!("fake-access-{}", self.token.issued)
    }

    /// Every access token issued so far stops working (as after a password change).
    pub(super) fn revoke_access_tokens(&mut self) {
        self.token.revoked_below = self.token.issued;
    }
}

pub type SharedState = Arc<Mutex<State>>;

/// A running fake. Dropping it stops the server.
pub struct FakeGoogle {
    addr: SocketAddr,
    state: SharedState,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGoogle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The routes; later endpoints are added here.
fn router(state: SharedState) -> Router {
    Router::new()
        .route("/token", post(token))
        .route("/o/oauth2/auth", get(super::fake_oauth::consent))
        .route(
            "/upload/gmail/v1/users/{user}/messages/send",
            post(super::fake_gmail::send),
        )
        // Gmail takes uploads up to 35 MB; axum's default limit is 2 MB.
        .layer(axum::extract::DefaultBodyLimit::max(40 << 20))
        .with_state(state)
}

impl FakeGoogle {
    /// Starts the fake on an ephemeral loopback port, accepting [`REFRESH_TOKEN`].
    pub async fn start() -> FakeGoogle {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            token: TokenEndpoint {
                accepted_refresh_tokens: vec![REFRESH_TOKEN.to_string()],
                rotate: false,
                expires_in: ExpiresIn::Number(3599),
                requests: 0,
                issued: 0,
                faults: VecDeque::new(),
                service_account_key: None,
                jwt_audience: String::new(),
                domain_users: None,
                delegation_granted: true,
                subjects: Vec::new(),
                rejections: Vec::new(),
                revoked_below: 0,
                service_account_tokens: Default::default(),
                scope: GMAIL_SEND.to_string(),
            },
            gmail: Default::default(),
            oauth: Default::default(),
        }));
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeGoogle { addr, state, task }
    }

    /// `http://127.0.0.1:PORT`, for endpoints added later.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint's URI.
    pub fn token_uri(&self) -> String {
        format!("{}/token", self.base_url())
    }

    fn with<T>(&self, f: impl FnOnce(&mut TokenEndpoint) -> T) -> T {
        f(&mut self.state.lock().unwrap().token)
    }

    /// The whole state, for the other endpoints' methods (fake_gmail.rs).
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// How many requests reached the token endpoint.
    pub fn token_requests(&self) -> usize {
        self.with(|t| t.requests)
    }

    /// The next `count` token requests get `fault`.
    pub fn fail_token_requests(&self, count: usize, fault: Fault) {
        self.with(|t| t.faults.extend(std::iter::repeat_n(fault, count)));
    }

    /// How `expires_in` is written from now on.
    pub fn set_expires_in(&self, expires_in: ExpiresIn) {
        self.with(|t| t.expires_in = expires_in);
    }

    /// From now on every refresh returns a new refresh token and revokes the one it was given.
    pub fn rotate_refresh_tokens(&self) {
        self.with(|t| t.rotate = true);
    }

    /// The refresh tokens the fake accepts now.
    pub fn accepted_refresh_tokens(&self) -> Vec<String> {
        self.with(|t| t.accepted_refresh_tokens.clone())
    }

    /// From now on only `token` is accepted: the old refresh token was revoked and `authorize`
    /// obtained this one.
    pub fn accept_only_refresh_token(&self, token: &str) {
        self.with(|t| t.accepted_refresh_tokens = vec![token.to_string()]);
    }

    /// Token responses say this `scope` from now on (a token authorized with the wrong scopes).
    pub fn set_granted_scope(&self, scope: &str) {
        self.with(|t| t.scope = scope.to_string());
    }

    /// Accepts JWTs from the service account of `key_file` (a [`service_account_json`], signed
    /// with [`test_key`]) whose `aud` is the key file's `token_uri`, as Google checks it: the
    /// audience is Google's token endpoint named in the key, wherever the request was sent.
    pub fn trust_service_account(&self, key_file: &serde_json::Value) {
        let audience = key_file["token_uri"].as_str().unwrap().to_string();
        self.with(|t| {
            t.service_account_key = Some(test_key().public_pem.clone());
            t.jwt_audience = audience;
        });
    }

    /// Only these users exist in the Workspace domain: a JWT for anyone else gets Google's 400
    /// `invalid_grant` "Invalid email or User ID".
    pub fn set_domain_users(&self, users: &[&str]) {
        let users = users.iter().map(|u| u.to_string()).collect();
        self.with(|t| t.domain_users = Some(users));
    }

    /// Domain-wide delegation is withdrawn (or was never granted): every JWT gets Google's 401
    /// `unauthorized_client`.
    pub fn revoke_delegation(&self) {
        self.with(|t| t.delegation_granted = false);
    }

    /// The `sub` of every accepted JWT, in order.
    pub fn subjects(&self) -> Vec<String> {
        self.with(|t| t.subjects.clone())
    }

    /// Why the fake refused requests, for assertion messages.
    pub fn rejections(&self) -> Vec<String> {
        self.with(|t| t.rejections.clone())
    }
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

async fn token(
    Shared(state): Shared<SharedState>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let fault = {
        let mut state = state.lock().unwrap();
        state.token.requests += 1;
        state.token.faults.pop_front()
    };
    match fault {
        Some(Fault::OAuth {
            status,
            error,
            description,
        }) => return oauth_error(status, error, description),
        Some(Fault::Status(status)) => {
            return (StatusCode::from_u16(status).unwrap(), "fake outage").into_response();
        }
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    let mut state = state.lock().unwrap();
    if form.get("grant_type").map(String::as_str) == Some("authorization_code") {
        return super::fake_oauth::exchange(&mut state, &form);
    }
    let endpoint = &mut state.token;
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let verdict = match field("grant_type") {
        "refresh_token" => check_refresh(
            endpoint,
            field("client_id"),
            field("client_secret"),
            field("refresh_token"),
        ),
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => check_jwt(endpoint, field("assertion")),
        other => Err(Refusal {
            status: 400,
            error: "unsupported_grant_type",
            description: "Invalid grant_type",
            why: format!("grant_type {other:?}"),
        }),
    };
    match verdict {
        Ok(Granted::User { refresh_token }) => issue(endpoint, refresh_token, false),
        Ok(Granted::ServiceAccount) => issue(endpoint, None, true),
        Err(refusal) => {
            endpoint.rejections.push(refusal.why);
            oauth_error(refusal.status, refusal.error, refusal.description)
        }
    }
}

/// What a grant yields: for a user, maybe a rotated refresh token.
enum Granted {
    User { refresh_token: Option<String> },
    ServiceAccount,
}

/// A refusal as Google words it, and why the fake refused (for assertion messages).
struct Refusal {
    status: u16,
    error: &'static str,
    description: &'static str,
    why: String,
}

type Verdict = Result<Granted, Refusal>;

/// Accepts the configured client and refresh tokens; rotates when asked to.
fn check_refresh(
    endpoint: &mut TokenEndpoint,
    client_id: &str,
    secret: &str,
    refresh: &str,
) -> Verdict {
    if client_id != CLIENT_ID || secret != CLIENT_SECRET {
        return Err(Refusal {
            status: 401,
            error: "invalid_client",
            description: "Unauthorized",
            why: "wrong client id or secret".into(),
        });
    }
    if !endpoint
        .accepted_refresh_tokens
        .iter()
        .any(|t| t == refresh)
    {
        return Err(Refusal {
            status: 400,
            error: "invalid_grant",
            description: "Token has been expired or revoked.",
            why: "unknown refresh token".into(),
        });
    }
    if !endpoint.rotate {
        return Ok(Granted::User {
            refresh_token: None,
        });
    }
    let rotated = format!("{REFRESH_TOKEN}-{}", endpoint.issued + 1);
    endpoint.accepted_refresh_tokens = vec![rotated.clone()];
    Ok(Granted::User {
        refresh_token: Some(rotated),
    })
}

/// Verifies a service account assertion the way Google does: signature, audience (the key file's
/// `token_uri`), lifetime; then domain-wide delegation and whether the user exists in the domain.
fn check_jwt(endpoint: &mut TokenEndpoint, assertion: &str) -> Verdict {
    #[derive(serde::Deserialize)]
    struct Claims {
        iss: String,
        scope: String,
        iat: u64,
        exp: u64,
        sub: String,
    }
    let refuse = |why: String| {
        Err(Refusal {
            status: 400,
            error: "invalid_grant",
            description: "Invalid JWT Signature.",
            why,
        })
    };
    let Some(public_key) = &endpoint.service_account_key else {
        return refuse("no service account trusted".into());
    };
    let header = match jsonwebtoken::decode_header(assertion) {
        Ok(header) => header,
        Err(e) => return refuse(format!("header: {e}")),
    };
    if header.kid.as_deref() != Some(SERVICE_ACCOUNT_KEY_ID) {
        return refuse(format!("kid {:?}", header.kid));
    }
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[&endpoint.jwt_audience]);
    validation.set_issuer(&[SERVICE_ACCOUNT_EMAIL]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss", "sub"]);
    let key = DecodingKey::from_rsa_pem(public_key.as_bytes()).unwrap();
    let claims = match jsonwebtoken::decode::<Claims>(assertion, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => return refuse(format!("JWT: {e}")),
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if claims.exp > claims.iat + 3600 || claims.iat > now + 60 {
        return refuse("lifetime over an hour or issued in the future".into());
    }
    if claims.scope != GMAIL_SEND || claims.iss != SERVICE_ACCOUNT_EMAIL {
        return refuse(format!("scope {:?}", claims.scope));
    }
    if !endpoint.delegation_granted {
        return Err(Refusal {
            status: 401,
            error: "unauthorized_client",
            description: "Client is unauthorized to retrieve access tokens using this method, or \
                client not authorized for any of the scopes requested.",
            why: "no domain-wide delegation".into(),
        });
    }
    if let Some(users) = &endpoint.domain_users
        && !users.contains(&claims.sub)
    {
        return Err(Refusal {
            status: 400,
            error: "invalid_grant",
            description: "Invalid email or User ID",
            why: format!("{} is not a user of the domain", claims.sub),
        });
    }
    endpoint.subjects.push(claims.sub);
    Ok(Granted::ServiceAccount)
}

/// A token response. Google leaves `scope` out of a service account's.
fn issue(
    endpoint: &mut TokenEndpoint,
    refresh_token: Option<String>,
    service_account: bool,
) -> Response {
    endpoint.issued += 1;
    let expires_in = match endpoint.expires_in {
        ExpiresIn::Number(n) => json!(n),
        ExpiresIn::Text(n) => json!(n.to_string()),
    };
    let mut body = json!({
        "access_token": format!("fake-access-{}", endpoint.issued),
        "expires_in": expires_in,
        "token_type": "Bearer",
    });
    if service_account {
        endpoint.service_account_tokens.insert(endpoint.issued);
    } else {
        body["scope"] = json!(endpoint.scope);
    }
    if let Some(refresh_token) = refresh_token {
        body["refresh_token"] = json!(refresh_token);
    }
    Json(body).into_response()
}
