//! Number lookup: a recipient's number → E.164, country, type, carrier, ported?, and where the
//! carrier came from. The chain, first answer wins: an HLR provider over HTTP (when
//! configured; cached), the ported-numbers table, the carrier prefix table (longest prefix),
//! and finally the number plan alone (valid, country, type, no carrier).
//!
//! Parsing and validation are the number plan's (crate `topup-values`, `phone`), pure.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Core, TopupError};

impl From<InvalidNumber> for TopupError {
    fn from(e: InvalidNumber) -> Self {
        TopupError::InvalidNumber(e.to_string())
    }
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

pub use topup_values::phone::{
    InvalidNumber, NumberKind, PlanNumber, longest_prefix, parse_callable, parse_number,
};

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
