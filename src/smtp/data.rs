//! The DATA body decoder: finds the end of the message and undoes dot-stuffing (RFC 5321 4.5.2).
//!
//! Only `<CRLF>.<CRLF>` ends a message. A bare LF never starts a line here, so `\n.\r\n`,
//! `\n.\n` and `\r.\n` inside a body are content, not terminators: treating them as the end is
//! what makes SMTP smuggling possible. The decoder starts "at the beginning of a line" (the DATA
//! command's own CRLF), so an empty message and a first line that starts with `..` are handled
//! like any other line.

/// Where the decoder is within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After a CRLF (or at the very start): a `.` here is special.
    LineStart,
    /// Inside a line.
    Text,
    /// After a CR inside a line.
    Cr,
    /// After a `.` at the start of a line.
    Dot,
    /// After `.` and CR at the start of a line: an LF now ends the message.
    DotCr,
}

/// Incremental decoder for one DATA body; feed it whatever arrives.
#[derive(Debug)]
pub struct DotDecoder {
    state: State,
}

impl Default for DotDecoder {
    fn default() -> Self {
        DotDecoder {
            state: State::LineStart,
        }
    }
}

impl DotDecoder {
    /// Decodes as much of `input` as belongs to the body, appending the body bytes to `out`.
    /// Returns how many bytes of `input` were used and whether the terminator was seen; bytes
    /// after the terminator (pipelined commands) are left for the caller.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Text => match memchr::memchr(b'\r', &input[i..]) {
                    None => {
                        out.extend_from_slice(&input[i..]);
                        i = input.len();
                    }
                    Some(at) => {
                        out.extend_from_slice(&input[i..=i + at]);
                        i += at + 1;
                        self.state = State::Cr;
                    }
                },
                State::Cr => {
                    let byte = input[i];
                    out.push(byte);
                    i += 1;
                    self.state = match byte {
                        b'\n' => State::LineStart,
                        b'\r' => State::Cr,
                        _ => State::Text,
                    };
                }
                State::LineStart => {
                    if input[i] == b'.' {
                        i += 1;
                        self.state = State::Dot;
                    } else {
                        self.state = State::Text;
                    }
                }
                State::Dot => {
                    if input[i] == b'\r' {
                        i += 1;
                        self.state = State::DotCr;
                    } else {
                        // A stuffed dot: drop it, the rest of the line is content.
                        self.state = State::Text;
                    }
                }
                State::DotCr => {
                    if input[i] == b'\n' {
                        self.state = State::LineStart;
                        return (i + 1, true);
                    }
                    // ".\r" followed by something else: the dot was stuffing, the CR is content.
                    out.push(b'\r');
                    self.state = State::Cr;
                }
            }
        }
        (i, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of every size, checking that all agree.
    fn decode(wire: &[u8]) -> (Vec<u8>, Option<usize>) {
        let mut results = Vec::new();
        for piece in 1..=wire.len().max(1) {
            let mut decoder = DotDecoder::default();
            let mut out = Vec::new();
            let mut used = 0;
            let mut end = None;
            for chunk in wire.chunks(piece) {
                let (n, done) = decoder.decode(chunk, &mut out);
                used += n;
                if done {
                    end = Some(used);
                    break;
                }
                assert_eq!(n, chunk.len());
            }
            results.push((out, end));
        }
        assert!(
            results.windows(2).all(|w| w[0] == w[1]),
            "chunking changed the result"
        );
        results.pop().unwrap()
    }

    #[test]
    fn plain_message() {
        let (body, end) = decode(b"Subject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n");
        assert_eq!(body, b"Subject: hi\r\n\r\nhello\r\n");
        assert_eq!(end, Some(25));
    }

    #[test]
    fn empty_message() {
        assert_eq!(decode(b".\r\n"), (Vec::new(), Some(3)));
    }

    #[test]
    fn first_line_dot_stuffed() {
        let (body, end) = decode(b"..hidden\r\n.\r\n");
        assert_eq!(body, b".hidden\r\n");
        assert!(end.is_some());
    }

    #[test]
    fn stuffed_lines_later() {
        let (body, _) = decode(b"a\r\n..\r\n...b\r\n.\r\n");
        assert_eq!(body, b"a\r\n.\r\n..b\r\n");
    }

    #[test]
    fn smuggling_sequences_are_content() {
        for wire in [
            &b"a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n"[..],
            b"a\n.\nMAIL FROM:<x@y>\r\n.\r\n",
            b"a\r.\nMAIL FROM:<x@y>\r\n.\r\n",
            b"a\r\n.\nMAIL FROM:<x@y>\r\n.\r\n",
        ] {
            let (body, end) = decode(wire);
            assert_eq!(end, Some(wire.len()), "{wire:?}");
            assert!(body.ends_with(b"MAIL FROM:<x@y>\r\n"), "{wire:?}");
        }
    }

    #[test]
    fn dot_cr_not_followed_by_lf() {
        let (body, _) = decode(b".\rx\r\n.\r\n");
        assert_eq!(body, b"\rx\r\n");
    }

    #[test]
    fn unterminated_body_wants_more() {
        let (body, end) = decode(b"abc\r\n.");
        assert_eq!(body, b"abc\r\n");
        assert_eq!(end, None);
    }
}
