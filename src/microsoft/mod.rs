//! The Microsoft identity platform: an Entra app registration's client-credentials tokens for
//! Microsoft Graph, one user's delegated tokens ([`delegated`], signed in with the device code
//! flow of [`device_code`]), and what each AADSTS refusal asks an operator to do.
//!
//! The app proves itself with a client secret or, preferred, a certificate: a short JWT signed
//! with the certificate's key and naming the certificate by its SHA-256 thumbprint (`x5t#S256`,
//! PS256), as Microsoft's certificate-credentials page specifies. The token source, its cache,
//! its single-flight refresh, the "needs attention" state and the reload on a changed file are the
//! ones Gmail accounts use ([`crate::google::TokenSource`]); only the request and the reading of
//! the answer are Microsoft's, here.

mod aadsts;
mod assertion;
pub mod delegated;
pub mod device_code;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::google::{Credentials, Secret, TokenError};
use crate::google::{GoogleTokenResponse, form_urlencoded, granted, token_endpoint};
pub use assertion::{Certificate, CertificateError};
pub(crate) use delegated::refresh_user;
pub use delegated::{EntraUser, authorize_user_again};

/// The resource every Graph token is for.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

/// An Entra app registration that obtains tokens for itself (client credentials grant).
#[derive(Debug, Clone)]
pub struct EntraApp {
    /// The tenant id or domain, as configured.
    pub tenant: String,
    /// The application (client) id.
    pub client_id: String,
    /// How the app proves itself.
    pub proof: AppProof,
    /// The resource's `.default` scope.
    pub scope: String,
}

/// A client secret or a certificate.
#[derive(Debug, Clone)]
pub enum AppProof {
    /// A client secret, and where it was read from (`env:NAME`, `file:PATH` or "the
    /// configuration"), for the fix when it expires.
    Secret {
        /// The secret.
        secret: Secret,
        /// Where it came from, without the value.
        source: String,
    },
    /// A certificate whose key signs an assertion per token request.
    Certificate(Certificate),
}

impl EntraApp {
    /// The token endpoint under `login_base` for this app's tenant.
    pub fn token_uri(&self, login_base: &str) -> String {
        endpoint(login_base, &self.tenant, "token")
    }

    /// The same app without comparing key material: true when a reloaded configuration asks for
    /// tokens exactly as this one does (certificates never compare equal, as service-account
    /// keys do not: replacing one costs one token request).
    pub fn is_same(&self, other: &EntraApp) -> bool {
        let same_proof = match (&self.proof, &other.proof) {
            (AppProof::Secret { secret, .. }, AppProof::Secret { secret: other, .. }) => {
                secret == other
            }
            _ => false,
        };
        same_proof
            && self.tenant == other.tenant
            && self.client_id == other.client_id
            && self.scope == other.scope
    }
}

impl fmt::Display for EntraApp {
    /// "Entra app 1234… of tenant contoso.onmicrosoft.com with the client secret from env:X".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Entra app {} of tenant {} ", self.client_id, self.tenant)?;
        match &self.proof {
            AppProof::Secret { source, .. } => write!(f, "with the client secret from {source}"),
            AppProof::Certificate(certificate) => {
                write!(f, "with certificate {}", certificate.path.display())
            }
        }
    }
}

/// The identity platform's endpoint `name` (`token`, `devicecode`) for `tenant`.
pub fn endpoint(login_base: &str, tenant: &str, name: &str) -> String {
    format!(
        "{}/{tenant}/oauth2/v2.0/{name}",
        login_base.trim_end_matches('/')
    )
}

/// What a token request yields, in the terms the shared token source keeps.
pub(crate) struct AppToken {
    pub(crate) access_token: Secret,
    pub(crate) expires_in: Duration,
}

/// One client-credentials request to `credentials`' token endpoint.
pub(crate) async fn request(
    http: &reqwest::Client,
    credentials: &Credentials,
    app: &EntraApp,
) -> Result<AppToken, TokenError> {
    let token_uri = credentials.token_uri();
    let assertion;
    let mut form = vec![
        ("client_id", app.client_id.as_str()),
        ("scope", app.scope.as_str()),
        ("grant_type", "client_credentials"),
    ];
    match &app.proof {
        AppProof::Secret { secret, .. } => form.push(("client_secret", secret.expose())),
        AppProof::Certificate(certificate) => {
            assertion = certificate
                .assertion(&app.client_id, token_uri)
                .map_err(|err| aadsts::unusable_certificate(app, &err))?;
            form.push((
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ));
            form.push(("client_assertion", assertion.as_str()));
        }
    }
    let response = exchange(http, credentials, form_urlencoded(form), |body| {
        aadsts::classify(app, token_uri, body)
    })
    .await?;
    let (access_token, lifetime) = granted(response);
    Ok(AppToken {
        access_token,
        // Microsoft always sends it (60–90 minutes); an hour if it did not.
        expires_in: lifetime.unwrap_or(Duration::from_secs(3600)),
    })
}

/// POSTs `form` to `credentials`' token endpoint: the token response, or the refusal as
/// `refused` reads its body.
async fn exchange(
    http: &reqwest::Client,
    credentials: &Credentials,
    form: String,
    refused: impl FnOnce(&[u8]) -> TokenError,
) -> Result<GoogleTokenResponse, TokenError> {
    let response = token_endpoint(http, credentials, form).await?;
    let body = response.body();
    if !response.status().is_success() {
        return Err(refused(body));
    }
    serde_json::from_slice(body).map_err(|_| TokenError::Temporary {
        reason: format!(
            "token endpoint {} sent an unreadable token response",
            credentials.token_uri()
        ),
    })
}

/// Where a configured secret value comes from, without the value: for fixes and `check`.
pub fn secret_source(configured: &str) -> String {
    if configured.starts_with("env:") || configured.starts_with("file:") {
        configured.to_string()
    } else {
        "the configuration file".to_string()
    }
}

/// The files an app's credential is read from (watched for changes).
pub fn credential_files(
    client_secret: Option<&str>,
    certificate: Option<&PathBuf>,
    private_key: Option<&PathBuf>,
) -> Vec<PathBuf> {
    let secret = client_secret
        .and_then(|value| value.strip_prefix("file:"))
        .map(PathBuf::from);
    secret
        .into_iter()
        .chain(certificate.cloned())
        .chain(private_key.cloned())
        .collect()
}
