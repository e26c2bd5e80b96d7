//! The top-up API for retail terminals and apps, under `/api/v1` (described by
//! `openapi.json`, served at `/api/v1/openapi.json`). Keys (`Authorization: Bearer tk_...`)
//! are scoped and rate limited; top-ups are idempotent by the client's `Idempotency-Key`;
//! errors are `{"error": {"code", "message"}}` with a stable code; bodies are never logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::clock::now_ms;
use crate::topup::Core;
use crate::topup::TopupError;
use crate::topup::adapters::Adapters;
use crate::topup::apikeys::ApiKey;
use crate::topup::money::Money;
use crate::topup::numbers::Hlr;
use crate::topup::secrets::Pin;
use crate::topup::topups::{Funding, TopupRequest};

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 64;

/// What the API uses of the service, and nothing else.
pub struct ApiState {
    core: Core,
    adapters: Adapters,
    hlr: Option<Arc<Hlr>>,
    limiter: Mutex<RateLimiter>,
}

/// An API error: HTTP status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": { "code": self.code, "message": self.message } })),
        )
            .into_response()
    }
}

impl From<TopupError> for ApiError {
    fn from(e: TopupError) -> Self {
        let code = e.code();
        let status = match code {
            "conflict" => StatusCode::CONFLICT,
            "unavailable" | "carrier_failed" => StatusCode::SERVICE_UNAVAILABLE,
            "locked" => StatusCode::LOCKED,
            "rate_limited" => StatusCode::TOO_MANY_REQUESTS,
            "insufficient_funds" | "no_funds" => StatusCode::PAYMENT_REQUIRED,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let message = if status == StatusCode::SERVICE_UNAVAILABLE {
            // Internal details (database errors) stay in the log.
            tracing::warn!(error = %e, "API request failed");
            "the service cannot complete this request now; nothing was charged".to_string()
        } else {
            e.to_string()
        };
        ApiError::new(status, code, message)
    }
}

/// Requests per key per minute, counted in fixed one-minute windows. Sans-IO: the caller
/// passes `now`.
#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: HashMap<String, (Instant, i64)>,
}

impl RateLimiter {
    const WINDOW: Duration = Duration::from_secs(60);

    /// `Ok` if the request may go on, else how long until it may.
    pub fn check(&mut self, now: Instant, key: &str, per_minute: i64) -> Result<(), Duration> {
        let (start, count) = self.windows.entry(key.to_string()).or_insert((now, 0));
        if now.duration_since(*start) >= Self::WINDOW {
            *start = now;
            *count = 0;
        }
        if *count >= per_minute {
            return Err(Self::WINDOW.saturating_sub(now.duration_since(*start)));
        }
        *count += 1;
        Ok(())
    }
}

pub fn router(core: Core, adapters: Adapters, hlr: Option<Arc<Hlr>>) -> Router {
    let state = Arc::new(ApiState {
        core,
        adapters,
        hlr,
        limiter: Mutex::new(RateLimiter::default()),
    });
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/numbers/{number}", get(number))
        .route("/api/v1/products", get(products))
        .route("/api/v1/topups", post(create_topup))
        .route("/api/v1/topups/{id}", get(topup))
        .route("/api/v1/cards/redeem", post(redeem_card))
        .route("/api/v1/balance", get(balance))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// One log line per request: method, route (not the path: it may hold a phone number),
/// status, time. Never bodies or keys.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "(unmatched)".into());
    let started = Instant::now();
    let resp = next.run(req).await;
    tracing::info!(
        %method,
        %route,
        status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "API request"
    );
    resp
}

async fn openapi() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

/// The key of a request, checked for `scope` and its rate.
async fn authorize(st: &ApiState, headers: &HeaderMap, scope: &str) -> Result<ApiKey, ApiError> {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send the API key as `Authorization: Bearer tk_...`",
            )
        })?;
    let key = st
        .core
        .authenticate_api_key(presented)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unknown or revoked API key",
            )
        })?;
    if !key.allows(scope) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this key lacks the `{scope}` scope"),
        ));
    }
    let verdict = st.limiter.lock().unwrap_or_else(|p| p.into_inner()).check(
        Instant::now(),
        &key.id,
        key.per_minute,
    );
    if let Err(wait) = verdict {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "more than {} requests this minute; retry in {} s",
                key.per_minute,
                wait.as_secs() + 1
            ),
        ));
    }
    Ok(key)
}

/// Parses a JSON body strictly: unknown fields, wrong types and missing fields are 400 with
/// the field named.
/// The largest request body: a top-up or a redemption is a few hundred bytes.
const MAX_BODY: usize = 16 * 1024;
/// The longest `message` of a top-up (what the recipient's SMS has room for).
const MAX_MESSAGE: usize = 100;

/// Reads a request body once its key has been checked (so a stranger's large body is refused
/// as unauthorized, not read), up to [`MAX_BODY`]: more is a JSON 413.
async fn read_body(raw: axum::body::Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(raw, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is over {} KiB", MAX_BODY / 1024),
        )
    })
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("body is not valid JSON: {inner}"))
        } else if path == "." || path.is_empty() || path == "?" {
            ApiError::bad_request(format!("body: {inner}"))
        } else {
            ApiError::bad_request(format!("field `{path}`: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    Ok(value)
}

/// Reads `bytes` as each JSON body the API takes (top-up, card redemption) with the same strict
/// reader the handlers use: what a client would be told, per body. For the fuzz target.
pub fn check_bodies(bytes: &[u8]) -> [Result<(), String>; 2] {
    let msg = |e: ApiError| e.message;
    [
        body::<NewTopup>(bytes).map(|_| ()).map_err(msg),
        body::<Redeem>(bytes).map(|_| ()).map_err(msg),
    ]
}

async fn number(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(number): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&st, &headers, "lookup").await?;
    let s = &*st;
    match s.core.lookup_number(&number, s.hlr.as_deref()).await {
        Ok(n) => {
            let carrier = match &n.carrier_id {
                Some(id) => s
                    .core
                    .carrier(id)
                    .await?
                    .map(|c| json!({"id": c.id, "name": c.name})),
                None => None,
            };
            Ok(Json(json!({
                "number": n.e164,
                "valid": true,
                "country": n.country,
                "carrier": carrier,
                "ported": n.ported,
            })))
        }
        Err(TopupError::InvalidNumber(e)) => Ok(Json(json!({
            "number": number,
            "valid": false,
            "reason": e.to_string(),
        }))),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct ProductsQuery {
    number: Option<String>,
}

async fn products(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(q): Query<ProductsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&st, &headers, "lookup").await?;
    let number = q
        .number
        .ok_or_else(|| ApiError::bad_request("query parameter `number` is required"))?;
    let s = &*st;
    let n = s.core.lookup_number(&number, s.hlr.as_deref()).await?;
    let carrier = n.carrier_id.ok_or(TopupError::NoCarrier)?;
    let products = s.core.products(&carrier).await?;
    Ok(Json(
        json!({ "number": n.e164, "carrier_id": carrier, "products": products }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTopup {
    recipient: String,
    product_id: String,
    /// For range products, e.g. "10.00 USD".
    #[serde(default)]
    amount: Option<String>,
    /// The sender's words for the recipient's SMS.
    #[serde(default)]
    message: Option<String>,
}

async fn create_topup(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    raw: axum::body::Body,
) -> Result<Json<crate::topup::topups::Receipt>, ApiError> {
    let key = authorize(&st, &headers, "topup").await?;
    let bytes = read_body(raw).await?;
    let idem = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "header `Idempotency-Key` is required: 1 to {MAX_IDEMPOTENCY_KEY} printable characters, unique per top-up"
            ))
        })?;
    let req: NewTopup = body(&bytes)?;
    if req
        .message
        .as_ref()
        .is_some_and(|m| m.trim().chars().count() > MAX_MESSAGE)
    {
        // Cut silently, the recipient would read half a sentence.
        return Err(ApiError::bad_request(format!(
            "field `message`: at most {MAX_MESSAGE} characters"
        )));
    }
    let amount = match &req.amount {
        None => None,
        Some(a) => Some(Money::parse(a).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("field `amount`: {e}"),
            )
        })?),
    };
    let s = &*st;
    let receipt = s
        .core
        .topup(
            &s.adapters,
            s.hlr.as_deref(),
            &TopupRequest {
                // Keys are per client: the same Idempotency-Key from two clients is two
                // top-ups.
                id: format!("api:{}:{idem}", key.id),
                channel: "api".into(),
                funding: Funding::Wallet(key.wallet.clone()),
                payer: key.wallet.clone(),
                recipient: req.recipient,
                product_id: req.product_id,
                amount,
                message: req.message,
            },
            now_ms(),
        )
        .await?;
    Ok(Json(receipt))
}

async fn topup(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<crate::topup::topups::Receipt>, ApiError> {
    let key = authorize(&st, &headers, "topup").await?;
    // A client sees its own top-ups only.
    let own = id.starts_with(&format!("api:{}:", key.id));
    let receipt = if own {
        st.core.topup_receipt(&id).await?
    } else {
        None
    };
    receipt
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such top-up"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Redeem {
    pin: String,
    /// The wallet credited with the card's value (E.164).
    wallet: String,
    /// The card's serial, when the terminal has it: wrong PINs then count against that card.
    #[serde(default)]
    serial: Option<String>,
}

async fn redeem_card(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    raw: axum::body::Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = authorize(&st, &headers, "redeem").await?;
    let bytes = read_body(raw).await?;
    let req: Redeem = body(&bytes)?;
    let wallet = crate::topup::numbers::parse_number(&req.wallet)
        .map_err(|e| ApiError::bad_request(format!("field `wallet`: {e}")))?
        .e164;
    // Wrong PINs count against this key, not against the wallet it names.
    let r = st
        .core
        .redeem_card_for(
            &Pin::new(&req.pin),
            req.serial.as_deref(),
            &wallet,
            &format!("apikey:{}", key.id),
            now_ms(),
        )
        .await?;
    Ok(Json(json!({
        "serial": r.serial,
        "value": r.value.to_string(),
        "wallet": wallet,
        "wallet_balance": r.wallet_balance.to_string(),
    })))
}

async fn balance(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = authorize(&st, &headers, "wallet").await?;
    let b = st.core.wallet_balance(&key.wallet).await?;
    Ok(Json(
        json!({ "wallet": key.wallet, "balance": b.to_string() }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_allows_per_minute_then_refuses_until_the_window_turns() {
        let t0 = Instant::now();
        let mut l = RateLimiter::default();
        for _ in 0..3 {
            assert_eq!(l.check(t0, "k", 3), Ok(()));
        }
        let wait = l.check(t0 + Duration::from_secs(10), "k", 3).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        // Another key has its own window.
        assert_eq!(l.check(t0, "other", 3), Ok(()));
        assert_eq!(l.check(t0 + Duration::from_secs(60), "k", 3), Ok(()));
    }

    #[test]
    fn bodies_name_the_field_that_is_wrong() {
        let e = body::<NewTopup>(br#"{"recipient": 5, "product_id": "x"}"#).unwrap_err();
        assert!(e.message.contains("field `recipient`"), "{}", e.message);
        let e = body::<NewTopup>(br#"{"recipient": "+1", "product_id": "x", "colour": 1}"#)
            .unwrap_err();
        assert!(e.message.contains("colour"), "{}", e.message);
        let e = body::<NewTopup>(br#"{"recipient": "+1"}"#).unwrap_err();
        assert!(e.message.contains("product_id"), "{}", e.message);
        let e = body::<NewTopup>(b"{not json").unwrap_err();
        assert_eq!(e.code, "bad_request");
        let e =
            body::<NewTopup>(br#"{"recipient": "+1", "product_id": "x"} trailing"#).unwrap_err();
        assert_eq!(e.code, "bad_request");
    }
}
