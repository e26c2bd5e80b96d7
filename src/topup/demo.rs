//! Demo data, seeded into an empty database so every flow works out of the box: carriers and
//! products (sandbox adapters: nothing leaves the machine), calling rates, a wallet, prepaid
//! accounts and PIN cards whose PINs are printed in the README.

use super::books::{open_account, transfer};
use super::ledger::{AccountKind, TransferSpec, accounts};
use super::money::{Currency, Money};
use super::secrets::Pin;
use super::{Core, TopupError};

pub const CARRIERS: &str = include_str!("../../demo/carriers.toml");
pub const CARDS: &str = include_str!("../../demo/cards.csv");

/// The demo caller's wallet and its PIN.
pub const WALLET: &str = "+12015550100";
pub const WALLET_PIN: &str = "1234";
/// Prepaid accounts on our own network: (number, balance, low-balance threshold, language).
pub const PREPAID: [(&str, &str, &str, &str); 3] = [
    ("+12015550150", "1.20", "2.00", "en"),
    ("+12015550151", "15.00", "2.00", "es"),
    ("+12015550152", "0.00", "1.00", "vi"),
];
/// PIN of the linked funding source of the first prepaid account.
pub const FUNDING_PIN: &str = "4321";

impl Core {
    /// Credits (or with a negative amount, debits) an account from the adjustments account:
    /// staff corrections. `id` makes it idempotent.
    pub async fn adjust(
        &self,
        id: &str,
        account_id: &str,
        amount: Money,
        now: i64,
    ) -> Result<(), TopupError> {
        let mut tx = self.db.begin().await?;
        let adj = accounts::adjustments(amount.currency);
        open_account(&mut tx, &adj, amount.currency, AccountKind::System, now).await?;
        let (debit, credit) = if amount.minor >= 0 {
            (adj, account_id.to_string())
        } else {
            (account_id.to_string(), adj)
        };
        transfer(
            &mut tx,
            &TransferSpec {
                id: format!("adjust:{id}"),
                debit,
                credit,
                amount: Money::new(amount.minor.abs(), amount.currency),
                kind: "adjust".into(),
                pending: false,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Seeds the demo if the database has no carriers yet. Returns whether it did.
    pub async fn seed_demo(&self, now: i64) -> Result<bool, TopupError> {
        if !self.carriers().await?.is_empty() {
            return Ok(false);
        }
        self.import_carriers(CARRIERS, now)
            .await
            .map_err(|e| TopupError::Corrupt(format!("demo carriers: {e}")))?;
        self.import_cards(CARDS, "DEMO", now)
            .await
            .map_err(|e| TopupError::Corrupt(format!("demo cards: {e}")))?;
        let usd = Currency::new("USD").map_err(TopupError::Money)?;
        self.create_wallet(WALLET, usd, &Pin::new(WALLET_PIN), "en", now)
            .await?;
        self.adjust(
            "demo-wallet",
            &accounts::wallet(WALLET),
            Money::parse("25.00USD")?,
            now,
        )
        .await?;
        for (number, balance, threshold, lang) in PREPAID {
            self.create_prepaid(number, usd, Money::parse_amount(threshold, usd)?, lang, now)
                .await?;
            let b = Money::parse_amount(balance, usd)?;
            if b.minor > 0 {
                self.adjust(
                    &format!("demo-{number}"),
                    &accounts::prepaid(number),
                    b,
                    now,
                )
                .await?;
            }
        }
        self.link_funding(PREPAID[0].0, &Pin::new(FUNDING_PIN), now)
            .await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topup::adapters::Adapters;
    use crate::topup::books::check_books;
    use crate::topup::testing::cores;
    use crate::topup::topups::{Funding, TopupRequest};

    #[tokio::test]
    async fn the_demo_seeds_once_and_its_flows_work() {
        for (core, _g) in cores().await {
            let now = 1_800_000_000_000;
            assert!(core.seed_demo(now).await.unwrap());
            assert!(
                !core.seed_demo(now).await.unwrap(),
                "only into an empty database"
            );
            core.authenticate_wallet(WALLET, &Pin::new(WALLET_PIN), now)
                .await
                .unwrap();
            assert_eq!(
                core.wallet_balance(WALLET).await.unwrap().to_string(),
                "25.00 USD"
            );
            let n = core.lookup_number("+84 91 234 5678", None).await.unwrap();
            assert_eq!(n.carrier_id.as_deref(), Some("vinaphone-vn"));
            let n = core.lookup_number("+63 917 123 4567", None).await.unwrap();
            assert_eq!(n.carrier_id.as_deref(), Some("globe-ph"));
            let r = core
                .topup(
                    &Adapters::new(),
                    None,
                    &TopupRequest {
                        id: "demo-1".into(),
                        channel: "test".into(),
                        funding: Funding::Wallet(WALLET.into()),
                        payer: WALLET.into(),
                        recipient: "+525512345678".into(),
                        product_id: "telcel-mx-100".into(),
                        amount: None,
                        message: None,
                    },
                    now,
                )
                .await
                .unwrap();
            assert_eq!(r.state, crate::topup::topups::TopupState::Succeeded);
            // A printed demo card redeems.
            let red = core
                .redeem_card(&Pin::new("11112222333344"), None, "+12015550199", now)
                .await
                .unwrap();
            assert_eq!(red.value.to_string(), "10.00 USD");
            assert_eq!(
                core.prepaid(PREPAID[1].0).await.unwrap().unwrap().balance,
                "15.00"
            );
            assert!(check_books(&core.db).await.unwrap().balanced());
        }
    }
}
