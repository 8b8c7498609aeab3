//! The tests' fake Google (OAuth token endpoint and Gmail upload, tests/common) as a process, for
//! the browser and Mailpit-client tests in tests/inbox/, which are not Rust: release there goes
//! to this fake instead of Google.
//!
//! `cargo run --example fake_google -- DIR` writes `DIR/token.json` (credentials the fake
//! accepts), prints `api_base http://127.0.0.1:PORT`, then one JSON line per accepted upload
//! (`{"id", "recipients", "from"}`) until it is killed.

use std::time::Duration;

// The shared fake's modules refer to each other (and to `WAIT`) through `super`: here they sit
// at the crate root.
/// The fake's own bound on waits.
#[allow(dead_code)]
const WAIT: Duration = Duration::from_secs(20);
#[allow(dead_code)]
#[path = "../tests/common/credential_files.rs"]
mod credential_files;
#[allow(dead_code)]
#[path = "../tests/common/fake_gmail.rs"]
mod fake_gmail;
#[allow(dead_code)]
#[path = "../tests/common/fake_google.rs"]
mod fake_google;
#[allow(dead_code)]
#[path = "../tests/common/fake_oauth.rs"]
mod fake_oauth;

use fake_google::FakeGoogle;

#[tokio::main]
async fn main() {
    let dir = std::env::args().nth(1).expect("usage: fake_google DIR");
    let google = FakeGoogle::start().await;
    let token = fake_google::token_json(&google.token_uri());
    fake_google::write_json(std::path::Path::new(&dir), "token.json", &token);
    println!("api_base {}", google.api_base());
    let mut printed = 0;
    loop {
        // A tool's output loop, not a test's synchronisation: the reader waits for lines.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for upload in google.uploads().iter().skip(printed) {
            let line = serde_json::json!({
                "id": upload.id,
                "recipients": upload.recipients,
                "from": upload.from,
            });
            println!("{line}");
            printed += 1;
        }
    }
}
