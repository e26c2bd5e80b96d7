//! The session against scripted SMSC bytes, on a simulated clock.

use super::*;
use rusmpp::CommandId;
use rusmpp::pdus::{BindTransceiverResp, DeliverSm, SubmitSmResp};
use rusmpp::tlvs::MessageDeliveryRequestTlvValue;
use rusmpp::values::MessageState;
use std::sync::LazyLock;

/// The simulated clock's start; `at(ms)` is `ms` milliseconds after it.
static T0: LazyLock<Instant> = LazyLock::new(Instant::now);

fn at(ms: i64) -> Instant {
    *T0 + Duration::from_millis(ms as u64)
}

fn cfg() -> SessionConfig {
    SessionConfig {
        system_id: "topup".into(),
        password: "secret".into(),
        window: 2,
        ..SessionConfig::default()
    }
}

/// What the session sent, decoded as the SMSC would.
fn sent(s: &mut Session) -> Vec<Command> {
    let mut out = vec![];
    while let Some(b) = s.poll_transmit() {
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        assert_eq!(len, b.len(), "length prefix");
        let mut body = BytesMut::from(&b[4..]);
        out.push(Command::decode(&mut body, len - 4).unwrap().0);
    }
    out
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn resp(seq: u32, st: CommandStatus, pdu: impl Into<Pdu>) -> Vec<u8> {
    encode(&Command::new(st, seq, pdu))
}

fn bound(now: i64) -> Session {
    let mut s = Session::new(cfg(), at(now));
    let bind = sent(&mut s);
    s.handle_input(
        at(now),
        &resp(
            bind[0].sequence_number(),
            CommandStatus::EsmeRok,
            BindTransceiverResp::builder()
                .system_id(COctetString::from_str("smsc").unwrap())
                .build(),
        ),
    );
    assert_eq!(events(&mut s), vec![Event::Bound]);
    s
}

fn msg(to: &str) -> Submit {
    Submit {
        source: "RECHARGE".into(),
        destination: to.into(),
        esm_class: 0,
        data_coding: 0,
        short_message: b"hello".to_vec(),
        receipt: true,
    }
}

fn accept(s: &mut Session, now: i64, c: &Command, id: &str) {
    s.handle_input(
        at(now),
        &resp(
            c.sequence_number(),
            CommandStatus::EsmeRok,
            SubmitSmResp::builder()
                .message_id(COctetString::from_str(id).unwrap())
                .build(),
        ),
    );
}

#[test]
fn binds_as_a_transceiver_with_the_configured_credentials() {
    let mut s = Session::new(cfg(), at(0));
    let c = sent(&mut s);
    assert_eq!(c.len(), 1);
    let Some(Pdu::BindTransceiver(b)) = c[0].pdu() else {
        panic!("{c:?}")
    };
    assert_eq!(b.system_id.as_str(), "topup");
    assert_eq!(b.password.as_str(), "secret");
    assert_eq!(u8::from(b.interface_version), 0x34);
    assert_eq!(s.state(), State::Binding);
    assert_eq!(s.capacity(), 0, "nothing is taken before the bind");
}

#[test]
fn a_refused_bind_names_the_reason_and_closes() {
    let mut s = Session::new(cfg(), at(0));
    let c = sent(&mut s);
    s.handle_input(
        at(5),
        &resp(
            c[0].sequence_number(),
            CommandStatus::EsmeRinvpaswd,
            BindTransceiverResp::default(),
        ),
    );
    let ev = events(&mut s);
    assert_eq!(
        ev[0],
        Event::BindRefused {
            status: CommandStatus::EsmeRinvpaswd
        }
    );
    let Event::Closed { reason } = &ev[1] else {
        panic!("{ev:?}")
    };
    assert!(reason.contains("ESME_RINVPASWD"), "{reason}");
    assert_eq!(s.state(), State::Closed);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_bind_that_is_never_answered_times_out() {
    let mut s = Session::new(cfg(), at(0));
    sent(&mut s);
    assert_eq!(s.poll_timeout(), Some(at(10_000)));
    s.handle_timeout(at(9_999));
    assert!(events(&mut s).is_empty());
    s.handle_timeout(at(10_000));
    let ev = events(&mut s);
    assert!(
        matches!(&ev[..], [Event::Closed { reason }] if reason.contains("bind_transceiver")),
        "{ev:?}"
    );
}

#[test]
fn submissions_respect_the_window_and_keep_their_order() {
    let mut s = bound(0);
    assert_eq!(s.capacity(), 2);
    s.submit(at(1), 10, msg("+525512345678"));
    s.submit(at(1), 11, msg("+525512345679"));
    s.submit(at(1), 12, msg("+525512345670"));
    let c = sent(&mut s);
    assert_eq!(c.len(), 2, "window of two");
    let Some(Pdu::SubmitSm(first)) = c[0].pdu() else {
        panic!()
    };
    assert_eq!(first.destination_addr.as_str(), "525512345678");
    assert_eq!(u8::from(first.dest_addr_ton), 1, "international");
    assert_eq!(u8::from(first.source_addr_ton), 5, "alphanumeric sender");
    assert_eq!(u8::from(first.esm_class), 0x00);
    assert_eq!(u8::from(first.registered_delivery), 1);
    assert_eq!(first.short_message().as_ref(), b"hello");
    // Answers may come in any order.
    accept(&mut s, 2, &c[1], "m-11");
    let c2 = sent(&mut s);
    assert_eq!(c2.len(), 1, "room for the third");
    accept(&mut s, 3, &c[0], "m-10");
    accept(&mut s, 3, &c2[0], "m-12");
    assert_eq!(
        events(&mut s),
        vec![
            Event::Accepted {
                id: 11,
                message_id: "m-11".into()
            },
            Event::Accepted {
                id: 10,
                message_id: "m-10".into()
            },
            Event::Accepted {
                id: 12,
                message_id: "m-12".into()
            },
        ]
    );
}

#[test]
fn the_udhi_bit_goes_out_as_given() {
    let mut s = bound(0);
    s.submit(
        at(0),
        1,
        Submit {
            esm_class: 0x40,
            data_coding: 8,
            ..msg("+84912345678")
        },
    );
    let c = sent(&mut s);
    let Some(Pdu::SubmitSm(m)) = c[0].pdu() else {
        panic!()
    };
    assert_eq!(u8::from(m.esm_class), 0x40);
    assert_eq!(u8::from(m.data_coding), 8);
}

#[test]
fn throttling_pauses_with_a_growing_backoff_and_resends_the_same_message() {
    let mut s = bound(0);
    s.submit(at(0), 7, msg("+525512345678"));
    let c = sent(&mut s);
    s.handle_input(
        at(100),
        &resp(
            c[0].sequence_number(),
            CommandStatus::EsmeRthrottled,
            SubmitSmResp::default(),
        ),
    );
    assert_eq!(
        events(&mut s),
        vec![Event::Throttled {
            status: CommandStatus::EsmeRthrottled,
            resume_at: at(1_100)
        }]
    );
    assert!(sent(&mut s).is_empty(), "paused");
    assert_eq!(s.poll_timeout(), Some(at(1_100)));
    s.handle_timeout(at(1_099));
    assert!(sent(&mut s).is_empty());
    s.handle_timeout(at(1_100));
    let again = sent(&mut s);
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].sequence_number(), c[0].sequence_number());
    // Queue full: the pause doubles.
    s.handle_input(
        at(1_200),
        &resp(
            again[0].sequence_number(),
            CommandStatus::EsmeRmsgqful,
            SubmitSmResp::default(),
        ),
    );
    assert_eq!(
        events(&mut s),
        vec![Event::Throttled {
            status: CommandStatus::EsmeRmsgqful,
            resume_at: at(3_200)
        }]
    );
    s.handle_timeout(at(3_200));
    let third = sent(&mut s);
    accept(&mut s, 3_300, &third[0], "ok-7");
    assert_eq!(
        events(&mut s),
        vec![Event::Accepted {
            id: 7,
            message_id: "ok-7".into()
        }]
    );
    // After a success the next throttle starts small again.
    s.submit(at(3_400), 8, msg("+525512345678"));
    let c = sent(&mut s);
    s.handle_input(
        at(3_500),
        &resp(
            c[0].sequence_number(),
            CommandStatus::EsmeRthrottled,
            SubmitSmResp::default(),
        ),
    );
    assert!(matches!(
        events(&mut s)[..],
        [Event::Throttled { resume_at, .. }] if resume_at == at(4_500)
    ));
}

#[test]
fn other_refusals_are_reported_per_message() {
    let mut s = bound(0);
    s.submit(at(0), 3, msg("+525512345678"));
    let c = sent(&mut s);
    s.handle_input(
        at(5),
        &resp(
            c[0].sequence_number(),
            CommandStatus::EsmeRinvdstadr,
            SubmitSmResp::default(),
        ),
    );
    assert_eq!(
        events(&mut s),
        vec![Event::Refused {
            id: 3,
            status: CommandStatus::EsmeRinvdstadr
        }]
    );
    assert!(!is_temporary(CommandStatus::EsmeRinvdstadr));
    assert!(is_temporary(CommandStatus::EsmeRsyserr));
}

#[test]
fn an_idle_line_is_probed_and_a_dead_one_closed_with_its_messages_unsent() {
    let mut s = bound(0);
    assert_eq!(s.poll_timeout(), Some(at(30_000)));
    s.handle_timeout(at(30_000));
    let c = sent(&mut s);
    assert_eq!(c[0].id(), CommandId::EnquireLink);
    s.submit(at(30_001), 1, msg("+525512345678"));
    s.submit(at(30_001), 2, msg("+525512345678"));
    s.submit(at(30_001), 3, msg("+525512345678"));
    sent(&mut s);
    s.handle_timeout(at(40_000));
    let ev = events(&mut s);
    assert_eq!(
        ev[..3],
        [
            Event::Unsent { id: 1 },
            Event::Unsent { id: 2 },
            Event::Unsent { id: 3 }
        ]
    );
    assert!(
        matches!(&ev[3], Event::Closed { reason } if reason.contains("enquire_link")),
        "{ev:?}"
    );
}

#[test]
fn an_answered_probe_keeps_the_session() {
    let mut s = bound(0);
    s.handle_timeout(at(30_000));
    let c = sent(&mut s);
    s.handle_input(
        at(30_010),
        &resp(
            c[0].sequence_number(),
            CommandStatus::EsmeRok,
            Pdu::EnquireLinkResp,
        ),
    );
    s.handle_timeout(at(50_000));
    assert!(events(&mut s).is_empty());
    assert_eq!(s.state(), State::Bound);
    assert_eq!(s.poll_timeout(), Some(at(60_010)));
}

#[test]
fn the_smscs_enquire_link_and_unbind_are_answered() {
    let mut s = bound(0);
    s.handle_input(
        at(5),
        &encode(&Command::new(CommandStatus::EsmeRok, 77, Pdu::EnquireLink)),
    );
    let c = sent(&mut s);
    assert_eq!(
        (c[0].id(), c[0].sequence_number()),
        (CommandId::EnquireLinkResp, 77)
    );
    s.submit(at(6), 1, msg("+525512345678"));
    sent(&mut s);
    s.handle_input(
        at(7),
        &encode(&Command::new(CommandStatus::EsmeRok, 78, Pdu::Unbind)),
    );
    let c = sent(&mut s);
    assert_eq!(
        (c[0].id(), c[0].sequence_number()),
        (CommandId::UnbindResp, 78)
    );
    assert_eq!(
        events(&mut s),
        vec![
            Event::Unsent { id: 1 },
            Event::Closed {
                reason: "the SMSC unbound".into()
            }
        ]
    );
}

#[test]
fn our_unbind_closes_on_its_answer() {
    let mut s = bound(0);
    s.unbind(at(1));
    assert_eq!(s.state(), State::Unbinding);
    assert_eq!(s.capacity(), 0);
    let c = sent(&mut s);
    assert_eq!(c[0].id(), CommandId::Unbind);
    s.handle_input(
        at(2),
        &resp(
            c[0].sequence_number(),
            CommandStatus::EsmeRok,
            Pdu::UnbindResp,
        ),
    );
    assert_eq!(
        events(&mut s),
        vec![Event::Closed {
            reason: "unbound".into()
        }]
    );
}

fn mo(seq: u32, text: &[u8], tlvs: Vec<MessageDeliveryRequestTlvValue>) -> Vec<u8> {
    let mut d = DeliverSm::builder()
        .source_addr_ton(Ton::International)
        .source_addr(COctetString::from_str("12015550100").unwrap())
        .destination_addr(COctetString::from_str("4242").unwrap())
        .short_message(OctetString::from_vec(text.to_vec()).unwrap())
        .build();
    d.set_tlvs(tlvs);
    encode(&Command::new(CommandStatus::EsmeRok, seq, d))
}

#[test]
fn mo_messages_and_receipts_arrive_as_events_and_are_answered_by_the_owner() {
    let mut s = bound(0);
    s.handle_input(
        at(1),
        &mo(
            900,
            b"BAL 1234",
            vec![MessageDeliveryRequestTlvValue::ReceiptedMessageId(
                COctetString::from_str("smsc-17").unwrap(),
            )],
        ),
    );
    let ev = events(&mut s);
    let [Event::Deliver(m)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!(m.seq, 900);
    assert_eq!(m.source_e164(), "+12015550100");
    assert_eq!(m.destination, "4242");
    assert_eq!(m.data, b"BAL 1234");
    assert_eq!(m.receipted_message_id.as_deref(), Some("smsc-17"));
    assert!(!m.is_receipt());
    assert!(sent(&mut s).is_empty(), "answered by the owner, later");
    s.respond(at(2), 900, CommandStatus::EsmeRok);
    let c = sent(&mut s);
    assert_eq!(
        (c[0].id(), c[0].sequence_number()),
        (CommandId::DeliverSmResp, 900)
    );
    // A receipt: esm_class 0x04 with the state TLV.
    let mut d = DeliverSm::builder()
        .esm_class(EsmClass::from(0x04))
        .source_addr(COctetString::from_str("525512345678").unwrap())
        .destination_addr(COctetString::from_str("RECHARGE").unwrap())
        .short_message(
            OctetString::from_vec(b"id:m-1 sub:001 dlvrd:001 stat:DELIVRD err:000".to_vec())
                .unwrap(),
        )
        .build();
    d.set_tlvs(vec![
        MessageDeliveryRequestTlvValue::ReceiptedMessageId(COctetString::from_str("m-1").unwrap()),
        MessageDeliveryRequestTlvValue::MessageState(MessageState::Delivered),
    ]);
    s.handle_input(
        at(3),
        &encode(&Command::new(CommandStatus::EsmeRok, 901, d)),
    );
    let ev = events(&mut s);
    let [Event::Deliver(r)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert!(r.is_receipt());
    assert_eq!(r.message_state, Some(2));
}

#[test]
fn pdus_split_across_reads_are_joined() {
    let mut s = bound(0);
    let bytes = [
        mo(1, b"HELP", vec![]),
        encode(&Command::new(CommandStatus::EsmeRok, 2, Pdu::EnquireLink)),
    ]
    .concat();
    for b in &bytes {
        s.handle_input(at(1), std::slice::from_ref(b));
    }
    assert!(matches!(events(&mut s)[..], [Event::Deliver(_)]));
    assert_eq!(sent(&mut s)[0].id(), CommandId::EnquireLinkResp);
}

#[test]
fn garbage_gets_a_generic_nack_and_the_stream_goes_on() {
    let mut s = bound(0);
    // An unknown command id.
    let mut unknown = vec![0, 0, 0, 16, 0, 0, 0x07, 0x77, 0, 0, 0, 0, 0, 0, 0, 41];
    // A deliver_sm whose body stops half-way through its fields.
    let mut broken = vec![0, 0, 0, 20, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 42];
    broken.extend_from_slice(b"\0\x01\x01X");
    unknown.append(&mut broken);
    unknown.extend_from_slice(&mo(43, b"HELP", vec![]));
    s.handle_input(at(1), &unknown);
    let c = sent(&mut s);
    assert_eq!(c.len(), 2);
    assert_eq!(
        (c[0].id(), c[0].sequence_number(), c[0].status()),
        (CommandId::GenericNack, 41, CommandStatus::EsmeRinvcmdid)
    );
    assert_eq!(
        (c[1].id(), c[1].sequence_number()),
        (CommandId::GenericNack, 42)
    );
    let ev = events(&mut s);
    assert!(
        matches!(ev.last(), Some(Event::Deliver(m)) if m.seq == 43),
        "the next PDU is still read: {ev:?}"
    );
    assert_eq!(s.state(), State::Bound);
}

#[test]
fn an_unframeable_length_ends_the_session() {
    let mut s = bound(0);
    s.handle_input(at(1), &[0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    assert_eq!(sent(&mut s)[0].id(), CommandId::GenericNack);
    assert!(matches!(
        events(&mut s)[..],
        [Event::Closed { ref reason }] if reason.contains("command_length 3")
    ));
    let mut s = bound(0);
    s.handle_input(at(1), &[0x7F, 0, 0, 0]);
    assert_eq!(s.state(), State::Closed, "2 GB PDUs are not waited for");
}

#[test]
fn an_unencodable_message_is_refused_without_reaching_the_smsc() {
    let mut s = bound(0);
    s.submit(
        at(0),
        5,
        Submit {
            short_message: vec![0; 300],
            ..msg("+525512345678")
        },
    );
    s.submit(at(0), 6, msg("+5255123456789012345678901"));
    assert!(sent(&mut s).is_empty());
    assert_eq!(
        events(&mut s),
        vec![
            Event::Refused {
                id: 5,
                status: CommandStatus::EsmeRinvmsglen
            },
            Event::Refused {
                id: 6,
                status: CommandStatus::EsmeRinvdstadr
            }
        ]
    );
}

#[test]
fn sequence_numbers_wrap_within_31_bits() {
    let mut s = bound(0);
    s.next_seq = 0x7FFF_FFFE;
    s.submit(at(0), 1, msg("+525512345678"));
    s.submit(at(0), 2, msg("+525512345678"));
    let c = sent(&mut s);
    assert_eq!(c[0].sequence_number(), 0x7FFF_FFFF);
    assert_eq!(c[1].sequence_number(), 1);
}

proptest::proptest! {
    #[test]
    fn any_bytes_from_the_smsc_never_panic(chunks in proptest::collection::vec(
        proptest::collection::vec(proptest::num::u8::ANY, 0..64), 0..8)) {
        let mut s = bound(0);
        s.submit(at(0), 1, msg("+525512345678"));
        for (i, c) in chunks.iter().enumerate() {
            s.handle_input(at(i as i64), c);
            while s.poll_transmit().is_some() {}
            while s.poll_event().is_some() {}
        }
        s.handle_timeout(at(1_000_000));
    }
}
