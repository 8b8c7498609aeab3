//! `smtp2gmail authorize`: obtain a token file for the relay from a client secret file.
//!
//! Where output goes: the consent URL and the instructions are prompts for the person at the
//! terminal, so they go to stderr with the errors (and still show when stdout is redirected);
//! the result — who was authorized and the config lines to use — goes to stdout.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::google::GMAIL_SEND_SCOPE;
use crate::google::authorize::{
    Authorization, AuthorizeError, AuthorizeOptions, Authorized, ClientSecretFile, check_token_file,
};

/// Options of `smtp2gmail authorize`.
#[derive(Debug, clap::Args)]
pub struct AuthorizeArgs {
    /// OAuth client file downloaded from the Google Cloud console (a "Desktop app" client)
    #[arg(long, value_name = "PATH", required_unless_present = "microsoft")]
    pub client_secret: Option<PathBuf>,
    /// Where to write the token, mode 0600 [default: token.json; with --microsoft the
    /// [microsoft] credentials file, else m365-token.json]
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Sign a Microsoft 365 user in instead (device code: open a URL on any device and enter
    /// the code shown); the app is the configuration's [microsoft] tenant and client_id
    #[arg(long, conflicts_with_all = ["client_secret", "port", "scopes"])]
    pub microsoft: bool,
    /// With --microsoft: the tenant id or domain [default: [microsoft] tenant]
    #[arg(long, value_name = "TENANT", requires = "microsoft")]
    pub tenant: Option<String>,
    /// With --microsoft: the app registration's client id [default: [microsoft] client_id]
    #[arg(long, value_name = "ID", requires = "microsoft")]
    pub client_id: Option<String>,
    /// Do not try to open a browser; open the printed URL yourself (on any machine)
    #[arg(long)]
    pub no_browser: bool,
    /// Loopback port for the redirect; 0 picks a free one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub port: u16,
    /// Scopes to request, separated by spaces or commas [default: gmail.send openid email]
    #[arg(long, value_name = "SCOPES")]
    pub scopes: Vec<String>,
    /// How long to wait for the consent screen to be completed [default: 5m]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
}

/// Runs the flow; exit status 2 for wrong files or options, 1 for failures while running.
/// `config` is the `--config` option (read only with `--microsoft`: Google's flow needs none).
pub async fn run(args: AuthorizeArgs, config: Option<&Path>) -> ExitCode {
    if args.microsoft {
        return super::authorize_microsoft::run(args, config).await;
    }
    match authorize(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("smtp2gmail: {err}");
            ExitCode::from(if err.is_usage() {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            })
        }
    }
}

async fn authorize(args: AuthorizeArgs) -> Result<(), AuthorizeError> {
    let client_secret = args.client_secret.unwrap_or_default();
    let token_file = args
        .token_file
        .unwrap_or_else(|| PathBuf::from("token.json"));
    let client = ClientSecretFile::load(&client_secret)?;
    check_token_file(&token_file, &client)?;
    let http =
        crate::relay::http_client().map_err(|err| AuthorizeError::Exchange(err.to_string()))?;
    let defaults = AuthorizeOptions::default();
    let scopes: Vec<String> = if args.scopes.is_empty() {
        defaults.scopes
    } else {
        let words = args.scopes.iter().flat_map(|s| s.split([' ', ',']));
        words
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    if !scopes.iter().any(|s| s == GMAIL_SEND_SCOPE) {
        eprintln!("Note: the scopes do not include {GMAIL_SEND_SCOPE}, which sending needs.");
    }
    let options = AuthorizeOptions {
        scopes,
        port: args.port,
        timeout: args.timeout.unwrap_or(defaults.timeout),
    };
    let timeout = options.timeout;
    let pending = Authorization::start(client, options).await?;
    let opened = !args.no_browser && open_browser(pending.url().as_str());
    instructions(&pending, opened, timeout);
    let authorized = pending.finish(stdin_lines(), &http).await?;
    authorized.write(&token_file)?;
    report(&authorized, &token_file);
    Ok(())
}

/// Tells the person what to do: open the URL here, or elsewhere and paste the result back.
fn instructions(pending: &Authorization, opened: bool, timeout: Duration) {
    let port = pending.port();
    let how = if opened {
        "A browser was opened; if it did not show Google's consent screen, open this URL:"
    } else {
        "Open this URL in a browser, sign in with the Gmail account to send from and allow access:"
    };
    eprintln!(
        "\n{how}\n\n    {url}\n\n\
         Waiting up to {wait} for the browser to come back to {redirect}\n\
         Browser on another machine? It ends on a page that cannot be reached: copy that page's\n\
         whole address from the address bar (or just its code), paste it here and press Enter.\n\
         Or forward the port before opening the URL: ssh -L {port}:127.0.0.1:{port} THIS_HOST\n",
        url = pending.url(),
        wait = humantime::format_duration(timeout),
        redirect = pending.redirect_uri(),
    );
}

/// Who was authorized, where the token is, and the configuration that uses it.
fn report(authorized: &Authorized, token_file: &Path) {
    let who = match &authorized.account {
        Some(account) => account.clone(),
        None => "the account (its address is unknown without the openid email scopes)".into(),
    };
    let quoted = written(&who, token_file);
    println!(
        "To send through it, put this in the configuration file:\n\n\
         [relay]\nmode = \"gmail\"\n\n[gmail]\ncredentials = {quoted}"
    );
}

/// Prints who was authorized and where the token went; the file's path as a TOML string for the
/// configuration lines. Absolute, because the relay resolves a relative path from its own
/// working directory.
pub(super) fn written(who: &str, token_file: &Path) -> String {
    let path = std::path::absolute(token_file).unwrap_or_else(|_| token_file.to_path_buf());
    println!("Authorized {who}.");
    println!("Token written to {} (mode 0600).", path.display());
    toml::Value::String(path.display().to_string()).to_string()
}

/// Opens the URL in the desktop's browser when there is one; false when not tried or it failed.
/// A missing opener is normal (servers, containers) and only means the URL must be opened by hand.
fn open_browser(url: &str) -> bool {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        // Without a display, xdg-open would start a text browser inside this terminal.
        let display = ["DISPLAY", "WAYLAND_DISPLAY"]
            .iter()
            .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
        if !display {
            return false;
        }
        "xdg-open"
    };
    let spawned = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => {
            // Reaped in the background: the opener may wait for the browser to exit.
            std::thread::spawn(move || child.wait());
            true
        }
        Err(_) => false,
    }
}

/// Lines typed or pasted on stdin. A plain thread rather than tokio's stdin: tokio reads stdin on
/// its blocking pool, which the runtime waits for at exit, so a run that ends through the
/// loopback redirect would hang until someone pressed Enter. This thread dies with the process.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if sender.blocking_send(line).is_err() {
                break;
            }
        }
    });
    receiver
}
