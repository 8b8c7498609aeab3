//! One Microsoft 365 user's own mailbox (delegated `Mail.Send`): the token file `smtp2gmail
//! authorize --microsoft` writes, Microsoft's refresh-token grant, and the fixes for its refusals.
//!
//! Microsoft replaces the refresh token on every use and the old one ends with its own lifetime
//! (90 days, less when idle): the new one is written back to the file by the shared token source
//! (as for Gmail's token.json), so the window keeps sliding as long as mail is sent.

use std::path::Path;

use serde_json::Value;

use super::aadsts;
use crate::google::{CredentialError, Credentials, Fields, Secret, TokenError};
use crate::google::{Granted, form_urlencoded, key_error, read_json};

/// Sending as the user through Graph (`/me/sendMail`), and staying signed in.
pub const USER_GRAPH_SCOPE: &str = "https://graph.microsoft.com/Mail.Send offline_access";
/// Submitting as the user to Exchange Online's SMTP with XOAUTH2 (the large path).
pub const USER_SMTP_SCOPE: &str = "https://outlook.office.com/SMTP.Send offline_access";
/// The `type` of the token file, so neither provider mistakes the other's file for its own.
pub const TOKEN_FILE_TYPE: &str = "microsoft_user";

/// A user's refresh token for an Entra app registration that is a public client (no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraUser {
    /// The tenant id or domain the user signed in to.
    pub tenant: String,
    /// The application (client) id.
    pub client_id: String,
    /// The latest refresh token.
    pub(crate) refresh_token: Secret,
    /// The scopes asked for on refresh: they choose the resource (Graph or Exchange's SMTP).
    pub scope: String,
}

/// Loads a token file of `authorize --microsoft`; its tokens are exchanged under `login_base`.
pub fn load_token_file(path: &Path, login_base: &str) -> Result<Credentials, CredentialError> {
    let value = read_json(path)?;
    let empty = serde_json::Map::new();
    let map = value.as_object().unwrap_or(&empty);
    let fields = Fields::new(path, map, key_error);
    if fields.optional("type")? != Some(TOKEN_FILE_TYPE) {
        return Err(fields.invalid(
            "type",
            "is not \"microsoft_user\": not a token file of `smtp2gmail authorize --microsoft`",
        ));
    }
    let user = EntraUser {
        tenant: fields.required("tenant")?.to_string(),
        client_id: fields.required("client_id")?.to_string(),
        refresh_token: Secret::new(fields.required("refresh_token")?),
        scope: USER_GRAPH_SCOPE.to_string(),
    };
    let token_uri = super::endpoint(login_base, &user.tenant, "token");
    let mut credentials = Credentials::entra_user(user, path.to_path_buf(), token_uri);
    credentials.account = fields.optional("account")?.map(str::to_string);
    credentials.scopes = fields.scopes()?;
    credentials.cached_token = fields.cached_token()?;
    Ok(credentials)
}

/// The token file's content: the names of Gmail's token.json where the meaning is the same.
pub(crate) fn token_file_json(
    user: &EntraUser,
    token_uri: &str,
    access_token: &Secret,
    expiry: std::time::SystemTime,
    scopes: &[String],
    account: Option<&str>,
) -> Value {
    serde_json::json!({
        "type": TOKEN_FILE_TYPE,
        "token": access_token.expose(),
        "refresh_token": user.refresh_token.expose(),
        "token_uri": token_uri,
        "tenant": user.tenant,
        "client_id": user.client_id,
        "scopes": scopes,
        "account": account.unwrap_or_default(),
        "expiry": humantime::format_rfc3339_seconds(expiry).to_string(),
    })
}

/// One refresh-token request for `user` at `credentials`' token endpoint.
pub(crate) async fn refresh_user(
    http: &reqwest::Client,
    credentials: &Credentials,
    user: &EntraUser,
) -> Result<Granted, TokenError> {
    let token_uri = credentials.token_uri();
    let form = form_urlencoded([
        ("client_id", user.client_id.as_str()),
        ("grant_type", "refresh_token"),
        ("refresh_token", user.refresh_token.expose()),
        ("scope", user.scope.as_str()),
    ]);
    let file = credentials
        .path()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let response = super::exchange(http, credentials, form, |body| {
        aadsts::classify_with(token_uri, body, |code| user_fix(user, &file, code))
    })
    .await?;
    Ok(Granted::from(response))
}

/// The command that signs the user in again, writing `file`.
pub fn authorize_user_again(file: &Path) -> String {
    format!(
        "run `smtp2gmail authorize --microsoft --token-file {}` and sign in as the mailbox's user \
         (held mail is sent as soon as the file is rewritten; no restart)",
        file.display()
    )
}

/// What to do about AADSTS `code` on a user's refresh.
fn user_fix(user: &EntraUser, file: &Path, code: Option<u64>) -> String {
    let (id, tenant) = (&user.client_id, &user.tenant);
    let again = authorize_user_again(file);
    match code {
        Some(65001) => format!(
            "the user or an administrator has not consented to the delegated permission Mail.Send \
             for app {id}: {again} and accept, or grant admin consent in the Entra admin center"
        ),
        Some(700016) | Some(7000012) | Some(90002) => format!(
            "app {id} is not known in tenant {tenant}: check tenant and client_id, then {again}"
        ),
        Some(7000218) | Some(700025) => format!(
            "app {id} is not a public client: Entra admin center > App registrations > the app > \
             Authentication > \"Allow public client flows\" = Yes, then {again}"
        ),
        // 70008, 700082, 50173 (expired or revoked), 50076/50079 (MFA), 53003 (Conditional
        // Access), 70043 (sign-in frequency): a new sign-in is the fix for all of them.
        _ => format!("the sign-in has expired or was revoked: {again}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_refresh_token_names_authorize_microsoft_with_the_file() {
        let user = EntraUser {
            tenant: "contoso.onmicrosoft.com".into(),
            client_id: "app".into(),
            refresh_token: Secret::new("fake-refresh"),
            scope: USER_GRAPH_SCOPE.into(),
        };
        let body = br#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity.","error_codes":[700082]}"#;
        let file = Path::new("/etc/smtp2gmail/m365-token.json");
        let error = aadsts::classify_with("http://t", body, |code| user_fix(&user, file, code));
        let fix = error.fix().unwrap();
        assert!(
            fix.contains("authorize --microsoft --token-file /etc/smtp2gmail/m365-token.json"),
            "{fix}"
        );
        assert!(!error.is_temporary());
    }
}
