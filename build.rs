//! Marks the integration tests whose program is missing on this machine (a private PostgreSQL,
//! Postfix): sets `missing_postgres` / `missing_postfix`, which those tests turn into
//! `#[ignore = "needs …: how to install it"]`, so `cargo test` counts and names them as ignored
//! instead of passing them having checked nothing. Nothing of the server depends on it.
//!
//! Under CI (`CI` set) nothing is marked: there a missing program fails its tests, so a broken
//! install step cannot hide them. See docs/design.md, "A test that cannot run here says so".

#[path = "tests/common/programs.rs"]
mod programs;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=tests/common/programs.rs");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rustc-check-cfg=cfg(missing_postgres)");
    println!("cargo::rustc-check-cfg=cfg(missing_postfix)");
    if std::env::var_os("CI").is_some() {
        return;
    }
    let postgres = programs::postgres_binaries().is_some();
    let postfix = programs::postfix_installed();
    if !postgres {
        println!("cargo::rustc-cfg=missing_postgres");
        // Found through PATH as well as in Debian's directories.
        println!("cargo::rerun-if-env-changed=PATH");
    }
    if !postfix {
        println!("cargo::rustc-cfg=missing_postfix");
    }
    // Watched only while something is missing: installing anything with apt rebuilds the crate.
    if !(postgres && postfix) {
        for place in programs::install_places() {
            println!("cargo::rerun-if-changed={}", place.display());
        }
    }
}
