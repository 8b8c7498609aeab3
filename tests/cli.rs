//! The `smtp2gmail` binary as a user runs it: config errors, the startup line, console output on
//! stdout with logs on stderr, and a clean exit on SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{Client, assert_code};

fn smtp2gmail(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_smtp2gmail"));
    command
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    command
}

/// Runs `serve --config` with `config` and returns the exit code and stderr.
fn serve_with_config(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("smtp.toml"), config).unwrap();
    let output = smtp2gmail(dir.path())
        .args(["serve", "--config", "smtp.toml"])
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let (code, stderr) =
        serve_with_config("[smtp]\nhostname = \"mx\"\nlisten_on = [\"127.0.0.1:25\"]\n");
    assert_eq!(code, Some(2));
    assert!(stderr.contains("smtp.toml:3:"), "{stderr}");
    assert!(stderr.contains("listen_on"), "{stderr}");
}

#[test]
fn bad_value_names_file_line_and_key() {
    let (code, stderr) = serve_with_config("[relay]\n\nmode = \"gmial\"\n");
    assert_eq!(code, Some(2));
    assert!(stderr.contains("smtp.toml:3:"), "{stderr}");
    assert!(stderr.contains("relay.mode"), "{stderr}");
    assert!(
        stderr.contains("console"),
        "lists the valid modes: {stderr}"
    );

    let (code, stderr) = serve_with_config("[smtp]\nlisten = [\"not an address\"]\n");
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("smtp.toml:2:") && stderr.contains("smtp.listen"),
        "{stderr}"
    );

    let (code, stderr) = serve_with_config("[smtp]\nmax_connections = 0\n");
    assert_eq!(code, Some(2));
    assert!(stderr.contains("smtp.max_connections"), "{stderr}");
}

#[test]
fn missing_config_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = smtp2gmail(dir.path())
        .args(["serve", "--config", "nope.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("nope.toml"));
}

/// A running `smtp2gmail serve` with its stdout and stderr captured.
struct Running {
    child: Child,
    addr: SocketAddr,
    startup: String,
    /// Everything after the startup line, collected by a thread so the server never blocks on a
    /// full pipe.
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Drop for Running {
    /// A failed assertion must not leave a server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn start(dir: &Path, args: &[&str]) -> Running {
        let mut child = smtp2gmail(dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut startup = String::new();
        stderr.read_line(&mut startup).unwrap();
        let text = match serde_json::from_str::<serde_json::Value>(&startup) {
            Ok(json) => json["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            Err(_) => startup.clone(),
        };
        let addr = text
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in startup line: {startup}"))
            .trim_end_matches(',')
            .parse()
            .unwrap();
        let stderr = std::thread::spawn(move || {
            let mut rest = String::new();
            stderr.read_to_string(&mut rest).unwrap();
            rest
        });
        Running {
            child,
            addr,
            startup,
            stderr: Some(stderr),
        }
    }

    /// SIGTERM, then the exit code and everything the server printed on stdout and stderr.
    fn terminate(mut self) -> (Option<i32>, String, String) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let code = self.child.wait().unwrap().code();
        (code, stdout, self.stderr.take().unwrap().join().unwrap())
    }
}

#[tokio::test]
async fn console_mode_prints_mail_on_stdout_and_logs_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[http]\nlisten = \"127.0.0.1:0\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n",
    )
    .unwrap();
    // No --config: ./config.toml is picked up.
    let server = Running::start(dir.path(), &["serve"]);
    assert!(
        server.startup.contains("console mode"),
        "{}",
        server.startup
    );
    assert!(server.startup.contains("config.toml"), "{}", server.startup);
    let (mut client, _) = Client::connect(server.addr).await;
    client
        .start_transaction("dev@example.com", &["someone@example.com"])
        .await;
    assert_code(
        &client
            .data(b"Subject: printed\r\n\r\nsecret body text\r\n.\r\n")
            .await,
        250,
    );
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 bye\r\n");
    let (code, stdout, stderr) = server.terminate();
    assert_eq!(code, Some(0));
    assert!(stdout.contains("someone@example.com"), "{stdout}");
    assert!(stdout.contains("secret body text"), "{stdout}");
    assert!(
        !stdout.contains("listening on"),
        "logs leaked into stdout: {stdout}"
    );
    assert!(
        !stderr.contains("secret body text"),
        "the body was logged: {stderr}"
    );
    assert!(!stderr.contains("Subject"), "headers were logged: {stderr}");
}

#[tokio::test]
async fn json_logs_have_one_line_per_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("smtp.toml"),
        "[http]\nlisten = \"127.0.0.1:0\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n[relay]\nmode = \"discard\"\n",
    )
    .unwrap();
    let server = Running::start(
        dir.path(),
        &["--log-format", "json", "serve", "--config", "smtp.toml"],
    );
    let (mut client, _) = Client::connect(server.addr).await;
    client
        .start_transaction("dev@example.com", &["x@example.com", "y@example.com"])
        .await;
    let reply = client.data(b"Subject: s\r\n\r\nbody\r\n.\r\n").await;
    let id = reply.trim_end().rsplit(' ').next().unwrap().to_string();
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 bye\r\n");
    let (code, stdout, stderr) = server.terminate();
    assert_eq!(code, Some(0));
    assert!(stdout.is_empty(), "discard mode prints nothing: {stdout}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let messages: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["fields"]["id"] == id.as_str())
        .collect();
    assert_eq!(messages.len(), 1, "{stderr}");
    let fields = &messages[0]["fields"];
    assert_eq!(fields["from"], "dev@example.com");
    assert_eq!(fields["recipients"], 2);
    assert_eq!(fields["size"], 20);
    assert_eq!(fields["reply"], 250);
    assert!(fields["duration_ms"].is_u64());
}

/// The built-in defaults, as `check` reports them: `serve` itself would bind 127.0.0.1:2525 and
/// 127.0.0.1:9925, which a server the user is running holds.
#[test]
fn without_config_it_runs_console_mode_on_2525() {
    let dir = tempfile::tempdir().unwrap();
    let output = smtp2gmail(dir.path()).arg("check").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("no config file: built-in defaults"),
        "{stdout}"
    );
    assert!(stdout.contains("console mode"), "{stdout}");
    assert!(
        stdout.contains("SMTP on 127.0.0.1:2525; HTTP endpoints on http://127.0.0.1:9925/"),
        "{stdout}"
    );
}

#[test]
fn gmail_settings_are_checked_at_start() {
    let (code, stderr) = serve_with_config(
        "[relay]\nmode = \"gmail\"\n[[gmail.accounts]]\nname = \"support\"\ncredentials = \"t.json\"\n",
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("gmail.accounts.senders"), "{stderr}");

    let (code, stderr) = serve_with_config(
        "[relay]\nmode = \"gmail\"\n[gmail]\ncredentials = \"missing-token.json\"\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("missing-token.json"), "{stderr}");

    let (code, stderr) =
        serve_with_config("[relay]\nmode = \"gmail\"\n[gmail]\nclient_id = \"x\"\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("client_secret"), "{stderr}");
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// `hash-password` with the password on stdin, as a script would run it.
fn hash_password(dir: &Path, password: &str) -> String {
    use std::io::Write;
    let mut child = smtp2gmail(dir)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    hash
}

#[test]
fn refuses_to_start_as_an_open_relay() {
    let (code, stderr) = serve_with_config("[smtp]\nlisten = [\"0.0.0.0:0\"]\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("open relay"), "{stderr}");
    assert!(stderr.contains("allow_unauthenticated_remote"), "{stderr}");

    let (code, stderr) = serve_with_config(
        "[smtp]\nlisten = [\"0.0.0.0:0\"]\nauth_required = false\nallow_unauthenticated_remote = false\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]
fn auth_without_tls_may_only_name_plain_listeners() {
    let (code, stderr) = serve_with_config(
        "[smtp]\nlisten = [\"127.0.0.1:0\"]\nallow_auth_without_tls = [\"10.0.0.5:2525\"]\n",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "smtp.toml:3:27: smtp.allow_auth_without_tls: 10.0.0.5:2525 is not in smtp.listen"
        ),
        "{stderr}"
    );
}

#[test]
fn an_explicitly_allowed_open_listener_starts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("smtp.toml"),
        "[http]\nlisten = \"\"\n[smtp]\nlisten = [\"0.0.0.0:0\"]\nallow_unauthenticated_remote = true\n\
         shutdown_grace = \"1s\"\n",
    )
    .unwrap();
    let server = Running::start(dir.path(), &["serve", "--config", "smtp.toml"]);
    let (code, _, _) = server.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn plaintext_passwords_in_the_config_are_refused() {
    let (code, stderr) =
        serve_with_config("[[smtp.users]]\nname = \"app\"\npassword_hash = \"hunter2\"\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("smtp.users") && stderr.contains("plaintext"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the value is not echoed: {stderr}"
    );
}

#[tokio::test]
async fn passwords_never_reach_the_logs() {
    const RIGHT: &str = "Right-Pa55word";
    const WRONG: &str = "Wr0ng-Guess";
    let dir = tempfile::tempdir().unwrap();
    let hash = hash_password(dir.path(), RIGHT);
    std::fs::write(
        dir.path().join("smtp.toml"),
        format!(
            "[http]\nlisten = \"\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\nauth_required = true\n\n\
             [[smtp.users]]\nname = \"app\"\npassword_hash = \"{hash}\"\n"
        ),
    )
    .unwrap();
    let server = Running::start(dir.path(), &["serve", "--config", "smtp.toml"]);
    let (mut client, _) = Client::connect(server.addr).await;
    assert_code(&client.cmd("EHLO client.test").await, 250);
    let plain = |password: &str| b64(&format!("\0app\0{password}"));
    assert_code(
        &client.cmd(&format!("AUTH PLAIN {}", plain(WRONG))).await,
        535,
    );
    assert_code(&client.cmd("AUTH LOGIN").await, 334);
    assert_code(&client.cmd("YXBw").await, 334);
    assert_code(&client.cmd(&b64(RIGHT)).await, 235);
    assert_code(&client.cmd("QUIT").await, 221);
    let (_, _, stderr) = server.terminate();
    assert!(stderr.contains("authentication failed"), "{stderr}");
    assert!(
        stderr.contains("\"app\"") && stderr.contains("127.0.0.1"),
        "{stderr}"
    );
    for secret in [RIGHT, WRONG, &plain(RIGHT), &plain(WRONG), &hash] {
        assert!(!stderr.contains(secret), "{secret} leaked: {stderr}");
    }
}

#[test]
fn check_loads_the_tls_certificate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("smtp.toml"),
        "[smtp.tls]\ncert = \"missing-cert.pem\"\nkey = \"missing-key.pem\"\n",
    )
    .unwrap();
    let output = smtp2gmail(dir.path())
        .args(["check", "--config", "smtp.toml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("missing-cert.pem"), "{stdout}");
}
