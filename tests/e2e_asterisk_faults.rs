//! Asterisk at its worst, on demand: the real binary as a Stasis application against the ARI +
//! chan_websocket emulator in tests/common/asterisk.rs, for what a real Asterisk cannot do at
//! a chosen instant (drop the events connection, delay a channel's entry into the application,
//! refuse). The services themselves run against the real Asterisk 23.4.1 in
//! tests/e2e_asterisk.rs; the tests here marked "against both" hold the emulator to the real
//! one's behaviour. Every REST request must be an operation of the swagger
//! (tests/specs/asterisk-ari/); keys arrive both as ChannelDtmfReceived and as DTMF_END, as
//! Asterisk sends them; prompts are checked frame by frame as the caller hears them.

mod common;

use std::time::Duration;

use common::asterisk::Asterisk;
use common::*;

const APP: &str = "topup-ivr";

fn start() -> (Asterisk, Server) {
    start_with("")
}

fn start_with(extra: &str) -> (Asterisk, Server) {
    let ast = Asterisk::start("topup", "s3cret");
    let server = Server::start(&format!(
        "[asterisk]\nurl = \"{}\"\napp = \"{APP}\"\nusername = \"topup\"\npassword = \"s3cret\"\n{extra}",
        ast.url()
    ));
    ast.wait_app(APP, Duration::from_secs(10));
    (ast, server)
}

/// Waits until the channel is gone from Asterisk (hung up by the service).
fn wait_gone(ast: &Asterisk, server: &Server, channel: &str, limit: Duration) {
    server.wait_until("the caller's channel is hung up", limit, || {
        !ast.exists(channel)
    });
}

/// Every request the adapter made is a swagger operation, nothing it sent was outside the
/// swagger or the chan_websocket protocol, and Asterisk is still alive.
fn assert_conformant(ast: &Asterisk) {
    let reqs = ast.requests();
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert!(
            r.operation.is_some(),
            "{} {} is not in the ARI swagger",
            r.method,
            r.path
        );
    }
    assert_eq!(ast.violations(), Vec::<String>::new());
    assert!(!ast.crashed());
}

#[test]
fn a_card_top_up_through_asterisk_credits_the_recipient_and_cleans_up() {
    let (ast, server) = start();
    let ch = ast.call(APP, "+12015550161", "recharge");
    std::thread::sleep(Duration::from_millis(600));
    // English, the demo card's PIN, the recipient, confirm, the second amount, confirm.
    ast.press(&ch, "111112222333344#12015550150#121");
    wait_gone(&ast, &server, &ch, Duration::from_secs(40));
    server.wait_idle();

    let account = cli(&server, &["accounts", "show", "+12015550150"]);
    assert_eq!(account["prepaid"]["balance"], "6.20", "{account}");
    let card = cli(&server, &["cards", "show", "100000000001"]);
    assert_eq!(card["state"], "redeemed");
    let calls = server.calls();
    assert_eq!(calls[0]["call_id"], ch.as_str());
    assert_eq!(calls[0]["service"], "recharge");
    assert_eq!(calls[0]["end_reason"], "service-hangup");
    assert_eq!(calls[0]["dtmf_methods"], "softswitch");
    assert_eq!(calls[0]["codec"], "PCMU");

    // The caller heard the prompts exactly as stored.
    let heard = ast.heard(&ch);
    let p = prompts();
    // The greeting until the first key (600 ms in), then cut off by it.
    assert!(heard_start(&heard, &p, "en", "for-english", 20));
    assert!(!heard_prompt(&heard, &p, "en", "for-english"), "barge-in");
    let cmds = ast.media_commands();
    assert!(cmds.iter().any(|c| c == "FLUSH_MEDIA"), "{cmds:?}");
    // Before hanging up, a mark waits for the last words to be played.
    assert_eq!(
        cmds.last().map(String::as_str),
        Some("MARK_MEDIA"),
        "{cmds:?}"
    );
    assert!(heard_prompt(&heard, &p, "en", "thank-you-goodbye"));
    assert_eq!(
        ast.leftovers(),
        (vec![], vec![]),
        "channels or bridges left"
    );
    assert_conformant(&ast);
    assert!(!server.log().contains("11112222333344"), "PIN logged");
}

#[test]
fn a_card_top_up_with_media_over_rtp() {
    let (ast, server) = start_with("media = \"rtp\"\n");
    let ch = ast.call(APP, "+12015550161", "recharge");
    std::thread::sleep(Duration::from_millis(600));
    ast.press(&ch, "111112222333344#12015550150#121");
    wait_gone(&ast, &server, &ch, Duration::from_secs(40));
    server.wait_idle();
    let account = cli(&server, &["accounts", "show", "+12015550150"]);
    assert_eq!(account["prepaid"]["balance"], "6.20", "{account}");
    assert_eq!(server.calls()[0]["end_reason"], "service-hangup");
    let heard = ast.heard(&ch);
    let p = prompts();
    assert!(heard_start(&heard, &p, "en", "for-english", 20));
    assert!(heard_prompt(&heard, &p, "en", "thank-you-goodbye"));
    assert!(ast.requests().iter().any(|r| {
        r.query
            .iter()
            .any(|(k, v)| k == "encapsulation" && v == "rtp")
    }));
    assert_eq!(ast.leftovers(), (vec![], vec![]));
    assert_conformant(&ast);
}

#[test]
fn a_wallet_call_is_originated_bridged_warned_and_cut_when_the_money_runs_out() {
    let (ast, server) = start_with(
        "calling_endpoint = \"PJSIP/{number}@trunk\"\n[calling]\nwarning_before = \"3s\"\n",
    );
    calling_wallet(&server);
    let ch = ast.call(APP, "+12015550166", "wallet");
    std::thread::sleep(Duration::from_millis(600));
    // PIN, 3: minutes to a number (a London landline), the number, 1: connect.
    ast.press(&ch, "4321#3442079460123#1");
    let callee = format!("{ch}-out");
    server.wait_until("the call is cut", Duration::from_secs(30), || {
        server.log().contains("balance used up: cutting the call")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!ast.exists(&callee), "the outbound leg was hung up");
    ast.hangup_caller(&ch);
    server.wait_idle();
    let w = cli(&server, &["accounts", "show", "+12015550166"]);
    assert_eq!(w["wallet"]["balance"], "0.04", "6 s at 0.60/min: {w}");
    let log = server.log();
    assert!(log.find("warning the caller").unwrap() < log.find("balance used up").unwrap());
    // The callee was dialled with the caller's number, answered into the application and
    // joined to the caller's bridge; the warning reached the caller through that bridge.
    let reqs = ast.requests();
    let orig = reqs
        .iter()
        .find(|r| r.operation.as_deref() == Some("originate"))
        .expect("originate");
    let q = |k: &str| {
        orig.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(q("endpoint"), Some("PJSIP/+442079460123@trunk"));
    assert_eq!(q("callerId"), Some("+12015550166"));
    assert!(
        reqs.iter()
            .any(|r| r.operation.as_deref() == Some("addChannel")
                && r.query.iter().any(|(k, v)| k == "channel" && v == &callee))
    );
    assert!(heard_prompt(
        &ast.heard(&ch),
        &prompts(),
        "en",
        "one-minute-left"
    ));
    assert_eq!(ast.leftovers(), (vec![], vec![]));
    assert_conformant(&ast);
    cli_ok(&server, &["ledger", "check"]);
}

#[test]
fn a_busy_callee_costs_nothing() {
    let (ast, server) = start_with("calling_endpoint = \"PJSIP/{number}@trunk\"\n");
    calling_wallet(&server);
    ast.set_callee(
        "+447911123456",
        common::asterisk::Callee {
            busy: true,
            ..Default::default()
        },
    );
    let ch = ast.call(APP, "+12015550166", "wallet");
    std::thread::sleep(Duration::from_millis(600));
    ast.press(&ch, "4321#3447911123456#1");
    server.wait_until(
        "the busy callee is reported",
        Duration::from_secs(20),
        || {
            server.log().contains("placing call")
                && ast
                    .requests()
                    .iter()
                    .any(|r| r.operation.as_deref() == Some("originate"))
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !ast.requests()
            .iter()
            .any(|r| r.operation.as_deref() == Some("addChannel")
                && r.query.iter().any(|(_, v)| v.ends_with("-out"))),
        "a busy callee is never bridged"
    );
    ast.hangup_caller(&ch);
    server.wait_idle();
    let w = cli(&server, &["accounts", "show", "+12015550166"]);
    assert_eq!(w["wallet"]["balance"], "0.10", "{w}");
    assert_eq!(ast.leftovers(), (vec![], vec![]));
    assert_conformant(&ast);
    cli_ok(&server, &["ledger", "check"]);
}

#[test]
fn an_escalation_continues_in_the_dialplan_with_the_escalation_id() {
    let (ast, server) = start();
    // The telco's number 7001 runs Stasis(topup-ivr,wallet).
    let ch = ast.call_with_args(APP, "+12015550100", "7001", &["wallet"]);
    std::thread::sleep(Duration::from_millis(600));
    // 0 at the PIN prompt asks for an agent.
    ast.press(&ch, "0");
    server.wait_until("the call is continued", Duration::from_secs(20), || {
        ast.continued(&ch).is_some()
    });
    server.wait_idle();
    let ((context, exten, prio), vars) = ast.continued(&ch).unwrap();
    assert_eq!(
        (context.as_str(), exten.as_str(), prio.as_str()),
        ("topup-agents", "agents", "1")
    );
    let e = &cli(&server, &["escalations", "list"])[0];
    assert_eq!(e["state"], "transferred");
    assert_eq!(vars["TOPUP_ESCALATION_ID"], e["id"].as_str().unwrap());
    assert_eq!(
        vars["TOPUP_ESCALATION_REASON"],
        e["reason"].as_str().unwrap()
    );
    assert_eq!(server.calls()[0]["end_reason"], "transferred");
    assert!(heard_prompt(
        &ast.heard(&ch),
        &prompts(),
        "en",
        "transferring"
    ));
    // The caller's channel went on in Asterisk; ours (media, bridge) are gone.
    assert_eq!(ast.leftovers(), (vec![], vec![]));
    assert_conformant(&ast);
}

#[test]
fn a_caller_hanging_up_at_any_step_leaves_nothing_behind() {
    let (ast, server) = start();
    // At the greeting, during the PIN, after the PIN (the card is being redeemed), during the
    // number, at the final confirmation.
    let steps = [
        "",
        "1111",
        "111112222333344#",
        "111112222333344#1201",
        "111112222333344#12015550150#12",
    ];
    for (i, keys) in steps.iter().enumerate() {
        let ch = ast.call(APP, &format!("+1201555017{i}"), "recharge");
        std::thread::sleep(Duration::from_millis(400));
        ast.press(&ch, keys);
        ast.hangup_caller(&ch);
    }
    server.wait_until("every call recorded", Duration::from_secs(20), || {
        server.calls().len() == steps.len()
    });
    server.wait_idle();
    for c in server.calls() {
        assert_eq!(c["end_reason"], "caller-hangup", "{c}");
    }
    server.wait_until("nothing left in Asterisk", Duration::from_secs(5), || {
        ast.leftovers() == (vec![], vec![])
    });
    // No top-up was made: the caller never confirmed one.
    let topups = cli(&server, &["topups", "list"]);
    assert_eq!(topups.as_array().unwrap().len(), 0, "{topups}");
    assert_conformant(&ast);
}

#[test]
fn calls_survive_a_lost_events_connection_and_gone_callers_are_cleaned_up() {
    let (ast, server) = start();
    let stays = ast.call(APP, "+12015550161", "recharge");
    let leaves = ast.call(APP, "+12015550162", "recharge");
    std::thread::sleep(Duration::from_millis(600));
    ast.press(&stays, "1");
    assert_eq!(server.health()["asterisk"]["connected"], true);
    // Asterisk restarts its HTTP side: the events connection drops and is refused a while.
    ast.drop_events(true);
    // Keys still arrive over the media connection (DTMF_END) meanwhile.
    ast.press(&stays, "11112222333344#");
    // This caller hangs up while the application cannot hear about it.
    ast.hangup_caller(&leaves);
    server.wait_until("/health shows ARI down", Duration::from_secs(5), || {
        server.health()["asterisk"]["connected"] == false
    });
    ast.allow_events();
    ast.wait_app(APP, Duration::from_secs(10));
    ast.press(&stays, "12015550150#121");
    wait_gone(&ast, &server, &stays, Duration::from_secs(40));
    server.wait_idle();
    let calls = server.calls();
    let by_id = |id: &str| calls.iter().find(|c| c["call_id"] == id).unwrap().clone();
    assert_eq!(by_id(&stays)["end_reason"], "service-hangup");
    assert_eq!(by_id(&leaves)["end_reason"], "lost");
    let account = cli(&server, &["accounts", "show", "+12015550150"]);
    assert_eq!(account["prepaid"]["balance"], "6.20", "{account}");
    assert_eq!(ast.leftovers(), (vec![], vec![]));
    assert!(server.log().contains("ARI connected"));
    assert_conformant(&ast);
}

/// One HTTP/1.1 request over a fresh connection; returns the status code.
fn status(ast: &Asterisk, method: &str, path: &str, auth: &str, extra: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(ast.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let basic = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(auth)
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {basic}\r\n{extra}Content-Length: 0\r\n{}\r\n",
        ast.addr,
        if extra.contains("Connection:") { "" } else { "Connection: close\r\n" }
    )
    .unwrap();
    let mut buf = vec![0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_emulator_refuses_what_asterisk_refuses() {
    // The emulator itself, against the swagger: the adapter's tests lean on it.
    let ast = Asterisk::start("u", "p");
    let send = |m: &str, p: &str| status(&ast, m, &format!("/ari{p}"), "u:p", "");
    assert_eq!(send("POST", "/channels/x/dance"), 404);
    assert_eq!(send("PUT", "/channels/x/answer"), 405);
    assert_eq!(send("POST", "/channels/nope/answer"), 404);
    // Required parameter missing; a value outside allowableValues.
    assert_eq!(send("POST", "/channels/externalMedia?app=a"), 400);
    assert_eq!(
        send(
            "POST",
            "/channels/externalMedia?app=a&format=ulaw&transport=pigeon"
        ),
        400
    );
    assert_eq!(
        status(&ast, "POST", "/ari/channels/x/answer", "u:wrong", ""),
        401
    );
    // A chan_websocket connection id nobody created.
    let upgrade = "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    assert_eq!(
        status(
            &ast,
            "GET",
            "/media/unknown",
            "u:p",
            &format!("Connection: Upgrade\r\n{upgrade}")
        ),
        404
    );
    assert!(!ast.crashed());
    // An invalid f(...) kills Asterisk 23.4.1, and the emulator.
    send(
        "POST",
        "/channels/externalMedia?app=a&format=ulaw&transport=websocket&encapsulation=none&connection_type=server&transport_data=f(bogus)",
    );
    assert!(ast.crashed());
}

#[test]
fn a_wallet_top_up_through_asterisk_pays_from_the_wallet() {
    let (ast, server) = start();
    let ch = ast.call(APP, "+12015550100", "wallet");
    std::thread::sleep(Duration::from_millis(600));
    // PIN, 1: top up a number, the number, the first amount, confirm.
    ast.press(&ch, "1234#1525512345678#111");
    server.wait_until("the top-up is done", Duration::from_secs(30), || {
        cli(&server, &["topups", "list"])[0]["state"] == "succeeded"
    });
    ast.hangup_caller(&ch);
    server.wait_idle();
    let t = &cli(&server, &["topups", "list"])[0];
    assert_eq!(
        (t["payer"].as_str(), t["recipient"].as_str()),
        (Some("+12015550100"), Some("+525512345678"))
    );
    let w = cli(&server, &["accounts", "show", "+12015550100"]);
    assert_eq!(w["wallet"]["balance"], "19.01", "25.00 - 5.99: {w}");
    assert_eq!(ast.leftovers(), (vec![], vec![]));
    assert_conformant(&ast);
}

#[test]
fn a_media_connection_id_takes_one_connection_only() {
    use std::io::{Read, Write};
    let ast = Asterisk::start("u", "p");
    // externalMedia as the adapter creates it, then two connections to its id.
    let body = {
        let mut s = std::net::TcpStream::connect(ast.addr).unwrap();
        write!(
            s,
            "POST /ari/channels/externalMedia?app=a&format=ulaw&transport=websocket&encapsulation=none&connection_type=server&transport_data=f(json) HTTP/1.1\r\nHost: x\r\nAuthorization: Basic dTpw\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let json = &body[body.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let conn = v["channelvars"]["MEDIA_WEBSOCKET_CONNECTION_ID"]
        .as_str()
        .unwrap()
        .to_string();
    let upgrade = |s: &mut std::net::TcpStream| {
        write!(
            s,
            "GET /media/{conn} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: media\r\n\r\n"
        )
        .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let mut first = std::net::TcpStream::connect(ast.addr).unwrap();
    let head = upgrade(&mut first);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: media"),
        "{head}"
    );
    let mut second = std::net::TcpStream::connect(ast.addr).unwrap();
    assert!(upgrade(&mut second).starts_with("HTTP/1.1 409"));
    drop(first);
}
