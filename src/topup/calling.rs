//! Paying for calls from a wallet: the balance is reserved when the call is placed (so it
//! cannot be spent twice while the call runs), the call is cut when the reservation is used up,
//! and at the end the reservation is released and the actual cost — billed by the
//! destination's increment, rounded up — is charged, in one transaction.

use std::time::Duration;

use super::books::{open_account, transfer, void};
use super::ledger::{AccountKind, TransferSpec, accounts};
use super::money::{Currency, Money};
use super::{Core, TopupError};

/// What a call may cost and last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallBudget {
    pub reserved: Money,
    pub per_minute: Money,
    pub increment_secs: i64,
    /// The longest the call may last.
    pub max: Duration,
}

/// The system account calls are paid into.
pub fn calls_account(c: Currency) -> String {
    format!("system:calls:{c}")
}

/// Pure: seconds `balance` pays for at `per_minute` (rounded down).
pub fn affordable_secs(balance: Money, per_minute: Money) -> i64 {
    if per_minute.minor <= 0 || balance.minor <= 0 {
        return 0;
    }
    ((balance.minor as i128 * 60) / per_minute.minor as i128) as i64
}

/// Pure: the cost of a call of `talk` length: whole increments (rounded up), priced per
/// minute, rounded up to the minor unit.
pub fn call_cost(talk: Duration, per_minute: Money, increment_secs: i64) -> Money {
    let inc = increment_secs.max(1) as u128;
    let millis = talk.as_millis();
    let increments = millis.div_ceil(inc * 1000);
    let billed_secs = increments * inc;
    let cost = (billed_secs * per_minute.minor.max(0) as u128).div_ceil(60);
    Money::new(cost as i64, per_minute.currency)
}

impl Core {
    /// Reserves what a call to `e164` may cost, up to `cap` of talk time. Fails with
    /// `no_rate` when there is no rate and `no_funds` when the balance pays for less than one
    /// billing increment.
    pub async fn reserve_call(
        &self,
        id: &str,
        wallet: &str,
        e164: &str,
        cap: Duration,
        now: i64,
    ) -> Result<CallBudget, TopupError> {
        let balance = self.wallet_balance(wallet).await?;
        let (per_minute, increment_secs) = self
            .rate_for(e164, balance.currency)
            .await?
            .ok_or(TopupError::NoRate)?;
        let secs = affordable_secs(balance, per_minute).min(cap.as_secs() as i64);
        // Whole increments only: the reservation always covers what the cut-off allows.
        let secs = secs / increment_secs.max(1) * increment_secs.max(1);
        if secs <= 0 {
            return Err(TopupError::NoFunds);
        }
        let reserved = call_cost(Duration::from_secs(secs as u64), per_minute, increment_secs);
        let reserved = Money::new(reserved.minor.min(balance.minor), balance.currency);
        let mut tx = self.db.begin().await?;
        open_account(
            &mut tx,
            &calls_account(balance.currency),
            balance.currency,
            AccountKind::System,
            now,
        )
        .await?;
        transfer(
            &mut tx,
            &TransferSpec {
                id: format!("call:{id}:reserve"),
                debit: accounts::wallet(wallet),
                credit: calls_account(balance.currency),
                amount: reserved,
                kind: "call".into(),
                pending: true,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(CallBudget {
            reserved,
            per_minute,
            increment_secs,
            max: Duration::from_secs(secs as u64),
        })
    }

    /// Ends a call's billing: releases the reservation and charges `talk` time (never more
    /// than was reserved). Safe to repeat.
    pub async fn settle_call(
        &self,
        id: &str,
        wallet: &str,
        budget: &CallBudget,
        talk: Duration,
        now: i64,
    ) -> Result<Money, TopupError> {
        let cost = call_cost(talk, budget.per_minute, budget.increment_secs);
        let cost = Money::new(cost.minor.min(budget.reserved.minor), cost.currency);
        let mut tx = self.db.begin().await?;
        void(&mut tx, &format!("call:{id}:reserve"), now).await?;
        if cost.minor > 0 {
            transfer(
                &mut tx,
                &TransferSpec {
                    id: format!("call:{id}:charge"),
                    debit: accounts::wallet(wallet),
                    credit: calls_account(cost.currency),
                    amount: cost,
                    kind: "call".into(),
                    pending: false,
                },
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topup::books::check_books;
    use crate::topup::testing::cores;

    fn usd(s: &str) -> Money {
        Money::parse(s).unwrap()
    }

    #[test]
    fn calls_are_billed_by_whole_increments_rounded_up() {
        assert_eq!(
            call_cost(Duration::from_secs(0), usd("0.05USD"), 60).minor,
            0
        );
        assert_eq!(
            call_cost(Duration::from_millis(1), usd("0.05USD"), 60).minor,
            5
        );
        assert_eq!(
            call_cost(Duration::from_secs(61), usd("0.05USD"), 60).minor,
            10
        );
        assert_eq!(
            call_cost(Duration::from_secs(7), usd("0.05USD"), 6).minor,
            1,
            "12 s of 5 cents/min = 1 cent"
        );
        assert_eq!(
            call_cost(Duration::from_secs(6), usd("1.00USD"), 6).minor,
            10
        );
        assert_eq!(affordable_secs(usd("0.10USD"), usd("1.00USD")), 6);
        assert_eq!(affordable_secs(usd("0USD"), usd("1.00USD")), 0);
    }

    #[tokio::test]
    async fn a_call_reserves_its_cap_and_charges_what_was_used() {
        for (core, _g) in cores().await {
            core.seed_demo(1).await.unwrap();
            let w = crate::topup::demo::WALLET; // 25.00 USD; the demo rate to +52 is 0.05/min
            let b = core
                .reserve_call("c1", w, "+525512345678", Duration::from_secs(3600), 2)
                .await
                .unwrap();
            assert_eq!(
                (b.reserved.to_string(), b.max.as_secs()),
                ("3.00 USD".into(), 3600)
            );
            assert_eq!(
                core.wallet_balance(w).await.unwrap().to_string(),
                "22.00 USD",
                "reserved"
            );
            let cost = core
                .settle_call("c1", w, &b, Duration::from_secs(125), 3)
                .await
                .unwrap();
            assert_eq!(cost.to_string(), "0.15 USD", "3 started minutes");
            assert_eq!(
                core.wallet_balance(w).await.unwrap().to_string(),
                "24.85 USD"
            );
            // Settling again changes nothing.
            core.settle_call("c1", w, &b, Duration::from_secs(125), 4)
                .await
                .unwrap();
            assert_eq!(
                core.wallet_balance(w).await.unwrap().to_string(),
                "24.85 USD"
            );
            assert!(matches!(
                core.reserve_call("c2", w, "+447911123456", Duration::from_secs(60), 5)
                    .await,
                Err(TopupError::NoRate)
            ));
            assert!(check_books(&core.db).await.unwrap().balanced());
        }
    }
}
