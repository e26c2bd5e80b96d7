//! HTTP: `/health`, `/metrics`, the top-up API (`/api/v1`, see [`api`]), carriers' status
//! notices ([`carriers`]), the agent console and the staff pages.

pub mod api;
pub mod carriers;
pub mod console;
pub mod staff;
pub mod webhooks;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::server::{Shared, Shutdown};

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(shared.clone())
        .merge(console::router(shared.clone()))
        .merge(staff::router(shared.clone()))
        .merge(carriers::router(shared.clone()))
        .merge(api::router(shared))
}

pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    if let Err(e) = axum::serve(listener, router(shared)).await {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

/// Prometheus text format: counters and histograms recorded as things happen, gauges read
/// now.
async fn metrics(State(s): State<Arc<Shared>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(handle) = &s.metrics else {
        return StatusCode::NOT_FOUND.into_response();
    };
    metrics::gauge!("topup_ivr_calls_active").set(s.active_calls() as f64);
    if let Ok(q) = s.core.queue_lengths().await {
        metrics::gauge!("topup_ivr_sms_queued").set(q.sms as f64);
        metrics::gauge!("topup_ivr_webhooks_queued").set(q.webhooks as f64);
        metrics::gauge!("topup_ivr_topups_pending").set(q.topups_pending as f64);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        handle.render(),
    )
        .into_response()
}

/// 200 while taking calls, 503 while draining (load balancers stop sending calls).
async fn health(State(s): State<Arc<Shared>>) -> (StatusCode, Json<serde_json::Value>) {
    let state = *s.shutdown.borrow();
    let (code, status) = match state {
        Shutdown::Running => (StatusCode::OK, "ok"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
    };
    let up = |configured: bool, flag: &std::sync::atomic::AtomicBool| {
        configured.then(|| json!({ "connected": flag.load(Ordering::Relaxed) }))
    };
    (
        code,
        Json(json!({
            "status": status,
            "active_calls": s.active_calls(),
            "max_calls": s.cfg.max_calls,
            "calls_total": s.calls_total.load(Ordering::Relaxed),
            "services": s.dialplans().plans().iter().map(|p| p.service.clone()).collect::<Vec<_>>(),
            "smsc": s.sms_links.read().map(|l| l.clone()).unwrap_or_default(),
            "asterisk": up(s.cfg.asterisk.is_some(), &s.asterisk_up),
            "freeswitch": up(s.cfg.freeswitch.is_some(), &s.freeswitch_up),
        })),
    )
}
