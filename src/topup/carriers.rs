//! Carriers, their prefixes, products and calling rates: imported from a TOML file (or CSV for
//! prefix and ported-number lists) that telco staff keep under version control.
//!
//! ```toml
//! [[carrier]]
//! id = "telcel-mx"
//! name = "Telcel"
//! country = "MX"
//! currency = "MXN"              # what recipients receive
//! adapter = "http"              # builtin | http | sandbox
//! mccmnc = ["334020"]           # to map HLR answers
//! prefixes = ["52155", "52331"]
//! http = { base_url = "https://api.example.com", operator_id = "174", api_key_env = "AGG_KEY", timeout = "15s",
//!          webhook_secret_env = "AGG_NOTICE_SECRET" }   # optional: status notices (topup::notices)
//!
//! [[carrier.product]]
//! id = "telcel-100"
//! kind = "fixed"
//! label = "100 pesos"
//! price = "5.99USD"             # what the sender pays
//! receive = "100MXN"            # what arrives
//!
//! [[carrier.product]]
//! id = "telcel-open"
//! kind = "range"
//! label = "Any amount"
//! min = "1.00USD"
//! max = "50.00USD"
//! rate = "17.05"                # MXN per USD, floor per the FX rule
//!
//! [[ported]]
//! number = "+525512345678"
//! carrier = "movistar-mx"
//!
//! [[rate]]                      # calling rates (the calling service)
//! prefix = "52"
//! currency = "USD"
//! per_minute = "0.05"
//! increment = 60
//! ```

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::money::{Currency, FxRate, Money};
use super::{Core, TopupError};
use crate::textfile::parse_duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportFile {
    #[serde(default)]
    carrier: Vec<CarrierSpec>,
    #[serde(default)]
    ported: Vec<PortedSpec>,
    #[serde(default)]
    rate: Vec<RateSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CarrierSpec {
    id: String,
    name: String,
    country: String,
    currency: String,
    adapter: String,
    #[serde(default)]
    mccmnc: Vec<String>,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    http: Option<HttpSettings>,
    #[serde(default)]
    product: Vec<ProductSpec>,
    #[serde(default = "active")]
    status: String,
}

fn active() -> String {
    "active".into()
}

/// Settings of an `http` carrier (stored as JSON with the carrier).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub base_url: String,
    pub operator_id: String,
    /// Name of the environment variable holding the API key (never the key itself).
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// Name of the environment variable holding the secret that signs the carrier's status
    /// notices (`POST /carriers/{id}/notices`); without it the carrier's notices are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_env: Option<String>,
}

fn default_timeout() -> String {
    "15s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductSpec {
    id: String,
    kind: String,
    label: String,
    #[serde(default)]
    price: Option<String>,
    #[serde(default)]
    receive: Option<String>,
    #[serde(default)]
    min: Option<String>,
    #[serde(default)]
    max: Option<String>,
    #[serde(default)]
    rate: Option<String>,
    #[serde(default = "active")]
    status: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortedSpec {
    number: String,
    carrier: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateSpec {
    prefix: String,
    currency: String,
    per_minute: String,
    #[serde(default = "sixty")]
    increment: i64,
}

fn sixty() -> i64 {
    60
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Syntax(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Core(#[from] TopupError),
}

impl From<sqlx::Error> for ImportError {
    fn from(e: sqlx::Error) -> Self {
        ImportError::Core(e.into())
    }
}

impl From<crate::store::StoreError> for ImportError {
    fn from(e: crate::store::StoreError) -> Self {
        ImportError::Core(e.into())
    }
}

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ImportReport {
    pub carriers: usize,
    pub prefixes: usize,
    pub products: usize,
    pub ported: usize,
    pub rates: usize,
}

/// A carrier as stored.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Carrier {
    pub id: String,
    pub name: String,
    pub country: String,
    pub currency: String,
    pub adapter: String,
    #[serde(skip)]
    pub http: Option<HttpSettings>,
    pub status: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProductKind {
    /// A denomination: the sender pays `price`, the recipient gets `receive`.
    Fixed { price: String, receive: String },
    /// Any amount between `min` and `max` in the sender's currency, converted at `rate`.
    Range {
        min: String,
        max: String,
        rate: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Product {
    pub id: String,
    pub carrier_id: String,
    pub label: String,
    pub send_currency: String,
    pub receive_currency: String,
    #[serde(flatten)]
    pub kind: ProductKind,
    #[serde(skip)]
    pricing: Pricing,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pricing {
    Fixed {
        price: Money,
        receive: Money,
    },
    Range {
        min: Money,
        max: Money,
        rate: FxRate,
    },
}

impl Product {
    /// What the sender pays and the recipient receives. Range products need the sender's
    /// `amount`; fixed ones ignore it.
    pub fn quote(&self, amount: Option<Money>) -> Result<(Money, Money), TopupError> {
        match &self.pricing {
            Pricing::Fixed { price, receive } => Ok((*price, *receive)),
            Pricing::Range { min, max, rate } => {
                let a = amount.ok_or(TopupError::AmountOutOfRange {
                    amount: "none".into(),
                    min: min.to_string(),
                    max: max.to_string(),
                })?;
                if a.currency != min.currency || a.minor < min.minor || a.minor > max.minor {
                    return Err(TopupError::AmountOutOfRange {
                        amount: a.to_string(),
                        min: min.to_string(),
                        max: max.to_string(),
                    });
                }
                Ok((a, rate.convert(a)?))
            }
        }
    }
}

/// Pure: the product that sells `amount` (what the sender pays): a fixed denomination of
/// exactly that price, else an open-range product in that currency that takes it. Returns the
/// product and, for a range product, the amount to ask for.
pub fn product_for_amount(
    products: &[Product],
    amount: Money,
) -> Result<(Product, Option<Money>), TopupError> {
    if let Some(p) = products
        .iter()
        .find(|p| matches!(p.pricing, Pricing::Fixed { price, .. } if price == amount))
    {
        return Ok((p.clone(), None));
    }
    let mut out_of_range = None;
    for p in products {
        if let Pricing::Range { min, .. } = &p.pricing
            && min.currency == amount.currency
        {
            match p.quote(Some(amount)) {
                Ok(_) => return Ok((p.clone(), Some(amount))),
                Err(e) => out_of_range = out_of_range.or(Some(e)),
            }
        }
    }
    Err(out_of_range.unwrap_or(TopupError::NoProductForNumber))
}

fn invalid(s: String) -> ImportError {
    ImportError::Invalid(s)
}

impl Core {
    /// Imports carriers, prefixes, products, ported numbers and rates (TOML), or a CSV list
    /// with header `prefix,carrier` or `number,carrier`. All or nothing.
    pub async fn import_carriers(&self, text: &str, now: i64) -> Result<ImportReport, ImportError> {
        let first = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if first == "prefix,carrier" || first == "number,carrier" {
            return self
                .import_csv(text, first.starts_with("prefix"), now)
                .await;
        }
        let file: ImportFile = toml::from_str(text)
            .map_err(|e| ImportError::Syntax(e.to_string().trim_end().to_string()))?;
        let mut report = ImportReport::default();
        let mut tx = self.db.begin().await?;
        let mut ids = HashSet::new();
        for c in &file.carrier {
            let where_ = format!("carrier `{}`", c.id);
            if c.id.is_empty() || !ids.insert(c.id.clone()) {
                return Err(invalid(format!("{where_}: empty or repeated id")));
            }
            let currency =
                Currency::new(&c.currency).map_err(|e| invalid(format!("{where_}: {e}")))?;
            if c.country.len() != 2 || !c.country.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(invalid(format!(
                    "{where_}: country must be ISO 3166 alpha-2 like MX"
                )));
            }
            let settings = match (c.adapter.as_str(), &c.http) {
                ("http", Some(h)) => {
                    parse_duration(&h.timeout)
                        .map_err(|e| invalid(format!("{where_}: http.timeout: {e}")))?;
                    if !(h.base_url.starts_with("http://") || h.base_url.starts_with("https://")) {
                        return Err(invalid(format!(
                            "{where_}: http.base_url must be an http(s) URL"
                        )));
                    }
                    serde_json::to_string(h).unwrap_or_default()
                }
                ("http", None) => {
                    return Err(invalid(format!(
                        "{where_}: adapter http needs an [carrier.http] table"
                    )));
                }
                ("builtin" | "sandbox", None) => "{}".to_string(),
                ("builtin" | "sandbox", Some(_)) => {
                    return Err(invalid(format!(
                        "{where_}: only http carriers take http settings"
                    )));
                }
                (other, _) => {
                    return Err(invalid(format!(
                        "{where_}: unknown adapter `{other}` (builtin, http, sandbox)"
                    )));
                }
            };
            if !matches!(c.status.as_str(), "active" | "suspended") {
                return Err(invalid(format!(
                    "{where_}: status must be active or suspended"
                )));
            }
            sqlx::query(
                "INSERT INTO carriers (id, name, country, currency, adapter, settings, mccmnc, status)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO UPDATE SET name = $2, country = $3, currency = $4, adapter = $5,
                    settings = $6, mccmnc = $7, status = $8",
            )
            .bind(&c.id)
            .bind(&c.name)
            .bind(&c.country)
            .bind(currency.code())
            .bind(&c.adapter)
            .bind(settings)
            .bind(c.mccmnc.join(","))
            .bind(&c.status)
            .execute(&mut *tx)
            .await?;
            report.carriers += 1;
            sqlx::query("DELETE FROM carrier_prefixes WHERE carrier_id = $1")
                .bind(&c.id)
                .execute(&mut *tx)
                .await?;
            for p in &c.prefixes {
                let p = p.trim_start_matches('+');
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid(format!("{where_}: prefix `{p}` must be digits")));
                }
                upsert_prefix(&mut tx, p, &c.id).await?;
                report.prefixes += 1;
            }
            for p in &c.product {
                self.upsert_product(&mut tx, &c.id, currency, p).await?;
                report.products += 1;
            }
        }
        for p in &file.ported {
            upsert_ported(&mut tx, &p.number, &p.carrier, now).await?;
            report.ported += 1;
        }
        for r in &file.rate {
            let cur = Currency::new(&r.currency)
                .map_err(|e| invalid(format!("rate {}: {e}", r.prefix)))?;
            let per_minute = Money::parse_amount(&r.per_minute, cur)
                .map_err(|e| invalid(format!("rate {}: {e}", r.prefix)))?;
            if per_minute.minor <= 0
                || r.increment <= 0
                || r.prefix.is_empty()
                || !r.prefix.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(invalid(format!(
                    "rate {}: needs digits, a positive price and increment",
                    r.prefix
                )));
            }
            sqlx::query(
                "INSERT INTO rates (prefix, currency, per_minute, increment_secs) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (prefix, currency) DO UPDATE SET per_minute = $3, increment_secs = $4",
            )
            .bind(&r.prefix)
            .bind(cur.code())
            .bind(per_minute.minor)
            .bind(r.increment)
            .execute(&mut *tx)
            .await?;
            report.rates += 1;
        }
        tx.commit().await?;
        Ok(report)
    }

    async fn import_csv(
        &self,
        text: &str,
        prefixes: bool,
        now: i64,
    ) -> Result<ImportReport, ImportError> {
        let mut report = ImportReport::default();
        let mut tx = self.db.begin().await?;
        for (i, line) in text.lines().enumerate().skip(1) {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (key, carrier) = line
                .split_once(',')
                .map(|(a, b)| (a.trim(), b.trim()))
                .ok_or_else(|| invalid(format!("line {}: expected two columns", i + 1)))?;
            if prefixes {
                let p = key.trim_start_matches('+');
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid(format!("line {}: prefix must be digits", i + 1)));
                }
                upsert_prefix(&mut tx, p, carrier)
                    .await
                    .map_err(|e| invalid(format!("line {}: {e}", i + 1)))?;
                report.prefixes += 1;
            } else {
                upsert_ported(&mut tx, key, carrier, now)
                    .await
                    .map_err(|e| invalid(format!("line {}: {e}", i + 1)))?;
                report.ported += 1;
            }
        }
        tx.commit().await?;
        Ok(report)
    }

    async fn upsert_product(
        &self,
        conn: &mut sqlx::AnyConnection,
        carrier: &str,
        receive_cur: Currency,
        p: &ProductSpec,
    ) -> Result<(), ImportError> {
        let where_ = format!("product `{}`", p.id);
        let money = |field: &str, v: &Option<String>| -> Result<Money, ImportError> {
            let v = v
                .as_deref()
                .ok_or_else(|| invalid(format!("{where_}: needs `{field}`")))?;
            let m = Money::parse(v).map_err(|e| invalid(format!("{where_}: {field}: {e}")))?;
            if m.minor <= 0 {
                return Err(invalid(format!("{where_}: {field} must be positive")));
            }
            Ok(m)
        };
        let (send_cur, price, receive, min, max, rate) = match p.kind.as_str() {
            "fixed" => {
                let price = money("price", &p.price)?;
                let receive = money("receive", &p.receive)?;
                if receive.currency != receive_cur {
                    return Err(invalid(format!(
                        "{where_}: receive must be in the carrier's currency {receive_cur}"
                    )));
                }
                (
                    price.currency,
                    Some(price.minor),
                    Some(receive.minor),
                    None,
                    None,
                    None,
                )
            }
            "range" => {
                let min = money("min", &p.min)?;
                let max = money("max", &p.max)?;
                if min.currency != max.currency || min.minor > max.minor {
                    return Err(invalid(format!(
                        "{where_}: min and max must share a currency and min ≤ max"
                    )));
                }
                let rate =
                    FxRate::parse(min.currency, receive_cur, p.rate.as_deref().unwrap_or(""))
                        .map_err(|e| invalid(format!("{where_}: rate: {e}")))?;
                (
                    min.currency,
                    None,
                    None,
                    Some(min.minor),
                    Some(max.minor),
                    Some(rate.rate_e8),
                )
            }
            other => {
                return Err(invalid(format!(
                    "{where_}: kind `{other}` must be fixed or range"
                )));
            }
        };
        sqlx::query(
            "INSERT INTO products (id, carrier_id, kind, label, send_currency, price_minor, receive_minor,
                receive_currency, min_minor, max_minor, fx_rate_e8, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (id) DO UPDATE SET carrier_id = $2, kind = $3, label = $4, send_currency = $5,
                price_minor = $6, receive_minor = $7, receive_currency = $8, min_minor = $9, max_minor = $10,
                fx_rate_e8 = $11, status = $12",
        )
        .bind(&p.id)
        .bind(carrier)
        .bind(&p.kind)
        .bind(&p.label)
        .bind(send_cur.code())
        .bind(price)
        .bind(receive)
        .bind(receive_cur.code())
        .bind(min)
        .bind(max)
        .bind(rate)
        .bind(&p.status)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    pub async fn carriers(&self) -> Result<Vec<Carrier>, TopupError> {
        let rows = sqlx::query("SELECT id, name, country, currency, adapter, settings, status FROM carriers ORDER BY id")
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(carrier_from_row).collect()
    }

    pub async fn carrier(&self, id: &str) -> Result<Option<Carrier>, TopupError> {
        let row = sqlx::query("SELECT id, name, country, currency, adapter, settings, status FROM carriers WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?;
        row.as_ref().map(carrier_from_row).transpose()
    }

    /// Active products of a carrier, as a caller hears them: denominations from the smallest
    /// (what the recipient gets, then the price), then open amounts.
    pub async fn products(&self, carrier_id: &str) -> Result<Vec<Product>, TopupError> {
        let rows = sqlx::query(
            "SELECT id, carrier_id, kind, label, send_currency, price_minor, receive_minor, receive_currency,
                    min_minor, max_minor, fx_rate_e8 FROM products WHERE carrier_id = $1 AND status = 'active'
             ORDER BY kind, receive_currency, receive_minor, price_minor, min_minor, id",
        )
        .bind(carrier_id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(product_from_row).collect()
    }

    pub async fn product(&self, id: &str) -> Result<Option<Product>, TopupError> {
        let row = sqlx::query(
            "SELECT id, carrier_id, kind, label, send_currency, price_minor, receive_minor, receive_currency,
                    min_minor, max_minor, fx_rate_e8 FROM products WHERE id = $1 AND status = 'active'",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(product_from_row).transpose()
    }

    /// The calling rate for a destination in a currency: (price per minute, increment secs).
    pub async fn rate_for(
        &self,
        e164: &str,
        currency: Currency,
    ) -> Result<Option<(Money, i64)>, TopupError> {
        let digits = e164.trim_start_matches('+');
        let rows =
            sqlx::query("SELECT prefix, per_minute, increment_secs FROM rates WHERE currency = $1")
                .bind(currency.code())
                .fetch_all(self.db.pool())
                .await?;
        let mut best: Option<(usize, Money, i64)> = None;
        for r in rows {
            let prefix: String = r.try_get("prefix")?;
            if digits.starts_with(&prefix) && best.as_ref().is_none_or(|b| prefix.len() > b.0) {
                best = Some((
                    prefix.len(),
                    Money::new(r.try_get("per_minute")?, currency),
                    r.try_get("increment_secs")?,
                ));
            }
        }
        Ok(best.map(|b| (b.1, b.2)))
    }
}

impl Core {
    /// "You have 23 minutes": whole minutes a wallet's balance buys to a destination, or
    /// `None` when there is no rate for it.
    pub async fn minutes_left(
        &self,
        wallet: &str,
        destination: &str,
    ) -> Result<Option<i64>, TopupError> {
        let balance = self.wallet_balance(wallet).await?;
        let e164 = super::numbers::parse_number(destination)?.e164;
        Ok(self
            .rate_for(&e164, balance.currency)
            .await?
            .map(|(per_minute, _)| minutes_left(balance, per_minute)))
    }
}

/// Whole minutes a balance pays for at `per_minute` (rounded down; never negative).
pub fn minutes_left(balance: Money, per_minute: Money) -> i64 {
    if per_minute.minor <= 0 || balance.minor <= 0 || balance.currency != per_minute.currency {
        return 0;
    }
    balance.minor / per_minute.minor
}

async fn upsert_prefix(
    conn: &mut sqlx::AnyConnection,
    prefix: &str,
    carrier: &str,
) -> Result<(), ImportError> {
    ensure_carrier(conn, carrier).await?;
    sqlx::query("INSERT INTO carrier_prefixes (prefix, carrier_id) VALUES ($1, $2) ON CONFLICT (prefix) DO UPDATE SET carrier_id = $2")
        .bind(prefix)
        .bind(carrier)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn upsert_ported(
    conn: &mut sqlx::AnyConnection,
    number: &str,
    carrier: &str,
    now: i64,
) -> Result<(), ImportError> {
    let e164 = super::numbers::parse_number(number)
        .map_err(|e| invalid(format!("ported number `{number}`: {e}")))?
        .e164;
    ensure_carrier(conn, carrier).await?;
    sqlx::query(
        "INSERT INTO ported_numbers (number, carrier_id, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (number) DO UPDATE SET carrier_id = $2, updated_at = $3",
    )
    .bind(e164)
    .bind(carrier)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn ensure_carrier(conn: &mut sqlx::AnyConnection, carrier: &str) -> Result<(), ImportError> {
    let exists = sqlx::query("SELECT id FROM carriers WHERE id = $1")
        .bind(carrier)
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
    if exists {
        Ok(())
    } else {
        Err(invalid(format!("unknown carrier `{carrier}`")))
    }
}

fn carrier_from_row(r: &sqlx::any::AnyRow) -> Result<Carrier, TopupError> {
    let settings: String = r.try_get("settings")?;
    let adapter: String = r.try_get("adapter")?;
    Ok(Carrier {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        country: r.try_get("country")?,
        currency: r.try_get("currency")?,
        http: if adapter == "http" {
            serde_json::from_str(&settings).ok()
        } else {
            None
        },
        adapter,
        status: r.try_get("status")?,
    })
}

fn product_from_row(r: &sqlx::any::AnyRow) -> Result<Product, TopupError> {
    let id: String = r.try_get("id")?;
    let corrupt = |what: &str| TopupError::Corrupt(format!("product {id}: {what}"));
    let send: String = r.try_get("send_currency")?;
    let recv: String = r.try_get("receive_currency")?;
    let send_cur = Currency::new(&send).map_err(|_| corrupt("send currency"))?;
    let recv_cur = Currency::new(&recv).map_err(|_| corrupt("receive currency"))?;
    let kind: String = r.try_get("kind")?;
    let (pricing, shown) = match kind.as_str() {
        "fixed" => {
            let price = Money::new(
                r.try_get::<Option<i64>, _>("price_minor")?
                    .ok_or_else(|| corrupt("price"))?,
                send_cur,
            );
            let receive = Money::new(
                r.try_get::<Option<i64>, _>("receive_minor")?
                    .ok_or_else(|| corrupt("receive"))?,
                recv_cur,
            );
            (
                Pricing::Fixed { price, receive },
                ProductKind::Fixed {
                    price: price.to_string(),
                    receive: receive.to_string(),
                },
            )
        }
        "range" => {
            let min = Money::new(
                r.try_get::<Option<i64>, _>("min_minor")?
                    .ok_or_else(|| corrupt("min"))?,
                send_cur,
            );
            let max = Money::new(
                r.try_get::<Option<i64>, _>("max_minor")?
                    .ok_or_else(|| corrupt("max"))?,
                send_cur,
            );
            let rate = FxRate {
                from: send_cur,
                to: recv_cur,
                rate_e8: r
                    .try_get::<Option<i64>, _>("fx_rate_e8")?
                    .ok_or_else(|| corrupt("rate"))?,
            };
            (
                Pricing::Range { min, max, rate },
                ProductKind::Range {
                    min: min.to_string(),
                    max: max.to_string(),
                    rate: rate.rate_string(),
                },
            )
        }
        _ => return Err(corrupt("kind")),
    };
    Ok(Product {
        carrier_id: r.try_get("carrier_id")?,
        label: r.try_get("label")?,
        send_currency: send,
        receive_currency: recv,
        kind: shown,
        pricing,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topup::numbers::Source;
    use crate::topup::testing::cores;

    pub const SAMPLE: &str = r#"
[[carrier]]
id = "telcel-mx"
name = "Telcel"
country = "MX"
currency = "MXN"
adapter = "sandbox"
mccmnc = ["334020"]
prefixes = ["5255", "52551"]

[[carrier.product]]
id = "telcel-100"
kind = "fixed"
label = "100 pesos"
price = "5.99USD"
receive = "100MXN"

[[carrier.product]]
id = "telcel-open"
kind = "range"
label = "Any amount"
min = "1.00USD"
max = "50.00USD"
rate = "17.05"

[[carrier]]
id = "movistar-mx"
name = "Movistar"
country = "MX"
currency = "MXN"
adapter = "sandbox"
prefixes = ["525512"]

[[ported]]
number = "+525512345678"
carrier = "telcel-mx"

[[rate]]
prefix = "52"
currency = "USD"
per_minute = "0.05"

[[rate]]
prefix = "5255"
currency = "USD"
per_minute = "0.03"
"#;

    #[tokio::test]
    async fn import_then_lookup_by_ported_table_and_longest_prefix() {
        for (core, _g) in cores().await {
            let r = core.import_carriers(SAMPLE, 1).await.unwrap();
            assert_eq!(
                r,
                ImportReport {
                    carriers: 2,
                    prefixes: 3,
                    products: 2,
                    ported: 1,
                    rates: 2
                }
            );
            let n = core.lookup_number("+52 55 1234 5678", None).await.unwrap();
            assert_eq!(
                (n.carrier_id.as_deref(), n.source, n.ported),
                (Some("telcel-mx"), Source::Ported, true)
            );
            let n = core.lookup_number("525512000000", None).await.unwrap();
            assert_eq!(
                (n.carrier_id.as_deref(), n.source),
                (Some("movistar-mx"), Source::Prefix)
            );
            let n = core.lookup_number("525519000000", None).await.unwrap();
            assert_eq!(n.carrier_id.as_deref(), Some("telcel-mx"));
            let n = core.lookup_number("+528112345678", None).await.unwrap();
            assert_eq!((n.carrier_id, n.source), (None, Source::Plan));
            // Importing again replaces, it does not duplicate.
            core.import_carriers(SAMPLE, 2).await.unwrap();
            assert_eq!(core.products("telcel-mx").await.unwrap().len(), 2);
            let (rate, inc) = core
                .rate_for("+525512345678", Currency::new("USD").unwrap())
                .await
                .unwrap()
                .unwrap();
            assert_eq!((rate.minor, inc), (3, 60));
        }
    }

    #[tokio::test]
    async fn products_quote_fixed_and_range_amounts() {
        for (core, _g) in cores().await {
            core.import_carriers(SAMPLE, 1).await.unwrap();
            let fixed = core.product("telcel-100").await.unwrap().unwrap();
            assert_eq!(
                fixed.quote(None).unwrap(),
                (
                    Money::parse("5.99USD").unwrap(),
                    Money::parse("100MXN").unwrap()
                )
            );
            let range = core.product("telcel-open").await.unwrap().unwrap();
            let (send, recv) = range
                .quote(Some(Money::parse("10.01USD").unwrap()))
                .unwrap();
            assert_eq!(
                (send.minor, recv.to_string()),
                (1001, "170.67 MXN".to_string())
            );
            assert!(range.quote(Some(Money::parse("0.50USD").unwrap())).is_err());
            assert!(range.quote(Some(Money::parse("10MXN").unwrap())).is_err());
            assert!(range.quote(None).is_err());
            // By amount: an exact denomination first, else the open range.
            let all = core.products("telcel-mx").await.unwrap();
            let m = |s: &str| Money::parse(s).unwrap();
            let (p, a) = product_for_amount(&all, m("5.99USD")).unwrap();
            assert_eq!((p.id.as_str(), a), ("telcel-100", None));
            let (p, a) = product_for_amount(&all, m("10USD")).unwrap();
            assert_eq!((p.id.as_str(), a), ("telcel-open", Some(m("10USD"))));
            assert_eq!(
                product_for_amount(&all, m("1000USD")).unwrap_err().code(),
                "amount_out_of_range"
            );
            assert_eq!(
                product_for_amount(&all, m("10EUR")).unwrap_err().code(),
                "no_product"
            );
        }
    }

    #[tokio::test]
    async fn bad_files_are_refused_whole_with_a_reason() {
        for (core, _g) in cores().await {
            let bad = SAMPLE.replace("receive = \"100MXN\"", "receive = \"100USD\"");
            let e = core.import_carriers(&bad, 1).await.unwrap_err().to_string();
            assert!(
                e.contains("telcel-100") && e.contains("carrier's currency"),
                "{e}"
            );
            assert!(
                core.carriers().await.unwrap().is_empty(),
                "nothing half-imported"
            );
            let e = core
                .import_carriers("[[carrier]]\nid = 1\n", 1)
                .await
                .unwrap_err()
                .to_string();
            assert!(!e.is_empty());
            let e = core
                .import_carriers(
                    &SAMPLE.replace(
                        "adapter = \"sandbox\"\nmccmnc",
                        "adapter = \"smoke\"\nmccmnc",
                    ),
                    1,
                )
                .await
                .unwrap_err();
            assert!(e.to_string().contains("smoke"), "{e}");
            core.import_carriers(SAMPLE, 1).await.unwrap();
            let csv = "prefix,carrier\n5281,movistar-mx\n5282,nobody\n";
            let e = core.import_carriers(csv, 1).await.unwrap_err().to_string();
            assert!(e.contains("line 3") && e.contains("nobody"), "{e}");
            let r = core
                .import_carriers("number,carrier\n+528112345678,movistar-mx\n", 1)
                .await
                .unwrap();
            assert_eq!(r.ported, 1);
            let n = core.lookup_number("+528112345678", None).await.unwrap();
            assert_eq!(n.carrier_id.as_deref(), Some("movistar-mx"));
        }
    }

    #[test]
    fn minutes_left_rounds_down() {
        let usd = |s| Money::parse(s).unwrap();
        assert_eq!(minutes_left(usd("1.19USD"), usd("0.05USD")), 23);
        assert_eq!(minutes_left(usd("0.04USD"), usd("0.05USD")), 0);
        assert_eq!(minutes_left(usd("-1USD"), usd("0.05USD")), 0);
    }
}
