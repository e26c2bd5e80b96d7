//! A configuration file: loading never panics, and an error names a key, or (broken TOML)
//! the line and column of the mistake.
#![no_main]

use libfuzzer_sys::fuzz_target;
use topup_ivr::config::{Config, Overrides};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::from_toml("fuzz.toml", text, &Overrides::default()) {
        assert!(
            !e.key.is_empty() || e.origin.starts_with("fuzz.toml:"),
            "{e}"
        );
    }
});
