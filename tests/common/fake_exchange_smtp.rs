//! A fake of Exchange Online's SMTP submission (`smtp.office365.com:587`) on 127.0.0.1: STARTTLS
//! with a test certificate for "localhost" (real TLS, the client trusts it through `smtp_ca`),
//! then `AUTH XOAUTH2` checked against the tokens the fake Microsoft issued for Exchange's scope
//! (`535 5.7.3 Authentication unsuccessful` otherwise), then one or more transactions whose
//! bytes it keeps exactly (dot-unstuffed).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::fake_microsoft::{FakeMicrosoft, OUTLOOK_SCOPE};
use super::tls::TestCert;

/// One submitted message.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The `user=` of XOAUTH2.
    pub user: String,
    /// MAIL FROM.
    pub mail_from: String,
    /// RCPT TO, in order.
    pub rcpt_to: Vec<String>,
    /// The message bytes, dot-unstuffed.
    pub data: Vec<u8>,
}

/// The fake server; runs until the test's runtime ends.
pub struct FakeExchangeSmtp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate (the client's `smtp_ca`).
    pub cert: TestCert,
    submitted: Arc<Mutex<Vec<Submitted>>>,
}

impl FakeExchangeSmtp {
    /// Starts it, accepting tokens `microsoft` issued for Exchange Online.
    pub async fn start(microsoft: Arc<FakeMicrosoft>) -> FakeExchangeSmtp {
        let cert = TestCert::new();
        let chain = vec![CertificateDer::from_pem_file(cert.cert_path()).unwrap()];
        let key = PrivateKeyDer::from_pem_file(cert.key_path()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let submitted = Arc::new(Mutex::new(Vec::new()));
        let kept = submitted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, microsoft, kept) =
                    (acceptor.clone(), microsoft.clone(), kept.clone());
                tokio::spawn(async move {
                    let mut plain = BufReader::new(tcp);
                    reply(
                        &mut plain,
                        "220 fake.outlook.office365.com Microsoft ESMTP MAIL Service ready",
                    )
                    .await;
                    // Before STARTTLS only EHLO and STARTTLS itself.
                    loop {
                        let line = read_line(&mut plain).await;
                        if line.starts_with("EHLO") {
                            reply(&mut plain, "250-fake.outlook.office365.com Hello\r\n250-SIZE 157286400\r\n250 STARTTLS").await;
                        } else if line == "STARTTLS" {
                            reply(&mut plain, "220 2.0.0 SMTP server ready").await;
                            break;
                        } else {
                            reply(
                                &mut plain,
                                "530 5.7.57 Client not authenticated to send mail",
                            )
                            .await;
                            return;
                        }
                    }
                    let Ok(tls) = acceptor.accept(plain.into_inner()).await else {
                        return;
                    };
                    session(BufReader::new(tls), &microsoft, &kept).await;
                });
            }
        });
        FakeExchangeSmtp {
            addr,
            cert,
            submitted,
        }
    }

    /// What was submitted, in order.
    pub fn submitted(&self) -> Vec<Submitted> {
        self.submitted.lock().unwrap().clone()
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: BufReader<S>,
    microsoft: &FakeMicrosoft,
    kept: &Mutex<Vec<Submitted>>,
) {
    let mut user = None;
    let mut transaction: Option<Submitted> = None;
    loop {
        let line = read_line(&mut stream).await;
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            reply(&mut stream, "250-fake.outlook.office365.com Hello\r\n250-SIZE 157286400\r\n250 AUTH LOGIN XOAUTH2").await;
        } else if let Some(encoded) = line.strip_prefix("AUTH XOAUTH2 ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&decoded).to_string();
            let parsed = text
                .strip_prefix("user=")
                .and_then(|rest| rest.split_once("\x01auth=Bearer "))
                .and_then(|(who, rest)| {
                    Some((who.to_string(), rest.strip_suffix("\x01\x01")?.to_string()))
                });
            match parsed {
                // An app's token for any mailbox it has FullAccess to; a user's for that user.
                Some((who, token))
                    if microsoft.is_token(&token, OUTLOOK_SCOPE)
                        || microsoft.smtp_user(&token).as_deref() == Some(who.as_str()) =>
                {
                    user = Some(who);
                    reply(&mut stream, "235 2.7.0 Authentication successful").await;
                }
                _ => reply(&mut stream, "535 5.7.3 Authentication unsuccessful").await,
            }
        } else if upper.starts_with("MAIL FROM:") && user.is_some() {
            let from = line[10..]
                .split('>')
                .next()
                .unwrap_or_default()
                .trim_start_matches('<');
            transaction = Some(Submitted {
                user: user.clone().unwrap(),
                mail_from: from.to_string(),
                rcpt_to: Vec::new(),
                data: Vec::new(),
            });
            reply(&mut stream, "250 2.1.0 Sender OK").await;
        } else if upper.starts_with("RCPT TO:") && transaction.is_some() {
            let to = line[8..].trim_start_matches('<').trim_end_matches('>');
            transaction.as_mut().unwrap().rcpt_to.push(to.to_string());
            reply(&mut stream, "250 2.1.5 Recipient OK").await;
        } else if upper == "DATA" && transaction.is_some() {
            reply(&mut stream, "354 Start mail input; end with <CRLF>.<CRLF>").await;
            let mut data = Vec::new();
            loop {
                let mut raw = Vec::new();
                if stream.read_until(b'\n', &mut raw).await.unwrap_or(0) == 0 {
                    return;
                }
                if raw == b".\r\n" {
                    break;
                }
                let unstuffed = if raw.starts_with(b".") {
                    &raw[1..]
                } else {
                    &raw[..]
                };
                data.extend_from_slice(unstuffed);
            }
            let mut done = transaction.take().unwrap();
            done.data = data;
            kept.lock().unwrap().push(done);
            reply(
                &mut stream,
                "250 2.6.0 <fake@outlook> Queued mail for delivery",
            )
            .await;
        } else if upper == "QUIT" || line.is_empty() {
            reply(
                &mut stream,
                "221 2.0.0 Service closing transmission channel",
            )
            .await;
            return;
        } else {
            reply(&mut stream, "503 5.5.1 Bad sequence of commands").await;
        }
    }
}

async fn read_line<S: AsyncRead + Unpin>(stream: &mut BufReader<S>) -> String {
    let mut line = String::new();
    let _ = stream.read_line(&mut line).await;
    line.trim_end().to_string()
}

async fn reply<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut BufReader<S>, text: &str) {
    let _ = stream
        .get_mut()
        .write_all(format!("{text}\r\n").as_bytes())
        .await;
}
