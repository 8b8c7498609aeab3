//! Checks written in Python: a script under tests/ reads what the Rust code produced on stdin and
//! answers on stdout, so a second implementation (Python's `email` package, an independent
//! signature check) judges the output.

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `tests/<script>` with python3, `input` on stdin; its stdout. Fails the test, with the
/// script's stderr, when it exits unsuccessfully.
pub fn run_script(script: &str, input: &[u8]) -> Vec<u8> {
    let path = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("python3")
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (these tests check their output with Python)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}
