//! Incoming SMS text: any data coding, esm_class and bytes decode without panicking, and
//! joining parts stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use topup_smpp::text::{Coding, Reassembler, decode, encode};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (dcs, esm, body) = (data[0], data[1], &data[2..]);
    let t0 = std::time::Instant::now();
    let mut r = Reassembler::new(std::time::Duration::from_secs(60), 8);
    for (i, part) in body.chunks(40).enumerate() {
        let d = decode(dcs, esm, part);
        let _ = r.handle_part(t0 + std::time::Duration::from_millis(i as u64), "+1", d);
        assert!(r.pending() <= 8);
    }
    // What we send round-trips through what we receive.
    let text = String::from_utf8_lossy(body);
    // (GSM goes unpacked, one septet per octet: 160 of them; UCS-2 140 octets.)
    if let Ok(e) = encode(&text, 7) {
        let max = match e.coding {
            Coding::Gsm7 => 160,
            _ => 140,
        };
        for p in &e.parts {
            assert!(
                p.len() <= max,
                "{} octets in a {:?} part",
                p.len(),
                e.coding
            );
        }
    }
});
