//! Status notices from carriers: an `http` carrier (aggregator) may POST what became of a
//! top-up instead of, or as well as, answering our status queries. A notice can settle a
//! pending top-up (a success that arrives long after our request timed out), or reverse a
//! delivered one (the operator took the credit back: compensating transfers return the money).
//!
//! `POST /carriers/{carrier_id}/notices` with
//! `{"event_id","external_id","status","transaction_id","message"}`, where `external_id` is our
//! top-up id and `status` one of SUCCESSFUL, FAILED, REVERSED (or REFUNDED), PROCESSING; signed
//! like our own webhooks: `X-Carrier-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>` with the secret from the environment variable the carrier's
//! `webhook_secret_env` names. Each notice is kept once by `(carrier, event_id)`, so carriers
//! may send it again as often as they like.
//!
//! The rules (parsing, the signature, what a notice does to a top-up in each state) are pure;
//! [`Core::carrier_notice`] applies them to the database.

use serde::Deserialize;
use sqlx::Row;

use super::adapters::Outcome;
use super::topups::TopupState;
use super::{Core, TopupError};

/// How old a signed notice may be (seconds): older ones are refused as replays.
pub const MAX_AGE_SECS: i64 = 300;

/// The largest notice body read.
pub const MAX_BODY: usize = 16 * 1024;

/// What a carrier says became of a top-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Succeeded,
    Failed,
    /// Delivered, then taken back.
    Reversed,
    /// Still being worked on: changes nothing.
    Processing,
}

/// A parsed notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub event_id: String,
    /// Our top-up id.
    pub external_id: String,
    pub status: Status,
    pub transaction_id: Option<String>,
    pub message: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    event_id: Option<String>,
    external_id: String,
    status: String,
    #[serde(default)]
    transaction_id: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// What is wrong with a notice body (said to the carrier in the 400 answer).
#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    #[error("the body is over {MAX_BODY} bytes")]
    TooLarge,
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0} must be 1-128 printable characters")]
    Field(&'static str),
    #[error("status must be SUCCESSFUL, FAILED, REVERSED or PROCESSING")]
    Status,
}

/// Parses a notice body; the error names what is wrong.
pub fn parse(body: &[u8]) -> Result<Notice, NoticeError> {
    if body.len() > MAX_BODY {
        return Err(NoticeError::TooLarge);
    }
    let b: Body = serde_json::from_slice(body)?;
    let field_ok = |v: &str| !v.is_empty() && v.len() <= 128 && !v.chars().any(char::is_control);
    if !field_ok(&b.external_id) {
        return Err(NoticeError::Field("external_id"));
    }
    let status = match b.status.to_ascii_uppercase().as_str() {
        "SUCCESSFUL" | "SUCCESS" | "COMPLETED" => Status::Succeeded,
        "FAILED" | "REJECTED" | "DECLINED" => Status::Failed,
        "REVERSED" | "REFUNDED" => Status::Reversed,
        "PROCESSING" | "PENDING" => Status::Processing,
        _ => return Err(NoticeError::Status),
    };
    // Without an event id, one notice per top-up and status.
    let event_id = b
        .event_id
        .unwrap_or_else(|| format!("{}:{:?}", b.external_id, status));
    if !field_ok(&event_id) {
        return Err(NoticeError::Field("event_id"));
    }
    let text = |v: Option<String>| v.map(|v| v.chars().take(200).collect::<String>());
    Ok(Notice {
        event_id,
        external_id: b.external_id,
        status,
        transaction_id: text(b.transaction_id),
        message: text(b.message),
    })
}

/// Checks `X-Carrier-Signature` against the body at `now_secs`.
pub fn verify(secret: &str, header: &str, body: &[u8], now_secs: i64) -> Result<(), &'static str> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err("the signature header must be t=<unix seconds>,v1=<hex>");
    };
    if (now_secs - t).abs() > MAX_AGE_SECS {
        return Err("the signature is too old (or from the future)");
    }
    let Ok(body) = std::str::from_utf8(body) else {
        return Err("the body is not UTF-8");
    };
    let expected = super::webhooks::signature(secret, t, body);
    let expected = expected.rsplit_once("v1=").map(|(_, h)| h).unwrap_or("");
    // Compare in constant time: the signature is a secret until it matches.
    let same = expected.len() == v1.len()
        && expected
            .bytes()
            .zip(v1.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err("the signature does not match")
    }
}

/// What a notice does to a top-up in `state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Settle the pending top-up with this outcome.
    Settle(Outcome),
    /// Take a delivered top-up back.
    Reverse,
    /// Nothing to change (a repeat, or PROCESSING).
    Ignore,
    /// The carrier contradicts what it told us before (succeeded after failing, failed after
    /// succeeding): nothing is changed automatically; staff look at it.
    Conflict,
}

pub fn action(notice: &Notice, state: TopupState) -> Action {
    let reason = || {
        notice
            .message
            .clone()
            .unwrap_or_else(|| format!("{:?} by the carrier", notice.status).to_lowercase())
    };
    use TopupState::*;
    match (notice.status, state) {
        (Status::Processing, _) => Action::Ignore,
        (Status::Succeeded, Pending) => Action::Settle(Outcome::Succeeded {
            carrier_ref: notice.transaction_id.clone().unwrap_or_default(),
        }),
        (Status::Failed | Status::Reversed, Pending) => {
            Action::Settle(Outcome::Failed { reason: reason() })
        }
        (Status::Reversed, Succeeded) => Action::Reverse,
        (Status::Succeeded, Succeeded)
        | (Status::Failed, Failed)
        | (Status::Reversed, Failed | Reversed) => Action::Ignore,
        _ => Action::Conflict,
    }
}

/// What a notice did, as answered to the carrier and recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Settled,
    Reversed,
    Ignored,
    Conflict,
    /// This notice was received before; nothing was done again.
    Duplicate,
    /// No top-up of this carrier has that id.
    UnknownTopup,
}

impl Applied {
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Settled => "settled",
            Applied::Reversed => "reversed",
            Applied::Ignored => "ignored",
            Applied::Conflict => "conflict",
            Applied::Duplicate => "duplicate",
            Applied::UnknownTopup => "unknown_topup",
        }
    }
}

/// A notice that contradicted a top-up's final state, for staff to take up with the carrier.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConflictRow {
    pub carrier_id: String,
    pub event_id: String,
    pub topup_id: String,
    /// What the carrier said (succeeded, failed, reversed).
    pub notice: String,
    /// What our books say.
    pub state: String,
    pub recipient: String,
    pub received_at: i64,
}

impl Core {
    /// The latest notices that contradicted our records, newest first.
    pub async fn carrier_conflicts(&self, limit: i64) -> Result<Vec<ConflictRow>, TopupError> {
        let rows = sqlx::query(
            "SELECT e.carrier_id, e.event_id, e.topup_id, e.status, e.received_at, t.state, t.recipient
             FROM carrier_events e JOIN topups t ON t.id = e.topup_id
             WHERE e.result = 'conflict' ORDER BY e.received_at DESC, e.event_id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ConflictRow {
                    carrier_id: r.try_get("carrier_id")?,
                    event_id: r.try_get("event_id")?,
                    topup_id: r.try_get("topup_id")?,
                    notice: r.try_get("status")?,
                    state: r.try_get("state")?,
                    recipient: r.try_get("recipient")?,
                    received_at: r.try_get("received_at")?,
                })
            })
            .collect()
    }

    /// Applies a (verified) notice from `carrier_id`.
    pub async fn carrier_notice(
        &self,
        carrier_id: &str,
        notice: &Notice,
        now: i64,
    ) -> Result<Applied, TopupError> {
        let seen =
            sqlx::query("SELECT 1 FROM carrier_events WHERE carrier_id = $1 AND event_id = $2")
                .bind(carrier_id)
                .bind(&notice.event_id)
                .fetch_optional(self.db.pool())
                .await?;
        if seen.is_some() {
            return Ok(Applied::Duplicate);
        }
        let row = sqlx::query("SELECT state, carrier_id FROM topups WHERE id = $1")
            .bind(&notice.external_id)
            .fetch_optional(self.db.pool())
            .await?;
        let Some(row) = row else {
            return Ok(Applied::UnknownTopup);
        };
        // A carrier speaks only of its own top-ups.
        if row.try_get::<String, _>("carrier_id")? != carrier_id {
            return Ok(Applied::UnknownTopup);
        }
        let state = TopupState::from_row(&row)?;
        let id = notice.external_id.as_str();
        let applied = match action(notice, state) {
            Action::Settle(outcome) => {
                self.settle(id, &outcome, now).await?;
                Applied::Settled
            }
            Action::Reverse => {
                let reason = notice
                    .message
                    .clone()
                    .unwrap_or_else(|| "reversed by the carrier".into());
                if self.reverse(id, &reason, now).await? {
                    Applied::Reversed
                } else {
                    Applied::Ignored
                }
            }
            Action::Ignore => Applied::Ignored,
            Action::Conflict => {
                tracing::warn!(
                    topup = id,
                    carrier = carrier_id,
                    state = %state,
                    notice = ?notice.status,
                    "a carrier notice contradicts the top-up's final state; left for staff"
                );
                metrics::counter!("topup_ivr_carrier_conflicts_total", "carrier" => carrier_id.to_string())
                    .increment(1);
                Applied::Conflict
            }
        };
        sqlx::query(
            "INSERT INTO carrier_events (carrier_id, event_id, topup_id, status, result, received_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (carrier_id, event_id) DO NOTHING",
        )
        .bind(carrier_id)
        .bind(&notice.event_id)
        .bind(id)
        .bind(format!("{:?}", notice.status).to_lowercase())
        .bind(applied.as_str())
        .bind(now)
        .execute(self.db.pool())
        .await?;
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(status: Status) -> Notice {
        Notice {
            event_id: "e1".into(),
            external_id: "t1".into(),
            status,
            transaction_id: Some("TX9".into()),
            message: None,
        }
    }

    #[test]
    fn notices_parse_with_their_status_and_a_default_event_id() {
        let n = parse(br#"{"external_id":"api:k:1","status":"completed","transaction_id":"T1"}"#)
            .unwrap();
        assert_eq!(n.status, Status::Succeeded);
        assert_eq!(n.event_id, "api:k:1:Succeeded");
        assert_eq!(
            parse(br#"{"external_id":"x","status":"REFUNDED","event_id":"ev"}"#)
                .unwrap()
                .status,
            Status::Reversed
        );
        for (bad, says) in [
            (&br#"{"external_id":"x","status":"MAYBE"}"#[..], "status"),
            (br#"{"external_id":"","status":"FAILED"}"#, "external_id"),
            (br#"{"external_id":"x\n","status":"FAILED"}"#, "external_id"),
            (
                br#"{"external_id":"x","status":"FAILED","extra":1}"#,
                "extra",
            ),
            (br#"{"status":"FAILED"}"#, "external_id"),
            (b"not json", "JSON"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{e} should name {says}");
        }
        assert!(matches!(
            parse(&vec![b' '; MAX_BODY + 1]),
            Err(NoticeError::TooLarge)
        ));
    }

    #[test]
    fn signatures_must_match_the_body_and_be_recent() {
        let body = br#"{"external_id":"t1","status":"FAILED"}"#;
        let now = 1_800_000_000;
        let good = super::super::webhooks::signature(
            "s3cret",
            now - 10,
            std::str::from_utf8(body).unwrap(),
        );
        assert_eq!(verify("s3cret", &good, body, now), Ok(()));
        assert!(verify("other", &good, body, now).is_err());
        assert!(
            verify(
                "s3cret",
                &good,
                br#"{"external_id":"t2","status":"FAILED"}"#,
                now
            )
            .is_err()
        );
        assert!(
            verify("s3cret", &good, body, now + MAX_AGE_SECS + 11)
                .unwrap_err()
                .contains("old")
        );
        assert!(verify("s3cret", "v1=00", body, now).is_err());
        assert!(verify("s3cret", "", body, now).is_err());
        let truncated = &good[..good.len() - 2];
        assert!(verify("s3cret", truncated, body, now).is_err());
    }

    #[test]
    fn each_notice_does_what_the_top_ups_state_allows() {
        use Status::*;
        let settle_ok = Action::Settle(Outcome::Succeeded {
            carrier_ref: "TX9".into(),
        });
        let cases = [
            (Succeeded, TopupState::Pending, settle_ok),
            (Succeeded, TopupState::Succeeded, Action::Ignore),
            (Succeeded, TopupState::Failed, Action::Conflict),
            (Succeeded, TopupState::Reversed, Action::Conflict),
            (Failed, TopupState::Succeeded, Action::Conflict),
            (Failed, TopupState::Failed, Action::Ignore),
            (Reversed, TopupState::Succeeded, Action::Reverse),
            (Reversed, TopupState::Reversed, Action::Ignore),
            (Reversed, TopupState::Failed, Action::Ignore),
            (Processing, TopupState::Pending, Action::Ignore),
            (Processing, TopupState::Succeeded, Action::Ignore),
        ];
        for (status, state, want) in cases {
            assert_eq!(
                action(&notice(status), state),
                want,
                "{status:?} on {state}"
            );
        }
        for status in [Failed, Reversed] {
            assert!(
                matches!(
                    action(&notice(status), TopupState::Pending),
                    Action::Settle(Outcome::Failed { .. })
                ),
                "{status:?} on a pending top-up fails it"
            );
        }
    }
}
