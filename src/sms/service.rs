//! SMS commands carried out: an incoming message → the top-up core → the reply in the outbox.
//!
//! The sender's number (E.164) is the identity, as the caller's number is on the voice line.
//! An incoming message is first recorded in the inbox (PINs masked) under the SMSC's message
//! id, so a delivery the SMSC repeats is answered once. The reply is written in the same
//! transaction as the change it reports: a top-up's confirmation by the settlement, a wallet
//! recharge's by the redemption, an error reply together with marking the message answered.
//! Top-ups take the inbox id as their id, so processing a message again never moves money
//! twice.

use super::commands::{Command, Keywords, ParseError, parse};
use super::outbox::InboxClaim;
use crate::redact::Phone;
use crate::topup::adapters::Adapters;
use crate::topup::carriers::product_for_amount;
use crate::topup::money::Money;
use crate::topup::notify::Notification;
use crate::topup::numbers::Hlr;
use crate::topup::topups::{Funding, TopupRequest};
use crate::topup::{Core, TopupError};

/// An incoming message, whole (long messages already joined).
#[derive(Clone, Debug)]
pub struct Mo {
    /// Unique per message at the SMSC (`<smsc>:<message id>`), or generated (see
    /// `Core::identify_mo`).
    pub id: String,
    pub smsc: String,
    /// E.164.
    pub sender: String,
    pub destination: String,
    pub text: String,
    /// For a message without an SMSC id: the keyed hash of sender, destination and words
    /// (see `Pepper::mo_content_key`), kept to recognise it delivered again.
    pub content_key: Option<String>,
}

/// What handling a message came to (for the inbox and logs): the reply's message name, or
/// `duplicate`.
pub type Outcome = String;

pub struct Commands<'a> {
    pub core: &'a Core,
    pub adapters: &'a Adapters,
    pub hlr: Option<&'a Hlr>,
    pub keywords: &'a Keywords,
}

/// A reply still to write: message name and values.
struct Reply {
    kind: &'static str,
    vars: Vec<(&'static str, String)>,
    /// Written under this id instead of `reply:<inbox id>` (a lockout notice the
    /// authentication wrote already, to avoid saying it twice).
    id: Option<String>,
}

fn reply(kind: &'static str) -> Reply {
    Reply {
        kind,
        vars: vec![],
        id: None,
    }
}

/// What the command achieved on its own, or the reply it still needs.
enum Done {
    /// The core wrote the reply with the change (a confirmation, a failure notice).
    Written(&'static str),
    Reply(Reply),
}

impl Commands<'_> {
    /// Handles one message. Errors are the store's (the SMSC should deliver it again).
    pub async fn handle(&self, mo: &Mo, now: i64) -> Result<Outcome, TopupError> {
        let parsed = parse(&mo.text, self.keywords);
        let claim = self.core.inbox_claim(mo, &parsed.redacted, now).await?;
        if claim == InboxClaim::Done {
            tracing::info!(id = %mo.id, "SMS delivered again; answered before");
            return Ok("duplicate".into());
        }
        tracing::info!(id = %mo.id, from = %Phone(&mo.sender), command = %parsed.redacted, "SMS command");
        let done = match parsed.command {
            Err(ParseError::Empty) | Err(ParseError::Unknown) => {
                Done::Reply(reply("unknown_command"))
            }
            Err(ParseError::Format(k)) => Done::Reply(reply(k.format_message())),
            Ok(cmd) => match self.run(mo, cmd, now).await {
                Ok(d) => d,
                Err((e, ctx)) => Done::Reply(self.error_reply(mo, e, ctx, now).await),
            },
        };
        let outcome = match &done {
            Done::Written(k) => *k,
            Done::Reply(r) => r.kind,
        };
        let mut tx = self.core.db.begin().await?;
        if let Done::Reply(r) = done {
            self.core
                .notify(
                    &mut tx,
                    Notification {
                        id: r.id.unwrap_or_else(|| format!("reply:{}", mo.id)),
                        kind: r.kind,
                        to: mo.sender.clone(),
                        language: parsed.language.clone(),
                        vars: r.vars,
                        reference: Some(mo.id.clone()),
                    },
                    now,
                )
                .await?;
        }
        self.core.inbox_done(&mut tx, &mo.id, outcome, now).await?;
        tx.commit().await?;
        Ok(outcome.to_string())
    }

    async fn run(&self, mo: &Mo, cmd: Command, now: i64) -> Result<Done, (TopupError, Ctx)> {
        let core = self.core;
        let sender = mo.sender.as_str();
        match cmd {
            Command::Help => Ok(Done::Reply(reply("help"))),
            Command::Balance { pin } => {
                if core.wallet(sender).await.map_err(no_ctx)?.is_some() {
                    core.authenticate_wallet(sender, &pin, now)
                        .await
                        .map_err(no_ctx)?;
                    let b = core.wallet_balance(sender).await.map_err(no_ctx)?;
                    return Ok(Done::Reply(balance_reply("balance_wallet", b)));
                }
                if let Some(p) = core.prepaid(sender).await.map_err(no_ctx)? {
                    core.authenticate_funding(sender, sender, &pin, now)
                        .await
                        .map_err(no_ctx)?;
                    let cur = crate::topup::money::Currency::new(&p.currency).map_err(no_ctx)?;
                    let b = Money::parse_amount(&p.balance, cur).map_err(no_ctx)?;
                    return Ok(Done::Reply(balance_reply("balance_account", b)));
                }
                Err(no_ctx(TopupError::NoWallet))
            }
            Command::Recharge { card } => {
                core.recharge_wallet(&card, sender, now)
                    .await
                    .map_err(|e| (e, Ctx::card()))?;
                Ok(Done::Written("wallet_recharged"))
            }
            Command::TopupCard {
                card,
                number,
                message,
            } => {
                let number =
                    recipient_e164(&number, sender).map_err(|e| (e, Ctx::number(&number)))?;
                // Check the number before the card is spent on it.
                let n = core
                    .lookup_number(&number, self.hlr)
                    .await
                    .map_err(|e| (e, Ctx::number(&number)))?;
                let carrier = n
                    .carrier_id
                    .clone()
                    .ok_or((TopupError::NoCarrier, Ctx::number(&number)))?;
                let products = core.products(&carrier).await.map_err(no_ctx)?;
                if products.is_empty() {
                    return Err((TopupError::NoProductForNumber, Ctx::number(&number)));
                }
                let r = core
                    .redeem_card(&card, None, sender, now)
                    .await
                    .map_err(|e| (e, Ctx::card()))?;
                self.topup(
                    mo,
                    Funding::Wallet(sender.to_string()),
                    &n.e164,
                    r.value,
                    message,
                    now,
                )
                .await
            }
            Command::TopupWallet {
                amount,
                pin,
                number,
                message,
            } => {
                let number =
                    recipient_e164(&number, sender).map_err(|e| (e, Ctx::number(&number)))?;
                core.authenticate_wallet(sender, &pin, now)
                    .await
                    .map_err(no_ctx)?;
                let balance = core.wallet_balance(sender).await.map_err(no_ctx)?;
                let amount = Money::parse_amount(&amount, balance.currency).map_err(no_ctx)?;
                self.topup(
                    mo,
                    Funding::Wallet(sender.to_string()),
                    &number,
                    amount,
                    message,
                    now,
                )
                .await
            }
            Command::TopupSelf { amount, pin } => {
                let Some(p) = core.prepaid(sender).await.map_err(no_ctx)? else {
                    return Err(no_ctx(TopupError::NoAccount));
                };
                core.authenticate_funding(sender, sender, &pin, now)
                    .await
                    .map_err(no_ctx)?;
                let cur = crate::topup::money::Currency::new(&p.currency).map_err(no_ctx)?;
                let amount = Money::parse_amount(&amount, cur).map_err(no_ctx)?;
                self.topup(
                    mo,
                    Funding::Linked(sender.to_string()),
                    sender,
                    amount,
                    None,
                    now,
                )
                .await
            }
        }
    }

    /// Tops up `number` with the product that sells `amount`; the settlement writes the
    /// confirmation (or failure notice). A top-up still pending gets its own reply.
    async fn topup(
        &self,
        mo: &Mo,
        funding: Funding,
        number: &str,
        amount: Money,
        message: Option<String>,
        now: i64,
    ) -> Result<Done, (TopupError, Ctx)> {
        let core = self.core;
        let ctx = Ctx {
            number: Some(number.to_string()),
            amount: Some(amount),
            ..Ctx::default()
        };
        let n = core
            .lookup_number(number, self.hlr)
            .await
            .map_err(|e| (e, ctx.clone()))?;
        let carrier_id = n
            .carrier_id
            .clone()
            .ok_or((TopupError::NoCarrier, ctx.clone()))?;
        let carrier_name = core
            .carrier(&carrier_id)
            .await
            .ok()
            .flatten()
            .map(|c| c.name)
            .unwrap_or(carrier_id.clone());
        let ctx = Ctx {
            carrier: Some(carrier_name),
            ..ctx
        };
        let products = core
            .products(&carrier_id)
            .await
            .map_err(|e| (e, ctx.clone()))?;
        let (product, range_amount) =
            product_for_amount(&products, amount).map_err(|e| (e, ctx.clone()))?;
        let req = TopupRequest {
            id: format!("sms:{}", mo.id),
            channel: "sms".into(),
            funding,
            payer: mo.sender.clone(),
            recipient: n.e164.clone(),
            product_id: product.id.clone(),
            amount: range_amount,
            message,
        };
        let r = core
            .topup(self.adapters, self.hlr, &req, now)
            .await
            .map_err(|e| (e, ctx.clone()))?;
        match r.state.as_str() {
            "pending" => Ok(Done::Reply(Reply {
                kind: "topup_pending",
                vars: vec![
                    ("amount", r.received.clone()),
                    (
                        "currency",
                        r.received_money()
                            .map(|m| m.currency.code().to_string())
                            .unwrap_or_default(),
                    ),
                    ("recipient", r.recipient.clone()),
                    ("carrier", ctx.carrier.clone().unwrap_or_default()),
                    ("reference", r.id.clone()),
                ],
                id: None,
            })),
            "succeeded" => Ok(Done::Written("topup_sent")),
            _ => Ok(Done::Written("topup_failed")),
        }
    }

    /// The reply that explains an error.
    async fn error_reply(&self, mo: &Mo, e: TopupError, ctx: Ctx, now: i64) -> Reply {
        let money = |m: Option<Money>| m.map(|m| m.to_string()).unwrap_or_default();
        let currency = ctx
            .amount
            .map(|m| m.currency.code().to_string())
            .unwrap_or_default();
        let simple = |k: &'static str| reply(k);
        match e {
            TopupError::InvalidPin if ctx.card => simple("card_invalid"),
            TopupError::InvalidPin => simple("wrong_pin"),
            TopupError::Locked(subject) if subject != "card" => Reply {
                kind: if subject == "wallet" {
                    "wallet_locked"
                } else {
                    "account_locked"
                },
                vars: vec![],
                // The lockout notice written by this very attempt has this id.
                id: Some(format!("locked:{subject}:{}:{now}", mo.sender)),
            },
            TopupError::Locked(_) | TopupError::CardBlocked => simple("card_blocked"),
            TopupError::RateLimited => simple("rate_limited"),
            TopupError::CardRedeemed => simple("card_used"),
            TopupError::CardExpired => simple("card_expired"),
            TopupError::InvalidNumber(_) => Reply {
                kind: "invalid_number",
                vars: vec![("number", ctx.number.unwrap_or_default())],
                id: None,
            },
            TopupError::NoCarrier => Reply {
                kind: "no_carrier",
                vars: vec![("number", ctx.number.unwrap_or_default())],
                id: None,
            },
            TopupError::NoWallet | TopupError::NoAccount => simple("unknown_sender"),
            TopupError::NoFunding => simple("no_funding"),
            TopupError::NoProduct(_) | TopupError::NoProductForNumber => Reply {
                kind: "no_product",
                vars: vec![
                    ("amount", money(ctx.amount)),
                    ("currency", currency),
                    ("recipient", ctx.number.unwrap_or_default()),
                    ("carrier", ctx.carrier.unwrap_or_default()),
                ],
                id: None,
            },
            TopupError::AmountOutOfRange { min, max, .. } => Reply {
                kind: "amount_out_of_range",
                vars: vec![
                    ("amount", money(ctx.amount)),
                    ("currency", currency),
                    ("min", min),
                    ("max", max),
                ],
                id: None,
            },
            TopupError::Money(_) => simple("format_topup"),
            TopupError::Ledger(crate::topup::ledger::LedgerError::InsufficientFunds { .. }) => {
                let balance = self
                    .core
                    .wallet_balance(&mo.sender)
                    .await
                    .map(|b| b.to_string())
                    .unwrap_or_default();
                Reply {
                    kind: "insufficient_funds",
                    vars: vec![
                        ("amount", money(ctx.amount)),
                        ("currency", currency),
                        ("balance", balance),
                    ],
                    id: None,
                }
            }
            other => {
                if matches!(
                    other,
                    TopupError::Db(_) | TopupError::Store(_) | TopupError::Corrupt(_)
                ) {
                    tracing::warn!(error = %other, "SMS command failed");
                }
                simple("unavailable")
            }
        }
    }
}

/// What an error reply may need to say.
#[derive(Clone, Debug, Default)]
struct Ctx {
    card: bool,
    number: Option<String>,
    amount: Option<Money>,
    carrier: Option<String>,
}

impl Ctx {
    fn card() -> Ctx {
        Ctx {
            card: true,
            ..Ctx::default()
        }
    }

    fn number(n: &str) -> Ctx {
        Ctx {
            number: Some(n.to_string()),
            ..Ctx::default()
        }
    }
}

/// An error with nothing more to say about it.
fn no_ctx<E: Into<TopupError>>(e: E) -> (TopupError, Ctx) {
    (e.into(), Ctx::default())
}

fn balance_reply(kind: &'static str, b: Money) -> Reply {
    Reply {
        kind,
        vars: vec![
            ("balance", b.to_string()),
            ("currency", b.currency.code().to_string()),
        ],
        id: None,
    }
}

/// A recipient as the sender wrote it, in E.164: with `+`, as it is; without, with its country
/// code if it has one, else as a national number of the sender's country (a Mexican sender's
/// `5512345678` is +52 55 1234 5678), as the keypad reads the caller's.
fn recipient_e164(written: &str, sender: &str) -> Result<String, TopupError> {
    if written.starts_with('+') {
        return Ok(written.to_string());
    }
    let home = topup_values::phone::home_country(sender);
    Ok(topup_values::phone::parse_number_from(written, home.as_deref())?.e164)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sms::outbox::OutboxRow;
    use crate::topup::books::check_books;
    use crate::topup::demo;
    use crate::topup::testing::cores;

    const NOW: i64 = 1_800_000_000_000;

    /// Cores with SMS on and the demo seeded.
    async fn sms_cores() -> Vec<(Core, Option<crate::store::testing::tempfile_guard::Guard>)> {
        let out = crate::sms::testing::sms_cores().await;
        for (core, _) in &out {
            core.seed_demo(NOW).await.unwrap();
        }
        out
    }

    struct T<'a> {
        core: &'a Core,
        adapters: Adapters,
        keywords: Keywords,
        n: std::cell::Cell<u32>,
    }

    impl<'a> T<'a> {
        fn new(core: &'a Core) -> T<'a> {
            T {
                core,
                adapters: Adapters::new(),
                keywords: Keywords::new(crate::sms::testing::texts().current().keywords()),
                n: std::cell::Cell::new(0),
            }
        }

        async fn send_as(&self, id: &str, from: &str, text: &str) -> String {
            let c = Commands {
                core: self.core,
                adapters: &self.adapters,
                hlr: None,
                keywords: &self.keywords,
            };
            let mo = Mo {
                id: id.to_string(),
                smsc: "main".into(),
                sender: from.into(),
                destination: "4242".into(),
                text: text.into(),
                content_key: None,
            };
            c.handle(&mo, NOW + self.n.get() as i64).await.unwrap()
        }

        /// A message the SMSC gave no id, received at `now` (repeats within 10 minutes are
        /// the same message).
        async fn send_without_id(&self, from: &str, text: &str, now: i64) -> String {
            let mo = Mo {
                id: String::new(),
                smsc: "main".into(),
                sender: from.into(),
                destination: "4242".into(),
                text: text.into(),
                content_key: None,
            };
            let mo = self.core.identify_mo(mo, None, 600_000, now).await.unwrap();
            let c = Commands {
                core: self.core,
                adapters: &self.adapters,
                hlr: None,
                keywords: &self.keywords,
            };
            c.handle(&mo, now).await.unwrap()
        }

        async fn send(&self, from: &str, text: &str) -> String {
            self.n.set(self.n.get() + 1);
            let id = format!("main:mo-{}", self.n.get());
            self.send_as(&id, from, text).await
        }

        async fn outbox(&self, to: &str) -> Vec<OutboxRow> {
            let mut v = self.core.list_sms(None, Some(to), 100).await.unwrap();
            v.reverse();
            v
        }
    }

    fn bodies(rows: &[OutboxRow]) -> Vec<(String, String)> {
        rows.iter()
            .map(|r| (r.kind.clone(), r.body.clone()))
            .collect()
    }

    #[tokio::test]
    async fn balance_help_and_malformed_messages_are_answered() {
        for (core, _g) in sms_cores().await {
            let t = T::new(&core);
            assert_eq!(t.send(demo::WALLET, "bal 1234").await, "balance_wallet");
            assert_eq!(t.send(demo::WALLET, "BAL 9999").await, "wrong_pin");
            assert_eq!(t.send(demo::WALLET, "HELP").await, "help");
            assert_eq!(t.send(demo::WALLET, "TOPUP 12").await, "format_topup");
            assert_eq!(t.send(demo::WALLET, "hello?").await, "unknown_command");
            let got = bodies(&t.outbox(demo::WALLET).await);
            assert_eq!(got[0].1, "Your wallet balance is 25.00 USD.");
            assert_eq!(got[1].1, "Wrong PIN. Please try again.");
            assert!(got[2].1.starts_with("TOPUP <card PIN> <number>"), "{got:?}");
            assert!(
                got[3].1.starts_with("Format: TOPUP <PIN> <NUMBER>"),
                "{got:?}"
            );
            assert!(got[4].1.contains("Text HELP"), "{got:?}");
            // No PIN in any stored text.
            for r in t.outbox(demo::WALLET).await {
                assert!(
                    !r.body.contains("1234") && !r.body.contains("9999"),
                    "{r:?}"
                );
            }
            // A prepaid account answers BAL with its funding PIN.
            assert_eq!(
                t.send(demo::PREPAID[0].0, &format!("BAL {}", demo::FUNDING_PIN))
                    .await,
                "balance_account"
            );
            assert_eq!(
                bodies(&t.outbox(demo::PREPAID[0].0).await)[0].1,
                "Your balance is 1.20 USD."
            );
            assert_eq!(t.send("+12015550199", "BAL 1234").await, "unknown_sender");
            // The Spanish keyword answers in Spanish.
            assert_eq!(t.send("+12015550199", "AYUDA").await, "help");
            let r = t.outbox("+12015550199").await;
            assert!(r[1].body.starts_with("RECARGA <PIN tarjeta>"), "{r:?}");
        }
    }

    #[tokio::test]
    async fn a_message_without_an_smsc_id_delivered_again_tops_up_once() {
        for (core, _g) in sms_cores().await {
            let t = T::new(&core);
            let text = "TOPUP 2 1234 +525512345678";
            let first = t.send_without_id(demo::WALLET, text, NOW).await;
            // The SMSC delivers it again a minute later: nothing is done twice.
            let again = t.send_without_id(demo::WALLET, text, NOW + 60_000).await;
            assert_eq!(again, "duplicate");
            // Other words (a wrong PIN) are another message.
            let wrong = "TOPUP 2 9999 +525512345678";
            assert_eq!(
                t.send_without_id(demo::WALLET, wrong, NOW + 70_000).await,
                "wrong_pin"
            );
            // The same words after the window: a new top-up.
            let later = t.send_without_id(demo::WALLET, text, NOW + 700_000).await;
            assert_eq!(later, first);
            let sent: Vec<_> = core
                .list_topups(None, 10)
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.channel == "sms")
                .collect();
            assert_eq!(sent.len(), 2, "{sent:?}");
            // The key stored for recognising repeats does not hold the PIN.
            let keys: Vec<String> =
                sqlx::query("SELECT content_key FROM sms_inbox WHERE content_key IS NOT NULL")
                    .fetch_all(core.db.pool())
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| sqlx::Row::try_get(r, "content_key").unwrap())
                    .collect();
            assert_eq!(keys.len(), 3);
            assert!(keys.iter().all(|k| k.len() == 64 && !k.contains("1234")));
        }
    }

    #[tokio::test]
    async fn a_card_top_up_by_sms_confirms_to_both_and_a_repeated_delivery_changes_nothing() {
        for (core, _g) in sms_cores().await {
            let t = T::new(&core);
            let from = "+12015550177";
            let text = "TOPUP 11112222333344 +52 55 1234 5678 Feliz cumpleanos";
            assert_eq!(t.send_as("main:x1", from, text).await, "topup_sent");
            assert_eq!(t.send_as("main:x1", from, text).await, "duplicate");
            let payer = bodies(&t.outbox(from).await);
            assert_eq!(payer.len(), 1, "{payer:?}");
            assert!(
                payer[0]
                    .1
                    .starts_with("You sent 170.50 MXN to +525512345678 (Telcel). Paid 10.00 USD."),
                "{payer:?}"
            );
            let recipient = bodies(&t.outbox("+525512345678").await);
            assert_eq!(recipient.len(), 1);
            assert_eq!(recipient[0].0, "topup_received_message");
            assert_eq!(
                recipient[0].1,
                "+12015550177 te envio 170.50 MXN de recarga Telcel: Feliz cumpleanos",
                "Mexican numbers read Spanish"
            );
            assert_eq!(core.list_topups(None, 10).await.unwrap().len(), 1);
            // The card is spent: the same card again is refused, and said so.
            assert_eq!(t.send(from, text).await, "card_used");
            assert!(check_books(&core.db).await.unwrap().balanced());
        }
    }

    #[tokio::test]
    async fn a_number_without_its_country_code_is_read_in_the_senders_country() {
        for (core, _g) in sms_cores().await {
            let t = T::new(&core);
            // The demo wallet is a US number: a US number written nationally is read as one.
            assert_eq!(
                t.send(demo::WALLET, "TOPUP 5 1234 201-555-0150").await,
                "topup_sent"
            );
            // With its country code and no `+`, as before.
            assert_eq!(
                t.send(demo::WALLET, "TOPUP 10 1234 525512345678").await,
                "topup_sent"
            );
            let recipients: Vec<String> = core
                .list_topups(None, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|t| t.recipient)
                .collect();
            assert!(
                recipients.contains(&"+12015550150".to_string())
                    && recipients.contains(&"+525512345678".to_string()),
                "{recipients:?}"
            );
            // Neither: the sender is told to write the country code.
            assert_eq!(
                t.send(demo::WALLET, "TOPUP 10 1234 12345678").await,
                "invalid_number"
            );
            let got = bodies(&t.outbox(demo::WALLET).await);
            assert!(
                got.last().unwrap().1.starts_with(
                    "12345678 is not a valid phone number. Write it with the country code"
                ),
                "{got:?}"
            );
            assert!(check_books(&core.db).await.unwrap().balanced());
        }
    }

    #[tokio::test]
    async fn a_wallet_top_up_with_a_bad_number_spends_nothing() {
        for (core, _g) in sms_cores().await {
            let t = T::new(&core);
            assert_eq!(
                t.send(demo::WALLET, "TOPUP 10 1234 +44 7911 123456").await,
                "no_carrier"
            );
            assert_eq!(
                t.send(demo::WALLET, "TOPUP 10 1234 +52 12").await,
                "invalid_number"
            );
            assert_eq!(
                t.send(demo::WALLET, "TOPUP 500 1234 +525512345678").await,
                "amount_out_of_range"
            );
            assert_eq!(
                t.send(demo::WALLET, "TOPUP 90 1234 +525512345678").await,
                "insufficient_funds"
            );
            // Sandbox numbers ending in 0000 are refused by the carrier.
            assert_eq!(
                t.send(demo::WALLET, "TOPUP 10 1234 +525512340000").await,
                "topup_failed"
            );
            let got = bodies(&t.outbox(demo::WALLET).await);
            assert!(got[0].1.contains("cannot top up +447911123456"), "{got:?}");
            assert!(
                got[2].1.contains("between 2.00 USD and 100.00 USD"),
                "{got:?}"
            );
            assert!(
                got[3].1.contains("25.00 USD does not cover 90.00 USD"),
                "{got:?}"
            );
            assert!(got[4].1.contains("You were not charged"), "{got:?}");
            assert_eq!(
                core.wallet_balance(demo::WALLET).await.unwrap().to_string(),
                "25.00 USD"
            );
            assert!(
                t.outbox("+525512340000").await.is_empty(),
                "no word to a recipient who got nothing"
            );
        }
    }

    #[tokio::test]
    async fn five_wrong_pins_lock_the_wallet_and_the_owner_is_told_once() {
        for (core, _g) in sms_cores().await {
            let t = T::new(&core);
            for _ in 0..4 {
                assert_eq!(t.send(demo::WALLET, "BAL 0000").await, "wrong_pin");
            }
            assert_eq!(t.send(demo::WALLET, "BAL 0000").await, "wallet_locked");
            let locked: Vec<_> = t
                .outbox(demo::WALLET)
                .await
                .into_iter()
                .filter(|r| r.kind == "wallet_locked")
                .collect();
            assert_eq!(locked.len(), 1, "the notice and the reply are one SMS");
            assert_eq!(t.send(demo::WALLET, "BAL 1234").await, "wallet_locked");
        }
    }

    #[tokio::test]
    async fn the_low_balance_alert_goes_once_and_the_reply_recharges_from_linked_funding() {
        for (core, _g) in sms_cores().await {
            let t = T::new(&core);
            let n = demo::PREPAID[0].0; // 1.20 USD, threshold 2.00, linked funding
            assert_eq!(
                core.alert_low_balances(NOW).await.unwrap(),
                2,
                "150 and 152"
            );
            assert_eq!(
                core.alert_low_balances(NOW + 60_000).await.unwrap(),
                0,
                "once"
            );
            let alert = t.outbox(n).await;
            assert_eq!(alert[0].kind, "low_balance_funding");
            assert_eq!(
                alert[0].body,
                "Your balance is 1.20 USD. Reply TOPUP 10 <PIN> to recharge 10 USD from your linked account."
            );
            assert_eq!(t.outbox(demo::PREPAID[2].0).await[0].kind, "low_balance");
            assert_eq!(t.outbox(demo::PREPAID[2].0).await[0].language, "vi");
            // The reply.
            assert_eq!(
                t.send(n, &format!("TOPUP 10 {}", demo::FUNDING_PIN)).await,
                "topup_sent"
            );
            let after = t.outbox(n).await;
            assert_eq!(after.len(), 2, "alert and one confirmation: {after:?}");
            assert_eq!(after[1].kind, "account_recharged");
            assert!(
                after[1].body.starts_with(
                    "Your account was recharged with 10.00 USD. New balance: 11.20 USD."
                ),
                "{after:?}"
            );
            assert_eq!(core.prepaid(n).await.unwrap().unwrap().balance, "11.20");
            // Above the threshold again: re-armed, and the next crossing alerts again.
            assert_eq!(core.alert_low_balances(NOW + 120_000).await.unwrap(), 0);
            core.adjust(
                "spend",
                &crate::topup::ledger::accounts::prepaid(n),
                Money::parse("-10.00USD").unwrap(),
                NOW,
            )
            .await
            .unwrap();
            assert_eq!(core.alert_low_balances(NOW + 180_000).await.unwrap(), 1);
            // A wrong PIN recharges nothing.
            assert_eq!(t.send(n, "TOPUP 10 0000").await, "wrong_pin");
            assert_eq!(core.prepaid(n).await.unwrap().unwrap().balance, "1.20");
            assert!(check_books(&core.db).await.unwrap().balanced());
        }
    }

    #[tokio::test]
    async fn recharge_puts_a_card_into_the_wallet_and_says_so() {
        for (core, _g) in sms_cores().await {
            let t = T::new(&core);
            assert_eq!(
                t.send(demo::WALLET, "recharge 22223333444455").await,
                "wallet_recharged"
            );
            assert_eq!(
                t.send(demo::WALLET, "recharge 99999999999999").await,
                "card_invalid"
            );
            let got = bodies(&t.outbox(demo::WALLET).await);
            assert!(
                got[0]
                    .1
                    .starts_with("10.00 USD was added to your wallet. Wallet balance: 35.00 USD."),
                "{got:?}"
            );
            assert_eq!(got[1].0, "card_invalid");
        }
    }

    #[tokio::test]
    async fn without_an_smsc_nothing_is_written() {
        for (core, _g) in cores().await {
            core.seed_demo(NOW).await.unwrap();
            assert!(!core.notifications_on());
            assert_eq!(core.alert_low_balances(NOW).await.unwrap(), 0);
            core.recharge_wallet(
                &crate::topup::secrets::Pin::new("22223333444455"),
                demo::WALLET,
                NOW,
            )
            .await
            .unwrap();
            assert!(core.list_sms(None, None, 10).await.unwrap().is_empty());
        }
    }
}
