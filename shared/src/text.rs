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

/// How long an id (task, job) may be where it is quoted.
pub const ID_CHARS: usize = 128;
/// How long a peer's free text (an error result) may be where it is quoted.
pub const TEXT_CHARS: usize = 300;

#[cfg(test)]
mod tests {
    use super::*;

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
