//! Holds: a mailbox without Gmail holds that mailbox's mail (and no other sender's) until it is
//! fixed, with the fix reported; an account whose token died holds its mail, says the fix once,
//! and `queue list` shows the mail as held rather than giving it a due time.

use smtp2gmail::config::GmailConfig;
use smtp2gmail::queue::record::Place;

use crate::bench::{Backend, Bench, Waits, hour_long_backoff};
use crate::common::fake_gmail::SendFault;
use crate::common::fake_google::{self, FakeGoogle, NEW_REFRESH_TOKEN};
use crate::common::serving::{Serving, queued_id};
use crate::common::{assert_code, send_simple};

async fn mail_service_not_enabled_holds_the_mail_reports_the_fix_and_sighup_resumes(
    backend: Backend,
) {
    let bench = Bench::new(backend).await;
    let google = &bench.google;
    google.fail_sends_from("app@example.com", SendFault::mail_service_not_enabled());
    let queued = bench.serve_with(hour_long_backoff).await;
    let id = queued_id(&queued.send(&["alice@example.com"]).await);
    queued.store().until_attempted(1).await;
    // Held, not a dead letter; the account reports the problem with its fix.
    assert_eq!(queued.store().count(Place::Dead).await.unwrap(), 0);
    let account = queued.account("default");
    let problems = account.attention();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].1.fix.contains("turn Gmail on"), "{problems:?}");
    // An administrator turns Gmail on; the operator sends SIGHUP.
    google.clear_faults_from("app@example.com");
    assert_eq!(
        queued.handle().reload("SIGHUP").await,
        0,
        "same credentials"
    );
    google.wait_for_uploads(1).await;
    queued.store().until(Place::Queue, 0).await;
    assert!(account.attention().is_empty(), "cleared by the delivery");
    assert!(!queued.store().contains(Place::Dead, &id).await.unwrap());
    queued.stop().await;
}
on_both_backends!(mail_service_not_enabled_holds_the_mail_reports_the_fix_and_sighup_resumes);

/// A service account sending as each envelope sender of example.com.
fn service_account(google: &FakeGoogle, dir: &std::path::Path) -> GmailConfig {
    let key = fake_google::service_account_json(&google.token_uri());
    google.trust_service_account(&key);
    GmailConfig {
        api_base: google.api_base(),
        credentials: Some(fake_google::write_json(dir, "sa.json", &key)),
        senders: vec!["*@example.com".into()],
        ..GmailConfig::default()
    }
}

async fn one_user_without_gmail_does_not_hold_the_other_senders(backend: Backend) {
    let bench = Bench::new(backend).await;
    let google = &bench.google;
    let gmail = service_account(google, bench.dir.path());
    google.fail_sends_from("nogmail@example.com", SendFault::mail_service_not_enabled());
    let queued = bench
        .serve_with(|config| {
            config.gmail = gmail;
            hour_long_backoff(config);
        })
        .await;
    let held = queued
        .send_as("nogmail@example.com", &["alice@example.com"])
        .await;
    let held = queued_id(&held);
    queued.store().until_attempted(1).await;
    for n in 0..3 {
        let sender = format!("user{n}@example.com");
        queued_id(&queued.send_as(&sender, &["alice@example.com"]).await);
    }
    google.wait_for_uploads(3).await;
    let senders: Vec<_> = google
        .uploads()
        .into_iter()
        .filter_map(|u| u.from)
        .collect();
    assert!(!senders.contains(&"nogmail@example.com".to_string()));
    // One mailbox's problem is reported for that mailbox, not as the account's.
    let account = queued.account("default");
    let problems = account.attention();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].0.as_deref(), Some("nogmail@example.com"));
    // Its message waits.
    queued.store().until(Place::Queue, 1).await;
    assert_eq!(queued.store().ids(Place::Queue).await, [held]);
    queued.stop().await;
}
on_both_backends!(one_user_without_gmail_does_not_hold_the_other_senders);

/// A token that dies while mail is queued: the fix is told once (the account's warning, and
/// `/readyz` beside the problem, not inside it), each held message's log line names the problem
/// without the paragraph, and `queue list` says the mail is held rather than giving it a due time.
async fn a_dead_token_is_told_once_with_its_fix_and_held_mail_says_so(backend: Backend) {
    let bench = Bench::new(backend).await;
    bench.google.accept_only_refresh_token(NEW_REFRESH_TOKEN);
    let served = bench.process(&bench.config()).await;
    for _ in 0..3 {
        assert_code(&send_simple(served.smtp).await, 250);
    }
    let held = served.wait_for_log("held: its account's credentials").await;
    assert!(!held.contains("authorize"), "{held}");
    let fix = "smtp2gmail authorize";
    let log = served.log();
    let with_fix: Vec<&String> = log.iter().filter(|l| l.contains(fix)).collect();
    assert_eq!(with_fix.len(), 1, "the fix once in the log: {log:#?}");
    assert!(
        with_fix[0].contains("credentials need attention"),
        "{log:#?}"
    );

    let (_, body) = served.get("/readyz").await;
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    let problems = ready["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "one problem for one dead token: {body}");
    assert!(
        problems[0]["problem"]
            .as_str()
            .unwrap()
            .contains("invalid_grant"),
        "{body}"
    );
    assert_eq!(body.matches(fix).count(), 1, "{body}");

    let (ok, list) = served.queue_command(&["list"]).await;
    assert!(ok, "{list}");
    assert!(list.contains("HELD: its account's credentials"), "{list}");
    assert!(!list.contains("next"), "no due time for held mail: {list}");
    served.stop().await;
}
on_both_backends!(a_dead_token_is_told_once_with_its_fix_and_held_mail_says_so [flavor = "multi_thread", worker_threads = 2]);
