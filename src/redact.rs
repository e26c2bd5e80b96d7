//! Redacting wrappers for logs: phone numbers show only their last four digits. Digits a
//! caller presses are never logged at all (they may be PINs).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_only_their_last_four_digits() {
        assert_eq!(Phone("+525512345678").to_string(), "***5678");
        assert_eq!(Phone("123").to_string(), "***");
    }
}
