//! The queue's behaviour on both backends: every behaviour is written once, as a function of the
//! [`bench::Backend`], and [`on_both_backends!`] runs it on the spool (`MemoryState` in the
//! scheduler core) and on a private PostgreSQL (`SharedState`). Each runs the library's server
//! assembly against the fake Google — in process (`TestServer`), or as the binary
//! (`ServerProcess`) where only a process shows it (its log, `kill -9`) — and asserts through the
//! queue's storage interface (`Store`, with the waits of [`bench::Waits`]) or the `queue` commands'
//! output, never through the spool's files, so that one assertion holds for both.
//!
//! Where the backends truly differ, the test says so through one method of [`bench::Backend`]
//! (how many servers share a queue; what `retry --all` without a server promises), as the core
//! says so in one place (`queue::schedule::State`'s module docs).
//!
//! The PostgreSQL instances share one private server per run of this binary, each with a
//! database of its own (`common::postgres::TestDatabase`); without PostgreSQL installed they are
//! ignored, saying how to install it (tests/common/postgres.rs).

#[path = "../common/mod.rs"]
mod common;

mod bench;

/// Instantiates the behaviour `async fn NAME(backend: Backend)` of the enclosing module as the
/// tests `NAME::spool` and `NAME::postgres`. `[ARGS]` are `#[tokio::test(ARGS)]`'s (a
/// multi-threaded runtime); `postgres: ATTRIBUTE` replaces the PostgreSQL instance's
/// "ignored without PostgreSQL" with `ATTRIBUTE` (an `ignore` saying what it waits for).
macro_rules! on_both_backends {
    ($behaviour:ident $([$($runtime:tt)*])?) => {
        on_both_backends!(@ $behaviour [$($($runtime)*)?] cfg_attr(
            missing_postgres,
            ignore = "needs PostgreSQL: bash tests/postgres/install.sh"
        ));
    };
    ($behaviour:ident $([$($runtime:tt)*])? postgres: $postgres:meta) => {
        on_both_backends!(@ $behaviour [$($($runtime)*)?] $postgres);
    };
    (@ $behaviour:ident [$($runtime:tt)*] $postgres:meta) => {
        mod $behaviour {
            use crate::bench::Backend;

            #[tokio::test($($runtime)*)]
            async fn spool() {
                super::$behaviour(Backend::Spool).await
            }

            #[tokio::test($($runtime)*)]
            #[$postgres]
            async fn postgres() {
                super::$behaviour(Backend::Postgres).await
            }
        }
    };
}

mod crash;
mod credentials;
mod deferrals;
mod delivery;
mod holds;
mod operator;
mod pacing;
mod routing;
mod split;
mod state;
