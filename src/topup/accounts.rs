//! Customer accounts: wallets (keyed by the owner's number, PIN-protected, with recent
//! recipients) and the platform's own prepaid phone accounts (balance, low-balance threshold,
//! an optional linked funding source unlocked by PIN + the account's number).

use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::books::{account, open_account, transfer};
use super::hash_pool::HashPool;
use super::ledger::{AccountKind, TransferSpec, accounts};
use super::money::{Currency, Money};
use super::secrets::{Pepper, Pin, PinCheck, hash_pin_keyed, verify_pin_keyed};
use super::{Core, TopupError, auth};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Wallet {
    pub number: String,
    pub currency: String,
    pub balance: String,
    pub available: String,
    /// active, locked, closed
    pub status: String,
    pub language: String,
    pub has_pin: bool,
    pub failed_attempts: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrepaidAccount {
    pub number: String,
    pub currency: String,
    pub balance: String,
    pub low_balance: String,
    pub linked_funding: bool,
    pub language: String,
    pub status: String,
    pub failed_attempts: i64,
}

/// Checks a wallet or funding PIN on the hash pool (argon2 is deliberately slow; see
/// `hash_pool`).
async fn verify(pin: &Pin, hash: String, pepper: &Pepper) -> Result<PinCheck, TopupError> {
    let (pin, pepper) = (pin.clone(), pepper.clone());
    Ok(HashPool::global()
        .run(move || verify_pin_keyed(&pin, &hash, &pepper))
        .await?)
}

/// A new PIN hash, keyed with the pepper, made on the hash pool.
async fn hash(pin: &Pin, pepper: &Pepper) -> Result<String, TopupError> {
    let (pin, pepper) = (pin.clone(), pepper.clone());
    Ok(HashPool::global()
        .run(move || hash_pin_keyed(&pin, &pepper))
        .await?)
}

impl Core {
    /// Opens the wallet of `number` (and its ledger account) if it has none; returns the
    /// ledger account id. An existing wallet in another currency is an error.
    pub(crate) async fn open_wallet_in(
        &self,
        conn: &mut AnyConnection,
        number: &str,
        currency: Currency,
        now: i64,
    ) -> Result<String, TopupError> {
        let id = accounts::wallet(number);
        open_account(conn, &id, currency, AccountKind::Wallet, now).await?;
        sqlx::query(
            "INSERT INTO wallets (number, account_id, currency, status, language, created_at)
             VALUES ($1, $2, $3, 'active', 'en', $4) ON CONFLICT (number) DO NOTHING",
        )
        .bind(number)
        .bind(&id)
        .bind(currency.code())
        .bind(now)
        .execute(&mut *conn)
        .await?;
        Ok(id)
    }

    /// Creates a wallet with a PIN (or sets the PIN of an existing one).
    pub async fn create_wallet(
        &self,
        number: &str,
        currency: Currency,
        pin: &Pin,
        language: &str,
        now: i64,
    ) -> Result<Wallet, TopupError> {
        if !pin.is_well_formed() {
            return Err(TopupError::InvalidPin);
        }
        let h = hash(pin, &self.pepper).await?;
        let mut tx = self.db.begin().await?;
        self.open_wallet_in(&mut tx, number, currency, now).await?;
        sqlx::query("UPDATE wallets SET pin_hash = $1, language = $2, status = 'active', failed_attempts = 0 WHERE number = $3")
            .bind(h)
            .bind(language)
            .bind(number)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.wallet(number).await?.ok_or(TopupError::NoWallet)
    }

    pub async fn wallet(&self, number: &str) -> Result<Option<Wallet>, TopupError> {
        let mut conn = self.db.pool().acquire().await?;
        let row = sqlx::query("SELECT number, account_id, currency, pin_hash, status, failed_attempts, language FROM wallets WHERE number = $1")
            .bind(number)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let account_id: String = r.try_get("account_id")?;
        let a = account(&mut conn, &account_id)
            .await?
            .ok_or_else(|| TopupError::Corrupt(format!("wallet {number} has no account")))?;
        Ok(Some(Wallet {
            number: r.try_get("number")?,
            currency: r.try_get("currency")?,
            balance: a.balance_money().amount_string(),
            available: a.available_money().amount_string(),
            status: r.try_get("status")?,
            language: r.try_get("language")?,
            has_pin: r.try_get::<Option<String>, _>("pin_hash")?.is_some(),
            failed_attempts: r.try_get("failed_attempts")?,
        }))
    }

    /// The wallet's available balance.
    pub async fn wallet_balance(&self, number: &str) -> Result<Money, TopupError> {
        let mut conn = self.db.pool().acquire().await?;
        account(&mut conn, &accounts::wallet(number))
            .await?
            .map(|a| a.available_money())
            .ok_or(TopupError::NoWallet)
    }

    /// Authenticates the owner of a wallet: caller number (ANI) + PIN. The fifth wrong PIN in
    /// a row locks the wallet; failures also count towards the velocity limits.
    pub async fn authenticate_wallet(
        &self,
        ani: &str,
        pin: &Pin,
        now: i64,
    ) -> Result<(), TopupError> {
        self.authenticate("wallets", "wallet", ani, ani, pin, now)
            .await
    }

    /// Authenticates use of a prepaid account's linked funding: the account's number + PIN.
    pub async fn authenticate_funding(
        &self,
        ani: &str,
        number: &str,
        pin: &Pin,
        now: i64,
    ) -> Result<(), TopupError> {
        self.authenticate("prepaid_accounts", "funding", ani, number, pin, now)
            .await
    }

    async fn authenticate(
        &self,
        table: &'static str,
        subject: &'static str,
        ani: &str,
        key: &str,
        pin: &Pin,
        now: i64,
    ) -> Result<(), TopupError> {
        let pin_col = if table == "wallets" {
            "pin_hash"
        } else {
            "funding_pin_hash"
        };
        let mut conn = self.db.pool().acquire().await?;
        auth::check_velocity(&mut conn, ani, now, &self.policy).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {pin_col} AS pin_hash, status, failed_attempts FROM {table} WHERE number = $1"
        )))
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
        drop(conn);
        let Some(r) = row else {
            return Err(if subject == "wallet" {
                TopupError::NoWallet
            } else {
                TopupError::NoAccount
            });
        };
        let status: String = r.try_get("status")?;
        if status == "locked" {
            return Err(TopupError::Locked(subject));
        }
        let Some(stored) = r.try_get::<Option<String>, _>("pin_hash")? else {
            return Err(if subject == "wallet" {
                TopupError::InvalidPin
            } else {
                TopupError::NoFunding
            });
        };
        let check = verify(pin, stored, &self.pepper).await?;
        if check != PinCheck::Wrong {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {table} SET failed_attempts = 0 WHERE number = $1"
            )))
            .bind(key)
            .execute(self.db.pool())
            .await?;
            if check == PinCheck::RightUnkeyed {
                // A hash from before they were keyed: keyed now, while the PIN is at hand.
                let keyed = hash(pin, &self.pepper).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {table} SET {pin_col} = $1 WHERE number = $2"
                )))
                .bind(keyed)
                .bind(key)
                .execute(self.db.pool())
                .await?;
            }
            return Ok(());
        }
        let failed: i64 = r.try_get("failed_attempts")?;
        let lock = auth::locks_after(failed, &self.policy);
        let mut tx = self.db.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET failed_attempts = failed_attempts + 1,
                status = CASE WHEN failed_attempts + 1 >= $1 THEN 'locked' ELSE status END WHERE number = $2"
        )))
        .bind(self.policy.max_pin_failures as i64)
        .bind(key)
        .execute(&mut *tx)
        .await?;
        auth::record_failure(&mut tx, ani, subject, now).await?;
        if lock {
            // The owner hears of it on their phone, whoever typed the PINs.
            self.notify(
                &mut tx,
                crate::topup::notify::Notification {
                    id: format!("locked:{subject}:{key}:{now}"),
                    kind: if subject == "wallet" {
                        "wallet_locked"
                    } else {
                        "account_locked"
                    },
                    to: key.to_string(),
                    language: None,
                    vars: vec![],
                    reference: Some(format!("{subject}:{key}")),
                },
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Err(if lock {
            TopupError::Locked(subject)
        } else {
            TopupError::InvalidPin
        })
    }

    /// Unlocks a wallet or prepaid account (after an identity check by staff).
    pub async fn unlock(&self, number: &str) -> Result<bool, TopupError> {
        let mut n = 0;
        for table in ["wallets", "prepaid_accounts"] {
            n += sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {table} SET status = 'active', failed_attempts = 0 WHERE number = $1 AND status = 'locked'"
            )))
            .bind(number)
            .execute(self.db.pool())
            .await?
            .rows_affected();
        }
        Ok(n > 0)
    }

    /// Records a top-up recipient for "top up this number again" offers.
    pub async fn remember_recipient(
        &self,
        conn: &mut AnyConnection,
        wallet: &str,
        number: &str,
        now: i64,
    ) -> Result<(), TopupError> {
        sqlx::query(
            "INSERT INTO recent_recipients (wallet, number, last_used, uses) VALUES ($1, $2, $3, 1)
             ON CONFLICT (wallet, number) DO UPDATE SET last_used = $3, uses = recent_recipients.uses + 1",
        )
        .bind(wallet)
        .bind(number)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// The wallet's recent recipients, most recent first.
    pub async fn recent_recipients(
        &self,
        wallet: &str,
        limit: i64,
    ) -> Result<Vec<String>, TopupError> {
        let rows = sqlx::query("SELECT number FROM recent_recipients WHERE wallet = $1 ORDER BY last_used DESC, number LIMIT $2")
            .bind(wallet)
            .bind(limit)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(|r| Ok(r.try_get("number")?)).collect()
    }

    /// Creates a prepaid phone account on our own network.
    pub async fn create_prepaid(
        &self,
        number: &str,
        currency: Currency,
        low_balance: Money,
        language: &str,
        now: i64,
    ) -> Result<PrepaidAccount, TopupError> {
        if low_balance.currency != currency {
            return Err(
                super::money::MoneyError::CurrencyMismatch(low_balance.currency, currency).into(),
            );
        }
        let id = accounts::prepaid(number);
        let mut tx = self.db.begin().await?;
        open_account(&mut tx, &id, currency, AccountKind::Prepaid, now).await?;
        sqlx::query(
            "INSERT INTO prepaid_accounts (number, account_id, currency, low_balance, language, status, created_at)
             VALUES ($1, $2, $3, $4, $5, 'active', $6) ON CONFLICT (number) DO NOTHING",
        )
        .bind(number)
        .bind(&id)
        .bind(currency.code())
        .bind(low_balance.minor)
        .bind(language)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.prepaid(number).await?.ok_or(TopupError::NoAccount)
    }

    /// Links an external funding source to a prepaid account, protected by `pin`.
    pub async fn link_funding(&self, number: &str, pin: &Pin, now: i64) -> Result<(), TopupError> {
        if !pin.is_well_formed() {
            return Err(TopupError::InvalidPin);
        }
        let h = hash(pin, &self.pepper).await?;
        let mut tx = self.db.begin().await?;
        let cur: String = sqlx::query("SELECT currency FROM prepaid_accounts WHERE number = $1")
            .bind(number)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(TopupError::NoAccount)?
            .try_get("currency")?;
        let cur = Currency::new(&cur)
            .map_err(|_| TopupError::Corrupt(format!("prepaid {number}: currency")))?;
        let funding = accounts::funding(number);
        open_account(&mut tx, &funding, cur, AccountKind::Funding, now).await?;
        sqlx::query("UPDATE prepaid_accounts SET funding_account = $1, funding_pin_hash = $2 WHERE number = $3")
            .bind(&funding)
            .bind(h)
            .bind(number)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Recharges a prepaid account from its linked funding source (after PIN check).
    /// `id` makes the request idempotent.
    pub async fn recharge_from_funding(
        &self,
        id: &str,
        ani: &str,
        number: &str,
        pin: &Pin,
        amount: Money,
        now: i64,
    ) -> Result<Money, TopupError> {
        self.authenticate_funding(ani, number, pin, now).await?;
        let mut tx = self.db.begin().await?;
        let funding: Option<String> =
            sqlx::query("SELECT funding_account FROM prepaid_accounts WHERE number = $1")
                .bind(number)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(TopupError::NoAccount)?
                .try_get("funding_account")?;
        let funding = funding.ok_or(TopupError::NoFunding)?;
        let prepaid = accounts::prepaid(number);
        transfer(
            &mut tx,
            &TransferSpec {
                id: format!("fund:{id}"),
                debit: funding,
                credit: prepaid.clone(),
                amount,
                kind: "fund".into(),
                pending: false,
            },
            now,
        )
        .await?;
        let balance = account(&mut tx, &prepaid)
            .await?
            .map(|a| a.balance_money())
            .unwrap_or(amount);
        tx.commit().await?;
        Ok(balance)
    }

    pub async fn prepaid(&self, number: &str) -> Result<Option<PrepaidAccount>, TopupError> {
        let mut conn = self.db.pool().acquire().await?;
        let row = sqlx::query(
            "SELECT number, account_id, currency, low_balance, funding_account, language, status, failed_attempts
             FROM prepaid_accounts WHERE number = $1",
        )
        .bind(number)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let account_id: String = r.try_get("account_id")?;
        let a = account(&mut conn, &account_id)
            .await?
            .ok_or_else(|| TopupError::Corrupt(format!("prepaid {number} has no account")))?;
        Ok(Some(PrepaidAccount {
            number: r.try_get("number")?,
            currency: r.try_get("currency")?,
            balance: a.balance_money().amount_string(),
            low_balance: Money::new(r.try_get("low_balance")?, a.currency).amount_string(),
            linked_funding: r.try_get::<Option<String>, _>("funding_account")?.is_some(),
            language: r.try_get("language")?,
            status: r.try_get("status")?,
            failed_attempts: r.try_get("failed_attempts")?,
        }))
    }

    /// Wallets and prepaid accounts, for `accounts list`.
    pub async fn list_accounts(&self) -> Result<(Vec<Wallet>, Vec<PrepaidAccount>), TopupError> {
        let numbers = |table: &'static str| async move {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT number FROM {table} ORDER BY number"
            )))
            .fetch_all(self.db.pool())
            .await?;
            rows.iter()
                .map(|r| Ok(r.try_get::<String, _>("number")?))
                .collect::<Result<Vec<_>, TopupError>>()
        };
        let mut wallets = vec![];
        for n in numbers("wallets").await? {
            wallets.extend(self.wallet(&n).await?);
        }
        let mut prepaid = vec![];
        for n in numbers("prepaid_accounts").await? {
            prepaid.extend(self.prepaid(&n).await?);
        }
        Ok((wallets, prepaid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topup::books::check_books;
    use crate::topup::testing::cores;

    const NOW: i64 = 1_800_000_000_000;

    fn usd() -> Currency {
        Currency::new("USD").unwrap()
    }

    #[tokio::test]
    async fn wallet_pin_locks_after_five_wrong_and_unlocks() {
        for (core, _g) in cores().await {
            core.create_wallet("+15550100", usd(), &Pin::new("2468"), "en", NOW)
                .await
                .unwrap();
            core.authenticate_wallet("+15550100", &Pin::new("2468"), NOW)
                .await
                .unwrap();
            for i in 0..4 {
                let e = core
                    .authenticate_wallet("+15550100", &Pin::new("1111"), NOW + i)
                    .await
                    .unwrap_err();
                assert!(matches!(e, TopupError::InvalidPin), "{e}");
            }
            let e = core
                .authenticate_wallet("+15550100", &Pin::new("1111"), NOW + 5)
                .await
                .unwrap_err();
            assert!(matches!(e, TopupError::Locked("wallet")), "{e}");
            let e = core
                .authenticate_wallet("+15550100", &Pin::new("2468"), NOW + 6)
                .await
                .unwrap_err();
            assert!(
                matches!(e, TopupError::Locked("wallet")),
                "locked even for the right PIN: {e}"
            );
            assert!(core.unlock("+15550100").await.unwrap());
            core.authenticate_wallet("+15550100", &Pin::new("2468"), NOW + 7)
                .await
                .unwrap();
            assert_eq!(
                core.wallet("+15550100")
                    .await
                    .unwrap()
                    .unwrap()
                    .failed_attempts,
                0
            );
            assert!(matches!(
                core.authenticate_wallet("+15550199", &Pin::new("2468"), NOW)
                    .await,
                Err(TopupError::NoWallet)
            ));
        }
    }

    #[tokio::test]
    async fn linked_funding_recharges_a_prepaid_account_once_per_request() {
        for (core, _g) in cores().await {
            let n = "+15550177";
            core.create_prepaid(n, usd(), Money::parse("2.00USD").unwrap(), "es", NOW)
                .await
                .unwrap();
            let pin = Pin::new("9090");
            let ten = Money::parse("10USD").unwrap();
            assert!(matches!(
                core.recharge_from_funding("r1", n, n, &pin, ten, NOW).await,
                Err(TopupError::NoFunding)
            ));
            core.link_funding(n, &pin, NOW).await.unwrap();
            let b = core
                .recharge_from_funding("r1", n, n, &pin, ten, NOW)
                .await
                .unwrap();
            assert_eq!(b, ten);
            let b = core
                .recharge_from_funding("r1", n, n, &pin, ten, NOW)
                .await
                .unwrap();
            assert_eq!(b, ten, "retry does not recharge twice");
            assert!(matches!(
                core.recharge_from_funding("r2", n, n, &Pin::new("0000"), ten, NOW)
                    .await,
                Err(TopupError::InvalidPin)
            ));
            let a = core.prepaid(n).await.unwrap().unwrap();
            assert_eq!(
                (
                    a.balance.as_str(),
                    a.low_balance.as_str(),
                    a.language.as_str()
                ),
                ("10.00", "2.00", "es")
            );
            assert!(a.linked_funding);
            assert!(check_books(&core.db).await.unwrap().balanced());
        }
    }
}
