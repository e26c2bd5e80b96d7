//! A PIN as a type: from the key presses that enter it to the hash that checks it, it never
//! prints (its `Debug` and `Display` write `****`); only [`Pin::expose`] gives the digits, for
//! hashing.

use std::fmt;

/// A PIN as typed by a caller. Its `Debug`/`Display` print `****`.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin(String);

impl Pin {
    pub fn new(digits: &str) -> Pin {
        Pin(digits.trim().to_string())
    }

    /// The digits, for hashing only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A PIN is 4 to 20 digits.
    pub fn is_well_formed(&self) -> bool {
        (4..=20).contains(&self.0.len()) && self.0.bytes().all(|b| b.is_ascii_digit())
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(****)")
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}
