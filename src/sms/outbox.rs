//! The outbox: every SMS is a row written in the same transaction as the change that causes
//! it (a top-up settled, a card redeemed, an account locked, an alert due, a command
//! answered), so a message exists exactly when its cause does. The gateway's worker sends
//! queued rows at least once and records each part's SMSC message id; delivery receipts
//! settle the row. A row's id comes from its cause, so writing it twice writes it once.
//!
//! States: `queued` → `sending` (handed to an SMSC) → `sent` (every part accepted) →
//! `delivered` (every part's receipt said so) or `failed` (refused for good, too many
//! attempts, or a receipt said undeliverable). A row caught in `sending` by a restart goes
//! back to `queued`.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};

use crate::sms::messages::{Messages, SmsTexts};
use crate::sms::service::Mo;
use crate::topup::ledger::accounts;
use crate::topup::notify::{Notification, Notifier, WriteFuture};
use crate::topup::numbers::parse_number;
use crate::topup::{Core, TopupError};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutboxRow {
    pub id: String,
    pub kind: String,
    pub destination: String,
    pub language: String,
    pub body: String,
    pub reference: Option<String>,
    pub udh_ref: i64,
    pub state: String,
    pub smsc: Option<String>,
    pub parts: i64,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub sent_at: Option<i64>,
    pub delivered_at: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartRow {
    pub part: i64,
    pub smsc: String,
    pub message_id: String,
    pub state: String,
    pub status: Option<String>,
    pub updated_at: i64,
}

/// What a delivery receipt did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiptResult {
    /// No part has this message id.
    Unknown,
    /// The part was updated; the message is now in `state`.
    Applied { outbox_id: String, state: String },
}

/// What the inbox knew of an incoming message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboxClaim {
    /// First time: process it.
    New,
    /// Already answered: do nothing but acknowledge.
    Done,
    /// Received before but not finished (a crash, or the same message twice at once):
    /// process it again; the top-up's id keeps money from moving twice.
    Unfinished,
}

const COLUMNS: &str =
    "id, kind, destination, language, body, reference, udh_ref, state, smsc, parts,
    attempts, last_error, next_attempt_at, created_at, updated_at, sent_at, delivered_at";

fn row(r: &sqlx::any::AnyRow) -> Result<OutboxRow, TopupError> {
    Ok(OutboxRow {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        destination: r.try_get("destination")?,
        language: r.try_get("language")?,
        body: r.try_get("body")?,
        reference: r.try_get("reference")?,
        udh_ref: r.try_get("udh_ref")?,
        state: r.try_get("state")?,
        smsc: r.try_get("smsc")?,
        parts: r.try_get("parts")?,
        attempts: r.try_get("attempts")?,
        last_error: r.try_get("last_error")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        sent_at: r.try_get("sent_at")?,
        delivered_at: r.try_get("delivered_at")?,
    })
}

/// Pure: when to try again after `attempts` (5 s doubling, at most 10 min).
pub fn retry_at(now: i64, attempts: i64) -> i64 {
    now + (5_000i64 << attempts.clamp(0, 12)).min(600_000)
}

/// The SMS layer as the top-up core's notifier: a notification becomes an outbox row, its
/// text rendered in the recipient's language, in the transaction of its cause.
#[derive(Clone, Debug)]
pub struct SmsOutbox {
    texts: SmsTexts,
}

impl SmsOutbox {
    pub fn new(texts: SmsTexts) -> SmsOutbox {
        SmsOutbox { texts }
    }

    /// The language to write to `number` in: its prepaid account's, else its wallet's, else
    /// its country's, else the default.
    async fn language(
        m: &Messages,
        conn: &mut AnyConnection,
        number: &str,
    ) -> Result<String, TopupError> {
        for table in ["prepaid_accounts", "wallets"] {
            let r = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT language FROM {table} WHERE number = $1"
            )))
            .bind(number)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(r) = r {
                let l: String = r.try_get("language")?;
                if m.has_language(&l) {
                    return Ok(l);
                }
            }
        }
        if let Ok(n) = parse_number(number)
            && let Some(l) = m.language_of_country(&n.country)
        {
            return Ok(l.to_string());
        }
        Ok(m.default_language().to_string())
    }

    /// Writes `n` into the outbox; whether a row was written (not when the destination is
    /// no phone number, or the row exists already).
    async fn enqueue(
        &self,
        conn: &mut AnyConnection,
        n: Notification,
        now: i64,
    ) -> Result<bool, TopupError> {
        let m = self.texts.current();
        let Ok(to) = parse_number(&n.to).map(|p| p.e164) else {
            return Ok(false);
        };
        let lang = match &n.language {
            Some(l) if m.has_language(l) => l.clone(),
            _ => Self::language(&m, conn, &to).await?,
        };
        let body = m.render(&lang, n.kind, &n.vars);
        let udh_ref = Sha256::digest(n.id.as_bytes())[0] as i64;
        let written = sqlx::query(
            "INSERT INTO sms_outbox (id, kind, destination, language, body, reference, udh_ref, state,
                attempts, next_attempt_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', 0, $8, $8, $8) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&n.id)
        .bind(n.kind)
        .bind(&to)
        .bind(&lang)
        .bind(&body)
        .bind(&n.reference)
        .bind(udh_ref)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        Ok(written == 1)
    }
}

impl Notifier for SmsOutbox {
    fn write<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        n: Notification,
        now: i64,
    ) -> WriteFuture<'a> {
        Box::pin(self.enqueue(conn, n, now))
    }
}

impl Core {
    /// Queued rows due by `now`, oldest first.
    pub async fn due_sms(&self, now: i64, limit: i64) -> Result<Vec<OutboxRow>, TopupError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sms_outbox WHERE state = 'queued' AND next_attempt_at <= $1
             ORDER BY next_attempt_at, created_at LIMIT $2"
        )))
        .bind(now)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(row).collect()
    }

    /// Takes a queued row for sending through `smsc`; false if another worker took it.
    pub async fn claim_sms(
        &self,
        id: &str,
        smsc: &str,
        parts: i64,
        now: i64,
    ) -> Result<bool, TopupError> {
        let n = sqlx::query(
            "UPDATE sms_outbox SET state = 'sending', smsc = $1, parts = $2, attempts = attempts + 1,
                updated_at = $3 WHERE id = $4 AND state = 'queued'",
        )
        .bind(smsc)
        .bind(parts)
        .bind(now)
        .bind(id)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Parts of a row the SMSC has accepted already (not sent again on a retry).
    pub async fn accepted_parts(&self, id: &str) -> Result<Vec<i64>, TopupError> {
        let rows = sqlx::query("SELECT part FROM sms_parts WHERE outbox_id = $1 ORDER BY part")
            .bind(id)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(|r| Ok(r.try_get("part")?)).collect()
    }

    /// Records the SMSC's message id for a part; the row is `sent` once every part is in.
    pub async fn sms_part_accepted(
        &self,
        id: &str,
        part: i64,
        smsc: &str,
        message_id: &str,
        now: i64,
    ) -> Result<bool, TopupError> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO sms_parts (outbox_id, part, smsc, message_id, state, updated_at)
             VALUES ($1, $2, $3, $4, 'accepted', $5) ON CONFLICT (outbox_id, part) DO NOTHING",
        )
        .bind(id)
        .bind(part)
        .bind(smsc)
        .bind(message_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let done: i64 = sqlx::query("SELECT COUNT(*) AS n FROM sms_parts WHERE outbox_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        let n = sqlx::query(
            "UPDATE sms_outbox SET state = 'sent', sent_at = $1, updated_at = $1, last_error = NULL
             WHERE id = $2 AND state = 'sending' AND parts <= $3",
        )
        .bind(now)
        .bind(id)
        .bind(done)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    /// The SMSC refused a part: try again at `retry_at`, or give up (`None`).
    pub async fn sms_refused(
        &self,
        id: &str,
        error: &str,
        retry_at: Option<i64>,
        now: i64,
    ) -> Result<(), TopupError> {
        match retry_at {
            Some(at) => sqlx::query(
                "UPDATE sms_outbox SET state = 'queued', last_error = $1, next_attempt_at = $2,
                    updated_at = $3 WHERE id = $4 AND state = 'sending'",
            )
            .bind(error)
            .bind(at)
            .bind(now)
            .bind(id),
            None => sqlx::query(
                "UPDATE sms_outbox SET state = 'failed', last_error = $1, next_attempt_at = $2,
                    updated_at = $3 WHERE id = $4 AND state = 'sending'",
            )
            .bind(error)
            .bind(now)
            .bind(now)
            .bind(id),
        }
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// The connection ended before the SMSC answered: queue the row again (not counted as a
    /// failed attempt).
    pub async fn sms_unsent(&self, id: &str, error: &str, now: i64) -> Result<(), TopupError> {
        sqlx::query(
            "UPDATE sms_outbox SET state = 'queued', attempts = attempts - 1, last_error = $1,
                next_attempt_at = $2, updated_at = $2 WHERE id = $3 AND state = 'sending'",
        )
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Rows left in `sending` by a stop: back to `queued`. Returns how many.
    pub async fn requeue_sending(&self, now: i64) -> Result<u64, TopupError> {
        Ok(sqlx::query(
            "UPDATE sms_outbox SET state = 'queued', next_attempt_at = $1, updated_at = $1
             WHERE state = 'sending'",
        )
        .bind(now)
        .execute(self.db.pool())
        .await?
        .rows_affected())
    }

    /// Applies a delivery receipt for `message_id` from `smsc`.
    pub async fn sms_receipt(
        &self,
        smsc: &str,
        message_id: &str,
        delivered: bool,
        status: &str,
        now: i64,
    ) -> Result<ReceiptResult, TopupError> {
        let mut tx = self.db.begin().await?;
        // SMSCs disagree on whether receipts carry the id in hex or decimal: try both.
        let mut candidates = vec![message_id.to_string()];
        if let Ok(n) = u64::from_str_radix(message_id, 16) {
            candidates.push(n.to_string());
        }
        if let Ok(n) = message_id.parse::<u64>() {
            candidates.push(format!("{n:x}"));
            candidates.push(format!("{n:X}"));
        }
        let mut found = None;
        for c in &candidates {
            if let Some(r) = sqlx::query(
                "SELECT outbox_id, part FROM sms_parts WHERE smsc = $1 AND message_id = $2",
            )
            .bind(smsc)
            .bind(c)
            .fetch_optional(&mut *tx)
            .await?
            {
                found = Some((
                    r.try_get::<String, _>("outbox_id")?,
                    r.try_get::<i64, _>("part")?,
                ));
                break;
            }
        }
        let Some((outbox_id, part)) = found else {
            return Ok(ReceiptResult::Unknown);
        };
        sqlx::query(
            "UPDATE sms_parts SET state = $1, status = $2, updated_at = $3 WHERE outbox_id = $4 AND part = $5",
        )
        .bind(if delivered { "delivered" } else { "failed" })
        .bind(status)
        .bind(now)
        .bind(&outbox_id)
        .bind(part)
        .execute(&mut *tx)
        .await?;
        let r = sqlx::query(
            "SELECT COUNT(*) AS n, SUM(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END) AS d,
                SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS f
             FROM sms_parts WHERE outbox_id = $1",
        )
        .bind(&outbox_id)
        .fetch_one(&mut *tx)
        .await?;
        let (n, d, f): (i64, i64, i64) = (
            r.try_get("n")?,
            r.try_get::<Option<i64>, _>("d")?.unwrap_or(0),
            r.try_get::<Option<i64>, _>("f")?.unwrap_or(0),
        );
        let parts: i64 = sqlx::query("SELECT parts FROM sms_outbox WHERE id = $1")
            .bind(&outbox_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("parts")?;
        if f > 0 {
            sqlx::query(
                "UPDATE sms_outbox SET state = 'failed', last_error = $1, updated_at = $2
                 WHERE id = $3 AND state IN ('sent', 'sending')",
            )
            .bind(format!("part {part}: {status}"))
            .bind(now)
            .bind(&outbox_id)
            .execute(&mut *tx)
            .await?;
        } else if d == n && n >= parts {
            sqlx::query(
                "UPDATE sms_outbox SET state = 'delivered', delivered_at = $1, updated_at = $1
                 WHERE id = $2 AND state IN ('sent', 'sending')",
            )
            .bind(now)
            .bind(&outbox_id)
            .execute(&mut *tx)
            .await?;
        }
        let state: String = sqlx::query("SELECT state FROM sms_outbox WHERE id = $1")
            .bind(&outbox_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("state")?;
        tx.commit().await?;
        Ok(ReceiptResult::Applied { outbox_id, state })
    }

    /// Most recent SMS, optionally only those in `state` or to `destination`.
    pub async fn list_sms(
        &self,
        state: Option<&str>,
        destination: Option<&str>,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, TopupError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sms_outbox WHERE ($1 = '' OR state = $1) AND ($2 = '' OR destination = $2)
             ORDER BY created_at DESC, id LIMIT $3"
        )))
        .bind(state.unwrap_or(""))
        .bind(destination.unwrap_or(""))
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(row).collect()
    }

    pub async fn sms(&self, id: &str) -> Result<Option<(OutboxRow, Vec<PartRow>)>, TopupError> {
        let Some(r) = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sms_outbox WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?
        else {
            return Ok(None);
        };
        let parts = sqlx::query(
            "SELECT part, smsc, message_id, state, status, updated_at FROM sms_parts
             WHERE outbox_id = $1 ORDER BY part",
        )
        .bind(id)
        .fetch_all(self.db.pool())
        .await?
        .iter()
        .map(|p| {
            Ok(PartRow {
                part: p.try_get("part")?,
                smsc: p.try_get("smsc")?,
                message_id: p.try_get("message_id")?,
                state: p.try_get("state")?,
                status: p.try_get("status")?,
                updated_at: p.try_get("updated_at")?,
            })
        })
        .collect::<Result<Vec<_>, TopupError>>()?;
        Ok(Some((row(&r)?, parts)))
    }

    /// Queues a failed SMS again, or one waiting for its next attempt for now (staff, after
    /// fixing the cause). Parts the SMSC accepted before are not sent again.
    pub async fn retry_sms(&self, id: &str, now: i64) -> Result<bool, TopupError> {
        let n = sqlx::query(
            "UPDATE sms_outbox SET state = 'queued', attempts = 0, next_attempt_at = $1, updated_at = $1
             WHERE id = $2 AND state IN ('failed', 'queued')",
        )
        .bind(now)
        .bind(id)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        if n == 1 {
            // A failed part will be sent again: forget its old message id.
            sqlx::query("DELETE FROM sms_parts WHERE outbox_id = $1 AND state = 'failed'")
                .bind(id)
                .execute(self.db.pool())
                .await?;
        }
        Ok(n == 1)
    }

    /// Records an incoming message (PINs masked) and says whether to process it.
    pub async fn inbox_claim(
        &self,
        mo: &Mo,
        redacted: &str,
        now: i64,
    ) -> Result<InboxClaim, TopupError> {
        let n = sqlx::query(
            "INSERT INTO sms_inbox (id, smsc, source, destination, command, state, received_at, content_key)
             VALUES ($1, $2, $3, $4, $5, 'received', $6, $7) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&mo.id)
        .bind(&mo.smsc)
        .bind(&mo.sender)
        .bind(&mo.destination)
        .bind(redacted)
        .bind(now)
        .bind(&mo.content_key)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        if n == 1 {
            return Ok(InboxClaim::New);
        }
        let state: String = sqlx::query("SELECT state FROM sms_inbox WHERE id = $1")
            .bind(&mo.id)
            .fetch_one(self.db.pool())
            .await?
            .try_get("state")?;
        Ok(if state == "done" {
            InboxClaim::Done
        } else {
            InboxClaim::Unfinished
        })
    }

    /// The id of a message received since `since` with this content key (see
    /// `Pepper::mo_content_key`): the same message delivered again.
    pub async fn inbox_repeat_of(
        &self,
        content_key: &str,
        since: i64,
    ) -> Result<Option<String>, TopupError> {
        let row = sqlx::query(
            "SELECT id FROM sms_inbox WHERE content_key = $1 AND received_at >= $2
             ORDER BY received_at DESC LIMIT 1",
        )
        .bind(content_key)
        .bind(since)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    /// Sets the id an incoming message is recorded under: the SMSC's own (`smsc_id`), else
    /// the id of the same words from the same sender to the same number received within
    /// `window_ms` (delivered again), else a new one; a message without an SMSC id also gets
    /// its content key.
    pub async fn identify_mo(
        &self,
        mut mo: Mo,
        smsc_id: Option<&str>,
        window_ms: i64,
        now: i64,
    ) -> Result<Mo, TopupError> {
        if let Some(v) = smsc_id {
            mo.id = format!("{}:{v}", mo.smsc);
            return Ok(mo);
        }
        let key = self
            .pepper
            .mo_content_key(&mo.smsc, &mo.sender, &mo.destination, &mo.text);
        let earlier = if window_ms > 0 {
            self.inbox_repeat_of(&key, now - window_ms).await?
        } else {
            None
        };
        mo.id = earlier
            .unwrap_or_else(|| format!("{}:local:{now}:{:016x}", mo.smsc, rand::random::<u64>()));
        mo.content_key = Some(key);
        Ok(mo)
    }

    /// Marks an incoming message answered (inside the reply's transaction when there is one).
    pub async fn inbox_done(
        &self,
        conn: &mut AnyConnection,
        id: &str,
        outcome: &str,
        now: i64,
    ) -> Result<(), TopupError> {
        sqlx::query(
            "UPDATE sms_inbox SET state = 'done', outcome = $1, done_at = $2 WHERE id = $3",
        )
        .bind(outcome)
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Prepaid accounts whose available balance is below their threshold and that were not
    /// alerted since they went below get one alert; accounts back above are re-armed.
    /// Returns how many alerts were written.
    pub async fn alert_low_balances(&self, now: i64) -> Result<usize, TopupError> {
        if !self.notifications_on() {
            return Ok(0);
        }
        let rows = sqlx::query(
            "SELECT p.number, p.currency, p.low_balance, p.low_alerted, p.funding_account, p.language,
                a.credits_posted - a.debits_posted - a.debits_pending AS available
             FROM prepaid_accounts p JOIN accounts a ON a.id = p.account_id
             WHERE p.status = 'active'
               AND ((p.low_alerted = 0 AND a.credits_posted - a.debits_posted - a.debits_pending < p.low_balance)
                 OR (p.low_alerted = 1 AND a.credits_posted - a.debits_posted - a.debits_pending >= p.low_balance))",
        )
        .fetch_all(self.db.pool())
        .await?;
        let mut written = 0;
        for r in rows {
            let number: String = r.try_get("number")?;
            let alerted: i64 = r.try_get("low_alerted")?;
            let mut tx = self.db.begin().await?;
            if alerted == 1 {
                sqlx::query(
                    "UPDATE prepaid_accounts SET low_alerted = 0 WHERE number = $1 AND low_alerted = 1",
                )
                .bind(&number)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                continue;
            }
            let claimed = sqlx::query(
                "UPDATE prepaid_accounts SET low_alerted = 1 WHERE number = $1 AND low_alerted = 0",
            )
            .bind(&number)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if claimed == 0 {
                continue;
            }
            let cur: String = r.try_get("currency")?;
            let cur = crate::topup::money::Currency::new(&cur)
                .map_err(|_| TopupError::Corrupt(format!("prepaid {number}: currency")))?;
            let money = |minor: i64| crate::topup::money::Money::new(minor, cur).to_string();
            let funding: Option<String> = r.try_get("funding_account")?;
            let language: String = r.try_get("language")?;
            if self
                .notify(
                    &mut tx,
                    Notification {
                        id: format!("low:{number}:{now}"),
                        kind: if funding.is_some() {
                            "low_balance_funding"
                        } else {
                            "low_balance"
                        },
                        to: number.clone(),
                        language: Some(language),
                        vars: vec![
                            ("balance", money(r.try_get("available")?)),
                            ("threshold", money(r.try_get("low_balance")?)),
                            ("currency", cur.code().to_string()),
                        ],
                        reference: Some(accounts::prepaid(&number)),
                    },
                    now,
                )
                .await?
            {
                written += 1;
            }
            tx.commit().await?;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sms::testing::sms_cores;

    const NOW: i64 = 1_800_000_000_000;

    fn notice(id: &str) -> Notification {
        Notification {
            id: id.into(),
            kind: "wallet_locked",
            to: "+12015550100".into(),
            language: Some("en".into()),
            vars: vec![],
            reference: None,
        }
    }

    async fn state(core: &Core, id: &str) -> OutboxRow {
        core.sms(id).await.unwrap().unwrap().0
    }

    #[tokio::test]
    async fn a_row_goes_queued_sending_sent_delivered_and_is_written_once() {
        for (core, _g) in sms_cores().await {
            assert!(core.send_notification(notice("n1"), NOW).await.unwrap());
            assert!(
                !core.send_notification(notice("n1"), NOW + 1).await.unwrap(),
                "the same cause writes one SMS"
            );
            let due = core.due_sms(NOW, 10).await.unwrap();
            assert_eq!(due.len(), 1);
            assert_eq!(
                due[0].body,
                "Your wallet was locked after too many wrong PINs. Call us to unlock it."
            );
            assert!(core.claim_sms("n1", "main", 2, NOW).await.unwrap());
            assert!(
                !core.claim_sms("n1", "main", 2, NOW).await.unwrap(),
                "claimed once"
            );
            assert!(core.due_sms(NOW, 10).await.unwrap().is_empty());
            // Two parts: sent when both are accepted.
            assert!(
                !core
                    .sms_part_accepted("n1", 2, "main", "b", NOW)
                    .await
                    .unwrap()
            );
            assert_eq!(state(&core, "n1").await.state, "sending");
            assert!(
                core.sms_part_accepted("n1", 1, "main", "a", NOW)
                    .await
                    .unwrap()
            );
            assert_eq!(core.accepted_parts("n1").await.unwrap(), [1, 2]);
            let row = state(&core, "n1").await;
            assert_eq!((row.state.as_str(), row.attempts), ("sent", 1));
            // Receipts: one part delivered is not the message delivered.
            let r = core
                .sms_receipt("main", "a", true, "DELIVRD", NOW)
                .await
                .unwrap();
            assert_eq!(
                r,
                ReceiptResult::Applied {
                    outbox_id: "n1".into(),
                    state: "sent".into()
                }
            );
            assert!(
                core.sms_part_accepted("n1", 2, "main", "ff", NOW)
                    .await
                    .is_ok()
            );
            assert_eq!(
                core.sms_receipt("main", "zz", true, "DELIVRD", NOW)
                    .await
                    .unwrap(),
                ReceiptResult::Unknown
            );
            assert_eq!(
                core.sms_receipt("other", "a", true, "DELIVRD", NOW)
                    .await
                    .unwrap(),
                ReceiptResult::Unknown,
                "ids are per SMSC"
            );
            let r = core
                .sms_receipt("main", "b", true, "DELIVRD", NOW + 5)
                .await
                .unwrap();
            assert_eq!(
                r,
                ReceiptResult::Applied {
                    outbox_id: "n1".into(),
                    state: "delivered".into()
                }
            );
            assert_eq!(state(&core, "n1").await.delivered_at, Some(NOW + 5));
            assert!(
                !core.retry_sms("n1", NOW).await.unwrap(),
                "delivered is final"
            );
        }
    }

    #[tokio::test]
    async fn refusals_back_off_then_fail_and_staff_can_send_again() {
        for (core, _g) in sms_cores().await {
            core.send_notification(notice("n2"), NOW).await.unwrap();
            core.claim_sms("n2", "main", 1, NOW).await.unwrap();
            // A temporary refusal: queued again, due later.
            core.sms_refused("n2", "ESME_RMSGQFUL", Some(retry_at(NOW, 1)), NOW)
                .await
                .unwrap();
            let row = state(&core, "n2").await;
            assert_eq!(row.state, "queued");
            assert_eq!(row.last_error.as_deref(), Some("ESME_RMSGQFUL"));
            assert!(core.due_sms(NOW + 9_999, 10).await.unwrap().is_empty());
            assert_eq!(core.due_sms(NOW + 10_000, 10).await.unwrap().len(), 1);
            // The connection drops before an answer: queued, the attempt not counted.
            core.claim_sms("n2", "main", 1, NOW + 10_000).await.unwrap();
            assert_eq!(state(&core, "n2").await.attempts, 2);
            core.sms_unsent("n2", "connection lost", NOW + 10_001)
                .await
                .unwrap();
            let row = state(&core, "n2").await;
            assert_eq!((row.state.as_str(), row.attempts), ("queued", 1));
            // A final refusal fails it; a failed receipt fails a sent one.
            core.claim_sms("n2", "main", 1, NOW + 10_002).await.unwrap();
            core.sms_refused("n2", "ESME_RINVDSTADR", None, NOW + 10_003)
                .await
                .unwrap();
            assert_eq!(state(&core, "n2").await.state, "failed");
            assert!(core.retry_sms("n2", NOW + 20_000).await.unwrap());
            let row = state(&core, "n2").await;
            assert_eq!((row.state.as_str(), row.attempts), ("queued", 0));
            core.claim_sms("n2", "main", 1, NOW + 20_000).await.unwrap();
            core.sms_part_accepted("n2", 1, "main", "m9", NOW + 20_001)
                .await
                .unwrap();
            core.sms_receipt("main", "m9", false, "UNDELIV err:001", NOW + 20_002)
                .await
                .unwrap();
            let row = state(&core, "n2").await;
            assert_eq!(row.state, "failed");
            assert_eq!(row.last_error.as_deref(), Some("part 1: UNDELIV err:001"));
            // Sent again, the failed part goes out again (its old id forgotten).
            assert!(core.retry_sms("n2", NOW + 30_000).await.unwrap());
            assert!(core.accepted_parts("n2").await.unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn receipts_match_ids_written_in_hex_or_decimal() {
        for (core, _g) in sms_cores().await {
            core.send_notification(notice("n6"), NOW).await.unwrap();
            core.claim_sms("n6", "main", 1, NOW).await.unwrap();
            core.sms_part_accepted("n6", 1, "main", "255", NOW)
                .await
                .unwrap();
            let r = core
                .sms_receipt("main", "ff", true, "DELIVRD", NOW)
                .await
                .unwrap();
            assert_eq!(
                r,
                ReceiptResult::Applied {
                    outbox_id: "n6".into(),
                    state: "delivered".into()
                }
            );
        }
    }

    #[tokio::test]
    async fn rows_left_sending_by_a_stop_are_queued_again() {
        for (core, _g) in sms_cores().await {
            core.send_notification(notice("n3"), NOW).await.unwrap();
            core.send_notification(notice("n4"), NOW).await.unwrap();
            core.claim_sms("n3", "main", 1, NOW).await.unwrap();
            assert_eq!(core.requeue_sending(NOW + 1).await.unwrap(), 1);
            assert_eq!(core.due_sms(NOW + 1, 10).await.unwrap().len(), 2);
            let listed = core
                .list_sms(Some("queued"), Some("+12015550100"), 10)
                .await
                .unwrap();
            assert_eq!(listed.len(), 2);
            assert!(
                core.list_sms(Some("sent"), None, 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    }
}
