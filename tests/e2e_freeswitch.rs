//! The voice services behind a real FreeSWITCH 1.10.12 with mod_audio_fork
//! (tests/common/freeswitch_real.rs): the shipped docker/freeswitch files, callers from sipp
//! with RFC 4733 keys, the media over mod_audio_fork at 8 and 16 kHz. What a caller heard is the
//! RTP FreeSWITCH sent to sipp, compared with the prompt files. After every call no channel may
//! be left in FreeSWITCH.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::freeswitch_real::{
    ECHO, ECHO_BARE_PARK, ESL_PASSWORD, Options, RECHARGE, RealFreeSwitch, WALLET,
};
use common::*;
use topup_ivr::media::g711::Codec;

/// The service behind `fs`, its event socket connected.
fn serve(fs: &RealFreeSwitch, extra: &str) -> Server {
    let server = Server::start_with_env(
        &fs.service_config(extra),
        &[("TOPUP_IVR_ESL_PASSWORD", ESL_PASSWORD)],
    );
    server.wait_until("the event socket is up", Duration::from_secs(10), || {
        server.health()["freeswitch"]["connected"] == true
    });
    server
}

/// Whether the caller heard the whole prompt. FreeSWITCH encodes our linear audio to the
/// caller's codec itself and plays it from a buffer into the frames it writes, so neither the
/// bytes nor the frame boundaries are ours: the decoded audio is compared, at any offset
/// (measured: normalized correlation 0.9999 on a quiet machine; 0.95 allows for a frame late
/// or lost here and there on a loaded one).
fn heard(frames: &[Vec<u8>], name: &str, codec: Codec) -> bool {
    // Whole, or with the one frame FreeSWITCH drops or inserts now and then on a loaded
    // machine (measured: one frame inserted mid-prompt, the rest sample for sample).
    let ok = heard_through_glitch(frames, &prompts(), "en", name, codec, 0.95);
    if !ok {
        // What the caller heard, for a person to look at (G.711 in the call's codec).
        let file =
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("heard-{name}.raw"));
        let _ = std::fs::write(&file, frames.concat());
        eprintln!("what the caller heard is in {}", file.display());
    }
    ok
}

#[test]
fn the_echo_line_through_freeswitch_is_heard_and_records_the_keys() {
    let fs = RealFreeSwitch::start(Options::default());
    let server = serve(&fs, "");
    let frames = dial(fs.sip, ECHO, "+12015550161", "1**", Codec::Pcmu, None).heard(&server);
    server.wait_idle();
    // FreeSWITCH encodes the decoded frames back to the caller's codec: what the caller hears
    // is our G.711, sample for sample (re-framed by mod_audio_fork's buffer, so searched at any
    // offset).
    let p = prompts();
    assert!(heard_bytes_as(&frames, &p, "en", "digit-1", Codec::Pcmu));
    assert!(heard_bytes_as(&frames, &p, "en", "goodbye", Codec::Pcmu));
    assert!(
        heard(&frames, "goodbye", Codec::Pcmu),
        "goodbye, played out"
    );
    let c = &server.calls()[0];
    assert_eq!(
        (c["service"].as_str(), c["end_reason"].as_str()),
        (Some("echo"), Some("service-hangup")),
        "{c}"
    );
    assert_eq!(c["digits"], "1**", "{c}");
    fs.wait_no_channels(Duration::from_secs(5));
    assert!(!server.log().contains("parked a call without"));
}

#[test]
fn the_echo_line_streams_16_khz_prompts_when_the_fork_is_opened_at_16k() {
    let fs = RealFreeSwitch::start(Options::default());
    let server = serve(&fs, "sample_rate = 16000\n");
    let frames = dial(fs.sip, ECHO, "+12015550161", "1**", Codec::Pcmu, None).heard(&server);
    server.wait_idle();
    // The wideband audio, resampled by FreeSWITCH to the caller's 8 kHz: against our own 8 kHz
    // resampling of the same recording the correlation is about 0.92-0.94 (measured); a prompt
    // that was not played stays far below.
    let p = prompts();
    let like = |name: &str| heard_like_as(&frames, &p, "en", name, Codec::Pcmu, 0.85);
    assert!(like("digit-1"), "read-back of 1");
    assert!(like("goodbye"));
    assert!(!like("card-used"));
    let c = &server.calls()[0];
    assert_eq!(c["digits"], "1**", "{c}");
    assert!(
        server.log().contains("starting mod_audio_fork rate=16000"),
        "the fork was opened at 16k"
    );
    fs.wait_no_channels(Duration::from_secs(5));
}

#[test]
fn a_call_parked_without_send_silence_when_idle_is_parked_again_and_heard() {
    let fs = RealFreeSwitch::start(Options::default());
    let server = serve(&fs, "");
    // Two calls parked the way the shipped dialplan used to park them.
    for _ in 0..2 {
        let frames = dial(
            fs.sip,
            ECHO_BARE_PARK,
            "+12015550161",
            "5**",
            Codec::Pcmu,
            None,
        )
        .heard(&server);
        assert!(
            heard(&frames, "digit-5", Codec::Pcmu),
            "the caller hears the service"
        );
    }
    server.wait_idle();
    for c in server.calls() {
        assert_eq!(c["end_reason"], "service-hangup", "{c}");
    }
    // One warning names the fix, however many calls needed it.
    assert_eq!(
        server
            .log()
            .matches("parked a call without send_silence_when_idle")
            .count(),
        1,
        "{}",
        server.log()
    );
    assert_eq!(
        metric(&server, "topup_ivr_freeswitch_repaired_parks_total", &[]),
        Some(2.0)
    );
    fs.wait_no_channels(Duration::from_secs(5));
}

#[test]
fn a_card_top_up_through_freeswitch_credits_the_recipient_and_is_heard() {
    let fs = RealFreeSwitch::start(Options::default());
    let server = serve(&fs, "");
    let frames = dial(
        fs.sip,
        RECHARGE,
        "+12015550161",
        "111112222333344#12015550150#111",
        Codec::Pcmu,
        None,
    )
    .heard(&server);
    server.wait_idle();
    let account = cli(&server, &["accounts", "show", "+12015550150"]);
    assert_eq!(account["prepaid"]["balance"], "6.20", "{account}");
    assert_eq!(
        cli(&server, &["cards", "show", "100000000001"])["state"],
        "redeemed"
    );
    let c = &server.calls()[0];
    assert_eq!(
        (c["service"].as_str(), c["end_reason"].as_str()),
        (Some("recharge"), Some("service-hangup")),
        "{c}"
    );
    assert!(heard(&frames, "thank-you-goodbye", Codec::Pcmu));
    fs.wait_no_channels(Duration::from_secs(5));
    cli_ok(&server, &["ledger", "check"]);
    assert!(!server.log().contains("11112222333344"), "PIN logged");
    assert!(
        !fs.log().contains("11112222333344"),
        "PIN reached FreeSWITCH"
    );
}

#[test]
fn a_wallet_top_up_through_freeswitch_in_alaw_pays_from_the_wallet() {
    let fs = RealFreeSwitch::start(Options::default());
    let server = serve(&fs, "");
    let call = dial(
        fs.sip,
        WALLET,
        "+12015550100",
        "1234#1525512345678#121",
        Codec::Pcma,
        Some(Duration::from_secs(22)),
    );
    server.wait_until("the top-up is done", Duration::from_secs(40), || {
        cli(&server, &["topups", "list"])[0]["state"] == "succeeded"
    });
    let frames = call.heard(&server);
    server.wait_idle();
    let w = cli(&server, &["accounts", "show", "+12015550100"]);
    assert_eq!(w["wallet"]["balance"], "19.01", "25.00 - 5.99: {w}");
    assert_eq!(server.calls()[0]["end_reason"], "caller-hangup");
    // A-law to the caller, encoded by FreeSWITCH from our linear audio.
    assert!(heard(&frames, "topup-of", Codec::Pcma));
    fs.wait_no_channels(Duration::from_secs(5));
}

#[test]
fn a_wallet_call_goes_out_through_the_trunk_gateway_and_is_cut_when_the_money_runs_out() {
    let mut gw = SippGateway::start("uas_gateway_quiet.xml", "90s");
    let gw_port = gw.port;
    let fs = RealFreeSwitch::start(Options {
        trunk: Some(format!("127.0.0.1:{gw_port}").parse().unwrap()),
        ..Default::default()
    });
    let server = serve(&fs, "[calling]\nwarning_before = \"3s\"\n");
    calling_wallet(&server);
    let call = dial(
        fs.sip,
        WALLET,
        "+12015550166",
        "4321#3442079460123#1",
        Codec::Pcmu,
        Some(Duration::from_secs(30)),
    );
    server.wait_until("the call is cut", Duration::from_secs(60), || {
        server.log().contains("balance used up: cutting the call")
    });
    assert!(
        gw.succeeded(),
        "the callee was not called, answered and hung up:\n{}",
        gw.messages()
    );
    let frames = call.heard(&server);
    server.wait_idle();
    let w = cli(&server, &["accounts", "show", "+12015550166"]);
    assert_eq!(w["wallet"]["balance"], "0.04", "6 s at 0.60/min: {w}");
    assert!(gw.messages().contains("+12015550166"));
    // The caller came back to the park after the cut and heard what the call cost.
    assert!(heard(&frames, "call-ended-cost", Codec::Pcmu));
    fs.wait_no_channels(Duration::from_secs(5));
    cli_ok(&server, &["ledger", "check"]);
}

#[test]
fn an_escalation_arrives_at_the_agents_extension_with_both_variables() {
    let fs = RealFreeSwitch::start(Options::default());
    let server = serve(&fs, "");
    // 0 at the PIN prompt asks for an agent; the caller waits in the queue a while.
    let frames = dial(
        fs.sip,
        WALLET,
        "+12015550100",
        "0",
        Codec::Pcmu,
        Some(Duration::from_secs(8)),
    )
    .heard(&server);
    server.wait_idle();
    let e = &cli(&server, &["escalations", "list"])[0];
    assert_eq!(e["state"], "transferred", "{e}");
    let (id, reason) = (e["id"].as_str().unwrap(), e["reason"].as_str().unwrap());
    // The shipped agents.xml logs both variables.
    let log = fs.log();
    assert!(
        log.contains(&format!("escalation {id}: {reason}")),
        "the agents extension did not see topup_escalation_id / _reason"
    );
    assert_eq!(server.calls()[0]["end_reason"], "transferred");
    assert!(
        heard(&frames, "transferring", Codec::Pcmu),
        "heard to its end"
    );
    fs.wait_no_channels(Duration::from_secs(5));
}

#[test]
fn a_caller_hanging_up_at_any_step_leaves_no_channel() {
    let fs = RealFreeSwitch::start(Options::default());
    let server = serve(&fs, "");
    let steps = [
        ("1", 300),
        ("11111", 500),
        ("111112222333344#", 200),
        ("111112222333344#1201", 100),
        ("111112222333344#12015550150#11", 1500),
    ];
    for (i, (keys, after)) in steps.iter().enumerate() {
        let bye = Duration::from_millis(400 * keys.len() as u64 + after);
        dial(
            fs.sip,
            RECHARGE,
            &format!("+1201555017{i}"),
            keys,
            Codec::Pcmu,
            Some(bye),
        )
        .heard(&server);
        server.wait_idle();
        fs.wait_no_channels(Duration::from_secs(5));
    }
    let calls = server.calls();
    assert_eq!(calls.len(), steps.len(), "{calls:#?}");
    for c in &calls {
        assert_eq!(c["end_reason"], "caller-hangup", "{c}");
    }
    assert_eq!(
        cli(&server, &["topups", "list"]).as_array().unwrap().len(),
        0
    );
}

#[test]
fn a_freeswitch_restart_ends_its_calls_and_the_event_socket_is_back_within_a_second() {
    let mut fs = RealFreeSwitch::start(Options::default());
    let server = serve(&fs, "");
    let call = dial(
        fs.sip,
        ECHO,
        "+12015550161",
        "1",
        Codec::Pcmu,
        Some(Duration::from_secs(20)),
    );
    server.wait_until("the call is up", Duration::from_secs(10), || {
        server.health()["active_calls"] == 1
    });
    fs.stop();
    server.wait_until(
        "/health shows FreeSWITCH down",
        Duration::from_secs(5),
        || server.health()["freeswitch"]["connected"] == false,
    );
    server.wait_idle();
    let c = &server.calls()[0];
    assert_eq!(c["service"], "echo");
    assert!(
        c["end_reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{c}"
    );
    drop(call);
    std::thread::sleep(Duration::from_secs(2));
    fs.restart();
    let up = Instant::now();
    server.wait_until("the event socket is back", Duration::from_secs(5), || {
        server.health()["freeswitch"]["connected"] == true
    });
    assert!(
        up.elapsed() <= Duration::from_millis(1000),
        "connected {:?} after FreeSWITCH was up",
        up.elapsed()
    );
    let frames = dial(fs.sip, ECHO, "+12015550161", "5**", Codec::Pcmu, None).heard(&server);
    server.wait_idle();
    assert!(heard(&frames, "digit-5", Codec::Pcmu));
    assert_eq!(server.calls()[0]["end_reason"], "service-hangup");
    assert!(server.log().contains("event socket connected again"));
    fs.wait_no_channels(Duration::from_secs(5));
}

#[test]
fn a_setup_storm_of_200_calls_at_20_per_second_all_get_audio() {
    // Alone on the machine: a storm shares the two cores with nothing else.
    let fs = RealFreeSwitch::start(Options {
        alone: true,
        ..Default::default()
    });
    let server = serve(&fs, "");
    let out = Command::new(BIN)
        .arg("loadgen")
        .arg("--target")
        .arg(fs.sip.to_string())
        .arg("--prompts")
        .arg(repo().join("prompts"))
        .args(["--number", ECHO, "--caller", "+12015550161"])
        .args(["--calls", "200", "--rate", "20"])
        .args(["--script", "hold:1500ms keys:5 wait keys:8 wait bye"])
        // A key reaches the service through the softswitch's events, which lag under a storm
        // (~0.4 s on a slow 2-core machine): the gap between the prompt the key stopped and
        // the answer to it is silence that must not end the `wait`.
        .args(["--quiet", "1s"])
        .args(["--length", "60s", "--json", "--pid"])
        .arg(server.pid().to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stderr}"));
    assert_eq!(r["established"], 200, "{r:#}");
    assert_eq!(r["failed"], serde_json::json!({}), "{r:#}");
    assert_eq!(r["refused"], serde_json::json!({}), "{r:#}");
    // Every caller heard audio after each key (a `wait` step ends only on sound, then quiet),
    // and every key reached the service.
    assert_eq!(r["keys_sent"], 400, "{r:#}");
    assert_eq!(r["dtmf_unanswered"], 0, "{r:#}");
    server.wait_idle();
    let records = server.calls();
    assert_eq!(records.len(), 200);
    let bad: Vec<_> = records
        .iter()
        .filter(|c| c["end_reason"] != "caller-hangup" || c["digits"] != "58")
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    fs.wait_no_channels(Duration::from_secs(10));
}
