//! The fake's side of the authorization code flow: the consent screen `GET /o/oauth2/auth`, which
//! checks the request as Google would and "allows" at once by redirecting (302) to the loopback
//! URI, and the `authorization_code` grant of `POST /token`, which checks the code, the identical
//! redirect URI, the client secret and PKCE, and answers with tokens and an ID token naming
//! [`ACCOUNT`].

use std::collections::HashMap;
use std::time::SystemTime;

use axum::extract::{Query, State as Shared};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::fake_google::{CLIENT_ID, CLIENT_SECRET, FakeGoogle, GMAIL_SEND, SharedState, State};

/// The Gmail address the fake's consent screen signs in as.
pub const ACCOUNT: &str = "authorized-user@example.com";

/// Scopes the fake's consent screen knows; `email` is granted as its long name, as Google does.
const KNOWN_SCOPES: [&str; 5] = [
    GMAIL_SEND,
    "openid",
    "email",
    "profile",
    "https://mail.google.com/",
];
const USERINFO_EMAIL: &str = "https://www.googleapis.com/auth/userinfo.email";

/// One code exchange as the fake saw it.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The `client_secret` form field, if sent.
    pub client_secret: Option<String>,
    /// The `redirect_uri` form field, if sent.
    pub redirect_uri: Option<String>,
    /// True when `BASE64URL-NOPAD(SHA256(code_verifier))` equalled the code's challenge.
    pub pkce_verified: bool,
    /// `Ok` when tokens were issued, else why not.
    pub verdict: Result<(), String>,
}

/// A code handed out by the consent screen and not yet exchanged.
struct Pending {
    redirect_uri: String,
    challenge: String,
    scopes: Vec<String>,
}

/// The consent screen's configuration and records.
#[derive(Default)]
pub struct ConsentEndpoint {
    pending: HashMap<String, Pending>,
    issued_codes: usize,
    deny: bool,
    omit_refresh_token: bool,
    withheld_scope: Option<String>,
    exchanges: Vec<Exchange>,
    rejections: Vec<String>,
    /// The query of every consent request, in order.
    requests: Vec<HashMap<String, String>>,
}

impl FakeGoogle {
    /// The consent screen's URL (`auth_uri` in a client secret file).
    pub fn auth_uri(&self) -> String {
        format!("{}/o/oauth2/auth", self.base_url())
    }

    /// A "Desktop app" client secret file pointing at this fake.
    pub fn installed_client_json(&self) -> serde_json::Value {
        json!({"installed": {
            "client_id": CLIENT_ID,
            "project_id": "fake-project",
            "auth_uri": self.auth_uri(),
            "token_uri": self.token_uri(),
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_secret": CLIENT_SECRET,
            "redirect_uris": ["http://localhost"],
        }})
    }

    /// From now on the person clicks "Cancel": redirects carry `error=access_denied`.
    pub fn deny_consent(&self) {
        self.state().oauth.deny = true;
    }

    /// From now on code exchanges return no refresh token (as for an earlier consent).
    pub fn omit_refresh_token(&self) {
        self.state().oauth.omit_refresh_token = true;
    }

    /// From now on the person unticks `scope` on the consent screen.
    pub fn withhold_scope(&self, scope: &str) {
        self.state().oauth.withheld_scope = Some(scope.to_string());
    }

    /// Every code exchange, in order.
    pub fn code_exchanges(&self) -> Vec<Exchange> {
        self.state().oauth.exchanges.clone()
    }

    /// The query parameters of every consent request, in order.
    pub fn consent_requests(&self) -> Vec<HashMap<String, String>> {
        self.state().oauth.requests.clone()
    }

    /// Why the consent screen refused requests, for assertion messages.
    pub fn consent_rejections(&self) -> Vec<String> {
        self.state().oauth.rejections.clone()
    }

    /// Opens a consent URL as a person who clicks "Allow" (or "Cancel", after [`deny_consent`]):
    /// returns where the fake redirects the browser to, without going there.
    ///
    /// [`deny_consent`]: FakeGoogle::deny_consent
    pub async fn consent(&self, url: &str) -> url::Url {
        let response = browser().get(url).send().await.unwrap();
        let rejected = self.consent_rejections();
        assert_eq!(response.status(), 302, "the fake refused: {rejected:?}");
        let location = response.headers()[header::LOCATION].to_str().unwrap();
        url::Url::parse(location).unwrap()
    }
}

/// A browser that shows redirects instead of following them, so tests decide where to go.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Opens a URL (the loopback listener) as a browser; returns the status and the page.
pub async fn visit(url: &str) -> (u16, String) {
    let response = browser().get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// A query parameter of `url`.
pub fn query_param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// `GET /o/oauth2/auth`: validates, then redirects to the loopback URI as a consenting person.
/// Invalid requests get a 400 page, as Google shows its error page instead of redirecting.
pub async fn consent(
    Shared(state): Shared<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut state = state.lock().unwrap();
    let endpoint = &mut state.oauth;
    endpoint.requests.push(query.clone());
    let redirect = match check_consent(&query) {
        Ok(redirect) => redirect,
        Err(why) => {
            endpoint.rejections.push(why.clone());
            return (StatusCode::BAD_REQUEST, format!("Error 400: {why}")).into_response();
        }
    };
    let mut location = redirect;
    let mut pairs = location.query_pairs_mut();
    if endpoint.deny {
        pairs.append_pair("error", "access_denied");
    } else {
        endpoint.issued_codes += 1;
        let code = format!("4/fake-code-{}", endpoint.issued_codes);
        let mut scopes: Vec<String> = query["scope"].split(' ').map(str::to_string).collect();
        scopes.retain(|s| Some(s) != endpoint.withheld_scope.as_ref());
        pairs.append_pair("code", &code);
        pairs.append_pair("scope", &scopes.join(" "));
        let pending = Pending {
            redirect_uri: query["redirect_uri"].clone(),
            challenge: query["code_challenge"].clone(),
            scopes,
        };
        endpoint.pending.insert(code, pending);
    }
    pairs.append_pair("state", &query["state"]);
    drop(pairs);
    (
        StatusCode::FOUND,
        [(header::LOCATION, location.to_string())],
    )
        .into_response()
}

/// What Google checks before showing the consent screen, plus what our client must always send.
fn check_consent(query: &HashMap<String, String>) -> Result<url::Url, String> {
    let field = |name: &str| query.get(name).map(String::as_str).unwrap_or_default();
    let expect = |name: &str, value: &str| {
        (field(name) == value)
            .then_some(())
            .ok_or_else(|| format!("{name}={:?}, expected {value:?}", field(name)))
    };
    expect("client_id", CLIENT_ID)?;
    expect("response_type", "code")?;
    expect("code_challenge_method", "S256")?;
    expect("access_type", "offline")?;
    expect("prompt", "consent")?;
    let redirect = url::Url::parse(field("redirect_uri"))
        .map_err(|e| format!("redirect_uri {:?}: {e}", field("redirect_uri")))?;
    let loopback = matches!(redirect.host_str(), Some("127.0.0.1" | "localhost"));
    if redirect.scheme() != "http" || !loopback || redirect.port().is_none() {
        return Err(format!(
            "redirect_uri_mismatch: {redirect} is not a loopback URI"
        ));
    }
    if field("code_challenge").len() != 43 {
        return Err("code_challenge is not 43 base64url characters".into());
    }
    if field("state").is_empty() {
        return Err("no state".into());
    }
    let scopes: Vec<&str> = field("scope").split(' ').collect();
    if scopes.iter().any(|s| !KNOWN_SCOPES.contains(s)) {
        return Err(format!("invalid_scope: {:?}", field("scope")));
    }
    Ok(redirect)
}

/// The `authorization_code` grant, called by the token handler with the state locked.
pub(super) fn exchange(state: &mut State, form: &HashMap<String, String>) -> Response {
    let field = |name: &str| form.get(name).cloned();
    let mut record = Exchange {
        client_secret: field("client_secret"),
        redirect_uri: field("redirect_uri"),
        pkce_verified: false,
        verdict: Ok(()),
    };
    let endpoint = &mut state.oauth;
    // A code works once, whatever the outcome.
    let pending = field("code").and_then(|code| endpoint.pending.remove(&code));
    let verdict = check_exchange(&mut record, pending.as_ref(), form);
    record.verdict = verdict.clone().map_err(|(_, _, why)| why);
    endpoint.exchanges.push(record);
    if let Err((status, error, why)) = verdict {
        let body = json!({"error": error, "error_description": why});
        return (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
    }
    let pending = pending.expect("checked");
    let refresh_token = (!endpoint.omit_refresh_token)
        .then(|| format!("fake-refresh-token-authorized-{}", endpoint.exchanges.len()));
    let access_token = state.grant(refresh_token.as_deref());
    let granted: Vec<&str> = pending
        .scopes
        .iter()
        .map(|s| {
            if s == "email" {
                USERINFO_EMAIL
            } else {
                s.as_str()
            }
        })
        .collect();
    let mut body = json!({
        "access_token": access_token,
        "expires_in": 3599,
        "scope": granted.join(" "),
        "token_type": "Bearer",
    });
    if let Some(refresh_token) = refresh_token {
        body["refresh_token"] = json!(refresh_token);
    }
    if pending.scopes.iter().any(|s| s == "openid") {
        body["id_token"] = json!(id_token(pending.scopes.iter().any(|s| s == "email")));
    }
    axum::Json(body).into_response()
}

type Verdict = Result<(), (u16, &'static str, String)>;

/// Google's checks on a code exchange, in Google's order and with its error codes.
fn check_exchange(
    record: &mut Exchange,
    pending: Option<&Pending>,
    form: &HashMap<String, String>,
) -> Verdict {
    let field = |name: &str| form.get(name).map(String::as_str);
    if field("client_id") != Some(CLIENT_ID) {
        return Err((
            401,
            "invalid_client",
            "The OAuth client was not found.".into(),
        ));
    }
    match field("client_secret") {
        None => return Err((400, "invalid_request", "client_secret is missing.".into())),
        Some(CLIENT_SECRET) => {}
        Some(_) => return Err((401, "invalid_client", "Unauthorized".into())),
    }
    let Some(pending) = pending else {
        return Err((400, "invalid_grant", "Malformed auth code.".into()));
    };
    if field("redirect_uri") != Some(pending.redirect_uri.as_str()) {
        return Err((400, "redirect_uri_mismatch", "Bad Request".into()));
    }
    let Some(verifier) = field("code_verifier") else {
        return Err((400, "invalid_grant", "Missing code verifier.".into()));
    };
    let digest = Sha256::digest(verifier.as_bytes());
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    record.pkce_verified = computed == pending.challenge;
    if !record.pkce_verified {
        return Err((400, "invalid_grant", "Invalid code verifier.".into()));
    }
    Ok(())
}

/// An ID token as Google shapes it (signed with a throwaway HMAC key: the client must not need
/// the signature, since it reads the token straight from the token endpoint).
fn id_token(with_email: bool) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({
        "iss": "https://accounts.google.com",
        "aud": CLIENT_ID,
        "sub": "100000000000000000042",
        "iat": now,
        "exp": now + 3600,
    });
    if with_email {
        claims["email"] = json!(ACCOUNT);
        claims["email_verified"] = json!(true);
    }
    let key = jsonwebtoken::EncodingKey::from_secret(b"fake-id-token-key");
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}
