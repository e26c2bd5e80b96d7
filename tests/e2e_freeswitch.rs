//! The voice services behind FreeSWITCH: the real binary as an event socket client (inbound
//! mode) and mod_audio_fork's websocket server, against the FreeSWITCH emulator in
//! tests/common/freeswitch.rs (written from tests/specs/freeswitch/README.md). Keys arrive as
//! DTMF events; prompts stream back as L16 and are checked sample for sample as the caller
//! hears them.

mod common;

use std::time::Duration;

use common::freeswitch::FreeSwitch;
use common::*;
use topup_ivr::media::g711::Codec;
use topup_ivr::media::prompts::PromptStore;

fn start(fs: &FreeSwitch, password: &str) -> Server {
    start_with(fs, password, "")
}

fn start_with(fs: &FreeSwitch, password: &str, extra: &str) -> Server {
    let media = free_tcp_port();
    Server::start(&format!(
        "[freeswitch]\nesl = \"{}\"\npassword = \"{password}\"\nmedia_listen = \"127.0.0.1:{media}\"\n{extra}",
        fs.esl
    ))
}

/// Whether `heard` holds the first `n` frames of a prompt, as G.711 µ-law carries it.
fn heard_start(heard: &[i16], prompts: &PromptStore, name: &str, n: usize) -> bool {
    let p = prompts.get("en", name).unwrap();
    let mut want = vec![];
    for i in 0..p.frames().min(n) {
        let mut pcm = vec![0i16; 160];
        Codec::Pcmu.decode(p.frame(Codec::Pcmu, i), &mut pcm);
        want.extend(pcm);
    }
    heard
        .chunks_exact(160)
        .collect::<Vec<_>>()
        .windows(want.len() / 160)
        .any(|w| {
            w.iter()
                .flat_map(|f| f.iter())
                .zip(&want)
                .all(|(a, b)| a == b)
        })
}

fn heard_prompt(heard: &[i16], prompts: &PromptStore, name: &str) -> bool {
    heard_start(heard, prompts, name, usize::MAX)
}

fn wait_hung_up(fs: &FreeSwitch, server: &Server, uuid: &str) {
    server.wait_until("the channel is hung up", Duration::from_secs(40), || {
        fs.hangup_cause(uuid).is_some()
    });
}

fn assert_clean(fs: &FreeSwitch) {
    assert_eq!(fs.violations(), Vec::<String>::new());
    for c in fs.commands() {
        assert!(!c.contains("11112222333344"), "PIN sent to FreeSWITCH: {c}");
    }
}

#[test]
fn a_card_top_up_through_freeswitch_credits_the_recipient() {
    let fs = FreeSwitch::start("ClueCon-test");
    let server = start(&fs, "ClueCon-test");
    fs.wait_connected(Duration::from_secs(10));
    let uuid = fs.call("+12015550161", "recharge");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        fs.metadata(&uuid).as_deref(),
        Some(format!("{{\"uuid\":\"{uuid}\"}}").as_str())
    );
    fs.press(&uuid, "111112222333344#12015550150#121");
    wait_hung_up(&fs, &server, &uuid);
    server.wait_idle();
    assert_eq!(fs.hangup_cause(&uuid).as_deref(), Some("NORMAL_CLEARING"));
    let account = cli(&server, &["accounts", "show", "+12015550150"]);
    assert_eq!(account["prepaid"]["balance"], "6.20", "{account}");
    let calls = server.calls();
    assert_eq!(calls[0]["call_id"], uuid.as_str());
    assert_eq!(calls[0]["end_reason"], "service-hangup");
    assert_eq!(calls[0]["dtmf_methods"], "rfc4733");
    let heard = fs.heard(&uuid);
    let p = prompts();
    assert!(heard_start(&heard, &p, "for-english", 20));
    assert!(
        !heard_prompt(&heard, &p, "for-english"),
        "barge-in (killAudio)"
    );
    let types = fs.fork_types();
    assert!(types.iter().any(|t| t == "killAudio"), "{types:?}");
    // Before hanging up, a mark waits for the last words to be played.
    assert_eq!(types.last().map(String::as_str), Some("mark"), "{types:?}");
    assert!(heard_prompt(&heard, &p, "thank-you-goodbye"));
    assert!(
        fs.commands()
            .iter()
            .any(|c| c.starts_with("api uuid_audio_fork ^^|"))
    );
    assert_clean(&fs);
    assert!(!server.log().contains("11112222333344"), "PIN logged");
}

#[test]
fn an_escalation_is_a_uuid_transfer_with_the_escalation_id() {
    let fs = FreeSwitch::start("pw");
    let server = start(&fs, "pw");
    fs.wait_connected(Duration::from_secs(10));
    // The telco's number 7001, named as the wallet service by the dialplan.
    let uuid = fs.call_with("+12015550100", "7001", &[("topup_dialled", "wallet")]);
    std::thread::sleep(Duration::from_millis(700));
    fs.press(&uuid, "0");
    server.wait_until("transferred", Duration::from_secs(20), || {
        fs.transferred(&uuid).is_some()
    });
    server.wait_idle();
    let ((ext, dialplan, context), vars) = fs.transferred(&uuid).unwrap();
    assert_eq!(
        (ext.as_str(), dialplan.as_str(), context.as_str()),
        ("agents", "XML", "default")
    );
    let e = &cli(&server, &["escalations", "list"])[0];
    assert_eq!(e["state"], "transferred");
    assert_eq!(vars["topup_escalation_id"], e["id"].as_str().unwrap());
    assert_eq!(
        vars["topup_escalation_reason"],
        e["reason"].as_str().unwrap()
    );
    assert!(
        !fs.forked(&uuid),
        "the media fork is stopped before the transfer"
    );
    assert_eq!(fs.hangup_cause(&uuid), None, "transferred, not hung up");
    assert_eq!(server.calls()[0]["end_reason"], "transferred");
    assert!(heard_prompt(&fs.heard(&uuid), &prompts(), "transferring"));
    assert_clean(&fs);
}

#[test]
fn a_caller_hanging_up_at_any_step_is_recorded_and_nothing_is_topped_up() {
    let fs = FreeSwitch::start("pw");
    let server = start(&fs, "pw");
    fs.wait_connected(Duration::from_secs(10));
    let steps = [
        "",
        "1111",
        "111112222333344#",
        "111112222333344#1201",
        "111112222333344#12015550150#12",
    ];
    for (i, keys) in steps.iter().enumerate() {
        let uuid = fs.call(&format!("+1201555018{i}"), "recharge");
        std::thread::sleep(Duration::from_millis(400));
        fs.press(&uuid, keys);
        fs.hangup(&uuid);
    }
    server.wait_until("every call recorded", Duration::from_secs(20), || {
        server.calls().len() == steps.len()
    });
    server.wait_idle();
    for c in server.calls() {
        assert_eq!(c["end_reason"], "caller-hangup", "{c}");
    }
    let topups = cli(&server, &["topups", "list"]);
    assert_eq!(topups.as_array().unwrap().len(), 0, "{topups}");
    assert_clean(&fs);
}

#[test]
fn the_event_socket_reconnects_and_calls_gone_meanwhile_are_ended() {
    let fs = FreeSwitch::start("pw");
    let server = start(&fs, "pw");
    fs.wait_connected(Duration::from_secs(10));
    let stays = fs.call("+12015550161", "recharge");
    let leaves = fs.call("+12015550162", "recharge");
    std::thread::sleep(Duration::from_millis(700));
    fs.press(&stays, "1");
    assert_eq!(server.health()["freeswitch"]["connected"], true);
    fs.drop_esl(true);
    // This caller hangs up while nobody listens to the event socket.
    fs.hangup(&leaves);
    server.wait_until("/health shows ESL down", Duration::from_secs(5), || {
        server.health()["freeswitch"]["connected"] == false
    });
    fs.allow_esl();
    fs.wait_connected(Duration::from_secs(10));
    fs.press(&stays, "11112222333344#12015550150#121");
    wait_hung_up(&fs, &server, &stays);
    server.wait_idle();
    let calls = server.calls();
    let by_id = |id: &str| calls.iter().find(|c| c["call_id"] == id).unwrap().clone();
    assert_eq!(by_id(&stays)["end_reason"], "service-hangup");
    assert_eq!(by_id(&leaves)["end_reason"], "lost");
    let account = cli(&server, &["accounts", "show", "+12015550150"]);
    assert_eq!(account["prepaid"]["balance"], "6.20", "{account}");
    assert_clean(&fs);
}

#[test]
fn a_wrong_event_socket_password_is_reported_and_retried() {
    let fs = FreeSwitch::start("right");
    let server = start(&fs, "Wr0ngPassw0rd");
    server.wait_until("the refusal is logged", Duration::from_secs(10), || {
        server
            .log()
            .contains("authentication refused: -ERR invalid")
    });
    assert!(fs.auth_failures() >= 1);
    assert!(!fs.connected());
    assert!(
        !server.log().contains("Wr0ngPassw0rd"),
        "the password is not logged"
    );
}

#[test]
fn a_wallet_call_is_originated_bridged_warned_and_cut_when_the_money_runs_out() {
    let fs = FreeSwitch::start("pw");
    let server = start_with(
        &fs,
        "pw",
        "calling_gateway = \"sofia/gateway/trunk/{number}\"\n[calling]\nwarning_before = \"3s\"\n",
    );
    calling_wallet(&server);
    fs.wait_connected(Duration::from_secs(10));
    let uuid = fs.call("+12015550166", "wallet");
    std::thread::sleep(Duration::from_millis(700));
    // PIN, 3: minutes to a number, the number, 1: connect.
    fs.press(&uuid, "4321#3447911123456#1");
    let callee = format!("{uuid}-out");
    server.wait_until("the call is cut", Duration::from_secs(30), || {
        server.log().contains("balance used up: cutting the call")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!fs.exists(&callee), "the outbound leg was hung up");
    assert!(
        fs.exists(&uuid),
        "the caller went back to the park, still with us"
    );
    fs.hangup(&uuid);
    server.wait_idle();
    let w = cli(&server, &["accounts", "show", "+12015550166"]);
    assert_eq!(w["wallet"]["balance"], "0.04", "6 s at 0.60/min: {w}");
    let log = server.log();
    assert!(log.find("warning the caller").unwrap() < log.find("balance used up").unwrap());
    let cmds = fs.commands();
    assert!(
        cmds.iter().any(|c| c.starts_with(&format!(
            "bgapi originate {{origination_uuid={callee},origination_caller_id_number=+12015550166,"
        )) && c.ends_with("}sofia/gateway/trunk/+447911123456 &park()")),
        "{cmds:?}"
    );
    assert!(
        cmds.iter()
            .any(|c| c == &format!("api uuid_bridge {uuid} {callee}"))
    );
    assert!(heard_prompt(
        &fs.heard(&uuid),
        &prompts(),
        "one-minute-left"
    ));
    assert_clean(&fs);
    cli_ok(&server, &["ledger", "check"]);
}

#[test]
fn a_busy_callee_costs_nothing() {
    let fs = FreeSwitch::start("pw");
    let server = start_with(
        &fs,
        "pw",
        "calling_gateway = \"sofia/gateway/trunk/{number}\"\n",
    );
    calling_wallet(&server);
    fs.set_callee(
        "+447911123456",
        common::freeswitch::Callee {
            busy: true,
            ..Default::default()
        },
    );
    fs.wait_connected(Duration::from_secs(10));
    let uuid = fs.call("+12015550166", "wallet");
    std::thread::sleep(Duration::from_millis(700));
    fs.press(&uuid, "4321#3447911123456#1");
    server.wait_until("the call is tried", Duration::from_secs(20), || {
        fs.commands()
            .iter()
            .any(|c| c.starts_with("bgapi originate"))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !fs.commands()
            .iter()
            .any(|c| c.starts_with("api uuid_bridge"))
    );
    fs.hangup(&uuid);
    server.wait_idle();
    let w = cli(&server, &["accounts", "show", "+12015550166"]);
    assert_eq!(w["wallet"]["balance"], "0.10", "{w}");
    assert_clean(&fs);
    cli_ok(&server, &["ledger", "check"]);
}

#[test]
fn a_wallet_top_up_through_freeswitch_pays_from_the_wallet() {
    let fs = FreeSwitch::start("pw");
    let server = start(&fs, "pw");
    fs.wait_connected(Duration::from_secs(10));
    let uuid = fs.call("+12015550100", "wallet");
    std::thread::sleep(Duration::from_millis(700));
    // PIN, 1: top up a number, the number, the first amount, confirm.
    fs.press(&uuid, "1234#1525512345678#111");
    server.wait_until("the top-up is done", Duration::from_secs(30), || {
        cli(&server, &["topups", "list"])[0]["state"] == "succeeded"
    });
    fs.hangup(&uuid);
    server.wait_idle();
    let t = &cli(&server, &["topups", "list"])[0];
    assert_eq!(
        (t["payer"].as_str(), t["recipient"].as_str()),
        (Some("+12015550100"), Some("+525512345678"))
    );
    let w = cli(&server, &["accounts", "show", "+12015550100"]);
    assert_eq!(w["wallet"]["balance"], "19.01", "25.00 - 5.99: {w}");
    assert_clean(&fs);
}
