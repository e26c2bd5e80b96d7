//! Announcements built from prompt fragments, per language grammar (pure).
//!
//! Every function returns the names of the prompts to play, in order. The fragments a language
//! needs are listed by [`fragments`]; `dialplan check` and the prompt generator use that list.
//!
//! - English: "one thousand two hundred thirty four", "12 dollars and 50 cents".
//! - Spanish: "cien" alone but "ciento uno"; "mil", not "un mil"; "un dólar", "veintiún pesos"
//!   (the apocopated "un" before a masculine noun); "doce dólares con cincuenta centavos".
//! - Vietnamese: "hai mươi mốt" (21), "mười lăm" / "hai mươi lăm" (15, 25), "một trăm linh năm"
//!   (105), "năm mươi nghìn đồng" (50 000 dong).

use topup_values::money::Money;

/// Languages with a complete grammar here.
pub const LANGUAGES: [&str; 3] = ["en", "es", "vi"];

/// A silence between groups of digits.
pub const PAUSE: &str = "pause";

/// Currencies whose names have prompts: `cur-<code>-one`, `cur-<code>-many` and, with minor
/// units, `cur-<code>-minor-one`, `cur-<code>-minor-many`.
pub const SPOKEN_CURRENCIES: [&str; 5] = ["usd", "mxn", "php", "eur", "vnd"];

fn digit(d: u64) -> String {
    format!("digit-{d}")
}

/// All fragment prompts a language needs for numbers, money, digits, phones and minutes.
pub fn fragments(lang: &str) -> Vec<String> {
    let mut v: Vec<String> = (0..10).map(digit).collect();
    v.extend(
        [
            "star",
            "pound",
            "letter-a",
            "letter-b",
            "letter-c",
            "letter-d",
            PAUSE,
            "plus",
            "minute-one",
            "minute-many",
        ]
        .map(String::from),
    );
    for c in SPOKEN_CURRENCIES {
        v.push(format!("cur-{c}-one"));
        v.push(format!("cur-{c}-many"));
        if c != "vnd" {
            v.push(format!("cur-{c}-minor-one"));
            v.push(format!("cur-{c}-minor-many"));
        }
    }
    match lang {
        "en" => {
            v.extend((10..20).map(|n| format!("num-{n}")));
            v.extend((2..10).map(|t| format!("num-{}", t * 10)));
            v.extend(["num-hundred", "num-thousand", "num-million", "and"].map(String::from));
        }
        "es" => {
            v.extend((10..30).map(|n| format!("num-{n}")));
            v.extend((3..10).map(|t| format!("num-{}", t * 10)));
            v.extend((2..10).map(|h| format!("num-{}", h * 100)));
            v.extend(
                [
                    "num-100",
                    "num-ciento",
                    "num-mil",
                    "num-un",
                    "num-veintiun",
                    "num-un-millon",
                    "num-millones",
                    "and",
                    "con",
                ]
                .map(String::from),
            );
        }
        "vi" => {
            v.extend(
                [
                    "num-10",
                    "num-muoi",
                    "num-mot",
                    "num-lam",
                    "num-linh",
                    "num-tram",
                    "num-nghin",
                    "num-trieu",
                    "and",
                ]
                .map(String::from),
            );
        }
        _ => {}
    }
    v
}

/// Says a whole number. `before_noun` selects Spanish "un" / "veintiún" for 1, 21, 31...
pub fn number(lang: &str, n: u64, before_noun: bool) -> Vec<String> {
    match lang {
        "es" => es_number(n, before_noun),
        "vi" => vi_number(n),
        _ => en_number(n),
    }
}

fn en_number(n: u64) -> Vec<String> {
    if n == 0 {
        return vec![digit(0)];
    }
    let mut out = vec![];
    let mut rest = n;
    for (scale, name) in [
        (1_000_000_000_000u64, "num-million"),
        (1_000_000, "num-million"),
        (1000, "num-thousand"),
    ] {
        if rest >= scale {
            if scale == 1_000_000_000_000 {
                // Beyond what a recharge line says: read the digits.
                return digits(&n.to_string());
            }
            out.extend(en_below_1000(rest / scale));
            out.push(name.into());
            rest %= scale;
        }
    }
    out.extend(en_below_1000(rest));
    out
}

fn en_below_1000(n: u64) -> Vec<String> {
    let mut out = vec![];
    if n >= 100 {
        out.push(digit(n / 100));
        out.push("num-hundred".into());
    }
    let r = n % 100;
    match r {
        0 => {}
        1..=9 => out.push(digit(r)),
        10..=19 => out.push(format!("num-{r}")),
        _ => {
            out.push(format!("num-{}", r / 10 * 10));
            if r % 10 != 0 {
                out.push(digit(r % 10));
            }
        }
    }
    out
}

fn es_number(n: u64, before_noun: bool) -> Vec<String> {
    if n == 0 {
        return vec![digit(0)];
    }
    if n >= 1_000_000_000_000 {
        return digits(&n.to_string());
    }
    let mut out = vec![];
    let millions = n / 1_000_000;
    let thousands = (n / 1000) % 1000;
    let rest = n % 1000;
    if millions == 1 {
        out.push("num-un-millon".into());
    } else if millions > 1 {
        out.extend(es_below_1000(millions, true));
        out.push("num-millones".into());
    }
    if thousands == 1 {
        out.push("num-mil".into()); // "mil", never "un mil"
    } else if thousands > 1 {
        out.extend(es_below_1000(thousands, true));
        out.push("num-mil".into());
    }
    if rest > 0 {
        out.extend(es_below_1000(rest, before_noun));
    }
    out
}

fn es_below_1000(n: u64, apocope: bool) -> Vec<String> {
    let mut out = vec![];
    let (h, r) = (n / 100, n % 100);
    match (h, r) {
        (0, _) => {}
        (1, 0) => out.push("num-100".into()), // cien
        (1, _) => out.push("num-ciento".into()),
        _ => out.push(format!("num-{}", h * 100)),
    }
    match r {
        0 => {}
        1 if apocope => out.push("num-un".into()),
        1..=9 => out.push(digit(r)),
        21 if apocope => out.push("num-veintiun".into()),
        10..=29 => out.push(format!("num-{r}")),
        _ => {
            out.push(format!("num-{}", r / 10 * 10));
            match r % 10 {
                0 => {}
                1 if apocope => {
                    out.push("and".into());
                    out.push("num-un".into());
                }
                u => {
                    out.push("and".into());
                    out.push(digit(u));
                }
            }
        }
    }
    out
}

fn vi_number(n: u64) -> Vec<String> {
    if n == 0 {
        return vec![digit(0)];
    }
    if n >= 1_000_000_000_000 {
        return digits(&n.to_string());
    }
    let groups = [
        (n / 1_000_000_000, "num-nghin"),
        ((n / 1_000_000) % 1000, "num-trieu"),
        ((n / 1000) % 1000, "num-nghin"),
        (n % 1000, ""),
    ];
    let mut out = vec![];
    let mut started = false;
    for (i, (g, name)) in groups.iter().enumerate() {
        if *g == 0 {
            continue;
        }
        out.extend(vi_below_1000(*g, started));
        if i == 0 {
            // thousands of millions: "nghìn tỷ" is not needed on a recharge line
            out.push("num-nghin".into());
            out.push("num-trieu".into());
        } else if !name.is_empty() {
            out.push((*name).into());
        }
        started = true;
    }
    out
}

/// A group of three digits; `inner` when a higher group was said, which makes a short group
/// read its zero hundreds ("không trăm linh năm").
fn vi_below_1000(n: u64, inner: bool) -> Vec<String> {
    let mut out = vec![];
    let (h, t, u) = (n / 100, (n / 10) % 10, n % 10);
    if h > 0 || inner {
        out.push(digit(h));
        out.push("num-tram".into());
    }
    match t {
        0 if u > 0 && (h > 0 || inner) => {
            out.push("num-linh".into());
            out.push(digit(u));
            return out;
        }
        0 => {
            if u > 0 {
                out.push(digit(u));
            }
            return out;
        }
        1 => out.push("num-10".into()), // mười
        _ => {
            out.push(digit(t));
            out.push("num-muoi".into()); // mươi
        }
    }
    match u {
        0 => {}
        1 if t >= 2 => out.push("num-mot".into()), // mốt
        5 => out.push("num-lam".into()),           // lăm
        _ => out.push(digit(u)),
    }
    out
}

/// Says an amount with its currency.
pub fn money(lang: &str, m: Money) -> Vec<String> {
    let code = m.currency.code().to_ascii_lowercase();
    let (whole, minor) = m.split();
    let (whole, minor) = (whole.unsigned_abs(), minor.unsigned_abs());
    let noun = |n: u64, minor_unit: bool| {
        let unit = if minor_unit {
            format!("cur-{code}-minor")
        } else {
            format!("cur-{code}")
        };
        format!("{unit}-{}", if n == 1 { "one" } else { "many" })
    };
    let mut out = vec![];
    if whole > 0 || minor == 0 {
        out.extend(number(lang, whole, true));
        out.push(noun(whole, false));
    }
    if minor > 0 {
        if whole > 0 {
            out.push(if lang == "es" { "con" } else { "and" }.into());
        }
        out.extend(number(lang, minor, true));
        out.push(noun(minor, true));
    }
    out
}

/// Says each key: "digit-1", "star", "pound", "letter-a".
pub fn digits(s: &str) -> Vec<String> {
    s.chars()
        .filter_map(topup_media::dtmf::Digit::from_char)
        .map(|d| crate::model::say_prompt(d).to_string())
        .collect()
}

/// Reads a phone number in groups: "+52 55 1234 5678" → plus, 5 2, pause, 5 5, pause, ...
/// `country_code_len` digits form the first group; the rest is read in groups of 4 from the
/// end (3 for the first group when the remainder is not a multiple of 4).
pub fn phone(e164: &str, country_code_len: usize) -> Vec<String> {
    let digits_only: String = e164.chars().filter(char::is_ascii_digit).collect();
    let mut out = vec![];
    if e164.starts_with('+') {
        out.push("plus".to_string());
    }
    let cc = country_code_len.min(digits_only.len());
    let (head, rest) = digits_only.split_at(cc);
    out.extend(digits(head));
    let mut groups = vec![];
    let mut r = rest;
    while r.len() > 4 {
        let cut = r.len() - 4;
        groups.push(&r[cut..]);
        r = &r[..cut];
    }
    if !r.is_empty() {
        groups.push(r);
    }
    for g in groups.iter().rev() {
        out.push(PAUSE.to_string());
        out.extend(digits(g));
    }
    out
}

/// "23 minutes", "1 minute".
pub fn minutes(lang: &str, n: u64) -> Vec<String> {
    let mut out = number(lang, n, true);
    out.push(if n == 1 { "minute-one" } else { "minute-many" }.into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: Vec<String>) -> String {
        v.join(" ")
    }

    fn m(x: &str) -> Money {
        Money::parse(x).unwrap()
    }

    #[test]
    fn english_numbers() {
        assert_eq!(s(number("en", 0, false)), "digit-0");
        assert_eq!(s(number("en", 7, false)), "digit-7");
        assert_eq!(s(number("en", 15, false)), "num-15");
        assert_eq!(s(number("en", 42, false)), "num-40 digit-2");
        assert_eq!(s(number("en", 100, false)), "digit-1 num-hundred");
        assert_eq!(
            s(number("en", 1234, false)),
            "digit-1 num-thousand digit-2 num-hundred num-30 digit-4"
        );
        assert_eq!(s(number("en", 50_000, false)), "num-50 num-thousand");
        assert_eq!(
            s(number("en", 2_000_017, false)),
            "digit-2 num-million num-17"
        );
    }

    #[test]
    fn english_money() {
        assert_eq!(
            s(money("en", m("12.50USD"))),
            "num-12 cur-usd-many and num-50 cur-usd-minor-many"
        );
        assert_eq!(
            s(money("en", m("1.01USD"))),
            "digit-1 cur-usd-one and digit-1 cur-usd-minor-one"
        );
        assert_eq!(
            s(money("en", m("0.75USD"))),
            "num-70 digit-5 cur-usd-minor-many"
        );
        assert_eq!(s(money("en", m("0USD"))), "digit-0 cur-usd-many");
        assert_eq!(
            s(money("en", m("100MXN"))),
            "digit-1 num-hundred cur-mxn-many"
        );
        assert_eq!(
            s(money("en", m("50000VND"))),
            "num-50 num-thousand cur-vnd-many"
        );
    }

    #[test]
    fn spanish_grammar() {
        assert_eq!(s(number("es", 100, false)), "num-100", "cien");
        assert_eq!(
            s(number("es", 101, false)),
            "num-ciento digit-1",
            "ciento uno"
        );
        assert_eq!(s(number("es", 115, false)), "num-ciento num-15");
        assert_eq!(s(number("es", 1000, false)), "num-mil", "mil, not un mil");
        assert_eq!(s(number("es", 1001, false)), "num-mil digit-1");
        assert_eq!(s(number("es", 2500, false)), "digit-2 num-mil num-500");
        assert_eq!(s(number("es", 21, false)), "num-21");
        assert_eq!(s(number("es", 21, true)), "num-veintiun");
        assert_eq!(
            s(number("es", 31, true)),
            "num-30 and num-un",
            "treinta y un"
        );
        assert_eq!(s(number("es", 45, false)), "num-40 and digit-5");
        assert_eq!(s(number("es", 1_000_000, false)), "num-un-millon");
        assert_eq!(s(number("es", 3_000_000, false)), "digit-3 num-millones");
        assert_eq!(
            s(number("es", 21_000, false)),
            "num-veintiun num-mil",
            "veintiún mil"
        );
        assert_eq!(s(money("es", m("1USD"))), "num-un cur-usd-one", "un dólar");
        assert_eq!(
            s(money("es", m("12.50USD"))),
            "num-12 cur-usd-many con num-50 cur-usd-minor-many"
        );
        assert_eq!(
            s(money("es", m("100MXN"))),
            "num-100 cur-mxn-many",
            "cien pesos"
        );
    }

    #[test]
    fn vietnamese_grammar() {
        assert_eq!(s(number("vi", 10, false)), "num-10", "mười");
        assert_eq!(s(number("vi", 11, false)), "num-10 digit-1", "mười một");
        assert_eq!(s(number("vi", 15, false)), "num-10 num-lam", "mười lăm");
        assert_eq!(
            s(number("vi", 21, false)),
            "digit-2 num-muoi num-mot",
            "hai mươi mốt"
        );
        assert_eq!(
            s(number("vi", 25, false)),
            "digit-2 num-muoi num-lam",
            "hai mươi lăm"
        );
        assert_eq!(s(number("vi", 30, false)), "digit-3 num-muoi");
        assert_eq!(
            s(number("vi", 105, false)),
            "digit-1 num-tram num-linh digit-5",
            "một trăm linh năm"
        );
        assert_eq!(
            s(number("vi", 50_000, false)),
            "digit-5 num-muoi num-nghin",
            "năm mươi nghìn"
        );
        assert_eq!(
            s(number("vi", 1_005, false)),
            "digit-1 num-nghin digit-0 num-tram num-linh digit-5"
        );
        assert_eq!(
            s(money("vi", m("50000VND"))),
            "digit-5 num-muoi num-nghin cur-vnd-many"
        );
    }

    #[test]
    fn phones_are_read_in_groups_and_digits_key_by_key() {
        assert_eq!(
            s(phone("+525512345678", 2)),
            "plus digit-5 digit-2 pause digit-5 digit-5 pause digit-1 digit-2 digit-3 digit-4 pause digit-5 digit-6 digit-7 digit-8"
        );
        assert_eq!(s(digits("1*#a")), "digit-1 star pound letter-a");
        assert_eq!(s(minutes("en", 23)), "num-20 digit-3 minute-many");
        assert_eq!(s(minutes("es", 1)), "num-un minute-one");
    }

    #[test]
    fn every_fragment_used_is_listed() {
        for lang in LANGUAGES {
            let known: std::collections::HashSet<String> = fragments(lang).into_iter().collect();
            let mut said = vec![];
            for n in (0..2000).chain([
                10_000, 21_000, 50_000, 100_000, 999_999, 1_000_000, 2_500_000, 1_050_000,
            ]) {
                said.extend(number(lang, n, false));
                said.extend(number(lang, n, true));
            }
            for c in ["USD", "MXN", "PHP", "EUR", "VND"] {
                said.extend(money(lang, Money::parse(&format!("1{c}")).unwrap()));
                said.extend(money(lang, Money::parse(&format!("21{c}")).unwrap()));
            }
            said.extend(money(lang, m("3.01USD")));
            said.extend(phone("+84912345678", 2));
            said.extend(minutes(lang, 1));
            for p in said {
                assert!(known.contains(&p), "{lang}: {p} is not in fragments()");
            }
        }
    }
}
