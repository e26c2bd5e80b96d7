//! Staff pages (`/staff`, behind the same login as the console, for agents with the staff
//! role): live calls, recent CDRs,
//! each dialplan drawn with how many callers reached each node and ended there, the prompt
//! inventory with missing prompts flagged, the SMS outbox, pending top-ups, carriers.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::console::staff;
use crate::server::state::Shared;

pub(crate) const PAGE: &str = include_str!("staff.html");

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/staff", get(page))
        .route("/staff/api/overview", get(overview))
        .route("/staff/api/calls", get(calls))
        .route("/staff/api/dialplans/{service}", get(graph))
        .with_state(shared)
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "staff request failed");
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}

async fn overview(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = staff(&s, &headers).await {
        return r;
    }
    // Missing means: a plan plays it in a language the plan offers, and it is not there.
    let prompts = s.prompts();
    let plans = s.dialplans();
    let langs: Vec<String> = prompts.languages().map(str::to_string).collect();
    let inventory: Vec<_> = langs
        .iter()
        .map(|l| {
            let mut missing = BTreeSet::new();
            for plan in plans.plans().iter().filter(|p| p.languages.contains(l)) {
                for name in plan.nodes.values().flat_map(|n| n.prompts()) {
                    if prompts.get(l, name).is_none() {
                        missing.insert(format!("{name} ({})", plan.service));
                    }
                }
            }
            json!({
                "language": l,
                "prompts": prompts.names(l).len(),
                "missing": missing,
            })
        })
        .collect();
    let core = &s.core;
    let data = async {
        let q = core.queue_lengths().await?;
        let sms = core.list_sms(None, None, 20).await?;
        let pending = core
            .list_topups(Some(crate::topup::topups::TopupState::Pending), 50)
            .await?;
        let conflicts = core.carrier_conflicts(50).await?;
        let carriers = core.carriers().await?;
        let nodes = core.live_nodes(crate::clock::now_ms() - 10_000).await?;
        Ok::<_, crate::topup::TopupError>((q, sms, pending, conflicts, carriers, nodes))
    };
    let (q, sms, pending, conflicts, carriers, nodes) = match data.await {
        Ok(d) => d,
        Err(e) => return unavailable(e),
    };
    Json(json!({
        "calls": {
            "active": s.active_calls(),
            "by_service": s.active_by_service.lock().map(|m| m.clone()).unwrap_or_default(),
            "max": s.cfg.sip.max_calls,
            "total": s.calls_total.load(Ordering::Relaxed),
        },
        "nodes": nodes,
        "services": s.dialplans().plans().iter().map(|p| json!({"service": p.service, "numbers": p.numbers})).collect::<Vec<_>>(),
        "prompts": inventory,
        "sms": { "queued": q.sms, "recent": sms },
        "topups": { "pending": pending, "carrier_conflicts": conflicts },
        "webhooks_queued": q.webhooks,
        "carriers": carriers,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct CallsQuery {
    service: Option<String>,
    reason: Option<String>,
    limit: Option<i64>,
}

async fn calls(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<CallsQuery>,
) -> Response {
    if let Err(r) = staff(&s, &headers).await {
        return r;
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match s.store.recent_cdrs(limit * 4).await {
        Ok(cdrs) => {
            let rows: Vec<_> = cdrs
                .into_iter()
                .filter(|c| {
                    q.service
                        .as_ref()
                        .is_none_or(|f| c.service.as_ref() == Some(f))
                })
                .filter(|c| q.reason.as_ref().is_none_or(|f| &c.end_reason == f))
                .take(limit as usize)
                .collect();
            Json(rows).into_response()
        }
        Err(e) => unavailable(e),
    }
}

/// A plan as SVG with its per-node counters.
async fn graph(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(service): Path<String>,
) -> Response {
    if let Err(r) = staff(&s, &headers).await {
        return r;
    }
    let plans = s.dialplans();
    let Some(plan) = plans.plans().iter().find(|p| p.service == service) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match s.core.node_stats(&service).await {
        Ok(stats) => (
            [(header::CONTENT_TYPE, "image/svg+xml")],
            crate::dialplan::graph::to_svg_with(plan, &stats),
        )
            .into_response(),
        Err(e) => unavailable(e),
    }
}
