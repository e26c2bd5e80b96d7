//! Settling a top-up on the carrier's answer, reversing a delivered one, and the messages a settled
//! top-up causes.

use super::*;

impl Core {
    /// Applies a carrier's answer to a pending top-up. Settling twice is harmless.
    pub async fn settle(&self, id: &str, outcome: &Outcome, now: i64) -> Result<(), TopupError> {
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(
            "SELECT state, attempts, funding, recipient, carrier_id FROM topups WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| TopupError::Corrupt(format!("no top-up {id}")))?;
        if TopupState::from_row(&row)? != TopupState::Pending {
            return Ok(());
        }
        let carrier: String = row.try_get("carrier_id")?;
        let attempts: i64 = row.try_get("attempts")?;
        let transfer_ids = [format!("{id}:pay"), format!("{id}:fx")];
        match outcome {
            Outcome::Succeeded { carrier_ref } => {
                for t in &transfer_ids {
                    if crate::topup::books::transfer_by_id(&mut tx, t)
                        .await?
                        .is_some()
                    {
                        post(&mut tx, t, now).await?;
                    }
                }
                sqlx::query(
                    "UPDATE topups SET state = 'succeeded', carrier_ref = $1, error = NULL, next_check_at = NULL,
                        updated_at = $2 WHERE id = $3 AND state = 'pending'",
                )
                .bind(carrier_ref)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                let funding: String = row.try_get("funding")?;
                if let Some(wallet) = funding.strip_prefix("wallet:") {
                    let recipient: String = row.try_get("recipient")?;
                    self.remember_recipient(&mut tx, wallet, &recipient, now)
                        .await?;
                }
                self.notify_settled(&mut tx, id, Final::Succeeded, now)
                    .await?;
                self.enqueue_webhook(&mut tx, id, now).await?;
            }
            Outcome::Failed { reason } => {
                for t in &transfer_ids {
                    if crate::topup::books::transfer_by_id(&mut tx, t)
                        .await?
                        .is_some()
                    {
                        void(&mut tx, t, now).await?;
                    }
                }
                sqlx::query(
                    "UPDATE topups SET state = 'failed', error = $1, next_check_at = NULL, updated_at = $2
                     WHERE id = $3 AND state = 'pending'",
                )
                .bind(reason)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                self.notify_settled(&mut tx, id, Final::Failed, now).await?;
                self.enqueue_webhook(&mut tx, id, now).await?;
            }
            Outcome::Unknown { reason } => {
                sqlx::query("UPDATE topups SET attempts = $1, next_check_at = $2, error = $3, updated_at = $4 WHERE id = $5")
                    .bind(attempts + 1)
                    .bind(next_check(now, attempts))
                    .bind(reason)
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            Outcome::NotFound => {
                sqlx::query("UPDATE topups SET attempts = $1, next_check_at = $2, updated_at = $3 WHERE id = $4")
                    .bind(attempts + 1)
                    .bind(next_check(now, attempts))
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        let result = match outcome {
            Outcome::Succeeded { .. } => Some("succeeded"),
            Outcome::Failed { .. } => Some("failed"),
            _ => None,
        };
        if let Some(result) = result {
            metrics::counter!("topup_ivr_topups_total", "result" => result, "carrier" => carrier)
                .increment(1);
        }
        Ok(())
    }

    /// Undoes a delivered top-up that the carrier reversed afterwards (the recipient's credit
    /// was taken back): a compensating transfer returns each posted movement of the top-up to
    /// where it came from, the top-up becomes `reversed`, the payer gets an SMS and the API
    /// client its webhook, all in one transaction. A pending top-up that the carrier reverses
    /// simply failed; a failed or already reversed one is left alone. Returns whether this
    /// call changed anything (a repeated notice does not).
    pub async fn reverse(&self, id: &str, reason: &str, now: i64) -> Result<bool, TopupError> {
        let row = sqlx::query("SELECT state, carrier_id FROM topups WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| TopupError::Corrupt(format!("no top-up {id}")))?;
        let carrier: String = row.try_get("carrier_id")?;
        match TopupState::from_row(&row)? {
            TopupState::Pending => {
                self.settle(
                    id,
                    &Outcome::Failed {
                        reason: reason.to_string(),
                    },
                    now,
                )
                .await?;
                return Ok(true);
            }
            TopupState::Succeeded => {}
            TopupState::Failed | TopupState::Reversed => return Ok(false),
        }
        let mut tx = self.db.begin().await?;
        // Claim the change first: of two racing notices, one finds nothing left to do.
        let claimed = sqlx::query(
            "UPDATE topups SET state = 'reversed', error = $1, updated_at = $2
             WHERE id = $3 AND state = 'succeeded'",
        )
        .bind(reason)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            return Ok(false);
        }
        for t in [format!("{id}:pay"), format!("{id}:fx")] {
            let Some(original) = crate::topup::books::transfer_by_id(&mut tx, &t).await? else {
                continue;
            };
            if let Some(back) = crate::topup::ledger::reversal(&original) {
                transfer(&mut tx, &back, now).await?;
            }
        }
        self.notify_settled(&mut tx, id, Final::Reversed, now)
            .await?;
        self.enqueue_webhook(&mut tx, id, now).await?;
        tx.commit().await?;
        metrics::counter!("topup_ivr_topups_total", "result" => "reversed", "carrier" => carrier)
            .increment(1);
        Ok(true)
    }
    /// Writes the SMS a settled top-up causes, in the settling transaction: to the payer
    /// (confirmation or failure notice, when the payer is a wallet or a prepaid account's
    /// linked funding) and, on success, to the recipient (with the sender's message).
    pub(super) async fn notify_settled(
        &self,
        conn: &mut AnyConnection,
        id: &str,
        outcome: Final,
        now: i64,
    ) -> Result<(), TopupError> {
        let succeeded = outcome == Final::Succeeded;
        if !self.notifications_on() {
            return Ok(());
        }
        let r = sqlx::query(
            "SELECT t.funding, t.payer, t.recipient, t.carrier_id, t.send_minor, t.send_currency,
                t.receive_minor, t.receive_currency, t.message, c.name AS carrier_name
             FROM topups t LEFT JOIN carriers c ON c.id = t.carrier_id WHERE t.id = $1",
        )
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
        let money = |minor: &str, cur: &str| -> Result<Money, TopupError> {
            let c: String = r.try_get(cur)?;
            let c = Currency::new(&c)
                .map_err(|_| TopupError::Corrupt(format!("top-up {id}: currency")))?;
            Ok(Money::new(r.try_get(minor)?, c))
        };
        let sent = money("send_minor", "send_currency")?;
        let received = money("receive_minor", "receive_currency")?;
        let funding: String = r.try_get("funding")?;
        let payer: String = r.try_get("payer")?;
        let recipient: String = r.try_get("recipient")?;
        let carrier: String = r
            .try_get::<Option<String>, _>("carrier_name")?
            .unwrap_or(r.try_get("carrier_id")?);
        let message: Option<String> = r.try_get("message")?;
        // Who pays, as a phone we can write to, and the balance they are left with.
        let (payer_number, balance_account) = match funding.split_once(':') {
            Some(("wallet", n)) => (Some(n.to_string()), Some(accounts::wallet(n))),
            Some(("funding", n)) => (Some(n.to_string()), Some(accounts::prepaid(n))),
            _ => (None, None),
        };
        let balance = match &balance_account {
            Some(a) => crate::topup::books::account(conn, a)
                .await?
                .map(|a| a.available_money().to_string())
                .unwrap_or_default(),
            None => String::new(),
        };
        let to_self = payer_number.as_deref() == Some(recipient.as_str());
        let vars = |extra: Vec<(&'static str, String)>| {
            let mut v = vec![
                ("amount", received.to_string()),
                ("price", sent.to_string()),
                ("currency", received.currency.code().to_string()),
                ("recipient", recipient.clone()),
                ("carrier", carrier.clone()),
                ("reference", id.to_string()),
                ("balance", balance.clone()),
            ];
            v.extend(extra);
            v
        };
        use crate::topup::notify::Notification;
        if let Some(p) = &payer_number {
            let kind = match (outcome, funding.starts_with("funding:") && to_self) {
                (Final::Succeeded, true) => "account_recharged",
                (Final::Succeeded, false) => "topup_sent",
                (Final::Failed, _) => "topup_failed",
                (Final::Reversed, _) => "topup_reversed",
            };
            self.notify(
                conn,
                Notification {
                    id: match outcome {
                        Final::Reversed => format!("{id}:payer:reversed"),
                        _ => format!("{id}:payer"),
                    },
                    kind,
                    to: p.clone(),
                    language: None,
                    vars: vars(vec![]),
                    reference: Some(id.to_string()),
                },
                now,
            )
            .await?;
        }
        if succeeded && !to_self {
            let name: Option<String> = match funding.strip_prefix("wallet:") {
                Some(w) => sqlx::query("SELECT name FROM wallets WHERE number = $1")
                    .bind(w)
                    .fetch_optional(&mut *conn)
                    .await?
                    .map(|r| r.try_get::<Option<String>, _>("name"))
                    .transpose()?
                    .flatten(),
                None => None,
            };
            let sender = name.filter(|n| !n.trim().is_empty()).unwrap_or(payer);
            let (kind, extra) = match message {
                Some(m) => (
                    "topup_received_message",
                    vec![("sender", sender), ("message", m)],
                ),
                None => ("topup_received", vec![("sender", sender)]),
            };
            self.notify(
                conn,
                Notification {
                    id: format!("{id}:recipient"),
                    kind,
                    to: recipient.clone(),
                    language: None,
                    vars: vars(extra),
                    reference: Some(id.to_string()),
                },
                now,
            )
            .await?;
        }
        Ok(())
    }
}

/// How a top-up ended, for the messages it causes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Final {
    Succeeded,
    Failed,
    Reversed,
}
