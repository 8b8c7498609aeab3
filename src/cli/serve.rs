//! `smtp2gmail serve`: the server ([`crate::server`]), until SIGTERM or SIGINT. What is the
//! process's own business stays here: the command line's addresses, the open-file limit, the
//! signals and the exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use super::signals::Signals;
use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::config::Config;
use crate::server::{Server, StartError};
use crate::smtp;

/// Options of `serve` for a one-off run; the config file holds the lasting settings.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Listen for SMTP on this address instead of [smtp] listen (repeatable), e.g. 127.0.0.1:2526
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Serve the HTTP endpoints (and the inbox) on this address instead of [http] listen; "" turns
    /// them off
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<String>,
}

/// Runs the server until a signal, then drains.
pub async fn run(mut config: Config, source: Option<PathBuf>, args: ServeArgs) -> ExitCode {
    if let Err(err) = config.override_listeners(args.listen, args.http_listen) {
        eprintln!("smtp2gmail: {err}");
        return ExitCode::from(EXIT_USAGE);
    }
    // Every connection is a descriptor; the usual soft limit of 1024 is below max_connections.
    let nofile = rlimit::increase_nofile_limit(u64::MAX);
    return_large_buffers();
    let max_connections = config.smtp.max_connections;
    // Installed before the startup lines, so that a SIGHUP sent once the server says it is
    // listening never meets the default action (terminate), and a SIGTERM right after them stops
    // the server gracefully.
    let mut signals = Signals::install();
    let start = Server::new(config).config_file(source).start();
    let started = tokio::select! {
        started = start => started,
        // Starting can wait for the queue's database: a signal meanwhile is not queued up.
        () = signals.stop() => {
            tracing::info!("stopped before the server started");
            return ExitCode::SUCCESS;
        }
    };
    let server = match started {
        Ok(server) => server,
        Err(err) => {
            let hint = match &err {
                StartError::Smtp(smtp::StartError::Bind { source, .. }) => {
                    listen_hint(source, "[smtp] listen", "--listen")
                }
                StartError::Http { source, .. } => listen_hint(
                    source,
                    "[http] listen (\"\" turns them off)",
                    "--http-listen",
                ),
                _ => String::new(),
            };
            tracing::error!("{err}{hint}");
            // A database that is down at start is not a setting to fix: 1, as for Google.
            return ExitCode::from(if err.is_config() {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            });
        }
    };
    match nofile {
        Ok(limit) if (limit as usize) < max_connections + 64 => tracing::warn!(
            limit,
            max_connections,
            "the open-file limit is below max_connections; raise it (ulimit -n, LimitNOFILE=)"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(%err, "cannot raise the open-file limit"),
    }
    signals.until_stop(&server).await;
    tracing::info!(
        "shutting down: finishing open transactions (send the signal again to stop at once)"
    );
    // The shutdown order is the library's (server::ServerHandle::shutdown); a second signal
    // does not wait for it.
    tokio::select! {
        _ = server.shutdown() => ExitCode::SUCCESS,
        () = signals.stop() => {
            tracing::warn!("second signal: stopping now");
            std::process::exit(i32::from(EXIT_FAILURE));
        }
    }
}

/// What to do about an address that cannot be bound: the likely cause, the setting, and the
/// flag for a one-off run (the README's first command collides with any server already running).
fn listen_hint(err: &std::io::Error, key: &str, flag: &str) -> String {
    use std::io::ErrorKind;
    let cause = match err.kind() {
        ErrorKind::AddrInUse => "another server, perhaps another smtp2gmail, has it: stop it, or ",
        ErrorKind::PermissionDenied => "ports below 1024 need privileges (CAP_NET_BIND_SERVICE): ",
        ErrorKind::AddrNotAvailable => "no interface of this machine has that address: ",
        _ => "",
    };
    format!(
        " ({cause}choose another address with {key} in the config or, for this run, \
         `smtp2gmail serve {flag} 127.0.0.1:PORT`)"
    )
}

/// Makes glibc give buffers of 4 MiB and more back to the system when they are freed.
///
/// By default glibc raises its mmap threshold to the size of the largest block freed so far (up
/// to 32 MiB), after which whole messages (a 5 MB body read for the console's summary and the
/// inbox's) are carved from per-thread arenas and stay there: 200 × 5 MB messages left the
/// process at 150 – 200 MB, against 40 – 50 MB with this fixed threshold. A fixed threshold
/// turns that adjustment off; smaller blocks (the 1 MiB receive buffers) stay in the arenas.
fn return_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const LARGE: libc::c_int = 4 * 1024 * 1024;
        // SAFETY: mallopt only sets an allocator parameter, under glibc's own locks (so any
        // thread may call it), and 4 MiB is a valid M_MMAP_THRESHOLD (at most 32 MiB).
        let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE) };
        if set != 1 {
            tracing::debug!("glibc kept its own mmap threshold");
        }
    }
}
