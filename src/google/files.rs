//! The JSON credential files people already have, read as they are, and the one write-back we do:
//! saving a rotated refresh token into the token file it came from.
//!
//! Files are parsed into `serde_json::Value` and picked apart by hand rather than into typed
//! structs, because serde's type errors quote the offending value, and that value may be a secret.

use crate::safeio;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use jsonwebtoken::EncodingKey;
use serde_json::{Map, Value};

use super::credential_error::CredentialError;
use super::credentials::{CredentialKind, Credentials, Grant, ServiceAccountKey};
use super::{DEFAULT_TOKEN_URI, Secret};

/// Reads a credentials file and works out what it is from its keys.
pub(crate) fn load(path: &Path) -> Result<Credentials, CredentialError> {
    let Value::Object(map) = read_json(path)? else {
        return Err(CredentialError::Unrecognised {
            path: path.to_path_buf(),
        });
    };
    let fields = Fields::new(path, &map, key_error);
    match shape(&map) {
        Shape::ClientSecret => Err(CredentialError::ClientSecretFile {
            path: path.to_path_buf(),
        }),
        Shape::ServiceAccount => service_account(&fields),
        Shape::AuthorizedUser => {
            refresh_token(&fields, CredentialKind::AuthorizedUser(path.to_path_buf()))
        }
        // `required` also reports a `type` that is not a string.
        Shape::OtherType => Err(CredentialError::UnsupportedType {
            path: path.to_path_buf(),
            kind: fields.required("type")?.to_string(),
        }),
        Shape::TokenFile => refresh_token(&fields, CredentialKind::TokenFile(path.to_path_buf())),
        Shape::Unknown => Err(CredentialError::Unrecognised {
            path: path.to_path_buf(),
        }),
    }
}

/// Reads and parses a JSON file; errors name the file and a position, never content.
pub(crate) fn read_json(path: &Path) -> Result<Value, CredentialError> {
    let text = std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| CredentialError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// What a Google JSON file is, judged by its keys. Shared by credential loading and `authorize`,
/// which must each recognise the other's file when a user hands over the wrong one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `installed` or `web`: an OAuth client (client_secret.json), not a token.
    ClientSecret,
    /// `"type": "service_account"`.
    ServiceAccount,
    /// `"type": "authorized_user"` (gcloud).
    AuthorizedUser,
    /// Another `type` (e.g. `external_account`), or one that is not a string.
    OtherType,
    /// A quickstart token.json: no `type`, but the keys a refresh needs.
    TokenFile,
    /// None of these.
    Unknown,
}

/// Classifies a JSON object; see [`Shape`].
pub(crate) fn shape(map: &Map<String, Value>) -> Shape {
    if ["installed", "web"]
        .iter()
        .any(|k| map.get(*k).is_some_and(Value::is_object))
    {
        return Shape::ClientSecret;
    }
    // Absent, null and "" all mean "no type", as everywhere in these files.
    let kind = map
        .get("type")
        .filter(|v| !v.is_null() && v.as_str() != Some(""));
    match kind.map(|v| v.as_str()) {
        Some(Some("service_account")) => Shape::ServiceAccount,
        Some(Some("authorized_user")) => Shape::AuthorizedUser,
        Some(_) => Shape::OtherType,
        // token.json has no `type`; recognise it by the keys it cannot do without.
        None if ["refresh_token", "client_id", "client_secret"]
            .iter()
            .any(|k| map.contains_key(*k)) =>
        {
            Shape::TokenFile
        }
        None => Shape::Unknown,
    }
}

/// A quickstart token.json or a gcloud authorized_user file.
fn refresh_token(
    fields: &Fields<CredentialError>,
    kind: CredentialKind,
) -> Result<Credentials, CredentialError> {
    let mut credentials = Credentials::refresh_token(
        kind,
        fields.required("client_id")?.to_string(),
        Secret::new(fields.required("client_secret")?),
        Secret::new(fields.required("refresh_token")?),
    );
    credentials.token_uri = fields.token_uri()?;
    credentials.account = fields.optional("account")?.map(str::to_string);
    credentials.scopes = fields.scopes()?;
    credentials.quota_project = fields.optional("quota_project_id")?.map(str::to_string);
    credentials.cached_token = fields.cached_token()?;
    Ok(credentials)
}

/// A service account key file.
fn service_account(fields: &Fields<CredentialError>) -> Result<Credentials, CredentialError> {
    let key = EncodingKey::from_rsa_pem(fields.required("private_key")?.as_bytes())
        .map_err(|_| fields.invalid("private_key", "is not a PEM-encoded RSA private key"))?;
    let key = ServiceAccountKey {
        client_email: fields.required("client_email")?.to_string(),
        audience: fields.token_uri()?,
        client_id: fields.optional("client_id")?.map(str::to_string),
        private_key_id: fields.optional("private_key_id")?.map(str::to_string),
        key,
    };
    Ok(Credentials {
        kind: CredentialKind::ServiceAccount(fields.path.to_path_buf()),
        grant: Grant::ServiceAccount(key),
        token_uri: fields.token_uri()?,
        account: None,
        scopes: None,
        // google-auth honours it in key files too.
        quota_project: fields.optional("quota_project_id")?.map(str::to_string),
        cached_token: None,
    })
}

/// One JSON object and the file it came from, for errors that name both. Generic over the error
/// type so that credential files and client-secret files (`authorize`) share the same key checks.
pub(crate) struct Fields<'a, E> {
    path: &'a Path,
    map: &'a Map<String, Value>,
    /// Builds the caller's error for a bad key: (file, key, problem).
    error: fn(PathBuf, &'static str, &'static str) -> E,
}

pub(crate) fn key_error(
    path: PathBuf,
    key: &'static str,
    problem: &'static str,
) -> CredentialError {
    CredentialError::Key { path, key, problem }
}

impl<'a, E> Fields<'a, E> {
    /// The object `map` read from `path`.
    pub(crate) fn new(
        path: &'a Path,
        map: &'a Map<String, Value>,
        error: fn(PathBuf, &'static str, &'static str) -> E,
    ) -> Self {
        Fields { path, map, error }
    }

    /// The object itself, for keys that are not strings.
    pub(crate) fn map(&self) -> &'a Map<String, Value> {
        self.map
    }

    /// The error for `key` with `problem` (never the value: it may be a secret).
    pub(crate) fn invalid(&self, key: &'static str, problem: &'static str) -> E {
        (self.error)(self.path.to_path_buf(), key, problem)
    }

    /// A string value; absent, null and "" all mean "not given" (google-auth writes `"account": ""`).
    pub(crate) fn optional(&self, key: &'static str) -> Result<Option<&'a str>, E> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.invalid(key, "must be a string")),
        }
    }

    /// A string value that must be given.
    pub(crate) fn required(&self, key: &'static str) -> Result<&'a str, E> {
        self.optional(key)?
            .ok_or_else(|| self.invalid(key, "is missing"))
    }
}

impl Fields<'_, CredentialError> {
    pub(crate) fn token_uri(&self) -> Result<String, CredentialError> {
        let uri = self.optional("token_uri")?.unwrap_or(DEFAULT_TOKEN_URI);
        oauth2::TokenUrl::new(uri.to_string())
            .map_err(|_| self.invalid("token_uri", "is not a valid URL"))?;
        Ok(uri.to_string())
    }

    /// google-auth writes a list; older tools and hand-made files a space-separated string.
    pub(crate) fn scopes(&self) -> Result<Option<Vec<String>>, CredentialError> {
        let problem = "must be a list of strings or a space-separated string";
        match self.map.get("scopes") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.split_whitespace().map(str::to_string).collect())),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| self.invalid("scopes", problem)),
            Some(_) => Err(self.invalid("scopes", problem)),
        }
    }

    /// `token` with its `expiry`. A token without an expiry is ignored rather than trusted
    /// forever (google-auth would treat it as never expiring); an expired one is harmless.
    pub(crate) fn cached_token(&self) -> Result<Option<(Secret, SystemTime)>, CredentialError> {
        let (Some(token), Some(expiry)) = (self.optional("token")?, self.optional("expiry")?)
        else {
            return Ok(None);
        };
        // google-auth writes naive UTC plus "Z", with microseconds only when non-zero;
        // the weak parser also takes the Z-less form older versions wrote.
        let expiry = humantime::parse_rfc3339_weak(expiry).map_err(|_| {
            self.invalid("expiry", "is not a UTC timestamp like 2025-06-27T08:38:04Z")
        })?;
        Ok(Some((Secret::new(token), expiry)))
    }
}

/// What happened to a rotated refresh token.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Saved {
    /// Written to the file.
    Written,
    /// Someone else changed the file's refresh token meanwhile (e.g. `authorize`); theirs wins.
    FileChanged,
    /// The credentials did not come from a file.
    NoFile,
}

/// Writes a rotated refresh token (and, for token.json, the access token and expiry that came
/// with it) into the file the credentials were loaded from, keeping every other key. Only
/// replaces `previous`: a file that now holds a different refresh token is left alone.
pub(crate) fn save_rotated(
    kind: &CredentialKind,
    previous: &Secret,
    refresh_token: &Secret,
    access_token: &Secret,
    expiry: SystemTime,
) -> io::Result<Saved> {
    let (path, with_access_token) = match kind {
        CredentialKind::TokenFile(path) | CredentialKind::EntraUser(path) => (path, true),
        // gcloud's format has no access token; keep the file in gcloud's shape.
        CredentialKind::AuthorizedUser(path) => (path, false),
        _ => return Ok(Saved::NoFile),
    };
    let text = std::fs::read_to_string(path)?;
    let mut value: Value = serde_json::from_str(&text).map_err(io::Error::other)?;
    let map = value
        .as_object_mut()
        .ok_or_else(|| io::Error::other("no longer a JSON object"))?;
    if map.get("refresh_token").and_then(Value::as_str) != Some(previous.expose()) {
        return Ok(Saved::FileChanged);
    }
    map.insert("refresh_token".into(), refresh_token.expose().into());
    if with_access_token {
        map.insert("token".into(), access_token.expose().into());
        let expiry = humantime::format_rfc3339_seconds(expiry).to_string();
        map.insert("expiry".into(), expiry.into());
    }
    write_json(path, &value)?;
    Ok(Saved::Written)
}

/// Writes `value` as pretty JSON to `path`, atomically and private (see [`write_atomically`]).
pub(crate) fn write_json(path: &Path, value: &Value) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write_atomically(path, &bytes)
}

/// Replaces `path` so that a crash leaves either the old or the new file, never half of one, and
/// the rename itself survives a power cut.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    safeio::write_atomically(path, bytes)?;
    safeio::sync_dir(&safeio::parent_dir(path))
}
