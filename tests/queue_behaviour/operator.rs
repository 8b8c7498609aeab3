//! What the operator sees and does, through the `queue` commands: dead letters (a permanent
//! failure, or older than `max_age`) listed, shown and retried; `queue retry` lifting a deferral;
//! `retry --all` with and without a server; `queue delete`; queued mail surviving a restart; a
//! retry or delete of a message whose delivery is running.

use std::time::Duration;

use smtp2gmail::config::Config;
use smtp2gmail::queue::record::Place;

use crate::bench::{Backend, Bench, Waits, hour_long_backoff};
use crate::common::fake_gmail::SendFault;
use crate::common::process::ServerProcess;
use crate::common::serving::{Serving, queued_id};
use crate::common::{TestServer, WAIT};

async fn permanent_failures_become_dead_letters_that_can_be_retried_from_anywhere(
    backend: Backend,
) {
    let bench = Bench::new(backend).await;
    // Before the first message: the queue sends nothing until then.
    bench
        .google
        .fail_sends([SendFault::google(400, "invalidArgument")]);
    let queued = bench.serve().await;
    let id = queued_id(&queued.send(&["alice@example.com"]).await);
    queued.store().until(Place::Dead, 1).await;
    queued.store().until(Place::Queue, 0).await;
    for (ok, listed) in [
        queued.queue_command(&["list"]).await,
        // Another host's view: a configuration naming only the queue, none of the server's files.
        bench.queue_command(&["list"]).await,
    ] {
        assert!(
            ok && listed.contains(&id) && listed.contains("DEAD LETTER"),
            "{listed}"
        );
    }
    let (ok, shown) = bench.queue_command(&["show", &id]).await;
    assert!(
        ok && shown.contains("invalidArgument") && shown.contains("Subject: queued"),
        "{shown}"
    );
    // The spool's server carries it out (the command asks it); the database's command acts on
    // the tables and wakes the replicas.
    let (ok, retried) = bench.queue_command(&["retry", &id]).await;
    assert!(ok, "{retried}");
    bench.google.wait_for_uploads(1).await;
    queued.store().until(Place::Dead, 0).await;
    queued.store().until(Place::Queue, 0).await;
    let (ok, listed) = bench.queue_command(&["list"]).await;
    assert!(ok && listed.contains("the queue is empty"), "{listed}");
    let (ok, missing) = queued.queue_command(&["delete", &id]).await;
    assert!(!ok && missing.contains("no such message"), "{missing}");
    queued.stop().await;
}
on_both_backends!(permanent_failures_become_dead_letters_that_can_be_retried_from_anywhere);

async fn messages_older_than_max_age_become_dead_letters(backend: Backend) {
    let bench = Bench::new(backend).await;
    bench
        .google
        .fail_sends([SendFault::google(503, "backendError")]);
    let queued = bench
        .serve_with(|config| {
            config.queue.max_age = Duration::from_millis(1);
            // What a config file must say with such a max_age (the `queue` commands read it).
            config.queue.split_window = Duration::ZERO;
        })
        .await;
    let id = queued_id(&queued.send(&["alice@example.com"]).await);
    queued.store().until(Place::Dead, 1).await;
    queued.store().until(Place::Queue, 0).await;
    let (_, shown) = queued.queue_command(&["show", &id]).await;
    assert!(shown.contains("dead because: too old"), "{shown}");
    queued.stop().await;
}
on_both_backends!(messages_older_than_max_age_become_dead_letters);

async fn an_operator_retry_lifts_the_daily_limit_deferral(backend: Backend) {
    let bench = Bench::new(backend).await;
    bench.google.fail_sends([SendFault::RetryAfter {
        status: 429,
        seconds: 3 * 3600,
    }]);
    let queued = bench.serve().await;
    let id = queued_id(&queued.send(&["alice@example.com"]).await);
    queued.store().until_attempted(1).await;
    // The operator knows the limit was raised: "deliver now" must not wait three more hours.
    let (ok, out) = queued.queue_command(&["retry", &id]).await;
    assert!(ok && out.contains("will be retried now"), "{out}");
    bench.google.wait_for_uploads(1).await;
    queued.store().until(Place::Queue, 0).await;
    queued.stop().await;
}
on_both_backends!(an_operator_retry_lifts_the_daily_limit_deferral);

/// A server on `bench` with `count` messages that failed once and wait an hour.
async fn waiting(bench: &Bench, count: usize) -> TestServer {
    let failing = std::iter::repeat_n(SendFault::google(503, "backendError"), count);
    bench.google.fail_sends(failing);
    let queued = bench.serve_with(hour_long_backoff).await;
    for _ in 0..count {
        queued_id(&queued.send(&["alice@example.com"]).await);
    }
    queued.store().until_attempted(count).await;
    queued
}

async fn retry_all_sends_every_waiting_message_now(backend: Backend) {
    let bench = Bench::new(backend).await;
    let queued = waiting(&bench, 3).await;
    let (ok, out) = bench.queue_command(&["retry", "--all"]).await;
    assert!(
        ok && out.contains("3 messages will be retried now"),
        "{out}"
    );
    bench.google.wait_for_uploads(3).await;
    queued.store().until(Place::Queue, 0).await;
    queued.stop().await;
}
on_both_backends!(retry_all_sends_every_waiting_message_now);

async fn queued_messages_survive_a_restart_and_retry_all_without_a_server(backend: Backend) {
    let bench = Bench::new(backend).await;
    // Both failed once and now wait an hour; the server stops.
    waiting(&bench, 2).await.stop().await;
    assert!(bench.google.uploads().is_empty());
    // With no server running the command changes the queue itself, and says when mail goes out.
    let (ok, out) = bench.queue_command(&["retry", "--all"]).await;
    let promised = backend.retried_without_a_server(2);
    assert!(ok && out.contains(&promised), "{out}");
    // The retry was written down: the next server sends both at once, whatever the backoff.
    let queued = bench.serve_with(hour_long_backoff).await;
    bench.google.wait_for_uploads(2).await;
    queued.store().until(Place::Queue, 0).await;
    queued.stop().await;
}
on_both_backends!(queued_messages_survive_a_restart_and_retry_all_without_a_server);

async fn queue_delete_removes_waiting_mail_and_dead_letters(backend: Backend) {
    let bench = Bench::new(backend).await;
    bench.google.fail_sends([
        SendFault::google(503, "backendError"),
        SendFault::google(400, "invalidArgument"),
    ]);
    // No DSN for the dead letter: every upload would be a send of deleted mail.
    let queued = bench
        .serve_with(|config: &mut Config| {
            hour_long_backoff(config);
            config.notify.bounces = false;
        })
        .await;
    let waiting = queued_id(&queued.send(&["alice@example.com"]).await);
    queued.store().until_attempted(1).await;
    let dead = queued_id(&queued.send(&["alice@example.com"]).await);
    queued.store().until(Place::Dead, 1).await;
    for id in [&waiting, &dead] {
        let (ok, out) = bench.queue_command(&["delete", id]).await;
        assert!(ok && out.contains(&format!("{id}: deleted")), "{out}");
        let (ok, out) = bench.queue_command(&["show", id]).await;
        assert!(!ok && out.contains("no such message"), "{out}");
    }
    queued.store().until(Place::Queue, 0).await;
    queued.store().until(Place::Dead, 0).await;
    let (ok, out) = bench.queue_command(&["retry", "--all"]).await;
    assert!(
        ok && out.contains("0 messages will be retried now"),
        "{out}"
    );
    queued.stop().await;
    assert!(
        bench.google.uploads().is_empty(),
        "deleted mail is never sent"
    );
}
on_both_backends!(queue_delete_removes_waiting_mail_and_dead_letters);

/// The binary on `bench` with one message whose delivery is running, held at the fake Gmail
/// until the test releases it (the in-process server gives up on a send after 300 ms); its id.
async fn in_flight(bench: &Bench) -> (ServerProcess, String) {
    let google = &bench.google;
    google.hold_sends();
    let served = bench.process(&bench.config()).await;
    let id = queued_id(&served.send(&["alice@example.com"]).await);
    let started = tokio::time::timeout(WAIT, async {
        while google.most_concurrent_sends() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert!(started.await.is_ok(), "the delivery never started");
    (served, id)
}

/// An operator's retry of a message whose delivery is running is refused, wherever the command
/// runs: that attempt's outcome decides (sent, or due again after its backoff), so "will be
/// retried now" would be a promise the outcome then breaks.
async fn a_retry_of_a_message_being_delivered_is_refused(backend: Backend) {
    let bench = Bench::new(backend).await;
    let (served, id) = in_flight(&bench).await;
    let (ok, out) = bench.queue_command(&["retry", &id]).await;
    assert!(
        !ok && out.contains(&format!("{id}: being delivered right now")),
        "{out}"
    );
    bench.google.release_sends();
    bench.google.wait_for_uploads(1).await;
    bench.store().await.store().until(Place::Queue, 0).await;
    assert_eq!(bench.google.uploads().len(), 1);
    served.stop().await;
}
on_both_backends!(a_retry_of_a_message_being_delivered_is_refused [flavor = "multi_thread", worker_threads = 2]);

/// A message deleted while its delivery runs stays deleted: the attempt's outcome (here a
/// temporary failure) is dropped instead of writing the message back.
async fn a_message_deleted_while_being_delivered_is_not_written_back(backend: Backend) {
    let bench = Bench::new(backend).await;
    bench
        .google
        .fail_sends([SendFault::google(503, "backendError")]);
    let (served, id) = in_flight(&bench).await;
    let (ok, out) = bench.queue_command(&["delete", &id]).await;
    assert!(ok && out.contains(&format!("{id}: deleted")), "{out}");
    bench.google.release_sends();
    served.wait_for_log("deleted meanwhile").await;
    let stored = bench.store().await;
    for place in [Place::Queue, Place::Dead] {
        assert_eq!(stored.store().count(place).await.unwrap(), 0, "{place:?}");
    }
    assert!(bench.google.uploads().is_empty());
    served.stop().await;
}
on_both_backends!(a_message_deleted_while_being_delivered_is_not_written_back [flavor = "multi_thread", worker_threads = 2]);
