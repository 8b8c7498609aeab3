//! The `smtp2gmail` binary: everything lives in the library; this only hands over to the CLI.

fn main() -> std::process::ExitCode {
    smtp2gmail::cli::main()
}
