//! The large-message path `large_messages = "smtp"`: SMTP submission to Exchange Online
//! (`smtp.office365.com:587`, STARTTLS) authenticated with XOAUTH2 and an app token for
//! `https://outlook.office365.com/.default`. The bytes go as they are (dot-stuffed on the wire),
//! up to the mailbox's size limit, to the envelope's recipients.
//!
//! One connection per message: large messages are rare, and Exchange allows 3 connections per
//! mailbox (more answer `432 4.3.2`), which the mailbox's send slots keep below.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::relay::Cause;
use crate::relay::gmail::api::SendError;
use crate::relay::gmail::upload::Upload;

/// The scope of an app token for SMTP AUTH.
pub const OUTLOOK_SCOPE: &str = "https://outlook.office365.com/.default";

/// Bound on each command's reply; DATA's end gets more per MiB, as Graph requests do.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and how to submit.
#[derive(Clone)]
pub struct Submission {
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Submission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Submission({}:{})", self.host, self.port)
    }
}

impl Submission {
    /// Submission to `host:port`, trusting the public CAs and, when given, the PEM certificates
    /// in `extra_ca` (a private relay, the tests' server).
    pub fn new(host: &str, port: u16, extra_ca: Option<&Path>) -> Result<Submission, String> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = extra_ca {
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|err| format!("microsoft.smtp_ca {}: {err}", path.display()))?;
            for certificate in certificates {
                roots
                    .add(certificate)
                    .map_err(|err| format!("microsoft.smtp_ca {}: {err}", path.display()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| err.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Submission {
            host: host.to_string(),
            port,
            tls: Arc::new(tls),
        })
    }

    /// Submits `upload` as `mailbox` to `rcpt_to`, authenticated with `access_token`.
    pub async fn submit(
        &self,
        mailbox: &str,
        access_token: &str,
        rcpt_to: &[String],
        upload: &Upload,
    ) -> Result<(), SendError> {
        let tcp = tokio::time::timeout(
            REPLY_TIMEOUT,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| outage(format!("{}:{} did not answer", self.host, self.port)))?
        .map_err(|err| {
            outage(format!(
                "cannot connect to {}:{}: {err}",
                self.host, self.port
            ))
        })?;
        let mut plain = BufReader::new(tcp);
        expect(&mut plain, 220).await?;
        command(&mut plain, "EHLO smtp2gmail", 250).await?;
        command(&mut plain, "STARTTLS", 220).await?;
        let name = ServerName::try_from(self.host.clone())
            .map_err(|_| outage(format!("{} is not a host name", self.host)))?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let tls = connector
            .connect(name, plain.into_inner())
            .await
            .map_err(|err| outage(format!("TLS with {}: {err}", self.host)))?;
        let mut session = BufReader::new(tls);
        command(&mut session, "EHLO smtp2gmail", 250).await?;
        let xoauth2 = format!("user={mailbox}\x01auth=Bearer {access_token}\x01\x01");
        let auth = base64::engine::general_purpose::STANDARD.encode(xoauth2);
        command(&mut session, &format!("AUTH XOAUTH2 {auth}"), 235).await?;
        let size = upload.len();
        command(
            &mut session,
            &format!("MAIL FROM:<{mailbox}> SIZE={size}"),
            250,
        )
        .await?;
        for recipient in rcpt_to {
            command(&mut session, &format!("RCPT TO:<{recipient}>"), 250).await?;
        }
        command(&mut session, "DATA", 354).await?;
        send_data(session.get_mut(), upload).await?;
        expect(&mut session, 250).await?;
        // The message is Exchange's now; a failed QUIT changes nothing.
        let _ = session.get_mut().write_all(b"QUIT\r\n").await;
        Ok(())
    }
}

/// Writes the message dot-stuffed, ending with CRLF if it does not, then `.`.
async fn send_data<S: AsyncWrite + Unpin>(
    stream: &mut S,
    upload: &Upload,
) -> Result<(), SendError> {
    let mut chunks = upload.stream();
    let mut at_line_start = true;
    let mut last = b'\n';
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|err| outage(format!("cannot read the message: {err}")))?;
        let mut stuffed = Vec::with_capacity(chunk.len() + 16);
        for &byte in chunk.iter() {
            if at_line_start && byte == b'.' {
                stuffed.push(b'.');
            }
            stuffed.push(byte);
            at_line_start = byte == b'\n';
        }
        if let Some(&byte) = chunk.last() {
            last = byte;
        }
        stream.write_all(&stuffed).await.map_err(io_failure)?;
    }
    let end: &[u8] = if last == b'\n' {
        b".\r\n"
    } else {
        b"\r\n.\r\n"
    };
    stream.write_all(end).await.map_err(io_failure)?;
    stream.flush().await.map_err(io_failure)
}

/// Sends `line` and expects `code`.
async fn command<S: AsyncRead + AsyncWrite + Unpin>(
    session: &mut BufReader<S>,
    line: &str,
    code: u16,
) -> Result<(), SendError> {
    session
        .get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .map_err(io_failure)?;
    // The verb only: the AUTH line carries the token.
    let verb = line.split([' ', ':']).next().unwrap_or_default();
    expect(session, code).await.map_err(|err| match err {
        SendError::Temporary {
            reason,
            retry_after,
            cause,
        } => SendError::Temporary {
            reason: format!("{verb}: {reason}"),
            retry_after,
            cause,
        },
        other => other,
    })
}

/// Reads one (multi-line) reply and classifies it unless it is `code`.
async fn expect<S: AsyncRead + Unpin>(
    session: &mut BufReader<S>,
    code: u16,
) -> Result<(), SendError> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout(REPLY_TIMEOUT, session.read_line(&mut line))
            .await
            .map_err(|_| outage("Exchange Online did not reply in time".to_string()))?
            .map_err(io_failure)?;
        if read == 0 {
            return Err(outage("Exchange Online closed the connection".to_string()));
        }
        text.push_str(line.trim_end());
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
        text.push(' ');
    }
    let got: u16 = text.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
    if got == code {
        return Ok(());
    }
    Err(classify(got, &text))
}

/// What Exchange Online's SMTP replies mean (microsoft.md, "SMTP AUTH XOAUTH2").
fn classify(code: u16, text: &str) -> SendError {
    let said = format!("Exchange Online SMTP answered {text}");
    if text.contains("SendAsDenied") {
        return SendError::Permanent {
            status: 403,
            reason: said,
        };
    }
    if text.contains("SubmissionQuotaExceeded") {
        // The mailbox's daily recipients: nothing before part of the window frees.
        return SendError::Temporary {
            reason: said,
            retry_after: Some(Duration::from_secs(3600)),
            cause: Cause::RateLimit,
        };
    }
    match code {
        535 | 530 => SendError::Configuration {
            reason: said,
            fix: "SMTP AUTH with OAuth for the app: the Office 365 Exchange Online application \
                  permission SMTP.SendAsApp with admin consent, New-ServicePrincipal, \
                  Add-MailboxPermission -AccessRights FullAccess for the mailbox, and SMTP AUTH \
                  enabled (Set-CASMailbox -SmtpClientAuthenticationDisabled $false); see \
                  docs/microsoft-365.md, or set large_messages = \"none\""
                .to_string(),
            mailbox: true,
        },
        432 => SendError::Temporary {
            reason: said,
            retry_after: None,
            cause: Cause::RateLimit,
        },
        552 => SendError::Permanent {
            status: 413,
            reason: said,
        },
        400..=499 => outage(said),
        _ => SendError::Permanent {
            status: 400,
            reason: said,
        },
    }
}

fn outage(reason: String) -> SendError {
    SendError::Temporary {
        reason,
        retry_after: None,
        cause: Cause::Outage,
    }
}

fn io_failure(err: std::io::Error) -> SendError {
    outage(format!("Exchange Online SMTP connection failed: {err}"))
}
