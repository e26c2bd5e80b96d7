//! Money: integer minor units of an ISO 4217 currency. No floats anywhere.
//!
//! FX rule (the one rounding rule, applied once per conversion): a rate is a decimal with at
//! most 8 fractional digits, stored as an integer count of 10⁻⁸; converting an amount gives
//! `floor(amount × rate)` in the target currency's minor units. The recipient never receives
//! more than the rate gives; the fraction of a minor unit stays on the platform's FX account.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown currency `{0}` (ISO 4217 code such as USD, MXN, VND)")]
    UnknownCurrency(String),
    #[error("`{0}` is not an amount like 10.00USD")]
    Malformed(String),
    #[error("`{amount}` has more decimals than {currency} allows ({exponent})")]
    TooPrecise {
        amount: String,
        currency: Currency,
        exponent: u32,
    },
    #[error("amount out of range")]
    Overflow,
    #[error("currencies differ: {0} and {1}")]
    CurrencyMismatch(Currency, Currency),
    #[error("`{0}` is not a rate (a positive decimal with at most 8 fractional digits)")]
    BadRate(String),
}

/// ISO 4217 alphabetic code with its minor-unit exponent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

/// Currencies the platform knows and their minor units (ISO 4217 table A.1).
const CURRENCIES: &[(&str, u32)] = &[
    ("AED", 2),
    ("ARS", 2),
    ("BDT", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("DOP", 2),
    ("EGP", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("GHS", 2),
    ("GTQ", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("IDR", 2),
    ("INR", 2),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("NGN", 2),
    ("NPR", 2),
    ("OMR", 3),
    ("PEN", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("SVC", 2),
    ("THB", 2),
    ("TND", 3),
    ("UGX", 0),
    ("USD", 2),
    ("VND", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("ZAR", 2),
];

impl Currency {
    pub fn new(code: &str) -> Result<Currency, MoneyError> {
        let upper = code.trim().to_ascii_uppercase();
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == upper)
            .map(|(c, _)| {
                let b = c.as_bytes();
                Currency([b[0], b[1], b[2]])
            })
            .ok_or_else(|| MoneyError::UnknownCurrency(code.trim().chars().take(8).collect()))
    }

    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// Digits after the decimal point (2 for USD, 0 for VND, 3 for KWD).
    pub fn exponent(&self) -> u32 {
        CURRENCIES
            .iter()
            .find(|(c, _)| c.as_bytes() == self.0)
            .map_or(2, |(_, e)| *e)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::new(s)
    }
}

/// An amount in minor units (cents, centavos; dong have none).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Money {
        Money { minor, currency }
    }

    pub fn zero(currency: Currency) -> Money {
        Money { minor: 0, currency }
    }

    /// Parses "10.00USD", "10 USD", "USD 10.5", "50000VND".
    pub fn parse(s: &str) -> Result<Money, MoneyError> {
        let t = s.trim();
        let malformed = || MoneyError::Malformed(t.chars().take(32).collect());
        let letters = |x: &str| x.len() == 3 && x.bytes().all(|b| b.is_ascii_alphabetic());
        let (amount, code) = match (t.get(..3), t.get(t.len().saturating_sub(3)..)) {
            (Some(p), _) if letters(p) && Currency::new(p).is_ok() => (t[3..].trim(), p),
            (_, Some(suffix)) if t.len() > 3 && letters(suffix) => {
                (t[..t.len() - 3].trim(), suffix)
            }
            _ => return Err(malformed()),
        };
        let currency = Currency::new(code)?;
        Money::parse_amount(amount, currency)
    }

    /// Parses a decimal amount ("12.5") in `currency`.
    pub fn parse_amount(amount: &str, currency: Currency) -> Result<Money, MoneyError> {
        let a = amount.trim();
        let malformed = || MoneyError::Malformed(a.chars().take(32).collect());
        let (neg, digits) = match a.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, a),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty()
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(malformed());
        }
        let exp = currency.exponent();
        if frac.len() as u32 > exp {
            return Err(MoneyError::TooPrecise {
                amount: a.chars().take(32).collect(),
                currency,
                exponent: exp,
            });
        }
        let scale = 10i64.pow(exp);
        let whole: i64 = int.parse().map_err(|_| MoneyError::Overflow)?;
        let mut f: i64 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| malformed())?
        };
        f *= 10i64.pow(exp - frac.len() as u32);
        let minor = whole
            .checked_mul(scale)
            .and_then(|w| w.checked_add(f))
            .ok_or(MoneyError::Overflow)?;
        Ok(Money {
            minor: if neg { -minor } else { minor },
            currency,
        })
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same(other)?;
        Ok(Money::new(
            self.minor
                .checked_add(other.minor)
                .ok_or(MoneyError::Overflow)?,
            self.currency,
        ))
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same(other)?;
        Ok(Money::new(
            self.minor
                .checked_sub(other.minor)
                .ok_or(MoneyError::Overflow)?,
            self.currency,
        ))
    }

    fn same(&self, other: Money) -> Result<(), MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        Ok(())
    }

    /// The decimal amount without the currency ("12.50").
    pub fn amount_string(&self) -> String {
        let exp = self.currency.exponent();
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        if exp == 0 {
            return format!("{sign}{abs}");
        }
        let scale = 10u64.pow(exp);
        format!(
            "{sign}{}.{:0width$}",
            abs / scale,
            abs % scale,
            width = exp as usize
        )
    }

    /// Whole units and the remaining minor units (12.50 → (12, 50)), for announcements.
    pub fn split(&self) -> (i64, i64) {
        let scale = 10i64.pow(self.currency.exponent());
        (self.minor / scale, self.minor % scale)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount_string(), self.currency)
    }
}

/// An exchange rate `from` → `to`: one unit of `from` buys `rate` units of `to`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FxRate {
    pub from: Currency,
    pub to: Currency,
    /// The rate in 10⁻⁸ units (17.05 → 1_705_000_000).
    pub rate_e8: i64,
}

pub const RATE_SCALE: i64 = 100_000_000;

impl FxRate {
    pub fn parse(from: Currency, to: Currency, rate: &str) -> Result<FxRate, MoneyError> {
        let bad = || MoneyError::BadRate(rate.chars().take(32).collect());
        let r = rate.trim();
        let (int, frac) = r.split_once('.').unwrap_or((r, ""));
        if int.is_empty()
            || frac.len() > 8
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let whole: i64 = int.parse().map_err(|_| bad())?;
        let f: i64 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| bad())?
        };
        let rate_e8 = whole
            .checked_mul(RATE_SCALE)
            .and_then(|w| w.checked_add(f * 10i64.pow(8 - frac.len() as u32)))
            .ok_or_else(bad)?;
        if rate_e8 <= 0 {
            return Err(bad());
        }
        Ok(FxRate { from, to, rate_e8 })
    }

    /// The identity rate for one currency.
    pub fn identity(c: Currency) -> FxRate {
        FxRate {
            from: c,
            to: c,
            rate_e8: RATE_SCALE,
        }
    }

    /// Converts with the module's rule: floor to the target's minor unit.
    pub fn convert(&self, amount: Money) -> Result<Money, MoneyError> {
        if amount.currency != self.from {
            return Err(MoneyError::CurrencyMismatch(amount.currency, self.from));
        }
        if amount.minor < 0 {
            return Err(MoneyError::Overflow);
        }
        let num = amount.minor as i128 * self.rate_e8 as i128 * 10i128.pow(self.to.exponent());
        let den = RATE_SCALE as i128 * 10i128.pow(self.from.exponent());
        let minor = i64::try_from(num / den).map_err(|_| MoneyError::Overflow)?;
        Ok(Money::new(minor, self.to))
    }

    pub fn rate_string(&self) -> String {
        let frac = format!("{:08}", self.rate_e8 % RATE_SCALE);
        let frac = frac.trim_end_matches('0');
        if frac.is_empty() {
            format!("{}", self.rate_e8 / RATE_SCALE)
        } else {
            format!("{}.{frac}", self.rate_e8 / RATE_SCALE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(code: &str) -> Currency {
        Currency::new(code).unwrap()
    }

    #[test]
    fn amounts_parse_in_minor_units_per_currency() {
        assert_eq!(
            Money::parse("10.00USD").unwrap(),
            Money::new(1000, c("USD"))
        );
        assert_eq!(Money::parse("10 usd").unwrap(), Money::new(1000, c("USD")));
        assert_eq!(
            Money::parse("USD 12.5").unwrap(),
            Money::new(1250, c("USD"))
        );
        assert_eq!(
            Money::parse("50000VND").unwrap(),
            Money::new(50000, c("VND"))
        );
        assert_eq!(
            Money::parse("1.234 KWD").unwrap(),
            Money::new(1234, c("KWD"))
        );
        assert!(matches!(
            Money::parse("10.005USD"),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert!(matches!(
            Money::parse("5.5VND"),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert!(matches!(
            Money::parse("10XYZ"),
            Err(MoneyError::UnknownCurrency(_))
        ));
        assert!(matches!(
            Money::parse("ten USD"),
            Err(MoneyError::Malformed(_))
        ));
        assert!(matches!(
            Money::parse("99999999999999999999USD"),
            Err(MoneyError::Overflow)
        ));
        assert!(Money::parse("").is_err());
        assert!(Money::parse("1.2.3USD").is_err());
    }

    #[test]
    fn amounts_print_with_their_exponent() {
        assert_eq!(Money::new(1250, c("USD")).to_string(), "12.50 USD");
        assert_eq!(Money::new(5, c("USD")).to_string(), "0.05 USD");
        assert_eq!(Money::new(-5, c("USD")).amount_string(), "-0.05");
        assert_eq!(Money::new(50000, c("VND")).to_string(), "50000 VND");
        assert_eq!(Money::new(1250, c("USD")).split(), (12, 50));
    }

    #[test]
    fn arithmetic_refuses_mixed_currencies_and_overflow() {
        let usd = Money::new(100, c("USD"));
        assert!(usd.checked_add(Money::new(1, c("MXN"))).is_err());
        assert!(Money::new(i64::MAX, c("USD")).checked_add(usd).is_err());
        assert_eq!(usd.checked_sub(usd).unwrap(), Money::zero(c("USD")));
    }

    #[test]
    fn fx_converts_once_and_rounds_down() {
        let r = FxRate::parse(c("USD"), c("MXN"), "17.0543").unwrap();
        assert_eq!(r.rate_e8, 1_705_430_000);
        // 10.00 USD × 17.0543 = 170.543 MXN → 170.54 (floor)
        assert_eq!(
            r.convert(Money::parse("10USD").unwrap()).unwrap(),
            Money::new(17054, c("MXN"))
        );
        let vnd = FxRate::parse(c("USD"), c("VND"), "25410.5").unwrap();
        // 2.00 USD → 50821 VND exactly; 0.01 USD → 254.105 → 254
        assert_eq!(vnd.convert(Money::new(200, c("USD"))).unwrap().minor, 50821);
        assert_eq!(vnd.convert(Money::new(1, c("USD"))).unwrap().minor, 254);
        let back = FxRate::parse(c("VND"), c("USD"), "0.00003935").unwrap();
        assert_eq!(
            back.convert(Money::new(50000, c("VND"))).unwrap().minor,
            196
        ); // 1.9675 → 1.96
        assert!(r.convert(Money::new(1, c("VND"))).is_err());
        assert_eq!(r.rate_string(), "17.0543");
    }

    #[test]
    fn rates_must_be_positive_decimals_of_stated_precision() {
        for bad in ["0", "-1", "1.123456789", "abc", "", "1e3"] {
            assert!(FxRate::parse(c("USD"), c("MXN"), bad).is_err(), "{bad}");
        }
    }
}
