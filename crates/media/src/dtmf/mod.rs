//! DTMF from the three places a caller's key press can arrive, as one `Digit` stream:
//! RFC 4733 telephone-events in RTP, SIP INFO bodies, and in-band tones in the audio.

pub mod inband;
pub mod info;
pub mod rfc4733;

use std::fmt;

/// One keypad key: `0`-`9`, `*`, `#`, `A`-`D`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digit(u8);

impl Digit {
    /// The sixteen DTMF keys in RFC 4733 event-code order (0-9, *, #, A-D).
    pub const ALL: [Digit; 16] = [
        Digit(b'0'),
        Digit(b'1'),
        Digit(b'2'),
        Digit(b'3'),
        Digit(b'4'),
        Digit(b'5'),
        Digit(b'6'),
        Digit(b'7'),
        Digit(b'8'),
        Digit(b'9'),
        Digit(b'*'),
        Digit(b'#'),
        Digit(b'A'),
        Digit(b'B'),
        Digit(b'C'),
        Digit(b'D'),
    ];

    /// Accepts `0-9 * # A-D` (letters in either case).
    pub fn from_char(c: char) -> Option<Digit> {
        let c = c.to_ascii_uppercase();
        matches!(c, '0'..='9' | '*' | '#' | 'A'..='D').then_some(Digit(c as u8))
    }

    /// RFC 4733 §3.2 event codes 0-15.
    pub fn from_event_code(code: u8) -> Option<Digit> {
        Self::ALL.get(code as usize).copied()
    }

    pub fn event_code(self) -> u8 {
        Self::ALL.iter().position(|d| *d == self).unwrap_or(0) as u8
    }

    pub fn as_char(self) -> char {
        self.0 as char
    }

    /// Low-group (row) and high-group (column) frequencies in Hz (ITU-T Q.23).
    pub fn frequencies(self) -> (f32, f32) {
        let code = self.event_code() as usize;
        // Keypad position of each event code as (row, column).
        const POS: [(usize, usize); 16] = [
            (3, 1),
            (0, 0),
            (0, 1),
            (0, 2),
            (1, 0),
            (1, 1),
            (1, 2),
            (2, 0),
            (2, 1),
            (2, 2),
            (3, 0),
            (3, 2),
            (0, 3),
            (1, 3),
            (2, 3),
            (3, 3),
        ];
        let (r, c) = POS[code];
        (ROW_HZ[r], COL_HZ[c])
    }
}

/// Q.23 low-group frequencies.
pub const ROW_HZ: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
/// Q.23 high-group frequencies.
pub const COL_HZ: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
/// Keys by (row, column).
pub const KEYPAD: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

impl fmt::Debug for Digit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digit({})", self.as_char())
    }
}

impl fmt::Display for Digit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_char())
    }
}

/// How a digit reached us; recorded per call in the CDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DtmfMethod {
    Rfc4733,
    SipInfo,
    Inband,
    /// Reported by Asterisk or FreeSWITCH, which received it by a method they do not name.
    Softswitch,
}

impl DtmfMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            DtmfMethod::Rfc4733 => "rfc4733",
            DtmfMethod::SipInfo => "info",
            DtmfMethod::Inband => "inband",
            DtmfMethod::Softswitch => "softswitch",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_codes_map_both_ways() {
        for code in 0..16u8 {
            let d = Digit::from_event_code(code).unwrap();
            assert_eq!(d.event_code(), code);
            assert_eq!(Digit::from_char(d.as_char()), Some(d));
        }
        assert_eq!(Digit::from_event_code(16), None);
        assert_eq!(Digit::from_char('e'), None);
        assert_eq!(Digit::from_char('a'), Digit::from_char('A'));
    }

    #[test]
    fn frequencies_follow_the_keypad() {
        for (r, row) in KEYPAD.iter().enumerate() {
            for (c, &ch) in row.iter().enumerate() {
                let d = Digit::from_char(ch).unwrap();
                assert_eq!(d.frequencies(), (ROW_HZ[r], COL_HZ[c]), "{ch}");
            }
        }
    }
}
