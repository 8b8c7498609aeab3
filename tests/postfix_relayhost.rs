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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::fake_google::FakeGoogle;
use common::process::ServerProcess;
use common::programs::{POSTFIX, postfix_installed};
use common::serving::gmail_mode;
use common::{WAIT, free_port};
use lettre::address::Envelope;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use smtp2gmail::config::Delivery;

/// A private Postfix instance; stopped when dropped, even when the test fails.
struct Postfix {
    dir: PathBuf,
    /// The port its smtpd listens on (127.0.0.1).
    port: u16,
}

impl Postfix {
    /// Configures an instance in `dir` (a new temporary directory) relaying everything to
    /// `relayhost_port`, and starts it.
    fn start(dir: &Path, relayhost_port: u16) -> Postfix {
        // Postfix's daemons run as the `postfix` user and must reach their queue directory.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        // The queue directory must exist (owned by root); `postfix start` creates the rest,
        // the data directory included (which must belong to `postfix`).
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(dir.join("queue")).unwrap();
        let port = free_port();
        let d = dir.display();
        std::fs::write(
            etc.join("main.cf"),
            format!(
                "compatibility_level = 3.6\n\
                 queue_directory = {d}/queue\n\
                 data_directory = {d}/data\n\
                 maillog_file = {d}/maillog\n\
                 maillog_file_prefixes = {d}\n\
                 mail_owner = postfix\n\
                 setgid_group = postdrop\n\
                 myhostname = postfix.smtp2gmail.test\n\
                 mydomain = smtp2gmail.test\n\
                 mydestination =\n\
                 local_recipient_maps =\n\
                 local_transport = error:local delivery is disabled\n\
                 alias_maps =\n\
                 alias_database =\n\
                 inet_interfaces = 127.0.0.1\n\
                 inet_protocols = ipv4\n\
                 mynetworks = 127.0.0.0/8\n\
                 smtpd_relay_restrictions = permit_mynetworks, reject\n\
                 relayhost = [127.0.0.1]:{relayhost_port}\n\
                 smtp_destination_recipient_limit = 50\n\
                 smtp_tls_security_level = none\n\
                 smtpd_tls_security_level = none\n\
                 biff = no\n"
            ),
        )
        .unwrap();
        // The services a relay needs, none of them chrooted (a chroot needs copies of system
        // files in the queue directory).
        let services = [
            format!("127.0.0.1:{port} inet n - n - - smtpd"),
            "pickup unix n - n 60 1 pickup".into(),
            "cleanup unix n - n - 0 cleanup".into(),
            "qmgr unix n - n 300 1 qmgr".into(),
            "rewrite unix - - n - - trivial-rewrite".into(),
            "bounce unix - - n - 0 bounce".into(),
            "defer unix - - n - 0 bounce".into(),
            "trace unix - - n - 0 bounce".into(),
            "verify unix - - n - 1 verify".into(),
            "flush unix n - n 1000? 0 flush".into(),
            "proxymap unix - - n - - proxymap".into(),
            "smtp unix - - n - - smtp".into(),
            "relay unix - - n - - smtp".into(),
            "showq unix n - n - - showq".into(),
            "error unix - - n - - error".into(),
            "retry unix - - n - - error".into(),
            "discard unix - - n - - discard".into(),
            "anvil unix - - n - 1 anvil".into(),
            "scache unix - - n - 1 scache".into(),
            "postlog unix-dgram n - n - 1 postlogd".into(),
        ];
        std::fs::write(etc.join("master.cf"), services.join("\n") + "\n").unwrap();
        let postfix = Postfix {
            dir: dir.to_path_buf(),
            port,
        };
        postfix.run("start");
        postfix
    }

    fn run(&self, action: &str) {
        let output = Command::new(POSTFIX)
            .arg("-c")
            .arg(self.dir.join("etc"))
            .arg(action)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "postfix {action}: {}{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.maillog()
        );
    }

    /// Messages in Postfix's queues (incoming, active, deferred, hold, maildrop).
    fn queued(&self) -> usize {
        let queues = ["incoming", "active", "deferred", "hold", "maildrop"];
        queues
            .iter()
            .map(|queue| files_under(&self.dir.join("queue").join(queue)))
            .sum()
    }

    fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new(POSTFIX)
            .arg("-c")
            .arg(self.dir.join("etc"))
            .arg("stop")
            .output();
    }
}

fn files_under(dir: &Path) -> usize {
    let Ok(items) = std::fs::read_dir(dir) else {
        return 0;
    };
    items
        .filter_map(Result::ok)
        .map(|item| match item.file_type() {
            Ok(kind) if kind.is_dir() => files_under(&item.path()),
            _ => 1,
        })
        .sum()
}

/// Waits (bounded) until `ready` holds.
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(WAIT, async {
        while !ready() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(waited.await.is_ok(), "timed out waiting for {what}");
}

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

    let header: Vec<String> = (0..120).map(|i| format!("r{i:03}@example.org")).collect();
    let bcc: Vec<String> = (0..5).map(|i| format!("hidden{i}@example.net")).collect();
    let message = format!(
        "From: app@example.com\r\nTo: {}\r\nCc: {}\r\nSubject: through postfix\r\n\
         Message-ID: <postfix-split-1@example.com>\r\nDate: Mon, 1 Jun 2026 10:00:00 +0000\r\n\r\n\
         one message, many recipients\r\n",
        header[..80].join(",\r\n "),
        header[80..].join(",\r\n "),
    );
    let envelope = Envelope::new(
        Some("app@example.com".parse().unwrap()),
        header
            .iter()
            .chain(&bcc)
            .map(|r| r.parse().unwrap())
            .collect(),
    )
    .unwrap();
    let submission = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(postfix.port)
        .build();
    // Postfix's smtpd listens a moment after `postfix start` returns.
    let listening = || std::net::TcpStream::connect(("127.0.0.1", postfix.port)).is_ok();
    until("Postfix's smtpd to listen", listening).await;
    let accepted = submission
        .send_raw(&envelope, message.as_bytes())
        .await
        .expect("postfix accepts the message");
    assert!(accepted.is_positive());

    google.wait_for_uploads(1).await;
    until("Postfix's queue to empty", || postfix.queued() == 0).await;
    until("Postfix to log every recipient", || {
        postfix.maillog().matches("status=sent").count() == 125
    })
    .await;
    let log = postfix.maillog();
    assert!(!log.contains("status=bounced"), "{log}");
    assert!(!log.contains("status=deferred"), "{log}");
    // Each transaction got its own 250 (and queue id) from smtp2gmail.
    let transactions: BTreeSet<&str> = log
        .lines()
        .filter(|l| l.contains("status=sent"))
        .filter_map(|l| l.split("queued as ").nth(1))
        .collect();
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
    let uploads = google.uploads();
    assert_eq!(uploads.len(), 1, "one Gmail send, and no bounce relayed");
    let recipients = &uploads[0].recipients;
    let unique: BTreeSet<&String> = recipients.iter().collect();
    assert_eq!(unique.len(), recipients.len(), "someone would get it twice");
    let expected: BTreeSet<&String> = header.iter().chain(&bcc).collect();
    assert_eq!(unique, expected, "everyone, once");
    drop(postfix);
    served.stop().await;
}
