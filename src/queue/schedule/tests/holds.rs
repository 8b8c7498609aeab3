//! Holds, pauses and pacing per Gmail mailbox, under paused tokio time.

use super::*;
use crate::queue::schedule::PRECONDITION_HOLD;

fn mailbox_problem() -> DeliveryError {
    DeliveryError::Credentials {
        account: "default".into(),
        reason: "Mail service not enabled".into(),
        fix: "turn Gmail on for the user".into(),
        scope: Scope::Mailbox,
    }
}

fn rate_limited(retry_after: Option<Duration>) -> DeliveryError {
    DeliveryError::Temporary {
        status: Status::CONGESTION,
        reason: "Gmail API 429 rateLimitExceeded".into(),
        retry_after,
        cause: Cause::RateLimit,
    }
}

fn precondition() -> DeliveryError {
    DeliveryError::Temporary {
        status: Status::NO_ANSWER,
        reason: "Gmail API 400 failedPrecondition: Precondition check failed.".into(),
        retry_after: None,
        cause: Cause::Precondition,
    }
}

/// Collects every attempt reported so far (without waiting).
fn drain(harness: &mut Harness) -> Vec<(String, Instant)> {
    std::iter::from_fn(|| harness.attempts.try_recv().ok()).collect()
}

#[tokio::test(start_paused = true)]
async fn held_mail_goes_out_at_once_when_new_credentials_arrive() {
    let mut harness = Harness::start(config()).await;
    *harness.courier.revoked.lock().unwrap() = true;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(harness.queue("default", vec![]).await);
    }
    // Simulated hours pass with the token revoked.
    tokio::time::sleep(5 * HOUR).await;
    let tried = drain(&mut harness).len();
    assert!(
        tried <= 5 + 6,
        "{tried} attempts in 5 hours: a paused account sends one probe an hour"
    );
    // `authorize` writes a new token file: the credentials change.
    *harness.courier.revoked.lock().unwrap() = false;
    *harness.courier.generation.lock().unwrap() = 2;
    let changed_at = Instant::now();
    for id in &ids {
        harness.delivered(id).await;
    }
    let took = Instant::now() - changed_at;
    // 20 messages at the test's 1000/s and five at a time: the backoff of 1 h is not waited.
    assert!(
        took < Duration::from_secs(5),
        "all 20 delivered {took:?} after the new token"
    );
}

#[tokio::test(start_paused = true)]
async fn a_paused_account_probes_with_one_mailbox_not_all() {
    let mut harness = Harness::start(config()).await;
    *harness.courier.revoked.lock().unwrap() = true;
    for n in 0..50 {
        harness
            .queue_as("default", &format!("user{n}@example.com"), vec![])
            .await;
    }
    tokio::time::sleep(3 * HOUR + MINUTE).await;
    let tried = drain(&mut harness).len();
    // The first wave (up to five per mailbox, all fail) is every mailbox once at most; after
    // that one probe an hour.
    assert!(
        tried <= 50 + 3,
        "{tried} attempts: probes must not try every mailbox"
    );
    assert!(
        tried >= 3,
        "{tried} attempts: the account is probed every hour"
    );
}

#[tokio::test(start_paused = true)]
async fn a_mailbox_at_its_daily_limit_does_not_defer_the_accounts_other_mailboxes() {
    let mut harness = Harness::start(config()).await;
    let limited = harness
        .queue_as(
            "default",
            "busy@example.com",
            vec![rate_limited(Some(6 * HOUR))],
        )
        .await;
    let (_, limited_at) = harness.attempt().await;
    harness.settled(&limited, Place::Queue).await;
    let waiting = harness
        .queue_as("default", "busy@example.com", vec![])
        .await;
    let other = harness
        .queue_as("default", "quiet@example.com", vec![])
        .await;
    let (id, at) = harness.attempt().await;
    assert_eq!(id, other, "the other mailbox is served at once");
    assert!(at - limited_at < Duration::from_secs(2));
    for _ in 0..2 {
        let (id, at) = harness.attempt().await;
        assert!([&limited, &waiting].contains(&&id));
        assert!(at - limited_at >= 6 * HOUR, "sent during the deferral");
    }
}

#[tokio::test(start_paused = true)]
async fn each_mailbox_has_its_own_send_rate() {
    let mut harness = Harness::start(QueueConfig {
        max_send_rate: 1.0,
        ..QueueConfig::default()
    })
    .await;
    for n in 0..10 {
        harness.queue_as("default", "a@example.com", vec![]).await;
        harness
            .queue_as("default", &format!("user{n}@example.com"), vec![])
            .await;
    }
    let mut starts = Vec::new();
    for _ in 0..20 {
        starts.push(harness.attempt().await.1);
    }
    let took = starts[19] - starts[0];
    // a@ sends ten at 1/s (9 s); the ten other users go at once. One shared budget: 19 s.
    assert!(took < Duration::from_secs(11), "20 sends took {took:?}");
    assert!(took >= Duration::from_secs(9), "a@ kept its rate: {took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_mailbox_problem_holds_that_mailbox_only_until_retried() {
    let mut harness = Harness::start(config()).await;
    let held = harness
        .queue_as("default", "nogmail@example.com", vec![mailbox_problem()])
        .await;
    harness.attempt().await;
    harness.settled(&held, Place::Queue).await;
    let later = harness
        .queue_as("default", "nogmail@example.com", vec![])
        .await;
    let other = harness
        .queue_as("default", "fine@example.com", vec![])
        .await;
    let (id, _) = harness.attempt().await;
    assert_eq!(id, other);
    harness.delivered(&other).await;
    tokio::time::sleep(30 * MINUTE).await;
    assert!(drain(&mut harness).is_empty(), "the held mailbox sent");
    // The operator turned Gmail on and says so.
    harness
        .spool
        .submit(&Request::Retry {
            id: Some(held.clone()),
        })
        .unwrap();
    harness.delivered(&held).await;
    harness.delivered(&later).await;
}

#[tokio::test(start_paused = true)]
async fn a_held_mailbox_resumes_when_the_credentials_generation_changes() {
    // What SIGHUP does when the fix was made at Google's end: the same credentials, looked at
    // again.
    let mut harness = Harness::start(config()).await;
    let held = harness
        .queue_as("default", "nogmail@example.com", vec![mailbox_problem()])
        .await;
    harness.attempt().await;
    harness.settled(&held, Place::Queue).await;
    tokio::time::sleep(10 * MINUTE).await;
    *harness.courier.generation.lock().unwrap() = 2;
    let changed_at = Instant::now();
    let (id, at) = harness.attempt().await;
    assert_eq!(id, held);
    assert!(at - changed_at < Duration::from_secs(2));
    harness.delivered(&held).await;
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_halves_the_mailboxs_pace_which_then_recovers() {
    let mut harness = Harness::start(QueueConfig {
        max_send_rate: 1.0,
        ..QueueConfig::default()
    })
    .await;
    let first = harness.queue("default", vec![rate_limited(None)]).await;
    let (_, limited_at) = harness.attempt().await;
    harness.settled(&first, Place::Queue).await;
    for _ in 0..120 {
        harness.queue("default", vec![]).await;
    }
    let mut starts = vec![limited_at];
    for _ in 0..100 {
        starts.push(harness.attempt().await.1);
    }
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps[1] >= Duration::from_millis(1900),
        "right after the 429 the mailbox sends at half its rate: {:?}",
        gaps[1]
    );
    let late = gaps[80..].iter().max().unwrap();
    assert!(
        *late <= Duration::from_millis(1050),
        "the rate came back: {late:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn repeated_failed_preconditions_hold_the_mailbox() {
    let mut harness = Harness::start(config()).await;
    let id = harness.queue("default", vec![precondition(); 10]).await;
    let mut starts = Vec::new();
    for _ in 0..PRECONDITION_HOLD {
        starts.push(harness.attempt().await.1);
    }
    // Retried with backoff first: 1, 2, 4, 8 minutes.
    assert_jittered(starts[1] - starts[0], MINUTE, "after the first");
    // Then held: the next backoff would be 16 min; the hold lasts retry_max.
    tokio::time::sleep(50 * MINUTE).await;
    assert!(drain(&mut harness).is_empty(), "retried while held");
    // What the scheduler holds, readiness is told about.
    let noted = harness.courier.noted.lock().unwrap().clone();
    assert_eq!(noted, [("default".to_string(), None)]);
    let (again, at) = harness.attempt().await;
    assert_eq!(again, id);
    let held_for = at - starts[PRECONDITION_HOLD as usize - 1];
    assert!(
        held_for >= HOUR && held_for < HOUR + Duration::from_secs(2),
        "probed after {held_for:?}"
    );
}
