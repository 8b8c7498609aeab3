//! Text that goes into a delivery report: values made safe for a header field (nothing from
//! outside can end a line, so nothing can start a field of its own), folded to the lengths
//! RFC 5322 asks for, addresses typed as RFC 3464 and RFC 6533 write them, and paragraphs wrapped
//! for people.

/// Lines of a header field are folded to this many characters where a space allows it (RFC 5322
/// §2.1.1: "SHOULD be no more than 78").
const FOLD_AT: usize = 78;
/// The most characters of outside text (Google's answer, a subject) one value carries: with its
/// field name it stays well within the 998 characters a line may have even where no space
/// allows folding.
pub const MAX_VALUE: usize = 900;

/// `text` as one line: control characters (CR and LF above all) become spaces, runs of white
/// space one space, and at most `max` characters are kept (`...` marks a cut).
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 3));
    let mut count = 0;
    let mut space = false;
    for c in text.trim().chars() {
        if c.is_control() || c.is_whitespace() {
            space = true;
            continue;
        }
        if count + usize::from(space) + 1 > max {
            out.push_str("...");
            return out;
        }
        if space {
            out.push(' ');
            count += 1;
            space = false;
        }
        out.push(c);
        count += 1;
    }
    out
}

/// `text` with every character outside printable ASCII replaced by `?`: the fields of a
/// `message/delivery-status` part are US-ASCII (RFC 3464 §2.1.1).
pub fn ascii(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// One header field, `Name: value` with CRLF, folded at spaces so that lines stay within
/// [`FOLD_AT`] characters where the words allow it. `value` must already be one line.
pub fn field(name: &str, value: &str) -> String {
    let mut out = format!("{name}:");
    let mut line = out.len();
    for (i, word) in value.split(' ').filter(|w| !w.is_empty()).enumerate() {
        let width = word.chars().count();
        // The first word stays on the name's line whatever its length: a field name alone on
        // a line is legal but reads badly.
        if i > 0 && line + 1 + width > FOLD_AT {
            out.push_str("\r\n");
            line = 0;
        }
        out.push(' ');
        out.push_str(word);
        line += 1 + width;
    }
    out.push_str("\r\n");
    out
}

/// A recipient as a delivery-status field types it: `rfc822; addr` when the address is ASCII,
/// else `utf-8; ` with the address in RFC 6533's 7-bit `utf-8-addr-xtext` form (each non-ASCII
/// character, and `\`, `+`, `=` and space, as `\x{HEX}`), which the ASCII-only
/// `message/delivery-status` part can carry. Control characters, which no address may hold,
/// are dropped, so an address cannot end the line.
pub fn typed_address(address: &str) -> String {
    let clean: String = address.chars().filter(|c| !c.is_control()).collect();
    let clean = clean.trim();
    if clean.is_ascii() {
        return format!("rfc822; {}", cut(clean, MAX_VALUE));
    }
    let mut escaped = String::new();
    for c in clean.chars() {
        let piece = match c {
            '!'..='~' if !matches!(c, '\\' | '+' | '=') => c.to_string(),
            _ => format!("\\x{{{:02X}}}", u32::from(c)),
        };
        // One word that cannot be folded: cut rather than exceed a line.
        if escaped.len() + piece.len() > MAX_VALUE {
            break;
        }
        escaped.push_str(&piece);
    }
    format!("utf-8; {escaped}")
}

/// True for an address that can stand in an address header field as `<address>` (To, From): no
/// control characters, no white space, none of the characters that end or separate addresses.
/// Non-ASCII is fine: RFC 6532 allows UTF-8 in header fields, and Gmail sends it on.
pub fn header_safe(address: &str) -> bool {
    !address.is_empty()
        && address.len() <= 320
        && address.contains('@')
        && !address
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>' | ',' | ';'))
}

/// `text` (paragraphs separated by empty lines) wrapped at `width` columns for a plain text
/// part, with CRLF line endings. Lines that start with spaces (indented quotes) are kept as
/// they are; control characters become spaces.
pub fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let line = line.trim_end();
        if line.starts_with(' ') || line.chars().count() <= width {
            out.push_str(line);
            out.push_str("\r\n");
            continue;
        }
        let mut column = 0;
        for word in line.split(' ').filter(|w| !w.is_empty()) {
            let size = word.chars().count();
            if column > 0 && column + 1 + size > width {
                out.push_str("\r\n");
                column = 0;
            }
            if column > 0 {
                out.push(' ');
                column += 1;
            }
            out.push_str(word);
            column += size;
        }
        out.push_str("\r\n");
    }
    out
}

/// At most `max` characters of `text`.
fn cut(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// A host name for `Reporting-MTA: dns; …` and the right side of a Message-ID: letters, digits,
/// dots and hyphens only (a configured name with anything else is not a DNS name), else
/// `localhost`.
pub fn host_name(name: &str) -> &str {
    let name = name.trim();
    let dns = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if dns { name } else { "localhost" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_turns_line_breaks_into_spaces_and_cuts() {
        assert_eq!(
            one_line(" a\r\nBcc: evil@x\t b \r\n", 100),
            "a Bcc: evil@x b"
        );
        assert_eq!(one_line("abcdef", 4), "abcd...");
        assert_eq!(one_line("ab cd", 5), "ab cd");
        assert_eq!(
            one_line("\u{85}x\u{2028}y", 10),
            "x y",
            "Unicode line breaks too"
        );
    }

    #[test]
    fn fields_fold_at_spaces_and_never_break_a_word() {
        let words = "word ".repeat(40);
        let folded = field("Diagnostic-Code", &format!("X-Gmail-API; {words}"));
        assert!(folded.ends_with("\r\n"));
        for line in folded.trim_end().split("\r\n") {
            assert!(line.len() <= FOLD_AT, "{line:?}");
        }
        assert_eq!(
            folded.replace("\r\n ", " ").trim_end(),
            format!("Diagnostic-Code: X-Gmail-API; {}", words.trim_end())
        );
        let long = "x".repeat(MAX_VALUE);
        let unbreakable = field("Diagnostic-Code", &format!("X-Gmail-API; {long}"));
        assert!(unbreakable.split("\r\n").all(|l| l.len() <= 998));
    }

    #[test]
    fn addresses_are_typed_as_rfc_6533_says() {
        assert_eq!(
            typed_address("bob+tag@example.com"),
            "rfc822; bob+tag@example.com"
        );
        assert_eq!(
            typed_address("jös+a=b@bücher.example"),
            "utf-8; j\\x{F6}s\\x{2B}a\\x{3D}b@b\\x{FC}cher.example"
        );
        assert_eq!(
            typed_address("用户@例子.广告"),
            "utf-8; \\x{7528}\\x{6237}@\\x{4F8B}\\x{5B50}.\\x{5E7F}\\x{544A}"
        );
        assert_eq!(
            typed_address("a@x\r\nAction: delivered"),
            "rfc822; a@xAction: delivered",
            "no line break survives"
        );
    }

    #[test]
    fn header_safe_refuses_what_could_forge_a_field() {
        assert!(header_safe("bob@example.com"));
        assert!(header_safe("jöran@bücher.example"));
        for bad in ["", "bob", "a@x\r\nBcc: e@y", "a@x, e@y", "a@x>", "a b@x"] {
            assert!(!header_safe(bad), "{bad:?}");
        }
    }

    #[test]
    fn paragraphs_wrap_and_indented_lines_stay() {
        let text = "one two three four five\n\n    Subject: a very long subject line kept";
        assert_eq!(
            wrap(text, 10),
            "one two\r\nthree four\r\nfive\r\n\r\n    Subject: a very long subject line kept\r\n"
        );
    }

    #[test]
    fn host_names_are_dns_names_or_localhost() {
        assert_eq!(host_name("mail.example.com"), "mail.example.com");
        assert_eq!(host_name("bad host\r\nX: y"), "localhost");
        assert_eq!(host_name(""), "localhost");
    }
}
