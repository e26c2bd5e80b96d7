//! The agents' console: the escalation screen pop. `/console` is one page; it logs in
//! (`/console/api/login`, a session cookie), lists escalations live (server-sent events from
//! `/console/api/events`, polled from the database so every node sees every escalation), shows
//! one with the caller's account, top-ups and SMS, and acts on it; every action is recorded
//! with the agent who did it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::clock::now_ms;
use crate::server::state::Shared;

pub(crate) const PAGE: &str = include_str!("console.html");
const COOKIE: &str = "topup_agent";
/// How often the live list looks for changed escalations.
const POLL: Duration = Duration::from_millis(250);

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/console", get(page))
        .route("/console/api/login", post(login))
        .route("/console/api/me", get(me))
        .route("/console/api/logout", post(logout))
        .route("/console/api/escalations", get(list))
        .route("/console/api/escalations/{id}", get(detail))
        .route("/console/api/escalations/{id}/{action}", post(act))
        .route("/console/api/events", get(events))
        .layer(axum::Extension(Arc::new(std::sync::Mutex::new(
            crate::topup::agents::LoginGuard::default(),
        ))))
        .with_state(shared)
}

/// The token a page must send back in `X-CSRF-Token` with every request that changes
/// something: derived from the session (the cookie is HttpOnly, so a script learns it only
/// from our answers), which a page of another origin can neither read nor forge.
pub(crate) fn csrf_token(session: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(format!("csrf:{session}").as_bytes())[..16])
}

/// Refuses a cross-site request that would change something (cross-site request forgery):
/// a browser says where a request comes from (`Sec-Fetch-Site`, `Origin`); a page of another
/// origin (another port of the same host included) is refused, and a logged-in request must
/// carry the session's CSRF token. Clients that are not browsers send neither header and are
/// held to the token alone.
pub(crate) async fn csrf_guard(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::http::Method;
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let headers = req.headers();
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| s != "same-origin" && s != "none") {
        return err(
            StatusCode::FORBIDDEN,
            "forbidden",
            "cross-site request refused",
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let same = origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority == host);
        if !same {
            return err(
                StatusCode::FORBIDDEN,
                "forbidden",
                "cross-site request refused",
            );
        }
    }
    if req.uri().path() != "/console/api/login"
        && let Some(session) = session_token(headers)
    {
        let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
        if sent != Some(csrf_token(&session).as_str()) {
            return err(
                StatusCode::FORBIDDEN,
                "forbidden",
                "missing or wrong CSRF token: reload the page",
            );
        }
    }
    next.run(req).await
}

fn err(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "console request failed");
    err(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the service cannot answer now",
    )
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The logged-in agent, or the 401 to send.
pub(crate) async fn agent(s: &Shared, headers: &HeaderMap) -> Result<String, Response> {
    let Some(token) = session_token(headers) else {
        return Err(err(StatusCode::UNAUTHORIZED, "unauthorized", "log in"));
    };
    match s.core.agent_for_session(&token, now_ms()).await {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(err(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the session has ended: log in again",
        )),
        Err(e) => Err(unavailable(e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    username: String,
    password: String,
}

async fn login(
    State(s): State<Arc<Shared>>,
    axum::Extension(guard): axum::Extension<
        Arc<std::sync::Mutex<crate::topup::agents::LoginGuard>>,
    >,
    ConnectInfo(from): ConnectInfo<std::net::SocketAddr>,
    Json(l): Json<Login>,
) -> Response {
    let who = crate::redact::Untrusted(&l.username);
    let source = from.ip().to_string();
    let now = now_ms();
    let lock = |g: &std::sync::Mutex<crate::topup::agents::LoginGuard>| {
        g.lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(now, &l.username, &source)
    };
    if let Err(secs) = lock(&guard) {
        tracing::info!(agent = %who, %source, "agent login refused: too many failures");
        let mut resp = err(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            &format!("too many failed logins: try again in {secs} s"),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    match s.core.login_agent(&l.username, &l.password, now).await {
        Ok(Some(token)) => {
            guard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .succeeded(&l.username);
            tracing::info!(agent = %who, %source, "agent logged in");
            // Path=/: the staff pages use the same login.
            let secure = if s.cfg.http.secure_cookies {
                "; Secure"
            } else {
                ""
            };
            let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{secure}");
            let mut resp =
                Json(json!({ "agent": l.username, "csrf": csrf_token(&token) })).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Ok(None) => {
            guard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .failed(now, &l.username, &source);
            metrics::counter!("topup_ivr_agent_login_failures_total").increment(1);
            tracing::info!(agent = %who, %source, "agent login refused");
            err(
                StatusCode::UNAUTHORIZED,
                "wrong_password",
                "wrong username or password",
            )
        }
        Err(e) => unavailable(e),
    }
}

/// Who is logged in, and the session's CSRF token (a page opened with a session from before
/// asks for it).
async fn me(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let agent = match agent(&s, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let token = session_token(&headers).unwrap_or_default();
    let staff = s
        .core
        .agent_is_staff(&agent)
        .await
        .ok()
        .flatten()
        .unwrap_or(false);
    Json(json!({ "agent": agent, "staff": staff, "csrf": csrf_token(&token) })).into_response()
}

/// The logged-in agent if they are staff, or the 401/403 to send.
pub(crate) async fn staff(s: &Shared, headers: &HeaderMap) -> Result<String, Response> {
    let agent = agent(s, headers).await?;
    match s.core.agent_is_staff(&agent).await {
        Ok(Some(true)) => Ok(agent),
        Ok(_) => Err(err(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the staff pages are for staff: ask for the staff role",
        )),
        Err(e) => Err(unavailable(e)),
    }
}

async fn logout(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(t) = session_token(&headers) {
        let _ = s.core.logout_agent(&t).await;
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn list(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = agent(&s, &headers).await {
        return r;
    }
    match s.core.escalations(200).await {
        Ok(l) => Json(l).into_response(),
        Err(e) => unavailable(e),
    }
}

async fn detail(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = agent(&s, &headers).await {
        return r;
    }
    let core = &s.core;
    let found = async {
        let Some(e) = core.escalation(&id).await? else {
            return Ok::<_, crate::topup::TopupError>(None);
        };
        let wallet = core.wallet(&e.caller).await?;
        let prepaid = core.prepaid(&e.caller).await?;
        let mut topups = vec![];
        for t in &e.topup_ids {
            if let Some(r) = core.topup_receipt(t).await? {
                topups.push(r);
            }
        }
        let sms = core.list_sms(None, Some(&e.caller), 10).await?;
        let actions = core.escalation_actions(&id).await?;
        Ok(Some(json!({
            "escalation": e,
            "wallet": wallet,
            "prepaid": prepaid,
            "topups": topups,
            "sms": sms,
            "actions": actions,
        })))
    };
    match found.await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => err(StatusCode::NOT_FOUND, "not_found", "no such escalation"),
        Err(e) => unavailable(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    #[serde(default)]
    text: Option<String>,
}

/// `note`, `resend_sms`, `retry_status`, `unlock` (after the agent checked the caller's
/// identity), `close`.
async fn act(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: Option<Json<ActionBody>>,
) -> Response {
    let who = match agent(&s, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let core = &s.core;
    let e = match core.escalation(&id).await {
        Ok(Some(e)) => e,
        Ok(None) => return err(StatusCode::NOT_FOUND, "not_found", "no such escalation"),
        Err(e) => return unavailable(e),
    };
    let now = now_ms();
    let text = body.and_then(|b| b.0.text).unwrap_or_default();
    let detail: Result<String, crate::topup::TopupError> = async {
        Ok(match action.as_str() {
            "note" => {
                if text.trim().is_empty() {
                    return Ok(String::new());
                }
                text.trim().chars().take(2000).collect()
            }
            "resend_sms" => {
                let mut sent = vec![];
                for t in &e.topup_ids {
                    if core.resend_confirmation(t, now).await? {
                        sent.push(t.clone());
                    }
                }
                if sent.is_empty() {
                    return Ok(String::new());
                }
                format!("confirmation of {} sent again", sent.join(", "))
            }
            "retry_status" => {
                let r = core
                    .check_topups_now(&e.topup_ids, &s.adapters, now)
                    .await?;
                format!("status checked: {r}")
            }
            "unlock" => {
                let done = core.unlock(&e.caller).await?;
                if done {
                    format!("{} unlocked after an identity check", e.caller)
                } else {
                    "nothing was locked".into()
                }
            }
            "close" => text.trim().chars().take(2000).collect(),
            _ => return Ok("\u{0}".into()),
        })
    }
    .await;
    let detail = match detail {
        Ok(d) if d == "\u{0}" => {
            return err(StatusCode::NOT_FOUND, "not_found", "no such action");
        }
        Ok(d) if d.is_empty() && action != "close" => {
            return err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "nothing_to_do",
                match action.as_str() {
                    "note" => "a note needs text",
                    _ => "this escalation has no top-up confirmation to send",
                },
            );
        }
        Ok(d) => d,
        Err(e) => return unavailable(e),
    };
    if let Err(e) = core.record_action(&id, &who, &action, &detail, now).await {
        return unavailable(e);
    }
    tracing::info!(escalation = %id, agent = %who, %action, "agent action");
    Json(json!({ "ok": true, "detail": detail })).into_response()
}

/// Server-sent events: each escalation that is new or changed, as JSON, within [`POLL`].
async fn events(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = agent(&s, &headers).await {
        return r;
    }
    let stream = futures_util::stream::unfold(
        (s, now_ms() - 1, std::collections::VecDeque::<String>::new()),
        |(s, mut since, mut queue)| async move {
            loop {
                if let Some(ev) = queue.pop_front() {
                    let event = Event::default().event("escalation").data(ev);
                    return Some((Ok::<_, Infallible>(event), (s, since, queue)));
                }
                tokio::time::sleep(POLL).await;
                if let Ok(changed) = s.core.escalations_changed(since, 100).await {
                    for e in changed.iter().rev() {
                        since = since.max(e.updated_at);
                        queue.push_back(serde_json::to_string(e).unwrap_or_default());
                    }
                }
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
