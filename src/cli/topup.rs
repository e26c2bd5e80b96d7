//! The command line of the top-up core: cards, carriers, products, numbers, accounts,
//! top-ups and the ledger. PINs are read from standard input, never from arguments (which end
//! up in shell history and process lists).

use std::io::BufRead;
use std::path::PathBuf;

use super::open_core;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde::Serialize;
use topup_ivr::clock::now_ms;
use topup_ivr::config::Config;
use topup_ivr::server::hlr;
use topup_ivr::topup::TopupError;
use topup_ivr::topup::adapters::Adapters;
use topup_ivr::topup::books::check_books;
use topup_ivr::topup::cards::{format_date, parse_date_end};
use topup_ivr::topup::ledger::accounts;
use topup_ivr::topup::money::{Currency, Money};
use topup_ivr::topup::secrets::Pin;
use topup_ivr::topup::topups::{Funding, TopupRequest, TopupState};

#[derive(Subcommand)]
pub enum CardsCommand {
    /// Create a batch of cards; prints serial and PIN once (CSV). Only hashes are kept.
    Generate {
        #[arg(long)]
        batch: String,
        #[arg(long)]
        count: usize,
        /// Face value, e.g. 10.00USD.
        #[arg(long)]
        value: String,
        /// Last valid day (YYYY-MM-DD); default one year from today.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Import cards from CSV: serial,pin,value,currency[,batch][,expires].
    Import {
        file: PathBuf,
        #[arg(long, default_value = "imported")]
        batch: String,
    },
    /// Show a card (never its PIN).
    Show {
        serial: String,
        #[arg(long)]
        json: bool,
    },
    /// Block a card that has not been used.
    Block { serial: String },
    /// Unblock a blocked or locked card.
    Unblock { serial: String },
}

#[derive(Subcommand)]
pub enum CarriersCommand {
    /// Import carriers, prefixes, products, ported numbers, rates (TOML) or a CSV list.
    Import { file: PathBuf },
    /// List carriers.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Carriers' status notices that contradicted our records (e.g. SUCCESSFUL for a top-up
    /// they had reversed): nothing was changed; take them up with the carrier. Newest first.
    Conflicts {
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum ProductsCommand {
    /// Products available for a number.
    List {
        #[arg(long)]
        number: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum NumbersCommand {
    /// Country, type and carrier of a number, and where the answer came from.
    Lookup {
        number: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum AccountsCommand {
    /// Wallets and prepaid accounts with balances.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One wallet and/or prepaid account.
    Show {
        number: String,
        #[arg(long)]
        json: bool,
    },
    /// Create a wallet (or set its PIN); the PIN is read from standard input.
    CreateWallet {
        number: String,
        #[arg(long, default_value = "USD")]
        currency: String,
        #[arg(long, default_value = "en")]
        language: String,
    },
    /// Create a prepaid account on our own network.
    CreatePrepaid {
        number: String,
        #[arg(long, default_value = "USD")]
        currency: String,
        /// Low-balance alert threshold, e.g. 2.00.
        #[arg(long, default_value = "2.00")]
        low_balance: String,
        #[arg(long, default_value = "en")]
        language: String,
    },
    /// Link a funding source to a prepaid account; its PIN is read from standard input.
    LinkFunding { number: String },
    /// Unlock a wallet or prepaid account locked by wrong PINs (after an identity check).
    Unlock { number: String },
    /// Staff adjustment: credit (or with a negative amount, debit) a wallet or prepaid
    /// account. `--id` makes it happen once.
    Credit {
        number: String,
        /// e.g. 5.00USD or -1.50USD
        amount: String,
        #[arg(long)]
        id: String,
        /// Credit the prepaid account rather than the wallet.
        #[arg(long)]
        prepaid: bool,
    },
}

#[derive(Subcommand)]
pub enum TopupsCommand {
    /// Top up a number from a wallet.
    Create {
        /// Unique request id; repeating it returns the first result.
        #[arg(long)]
        id: String,
        /// The paying wallet's number.
        #[arg(long)]
        wallet: String,
        /// The recipient's number with country code.
        #[arg(long)]
        to: String,
        #[arg(long)]
        product: String,
        /// For range products, e.g. 10.00USD.
        #[arg(long)]
        amount: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Recent top-ups.
    List {
        /// pending, succeeded, failed or reversed.
        #[arg(long, value_parser = parse_topup_state)]
        state: Option<TopupState>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One top-up's receipt.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Ask carriers about pending top-ups that are due, and settle them.
    Reconcile {
        /// Check every pending top-up now, due or not.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
pub enum EscalationsCommand {
    /// Recent escalations with their context, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

pub async fn escalations(cfg: &Config, cmd: EscalationsCommand) -> Result<()> {
    let core = open_core(cfg).await?;
    let EscalationsCommand::List { limit, json } = cmd;
    let list = core.escalations(limit).await?;
    core.db.close().await;
    print_rows(json, &list, "no escalations", |e| {
        println!(
            "{} {:<11} {:<14} {:<9} at {:<14} {}",
            e.id, e.state, e.caller, e.service, e.node, e.reason
        );
    })
}

#[derive(Subcommand)]
pub enum AgentsCommand {
    /// Create an agent; the password is read from standard input (10 characters or more).
    Create {
        username: String,
        #[arg(long)]
        name: String,
        /// A supervisor: also sees the staff pages (every call, with callers' numbers).
        #[arg(long)]
        staff: bool,
    },
    /// Make an agent staff (`staff`) or not (`agent`).
    Role {
        username: String,
        #[arg(value_parser = ["agent", "staff"])]
        role: String,
    },
}

pub async fn agents(cfg: &Config, cmd: AgentsCommand) -> Result<()> {
    match cmd {
        AgentsCommand::Create {
            username,
            name,
            staff,
        } => {
            eprintln!("password for {username} (then Enter):");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let core = open_core(cfg).await?;
            let r = core
                .create_agent(
                    &username,
                    &name,
                    line.trim_end_matches(['\r', '\n']),
                    staff,
                    now_ms(),
                )
                .await;
            core.db.close().await;
            r?;
            let pages = if staff {
                "/console and /staff"
            } else {
                "/console"
            };
            println!("agent {username} created: log in at {pages}");
        }
        AgentsCommand::Role { username, role } => {
            let core = open_core(cfg).await?;
            let r = core.set_agent_staff(&username, role == "staff").await;
            core.db.close().await;
            if !r? {
                bail!("no agent {username}");
            }
            println!("{username} is now {role}");
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum ApikeysCommand {
    /// Create a key; the secret is printed once and not stored.
    Create {
        /// The terminal or retailer it is for.
        #[arg(long)]
        name: String,
        /// The wallet its top-ups are paid from (E.164).
        #[arg(long)]
        wallet: String,
        /// Comma-separated: lookup, topup, redeem, wallet.
        #[arg(long, default_value = "lookup,topup")]
        scopes: String,
        /// Requests per minute (1 to 100000).
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(i64).range(1..=100_000))]
        per_minute: i64,
        /// POST final top-up states here, signed (the signing secret is printed once).
        #[arg(long)]
        webhook_url: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Keys (without secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id.
    Revoke { id: String },
}

pub async fn apikeys(cfg: &Config, cmd: ApikeysCommand) -> Result<()> {
    let core = open_core(cfg).await?;
    let r = async {
        match cmd {
            ApikeysCommand::Create {
                name,
                wallet,
                scopes,
                per_minute,
                webhook_url,
                json,
            } => {
                let scopes: Vec<String> = scopes
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                let new = core
                    .create_api_key(
                        &name,
                        &wallet,
                        &scopes,
                        per_minute,
                        webhook_url.as_deref(),
                        now_ms(),
                    )
                    .await?;
                let key = &new.key;
                if json {
                    let mut v = serde_json::to_value(key)?;
                    v["key"] = serde_json::Value::String(new.secret.clone());
                    if let Some(w) = &new.webhook_secret {
                        v["webhook_secret"] = serde_json::Value::String(w.clone());
                    }
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    println!("key {} for {} (pays from {})", key.id, key.name, key.wallet);
                    println!("{}", new.secret);
                    if let Some(w) = &new.webhook_secret {
                        println!("webhook signing secret: {w}");
                    }
                    println!("keep it now: the key is not shown again (only its hash is stored)");
                }
                Ok(())
            }
            ApikeysCommand::List { json } => {
                let keys = core.api_keys().await?;
                print(json, &keys, |ks| {
                    for k in ks {
                        let state = if k.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        };
                        println!(
                            "{} {:<8} {:<20} {} {} {}/min",
                            k.id,
                            state,
                            k.name,
                            k.wallet,
                            k.scopes.join(","),
                            k.per_minute
                        );
                    }
                })
            }
            ApikeysCommand::Revoke { id } => {
                if !core.revoke_api_key(&id, now_ms()).await? {
                    bail!("no active key {id}");
                }
                println!("key {id} revoked");
                Ok(())
            }
        }
    }
    .await;
    core.db.close().await;
    r
}

#[derive(Subcommand)]
pub enum SmsCommand {
    /// Recent SMS, newest first.
    List {
        /// queued, sending, sent, delivered or failed.
        #[arg(long)]
        state: Option<String>,
        /// Only those to this number (E.164).
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One SMS: its text, attempts, last error, and each part's SMSC message id and receipt.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Send a failed SMS again, or a waiting one now.
    Retry { id: String },
    /// Check the SMS language files (texts, placeholders, keywords) as `serve` does.
    Check,
}

pub async fn sms(cfg: &Config, cmd: SmsCommand) -> Result<()> {
    if let SmsCommand::Check = cmd {
        let m = topup_ivr::server::sms_messages(cfg)?;
        let langs: Vec<&str> = m.languages().collect();
        println!(
            "ok: {} messages in {} (default {}){}",
            topup_ivr::sms::messages::MESSAGES.len(),
            langs.join(", "),
            m.default_language(),
            if cfg.sms.enabled() {
                String::new()
            } else {
                "; no [[sms.smsc]] configured, so SMS are off".into()
            }
        );
        return Ok(());
    }
    let core = open_core(cfg).await?;
    let out = match cmd {
        SmsCommand::Check => Ok(()),
        SmsCommand::List {
            state,
            to,
            limit,
            json,
        } => {
            let list = core
                .list_sms(state.as_deref(), to.as_deref(), limit)
                .await?;
            print_rows(json, &list, "no SMS", |r| {
                println!(
                    "{:<32} {:<9} {:<15} {:<20} {:>2} {:>2} {}",
                    r.id,
                    r.state,
                    r.destination,
                    r.kind,
                    r.parts,
                    r.attempts,
                    r.last_error.as_deref().unwrap_or("")
                );
            })
        }
        SmsCommand::Show { id, json } => match core.sms(&id).await? {
            None => Err(anyhow::anyhow!("no SMS {id}")),
            Some((row, parts)) => {
                #[derive(Serialize, Debug)]
                struct Shown {
                    #[serde(flatten)]
                    row: topup_ivr::sms::outbox::OutboxRow,
                    part_list: Vec<topup_ivr::sms::outbox::PartRow>,
                }
                let shown = Shown {
                    row,
                    part_list: parts,
                };
                print(json, &shown, |s| {
                    let r = &s.row;
                    println!(
                        "{} {} to {} ({}, {})",
                        r.id, r.state, r.destination, r.kind, r.language
                    );
                    println!("text: {}", r.body);
                    println!(
                        "smsc {} parts {} attempts {}{}",
                        r.smsc.as_deref().unwrap_or("-"),
                        r.parts,
                        r.attempts,
                        r.last_error
                            .as_deref()
                            .map(|e| format!(" last error: {e}"))
                            .unwrap_or_default()
                    );
                    for p in &s.part_list {
                        println!(
                            "  part {} {} message id {} {}{}",
                            p.part,
                            p.smsc,
                            p.message_id,
                            p.state,
                            p.status
                                .as_deref()
                                .map(|x| format!(" ({x})"))
                                .unwrap_or_default()
                        );
                    }
                })
            }
        },
        SmsCommand::Retry { id } => {
            if core.retry_sms(&id, now_ms()).await? {
                println!("{id} queued");
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "no failed or waiting SMS {id} (sent and delivered ones are not sent again)"
                ))
            }
        }
    };
    core.db.close().await;
    out
}

#[derive(Subcommand)]
pub enum LedgerCommand {
    /// Prove the books: per currency all balances sum to zero, every account matches its
    /// transfers, no customer account is overdrawn. Exits 1 if not.
    Check {
        #[arg(long)]
        json: bool,
    },
}

fn print<T: Serialize + std::fmt::Debug>(json: bool, v: &T, text: impl FnOnce(&T)) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        text(v);
    }
    Ok(())
}

/// A list: JSON, or one line per row — and a line saying so when there is none (an empty
/// answer looks like a broken command).
fn print_rows<T: Serialize + std::fmt::Debug>(
    json: bool,
    rows: &[T],
    none: &str,
    row: impl Fn(&T),
) -> Result<()> {
    print(json, &rows, |rows| {
        if rows.is_empty() {
            println!("{none}");
        }
        rows.iter().for_each(&row);
    })
}

fn read_pin(what: &str) -> Result<Pin> {
    eprintln!("{what} (digits, then Enter):");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let pin = Pin::new(line.trim());
    if !pin.is_well_formed() {
        bail!("a PIN is 4 to 20 digits");
    }
    Ok(pin)
}

pub async fn cards(cfg: &Config, cmd: CardsCommand) -> Result<()> {
    let core = open_core(cfg).await?;
    let now = now_ms();
    match cmd {
        CardsCommand::Generate {
            batch,
            count,
            value,
            expires,
        } => {
            let value = Money::parse(&value)?;
            let expires_at = match expires {
                Some(d) => parse_date_end(&d).context("--expires must be YYYY-MM-DD")?,
                None => now + 365 * 86_400_000,
            };
            let cards = core
                .generate_cards(&batch, count, value, expires_at, now)
                .await?;
            println!("serial,pin,value,currency,batch,expires");
            for c in cards {
                println!(
                    "{},{},{},{},{},{}",
                    c.serial,
                    c.pin.expose(),
                    c.value.amount_string(),
                    c.value.currency,
                    c.batch,
                    format_date(c.expires_at)
                );
            }
        }
        CardsCommand::Import { file, batch } => {
            let text =
                std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
            let n = core
                .import_cards(&text, &batch, now)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!("imported {n} cards");
        }
        CardsCommand::Show { serial, json } => {
            let card = core
                .card(&serial, now)
                .await?
                .with_context(|| format!("no card {serial}"))?;
            print(json, &card, |c| {
                println!("serial     {}", c.serial);
                println!("batch      {}", c.batch);
                println!("value      {} {}", c.value, c.currency);
                println!("state      {}", c.state);
                println!("expires    {}", format_date(c.expires_at));
                if let Some(by) = &c.redeemed_by {
                    println!(
                        "redeemed   {} by {by}",
                        c.redeemed_at.map(format_date).unwrap_or_default()
                    );
                }
                println!("wrong PINs {}", c.failed_attempts);
            })?;
        }
        CardsCommand::Block { serial } => {
            if !core.set_card_blocked(&serial, true).await? {
                bail!("card {serial} is not an active card");
            }
            println!("blocked {serial}");
        }
        CardsCommand::Unblock { serial } => {
            if !core.set_card_blocked(&serial, false).await? {
                bail!("card {serial} is not blocked or locked");
            }
            println!("unblocked {serial}");
        }
    }
    core.db.close().await;
    Ok(())
}

pub async fn carriers(cfg: &Config, cmd: CarriersCommand) -> Result<()> {
    let core = open_core(cfg).await?;
    match cmd {
        CarriersCommand::Import { file } => {
            let text =
                std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
            let r = core
                .import_carriers(&text, now_ms())
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!(
                "imported {} carriers, {} prefixes, {} products, {} ported numbers, {} rates",
                r.carriers, r.prefixes, r.products, r.ported, r.rates
            );
        }
        CarriersCommand::List { json } => {
            let list = core.carriers().await?;
            print_rows(json, &list, "no carriers", |c| {
                println!(
                    "{:<16} {:<12} {} {} {:<8} {}",
                    c.id, c.name, c.country, c.currency, c.adapter, c.status
                );
            })?;
        }
        CarriersCommand::Conflicts { limit, json } => {
            let list = core.carrier_conflicts(limit).await?;
            print_rows(json, &list, "no conflicting notices", |c| {
                println!(
                    "{:<16} {:<24} {:<15} carrier says {:<10} we have {:<10} (notice {})",
                    c.carrier_id, c.topup_id, c.recipient, c.notice, c.state, c.event_id
                );
            })?;
        }
    }
    core.db.close().await;
    Ok(())
}

pub async fn products(cfg: &Config, cmd: ProductsCommand) -> Result<()> {
    let core = open_core(cfg).await?;
    let ProductsCommand::List { number, json } = cmd;
    let info = core.lookup_number(&number, hlr(cfg).as_ref()).await?;
    let carrier = info
        .carrier_id
        .clone()
        .context("no carrier known for this number")?;
    let list = core.products(&carrier).await?;
    print(json, &list, |l| {
        for p in l {
            match &p.kind {
                topup_ivr::topup::carriers::ProductKind::Fixed { price, receive } => {
                    println!(
                        "{:<20} {:<14} pay {price:<12} receive {receive}",
                        p.id, p.label
                    )
                }
                topup_ivr::topup::carriers::ProductKind::Range { min, max, rate } => {
                    println!(
                        "{:<20} {:<14} pay {min} to {max}, rate {rate} {}",
                        p.id, p.label, p.receive_currency
                    )
                }
            }
        }
    })?;
    core.db.close().await;
    Ok(())
}

pub async fn numbers(cfg: &Config, cmd: NumbersCommand) -> Result<()> {
    let core = open_core(cfg).await?;
    let NumbersCommand::Lookup { number, json } = cmd;
    let info = core
        .lookup_number(&number, hlr(cfg).as_ref())
        .await
        .map_err(|e| with_country_hint(&number, e))?;
    print(json, &info, |i| {
        println!(
            "{} {} {:?} carrier {} ({:?}{})",
            i.e164,
            i.country,
            i.kind,
            i.carrier_id.as_deref().unwrap_or("unknown"),
            i.source,
            if i.ported { ", ported" } else { "" }
        )
    })?;
    core.db.close().await;
    Ok(())
}

pub async fn accounts_cmd(cfg: &Config, cmd: AccountsCommand) -> Result<()> {
    let core = open_core(cfg).await?;
    let now = now_ms();
    match cmd {
        AccountsCommand::List { json } => {
            let all = core.list_accounts().await?;
            print(json, &all, |(wallets, prepaid)| {
                for w in wallets {
                    println!(
                        "wallet  {:<16} {:>12} {} {:<7} {}",
                        w.number, w.balance, w.currency, w.status, w.language
                    );
                }
                for p in prepaid {
                    println!(
                        "prepaid {:<16} {:>12} {} {:<7} {}",
                        p.number, p.balance, p.currency, p.status, p.language
                    );
                }
            })?;
        }
        AccountsCommand::Show { number, json } => {
            let w = core.wallet(&number).await?;
            let p = core.prepaid(&number).await?;
            if w.is_none() && p.is_none() {
                bail!("no wallet or prepaid account for {number}");
            }
            let recent = core.recent_recipients(&number, 5).await?;
            #[derive(Serialize, Debug)]
            struct Show {
                wallet: Option<topup_ivr::topup::accounts::Wallet>,
                prepaid: Option<topup_ivr::topup::accounts::PrepaidAccount>,
                recent_recipients: Vec<String>,
            }
            print(
                json,
                &Show {
                    wallet: w,
                    prepaid: p,
                    recent_recipients: recent,
                },
                |s| {
                    if let Some(w) = &s.wallet {
                        println!(
                            "wallet:  balance {} {} (available {}), {}, PIN {}, wrong PINs {}",
                            w.balance,
                            w.currency,
                            w.available,
                            w.status,
                            if w.has_pin { "set" } else { "not set" },
                            w.failed_attempts
                        );
                    }
                    if let Some(p) = &s.prepaid {
                        println!(
                            "prepaid: balance {} {}, alert below {}, {}, funding {}",
                            p.balance,
                            p.currency,
                            p.low_balance,
                            p.status,
                            if p.linked_funding { "linked" } else { "none" }
                        );
                    }
                    if !s.recent_recipients.is_empty() {
                        println!("recent recipients: {}", s.recent_recipients.join(", "));
                    }
                },
            )?;
        }
        AccountsCommand::CreateWallet {
            number,
            currency,
            language,
        } => {
            let pin = read_pin("wallet PIN")?;
            let w = core
                .create_wallet(&number, Currency::new(&currency)?, &pin, &language, now)
                .await?;
            println!("wallet {} ({})", w.number, w.currency);
        }
        AccountsCommand::CreatePrepaid {
            number,
            currency,
            low_balance,
            language,
        } => {
            let cur = Currency::new(&currency)?;
            let p = core
                .create_prepaid(
                    &number,
                    cur,
                    Money::parse_amount(&low_balance, cur)?,
                    &language,
                    now,
                )
                .await?;
            println!("prepaid account {} ({})", p.number, p.currency);
        }
        AccountsCommand::LinkFunding { number } => {
            let pin = read_pin("funding PIN")?;
            core.link_funding(&number, &pin, now).await?;
            println!("linked funding to {number}");
        }
        AccountsCommand::Unlock { number } => {
            if !core.unlock(&number).await? {
                bail!("{number} is not locked");
            }
            println!("unlocked {number}");
        }
        AccountsCommand::Credit {
            number,
            amount,
            id,
            prepaid,
        } => {
            let account = if prepaid {
                accounts::prepaid(&number)
            } else {
                accounts::wallet(&number)
            };
            core.adjust(&id, &account, Money::parse(&amount)?, now)
                .await?;
            println!("adjusted {account} by {amount}");
        }
    }
    core.db.close().await;
    Ok(())
}

pub async fn topups(cfg: &Config, cmd: TopupsCommand) -> Result<()> {
    let core = open_core(cfg).await?;
    let adapters = Adapters::new();
    match cmd {
        TopupsCommand::Create {
            id,
            wallet,
            to,
            product,
            amount,
            json,
        } => {
            let req = TopupRequest {
                id,
                channel: "cli".into(),
                funding: Funding::Wallet(wallet.clone()),
                payer: wallet,
                recipient: to,
                product_id: product,
                amount: amount.as_deref().map(Money::parse).transpose()?,
                message: None,
            };
            let r = core
                .topup(&adapters, hlr(cfg).as_ref(), &req, now_ms())
                .await?;
            print(json, &r, print_receipt)?;
            // The receipt is printed either way; a top-up that failed is a failed command
            // (scripts see it in the exit status). A pending one is not: it settles later.
            if r.state == TopupState::Failed {
                anyhow::bail!(
                    "top-up {} failed: {} (nothing was taken from {})",
                    r.id,
                    r.error.as_deref().unwrap_or("the carrier refused it"),
                    r.payer
                );
            }
        }
        TopupsCommand::List { state, limit, json } => {
            let list = core.list_topups(state, limit).await?;
            print_rows(json, &list, "no top-ups", |r| {
                println!(
                    "{:<24} {:<9} {:<15} {:<14} {:>12} -> {:<14} {}",
                    r.id,
                    r.state,
                    r.recipient,
                    r.carrier_id,
                    r.sent,
                    r.received,
                    r.error.as_deref().unwrap_or("")
                );
            })?;
        }
        TopupsCommand::Show { id, json } => {
            let r = core
                .topup_receipt(&id)
                .await?
                .with_context(|| format!("no top-up {id}"))?;
            print(json, &r, print_receipt)?;
        }
        TopupsCommand::Reconcile { all } => {
            let now = now_ms();
            if all {
                core.make_pending_due(now).await?;
            }
            let r = core.reconcile(&adapters, now, 10_000).await?;
            println!(
                "checked {}: {} succeeded, {} failed, {} still pending",
                r.checked, r.succeeded, r.failed, r.still_pending
            );
        }
    }
    core.db.close().await;
    Ok(())
}

/// A number written without `+` is read as starting with its country code (as callers are
/// asked to key it): when that fails, say so, since a national number is the likely cause.
fn with_country_hint(number: &str, e: TopupError) -> anyhow::Error {
    let n = number.trim();
    match e {
        TopupError::InvalidNumber(_) if !n.starts_with('+') && !n.starts_with("00") => {
            anyhow::anyhow!(
                "{e} ({n} is read as starting with its country code: write it as +<country code><number>, e.g. +525512345678 for a Mexican mobile)"
            )
        }
        e => e.into(),
    }
}

fn print_receipt(r: &topup_ivr::topup::topups::Receipt) {
    println!(
        "{} {}: {} to {} via {} (receives {})",
        r.id, r.state, r.sent, r.recipient, r.carrier_id, r.received
    );
    if let Some(c) = &r.carrier_ref {
        println!("carrier reference {c}");
    }
    if let Some(e) = &r.error {
        println!("note: {e}");
    }
    if let Some(b) = &r.payer_balance {
        println!("payer balance {b}");
    }
}

pub async fn ledger(cfg: &Config, cmd: LedgerCommand) -> Result<()> {
    let core = open_core(cfg).await?;
    let LedgerCommand::Check { json } = cmd;
    let report = check_books(&core.db).await?;
    core.db.close().await;
    print(json, &report, |r| {
        for (cur, posted, pending) in &r.totals {
            println!("{cur}: posted {posted:+}, pending {pending:+}");
        }
        println!("{} accounts, {} transfers", r.accounts, r.transfers);
        for a in &r.mismatched_accounts {
            println!("MISMATCH: {a} disagrees with its transfers");
        }
        for a in &r.overdrawn_accounts {
            println!("OVERDRAWN: {a}");
        }
    })?;
    if !report.balanced() {
        bail!("the books do not balance");
    }
    if !json {
        println!("the books balance");
    }
    Ok(())
}

fn parse_topup_state(s: &str) -> Result<TopupState, String> {
    TopupState::from_name(s).ok_or_else(|| {
        format!("`{s}` is not a top-up state: pending, succeeded, failed or reversed")
    })
}
