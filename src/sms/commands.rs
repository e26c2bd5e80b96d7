//! SMS commands (pure): the text of an MO message → a command, or what was wrong with it.
//!
//! ```text
//! TOPUP <card PIN> <number> [message]          a card's value to <number>
//! TOPUP <amount> <PIN> <number> [message]      from the sender's wallet
//! TOPUP <amount> <PIN>                          the sender's own prepaid account, from its
//!                                               linked funding (the low-balance alert's reply)
//! BAL <PIN>                                     wallet (or prepaid account) balance
//! RECHARGE <card PIN>                           a card's value into the sender's wallet
//! HELP
//! ```
//!
//! Keywords come from the language files, are matched without regard to case, and tell the
//! reply's language when only one language has them. Extra spaces are fine; a number may be
//! written in groups (`+52 55 1234 5678`), with `00` for `+`, or in one piece without either:
//! then with its country code or as a national number of the sender's country
//! (`5512345678` from a Mexican phone). An amount is at most six digits
//! with two decimals (`.` or `,`); a card PIN has more digits than that, so `TOPUP 10 1234 …`
//! and `TOPUP 11112222333344 …` cannot be confused. [`Parsed::redacted`] is the message with
//! every PIN masked, for the inbox and logs.

use std::collections::{BTreeMap, BTreeSet};

use crate::topup::secrets::Pin;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Topup,
    Balance,
    Recharge,
    Help,
}

impl Kind {
    fn from_name(s: &str) -> Option<Kind> {
        Some(match s {
            "topup" => Kind::Topup,
            "balance" => Kind::Balance,
            "recharge" => Kind::Recharge,
            "help" => Kind::Help,
            _ => return None,
        })
    }

    /// The reply that explains this command's format.
    pub fn format_message(self) -> &'static str {
        match self {
            Kind::Topup => "format_topup",
            Kind::Balance => "format_balance",
            Kind::Recharge => "format_recharge",
            Kind::Help => "help",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Balance {
        pin: Pin,
    },
    Recharge {
        card: Pin,
    },
    TopupCard {
        card: Pin,
        number: String,
        message: Option<String>,
    },
    TopupWallet {
        amount: String,
        pin: Pin,
        number: String,
        message: Option<String>,
    },
    TopupSelf {
        amount: String,
        pin: Pin,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Nothing but spaces.
    Empty,
    /// The first word is no keyword.
    Unknown,
    /// A known command with arguments that do not fit it.
    Format(Kind),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The language of the keyword, when only one language uses it.
    pub language: Option<String>,
    pub command: Result<Command, ParseError>,
    /// The message with PINs masked: safe to store and log.
    pub redacted: String,
}

/// Keyword (upper case) → command and the languages that use it.
#[derive(Clone, Debug, Default)]
pub struct Keywords(BTreeMap<String, (Kind, BTreeSet<String>)>);

impl Keywords {
    pub fn new(table: BTreeMap<String, (String, BTreeSet<String>)>) -> Keywords {
        Keywords(
            table
                .into_iter()
                .filter_map(|(k, (c, l))| Kind::from_name(&c).map(|c| (k, (c, l))))
                .collect(),
        )
    }
}

/// Longest text a command is read from; the rest of a longer message is ignored.
const MAX_COMMAND_CHARS: usize = 480;
/// Longest sender message passed on to the recipient.
pub const MAX_SENDER_MESSAGE: usize = 100;

fn is_pin(t: &str) -> bool {
    Pin::new(t).is_well_formed()
}

/// `10`, `10.5`, `10,50`: at most six digits before the decimals.
fn amount(t: &str) -> Option<String> {
    let t = t.replace(',', ".");
    let (whole, frac) = t.split_once('.').unwrap_or((&t, ""));
    let ok = (1..=6).contains(&whole.len())
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 2
        && frac.bytes().all(|b| b.is_ascii_digit())
        && !(t.contains('.') && frac.is_empty());
    ok.then_some(t)
}

/// Digits of a number token (`+52`, `(55)`, `1234-5678`); `None` if it has other characters.
fn number_digits(t: &str) -> Option<String> {
    let d: String = t.chars().filter(|c| c.is_ascii_digit()).collect();
    let clean = t
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | '(' | ')'));
    (clean && !d.is_empty()).then_some(d)
}

/// A recipient number starting at `tokens[0]`: with `+` or `00` it may run over the next
/// groups of digits (the longest run that is a valid number wins) and is returned in E.164;
/// without them it is one token of at least eight digits, returned as written (digits only):
/// the service reads it with its country code if it has one, else as a national number of the
/// sender's country. Returns the number and how many tokens it took.
fn recipient(tokens: &[&str]) -> Option<(String, usize)> {
    let first = *tokens.first()?;
    let international = first.starts_with('+') || first.starts_with("00");
    let mut digits = number_digits(first)?;
    if first.starts_with("00") {
        digits = digits[2..].to_string();
    }
    if !international {
        return (digits.len() >= 8 && digits.len() <= 15).then_some((digits, 1));
    }
    let mut best = (format!("+{digits}"), 1);
    let mut found_valid = crate::topup::numbers::parse_number(&best.0).is_ok();
    for (i, t) in tokens.iter().enumerate().skip(1) {
        let Some(more) = number_digits(t).filter(|_| !t.contains('+')) else {
            break;
        };
        digits.push_str(&more);
        if digits.len() > 15 {
            break;
        }
        let candidate = format!("+{digits}");
        let valid = crate::topup::numbers::parse_number(&candidate).is_ok();
        if valid || !found_valid {
            found_valid |= valid;
            best = (candidate, i + 1);
        }
    }
    (best.0.len() > 4).then_some(best)
}

/// The sender's words for the recipient; a word holding the PIN (written again by mistake)
/// is masked, so the recipient never reads it.
fn message(rest: &[&str], pin: &str) -> Option<String> {
    let m = rest
        .iter()
        .map(|w| if w.contains(pin) { "****" } else { w })
        .collect::<Vec<_>>()
        .join(" ");
    let m: String = m.chars().take(MAX_SENDER_MESSAGE).collect();
    (!m.trim().is_empty()).then_some(m)
}

/// Parses an MO message.
pub fn parse(text: &str, keywords: &Keywords) -> Parsed {
    let text: String = text.chars().take(MAX_COMMAND_CHARS).collect();
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let Some(first) = tokens.first() else {
        return Parsed {
            language: None,
            command: Err(ParseError::Empty),
            redacted: String::new(),
        };
    };
    let Some((kind, langs)) = keywords.0.get(&first.to_uppercase()) else {
        return Parsed {
            language: None,
            command: Err(ParseError::Unknown),
            redacted: redact_unknown(&tokens),
        };
    };
    let language = (langs.len() == 1).then(|| langs.iter().next().cloned().unwrap_or_default());
    let args = &tokens[1..];
    // Which argument positions hold PINs (for the redacted copy).
    let mut pin_at: Vec<usize> = vec![];
    // Where the sender's words for the recipient begin.
    let mut message_at = usize::MAX;
    let command = match kind {
        Kind::Help => Ok(Command::Help),
        Kind::Balance => match args {
            [pin] if is_pin(pin) => {
                pin_at.push(0);
                Ok(Command::Balance { pin: Pin::new(pin) })
            }
            _ => Err(ParseError::Format(Kind::Balance)),
        },
        Kind::Recharge => match args {
            [card] if is_pin(card) => {
                pin_at.push(0);
                Ok(Command::Recharge {
                    card: Pin::new(card),
                })
            }
            _ => Err(ParseError::Format(Kind::Recharge)),
        },
        Kind::Topup => parse_topup(args, &mut pin_at, &mut message_at),
    };
    // A PIN written again is masked too: anywhere as a word of its own (even where it is, by
    // coincidence, a group of the recipient's number as written), and inside any word of the
    // sender's words.
    let pins: Vec<&str> = pin_at
        .iter()
        .filter_map(|&i| args.get(i).copied())
        .collect();
    let redacted = std::iter::once(first.to_uppercase())
        .chain(args.iter().enumerate().map(|(i, a)| {
            if pin_at.contains(&i)
                || (command.is_err() && looks_secret(a))
                || pins.contains(a)
                || (i >= message_at && pins.iter().any(|p| a.contains(p)))
            {
                "****".to_string()
            } else {
                a.to_string()
            }
        }))
        .collect::<Vec<_>>()
        .join(" ");
    Parsed {
        language,
        command,
        redacted,
    }
}

fn parse_topup(
    args: &[&str],
    pin_at: &mut Vec<usize>,
    message_at: &mut usize,
) -> Result<Command, ParseError> {
    let bad = Err(ParseError::Format(Kind::Topup));
    match args {
        [a, pin, rest @ ..] if amount(a).is_some() && is_pin(pin) => {
            pin_at.push(1);
            let amount = amount(a).unwrap_or_default();
            if rest.is_empty() {
                return Ok(Command::TopupSelf {
                    amount,
                    pin: Pin::new(pin),
                });
            }
            let Some((number, used)) = recipient(rest) else {
                return bad;
            };
            *message_at = 2 + used;
            Ok(Command::TopupWallet {
                amount,
                pin: Pin::new(pin),
                number,
                message: message(&rest[used..], pin),
            })
        }
        [card, rest @ ..] if is_pin(card) && !rest.is_empty() => {
            pin_at.push(0);
            let Some((number, used)) = recipient(rest) else {
                return bad;
            };
            *message_at = 1 + used;
            Ok(Command::TopupCard {
                card: Pin::new(card),
                number,
                message: message(&rest[used..], card),
            })
        }
        _ => {
            pin_at.extend((0..args.len()).filter(|&i| looks_secret(args[i])));
            bad
        }
    }
}

/// In a message we could not read, any run of four or more digits that is not written as an
/// international number may be a PIN.
fn looks_secret(t: &str) -> bool {
    !t.starts_with('+') && t.chars().filter(|c| c.is_ascii_digit()).count() >= 4
}

fn redact_unknown(tokens: &[&str]) -> String {
    tokens
        .iter()
        .map(|t| if looks_secret(t) { "****" } else { t })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kw() -> Keywords {
        let mut t = BTreeMap::new();
        let mut add = |k: &str, c: &str, langs: &[&str]| {
            t.insert(
                k.to_string(),
                (c.to_string(), langs.iter().map(|l| l.to_string()).collect()),
            );
        };
        add("TOPUP", "topup", &["en"]);
        add("RECARGA", "topup", &["es"]);
        add("BAL", "balance", &["en", "es"]);
        add("RECHARGE", "recharge", &["en"]);
        add("HELP", "help", &["en"]);
        Keywords::new(t)
    }

    fn p(s: &str) -> Parsed {
        parse(s, &kw())
    }

    #[test]
    fn the_five_commands() {
        assert_eq!(p("HELP").command, Ok(Command::Help));
        assert_eq!(
            p("BAL 1234").command,
            Ok(Command::Balance {
                pin: Pin::new("1234")
            })
        );
        assert_eq!(
            p("RECHARGE 11112222333344").command,
            Ok(Command::Recharge {
                card: Pin::new("11112222333344")
            })
        );
        assert_eq!(
            p("TOPUP 11112222333344 +525512345678").command,
            Ok(Command::TopupCard {
                card: Pin::new("11112222333344"),
                number: "+525512345678".into(),
                message: None
            })
        );
        assert_eq!(
            p("TOPUP 10 1234 +525512345678").command,
            Ok(Command::TopupWallet {
                amount: "10".into(),
                pin: Pin::new("1234"),
                number: "+525512345678".into(),
                message: None
            })
        );
        assert_eq!(
            p("TOPUP 10 4321").command,
            Ok(Command::TopupSelf {
                amount: "10".into(),
                pin: Pin::new("4321")
            })
        );
    }

    #[test]
    fn case_spaces_groups_and_00_are_tolerated() {
        let want = Ok(Command::TopupWallet {
            amount: "12.50".into(),
            pin: Pin::new("1234"),
            number: "+525512345678".into(),
            message: None,
        });
        assert_eq!(p("  topup   12,50 1234  +52 55 1234 5678 ").command, want);
        assert_eq!(p("Topup 12.50 1234 0052-55-1234-5678").command, want);
        assert_eq!(p("TOPUP\t12.50\n1234 +52(55)12345678").command, want);
        assert_eq!(
            p("topup 10 1234 525512345678").command,
            Ok(Command::TopupWallet {
                amount: "10".into(),
                pin: Pin::new("1234"),
                number: "525512345678".into(),
                message: None
            }),
            "digits alone are passed on as written, for the service to read with the sender's country"
        );
    }

    #[test]
    fn a_sender_message_follows_the_number() {
        let r = p("TOPUP 10 1234 +52 55 1234 5678 Feliz cumpleaños mamá");
        assert_eq!(
            r.command,
            Ok(Command::TopupWallet {
                amount: "10".into(),
                pin: Pin::new("1234"),
                number: "+525512345678".into(),
                message: Some("Feliz cumpleaños mamá".into())
            })
        );
        // Digits after a complete number belong to the message.
        let r = p("TOPUP 11112222333344 +52 55 1234 5678 10 besos");
        assert!(
            matches!(
                r.command,
                Ok(Command::TopupCard { ref number, ref message, .. })
                    if number == "+525512345678" && message.as_deref() == Some("10 besos")
            ),
            "{r:?}"
        );
        let long = "x".repeat(300);
        let r = p(&format!("TOPUP 10 1234 +525512345678 {long}"));
        let Ok(Command::TopupWallet {
            message: Some(m), ..
        }) = r.command
        else {
            panic!()
        };
        assert_eq!(m.chars().count(), MAX_SENDER_MESSAGE);
    }

    #[test]
    fn malformed_commands_say_which_format_was_meant() {
        for s in [
            "TOPUP",
            "TOPUP 1234",
            "TOPUP abc +525512345678",
            "TOPUP 10 12 +525512345678",
            "TOPUP 11112222333344 hello",
            "TOPUP 10 1234 ++52",
        ] {
            assert_eq!(p(s).command, Err(ParseError::Format(Kind::Topup)), "{s}");
        }
        for s in ["BAL", "BAL 12", "BAL 1234 5678", "BAL abcd"] {
            assert_eq!(p(s).command, Err(ParseError::Format(Kind::Balance)), "{s}");
        }
        assert_eq!(
            p("RECHARGE").command,
            Err(ParseError::Format(Kind::Recharge))
        );
        assert_eq!(p("HELLO there").command, Err(ParseError::Unknown));
        assert_eq!(p("   ").command, Err(ParseError::Empty));
    }

    #[test]
    fn the_keyword_tells_the_language_when_only_one_language_has_it() {
        assert_eq!(p("RECARGA 10 1234").language.as_deref(), Some("es"));
        assert_eq!(p("TOPUP 10 1234").language.as_deref(), Some("en"));
        assert_eq!(p("BAL 1234").language, None, "shared by en and es");
    }

    #[test]
    fn pins_never_reach_the_redacted_copy() {
        assert_eq!(p("bal 1234").redacted, "BAL ****");
        assert_eq!(
            p("TOPUP 10 4321 +525512345678 hi").redacted,
            "TOPUP 10 **** +525512345678 hi"
        );
        assert_eq!(
            p("topup 11112222333344 +525512345678").redacted,
            "TOPUP **** +525512345678"
        );
        // Unreadable messages mask anything that may be a PIN.
        assert_eq!(p("TOPUP 12x 99998888").redacted, "TOPUP 12x ****");
        assert_eq!(p("TOPUP 1234x").redacted, "TOPUP ****");
        assert_eq!(p("hello 123456 +5255").redacted, "hello **** +5255");
        // A PIN written again is masked as a word of its own anywhere (here a group of the
        // number as written: the number itself is kept whole in the top-up), and inside any
        // word for the recipient.
        let r = p("TOPUP 2 1234 +52 55 1234 5678 my pin is 1234, pin:1234");
        assert_eq!(
            r.redacted,
            "TOPUP 2 **** +52 55 **** 5678 my pin is **** ****"
        );
        match r.command {
            Ok(Command::TopupWallet {
                message, number, ..
            }) => {
                assert_eq!(number, "+525512345678");
                assert_eq!(message.as_deref(), Some("my pin is **** ****"));
            }
            other => panic!("{other:?}"),
        }
        let r = p("TOPUP 11112222333344 +525512345678 11112222333344");
        assert_eq!(r.redacted, "TOPUP **** +525512345678 ****");
        // Found by the sms_command fuzz target: a card PIN that is also the first group of the
        // number as written (00 for the international prefix) stayed in the logged copy.
        let r = p("TOPUP\u{b}0093659\u{b}0093659\u{b}4444444 44444444444 ~");
        assert!(
            matches!(r.command, Ok(Command::TopupCard { .. })),
            "{:?}",
            r.command
        );
        assert!(
            !r.redacted.split_whitespace().any(|w| w == "0093659"),
            "{}",
            r.redacted
        );
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_without_panicking_and_leaks_no_pin(s in "\\PC{0,200}") {
            let r = parse(&s, &kw());
            let pin = match &r.command {
                Ok(Command::Balance { pin }) | Ok(Command::TopupSelf { pin, .. }) => Some(pin),
                Ok(Command::TopupWallet { pin, message, .. }) => {
                    proptest::prop_assert!(message.iter().all(|m| !m.split_whitespace().any(|w| w == pin.expose())));
                    Some(pin)
                }
                Ok(Command::TopupCard { card, message, .. }) => {
                    proptest::prop_assert!(message.iter().all(|m| !m.split_whitespace().any(|w| w == card.expose())));
                    Some(card)
                }
                Ok(Command::Recharge { card }) => Some(card),
                _ => None,
            };
            if let Some(pin) = pin {
                proptest::prop_assert!(!r.redacted.split_whitespace().any(|w| w == pin.expose()));
            }
        }

        #[test]
        fn well_formed_wallet_topups_round_trip(
            amount in 1u32..999_999, pin in "[0-9]{4,8}", cc in "52|84|63", rest in "[0-9]{8,10}"
        ) {
            let text = format!("TOPUP {amount} {pin} +{cc}{rest}");
            match parse(&text, &kw()).command {
                Ok(Command::TopupWallet { amount: a, pin: p, number, message }) => {
                    proptest::prop_assert_eq!(a, amount.to_string());
                    proptest::prop_assert_eq!(p.expose(), pin.as_str());
                    proptest::prop_assert_eq!(number, format!("+{cc}{rest}"));
                    proptest::prop_assert_eq!(message, None);
                }
                other => proptest::prop_assert!(false, "{:?}", other),
            }
        }
    }
}
