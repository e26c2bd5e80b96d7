//! The ledger on the database: the rules of [`super::ledger`] as SQL, each operation inside
//! the caller's transaction so a business change (a card redeemed, a top-up recorded) and its
//! money movement commit together or not at all.
//!
//! Concurrency: on Postgres every balance change is a conditional `UPDATE` that re-checks its
//! condition under the row lock (READ COMMITTED re-evaluates the WHERE on the newest row), and a
//! transfer id is claimed by inserting it first, so two racing requests with the same id
//! serialize on the primary key. On SQLite, write transactions start with BEGIN IMMEDIATE and
//! run one at a time.

use sqlx::{AnyConnection, Row};

use super::TopupError;
use super::ledger::{
    Account, AccountKind, LedgerError, Resolution, Transfer, TransferSpec, TransferState,
    resolution, same_request, validate,
};
use super::money::{Currency, Money};
use crate::store::Db;

fn account_from_row(r: &sqlx::any::AnyRow) -> Result<Account, TopupError> {
    let id: String = r.try_get("id")?;
    let currency: String = r.try_get("currency")?;
    let kind: String = r.try_get("kind")?;
    Ok(Account {
        currency: Currency::new(&currency)
            .map_err(|_| TopupError::Corrupt(format!("account {id}: currency {currency}")))?,
        kind: AccountKind::parse(&kind)
            .ok_or_else(|| TopupError::Corrupt(format!("account {id}: kind {kind}")))?,
        debits_pending: r.try_get("debits_pending")?,
        debits_posted: r.try_get("debits_posted")?,
        credits_pending: r.try_get("credits_pending")?,
        credits_posted: r.try_get("credits_posted")?,
        id,
    })
}

const ACCOUNT_COLUMNS: &str =
    "id, currency, kind, debits_pending, debits_posted, credits_pending, credits_posted";

/// Opens an account if it does not exist; returns it. Reopening with another currency is an
/// error (an id names one account forever).
pub async fn open_account(
    conn: &mut AnyConnection,
    id: &str,
    currency: Currency,
    kind: AccountKind,
    now: i64,
) -> Result<Account, TopupError> {
    sqlx::query(
        "INSERT INTO accounts (id, currency, kind, no_overdraft, created_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(currency.code())
    .bind(kind.as_str())
    .bind(kind.no_overdraft() as i64)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let a = account(conn, id)
        .await?
        .ok_or_else(|| TopupError::Corrupt(format!("account {id} vanished")))?;
    if a.currency != currency {
        return Err(LedgerError::CurrencyMismatch {
            account: id.to_string(),
            account_currency: a.currency,
            transfer_currency: currency,
        }
        .into());
    }
    Ok(a)
}

pub async fn account(conn: &mut AnyConnection, id: &str) -> Result<Option<Account>, TopupError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(account_from_row).transpose()
}

pub async fn transfer_by_id(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<Transfer>, TopupError> {
    let row = sqlx::query(
        "SELECT id, debit_account, credit_account, amount, currency, kind, two_phase, state
         FROM transfers WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let currency: String = r.try_get("currency")?;
    let state: String = r.try_get("state")?;
    Ok(Some(Transfer {
        id: r.try_get("id")?,
        debit: r.try_get("debit_account")?,
        credit: r.try_get("credit_account")?,
        amount: Money::new(
            r.try_get("amount")?,
            Currency::new(&currency)
                .map_err(|_| TopupError::Corrupt(format!("transfer {id}: currency")))?,
        ),
        kind: r.try_get("kind")?,
        two_phase: r.try_get::<i64, _>("two_phase")? != 0,
        state: TransferState::parse(&state)
            .ok_or_else(|| TopupError::Corrupt(format!("transfer {id}: state {state}")))?,
    }))
}

/// Creates a transfer (pending or posted at once). A retry of the same request returns the
/// first result without moving money again; the same id with other fields is an error.
pub async fn transfer(
    conn: &mut AnyConnection,
    spec: &TransferSpec,
    now: i64,
) -> Result<Transfer, TopupError> {
    validate(spec)?;
    let currency = spec.amount.currency;
    for id in [&spec.debit, &spec.credit] {
        let a = account(conn, id)
            .await?
            .ok_or_else(|| LedgerError::NoAccount(id.clone()))?;
        if a.currency != currency {
            return Err(LedgerError::CurrencyMismatch {
                account: id.clone(),
                account_currency: a.currency,
                transfer_currency: currency,
            }
            .into());
        }
    }
    // Claim the id first: a concurrent retry waits here, then finds the first one.
    let state = if spec.pending {
        TransferState::Pending
    } else {
        TransferState::Posted
    };
    let claimed = sqlx::query(
        "INSERT INTO transfers (id, debit_account, credit_account, amount, currency, kind, two_phase, state, created_at, resolved_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&spec.id)
    .bind(&spec.debit)
    .bind(&spec.credit)
    .bind(spec.amount.minor)
    .bind(currency.code())
    .bind(&spec.kind)
    .bind(spec.pending as i64)
    .bind(state.as_str())
    .bind(now)
    .bind(if spec.pending { None } else { Some(now) })
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if claimed == 0 {
        let existing = transfer_by_id(conn, &spec.id)
            .await?
            .ok_or_else(|| TopupError::Corrupt(format!("transfer {} vanished", spec.id)))?;
        return if same_request(&existing, spec) {
            Ok(existing)
        } else {
            Err(LedgerError::IdConflict(spec.id.clone()).into())
        };
    }

    let debit_sql = if spec.pending {
        "UPDATE accounts SET debits_pending = debits_pending + $1
         WHERE id = $2 AND (no_overdraft = 0 OR credits_posted - debits_posted - debits_pending >= $1)"
    } else {
        "UPDATE accounts SET debits_posted = debits_posted + $1
         WHERE id = $2 AND (no_overdraft = 0 OR credits_posted - debits_posted - debits_pending >= $1)"
    };
    let debited = sqlx::query(debit_sql)
        .bind(spec.amount.minor)
        .bind(&spec.debit)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if debited == 0 {
        let a = account(conn, &spec.debit)
            .await?
            .ok_or_else(|| LedgerError::NoAccount(spec.debit.clone()))?;
        return Err(LedgerError::InsufficientFunds {
            account: spec.debit.clone(),
            available: a.available_money(),
            needed: spec.amount,
        }
        .into());
    }
    let credit_sql = if spec.pending {
        "UPDATE accounts SET credits_pending = credits_pending + $1 WHERE id = $2"
    } else {
        "UPDATE accounts SET credits_posted = credits_posted + $1 WHERE id = $2"
    };
    sqlx::query(credit_sql)
        .bind(spec.amount.minor)
        .bind(&spec.credit)
        .execute(&mut *conn)
        .await?;
    Ok(Transfer {
        id: spec.id.clone(),
        debit: spec.debit.clone(),
        credit: spec.credit.clone(),
        amount: spec.amount,
        kind: spec.kind.clone(),
        two_phase: spec.pending,
        state,
    })
}

/// Posts a pending transfer (the money moves for good).
pub async fn post(conn: &mut AnyConnection, id: &str, now: i64) -> Result<Resolution, TopupError> {
    resolve(conn, id, TransferState::Posted, now).await
}

/// Voids a pending transfer (the reservation is released).
pub async fn void(conn: &mut AnyConnection, id: &str, now: i64) -> Result<Resolution, TopupError> {
    resolve(conn, id, TransferState::Voided, now).await
}

async fn resolve(
    conn: &mut AnyConnection,
    id: &str,
    to: TransferState,
    now: i64,
) -> Result<Resolution, TopupError> {
    let t = transfer_by_id(conn, id)
        .await?
        .ok_or_else(|| LedgerError::NoTransfer(id.to_string()))?;
    if resolution(t.state, to, id)? == Resolution::AlreadyDone {
        return Ok(Resolution::AlreadyDone);
    }
    let changed = sqlx::query(
        "UPDATE transfers SET state = $1, resolved_at = $2 WHERE id = $3 AND state = 'pending'",
    )
    .bind(to.as_str())
    .bind(now)
    .bind(id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if changed == 0 {
        // Resolved concurrently since we read it: answer as a retry would.
        let t = transfer_by_id(conn, id)
            .await?
            .ok_or_else(|| LedgerError::NoTransfer(id.to_string()))?;
        return Ok(resolution(t.state, to, id)?);
    }
    let (debit_sql, credit_sql) = match to {
        TransferState::Posted => (
            "UPDATE accounts SET debits_pending = debits_pending - $1, debits_posted = debits_posted + $1 WHERE id = $2",
            "UPDATE accounts SET credits_pending = credits_pending - $1, credits_posted = credits_posted + $1 WHERE id = $2",
        ),
        _ => (
            "UPDATE accounts SET debits_pending = debits_pending - $1 WHERE id = $2",
            "UPDATE accounts SET credits_pending = credits_pending - $1 WHERE id = $2",
        ),
    };
    sqlx::query(debit_sql)
        .bind(t.amount.minor)
        .bind(&t.debit)
        .execute(&mut *conn)
        .await?;
    sqlx::query(credit_sql)
        .bind(t.amount.minor)
        .bind(&t.credit)
        .execute(&mut *conn)
        .await?;
    Ok(Resolution::Done)
}

/// What `ledger check` found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct BooksReport {
    /// Per currency: (code, sum of posted balances, sum of pending balances). Both must be 0.
    pub totals: Vec<(String, i64, i64)>,
    /// Accounts whose columns disagree with the sum of their transfers.
    pub mismatched_accounts: Vec<String>,
    /// Customer accounts below zero (counting pending debits).
    pub overdrawn_accounts: Vec<String>,
    pub accounts: i64,
    pub transfers: i64,
}

impl BooksReport {
    pub fn balanced(&self) -> bool {
        self.totals.iter().all(|t| t.1 == 0 && t.2 == 0)
            && self.mismatched_accounts.is_empty()
            && self.overdrawn_accounts.is_empty()
    }
}

/// Proves the books: per currency every balance sums to zero, every account's columns equal
/// the sum of its transfers, and no customer account is overdrawn.
pub async fn check_books(db: &Db) -> Result<BooksReport, TopupError> {
    let pool = db.pool();
    let mut report = BooksReport::default();
    for r in sqlx::query(
        "SELECT currency, CAST(SUM(credits_posted - debits_posted) AS BIGINT) AS posted,
                CAST(SUM(credits_pending - debits_pending) AS BIGINT) AS pending
         FROM accounts GROUP BY currency ORDER BY currency",
    )
    .fetch_all(pool)
    .await?
    {
        report.totals.push((
            r.try_get("currency")?,
            r.try_get("posted")?,
            r.try_get("pending")?,
        ));
    }
    let sum = |side: &str, state: &str| {
        format!(
            "CAST(COALESCE((SELECT SUM(t.amount) FROM transfers t WHERE t.{side}_account = a.id AND t.state = '{state}'), 0) AS BIGINT)"
        )
    };
    let audit = format!(
        "SELECT a.id, a.kind, a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending,
                {} AS dp, {} AS cp, {} AS dq, {} AS cq
         FROM accounts a ORDER BY a.id",
        sum("debit", "posted"),
        sum("credit", "posted"),
        sum("debit", "pending"),
        sum("credit", "pending")
    );
    for r in sqlx::query(sqlx::AssertSqlSafe(audit))
        .fetch_all(pool)
        .await?
    {
        let id: String = r.try_get("id")?;
        let cols: [i64; 4] = [
            r.try_get("debits_posted")?,
            r.try_get("credits_posted")?,
            r.try_get("debits_pending")?,
            r.try_get("credits_pending")?,
        ];
        let sums: [i64; 4] = [
            r.try_get("dp")?,
            r.try_get("cp")?,
            r.try_get("dq")?,
            r.try_get("cq")?,
        ];
        if cols != sums {
            report.mismatched_accounts.push(id.clone());
        }
        let kind: String = r.try_get("kind")?;
        if AccountKind::parse(&kind).is_some_and(|k| k.no_overdraft())
            && cols[1] - cols[0] - cols[2] < 0
        {
            report.overdrawn_accounts.push(id);
        }
        report.accounts += 1;
    }
    report.transfers = sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM transfers")
        .fetch_one(pool)
        .await?
        .try_get("n")?;
    Ok(report)
}

/// A whole operation in one transaction: `f` runs inside it; commit on Ok, roll back on Err.
pub async fn in_tx<T>(
    db: &Db,
    f: impl for<'c> FnOnce(
        &'c mut AnyConnection,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<T, TopupError>> + Send + 'c>,
    >,
) -> Result<T, TopupError> {
    let mut tx = db.begin().await?;
    let out = f(&mut tx).await?;
    tx.commit().await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;
    use crate::topup::ledger::Model;

    fn usd(minor: i64) -> Money {
        Money::new(minor, Currency::new("USD").unwrap())
    }

    fn spec(id: &str, debit: &str, credit: &str, amount: i64, pending: bool) -> TransferSpec {
        TransferSpec {
            id: id.into(),
            debit: debit.into(),
            credit: credit.into(),
            amount: usd(amount),
            kind: "test".into(),
            pending,
        }
    }

    async fn setup(db: &Db, prefix: &str) {
        let c = Currency::new("USD").unwrap();
        let mut conn = db.pool().acquire().await.unwrap();
        for (id, kind) in [
            ("float", AccountKind::System),
            ("w", AccountKind::Wallet),
            ("carrier", AccountKind::Carrier),
        ] {
            open_account(&mut conn, &format!("{prefix}{id}"), c, kind, 1)
                .await
                .unwrap();
        }
    }

    async fn one(db: &Db, s: TransferSpec) -> Result<Transfer, TopupError> {
        in_tx(db, |c| Box::pin(async move { transfer(c, &s, 2).await })).await
    }

    #[tokio::test]
    async fn two_phase_transfers_and_idempotent_retries_on_both_backends() {
        for (db, _g) in testing::backends().await {
            setup(&db, "").await;
            one(&db, spec("fund", "float", "w", 1000, false))
                .await
                .unwrap();
            assert_eq!(
                one(&db, spec("fund", "float", "w", 1000, false))
                    .await
                    .unwrap()
                    .state,
                TransferState::Posted
            );
            assert!(matches!(
                one(&db, spec("fund", "float", "w", 5, false)).await,
                Err(TopupError::Ledger(LedgerError::IdConflict(_)))
            ));
            one(&db, spec("t1", "w", "carrier", 700, true))
                .await
                .unwrap();
            let err = one(&db, spec("t2", "w", "carrier", 400, true))
                .await
                .unwrap_err();
            assert_eq!(err.code(), "insufficient_funds", "{err}");
            // The failed attempt left nothing behind, not even its id.
            let mut c = db.pool().acquire().await.unwrap();
            assert!(transfer_by_id(&mut c, "t2").await.unwrap().is_none());
            assert_eq!(post(&mut c, "t1", 3).await.unwrap(), Resolution::Done);
            assert_eq!(
                post(&mut c, "t1", 3).await.unwrap(),
                Resolution::AlreadyDone
            );
            assert!(void(&mut c, "t1", 3).await.is_err());
            let w = account(&mut c, "w").await.unwrap().unwrap();
            assert_eq!((w.balance(), w.available()), (300, 300));
            drop(c);
            let report = check_books(&db).await.unwrap();
            assert!(report.balanced(), "{report:?}");
            assert_eq!(report.transfers, 2);
        }
    }

    #[tokio::test]
    async fn fifty_concurrent_debits_never_overdraw_on_both_backends() {
        for (db, _g) in testing::backends().await {
            setup(&db, "").await;
            one(&db, spec("fund", "float", "w", 1000, false))
                .await
                .unwrap();
            let mut tasks = vec![];
            for i in 0..50 {
                let db = db.clone();
                tasks.push(tokio::spawn(async move {
                    one(&db, spec(&format!("d{i}"), "w", "carrier", 70, true)).await
                }));
            }
            let mut ok = 0;
            for t in tasks {
                match t.await.unwrap() {
                    Ok(_) => ok += 1,
                    Err(e) => assert_eq!(e.code(), "insufficient_funds", "{e}"),
                }
            }
            assert_eq!(ok, 1000 / 70, "{:?}", db.backend());
            let mut c = db.pool().acquire().await.unwrap();
            assert_eq!(
                account(&mut c, "w").await.unwrap().unwrap().available(),
                1000 % 70
            );
            drop(c);
            assert!(check_books(&db).await.unwrap().balanced());
        }
    }

    #[tokio::test]
    async fn fifty_concurrent_retries_of_one_id_apply_once() {
        for (db, _g) in testing::backends().await {
            setup(&db, "").await;
            let mut tasks = vec![];
            for _ in 0..50 {
                let db = db.clone();
                tasks.push(tokio::spawn(async move {
                    one(&db, spec("same", "float", "w", 10, false)).await
                }));
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            let mut c = db.pool().acquire().await.unwrap();
            assert_eq!(
                account(&mut c, "w").await.unwrap().unwrap().balance(),
                10,
                "{:?}",
                db.backend()
            );
        }
    }

    /// Random sequences of operations give the same results and balances on the database as
    /// on the in-memory model, and the books balance after every step.
    #[tokio::test]
    async fn random_operation_sequences_match_the_model() {
        for (db, _g) in testing::backends().await {
            let mut rng = 0x1234_5678_9abc_def1u64;
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            for case in 0..6 {
                let p = format!("c{case}-");
                setup(&db, &p).await;
                let c = Currency::new("USD").unwrap();
                let mut model = Model::default();
                model.open(&format!("{p}float"), c, AccountKind::System);
                model.open(&format!("{p}w"), c, AccountKind::Wallet);
                model.open(&format!("{p}carrier"), c, AccountKind::Carrier);
                let names = ["float", "w", "carrier"];
                let mut ids: Vec<String> = vec![];
                for step in 0..40 {
                    let op = next(10);
                    let (db_result, model_result) = if op < 6 || ids.is_empty() {
                        // New transfer (or a retry of an old id, sometimes with other fields).
                        let id = if op == 5 && !ids.is_empty() {
                            ids[next(ids.len() as u64) as usize].clone()
                        } else {
                            format!("{p}t{step}")
                        };
                        let d = names[next(3) as usize];
                        let cr = names[next(3) as usize];
                        let s = spec(
                            &id,
                            &format!("{p}{d}"),
                            &format!("{p}{cr}"),
                            1 + next(300) as i64,
                            next(2) == 0,
                        );
                        ids.push(id);
                        let m = model
                            .transfer(&s)
                            .map(|t| t.state.as_str())
                            .map_err(|e| e.to_string());
                        let r = one(&db, s)
                            .await
                            .map(|t| t.state.as_str())
                            .map_err(|e| e.to_string());
                        (r, m)
                    } else {
                        let id = ids[next(ids.len() as u64) as usize].clone();
                        let posting = op < 8;
                        let m = if posting {
                            model.post(&id)
                        } else {
                            model.void(&id)
                        };
                        let m = m
                            .map(|r| {
                                if r == Resolution::Done {
                                    "done"
                                } else {
                                    "again"
                                }
                            })
                            .map_err(|e| e.to_string());
                        let id2 = id.clone();
                        let r = in_tx(&db, move |conn| {
                            Box::pin(async move {
                                if posting {
                                    post(conn, &id2, 9).await
                                } else {
                                    void(conn, &id2, 9).await
                                }
                            })
                        })
                        .await
                        .map(|r| {
                            if r == Resolution::Done {
                                "done"
                            } else {
                                "again"
                            }
                        })
                        .map_err(|e| e.to_string());
                        (r, m)
                    };
                    assert_eq!(
                        db_result,
                        model_result,
                        "case {case} step {step} on {:?}",
                        db.backend()
                    );
                    let mut conn = db.pool().acquire().await.unwrap();
                    for n in names {
                        let id = format!("{p}{n}");
                        let a = account(&mut conn, &id).await.unwrap().unwrap();
                        assert_eq!(a, model.accounts[&id], "case {case} step {step}");
                    }
                }
                let report = check_books(&db).await.unwrap();
                assert!(report.balanced(), "{report:?}");
            }
        }
    }
}
