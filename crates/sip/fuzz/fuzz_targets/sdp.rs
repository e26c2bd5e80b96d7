//! An SDP offer: negotiation never panics, and the answer we write for anything we accept is
//! one we accept ourselves, with the same codec.
#![no_main]

use libfuzzer_sys::fuzz_target;
use topup_media::g711::Codec;
use topup_sip::sdp;

fuzz_target!(|data: &[u8]| {
    if let Ok(n) = sdp::negotiate(data, &Codec::ALL) {
        let answer = sdp::write_answer(&n, "127.0.0.1".parse().unwrap(), 20000, 1, 1);
        let back = sdp::negotiate(&answer, &Codec::ALL).expect("our own answer parses");
        assert_eq!(back.codec, n.codec);
        assert_eq!(back.telephone_event, n.telephone_event);
    }
});
