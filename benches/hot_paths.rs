//! Micro-benchmarks of the per-packet and per-operation hot paths (`cargo bench`).
//! Figures and the machine they were taken on are in BENCHMARKS.md.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use topup_ivr::call::{CallSession, MediaParams, Output};
use topup_ivr::dialplan::interpreter::{CallEvent, Interpreter};
use topup_ivr::dialplan::model::Dialplan;
use topup_ivr::media::dtmf::Digit;
use topup_ivr::media::dtmf::inband::InbandDetector;
use topup_ivr::media::dtmf::rfc4733::{EventPayload, Rfc4733Receiver};
use topup_ivr::media::g711::Codec;
use topup_ivr::media::prompts::{LoadOptions, PromptStore};
use topup_ivr::telephony::sip::message::Message;
use topup_ivr::topup::ledger::{AccountKind, Model, TransferSpec};
use topup_ivr::topup::money::{Currency, Money};

const INVITE: &str = "INVITE sip:recharge@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-524287-1---1a2b3c4d;rport\r\n\
Max-Forwards: 70\r\n\
Contact: <sip:alice@127.0.0.1:5061>\r\n\
To: <sip:recharge@127.0.0.1:5060>\r\n\
From: \"Alice\" <sip:+12015550100@127.0.0.1:5061>;tag=9fxced76sl\r\n\
Call-ID: 3848276298220188511@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO\r\n\
Content-Type: application/sdp\r\n\
User-Agent: bench\r\n\
Content-Length:   206\r\n\r\n\
v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n";

/// 20 ms of a voice-like signal (two formant-ish partials): what the detector sees most.
fn speechy_frame(n: usize) -> Vec<i16> {
    (0..160)
        .map(|i| {
            let t = (n * 160 + i) as f32 / 8000.0;
            (3000.0 * (t * 310.0 * std::f32::consts::TAU).sin()
                + 1500.0 * (t * 1130.0 * std::f32::consts::TAU).sin()) as i16
        })
        .collect()
}

fn g711(c: &mut Criterion) {
    let mut g = c.benchmark_group("g711");
    g.throughput(Throughput::Elements(160));
    let pcm = speechy_frame(0);
    let mut out = [0u8; 160];
    g.bench_function("mulaw encode 20 ms", |b| {
        b.iter(|| Codec::Pcmu.encode(black_box(&pcm), &mut out))
    });
    let mut back = [0i16; 160];
    g.bench_function("mulaw decode 20 ms", |b| {
        b.iter(|| Codec::Pcmu.decode(black_box(&out), &mut back))
    });
    g.finish();
}

fn inband(c: &mut Criterion) {
    let frames: Vec<Vec<i16>> = (0..50).map(speechy_frame).collect();
    let mut det = InbandDetector::new();
    let mut found = vec![];
    let mut i = 0;
    c.bench_function("goertzel detector per 20 ms frame", |b| {
        b.iter(|| {
            det.handle_pcm(black_box(&frames[i % frames.len()]), &mut found);
            found.clear();
            i += 1;
        })
    });
}

fn rfc4733(c: &mut Criterion) {
    let mut payload = [0u8; 4];
    EventPayload {
        event: 5,
        end: false,
        volume: 10,
        duration: 480,
    }
    .write(&mut payload);
    c.bench_function("rfc4733 payload parse", |b| {
        b.iter(|| EventPayload::parse(black_box(&payload)).unwrap())
    });
    // A whole key press as a receiver sees it: 5 packets and 3 end packets.
    let press: Vec<[u8; 4]> = (0..8u16)
        .map(|k| {
            let mut p = [0u8; 4];
            EventPayload {
                event: 5,
                end: k >= 5,
                volume: 10,
                duration: (k.min(4) + 1) * 160,
            }
            .write(&mut p);
            p
        })
        .collect();
    let mut rx = Rfc4733Receiver::new();
    let mut ts = 0u32;
    c.bench_function("rfc4733 receiver, one key press (8 packets)", |b| {
        b.iter(|| {
            ts = ts.wrapping_add(1600);
            for p in &press {
                black_box(rx.handle_packet(7, ts, p).unwrap());
            }
        })
    });
}

fn sip(c: &mut Criterion) {
    let bytes = INVITE.as_bytes();
    c.bench_function("sip parse INVITE with SDP", |b| {
        b.iter(|| Message::parse(black_box(bytes)).unwrap())
    });
}

fn echo_plan() -> Arc<Dialplan> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dialplans/echo.toml");
    Arc::new(
        Dialplan::load(&path, &topup_ivr::dialplan::Catalog::EVERY_PROMPT)
            .expect("the shipped echo plan"),
    )
}

fn interpreter(c: &mut Criterion) {
    let plan = echo_plan();
    let mut interp = Interpreter::new(plan);
    let t0 = Instant::now();
    interp.start(t0);
    while interp.poll_action().is_some() {}
    interp.handle_event(t0, CallEvent::PromptDone);
    while interp.poll_action().is_some() {}
    let five = Digit::from_char('5').unwrap();
    let mut n = 0u32;
    c.bench_function("interpreter: key, read-back, prompt done", |b| {
        b.iter(|| {
            n += 1;
            let now = t0 + Duration::from_millis(n as u64);
            interp.handle_event(now, CallEvent::Digit(five));
            while let Some(a) = interp.poll_action() {
                black_box(a);
            }
            interp.handle_event(now, CallEvent::PromptDone);
            while let Some(a) = interp.poll_action() {
                black_box(a);
            }
        })
    });
}

fn ledger(c: &mut Criterion) {
    let usd = Currency::new("USD").unwrap();
    let mut m = Model::default();
    m.open("wallet:+1", usd, AccountKind::Wallet);
    m.open("carrier:x:USD", usd, AccountKind::Carrier);
    m.open("funding:+1", usd, AccountKind::Funding);
    m.transfer(&TransferSpec {
        id: "fund".into(),
        debit: "funding:+1".into(),
        credit: "wallet:+1".into(),
        amount: Money::new(i64::MAX / 4, usd),
        kind: "fund".into(),
        pending: false,
    })
    .unwrap();
    let mut n = 0u64;
    c.bench_function("ledger rules: pending transfer then post", |b| {
        b.iter(|| {
            n += 1;
            let id = format!("t{n}");
            m.transfer(&TransferSpec {
                id: id.clone(),
                debit: "wallet:+1".into(),
                credit: "carrier:x:USD".into(),
                amount: Money::new(500, usd),
                kind: "topup".into(),
                pending: true,
            })
            .unwrap();
            m.post(&id).unwrap();
        })
    });
}

fn call_frame(c: &mut Criterion) {
    let store = Arc::new(
        PromptStore::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts"),
            LoadOptions::default(),
        )
        .expect("the shipped prompts"),
    );
    let media = MediaParams {
        codec: Codec::Pcmu,
        payload: Default::default(),
        lead: Default::default(),
        telephone_event: Some(101),
        inband: false,
        send: true,
    };
    let mut s = CallSession::new(echo_plan(), store, media, 1, 0, 0);
    let t0 = Instant::now();
    s.start(t0);
    let mut rtp = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    rtp.extend([0xFFu8; 160]);
    let mut n = 0u32;
    c.bench_function("call session: one RTP frame in, one out", |b| {
        b.iter(|| {
            n += 1;
            let now = t0 + Duration::from_millis(20 * n as u64);
            rtp[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            rtp[4..8].copy_from_slice(&(n * 160).to_be_bytes());
            s.handle_rtp(now, &rtp);
            while let Output::Transmit(p) = s.poll_output(now) {
                black_box(p.len());
            }
            s.handle_timeout(now);
        })
    });
    let media = MediaParams {
        inband: true,
        ..media
    };
    let store = Arc::new(PromptStore::default());
    let mut s = CallSession::new(echo_plan(), store, media, 1, 0, 0);
    s.start(t0);
    let mut n = 0u32;
    c.bench_function("call session: frame in with in-band DTMF on", |b| {
        b.iter(|| {
            n += 1;
            let now = t0 + Duration::from_millis(20 * n as u64);
            rtp[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            s.handle_rtp(now, &rtp);
        })
    });
}

criterion_group!(
    benches,
    g711,
    inband,
    rfc4733,
    sip,
    interpreter,
    ledger,
    call_frame
);
criterion_main!(benches);
