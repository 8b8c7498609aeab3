//! `smtp2gmail check` and `smtp2gmail send` for a Microsoft 365 account: the real binary as a
//! child process, the fake Microsoft in this process. With a client secret, and with a
//! certificate (a key and certificate made by openssl, the assertion checked by the fake).

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use common::fake_microsoft::{self, FakeMicrosoft};
use common::process::smtp2gmail;
use sha2::{Digest, Sha256};

/// Exit code and everything printed.
async fn run(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let run = smtp2gmail(dir, args).await;
    (run.code, format!("{}{}", run.stdout, run.stderr))
}

/// `check` passes printing `expected`, and `send` gets one message through Graph.
async fn check_and_send(fake: &FakeMicrosoft, dir: &Path, expected: &[&str]) {
    let (code, printed) = run(dir, &["check"]).await;
    assert_eq!(code, Some(0), "{printed}");
    for expected in expected {
        assert!(printed.contains(expected), "{expected:?} in {printed}");
    }
    let args = [
        "send",
        "--from",
        "app@contoso.example",
        "--to",
        "alice@example.com",
    ];
    let (code, printed) = run(dir, &args).await;
    assert_eq!(code, Some(0), "{printed}");
    assert!(printed.contains("accepted by Microsoft Graph"), "{printed}");
    assert_eq!(fake.accepted().len(), 1);
    assert_eq!(fake.accepted()[0].recipients, ["alice@example.com"]);
}

/// `config.toml` in microsoft mode against the fake, with `credential` lines for the app.
fn microsoft_mode(fake: &FakeMicrosoft, dir: &Path, credential: &str) {
    let config = format!(
        "[relay]\nmode = \"microsoft\"\n[microsoft]\ntenant = \"{}\"\nclient_id = \"{}\"\n\
         {credential}\nmailbox = \"app@contoso.example\"\ngraph_base = \"{base}\"\n\
         login_base = \"{base}\"\nlarge_messages = \"none\"\n",
        fake_microsoft::TENANT,
        fake_microsoft::CLIENT_ID,
        base = fake.base_url()
    );
    std::fs::write(dir.join("config.toml"), config).unwrap();
}

#[tokio::test]
async fn check_and_send_work_with_a_client_secret() {
    let (fake, dir) = (FakeMicrosoft::start().await, tempfile::tempdir().unwrap());
    std::fs::write(dir.path().join("secret"), fake_microsoft::CLIENT_SECRET).unwrap();
    microsoft_mode(&fake, dir.path(), "client_secret = \"file:secret\"");
    let expected = [
        "microsoft mode",
        "Entra app",
        "client secret from file:secret",
        "access token",
    ];
    check_and_send(&fake, dir.path(), &expected).await;

    // An expired secret: check fails and names the fix.
    fake.expire_secret();
    let (code, printed) = run(dir.path(), &["check"]).await;
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed.contains("AADSTS7000222") && printed.contains("has expired"),
        "{printed}"
    );
}

#[tokio::test]
async fn check_and_send_work_with_a_certificate() {
    let (fake, dir) = (FakeMicrosoft::start().await, tempfile::tempdir().unwrap());
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
        "-days",
        "1",
        "-subj",
        "/CN=smtp2gmail test app",
    ]);
    openssl(&["rsa", "-in", "key.pem", "-pubout", "-out", "public.pem"]);
    openssl(&[
        "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
    ]);
    let der = std::fs::read(dir.path().join("cert.der")).unwrap();
    let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(&der));
    fake.trust_certificate(
        &thumbprint,
        &std::fs::read(dir.path().join("public.pem")).unwrap(),
    );
    microsoft_mode(
        &fake,
        dir.path(),
        "certificate = \"cert.pem\"\nprivate_key = \"key.pem\"",
    );
    check_and_send(&fake, dir.path(), &["with certificate cert.pem"]).await;
}
