//! The operator's endpoints over real HTTP against the real binary: readiness turns 503 when Google
//! refuses the credentials and back to 200 after a new token file, and the metrics move as
//! messages flow.

mod common;

use common::assert_code;
use common::fake_google::{self, FakeGoogle};
use common::process::ServerProcess;
use common::serving::Serving;

/// The value of a metric line that starts with `series`, or 0 when it is absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A gmail-mode config using token.json in `dir`, with the HTTP endpoints on a free port.
fn gmail_config(google: &FakeGoogle, dir: &std::path::Path) {
    fake_google::write_json(
        dir,
        "token.json",
        &fake_google::token_json(&google.token_uri()),
    );
    let config = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\
         [relay]\nmode = \"gmail\"\ndelivery = \"sync\"\n[gmail]\ncredentials = \"token.json\"\napi_base = \"{}\"\n",
        google.api_base()
    );
    std::fs::write(dir.join("config.toml"), config).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_verified_at_start_not_with_the_first_message() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    gmail_config(&google, dir.path());
    let server = ServerProcess::in_dir(dir.path()).await;
    server.wait_for_log("credentials verified").await;
    assert_eq!(google.token_requests(), 1);
    assert_eq!(server.get("/readyz").await.0, 200);
    drop(server);

    // The refresh token died while the server was down (revoked, or the 7-day Testing expiry).
    google.accept_only_refresh_token(fake_google::NEW_REFRESH_TOKEN);
    let server = ServerProcess::in_dir(dir.path()).await;
    let line = server.wait_for_log("credentials need attention").await;
    assert!(line.contains("invalid_grant"), "{line}");
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("smtp2gmail authorize"), "{body}");
    assert!(
        google.uploads().is_empty(),
        "no mail was needed to find out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_credentials_and_metrics_follow_the_mail() {
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let token = dir.path().join("token.json");
    gmail_config(&google, dir.path());
    let server = ServerProcess::in_dir(dir.path()).await;

    assert_eq!(server.get("/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(server.get("/readyz").await.0, 200);
    assert_code(&common::send_simple(server.smtp).await, 250);

    // Google stops accepting the refresh token (revoked, or the 7-day Testing expiry).
    google.accept_only_refresh_token(fake_google::NEW_REFRESH_TOKEN);
    google.revoke_access_tokens();
    assert_code(&common::send_simple(server.smtp).await, 451);
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    let first = &problem["problems"][0];
    assert_eq!(first["account"], "default");
    assert!(
        first["problem"].as_str().unwrap().contains("invalid_grant"),
        "{body}"
    );
    assert!(
        first["fix"]
            .as_str()
            .unwrap()
            .contains("smtp2gmail authorize"),
        "{body}"
    );
    assert!(first["since"].as_str().unwrap().ends_with('Z'), "{body}");

    // `authorize` writes a new token file; the server picks it up without a restart.
    fake_google::write_token_atomically(&token, &fake_google::authorized_token(&google));
    server
        .wait_for_log("credentials for account default reloaded")
        .await;
    assert_code(&common::send_simple(server.smtp).await, 250);
    assert_eq!(server.get("/readyz").await.0, 200);

    let (status, metrics) = server.get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &metrics,
            "smtp2gmail_messages_received_total{outcome=\"accepted\"}"
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "smtp2gmail_messages_received_total{outcome=\"temporary\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "smtp2gmail_deliveries_total{account=\"default\",outcome=\"sent\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            "smtp2gmail_deliveries_total{account=\"default\",outcome=\"credentials\"}"
        ),
        1.0
    );
    assert!(
        metric(
            &metrics,
            "smtp2gmail_token_refreshes_total{account=\"default\",outcome=\"credentials\"}"
        ) >= 1.0
    );
    assert_eq!(metric(&metrics, "smtp2gmail_smtp_connections_total"), 3.0);
    assert!(
        metrics.contains("smtp2gmail_delivery_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("alice@example.com"),
        "addresses are never labels"
    );
}
