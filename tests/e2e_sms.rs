//! The text channel end to end: the real binary with the demo data bound to a real SMSC
//! (node-smpp's server, tests/smsc/smsc.js) over loopback. Confirmations of IVR top-ups, SMS
//! commands, low-balance alerts answered by a reply, UCS-2 and long texts, the SMSC killed and
//! restarted, throttling, a wrong password, duplicates and garbage.

mod common;

use std::time::Duration;

use common::smsc::{Smsc, smsc_config};
use common::*;
use serde_json::{Value, json};

/// SMS config for a server: alerts checked every second, one SMSC.
fn sms_extra(smsc_port: u16, password: &str) -> String {
    format!(
        "[sms]\nalert_every = \"500ms\"\nsender = \"TopUp\"\n{}",
        smsc_config("main", smsc_port, password, "")
    )
}

fn outbox(server: &Server) -> Vec<Value> {
    cli(server, &["sms", "list", "--limit", "1000"])
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until every outbox row is in one of `states`.
fn wait_outbox(server: &Server, states: &[&str]) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let rows = outbox(server);
        if !rows.is_empty()
            && rows
                .iter()
                .all(|r| states.contains(&r["state"].as_str().unwrap_or("")))
        {
            return rows;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "outbox not all {states:?}:\n{}\n{}",
                serde_json::to_string_pretty(&rows).unwrap(),
                server.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn text(m: &Value) -> String {
    m["text"].as_str().unwrap_or("").to_string()
}

fn bound(smsc: &Smsc) {
    smsc.wait_for("a bind", Duration::from_secs(20), |e| {
        e.iter().any(|v| v["event"] == "bind" && v["ok"] == true)
    });
}

#[test]
fn sms_commands_are_carried_out_and_answered_once() {
    let mut smsc = Smsc::start(0, "secret");
    let server = Server::start(&sms_extra(smsc.port, "secret"));
    bound(&smsc);

    // A wallet top-up with a message for the recipient.
    let wallet = "+12015550100";
    let a = smsc.mo(
        wallet,
        "  topup 2   1234  +52 55 1234 5678 Happy birthday ",
        "mo-1",
    );
    assert_eq!(a["status"], 0);
    let payer = smsc.wait_messages(wallet, 1);
    assert!(
        text(&payer[0]).starts_with("You sent 34.10 MXN to +525512345678 (Telcel). Paid 2.00 USD."),
        "{payer:?}"
    );
    // A Mexican number hears it in Spanish, with the sender's words.
    let recipient = smsc.wait_messages("+525512345678", 1);
    assert_eq!(
        text(&recipient[0]),
        "+12015550100 te envio 34.10 MXN de recarga Telcel: Happy birthday",
    );
    assert_eq!(recipient[0]["from"], "TopUp");

    // The SMSC delivers the same message again: answered, nothing happens twice.
    let again = smsc.mo(wallet, "TOPUP 2 1234 +525512345678 Happy birthday", "mo-1");
    assert_eq!(again["status"], 0);
    // A card top-up; the card's PIN never reaches the log.
    smsc.mo(wallet, "TOPUP 22223333444455 +12015550151", "mo-2");
    smsc.wait_messages("+12015550151", 1);
    // Balance, help, a malformed command and an unknown sender.
    smsc.mo(wallet, "BAL 1234", "mo-3");
    smsc.mo(wallet, "TOPUP 12", "mo-4");
    smsc.mo("+12015550999", "BAL 1234", "mo-5");
    let to_wallet = smsc.wait_messages(wallet, 4);
    let texts: Vec<String> = to_wallet.iter().map(text).collect();
    assert!(
        texts
            .iter()
            .any(|t| t == "Your wallet balance is 23.00 USD."),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("Format: TOPUP <PIN> <NUMBER>")),
        "{texts:?}"
    );
    assert_eq!(
        text(&smsc.wait_messages("+12015550999", 1)[0]),
        "This number has no wallet or account with us."
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        smsc.messages_to("+525512345678").len(),
        1,
        "the repeated delivery topped up nothing"
    );
    let (by_sms, topups) = count_topups(&server, "channel", "sms");
    assert_eq!(by_sms, 2, "{topups}");
    let log = server.log();
    assert!(!log.contains("22223333444455"), "a card PIN was logged");
    for said in ["2 1234", "BAL 1234", "2   1234"] {
        assert!(!log.contains(said), "a wallet PIN was logged: {said}");
    }
    assert!(log.contains("BAL ****"), "commands are logged masked");
    // Receipts mark the messages delivered.
    let rows = wait_outbox(&server, &["delivered"]);
    assert!(rows.iter().all(|r| r["attempts"] == 1), "{rows:?}");
}

#[test]
fn a_command_delivered_again_without_an_smsc_id_is_carried_out_once() {
    let mut smsc = Smsc::start(0, "secret");
    let server = Server::start(&sms_extra(smsc.port, "secret"));
    bound(&smsc);
    let wallet = "+12015550100";
    // The SMSC gives no id of its own and delivers the same message twice.
    for r in ["first", "again"] {
        let a = smsc.mo_without_id(wallet, "TOPUP 2 1234 +525512345678", r);
        assert_eq!(a["status"], 0, "{a}");
    }
    smsc.wait_messages("+525512345678", 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(smsc.messages_to("+525512345678").len(), 1);
    assert_eq!(smsc.messages_to(wallet).len(), 1, "one confirmation");
    let (by_sms, topups) = count_topups(&server, "channel", "sms");
    assert_eq!(by_sms, 1, "{topups}");
    assert!(server.log().contains("SMS delivered again"));
}

#[test]
fn sms_texts_hot_reload_and_a_broken_file_keeps_the_running_ones() {
    let mut smsc = Smsc::start(0, "secret");
    let texts = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("sms"), texts.path());
    let server = Server::start(&format!(
        "[paths]\nsms = \"{}\"\nreload_every = \"300ms\"\n{}",
        texts.path().display(),
        sms_extra(smsc.port, "secret")
    ));
    bound(&smsc);
    let wallet = "+12015550100";
    let en = texts.path().join("en.toml");
    let shipped = std::fs::read_to_string(&en).unwrap();
    // Staff reword the format help and add a keyword for the balance.
    let edited = shipped
        .replace(
            "format_topup = \"Format: TOPUP",
            "format_topup = \"Write: TOPUP",
        )
        .replace("balance = [\"BAL\"", "balance = [\"SALDO\", \"BAL\"");
    assert_ne!(edited, shipped);
    assert!(
        edited.contains("\"SALDO\""),
        "the balance keywords are spelled as expected"
    );
    std::fs::write(&en, &edited).unwrap();
    server.wait_until("the texts reloaded", Duration::from_secs(15), || {
        server.log().contains("reloaded the changed files")
    });
    smsc.mo(wallet, "TOPUP 12", "mo-1");
    smsc.mo(wallet, "SALDO 1234", "mo-2");
    let texts_now: Vec<String> = smsc.wait_messages(wallet, 2).iter().map(text).collect();
    assert!(
        texts_now
            .iter()
            .any(|t| t.starts_with("Write: TOPUP <PIN>")),
        "{texts_now:?}"
    );
    assert!(
        texts_now
            .iter()
            .any(|t| t == "Your wallet balance is 25.00 USD."),
        "the new keyword works: {texts_now:?}"
    );

    // A message naming a placeholder that does not exist: refused, the running texts stay.
    std::fs::write(
        &en,
        edited.replace("Write: TOPUP <PIN>", "Write {nonsense}: TOPUP <PIN>"),
    )
    .unwrap();
    server.wait_until("the broken file reported", Duration::from_secs(15), || {
        server.log().contains("reload refused")
    });
    assert!(server.log().contains("en.toml"), "the error names the file");
    smsc.mo(wallet, "TOPUP 12", "mo-3");
    let texts_now: Vec<String> = smsc.wait_messages(wallet, 3).iter().map(text).collect();
    assert!(
        texts_now[2..]
            .iter()
            .all(|t| t.starts_with("Write: TOPUP <PIN>")),
        "{texts_now:?}"
    );
}

#[test]
fn an_ivr_top_up_is_confirmed_to_both_through_the_smsc_for_their_prefix() {
    require("sipp");
    let mut main = Smsc::start(0, "secret");
    let us = Smsc::start(0, "secret");
    let extra = format!(
        "{}{}",
        sms_extra(main.port, "secret"),
        smsc_config("us", us.port, "secret", "\"+1201555015\"")
    );
    let server = Server::start(&extra);
    bound(&main);
    bound(&us);
    let want = json!([{"name": "main", "bound": true}, {"name": "us", "bound": true}]);
    server.wait_until("both connections bound", Duration::from_secs(10), || {
        server.health()["smsc"] == want
    });
    // A card top-up by keypad from +12015550161 to our own +12015550150 (5 dollars).
    keys(
        "keys.xml",
        "recharge",
        "+12015550161",
        "111112222333344#12015550150#111",
    )
    .run(&server);
    server.wait_idle();
    let payer = main.wait_messages("+12015550161", 1);
    assert!(
        text(&payer[0]).starts_with("You sent 5.00 USD to +12015550150"),
        "{payer:?}"
    );
    // +1201555015x goes through the second connection: its alert and the confirmation.
    let recipient = us.wait_for(
        "the recipient's confirmation",
        Duration::from_secs(30),
        |e| {
            e.iter().any(|v| {
                v["event"] == "message"
                    && v["to"] == "+12015550150"
                    && v["text"].as_str().is_some_and(|t| t.contains("5.00 USD"))
            })
        },
    );
    assert!(!recipient.is_empty());
    assert!(main.messages_to("+12015550150").is_empty());
    // Receipts make every message delivered; `sms show` tells the parts' SMSC ids.
    let rows = wait_outbox(&server, &["delivered"]);
    let row = rows
        .iter()
        .find(|r| r["destination"] == "+12015550161")
        .unwrap();
    let shown = cli(&server, &["sms", "show", row["id"].as_str().unwrap()]);
    assert_eq!(shown["smsc"], "main");
    assert_eq!(shown["part_list"][0]["state"], "delivered");
    assert_eq!(
        shown["part_list"][0]["message_id"],
        main.of("submit")
            .iter()
            .find(|s| s["to"] == "+12015550161")
            .unwrap()["id"]
    );
    main.kill();
}

#[test]
fn long_and_accented_texts_go_as_ucs2_parts_and_come_back_joined() {
    let mut smsc = Smsc::start(0, "secret");
    let server = Server::start(&sms_extra(smsc.port, "secret"));
    bound(&smsc);
    // Vietnamese help: UCS-2, longer than one message.
    smsc.mo("+84912345678", "HUONGDAN", "vi-1");
    let m = smsc.wait_messages("+84912345678", 1);
    assert_eq!(m[0]["data_coding"], 8, "{m:?}");
    assert!(m[0]["parts"].as_u64().unwrap() >= 2, "{m:?}");
    assert!(
        text(&m[0]).starts_with("NAP <PIN thẻ> <số> | NAP <số tiền>"),
        "{m:?}"
    );
    let parts: Vec<Value> = smsc
        .of("submit")
        .into_iter()
        .filter(|s| s["to"] == "+84912345678")
        .collect();
    assert!(
        parts
            .iter()
            .all(|p| p["esm_class"].as_u64().unwrap() & 0x40 != 0)
    );
    // An incoming UCS-2 message in three parts: a balance request.
    smsc.send(json!({"cmd": "mo", "from": "+12015550150", "text": "bal  4321", "coding": "ucs2", "split": 4, "id": "ucs2-1"}));
    smsc.wait_answer("ucs2-1");
    smsc.wait_for("the balance", Duration::from_secs(30), |e| {
        e.iter()
            .any(|v| v["event"] == "message" && v["text"] == "Your balance is 1.20 USD.")
    });
    drop(server);
}

#[test]
fn the_low_balance_alert_goes_once_and_the_reply_recharges_the_account() {
    let mut smsc = Smsc::start(0, "secret");
    let server = Server::start(&sms_extra(smsc.port, "secret"));
    bound(&smsc);
    // The demo account +12015550150 has 1.20 USD, below its 2.00 threshold, and a linked
    // funding account.
    let alert = smsc.wait_messages("+12015550150", 1);
    assert_eq!(
        text(&alert[0]),
        "Your balance is 1.20 USD. Reply TOPUP 10 <PIN> to recharge 10 USD from your linked account."
    );
    // +12015550152 (Vietnamese, 0.00 below 1.00) has no linked account.
    let vi = smsc.wait_messages("+12015550152", 1);
    assert!(
        text(&vi[0]).starts_with("Số dư của bạn là 0.00 USD."),
        "{vi:?}"
    );
    // Checked every half second: still one alert each.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(smsc.messages_to("+12015550150").len(), 1);
    // The reply: amount and the funding PIN.
    smsc.mo("+12015550150", "TOPUP 10 4321", "reply-1");
    let after = smsc.wait_messages("+12015550150", 2);
    assert!(
        text(&after[1])
            .starts_with("Your account was recharged with 10.00 USD. New balance: 11.20 USD."),
        "{after:?}"
    );
    let account = cli(&server, &["accounts", "show", "+12015550150"]);
    assert_eq!(account["prepaid"]["balance"], "11.20", "{account}");
    // Back above the threshold: no new alert.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(smsc.messages_to("+12015550150").len(), 2);
    assert!(!server.log().contains("TOPUP 10 4321"));
}

/// Ten wallet top-ups made at the command line: twenty confirmations.
fn ten_topups(server: &Server) {
    for i in 0..10 {
        cli(
            server,
            &[
                "topups",
                "create",
                "--id",
                &format!("cli-{i}"),
                "--wallet",
                "+12015550100",
                "--to",
                &format!("+5255123456{i:02}"),
                "--product",
                "telcel-mx-open",
                "--amount",
                "2.00USD",
            ],
        );
    }
}

#[test]
fn the_smsc_killed_mid_stream_and_restarted_loses_nothing_and_repeats_nothing() {
    let mut smsc = Smsc::start(0, "secret");
    let port = smsc.port;
    let server = Server::start(&format!(
        "{}[sms]\nreceipts = false\n",
        sms_extra(port, "secret")
    ));
    bound(&smsc);
    // The SMSC answers seven more messages, then dies holding the eighth unanswered.
    // (The demo's low-balance alerts may already be on their way: counted from the arming.)
    smsc.send(json!({"cmd": "die_after", "count": 7}));
    let armed = smsc.wait_for("the SMSC armed", Duration::from_secs(10), |e| {
        e.iter().any(|v| v["event"] == "armed")
    });
    let before = armed.iter().find(|v| v["event"] == "armed").unwrap()["submits_before"]
        .as_u64()
        .unwrap() as usize;
    ten_topups(&server);
    smsc.wait_exit(Duration::from_secs(30));
    let first = smsc.of("message");
    let answered = smsc.of("submit");
    assert_eq!(answered.len() - before, 7, "{answered:?}");
    // A new SMSC on the same port: the service reconnects and sends the rest.
    let again = Smsc::start(port, "secret");
    bound(&again);
    let rows = wait_outbox(&server, &["sent"]);
    let mut seen: Vec<(String, String)> = first
        .iter()
        .chain(again.of("message").iter())
        .map(|m| (m["to"].as_str().unwrap().to_string(), text(m)))
        .collect();
    let total = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), total, "a message was accepted twice: {seen:?}");
    // Every row went out exactly once: 20 confirmations and the 2 demo alerts.
    assert_eq!(rows.len(), 22, "{rows:?}");
    assert_eq!(total, rows.len());
    for r in &rows {
        assert!(
            seen.iter()
                .any(|(to, t)| to == r["destination"].as_str().unwrap() && *t == r["body"]),
            "not received: {r}"
        );
    }
    let log = server.log();
    assert!(
        log.contains("SMSC connection closed; reconnecting"),
        "{log}"
    );
}

#[test]
fn an_smsc_that_never_sends_receipts_gets_each_message_once_and_they_stay_sent() {
    let mut smsc = Smsc::start(0, "secret");
    // Receipts are asked for (the default) but never come.
    smsc.send(json!({"cmd": "receipts", "stat": null}));
    let server = Server::start(&sms_extra(smsc.port, "secret"));
    bound(&smsc);
    ten_topups(&server);
    let rows = wait_outbox(&server, &["sent"]);
    assert_eq!(
        rows.len(),
        22,
        "20 confirmations and the 2 demo alerts: {rows:?}"
    );
    // Well past the sender's rounds (every 250 ms) and its first retry (5 s): nothing is sent
    // again and nothing is marked failed for want of a receipt.
    std::thread::sleep(Duration::from_secs(6));
    let rows = outbox(&server);
    assert!(
        rows.iter()
            .all(|r| r["state"] == "sent" && r["attempts"] == 1),
        "{rows:?}"
    );
    let messages = smsc.of("message");
    assert_eq!(
        messages.len(),
        rows.len(),
        "each message once: {messages:?}"
    );
    // (The SMSC really sent none: its receipts are deliver_sm answered as receipt:<id>.)
    assert!(
        !smsc
            .of("deliver_resp")
            .iter()
            .any(|v| v["ref"].as_str().unwrap_or("").starts_with("receipt:")),
        "a receipt was sent"
    );
}

#[test]
fn throttling_pauses_sending_and_every_message_still_goes_once() {
    let mut smsc = Smsc::start(0, "secret");
    smsc.send(json!({"cmd": "throttle", "count": 2, "status": 0x58}));
    let server = Server::start(&sms_extra(smsc.port, "secret"));
    bound(&smsc);
    let rows = wait_outbox(&server, &["delivered"]);
    let submits = smsc.of("submit");
    assert_eq!(
        submits.iter().filter(|s| s["status"] == 0x58).count(),
        2,
        "{submits:?}"
    );
    // The alerts (one in two parts): each part accepted once.
    let accepted = submits.iter().filter(|s| s["status"] == 0).count();
    assert_eq!(accepted, 3, "{submits:?}");
    assert_eq!(rows.len(), 2);
    assert!(server.log().contains("the SMSC is throttling; pausing"));
}

#[test]
fn a_wrong_password_is_reported_and_messages_wait_for_the_right_one() {
    let mut wrong = Smsc::start(0, "other");
    let port = wrong.port;
    let server = Server::start(&sms_extra(port, "secret"));
    wrong.wait_for("a refused bind", Duration::from_secs(20), |e| {
        e.iter().any(|v| v["event"] == "bind" && v["ok"] == false)
    });
    server.wait_until("the refusal logged", Duration::from_secs(10), || {
        server.log().contains("the SMSC refused the bind")
    });
    assert!(server.log().contains("ESME_RINVPASWD"), "{}", server.log());
    assert_eq!(server.health()["smsc"][0]["bound"], false);
    assert!(!server.log().contains("secret"), "the password was logged");
    // The alerts wait, queued, not failed.
    let rows = outbox(&server);
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r["state"] == "queued"),
        "{rows:?}"
    );
    wrong.kill();
    let right = Smsc::start(port, "secret");
    bound(&right);
    wait_outbox(&server, &["delivered"]);
    right.wait_messages("+12015550150", 1);
}

#[test]
fn garbage_from_the_smsc_gets_a_generic_nack_and_the_session_goes_on() {
    let mut smsc = Smsc::start(0, "secret");
    let server = Server::start(&sms_extra(smsc.port, "secret"));
    bound(&smsc);
    smsc.send(json!({"cmd": "garbage"}));
    let ev = smsc.wait_for("a generic_nack", Duration::from_secs(10), |e| {
        e.iter().any(|v| v["event"] == "generic_nack")
    });
    let nack = ev.iter().find(|v| v["event"] == "generic_nack").unwrap();
    assert_eq!(nack["status"], 3, "ESME_RINVCMDID: {nack}");
    smsc.mo("+12015550100", "HELP", "after-garbage");
    let help = smsc.wait_messages("+12015550100", 1);
    assert!(
        text(&help[0]).starts_with("TOPUP <card PIN> <number>"),
        "{help:?}"
    );
    assert_eq!(smsc.of("bind").len(), 1, "the session was not dropped");
    drop(server);
}

#[test]
fn a_call_the_wallet_cannot_pay_for_is_answered_by_sms_and_a_card_recharges_it() {
    require("sipp");
    let mut smsc = Smsc::start(0, "secret");
    let server = Server::start(&sms_extra(smsc.port, "secret"));
    bound(&smsc);
    let caller = "+12015550177";
    create_wallet(&server, caller, "4321");
    // PIN, 3: minutes to a number, a Mexican number: the empty wallet pays for no minute.
    keys("keys_then_bye.xml", "wallet", caller, "4321#3525512345678#")
        .arg("-d")
        .arg("9000")
        .run(&server);
    server.wait_idle();
    let m = smsc.wait_messages(caller, 1);
    assert_eq!(
        text(&m[0]),
        "Your balance of 0.00 USD does not pay for this call. Text RECHARGE <card PIN> to add money to your wallet."
    );
    // The caller does as told.
    smsc.mo(caller, "RECHARGE 33334444555566", "recharge-1");
    let m = smsc.wait_messages(caller, 2);
    assert!(
        text(&m[1]).starts_with("20.00 USD was added to your wallet. Wallet balance: 20.00 USD."),
        "{m:?}"
    );
    assert!(!server.log().contains("33334444555566"));
}
