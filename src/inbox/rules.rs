//! The release rules of `[inbox]`: which envelope recipients are released through Gmail as mail
//! arrives (`release_matching`), and which addresses release never sends to (`release_blocked`),
//! whether a person releases a message or the rule does.
//!
//! Both are matched against the whole address (`user@domain`), unanchored (as Mailpit's relay
//! rules are: anchor with `^` and `$`) and ignoring case: domains are case-insensitive, and a
//! blocklist that missed `CEO@Customer.example` would send to the one address it is for. A
//! `release_blocked` entry that is a plain address is that address exactly, not a pattern: as a
//! pattern, `qa+staging@x.example` would not even match itself (`+` repeats the `a`).

use regex::{Regex, RegexBuilder};

use crate::config::InboxConfig;

/// Characters that make a `release_blocked` entry a regular expression rather than an address:
/// none of them is in an address anyone writes in a config file.
const PATTERN_CHARACTERS: &[char] = &['^', '$', '*', '?', '(', ')', '[', ']', '{', '}', '|', '\\'];

/// The compiled rules; the default has none (nothing released automatically, nothing blocked).
#[derive(Debug, Default)]
pub struct ReleaseRules {
    matching: Option<Regex>,
    blocked: Option<Regex>,
}

/// A rule that cannot be compiled, with the key (and the `release_blocked` entry) at fault.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct RuleError {
    /// The dotted key.
    pub key: &'static str,
    /// The entry of `release_blocked` at fault.
    pub entry: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl ReleaseRules {
    /// Compiles `release_matching` and `release_blocked`.
    pub fn from_config(inbox: &InboxConfig) -> Result<ReleaseRules, RuleError> {
        let matching = match inbox.release_matching.as_str() {
            "" => None,
            pattern => Some(compile(pattern).map_err(|message| RuleError {
                key: "inbox.release_matching",
                entry: None,
                message,
            })?),
        };
        let mut alternatives = Vec::new();
        for (entry, text) in inbox.release_blocked.iter().enumerate() {
            let broken = |message: String| RuleError {
                key: "inbox.release_blocked",
                entry: Some(entry),
                message,
            };
            let pattern = blocked_pattern(text).map_err(broken)?;
            compile(&pattern).map_err(broken)?;
            alternatives.push(format!("(?:{pattern})"));
        }
        let blocked = match alternatives.is_empty() {
            true => None,
            false => Some(
                compile(&alternatives.join("|")).map_err(|message| RuleError {
                    key: "inbox.release_blocked",
                    entry: None,
                    message,
                })?,
            ),
        };
        Ok(ReleaseRules { matching, blocked })
    }

    /// True when mail is released as it arrives (`release_matching` is set).
    pub fn releases_automatically(&self) -> bool {
        self.matching.is_some()
    }

    /// True when release must never send to `address`.
    pub fn is_blocked(&self, address: &str) -> bool {
        self.blocked.as_ref().is_some_and(|re| re.is_match(address))
    }

    /// True when mail to `address` is released as it arrives: it matches and is not blocked.
    pub fn is_released(&self, address: &str) -> bool {
        let matching = self.matching.as_ref();
        matching.is_some_and(|re| re.is_match(address)) && !self.is_blocked(address)
    }

    /// `release_matching` as written, or empty.
    pub fn matching_pattern(&self) -> &str {
        self.matching
            .as_ref()
            .map_or("", |re| without_flags(re.as_str()))
    }

    /// `release_blocked` as one regular expression (addresses turned into anchored patterns):
    /// Mailpit's `BlockedRecipients` is one. Empty when nothing is blocked.
    pub fn blocked_pattern(&self) -> &str {
        self.blocked.as_ref().map_or("", |re| re.as_str())
    }
}

/// A `release_blocked` entry as a pattern: a plain address matches itself exactly.
fn blocked_pattern(entry: &str) -> Result<String, String> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err("an empty entry would block every address; remove it".to_string());
    }
    let is_address =
        !entry.contains(PATTERN_CHARACTERS) && entry.parse::<lettre::Address>().is_ok();
    Ok(match is_address {
        true => format!("^{}$", regex::escape(entry)),
        false => entry.to_string(),
    })
}

/// The case-insensitive regular expression `pattern`. The `(?i)` is written into the pattern
/// rather than set on the builder, so that [`Regex::as_str`] (shown in the page) says it.
fn compile(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(&format!("(?i){pattern}"))
        .build()
        .map_err(|err| format!("not a regular expression: {err}"))
}

/// `pattern` without the `(?i)` [`compile`] added.
fn without_flags(pattern: &str) -> &str {
    pattern.strip_prefix("(?i)").unwrap_or(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(matching: &str, blocked: &[&str]) -> ReleaseRules {
        let inbox = InboxConfig {
            release_matching: matching.to_string(),
            release_blocked: blocked.iter().map(|s| s.to_string()).collect(),
            ..InboxConfig::default()
        };
        ReleaseRules::from_config(&inbox).unwrap()
    }

    #[test]
    fn matching_ignores_case_and_blocked_addresses_win() {
        let rules = rules(r"@team\.example$", &["boss@team.example"]);
        assert!(rules.releases_automatically());
        let cases = [
            ("dev@team.example", true),
            ("Dev@TEAM.Example", true),
            ("customer@example.org", false),
            ("dev@team.example.evil.org", false),
            ("BOSS@team.example", false), // blocked, whatever its case
        ];
        for (address, released) in cases {
            assert_eq!(rules.is_released(address), released, "{address}");
        }
        assert_eq!(rules.matching_pattern(), r"@team\.example$");
    }

    #[test]
    fn a_plain_address_is_exact_and_anything_else_a_pattern() {
        let rules = rules("", &["qa+staging@x.example", r"@customer\.example$"]);
        assert!(!rules.releases_automatically());
        let cases = [
            ("qa+staging@x.example", true),
            ("QA+Staging@X.example", true),
            ("xqa+staging@x.example", false), // exact, not a substring
            ("qa+staging@xyexample", false),  // the dot is a dot
            ("anyone@customer.example", true),
            ("anyone@customer.example.org", false),
        ];
        for (address, blocked) in cases {
            assert_eq!(rules.is_blocked(address), blocked, "{address}");
            assert!(!rules.is_released(address), "nothing matches");
        }
        assert_eq!(
            rules.blocked_pattern(),
            r"(?i)(?:^qa\+staging@x\.example$)|(?:@customer\.example$)"
        );
    }

    #[test]
    fn broken_rules_name_their_key_and_entry() {
        let broken = |matching: &str, blocked: &[&str]| {
            let inbox = InboxConfig {
                release_matching: matching.to_string(),
                release_blocked: blocked.iter().map(|s| s.to_string()).collect(),
                ..InboxConfig::default()
            };
            ReleaseRules::from_config(&inbox).unwrap_err()
        };
        let err = broken("(unclosed", &[]);
        assert_eq!((err.key, err.entry), ("inbox.release_matching", None));
        assert!(err.message.contains("not a regular expression"), "{err}");
        let err = broken("", &["ok@x.example", "[z-a]"]);
        assert_eq!((err.key, err.entry), ("inbox.release_blocked", Some(1)));
        let err = broken("", &[" "]);
        assert!(err.message.contains("every address"), "{err}");
    }
}
