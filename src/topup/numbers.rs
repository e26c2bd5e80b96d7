//! Number lookup: a recipient's number → E.164, country, type, carrier, ported?, and where the
//! carrier came from. The chain, first answer wins: an HLR provider over HTTP (when
//! configured; cached), the ported-numbers table, the carrier prefix table (longest prefix),
//! and finally the number plan alone (valid, country, type, no carrier).
//!
//! Parsing and validation use the number plan of libphonenumber (`phonenumber` crate); they
//! are pure. Invalid numbers get a reason a caller can act on.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use phonenumber::Type;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Core, TopupError};

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
}

impl From<InvalidNumber> for TopupError {
    fn from(e: InvalidNumber) -> Self {
        TopupError::InvalidNumber(e.to_string())
    }
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Hlr,
    Ported,
    Prefix,
    Plan,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NumberInfo {
    pub e164: String,
    pub country: String,
    pub country_code: u16,
    pub kind: NumberKind,
    pub carrier_id: Option<String>,
    pub ported: bool,
    pub source: Source,
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
    parse_plan(input, |t| match t {
        Type::Mobile => Ok(NumberKind::Mobile),
        Type::FixedLineOrMobile => Ok(NumberKind::FixedLineOrMobile),
        Type::FixedLine => Ok(NumberKind::FixedLine),
        Type::TollFree => Ok(NumberKind::TollFree),
        Type::Voip => Ok(NumberKind::Voip),
        Type::PersonalNumber => Ok(NumberKind::Personal),
        Type::Uan => Ok(NumberKind::Uan),
        _ => Err(InvalidNumber::NotCallable),
    })
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

/// An HLR lookup service over HTTP: `GET {url}?number=+E164` with an optional bearer key,
/// answering `{"valid": bool, "mccmnc": "334020", "ported": bool}`. Answers are cached.
pub struct Hlr {
    pub url: String,
    pub api_key: Option<String>,
    pub timeout: Duration,
    pub ttl: Duration,
    client: reqwest::Client,
    cache: Mutex<HashMap<String, (Instant, HlrAnswer)>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct HlrAnswer {
    #[serde(default = "yes")]
    pub valid: bool,
    #[serde(default)]
    pub mccmnc: Option<String>,
    #[serde(default)]
    pub ported: bool,
}

fn yes() -> bool {
    true
}

/// Most numbers remembered by the HLR cache.
const HLR_CACHE_MAX: usize = 100_000;

impl Hlr {
    pub fn new(url: &str, api_key: Option<String>, timeout: Duration, ttl: Duration) -> Hlr {
        Hlr {
            url: url.to_string(),
            api_key,
            timeout,
            ttl,
            client: reqwest::Client::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The provider's answer, or `None` when it cannot be had (the chain goes on).
    pub async fn query(&self, e164: &str) -> Option<HlrAnswer> {
        if let Ok(cache) = self.cache.lock()
            && let Some((at, a)) = cache.get(e164)
            && at.elapsed() < self.ttl
        {
            return Some(a.clone());
        }
        let mut req = self
            .client
            .get(&self.url)
            .query(&[("number", e164)])
            .timeout(self.timeout);
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let answer: HlrAnswer = match req.send().await {
            Ok(r) if r.status().is_success() => match r.json().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "HLR answer unreadable");
                    return None;
                }
            },
            Ok(r) => {
                tracing::warn!(status = %r.status(), "HLR refused the query");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "HLR unreachable");
                return None;
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= HLR_CACHE_MAX {
                cache.retain(|_, (at, _)| at.elapsed() < self.ttl);
                if cache.len() >= HLR_CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(e164.to_string(), (Instant::now(), answer.clone()));
        }
        Some(answer)
    }
}

impl Core {
    /// Runs the lookup chain for a number.
    pub async fn lookup_number(
        &self,
        input: &str,
        hlr: Option<&Hlr>,
    ) -> Result<NumberInfo, TopupError> {
        let plan = parse_number(input)?;
        let info = |carrier_id: Option<String>, ported: bool, source: Source| NumberInfo {
            e164: plan.e164.clone(),
            country: plan.country.clone(),
            country_code: plan.country_code,
            kind: plan.kind,
            carrier_id,
            ported,
            source,
        };
        if let Some(h) = hlr
            && let Some(a) = h.query(&plan.e164).await
        {
            if !a.valid {
                return Err(InvalidNumber::Invalid(plan.country.clone()).into());
            }
            if let Some(mccmnc) = a.mccmnc.as_deref()
                && let Some(carrier) = self.carrier_by_mccmnc(mccmnc).await?
            {
                return Ok(info(Some(carrier), a.ported, Source::Hlr));
            }
        }
        let pool = self.db.pool();
        if let Some(r) = sqlx::query("SELECT carrier_id FROM ported_numbers WHERE number = $1")
            .bind(&plan.e164)
            .fetch_optional(pool)
            .await?
        {
            return Ok(info(Some(r.try_get("carrier_id")?), true, Source::Ported));
        }
        // Candidate prefixes of the number, longest first, in one query.
        let digits = plan.e164.trim_start_matches('+');
        let candidates: Vec<String> = (1..=digits.len())
            .map(|n| digits[..n].to_string())
            .collect();
        let placeholders: Vec<String> = (1..=candidates.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT prefix, carrier_id FROM carrier_prefixes WHERE prefix IN ({}) ORDER BY LENGTH(prefix) DESC LIMIT 1",
            placeholders.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for c in &candidates {
            q = q.bind(c);
        }
        if let Some(r) = q.fetch_optional(pool).await? {
            return Ok(info(Some(r.try_get("carrier_id")?), false, Source::Prefix));
        }
        Ok(info(None, false, Source::Plan))
    }

    async fn carrier_by_mccmnc(&self, mccmnc: &str) -> Result<Option<String>, TopupError> {
        let rows = sqlx::query("SELECT id, mccmnc FROM carriers WHERE mccmnc <> ''")
            .fetch_all(self.db.pool())
            .await?;
        for r in rows {
            let list: String = r.try_get("mccmnc")?;
            if list.split(',').any(|m| m.trim() == mccmnc) {
                return Ok(Some(r.try_get("id")?));
            }
        }
        Ok(None)
    }
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

    /// The HLR answers first when configured, its answers are cached, and when it fails the
    /// chain goes on to the tables.
    #[tokio::test]
    async fn hlr_answers_first_is_cached_and_its_failures_fall_through() {
        use axum::extract::{Query, State};
        use axum::routing::get;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU32, Ordering};
        async fn hlr(
            State(hits): State<Arc<AtomicU32>>,
            Query(q): Query<HashMap<String, String>>,
        ) -> (axum::http::StatusCode, String) {
            hits.fetch_add(1, Ordering::SeqCst);
            let n = q.get("number").cloned().unwrap_or_default();
            match &n[n.len() - 2..] {
                "11" => (
                    axum::http::StatusCode::OK,
                    r#"{"valid":true,"mccmnc":"334030","ported":true}"#.into(),
                ),
                "22" => (axum::http::StatusCode::OK, r#"{"valid":false}"#.into()),
                "33" => (axum::http::StatusCode::OK, "garbage".into()),
                _ => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, String::new()),
            }
        }
        let hits = Arc::new(AtomicU32::new(0));
        let app = axum::Router::new()
            .route("/hlr", get(hlr))
            .with_state(hits.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hlr", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let h = Hlr::new(
            &url,
            Some("k".into()),
            Duration::from_secs(2),
            Duration::from_secs(60),
        );
        for (core, _g) in crate::topup::testing::cores().await {
            core.import_carriers(
                "[[carrier]]\nid = \"telcel-mx\"\nname = \"Telcel\"\ncountry = \"MX\"\ncurrency = \"MXN\"\nadapter = \"sandbox\"\nmccmnc = [\"334020\"]\nprefixes = [\"52\"]\n\
[[carrier]]\nid = \"movistar-mx\"\nname = \"Movistar\"\ncountry = \"MX\"\ncurrency = \"MXN\"\nadapter = \"sandbox\"\nmccmnc = [\"334030\"]\n",
                1,
            )
            .await
            .unwrap();
            let before = hits.load(Ordering::SeqCst);
            let n = core.lookup_number("+525512345611", Some(&h)).await.unwrap();
            assert_eq!(
                (n.carrier_id.as_deref(), n.source, n.ported),
                (Some("movistar-mx"), Source::Hlr, true)
            );
            core.lookup_number("+525512345611", Some(&h)).await.unwrap();
            assert!(
                hits.load(Ordering::SeqCst) - before <= 1,
                "the second answer came from the cache"
            );
            let e = core
                .lookup_number("+525512345622", Some(&h))
                .await
                .unwrap_err();
            assert_eq!(e.code(), "invalid_number");
            for fallthrough in ["+525512345633", "+525512345644"] {
                let n = core.lookup_number(fallthrough, Some(&h)).await.unwrap();
                assert_eq!(
                    (n.carrier_id.as_deref(), n.source),
                    (Some("telcel-mx"), Source::Prefix)
                );
            }
        }
    }
}
