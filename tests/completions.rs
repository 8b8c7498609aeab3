//! `smtp2gmail completions SHELL`: a script for each shell, printed without needing a config.

use std::process::Command;

/// Runs `completions SHELL` in a directory whose config.toml is invalid: completions must not
/// read it.
fn completions(shell: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), "not = [valid toml").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_smtp2gmail"))
        .current_dir(dir.path())
        .args(["completions", shell])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{shell}: exit {:?}, stderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn bash_zsh_and_fish_scripts_name_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let script = completions(shell);
        assert!(!script.is_empty(), "{shell}: empty script");
        for word in ["smtp2gmail", "serve", "queue", "authorize"] {
            assert!(
                script.contains(word),
                "{shell}: script does not mention {word}"
            );
        }
    }
}

#[test]
fn unknown_shell_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_smtp2gmail"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
