//! Interpreter scenarios on a simulated clock.

use super::*;
use crate::model::Dialplan;
use std::path::Path;

fn plan(text: &str) -> Arc<Dialplan> {
    let catalog = crate::Catalog::new(&|_, _| true, &["call_no_funds"]);
    Arc::new(
        Dialplan::parse(Path::new("t.toml"), text, &catalog).unwrap_or_else(|e| panic!("{e:?}")),
    )
}

fn echo() -> Interpreter {
    Interpreter::new(plan(include_str!("../../../dialplans/echo.toml")))
}

fn d(c: char) -> CallEvent {
    CallEvent::Digit(Digit::from_char(c).unwrap())
}

fn keys(i: &mut Interpreter, now: Instant, s: &str) {
    for c in s.chars() {
        i.handle_event(now, d(c));
    }
}

fn actions(i: &mut Interpreter) -> Vec<CallAction> {
    std::iter::from_fn(|| i.poll_action()).collect()
}

/// Prompt names of the Play actions pending (drained).
fn played(i: &mut Interpreter) -> Vec<String> {
    actions(i)
        .into_iter()
        .flat_map(|a| match a {
            CallAction::Play(p) => p.into_iter().map(|p| p.name).collect(),
            _ => vec![],
        })
        .collect()
}

fn done(i: &mut Interpreter, now: Instant) {
    i.handle_event(now, CallEvent::PromptDone);
}

#[test]
fn echo_greets_reads_back_and_hangs_up_on_star_star() {
    let t0 = Instant::now();
    let mut i = echo();
    i.start(t0);
    assert_eq!(played(&mut i), ["echo-welcome"]);
    done(&mut i, t0);
    assert_eq!(i.poll_timeout(), Some(t0 + Duration::from_secs(15)));
    keys(&mut i, t0, "4");
    assert_eq!(played(&mut i), ["digit-4"]);
    done(&mut i, t0);
    keys(&mut i, t0, "*");
    assert_eq!(played(&mut i), ["star"]);
    done(&mut i, t0);
    keys(&mut i, t0, "*");
    assert_eq!(played(&mut i), ["star"]);
    done(&mut i, t0);
    assert_eq!(played(&mut i), ["goodbye"]);
    done(&mut i, t0);
    assert!(matches!(
        actions(&mut i).as_slice(),
        [CallAction::Hangup { .. }]
    ));
    assert!(i.is_finished());
    assert_eq!(i.digits(), "4**");
}

#[test]
fn key_during_the_greeting_stops_it_and_is_not_lost() {
    let t0 = Instant::now();
    let mut i = echo();
    i.start(t0);
    actions(&mut i);
    keys(&mut i, t0, "7");
    let a = actions(&mut i);
    assert_eq!(a[0], CallAction::StopPlayback);
    assert!(matches!(&a[1], CallAction::Play(p) if p[0].name == "digit-7"));
}

#[test]
fn keys_typed_during_readback_wait_their_turn() {
    let t0 = Instant::now();
    let mut i = echo();
    i.start(t0);
    actions(&mut i);
    done(&mut i, t0);
    keys(&mut i, t0, "123");
    let mut heard = vec![];
    for _ in 0..3 {
        for a in actions(&mut i) {
            assert_ne!(a, CallAction::StopPlayback, "read-back is not interrupted");
            if let CallAction::Play(p) = a {
                heard.extend(p.into_iter().map(|p| p.name));
            }
        }
        done(&mut i, t0);
    }
    assert_eq!(heard, ["digit-1", "digit-2", "digit-3"]);
}

#[test]
fn silence_reprompts_then_says_goodbye_after_max_tries() {
    let t0 = Instant::now();
    let mut i = echo();
    i.start(t0);
    done(&mut i, t0);
    actions(&mut i);
    let mut heard = vec![];
    for _ in 0..3 {
        let now = i.poll_timeout().expect("waiting for a key");
        i.handle_timeout(now);
        heard.extend(played(&mut i));
        done(&mut i, now);
    }
    assert_eq!(heard, ["echo-reprompt", "echo-reprompt", "goodbye"]);
    assert!(matches!(
        actions(&mut i).as_slice(),
        [CallAction::Hangup { .. }]
    ));
}

const SHOP: &str = r##"
service = "shop"
numbers = ["shop"]
language = "en"
languages = ["en", "es"]
start = "lang"

[nodes.lang]
kind = "menu"
prompts = ["choose-language"]
options = { "1" = "main", "2" = "spanish" }
timeout = "5s"
max_tries = 2
invalid_prompts = ["invalid-option"]
no_input_prompts = ["no-input"]
on_failure = "main"

[nodes.spanish]
kind = "set_language"
language = "es"
next = "main"

[nodes.main]
kind = "menu"
prompts = ["main-menu"]
short_prompts = ["main-short"]
options = { "1" = "pin", "2" = "number", "0" = "agent" }
timeout = "5s"
invalid_prompts = ["invalid-option"]
on_failure = "agent"

[nodes.pin]
kind = "collect"
var = "pin"
prompts = ["enter-pin"]
min_digits = 4
max_digits = 14
terminator = "#"
first_digit_timeout = "8s"
inter_digit_timeout = "3s"
validator = "pin"
secret = true
invalid_prompts = ["invalid-pin"]
back = "main"
next = "redeem"
on_failure = "agent"

[nodes.redeem]
kind = "invoke"
op = "redeem_card"
args = { pin = "pin" }
results = { ok = "balance", invalid_pin = "pin", default = "agent" }
wait_prompts = ["please-wait"]

[nodes.balance]
kind = "say"
items = [{ prompt = "your-balance-is" }, { money = "balance" }]
next = "number"

[nodes.number]
kind = "collect"
var = "to"
prompts = ["enter-number"]
min_digits = 8
max_digits = 15
terminator = "#"
first_digit_timeout = "8s"
inter_digit_timeout = "3s"
validator = "e164"
invalid_prompts = ["invalid-number"]
confirm = "phone"
confirm_prompts = ["you-entered"]
agent = "agent"
next = "products"
on_failure = "agent"

[nodes.products]
kind = "invoke"
op = "list_products"
args = { number = "to_e164" }
results = { ok = "amount", default = "agent" }

[nodes.amount]
kind = "choose"
list = "products"
var = "product"
prompts = ["choose-amount"]
item = [{ prompt = "for" }, { money = ".receive" }]
timeout = "6s"
invalid_prompts = ["invalid-option"]
next = "bye"
on_empty = "agent"
on_failure = "agent"

[nodes.agent]
kind = "transfer"
reason = "caller asked"
prompts = ["transferring"]

[nodes.bye]
kind = "hangup"
"##;

fn shop() -> Interpreter {
    let mut i = Interpreter::with_vars(plan(SHOP), [("caller".into(), "+12015550100".into())]);
    i.start(Instant::now());
    i
}

#[test]
fn a_terminator_after_a_full_entry_does_not_spill_into_the_next_prompt() {
    // A card PIN at its longest (14 digits) and then `#`, as the prompt asked: the `#` ends
    // nothing more, and the next entry (the number) does not take it as an empty one.
    let ok = CallEvent::Result {
        code: "ok".into(),
        vars: vec![("balance".into(), "1 USD".into())],
    };
    for typed_ahead in [false, true] {
        let t0 = Instant::now();
        let mut i = shop();
        if typed_ahead {
            // All of it while the first prompt still plays.
            keys(&mut i, t0, "1112345678901234#");
        } else {
            keys(&mut i, t0, "11");
            actions(&mut i);
            done(&mut i, t0);
            keys(&mut i, t0, "12345678901234");
            keys(&mut i, t0 + Duration::from_millis(400), "#");
        }
        i.handle_event(t0, ok.clone());
        done(&mut i, t0);
        assert_eq!(i.node(), "number");
        let heard = played(&mut i);
        assert!(
            !heard.contains(&"invalid-number".to_string()),
            "typed ahead: {typed_ahead}: {heard:?}"
        );
        keys(&mut i, t0, "525512345678#");
        assert_eq!(
            played(&mut i)[0],
            "you-entered",
            "typed ahead: {typed_ahead}"
        );
    }
    // A `#` long after is a key like any other: here, an empty entry.
    let t0 = Instant::now();
    let mut i = shop();
    keys(&mut i, t0, "11");
    actions(&mut i);
    done(&mut i, t0);
    keys(&mut i, t0, "12345678901234");
    keys(&mut i, t0 + Duration::from_secs(10), "#");
    i.handle_event(t0, ok);
    done(&mut i, t0);
    assert!(played(&mut i).contains(&"invalid-number".to_string()));
}

#[test]
fn menus_route_retry_with_short_prompts_and_give_up() {
    let t0 = Instant::now();
    let mut i = shop();
    assert_eq!(played(&mut i), ["choose-language"]);
    done(&mut i, t0);
    keys(&mut i, t0, "9");
    assert_eq!(played(&mut i), ["invalid-option", "choose-language"]);
    keys(&mut i, t0, "2"); // during the retry prompt: barge-in
    assert_eq!(i.language(), "es");
    let a = actions(&mut i);
    assert!(a.contains(&CallAction::StopPlayback));
    assert!(
        matches!(a.last(), Some(CallAction::Play(p)) if p[0].name == "main-menu" && p[0].language == "es")
    );
    done(&mut i, t0);
    let t = i.poll_timeout().unwrap();
    i.handle_timeout(t);
    assert_eq!(
        played(&mut i),
        ["invalid-option", "main-short"],
        "no no_input_prompts: invalid ones"
    );
    done(&mut i, t);
    for _ in 0..2 {
        let t = i.poll_timeout().unwrap();
        i.handle_timeout(t);
        actions(&mut i);
        done(&mut i, t);
    }
    assert_eq!(i.node(), "agent");
}

#[test]
fn star_goes_back_and_secrets_are_masked_in_the_context() {
    let t0 = Instant::now();
    let mut i = shop();
    keys(&mut i, t0, "11"); // type-ahead through two menus
    actions(&mut i);
    assert_eq!(i.node(), "pin");
    keys(&mut i, t0, "*");
    assert_eq!(i.node(), "main");
    keys(&mut i, t0, "1");
    keys(&mut i, t0, "12345678#");
    let a = actions(&mut i);
    assert!(a.iter().any(|x| matches!(x, CallAction::Invoke { op, args } if *op == Op::RedeemCard && args.pin("pin") == Some(&Pin::new("12345678")))));
    // "One moment please" only if the answer is slow to come.
    assert!(matches!(a.last(), Some(CallAction::Invoke { .. })), "{a:?}");
    assert_eq!(i.poll_timeout(), Some(t0 + WAIT_PROMPTS_AFTER));
    i.handle_timeout(t0 + WAIT_PROMPTS_AFTER - Duration::from_millis(1));
    assert!(actions(&mut i).is_empty());
    i.handle_timeout(t0 + WAIT_PROMPTS_AFTER);
    assert_eq!(played(&mut i), ["please-wait"]);
    assert_eq!(i.poll_timeout(), None);
    let ctx = i.context();
    assert_eq!(ctx.inputs["pin"], "****");
    assert_eq!(ctx.path, ["lang", "main", "pin", "main", "pin", "redeem"]);
}

#[test]
fn invoke_results_pick_the_branch_and_set_variables() {
    let t0 = Instant::now();
    let mut i = shop();
    keys(&mut i, t0, "11");
    keys(&mut i, t0, "12345678#");
    actions(&mut i);
    // A slow answer: the wait prompts have started.
    i.handle_timeout(t0 + WAIT_PROMPTS_AFTER);
    assert_eq!(played(&mut i), ["please-wait"]);
    i.handle_event(
        t0 + WAIT_PROMPTS_AFTER,
        CallEvent::Result {
            code: "invalid_pin".into(),
            vars: vec![],
        },
    );
    assert_eq!(i.node(), "pin", "invalid_pin goes back to the PIN");
    assert!(
        actions(&mut i).contains(&CallAction::StopPlayback),
        "wait music stops"
    );
    keys(&mut i, t0, "12345678#");
    i.handle_event(
        t0,
        CallEvent::Result {
            code: "ok".into(),
            vars: vec![("balance".into(), "12.50 USD".into())],
        },
    );
    assert_eq!(
        played(&mut i),
        [
            "your-balance-is",
            "num-12",
            "cur-usd-many",
            "and",
            "num-50",
            "cur-usd-minor-many"
        ]
    );
    i.handle_event(
        t0,
        CallEvent::Result {
            code: "card_used".into(),
            vars: vec![],
        },
    );
    assert_eq!(i.node(), "balance", "a result when not invoking is ignored");
    done(&mut i, t0);
    i.handle_event(
        t0,
        CallEvent::Result {
            code: "weird".into(),
            vars: vec![],
        },
    );
    assert_eq!(i.node(), "number");
}

#[test]
fn numbers_are_validated_read_back_and_confirmed() {
    let t0 = Instant::now();
    let mut i = shop();
    keys(&mut i, t0, "11");
    actions(&mut i);
    keys(&mut i, t0, "12345678#");
    i.handle_event(
        t0,
        CallEvent::Result {
            code: "ok".into(),
            vars: vec![("balance".into(), "1 USD".into())],
        },
    );
    done(&mut i, t0);
    assert_eq!(i.node(), "number");
    actions(&mut i);
    keys(&mut i, t0, "52551#");
    assert_eq!(
        played(&mut i),
        ["invalid-number", "enter-number"],
        "too short for min_digits"
    );
    // Neither with a country code (999 is none) nor a US number (the caller's country): the
    // caller hears that reason, then the question again.
    keys(&mut i, t0, "99912345678#");
    assert_eq!(
        i.var("to_error"),
        Some("the country code is missing (start with it, e.g. 52 for Mexico)")
    );
    assert_eq!(played(&mut i), [COUNTRY_CODE_PROMPT, "enter-number"]);
    keys(&mut i, t0, "525512345678#");
    let heard = played(&mut i);
    assert_eq!(heard[0], "you-entered");
    assert_eq!(heard[1], "plus");
    assert_eq!(heard.last().unwrap(), CONFIRM_PROMPT);
    keys(&mut i, t0, "2");
    assert_eq!(i.node(), "number", "2 re-enters");
    assert_eq!(played(&mut i).last().unwrap(), "enter-number");
    keys(&mut i, t0, "525512345678#1");
    assert_eq!(i.var("to_e164"), Some("+525512345678"));
    let a = actions(&mut i);
    assert!(a.iter().any(|x| matches!(x, CallAction::Invoke { op, args } if *op == Op::ListProducts && args.0[0].1 == Arg::Text("+525512345678".into()))));
}

#[test]
fn choose_announces_the_list_and_copies_the_chosen_entry() {
    let t0 = Instant::now();
    let mut i = shop();
    keys(&mut i, t0, "11");
    keys(&mut i, t0, "12345678#");
    i.handle_event(
        t0,
        CallEvent::Result {
            code: "ok".into(),
            vars: vec![("balance".into(), "1 USD".into())],
        },
    );
    done(&mut i, t0);
    keys(&mut i, t0, "525512345678#1");
    actions(&mut i);
    let list = vec![
        ("products.count".into(), "2".into()),
        ("products.1.id".into(), "p50".into()),
        ("products.1.receive".into(), "50 MXN".into()),
        ("products.2.id".into(), "p100".into()),
        ("products.2.receive".into(), "100 MXN".into()),
    ];
    i.handle_event(
        t0,
        CallEvent::Result {
            code: "ok".into(),
            vars: list,
        },
    );
    let heard = played(&mut i);
    assert_eq!(heard.iter().filter(|p| *p == "press").count(), 2);
    assert!(heard.ends_with(&["press".into(), "digit-2".into()]));
    keys(&mut i, t0, "3");
    assert_eq!(played(&mut i)[0], "invalid-option");
    keys(&mut i, t0, "2");
    assert_eq!(i.var("product.id"), Some("p100"));
    assert_eq!(i.var("product.receive"), Some("100 MXN"));
    assert!(matches!(
        actions(&mut i).last(),
        Some(CallAction::StopPlayback) | Some(CallAction::Hangup { .. })
    ));
}

#[test]
fn zero_for_an_agent_transfers_with_the_context() {
    let t0 = Instant::now();
    let mut i = shop();
    keys(&mut i, t0, "10");
    assert_eq!(played(&mut i).last().unwrap(), "transferring");
    done(&mut i, t0);
    match actions(&mut i).as_slice() {
        [
            CallAction::Transfer {
                target,
                reason,
                context,
            },
        ] => {
            assert_eq!(
                (target.as_str(), reason.as_str()),
                ("agents", "caller asked")
            );
            assert_eq!(context.service, "shop");
            assert_eq!(context.path.last().unwrap(), "agent");
        }
        a => panic!("{a:?}"),
    }
    assert!(i.is_finished());
}

const ASK: &str = r##"
service = "ask"
numbers = ["ask"]
language = "en"
start = "first"

[nodes.first]
kind = "invoke"
op = "wallet_balance"
results = { ok = "menu", default = "second" }

[nodes.second]
kind = "invoke"
op = "wallet_balance"
results = { ok = "menu", default = "menu" }

[nodes.menu]
kind = "menu"
prompts = ["m"]
options = { "0" = "agent" }
timeout = "5s"
invalid_prompts = ["m"]
on_failure = "agent"

[nodes.agent]
kind = "transfer"
target = "agents"
prompts = ["t"]
"##;

/// The reason an escalation carries after two operation results, then 0 at the menu.
fn reason_after(first: &str, second: &str) -> String {
    let t0 = Instant::now();
    let mut i = Interpreter::new(plan(ASK));
    i.start(t0);
    for code in [first, second] {
        actions(&mut i);
        i.handle_event(
            t0,
            CallEvent::Result {
                code: code.into(),
                vars: vec![],
            },
        );
    }
    keys(&mut i, t0, "0");
    actions(&mut i);
    done(&mut i, t0);
    actions(&mut i)
        .into_iter()
        .find_map(|a| match a {
            CallAction::Transfer { reason, .. } => Some(reason),
            _ => None,
        })
        .expect("a transfer")
}

#[test]
fn an_escalation_carries_the_last_failure_unless_something_succeeded_since() {
    assert_eq!(reason_after("no_carrier", "card_used"), "card_used");
    assert_eq!(reason_after("none", "ok"), "caller request");
}

#[test]
fn an_instant_cycle_is_cut_at_runtime() {
    // Loaded without checks (the checker refuses it), the runtime guard still holds.
    let text = "service = \"t\"\nnumbers = [\"t\"]\nlanguage = \"en\"\nstart = \"a\"\n[nodes.a]\nkind = \"goto\"\ntarget = \"a\"\n";
    let mut p: Dialplan = toml::from_str(text).unwrap();
    p.languages = vec!["en".into()];
    let mut i = Interpreter::new(Arc::new(p));
    i.start(Instant::now());
    assert_eq!(
        actions(&mut i),
        [CallAction::Hangup {
            reason: "dialplan-loop".into()
        }]
    );
}

#[test]
fn validators() {
    assert!(validate("1234", Some(Validator::Pin), None, None, None, None).is_ok());
    assert!(validate("12*4", Some(Validator::Pin), None, None, None, None).is_err());
    assert_eq!(
        validate("25", Some(Validator::Amount), None, Some(1), Some(50), None),
        Ok(vec![])
    );
    assert!(validate("51", Some(Validator::Amount), None, Some(1), Some(50), None).is_err());
    assert!(
        validate(
            "abc",
            Some(Validator::Regex),
            Some("[0-9]+"),
            None,
            None,
            None
        )
        .is_err()
    );
    assert!(
        validate(
            "123",
            Some(Validator::Regex),
            Some("[0-9]+"),
            None,
            None,
            None
        )
        .is_ok()
    );
    let e = validate("84912345678", Some(Validator::E164), None, None, None, None).unwrap();
    assert_eq!(e[0], ("e164".into(), "+84912345678".into()));
    // A landline: not for a top-up, but a call may go there.
    assert!(
        validate(
            "842438251234",
            Some(Validator::E164),
            None,
            None,
            None,
            None
        )
        .is_err()
    );
    let e = validate(
        "842438251234",
        Some(Validator::Callable),
        None,
        None,
        None,
        None,
    )
    .unwrap();
    assert_eq!(e[0], ("e164".into(), "+842438251234".into()));
}

#[test]
fn a_number_without_its_country_code_is_read_in_the_callers_country() {
    let t0 = Instant::now();
    let mut i = shop(); // the caller is +1 201 555 0100
    keys(&mut i, t0, "12");
    actions(&mut i);
    done(&mut i, t0);
    assert_eq!(i.node(), "number");
    keys(&mut i, t0, "2015550150#");
    let heard = played(&mut i);
    assert_eq!(heard[0], "you-entered", "{heard:?}");
    assert_eq!(i.var("to_e164"), Some("+12015550150"));
    assert_eq!(i.var("to_country"), Some("US"));
}

#[test]
fn quoted_invoke_arguments_are_literals_and_others_variables() {
    let t0 = Instant::now();
    let mut i = Interpreter::new(plan(
        r#"
service = "t"
numbers = ["t"]
language = "en"
start = "pin"
[nodes.pin]
kind = "collect"
var = "pin"
prompts = ["p"]
max_digits = 4
first_digit_timeout = "5s"
inter_digit_timeout = "3s"
invalid_prompts = ["p"]
on_failure = "bye"
secret = true
next = "tell"
[nodes.tell]
kind = "invoke"
op = "notify"
args = { message = "'call_no_funds'", pin = "pin", missing = "nothing" }
results = { default = "bye" }
[nodes.bye]
kind = "hangup"
"#,
    ));
    i.start(t0);
    keys(&mut i, t0, "1234");
    let a = actions(&mut i);
    let args = a
        .iter()
        .find_map(|x| match x {
            CallAction::Invoke { op, args } if *op == Op::Notify => Some(args.clone()),
            _ => None,
        })
        .expect("notify invoked");
    assert_eq!(args.text("message"), "call_no_funds");
    assert_eq!(args.pin("pin"), Some(&Pin::new("1234")));
    assert_eq!(args.text("missing"), "");
    assert_eq!(args.get("missing"), Some(&Arg::Text(String::new())));
    // The PIN travels as a Pin: no Debug of the actions, and so no log line, shows it.
    let shown = format!("{a:?}");
    assert!(!shown.contains("1234"), "{shown}");
    assert!(shown.contains("Pin(****)"), "{shown}");
    assert_eq!(i.var("pin"), None);
}

#[test]
fn a_caller_leaning_on_the_keypad_leaves_a_record_of_bounded_size() {
    let t0 = Instant::now();
    let mut i = echo();
    i.start(t0);
    keys(&mut i, t0, &"12".repeat(5000));
    assert_eq!(i.digits().len(), MAX_RECORDED_DIGITS);
    assert!(i.digits().starts_with("1212"));
}
