//! `smtp2gmail authorize` end to end against the fake Google: the real binary, a "browser" made of
//! an HTTP client that does not follow redirects (it reads the consent redirect's Location and
//! opens it on the loopback listener, as a browser would), and the paste path of headless runs.
//! Client files and the relay's use of the new token file are in authorize_files.rs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use common::WAIT;
use common::fake_google::{CLIENT_ID, CLIENT_SECRET, FakeGoogle, GMAIL_SEND, write_json};
use common::fake_oauth::{ACCOUNT, query_param, visit};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdin};

/// A fake Google and a directory holding its Desktop app client file.
struct Setup {
    fake: FakeGoogle,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Setup {
        let fake = FakeGoogle::start().await;
        let dir = tempfile::tempdir().unwrap();
        write_json(dir.path(), "client.json", &fake.installed_client_json());
        Setup { fake, dir }
    }

    fn token_path(&self) -> PathBuf {
        self.dir.path().join("token.json")
    }

    /// Starts `authorize --no-browser` on client.json, writing token.json.
    async fn run(&self, extra: &[&str]) -> Run {
        Run::start(
            self.dir.path(),
            &[&["--client-secret", "client.json"][..], extra].concat(),
        )
        .await
    }
}

/// A running `smtp2gmail authorize` and the consent URL it printed.
struct Run {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Lines<BufReader<ChildStderr>>,
    printed: String,
    url: url::Url,
}

/// How a run ended.
struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    async fn start(dir: &Path, args: &[&str]) -> Run {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_smtp2gmail"))
            .arg("authorize")
            .args(["--token-file", "token.json", "--no-browser"])
            .args(args)
            .current_dir(dir)
            .env("NO_COLOR", "1")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut printed = String::new();
        let url = tokio::time::timeout(WAIT, async {
            while let Some(line) = stderr.next_line().await.unwrap() {
                printed.push_str(&line);
                printed.push('\n');
                if line.trim().starts_with("http") {
                    return Some(url::Url::parse(line.trim()).unwrap());
                }
            }
            None
        })
        .await
        .expect("the URL is printed");
        let url = url.unwrap_or_else(|| panic!("no URL on stderr: {printed}"));
        Run {
            child,
            stdin,
            stderr,
            printed,
            url,
        }
    }

    /// A query parameter of the consent URL.
    fn param(&self, name: &str) -> String {
        query_param(&self.url, name).unwrap_or_else(|| panic!("{name} in {}", self.url))
    }

    /// Types a line on stdin, as a person pasting.
    async fn paste(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Waits for the exit (stdin stays open: the run must end without it).
    async fn finish(mut self) -> Finished {
        let mut rest = String::new();
        let mut stdout = String::new();
        let mut out = self.child.stdout.take().unwrap();
        let ended = tokio::time::timeout(WAIT, async {
            let read_stdout = out.read_to_string(&mut stdout);
            let read_stderr = async {
                while let Some(line) = self.stderr.next_line().await.unwrap() {
                    rest.push_str(&line);
                    rest.push('\n');
                }
            };
            let (status, ..) = tokio::join!(self.child.wait(), read_stdout, read_stderr);
            status.unwrap()
        })
        .await
        .expect("authorize exits");
        Finished {
            code: ended.code(),
            stdout,
            stderr: self.printed + &rest,
        }
    }
}

/// The token file holds every quickstart key, the granted scopes as a list, and an RFC 3339 UTC
/// expiry about an hour ahead; it is private; and no secret was ever printed.
#[track_caller]
fn assert_token_file(setup: &Setup, finished: &Finished) {
    let path = setup.token_path();
    let file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let refresh_token = "fake-refresh-token-authorized-1";
    assert_eq!(file["token"], "fake-access-1");
    assert_eq!(file["refresh_token"], refresh_token);
    assert_eq!(file["token_uri"], setup.fake.token_uri());
    assert_eq!(file["client_id"], CLIENT_ID);
    assert_eq!(file["client_secret"], CLIENT_SECRET);
    assert_eq!(file["account"], ACCOUNT);
    let userinfo = "https://www.googleapis.com/auth/userinfo.email";
    assert_eq!(file["scopes"], json!([GMAIL_SEND, "openid", userinfo]));
    let expiry = file["expiry"].as_str().unwrap();
    assert!(expiry.ends_with('Z') && expiry.len() == 20, "{expiry}");
    let left = humantime::parse_rfc3339(expiry)
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(3500) && left < Duration::from_secs(3600));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(finished.stdout.contains(&format!("Authorized {ACCOUNT}")));
    let config_line = format!("credentials = {:?}", path.display().to_string());
    assert!(
        finished.stdout.contains(&config_line),
        "{}",
        finished.stdout
    );
    let printed = format!("{}{}", finished.stdout, finished.stderr);
    for secret in [CLIENT_SECRET, refresh_token, "fake-access-1", "fake-code"] {
        assert!(!printed.contains(secret), "{secret} printed: {printed}");
    }
}

/// The exchange sent the client secret, the identical redirect URI and a verifier that matches.
#[track_caller]
fn assert_exchange(fake: &FakeGoogle, run_redirect_uri: &str) {
    let exchanges = fake.code_exchanges();
    assert_eq!(exchanges.len(), 1);
    let exchange = &exchanges[0];
    assert_eq!(exchange.verdict, Ok(()));
    assert_eq!(exchange.client_secret.as_deref(), Some(CLIENT_SECRET));
    assert_eq!(exchange.redirect_uri.as_deref(), Some(run_redirect_uri));
    assert!(exchange.pkce_verified);
}

#[tokio::test]
async fn browser_on_this_machine_comes_back_to_the_loopback_listener() {
    let setup = Setup::new().await;
    let run = setup.run(&[]).await;
    assert!(run.url.as_str().starts_with(&setup.fake.auth_uri()));
    assert_eq!(run.param("scope"), format!("{GMAIL_SEND} openid email"));
    for (name, value) in [
        ("response_type", "code"),
        ("code_challenge_method", "S256"),
        ("access_type", "offline"),
        ("prompt", "consent"),
    ] {
        assert_eq!(run.param(name), value);
    }
    let redirect_uri = run.param("redirect_uri");
    assert!(redirect_uri.starts_with("http://127.0.0.1:") && redirect_uri.ends_with('/'));
    let port = redirect_uri
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap();

    // Browsers also ask for a favicon; that must not end the wait.
    let (status, _) = visit(&format!("{redirect_uri}favicon.ico")).await;
    assert_eq!(status, 404);
    let location = setup.fake.consent(run.url.as_str()).await;
    assert!(location.as_str().starts_with(&redirect_uri), "{location}");
    let (status, page) = visit(location.as_str()).await;
    assert_eq!(status, 200);
    assert!(page.contains("close this tab"), "{page}");

    let finished = run.finish().await;
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    let ssh = format!("ssh -L {port}:127.0.0.1:{port}");
    assert!(finished.stderr.contains(&ssh), "{}", finished.stderr);
    assert_token_file(&setup, &finished);
    assert_exchange(&setup.fake, &redirect_uri);
}

#[tokio::test]
async fn headless_run_takes_the_pasted_redirected_address() {
    let setup = Setup::new().await;
    let mut run = setup.run(&[]).await;
    let location = setup.fake.consent(run.url.as_str()).await;
    run.paste("").await;
    run.paste("something else").await;
    run.paste(&format!("  {location}  ")).await;
    let redirect_uri = run.param("redirect_uri");
    let finished = run.finish().await;
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("neither the address"),
        "feedback on the wrong line"
    );
    assert_token_file(&setup, &finished);
    assert_exchange(&setup.fake, &redirect_uri);
}

#[tokio::test]
async fn headless_run_takes_the_bare_code() {
    let setup = Setup::new().await;
    let mut run = setup.run(&[]).await;
    let location = setup.fake.consent(run.url.as_str()).await;
    run.paste(&query_param(&location, "code").unwrap()).await;
    let redirect_uri = run.param("redirect_uri");
    let finished = run.finish().await;
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert_token_file(&setup, &finished);
    assert_exchange(&setup.fake, &redirect_uri);
}

#[tokio::test]
async fn a_broken_config_toml_in_the_directory_does_not_stop_authorize() {
    // authorize is how one gets to a working configuration: it must not need one.
    let setup = Setup::new().await;
    std::fs::write(setup.dir.path().join("config.toml"), "[smtp\nlisten = ").unwrap();
    let mut run = setup.run(&[]).await;
    let location = setup.fake.consent(run.url.as_str()).await;
    run.paste(&query_param(&location, "code").unwrap()).await;
    let finished = run.finish().await;
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert_token_file(&setup, &finished);
}

#[tokio::test]
async fn a_redirect_with_another_state_is_refused() {
    let setup = Setup::new().await;
    let run = setup.run(&[]).await;
    let mut location = setup.fake.consent(run.url.as_str()).await;
    let forged: Vec<(String, String)> = location
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" { "forged".into() } else { v };
            (k.into_owned(), v.into_owned())
        })
        .collect();
    location.query_pairs_mut().clear().extend_pairs(forged);
    let (status, page) = visit(location.as_str()).await;
    assert_eq!(status, 400);
    assert!(page.contains("Not authorized"), "{page}");
    let finished = run.finish().await;
    assert_eq!(finished.code, Some(1));
    assert!(
        finished.stderr.contains("state differs"),
        "{}",
        finished.stderr
    );
    assert!(setup.fake.code_exchanges().is_empty(), "no exchange");
    assert!(!setup.token_path().exists());
}

#[tokio::test]
async fn access_denied_on_the_consent_screen_is_reported() {
    let setup = Setup::new().await;
    setup.fake.deny_consent();
    let mut run = setup.run(&[]).await;
    // Nobody at the keyboard: stdin at end of file must not end the wait.
    drop(run.stdin.take());
    let location = setup.fake.consent(run.url.as_str()).await;
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("access_denied")
    );
    let (status, page) = visit(location.as_str()).await;
    assert_eq!(status, 200);
    assert!(page.contains("Not authorized") && page.contains("access_denied"));
    let finished = run.finish().await;
    assert_eq!(finished.code, Some(1));
    assert!(
        finished.stderr.contains("error=access_denied"),
        "{}",
        finished.stderr
    );
    assert!(!setup.token_path().exists());
}

/// Runs a flow that Google completes but that must fail; returns the exit code and stderr.
async fn failing_exchange(setup: &Setup, answer: impl FnOnce(url::Url) -> String) -> Finished {
    let mut run = setup.run(&[]).await;
    let location = setup.fake.consent(run.url.as_str()).await;
    run.paste(&answer(location)).await;
    let finished = run.finish().await;
    assert_eq!(finished.code, Some(1), "{}", finished.stderr);
    assert!(!setup.token_path().exists());
    finished
}

#[tokio::test]
async fn a_code_google_refuses_is_a_clean_failure() {
    let setup = Setup::new().await;
    let finished = failing_exchange(&setup, |_| "4/not-a-code".into()).await;
    assert!(
        finished
            .stderr
            .contains("refused the authorization code: invalid_grant")
    );
}

#[tokio::test]
async fn no_refresh_token_is_explained() {
    let setup = Setup::new().await;
    setup.fake.omit_refresh_token();
    let finished = failing_exchange(&setup, |location| location.to_string()).await;
    assert!(
        finished.stderr.contains("prompt=consent"),
        "{}",
        finished.stderr
    );
    assert!(finished.stderr.contains("myaccount.google.com/permissions"));
}

#[tokio::test]
async fn unticked_gmail_send_is_an_error() {
    let setup = Setup::new().await;
    setup.fake.withhold_scope(GMAIL_SEND);
    let finished = failing_exchange(&setup, |location| location.to_string()).await;
    assert!(finished.stderr.contains("permission was not granted"));
}

#[tokio::test]
async fn nobody_answering_times_out() {
    let setup = Setup::new().await;
    let run = setup.run(&["--timeout", "1s"]).await;
    let finished = run.finish().await;
    assert_eq!(finished.code, Some(1));
    assert!(
        finished.stderr.contains("no answer within 1s"),
        "{}",
        finished.stderr
    );
}

#[tokio::test]
async fn scopes_and_port_can_be_chosen() {
    let setup = Setup::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut run = setup.run(&["--port", &port, "--scopes", GMAIL_SEND]).await;
    assert_eq!(
        run.param("redirect_uri"),
        format!("http://127.0.0.1:{port}/")
    );
    assert_eq!(run.param("scope"), GMAIL_SEND);
    let location = setup.fake.consent(run.url.as_str()).await;
    run.paste(location.as_str()).await;
    let finished = run.finish().await;
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    // Without `openid email` there is no ID token, so the address stays unknown.
    assert!(
        finished.stdout.contains("address is unknown"),
        "{}",
        finished.stdout
    );
    let file: Value = serde_json::from_slice(&std::fs::read(setup.token_path()).unwrap()).unwrap();
    assert_eq!(file["account"], "");
    assert_eq!(file["scopes"], json!([GMAIL_SEND]));
}
