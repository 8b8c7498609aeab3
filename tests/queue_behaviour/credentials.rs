//! Credentials resumption: mail held because the account's credentials were refused goes out
//! the moment new credentials arrive (a new token file, credentials replaced), not after the
//! backoff its failed attempts would otherwise have earned.

use std::sync::Arc;
use std::time::Duration;

use smtp2gmail::google::{CredentialSpec, load};
use smtp2gmail::queue::record::Place;
use smtp2gmail::relay::gmail::reload::CredentialWatcher;

use crate::bench::{Backend, Bench, Waits, hour_long_backoff};
use crate::common::WAIT;
use crate::common::fake_google::{
    Fault, NEW_REFRESH_TOKEN, authorized_token, write_token_atomically,
};
use crate::common::serving::{Serving, queued_id};

async fn a_new_token_file_releases_all_held_mail_at_once(backend: Backend) {
    let bench = Bench::new(backend).await;
    let google = &bench.google;
    // The refresh token in token.json is revoked: Google only knows the one `authorize` will get.
    google.accept_only_refresh_token(NEW_REFRESH_TOKEN);
    let queued = bench.serve_with(hour_long_backoff).await;
    let accounts = queued.handle().accounts().iter().cloned();
    let watcher = Arc::new(CredentialWatcher::new(accounts, Duration::from_secs(3600)));
    for _ in 0..20 {
        queued_id(&queued.send(&["alice@example.com"]).await);
    }
    queued.store().until_attempted(1).await;
    assert!(google.uploads().is_empty());
    // `smtp2gmail authorize` writes the new token file; the watcher notices it.
    let token_file = bench.config().gmail.credentials.unwrap();
    write_token_atomically(&token_file, &authorized_token(google));
    assert_eq!(watcher.poll(), 1);
    // Within seconds, not after the hour of backoff the failed attempts would otherwise wait.
    google.wait_for_uploads(20).await;
    queued.store().until(Place::Queue, 0).await;
    queued.stop().await;
}
on_both_backends!(a_new_token_file_releases_all_held_mail_at_once);

async fn dead_credentials_pause_the_account_until_new_credentials_arrive(backend: Backend) {
    let bench = Bench::new(backend).await;
    let google = &bench.google;
    let queued = bench
        .serve_with(|config| config.queue.retry_max = Duration::from_secs(3600))
        .await;
    // The server asks for a token at start; the credentials die after that, before the message.
    let verified = tokio::time::timeout(WAIT, async {
        while google.token_requests() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert!(verified.await.is_ok(), "no token request at start");
    google.fail_token_requests(1, Fault::invalid_grant());
    google.revoke_access_tokens();
    queued_id(&queued.send(&["alice@example.com"]).await);
    // The refusal is recorded, and the account waits (an hour, in this configuration).
    queued.store().until_attempted(1).await;
    // What the file watcher does when `authorize` writes a new token file.
    let token_file = bench.config().gmail.credentials.unwrap();
    let credentials = load(&CredentialSpec::File(token_file), None).unwrap();
    queued.account("default").tokens.replace(credentials);
    google.wait_for_uploads(1).await;
    queued.store().until(Place::Queue, 0).await;
    queued.stop().await;
}
on_both_backends!(dead_credentials_pause_the_account_until_new_credentials_arrive);
