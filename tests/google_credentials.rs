//! Loading credentials: every file format people already have, recognised by content, with
//! errors that name the file and key and never a secret.

mod common;

use std::path::{Path, PathBuf};

use common::fake_google::{
    CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, SERVICE_ACCOUNT_EMAIL, service_account_json, test_key,
    token_json, write_json,
};
use serde_json::json;
use smtp2gmail::google::{
    CredentialError, CredentialKind, CredentialSpec, Credentials, DEFAULT_TOKEN_URI, Secret, load,
    resolve_secret,
};

const FAKE_URI: &str = "http://127.0.0.1:9/token";

fn load_file(
    path: &Path,
    token_uri_override: Option<&str>,
) -> Result<Credentials, CredentialError> {
    load(
        &CredentialSpec::File(path.to_path_buf()),
        token_uri_override,
    )
}

fn write(value: serde_json::Value) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_json(dir.path(), "credentials.json", &value);
    (dir, path)
}

/// Neither the message nor the Debug form may carry a secret.
#[track_caller]
fn assert_no_secrets(text: &str) {
    for secret in [
        CLIENT_SECRET,
        REFRESH_TOKEN,
        "PRIVATE KEY",
        "fake-stale-access-token",
    ] {
        assert!(!text.contains(secret), "{secret} leaked into: {text}");
    }
}

#[test]
fn quickstart_token_json_with_scopes_as_list_or_string() {
    let mut file = token_json(FAKE_URI);
    file["account"] = json!("someone@example.com");
    let (_dir, path) = write(file.clone());
    let credentials = load_file(&path, None).unwrap();
    assert_eq!(credentials.kind(), &CredentialKind::TokenFile(path.clone()));
    assert_eq!(credentials.token_uri(), FAKE_URI);
    assert_eq!(credentials.account(), Some("someone@example.com"));
    assert_eq!(credentials.client_id(), Some(CLIENT_ID));
    assert_eq!(
        credentials.scopes().unwrap(),
        ["https://www.googleapis.com/auth/gmail.send"]
    );
    assert!(!credentials.is_service_account());
    assert_eq!(
        credentials.to_string(),
        format!("refresh token from token.json file {}", path.display())
    );
    assert_no_secrets(&format!("{credentials:?}"));

    file["scopes"] = json!("openid https://www.googleapis.com/auth/gmail.send email");
    file["account"] = json!("");
    file.as_object_mut().unwrap().remove("token_uri");
    let (_dir, path) = write(file);
    let credentials = load_file(&path, None).unwrap();
    assert_eq!(credentials.scopes().unwrap().len(), 3);
    assert_eq!(
        credentials.account(),
        None,
        "google-auth writes \"\" when unknown"
    );
    assert_eq!(credentials.token_uri(), DEFAULT_TOKEN_URI);
}

#[test]
fn token_uri_override_wins_over_the_file() {
    let (_dir, path) = write(token_json("https://oauth2.googleapis.com/token"));
    let credentials = load_file(&path, Some(FAKE_URI)).unwrap();
    assert_eq!(credentials.token_uri(), FAKE_URI);

    let error = load_file(&path, Some("not a url")).unwrap_err();
    assert!(matches!(error, CredentialError::TokenUri { .. }), "{error}");
}

#[test]
fn gcloud_authorized_user_file() {
    let (_dir, path) = write(json!({
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH_TOKEN,
        "type": "authorized_user",
        "quota_project_id": "fake-project",
        "universe_domain": "googleapis.com",
    }));
    let credentials = load_file(&path, None).unwrap();
    assert_eq!(
        credentials.kind(),
        &CredentialKind::AuthorizedUser(path.clone())
    );
    assert_eq!(credentials.token_uri(), DEFAULT_TOKEN_URI);
    assert_eq!(credentials.quota_project(), Some("fake-project"));
    assert_eq!(
        credentials.to_string(),
        format!("refresh token from authorized_user file {}", path.display())
    );
}

#[test]
fn service_account_key_file() {
    let (_dir, path) = write(service_account_json(FAKE_URI));
    let credentials = load_file(&path, None).unwrap();
    assert!(credentials.is_service_account());
    assert_eq!(
        credentials.kind(),
        &CredentialKind::ServiceAccount(path.clone())
    );
    assert_eq!(
        credentials.account(),
        None,
        "the service account is not a mailbox"
    );
    assert_eq!(credentials.client_id(), Some("100000000000000000001"));
    assert_eq!(
        credentials.to_string(),
        format!(
            "service account {SERVICE_ACCOUNT_EMAIL} from {}",
            path.display()
        )
    );
    let debug = format!("{credentials:?}");
    assert_no_secrets(&debug);
    assert!(!debug.contains(&test_key().private_pem[40..80]), "{debug}");

    let mut broken = service_account_json(FAKE_URI);
    broken["private_key"] =
        json!("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n");
    let (_dir, path) = write(broken);
    let error = load_file(&path, None).unwrap_err().to_string();
    assert!(
        error.contains("private_key is not a PEM-encoded RSA private key"),
        "{error}"
    );
    assert!(error.contains(&path.display().to_string()), "{error}");
}

#[test]
fn client_secret_file_is_refused_with_the_authorize_hint() {
    for top in ["installed", "web"] {
        let (_dir, path) = write(json!({top: {
            "client_id": CLIENT_ID,
            "project_id": "fake-project",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": "https://oauth2.googleapis.com/token",
            "client_secret": CLIENT_SECRET,
            "redirect_uris": ["http://localhost"],
        }}));
        let error = load_file(&path, None).unwrap_err();
        assert!(matches!(error, CredentialError::ClientSecretFile { .. }));
        let message = error.to_string();
        assert!(
            message.contains(&format!(
                "smtp2gmail authorize --client-secret {}",
                path.display()
            )),
            "{message}"
        );
        assert!(message.contains("OAuth client file"), "{message}");
        assert_no_secrets(&message);
    }
}

#[test]
fn errors_name_the_file_and_the_key_but_not_the_value() {
    let cases: [(&str, serde_json::Value, &str); 5] = [
        ("refresh_token", json!(null), "refresh_token is missing"),
        ("client_secret", json!(""), "client_secret is missing"),
        (
            "client_secret",
            json!([CLIENT_SECRET]),
            "client_secret must be a string",
        ),
        (
            "scopes",
            json!({"a": REFRESH_TOKEN}),
            "scopes must be a list of strings or a space-separated string",
        ),
        ("expiry", json!("tomorrow"), "expiry is not a UTC timestamp"),
    ];
    for (key, value, expected) in cases {
        let mut file = token_json(FAKE_URI);
        file[key] = value;
        let (_dir, path) = write(file);
        let error = load_file(&path, None).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(expected), "{message}");
        assert!(
            message.starts_with(&path.display().to_string()),
            "{message}"
        );
        assert_no_secrets(&message);
        assert_no_secrets(&format!("{error:?}"));
    }
}

#[test]
fn files_that_are_not_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.json");
    std::fs::write(
        &garbage,
        format!("{{\"refresh_token\": \"{REFRESH_TOKEN}\""),
    )
    .unwrap();
    let message = load_file(&garbage, None).unwrap_err().to_string();
    assert!(message.contains("not valid JSON"), "{message}");
    assert_no_secrets(&message);

    let (_dir, path) = write(json!({"type": "external_account", "audience": "x"}));
    let message = load_file(&path, None).unwrap_err().to_string();
    assert!(
        message.contains("\"external_account\" are not supported"),
        "{message}"
    );

    let (_dir, path) = write(json!({"hello": "world"}));
    assert!(matches!(
        load_file(&path, None),
        Err(CredentialError::Unrecognised { .. })
    ));

    let missing = dir.path().join("missing.json");
    let message = load_file(&missing, None).unwrap_err().to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
}

#[test]
fn secrets_from_literals_files_and_the_environment() {
    assert_eq!(
        resolve_secret("plain-value").unwrap().expose(),
        "plain-value"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, format!("{CLIENT_SECRET}\n")).unwrap();
    let secret = resolve_secret(&format!("file:{}", path.display())).unwrap();
    assert_eq!(secret.expose(), CLIENT_SECRET, "trailing newline trimmed");
    assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");

    let missing = dir.path().join("nope");
    let message = resolve_secret(&format!("file:{}", missing.display()))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );

    let message = resolve_secret("env:SMTP2GMAIL_TEST_SURELY_UNSET")
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("SMTP2GMAIL_TEST_SURELY_UNSET"),
        "{message}"
    );

    // SAFETY: only this test changes the environment, and nothing in this binary reads it from C.
    unsafe {
        std::env::set_var("SMTP2GMAIL_TEST_REFRESH", REFRESH_TOKEN);
        std::env::set_var("GMAIL_API_CLIENT_ID", CLIENT_ID);
        std::env::set_var("GMAIL_API_CLIENT_SECRET", CLIENT_SECRET);
        std::env::remove_var("GMAIL_API_REFRESH_TOKEN");
        std::env::set_var("GMAIL_API_USER_ID", "me");
    }

    // Inline values, each resolved on its own (as the configuration does).
    let inline = CredentialSpec::Inline {
        client_id: CLIENT_ID.to_string(),
        client_secret: resolve_secret(&format!("file:{}", path.display())).unwrap(),
        refresh_token: resolve_secret("env:SMTP2GMAIL_TEST_REFRESH").unwrap(),
    };
    let credentials = load(&inline, Some(FAKE_URI)).unwrap();
    assert_eq!(credentials.kind(), &CredentialKind::Inline);
    assert_eq!(credentials.token_uri(), FAKE_URI);
    assert_eq!(
        credentials.to_string(),
        "refresh token from the configuration"
    );
    assert_no_secrets(&format!("{credentials:?} {inline:?}"));

    let empty = CredentialSpec::Inline {
        client_id: CLIENT_ID.to_string(),
        client_secret: Secret::new(""),
        refresh_token: Secret::new(REFRESH_TOKEN),
    };
    assert!(
        load(&empty, None)
            .unwrap_err()
            .to_string()
            .contains("client_secret is empty")
    );

    // django-gmailapi-backend's variables; the missing one is named.
    let message = load(&CredentialSpec::Environment, None)
        .unwrap_err()
        .to_string();
    assert!(message.contains("GMAIL_API_REFRESH_TOKEN"), "{message}");
    // SAFETY: as above.
    unsafe { std::env::set_var("GMAIL_API_REFRESH_TOKEN", REFRESH_TOKEN) };
    let credentials = load(&CredentialSpec::Environment, None).unwrap();
    assert_eq!(credentials.kind(), &CredentialKind::Environment);
    assert_eq!(credentials.to_string(), "environment variables GMAIL_API_*");
    assert_eq!(credentials.account(), None, "`me` names no address");
    assert_eq!(credentials.token_uri(), DEFAULT_TOKEN_URI);
    // SAFETY: as above.
    unsafe { std::env::set_var("GMAIL_API_USER_ID", "sender@example.com") };
    let credentials = load(&CredentialSpec::Environment, None).unwrap();
    assert_eq!(credentials.account(), Some("sender@example.com"));
}
