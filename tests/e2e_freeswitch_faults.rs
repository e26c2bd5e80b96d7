//! FreeSWITCH at its worst, on demand: the real binary as an event socket client (inbound mode)
//! and mod_audio_fork's websocket server, against the FreeSWITCH emulator in
//! tests/common/freeswitch.rs (written from tests/specs/freeswitch/README.md and what the real
//! 1.10.12 does), for what a real FreeSWITCH cannot do at a chosen instant (drop the event
//! socket, refuse the password, never play the audio). The services themselves run against the
//! real FreeSWITCH in tests/e2e_freeswitch.rs; the test marked "against both" holds the emulator
//! to the real one's answers. Keys arrive as DTMF events; prompts stream back as L16 and are
//! checked sample for sample as the caller hears them.

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

/// Whether `heard` holds the first `n` frames of a prompt, sample for sample: 8 kHz prompts
/// are streamed as the caller's G.711 frames (PCMU here), decoded.
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
    fs.press(&uuid, "111112222333344#12015550150#111");
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
        "111112222333344#12015550150#11",
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
    fs.press(&stays, "11112222333344#12015550150#111");
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
    fs.press(&uuid, "1234#1525512345678#121");
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

#[test]
fn a_call_parked_without_send_silence_when_idle_is_parked_again_before_its_audio_starts() {
    let fs = FreeSwitch::start("ClueCon-test");
    let server = start(&fs, "ClueCon-test");
    fs.wait_connected(Duration::from_secs(10));
    // Parked as the shipped dialplan did before it set the variable.
    let uuid = fs.call_with("+12015550161", "echo", &[]);
    std::thread::sleep(Duration::from_millis(1500));
    fs.press(&uuid, "5**");
    wait_hung_up(&fs, &server, &uuid);
    server.wait_idle();
    assert_eq!(server.calls()[0]["end_reason"], "service-hangup");
    // Heard from its first frame: the repair came before the fork.
    let heard = fs.heard(&uuid);
    assert!(heard_start(&heard, &prompts(), "echo-welcome", 20));
    assert!(heard_prompt(&heard, &prompts(), "digit-5"));
    let cmds = fs.commands();
    let pos = |needle: &str| cmds.iter().position(|c| c.contains(needle));
    let repair = pos(&format!(
        "uuid_transfer {uuid} set:send_silence_when_idle=-1,park inline"
    ))
    .expect("the call was parked again");
    assert!(repair < pos("uuid_audio_fork").unwrap(), "{cmds:#?}");
    assert!(
        server
            .log()
            .contains("parked a call without send_silence_when_idle")
    );
    assert_clean(&fs);
}

#[test]
fn a_call_whose_audio_is_never_played_ends_as_no_audio() {
    let fs = FreeSwitch::start("ClueCon-test");
    let server = start(&fs, "ClueCon-test");
    fs.wait_connected(Duration::from_secs(10));
    // A FreeSWITCH that cannot park the call again: nothing it streams is ever played.
    fs.ignore_inline(true);
    let uuid = fs.call_with("+12015550161", "recharge", &[]);
    wait_hung_up(&fs, &server, &uuid);
    server.wait_idle();
    assert!(fs.heard(&uuid).is_empty());
    // It does not look healthy: its own end reason, an error naming the fix, a counter.
    assert_eq!(server.calls()[0]["end_reason"], "no-audio");
    assert_eq!(
        fs.hangup_cause(&uuid).as_deref(),
        Some("NORMAL_TEMPORARY_FAILURE")
    );
    assert!(server.log().contains("played none of the call's audio"));
    assert_eq!(
        metric(&server, "topup_ivr_freeswitch_silent_calls_total", &[]),
        Some(1.0)
    );
    assert_clean(&fs);
}

/// One event socket exchange: sends `cmd`, returns the reply's text (api/response body or
/// Reply-Text), skipping events.
fn esl_exchange(sock: &mut std::net::TcpStream, cmd: &str) -> String {
    use std::io::Write;
    sock.write_all(format!("{cmd}\n\n").as_bytes()).unwrap();
    loop {
        let (headers, body) = esl_read(sock);
        match headers.get("Content-Type").map(String::as_str) {
            Some("api/response") => return body.trim().to_string(),
            Some("command/reply") => return headers["Reply-Text"].clone(),
            _ => {}
        }
    }
}

/// Reads one ESL frame: its headers and body.
fn esl_read(sock: &mut std::net::TcpStream) -> (std::collections::HashMap<String, String>, String) {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\n\n") {
        if sock.read(&mut byte).unwrap_or(0) == 0 {
            return (Default::default(), String::new());
        }
        head.push(byte[0]);
    }
    let headers: std::collections::HashMap<String, String> = String::from_utf8_lossy(&head)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let len: usize = headers
        .get("Content-Length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    sock.read_exact(&mut body).unwrap();
    (headers, String::from_utf8_lossy(&body).into_owned())
}

/// What an event socket client sees, step by step, of a FreeSWITCH with one call parked
/// without `send_silence_when_idle` (uuid `parked`): the same script against the real
/// FreeSWITCH 1.10.12 and the emulator must see the same.
fn esl_probe(
    esl: std::net::SocketAddr,
    password: &str,
    parked: &str,
) -> Vec<(&'static str, String)> {
    let mut seen = vec![];
    let connect = || {
        let s = std::net::TcpStream::connect(esl).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    };
    let mut bad = connect();
    esl_read(&mut bad);
    seen.push(("a wrong password", esl_exchange(&mut bad, "auth wrong")));
    let mut sock = connect();
    let (hello, _) = esl_read(&mut sock);
    seen.push(("greeting", hello["Content-Type"].clone()));
    seen.push(("auth", esl_exchange(&mut sock, &format!("auth {password}"))));
    let none = "00000000-0000-4000-8000-000000000000";
    seen.push((
        "uuid_exists of no channel",
        esl_exchange(&mut sock, &format!("api uuid_exists {none}")),
    ));
    seen.push((
        "uuid_kill of no channel",
        esl_exchange(&mut sock, &format!("api uuid_kill {none}")),
    ));
    seen.push((
        "uuid_audio_fork of no channel",
        esl_exchange(
            &mut sock,
            &format!("api uuid_audio_fork {none} start ws://127.0.0.1:9/x mono 8k"),
        ),
    ));
    seen.push(("an unknown api", esl_exchange(&mut sock, "api dance")));
    seen.push((
        "the parked call exists",
        esl_exchange(&mut sock, &format!("api uuid_exists {parked}")),
    ));
    seen.push((
        "its send_silence_when_idle",
        esl_exchange(
            &mut sock,
            &format!("api uuid_getvar {parked} send_silence_when_idle"),
        ),
    ));
    seen.push((
        "subscribe",
        esl_exchange(&mut sock, "event json CHANNEL_PARK"),
    ));
    seen.push((
        "park it again with the variable",
        esl_exchange(
            &mut sock,
            &format!("api uuid_transfer {parked} set:send_silence_when_idle=-1,park inline"),
        ),
    ));
    let parked_again = loop {
        let (h, body) = esl_read(&mut sock);
        if h.is_empty() {
            break "no event".to_string();
        }
        if h.get("Content-Type").map(String::as_str) == Some("text/event-json") {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if v["Event-Name"] == "CHANNEL_PARK" && v["Unique-ID"] == parked {
                break format!("CHANNEL_PARK {}", v["variable_send_silence_when_idle"]);
            }
        }
    };
    seen.push(("it parks again", parked_again));
    seen.push((
        "and hangs up",
        esl_exchange(
            &mut sock,
            &format!("api uuid_kill {parked} NORMAL_CLEARING"),
        ),
    ));
    seen
}

/// What `esl_probe` must see from FreeSWITCH 1.10.12 (measured).
const FREESWITCH_1_10_12: &[(&str, &str)] = &[
    ("a wrong password", "-ERR invalid"),
    ("greeting", "auth/request"),
    ("auth", "+OK accepted"),
    ("uuid_exists of no channel", "false"),
    ("uuid_kill of no channel", "-ERR No such channel!"),
    ("uuid_audio_fork of no channel", "-ERR Operation Failed"),
    ("an unknown api", "-ERR dance Command not found!"),
    ("the parked call exists", "true"),
    ("its send_silence_when_idle", "_undef_"),
    ("subscribe", "+OK event listener enabled json"),
    ("park it again with the variable", "+OK"),
    ("it parks again", "CHANNEL_PARK \"-1\""),
    ("and hangs up", "+OK"),
];

#[test]
fn against_both_the_real_freeswitch_and_the_emulator_answer_alike() {
    use common::freeswitch_real::{ECHO_BARE_PARK, ESL_PASSWORD, Options, RealFreeSwitch};
    let expected: Vec<(&str, String)> = FREESWITCH_1_10_12
        .iter()
        .map(|(k, v)| (*k, v.to_string()))
        .collect();

    let real = RealFreeSwitch::start(Options::default());
    // A caller parked the old way; its channel's uuid from `show channels`.
    let logs = tempfile::tempdir().unwrap();
    let mut caller = keys(
        "asterisk_keys_then_bye.xml",
        ECHO_BARE_PARK,
        "+12015550161",
        "",
    )
    .arg("-key")
    .arg("pt")
    .arg("0")
    .arg("-key")
    .arg("codec")
    .arg("PCMU")
    .arg("-d")
    .arg("8000")
    .command_to(real.sip, logs.path())
    .spawn()
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let uuid = loop {
        let list = real.api("show channels as json");
        let v: serde_json::Value = serde_json::from_str(&list).unwrap_or_default();
        if let Some(u) = v["rows"][0]["uuid"].as_str() {
            break u.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no call parked: {list}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(esl_probe(real.esl, ESL_PASSWORD, &uuid), expected);
    let _ = caller.wait();

    let emulator = FreeSwitch::start("ClueCon-test");
    let parked = emulator.call_with("+12015550161", "echo", &[]);
    assert_eq!(esl_probe(emulator.esl, "ClueCon-test", &parked), expected);
}
