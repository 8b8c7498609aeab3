//! `smtp2gmail check`: is the configuration valid, and does every account's Google credential
//! work right now? For each account it asks Google for a fresh access token and prints what it
//! found, or what is wrong and the command that fixes it.
//!
//! It does not send anything: Gmail has no call that proves a token may send without sending. It
//! checks instead that the token's granted scopes (when known) include one that allows sending.

use std::fmt::Display;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::config::{AccountConfig, Config, RelayMode};
use crate::google::{self, TokenError, TokenSource};
use crate::relay;
use crate::relay::gmail::accounts::{Account, Impersonate, Router};
use crate::server::mode_description;
use crate::smtp::tls::Tls;

/// Options of `check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Address to test service accounts with that impersonate the envelope sender
    /// [default: the first exact address in the account's senders]
    #[arg(long, value_name = "ADDR")]
    pub sender: Option<String>,
}

/// Scopes that allow `users.messages.send` (Gmail v1 discovery document); `authorize` asks for
/// the narrowest, gmail.send, but a token made by another tool may carry a broader one.
const SCOPES_THAT_SEND: [&str; 4] = [
    google::GMAIL_SEND_SCOPE,
    "https://www.googleapis.com/auth/gmail.compose",
    "https://www.googleapis.com/auth/gmail.modify",
    "https://mail.google.com/",
];

/// Where Gmail API enablement is switched on; a token request cannot tell whether it is.
const ENABLE_GMAIL_API: &str = "https://console.cloud.google.com/apis/library/gmail.googleapis.com";

/// How one account fared, ordered by severity: the worst decides the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    /// A token was obtained and may send.
    Works,
    /// Google refused the credentials or could not be reached (exit 1).
    Fails,
    /// The configuration or a credentials file is unusable, or the check needs an argument (exit 2).
    Misconfigured,
}

impl Verdict {
    fn exit_code(self) -> ExitCode {
        match self {
            Verdict::Works => ExitCode::SUCCESS,
            Verdict::Fails => ExitCode::from(EXIT_FAILURE),
            Verdict::Misconfigured => ExitCode::from(EXIT_USAGE),
        }
    }
}

/// Checks the loaded configuration and every account; prints a report on stdout.
pub async fn run(config: Config, source: Option<PathBuf>, args: CheckArgs) -> ExitCode {
    match &source {
        Some(path) => println!("config {}: valid", path.display()),
        None => println!("no config file: built-in defaults"),
    }
    println!("{}", mode_description(&config));
    println!("{}", listeners(&config));
    // The certificate is only loaded when serving; a renewal is best checked before the SIGHUP.
    if let Some(files) = &config.smtp.tls {
        match Tls::load(files) {
            Ok(_) => println!("TLS certificate {}: loads", files.cert.display()),
            Err(err) => {
                println!("TLS: {err}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    // Auto-release sends through the accounts as gmail mode does: they are checked alike.
    if !config.relay.mode.is_provider() && !config.releases_automatically() {
        println!("No Google credentials are needed in this mode. All good.");
        return ExitCode::SUCCESS;
    }
    let microsoft = config.relay.mode == RelayMode::Microsoft;
    let http = match relay::http_client() {
        Ok(http) => http,
        Err(err) => {
            println!("cannot check: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let (named, default) = Router::account_configs(&config.gmail);
    let gmail_accounts: Vec<&AccountConfig> = named.iter().chain(default.as_ref()).collect();
    let microsoft_accounts = config.microsoft.account_configs();
    let count = match microsoft {
        true => microsoft_accounts.len(),
        false => gmail_accounts.len(),
    };
    let mut worst = Verdict::Works;
    let mut failing = 0;
    for index in 0..count {
        println!();
        let sender = args.sender.as_deref();
        let built = match microsoft {
            true => {
                let account = &microsoft_accounts[index];
                println!("account {}", account.name);
                relay::microsoft::account(account, &config.microsoft.login_base, &http)
            }
            false => {
                println!("account {}", gmail_accounts[index].name);
                Account::from_config(gmail_accounts[index], &http)
            }
        };
        let verdict = match built {
            Ok(account) => check_account(&account, &http, sender).await,
            Err(err) => {
                field("problem", &err.problem);
                if let Some(fix) = &err.fix {
                    field("fix", fix);
                }
                Verdict::Misconfigured
            }
        };
        failing += usize::from(verdict != Verdict::Works);
        worst = worst.max(verdict);
    }
    println!();
    if failing == 0 && microsoft {
        println!("All {count} account(s) can get access tokens.");
        println!(
            "Not checked: whether the app may send through each mailbox (Mail.Send consent, RBAC \
             for Applications scope, Exchange licence): only a send can tell. `smtp2gmail send` \
             tries it."
        );
    } else if failing == 0 {
        println!("All {count} account(s) can get access tokens.");
        println!(
            "Not checked: whether the Gmail API is enabled for the Cloud project (only a send can \
             tell). `smtp2gmail send` tries it; if it reports accessNotConfigured, enable the API \
             at {ENABLE_GMAIL_API}"
        );
    } else {
        println!("{failing} of {count} account(s) need attention (see problem and fix above).");
    }
    worst.exit_code()
}

/// Where `serve` listens with this configuration: what a client and a browser are pointed at,
/// told without binding (a server may be running on those addresses).
fn listeners(config: &Config) -> String {
    let smtp: Vec<String> = config.smtp.listen.iter().map(ToString::to_string).collect();
    let http = match config.http.address() {
        Some(addr) => format!("on http://{addr}/"),
        None => "off".to_string(),
    };
    format!("SMTP on {}; HTTP endpoints {http}", smtp.join(", "))
}

/// One line of the report: an indented label and its value.
fn field(label: &str, value: impl Display) {
    println!("  {label:<13} {value}");
}

/// Gets a fresh token for one account built as the server would, and reports.
async fn check_account(account: &Account, http: &reqwest::Client, sender: Option<&str>) -> Verdict {
    let credentials = account.tokens.credentials();
    let issuer = match credentials.kind() {
        kind if kind.is_microsoft() => "Microsoft",
        _ => "Google",
    };
    field("credentials", &credentials);
    if let Some(project) = credentials.quota_project() {
        field("quota project", project);
    }
    let subject = match subject(account, sender) {
        Ok(subject) => subject,
        Err(problem) => {
            field("problem", problem);
            field(
                "fix",
                "run `smtp2gmail check --sender user@domain` with an address this account serves",
            );
            return Verdict::Misconfigured;
        }
    };
    field(
        "sends as",
        sends_as(account, &credentials, subject.as_deref()),
    );
    // A fresh request, not the access token a token.json may carry: that one can still be valid
    // for an hour after the refresh token died, and would hide exactly what check is for.
    let fresh = TokenSource::new(
        account.name.clone(),
        credentials.without_cached_token(),
        http.clone(),
    );
    let token = match fresh.access_token(subject.as_deref()).await {
        Ok(token) => token,
        Err(TokenError::Credentials {
            error,
            description,
            fix,
        }) => {
            let said = if description.is_empty() {
                error
            } else {
                format!("{error} ({description})")
            };
            field(
                "problem",
                format!("{issuer} refused the credentials: {said}"),
            );
            field("fix", fix);
            return Verdict::Fails;
        }
        Err(unknown @ TokenError::UnknownUser { .. }) => {
            field("problem", format!("Google refused the sender: {unknown}"));
            field(
                "fix",
                "check with an address that is a user of the domain (`--sender`), and list only \
                 such addresses in the account's senders",
            );
            return Verdict::Fails;
        }
        Err(TokenError::Temporary { reason }) => {
            field("problem", reason);
            field(
                "fix",
                format!(
                    "check the network, proxy and firewall towards {}, then run check again",
                    credentials.token_uri()
                ),
            );
            return Verdict::Fails;
        }
    };
    let expires = SystemTime::now() + token.remaining();
    // Whole minutes: the seconds are noise in a report.
    let remaining = Duration::from_secs(token.remaining().as_secs() / 60 * 60);
    field(
        "access token",
        format!(
            "obtained, expires {} (in {})",
            humantime::format_rfc3339_seconds(expires),
            humantime::format_duration(remaining)
        ),
    );
    if issuer == "Microsoft" {
        // An app token carries roles, not scopes; whether Mail.Send is among them only a send
        // tells (Graph answers ErrorAccessDenied).
        field("status", "ok");
        return Verdict::Works;
    }
    let scopes = token.scopes().or(credentials.scopes());
    match scopes {
        Some(scopes) => field("scopes", scopes.join(" ")),
        None => field("scopes", "not reported by Google"),
    }
    if let Some(scopes) = scopes
        && !scopes
            .iter()
            .any(|s| SCOPES_THAT_SEND.contains(&s.as_str()))
    {
        field(
            "problem",
            "the token cannot send mail: none of its scopes allows it",
        );
        field(
            "fix",
            format!(
                "{} (it asks for {})",
                google::authorize_again(credentials.kind()),
                google::GMAIL_SEND_SCOPE
            ),
        );
        return Verdict::Fails;
    }
    field("status", "ok");
    Verdict::Works
}

/// The user a service account's token is minted for during the check; `None` for refresh
/// tokens. A service account that impersonates the envelope sender needs a concrete address:
/// `--sender` when this account serves it, else its first non-wildcard `senders` entry.
fn subject(account: &Account, sender: Option<&str>) -> Result<Option<String>, String> {
    // An Entra app's token is the app's, whichever mailbox sends: no sender is needed.
    let app_token = *account.tokens.credentials().kind() == google::CredentialKind::EntraApp;
    if app_token && account.impersonate == Impersonate::Sender {
        return Ok(None);
    }
    match &account.impersonate {
        Impersonate::TokenUser => Ok(None),
        Impersonate::Fixed(user) => Ok(Some(user.clone())),
        Impersonate::Sender => sender
            .filter(|sender| account.serves(sender))
            .or_else(|| {
                account
                    .senders
                    .iter()
                    .map(String::as_str)
                    .find(|pattern| !pattern.starts_with("*@"))
            })
            .map(|user| Some(user.to_string()))
            .ok_or_else(|| {
                format!(
                    "cannot be checked without a concrete sender: the service account sends as the \
                     envelope sender, and senders ({}) holds only *@domain patterns",
                    account.senders.join(", ")
                )
            }),
    }
}

/// Who mail from this account appears to come from, as far as the credentials say.
fn sends_as(account: &Account, credentials: &google::Credentials, subject: Option<&str>) -> String {
    if let Some(subject) = subject {
        return match account.impersonate {
            Impersonate::Sender => format!("the envelope sender (checked as {subject})"),
            _ => subject.to_string(),
        };
    }
    if account.impersonate == Impersonate::Sender {
        return format!(
            "each envelope sender's own mailbox (senders: {})",
            account.senders.join(", ")
        );
    }
    match (credentials.account(), account.user_id.as_str()) {
        (Some(user), _) => user.to_string(),
        (None, "me") => {
            "the token's own user (not recorded with the credentials; `smtp2gmail authorize` \
             records it)"
                .to_string()
        }
        (None, user_id) => format!("{user_id} (gmail user_id)"),
    }
}
