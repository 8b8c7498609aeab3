//! Mailpit's search language, the part the inbox supports: plain words and `"quoted phrases"`
//! (subject, addresses, names, Message-ID and the text body), `subject:`, `from:`, `to:`, `cc:`,
//! `bcc:`, `reply-to:`, `message-id:`, `is:read`, `is:unread`, `has:attachment`, `larger:`,
//! `smaller:`, `after:`, `before:`, `tag:` (one of the message's tags, whatever its case),
//! `is:tagged`, and `-` or `!` in front of
//! any term to negate it. Every term must hold. Matching ignores case.

use super::mime::{Mailbox, Summary};

/// A parsed search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    terms: Vec<Term>,
}

/// One condition; `negated` turns it around.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    negated: bool,
    test: Test,
}

/// What one term tests. Texts are lowercased at parse time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    /// A word or phrase anywhere: subject, addresses and names, Message-ID, body text.
    Text(String),
    /// `subject:`
    Subject(String),
    /// `from:`
    From(String),
    /// `to:`
    To(String),
    /// `cc:`
    Cc(String),
    /// `bcc:`
    Bcc(String),
    /// `reply-to:`
    ReplyTo(String),
    /// `message-id:`
    MessageId(String),
    /// `is:read`
    Read,
    /// `is:unread`
    Unread,
    /// `has:attachment` (or `has:attachments`)
    Attachment,
    /// `larger:SIZE` in bytes, `k` or `m` suffixes allowed.
    Larger(u64),
    /// `smaller:SIZE`
    Smaller(u64),
    /// `after:YYYY-MM-DD` (UTC): received on or after that day.
    After(i64),
    /// `before:YYYY-MM-DD` (UTC): received before that day.
    Before(i64),
    /// `tag:NAME`: the message carries that tag (case ignored).
    Tag(String),
    /// `is:tagged`: the message carries a tag.
    Tagged,
}

/// What a message offers to be matched against.
pub struct Candidate<'a> {
    /// Its summary.
    pub summary: &'a Summary,
    /// Read or not.
    pub read: bool,
    /// Size in bytes.
    pub size: u64,
    /// When it was received, seconds since the epoch.
    pub received: i64,
    /// Its tags.
    pub tags: &'a [String],
}

impl Query {
    /// Parses `text`; never fails (anything unrecognised is searched for as text).
    pub fn parse(text: &str) -> Query {
        let terms = tokens(text).into_iter().filter_map(term).collect();
        Query { terms }
    }

    /// True when nothing is asked for (every message matches).
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// True when some term needs the body text (a plain word or phrase).
    pub fn needs_body(&self) -> bool {
        self.terms.iter().any(|t| matches!(t.test, Test::Text(_)))
    }

    /// Whether `candidate` matches. `body` gives the lowercased body text, and is called only
    /// when a word was not found elsewhere (reading a body costs far more than a summary).
    pub fn matches(&self, candidate: &Candidate<'_>, body: &mut dyn FnMut() -> String) -> bool {
        let mut loaded: Option<String> = None;
        self.terms.iter().all(|term| {
            let found = match &term.test {
                Test::Text(text) => {
                    header_text_contains(candidate.summary, text)
                        || loaded
                            .get_or_insert_with(&mut *body)
                            .contains(text.as_str())
                }
                test => test.holds(candidate),
            };
            found != term.negated
        })
    }
}

impl Test {
    fn holds(&self, c: &Candidate<'_>) -> bool {
        let s = c.summary;
        match self {
            Test::Text(text) => header_text_contains(s, text),
            Test::Subject(text) => contains(&s.subject, text),
            Test::From(text) => s.from.iter().any(|m| mailbox_contains(m, text)),
            Test::To(text) => s.to.iter().any(|m| mailbox_contains(m, text)),
            Test::Cc(text) => s.cc.iter().any(|m| mailbox_contains(m, text)),
            Test::Bcc(text) => s.bcc.iter().any(|m| mailbox_contains(m, text)),
            Test::ReplyTo(text) => s.reply_to.iter().any(|m| mailbox_contains(m, text)),
            Test::MessageId(text) => contains(&s.message_id, text),
            Test::Read => c.read,
            Test::Unread => !c.read,
            Test::Attachment => s.attachments > 0,
            Test::Larger(size) => c.size > *size,
            Test::Smaller(size) => c.size < *size,
            Test::After(at) => c.received >= *at,
            Test::Before(at) => c.received < *at,
            Test::Tag(tag) => c.tags.iter().any(|t| t.to_lowercase() == *tag),
            Test::Tagged => !c.tags.is_empty(),
        }
    }
}

fn contains(haystack: &str, lowercase_needle: &str) -> bool {
    haystack.to_lowercase().contains(lowercase_needle)
}

fn mailbox_contains(mailbox: &Mailbox, text: &str) -> bool {
    contains(&mailbox.address, text) || contains(&mailbox.name, text)
}

fn header_text_contains(s: &Summary, text: &str) -> bool {
    let mut mailboxes = s
        .from
        .iter()
        .chain(&s.to)
        .chain(&s.cc)
        .chain(&s.bcc)
        .chain(&s.reply_to);
    contains(&s.subject, text)
        || contains(&s.message_id, text)
        || mailboxes.any(|m| mailbox_contains(m, text))
}

/// Splits on whitespace outside double quotes; quotes are kept so that `term` can tell a phrase
/// from a word.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn unquote(text: &str) -> String {
    text.replace('"', "").to_lowercase()
}

fn term(token: String) -> Option<Term> {
    let (negated, rest) = match token.strip_prefix(['-', '!']) {
        Some(rest) if !rest.is_empty() => (true, rest),
        _ => (false, token.as_str()),
    };
    let test = match rest.split_once(':') {
        Some((key, value)) if !rest.starts_with('"') => {
            filter(&key.to_lowercase(), value).unwrap_or_else(|| Test::Text(unquote(rest)))
        }
        _ => Test::Text(unquote(rest)),
    };
    if matches!(&test, Test::Text(t) if t.is_empty()) {
        return None;
    }
    Some(Term { negated, test })
}

fn filter(key: &str, value: &str) -> Option<Test> {
    let text = unquote(value);
    let word = text.as_str();
    Some(match key {
        "subject" => Test::Subject(text),
        "from" => Test::From(text),
        "to" => Test::To(text),
        "cc" => Test::Cc(text),
        "bcc" => Test::Bcc(text),
        "reply-to" => Test::ReplyTo(text),
        "message-id" => Test::MessageId(text.trim_matches(['<', '>']).to_string()),
        "is" if word == "read" => Test::Read,
        "is" if word == "unread" => Test::Unread,
        "is" if word == "tagged" => Test::Tagged,
        "has" if word.starts_with("attachment") => Test::Attachment,
        "tag" => Test::Tag(text),
        "larger" => Test::Larger(size(word)?),
        "smaller" => Test::Smaller(size(word)?),
        "after" => Test::After(day(word)?),
        "before" => Test::Before(day(word)?),
        _ => return None,
    })
}

/// `10`, `10k`, `10kb`, `2m`, `2mb` in bytes (k = 1024).
fn size(text: &str) -> Option<u64> {
    let text = text.trim_end_matches('b');
    let (digits, factor) = match text.strip_suffix('k') {
        Some(d) => (d, 1024),
        None => match text.strip_suffix('m') {
            Some(d) => (d, 1024 * 1024),
            None => (text, 1),
        },
    };
    digits.parse::<u64>().ok()?.checked_mul(factor)
}

/// `YYYY-MM-DD` as the UTC midnight starting that day, in seconds since the epoch.
fn day(text: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(text, &format).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        let mailbox = |name: &str, address: &str| Mailbox {
            name: name.into(),
            address: address.into(),
        };
        Summary {
            message_id: "abc@example.com".into(),
            from: Some(mailbox("Ann Example", "ann@example.com")),
            to: vec![mailbox("", "bob@example.org")],
            cc: vec![mailbox("Carol", "carol@example.net")],
            bcc: vec![mailbox("", "dave@example.com")],
            reply_to: vec![],
            subject: "Your Password Reset".into(),
            date: None,
            attachments: 1,
            return_path: String::new(),
            snippet: String::new(),
            tags: Vec::new(),
        }
    }

    fn check(query: &str, read: bool) -> bool {
        let s = summary();
        let candidate = Candidate {
            summary: &s,
            read,
            size: 20_000,
            received: 1_796_119_200, // 2026-12-01T10:00:00Z
            tags: &["Signup".to_string()],
        };
        Query::parse(query).matches(&candidate, &mut || "the token is xyzzy-42 here".into())
    }

    #[test]
    fn parses_words_phrases_filters_and_negation() {
        let q =
            Query::parse(r#"  reset "password reset" -subject:"hello world" !is:read from:ann  "#);
        let tests: Vec<(bool, Test)> = q.terms.into_iter().map(|t| (t.negated, t.test)).collect();
        assert_eq!(
            tests,
            [
                (false, Test::Text("reset".into())),
                (false, Test::Text("password reset".into())),
                (true, Test::Subject("hello world".into())),
                (true, Test::Read),
                (false, Test::From("ann".into())),
            ]
        );
        assert!(Query::parse("   ").is_empty());
        assert!(Query::parse("\"\"").is_empty());
        // Unknown keys and unusable values are searched for as text.
        assert_eq!(
            Query::parse("foo:bar larger:lots").terms,
            [
                Term {
                    negated: false,
                    test: Test::Text("foo:bar".into())
                },
                Term {
                    negated: false,
                    test: Test::Text("larger:lots".into())
                },
            ]
        );
        assert_eq!(
            Query::parse("-").terms,
            [Term {
                negated: false,
                test: Test::Text("-".into())
            }]
        );
    }

    #[test]
    fn sizes_and_days() {
        assert_eq!(size("10"), Some(10));
        assert_eq!(size("10k"), Some(10 * 1024));
        assert_eq!(size("2mb"), Some(2 * 1024 * 1024));
        assert_eq!(size("x"), None);
        assert_eq!(day("2026-12-01"), Some(1_796_083_200));
        assert_eq!(day("2026-13-01"), None);
    }

    #[test]
    fn matching() {
        assert!(check("password", false));
        assert!(check("PASSWORD reset", false));
        assert!(check("\"password reset\"", false));
        assert!(!check("\"reset password\"", false));
        assert!(check("subject:reset", false));
        assert!(!check("subject:ann", false));
        assert!(check("from:ann from:example", false));
        assert!(check("from:\"ann example\"", false));
        assert!(check("to:bob", false) && !check("to:carol", false));
        assert!(check("cc:carol bcc:dave", false));
        assert!(check("message-id:<abc@example.com>", false));
        assert!(check("is:unread", false) && !check("is:unread", true));
        assert!(check("is:read", true) && check("-is:read", false));
        assert!(check("has:attachment", false));
        assert!(check("larger:10k smaller:20000k", false) && !check("larger:1m", false));
        assert!(check("after:2026-12-01 before:2026-12-02", false));
        assert!(!check("before:2026-12-01", false));
        assert!(!check("tag:x", false) && check("-tag:x", false));
        assert!(check("tag:signup is:tagged", false) && !check("tag:sign", false));
        // Words found only in the body.
        assert!(check("xyzzy-42", false) && !check("-xyzzy-42", false));
        assert!(!check("nowhere", false) && check("!nowhere", false));
    }

    #[test]
    fn the_body_is_read_only_when_needed_and_at_most_once() {
        let s = summary();
        let candidate = Candidate {
            summary: &s,
            read: false,
            size: 1,
            received: 0,
            tags: &[],
        };
        let mut reads = 0;
        let mut body = || {
            reads += 1;
            "body words".to_string()
        };
        assert!(Query::parse("subject:reset ann").matches(&candidate, &mut body));
        assert!(Query::parse("body words").matches(&candidate, &mut body));
        assert_eq!(reads, 1);
        assert!(Query::parse("body").needs_body());
        assert!(!Query::parse("subject:x is:read").needs_body());
    }
}
