//! `serve` as a newcomer meets it: a one-off address on the command line, and errors at start
//! that say how to get past them (a port already taken, an address that is not one, a token
//! file not written yet).

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};

use common::assert_code;

fn smtp2gmail(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_smtp2gmail"));
    command
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null());
    command
}

/// Runs `serve ARGS` in `dir` (which may hold a config.toml), expecting it to stop by itself;
/// returns the exit code and stderr.
fn serve_fails(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let output = smtp2gmail(dir).arg("serve").args(args).output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// An address another program is listening on, held as long as the listener lives.
fn taken() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

#[tokio::test]
async fn listen_flags_replace_the_configured_addresses_for_one_run() {
    let dir = tempfile::tempdir().unwrap();
    // The configured addresses are taken: only the flags' addresses can make this start.
    let (_smtp, smtp_taken) = taken();
    let (_http, http_taken) = taken();
    std::fs::write(
        dir.path().join("config.toml"),
        format!("[smtp]\nlisten = [\"{smtp_taken}\"]\n[http]\nlisten = \"{http_taken}\"\n"),
    )
    .unwrap();
    let mut child = smtp2gmail(dir.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let startup = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|line| line.contains("listening on "))
        .expect("a startup line");
    let smtp: SocketAddr = startup
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split([' ', ',']).next())
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(smtp.to_string(), smtp_taken, "{startup}");
    let http = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|line| line.contains("HTTP endpoints on "))
        .expect("an HTTP line");
    assert!(!http.contains(&http_taken), "{http}");
    // The server logs each message: keep its stderr open.
    std::thread::spawn(move || lines.for_each(drop));
    assert_code(&common::send_simple(smtp).await, 250);
    // The image's HEALTHCHECK: 0 while the server answers, 1 once it is gone.
    let base = http
        .split("HTTP endpoints on ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap();
    let healthcheck = |dir: &Path| {
        let url = format!("{base}healthz");
        let output = smtp2gmail(dir)
            .args(["healthcheck", "--url", &url])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert_eq!(healthcheck(dir.path()).0, Some(0));
    child.kill().unwrap();
    child.wait().unwrap();
    let (code, stderr) = healthcheck(dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("healthz"), "{stderr}");
}

#[test]
fn healthcheck_without_http_endpoints_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), "[http]\nlisten = \"\"\n").unwrap();
    let output = smtp2gmail(dir.path()).arg("healthcheck").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("[http] listen"), "{stderr}");
}

#[test]
fn a_taken_smtp_port_names_the_setting_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (_holder, addr) = taken();
    let (code, stderr) = serve_fails(dir.path(), &["--listen", &addr, "--http-listen", ""]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("[smtp] listen"), "{stderr}");
    assert!(stderr.contains("serve --listen"), "{stderr}");
}

#[test]
fn a_taken_http_port_names_the_setting_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (_holder, addr) = taken();
    let (code, stderr) = serve_fails(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--http-listen", &addr],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("[http] listen"), "{stderr}");
    assert!(stderr.contains("serve --http-listen"), "{stderr}");
}

#[test]
fn a_listen_flag_beyond_loopback_meets_the_open_relay_rule() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = serve_fails(dir.path(), &["--listen", "0.0.0.0:0", "--http-listen", ""]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("open relay"), "{stderr}");
}

#[test]
fn an_http_address_that_is_not_one_is_an_error_not_silence() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[smtp]\nlisten = [\"127.0.0.1:0\"]\n[http]\nlisten = \"localhost:9925\"\n",
    )
    .unwrap();
    let (code, stderr) = serve_fails(dir.path(), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("config.toml:4:"), "{stderr}");
    assert!(stderr.contains("http.listen"), "{stderr}");
}

#[test]
fn a_missing_token_file_stops_serve_with_the_command_that_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[smtp]\nlisten = [\"127.0.0.1:0\"]\n[http]\nlisten = \"\"\n[relay]\nmode = \"gmail\"\n\
         [gmail]\ncredentials = \"token.json\"\n",
    )
    .unwrap();
    let (code, stderr) = serve_fails(dir.path(), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot read token.json"), "{stderr}");
    assert!(
        stderr.contains(
            "smtp2gmail authorize --client-secret CLIENT_SECRET.json --token-file token.json"
        ),
        "{stderr}"
    );
}
