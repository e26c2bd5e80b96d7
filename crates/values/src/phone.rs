//! Phone numbers per the number plan of libphonenumber (`phonenumber` crate), pure:
//! normalising what a caller typed to E.164 and telling whether a top-up (a mobile number) or
//! a call may go to it. Invalid numbers get a reason a caller can act on.

use std::collections::HashMap;

use phonenumber::Type;
use serde::{Deserialize, Serialize};

/// Why a number cannot receive a top-up.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNumber {
    #[error("not a number")]
    NotANumber,
    #[error("too short")]
    TooShort,
    #[error("too long")]
    TooLong,
    #[error("unknown country code")]
    UnknownCountry,
    #[error("not a valid number in {0}")]
    Invalid(String),
    #[error("not a mobile number")]
    NotMobile,
    /// Premium-rate, shared-cost, pager, voicemail access or of no known type.
    #[error("not a number calls may be placed to")]
    NotCallable,
    /// Neither a number with its country code nor a national number of the caller's country.
    #[error("the country code is missing (start with it, e.g. 52 for Mexico)")]
    MissingCountryCode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberKind {
    Mobile,
    /// The plan cannot tell (e.g. North America): accepted.
    FixedLineOrMobile,
    // Only for calls (parse_callable):
    FixedLine,
    TollFree,
    Voip,
    Personal,
    /// Universal access numbers (one number for a company's lines).
    Uan,
}

/// A valid number per the number plan: a mobile one from [`parse_number`], one that calls may
/// be placed to from [`parse_callable`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanNumber {
    pub e164: String,
    /// ISO 3166 alpha-2.
    pub country: String,
    pub country_code: u16,
    pub kind: NumberKind,
}

/// Normalises what a caller typed ("+52 55 1234-5678", "0052...", "525512345678" — the
/// voice line asks for the country code) and checks it against the number plan: a mobile
/// number, which is what can be topped up.
pub fn parse_number(input: &str) -> Result<PlanNumber, InvalidNumber> {
    parse_plan(input, |t| match t {
        Type::Mobile => Ok(NumberKind::Mobile),
        Type::FixedLineOrMobile => Ok(NumberKind::FixedLineOrMobile),
        _ => Err(InvalidNumber::NotMobile),
    })
}

/// As [`parse_number`], for the calling service's destinations: landlines, mobiles,
/// toll-free, VoIP, personal and universal access numbers. Premium-rate and shared-cost
/// numbers are refused here whatever the blocked prefixes say (they are where toll fraud
/// pays out), as are pagers, voicemail access and numbers of no known type.
pub fn parse_callable(input: &str) -> Result<PlanNumber, InvalidNumber> {
    parse_plan(input, parse_callable_kind)
}

/// The country (ISO 3166 alpha-2) of a caller's or sender's own number, in which the numbers
/// they key or write without a country code are read; `None` when it is not a number.
pub fn home_country(own: &str) -> Option<String> {
    parse_callable(own).ok().map(|n| n.country)
}

/// As [`parse_number`], and what it refuses is tried as a national number of `home` (the
/// caller's country, ISO 3166 alpha-2, e.g. from caller ID): "2015550150" from a US caller is
/// +12015550150. A number that is neither is said to lack its country code.
pub fn parse_number_from(input: &str, home: Option<&str>) -> Result<PlanNumber, InvalidNumber> {
    with_home(input, home, parse_number, |t| match t {
        Type::Mobile => Ok(NumberKind::Mobile),
        Type::FixedLineOrMobile => Ok(NumberKind::FixedLineOrMobile),
        _ => Err(InvalidNumber::NotMobile),
    })
}

/// As [`parse_callable`], with national numbers of `home` (see [`parse_number_from`]).
pub fn parse_callable_from(input: &str, home: Option<&str>) -> Result<PlanNumber, InvalidNumber> {
    with_home(input, home, parse_callable, parse_callable_kind)
}

fn parse_callable_kind(t: Type) -> Result<NumberKind, InvalidNumber> {
    match t {
        Type::Mobile => Ok(NumberKind::Mobile),
        Type::FixedLineOrMobile => Ok(NumberKind::FixedLineOrMobile),
        Type::FixedLine => Ok(NumberKind::FixedLine),
        Type::TollFree => Ok(NumberKind::TollFree),
        Type::Voip => Ok(NumberKind::Voip),
        Type::PersonalNumber => Ok(NumberKind::Personal),
        Type::Uan => Ok(NumberKind::Uan),
        _ => Err(InvalidNumber::NotCallable),
    }
}

fn with_home(
    input: &str,
    home: Option<&str>,
    international: impl Fn(&str) -> Result<PlanNumber, InvalidNumber>,
    kind: impl Fn(Type) -> Result<NumberKind, InvalidNumber>,
) -> Result<PlanNumber, InvalidNumber> {
    let first = international(input);
    let t = input.trim();
    let (Err(e), Some(home)) = (&first, home) else {
        return first;
    };
    if t.starts_with('+') || t.starts_with("00") || *e == InvalidNumber::NotANumber {
        return first;
    }
    let Ok(region) = home.parse::<phonenumber::country::Id>() else {
        return first;
    };
    let digits: String = t.chars().filter(|c| c.is_ascii_digit()).collect();
    let national = match phonenumber::parse(Some(region), &digits) {
        Ok(number) if number.is_valid() => {
            let db = &phonenumber::metadata::DATABASE;
            kind(number.number_type(db)).map(|kind| PlanNumber {
                e164: format!("+{}{}", number.code().value(), national_digits(&number)),
                country: home.to_string(),
                country_code: number.code().value(),
                kind,
            })
        }
        _ => Err(InvalidNumber::MissingCountryCode),
    };
    match (national, e) {
        (Ok(n), _) => Ok(n),
        // Read with a country code it is a valid number, of another kind (a landline where a
        // mobile is wanted): refused for what it is.
        (Err(_), InvalidNumber::NotMobile | InvalidNumber::NotCallable) => first,
        (Err(n), _) => Err(n),
    }
}

fn parse_plan(
    input: &str,
    kind: impl Fn(Type) -> Result<NumberKind, InvalidNumber>,
) -> Result<PlanNumber, InvalidNumber> {
    let t = input.trim();
    let digits: String = t.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.is_empty()
        || t.chars()
            .any(|c| !(c.is_ascii_digit() || " +-().".contains(c)))
    {
        return Err(InvalidNumber::NotANumber);
    }
    let digits = digits
        .strip_prefix("00")
        .map(String::from)
        .unwrap_or(digits);
    if digits.len() < 7 {
        return Err(InvalidNumber::TooShort);
    }
    if digits.len() > 15 {
        return Err(InvalidNumber::TooLong);
    }
    let number = phonenumber::parse(None, format!("+{digits}")).map_err(|e| match e {
        phonenumber::ParseError::InvalidCountryCode => InvalidNumber::UnknownCountry,
        phonenumber::ParseError::TooLong => InvalidNumber::TooLong,
        phonenumber::ParseError::NoNumber => InvalidNumber::NotANumber,
        _ => InvalidNumber::TooShort,
    })?;
    let db = &phonenumber::metadata::DATABASE;
    let country = number
        .country()
        .id()
        .map(|id| id.as_ref().to_string())
        .ok_or(InvalidNumber::UnknownCountry)?;
    let e164 = format!("+{}{}", number.code().value(), national_digits(&number));
    if !number.is_valid() {
        // Tell too short / too long apart using the possible lengths of mobile numbers there.
        let national_len = national_digits(&number).len() as u16;
        if let Some(meta) = number.metadata(db) {
            let d = meta.descriptors();
            let lengths = d.mobile().unwrap_or(d.general()).possible_length();
            if let (Some(min), Some(max)) = (lengths.iter().min(), lengths.iter().max()) {
                if national_len < *min {
                    return Err(InvalidNumber::TooShort);
                }
                if national_len > *max {
                    return Err(InvalidNumber::TooLong);
                }
            }
        }
        return Err(InvalidNumber::Invalid(country));
    }
    let kind = kind(number.number_type(db))?;
    Ok(PlanNumber {
        e164,
        country,
        country_code: number.code().value(),
        kind,
    })
}

fn national_digits(n: &phonenumber::PhoneNumber) -> String {
    let nat = n.national();
    format!("{}{}", "0".repeat(nat.zeros() as usize), nat.value())
}

/// Longest prefix of `e164` (with or without '+') among `prefixes`.
pub fn longest_prefix<'a, V>(
    e164: &str,
    prefixes: &'a HashMap<String, V>,
) -> Option<(&'a str, &'a V)> {
    let digits = e164.trim_start_matches('+');
    (1..=digits.len())
        .rev()
        .find_map(|n| prefixes.get_key_value(&digits[..n]))
        .map(|(k, v)| (k.as_str(), v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_normalise_from_what_callers_type() {
        let n = parse_number("+52 55 1234 5678").unwrap();
        assert_eq!(
            (n.e164.as_str(), n.country.as_str(), n.country_code),
            ("+525512345678", "MX", 52)
        );
        assert_eq!(parse_number("525512345678").unwrap().e164, "+525512345678");
        assert_eq!(
            parse_number("00525512345678").unwrap().e164,
            "+525512345678"
        );
        let vn = parse_number("84912345678").unwrap();
        assert_eq!((vn.country.as_str(), vn.kind), ("VN", NumberKind::Mobile));
        let us = parse_number("+1 (201) 555-0123").unwrap();
        assert_eq!(
            (us.country.as_str(), us.kind),
            ("US", NumberKind::FixedLineOrMobile)
        );
    }

    #[test]
    fn national_numbers_are_read_in_the_callers_country() {
        // A US caller keys a US number without its 1.
        let n = parse_number_from("2015550150", Some("US")).unwrap();
        assert_eq!(
            (n.e164.as_str(), n.country.as_str()),
            ("+12015550150", "US")
        );
        // A Mexican caller keys a national mobile; with its country code it is read as such.
        assert_eq!(
            parse_number_from("5512345678", Some("MX")).unwrap().e164,
            "+525512345678"
        );
        assert_eq!(
            parse_number_from("525512345678", Some("US")).unwrap().e164,
            "+525512345678"
        );
        // A UK caller with the trunk 0.
        assert_eq!(
            parse_number_from("07911123456", Some("GB")).unwrap().e164,
            "+447911123456"
        );
        // Neither: the country code is missing. Without a home country, the reason as before.
        assert_eq!(
            parse_number_from("12345678", Some("MX")),
            Err(InvalidNumber::MissingCountryCode)
        );
        assert_eq!(
            parse_number_from("5512345678", None),
            parse_number("5512345678")
        );
        // Written with `+`, it is not re-read.
        assert_eq!(
            parse_number_from("+5512345678", Some("MX")),
            parse_number("+5512345678")
        );
        // A national landline is refused as a landline, not as a missing country code.
        assert_eq!(
            parse_number_from("5552345678", Some("MX")).map(|n| n.kind),
            parse_number("+525552345678").map(|n| n.kind)
        );
        assert_eq!(
            parse_callable_from("02079460123", Some("GB")).unwrap().e164,
            "+442079460123"
        );
    }

    #[test]
    fn invalid_numbers_say_why() {
        assert_eq!(parse_number("abc"), Err(InvalidNumber::NotANumber));
        assert_eq!(parse_number(""), Err(InvalidNumber::NotANumber));
        assert_eq!(parse_number("52551"), Err(InvalidNumber::TooShort));
        assert_eq!(
            parse_number("5255123456789012345"),
            Err(InvalidNumber::TooLong)
        );
        assert_eq!(
            parse_number("+999 1234 5678"),
            Err(InvalidNumber::UnknownCountry)
        );
        assert_eq!(parse_number("+52 55 1234 56"), Err(InvalidNumber::TooShort));
        // A Vietnamese landline (Hanoi 24) is not a mobile.
        assert_eq!(
            parse_number("+84 24 3825 1234"),
            Err(InvalidNumber::NotMobile)
        );
        assert_eq!(
            parse_number("+1 800 555 0199"),
            Err(InvalidNumber::NotMobile)
        );
    }

    #[test]
    fn calls_may_go_to_landlines_and_toll_free_but_not_premium_rate() {
        let hanoi = parse_callable("+84 24 3825 1234").unwrap();
        assert_eq!(
            (hanoi.e164.as_str(), hanoi.country.as_str(), hanoi.kind),
            ("+842438251234", "VN", NumberKind::FixedLine)
        );
        let london = parse_callable("44 20 7946 0123").unwrap();
        assert_eq!(london.kind, NumberKind::FixedLine);
        assert_eq!(
            parse_callable("+1 800 555 0199").unwrap().kind,
            NumberKind::TollFree
        );
        assert_eq!(
            parse_callable("+84912345678").unwrap().kind,
            NumberKind::Mobile
        );
        // UK premium rate (09) and shared cost (084x).
        assert_eq!(
            parse_callable("+44 909 879 0000"),
            Err(InvalidNumber::NotCallable)
        );
        assert_eq!(
            parse_callable("+44 845 464 0000"),
            Err(InvalidNumber::NotCallable)
        );
        // The plan's own checks still come first.
        assert_eq!(parse_callable("52551"), Err(InvalidNumber::TooShort));
        assert_eq!(
            parse_callable("+999 1234 5678"),
            Err(InvalidNumber::UnknownCountry)
        );
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = HashMap::new();
        t.insert("84".to_string(), "a");
        t.insert("8491".to_string(), "b");
        t.insert("849".to_string(), "c");
        assert_eq!(longest_prefix("+84912345678", &t), Some(("8491", &"b")));
        assert_eq!(longest_prefix("+84812345678", &t), Some(("84", &"a")));
        assert_eq!(longest_prefix("+52", &t), None);
    }
}
