//! A private Postfix instance for the tests that put a real Postfix in front of smtp2gmail as its
//! relayhost client (tests/postfix_relayhost.rs, tests/postgres_split.rs): a temporary
//! directory, loopback, a free port, and Postfix's default `smtp_destination_recipient_limit` of
//! 50, so that a message with more recipients reaches smtp2gmail as several transactions.
//!
//! Needs Debian's postfix: `bash tests/postfix/install.sh` installs it (without configuring or
//! starting the system's instance); `.ci/run` does so before `cargo test`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::programs::POSTFIX;
use super::{WAIT, free_port};

/// A private Postfix instance; stopped when dropped, even when the test fails.
pub struct Postfix {
    dir: PathBuf,
    /// The port its smtpd listens on (127.0.0.1).
    pub port: u16,
}

impl Postfix {
    /// Configures an instance in `dir` (a new temporary directory) relaying everything to
    /// `relayhost_port`, and starts it.
    pub fn start(dir: &Path, relayhost_port: u16) -> Postfix {
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
    pub fn queued(&self) -> usize {
        let queues = ["incoming", "active", "deferred", "hold", "maildrop"];
        queues
            .iter()
            .map(|queue| files_under(&self.dir.join("queue").join(queue)))
            .sum()
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Submits `message` from `from` to `rcpts` over SMTP, once Postfix's smtpd listens (a moment
    /// after `postfix start` returns); Postfix must accept it.
    pub async fn submit(&self, from: &str, rcpts: &[String], message: &[u8]) {
        let envelope = Envelope::new(
            Some(from.parse().unwrap()),
            rcpts.iter().map(|r| r.parse().unwrap()).collect(),
        )
        .unwrap();
        let submission = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(self.port)
            .build();
        let listening = || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        until("Postfix's smtpd to listen", listening).await;
        let accepted = submission
            .send_raw(&envelope, message)
            .await
            .expect("postfix accepts the message");
        assert!(accepted.is_positive());
    }

    /// Waits until Postfix's queue is empty and it logged `recipients` recipients sent, none
    /// bounced or deferred; returns the queue ids smtp2gmail answered each transaction with.
    pub async fn until_relayed(&self, recipients: usize) -> BTreeSet<String> {
        until("Postfix's queue to empty", || self.queued() == 0).await;
        until("Postfix to log every recipient", || {
            self.maillog().matches("status=sent").count() == recipients
        })
        .await;
        let log = self.maillog();
        assert!(!log.contains("status=bounced"), "{log}");
        assert!(!log.contains("status=deferred"), "{log}");
        log.lines()
            .filter(|l| l.contains("status=sent"))
            .filter_map(|l| l.split("queued as ").nth(1))
            .map(|id| id.trim_end_matches(')').to_string())
            .collect()
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
pub async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(WAIT, async {
        while !ready() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(waited.await.is_ok(), "timed out waiting for {what}");
}
