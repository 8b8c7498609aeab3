//! `[queue] backend`, `url` and `lease_time`: where the queue lives, and the PostgreSQL URL of the
//! shared queue, checked (and its `env:`/`file:` indirection resolved) when the config loads.
//!
//! The URL carries the password, so [`DatabaseUrl`] never shows it: its `Display` and `Debug` are
//! the [`DatabaseUrl::redacted`] form, and no error built here quotes the URL or its password.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::{Broken, QueueConfig};
use crate::google::{CredentialError, resolve_secret};

/// The shortest `lease_time` accepted: a lease is renewed a few times per `lease_time`, so a
/// shorter one would spend the database's time on renewals and expire under a slow query.
pub const MIN_LEASE_TIME: Duration = Duration::from_secs(5);

/// What shows instead of a password.
const HIDDEN: &str = "***";

/// Where queued messages are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    /// Files in `[queue] dir` on this host (the embedded default; one server per spool).
    #[default]
    Spool,
    /// Tables in a PostgreSQL database shared by every replica (`[queue] url`).
    Postgres,
}

/// How the connection to PostgreSQL is protected: libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, else plain (libpq's default).
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is checked only against `sslrootcert`, if given.
    Require,
    /// TLS with a certificate from a trusted CA (here: and its name, see docs/design.md).
    VerifyCa,
    /// TLS with a certificate from a trusted CA for the host name connected to.
    VerifyFull,
}

/// Which CAs the server's certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// No check of the certificate (libpq's `prefer` and `require` without `sslrootcert`):
    /// encryption against eavesdroppers, no protection against an impostor.
    Unverified,
    /// The public CAs (`sslrootcert=system`, or `verify-*` without `sslrootcert`).
    System,
    /// The certificates of the `sslrootcert` file.
    File(Vec<CertificateDer<'static>>),
}

/// A checked PostgreSQL URL: the client's connection settings plus the TLS policy.
#[derive(Clone)]
pub struct DatabaseUrl {
    /// The connection settings (host, port, user, password, database, options).
    pub config: tokio_postgres::Config,
    /// The `sslmode` of the URL.
    pub ssl_mode: SslMode,
    /// What the server's certificate is checked against.
    pub roots: RootCerts,
    /// The URL as written with the password replaced, for logs and messages.
    redacted: String,
}

/// Why `[queue] url` is unusable. Messages never quote the URL, only what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// `backend = "postgres"` with no URL.
    #[error(
        "is empty; backend = \"postgres\" needs \"postgres://user:password@host:5432/database\" or \"env:DATABASE_URL\""
    )]
    Missing,
    /// The `env:`/`file:` indirection failed.
    #[error("{0}")]
    Indirection(#[from] CredentialError),
    /// Not a `postgres://` URL.
    #[error(
        "must start with postgres:// or postgresql:// (postgres://user:password@host:5432/database)"
    )]
    Scheme,
    /// Not a URL at all.
    #[error("is not a valid URL: {0}")]
    Syntax(url::ParseError),
    /// A parameter the client rejects (an unknown option, a bad port).
    #[error("{0}")]
    Parameter(String),
    /// An `sslmode` libpq does not know.
    #[error("sslmode={0} is not supported; use disable, prefer, require, verify-ca or verify-full")]
    SslMode(String),
    /// The `sslrootcert` file is missing or holds no certificate.
    #[error("sslrootcert {path}: {reason}")]
    RootCert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl DatabaseUrl {
    /// Parses a `postgres://` or `postgresql://` URL (libpq's URL form; `sslmode`, `sslrootcert`
    /// and the client's other parameters in the query string).
    pub fn parse(text: &str) -> Result<DatabaseUrl, UrlError> {
        let text = text.trim();
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err(UrlError::Scheme);
        }
        let mut url = url::Url::parse(text).map_err(UrlError::Syntax)?;
        // The TLS parameters are ours (the client knows only three sslmodes, and no root file);
        // everything else goes to the client as written.
        let mut ssl_mode = SslMode::default();
        let mut root_file = None;
        let mut rest = Vec::new();
        for (key, value) in url.query_pairs() {
            match &*key {
                "sslmode" => ssl_mode = parse_ssl_mode(&value)?,
                "sslrootcert" => root_file = Some(value.into_owned()),
                _ => rest.push((key.into_owned(), value.into_owned())),
            }
        }
        let redacted = redact(&url);
        if rest.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(rest);
        }
        let mut config = tokio_postgres::Config::from_str(url.as_str()).map_err(|err| {
            // "invalid connection string" alone; the source says which option (never a value).
            let detail = std::error::Error::source(&err).map(ToString::to_string);
            UrlError::Parameter(match detail {
                Some(detail) => format!("{err}: {detail}"),
                None => err.to_string(),
            })
        })?;
        // A socket directory would otherwise fail at connect as a host name that does not resolve.
        #[cfg(windows)]
        if config.get_hosts().iter().any(
            |host| matches!(host, tokio_postgres::config::Host::Tcp(name) if name.starts_with('/')),
        ) {
            return Err(UrlError::Parameter(
                "PostgreSQL over a Unix socket (a socket directory as host) is not available on \
                 Windows; connect over TCP, e.g. host=127.0.0.1"
                    .into(),
            ));
        }
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        if config.get_application_name().is_none() {
            // Shows who holds a connection in pg_stat_activity.
            config.application_name("smtp2gmail");
        }
        if config.get_connect_timeout().is_none() {
            // An unreachable host is reported in seconds, not after the kernel's minutes.
            config.connect_timeout(Duration::from_secs(10));
        }
        let roots = match (root_file.as_deref(), ssl_mode) {
            (Some("system"), _) => RootCerts::System,
            (Some(path), _) => RootCerts::File(read_roots(path)?),
            (None, SslMode::VerifyCa | SslMode::VerifyFull) => RootCerts::System,
            (None, _) => RootCerts::Unverified,
        };
        Ok(DatabaseUrl {
            config,
            ssl_mode,
            roots,
            redacted,
        })
    }

    /// The URL with its password replaced by `***`: the only form that may reach a log or a
    /// message.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The role connected as (the client's default is the operating system user).
    pub fn user(&self) -> String {
        match self.config.get_user() {
            Some(user) => user.to_string(),
            None => std::env::var("USER").unwrap_or_else(|_| "(the current user)".into()),
        }
    }

    /// The database connected to (the client's default is the role's name).
    pub fn database(&self) -> String {
        match self.config.get_dbname() {
            Some(name) => name.to_string(),
            None => self.user(),
        }
    }

    /// The servers tried, as `host:port` (or the socket directory), for messages.
    pub fn servers(&self) -> String {
        use tokio_postgres::config::Host;
        let ports = self.config.get_ports();
        let servers: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match host {
                    Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                    Host::Tcp(name) => format!("{name}:{port}"),
                    #[cfg(unix)]
                    Host::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
                }
            })
            .collect();
        if servers.is_empty() {
            // The client's default when the URL names no host.
            return "localhost:5432".into();
        }
        servers.join(", ")
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl").field(&self.redacted).finish()
    }
}

/// `url` with the password (in the authority or a `password=` parameter) replaced.
fn redact(url: &url::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Cannot fail: the URL has a host, or it could not have a password.
        let _ = shown.set_password(Some(HIDDEN));
    }
    if shown.query_pairs().any(|(key, _)| key == "password") {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| {
                let value = if key == "password" {
                    HIDDEN.to_string()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

fn parse_ssl_mode(value: &str) -> Result<SslMode, UrlError> {
    Ok(match value {
        "disable" => SslMode::Disable,
        "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        other => return Err(UrlError::SslMode(other.to_string())),
    })
}

/// The certificates of an `sslrootcert` PEM file; read now, so a wrong path is a config error.
fn read_roots(path: &str) -> Result<Vec<CertificateDer<'static>>, UrlError> {
    let broken = |reason: String| UrlError::RootCert {
        path: PathBuf::from(path),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| broken(err.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| broken(err.to_string()))?;
    if certs.is_empty() {
        return Err(broken("holds no PEM certificate".into()));
    }
    Ok(certs)
}

impl QueueConfig {
    /// The checked database URL when the queue is on PostgreSQL, `None` for the spool. Resolves
    /// `env:NAME` and `file:PATH` each time it is called (once at load, once when connecting).
    pub fn database_url(&self) -> Result<Option<DatabaseUrl>, UrlError> {
        if self.backend != QueueBackend::Postgres {
            return Ok(None);
        }
        if self.url.trim().is_empty() {
            return Err(UrlError::Missing);
        }
        let url = resolve_secret(self.url.trim())?;
        DatabaseUrl::parse(url.expose()).map(Some)
    }

    /// The rules of the backend keys, for [`super::Config::validate`].
    pub(super) fn validate_backend(&self) -> Result<(), Broken> {
        self.database_url()
            .map_err(|err| Broken::new("queue.url", &err.to_string()))?;
        if self.lease_time < MIN_LEASE_TIME {
            return Err(Broken::new(
                "queue.lease_time",
                "must be at least 5s (a replica renews its leases several times per lease_time)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        DatabaseUrl::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_password_is_redacted_in_the_authority_and_the_query() {
        let url =
            DatabaseUrl::parse("postgres://mail:s3cret-pw@db.example:6432/queue?sslmode=require")
                .unwrap();
        assert_eq!(
            url.redacted(),
            "postgres://mail:***@db.example:6432/queue?sslmode=require"
        );
        assert_eq!(url.to_string(), url.redacted());
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(url.config.get_password(), Some(&b"s3cret-pw"[..]));
        assert_eq!(url.servers(), "db.example:6432");
        assert_eq!(
            (url.user(), url.database()),
            ("mail".into(), "queue".into())
        );

        let url = DatabaseUrl::parse("postgresql://mail@db/queue?password=s3cret-pw").unwrap();
        assert!(!url.redacted().contains("s3cret"), "{}", url.redacted());
        assert_eq!(url.config.get_password(), Some(&b"s3cret-pw"[..]));
    }

    #[test]
    fn errors_name_what_is_wrong_and_never_the_password() {
        assert!(error("mysql://u:pw@h/db").starts_with("must start with postgres://"));
        assert!(error("postgres://u:s3cret@h:notaport/db").starts_with("is not a valid URL"));
        let unknown = error("postgres://u:s3cret@h/db?colour=blue");
        assert!(unknown.contains("colour"), "{unknown}");
        assert!(!unknown.contains("s3cret"), "{unknown}");
        assert_eq!(
            error("postgres://u:s3cret@h/db?sslmode=allow"),
            "sslmode=allow is not supported; use disable, prefer, require, verify-ca or verify-full"
        );
        assert!(
            error("postgres://h/db?sslrootcert=/nonexistent/ca.pem")
                .starts_with("sslrootcert /nonexistent/ca.pem: ")
        );
    }

    #[test]
    fn ssl_modes_choose_what_the_certificate_is_checked_against() {
        let roots = |query: &str| DatabaseUrl::parse(&format!("postgres://h/db{query}")).unwrap();
        let default = roots("");
        assert_eq!(
            (default.ssl_mode, &default.roots),
            (SslMode::Prefer, &RootCerts::Unverified)
        );
        assert_eq!(roots("?sslmode=verify-full").roots, RootCerts::System);
        assert_eq!(
            roots("?sslmode=require&sslrootcert=system").roots,
            RootCerts::System
        );
        let disabled = roots("?sslmode=disable&connect_timeout=3");
        assert_eq!(
            disabled.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        assert_eq!(
            disabled.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
    }

    #[test]
    fn the_backend_keys_are_checked_at_load() {
        let queue = |backend, url: &str| QueueConfig {
            backend,
            url: url.into(),
            ..QueueConfig::default()
        };
        assert!(
            queue(QueueBackend::Spool, "env:SMTP2GMAIL_TEST_UNSET_URL")
                .validate_backend()
                .is_ok()
        );
        let missing = queue(QueueBackend::Postgres, "")
            .validate_backend()
            .unwrap_err();
        assert!(
            missing.message.starts_with("is empty"),
            "{}",
            missing.message
        );
        let unset = queue(QueueBackend::Postgres, "env:SMTP2GMAIL_TEST_UNSET_URL")
            .validate_backend()
            .unwrap_err();
        assert_eq!(unset.key, "queue.url");
        assert_eq!(
            unset.message,
            "environment variable SMTP2GMAIL_TEST_UNSET_URL is not set or is empty"
        );
        let short = QueueConfig {
            lease_time: Duration::from_secs(1),
            ..queue(QueueBackend::Postgres, "postgres://h/db")
        };
        assert_eq!(
            short.validate_backend().unwrap_err().key,
            "queue.lease_time"
        );
    }

    #[test]
    fn a_bad_url_in_a_file_names_the_line_and_key_but_not_the_password() {
        let text =
            "[queue]\nbackend = \"postgres\"\nurl = \"postgres://mail:s3cret@db/q?sslmode=on\"\n";
        let err = super::super::Config::parse(text, std::path::Path::new("c.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.toml:3:1: queue.url: sslmode=on is not supported; use disable, prefer, require, verify-ca or verify-full"
        );
    }
}
