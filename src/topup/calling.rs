//! Paying for calls from a wallet: the balance is reserved when the call is placed (so it
//! cannot be spent twice while the call runs), the call is cut when the reservation is used up,
//! and at the end the reservation is released and the actual cost — billed by the
//! destination's increment, rounded up — is charged, in one transaction.
//!
//! Toll-fraud guard ([`CallLimits`]): a stolen wallet PIN must not turn into hours of calls to
//! premium-rate numbers. Destinations under a blocked prefix are refused; a wallet may have
//! only so many calls at once; one call may cost at most so much (the call is cut there); and
//! a wallet may spend at most so much on calls in any 24 hours. The rules are pure
//! ([`allowed_secs`]); [`Core::reserve_call`] reads the figures in the reserving transaction,
//! under the wallet's row lock, so two calls placed at once cannot both slip under a limit.

use std::time::Duration;

use sqlx::Row;

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

/// The toll-fraud limits of the calling service (`[calling]` in the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallLimits {
    /// Destination prefixes (country code first, digits only) no call may go to.
    pub blocked_prefixes: Vec<String>,
    /// Calls one wallet may have at once.
    pub max_calls_per_wallet: u32,
    /// The most one call may cost, per wallet currency (a currency not listed: no limit).
    pub max_cost_per_call: Vec<Money>,
    /// The most a wallet may spend on calls in any 24 hours, per currency.
    pub max_cost_per_day: Vec<Money>,
}

impl Default for CallLimits {
    fn default() -> Self {
        let usd = |s: &str| Money::parse(s).expect("a valid default");
        CallLimits {
            // ITU-T international premium rate (979) and the global/satellite numbering
            // (870 Inmarsat, 881 GMSS, 882/883 international networks): the classic
            // destinations of toll fraud, rarely called by a prepaid caller on purpose.
            blocked_prefixes: ["870", "881", "882", "883", "979"]
                .map(String::from)
                .to_vec(),
            max_calls_per_wallet: 2,
            max_cost_per_call: vec![usd("20.00USD")],
            max_cost_per_day: vec![usd("50.00USD")],
        }
    }
}

/// What the guard needs to know about a wallet right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalletCalls {
    pub balance: Money,
    /// Calls in progress (their reservations still pending).
    pub active: i64,
    /// Reserved or charged for calls in the last 24 hours.
    pub spent_last_day: Money,
}

fn limit_in(list: &[Money], c: Currency) -> Option<Money> {
    list.iter().find(|m| m.currency == c).copied()
}

/// Pure: whether calls to `e164` are refused outright.
pub fn blocked(e164: &str, limits: &CallLimits) -> bool {
    let digits = e164.trim_start_matches('+');
    limits
        .blocked_prefixes
        .iter()
        .any(|p| !p.is_empty() && digits.starts_with(p.as_str()))
}

/// Pure: how many seconds (whole increments) a new call to `e164` may last, at most `cap`, or
/// why it may not be placed: `blocked_destination`, `call_limit` (too many calls at once, or
/// the day's spending reached), `no_funds`.
pub fn allowed_secs(
    e164: &str,
    w: &WalletCalls,
    per_minute: Money,
    increment_secs: i64,
    cap: Duration,
    limits: &CallLimits,
) -> Result<i64, TopupError> {
    if blocked(e164, limits) {
        return Err(TopupError::DestinationBlocked);
    }
    if w.active >= limits.max_calls_per_wallet as i64 {
        return Err(TopupError::CallLimit("too many calls at once"));
    }
    let inc = increment_secs.max(1);
    let whole = |secs: i64| secs / inc * inc;
    let mut secs = affordable_secs(w.balance, per_minute).min(cap.as_secs() as i64);
    if let Some(max) = limit_in(&limits.max_cost_per_call, w.balance.currency) {
        secs = secs.min(affordable_secs(max, per_minute));
    }
    if let Some(max) = limit_in(&limits.max_cost_per_day, w.balance.currency) {
        let left = Money::new(max.minor - w.spent_last_day.minor, max.currency);
        let day_secs = whole(affordable_secs(left, per_minute));
        if day_secs <= 0 {
            return Err(TopupError::CallLimit("the day's calling limit is reached"));
        }
        secs = secs.min(day_secs);
    }
    // Whole increments only: the reservation always covers what the cut-off allows.
    let secs = whole(secs);
    if secs <= 0 {
        return Err(TopupError::NoFunds);
    }
    Ok(secs)
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
        let limits = &self.call_limits;
        if blocked(e164, limits) {
            return Err(TopupError::DestinationBlocked);
        }
        let balance = self.wallet_balance(wallet).await?;
        let (per_minute, increment_secs) = self
            .rate_for(e164, balance.currency)
            .await?
            .ok_or(TopupError::NoRate)?;
        let account = accounts::wallet(wallet);
        let mut tx = self.db.begin().await?;
        // Take the wallet's row lock first (SQLite's write lock is already held): calls placed
        // at the same moment count each other.
        sqlx::query("UPDATE accounts SET debits_pending = debits_pending WHERE id = $1")
            .bind(&account)
            .execute(&mut *tx)
            .await?;
        // A reservation older than the longest call (plus ring time) belongs to a call a
        // crash ended; it does not count as a call in progress.
        let active: i64 = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM transfers WHERE debit_account = $1
             AND kind = 'call' AND state = 'pending' AND created_at > $2",
        )
        .bind(&account)
        .bind(now - cap.as_millis() as i64 - 600_000)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        let spent: i64 = sqlx::query(
            "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS s FROM transfers
             WHERE debit_account = $1 AND kind = 'call' AND state <> 'voided' AND created_at > $2",
        )
        .bind(&account)
        .bind(now - 86_400_000)
        .fetch_one(&mut *tx)
        .await?
        .try_get("s")?;
        let balance = super::books::account(&mut tx, &account)
            .await?
            .map(|a| a.available_money())
            .unwrap_or(balance);
        let w = WalletCalls {
            balance,
            active,
            spent_last_day: Money::new(spent, balance.currency),
        };
        let secs = allowed_secs(e164, &w, per_minute, increment_secs, cap, limits)?;
        let reserved = call_cost(Duration::from_secs(secs as u64), per_minute, increment_secs);
        let reserved = Money::new(reserved.minor.min(balance.minor), balance.currency);
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

    #[test]
    fn the_guard_refuses_blocked_destinations_and_caps_calls_by_cost() {
        let limits = CallLimits {
            blocked_prefixes: vec!["979".into(), "4470".into()],
            max_calls_per_wallet: 2,
            max_cost_per_call: vec![usd("1.00USD")],
            max_cost_per_day: vec![usd("3.00USD")],
        };
        let w = |balance: &str, active, spent: &str| WalletCalls {
            balance: usd(balance),
            active,
            spent_last_day: usd(spent),
        };
        let hour = Duration::from_secs(3600);
        let rate = usd("0.60USD"); // 1.00 USD buys 100 s
        let allowed = |to: &str, wc: &WalletCalls| allowed_secs(to, wc, rate, 6, hour, &limits);
        assert!(matches!(
            allowed("+97912345678", &w("50.00USD", 0, "0USD")),
            Err(TopupError::DestinationBlocked)
        ));
        assert!(matches!(
            allowed("+447012345678", &w("50.00USD", 0, "0USD")),
            Err(TopupError::DestinationBlocked)
        ));
        // Not blocked: a longer number that merely contains a blocked prefix later on.
        assert_eq!(
            allowed("+447911979000", &w("50.00USD", 0, "0USD")).unwrap(),
            96,
            "1.00 USD per call: 100 s, whole 6 s increments"
        );
        assert!(matches!(
            allowed("+447911123456", &w("50.00USD", 2, "0USD")),
            Err(TopupError::CallLimit(_))
        ));
        // 2.50 spent today: 0.50 left buys 50 s → 48 s.
        assert_eq!(
            allowed("+447911123456", &w("50.00USD", 1, "2.50USD")).unwrap(),
            48
        );
        assert!(
            matches!(
                allowed("+447911123456", &w("50.00USD", 0, "2.95USD")),
                Err(TopupError::CallLimit(_)),
            ),
            "0.05 left: less than one 6 s increment"
        );
        // The balance is still the first limit.
        assert_eq!(
            allowed("+447911123456", &w("0.10USD", 0, "0USD")).unwrap(),
            6
        );
        assert!(matches!(
            allowed("+447911123456", &w("0.01USD", 0, "0USD")),
            Err(TopupError::NoFunds)
        ));
        // A wallet in a currency without a cost limit is held by the others only.
        let eur = Money::parse("50.00EUR").unwrap();
        let wc = WalletCalls {
            balance: eur,
            active: 0,
            spent_last_day: Money::parse("0EUR").unwrap(),
        };
        assert_eq!(
            allowed_secs(
                "+447911123456",
                &wc,
                Money::parse("0.60EUR").unwrap(),
                6,
                hour,
                &limits
            )
            .unwrap(),
            3600
        );
    }

    #[tokio::test]
    async fn the_guard_counts_calls_in_progress_and_the_days_spending_from_the_books() {
        for (core, _g) in cores().await {
            core.seed_demo(1).await.unwrap();
            let core = core.with_call_limits(CallLimits {
                blocked_prefixes: vec![],
                max_calls_per_wallet: 2,
                max_cost_per_call: vec![usd("1.00USD")],
                max_cost_per_day: vec![usd("2.50USD")],
            });
            let w = crate::topup::demo::WALLET; // 25.00 USD; +52 at 0.05/min
            let to = "+525512345678";
            let hour = Duration::from_secs(3600);
            let t0 = 1_000_000_000;
            let a = core.reserve_call("a", w, to, hour, t0).await.unwrap();
            assert_eq!(a.reserved.to_string(), "1.00 USD", "the per-call cap");
            let b = core.reserve_call("b", w, to, hour, t0 + 1).await.unwrap();
            let e = core
                .reserve_call("c", w, to, hour, t0 + 2)
                .await
                .unwrap_err();
            assert_eq!(e.code(), "call_limit", "a third call at once");
            // Both end: 2.00 reserved is released, 0.10 + 1.00 charged.
            core.settle_call("a", w, &a, Duration::from_secs(90), t0 + 3)
                .await
                .unwrap();
            core.settle_call("b", w, &b, hour, t0 + 4).await.unwrap();
            // 1.10 spent today: 1.40 left, but one call costs at most 1.00.
            let c = core.reserve_call("c", w, to, hour, t0 + 5).await.unwrap();
            assert_eq!(c.reserved.to_string(), "1.00 USD");
            core.settle_call("c", w, &c, hour, t0 + 6).await.unwrap();
            // 2.10 spent: 0.40 left buys 8 minutes.
            let d = core.reserve_call("d", w, to, hour, t0 + 7).await.unwrap();
            assert_eq!(
                (d.reserved.to_string(), d.max.as_secs()),
                ("0.40 USD".into(), 480)
            );
            core.settle_call("d", w, &d, d.max, t0 + 8).await.unwrap();
            let e = core
                .reserve_call("e", w, to, hour, t0 + 9)
                .await
                .unwrap_err();
            assert_eq!(e.code(), "call_limit", "the day's limit is spent");
            // A day later the limit is back; a reservation a crash left behind long ago is no
            // call in progress.
            let day = 86_400_000;
            let stale = core
                .reserve_call("stale", w, to, hour, t0 + day + 10)
                .await
                .unwrap();
            assert!(stale.reserved.minor > 0);
            core.reserve_call("f", w, to, hour, t0 + 2 * day)
                .await
                .unwrap();
            core.reserve_call("g", w, to, hour, t0 + 2 * day + 1)
                .await
                .unwrap();
            let e = core
                .reserve_call("h", w, to, hour, t0 + 2 * day + 2)
                .await
                .unwrap_err();
            assert_eq!(e.code(), "call_limit", "f and g are in progress");
            assert!(check_books(&core.db).await.unwrap().balanced());
        }
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
