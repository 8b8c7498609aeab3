//! Service accounts with domain-wide delegation: one signed JWT per impersonated user, checked
//! by the fake the way Google checks it (signature, kid, aud, iss, scope, lifetime), and refusals
//! that say what an administrator must do.

mod common;

use common::fake_google::{FakeGoogle, Fault, service_account_json, test_key, write_json};
use smtp2gmail::google::{CredentialSpec, CredentialState, TokenError, TokenSource, load};

/// A token source for the fake's service account, and the fake trusting its key.
async fn service_account() -> (FakeGoogle, tempfile::TempDir, TokenSource) {
    let fake = FakeGoogle::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_json(
        dir.path(),
        "sa.json",
        &service_account_json("https://oauth2.googleapis.com/token"),
    );
    // The override wins, so the JWT's audience must be the fake's URI.
    let credentials = load(&CredentialSpec::File(path), Some(&fake.token_uri())).unwrap();
    let source = TokenSource::new("workspace", credentials, reqwest::Client::new());
    (fake, dir, source)
}

#[tokio::test]
async fn service_account_tokens_are_per_impersonated_user() {
    let (fake, _dir, source) = service_account().await;
    fake.trust_service_account(&test_key().public_pem);
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

    let error = source.access_token(None).await.unwrap_err();
    assert!(matches!(&error, TokenError::Credentials { error, .. } if error == "missing_subject"));
    assert_eq!(fake.token_requests(), 2, "no request without a subject");
}

#[tokio::test]
async fn service_account_refusals_explain_the_fix() {
    let (fake, _dir, source) = service_account().await;
    // The fake trusts no key yet: the signature check fails, as with a deleted key.
    let error = source
        .access_token(Some("alice@example.com"))
        .await
        .unwrap_err();
    assert!(matches!(&error, TokenError::Credentials { error, .. } if error == "invalid_grant"));
    assert!(
        error.fix().unwrap().contains("alice@example.com"),
        "{error}"
    );

    fake.fail_token_requests(
        1,
        Fault::OAuth {
            status: 401,
            error: "unauthorized_client",
            description: "Client is unauthorized to retrieve access tokens using this method.",
        },
    );
    let error = source
        .access_token(Some("alice@example.com"))
        .await
        .unwrap_err();
    let fix = error.fix().unwrap();
    assert!(
        fix.contains("domain-wide delegation") && fix.contains("100000000000000000001"),
        "{fix}"
    );
    assert!(fix.contains("24 hours"), "{fix}");
    assert!(matches!(
        source.state(),
        CredentialState::NeedsAttention { .. }
    ));
}
