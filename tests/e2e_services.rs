//! The voice services end to end: the real binary with the demo data, dialled by sipp, keys
//! pressed as RFC 4733 events (typed ahead: a key never waits for a prompt to finish).

mod common;

use common::*;
use std::process::Command;

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
        "111112222333344#12015550150#111",
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
    // What Prometheus sees of that call.
    assert_eq!(
        metric(&server, "topup_ivr_calls_total", &[("edge", "sip")]),
        Some(1.0)
    );
    assert_eq!(metric(&server, "topup_ivr_calls_active", &[]), Some(0.0));
    let keys = metric(
        &server,
        "topup_ivr_dtmf_digits_total",
        &[("method", "rfc4733")],
    );
    assert!(keys.is_some_and(|k| k >= 31.0), "{keys:?}");
    assert_eq!(
        metric(
            &server,
            "topup_ivr_topups_total",
            &[("result", "succeeded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &server,
            "topup_ivr_topup_seconds_count",
            &[("channel", "voice")]
        ),
        Some(1.0)
    );
    assert_eq!(metric(&server, "topup_ivr_topups_pending", &[]), Some(0.0));
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
        "1234#1525512345678#121",
    )
    .arg("-d")
    .arg("12000")
    .run(&server);
    // PIN, 1: top up +52... again, first amount, confirm — no number typed.
    keys("keys_then_bye.xml", "wallet", "+12015550100", "1234#121")
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

#[test]
fn dialplans_hot_reload_and_a_broken_file_keeps_the_running_version() {
    require("sipp");
    let plans = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("dialplans"), plans.path());
    let server = Server::start(&format!(
        "[paths]\ndialplans = \"{}\"\nreload_every = \"300ms\"\n",
        plans.path().display()
    ));
    let echo = std::fs::read_to_string(plans.path().join("echo.toml")).unwrap();
    std::fs::write(
        plans.path().join("echo2.toml"),
        echo.replace("service = \"echo\"", "service = \"echo2\"")
            .replace("numbers = [\"echo\"]", "numbers = [\"echo2\"]"),
    )
    .unwrap();
    server.wait_until(
        "reload with echo2",
        std::time::Duration::from_secs(15),
        || {
            server.health()["services"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == "echo2")
        },
    );
    keys("keys.xml", "echo2", "+12015550100", "**").run(&server);
    server.wait_idle();
    assert_eq!(server.calls()[0]["service"], "echo2");

    std::fs::write(plans.path().join("broken.toml"), "service = \"x\"\nnumbers = [\"x\"]\nlanguage = \"en\"\nstart = \"nowhere\"\n[nodes.a]\nkind = \"hangup\"\n").unwrap();
    server.wait_until(
        "the broken file reported",
        std::time::Duration::from_secs(15),
        || server.log().contains("reload refused"),
    );
    assert!(
        server.log().contains("broken.toml"),
        "the error names the file"
    );
    assert!(
        server.health()["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "echo2"),
        "the running plans stay"
    );
    keys("keys.xml", "echo2", "+12015550100", "**").run(&server);

    // SIGHUP reloads at once too.
    std::fs::remove_file(plans.path().join("broken.toml")).unwrap();
    std::fs::remove_file(plans.path().join("echo2.toml")).unwrap();
    Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    server.wait_until("echo2 removed", std::time::Duration::from_secs(15), || {
        !server.health()["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "echo2")
    });
}

#[test]
fn every_shipped_plan_passes_the_check() {
    let out = Command::new(BIN)
        .args(["dialplan", "check"])
        .current_dir(repo())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for plan in ["echo", "recharge", "wallet"] {
        assert!(text.contains(&format!("({plan})")), "{text}");
    }
    let svg = Command::new(BIN)
        .args(["dialplan", "graph", "dialplans/wallet.toml"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(svg.status.success() && String::from_utf8_lossy(&svg.stdout).starts_with("<svg"));
    let dot = Command::new(BIN)
        .args([
            "dialplan",
            "graph",
            "dialplans/echo.toml",
            "--format",
            "dot",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&dot.stdout).starts_with("digraph \"echo\""));
}

#[test]
fn a_wallet_call_through_the_gateway_is_warned_cut_at_zero_and_billed_by_the_increment() {
    require("sipp");
    // The gateway: a sipp UAS that answers and waits for the service's BYE.
    let mut gateway = SippGateway::start("uas_gateway.xml", "60s");
    let gateway_port = gateway.port;
    let server = Server::start(&format!(
        "[calling]\ngateway = \"127.0.0.1:{gateway_port}\"\nwarning_before = \"3s\"\n"
    ));
    calling_wallet(&server);

    std::thread::sleep(std::time::Duration::from_millis(500));
    // PIN, 3: minutes to a number (a London landline), the number, 1: connect. The caller
    // stays on for 25 s.
    let caller = keys(
        "keys_then_bye.xml",
        "wallet",
        "+12015550166",
        "4321#3442079460123#1",
    )
    .arg("-d")
    .arg("25000");
    let cap_dir = tempfile::tempdir().unwrap();
    let capture = Capture::start(
        cap_dir.path(),
        &format!("udp and dst port {}", caller.media_port),
    );
    caller.run(&server);
    let heard = capture.stop();
    assert!(
        gateway.succeeded(),
        "gateway:\n{}\n{}",
        gateway.messages(),
        server.log()
    );
    server.wait_idle();
    let w = cli(&server, &["accounts", "show", "+12015550166"]);
    assert_eq!(
        w["wallet"]["balance"], "0.04",
        "6 s at 0.60/min = 0.06 charged: {w}"
    );
    let log = server.log();
    let warned = log
        .find("warning the caller")
        .expect("the caller is warned");
    let cut = log
        .find("balance used up: cutting the call")
        .expect("the call is cut");
    assert!(warned < cut, "warned before the cut");
    // The callee's audio reached the caller: packets with the gateway stream's SSRC.
    let callee_ssrc = read_pcap_udp(&std::fs::read("/usr/share/sip-tester/g711a.pcap").unwrap())
        .iter()
        .find_map(|(_, p)| rtp_rs::RtpReader::new(p).ok().map(|r| r.ssrc()))
        .unwrap();
    let relayed = heard
        .iter()
        .filter(|(_, p)| rtp_rs::RtpReader::new(p).is_ok_and(|r| r.ssrc() == callee_ssrc))
        .count();
    assert!(
        relayed > 50,
        "only {relayed} relayed packets reached the caller"
    );
    let check = Command::new(BIN)
        .args(["ledger", "check", "--config"])
        .arg(&server.config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn the_toll_fraud_guard_refuses_blocked_destinations_and_the_days_limit() {
    require("sipp");
    // A gateway is configured (nothing answers there: no call may get that far).
    let server = Server::start(&format!(
        "[calling]\ngateway = \"127.0.0.1:{}\"\nblocked_prefixes = [\"4479\"]\nmax_cost_per_day = [\"0.05USD\"]\n",
        free_udp_port()
    ));
    calling_wallet(&server); // 0.10 USD; +44 at 0.60/min in 6 s increments (0.06 each)
    // PIN, 3: minutes to a number: a blocked mobile range.
    keys(
        "keys_then_bye.xml",
        "wallet",
        "+12015550166",
        "4321#3447911123456#",
    )
    .arg("-d")
    .arg("12000")
    .run(&server);
    // Then another UK mobile: minutes are announced, 1 connects, the day's limit refuses.
    keys(
        "keys_then_bye.xml",
        "wallet",
        "+12015550166",
        "4321#3447400123456#1",
    )
    .arg("-d")
    .arg("18000")
    .run(&server);
    server.wait_idle();
    let log = server.log();
    let result = |op: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains(&format!("operation done op={op} ")))
            .filter_map(|l| l.rsplit_once("result=").map(|(_, r)| r.to_string()))
            .collect()
    };
    assert_eq!(
        result("minutes_left"),
        ["blocked_destination", "under_a_minute"],
        "{log}"
    );
    assert_eq!(result("call"), ["call_limit"], "{log}");
    assert!(!log.contains("placing call"), "no call left the service");
    let w = cli(&server, &["accounts", "show", "+12015550166"]);
    assert_eq!(w["wallet"]["balance"], "0.10", "nothing charged: {w}");
}
