//! Redacting wrappers for logs: phone numbers show only their last four digits; text from
//! outside is logged with its control characters escaped. Digits a caller presses are never
//! logged at all (they may be PINs).

use std::fmt;

/// A phone number or caller id, shown as `***5678`.
pub struct Phone<'a>(pub &'a str);

impl fmt::Display for Phone<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.chars().count();
        if n <= 4 {
            return f.write_str("***");
        }
        let tail: String = self.0.chars().skip(n - 4).collect();
        write!(f, "***{tail}")
    }
}

impl fmt::Debug for Phone<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Text that came from outside (a username, a header, a message), written with control
/// characters escaped (`\n`, `\u{1b}`): a newline or an escape sequence in it cannot forge a
/// log line or repaint a terminal. Phone numbers also shown in their own wrapper.
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_fmt(format_args!("{c}"))?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_text_cannot_forge_a_log_line() {
        let forged = "eve\n2026-12-07T00:00:00Z  INFO agent logged in agent=admin\u{1b}[2J";
        let shown = Untrusted(forged).to_string();
        assert!(
            !shown.contains('\n') && !shown.contains('\u{1b}'),
            "{shown}"
        );
        assert!(shown.starts_with("eve\\n2026"), "{shown}");
        assert_eq!(Untrusted("plain é text").to_string(), "plain é text");
    }

    #[test]
    fn numbers_keep_only_their_last_four_digits() {
        assert_eq!(Phone("+525512345678").to_string(), "***5678");
        assert_eq!(Phone("123").to_string(), "***");
    }
}
