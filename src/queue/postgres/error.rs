//! What can go wrong talking to PostgreSQL, in the operator's terms: each variant says what to
//! fix (the URL, the server, a GRANT), never the password.
//!
//! The client reports a failure as one opaque error with an optional SQLSTATE; [`Target::classify`]
//! turns it into a [`DatabaseError`] once, here, so that the connect path, the migrations and the
//! queue's statements all speak the same way, and so that the server can tell an outage (answer
//! 451, readiness red, retry) from a configuration mistake.

use std::error::Error as _;
use std::time::Duration;

use tokio_postgres::error::SqlState;

use super::SCHEMA;
use crate::config::DatabaseUrl;

/// Why the queue's database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// No TCP connection (refused, no route, timed out, unknown host).
    #[error(
        "cannot reach PostgreSQL at {servers}: {reason}; is the server running and accepting connections there (listen_addresses, port, firewall)?"
    )]
    Unreachable {
        /// The `host:port` list of the URL.
        servers: String,
        /// The system's reason.
        reason: String,
    },
    /// The server refused the role or its password.
    #[error(
        "PostgreSQL at {servers} refused role \"{user}\": {reason}; check the user and password in queue.url, and that pg_hba.conf admits this host"
    )]
    Authentication {
        /// The `host:port` list of the URL.
        servers: String,
        /// The role.
        user: String,
        /// The server's message (names the role, never the password).
        reason: String,
    },
    /// The database of the URL does not exist.
    #[error(
        "database \"{database}\" does not exist on {servers}; create it (CREATE DATABASE \"{database}\" OWNER \"{user}\") or fix the database name in queue.url"
    )]
    NoDatabase {
        /// The `host:port` list of the URL.
        servers: String,
        /// The role.
        user: String,
        /// The database.
        database: String,
    },
    /// The role lacks a privilege; `grant` is the statement an administrator runs.
    #[error("role \"{user}\" may not {action} ({reason}); as an administrator run: {grant}")]
    PermissionDenied {
        /// The role.
        user: String,
        /// What it tried, in words.
        action: &'static str,
        /// The server's message.
        reason: String,
        /// The statement that gives the privilege.
        grant: String,
    },
    /// The TLS handshake failed (no TLS on the server with `sslmode=require`, an untrusted or
    /// misnamed certificate).
    #[error(
        "TLS to PostgreSQL at {servers} failed: {reason}; check sslmode and sslrootcert in queue.url and the server's ssl settings"
    )]
    Tls {
        /// The `host:port` list of the URL.
        servers: String,
        /// The handshake's error.
        reason: String,
    },
    /// The server is a standby or refuses writes.
    #[error(
        "PostgreSQL at {servers} is read-only (a standby, or default_transaction_read_only): {reason}; point queue.url at the primary"
    )]
    ReadOnly {
        /// The `host:port` list of the URL.
        servers: String,
        /// The server's message.
        reason: String,
    },
    /// The server accepts no more connections.
    #[error(
        "PostgreSQL at {servers} accepts no more connections: {reason}; raise max_connections or run fewer replicas"
    )]
    TooManyConnections {
        /// The `host:port` list of the URL.
        servers: String,
        /// The server's message.
        reason: String,
    },
    /// The server went away or is starting or stopping: an outage that ends by itself.
    #[error("PostgreSQL at {servers} is unavailable: {reason}")]
    Unavailable {
        /// The `host:port` list of the URL.
        servers: String,
        /// What happened.
        reason: String,
    },
    /// No connection became free in time.
    #[error("no connection to PostgreSQL at {servers} within {waited:?}")]
    Timeout {
        /// The `host:port` list of the URL.
        servers: String,
        /// How long was waited.
        waited: Duration,
    },
    /// The database holds a schema a newer smtp2gmail wrote.
    #[error(
        "the queue tables in database \"{database}\" are at schema version {found}, newer than this smtp2gmail knows ({known}); run the newer smtp2gmail"
    )]
    SchemaTooNew {
        /// The database.
        database: String,
        /// The version found.
        found: i32,
        /// The newest version this build knows.
        known: i32,
    },
    /// Any other failure of a statement.
    #[error("PostgreSQL at {servers}: {doing}: {reason}")]
    Statement {
        /// The `host:port` list of the URL.
        servers: String,
        /// What was being done.
        doing: &'static str,
        /// The error with its SQLSTATE, when there is one.
        reason: String,
    },
}

impl DatabaseError {
    /// True for failures that end by themselves (the server down, restarting, full or a
    /// standby during a failover): the queue answers 451 and tries again. False for what an
    /// operator must fix (URL, password, GRANTs, schema).
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            DatabaseError::Unreachable { .. }
                | DatabaseError::ReadOnly { .. }
                | DatabaseError::TooManyConnections { .. }
                | DatabaseError::Unavailable { .. }
                | DatabaseError::Timeout { .. }
        )
    }
}

/// What was being done when a privilege was missing: decides the GRANT the message names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Opening a session.
    Connect,
    /// Creating the queue's schema in the database.
    CreateSchema,
    /// Creating or changing the queue's tables.
    Migrate,
    /// Reading and writing the queue's tables.
    Use,
}

/// The database a [`DatabaseError`] is about: the names its messages need.
#[derive(Debug, Clone)]
pub struct Target {
    /// The `host:port` list.
    pub servers: String,
    /// The role.
    pub user: String,
    /// The database.
    pub database: String,
}

impl Target {
    /// The names of `url`'s server, role and database.
    pub fn of(url: &DatabaseUrl) -> Target {
        Target {
            servers: url.servers(),
            user: url.user(),
            database: url.database(),
        }
    }

    /// Classifies a client error met while doing `step` (`doing` words it for other errors).
    pub fn classify(
        &self,
        err: &tokio_postgres::Error,
        step: Step,
        doing: &'static str,
    ) -> DatabaseError {
        let servers = self.servers.clone();
        if let Some(db) = err.as_db_error() {
            let reason = db.message().to_string();
            let code = db.code();
            return match code {
                c if *c == SqlState::INVALID_PASSWORD
                    || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
                {
                    DatabaseError::Authentication {
                        servers,
                        user: self.user.clone(),
                        reason,
                    }
                }
                c if *c == SqlState::INVALID_CATALOG_NAME => DatabaseError::NoDatabase {
                    servers,
                    user: self.user.clone(),
                    database: self.database.clone(),
                },
                c if *c == SqlState::INSUFFICIENT_PRIVILEGE => self.denied(step, reason),
                c if *c == SqlState::READ_ONLY_SQL_TRANSACTION => {
                    DatabaseError::ReadOnly { servers, reason }
                }
                c if *c == SqlState::TOO_MANY_CONNECTIONS => {
                    DatabaseError::TooManyConnections { servers, reason }
                }
                // Connection exceptions, and the server shutting down or starting up.
                c if c.code().starts_with("08") || c.code().starts_with("57P") => {
                    DatabaseError::Unavailable { servers, reason }
                }
                c => DatabaseError::Statement {
                    servers,
                    doing,
                    reason: format!("{reason} (SQLSTATE {})", c.code()),
                },
            };
        }
        let reason = chain(err);
        // The client has no public error kinds; its TLS errors all start this way.
        if err
            .to_string()
            .starts_with("error performing TLS handshake")
        {
            return DatabaseError::Tls { servers, reason };
        }
        if err.is_closed() {
            return DatabaseError::Unavailable { servers, reason };
        }
        let io = err
            .source()
            .and_then(|source| source.downcast_ref::<std::io::Error>());
        match (io, step) {
            (Some(_), Step::Connect) => DatabaseError::Unreachable { servers, reason },
            (Some(_), _) => DatabaseError::Unavailable { servers, reason },
            (None, _) => DatabaseError::Statement {
                servers,
                doing,
                reason,
            },
        }
    }

    /// A missing privilege, with the statement that grants what `step` needs.
    fn denied(&self, step: Step, reason: String) -> DatabaseError {
        let (user, database) = (&self.user, &self.database);
        let (action, grant) = match step {
            Step::Connect => (
                "connect to the database",
                format!("GRANT CONNECT ON DATABASE \"{database}\" TO \"{user}\";"),
            ),
            Step::CreateSchema => (
                "create the queue's schema",
                format!(
                    "CREATE SCHEMA {SCHEMA} AUTHORIZATION \"{user}\"; (or GRANT CREATE ON DATABASE \"{database}\" TO \"{user}\";)"
                ),
            ),
            Step::Migrate => (
                "create the queue's tables",
                format!("ALTER SCHEMA {SCHEMA} OWNER TO \"{user}\";"),
            ),
            Step::Use => (
                "use the queue's tables",
                format!(
                    "GRANT USAGE ON SCHEMA {SCHEMA} TO \"{user}\"; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {SCHEMA} TO \"{user}\";"
                ),
            ),
        };
        DatabaseError::PermissionDenied {
            user: user.clone(),
            action,
            reason,
            grant,
        }
    }
}

/// The error and its causes on one line ("error connecting to server: Connection refused").
fn chain(err: &tokio_postgres::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let shown = cause.to_string();
        if !text.contains(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        source = cause.source();
    }
    text
}
