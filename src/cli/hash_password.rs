//! `smtp2gmail hash-password`: turns a password into the argon2 PHC string `[[smtp.users]]` wants,
//! so that the configuration never holds a password itself.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::smtp::auth;

/// Reads the password — from the terminal without echo (asked twice, to catch typos), else one
/// line of stdin for scripts — and prints its hash on stdout.
pub fn run() -> ExitCode {
    let password = if std::io::stdin().is_terminal() {
        read_from_terminal()
    } else {
        read_line_from_stdin()
    };
    let password = match password {
        Ok(password) if !password.is_empty() => password,
        Ok(_) => {
            eprintln!("smtp2gmail: the password is empty");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(message) => {
            eprintln!("smtp2gmail: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match auth::hash_password(&password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("smtp2gmail: {err}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn read_from_terminal() -> Result<String, String> {
    let read = |prompt: &str| {
        rpassword::prompt_password(prompt).map_err(|err| format!("cannot read the password: {err}"))
    };
    let password = read("Password: ")?;
    if read("Again: ")? != password {
        return Err("the passwords differ".to_string());
    }
    Ok(password)
}

fn read_line_from_stdin() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|err| format!("cannot read the password from stdin: {err}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
