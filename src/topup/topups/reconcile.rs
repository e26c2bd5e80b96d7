//! The reconciler: pending top-ups are asked about again, backing off, until the carrier knows.

use super::*;

impl Core {
    /// Asks the carriers about these top-ups now (those still pending; an agent's request).
    pub async fn check_topups_now(
        &self,
        ids: &[String],
        adapters: &Adapters,
        now: i64,
    ) -> Result<String, TopupError> {
        let mut due = 0;
        for id in ids {
            due += sqlx::query(
                "UPDATE topups SET next_check_at = $1 WHERE id = $2 AND state = 'pending'",
            )
            .bind(now)
            .bind(id)
            .execute(self.db.pool())
            .await?
            .rows_affected();
        }
        if due == 0 {
            return Ok("no pending top-up".into());
        }
        let r = self.reconcile(adapters, now, 100).await?;
        Ok(format!(
            "{} checked: {} succeeded, {} failed, {} still pending",
            r.checked, r.succeeded, r.failed, r.still_pending
        ))
    }

    /// Makes every pending top-up due now, whatever its backoff (`topups reconcile --all`).
    pub async fn make_pending_due(&self, now: i64) -> Result<u64, TopupError> {
        Ok(
            sqlx::query("UPDATE topups SET next_check_at = $1 WHERE state = 'pending'")
                .bind(now)
                .execute(self.db.pool())
                .await?
                .rows_affected(),
        )
    }

    /// Resolves pending top-ups that are due: asks the carrier, resends those it never got.
    pub async fn reconcile(
        &self,
        adapters: &Adapters,
        now: i64,
        limit: i64,
    ) -> Result<ReconcileReport, TopupError> {
        let rows = sqlx::query(
            "SELECT id, recipient, carrier_id, product_id, receive_minor, receive_currency FROM topups
             WHERE state = 'pending' AND (next_check_at IS NULL OR next_check_at <= $1)
             ORDER BY next_check_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        let mut report = ReconcileReport::default();
        for r in rows {
            let id: String = r.try_get("id")?;
            let recipient: String = r.try_get("recipient")?;
            let product_id: String = r.try_get("product_id")?;
            let cur: String = r.try_get("receive_currency")?;
            let cur = Currency::new(&cur)
                .map_err(|_| TopupError::Corrupt(format!("top-up {id}: currency")))?;
            let carrier_id: String = r.try_get("carrier_id")?;
            let Some(carrier) = self.carrier(&carrier_id).await? else {
                continue;
            };
            let delivery = Delivery {
                id: &id,
                recipient: &recipient,
                amount: Money::new(r.try_get("receive_minor")?, cur),
                product_id: &product_id,
                carrier: &carrier,
            };
            let mut outcome = adapters.status(self, &delivery).await;
            if outcome == Outcome::NotFound {
                // It never arrived: send it (the carrier deduplicates by our id).
                outcome = adapters.send(self, &delivery, now).await;
            }
            self.settle(&id, &outcome, now).await?;
            report.checked += 1;
            match outcome {
                Outcome::Succeeded { .. } => report.succeeded += 1,
                Outcome::Failed { .. } => report.failed += 1,
                _ => report.still_pending += 1,
            }
        }
        Ok(report)
    }
}

/// First re-check of a pending top-up, and the longest gap between checks.
pub(super) const FIRST_CHECK_MS: i64 = 30_000;
pub(super) const MAX_CHECK_MS: i64 = 3_600_000;

/// Pure: when to ask again after `attempts` unanswered checks (30 s doubling, at most 1 h).
pub fn next_check(now: i64, attempts: i64) -> i64 {
    now + (FIRST_CHECK_MS << attempts.clamp(0, 10)).min(MAX_CHECK_MS)
}

/// What a reconciliation pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub checked: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub still_pending: usize,
}
