//! The credential files the fake Google accepts, written as Google's tools write them: a
//! quickstart token.json, a gcloud `authorized_user` file, a service account key (with a key pair
//! made for the test run). Re-exported by fake_google.rs, where tests import them from.

use std::sync::OnceLock;

use serde_json::json;

use super::fake_google::{
    CLIENT_ID, CLIENT_SECRET, FakeGoogle, GMAIL_SEND, REFRESH_TOKEN, SERVICE_ACCOUNT_EMAIL,
    SERVICE_ACCOUNT_KEY_ID,
};

/// A throwaway RSA key pair, generated once per test binary so no private key is ever committed.
pub struct TestKey {
    /// PKCS#8 PEM, as in a service account key file.
    pub private_pem: String,
    /// SubjectPublicKeyInfo PEM, for the fake to verify signatures.
    pub public_pem: String,
}

/// The key pair for this test binary (openssl, 2048 bits, like Google's keys).
pub fn test_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("key.pem");
        let public = dir.path().join("pub.pem");
        let openssl = |args: &[&std::ffi::OsStr]| {
            // Captured, so its progress dots do not clutter test output.
            let output = std::process::Command::new("openssl")
                .args(args)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "openssl {args:?}: {stderr}");
        };
        openssl(&[
            "genpkey".as_ref(),
            "-algorithm".as_ref(),
            "RSA".as_ref(),
            "-pkeyopt".as_ref(),
            "rsa_keygen_bits:2048".as_ref(),
            "-out".as_ref(),
            private.as_os_str(),
        ]);
        openssl(&[
            "pkey".as_ref(),
            "-in".as_ref(),
            private.as_os_str(),
            "-pubout".as_ref(),
            "-out".as_ref(),
            public.as_os_str(),
        ]);
        TestKey {
            private_pem: std::fs::read_to_string(&private).unwrap(),
            public_pem: std::fs::read_to_string(&public).unwrap(),
        }
    })
}

/// A gcloud `authorized_user` file (`gcloud auth application-default login`) the fake accepts,
/// with `quota_project_id` when given.
pub fn authorized_user_json(token_uri: &str, quota_project: Option<&str>) -> serde_json::Value {
    let mut file = json!({
        "account": "",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH_TOKEN,
        "token_uri": token_uri,
        "type": "authorized_user",
        "universe_domain": "googleapis.com",
    });
    if let Some(project) = quota_project {
        file["quota_project_id"] = project.into();
    }
    file
}

/// A quickstart `token.json` the fake accepts, as google-auth's `Credentials.to_json()` writes it:
/// no `type`, an expired access token, scopes as a list.
pub fn token_json(token_uri: &str) -> serde_json::Value {
    json!({
        "token": "fake-stale-access-token",
        "refresh_token": REFRESH_TOKEN,
        "token_uri": token_uri,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scopes": [GMAIL_SEND],
        "universe_domain": "googleapis.com",
        "account": "",
        "expiry": "2020-01-01T00:00:00.000000Z",
    })
}

/// A service account key file for [`SERVICE_ACCOUNT_EMAIL`] with [`test_key`]'s private half.
pub fn service_account_json(token_uri: &str) -> serde_json::Value {
    json!({
        "type": "service_account",
        "project_id": "fake-project",
        "private_key_id": SERVICE_ACCOUNT_KEY_ID,
        "private_key": test_key().private_pem,
        "client_email": SERVICE_ACCOUNT_EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com",
    })
}

/// Writes `value` as `name` in `dir` and returns the path.
pub fn write_json(
    dir: &std::path::Path,
    name: &str,
    value: &serde_json::Value,
) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    path
}

/// The refresh token a new authorization yields (see [`authorized_token`]).
pub const NEW_REFRESH_TOKEN: &str = "fake-refresh-token-from-authorize";

/// What `authorize` would write after the user consented again.
pub fn authorized_token(google: &FakeGoogle) -> serde_json::Value {
    let mut token = token_json(&google.token_uri());
    token["refresh_token"] = NEW_REFRESH_TOKEN.into();
    token
}

/// Writes a token.json the way `authorize` does: a new file renamed over the old one.
pub fn write_token_atomically(path: &std::path::Path, token: &serde_json::Value) {
    let temporary = path.with_extension("json.new");
    std::fs::write(&temporary, serde_json::to_vec_pretty(token).unwrap()).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}
