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
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::server::state::Shared;
use crate::shutdown::Shutdown;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(shared.clone())
        .merge(
            console::router(shared.clone())
                .merge(staff::router(shared.clone()))
                .layer(axum::middleware::from_fn(console::csrf_guard))
                .layer(axum::middleware::from_fn(private_page_headers)),
        )
        .merge(carriers::router(shared.clone()))
        .merge(api::router(
            shared.core.clone(),
            shared.adapters.clone(),
            shared.hlr.clone(),
        ))
        .layer(axum::middleware::from_fn(common_headers))
}

/// Headers on every answer: no content-type sniffing, never framed, no referrer.
async fn common_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    resp
}

/// The console and staff pages and their data are private: never cached, and the pages may
/// run only their own script (by its hash) and talk only to us.
async fn private_page_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(page_csp()) {
        h.insert("content-security-policy", v);
    }
    resp
}

/// The Content-Security-Policy of the private pages: their inline scripts allowed by hash,
/// nothing else.
fn page_csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        let mut hashes = String::new();
        for page in [console::PAGE, staff::PAGE] {
            for script in inline_scripts(page) {
                use base64::Engine;
                use sha2::{Digest, Sha256};
                let h = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script));
                hashes.push_str(&format!(" 'sha256-{h}'"));
            }
        }
        format!(
            "default-src 'self'; script-src{hashes}; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
             form-action 'self'; base-uri 'none'; object-src 'none'"
        )
    })
}

/// The contents of a page's `<script>` elements.
fn inline_scripts(page: &str) -> Vec<&str> {
    let mut out = vec![];
    let mut rest = page;
    while let Some(start) = rest.find("<script") {
        let Some(open_end) = rest[start..].find('>') else {
            break;
        };
        let body = &rest[start + open_end + 1..];
        let Some(end) = body.find("</script>") else {
            break;
        };
        out.push(&body[..end]);
        rest = &body[end..];
    }
    out
}

/// Serves HTTP on `listener` until the process ends. By hand rather than `axum::serve`, for
/// what a service facing the network needs and axum's does not set: a client must send a
/// request's headers within `http.header_timeout` (which also closes idle connections), at
/// most `http.max_connections` are open at once (more are closed as they come, so a flood of
/// unfinished connections cannot take the descriptors calls need), and handlers see the
/// client's address.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let app = router(shared.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(shared.cfg.http.max_connections));
    let header_timeout = shared.cfg.http.header_timeout;
    let mut full_logged = false;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // Connections in progress finish on their own; no new one is taken.
            _ = shared.stopped() => return,
        };
        let (stream, remote) = match accepted {
            Ok(c) => c,
            Err(e) => {
                crate::server::fds::log_accept_error("HTTP", &e);
                // Out of descriptors (or another passing error): let some close first.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("topup_ivr_http_connections_refused_total").increment(1);
            if !full_logged {
                tracing::warn!(
                    max = shared.cfg.http.max_connections,
                    "HTTP connections at http.max_connections: new ones are closed"
                );
                full_logged = true;
            }
            drop(stream);
            continue;
        };
        full_logged = false;
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(remote));
                    app.clone().oneshot(req)
                },
            );
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = http.serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "HTTP connection ended");
            }
            drop(slot);
        });
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

/// `/`: where things are, for whoever just started the service: the numbers to dial, and
/// the console, the staff pages, the API's description, health and metrics.
async fn index(State(s): State<Arc<Shared>>) -> axum::response::Html<String> {
    let esc = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let dial: String = s
        .dial_uris()
        .iter()
        .map(|(service, uri)| format!("<li><code>{}</code> ({})</li>", esc(uri), esc(service)))
        .collect();
    axum::response::Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>topup-ivr</title></head>\
         <body><h1>topup-ivr</h1><p>Dial:</p><ul>{dial}</ul><ul>\
         <li><a href=\"/console\">Agent console</a> (agents: <code>topup-ivr agents create</code>)</li>\
         <li><a href=\"/staff\">Staff pages</a> (supervisors)</li>\
         <li><a href=\"/api/v1/openapi.json\">Top-up API</a> (OpenAPI; keys: <code>topup-ivr apikeys create</code>)</li>\
         <li><a href=\"/health\">Health</a> · <a href=\"/metrics\">Metrics</a></li>\
         </ul></body></html>"
    ))
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
            "max_calls": s.cfg.sip.max_calls,
            "calls_total": s.calls_total.load(Ordering::Relaxed),
            "services": s.dialplans().plans().iter().map(|p| p.service.clone()).collect::<Vec<_>>(),
            "smsc": s.sms_links.read().map(|l| l.clone()).unwrap_or_default(),
            "asterisk": up(s.cfg.asterisk.is_some(), &s.asterisk_up),
            "freeswitch": up(s.cfg.freeswitch.is_some(), &s.freeswitch_up),
        })),
    )
}
