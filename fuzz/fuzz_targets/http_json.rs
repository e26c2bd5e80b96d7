//! A request body of the top-up API: the strict JSON reader never panics, and every refusal
//! is a message a client can read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use topup_ivr::http::api::check_bodies;

fuzz_target!(|data: &[u8]| {
    for r in check_bodies(data) {
        if let Err(message) = r {
            assert!(!message.is_empty());
        }
    }
});
