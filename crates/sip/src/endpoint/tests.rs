//! The endpoint on a simulated clock.

use super::*;
use std::time::Duration;

const CALLER: &str = "127.0.0.1:5061";

fn ep() -> Endpoint {
    Endpoint::new(
        EndpointConfig {
            local_addr: "127.0.0.1:5060".parse().unwrap(),
            user_agent: "topup-ivr-test".into(),
            tsx: TsxConfig::default(),
        },
        7,
    )
}

fn caller() -> SocketAddr {
    CALLER.parse().unwrap()
}

fn invite(branch: &str, call_id: &str) -> String {
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
    format!(
        "INVITE sip:echo@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch};rport\r\n\
From: \"Ann\" <sip:5551234@127.0.0.1>;tag=ft\r\nTo: <sip:echo@127.0.0.1:5060>\r\nCall-ID: {call_id}\r\n\
CSeq: 1 INVITE\r\nContact: <sip:ann@{CALLER}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// An in-dialog request from the caller.
fn in_dialog(
    method: &str,
    cseq: u32,
    to_tag: &str,
    call_id: &str,
    extra: &str,
    body: &str,
) -> String {
    format!(
        "{method} sip:ivr@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK{method}{cseq}\r\n\
From: <sip:5551234@127.0.0.1>;tag=ft\r\nTo: <sip:echo@127.0.0.1:5060>;tag={to_tag}\r\nCall-ID: {call_id}\r\n\
CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn responses(ep: &mut Endpoint) -> Vec<Response> {
    std::iter::from_fn(|| ep.poll_transmit())
        .filter_map(|t| match Message::parse(&t.payload) {
            Ok(Message::Response(r)) => Some(r),
            _ => None,
        })
        .collect()
}

fn sent(ep: &mut Endpoint) -> Vec<Message> {
    std::iter::from_fn(|| ep.poll_transmit())
        .map(|t| Message::parse(&t.payload).expect("we send valid SIP"))
        .collect()
}

fn codes(rs: &[Response]) -> Vec<u16> {
    rs.iter().map(|r| r.code).collect()
}

fn events(ep: &mut Endpoint) -> Vec<SipEvent> {
    std::iter::from_fn(|| ep.poll_event()).collect()
}

/// INVITE + answer + ACK; returns (call, our tag).
fn established(ep: &mut Endpoint, t0: Instant) -> (CallHandle, String) {
    ep.handle_datagram(t0, caller(), invite("z9hG4bK1", "cid1").as_bytes());
    let call = match events(ep).pop() {
        Some(SipEvent::Incoming(i)) => i.call,
        e => panic!("{e:?}"),
    };
    ep.answer(t0, call, b"v=0\r\n".to_vec());
    let rs = responses(ep);
    let tag = rs[1]
        .headers
        .get("To")
        .and_then(NameAddr::parse)
        .unwrap()
        .tag()
        .unwrap()
        .to_string();
    let ack = in_dialog("ACK", 1, &tag, "cid1", "", "");
    ep.handle_datagram(t0 + Duration::from_millis(5), caller(), ack.as_bytes());
    assert!(matches!(
        events(ep).as_slice(),
        [SipEvent::Confirmed { .. }]
    ));
    (call, tag)
}

/// Runs all timers to completion (2 minutes of simulated time).
fn drain(ep: &mut Endpoint, t0: Instant) -> Vec<Message> {
    let mut out = vec![];
    while let Some(at) = ep.poll_timeout() {
        assert!(at < t0 + Duration::from_secs(120), "timers run forever");
        ep.handle_timeout(at);
        out.extend(sent(ep));
    }
    out
}

#[test]
fn invite_gets_trying_then_the_driver_sees_the_call() {
    let mut ep = ep();
    let t0 = Instant::now();
    ep.handle_datagram(t0, caller(), invite("z9hG4bK1", "cid1").as_bytes());
    let rs = responses(&mut ep);
    assert_eq!(codes(&rs), [100]);
    let via = rs[0].headers.get("Via").unwrap();
    assert!(via.contains("rport=5061"), "{via}");
    match events(&mut ep).as_slice() {
        [SipEvent::Incoming(i)] => {
            assert_eq!(i.dialled, "echo");
            assert_eq!(i.caller, "5551234");
            assert_eq!(i.caller_display.as_deref(), Some("Ann"));
            assert!(i.offer.starts_with(b"v=0"));
        }
        e => panic!("{e:?}"),
    }
    // A retransmitted INVITE gets the 100 again and no second call.
    ep.handle_datagram(t0, caller(), invite("z9hG4bK1", "cid1").as_bytes());
    assert_eq!(codes(&responses(&mut ep)), [100]);
    assert!(events(&mut ep).is_empty());
}

#[test]
fn answered_call_retransmits_200_until_ack() {
    let mut ep = ep();
    let t0 = Instant::now();
    ep.handle_datagram(t0, caller(), invite("z9hG4bK1", "cid1").as_bytes());
    let SipEvent::Incoming(inc) = events(&mut ep).remove(0) else {
        panic!()
    };
    responses(&mut ep);
    ep.answer(t0, inc.call, b"v=0\r\n".to_vec());
    let rs = responses(&mut ep);
    assert_eq!(codes(&rs), [200]);
    assert_eq!(rs[0].headers.get("Content-Type"), Some("application/sdp"));
    assert!(rs[0].headers.get("Contact").is_some());
    let tag = NameAddr::parse(rs[0].headers.get("To").unwrap())
        .unwrap()
        .tag()
        .unwrap()
        .to_string();
    // Retransmits at T1 and 2·T1 later.
    let t1 = ep.poll_timeout().unwrap();
    assert_eq!(t1 - t0, Duration::from_millis(500));
    ep.handle_timeout(t1);
    assert_eq!(codes(&responses(&mut ep)), [200]);
    let t2 = ep.poll_timeout().unwrap();
    assert_eq!(t2 - t1, Duration::from_millis(1000));
    ep.handle_datagram(
        t2 - Duration::from_millis(1),
        caller(),
        in_dialog("ACK", 1, &tag, "cid1", "", "").as_bytes(),
    );
    assert!(matches!(
        events(&mut ep).as_slice(),
        [SipEvent::Confirmed { .. }]
    ));
    // No more 200s; only the INVITE transaction's Timer L remains, then nothing.
    let later = drain(&mut ep, t0);
    assert!(later.is_empty(), "{later:?}");
    assert_eq!(ep.transactions(), 0);
    assert_eq!(ep.active_calls(), 1);
}

#[test]
fn missing_ack_ends_the_call_with_bye_after_64_t1() {
    let mut ep = ep();
    let t0 = Instant::now();
    ep.handle_datagram(t0, caller(), invite("z9hG4bK1", "cid1").as_bytes());
    let SipEvent::Incoming(inc) = events(&mut ep).remove(0) else {
        panic!()
    };
    ep.answer(t0, inc.call, b"v=0\r\n".to_vec());
    responses(&mut ep);
    let mut oks = 0;
    let mut bye_at = None;
    while let Some(at) = ep.poll_timeout() {
        ep.handle_timeout(at);
        for m in sent(&mut ep) {
            match m {
                Message::Response(r) if r.code == 200 => oks += 1,
                Message::Request(r) if r.method == Method::Bye => {
                    bye_at.get_or_insert(at - t0);
                }
                _ => {}
            }
        }
        if bye_at.is_some() {
            break;
        }
    }
    assert_eq!(bye_at, Some(Duration::from_secs(32)));
    assert!((8..=11).contains(&oks), "{oks} retransmissions");
    assert!(matches!(
        events(&mut ep).as_slice(),
        [SipEvent::Ended {
            reason: EndReason::AckTimeout,
            ..
        }]
    ));
    assert_eq!(ep.active_calls(), 0);
}

#[test]
fn cancel_before_answer_gets_200_and_487() {
    let mut ep = ep();
    let t0 = Instant::now();
    ep.handle_datagram(t0, caller(), invite("z9hG4bK1", "cid1").as_bytes());
    events(&mut ep);
    responses(&mut ep);
    let cancel = format!(
        "CANCEL sip:echo@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK1\r\n\
From: \"Ann\" <sip:5551234@127.0.0.1>;tag=ft\r\nTo: <sip:echo@127.0.0.1:5060>\r\nCall-ID: cid1\r\n\
CSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    ep.handle_datagram(t0, caller(), cancel.as_bytes());
    let rs = responses(&mut ep);
    assert_eq!(codes(&rs), [200, 487]);
    assert_eq!(rs[0].cseq(), Some((1, Method::Cancel)));
    assert_eq!(rs[1].cseq(), Some((1, Method::Invite)));
    assert!(matches!(
        events(&mut ep).as_slice(),
        [SipEvent::Ended {
            reason: EndReason::Cancelled,
            ..
        }]
    ));
    // The caller ACKs the 487 (same branch); it is absorbed, and everything drains.
    let tag = NameAddr::parse(rs[1].headers.get("To").unwrap())
        .unwrap()
        .tag()
        .unwrap()
        .to_string();
    let ack =
        in_dialog("ACK", 1, &tag, "cid1", "", "").replace("branch=z9hG4bKACK1", "branch=z9hG4bK1");
    ep.handle_datagram(t0, caller(), ack.as_bytes());
    assert!(
        drain(&mut ep, t0).is_empty(),
        "no 487 retransmission after the ACK"
    );
    assert_eq!((ep.transactions(), ep.active_calls()), (0, 0));
    // A CANCEL for nothing is 481.
    ep.handle_datagram(
        t0,
        caller(),
        cancel.replace("z9hG4bK1", "z9hG4bK9").as_bytes(),
    );
    assert_eq!(codes(&responses(&mut ep)), [481]);
}

#[test]
fn bye_ends_the_call_and_unknown_dialogs_get_481() {
    let mut ep = ep();
    let t0 = Instant::now();
    let (_call, tag) = established(&mut ep, t0);
    ep.handle_datagram(
        t0,
        caller(),
        in_dialog("BYE", 9, "nope", "cid1", "", "").as_bytes(),
    );
    assert_eq!(codes(&responses(&mut ep)), [481]);
    ep.handle_datagram(
        t0,
        caller(),
        in_dialog("BYE", 2, &tag, "cid1", "", "").as_bytes(),
    );
    assert_eq!(codes(&responses(&mut ep)), [200]);
    assert!(matches!(
        events(&mut ep).as_slice(),
        [SipEvent::Ended {
            reason: EndReason::RemoteBye,
            ..
        }]
    ));
    // Retransmitted BYE: same 200 from the transaction, no new event.
    ep.handle_datagram(
        t0,
        caller(),
        in_dialog("BYE", 2, &tag, "cid1", "", "").as_bytes(),
    );
    assert_eq!(codes(&responses(&mut ep)), [200]);
    assert!(events(&mut ep).is_empty());
    assert_eq!(ep.active_calls(), 0);
}

#[test]
fn info_carries_digits_and_bad_bodies_are_refused() {
    let mut ep = ep();
    let t0 = Instant::now();
    let (_, tag) = established(&mut ep, t0);
    let relay = "Content-Type: application/dtmf-relay\r\n";
    ep.handle_datagram(
        t0,
        caller(),
        in_dialog(
            "INFO",
            2,
            &tag,
            "cid1",
            relay,
            "Signal=5\r\nDuration=160\r\n",
        )
        .as_bytes(),
    );
    assert_eq!(codes(&responses(&mut ep)), [200]);
    match events(&mut ep).as_slice() {
        [SipEvent::Dtmf { digit, .. }] => assert_eq!(digit.as_char(), '5'),
        e => panic!("{e:?}"),
    }
    ep.handle_datagram(
        t0,
        caller(),
        in_dialog(
            "INFO",
            3,
            &tag,
            "cid1",
            "Content-Type: application/dtmf\r\n",
            "#",
        )
        .as_bytes(),
    );
    assert_eq!(codes(&responses(&mut ep)), [200]);
    assert_eq!(events(&mut ep).len(), 1);
    ep.handle_datagram(
        t0,
        caller(),
        in_dialog("INFO", 4, &tag, "cid1", relay, "Signal=xyz").as_bytes(),
    );
    assert_eq!(codes(&responses(&mut ep)), [400]);
    let rs = {
        ep.handle_datagram(
            t0,
            caller(),
            in_dialog("INFO", 5, &tag, "cid1", "Content-Type: text/plain\r\n", "5").as_bytes(),
        );
        responses(&mut ep)
    };
    assert_eq!(codes(&rs), [415]);
    assert!(
        rs[0]
            .headers
            .get("Accept")
            .unwrap()
            .contains("application/dtmf-relay")
    );
    ep.handle_datagram(
        t0,
        caller(),
        in_dialog("INFO", 6, &tag, "cid1", "", "").as_bytes(),
    );
    assert_eq!(
        codes(&responses(&mut ep)),
        [200],
        "empty INFO is a keep-alive"
    );
    ep.handle_datagram(
        t0,
        caller(),
        in_dialog("INFO", 7, "other", "cid1", relay, "Signal=1").as_bytes(),
    );
    assert_eq!(codes(&responses(&mut ep)), [481]);
    assert!(events(&mut ep).is_empty());
}

#[test]
fn options_is_answered_with_capabilities() {
    let mut ep = ep();
    let t0 = Instant::now();
    let opt = format!(
        "OPTIONS sip:ivr@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKo\r\n\
From: <sip:mon@127.0.0.1>;tag=m\r\nTo: <sip:ivr@127.0.0.1>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    ep.handle_datagram(t0, caller(), opt.as_bytes());
    let rs = responses(&mut ep);
    assert_eq!(codes(&rs), [200]);
    assert_eq!(rs[0].headers.get("Allow"), Some(ALLOW));
    assert!(events(&mut ep).is_empty());
    // A node being stopped tells load balancers to look elsewhere.
    ep.set_draining(true);
    ep.handle_datagram(t0, caller(), opt.replace("z9hG4bKo", "z9hG4bKp").as_bytes());
    let rs = responses(&mut ep);
    assert_eq!(codes(&rs), [503]);
    assert_eq!(rs[0].headers.get("Retry-After"), Some("30"));
}

#[test]
fn malformed_requests_get_400_and_garbage_is_dropped() {
    let mut ep = ep();
    let t0 = Instant::now();
    let no_callid = invite("z9hG4bK1", "x").replace("Call-ID: x\r\n", "");
    ep.handle_datagram(t0, caller(), no_callid.as_bytes());
    // The 400 cannot carry the Call-ID it lacks, so read it as text.
    let raw: Vec<String> = std::iter::from_fn(|| ep.poll_transmit())
        .map(|t| String::from_utf8(t.payload).unwrap())
        .collect();
    assert_eq!(raw.len(), 1);
    assert!(
        raw[0].starts_with("SIP/2.0 400 Bad Request - missing Call-ID header\r\n"),
        "{}",
        raw[0]
    );
    assert!(raw[0].contains("Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK1;rport=5061"));
    ep.handle_datagram(t0, caller(), b"\x00\x01garbage\r\n\r\n");
    assert!(responses(&mut ep).is_empty());
    assert!(events(&mut ep).is_empty());
    assert_eq!(ep.active_calls(), 0);
    // A wrong Content-Length is a 400 too.
    let short = invite("z9hG4bK2", "y").replace("Content-Length: ", "Content-Length: 9");
    ep.handle_datagram(t0, caller(), short.as_bytes());
    assert_eq!(codes(&responses(&mut ep)), [400]);
}

#[test]
fn unsupported_requests_get_their_status_codes() {
    let mut ep = ep();
    let t0 = Instant::now();
    let req100rel = invite("z9hG4bK1", "r").replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nRequire: 100rel\r\n",
    );
    ep.handle_datagram(t0, caller(), req100rel.as_bytes());
    let rs = responses(&mut ep);
    assert_eq!(codes(&rs), [420]);
    assert_eq!(rs[0].headers.get("Unsupported"), Some("100rel"));
    let reg = invite("z9hG4bK2", "g")
        .replace("INVITE sip", "REGISTER sip")
        .replace("1 INVITE", "1 REGISTER");
    ep.handle_datagram(t0, caller(), reg.as_bytes());
    let rs = responses(&mut ep);
    assert_eq!(codes(&rs), [405]);
    assert_eq!(rs[0].headers.get("Allow"), Some(ALLOW));
    let tel =
        invite("z9hG4bK3", "t").replace("INVITE sip:echo@127.0.0.1:5060", "INVITE tel:+15551234");
    ep.handle_datagram(t0, caller(), tel.as_bytes());
    assert_eq!(codes(&responses(&mut ep)), [416]);
    let hops = invite("z9hG4bK4", "h").replace("Max-Forwards: 70", "Max-Forwards: 0");
    ep.handle_datagram(t0, caller(), hops.as_bytes());
    assert_eq!(codes(&responses(&mut ep)), [483]);
    // The same INVITE arriving by another path (new branch) is merged → 482.
    ep.handle_datagram(t0, caller(), invite("z9hG4bK5", "m").as_bytes());
    ep.handle_datagram(t0, caller(), invite("z9hG4bK6", "m").as_bytes());
    assert_eq!(codes(&responses(&mut ep)), [100, 482]);
    assert_eq!(ep.active_calls(), 1);
    assert_eq!(events(&mut ep).len(), 1);
}

#[test]
fn reinvite_is_offered_to_the_driver_and_answered() {
    let mut ep = ep();
    let t0 = Instant::now();
    let (call, tag) = established(&mut ep, t0);
    let reinv = in_dialog(
        "INVITE",
        2,
        &tag,
        "cid1",
        "Content-Type: application/sdp\r\n",
        "v=0\r\n",
    );
    ep.handle_datagram(t0, caller(), reinv.as_bytes());
    assert_eq!(codes(&responses(&mut ep)), [100]);
    assert!(matches!(
        events(&mut ep).as_slice(),
        [SipEvent::Reoffer { .. }]
    ));
    // A second one while the first is open: 491.
    ep.handle_datagram(
        t0,
        caller(),
        in_dialog("INVITE", 3, &tag, "cid1", "", "").as_bytes(),
    );
    assert_eq!(codes(&responses(&mut ep)), [491]);
    let ack491 = in_dialog("ACK", 3, &tag, "cid1", "", "").replace("z9hG4bKACK3", "z9hG4bKINVITE3");
    ep.handle_datagram(t0, caller(), ack491.as_bytes());
    ep.answer_reoffer(t0, call, Ok(b"v=0\r\n".to_vec()));
    let rs = responses(&mut ep);
    assert_eq!(codes(&rs), [200]);
    assert_eq!(rs[0].cseq(), Some((2, Method::Invite)));
    ep.handle_datagram(
        t0,
        caller(),
        in_dialog("ACK", 2, &tag, "cid1", "", "").as_bytes(),
    );
    assert!(
        events(&mut ep).is_empty(),
        "re-INVITE ACK is not a new confirmation"
    );
    assert!(drain(&mut ep, t0).is_empty());
}

#[test]
fn hangup_sends_bye_in_the_dialog_and_stops_on_200() {
    let mut ep = ep();
    let t0 = Instant::now();
    let (call, tag) = established(&mut ep, t0);
    ep.hangup(t0, call);
    let msgs = sent(&mut ep);
    let [Message::Request(bye)] = msgs.as_slice() else {
        panic!("{msgs:?}")
    };
    assert_eq!(bye.method, Method::Bye);
    assert_eq!(bye.uri, format!("sip:ann@{CALLER}"));
    assert_eq!(bye.from().unwrap().tag(), Some(tag.as_str()));
    assert_eq!(bye.to().unwrap().tag(), Some("ft"));
    assert_eq!(bye.call_id(), "cid1");
    assert_eq!(ep.active_calls(), 0);
    assert_eq!(ep.awaiting_answers(), 1);
    // The caller answers 200: no retransmission of the BYE follows.
    let mut ok = Response::to_request(bye, 200, "OK", None);
    ok.headers.push("Content-Length", "0");
    ep.handle_datagram(t0 + Duration::from_millis(3), caller(), &ok.to_bytes());
    // The BYE's transaction stays for Timer K (and the INVITE's for Timer L), but
    // nothing is awaited any more.
    assert_eq!((ep.transactions(), ep.awaiting_answers()), (2, 0));
    assert!(drain(&mut ep, t0).is_empty());
    assert_eq!(ep.transactions(), 0);
}

#[test]
fn behind_a_record_routing_proxy_the_route_set_is_returned_and_used() {
    let mut ep = ep();
    let t0 = Instant::now();
    let inv = invite("z9hG4bK1", "cid1").replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 69\r\nRecord-Route: <sip:10.0.0.1;lr;ftag=ft>\r\nRecord-Route: <sip:10.0.0.2;lr>\r\n",
    );
    ep.handle_datagram(t0, caller(), inv.as_bytes());
    let SipEvent::Incoming(inc) = events(&mut ep).remove(0) else {
        panic!()
    };
    ep.answer(t0, inc.call, b"v=0\r\n".to_vec());
    let rs = responses(&mut ep);
    assert_eq!(codes(&rs), [100, 200]);
    // The 200 carries the route set in order (RFC 3261 12.1.1); the 100 does not need it.
    assert_eq!(
        rs[1].headers.list("Record-Route"),
        ["<sip:10.0.0.1;lr;ftag=ft>", "<sip:10.0.0.2;lr>"]
    );
    let tag = NameAddr::parse(rs[1].headers.get("To").unwrap())
        .unwrap()
        .tag()
        .unwrap()
        .to_string();
    ep.handle_datagram(
        t0,
        caller(),
        in_dialog("ACK", 1, &tag, "cid1", "", "").as_bytes(),
    );
    // Our BYE goes through the proxies, first one first.
    ep.hangup(t0, inc.call);
    let msgs = sent(&mut ep);
    let [Message::Request(bye)] = msgs.as_slice() else {
        panic!("{msgs:?}")
    };
    assert_eq!(
        bye.headers.list("Route"),
        ["<sip:10.0.0.1;lr;ftag=ft>", "<sip:10.0.0.2;lr>"]
    );
}

#[test]
fn hangup_before_the_ack_waits_for_it() {
    let mut ep = ep();
    let t0 = Instant::now();
    ep.handle_datagram(t0, caller(), invite("z9hG4bK1", "cid1").as_bytes());
    let SipEvent::Incoming(inc) = events(&mut ep).remove(0) else {
        panic!()
    };
    ep.answer(t0, inc.call, b"v=0\r\n".to_vec());
    let tag = NameAddr::parse(responses(&mut ep)[1].headers.get("To").unwrap())
        .unwrap()
        .tag()
        .unwrap()
        .to_string();
    ep.hangup(t0, inc.call);
    assert!(sent(&mut ep).is_empty(), "no BYE before the ACK");
    ep.handle_datagram(
        t0,
        caller(),
        in_dialog("ACK", 1, &tag, "cid1", "", "").as_bytes(),
    );
    let msgs = sent(&mut ep);
    assert!(matches!(msgs.as_slice(), [Message::Request(r)] if r.method == Method::Bye));
    assert!(
        events(&mut ep).is_empty(),
        "the driver asked for it: no Ended event"
    );
}

#[test]
fn reject_sends_the_final_status_with_retry_after() {
    let mut ep = ep();
    let t0 = Instant::now();
    ep.handle_datagram(t0, caller(), invite("z9hG4bK1", "cid1").as_bytes());
    let SipEvent::Incoming(inc) = events(&mut ep).remove(0) else {
        panic!()
    };
    responses(&mut ep);
    ep.reject(t0, inc.call, 503, Some(5));
    let rs = responses(&mut ep);
    assert_eq!(codes(&rs), [503]);
    assert_eq!(rs[0].headers.get("Retry-After"), Some("5"));
    assert_eq!(ep.active_calls(), 0);
    // Without an ACK the 503 is retransmitted (Timer G) until Timer H.
    let again = drain(&mut ep, t0);
    assert!(again.len() >= 5, "{}", again.len());
    assert_eq!(ep.transactions(), 0);
}

/// Mutated copies of real requests (bytes flipped, cut, duplicated) never panic the
/// endpoint, and it stays able to take a clean call afterwards.
#[test]
fn mutated_messages_never_panic_the_endpoint() {
    let mut ep = ep();
    let t0 = Instant::now();
    let seeds = [
        invite("z9hG4bK1", "m1"),
        in_dialog("BYE", 2, "x", "m1", "", ""),
        in_dialog(
            "INFO",
            3,
            "x",
            "m1",
            "Content-Type: application/dtmf-relay\r\n",
            "Signal=5\r\n",
        ),
        in_dialog(
            "INVITE",
            4,
            "x",
            "m1",
            "Content-Type: application/sdp\r\n",
            "v=0\r\n",
        ),
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..20_000u32 {
        let mut m = seeds[i as usize % seeds.len()].as_bytes().to_vec();
        for _ in 0..(rnd() % 8) {
            let pos = (rnd() as usize) % m.len().max(1);
            match rnd() % 4 {
                0 => m[pos] = rnd() as u8,
                1 => m.truncate(pos),
                2 => m.insert(pos, b"\r\n:;,<>\"= "[(rnd() % 10) as usize]),
                _ => {
                    let end = (pos + (rnd() as usize % 16)).min(m.len());
                    let chunk = m[pos..end].to_vec();
                    m.splice(pos..pos, chunk);
                }
            }
            if m.is_empty() {
                break;
            }
        }
        let now = t0 + Duration::from_millis(i as u64);
        ep.handle_datagram(now, caller(), &m);
        while ep.poll_transmit().is_some() {}
        while let Some(ev) = ep.poll_event() {
            if let SipEvent::Incoming(inc) = ev {
                ep.reject(now, inc.call, 486, None);
            }
        }
        if let Some(at) = ep.poll_timeout()
            && at <= now
        {
            ep.handle_timeout(now);
        }
    }
    let later = t0 + Duration::from_secs(100);
    ep.handle_timeout(later);
    ep.handle_datagram(later, caller(), invite("z9hG4bKclean", "clean").as_bytes());
    assert!(
        events(&mut ep)
            .iter()
            .any(|e| matches!(e, SipEvent::Incoming(_)))
    );
}

#[test]
fn refer_transfers_in_the_dialog_and_reports_the_answer() {
    let mut ep = ep();
    let t0 = Instant::now();
    let (call, tag) = established(&mut ep, t0);
    ep.refer(
        t0,
        call,
        "sip:agents@10.0.0.9?X-Escalation-Id=e1",
        vec![("X-Escalation-Id".into(), "e1".into())],
    );
    let msgs = sent(&mut ep);
    let [Message::Request(refer)] = msgs.as_slice() else {
        panic!("{msgs:?}")
    };
    assert_eq!(refer.method, Method::Refer);
    assert_eq!(
        refer.headers.get("Refer-To"),
        Some("<sip:agents@10.0.0.9?X-Escalation-Id=e1>")
    );
    assert_eq!(refer.headers.get("X-Escalation-Id"), Some("e1"));
    assert_eq!(refer.from().unwrap().tag(), Some(tag.as_str()));
    let accepted = Response::to_request(refer, 202, "Accepted", None);
    ep.handle_datagram(t0, caller(), &accepted.to_bytes());
    assert!(matches!(
        events(&mut ep).as_slice(),
        [SipEvent::ReferResult { code: 202, .. }]
    ));
    // The transfer's progress NOTIFY is acknowledged.
    let notify = in_dialog(
        "NOTIFY",
        2,
        &tag,
        "cid1",
        "Event: refer\r\nContent-Type: message/sipfrag\r\n",
        "SIP/2.0 200 OK",
    );
    ep.handle_datagram(t0, caller(), notify.as_bytes());
    assert_eq!(codes(&responses(&mut ep)), [200]);
}

#[test]
fn an_unanswered_refer_reports_a_timeout() {
    let mut ep = ep();
    let t0 = Instant::now();
    let (call, _) = established(&mut ep, t0);
    ep.refer(t0, call, "sip:agents@10.0.0.9", vec![]);
    sent(&mut ep);
    drain(&mut ep, t0);
    assert!(matches!(
        events(&mut ep).as_slice(),
        [SipEvent::ReferResult { code: 408, .. }]
    ));
}

fn gateway() -> SocketAddr {
    "127.0.0.1:5090".parse().unwrap()
}

/// The gateway's response to the INVITE we sent.
fn answer_invite(invite: &Request, code: u16, tag: &str, body: &str) -> Vec<u8> {
    let mut r = Response::to_request(invite, code, reason_phrase(code), Some(tag));
    if code == 200 {
        r.headers.push("Contact", "<sip:gw@127.0.0.1:5090>");
        r.headers.push("Content-Type", "application/sdp");
        r.body = body.as_bytes().to_vec();
    }
    r.to_bytes()
}

fn placed(ep: &mut Endpoint, t0: Instant) -> (CallHandle, Request) {
    let call = ep.invite(
        t0,
        gateway(),
        "sip:+447911123456@127.0.0.1:5090",
        "+12015550100",
        b"v=0\r\n".to_vec(),
    );
    let Some(Message::Request(inv)) = ep
        .poll_transmit()
        .map(|t| Message::parse(&t.payload).unwrap())
    else {
        panic!()
    };
    (call, inv)
}

#[test]
fn a_placed_call_rings_answers_and_is_acknowledged() {
    let mut ep = ep();
    let t0 = Instant::now();
    let (call, inv) = placed(&mut ep, t0);
    assert_eq!(inv.method, Method::Invite);
    assert_eq!(inv.uri, "sip:+447911123456@127.0.0.1:5090");
    assert!(inv.from().unwrap().tag().is_some());
    ep.handle_datagram(t0, gateway(), &answer_invite(&inv, 180, "gw1", ""));
    assert!(matches!(
        events(&mut ep).as_slice(),
        [SipEvent::Outbound {
            code: 180,
            sdp: None,
            ..
        }]
    ));
    assert_eq!(
        ep.poll_timeout(),
        None,
        "no INVITE retransmission while ringing"
    );
    let ok = answer_invite(&inv, 200, "gw1", "v=0\r\n");
    ep.handle_datagram(t0, gateway(), &ok);
    match events(&mut ep).as_slice() {
        [
            SipEvent::Outbound {
                code: 200,
                sdp: Some(sdp),
                call: c,
            },
        ] => {
            assert_eq!(*c, call);
            assert_eq!(sdp, b"v=0\r\n");
        }
        e => panic!("{e:?}"),
    }
    let msgs = sent(&mut ep);
    let [Message::Request(ack)] = msgs.as_slice() else {
        panic!("{msgs:?}")
    };
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(
        ack.uri, "sip:gw@127.0.0.1:5090",
        "to the Contact of the 2xx"
    );
    assert_eq!(ack.to().unwrap().tag(), Some("gw1"));
    assert_eq!(ack.cseq(), Some((1, Method::Ack)));
    ep.handle_datagram(t0, gateway(), &ok);
    assert!(
        matches!(sent(&mut ep).as_slice(), [Message::Request(r)] if r.method == Method::Ack),
        "2xx retransmission re-ACKed"
    );
    assert!(events(&mut ep).is_empty());
    // Hanging up sends BYE in the dialog.
    ep.hangup(t0, call);
    let msgs = sent(&mut ep);
    assert!(
        matches!(msgs.as_slice(), [Message::Request(r)] if r.method == Method::Bye && r.to().unwrap().tag() == Some("gw1"))
    );
}

#[test]
fn a_busy_callee_is_acknowledged_on_the_same_branch() {
    let mut ep = ep();
    let t0 = Instant::now();
    let (_, inv) = placed(&mut ep, t0);
    assert_eq!(ep.awaiting_answers(), 1);
    ep.handle_datagram(t0, gateway(), &answer_invite(&inv, 486, "gw2", ""));
    assert!(matches!(
        events(&mut ep).as_slice(),
        [SipEvent::Outbound { code: 486, .. }]
    ));
    // Timer D keeps the transaction to re-ACK a retransmitted 486; nothing is awaited.
    assert_eq!((ep.transactions(), ep.awaiting_answers()), (1, 0));
    let msgs = sent(&mut ep);
    let [Message::Request(ack)] = msgs.as_slice() else {
        panic!("{msgs:?}")
    };
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(
        ack.top_via().unwrap().branch(),
        inv.top_via().unwrap().branch()
    );
    assert_eq!(ep.active_calls(), 0);
    drain(&mut ep, t0);
    assert_eq!(ep.transactions(), 0);
}

#[test]
fn an_unanswered_call_is_cancelled_or_times_out() {
    let mut ep = ep();
    let t0 = Instant::now();
    let (call, inv) = placed(&mut ep, t0);
    ep.handle_datagram(t0, gateway(), &answer_invite(&inv, 180, "gw3", ""));
    events(&mut ep);
    ep.hangup(t0, call);
    let msgs = sent(&mut ep);
    let [Message::Request(cancel)] = msgs.as_slice() else {
        panic!("{msgs:?}")
    };
    assert_eq!(cancel.method, Method::Cancel);
    assert_eq!(
        cancel.top_via().unwrap().branch(),
        inv.top_via().unwrap().branch()
    );
    // Nobody answers a second call at all: Timer B reports 408.
    let (_, _) = placed(&mut ep, t0);
    let mut out = vec![];
    while let Some(at) = ep.poll_timeout() {
        ep.handle_timeout(at);
        out.extend(events(&mut ep));
        sent(&mut ep);
    }
    assert!(
        out.iter()
            .any(|e| matches!(e, SipEvent::Outbound { code: 408, .. })),
        "{out:?}"
    );
}
