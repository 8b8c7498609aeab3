//! Service accounts with domain-wide delegation: one signed JWT per impersonated user, checked
//! by the fake the way Google checks it (signature, kid, aud = the key file's token_uri, iss,
//! scope, lifetime, delegation, the user's existence in the domain), and refusals that tell a
//! sender's problem from the key's.

mod common;

use common::fake_google::{FakeGoogle, service_account_json, write_json};
use smtp2gmail::google::{CredentialSpec, CredentialState, TokenError, TokenSource, load};

/// Google's token endpoint, as every real key file names it.
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// A token source for the fake's service account, whose key file names Google's token endpoint
/// while the configured override sends the requests to the fake; the fake trusts the key.
async fn service_account() -> (FakeGoogle, tempfile::TempDir, TokenSource) {
    let fake = FakeGoogle::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = service_account_json(GOOGLE_TOKEN_URI);
    fake.trust_service_account(&key);
    let path = write_json(dir.path(), "sa.json", &key);
    let credentials = load(&CredentialSpec::File(path), Some(&fake.token_uri())).unwrap();
    let source = TokenSource::new("workspace", credentials, reqwest::Client::new());
    (fake, dir, source)
}

#[tokio::test]
async fn service_account_tokens_are_per_impersonated_user() {
    let (fake, _dir, source) = service_account().await;
    let alice = source
        .access_token(Some("alice@example.com"))
        .await
        .unwrap();
    assert_eq!(
        source
            .access_token(Some("alice@example.com"))
            .await
            .unwrap(),
        alice
    );
    let bob = source.access_token(Some("bob@example.com")).await.unwrap();
    assert_ne!(alice, bob);
    assert_eq!(
        fake.subjects(),
        ["alice@example.com", "bob@example.com"],
        "{:?}",
        fake.rejections()
    );
    assert_eq!(alice.scopes(), None, "Google's answer names no scope");

    let error = source.access_token(None).await.unwrap_err();
    assert!(matches!(&error, TokenError::Credentials { error, .. } if error == "missing_subject"));
    assert_eq!(fake.token_requests(), 2, "no request without a subject");
}

/// The JWT is for Google's endpoint as the key file names it, even when the configuration sends
/// the request elsewhere (a proxy, a test): Google checks `aud` against its own URI.
#[tokio::test]
async fn the_jwt_audience_is_the_key_files_token_uri_not_the_override() {
    let (fake, _dir, source) = service_account().await;
    assert_eq!(source.credentials().token_uri(), fake.token_uri());
    let granted = source.access_token(Some("alice@example.com")).await;
    assert!(granted.is_ok(), "{granted:?}: {:?}", fake.rejections());

    // A key file that names another endpoint is signed for that one.
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = service_account_json("https://token-proxy.example.net/token");
    let path = write_json(dir.path(), "sa.json", &elsewhere);
    let credentials = load(&CredentialSpec::File(path), Some(&fake.token_uri())).unwrap();
    let proxied = TokenSource::new("proxied", credentials, reqwest::Client::new());
    let refused = proxied.access_token(Some("alice@example.com")).await;
    assert!(refused.is_err(), "the fake expects Google's URI");
    assert!(
        fake.rejections().iter().any(|why| why.contains("Audience")),
        "{:?}",
        fake.rejections()
    );
}

#[tokio::test]
async fn an_unknown_user_is_that_senders_problem_not_the_accounts() {
    let (fake, _dir, source) = service_account().await;
    fake.set_domain_users(&["alice@example.com"]);
    let error = source
        .access_token(Some("ghost@example.com"))
        .await
        .unwrap_err();
    let TokenError::UnknownUser {
        subject,
        description,
        ..
    } = &error
    else {
        panic!("{error:?}")
    };
    assert_eq!(subject, "ghost@example.com");
    assert_eq!(description, "Invalid email or User ID");
    assert!(!error.is_account_wide() && !error.is_temporary());
    assert!(
        !matches!(source.state(), CredentialState::NeedsAttention { .. }),
        "{:?}",
        source.state()
    );
    source
        .access_token(Some("alice@example.com"))
        .await
        .unwrap();
    assert!(matches!(source.state(), CredentialState::Ok { .. }));
}

#[tokio::test]
async fn a_bad_signature_or_missing_delegation_is_the_keys_problem() {
    let (fake, _dir, source) = service_account().await;
    // A key Google does not know (another key id): refused as a deleted key is.
    let dir = tempfile::tempdir().unwrap();
    let mut other = service_account_json(GOOGLE_TOKEN_URI);
    other["private_key_id"] = "another-key".into();
    let path = write_json(dir.path(), "other.json", &other);
    let credentials = load(&CredentialSpec::File(path), Some(&fake.token_uri())).unwrap();
    let stranger = TokenSource::new("stranger", credentials, reqwest::Client::new());
    let error = stranger
        .access_token(Some("alice@example.com"))
        .await
        .unwrap_err();
    assert!(matches!(&error, TokenError::Credentials { error, .. } if error == "invalid_grant"));
    assert!(
        error.fix().unwrap().contains("alice@example.com"),
        "{error}"
    );

    fake.revoke_delegation();
    let error = source
        .access_token(Some("alice@example.com"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, TokenError::Credentials { error, .. } if error == "unauthorized_client"),
        "{error:?}"
    );
    let fix = error.fix().unwrap();
    for needed in [
        "admin.google.com",
        "Security > Access and data control > API controls > Manage Domain Wide Delegation",
        "100000000000000000001",
        "https://www.googleapis.com/auth/gmail.send",
        "24 hours",
    ] {
        assert!(fix.contains(needed), "{needed:?} missing from: {fix}");
    }
    assert!(error.is_account_wide());
    assert!(matches!(
        source.state(),
        CredentialState::NeedsAttention { .. }
    ));
}
