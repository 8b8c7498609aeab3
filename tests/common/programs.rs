//! Where the programs some integration tests run are installed: PostgreSQL's server binaries (a
//! private instance per test, [`super::postgres`]) and Postfix (tests/postfix_relayhost.rs).
//!
//! Shared by build.rs, which marks those tests ignored when a program is missing (so `cargo test`
//! reports them as ignored, with the command that installs it, instead of passing them having
//! checked nothing), and by the tests, which run what it finds. Only std: build.rs has no
//! dependencies.

use std::path::{Path, PathBuf};

/// Postfix's command, where Debian's package (`bash tests/postfix/install.sh`) puts it.
pub const POSTFIX: &str = "/usr/sbin/postfix";

/// Debian's PostgreSQL server binaries, one directory per version.
const POSTGRES_VERSIONS: &str = "/usr/lib/postgresql";

/// The PostgreSQL programs the tests run.
const POSTGRES_PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "psql"];

/// The directory holding initdb, pg_ctl and psql: PATH first (through symbolic links to the
/// directory they really are in, where psql is too), then Debian's versioned directories
/// (newest version first).
pub fn postgres_binaries() -> Option<PathBuf> {
    let has_all = |dir: &Path| {
        POSTGRES_PROGRAMS
            .iter()
            .all(|name| dir.join(name).is_file())
    };
    if let Some(path) = std::env::var_os("PATH") {
        let found = std::env::split_paths(&path)
            .filter_map(|dir| std::fs::canonicalize(dir.join("initdb")).ok())
            .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
            .find(|dir| has_all(dir));
        if found.is_some() {
            return found;
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(POSTGRES_VERSIONS)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_all(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// True when Postfix is installed.
pub fn postfix_installed() -> bool {
    Path::new(POSTFIX).is_file()
}

/// What changes when a missing program is installed: Debian's package database, and the
/// directories the programs go to. Only paths that exist: Cargo reruns a build script at every
/// build while a path it watches is missing, which would rebuild the crate every time.
pub fn install_places() -> Vec<PathBuf> {
    ["/var/lib/dpkg/status", POSTGRES_VERSIONS, "/usr/sbin"]
        .into_iter()
        .map(PathBuf::from)
        .filter(|place| place.exists())
        .collect()
}
