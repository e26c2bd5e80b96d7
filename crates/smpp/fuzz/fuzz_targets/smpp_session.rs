//! The SMPP session fed anything an SMSC could send once bound: never panics, and everything
//! it sends is a whole PDU whose length prefix is its length.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use topup_smpp::session::{Session, SessionConfig};

fn bound(t0: Instant) -> Session {
    let mut s = Session::new(
        SessionConfig {
            system_id: "topup".into(),
            password: "secret".into(),
            ..SessionConfig::default()
        },
        t0,
    );
    let bind = s.poll_transmit().expect("a bind goes out");
    let seq = &bind[12..16];
    let mut resp = vec![0, 0, 0, 21, 0x80, 0, 0, 0x09, 0, 0, 0, 0];
    resp.extend_from_slice(seq);
    resp.extend_from_slice(b"smsc\0");
    s.handle_input(t0, &resp);
    s
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut s = bound(t0);
    // The first byte picks how the bytes are split into reads.
    let (step, rest) = match data.split_first() {
        Some((b, rest)) => ((*b as usize % 64) + 1, rest),
        None => (1, data),
    };
    let mut now = t0 + Duration::from_millis(1);
    for chunk in rest.chunks(step) {
        s.handle_input(now, chunk);
        now += Duration::from_millis(7);
        s.handle_timeout(now);
        while let Some(out) = s.poll_transmit() {
            assert!(out.len() >= 16);
            let len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
            assert_eq!(len, out.len());
        }
        while s.poll_event().is_some() {}
    }
});
