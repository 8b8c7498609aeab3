//! Django's stock SMTP backend (`django.core.mail.backends.smtp.EmailBackend`) as a client: the
//! Django the end-to-end script uses (tests/e2e/run.sh), in the virtualenv it keeps under
//! target/, created here the same way when it is missing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The Django version tests/e2e/run.sh pins.
const DJANGO_VERSION: &str = "5.2.19";

/// A python3 that imports Django: `$E2E_VENV/bin/python`, else `target/e2e-venv/bin/python`,
/// created (once per test binary) when it does not import the pinned Django.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = std::env::var_os("E2E_VENV")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    let target = std::env::var_os("CARGO_TARGET_DIR")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| {
                            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target")
                        });
                    target.join("e2e-venv")
                });
            let python = venv.join("bin/python");
            let check =
                format!("import django, sys; sys.exit(django.get_version() != '{DJANGO_VERSION}')");
            let has_django = Command::new(&python).args(["-c", &check]).status();
            if !has_django.is_ok_and(|s| s.success()) {
                let created = Command::new("python3")
                    .arg("-m")
                    .arg("venv")
                    .arg(&venv)
                    .status();
                assert!(
                    created.is_ok_and(|s| s.success()),
                    "cannot create {}",
                    venv.display()
                );
                let installed = Command::new(&python)
                    .args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
                    .arg(format!("Django=={DJANGO_VERSION}"))
                    .status();
                assert!(
                    installed.is_ok_and(|s| s.success()),
                    "pip install Django failed"
                );
            }
            python
        })
        .clone()
}

/// Sends one message with Django's `EmailMessage` through its SMTP backend to `addr`; `to`, `cc`
/// and `bcc` as Django takes them. Panics with Django's error if sending fails; returns what the
/// script printed (the number of messages sent).
pub async fn send(addr: SocketAddr, from: &str, to: &[&str], cc: &[&str], bcc: &[&str]) -> String {
    let script = r#"
import json, sys
from django.conf import settings
args = json.loads(sys.argv[1])
settings.configure(
    EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
    EMAIL_HOST="127.0.0.1", EMAIL_PORT=args["port"], EMAIL_TIMEOUT=30,
)
import django
django.setup()
from django.core.mail import EmailMessage
message = EmailMessage("Quarterly report", "Hello from Django.\n", args["from"],
                       args["to"], bcc=args["bcc"], cc=args["cc"])
print(message.send(fail_silently=False))
"#;
    let args =
        serde_json::json!({"port": addr.port(), "from": from, "to": to, "cc": cc, "bcc": bcc});
    let output = tokio::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(args.to_string())
        .output()
        .await
        .expect("python runs");
    assert!(
        output.status.success(),
        "Django failed to send: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}
