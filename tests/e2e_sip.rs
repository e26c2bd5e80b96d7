//! End-to-end: the built `topup-ivr` binary on loopback, dialled by sipp (and raw UDP for
//! the malformed cases). Needs sipp and tcpdump (installed by scripts/test); play_pcap_audio
//! needs root, as in CI.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use topup_ivr::media::dtmf::Digit;
use topup_ivr::media::g711::Codec;
use topup_ivr::media::prompts::{LoadOptions, PromptStore};
use topup_ivr::media::tones::{DtmfTone, silence, to_i16};

fn cdr_for<'a>(calls: &'a [serde_json::Value], field: &str, value: &str) -> &'a serde_json::Value {
    calls
        .iter()
        .find(|c| c[field] == value)
        .unwrap_or_else(|| panic!("no CDR with {field}={value}: {calls:#?}"))
}

/// Calls the echo line with `scenario`, pressing `digits`, and captures what reaches sipp's
/// media port; returns the server once idle and the captured packets.
fn echo_call_heard(scenario: &str, digits: &str) -> (Server, Vec<(f64, Vec<u8>)>) {
    require("sipp");
    let server = Server::start("");
    let sipp = Sipp::new(scenario, "echo")
        .arg("-key")
        .arg("digits")
        .arg(digits);
    let cap_dir = tempfile::tempdir().unwrap();
    let capture = Capture::start(
        cap_dir.path(),
        &format!("udp and dst port {}", sipp.media_port),
    );
    sipp.run(&server);
    let packets = capture.stop();
    server.wait_idle();
    (server, packets)
}

#[test]
fn rfc4733_keys_are_echoed_and_star_star_hangs_up_and_the_greeting_arrives_as_rtp() {
    let started = Instant::now();
    let (server, packets) = echo_call_heard("echo_play_dtmf.xml", "12**");

    let calls = server.calls();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c["digits"], "12**");
    assert_eq!(c["dtmf_methods"], "rfc4733");
    assert_eq!(c["end_reason"], "service-hangup");
    assert_eq!(c["codec"], "PCMU");
    assert_eq!(c["caller"], "5550100");
    assert_eq!(c["dialled"], "echo");
    assert!(started.elapsed() < Duration::from_secs(35));

    // The RTP stream sipp received starts with the greeting, byte for byte, paced 20 ms.
    let store = PromptStore::load(&repo().join("prompts"), LoadOptions::default()).unwrap();
    let welcome = store.get("en", "echo-welcome").unwrap();
    let rtp: Vec<(f64, rtp_rs::RtpReader)> = packets
        .iter()
        .filter_map(|(t, p)| rtp_rs::RtpReader::new(p).ok().map(|r| (*t, r)))
        .filter(|(_, r)| r.payload_type() == 0)
        .collect();
    assert!(rtp.len() > 200, "only {} RTP packets captured", rtp.len());
    assert!(rtp[0].1.mark(), "marker on the first packet");
    // The greeting is interrupted by the first key (sent 1.5 s in), so compare the first 1.2 s.
    let compare = 60;
    for (i, (_, r)) in rtp.iter().take(compare).enumerate() {
        assert_eq!(
            r.payload(),
            welcome.frame(Codec::Pcmu, i),
            "greeting frame {i}"
        );
    }
    for w in rtp.windows(2).take(200) {
        let (a, b) = (&w[0].1, &w[1].1);
        assert_eq!(
            u16::from(b.sequence_number()),
            u16::from(a.sequence_number()).wrapping_add(1)
        );
        assert_eq!(b.timestamp(), a.timestamp().wrapping_add(160));
        assert_eq!(a.ssrc(), b.ssrc());
    }
    // Real-time pace: 200 packets span about 4 s.
    let span = rtp[200].0 - rtp[0].0;
    assert!((3.8..4.3).contains(&span), "200 packets took {span} s");
}

#[test]
fn a_late_offer_call_gets_our_offer_and_runs_on_the_codec_of_the_answer_in_the_ack() {
    // The INVITE carries no SDP; the 200 must offer PCMU, PCMA and telephone-event (the
    // scenario checks), and the ACK answers PCMA.
    let (server, packets) = echo_call_heard("late_offer.xml", "12**");

    let c = &server.calls()[0];
    assert_eq!(c["digits"], "12**", "keys on the answer's event type");
    assert_eq!(c["end_reason"], "service-hangup");
    assert_eq!(c["codec"], "PCMA");
    // Our RTP went to the address of the answer, in the answer's codec.
    let types: Vec<u8> = packets
        .iter()
        .filter_map(|(_, p)| rtp_rs::RtpReader::new(p).ok().map(|r| r.payload_type()))
        .collect();
    assert!(types.len() > 100, "only {} RTP packets", types.len());
    assert!(types.iter().all(|&pt| pt == 8), "{types:?}");
}

#[test]
fn a_late_offer_call_whose_ack_brings_no_answer_is_ended() {
    require("sipp");
    let server = Server::start("");
    Sipp::new("late_offer_no_answer.xml", "echo").run(&server);
    server.wait_idle();
    let c = &server.calls()[0];
    assert_eq!(c["end_reason"], "no-acceptable-media");
}

#[test]
fn sip_info_and_rfc4733_keys_both_reach_the_call_and_the_cdr() {
    require("sipp");
    let server = Server::start("");
    Sipp::new("echo_rfc4733_and_info.xml", "echo").run(&server);
    server.wait_idle();
    let calls = server.calls();
    assert_eq!(calls[0]["digits"], "12**");
    assert_eq!(calls[0]["dtmf_methods"], "info,rfc4733");
    assert_eq!(calls[0]["end_reason"], "service-hangup");
}

#[test]
fn shipped_sipp_pcaps_replayed_twice_count_once() {
    require("sipp");
    let server = Server::start("");
    Sipp::new("shipped_pcaps.xml", "echo").run(&server);
    server.wait_idle();
    let calls = server.calls();
    assert_eq!(calls[0]["digits"], "12");
    assert_eq!(calls[0]["end_reason"], "caller-hangup");
}

#[test]
fn keys_sent_as_tones_are_detected_in_band_when_no_telephone_event_is_offered() {
    require("sipp");
    let server = Server::start("");
    let dir = tempfile::tempdir().unwrap();
    // 300 ms silence, "4", pause, "7", pause — as µ-law RTP in 20 ms packets.
    let mut audio = silence(300.0);
    for (i, c) in ['4', '7', '0'].into_iter().enumerate() {
        let mut t = DtmfTone::new(Digit::from_char(c).unwrap(), -12.0, 90.0);
        // A realistic phone: high group 2 dB weaker, frequencies 1 % off.
        t.high_dbm0 = -14.0;
        t.freq_error = if i % 2 == 0 { 0.01 } else { -0.01 };
        audio.extend(t.samples());
        audio.extend(silence(250.0));
    }
    audio.extend(silence(300.0));
    let pcm = to_i16(&audio);
    let mut packets = vec![];
    for (i, frame) in pcm.chunks(160).enumerate() {
        let mut payload = vec![0u8; frame.len()];
        Codec::Pcmu.encode(frame, &mut payload);
        let rtp = rtp_packet(
            0,
            i == 0,
            1000 + i as u16,
            5000 + 160 * i as u32,
            0x1234_5678,
            &payload,
        );
        packets.push((i as f64 * 0.02, rtp));
    }
    write_rtp_pcap(&dir.path().join("tones.pcap"), &packets);
    let ms = (packets.len() as u64 * 20 + 1500).to_string();
    let scenario = std::fs::read_to_string(repo().join("tests/sipp/inband.xml"))
        .unwrap()
        .replace("[pcap_ms]", &ms);
    std::fs::write(dir.path().join("inband.xml"), scenario).unwrap();
    let mut sipp = Sipp::new("inband.xml", "echo");
    sipp.scenario = dir.path().join("inband.xml");
    sipp.run(&server);
    server.wait_idle();
    let calls = server.calls();
    assert_eq!(calls[0]["digits"], "470", "{:#?}", calls[0]);
    assert_eq!(calls[0]["dtmf_methods"], "inband");
}

#[test]
fn cancel_before_answer_gets_487_and_a_cdr() {
    require("sipp");
    let server = Server::start("[sip]\nanswer_delay = \"5s\"\n");
    Sipp::new("cancel.xml", "echo").run(&server);
    server.wait_idle();
    let calls = server.calls();
    assert_eq!(calls[0]["end_reason"], "cancelled");
    assert!(calls[0]["answered_at"].is_null());
}

#[test]
fn options_is_answered_200_with_allow() {
    require("sipp");
    let server = Server::start("");
    Sipp::new("options.xml", "echo").run(&server);
    assert!(server.calls().is_empty(), "OPTIONS is not a call");
}

fn refused(status: u16) -> Sipp {
    let dir = tempfile::tempdir().unwrap().keep();
    let text = std::fs::read_to_string(repo().join("tests/sipp/refused.xml"))
        .unwrap()
        .replace("[status]", &status.to_string());
    let path = dir.join(format!("refused_{status}.xml"));
    std::fs::write(&path, text).unwrap();
    let mut s = Sipp::new("refused.xml", "echo");
    s.scenario = path;
    s
}

#[test]
fn unknown_numbers_get_404_and_a_full_server_503() {
    require("sipp");
    let server = Server::start("[sip]\nmax_calls = 1\n");
    let mut r = refused(404);
    r.service = "no-such-service".into();
    r.run(&server);
    // Hold the only slot with a long call, then a second call is refused with 503.
    let logs = tempfile::tempdir().unwrap();
    let mut long = Sipp::new("basic_call.xml", "echo")
        .arg("-d")
        .arg("4000")
        .spawn(&server, logs.path());
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.health()["active_calls"] != 1 {
        assert!(Instant::now() < deadline, "first call never became active");
        std::thread::sleep(Duration::from_millis(50));
    }
    refused(503).run(&server);
    assert!(long.wait().unwrap().success(), "{}", read_logs(logs.path()));
    server.wait_idle();
    let calls = server.calls();
    assert_eq!(
        cdr_for(&calls, "dialled", "no-such-service")["end_reason"],
        "not-found"
    );
    assert_eq!(
        cdr_for(&calls, "dialled", "echo")["end_reason"],
        "caller-hangup"
    );
}

#[test]
fn twenty_concurrent_calls_all_complete() {
    require("sipp");
    let server = Server::start("");
    Sipp::new("basic_call.xml", "echo")
        .arg("-m")
        .arg("20")
        .arg("-l")
        .arg("20")
        .arg("-r")
        .arg("20")
        .arg("-d")
        .arg("3000")
        .run(&server);
    server.wait_idle();
    let calls = server.calls();
    assert_eq!(calls.len(), 20);
    assert!(
        calls.iter().all(|c| c["end_reason"] == "caller-hangup"),
        "{calls:#?}"
    );
    let ids: std::collections::HashSet<_> =
        calls.iter().map(|c| c["call_id"].to_string()).collect();
    assert_eq!(ids.len(), 20);
}

/// Sends one datagram and returns the reply, if any.
fn exchange(sock: &UdpSocket, to: std::net::SocketAddr, msg: &[u8]) -> Option<String> {
    sock.send_to(msg, to).unwrap();
    let mut buf = [0u8; 4096];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(String::from_utf8_lossy(&buf[..n]).to_string()),
        Err(_) => None,
    }
}

#[test]
fn malformed_messages_get_400_and_do_not_disturb_a_call_in_progress() {
    require("sipp");
    let server = Server::start("");
    let logs = tempfile::tempdir().unwrap();
    let mut call = Sipp::new("basic_call.xml", "echo")
        .arg("-d")
        .arg("3000")
        .spawn(&server, logs.path());
    std::thread::sleep(Duration::from_millis(800));

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let port = sock.local_addr().unwrap().port();
    let base = format!(
        "INVITE sip:echo@{0} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKbad1\r\n\
From: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:echo@{0}>\r\nCall-ID: bad-1\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:x@127.0.0.1:{port}>\r\nContent-Length: 0\r\n\r\n",
        server.sip
    );
    let no_call_id = base.replace("Call-ID: bad-1\r\n", "");
    let reply = exchange(&sock, server.sip, no_call_id.as_bytes()).expect("a reply");
    assert!(reply.starts_with("SIP/2.0 400 "), "{reply}");
    assert!(reply.contains("Call-ID"), "{reply}");
    let long_body = base
        .replace("branch=z9hG4bKbad1", "branch=z9hG4bKbad2")
        .replace("Content-Length: 0", "Content-Length: 500");
    let reply = exchange(&sock, server.sip, long_body.as_bytes()).expect("a reply");
    assert!(reply.starts_with("SIP/2.0 400 "), "{reply}");
    let bad_cseq = base
        .replace("branch=z9hG4bKbad1", "branch=z9hG4bKbad3")
        .replace("CSeq: 1 INVITE", "CSeq: one INVITE");
    assert!(
        exchange(&sock, server.sip, bad_cseq.as_bytes())
            .unwrap()
            .starts_with("SIP/2.0 400 ")
    );
    for garbage in [
        &b"\x00\x01\x02"[..],
        b"hello world\r\n\r\n",
        &[0xFF; 1400],
        b"SIP/2.0 200 OK\r\n\r\n",
    ] {
        assert_eq!(
            exchange(&sock, server.sip, garbage),
            None,
            "no reply to garbage"
        );
    }
    let bye = base
        .replace("INVITE sip", "BYE sip")
        .replace("1 INVITE", "2 BYE");
    let bye = bye.replace(
        &format!("To: <sip:echo@{}>", server.sip),
        &format!("To: <sip:echo@{}>;tag=nosuch", server.sip),
    );
    assert!(
        exchange(&sock, server.sip, bye.as_bytes())
            .unwrap()
            .starts_with("SIP/2.0 481 ")
    );

    assert!(
        call.wait().unwrap().success(),
        "call disturbed:\n{}",
        read_logs(logs.path())
    );
    server.wait_idle();
    let calls = server.calls();
    assert_eq!(calls.len(), 1, "malformed INVITEs made no calls");
    assert_eq!(calls[0]["end_reason"], "caller-hangup");
}

#[test]
fn sigterm_refuses_new_calls_and_lets_the_current_one_finish() {
    require("sipp");
    let mut server = Server::start("");
    let logs = tempfile::tempdir().unwrap();
    let mut call = Sipp::new("basic_call.xml", "echo")
        .arg("-d")
        .arg("3000")
        .spawn(&server, logs.path());
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.health()["active_calls"] != 1 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    server.terminate();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        http_get(server.http, "/health").map(|r| r.0),
        Some(503),
        "health says draining"
    );
    refused(503).run(&server);
    assert!(call.wait().unwrap().success(), "{}", read_logs(logs.path()));
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit {status}");
    let calls = server.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["end_reason"], "caller-hangup");
}

#[test]
fn calls_still_up_after_the_grace_period_are_hung_up() {
    require("sipp");
    let mut server = Server::start("[calls]\nshutdown_grace = \"1s\"\n");
    let sipp = Sipp::new("echo_play_dtmf.xml", "echo")
        .arg("-key")
        .arg("digits")
        .arg("5");
    let logs = tempfile::tempdir().unwrap();
    // The scenario waits for the service's BYE: it comes from the shutdown.
    let mut call = sipp.spawn(&server, logs.path());
    std::thread::sleep(Duration::from_millis(1500));
    server.terminate();
    assert!(call.wait().unwrap().success(), "{}", read_logs(logs.path()));
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(server.calls()[0]["end_reason"], "shutdown");
}

#[test]
fn hold_stops_our_rtp_and_resume_restarts_it_with_the_new_codec() {
    require("sipp");
    let server = Server::start("");
    let sipp = Sipp::new("hold_resume.xml", "echo");
    let cap_dir = tempfile::tempdir().unwrap();
    let capture = Capture::start(
        cap_dir.path(),
        &format!("udp and dst port {}", sipp.media_port),
    );
    sipp.run(&server);
    let packets = capture.stop();
    server.wait_idle();
    let rtp: Vec<(f64, u16, bool, u8)> = packets
        .iter()
        .filter_map(|(t, p)| {
            rtp_rs::RtpReader::new(p).ok().map(|r| {
                (
                    *t,
                    u16::from(r.sequence_number()),
                    r.mark(),
                    r.payload_type(),
                )
            })
        })
        .collect();
    let times: Vec<String> = rtp
        .iter()
        .map(|p| format!("{:.2}", p.0 - rtp[0].0))
        .collect();
    assert!(rtp.len() > 80, "{} packets: {}", rtp.len(), times.join(" "));
    // The longest silence is the hold (2 s in the scenario); packets flow before and after.
    let (gap_at, gap) = rtp
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i, w[1].0 - w[0].0))
        .fold((0, 0.0), |best, x| if x.1 > best.1 { x } else { best });
    assert!((1.7..2.6).contains(&gap), "hold gap {gap} s");
    assert!(
        gap_at > 30 && rtp.len() - gap_at > 30,
        "packets before and after the hold"
    );
    let (before, after) = (rtp[gap_at], rtp[gap_at + 1]);
    assert_eq!(
        after.1,
        before.1.wrapping_add(1),
        "no sequence jump across the hold"
    );
    assert!(after.2, "marker on the first packet after the hold");
    assert!(
        rtp[..=gap_at].iter().all(|p| p.3 == 0),
        "PCMU before the hold"
    );
    assert!(
        rtp[gap_at + 1..].iter().all(|p| p.3 == 8),
        "PCMA after the resume offered only PCMA"
    );
    assert_eq!(server.calls()[0]["end_reason"], "caller-hangup");
}

#[test]
fn a_call_without_rtp_is_ended_by_the_rtp_timeout() {
    require("sipp");
    let server = Server::start("[rtp]\ntimeout = \"2s\"\n");
    let t = Instant::now();
    Sipp::new("silent_caller.xml", "echo").run(&server);
    assert!(t.elapsed() < Duration::from_secs(6));
    server.wait_idle();
    assert_eq!(server.calls()[0]["end_reason"], "rtp-timeout");
}

#[test]
fn a_call_is_cut_at_the_maximum_duration() {
    require("sipp");
    let server = Server::start("[calls]\nmax_duration = \"2s\"\n");
    let t = Instant::now();
    Sipp::new("silent_caller.xml", "echo").run(&server);
    assert!(t.elapsed() < Duration::from_secs(6));
    server.wait_idle();
    assert_eq!(server.calls()[0]["end_reason"], "max-duration");
}
