//! Short-message text on the wire (pure).
//!
//! Outgoing: GSM 03.38 7-bit (unpacked, one octet per septet, `data_coding` 0) when every
//! character has a code there, UCS-2 (`data_coding` 8) otherwise. A text longer than one
//! message is split into parts with a concatenation UDH (TS 23.040 §9.2.3.24.1): 153 GSM
//! characters or 67 UCS-2 characters per part. Encoding and splitting come from rusmpp-extra;
//! the split sizes and the UDH are set here because its defaults size every message at 140
//! octets, which wastes 20 characters of a single GSM message.
//!
//! Incoming: the UDH is parsed (concatenation references, 8- and 16-bit), the text decoded by
//! its data coding (GSM 7-bit, IA5, Latin-1, UCS-2 and the GSM DCS groups), and the parts of a
//! long message reassembled. rusmpp-extra only encodes, so the GSM decoding table is ours; a
//! test holds it against rusmpp-extra's encoder.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rusmpp::extra::concatenation::Concatenator;
use rusmpp::extra::encoding::gsm7bit::Gsm7BitUnpacked;
use rusmpp::extra::encoding::ucs2::Ucs2;

/// `data_coding` values we send.
pub const DCS_GSM: u8 = 0x00;
pub const DCS_UCS2: u8 = 0x08;
/// `esm_class` bit: the short message starts with a user data header.
pub const ESM_UDHI: u8 = 0x40;

/// Octets a single message carries, and what one part of a long message carries after its
/// 6-octet UDH (which costs 7 septets in GSM 7-bit).
const GSM_SINGLE: usize = 160;
const GSM_UDH_SEPTETS: usize = 7;
const UCS2_SINGLE: usize = 140;
const UDH_OCTETS: usize = 6;
/// A message of more parts than this is refused (a template or a sender message gone wrong).
pub const MAX_PARTS: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Gsm7,
    Ucs2,
}

impl Coding {
    pub fn data_coding(self) -> u8 {
        match self {
            Coding::Gsm7 => DCS_GSM,
            Coding::Ucs2 => DCS_UCS2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Coding::Gsm7 => "GSM 03.38",
            Coding::Ucs2 => "UCS-2",
        }
    }
}

/// A text ready for `submit_sm`: every part's `short_message` (UDH included when `udhi`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub coding: Coding,
    pub udhi: bool,
    pub parts: Vec<Vec<u8>>,
}

impl Encoded {
    pub fn esm_class(&self) -> u8 {
        if self.udhi { ESM_UDHI } else { 0 }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TextError {
    #[error("the text is empty")]
    Empty,
    #[error("the text needs {0} messages; at most {MAX_PARTS} are sent")]
    TooLong(usize),
    #[error("the text cannot be split: {0}")]
    Split(String),
}

/// Replaces what UCS-2 cannot carry (characters outside the Basic Multilingual Plane, such as
/// emoji) with `?`, so a sender's message never stops a confirmation.
fn ucs2_safe(text: &str) -> String {
    text.chars()
        .map(|c| if (c as u32) > 0xFFFF { '?' } else { c })
        .collect()
}

/// Encodes `text`, choosing GSM 7-bit when it can; `reference` tags the parts of a long text
/// (keep it for retries, so a handset joins resent parts with the first ones).
pub fn encode(text: &str, reference: u8) -> Result<Encoded, TextError> {
    if text.is_empty() {
        return Err(TextError::Empty);
    }
    let gsm = Gsm7BitUnpacked::new();
    let (coding, concatenation) = match gsm.concatenate(text, GSM_SINGLE, GSM_UDH_SEPTETS) {
        Ok((c, _)) => (Coding::Gsm7, c),
        Err(_) => {
            let safe = ucs2_safe(text);
            let (c, _) = Ucs2::new()
                .concatenate(&safe, UCS2_SINGLE, UDH_OCTETS)
                .map_err(|e| TextError::Split(e.to_string()))?;
            (Coding::Ucs2, c)
        }
    };
    use rusmpp::extra::concatenation::Concatenation;
    match concatenation {
        Concatenation::Single(bytes) => Ok(Encoded {
            coding,
            udhi: false,
            parts: vec![bytes],
        }),
        Concatenation::Concatenated(parts) => {
            if parts.len() > MAX_PARTS {
                return Err(TextError::TooLong(parts.len()));
            }
            let total = parts.len() as u8;
            let parts = parts
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    let mut out = vec![0x05, 0x00, 0x03, reference, total, i as u8 + 1];
                    out.extend_from_slice(&p);
                    out
                })
                .collect();
            Ok(Encoded {
                coding,
                udhi: true,
                parts,
            })
        }
    }
}

/// Where a part sits in a long message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Concat {
    pub reference: u16,
    pub total: u8,
    pub seq: u8,
}

/// An incoming short message, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub text: String,
    pub concat: Option<Concat>,
}

/// Splits a user data header off `data` (when `esm_class` says there is one) and returns the
/// concatenation element if any, and the rest.
pub fn split_udh(esm_class: u8, data: &[u8]) -> (Option<Concat>, &[u8]) {
    if esm_class & ESM_UDHI == 0 || data.is_empty() {
        return (None, data);
    }
    let udhl = data[0] as usize;
    if data.len() < 1 + udhl {
        return (None, data);
    }
    let (header, rest) = (&data[1..1 + udhl], &data[1 + udhl..]);
    let mut concat = None;
    let mut i = 0;
    while i + 2 <= header.len() {
        let (iei, len) = (header[i], header[i + 1] as usize);
        let Some(v) = header.get(i + 2..i + 2 + len) else {
            break;
        };
        match (iei, len) {
            (0x00, 3) => {
                concat = Some(Concat {
                    reference: v[0] as u16,
                    total: v[1],
                    seq: v[2],
                })
            }
            (0x08, 4) => {
                concat = Some(Concat {
                    reference: u16::from_be_bytes([v[0], v[1]]),
                    total: v[2],
                    seq: v[3],
                })
            }
            _ => {}
        }
        i += 2 + len;
    }
    // A part numbered outside 1..=total is not a part of anything.
    let concat = concat.filter(|c| c.total >= 1 && c.seq >= 1 && c.seq <= c.total);
    (concat, rest)
}

/// The text's alphabet from a data coding scheme (SMPP 3.4 §5.2.19, TS 23.038 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alphabet {
    Gsm7,
    Ascii,
    Latin1,
    Ucs2,
    Binary,
}

fn alphabet(dcs: u8) -> Alphabet {
    match dcs {
        0x00 => Alphabet::Gsm7,
        0x01 => Alphabet::Ascii,
        0x03 => Alphabet::Latin1,
        0x08 => Alphabet::Ucs2,
        // General data coding groups (with or without compression flag/class).
        0x10..=0x7F => match (dcs >> 2) & 0x03 {
            0 => Alphabet::Gsm7,
            2 => Alphabet::Ucs2,
            _ => Alphabet::Binary,
        },
        // Message waiting groups: GSM 7-bit (0xC0, 0xD0) or UCS-2 (0xE0).
        0xC0..=0xDF => Alphabet::Gsm7,
        0xE0..=0xEF => Alphabet::Ucs2,
        // Data coding / message class group: bit 2 chooses 8-bit data.
        0xF0..=0xFF if dcs & 0x04 == 0 => Alphabet::Gsm7,
        _ => Alphabet::Binary,
    }
}

/// Decodes a `short_message` (or `message_payload`).
pub fn decode(data_coding: u8, esm_class: u8, data: &[u8]) -> Decoded {
    let (concat, body) = split_udh(esm_class, data);
    let text = match alphabet(data_coding) {
        Alphabet::Gsm7 => gsm_decode(body),
        Alphabet::Ascii => body
            .iter()
            .map(|&b| if b.is_ascii() { b as char } else { '?' })
            .collect(),
        Alphabet::Latin1 | Alphabet::Binary => body.iter().map(|&b| b as char).collect(),
        Alphabet::Ucs2 => {
            let units: Vec<u16> = body
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
    };
    Decoded { text, concat }
}

/// GSM 03.38 default alphabet (TS 23.038 §6.2.1), by septet.
const GSM_BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1b}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The extension table, reached by the escape septet 0x1B.
const GSM_EXTENSION: [(u8, char); 10] = [
    (0x0A, '\u{0c}'),
    (0x14, '^'),
    (0x28, '{'),
    (0x29, '}'),
    (0x2F, '\\'),
    (0x3C, '['),
    (0x3D, '~'),
    (0x3E, ']'),
    (0x40, '|'),
    (0x65, '€'),
];

/// Unpacked GSM 7-bit (one septet per octet) to text. Unknown escapes read as a space, as
/// TS 23.038 asks of a receiver.
pub fn gsm_decode(septets: &[u8]) -> String {
    let mut out = String::with_capacity(septets.len());
    let mut it = septets.iter().map(|b| b & 0x7F);
    while let Some(s) = it.next() {
        if s == 0x1B {
            match it.next() {
                Some(e) => out.push(
                    GSM_EXTENSION
                        .iter()
                        .find(|(k, _)| *k == e)
                        .map(|(_, c)| *c)
                        .unwrap_or(' '),
                ),
                None => out.push(' '),
            }
        } else {
            out.push(GSM_BASIC[s as usize]);
        }
    }
    out
}

/// How many messages a text takes, and in which coding (for checks and `sms show`).
pub fn parts_needed(text: &str) -> Result<(usize, Coding), TextError> {
    encode(text, 0).map(|e| (e.parts.len(), e.coding))
}

/// Joins the parts of long incoming messages. Pure: the caller passes `now`; partial
/// messages older than `max_age` are dropped on [`Reassembler::handle_timeout`].
#[derive(Debug)]
pub struct Reassembler {
    max_age: Duration,
    max_groups: usize,
    groups: HashMap<(String, u16, u8), Group>,
}

#[derive(Debug)]
struct Group {
    first_at: Instant,
    parts: Vec<Option<String>>,
}

impl Reassembler {
    pub fn new(max_age: Duration, max_groups: usize) -> Reassembler {
        Reassembler {
            max_age,
            max_groups,
            groups: HashMap::new(),
        }
    }

    /// Adds a part from `sender`; returns the whole text once every part has arrived. A
    /// message without a concatenation header is whole already.
    pub fn handle_part(&mut self, now: Instant, sender: &str, d: Decoded) -> Option<String> {
        let Some(c) = d.concat else {
            return Some(d.text);
        };
        if c.total == 1 {
            return Some(d.text);
        }
        let key = (sender.to_string(), c.reference, c.total);
        if !self.groups.contains_key(&key) && self.groups.len() >= self.max_groups {
            // Full: forget the oldest partial message rather than grow without bound.
            if let Some(oldest) = self
                .groups
                .iter()
                .min_by_key(|(_, g)| g.first_at)
                .map(|(k, _)| k.clone())
            {
                self.groups.remove(&oldest);
            }
        }
        let g = self.groups.entry(key.clone()).or_insert_with(|| Group {
            first_at: now,
            parts: vec![None; c.total as usize],
        });
        g.parts[c.seq as usize - 1] = Some(d.text);
        if g.parts.iter().all(Option::is_some) {
            let g = self.groups.remove(&key)?;
            return Some(g.parts.into_iter().flatten().collect());
        }
        None
    }

    /// Drops partial messages that waited too long.
    pub fn handle_timeout(&mut self, now: Instant) {
        let max = self.max_age;
        self.groups
            .retain(|_, g| now.saturating_duration_since(g.first_at) < max);
    }

    pub fn pending(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gsm_table_agrees_with_the_encoder_for_every_character() {
        let gsm = Gsm7BitUnpacked::new();
        for (i, c) in GSM_BASIC.iter().enumerate() {
            if i == 0x1B {
                continue;
            }
            let enc = gsm.encode_to_vec(&c.to_string()).unwrap();
            assert_eq!(enc, vec![i as u8], "{c:?}");
            assert_eq!(gsm_decode(&enc), c.to_string());
        }
        for (code, c) in GSM_EXTENSION {
            if c == '\u{0c}' {
                // The page break: rusmpp-extra does not encode it (it never needs to).
                assert_eq!(gsm_decode(&[0x1B, code]), "\u{0c}");
                continue;
            }
            let enc = gsm.encode_to_vec(&c.to_string()).unwrap();
            assert_eq!(enc, vec![0x1B, code], "{c:?}");
            assert_eq!(gsm_decode(&enc), c.to_string());
        }
    }

    #[test]
    fn short_plain_text_is_one_gsm_message_of_up_to_160_characters() {
        let e = encode("Your balance is 12.50 USD.", 1).unwrap();
        assert_eq!((e.coding, e.udhi, e.parts.len()), (Coding::Gsm7, false, 1));
        assert_eq!(e.parts[0], b"Your balance is 12.50 USD.");
        let full = "x".repeat(160);
        assert_eq!(encode(&full, 1).unwrap().parts.len(), 1);
        // €, [ and ] take two septets each.
        assert_eq!(encode(&"€".repeat(80), 1).unwrap().parts.len(), 1);
        assert_eq!(encode(&"€".repeat(81), 1).unwrap().parts.len(), 2);
    }

    #[test]
    fn long_gsm_text_splits_into_153_character_parts_with_a_udh() {
        let text: String = (0..400).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let e = encode(&text, 0x42).unwrap();
        assert_eq!(e.coding, Coding::Gsm7);
        assert!(e.udhi);
        assert_eq!(e.parts.len(), 3);
        assert_eq!(&e.parts[0][..6], &[0x05, 0x00, 0x03, 0x42, 3, 1]);
        assert_eq!(&e.parts[2][..6], &[0x05, 0x00, 0x03, 0x42, 3, 3]);
        assert_eq!(e.parts[0].len(), 6 + 153);
        // The parts decode and join back to the text.
        let mut r = Reassembler::new(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        let mut whole = None;
        for p in e.parts.iter().rev() {
            whole = r.handle_part(t0, "+1", decode(DCS_GSM, ESM_UDHI, p));
        }
        assert_eq!(whole.as_deref(), Some(text.as_str()));
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn an_escape_is_never_split_from_its_character() {
        let text = format!("{}€{}", "a".repeat(152), "b".repeat(10));
        let e = encode(&text, 1).unwrap();
        assert_eq!(e.parts.len(), 2);
        assert_eq!(e.parts[0].len(), 6 + 152, "the € moves whole to part 2");
        assert_eq!(gsm_decode(&e.parts[1][6..]), "€bbbbbbbbbb");
    }

    #[test]
    fn accents_outside_gsm_and_vietnamese_go_as_ucs2() {
        for text in [
            "Recarga exitosa: número +52 55 1234 5678",
            "Số dư của bạn là 12.000 đồng",
        ] {
            let e = encode(text, 1).unwrap();
            assert_eq!(e.coding, Coding::Ucs2, "{text}");
            assert_eq!(decode(DCS_UCS2, 0, &e.parts[0]).text, text);
        }
        // Spanish that GSM covers stays GSM (ñ, é, ü are in the table).
        assert_eq!(encode("Año: señal, café", 1).unwrap().coding, Coding::Gsm7);
    }

    #[test]
    fn long_ucs2_text_splits_into_67_character_parts() {
        let text = "đ".repeat(140);
        let e = encode(&text, 9).unwrap();
        assert_eq!(e.coding, Coding::Ucs2);
        assert_eq!(e.parts.len(), 3);
        assert_eq!(e.parts[0].len(), 6 + 134);
        let joined: String = e
            .parts
            .iter()
            .map(|p| decode(DCS_UCS2, ESM_UDHI, p).text)
            .collect();
        assert_eq!(joined, text);
    }

    #[test]
    fn emoji_become_question_marks_rather_than_failing() {
        let e = encode("Feliz cumpleaños 🎉", 1).unwrap();
        assert_eq!(e.coding, Coding::Ucs2);
        assert_eq!(decode(DCS_UCS2, 0, &e.parts[0]).text, "Feliz cumpleaños ?");
    }

    #[test]
    fn empty_and_absurdly_long_texts_are_refused() {
        assert_eq!(encode("", 1), Err(TextError::Empty));
        assert!(matches!(
            encode(&"a".repeat(153 * 11), 1),
            Err(TextError::TooLong(11))
        ));
    }

    #[test]
    fn incoming_codings_decode() {
        assert_eq!(decode(0x00, 0, b"BAL 1234").text, "BAL 1234");
        assert_eq!(decode(0x01, 0, b"HELP").text, "HELP");
        assert_eq!(decode(0x03, 0, &[0x63, 0x61, 0x66, 0xE9]).text, "café");
        // GSM @ is septet 0, not NUL.
        assert_eq!(decode(0x00, 0, &[0x00, 0x41]).text, "@A");
        // DCS groups: 0xF0 is GSM 7-bit class 0, 0x18 is UCS-2.
        assert_eq!(decode(0xF0, 0, b"HI").text, "HI");
        assert_eq!(decode(0x18, 0, &[0x00, 0x48, 0x00, 0x49]).text, "HI");
    }

    #[test]
    fn udh_with_16_bit_references_and_other_elements_is_understood() {
        // UDHL 12: a port element (IEI 05, 4 octets) then a 16-bit concatenation element.
        let mut m = vec![
            0x0C, 0x05, 0x04, 0x0B, 0x84, 0x23, 0xF0, 0x08, 0x04, 0x12, 0x34, 2, 1,
        ];
        m.extend_from_slice(b"TOP");
        let d = decode(0x00, ESM_UDHI, &m);
        assert_eq!(
            d.concat,
            Some(Concat {
                reference: 0x1234,
                total: 2,
                seq: 1
            })
        );
        assert_eq!(d.text, "TOP");
    }

    #[test]
    fn broken_udhs_do_not_panic_and_read_as_plain_text() {
        for m in [
            &[0xFF, 0x00][..],
            &[0x03, 0x00, 0x09][..],
            &[0x05, 0x00, 0x03, 0x01, 0x02, 0x05][..],
            &[][..],
        ] {
            let d = decode(0x00, ESM_UDHI, m);
            assert!(d.concat.is_none(), "{m:?}");
        }
    }

    #[test]
    fn partial_messages_expire_and_groups_are_bounded() {
        let mut r = Reassembler::new(Duration::from_secs(1), 2);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let part = |reference, seq| Decoded {
            text: format!("p{seq}"),
            concat: Some(Concat {
                reference,
                total: 2,
                seq,
            }),
        };
        assert_eq!(r.handle_part(at(0), "+1", part(1, 1)), None);
        assert_eq!(r.handle_part(at(10), "+1", part(2, 1)), None);
        assert_eq!(r.handle_part(at(20), "+1", part(3, 1)), None);
        assert_eq!(r.pending(), 2, "the oldest partial message was dropped");
        assert_eq!(
            r.handle_part(at(30), "+1", part(1, 2)),
            None,
            "1 was dropped"
        );
        r.handle_timeout(at(5000));
        assert_eq!(r.pending(), 0);
        // The same reference from two senders are two messages.
        assert_eq!(r.handle_part(at(0), "+1", part(7, 1)), None);
        assert_eq!(r.handle_part(at(0), "+2", part(7, 2)), None);
        assert_eq!(
            r.handle_part(at(0), "+1", part(7, 2)).as_deref(),
            Some("p1p2")
        );
    }
}
