//! The operations dialplans invoke: each turns a top-up core call into a result code (`ok` or
//! the core's error code) and variables for the plan. The caller's number (ANI) is the
//! identity for wallets and the payer of top-ups; PINs go straight to the core and are never
//! returned or logged.

use crate::clock::now_ms;
use crate::dialplan::{Args, Op};
use crate::topup::adapters::Adapters;
use crate::topup::numbers::Hlr;
use crate::topup::secrets::Pin;
use crate::topup::topups::{Funding, TopupRequest};
use crate::topup::{Core, TopupError};

/// Result codes of a failed or refused PIN attempt (answered ever more slowly in a call).
pub const PIN_FAILURES: [&str; 3] = ["invalid_pin", "locked", "rate_limited"];

/// What an operation needs besides its arguments.
pub struct OpContext<'a> {
    pub core: &'a Core,
    pub adapters: &'a Adapters,
    pub hlr: Option<&'a Hlr>,
    /// The caller's number (ANI), normalised to E.164 when possible.
    pub caller: &'a str,
    /// Unique per call and operation: makes a top-up idempotent if the call retries it.
    pub request_id: String,
    pub channel: &'a str,
    /// The call's current language, for SMS the operation writes.
    pub language: Option<&'a str>,
}

/// Result of an operation: code and variables.
pub type OpResult = (String, Vec<(String, String)>);

fn arg<'a>(args: &'a Args, name: &str) -> &'a str {
    args.text(name)
}

/// The PIN argument: a secret the caller keyed in (the plan check holds plans to that); any
/// other value is no PIN, and fails as a wrong one would.
fn pin(args: &Args) -> Pin {
    args.pin("pin").cloned().unwrap_or_else(|| Pin::new(""))
}

fn ok(vars: Vec<(&str, String)>) -> OpResult {
    (
        "ok".into(),
        vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    )
}

fn failed(e: TopupError) -> OpResult {
    if matches!(
        e,
        TopupError::Db(_) | TopupError::Store(_) | TopupError::Corrupt(_)
    ) {
        tracing::warn!(error = %e, "operation failed");
    }
    (e.code().to_string(), vec![])
}

/// The caller's number as the core keys accounts: E.164 when it parses, else as given.
pub fn caller_e164(ani: &str) -> String {
    crate::topup::numbers::parse_number(ani)
        .map(|n| n.e164)
        .unwrap_or_else(|_| ani.to_string())
}

/// Runs operation `op`.
pub async fn run(ctx: &OpContext<'_>, op: Op, args: &Args) -> OpResult {
    let now = now_ms();
    let core = ctx.core;
    let result: Result<OpResult, TopupError> = async {
        match op {
            Op::RedeemCard | Op::RechargeWallet => {
                let pin = pin(args);
                let r = if op == Op::RechargeWallet {
                    core.recharge_wallet(&pin, ctx.caller, now).await?
                } else {
                    core.redeem_card(&pin, None, ctx.caller, now).await?
                };
                Ok(ok(vec![
                    ("card_value", r.value.to_string()),
                    ("balance", r.wallet_balance.to_string()),
                ]))
            }
            Op::LookupNumber => {
                let n = core.lookup_number(arg(args, "number"), ctx.hlr).await?;
                let carrier = n.carrier_id.ok_or(TopupError::NoCarrier)?;
                Ok(ok(vec![
                    ("to_e164", n.e164),
                    ("carrier_prompt", format!("carrier-{carrier}")),
                    ("carrier_id", carrier),
                    (
                        "country_prompt",
                        format!("country-{}", n.country.to_ascii_lowercase()),
                    ),
                    ("country", n.country),
                ]))
            }
            Op::ListProducts => {
                let n = core.lookup_number(arg(args, "number"), ctx.hlr).await?;
                let carrier = n.carrier_id.ok_or(TopupError::NoCarrier)?;
                // The keypad offers denominations; open amounts are for the API and SMS.
                let mut vars = vec![];
                let mut count = 0;
                for p in core.products(&carrier).await? {
                    if let Ok((price, receive)) = p.quote(None) {
                        count += 1;
                        vars.push((format!("products.{count}.id"), p.id.clone()));
                        vars.push((format!("products.{count}.label"), p.label.clone()));
                        vars.push((format!("products.{count}.price"), price.to_string()));
                        vars.push((format!("products.{count}.receive"), receive.to_string()));
                    }
                }
                if count == 0 {
                    return Err(TopupError::NoProductForNumber);
                }
                vars.push(("products.count".into(), count.to_string()));
                Ok(("ok".into(), vars))
            }
            Op::Topup => {
                let req = TopupRequest {
                    id: ctx.request_id.clone(),
                    channel: ctx.channel.to_string(),
                    funding: Funding::Wallet(ctx.caller.to_string()),
                    payer: ctx.caller.to_string(),
                    recipient: arg(args, "number").to_string(),
                    product_id: arg(args, "product").to_string(),
                    amount: None,
                    message: None,
                };
                let r = core.topup(ctx.adapters, ctx.hlr, &req, now).await?;
                let balance = core.wallet_balance(ctx.caller).await?;
                let vars = vec![
                    ("topup_id", r.id.clone()),
                    ("received", r.received.clone()),
                    ("price", r.sent.clone()),
                    ("balance", balance.to_string()),
                    ("carrier_ref", r.carrier_ref.clone().unwrap_or_default()),
                    // "You will receive a confirmation by text message" only when one is
                    // sent: with SMS configured.
                    (
                        "receipt_prompt",
                        if core.notifier.is_some() {
                            "sms-receipt".to_string()
                        } else {
                            String::new()
                        },
                    ),
                ];
                let code = match r.state.as_str() {
                    "succeeded" => "ok",
                    "pending" => "pending",
                    _ => "carrier_failed",
                };
                Ok((code.into(), ok(vars).1))
            }
            Op::WalletAuth => {
                core.authenticate_wallet(ctx.caller, &pin(args), now)
                    .await?;
                let w = core.wallet(ctx.caller).await?.ok_or(TopupError::NoWallet)?;
                let balance = core.wallet_balance(ctx.caller).await?;
                Ok(ok(vec![
                    ("balance", balance.to_string()),
                    ("account_language", w.language),
                ]))
            }
            Op::WalletBalance => Ok(ok(vec![(
                "balance",
                core.wallet_balance(ctx.caller).await?.to_string(),
            )])),
            Op::RecentRecipient => {
                let recent = core.recent_recipients(ctx.caller, 3).await?;
                if recent.is_empty() {
                    return Ok(("none".into(), vec![]));
                }
                let mut vars: Vec<(String, String)> = recent
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (format!("recent.{}", i + 1), n.clone()))
                    .collect();
                vars.push(("recent.count".into(), recent.len().to_string()));
                Ok(("ok".into(), vars))
            }
            Op::MinutesLeft => {
                let e164 = crate::topup::numbers::parse_callable(arg(args, "number"))?.e164;
                if crate::topup::calling::blocked(&e164, &core.call_limits) {
                    return Err(TopupError::DestinationBlocked);
                }
                let balance = core.wallet_balance(ctx.caller).await?;
                let Some((per_minute, increment)) = core.rate_for(&e164, balance.currency).await?
                else {
                    return Ok(("no_rate".into(), vec![]));
                };
                let secs = crate::topup::calling::affordable_secs(balance, per_minute);
                let minutes = crate::topup::carriers::minutes_left(balance, per_minute);
                let vars = vec![("minutes", minutes.to_string())];
                Ok(match secs {
                    s if s < increment.max(1) => ("zero".into(), ok(vars).1),
                    s if s < 60 => ("under_a_minute".into(), ok(vars).1),
                    _ => ok(vars),
                })
            }
            // Placing a call needs the call's media: the call driver runs it (call::driver).
            Op::Call => Ok(("unavailable".into(), vec![])),
            // An SMS to the caller, with their wallet balance at hand ("call_no_funds": how to
            // recharge). The same message goes at most once per caller in ten minutes.
            Op::Notify => {
                let name = arg(args, "message");
                let Some(kind) = crate::sms::messages::MESSAGES
                    .iter()
                    .map(|(n, _, _)| *n)
                    .find(|n| *n == name)
                else {
                    return Ok(("unknown_message".into(), vec![]));
                };
                if !core.notifications_on() {
                    return Ok(("off".into(), vec![]));
                }
                let balance = core.wallet_balance(ctx.caller).await.ok();
                let mut vars = vec![];
                if let Some(b) = balance {
                    vars.push(("balance", b.to_string()));
                    vars.push(("currency", b.currency.code().to_string()));
                }
                core.send_notification(
                    crate::topup::notify::Notification {
                        id: format!("notify:{kind}:{}:{}", ctx.caller, now / 600_000),
                        kind,
                        to: ctx.caller.to_string(),
                        language: ctx.language.map(str::to_string),
                        vars,
                        reference: Some(ctx.request_id.clone()),
                    },
                    now,
                )
                .await?;
                Ok(ok(vec![]))
            }
            Op::SetAccountLanguage => {
                core.set_wallet_language(ctx.caller, arg(args, "language"))
                    .await?;
                Ok(ok(vec![]))
            }
        }
    }
    .await;
    result.unwrap_or_else(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialplan::Arg;
    use crate::topup::demo;
    use crate::topup::testing::cores;

    /// Arguments as the interpreter passes them: `pin` as the secret the caller keyed in.
    fn a(pairs: &[(&str, &str)]) -> Args {
        Args(
            pairs
                .iter()
                .map(|(k, v)| {
                    let v = if *k == "pin" {
                        Arg::Pin(Pin::new(v))
                    } else {
                        Arg::Text(v.to_string())
                    };
                    (k.to_string(), v)
                })
                .collect(),
        )
    }

    /// A voice call's context for `caller`, without an HLR.
    fn voice<'a>(
        core: &'a Core,
        adapters: &'a Adapters,
        caller: &'a str,
        request_id: &str,
    ) -> OpContext<'a> {
        OpContext {
            core,
            adapters,
            hlr: None,
            caller,
            request_id: request_id.into(),
            channel: "voice",
            language: None,
        }
    }

    fn get<'a>(r: &'a OpResult, k: &str) -> &'a str {
        r.1.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    #[tokio::test]
    async fn the_card_top_up_operations_in_order() {
        for (core, _g) in cores().await {
            core.seed_demo(1).await.unwrap();
            let adapters = Adapters::new();
            let caller = "+12015550177";
            let ctx = voice(&core, &adapters, caller, "voice:c1:1");
            let r = run(&ctx, Op::RedeemCard, &a(&[("pin", "99999999999999")])).await;
            assert_eq!(r.0, "invalid_pin");
            // A PIN that did not come from a secret collect is no PIN: the right digits as
            // plain text redeem nothing.
            let as_text = Args::texts([("pin", "22223333444455")]);
            assert_eq!(run(&ctx, Op::RedeemCard, &as_text).await.0, "invalid_pin");
            let r = run(&ctx, Op::RedeemCard, &a(&[("pin", "22223333444455")])).await;
            assert_eq!(
                (r.0.as_str(), get(&r, "card_value"), get(&r, "balance")),
                ("ok", "10.00 USD", "10.00 USD")
            );
            let r = run(&ctx, Op::RedeemCard, &a(&[("pin", "22223333444455")])).await;
            assert_eq!(r.0, "card_used");
            let r = run(&ctx, Op::LookupNumber, &a(&[("number", "+525512345678")])).await;
            assert_eq!(
                (get(&r, "carrier_prompt"), get(&r, "country_prompt")),
                ("carrier-telcel-mx", "country-mx")
            );
            let r = run(&ctx, Op::LookupNumber, &a(&[("number", "+447911123456")])).await;
            assert_eq!(r.0, "no_carrier");
            let r = run(&ctx, Op::ListProducts, &a(&[("number", "+525512345678")])).await;
            assert_eq!(get(&r, "products.count"), "3", "fixed denominations only");
            assert_eq!(get(&r, "products.1.receive"), "50.00 MXN", "smallest first");
            assert_eq!(get(&r, "products.2.receive"), "100.00 MXN");
            let r = run(
                &ctx,
                Op::Topup,
                &a(&[("number", "+525512345678"), ("product", "telcel-mx-100")]),
            )
            .await;
            assert_eq!((r.0.as_str(), get(&r, "balance")), ("ok", "4.01 USD"));
            // No SMS configured: no "you will receive a confirmation by text message".
            assert_eq!(get(&r, "receipt_prompt"), "");
            let r = run(
                &ctx,
                Op::Topup,
                &a(&[("number", "+525512345678"), ("product", "telcel-mx-100")]),
            )
            .await;
            assert_eq!(
                (r.0.as_str(), get(&r, "balance")),
                ("ok", "4.01 USD"),
                "same request id: once"
            );
            let ctx2 = OpContext {
                request_id: "voice:c1:2".into(),
                ..ctx
            };
            let r = run(
                &ctx2,
                Op::Topup,
                &a(&[("number", "+525512345678"), ("product", "telcel-mx-100")]),
            )
            .await;
            assert_eq!(r.0, "insufficient_funds");
            let r = run(&ctx2, Op::RecentRecipient, &Args::default()).await;
            assert_eq!(get(&r, "recent.1"), "+525512345678");
        }
    }

    #[tokio::test]
    async fn wallet_operations() {
        for (core, _g) in cores().await {
            core.seed_demo(1).await.unwrap();
            let adapters = Adapters::new();
            let ctx = voice(&core, &adapters, demo::WALLET, "voice:c2:1");
            assert_eq!(
                run(&ctx, Op::WalletAuth, &a(&[("pin", "0000")])).await.0,
                "invalid_pin"
            );
            let r = run(&ctx, Op::WalletAuth, &a(&[("pin", demo::WALLET_PIN)])).await;
            assert_eq!(
                (
                    r.0.as_str(),
                    get(&r, "balance"),
                    get(&r, "account_language")
                ),
                ("ok", "25.00 USD", "en")
            );
            assert_eq!(
                run(&ctx, Op::RecentRecipient, &Args::default()).await.0,
                "none"
            );
            let r = run(&ctx, Op::MinutesLeft, &a(&[("number", "+525512345678")])).await;
            assert_eq!(get(&r, "minutes"), "500");
            assert_eq!(
                run(&ctx, Op::MinutesLeft, &a(&[("number", "+447911123456")]))
                    .await
                    .0,
                "no_rate"
            );
            assert_eq!(
                run(&ctx, Op::SetAccountLanguage, &a(&[("language", "es")]))
                    .await
                    .0,
                "ok"
            );
            let r = run(&ctx, Op::WalletAuth, &a(&[("pin", demo::WALLET_PIN)])).await;
            assert_eq!(get(&r, "account_language"), "es");
            let nobody = OpContext {
                caller: "+12015550188",
                ..ctx
            };
            assert_eq!(
                run(&nobody, Op::WalletAuth, &a(&[("pin", "1234")])).await.0,
                "no_wallet"
            );
        }
    }

    #[tokio::test]
    async fn a_top_up_says_an_sms_confirmation_follows_only_when_sms_are_on() {
        for (core, _g) in crate::sms::testing::sms_cores().await {
            core.seed_demo(1).await.unwrap();
            let adapters = Adapters::new();
            let ctx = voice(&core, &adapters, demo::WALLET, "voice:sms:1");
            let r = run(
                &ctx,
                Op::Topup,
                &a(&[("number", "+525512345678"), ("product", "telcel-mx-100")]),
            )
            .await;
            assert_eq!(r.0, "ok");
            assert_eq!(get(&r, "receipt_prompt"), "sms-receipt");
        }
    }
}
