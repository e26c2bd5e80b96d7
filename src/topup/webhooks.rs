//! Webhooks to API clients: when a top-up made with a key reaches its final state, a row is
//! written to `webhook_outbox` in the same transaction; a sender POSTs it, signed, until the
//! client answers 2xx. The rules (signature, backoff) are pure; the sender lives in
//! `http::webhooks`.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::{AnyConnection, Row};

use super::{Core, TopupError};

/// Attempts before a webhook is given up (the last about a day after the first).
pub const MAX_ATTEMPTS: i64 = 16;

/// `X-Topup-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` — the
/// timestamp lets the receiver refuse replays of old deliveries.
pub fn signature(secret: &str, unix_secs: i64, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{unix_secs}.{body}").as_bytes());
    format!(
        "t={unix_secs},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Milliseconds to wait after failed attempt number `attempts` (1-based): 2 s doubling,
/// at most 2 hours.
pub fn backoff_ms(attempts: i64) -> i64 {
    let exp = attempts.clamp(1, 13) - 1;
    (2_000i64 << exp).min(2 * 3600 * 1000)
}

/// A webhook due for sending.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: String,
    pub url: String,
    pub body: String,
    pub secret: String,
    pub attempts: i64,
}

/// Work waiting in the queues (for `/metrics`).
#[derive(Debug, Default)]
pub struct QueueLengths {
    pub sms: i64,
    pub webhooks: i64,
    pub topups_pending: i64,
}

impl Core {
    pub async fn queue_lengths(&self) -> Result<QueueLengths, TopupError> {
        let count = |sql: &'static str| async move {
            let r = sqlx::query(sql).fetch_one(self.db.pool()).await?;
            Ok::<i64, TopupError>(r.try_get::<i64, _>(0)?)
        };
        Ok(QueueLengths {
            sms: count("SELECT COUNT(*) FROM sms_outbox WHERE state IN ('queued', 'sending')")
                .await?,
            webhooks: count("SELECT COUNT(*) FROM webhook_outbox WHERE state = 'queued'").await?,
            topups_pending: count("SELECT COUNT(*) FROM topups WHERE state = 'pending'").await?,
        })
    }

    /// In the settling transaction: if top-up `id` was made with an API key that has a
    /// webhook, queue the final state for it.
    pub(crate) async fn enqueue_webhook(
        &self,
        conn: &mut AnyConnection,
        id: &str,
        now: i64,
    ) -> Result<(), TopupError> {
        let Some(key_id) = id.strip_prefix("api:").and_then(|r| r.split(':').next()) else {
            return Ok(());
        };
        let key = sqlx::query("SELECT webhook_url FROM api_keys WHERE id = $1")
            .bind(key_id)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(url) =
            key.and_then(|k| k.try_get::<Option<String>, _>("webhook_url").ok().flatten())
        else {
            return Ok(());
        };
        let t = sqlx::query(
            "SELECT state, recipient, product_id, send_minor, send_currency, receive_minor,
                receive_currency, carrier_ref, error, updated_at FROM topups WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
        let state: String = t.try_get("state")?;
        let money = |m: &str, c: &str| -> Result<String, TopupError> {
            let cur: String = t.try_get(c)?;
            let cur = super::money::Currency::new(&cur)
                .map_err(|_| TopupError::Corrupt(format!("top-up {id}: currency")))?;
            Ok(super::money::Money::new(t.try_get(m)?, cur).to_string())
        };
        let body = serde_json::json!({
            "event": format!("topup.{state}"),
            "delivery": format!("{id}:{state}"),
            "topup": {
                "id": id,
                "state": state,
                "recipient": t.try_get::<String, _>("recipient")?,
                "product_id": t.try_get::<String, _>("product_id")?,
                "sent": money("send_minor", "send_currency")?,
                "received": money("receive_minor", "receive_currency")?,
                "carrier_ref": t.try_get::<Option<String>, _>("carrier_ref")?,
                "error": t.try_get::<Option<String>, _>("error")?,
                "updated_at": t.try_get::<i64, _>("updated_at")?,
            }
        })
        .to_string();
        sqlx::query(
            "INSERT INTO webhook_outbox (id, key_id, url, body, state, next_attempt_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, 'queued', $5, $5, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(format!("{id}:{state}"))
        .bind(key_id)
        .bind(url)
        .bind(body)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Claims up to `limit` due webhooks for `lease_ms` (another node will not send them
    /// meanwhile; one that dies holding them releases them when the lease ends).
    pub async fn claim_webhooks(
        &self,
        now: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Due>, TopupError> {
        let rows = sqlx::query(
            "SELECT w.id, w.url, w.body, w.attempts, w.next_attempt_at, k.webhook_secret
             FROM webhook_outbox w JOIN api_keys k ON k.id = w.key_id
             WHERE w.state = 'queued' AND w.next_attempt_at <= $1
             ORDER BY w.next_attempt_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        let mut out = vec![];
        for r in rows {
            let id: String = r.try_get("id")?;
            let at: i64 = r.try_get("next_attempt_at")?;
            let won = sqlx::query(
                "UPDATE webhook_outbox SET next_attempt_at = $1 WHERE id = $2 AND next_attempt_at = $3 AND state = 'queued'",
            )
            .bind(now + lease_ms)
            .bind(&id)
            .bind(at)
            .execute(self.db.pool())
            .await?
            .rows_affected()
                == 1;
            if won {
                out.push(Due {
                    id,
                    url: r.try_get("url")?,
                    body: r.try_get("body")?,
                    secret: r
                        .try_get::<Option<String>, _>("webhook_secret")?
                        .unwrap_or_default(),
                    attempts: r.try_get("attempts")?,
                });
            }
        }
        Ok(out)
    }

    /// Records an attempt: delivered, or failed with when to try again (or give up).
    pub async fn webhook_attempted(
        &self,
        id: &str,
        result: Result<(), String>,
        attempts_before: i64,
        now: i64,
    ) -> Result<(), TopupError> {
        let attempts = attempts_before + 1;
        let (state, next, error) = match &result {
            Ok(()) => ("delivered", now, None),
            Err(e) if attempts >= MAX_ATTEMPTS => ("failed", now, Some(e.as_str())),
            Err(e) => ("queued", now + backoff_ms(attempts), Some(e.as_str())),
        };
        sqlx::query(
            "UPDATE webhook_outbox SET state = $1, attempts = $2, next_attempt_at = $3, last_error = $4,
                updated_at = $5 WHERE id = $6",
        )
        .bind(state)
        .bind(attempts)
        .bind(next)
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Webhook rows, newest first: (id, state, attempts, last error).
    pub async fn webhooks(
        &self,
        limit: i64,
    ) -> Result<Vec<(String, String, i64, Option<String>)>, TopupError> {
        let rows = sqlx::query(
            "SELECT id, state, attempts, last_error FROM webhook_outbox ORDER BY created_at DESC, id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("state")?,
                    r.try_get("attempts")?,
                    r.try_get("last_error")?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_over_time_and_body() {
        // Computed with Python's hmac module over b"0.what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", 0, "what do ya want for nothing?"),
            "t=0,v1=37f471929915ccd2cbbe79feb84ffcff4f2bb25e15fc41c2506687331ae179cc"
        );
        assert_ne!(signature("Jefe", 1, "x"), signature("Jefe", 2, "x"));
        assert_ne!(signature("a", 1, "x"), signature("b", 1, "x"));
    }

    #[test]
    fn backoff_doubles_from_two_seconds_to_two_hours() {
        assert_eq!(backoff_ms(1), 2_000);
        assert_eq!(backoff_ms(2), 4_000);
        assert_eq!(backoff_ms(5), 32_000);
        assert_eq!(backoff_ms(15), 2 * 3600 * 1000);
        assert_eq!(backoff_ms(0), 2_000);
    }
}
