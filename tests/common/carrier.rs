//! A top-up aggregator that misbehaves on purpose: the HTTP carrier protocol of
//! `src/topup/adapters.rs` (POST /topups, GET /topups/{external_id}, deduplicated by
//! external_id) and the status notices of `src/topup/notices.rs`, with the fault chosen by the
//! recipient number's last two digits (see [`Fault`]). It also receives the service's webhooks
//! to API clients (`POST /client-hooks`), to check what a retail terminal is told.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

/// What the aggregator does with a top-up, by the recipient's last two digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 01: delivers and says so.
    None,
    /// 02: delivers but answers only after `SLOW` (longer than the service waits).
    Slow,
    /// 03: answers 503 without doing anything (the status query then finds nothing).
    Unavailable,
    /// 04: delivers and answers 200 with a truncated JSON body.
    Malformed,
    /// 05: answers PROCESSING; the test completes it later with a notice.
    Processing,
    /// 06: delivers at once; the test reverses it later with a notice.
    LaterReversed,
    /// 07: refuses (400 FAILED).
    Refused,
    /// 08: delivers but answers only after `SLOW`; its first two status queries get 500.
    SlowThenStatusErrors,
}

impl Fault {
    fn of(recipient: &str) -> Fault {
        match &recipient[recipient.len().saturating_sub(2)..] {
            "02" => Fault::Slow,
            "03" => Fault::Unavailable,
            "04" => Fault::Malformed,
            "05" => Fault::Processing,
            "06" => Fault::LaterReversed,
            "07" => Fault::Refused,
            "08" => Fault::SlowThenStatusErrors,
            _ => Fault::None,
        }
    }
}

/// How long a slow answer takes.
pub const SLOW: Duration = Duration::from_secs(3);

#[derive(Default)]
pub struct Books {
    /// external_id -> (status, transaction id): what the aggregator did, once per id.
    pub topups: HashMap<String, (String, String)>,
    /// POSTs per external_id (resends included).
    pub posts: HashMap<String, u32>,
    /// Status queries per external_id.
    pub queries: HashMap<String, u32>,
    /// The fault of each external_id seen.
    pub faults: HashMap<String, Fault>,
    /// The service's webhooks to its API client, as received (bodies).
    pub client_hooks: Vec<Value>,
}

pub struct Aggregator {
    pub url: String,
    pub books: Arc<Mutex<Books>>,
    secret: String,
    rt: tokio::runtime::Runtime,
}

async fn create(
    State(b): State<Arc<Mutex<Books>>>,
    Json(req): Json<Value>,
) -> (StatusCode, String) {
    let id = req["external_id"].as_str().unwrap_or_default().to_string();
    let recipient = req["recipient"].as_str().unwrap_or_default().to_string();
    let fault = Fault::of(&recipient);
    let existing = {
        let mut b = b.lock().unwrap();
        *b.posts.entry(id.clone()).or_default() += 1;
        b.faults.insert(id.clone(), fault);
        b.topups.get(&id).cloned()
    };
    // A resend of a known id: the first result, nothing done again.
    if let Some((status, tx)) = existing {
        return (
            StatusCode::OK,
            json!({"status": status, "transaction_id": tx}).to_string(),
        );
    }
    let tx = format!("AGG-{id}");
    let record = |status: &str| {
        b.lock()
            .unwrap()
            .topups
            .insert(id.clone(), (status.to_string(), tx.clone()));
    };
    match fault {
        Fault::Unavailable if b.lock().unwrap().posts[&id] == 1 => {
            return (StatusCode::SERVICE_UNAVAILABLE, "upstream busy".into());
        }
        Fault::Refused => {
            return (
                StatusCode::BAD_REQUEST,
                json!({"status": "FAILED", "message": "invalid msisdn"}).to_string(),
            );
        }
        Fault::Processing => record("PROCESSING"),
        _ => record("SUCCESSFUL"),
    }
    match fault {
        Fault::Slow | Fault::SlowThenStatusErrors => tokio::time::sleep(SLOW).await,
        Fault::Malformed => return (StatusCode::OK, "{\"status\": \"SUCC".into()),
        _ => {}
    }
    let status = b.lock().unwrap().topups[&id].0.clone();
    (
        StatusCode::OK,
        json!({"status": status, "transaction_id": tx}).to_string(),
    )
}

async fn status(
    State(b): State<Arc<Mutex<Books>>>,
    Path(id): Path<String>,
) -> (StatusCode, String) {
    let mut b = b.lock().unwrap();
    let n = {
        let q = b.queries.entry(id.clone()).or_default();
        *q += 1;
        *q
    };
    let Some((status, tx)) = b.topups.get(&id).cloned() else {
        return (
            StatusCode::NOT_FOUND,
            json!({"message": "no such top-up"}).to_string(),
        );
    };
    if b.faults.get(&id) == Some(&Fault::SlowThenStatusErrors) && n <= 2 {
        return (StatusCode::INTERNAL_SERVER_ERROR, "oops".into());
    }
    (
        StatusCode::OK,
        json!({"status": status, "transaction_id": tx}).to_string(),
    )
}

async fn client_hook(State(b): State<Arc<Mutex<Books>>>, Json(v): Json<Value>) -> StatusCode {
    b.lock().unwrap().client_hooks.push(v);
    StatusCode::OK
}

impl Aggregator {
    /// Starts it on a free port; `secret` signs its notices.
    pub fn start(secret: &str) -> Aggregator {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let books = Arc::new(Mutex::new(Books::default()));
        let app = Router::new()
            .route("/topups", post(create))
            .route("/topups/{id}", get(status))
            .route("/client-hooks", post(client_hook))
            .with_state(books.clone());
        let port = super::free_tcp_port();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .unwrap();
        rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Aggregator {
            url: format!("http://127.0.0.1:{port}"),
            books,
            secret: secret.to_string(),
            rt,
        }
    }

    /// Changes what the aggregator says of a top-up it has (as its operator reports back).
    pub fn set_status(&self, external_id: &str, status: &str) {
        let mut b = self.books.lock().unwrap();
        let e = b
            .topups
            .get_mut(external_id)
            .expect("a top-up the aggregator has");
        e.0 = status.to_string();
    }

    /// A signed notice body and its signature header, signed `age_secs` ago.
    pub fn signed(&self, body: &str, age_secs: i64) -> String {
        use hmac::Mac;
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - age_secs;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.secret.as_bytes()).unwrap();
        mac.update(format!("{t}.{body}").as_bytes());
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    /// POSTs notice `body` to `url` with `signature`, `copies` times at once; each answer's
    /// (status, JSON).
    pub fn post_notice(
        &self,
        url: &str,
        body: &str,
        signature: &str,
        copies: usize,
    ) -> Vec<(u16, Value)> {
        self.rt.block_on(async {
            let client = reqwest::Client::new();
            let sends = (0..copies).map(|_| {
                let client = client.clone();
                async move {
                    let r = client
                        .post(url)
                        .header("Content-Type", "application/json")
                        .header("X-Carrier-Signature", signature)
                        .body(body.to_string())
                        .send()
                        .await
                        .unwrap();
                    let s = r.status().as_u16();
                    (s, r.json::<Value>().await.unwrap_or(Value::Null))
                }
            });
            futures_util::future::join_all(sends).await
        })
    }

    /// Sends the aggregator's current status of `external_id` as a notice, `copies` times at
    /// once, correctly signed.
    pub fn notify(
        &self,
        server_http: std::net::SocketAddr,
        carrier: &str,
        external_id: &str,
        event_id: &str,
        copies: usize,
    ) -> Vec<(u16, Value)> {
        let (status, tx) = self.books.lock().unwrap().topups[external_id].clone();
        let body = json!({"event_id": event_id, "external_id": external_id, "status": status, "transaction_id": tx}).to_string();
        let sig = self.signed(&body, 0);
        self.post_notice(
            &format!("http://{server_http}/carriers/{carrier}/notices"),
            &body,
            &sig,
            copies,
        )
    }
}
