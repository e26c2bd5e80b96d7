//! Carrier adapters: how a top-up reaches the recipient's operator.
//!
//! - `builtin`: our own prepaid accounts (the in-network case): a posted ledger transfer.
//! - `http`: an aggregator API in the style of Reloadly / DT One / Ding. We send our top-up id
//!   as the unique external reference, so the provider deduplicates resends. A timeout or a
//!   5xx is *unknown*, never *failed*: the top-up stays pending and the reconciler asks for its
//!   status. Only "not found" on a status query (the request never arrived) allows a resend.
//! - `sandbox`: a stand-in operator for demos and tests: numbers ending in 0000 are refused,
//!   numbers ending in 9999 time out first and then turn out delivered, all others succeed.
//!
//! The HTTP protocol: `POST {base_url}/topups` with
//! `{"external_id","operator_id","product_id","recipient","amount","currency"}` and
//! `GET {base_url}/topups/{external_id}`; answers
//! `{"status":"SUCCESSFUL|FAILED|PROCESSING","transaction_id":"...","message":"..."}`;
//! `Authorization: Bearer <key>` from the environment variable the carrier names.

use std::time::Duration;

use serde::Deserialize;

use super::books::{open_account, transfer, transfer_by_id};
use super::carriers::{Carrier, HttpSettings};
use super::ledger::{AccountKind, TransferSpec, accounts};
use super::money::Money;
use super::{Core, TopupError};
use crate::textfile::parse_duration;

/// What a carrier said about a top-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded {
        carrier_ref: String,
    },
    Failed {
        reason: String,
    },
    /// No answer we can trust (timeout, 5xx, garbage): ask again later.
    Unknown {
        reason: String,
    },
    /// A status query found no such top-up: it never arrived, so it may be sent again.
    NotFound,
}

/// One delivery to a carrier.
#[derive(Clone, Debug)]
pub struct Delivery<'a> {
    /// Our top-up id: the carrier's external reference.
    pub id: &'a str,
    pub recipient: &'a str,
    /// What the recipient receives, in the carrier's currency.
    pub amount: Money,
    pub product_id: &'a str,
    pub carrier: &'a Carrier,
}

/// The adapters, with one HTTP client shared by all carriers.
#[derive(Clone, Debug, Default)]
pub struct Adapters {
    http: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct ApiAnswer {
    status: String,
    #[serde(default)]
    transaction_id: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl Adapters {
    pub fn new() -> Adapters {
        Adapters::default()
    }

    pub async fn send(&self, core: &Core, d: &Delivery<'_>, now: i64) -> Outcome {
        match d.carrier.adapter.as_str() {
            "builtin" => builtin_send(core, d, now).await,
            "sandbox" => sandbox(d, true),
            "http" => match &d.carrier.http {
                Some(h) => self.http_send(h, d).await,
                None => Outcome::Failed {
                    reason: "carrier has no http settings".into(),
                },
            },
            other => Outcome::Failed {
                reason: format!("unknown adapter {other}"),
            },
        }
    }

    pub async fn status(&self, core: &Core, d: &Delivery<'_>) -> Outcome {
        match d.carrier.adapter.as_str() {
            "builtin" => {
                let Ok(mut conn) = core.db.pool().acquire().await else {
                    return Outcome::Unknown {
                        reason: "database unavailable".into(),
                    };
                };
                match transfer_by_id(&mut conn, &format!("deliver:{}", d.id)).await {
                    Ok(Some(t)) => Outcome::Succeeded { carrier_ref: t.id },
                    Ok(None) => Outcome::NotFound,
                    Err(e) => Outcome::Unknown {
                        reason: e.to_string(),
                    },
                }
            }
            "sandbox" => sandbox(d, false),
            "http" => match &d.carrier.http {
                Some(h) => self.http_status(h, d).await,
                None => Outcome::Unknown {
                    reason: "carrier has no http settings".into(),
                },
            },
            _ => Outcome::Unknown {
                reason: "unknown adapter".into(),
            },
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: String,
        h: &HttpSettings,
    ) -> reqwest::RequestBuilder {
        let timeout = parse_duration(&h.timeout).unwrap_or(Duration::from_secs(15));
        let mut r = self.http.request(method, url).timeout(timeout);
        if let Some(key) = h.api_key_env.as_deref().and_then(|v| std::env::var(v).ok()) {
            r = r.bearer_auth(key);
        }
        r
    }

    async fn http_send(&self, h: &HttpSettings, d: &Delivery<'_>) -> Outcome {
        let body = serde_json::json!({
            "external_id": d.id,
            "operator_id": h.operator_id,
            "product_id": d.product_id,
            "recipient": d.recipient,
            "amount": d.amount.amount_string(),
            "currency": d.amount.currency.code(),
        });
        let url = format!("{}/topups", h.base_url.trim_end_matches('/'));
        match self
            .request(reqwest::Method::POST, url, h)
            .json(&body)
            .send()
            .await
        {
            Ok(resp) => read_answer(resp, false).await,
            // Nothing left our side: the carrier cannot have acted on it.
            Err(e) if e.is_connect() => Outcome::Failed {
                reason: format!("carrier unreachable: {}", short(&e)),
            },
            Err(e) => Outcome::Unknown {
                reason: format!("no answer: {}", short(&e)),
            },
        }
    }

    async fn http_status(&self, h: &HttpSettings, d: &Delivery<'_>) -> Outcome {
        let url = format!("{}/topups/{}", h.base_url.trim_end_matches('/'), d.id);
        match self.request(reqwest::Method::GET, url, h).send().await {
            Ok(resp) => read_answer(resp, true).await,
            Err(e) => Outcome::Unknown {
                reason: format!("status query failed: {}", short(&e)),
            },
        }
    }
}

fn short(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else {
        e.to_string().chars().take(120).collect()
    }
}

async fn read_answer(resp: reqwest::Response, is_status: bool) -> Outcome {
    let code = resp.status();
    if is_status && code == reqwest::StatusCode::NOT_FOUND {
        return Outcome::NotFound;
    }
    if code.is_server_error() {
        return Outcome::Unknown {
            reason: format!("carrier error {code}"),
        };
    }
    let text = resp.text().await.unwrap_or_default();
    let Ok(a) = serde_json::from_str::<ApiAnswer>(&text) else {
        return if code.is_client_error() {
            Outcome::Failed {
                reason: format!("carrier refused ({code})"),
            }
        } else {
            Outcome::Unknown {
                reason: format!("unreadable answer ({code})"),
            }
        };
    };
    match a.status.to_ascii_uppercase().as_str() {
        "SUCCESSFUL" | "SUCCESS" | "COMPLETED" => Outcome::Succeeded {
            carrier_ref: a.transaction_id.unwrap_or_default(),
        },
        "FAILED" | "REJECTED" | "REFUNDED" | "DECLINED" => Outcome::Failed {
            reason: a.message.unwrap_or_else(|| a.status.clone()),
        },
        _ => Outcome::Unknown {
            reason: format!(
                "carrier says {}",
                a.status.chars().take(32).collect::<String>()
            ),
        },
    }
}

fn sandbox(d: &Delivery<'_>, first: bool) -> Outcome {
    if d.recipient.ends_with("0000") {
        Outcome::Failed {
            reason: "number not active".into(),
        }
    } else if d.recipient.ends_with("9999") && first {
        Outcome::Unknown {
            reason: "timeout".into(),
        }
    } else {
        Outcome::Succeeded {
            carrier_ref: format!("SBX-{}", d.id),
        }
    }
}

/// Our own network: credit the recipient's prepaid account from the carrier account.
async fn builtin_send(core: &Core, d: &Delivery<'_>, now: i64) -> Outcome {
    let result: Result<Outcome, TopupError> = async {
        let mut tx = core.db.begin().await?;
        let exists = sqlx::query(
            "SELECT number FROM prepaid_accounts WHERE number = $1 AND status <> 'suspended'",
        )
        .bind(d.recipient)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        if !exists {
            return Ok(Outcome::Failed {
                reason: "no such subscriber".into(),
            });
        }
        let cur = d.amount.currency;
        let carrier_account = accounts::carrier(&d.carrier.id, cur);
        open_account(&mut tx, &carrier_account, cur, AccountKind::Carrier, now).await?;
        let t = transfer(
            &mut tx,
            &TransferSpec {
                id: format!("deliver:{}", d.id),
                debit: carrier_account,
                credit: accounts::prepaid(d.recipient),
                amount: d.amount,
                kind: "deliver".into(),
                pending: false,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(Outcome::Succeeded { carrier_ref: t.id })
    }
    .await;
    result.unwrap_or_else(|e| match e {
        TopupError::Ledger(l) => Outcome::Failed {
            reason: l.to_string(),
        },
        other => Outcome::Unknown {
            reason: other.to_string(),
        },
    })
}
