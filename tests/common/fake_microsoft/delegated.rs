//! The fake's signed-in users: the device authorization grant (`/devicecode`, then polls of
//! `/token` answered `authorization_pending`, `slow_down`, `authorization_declined` or
//! `expired_token` as the test scripts them, until the test approves the code), refresh tokens
//! replaced on every use as Microsoft does, AADSTS700082 once a sign-in is revoked, and
//! `/me/sendMail` for the user's own tokens. A used refresh token stops working at once
//! (stricter than Microsoft, where it lives out its lifetime), so a rotation that is not written
//! back shows.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Form, Path, State as Shared};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{CLIENT_ID, FakeMicrosoft, State, TENANT, aadsts, bearer, deliver, invalid_token};

/// Where the fake sends the user.
pub const VERIFICATION_URI: &str = "https://microsoft.com/devicelogin";
/// The delegated scope sending through Graph needs.
pub const MAIL_SEND: &str = "https://graph.microsoft.com/Mail.Send";
/// The delegated scope of SMTP AUTH with XOAUTH2.
pub const SMTP_SEND: &str = "https://outlook.office.com/SMTP.Send";

/// What a device code's next poll is answered while the user has not decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Pending,
    Approved,
    Declined,
    Expired,
}

struct DeviceCode {
    device_code: String,
    user_code: String,
    scope: String,
    decision: Decision,
    user: String,
    /// Answers for the next polls before the decision is looked at.
    script: VecDeque<&'static str>,
}

/// Users and their tokens.
#[derive(Default)]
pub(super) struct Users {
    codes: Vec<DeviceCode>,
    /// Answers the next device code's polls get first (e.g. pending, slow_down).
    script: Vec<&'static str>,
    /// Refresh token → user; each is replaced by a new one when used.
    refresh: HashMap<String, String>,
    /// The newest refresh token issued.
    latest: Option<String>,
    /// Access token → (user, the resource's scope: [`MAIL_SEND`] or [`SMTP_SEND`]).
    tokens: HashMap<String, (String, &'static str)>,
    /// Refresh tokens used, in order.
    refreshes: usize,
    issued: usize,
}

impl Users {
    /// A new access token, refresh token and ID token for `user`, as the token endpoint sends.
    /// The token is for the first resource among the scopes, as Microsoft's is.
    fn issue(&mut self, user: &str, scope: &str) -> Response {
        self.issued += 1;
        let access_token = format!("fake-user-token-{}", self.issued);
        let refresh_token = format!("fake-user-refresh-token-{}", self.issued);
        let resource = resource(scope).unwrap_or(MAIL_SEND);
        let entry = (user.to_string(), resource);
        self.tokens.insert(access_token.clone(), entry);
        self.refresh.insert(refresh_token.clone(), user.to_string());
        self.latest = Some(refresh_token.clone());
        let claims = json!({"preferred_username": user, "tid": TENANT, "aud": CLIENT_ID});
        let key = jsonwebtoken::EncodingKey::from_secret(b"fake-id-token-key");
        let id_token =
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
        Json(
            json!({"token_type": "Bearer", "scope": resource, "expires_in": 3599,
            "ext_expires_in": 3599, "access_token": access_token, "refresh_token": refresh_token,
            "id_token": id_token}),
        )
        .into_response()
    }
}

/// The first sending scope among `scope`'s.
fn resource(scope: &str) -> Option<&'static str> {
    scope.split_whitespace().find_map(|s| match s {
        MAIL_SEND => Some(MAIL_SEND),
        SMTP_SEND => Some(SMTP_SEND),
        _ => None,
    })
}

fn oauth_error(error: &str, code: u64, text: &str) -> Response {
    aadsts(StatusCode::BAD_REQUEST, error, code, text)
}

/// `POST /{tenant}/oauth2/v2.0/devicecode`.
pub(super) async fn device_code(
    Shared(state): Shared<Arc<Mutex<State>>>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut state = state.lock().unwrap();
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    if tenant != TENANT || field("client_id") != CLIENT_ID {
        let text = "Application was not found in the directory.";
        return oauth_error("unauthorized_client", 700016, text);
    }
    let scope = field("scope");
    if !scope.split_whitespace().any(|s| s == MAIL_SEND) {
        return oauth_error("invalid_scope", 70011, "The provided scope is not valid.");
    }
    let users = &mut state.users;
    let n = users.codes.len() + 1;
    let code = DeviceCode {
        device_code: format!("fake-device-code-{n}"),
        user_code: format!("FAKE{n:04}"),
        scope,
        decision: Decision::Pending,
        user: String::new(),
        script: users.script.drain(..).collect(),
    };
    let message = format!(
        "To sign in, use a web browser to open the page {VERIFICATION_URI} and enter the code {} \
         to authenticate.",
        code.user_code
    );
    let body = json!({"device_code": code.device_code, "user_code": code.user_code,
        "verification_uri": VERIFICATION_URI, "expires_in": 900, "interval": 1,
        "message": message});
    users.codes.push(code);
    Json(body).into_response()
}

/// The delegated grants at `/token`: `None` for other grant types.
pub(super) fn grant(state: &mut State, form: &HashMap<String, String>) -> Option<Response> {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let users = &mut state.users;
    match field("grant_type") {
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let Some(code) =
                (users.codes.iter_mut()).find(|c| c.device_code == field("device_code"))
            else {
                return Some(oauth_error("invalid_grant", 70000, "bad_verification_code"));
            };
            let answer = code.script.pop_front().unwrap_or(match code.decision {
                Decision::Pending => "authorization_pending",
                Decision::Declined => "authorization_declined",
                Decision::Expired => "expired_token",
                Decision::Approved => "",
            });
            let text = "The user has not finished signing in.";
            Some(match answer {
                "" => {
                    let (user, scope) = (code.user.clone(), code.scope.clone());
                    users.issue(&user, &scope)
                }
                "authorization_pending" => oauth_error(answer, 70016, text),
                "slow_down" => oauth_error(answer, 70016, "Polling too fast."),
                "authorization_declined" => oauth_error(answer, 70000, "The user declined."),
                _ => oauth_error(answer, 70019, "The code has expired."),
            })
        }
        "refresh_token" => {
            let token = field("refresh_token");
            let Some(user) = users.refresh.remove(token) else {
                let text = "The refresh token has expired due to inactivity.";
                return Some(oauth_error("invalid_grant", 700082, text));
            };
            let scope = field("scope");
            if resource(scope).is_none() {
                return Some(oauth_error("invalid_scope", 70011, "bad scope"));
            }
            users.refreshes += 1;
            Some(users.issue(&user, scope))
        }
        _ => None,
    }
}

/// `POST /v1.0/me/sendMail`: the signed-in user's own mailbox.
pub(super) async fn send_mail_as_user(
    Shared(state): Shared<Arc<Mutex<State>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = state.lock().unwrap();
    state.requests += 1;
    let Some((user, MAIL_SEND)) = state.users.tokens.get(bearer(&headers)).cloned() else {
        return invalid_token();
    };
    deliver(&mut state, &user, &headers, &body)
}

impl FakeMicrosoft {
    /// The next device code's first polls are answered with these errors, in order
    /// (`authorization_pending`, `slow_down`), before the user's decision counts.
    pub fn script_polls(&self, answers: &[&'static str]) {
        self.state().users.script = answers.to_vec();
    }

    /// The user codes handed out so far.
    pub fn user_codes(&self) -> Vec<String> {
        let state = self.state();
        state
            .users
            .codes
            .iter()
            .map(|c| c.user_code.clone())
            .collect()
    }

    fn decide(&self, user_code: &str, decision: Decision, user: &str) {
        let mut state = self.state();
        let code = state
            .users
            .codes
            .iter_mut()
            .find(|c| c.user_code == user_code);
        let code = code.expect("a user code the fake handed out");
        code.decision = decision;
        code.user = user.to_string();
    }

    /// `user` signs in with `user_code` and accepts.
    pub fn approve(&self, user_code: &str, user: &str) {
        self.decide(user_code, Decision::Approved, user);
    }

    /// The user declines on the consent page.
    pub fn decline(&self, user_code: &str) {
        self.decide(user_code, Decision::Declined, "");
    }

    /// Nobody entered the code in time.
    pub fn expire_code(&self, user_code: &str) {
        self.decide(user_code, Decision::Expired, "");
    }

    /// Every sign-in ends (idle refresh tokens, a password reset): refresh tokens are refused
    /// with AADSTS700082 and the users' access tokens with 401.
    pub fn revoke_sign_ins(&self) {
        let mut state = self.state();
        state.users.refresh.clear();
        state.users.tokens.clear();
    }

    /// The newest refresh token issued.
    pub fn latest_refresh_token(&self) -> Option<String> {
        self.state().users.latest.clone()
    }

    /// The user whose SMTP token `token` is, for the fake Exchange's XOAUTH2 check.
    pub fn smtp_user(&self, token: &str) -> Option<String> {
        match self.state().users.tokens.get(token) {
            Some((user, SMTP_SEND)) => Some(user.clone()),
            _ => None,
        }
    }

    /// How many refresh-token grants succeeded.
    pub fn refreshes(&self) -> usize {
        self.state().users.refreshes
    }
}
