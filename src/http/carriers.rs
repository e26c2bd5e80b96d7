//! `POST /carriers/{carrier_id}/notices`: status notices from carriers (see
//! [`crate::topup::notices`]). Authenticated by the carrier's signature, not by a session or
//! an API key; answers 200 with what the notice did, 401 for a bad signature, 404 for a carrier
//! that sends no notices or a top-up it does not have, 400 for a malformed body (naming what is
//! wrong), 503 when the database cannot be reached (the carrier sends it again later).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use crate::clock::now_ms;
use crate::server::state::Shared;
use crate::topup::notices::{self, Applied};

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/carriers/{carrier}/notices", post(notice))
        .layer(DefaultBodyLimit::max(notices::MAX_BODY))
        .with_state(shared)
}

type Answer = (StatusCode, Json<serde_json::Value>);

fn answer(status: StatusCode, what: &str) -> Answer {
    (status, Json(json!({ "result": what })))
}

async fn notice(
    State(s): State<Arc<Shared>>,
    Path(carrier_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let secret = match s.core.carrier(&carrier_id).await {
        Ok(Some(c)) => c
            .http
            .and_then(|h| h.webhook_secret_env)
            .and_then(|v| std::env::var(v).ok())
            .filter(|v| !v.is_empty()),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "carrier notice: database unavailable");
            return answer(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        }
    };
    let Some(secret) = secret else {
        return answer(StatusCode::NOT_FOUND, "this carrier sends no notices");
    };
    let signature = headers
        .get("x-carrier-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Err(why) = notices::verify(&secret, signature, &body, now_ms() / 1000) {
        tracing::warn!(carrier = %carrier_id, why, "carrier notice refused");
        return answer(StatusCode::UNAUTHORIZED, why);
    }
    let n = match notices::parse(&body) {
        Ok(n) => n,
        Err(why) => return answer(StatusCode::BAD_REQUEST, &why.to_string()),
    };
    match s.core.carrier_notice(&carrier_id, &n, now_ms()).await {
        Ok(Applied::UnknownTopup) => answer(StatusCode::NOT_FOUND, Applied::UnknownTopup.as_str()),
        Ok(applied) => {
            tracing::info!(carrier = %carrier_id, topup = %n.external_id, status = ?n.status,
                result = applied.as_str(), "carrier notice");
            answer(StatusCode::OK, applied.as_str())
        }
        Err(e) => {
            tracing::warn!(error = %e, "carrier notice not applied");
            answer(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    }
}
