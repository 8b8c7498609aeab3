//! Waiting for Google's answer to the consent screen, from two places at once: the loopback
//! listener (a browser on this machine, or one reaching it through `ssh -L`) and lines pasted by a
//! person (the address a browser on another machine could not open, or just its code).
//!
//! The listener speaks just enough HTTP/1.1 for a browser: it reads one request head, answers with
//! a small page and closes. Anything that is not the redirect (`/favicon.ico`, a preconnect that
//! never sends, a stray request) is answered or dropped while the wait goes on.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// What came back from the consent screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// An authorization code to exchange.
    Code(String),
    /// Google sent `error=...` (the person clicked Cancel, or a policy refused the app).
    Denied { error: String, description: String },
    /// A redirect whose `state` is not ours: an old tab, or someone else's request.
    StateMismatch,
}

/// Why the wait ended without an outcome.
#[derive(Debug)]
pub(crate) struct TimedOut;

/// A browser that opens a connection and sends nothing (Chrome preconnects) is dropped after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Request heads longer than this are not a browser following a redirect.
const MAX_HEAD: usize = 16 * 1024;

/// Waits until the redirect arrives on `listener` at `path`, or a pasted line holds an outcome,
/// or `timeout` passes. Lines that are not an answer are reported and the wait goes on; a closed
/// `pasted` channel (stdin at end of file) leaves only the listener.
pub(crate) async fn wait(
    listener: TcpListener,
    path: &str,
    state: &str,
    mut pasted: mpsc::Receiver<String>,
    timeout: Duration,
) -> Result<Outcome, TimedOut> {
    let expected: Arc<(String, String)> = Arc::new((path.to_string(), state.to_string()));
    // Dropping the set aborts connections still being read when the wait ends.
    let mut connections = JoinSet::new();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut pasting = true;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(answer(stream, expected.clone()));
                }
                Err(error) => {
                    // Out of descriptors, usually: pause instead of spinning.
                    tracing::warn!(%error, "cannot accept a connection on the redirect listener");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(joined) = connections.join_next() => {
                if let Ok(Some(outcome)) = joined {
                    return Ok(outcome);
                }
            }
            line = pasted.recv(), if pasting => match line {
                Some(line) => match from_pasted(&line, state) {
                    Some(outcome) => return Ok(outcome),
                    None if line.trim().is_empty() => {}
                    None => tracing::warn!(
                        "that is neither the address the browser was sent to (it contains \
                         code=... and state=...) nor a code; paste the whole address from the \
                         browser's address bar"
                    ),
                },
                None => pasting = false,
            },
            () = &mut deadline => return Err(TimedOut),
        }
    }
}

/// Reads what a person pasted: the whole redirected address, just its query, or a bare code.
///
/// A bare code carries no `state` to check. That is acceptable: it was typed into this process by
/// the person at the terminal, not delivered by a third party, and PKCE binds it to this run.
pub(crate) fn from_pasted(line: &str, state: &str) -> Option<Outcome> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    if line.contains("://") {
        let url = url::Url::parse(line).ok()?;
        return from_query(url.query()?, state);
    }
    if line.contains('=') {
        // An address without its scheme, or just the query.
        let query = line.split_once('?').map_or(line, |(_, query)| query);
        return from_query(query, state);
    }
    // Google's codes look like `4/0AVMBsJ...`; anything with spaces is not one.
    (!line.contains(char::is_whitespace)).then(|| Outcome::Code(line.to_string()))
}

/// Interprets a redirect's query string; `None` when it is not an authorization response.
/// The state is checked before anything else, so a forged redirect cannot even report an error.
fn from_query(query: &str, state: &str) -> Option<Outcome> {
    let (mut code, mut error, mut description, mut got_state) = (None, None, None, None);
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "code" => code = Some(value.into_owned()),
            "error" => error = Some(value.into_owned()),
            "error_description" => description = Some(value.into_owned()),
            "state" => got_state = Some(value.into_owned()),
            _ => {}
        }
    }
    if code.is_none() && error.is_none() {
        return None;
    }
    if got_state.as_deref() != Some(state) {
        return Some(Outcome::StateMismatch);
    }
    match (code, error) {
        (_, Some(error)) => Some(Outcome::Denied {
            error,
            description: description.unwrap_or_default(),
        }),
        (Some(code), None) => Some(Outcome::Code(code)),
        (None, None) => None,
    }
}

/// Serves one connection: the redirect gets a page and yields its outcome; anything else gets a
/// 404/400/405 and yields nothing.
async fn answer(stream: TcpStream, expected: Arc<(String, String)>) -> Option<Outcome> {
    let (path, state) = (&expected.0, &expected.1);
    let mut stream = BufReader::new(stream);
    let target = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream))
        .await
        .ok()??;
    let (status, page, outcome) = match target {
        Target::Get(target) => {
            let url = url::Url::parse(&format!("http://127.0.0.1{target}")).ok()?;
            if url.path() != path {
                (404, page("Not found", "Nothing here."), None)
            } else {
                match from_query(url.query().unwrap_or_default(), state) {
                    Some(Outcome::StateMismatch) => {
                        let outcome = Outcome::StateMismatch;
                        (400, outcome_page(&outcome), Some(outcome))
                    }
                    Some(outcome) => (200, outcome_page(&outcome), Some(outcome)),
                    None => (400, page("Waiting", WAITING), None),
                }
            }
        }
        Target::OtherMethod => (405, page("Not allowed", WAITING), None),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/html; charset=utf-8\r\n\
         content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{page}",
        page.len()
    );
    let stream = stream.get_mut();
    // The outcome counts even if the browser went away before reading the page.
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
    outcome
}

enum Target {
    Get(String),
    OtherMethod,
}

/// Reads a request head to its blank line (so closing does not reset the connection before the
/// browser reads the page) and returns the request target. `None`: not HTTP, or too long.
async fn read_head(stream: &mut BufReader<TcpStream>) -> Option<Target> {
    let mut request_line = None;
    let mut read = 0;
    loop {
        let mut line = Vec::new();
        let n = (&mut *stream)
            .take((MAX_HEAD - read) as u64)
            .read_until(b'\n', &mut line)
            .await
            .ok()?;
        read += n;
        if n == 0 || !line.ends_with(b"\n") {
            return None;
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        request_line.get_or_insert(line);
    }
    let request_line = String::from_utf8(request_line?).ok()?;
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next()?, parts.next()?);
    if !target.starts_with('/') {
        return None;
    }
    Some(if method == "GET" {
        Target::Get(target.to_string())
    } else {
        Target::OtherMethod
    })
}

const WAITING: &str = "smtp2gmail is waiting here for Google to send your browser back after the \
    consent screen. Open the authorization address shown in the terminal.";

fn outcome_page(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Code(_) => page(
            "Authorized",
            "smtp2gmail received the authorization and finishes in the terminal. You can close \
             this tab.",
        ),
        Outcome::Denied { error, .. } => page(
            "Not authorized",
            &format!(
                "Google answered {}: smtp2gmail was not given access. Return to the terminal.",
                escape(error)
            ),
        ),
        Outcome::StateMismatch => page(
            "Not authorized",
            "This answer does not belong to the authorization smtp2gmail is waiting for (an \
             older tab?). Run smtp2gmail authorize again and use the address it prints.",
        ),
    }
}

fn page(title: &str, text: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>smtp2gmail: {title}</title>\
         </head><body style=\"font-family:sans-serif;margin:3em\"><h1>{title}</h1><p>{text}</p>\
         </body></html>"
    )
}

/// Escapes text from the query string before it goes into the page.
fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pasted_addresses_queries_and_codes() {
        let code = |c: &str| Some(Outcome::Code(c.to_string()));
        let url = "http://127.0.0.1:8085/?state=s1&code=4/0AbC-d_e&scope=x";
        assert_eq!(from_pasted(url, "s1"), code("4/0AbC-d_e"));
        assert_eq!(
            from_pasted(&format!("  {url}\r\n"), "s1"),
            code("4/0AbC-d_e")
        );
        assert_eq!(from_pasted("?state=s1&code=abc", "s1"), code("abc"));
        let schemeless = "127.0.0.1:8085/?state=s1&code=abc";
        assert_eq!(from_pasted(schemeless, "s1"), code("abc"));
        assert_eq!(from_pasted("4/0AbC-d_e", "s1"), code("4/0AbC-d_e"));
        assert_eq!(from_pasted(url, "other"), Some(Outcome::StateMismatch));
        assert_eq!(from_pasted("code=abc", "s1"), Some(Outcome::StateMismatch));
        let denied = "http://localhost:1/?error=access_denied&state=s1";
        assert_eq!(
            from_pasted(denied, "s1"),
            Some(Outcome::Denied {
                error: "access_denied".into(),
                description: String::new()
            })
        );
        for nothing in [
            "",
            "   ",
            "http://127.0.0.1:8085/",
            "not a code",
            "http://x/?a=b",
        ] {
            assert_eq!(from_pasted(nothing, "s1"), None, "{nothing:?}");
        }
    }

    #[test]
    fn query_text_is_escaped_in_pages() {
        let page = outcome_page(&Outcome::Denied {
            error: "<script>x</script>".into(),
            description: String::new(),
        });
        assert!(!page.contains("<script>") && page.contains("&lt;script&gt;"));
    }
}
