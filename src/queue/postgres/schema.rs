//! The queue's tables, created and changed by numbered migrations at start.
//!
//! Every replica runs [`migrate`] when it starts. The whole run is one transaction that first
//! takes a transaction-scoped advisory lock, so replicas starting together queue up behind the
//! first: it applies what is missing and commits, the others then find nothing left to do. A
//! failed migration rolls back whole (PostgreSQL's DDL is transactional), leaving the previous
//! version intact. Migrations are append-only: a released one is never edited.
//!
//! Everything lives in the schema [`SCHEMA`], so that the queue can share a database with the
//! application (Django's, typically) without its table names meeting the application's, and is
//! removed with one `DROP SCHEMA smtp2gmail CASCADE`.

use deadpool_postgres::GenericClient;

use super::SCHEMA;
use super::error::{DatabaseError, Step, Target};

/// The key of the advisory lock that serialises migrations ("smtp2gml" in ASCII), per database.
pub const MIGRATION_LOCK: i64 = 0x736d_7470_3267_6d6c;

/// One step of the schema.
#[derive(Debug)]
pub struct Migration {
    /// Applied in ascending order; recorded in `schema_migrations`.
    pub version: i32,
    /// What it does, for the record.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "messages, their bodies in chunks, and the limits shared by replicas",
        sql: include_str!("schema_v1.sql"),
    },
    Migration {
        version: 2,
        name: "streaks of failed preconditions shared by replicas",
        sql: include_str!("schema_v2.sql"),
    },
    Migration {
        version: 3,
        name: "held transactions of split messages grouped for every replica",
        sql: include_str!("schema_v3.sql"),
    },
];

/// The schema version this build writes.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// What [`migrate`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The versions this run applied (empty when the schema was current).
    pub applied: Vec<i32>,
    /// The version the database is at now.
    pub version: i32,
}

/// Creates the schema or brings it to [`latest`]; safe to run from several replicas at once.
///
/// A role that may only read and write the tables (no CREATE) can run it once the schema is
/// current: every creating statement is guarded by a look at the catalog first, because
/// PostgreSQL checks the CREATE privilege even for `IF NOT EXISTS` on an existing object.
pub async fn migrate(
    client: &mut deadpool_postgres::Client,
    target: &Target,
) -> Result<Migrated, DatabaseError> {
    let fail = |step, doing| move |err: tokio_postgres::Error| target.classify(&err, step, doing);
    let tx = client
        .transaction()
        .await
        .map_err(fail(Step::Use, "starting the migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail(Step::Use, "waiting for other replicas' migrations"))?;

    let exists = |sql: &'static str| {
        let tx = &tx;
        async move {
            tx.query_one(sql, &[&SCHEMA])
                .await
                .map(|row| row.get::<_, bool>(0))
        }
    };
    let schema_exists = exists("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)")
        .await
        .map_err(fail(Step::Use, "looking for the queue's schema"))?;
    if !schema_exists {
        tx.batch_execute(&format!("CREATE SCHEMA {SCHEMA}"))
            .await
            .map_err(fail(Step::CreateSchema, "creating the queue's schema"))?;
    }
    let table_exists = exists(
        "SELECT EXISTS (SELECT FROM pg_tables WHERE schemaname = $1 AND tablename = 'schema_migrations')",
    )
    .await
    .map_err(fail(Step::Use, "looking for the migrations table"))?;
    if !table_exists {
        tx.batch_execute(&format!(
            "CREATE TABLE {SCHEMA}.schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )"
        ))
        .await
        .map_err(fail(Step::Migrate, "creating the migrations table"))?;
    }
    let current: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {SCHEMA}.schema_migrations"),
            &[],
        )
        .await
        .map_err(fail(Step::Use, "reading the schema version"))?
        .get(0);
    if current > latest() {
        return Err(DatabaseError::SchemaTooNew {
            database: target.database.clone(),
            found: current,
            known: latest(),
        });
    }

    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.batch_execute(migration.sql)
            .await
            .map_err(fail(Step::Migrate, "applying a schema migration"))?;
        tx.execute(
            &format!("INSERT INTO {SCHEMA}.schema_migrations (version, name) VALUES ($1, $2)"),
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(fail(Step::Migrate, "recording a schema migration"))?;
        applied.push(migration.version);
    }
    tx.commit()
        .await
        .map_err(fail(Step::Migrate, "committing the migration"))?;
    if !applied.is_empty() {
        tracing::info!(?applied, version = latest(), database = %target.database, "migrated the queue's schema");
    }
    Ok(Migrated {
        applied,
        version: current.max(latest()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_one_up_from_one() {
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, i as i32 + 1, "{}", migration.name);
            assert!(
                migration.sql.contains(&format!("{SCHEMA}.")),
                "migration {} must name its tables with the schema",
                migration.version
            );
        }
    }
}
