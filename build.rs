//! Two jobs. `SMTP2GMAIL_VERSION` for `smtp2gmail --version`: the version, and in release builds
//! from this project's git checkout the commit and its date, as `0.1.0 (dea9d2e1f 2026-12-07)`.
//! Debug builds leave the commit out: it would rebuild the crate and every test binary after each
//! `git commit` or checkout.
//!
//! And it marks the integration tests whose program is missing on this machine (a private PostgreSQL,
//! Postfix): sets `missing_postgres` / `missing_postfix`, which those tests turn into
//! `#[ignore = "needs …: how to install it"]`, so `cargo test` counts and names them as ignored
//! instead of passing them having checked nothing. Nothing of the server depends on it.
//!
//! Under CI (`CI` set) nothing is marked: there a missing program fails its tests, so a broken
//! install step cannot hide them. See docs/design.md, "A test that cannot run here says so".

#[path = "tests/common/programs.rs"]
mod programs;

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    version();
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

/// Sets `SMTP2GMAIL_VERSION`.
fn version() {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let commit = match std::env::var("PROFILE").as_deref() {
        Ok("release") => commit(),
        _ => None,
    };
    match commit {
        Some(commit) => println!("cargo::rustc-env=SMTP2GMAIL_VERSION={version} ({commit})"),
        None => println!("cargo::rustc-env=SMTP2GMAIL_VERSION={version}"),
    }
}

/// The commit checked out and its date, when this crate is the top of a git work tree (not a
/// crates.io download unpacked inside someone else's repository); watches HEAD and the branch.
fn commit() -> Option<String> {
    let here = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let git = |args: &[&str]| -> Option<String> {
        let output = Command::new("git")
            .args(args)
            .current_dir(&here)
            .output()
            .ok()?;
        let text = String::from_utf8(output.stdout).ok()?;
        (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
    };
    let top = git(&["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != here.canonicalize().ok()? {
        return None;
    }
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            println!("cargo::rerun-if-changed={}", here.join(path).display());
        }
    }
    git(&["log", "-1", "--format=%h %cs", "--abbrev=9"])
}
