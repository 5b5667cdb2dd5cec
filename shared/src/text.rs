//! Strings that came from a peer (task and job ids, error texts, tensor names), made fit for a
//! log line or a status message: control characters escaped, so a newline cannot forge a log
//! line, and the length cut, so one message cannot flood the log or a response header.

/// `s` with control characters escaped (`\n`, `\u{1b}`, ...) and cut after `max` characters,
/// saying how many bytes were left out.
pub fn clip(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max + 32));
    for (n, (i, c)) in s.char_indices().enumerate() {
        if n == max {
            out.push_str(&format!("…(+{} bytes)", s.len() - i));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// An error's text and its causes' on one line, `error: cause: cause`. A cause the line already
/// ends with is left out: many errors quote their source at the end of their own text, and
/// tonic's transport errors nest levels with the same words, so a plain join says things twice
/// ("tcp connect error: tcp connect error: ...").
pub fn one_line(texts: impl IntoIterator<Item = String>) -> String {
    let mut out = String::new();
    for t in texts {
        let t = t.trim();
        if t.is_empty() || out.ends_with(t) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(t);
    }
    out
}

/// [`one_line`] over `e` and its chain of sources.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    one_line(std::iter::successors(Some(e), |e| e.source()).map(|e| e.to_string()))
}

/// How long an id (task, job) may be where it is quoted.
pub const ID_CHARS: usize = 128;
/// How long a peer's free text (an error result) may be where it is quoted.
pub const TEXT_CHARS: usize = 300;

#[cfg(test)]
mod tests {
    use super::*;

    /// S10 #10: errors said their cause twice ("tcp connect error: tcp connect error: ...",
    /// "Not a directory (os error 20): Not a directory (os error 20)").
    #[test]
    fn a_cause_already_said_is_not_said_again() {
        let chain = |v: &[&str]| one_line(v.iter().map(|s| s.to_string()));
        assert_eq!(
            chain(&[
                "transport error",
                "tcp connect error",
                "tcp connect error",
                "Connection refused (os error 111)"
            ]),
            "transport error: tcp connect error: Connection refused (os error 111)"
        );
        assert_eq!(
            chain(&[
                "cannot create state dir /x: Not a directory (os error 20)",
                "Not a directory (os error 20)"
            ]),
            "cannot create state dir /x: Not a directory (os error 20)"
        );
        assert_eq!(chain(&["a", "b"]), "a: b");
        let io = std::io::Error::other("disk on fire");
        assert_eq!(error_chain(&io), "disk on fire");
    }

    #[test]
    fn control_characters_are_escaped_and_long_strings_cut() {
        assert_eq!(clip("plain id/3/fit", 128), "plain id/3/fit");
        assert_eq!(
            clip("a\n2099-01-01T00:00:00Z ERROR forged\r\u{1b}[31m", 128),
            "a\\n2099-01-01T00:00:00Z ERROR forged\\r\\u{1b}[31m"
        );
        let long = "x".repeat(1 << 20);
        let c = clip(&long, 10);
        assert_eq!(c, format!("xxxxxxxxxx…(+{} bytes)", (1 << 20) - 10));
        assert_eq!(clip("ééé", 2), "éé…(+2 bytes)");
    }
}
