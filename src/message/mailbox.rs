//! When two addresses name the same mailbox: the one rule every stage uses, for envelope recipient
//! dedupe, header-only recipients, Bcc synthesis, `send_as`, and `senders` patterns.
//!
//! Domains are case-insensitive (RFC 5321 2.4). Local parts are case-sensitive in principle, but
//! only the receiving system may decide, and the receiving system here is Gmail, which treats them
//! case-insensitively: `Bob@x` and `bob@x` reach the same mailbox. So the whole address is compared
//! lowercased. Gmail's other folds (dots and `+tags` in `gmail.com` local parts) are not applied:
//! they do not hold for Workspace domains, and a second copy is safer than a lost one.

use super::Address;

/// The form addresses are compared in: trimmed, and lowercased as a whole, character by character
/// (so that the key and [`same_mailbox`] can never disagree).
pub fn mailbox_key(address: &str) -> String {
    lowered(address).collect()
}

/// True when `a` and `b` name the same mailbox.
pub fn same_mailbox(a: &str, b: &str) -> bool {
    lowered(a).eq(lowered(b))
}

/// True when `address` matches a `senders`-style pattern: `*@domain` for any address of exactly
/// that domain (not its subdomains), else one address, compared by [`same_mailbox`].
pub fn matches_pattern(pattern: &str, address: &str) -> bool {
    match pattern.trim().strip_prefix("*@") {
        Some(domain) => address
            .rsplit_once('@')
            .is_some_and(|(_, d)| same_mailbox(d, domain)),
        None => same_mailbox(pattern, address),
    }
}

fn lowered(address: &str) -> impl Iterator<Item = char> + '_ {
    address.trim().chars().flat_map(char::to_lowercase)
}

impl Address {
    /// This address in the form addresses are compared in ([`mailbox_key`]).
    pub fn mailbox_key(&self) -> String {
        mailbox_key(self.as_str())
    }

    /// True when `other` names the same mailbox as this address ([`same_mailbox`]).
    pub fn same_mailbox(&self, other: &str) -> bool {
        same_mailbox(self.as_str(), other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_and_local_part_compare_case_insensitively() {
        assert!(same_mailbox("a@EXAMPLE.com", "a@example.COM"));
        assert!(same_mailbox("Bob@x.org", "bob@X.ORG"));
        assert!(same_mailbox(" bob@x.org", "bob@x.org "));
        assert!(same_mailbox("JOSÉ@x.org", "josé@x.org"));
        assert!(!same_mailbox("bob@x.org", "bob@y.org"));
        assert!(
            !same_mailbox("b.ob@gmail.com", "bob@gmail.com"),
            "no dot folding"
        );
        assert!(
            !same_mailbox("bob+tag@x.org", "bob@x.org"),
            "no +tag folding"
        );
        assert!(Address::new("Bob@x.org").same_mailbox("bob@x.org"));
    }

    #[test]
    fn the_key_agrees_with_the_comparison() {
        let pairs = [
            ("Bob@X.org", "bob@x.org"),
            ("JOSÉ@x.org", "josé@x.org"),
            ("a@b", "A@c"),
        ];
        for (a, b) in pairs {
            assert_eq!(
                mailbox_key(a) == mailbox_key(b),
                same_mailbox(a, b),
                "{a} {b}"
            );
        }
        assert_eq!(Address::new(" Bob@X.org").mailbox_key(), "bob@x.org");
    }

    #[test]
    fn sender_patterns() {
        assert!(matches_pattern(
            "noreply@example.com",
            "NoReply@Example.com"
        ));
        assert!(!matches_pattern("noreply@example.com", "other@example.com"));
        assert!(matches_pattern("*@example.org", "anyone@EXAMPLE.org"));
        assert!(matches_pattern("*@Example.ORG", "anyone@example.org"));
        assert!(!matches_pattern("*@example.org", "anyone@sub.example.org"));
        assert!(!matches_pattern("*@example.org", "x@example.org.evil"));
        assert!(!matches_pattern("*@example.org", "no-at-sign"));
    }
}
