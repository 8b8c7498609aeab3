//! `smtp2gmail completions SHELL`: prints a completion script for the shell on stdout.
//!
//! Needs no configuration, so it runs before the config is loaded and works anywhere, e.g.
//! `smtp2gmail completions bash > /etc/bash_completion.d/smtp2gmail`.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{Cli, EXIT_FAILURE};

/// Arguments of `smtp2gmail completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to generate completions for
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Writes the completion script for `args.shell` to stdout.
pub fn run(args: CompletionsArgs) -> ExitCode {
    let mut command = Cli::command();
    let name = command.get_name().to_string();
    // Generated into memory first: clap_complete panics when its writer fails, and a closed
    // pipe (`| head`) is not worth a panic.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("smtp2gmail: cannot write the completion script: {err}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
