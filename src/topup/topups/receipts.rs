//! What a top-up's client, agent or payer is shown of it: its receipt, and lists of them.

use super::*;

impl Core {
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

    pub(super) async fn fill_payer_balance(&self, r: &mut Receipt) -> Result<(), TopupError> {
        let account_id = match r.funding.split_once(':') {
            Some(("wallet", n)) => accounts::wallet(n),
            Some(("account", a)) => a.to_string(),
            _ => return Ok(()),
        };
        let mut conn = self.db.pool().acquire().await?;
        r.payer_balance = crate::topup::books::account(&mut conn, &account_id)
            .await?
            .map(|a| a.available_money().to_string());
        Ok(())
    }

    /// Most recent top-ups, optionally only those in `state`.
    pub async fn list_topups(
        &self,
        state: Option<TopupState>,
        limit: i64,
    ) -> Result<Vec<Receipt>, TopupError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RECEIPT_COLUMNS} FROM topups WHERE ($1 = '' OR state = $1) ORDER BY created_at DESC, id LIMIT $2"
        )))
        .bind(state.map(TopupState::as_str).unwrap_or(""))
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Receipt {
    pub id: String,
    /// pending, succeeded, failed, reversed
    pub state: TopupState,
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

pub(super) const RECEIPT_COLUMNS: &str = "id, state, recipient, carrier_id, product_id, send_minor, send_currency, receive_minor,
    receive_currency, carrier_ref, error, funding, payer, channel, attempts, created_at, updated_at";

pub(super) fn receipt_from_row(r: &sqlx::any::AnyRow) -> Result<Receipt, TopupError> {
    let id: String = r.try_get("id")?;
    let money = |minor: &str, cur: &str| -> Result<String, TopupError> {
        let c: String = r.try_get(cur)?;
        let c =
            Currency::new(&c).map_err(|_| TopupError::Corrupt(format!("top-up {id}: currency")))?;
        Ok(Money::new(r.try_get(minor)?, c).to_string())
    };
    Ok(Receipt {
        state: TopupState::from_row(r)?,
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
