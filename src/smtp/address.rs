//! Checks on the addresses of `MAIL FROM` and `RCPT TO`, after smtp-proto has parsed them.
//!
//! smtp-proto removes the quotes of a quoted local part (`"john doe"@example.com` arrives as
//! `john doe@example.com`), which is no longer an address anyone can send to; it is quoted again
//! here, so what reaches the envelope, the logs and Gmail is the address the client meant.

use std::borrow::Cow;

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressProblem {
    /// NUL or another control character: never valid, even quoted.
    ControlCharacter,
    /// Non-ASCII without the SMTPUTF8 parameter on MAIL (RFC 6531 section 3.4).
    NeedsSmtpUtf8,
}

/// Checks an address and restores the quoting of its local part.
pub fn check(address: &str, smtputf8: bool) -> Result<Cow<'_, str>, AddressProblem> {
    if address.chars().any(char::is_control) {
        return Err(AddressProblem::ControlCharacter);
    }
    if !smtputf8 && !address.is_ascii() {
        return Err(AddressProblem::NeedsSmtpUtf8);
    }
    Ok(requote(address))
}

/// `local@domain` with the local part quoted again when it is not a dot-atom (RFC 5321 4.1.2).
fn requote(address: &str) -> Cow<'_, str> {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Cow::Borrowed(address);
    };
    if is_dot_atom(local) {
        return Cow::Borrowed(address);
    }
    let escaped = local.replace('\\', "\\\\").replace('"', "\\\"");
    Cow::Owned(format!("\"{escaped}\"@{domain}"))
}

fn is_dot_atom(local: &str) -> bool {
    let atext =
        |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    !local.is_empty()
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext))
}

/// True when a decimal parameter has more digits than a `u64` holds. smtp-proto 0.2 misreads such
/// numbers (it starts over after saturating), so `SIZE=` and BDAT sizes are checked here first.
pub fn has_oversized_number(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_digit())
        .any(|digits| digits.len() > 19)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_local_parts_stay_quoted() {
        assert_eq!(check("john doe@b.c", false).unwrap(), "\"john doe\"@b.c");
        assert_eq!(check("a\"b@b.c", false).unwrap(), "\"a\\\"b\"@b.c");
        assert_eq!(
            check("first.last+tag@b.c", false).unwrap(),
            "first.last+tag@b.c"
        );
        assert_eq!(check("a..b@b.c", false).unwrap(), "\"a..b\"@b.c");
    }

    #[test]
    fn refusals() {
        assert_eq!(
            check("a\0b@b.c", true),
            Err(AddressProblem::ControlCharacter)
        );
        assert_eq!(check("josé@b.c", false), Err(AddressProblem::NeedsSmtpUtf8));
        assert_eq!(check("josé@b.c", true).unwrap(), "josé@b.c");
    }

    #[test]
    fn oversized_numbers() {
        assert!(has_oversized_number("BDAT 100000000000000000000005 LAST"));
        assert!(!has_oversized_number("BDAT 1844674407370955161 LAST"));
        assert!(has_oversized_number("BDAT 18446744073709551615 LAST"));
    }
}
