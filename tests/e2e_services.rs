//! The voice services end to end: the real binary with the demo data, dialled by sipp, keys
//! pressed as RFC 4733 events (typed ahead: a key never waits for a prompt to finish).

mod common;

use common::*;
use std::process::Command;

fn cli(server: &Server, args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(&server.config)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn keys(scenario: &str, service: &str, caller: &str, digits: &str) -> Sipp {
    Sipp::new(scenario, service)
        .arg("-key")
        .arg("caller")
        .arg(caller)
        .arg("-key")
        .arg("digits")
        .arg(digits)
}

#[test]
fn a_card_top_up_by_keypad_alone_credits_the_recipient_and_uses_the_card() {
    require("sipp");
    let server = Server::start("");
    // English, the demo card's PIN, our own network's number, confirm it, the second amount
    // (5 dollars), confirm the top-up.
    keys(
        "keys.xml",
        "recharge",
        "+12015550161",
        "111112222333344#12015550150#121",
    )
    .run(&server);
    server.wait_idle();
    let account = cli(&server, &["accounts", "show", "+12015550150"]);
    assert_eq!(
        account["prepaid"]["balance"], "6.20",
        "1.20 + 5.00: {account}"
    );
    let card = cli(&server, &["cards", "show", "100000000001"]);
    assert_eq!(
        (card["state"].as_str(), card["redeemed_by"].as_str()),
        (Some("redeemed"), Some("+12015550161"))
    );
    let topups = cli(&server, &["topups", "list"]);
    assert_eq!(topups[0]["state"], "succeeded");
    assert_eq!(topups[0]["channel"], "voice");
    assert_eq!(topups[0]["payer"], "+12015550161");
    let calls = server.calls();
    assert_eq!(calls[0]["service"], "recharge");
    assert_eq!(calls[0]["end_reason"], "service-hangup");
    assert!(
        calls[0]["digits"].is_null(),
        "a plan with PINs never stores digits"
    );
    assert!(
        !server.log().contains("11112222333344"),
        "the PIN is never logged"
    );
}

#[test]
fn a_wallet_top_up_then_the_recent_recipient_is_offered_first() {
    require("sipp");
    let server = Server::start("");
    // PIN, (no recent yet) 1: top up a number, the number, confirm, first amount, confirm.
    keys(
        "keys_then_bye.xml",
        "wallet",
        "+12015550100",
        "1234#1525512345678#111",
    )
    .arg("-d")
    .arg("12000")
    .run(&server);
    // PIN, 1: top up +52... again, first amount, confirm — no number typed.
    keys("keys_then_bye.xml", "wallet", "+12015550100", "1234#111")
        .arg("-d")
        .arg("12000")
        .run(&server);
    server.wait_idle();
    let topups = cli(&server, &["topups", "list"]);
    let ok: Vec<_> = topups
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "succeeded")
        .collect();
    assert_eq!(ok.len(), 2, "{topups}");
    assert!(
        ok.iter()
            .all(|t| t["recipient"] == "+525512345678" && t["payer"] == "+12015550100")
    );
    let wallet = cli(&server, &["accounts", "show", "+12015550100"]);
    assert_eq!(wallet["wallet"]["balance"], "13.02", "25.00 - 2 x 5.99");
}

#[test]
fn wrong_wallet_pins_lock_the_wallet_and_escalate_with_context() {
    require("sipp");
    let server = Server::start(
        "[security]\nmax_pin_failures = 3\n[escalation]\nagent_uri = \"sip:agents@127.0.0.1:5999\"\n",
    );
    let logs = tempfile::tempdir().unwrap();
    let sipp = keys(
        "keys_refer.xml",
        "wallet",
        "+12015550100",
        "1111#2222#3333#",
    );
    let out = sipp.command(&server, logs.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        read_logs(logs.path()),
        server.log()
    );
    server.wait_idle();
    let wallet = cli(&server, &["accounts", "show", "+12015550100"]);
    assert_eq!(wallet["wallet"]["status"], "locked");
    let calls = server.calls();
    assert_eq!(calls[0]["end_reason"], "transferred");
    let escalations = cli(&server, &["escalations", "list"]);
    let e = &escalations[0];
    assert_eq!(
        (
            e["service"].as_str(),
            e["reason"].as_str(),
            e["state"].as_str()
        ),
        (Some("wallet"), Some("locked"), Some("transferred"))
    );
    assert_eq!(e["inputs"]["pin"], "****");
    assert_eq!(e["caller"], "+12015550100");
    // The REFER carried this escalation's id (sipp logged what it matched).
    let sipp_log = read_logs(logs.path());
    assert!(
        sipp_log.contains(&format!("escalation {}", e["id"].as_str().unwrap())),
        "{sipp_log}"
    );
}

#[test]
fn without_an_agent_uri_the_caller_is_told_and_the_escalation_recorded() {
    require("sipp");
    let server = Server::start("");
    // 0 at the PIN prompt asks for an agent.
    keys("keys.xml", "wallet", "+12015550100", "0").run(&server);
    server.wait_idle();
    assert_eq!(server.calls()[0]["end_reason"], "escalation-failed");
    let e = &cli(&server, &["escalations", "list"])[0];
    assert_eq!(e["state"], "failed");
}
