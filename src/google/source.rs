//! One account's access tokens: cached per impersonated user, refreshed once shortly before they
//! expire no matter how many deliveries ask at the same moment, and an account-wide state that
//! tells operators when a person has to act.

use crate::locks::{lock, read, write};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::credentials::Credentials;
use super::files::Saved;
use super::grant::{self, Granted};
use super::{Secret, TokenError, files};

/// A token is renewed when it has less than this left, so no request starts with a token that
/// dies in flight (Google's own libraries use 3 min 45 s).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// While the token endpoint is down, a cached token with at least this much left is still handed
/// out, so a brief Google outage inside the refresh margin costs no deliveries.
const STILL_USABLE: Duration = Duration::from_secs(60);

/// Default bound on one token request; the shared HTTP client may have no timeout of its own.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// An OAuth access token for the Gmail API.
#[derive(Clone)]
pub struct AccessToken {
    secret: Secret,
    valid_until: Instant,
    /// What the token may do, as Google (or the token file) said; shared, as tokens are cloned
    /// for every request.
    scopes: Option<Arc<[String]>>,
}

impl AccessToken {
    /// The bearer value for the `Authorization` header.
    pub fn expose(&self) -> &str {
        self.secret.expose()
    }

    /// The scopes granted with it, when known: from the token response, or for a token read
    /// from a token.json, the file's `scopes`. `check` uses them to spot a token that cannot send.
    pub fn scopes(&self) -> Option<&[String]> {
        self.scopes.as_deref()
    }

    /// How long it remains valid.
    pub fn remaining(&self) -> Duration {
        self.valid_until.saturating_duration_since(Instant::now())
    }

    fn lasts(&self, at_least: Duration) -> bool {
        self.remaining() > at_least
    }
}

impl PartialEq for AccessToken {
    /// Same token value; two tokens are never equal by accident.
    fn eq(&self, other: &Self) -> bool {
        self.secret == other.secret
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &self.secret)
            .field("remaining", &self.remaining())
            .finish()
    }
}

/// Whether an account's credentials work, for `check`, logs and readiness probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialState {
    /// No token has been requested yet.
    Unknown,
    /// The last token request succeeded.
    Ok {
        /// When that token expires.
        expires_at: SystemTime,
    },
    /// Google refused the credentials; mail for this account cannot go out until a person acts.
    NeedsAttention {
        /// When the refusals started (kept across repeated failures).
        since: SystemTime,
        /// The latest refusal, with its fix.
        error: TokenError,
    },
}

/// One cache entry per impersonated user (a single `None` entry for refresh-token credentials).
#[derive(Default)]
struct Slot {
    /// Std mutex: only held to read or write the fields, never across an `.await`.
    cache: Mutex<Cache>,
    /// Held for the whole token request: the single-flight guard.
    refresh: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Cache {
    token: Option<AccessToken>,
    /// Counts finished token requests, so a caller that waited on `refresh` can tell that a
    /// request happened meanwhile and share its outcome instead of making another.
    attempts: u64,
    failure: Option<TokenError>,
}

impl Cache {
    /// A token fit to start a request with, if there is one.
    fn fresh(&self) -> Option<AccessToken> {
        self.token.clone().filter(|t| t.lasts(REFRESH_MARGIN))
    }
}

/// The credentials in use; `generation` changes on [`TokenSource::replace`] so a request that
/// started with the old credentials does not overwrite the new ones' state.
struct Current {
    credentials: Arc<Credentials>,
    generation: u64,
}

/// Access tokens for one account. Share it with `Arc`; every method takes `&self`.
pub struct TokenSource {
    /// The account's name in logs.
    name: String,
    /// The process-wide pooled client.
    http: reqwest::Client,
    timeout: Duration,
    current: RwLock<Current>,
    slots: Mutex<HashMap<Option<String>, Arc<Slot>>>,
    state: Mutex<CredentialState>,
}

impl TokenSource {
    /// A token source for the account `name` (used in log lines), sending token requests through
    /// `http`. A valid token carried by a token.json is used until it nears expiry.
    pub fn new(name: impl Into<String>, credentials: Credentials, http: reqwest::Client) -> Self {
        let source = TokenSource {
            name: name.into(),
            http,
            timeout: DEFAULT_TIMEOUT,
            current: RwLock::new(Current {
                credentials: Arc::new(credentials),
                generation: 0,
            }),
            slots: Mutex::new(HashMap::new()),
            state: Mutex::new(CredentialState::Unknown),
        };
        source.seed_from_file();
        source
    }

    /// Bounds each token request by `timeout` instead of [`DEFAULT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The account's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The credentials in use now (a rotated refresh token included).
    pub fn credentials(&self) -> Arc<Credentials> {
        read(&self.current).credentials.clone()
    }

    /// Whether the credentials currently work.
    pub fn state(&self) -> CredentialState {
        lock(&self.state).clone()
    }

    /// An access token for sending as `subject`: the user a service account impersonates
    /// (required for them, ignored for refresh-token credentials).
    pub async fn access_token(&self, subject: Option<&str>) -> Result<AccessToken, TokenError> {
        let slot = self.slot(subject);
        let seen = {
            let cache = lock(&slot.cache);
            if let Some(token) = cache.fresh() {
                return Ok(token);
            }
            cache.attempts
        };
        let _single_flight = slot.refresh.lock().await;
        {
            let cache = lock(&slot.cache);
            if let Some(token) = cache.fresh() {
                return Ok(token);
            }
            if cache.attempts != seen {
                if let Some(token) = cache.token.clone().filter(|t| t.lasts(STILL_USABLE)) {
                    return Ok(token);
                }
                if let Some(error) = &cache.failure {
                    return Err(error.clone());
                }
            }
        }
        let (credentials, generation) = {
            let current = read(&self.current);
            (current.credentials.clone(), current.generation)
        };
        tracing::debug!(account = %self.name, subject, "requesting an access token");
        let started = Instant::now();
        let result = grant::request(&self.http, &credentials, subject, self.timeout).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(TokenError::Temporary { .. }) => "temporary",
            Err(TokenError::UnknownUser { .. }) => "unknown_user",
            Err(TokenError::Credentials { .. }) => "credentials",
        };
        crate::telemetry::token_refresh(&self.name, outcome);
        match result {
            Ok(granted) => {
                let token = AccessToken {
                    secret: granted.access_token.clone(),
                    valid_until: started + granted.expires_in,
                    scopes: granted.scopes.as_deref().map(Arc::from),
                };
                self.adopt_rotation(&credentials, generation, &granted)
                    .await;
                if self.is_generation(generation) {
                    self.mark_ok(&token);
                }
                let mut cache = lock(&slot.cache);
                cache.attempts += 1;
                cache.failure = None;
                cache.token = Some(token.clone());
                Ok(token)
            }
            Err(error) => {
                // One sender the key cannot act for is that sender's problem: the account stays
                // healthy (readiness green, no pause) for everyone else.
                if self.is_generation(generation) && error.is_account_wide() {
                    self.mark_needs_attention(&credentials, &error);
                }
                let mut cache = lock(&slot.cache);
                cache.attempts += 1;
                cache.failure = Some(error.clone());
                match cache.token.clone().filter(|t| t.lasts(STILL_USABLE)) {
                    Some(token) if error.is_temporary() => {
                        tracing::debug!(account = %self.name, %error, "using the current access token a little longer");
                        Ok(token)
                    }
                    _ => Err(error),
                }
            }
        }
    }

    /// Forgets `rejected` (after Gmail answered 401 with it) so the next call fetches a new token.
    /// A token that was already replaced is left alone: many deliveries failing with the same
    /// token cause one refresh, not one each.
    pub fn invalidate(&self, subject: Option<&str>, rejected: &AccessToken) {
        let slot = self.slot(subject);
        let mut cache = lock(&slot.cache);
        if cache.token.as_ref() == Some(rejected) {
            cache.token = None;
        }
    }

    /// Switches to new credentials (e.g. the token file was rewritten by `authorize`): cached
    /// tokens are dropped and the state starts again from `Unknown`.
    pub fn replace(&self, credentials: Credentials) {
        {
            let mut current = write(&self.current);
            current.credentials = Arc::new(credentials);
            current.generation += 1;
        }
        lock(&self.slots).clear();
        *lock(&self.state) = CredentialState::Unknown;
        self.seed_from_file();
        // Debug only: whoever replaces the credentials says why, at the level that fits.
        tracing::debug!(account = %self.name, credentials = %self.credentials(), "credentials replaced");
    }

    /// Changes whenever the credentials are replaced or [`recheck`](Self::recheck)ed: the queue
    /// resumes an account paused for a credentials problem as soon as it changes.
    pub fn generation(&self) -> u64 {
        read(&self.current).generation
    }

    /// The operator says a problem was fixed at Google's end (API enabled, delegation granted)
    /// without new credentials (SIGHUP): forget the last refusal and let held mail try again.
    pub fn recheck(&self) {
        write(&self.current).generation += 1;
        let mut state = lock(&self.state);
        if matches!(*state, CredentialState::NeedsAttention { .. }) {
            *state = CredentialState::Unknown;
        }
    }

    fn is_generation(&self, generation: u64) -> bool {
        read(&self.current).generation == generation
    }

    fn slot(&self, subject: Option<&str>) -> Arc<Slot> {
        // Refresh-token credentials have one token whoever the sender is.
        let key = subject
            .filter(|_| self.credentials().is_service_account())
            .map(str::to_string);
        lock(&self.slots).entry(key).or_default().clone()
    }

    /// Puts a token.json's still-valid access token into the cache.
    fn seed_from_file(&self) {
        let credentials = self.credentials();
        let Some((secret, expiry)) = &credentials.cached_token else {
            return;
        };
        let Ok(left) = expiry.duration_since(SystemTime::now()) else {
            return;
        };
        let token = AccessToken {
            secret: secret.clone(),
            valid_until: Instant::now() + left,
            scopes: credentials.scopes().map(Arc::from),
        };
        lock(&self.slot(None).cache).token = Some(token);
    }

    /// Uses a rotated refresh token from now on, and writes it back to its file: the old one may
    /// stop working, and a restart must not fall back to it.
    async fn adopt_rotation(&self, credentials: &Credentials, generation: u64, granted: &Granted) {
        let Some(new) = granted.refresh_token.clone() else {
            return;
        };
        let Some(previous) = credentials.current_refresh_token() else {
            return;
        };
        if *previous == new {
            return;
        }
        let rotated = credentials.with_refresh_token(new.clone());
        let (kind, previous) = (rotated.kind().clone(), previous.clone());
        let access = granted.access_token.clone();
        let expiry = SystemTime::now() + granted.expires_in;
        let saved = tokio::task::spawn_blocking(move || {
            files::save_rotated(&kind, &previous, &new, &access, expiry)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        let file = rotated.path().map(|p| p.display().to_string());
        let file = file.as_deref().unwrap_or_default();
        match saved {
            Ok(Saved::Written) => {
                tracing::info!(account = %self.name, file, "saved the new refresh token the token endpoint issued")
            }
            Ok(Saved::NoFile) => {
                tracing::warn!(account = %self.name, credentials = %rotated,
                    "the token endpoint issued a new refresh token; it is used until restart, then the configured one may be refused")
            }
            Ok(Saved::FileChanged) => {
                tracing::info!(account = %self.name, file, "not saving the new refresh token: the file was changed meanwhile")
            }
            Err(error) => {
                tracing::warn!(account = %self.name, file, %error,
                    "cannot save the new refresh token the token endpoint issued; it is used until restart, then the old one may be refused")
            }
        }
        let mut current = write(&self.current);
        if current.generation == generation {
            current.credentials = Arc::new(rotated);
        }
    }

    fn mark_ok(&self, token: &AccessToken) {
        let mut state = lock(&self.state);
        if matches!(*state, CredentialState::NeedsAttention { .. }) {
            tracing::info!(account = %self.name, credentials = %self.credentials(), "credentials work again");
        }
        *state = CredentialState::Ok {
            expires_at: SystemTime::now() + token.remaining(),
        };
    }

    /// Logs once when the account starts needing attention, not on every failed delivery.
    fn mark_needs_attention(&self, credentials: &Credentials, error: &TokenError) {
        let mut state = lock(&self.state);
        if let CredentialState::NeedsAttention { error: latest, .. } = &mut *state {
            *latest = error.clone();
            return;
        }
        tracing::warn!(account = %self.name, credentials = %credentials, %error, "credentials need attention");
        *state = CredentialState::NeedsAttention {
            since: SystemTime::now(),
            error: error.clone(),
        };
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("name", &self.name)
            .field("credentials", &self.credentials())
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::google::{CredentialSpec, load};

    #[tokio::test]
    async fn a_panic_while_the_token_cache_was_locked_does_not_break_the_account() {
        let dir = tempfile::tempdir().unwrap();
        let expiry = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        let token = serde_json::json!({
            "token": "fake-cached-access-token",
            "refresh_token": "fake-refresh-token",
            "client_id": "fake-client.apps.googleusercontent.com",
            "client_secret": "fake-secret",
            "token_uri": "http://127.0.0.1:9/token",
            "expiry": expiry.format(&time::format_description::well_known::Rfc3339).unwrap(),
        });
        let path = dir.path().join("token.json");
        std::fs::write(&path, token.to_string()).unwrap();
        let credentials = load(&CredentialSpec::File(path), None).unwrap();
        let source = TokenSource::new("default", credentials, reqwest::Client::new());
        // A delivery panics while it holds the cache and the state (the scheduler survives it).
        let slot = source.slot(None);
        std::thread::scope(|scope| {
            let held = scope.spawn(|| {
                let _cache = slot.cache.lock();
                let _state = source.state.lock();
                panic!("a bug while the token cache was locked");
            });
            assert!(held.join().is_err());
        });
        assert!(slot.cache.is_poisoned());
        let token = source.access_token(None).await.unwrap();
        assert_eq!(token.expose(), "fake-cached-access-token");
        assert_eq!(source.state(), CredentialState::Unknown);
    }
}
