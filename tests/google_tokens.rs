//! Token sources against the in-process fake Google: caching, refresh before expiry, single
//! flight, invalidation, rotation written back, error classification, and secrets kept out of
//! Debug output and logs. Service accounts are in google_service_account.rs.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::fake_google::{
    CLIENT_ID, CLIENT_SECRET, ExpiresIn, FakeGoogle, Fault, REFRESH_TOKEN, token_json, write_json,
};
use common::logs::{Captured, capture_here};
use serde_json::json;
use smtp2gmail::google::{CredentialSpec, CredentialState, Secret, TokenError, TokenSource, load};

/// A fake Google and a token.json for it in a temporary directory.
struct Setup {
    fake: FakeGoogle,
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Setup {
    async fn new() -> Setup {
        Setup::with_file(|_| {}).await
    }

    /// `edit` adjusts the token.json before it is written.
    async fn with_file(edit: impl FnOnce(&mut serde_json::Value)) -> Setup {
        let fake = FakeGoogle::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut file = token_json(&fake.token_uri());
        edit(&mut file);
        let path = write_json(dir.path(), "token.json", &file);
        Setup { fake, dir, path }
    }

    fn source(&self) -> TokenSource {
        let spec = CredentialSpec::File(self.path.clone());
        TokenSource::new("test", load(&spec, None).unwrap(), reqwest::Client::new())
    }

    fn file(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&self.path).unwrap()).unwrap()
    }
}

fn rfc3339(at: SystemTime, fraction: bool) -> String {
    if fraction {
        humantime::format_rfc3339_micros(at).to_string()
    } else {
        humantime::format_rfc3339_seconds(at).to_string()
    }
}

#[tokio::test]
async fn valid_token_from_token_json_is_used_without_a_request() {
    for fraction in [true, false] {
        let expiry = rfc3339(SystemTime::now() + Duration::from_secs(3600), fraction);
        let setup = Setup::with_file(|f| f["expiry"] = json!(expiry)).await;
        let token = setup.source().access_token(None).await.unwrap();
        assert_eq!(token.expose(), "fake-stale-access-token");
        assert_eq!(setup.fake.token_requests(), 0);
    }
}

#[tokio::test]
async fn expired_or_nearly_expired_tokens_are_refreshed_then_cached() {
    // Expired (token_json's default), and four minutes left: inside the five-minute margin.
    let soon = rfc3339(SystemTime::now() + Duration::from_secs(240), true);
    for edit in [None, Some(soon)] {
        let setup = Setup::with_file(|f| {
            if let Some(expiry) = edit {
                f["expiry"] = json!(expiry);
            }
        })
        .await;
        let source = setup.source();
        assert_eq!(source.state(), CredentialState::Unknown);
        let first = source.access_token(None).await.unwrap();
        assert_eq!(first.expose(), "fake-access-1");
        assert!(matches!(source.state(), CredentialState::Ok { .. }));
        let second = source
            .access_token(Some("ignored@example.com"))
            .await
            .unwrap();
        assert_eq!(second, first, "cached, whatever the subject");
        assert_eq!(setup.fake.token_requests(), 1);
    }
}

#[tokio::test]
async fn short_lived_tokens_are_refreshed_each_time_and_expires_in_may_be_a_string() {
    let setup = Setup::new().await;
    setup.fake.set_expires_in(ExpiresIn::Text(200));
    let source = setup.source();
    let first = source.access_token(None).await.unwrap();
    assert!(first.remaining() <= Duration::from_secs(200));
    assert!(
        first.remaining() > Duration::from_secs(100),
        "string parsed: {first:?}"
    );
    let second = source.access_token(None).await.unwrap();
    assert_ne!(first, second);
    assert_eq!(setup.fake.token_requests(), 2);
}

#[tokio::test]
async fn fifty_concurrent_callers_cause_one_token_request() {
    let setup = Setup::new().await;
    let source = Arc::new(setup.source());
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let source = source.clone();
        callers.spawn(async move { source.access_token(None).await.unwrap() });
    }
    let tokens = callers.join_all().await;
    assert!(tokens.iter().all(|t| t.expose() == "fake-access-1"));
    assert_eq!(setup.fake.token_requests(), 1);
}

#[tokio::test]
async fn concurrent_callers_share_one_failure_too() {
    let setup = Setup::new().await;
    setup.fake.fail_token_requests(1, Fault::invalid_grant());
    let source = Arc::new(setup.source());
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let source = source.clone();
        callers.spawn(async move { source.access_token(None).await });
    }
    assert!(callers.join_all().await.iter().all(Result::is_err));
    assert_eq!(setup.fake.token_requests(), 1);
}

#[tokio::test]
async fn invalidate_drops_only_the_rejected_token() {
    let setup = Setup::new().await;
    let source = setup.source();
    let first = source.access_token(None).await.unwrap();
    source.invalidate(None, &first);
    let second = source.access_token(None).await.unwrap();
    assert_ne!(first, second);
    assert_eq!(setup.fake.token_requests(), 2);
    // A second delivery that failed with the old token must not cause another refresh.
    source.invalidate(None, &first);
    assert_eq!(source.access_token(None).await.unwrap(), second);
    assert_eq!(setup.fake.token_requests(), 2);
}

#[tokio::test]
async fn rotated_refresh_token_is_used_and_saved_to_the_file() {
    let setup = Setup::with_file(|f| {
        f["rapt_token"] = json!("fake-rapt-token");
        f["account"] = json!("someone@example.com");
    })
    .await;
    setup.fake.rotate_refresh_tokens();
    let source = setup.source();
    let first = source.access_token(None).await.unwrap();

    let file = setup.file();
    let rotated = format!("{REFRESH_TOKEN}-1");
    assert_eq!(file["refresh_token"], json!(rotated));
    assert_eq!(file["token"], json!(first.expose()));
    let expiry = humantime::parse_rfc3339(file["expiry"].as_str().unwrap()).unwrap();
    assert!(expiry > SystemTime::now() + Duration::from_secs(3000));
    for (key, value) in [
        ("rapt_token", json!("fake-rapt-token")),
        ("account", json!("someone@example.com")),
        ("client_secret", json!(CLIENT_SECRET)),
        ("client_id", json!(CLIENT_ID)),
        ("universe_domain", json!("googleapis.com")),
        (
            "scopes",
            json!(["https://www.googleapis.com/auth/gmail.send"]),
        ),
        ("token_uri", json!(setup.fake.token_uri())),
    ] {
        assert_eq!(file[key], value, "{key} preserved");
    }
    // Windows has no mode bits: the file takes its directory's ACL (docs/distribution.md).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&setup.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let leftovers = std::fs::read_dir(setup.dir.path()).unwrap().count();
    assert_eq!(leftovers, 1, "no temporary files left behind");

    // The fake now refuses the original token, so this only works with the rotated one.
    source.invalidate(None, &first);
    source.access_token(None).await.unwrap();
    assert_eq!(setup.fake.token_requests(), 2);
    assert_eq!(
        setup.file()["refresh_token"],
        json!(format!("{REFRESH_TOKEN}-2"))
    );
}

#[tokio::test]
async fn invalid_grant_needs_attention_with_the_authorize_command() {
    let setup = Setup::new().await;
    setup.fake.fail_token_requests(1, Fault::invalid_grant());
    let source = setup.source();
    let error = source.access_token(None).await.unwrap_err();
    let TokenError::Credentials {
        error: code,
        description,
        fix,
    } = &error
    else {
        panic!("expected a credentials error, got {error:?}");
    };
    assert_eq!(code, "invalid_grant");
    assert_eq!(description, "Token has been expired or revoked.");
    let command = format!(
        "smtp2gmail authorize --client-secret CLIENT_SECRET.json --token-file {}",
        setup.path.display()
    );
    assert!(fix.contains(&command), "{fix}");
    assert!(
        fix.contains("\"Testing\"") && fix.contains("7 days"),
        "{fix}"
    );
    let CredentialState::NeedsAttention { error: stored, .. } = source.state() else {
        panic!("state {:?}", source.state());
    };
    assert_eq!(stored, error);

    // Once the credentials work again, so does the state.
    source.access_token(None).await.unwrap();
    assert!(matches!(source.state(), CredentialState::Ok { .. }));
}

#[tokio::test]
async fn wrong_client_secret_is_invalid_client() {
    let fake = FakeGoogle::start().await;
    let spec = CredentialSpec::Inline {
        client_id: CLIENT_ID.to_string(),
        client_secret: Secret::new("fake-wrong-secret"),
        refresh_token: Secret::new(REFRESH_TOKEN),
    };
    let credentials = load(&spec, Some(&fake.token_uri())).unwrap();
    let source = TokenSource::new("inline", credentials, reqwest::Client::new());
    let error = source.access_token(None).await.unwrap_err();
    assert!(matches!(&error, TokenError::Credentials { error, .. } if error == "invalid_client"));
    let fix = error.fix().unwrap();
    assert!(
        fix.contains("client_id/client_secret") && fix.contains("token.json"),
        "{fix}"
    );
}

#[tokio::test]
async fn outages_are_temporary_and_do_not_need_attention() {
    let setup = Setup::new().await;
    let source = setup.source().with_timeout(Duration::from_millis(300));
    let internal = Fault::OAuth {
        status: 500,
        error: "internal_failure",
        description: "Backend Error",
    };
    let faults = [
        Fault::Status(503),
        internal,
        Fault::Status(429),
        Fault::Delay(Duration::from_secs(30)),
    ];
    for fault in faults {
        setup.fake.fail_token_requests(1, fault.clone());
        let error = source.access_token(None).await.unwrap_err();
        assert!(error.is_temporary(), "{fault:?} gave {error:?}");
    }
    assert_eq!(source.state(), CredentialState::Unknown);
    assert!(source.access_token(None).await.is_ok());

    // Nothing listens on a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("http://{}/token", closed.local_addr().unwrap());
    drop(closed);
    let credentials = load(&CredentialSpec::File(setup.path.clone()), Some(&uri)).unwrap();
    let error = TokenSource::new("down", credentials, reqwest::Client::new())
        .access_token(None)
        .await
        .unwrap_err();
    assert!(error.is_temporary(), "{error:?}");
}

#[tokio::test]
async fn a_token_with_a_few_minutes_left_outlives_an_outage() {
    let soon = rfc3339(SystemTime::now() + Duration::from_secs(240), false);
    let setup = Setup::with_file(|f| f["expiry"] = json!(soon)).await;
    setup.fake.fail_token_requests(1, Fault::Status(503));
    let token = setup.source().access_token(None).await.unwrap();
    assert_eq!(token.expose(), "fake-stale-access-token");
    assert_eq!(setup.fake.token_requests(), 1, "the refresh was tried");
}

#[tokio::test]
async fn replaced_credentials_start_afresh() {
    let setup = Setup::new().await;
    setup.fake.fail_token_requests(1, Fault::invalid_grant());
    let source = setup.source();
    source.access_token(None).await.unwrap_err();
    assert!(matches!(
        source.state(),
        CredentialState::NeedsAttention { .. }
    ));

    let fresh = load(&CredentialSpec::File(setup.path.clone()), None).unwrap();
    source.replace(fresh);
    assert_eq!(source.state(), CredentialState::Unknown);
    assert_eq!(
        source.access_token(None).await.unwrap().expose(),
        "fake-access-1"
    );
    assert!(matches!(source.state(), CredentialState::Ok { .. }));
}

#[tokio::test]
async fn a_wrong_token_uri_needs_attention() {
    let setup = Setup::new().await;
    let uri = format!("{}/no-such-endpoint", setup.fake.base_url());
    let credentials = load(&CredentialSpec::File(setup.path.clone()), Some(&uri)).unwrap();
    let source = TokenSource::new("misconfigured", credentials, reqwest::Client::new());
    let error = source.access_token(None).await.unwrap_err();
    assert!(!error.is_temporary(), "{error:?}");
    assert!(error.fix().unwrap().contains(&uri), "{error}");
}

#[tokio::test]
async fn secrets_stay_out_of_debug_output_and_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = capture_here(subscriber);

    let setup = Setup::new().await;
    setup.fake.rotate_refresh_tokens();
    let source = setup.source();
    let token = source.access_token(None).await.unwrap();
    setup.fake.fail_token_requests(2, Fault::invalid_grant());
    let mut errors = Vec::new();
    for _ in 0..2 {
        source.invalidate(None, &token);
        errors.push(source.access_token(None).await.unwrap_err());
    }
    let token = source.access_token(None).await.unwrap();

    let logs = captured.text();
    let debug = format!("{source:?} {token:?} {errors:?} {:?}", source.state());
    let display: String = errors.iter().map(ToString::to_string).collect();
    for text in [&logs, &debug, &display] {
        for secret in [
            CLIENT_SECRET,
            REFRESH_TOKEN,
            "fake-access-",
            "fake-stale-access-token",
        ] {
            assert!(!text.contains(secret), "{secret} leaked into: {text}");
        }
    }
    assert_eq!(
        logs.matches("credentials need attention").count(),
        1,
        "{logs}"
    );
    assert_eq!(logs.matches("credentials work again").count(), 1, "{logs}");
    assert!(logs.contains("saved the new refresh token"), "{logs}");
}
