//! `smtp2gmail authorize --microsoft`: sign one Microsoft 365 user in with the device code flow
//! and write the token file `[microsoft] credentials` points at.
//!
//! As for Google's flow, prompts go to stderr and the result (who, where, the configuration
//! lines) to stdout. The app registration comes from the configuration's `[microsoft]` table,
//! or from `--tenant` and `--client-id`; nothing else of the configuration is needed, so a
//! configuration that does not load yet is not an obstacle when both flags are given.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::authorize::{AuthorizeArgs, written};
use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::config::{Config, LargeMessages, MicrosoftConfig};
use crate::microsoft::device_code::{DeviceCodeError, DeviceLogin};

/// The token file when neither `--token-file` nor `[microsoft] credentials` names one.
pub const DEFAULT_TOKEN_FILE: &str = "m365-token.json";

/// Sending through Graph as the user, staying signed in, and the user's address in the ID token.
const SCOPES: [&str; 4] = [
    "https://graph.microsoft.com/Mail.Send",
    "offline_access",
    "openid",
    "profile",
];
/// Also asked for when large messages go by SMTP: consent for both resources in one sign-in.
const SMTP_SCOPE: &str = "https://outlook.office.com/SMTP.Send";

/// Runs the flow; exit status 2 for missing settings, 1 for a failed sign-in.
pub async fn run(args: AuthorizeArgs, config: Option<&Path>) -> ExitCode {
    let (login, token_file) = match plan(&args, config) {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("smtp2gmail: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match sign_in(&login, &token_file).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("smtp2gmail: {err}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Whom to sign in and where the token goes, from the flags and the configuration.
fn plan(args: &AuthorizeArgs, config: Option<&Path>) -> Result<(DeviceLogin, PathBuf), String> {
    let microsoft = match Config::load(config) {
        Ok((config, _)) => config.microsoft,
        // Both flags make the configuration unnecessary; without them its error is the answer.
        Err(_) if args.tenant.is_some() && args.client_id.is_some() => MicrosoftConfig::default(),
        Err(err) => return Err(err.to_string()),
    };
    let missing = |flag: &str, key: &str| {
        format!("no {flag}: give it, or set {key} in the configuration's [microsoft] table")
    };
    let tenant = (args.tenant.clone().or(microsoft.tenant.clone()))
        .ok_or_else(|| missing("--tenant", "tenant"))?;
    let client_id = (args.client_id.clone().or(microsoft.client_id.clone()))
        .ok_or_else(|| missing("--client-id", "client_id"))?;
    let mut scopes: Vec<String> = SCOPES.iter().map(|s| s.to_string()).collect();
    if microsoft.large_messages == LargeMessages::Smtp {
        scopes.push(SMTP_SCOPE.to_string());
    }
    let token_file = (args.token_file.clone())
        .or(microsoft.credentials.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_FILE));
    if token_file.is_dir() {
        return Err(format!(
            "the token file {} is a directory",
            token_file.display()
        ));
    }
    let login = DeviceLogin {
        login_base: microsoft.login_base,
        tenant,
        client_id,
        scopes,
    };
    Ok((login, token_file))
}

async fn sign_in(login: &DeviceLogin, token_file: &Path) -> Result<(), DeviceCodeError> {
    let http =
        crate::relay::http_client().map_err(|err| DeviceCodeError::Unreachable(err.to_string()))?;
    let pending = login.start(&http).await?;
    eprintln!(
        "\nOn any device, open\n\n    {}\n\nand enter the code\n\n    {}\n\n\
         Sign in as the user whose mailbox sends, and accept the permissions.\n\
         Waiting for the sign-in…\n",
        pending.verification_uri, pending.user_code
    );
    let signed_in = pending.wait(&http).await?;
    signed_in.write(token_file)?;
    let who = signed_in.account.clone().unwrap_or_else(|| {
        "the user (the ID token named no address; set send_as to the mailbox's address)".into()
    });
    let quoted = written(&who, token_file);
    let toml = |value: &str| toml::Value::String(value.to_string()).to_string();
    println!(
        "To send as this user, put this in the configuration file:\n\n\
         [relay]\nmode = \"microsoft\"\n\n[microsoft]\ntenant = {}\nclient_id = {}\n\
         credentials = {quoted}",
        toml(&login.tenant),
        toml(&login.client_id)
    );
    Ok(())
}
