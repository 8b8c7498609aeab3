//! A real Postfix as the client: a private instance (temporary directory, loopback, a free port)
//! with smtp2gmail as its relayhost, and Postfix's default `smtp_destination_recipient_limit` of
//! 50. One message with 120 header recipients and 5 Bcc recipients, submitted to Postfix, reaches
//! Gmail once with every recipient named once; Postfix's queue ends empty, every recipient
//! `status=sent`, nothing bounced or deferred.
//!
//! Needs Debian's postfix: `bash tests/postfix/install.sh` installs it (without configuring or
//! starting the system's instance); `.ci/run` does so before `cargo test`. Without it the test is
//! ignored, saying how to install it (build.rs, tests/common/programs.rs).

// Postfix is a Unix program.
#![cfg(unix)]

mod common;

use common::fake_google::FakeGoogle;
use common::postfix::{Postfix, until};
use common::process::ServerProcess;
use common::programs::postfix_installed;
use common::serving::gmail_mode;
use common::split_message::{self, everyone};
use smtp2gmail::config::Delivery;

#[tokio::test]
#[cfg_attr(
    missing_postfix,
    ignore = "needs Postfix: bash tests/postfix/install.sh"
)]
async fn postfix_relaying_120_recipients_in_three_transactions_sends_once() {
    assert!(
        postfix_installed(),
        "this test needs Postfix: install it with `bash tests/postfix/install.sh` (Debian's \
         package, the system instance left unconfigured and stopped), or run everything with \
         `bash .ci/run`"
    );
    let (google, dir) = (FakeGoogle::start().await, tempfile::tempdir().unwrap());
    let config = gmail_mode(&google, dir.path(), Delivery::Queue);
    let served = ServerProcess::with_config(&config, dir.path()).await;
    // Its own directory: Postfix's daemons (user `postfix`) must be able to enter it.
    let postfix_dir = tempfile::tempdir().unwrap();
    let postfix = Postfix::start(postfix_dir.path(), served.smtp.port());

    let message = split_message::message_with_id("postfix-split-1@example.com");
    postfix
        .submit("app@example.com", &everyone(), &message)
        .await;

    google.wait_for_uploads(1).await;
    let transactions = postfix.until_relayed(125).await;
    // Each transaction got its own 250 (and queue id) from smtp2gmail.
    assert_eq!(
        transactions.len(),
        3,
        "Postfix split the 125 recipients into transactions of at most 50: {transactions:?}"
    );

    served
        .wait_for_log("transactions of a split message merged")
        .await;
    until("the held transactions to be merged and sent", || {
        std::fs::read_dir(dir.path().join("spool/held"))
            .map(|d| d.count() == 0)
            .unwrap_or(false)
            && std::fs::read_dir(dir.path().join("spool/queue"))
                .map(|d| d.count() == 0)
                .unwrap_or(false)
    })
    .await;
    // And no bounce relayed.
    split_message::assert_one_send_to_everyone(&google);
    drop(postfix);
    served.stop().await;
}
