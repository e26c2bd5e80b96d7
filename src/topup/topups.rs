//! The top-up operation, exactly once.
//!
//! 1. Record the request and reserve the money in one transaction: the top-up row (its id is
//!    the client's idempotency key and the carrier's external reference) and pending ledger
//!    transfers from the payer to the carrier's account (through the FX accounts when the
//!    currencies differ).
//! 2. Ask the carrier (outside any transaction).
//! 3. Settle: success posts the transfers, failure voids them, an unknown outcome leaves them
//!    pending with a next check time. The reconciler later asks the carrier and settles.
//!
//! A crash between 1 and 3 leaves a pending top-up that the reconciler resolves; retrying a
//! request with the same id returns the first result; the same id with different details is
//! refused. Money is reserved before the carrier is asked, so a payer can never spend the same
//! balance twice.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};

use super::adapters::{Adapters, Delivery, Outcome};
use super::books::{open_account, post, transfer, void};
use super::ledger::{AccountKind, TransferSpec, accounts};
use super::money::{Currency, Money};
use super::numbers::{Hlr, parse_number};
use super::{Core, TopupError};

/// Where the money comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Funding {
    /// A wallet (its owner already authenticated).
    Wallet(String),
    /// A ledger account (a retailer's float, for the API and the command line).
    Account(String),
    /// The linked funding source of prepaid account `number` (its owner already
    /// authenticated with the account's number and PIN).
    Linked(String),
}

impl Funding {
    fn account_id(&self) -> String {
        match self {
            Funding::Wallet(n) => accounts::wallet(n),
            Funding::Account(a) => a.clone(),
            Funding::Linked(n) => accounts::funding(n),
        }
    }

    fn label(&self) -> String {
        match self {
            Funding::Wallet(n) => format!("wallet:{n}"),
            Funding::Account(a) => format!("account:{a}"),
            Funding::Linked(n) => format!("funding:{n}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TopupRequest {
    /// Unique per request: the client's idempotency key or a generated id.
    pub id: String,
    pub channel: String,
    pub funding: Funding,
    pub payer: String,
    pub recipient: String,
    pub product_id: String,
    /// For range products: what the sender wants to spend.
    pub amount: Option<Money>,
    /// The sender's words for the recipient's SMS ("Happy birthday").
    pub message: Option<String>,
}

/// Longest sender message kept with a top-up.
pub const MAX_MESSAGE_CHARS: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Receipt {
    pub id: String,
    /// pending, succeeded, failed, reversed
    pub state: String,
    pub recipient: String,
    pub carrier_id: String,
    pub product_id: String,
    pub sent: String,
    pub received: String,
    pub carrier_ref: Option<String>,
    pub error: Option<String>,
    pub funding: String,
    pub payer: String,
    pub channel: String,
    pub attempts: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// The paying account's available balance when the receipt was read.
    pub payer_balance: Option<String>,
}

impl Receipt {
    pub fn sent_money(&self) -> Option<Money> {
        Money::parse(&self.sent).ok()
    }

    pub fn received_money(&self) -> Option<Money> {
        Money::parse(&self.received).ok()
    }
}

/// First re-check of a pending top-up, and the longest gap between checks.
const FIRST_CHECK_MS: i64 = 30_000;
const MAX_CHECK_MS: i64 = 3_600_000;

/// Pure: when to ask again after `attempts` unanswered checks (30 s doubling, at most 1 h).
pub fn next_check(now: i64, attempts: i64) -> i64 {
    now + (FIRST_CHECK_MS << attempts.clamp(0, 10)).min(MAX_CHECK_MS)
}

fn request_hash(
    funding: &Funding,
    payer: &str,
    recipient: &str,
    product: &str,
    amount: Option<Money>,
    message: Option<&str>,
) -> String {
    let mut canon = format!(
        "{}|{payer}|{recipient}|{product}|{}",
        funding.label(),
        amount.map(|a| a.to_string()).unwrap_or_default()
    );
    if let Some(m) = message {
        canon.push('|');
        canon.push_str(m);
    }
    hex::encode(Sha256::digest(canon.as_bytes()))
}

/// What a reconciliation pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub checked: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub still_pending: usize,
}

const RECEIPT_COLUMNS: &str = "id, state, recipient, carrier_id, product_id, send_minor, send_currency, receive_minor,
    receive_currency, carrier_ref, error, funding, payer, channel, attempts, created_at, updated_at";

fn receipt_from_row(r: &sqlx::any::AnyRow) -> Result<Receipt, TopupError> {
    let id: String = r.try_get("id")?;
    let money = |minor: &str, cur: &str| -> Result<String, TopupError> {
        let c: String = r.try_get(cur)?;
        let c =
            Currency::new(&c).map_err(|_| TopupError::Corrupt(format!("top-up {id}: currency")))?;
        Ok(Money::new(r.try_get(minor)?, c).to_string())
    };
    Ok(Receipt {
        state: r.try_get("state")?,
        recipient: r.try_get("recipient")?,
        carrier_id: r.try_get("carrier_id")?,
        product_id: r.try_get("product_id")?,
        sent: money("send_minor", "send_currency")?,
        received: money("receive_minor", "receive_currency")?,
        carrier_ref: r.try_get("carrier_ref")?,
        error: r.try_get("error")?,
        funding: r.try_get("funding")?,
        payer: r.try_get("payer")?,
        channel: r.try_get("channel")?,
        attempts: r.try_get("attempts")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        payer_balance: None,
        id,
    })
}

impl Core {
    /// Tops up `req.recipient` with `req.product_id`, paid from `req.funding`.
    pub async fn topup(
        &self,
        adapters: &Adapters,
        hlr: Option<&Hlr>,
        req: &TopupRequest,
        now: i64,
    ) -> Result<Receipt, TopupError> {
        let started = std::time::Instant::now();
        let r = self.topup_inner(adapters, hlr, req, now).await;
        let outcome = match &r {
            Ok(receipt) => receipt.state.clone(),
            Err(e) => e.code().to_string(),
        };
        metrics::histogram!("topup_ivr_topup_seconds", "channel" => req.channel.clone(), "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        r
    }

    async fn topup_inner(
        &self,
        adapters: &Adapters,
        hlr: Option<&Hlr>,
        req: &TopupRequest,
        now: i64,
    ) -> Result<Receipt, TopupError> {
        if req.id.is_empty() || req.id.len() > 128 {
            return Err(TopupError::RequestConflict(
                "top-up ids are 1 to 128 characters".into(),
            ));
        }
        let e164 = parse_number(&req.recipient)?.e164;
        let message: Option<String> = req
            .message
            .as_deref()
            .map(|m| m.trim().chars().take(MAX_MESSAGE_CHARS).collect::<String>())
            .filter(|m| !m.is_empty());
        let hash = request_hash(
            &req.funding,
            &req.payer,
            &e164,
            &req.product_id,
            req.amount,
            message.as_deref(),
        );
        if let Some(existing) = self.existing(&req.id, &hash).await? {
            return Ok(existing);
        }
        let number = self.lookup_number(&e164, hlr).await?;
        let carrier_id = number.carrier_id.clone().ok_or(TopupError::NoCarrier)?;
        let product = self
            .product(&req.product_id)
            .await?
            .ok_or_else(|| TopupError::NoProduct(req.product_id.clone()))?;
        if product.carrier_id != carrier_id {
            return Err(TopupError::NoProductForNumber);
        }
        let carrier = self
            .carrier(&carrier_id)
            .await?
            .filter(|c| c.status == "active")
            .ok_or(TopupError::NoCarrier)?;
        let (send, receive) = product.quote(req.amount)?;

        // 1. Record and reserve.
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO topups (id, request_hash, channel, funding, payer, recipient, carrier_id, product_id,
                send_minor, send_currency, receive_minor, receive_currency, state, attempts, next_check_at,
                created_at, updated_at, message)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'pending', 0, $13, $14, $14, $15)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&req.id)
        .bind(&hash)
        .bind(&req.channel)
        .bind(req.funding.label())
        .bind(&req.payer)
        .bind(&e164)
        .bind(&carrier_id)
        .bind(&product.id)
        .bind(send.minor)
        .bind(send.currency.code())
        .bind(receive.minor)
        .bind(receive.currency.code())
        .bind(now + FIRST_CHECK_MS)
        .bind(now)
        .bind(&message)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            drop(tx);
            return self
                .existing(&req.id, &hash)
                .await?
                .ok_or_else(|| TopupError::Corrupt(format!("top-up {} vanished", req.id)));
        }
        let carrier_account = accounts::carrier(&carrier_id, receive.currency);
        open_account(
            &mut tx,
            &carrier_account,
            receive.currency,
            AccountKind::Carrier,
            now,
        )
        .await?;
        for spec in reservation(
            &req.id,
            &req.funding.account_id(),
            &carrier_account,
            send,
            receive,
        ) {
            if spec.debit.starts_with("system:") {
                open_account(
                    &mut tx,
                    &spec.debit,
                    spec.amount.currency,
                    AccountKind::System,
                    now,
                )
                .await?;
            }
            if spec.credit.starts_with("system:") {
                open_account(
                    &mut tx,
                    &spec.credit,
                    spec.amount.currency,
                    AccountKind::System,
                    now,
                )
                .await?;
            }
            transfer(&mut tx, &spec, now).await?;
        }
        tx.commit().await?;

        // 2. Ask the carrier.
        let delivery = Delivery {
            id: &req.id,
            recipient: &e164,
            amount: receive,
            product_id: &product.id,
            carrier: &carrier,
        };
        let outcome = adapters.send(self, &delivery, now).await;
        // 3. Settle.
        self.settle(&req.id, &outcome, now).await?;
        self.topup_receipt(&req.id)
            .await?
            .ok_or_else(|| TopupError::Corrupt(format!("top-up {} vanished", req.id)))
    }

    async fn existing(&self, id: &str, hash: &str) -> Result<Option<Receipt>, TopupError> {
        let Some(r) = sqlx::query("SELECT request_hash FROM topups WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
        else {
            return Ok(None);
        };
        let stored: String = r.try_get("request_hash")?;
        if stored != hash {
            return Err(TopupError::RequestConflict(id.to_string()));
        }
        self.topup_receipt(id).await
    }

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
        let state: String = row.try_get("state")?;
        if state != "pending" {
            return Ok(());
        }
        let carrier: String = row.try_get("carrier_id")?;
        let attempts: i64 = row.try_get("attempts")?;
        let transfer_ids = [format!("{id}:pay"), format!("{id}:fx")];
        match outcome {
            Outcome::Succeeded { carrier_ref } => {
                for t in &transfer_ids {
                    if super::books::transfer_by_id(&mut tx, t).await?.is_some() {
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
                    if super::books::transfer_by_id(&mut tx, t).await?.is_some() {
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
        let state: String = row.try_get("state")?;
        let carrier: String = row.try_get("carrier_id")?;
        match state.as_str() {
            "pending" => {
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
            "succeeded" => {}
            _ => return Ok(false),
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
            let Some(original) = super::books::transfer_by_id(&mut tx, &t).await? else {
                continue;
            };
            if let Some(back) = super::ledger::reversal(&original) {
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

    /// Writes the SMS a settled top-up causes, in the settling transaction: to the payer
    /// (confirmation or failure notice, when the payer is a wallet or a prepaid account's
    /// linked funding) and, on success, to the recipient (with the sender's message).
    async fn notify_settled(
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
            Some(a) => super::books::account(conn, a)
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

    pub async fn topup_receipt(&self, id: &str) -> Result<Option<Receipt>, TopupError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RECEIPT_COLUMNS} FROM topups WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        let Some(mut r) = row.as_ref().map(receipt_from_row).transpose()? else {
            return Ok(None);
        };
        self.fill_payer_balance(&mut r).await?;
        Ok(Some(r))
    }

    async fn fill_payer_balance(&self, r: &mut Receipt) -> Result<(), TopupError> {
        let account_id = match r.funding.split_once(':') {
            Some(("wallet", n)) => accounts::wallet(n),
            Some(("account", a)) => a.to_string(),
            _ => return Ok(()),
        };
        let mut conn = self.db.pool().acquire().await?;
        r.payer_balance = super::books::account(&mut conn, &account_id)
            .await?
            .map(|a| a.available_money().to_string());
        Ok(())
    }

    /// Most recent top-ups, optionally only those in `state`.
    pub async fn list_topups(
        &self,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Receipt>, TopupError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RECEIPT_COLUMNS} FROM topups WHERE ($1 = '' OR state = $1) ORDER BY created_at DESC, id LIMIT $2"
        )))
        .bind(state.unwrap_or(""))
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        let mut out = rows
            .iter()
            .map(receipt_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        for r in &mut out {
            self.fill_payer_balance(r).await?;
        }
        Ok(out)
    }
}

/// How a top-up ended, for the messages it causes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Final {
    Succeeded,
    Failed,
    Reversed,
}

/// The pending transfers that reserve a top-up's money: payer → carrier in one currency, or
/// payer → FX (sender's currency) and FX → carrier (recipient's currency).
fn reservation(
    id: &str,
    payer: &str,
    carrier_account: &str,
    send: Money,
    receive: Money,
) -> Vec<TransferSpec> {
    let spec = |suffix: &str, debit: String, credit: String, amount: Money| TransferSpec {
        id: format!("{id}:{suffix}"),
        debit,
        credit,
        amount,
        kind: "topup".into(),
        pending: true,
    };
    if send == receive {
        return vec![spec("pay", payer.into(), carrier_account.into(), send)];
    }
    // Through FX (two currencies), or through fees (one currency, the margin stays there).
    let (into, out_of) = if send.currency == receive.currency {
        (
            accounts::fees(send.currency),
            accounts::fees(receive.currency),
        )
    } else {
        (accounts::fx(send.currency), accounts::fx(receive.currency))
    };
    vec![
        spec("pay", payer.into(), into, send),
        spec("fx", out_of, carrier_account.into(), receive),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_back_off_to_an_hour() {
        assert_eq!(next_check(0, 0), 30_000);
        assert_eq!(next_check(0, 1), 60_000);
        assert_eq!(next_check(0, 7), 3_600_000);
        assert_eq!(next_check(0, 50), 3_600_000);
    }

    #[test]
    fn reservation_routes_through_fx_when_currencies_differ() {
        let usd = Money::parse("5.99USD").unwrap();
        let mxn = Money::parse("100MXN").unwrap();
        let v = reservation("t", "wallet:+1", "carrier:x:MXN", usd, mxn);
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].debit.as_str(), v[0].credit.as_str()),
            ("wallet:+1", "system:fx:USD")
        );
        assert_eq!(
            (v[1].debit.as_str(), v[1].credit.as_str()),
            ("system:fx:MXN", "carrier:x:MXN")
        );
        let same = reservation("t", "wallet:+1", "carrier:x:USD", usd, usd);
        assert_eq!(same.len(), 1);
        assert_eq!(same[0].credit, "carrier:x:USD");
        let margin = reservation(
            "t",
            "wallet:+1",
            "carrier:x:USD",
            usd,
            Money::parse("5.00USD").unwrap(),
        );
        assert_eq!(margin.len(), 2);
        assert_eq!(margin[1].debit, "system:fees:USD");
    }

    mod flows {
        use super::super::*;
        use crate::topup::books::check_books;
        use crate::topup::secrets::Pin;
        use crate::topup::testing::cores;
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex};

        const NOW: i64 = 1_800_000_000_000;

        const CARRIERS: &str = r#"
[[carrier]]
id = "telcel-mx"
name = "Telcel"
country = "MX"
currency = "MXN"
adapter = "sandbox"
prefixes = ["52"]
[[carrier.product]]
id = "telcel-100"
kind = "fixed"
label = "100 pesos"
price = "5.99USD"
receive = "100MXN"
[[carrier.product]]
id = "telcel-open"
kind = "range"
label = "Any amount"
min = "1.00USD"
max = "50.00USD"
rate = "17.05"

[[carrier]]
id = "ivr-mobile"
name = "IVR Mobile"
country = "US"
currency = "USD"
adapter = "builtin"
prefixes = ["1201555"]
[[carrier.product]]
id = "ivr-5"
kind = "fixed"
label = "5 dollars"
price = "5.00USD"
receive = "5.00USD"
"#;

        /// A core with the sample carriers and a wallet holding `funds` (from a card).
        async fn funded(core: &Core, wallet: &str, funds: &str) {
            core.import_carriers(CARRIERS, NOW).await.unwrap();
            let value = Money::parse(funds).unwrap();
            let cards = core
                .generate_cards("T", 1, value, NOW + 86_400_000, NOW)
                .await
                .unwrap();
            core.redeem_card(&cards[0].pin, None, wallet, NOW)
                .await
                .unwrap();
        }

        fn req(id: &str, wallet: &str, to: &str, product: &str) -> TopupRequest {
            TopupRequest {
                id: id.into(),
                channel: "test".into(),
                funding: Funding::Wallet(wallet.into()),
                payer: wallet.into(),
                recipient: to.into(),
                product_id: product.into(),
                amount: None,
                message: None,
            }
        }

        async fn balanced(core: &Core) {
            let r = check_books(&core.db).await.unwrap();
            assert!(r.balanced(), "{r:?}");
        }

        #[tokio::test]
        async fn a_top_up_succeeds_once_and_retries_return_the_same_receipt() {
            for (core, _g) in cores().await {
                let a = Adapters::new();
                funded(&core, "+12015550100", "10.00USD").await;
                let r = core
                    .topup(
                        &a,
                        None,
                        &req("t1", "+12015550100", "+52 55 1234 5678", "telcel-100"),
                        NOW,
                    )
                    .await
                    .unwrap();
                assert_eq!(
                    (r.state.as_str(), r.sent.as_str(), r.received.as_str()),
                    ("succeeded", "5.99 USD", "100.00 MXN")
                );
                assert_eq!(r.carrier_ref.as_deref(), Some("SBX-t1"));
                assert_eq!(r.payer_balance.as_deref(), Some("4.01 USD"));
                assert_eq!(
                    core.wallet_balance("+12015550100")
                        .await
                        .unwrap()
                        .to_string(),
                    "4.01 USD"
                );
                let again = core
                    .topup(
                        &a,
                        None,
                        &req("t1", "+12015550100", "525512345678", "telcel-100"),
                        NOW + 5,
                    )
                    .await
                    .unwrap();
                assert_eq!(again, r, "same request, same receipt");
                assert_eq!(
                    core.wallet_balance("+12015550100")
                        .await
                        .unwrap()
                        .to_string(),
                    "4.01 USD"
                );
                let e = core
                    .topup(
                        &a,
                        None,
                        &req("t1", "+12015550100", "525512345678", "telcel-open"),
                        NOW,
                    )
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), "conflict");
                assert_eq!(
                    core.recent_recipients("+12015550100", 5).await.unwrap(),
                    ["+525512345678"]
                );
                balanced(&core).await;
            }
        }

        #[tokio::test]
        async fn carrier_notices_settle_late_successes_and_reversals_return_the_money_once() {
            use crate::topup::notices::{Applied, Notice, Status};
            let notice = |event: &str, id: &str, status| Notice {
                event_id: event.into(),
                external_id: id.into(),
                status,
                transaction_id: Some("TX-1".into()),
                message: None,
            };
            for (core, _g) in cores().await {
                let a = Adapters::new();
                funded(&core, "+12015550107", "10.00USD").await;
                let w = "+12015550107";
                let balance = |core: &Core| {
                    let core = core.clone();
                    async move { core.wallet_balance(w).await.unwrap().to_string() }
                };
                // Delivered, then reversed: both movements come back, once.
                let r = core
                    .topup(&a, None, &req("r1", w, "+525512345678", "telcel-100"), NOW)
                    .await
                    .unwrap();
                assert_eq!(r.state, "succeeded");
                assert_eq!(balance(&core).await, "4.01 USD");
                let rev = notice("ev-1", "r1", Status::Reversed);
                assert_eq!(
                    core.carrier_notice("telcel-mx", &rev, NOW + 10)
                        .await
                        .unwrap(),
                    Applied::Reversed
                );
                assert_eq!(balance(&core).await, "10.00 USD");
                let receipt = core.topup_receipt("r1").await.unwrap().unwrap();
                assert_eq!(receipt.state, "reversed");
                for t in ["r1:pay:reversal", "r1:fx:reversal"] {
                    let mut conn = core.db.pool().acquire().await.unwrap();
                    let t = crate::topup::books::transfer_by_id(&mut conn, t)
                        .await
                        .unwrap()
                        .unwrap_or_else(|| panic!("{t} missing"));
                    assert_eq!(t.kind, "reversal");
                }
                // The same notice again, and the same news under another event id.
                assert_eq!(
                    core.carrier_notice("telcel-mx", &rev, NOW + 11)
                        .await
                        .unwrap(),
                    Applied::Duplicate
                );
                assert_eq!(
                    core.carrier_notice(
                        "telcel-mx",
                        &notice("ev-2", "r1", Status::Reversed),
                        NOW + 12
                    )
                    .await
                    .unwrap(),
                    Applied::Ignored
                );
                // A success after the reversal contradicts it: recorded, nothing moves.
                assert_eq!(
                    core.carrier_notice(
                        "telcel-mx",
                        &notice("ev-3", "r1", Status::Succeeded),
                        NOW + 13
                    )
                    .await
                    .unwrap(),
                    Applied::Conflict
                );
                assert_eq!(balance(&core).await, "10.00 USD");
                // Staff see it, with what each side says.
                let c = core.carrier_conflicts(10).await.unwrap();
                assert_eq!(
                    c.iter()
                        .map(|c| (
                            c.carrier_id.as_str(),
                            c.event_id.as_str(),
                            c.topup_id.as_str(),
                            c.notice.as_str(),
                            c.state.as_str()
                        ))
                        .collect::<Vec<_>>(),
                    [("telcel-mx", "ev-3", "r1", "succeeded", "reversed")]
                );
                // Another carrier cannot touch it; an unknown id is unknown.
                assert_eq!(
                    core.carrier_notice("ivr-mobile", &notice("ev-4", "r1", Status::Reversed), NOW)
                        .await
                        .unwrap(),
                    Applied::UnknownTopup
                );
                assert_eq!(
                    core.carrier_notice("telcel-mx", &notice("ev-5", "nope", Status::Failed), NOW)
                        .await
                        .unwrap(),
                    Applied::UnknownTopup
                );
                // A top-up left pending by a timeout, settled by a late success notice.
                let p = core
                    .topup(&a, None, &req("p1", w, "+525512349999", "telcel-100"), NOW)
                    .await
                    .unwrap();
                assert_eq!(p.state, "pending");
                assert_eq!(
                    core.carrier_notice(
                        "telcel-mx",
                        &notice("ev-6", "p1", Status::Succeeded),
                        NOW + 20
                    )
                    .await
                    .unwrap(),
                    Applied::Settled
                );
                let p = core.topup_receipt("p1").await.unwrap().unwrap();
                assert_eq!(
                    (p.state.as_str(), p.carrier_ref.as_deref()),
                    ("succeeded", Some("TX-1"))
                );
                assert_eq!(balance(&core).await, "4.01 USD");
                balanced(&core).await;
                let results: Vec<(String, String)> =
                    sqlx::query("SELECT event_id, result FROM carrier_events ORDER BY event_id")
                        .fetch_all(core.db.pool())
                        .await
                        .unwrap()
                        .iter()
                        .map(|r| (r.try_get("event_id").unwrap(), r.try_get("result").unwrap()))
                        .collect();
                let got: Vec<(&str, &str)> = results
                    .iter()
                    .map(|(a, b)| (a.as_str(), b.as_str()))
                    .collect();
                assert_eq!(
                    got,
                    [
                        ("ev-1", "reversed"),
                        ("ev-2", "ignored"),
                        ("ev-3", "conflict"),
                        ("ev-6", "settled")
                    ]
                );
            }
        }

        #[tokio::test]
        async fn failures_release_the_money_and_refusals_leave_nothing() {
            for (core, _g) in cores().await {
                let a = Adapters::new();
                funded(&core, "+12015550101", "10.00USD").await;
                let r = core
                    .topup(
                        &a,
                        None,
                        &req("f1", "+12015550101", "+525512340000", "telcel-100"),
                        NOW,
                    )
                    .await
                    .unwrap();
                assert_eq!(
                    (r.state.as_str(), r.error.as_deref()),
                    ("failed", Some("number not active"))
                );
                assert_eq!(
                    core.wallet_balance("+12015550101")
                        .await
                        .unwrap()
                        .to_string(),
                    "10.00 USD"
                );
                let mut big = req("f2", "+12015550101", "+525512345678", "telcel-open");
                big.amount = Some(Money::parse("20USD").unwrap());
                let e = core.topup(&a, None, &big, NOW).await.unwrap_err();
                assert_eq!(e.code(), "insufficient_funds");
                assert!(core.topup_receipt("f2").await.unwrap().is_none());
                let e = core
                    .topup(
                        &a,
                        None,
                        &req("f3", "+12015550101", "+84912345678", "telcel-100"),
                        NOW,
                    )
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), "no_carrier");
                let e = core
                    .topup(
                        &a,
                        None,
                        &req("f4", "+12015550101", "+12015550177", "telcel-100"),
                        NOW,
                    )
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), "no_product");
                let e = core
                    .topup(
                        &a,
                        None,
                        &req("f5", "+12015550101", "12", "telcel-100"),
                        NOW,
                    )
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), "invalid_number");
                balanced(&core).await;
            }
        }

        #[tokio::test]
        async fn unknown_outcomes_stay_pending_until_the_reconciler_settles_them() {
            for (core, _g) in cores().await {
                let a = Adapters::new();
                funded(&core, "+12015550102", "10.00USD").await;
                let r = core
                    .topup(
                        &a,
                        None,
                        &req("u1", "+12015550102", "+525512349999", "telcel-100"),
                        NOW,
                    )
                    .await
                    .unwrap();
                assert_eq!(r.state, "pending");
                assert_eq!(
                    core.wallet_balance("+12015550102")
                        .await
                        .unwrap()
                        .to_string(),
                    "4.01 USD",
                    "reserved"
                );
                assert_eq!(
                    core.reconcile(&a, NOW + 1_000, 10).await.unwrap().checked,
                    0,
                    "not due yet"
                );
                let rep = core.reconcile(&a, NOW + 60_000, 10).await.unwrap();
                assert_eq!((rep.checked, rep.succeeded), (1, 1));
                assert_eq!(
                    core.topup_receipt("u1").await.unwrap().unwrap().state,
                    "succeeded"
                );
                assert_eq!(
                    core.reconcile(&a, NOW + 120_000, 10).await.unwrap().checked,
                    0
                );
                balanced(&core).await;
            }
        }

        #[tokio::test]
        async fn builtin_carrier_credits_our_own_prepaid_account() {
            for (core, _g) in cores().await {
                let a = Adapters::new();
                funded(&core, "+12015550103", "10.00USD").await;
                let usd = Currency::new("USD").unwrap();
                core.create_prepaid(
                    "+12015550150",
                    usd,
                    Money::parse("1USD").unwrap(),
                    "en",
                    NOW,
                )
                .await
                .unwrap();
                let r = core
                    .topup(
                        &a,
                        None,
                        &req("b1", "+12015550103", "+12015550150", "ivr-5"),
                        NOW,
                    )
                    .await
                    .unwrap();
                assert_eq!(r.state, "succeeded");
                assert_eq!(
                    core.prepaid("+12015550150").await.unwrap().unwrap().balance,
                    "5.00"
                );
                let r = core
                    .topup(
                        &a,
                        None,
                        &req("b2", "+12015550103", "+12015550151", "ivr-5"),
                        NOW,
                    )
                    .await
                    .unwrap();
                assert_eq!(
                    (r.state.as_str(), r.error.as_deref()),
                    ("failed", Some("no such subscriber"))
                );
                assert_eq!(
                    core.wallet_balance("+12015550103")
                        .await
                        .unwrap()
                        .to_string(),
                    "5.00 USD"
                );
                balanced(&core).await;
            }
        }

        #[tokio::test]
        async fn fifty_top_ups_at_once_never_drain_a_wallet_below_zero() {
            for (core, _g) in cores().await {
                let a = Adapters::new();
                funded(&core, "+12015550104", "30.00USD").await;
                let mut tasks = vec![];
                for i in 0..50 {
                    let (core, a) = (core.clone(), a.clone());
                    tasks.push(tokio::spawn(async move {
                        core.topup(
                            &a,
                            None,
                            &req(
                                &format!("c{i}"),
                                "+12015550104",
                                "+525512345678",
                                "telcel-100",
                            ),
                            NOW,
                        )
                        .await
                    }));
                }
                let mut ok = 0;
                for t in tasks {
                    match t.await.unwrap() {
                        Ok(r) => {
                            assert_eq!(r.state, "succeeded");
                            ok += 1;
                        }
                        Err(e) => assert_eq!(e.code(), "insufficient_funds", "{e}"),
                    }
                }
                assert_eq!(ok, 5, "30.00 / 5.99 = 5 top-ups on {:?}", core.db.backend());
                assert_eq!(
                    core.wallet_balance("+12015550104")
                        .await
                        .unwrap()
                        .to_string(),
                    "0.05 USD"
                );
                balanced(&core).await;
            }
        }

        /// An aggregator over real HTTP, with a script per recipient.
        #[derive(Clone, Default)]
        struct Aggregator {
            posts: Arc<Mutex<HashMap<String, u32>>>,
            known: Arc<Mutex<HashMap<String, String>>>,
        }

        async fn serve_aggregator(agg: Aggregator) -> String {
            use axum::extract::{Path, State};
            use axum::http::StatusCode;
            use axum::routing::{get, post};
            use axum::{Json, Router};
            async fn create(
                State(a): State<Aggregator>,
                Json(b): Json<serde_json::Value>,
            ) -> (StatusCode, String) {
                let id = b["external_id"].as_str().unwrap_or("").to_string();
                let to = b["recipient"].as_str().unwrap_or("").to_string();
                let n = {
                    let mut p = a.posts.lock().unwrap();
                    let e = p.entry(id.clone()).or_default();
                    *e += 1;
                    *e
                };
                let ok = r#"{"status":"SUCCESSFUL","transaction_id":"AGG-1"}"#.to_string();
                match &to[to.len() - 4..] {
                    "1111" => (StatusCode::OK, ok),
                    "2222" => (
                        StatusCode::OK,
                        r#"{"status":"FAILED","message":"invalid msisdn"}"#.into(),
                    ),
                    "3333" => {
                        a.known.lock().unwrap().insert(id, "SUCCESSFUL".into());
                        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                        (StatusCode::OK, ok)
                    }
                    "4444" => {
                        a.known.lock().unwrap().insert(id, "SUCCESSFUL".into());
                        (StatusCode::OK, "<html>oops</html>".into())
                    }
                    "5555" if n == 1 => (StatusCode::SERVICE_UNAVAILABLE, "busy".into()),
                    "5555" => (StatusCode::OK, ok),
                    _ => (StatusCode::BAD_REQUEST, "no".into()),
                }
            }
            async fn status(
                State(a): State<Aggregator>,
                Path(id): Path<String>,
            ) -> (StatusCode, String) {
                match a.known.lock().unwrap().get(&id) {
                    Some(s) => (
                        StatusCode::OK,
                        format!(r#"{{"status":"{s}","transaction_id":"AGG-2"}}"#),
                    ),
                    None => (StatusCode::NOT_FOUND, "{}".into()),
                }
            }
            let app = Router::new()
                .route("/topups", post(create))
                .route("/topups/{id}", get(status))
                .with_state(agg);
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
            format!("http://{addr}")
        }

        #[tokio::test]
        async fn http_carrier_success_failure_timeout_garbage_and_resend() {
            for (core, _g) in cores().await {
                let agg = Aggregator::default();
                let url = serve_aggregator(agg.clone()).await;
                let file = format!(
                    "[[carrier]]\nid = \"agg-vn\"\nname = \"Viettel\"\ncountry = \"VN\"\ncurrency = \"VND\"\nadapter = \"http\"\n\
prefixes = [\"849\"]\nhttp = {{ base_url = \"{url}\", operator_id = \"vt\", timeout = \"1s\" }}\n\
[[carrier.product]]\nid = \"vt-50k\"\nkind = \"fixed\"\nlabel = \"50000 dong\"\nprice = \"2.10USD\"\nreceive = \"50000VND\"\n"
                );
                core.import_carriers(&file, NOW).await.unwrap();
                let value = Money::parse("20USD").unwrap();
                let cards = core
                    .generate_cards("T", 1, value, NOW + 86_400_000, NOW)
                    .await
                    .unwrap();
                core.redeem_card(&cards[0].pin, None, "+12015550105", NOW)
                    .await
                    .unwrap();
                let a = Adapters::new();
                let w = "+12015550105";
                let state = |r: &Receipt| r.state.clone();
                assert_eq!(
                    state(
                        &core
                            .topup(&a, None, &req("h1", w, "+84912341111", "vt-50k"), NOW)
                            .await
                            .unwrap()
                    ),
                    "succeeded"
                );
                let f = core
                    .topup(&a, None, &req("h2", w, "+84912342222", "vt-50k"), NOW)
                    .await
                    .unwrap();
                assert_eq!(
                    (f.state.as_str(), f.error.as_deref()),
                    ("failed", Some("invalid msisdn"))
                );
                let slow = core
                    .topup(&a, None, &req("h3", w, "+84912343333", "vt-50k"), NOW)
                    .await
                    .unwrap();
                assert_eq!(slow.state, "pending", "a timeout is unknown, never failed");
                let junk = core
                    .topup(&a, None, &req("h4", w, "+84912344444", "vt-50k"), NOW)
                    .await
                    .unwrap();
                assert_eq!(junk.state, "pending");
                let busy = core
                    .topup(&a, None, &req("h5", w, "+84912345555", "vt-50k"), NOW)
                    .await
                    .unwrap();
                assert_eq!(busy.state, "pending");
                let rep = core.reconcile(&a, NOW + 60_000, 10).await.unwrap();
                assert_eq!((rep.checked, rep.succeeded), (3, 3), "{rep:?}");
                let posts = agg.posts.lock().unwrap().clone();
                assert_eq!(posts["h3"], 1, "never resent blindly");
                assert_eq!(posts["h4"], 1);
                assert_eq!(
                    posts["h5"], 2,
                    "resent only after the carrier said it never got it"
                );
                // 20.00 - 4 x 2.10 (the failure refunded)
                assert_eq!(
                    core.wallet_balance(w).await.unwrap().to_string(),
                    "11.60 USD"
                );
                balanced(&core).await;
            }
        }

        #[tokio::test]
        async fn wallet_pin_then_top_up_as_the_voice_line_does() {
            for (core, _g) in cores().await {
                funded(&core, "+12015550106", "10USD").await;
                core.create_wallet(
                    "+12015550106",
                    Currency::new("USD").unwrap(),
                    &Pin::new("4321"),
                    "en",
                    NOW,
                )
                .await
                .unwrap();
                core.authenticate_wallet("+12015550106", &Pin::new("4321"), NOW)
                    .await
                    .unwrap();
                let mut r = req("v1", "+12015550106", "525512345678", "telcel-open");
                r.amount = Some(Money::parse("2.00USD").unwrap());
                let rec = core.topup(&Adapters::new(), None, &r, NOW).await.unwrap();
                assert_eq!(
                    (rec.state.as_str(), rec.received.as_str()),
                    ("succeeded", "34.10 MXN")
                );
            }
        }
    }
}
