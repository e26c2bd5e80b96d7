//! PIN cards (vouchers): generated or imported in batches, stored with only the PIN's keyed
//! hash, redeemed exactly once — one conditional UPDATE decides the winner, and the card's
//! value moves into the caller's wallet in the same transaction.

use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::books::{open_account, transfer};
use super::ledger::{AccountKind, TransferSpec, accounts};
use super::money::{Currency, Money};
use super::secrets::{Pin, random_digits};
use super::{Core, TopupError, auth};

/// Digits in generated serials and PINs.
pub const SERIAL_DIGITS: usize = 12;
pub const PIN_DIGITS: usize = 14;
const DAY_MS: i64 = 86_400_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Card {
    pub serial: String,
    pub batch: String,
    pub value: String,
    pub currency: String,
    /// active, redeemed, expired, blocked, locked
    pub state: String,
    pub expires_at: i64,
    pub redeemed_at: Option<i64>,
    pub redeemed_by: Option<String>,
    pub failed_attempts: i64,
}

/// A freshly generated card: the only time its PIN exists in clear.
#[derive(Clone, Debug)]
pub struct NewCard {
    pub serial: String,
    pub pin: Pin,
    pub value: Money,
    pub batch: String,
    pub expires_at: i64,
}

/// What a redemption did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redeemed {
    pub serial: String,
    pub value: Money,
    /// The wallet's balance after the card's value arrived.
    pub wallet_balance: Money,
}

/// "2027-12-31" → Unix ms at the end of that day (UTC).
pub fn parse_date_end(s: &str) -> Option<i64> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(s.trim(), &fmt).ok()?;
    Some((d.midnight().assume_utc().unix_timestamp() + 86_400) * 1000 - 1)
}

pub fn format_date(ms: i64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_default()
}

impl Core {
    /// Creates `count` cards of `value`; returns them with their PINs (print once, then they
    /// exist only as hashes).
    pub async fn generate_cards(
        &self,
        batch: &str,
        count: usize,
        value: Money,
        expires_at: i64,
        now: i64,
    ) -> Result<Vec<NewCard>, TopupError> {
        if value.minor <= 0 {
            return Err(TopupError::Money(super::money::MoneyError::Malformed(
                value.to_string(),
            )));
        }
        let mut out = Vec::with_capacity(count);
        let mut tx = self.db.begin().await?;
        while out.len() < count {
            let card = NewCard {
                serial: random_digits(SERIAL_DIGITS),
                pin: Pin::new(&random_digits(PIN_DIGITS)),
                value,
                batch: batch.to_string(),
                expires_at,
            };
            // A clash of serial or PIN hash (rare) just draws again.
            if self.insert_card(&mut tx, &card, now).await? {
                out.push(card);
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Imports cards from CSV (`serial,pin,value,currency[,batch][,expires]`, header first).
    /// All or nothing: any bad line refuses the file, naming the line.
    pub async fn import_cards(
        &self,
        csv: &str,
        default_batch: &str,
        now: i64,
    ) -> Result<usize, CardImportError> {
        let mut lines = csv
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let Some((_, header)) = lines.next() else {
            return Err(CardImportError::line(1, "empty file"));
        };
        let cols: Vec<String> = header
            .split(',')
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
        let col = |name: &str| cols.iter().position(|c| c == name);
        let (Some(ci_serial), Some(ci_pin), Some(ci_value), Some(ci_cur)) =
            (col("serial"), col("pin"), col("value"), col("currency"))
        else {
            return Err(CardImportError::line(
                1,
                "header must name serial, pin, value, currency",
            ));
        };
        let (ci_batch, ci_exp) = (col("batch"), col("expires"));
        let mut cards = vec![];
        for (i, line) in lines {
            let n = i + 1;
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let get = |c: usize| f.get(c).copied().unwrap_or("");
            let serial = get(ci_serial);
            if serial.is_empty()
                || serial.len() > 32
                || !serial
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(CardImportError::line(n, "bad serial"));
            }
            let pin = Pin::new(get(ci_pin));
            if !pin.is_well_formed() {
                return Err(CardImportError::line(n, "PIN must be 4 to 20 digits"));
            }
            let currency =
                Currency::new(get(ci_cur)).map_err(|e| CardImportError::line(n, &e.to_string()))?;
            let value = Money::parse_amount(get(ci_value), currency)
                .map_err(|e| CardImportError::line(n, &e.to_string()))?;
            if value.minor <= 0 {
                return Err(CardImportError::line(n, "value must be positive"));
            }
            let expires_at = match ci_exp.map(get).filter(|s| !s.is_empty()) {
                Some(d) => parse_date_end(d)
                    .ok_or_else(|| CardImportError::line(n, "expires must be YYYY-MM-DD"))?,
                None => now + 365 * DAY_MS,
            };
            let batch = ci_batch
                .map(get)
                .filter(|s| !s.is_empty())
                .unwrap_or(default_batch);
            cards.push((
                n,
                NewCard {
                    serial: serial.to_string(),
                    pin,
                    value,
                    batch: batch.to_string(),
                    expires_at,
                },
            ));
        }
        let mut tx = self.db.begin().await?;
        for (n, card) in &cards {
            if !self
                .insert_card(&mut tx, card, now)
                .await
                .map_err(CardImportError::Core)?
            {
                return Err(CardImportError::line(*n, "serial or PIN already exists"));
            }
        }
        tx.commit()
            .await
            .map_err(|e| CardImportError::Core(e.into()))?;
        Ok(cards.len())
    }

    /// Inserts one card; false if its serial or PIN hash is taken.
    async fn insert_card(
        &self,
        conn: &mut AnyConnection,
        c: &NewCard,
        now: i64,
    ) -> Result<bool, TopupError> {
        let n = sqlx::query(
            "INSERT INTO cards (serial, pin_hash, batch, face_minor, currency, expires_at, state, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'active', $7) ON CONFLICT DO NOTHING",
        )
        .bind(&c.serial)
        .bind(self.pepper.card_pin_hash(&c.pin))
        .bind(&c.batch)
        .bind(c.value.minor)
        .bind(c.value.currency.code())
        .bind(c.expires_at)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    pub async fn card(&self, serial: &str, now: i64) -> Result<Option<Card>, TopupError> {
        let row = sqlx::query(
            "SELECT serial, batch, face_minor, currency, state, expires_at, redeemed_at, redeemed_by, failed_attempts
             FROM cards WHERE serial = $1",
        )
        .bind(serial)
        .fetch_optional(self.db.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        let currency: String = r.try_get("currency")?;
        let cur = Currency::new(&currency)
            .map_err(|_| TopupError::Corrupt(format!("card {serial}: currency")))?;
        let mut state: String = r.try_get("state")?;
        let expires_at: i64 = r.try_get("expires_at")?;
        if state == "active" && expires_at <= now {
            state = "expired".into();
        }
        Ok(Some(Card {
            serial: r.try_get("serial")?,
            batch: r.try_get("batch")?,
            value: Money::new(r.try_get("face_minor")?, cur).amount_string(),
            currency,
            state,
            expires_at,
            redeemed_at: r.try_get("redeemed_at")?,
            redeemed_by: r.try_get("redeemed_by")?,
            failed_attempts: r.try_get("failed_attempts")?,
        }))
    }

    /// Blocks (or unblocks) a card that has not been redeemed. Returns false if there is no
    /// such card or it was redeemed.
    pub async fn set_card_blocked(&self, serial: &str, blocked: bool) -> Result<bool, TopupError> {
        let (from, to) = if blocked {
            ("active", "blocked")
        } else {
            ("blocked", "active")
        };
        let n = sqlx::query(
            "UPDATE cards SET state = $1, failed_attempts = 0 WHERE serial = $2 AND (state = $3 OR state = 'locked')",
        )
        .bind(to)
        .bind(serial)
        .bind(from)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Redeems a card into the wallet of `ani` (opened in the card's currency if it has
    /// none). `serial`, when the channel has it (retail, API), also counts wrong PINs against
    /// that card. Exactly one of any number of simultaneous attempts wins.
    pub async fn redeem_card(
        &self,
        pin: &Pin,
        serial: Option<&str>,
        ani: &str,
        now: i64,
    ) -> Result<Redeemed, TopupError> {
        self.redeem(pin, serial, ani, ani, now, false).await
    }

    /// As [`Core::redeem_card`] into `wallet` for someone else, `trier` (an API key, as
    /// `apikey:<id>`): wrong PINs and the velocity limits count against the one who tries,
    /// never against the wallet named in the request, or anyone could lock a stranger's
    /// wallet by naming it.
    pub async fn redeem_card_for(
        &self,
        pin: &Pin,
        serial: Option<&str>,
        wallet: &str,
        trier: &str,
        now: i64,
    ) -> Result<Redeemed, TopupError> {
        self.redeem(pin, serial, wallet, trier, now, false).await
    }

    /// Redeems a card to recharge the caller's wallet: as [`Core::redeem_card`], and the
    /// owner is told by SMS ("10.00 USD was added to your wallet"). A card redeemed on the
    /// way to a top-up uses `redeem_card`: the top-up's confirmation says it all.
    pub async fn recharge_wallet(
        &self,
        pin: &Pin,
        ani: &str,
        now: i64,
    ) -> Result<Redeemed, TopupError> {
        self.redeem(pin, None, ani, ani, now, true).await
    }

    /// Redeems into `ani`'s wallet; `trier` is who is trying (failures count against it).
    async fn redeem(
        &self,
        pin: &Pin,
        serial: Option<&str>,
        ani: &str,
        trier: &str,
        now: i64,
        notify: bool,
    ) -> Result<Redeemed, TopupError> {
        let hash = self.pepper.card_pin_hash(pin);
        let mut tx = self.db.begin().await?;
        auth::check_velocity(&mut tx, trier, now, &self.policy).await?;
        let won = sqlx::query(
            "UPDATE cards SET state = 'redeemed', redeemed_at = $1, redeemed_by = $2
             WHERE pin_hash = $3 AND state = 'active' AND expires_at > $1 AND ($4 = '' OR serial = $4)",
        )
        .bind(now)
        .bind(ani)
        .bind(&hash)
        .bind(serial.unwrap_or(""))
        .execute(&mut *tx)
        .await?
        .rows_affected();

        if won == 1 {
            let r =
                sqlx::query("SELECT serial, face_minor, currency FROM cards WHERE pin_hash = $1")
                    .bind(&hash)
                    .fetch_one(&mut *tx)
                    .await?;
            let serial: String = r.try_get("serial")?;
            let currency: String = r.try_get("currency")?;
            let cur = Currency::new(&currency)
                .map_err(|_| TopupError::Corrupt(format!("card {serial}: currency")))?;
            let value = Money::new(r.try_get("face_minor")?, cur);
            let wallet = self.open_wallet_in(&mut tx, ani, cur, now).await?;
            open_account(
                &mut tx,
                &accounts::card_float(cur),
                cur,
                AccountKind::System,
                now,
            )
            .await?;
            transfer(
                &mut tx,
                &TransferSpec {
                    id: format!("redeem:{serial}"),
                    debit: accounts::card_float(cur),
                    credit: wallet.clone(),
                    amount: value,
                    kind: "redeem".into(),
                    pending: false,
                },
                now,
            )
            .await?;
            let balance = super::books::account(&mut tx, &wallet)
                .await?
                .map(|a| a.balance_money())
                .unwrap_or(value);
            if notify {
                self.notify(
                    &mut tx,
                    crate::topup::notify::Notification {
                        id: format!("redeem:{serial}"),
                        kind: "wallet_recharged",
                        to: ani.to_string(),
                        language: None,
                        vars: vec![
                            ("amount", value.to_string()),
                            ("currency", cur.code().to_string()),
                            ("balance", balance.to_string()),
                            ("reference", serial.clone()),
                        ],
                        reference: Some(format!("card:{serial}")),
                    },
                    now,
                )
                .await?;
            }
            tx.commit().await?;
            return Ok(Redeemed {
                serial,
                value,
                wallet_balance: balance,
            });
        }

        // Lost: say why, and count a wrong PIN.
        let row = sqlx::query("SELECT serial, state, expires_at FROM cards WHERE pin_hash = $1")
            .bind(&hash)
            .fetch_optional(&mut *tx)
            .await?;
        let err = match row {
            Some(r)
                if serial
                    .is_none_or(|s| r.try_get::<String, _>("serial").is_ok_and(|x| x == s)) =>
            {
                let state: String = r.try_get("state")?;
                let expires_at: i64 = r.try_get("expires_at")?;
                match state.as_str() {
                    "redeemed" => TopupError::CardRedeemed,
                    "blocked" => TopupError::CardBlocked,
                    "locked" => TopupError::Locked("card"),
                    _ if expires_at <= now => TopupError::CardExpired,
                    _ => TopupError::Corrupt("card neither redeemable nor refused".into()),
                }
            }
            _ => {
                auth::record_failure(&mut tx, trier, "card", now).await?;
                match serial {
                    Some(s) => self.count_card_failure(&mut tx, s).await?,
                    None => TopupError::InvalidPin,
                }
            }
        };
        tx.commit().await?;
        Err(err)
    }

    async fn count_card_failure(
        &self,
        conn: &mut AnyConnection,
        serial: &str,
    ) -> Result<TopupError, TopupError> {
        let row = sqlx::query("SELECT failed_attempts, state FROM cards WHERE serial = $1")
            .bind(serial)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(r) = row else {
            return Ok(TopupError::InvalidPin);
        };
        let failed: i64 = r.try_get("failed_attempts")?;
        let state: String = r.try_get("state")?;
        if state == "locked" {
            return Ok(TopupError::Locked("card"));
        }
        let lock = state == "active" && auth::locks_after(failed, &self.policy);
        sqlx::query(
            "UPDATE cards SET failed_attempts = failed_attempts + 1,
                state = CASE WHEN $1 = 1 THEN 'locked' ELSE state END WHERE serial = $2",
        )
        .bind(lock as i64)
        .bind(serial)
        .execute(&mut *conn)
        .await?;
        Ok(if lock {
            TopupError::Locked("card")
        } else {
            TopupError::InvalidPin
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CardImportError {
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error(transparent)]
    Core(#[from] TopupError),
}

impl CardImportError {
    fn line(line: usize, reason: &str) -> Self {
        CardImportError::Line {
            line,
            reason: reason.to_string(),
        }
    }
}

impl From<crate::store::StoreError> for CardImportError {
    fn from(e: crate::store::StoreError) -> Self {
        CardImportError::Core(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topup::books::check_books;
    use crate::topup::testing::cores;

    fn usd(s: &str) -> Money {
        Money::parse(&format!("{s}USD")).unwrap()
    }

    const NOW: i64 = 1_800_000_000_000;

    #[tokio::test]
    async fn card_cannot_be_redeemed_twice_even_by_fifty_callers_at_once() {
        for (core, _g) in cores().await {
            let cards = core
                .generate_cards("B1", 1, usd("10.00"), NOW + DAY_MS, NOW)
                .await
                .unwrap();
            let pin = cards[0].pin.clone();
            let mut tasks = vec![];
            for i in 0..50 {
                let (core, pin) = (core.clone(), pin.clone());
                tasks.push(tokio::spawn(async move {
                    core.redeem_card(&pin, None, &format!("+1555010{i:02}"), NOW)
                        .await
                }));
            }
            let mut winners = 0;
            for t in tasks {
                match t.await.unwrap() {
                    Ok(r) => {
                        winners += 1;
                        assert_eq!(r.value, usd("10.00"));
                        assert_eq!(r.wallet_balance, usd("10.00"));
                    }
                    Err(e) => assert_eq!(e.code(), "card_used", "{e}"),
                }
            }
            assert_eq!(winners, 1, "{:?}", core.db.backend());
            let card = core.card(&cards[0].serial, NOW).await.unwrap().unwrap();
            assert_eq!(card.state, "redeemed");
            let report = check_books(&core.db).await.unwrap();
            assert!(report.balanced(), "{report:?}");
            assert_eq!(report.transfers, 1);
        }
    }

    #[tokio::test]
    async fn expired_blocked_and_unknown_cards_are_refused_with_reasons() {
        for (core, _g) in cores().await {
            let c = core
                .generate_cards("B2", 3, usd("5"), NOW + DAY_MS, NOW)
                .await
                .unwrap();
            assert!(matches!(
                core.redeem_card(&c[0].pin, None, "+15550001", NOW + 2 * DAY_MS)
                    .await,
                Err(TopupError::CardExpired)
            ));
            assert!(core.set_card_blocked(&c[1].serial, true).await.unwrap());
            assert!(matches!(
                core.redeem_card(&c[1].pin, None, "+15550001", NOW).await,
                Err(TopupError::CardBlocked)
            ));
            assert!(matches!(
                core.redeem_card(&Pin::new("99999999999999"), None, "+15550001", NOW)
                    .await,
                Err(TopupError::InvalidPin)
            ));
            // The serial must match when given.
            assert!(matches!(
                core.redeem_card(&c[2].pin, Some(&c[0].serial), "+15550002", NOW)
                    .await,
                Err(TopupError::InvalidPin)
            ));
            assert_eq!(
                core.card(&c[0].serial, NOW + 2 * DAY_MS)
                    .await
                    .unwrap()
                    .unwrap()
                    .state,
                "expired"
            );
            assert!(core.card("nope", NOW).await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn wrong_pins_against_a_serial_lock_the_card() {
        for (core, _g) in cores().await {
            let c = core
                .generate_cards("B3", 1, usd("5"), NOW + DAY_MS, NOW)
                .await
                .unwrap();
            for i in 0..4 {
                let e = core
                    .redeem_card(
                        &Pin::new("1111"),
                        Some(&c[0].serial),
                        &format!("+1555000{i}"),
                        NOW,
                    )
                    .await
                    .unwrap_err();
                assert!(matches!(e, TopupError::InvalidPin), "{e}");
            }
            let e = core
                .redeem_card(&Pin::new("1111"), Some(&c[0].serial), "+15550009", NOW)
                .await
                .unwrap_err();
            assert!(matches!(e, TopupError::Locked("card")), "{e}");
            // Even the right PIN is refused now, until staff unblock it.
            assert!(
                core.redeem_card(&c[0].pin, Some(&c[0].serial), "+15550010", NOW)
                    .await
                    .is_err()
            );
            assert!(core.set_card_blocked(&c[0].serial, false).await.unwrap());
            core.redeem_card(&c[0].pin, Some(&c[0].serial), "+15550010", NOW)
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn one_caller_guessing_pins_is_rate_limited() {
        for (core, _g) in cores().await {
            let c = core
                .generate_cards("B4", 1, usd("5"), NOW + DAY_MS, NOW)
                .await
                .unwrap();
            for i in 0..10 {
                let e = core
                    .redeem_card(
                        &Pin::new(&format!("5555000{i}")),
                        None,
                        "+15559999",
                        NOW + i,
                    )
                    .await
                    .unwrap_err();
                assert!(matches!(e, TopupError::InvalidPin));
            }
            let e = core
                .redeem_card(&c[0].pin, None, "+15559999", NOW + 20)
                .await
                .unwrap_err();
            assert!(matches!(e, TopupError::RateLimited), "{e}");
            // Another caller is not affected; the first may try again after an hour.
            core.redeem_card(&c[0].pin, None, "+15558888", NOW + 21)
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn many_callers_guessing_at_once_trip_the_platform_limit() {
        use crate::topup::auth::AuthPolicy;
        for (core, _g) in cores().await {
            let core = Core {
                policy: AuthPolicy {
                    global_failures_per_minute: 20,
                    ..AuthPolicy::default()
                },
                ..core
            };
            let c = core
                .generate_cards("B5", 1, usd("5"), NOW + DAY_MS, NOW)
                .await
                .unwrap();
            // Twenty callers, one wrong guess each: no caller is over its own limit.
            for i in 0..20 {
                let e = core
                    .redeem_card(
                        &Pin::new("55550000"),
                        None,
                        &format!("+1555700{i:04}"),
                        NOW + i,
                    )
                    .await
                    .unwrap_err();
                assert!(matches!(e, TopupError::InvalidPin), "{e}");
            }
            // The platform is: even a new caller with the right PIN waits for the minute to pass.
            let e = core
                .redeem_card(&c[0].pin, None, "+15557999999", NOW + 30)
                .await
                .unwrap_err();
            assert!(matches!(e, TopupError::RateLimited), "{e}");
            core.redeem_card(&c[0].pin, None, "+15557999999", NOW + 61_000)
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn import_is_all_or_nothing_and_names_the_line() {
        for (core, _g) in cores().await {
            let good = "serial,pin,value,currency,batch,expires\nS1,12345678,10.00,USD,IMP,2099-12-31\nS2,87654321,50000,VND,,\n";
            assert_eq!(core.import_cards(good, "default", NOW).await.unwrap(), 2);
            let card = core.card("S2", NOW).await.unwrap().unwrap();
            assert_eq!(
                (
                    card.batch.as_str(),
                    card.value.as_str(),
                    card.currency.as_str()
                ),
                ("default", "50000", "VND")
            );
            let bad = "serial,pin,value,currency\nS3,11112222,1.00,USD\nS4,12,1.00,USD\n";
            let e = core
                .import_cards(bad, "b", NOW)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("line 3:"), "{e}");
            assert!(
                core.card("S3", NOW).await.unwrap().is_none(),
                "nothing imported"
            );
            let dup = "serial,pin,value,currency\nS5,12345678,1.00,USD\n";
            assert!(
                core.import_cards(dup, "b", NOW)
                    .await
                    .unwrap_err()
                    .to_string()
                    .contains("already exists")
            );
            let r = core
                .redeem_card(&Pin::new("12345678"), None, "+15550123", NOW)
                .await
                .unwrap();
            assert_eq!(r.serial, "S1");
        }
    }
}
