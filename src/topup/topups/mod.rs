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

/// Where a top-up is: `pending` until the carrier's answer is known, then `succeeded` or
/// `failed`; a succeeded one the carrier takes back becomes `reversed`. Stored and shown by
/// [`TopupState::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TopupState {
    Pending,
    Succeeded,
    Failed,
    Reversed,
}

impl TopupState {
    pub const ALL: [TopupState; 4] = [
        TopupState::Pending,
        TopupState::Succeeded,
        TopupState::Failed,
        TopupState::Reversed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TopupState::Pending => "pending",
            TopupState::Succeeded => "succeeded",
            TopupState::Failed => "failed",
            TopupState::Reversed => "reversed",
        }
    }

    pub fn from_name(name: &str) -> Option<TopupState> {
        TopupState::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The state stored in a row (anything else is a corrupt row).
    pub(crate) fn from_row(r: &sqlx::any::AnyRow) -> Result<TopupState, TopupError> {
        let s: String = r.try_get("state")?;
        TopupState::from_name(&s).ok_or_else(|| TopupError::Corrupt(format!("top-up state `{s}`")))
    }
}

impl std::fmt::Display for TopupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
            Ok(receipt) => receipt.state.to_string(),
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

mod receipts;
mod reconcile;
mod settle;

#[cfg(test)]
mod tests;

pub use receipts::*;
pub use reconcile::*;
