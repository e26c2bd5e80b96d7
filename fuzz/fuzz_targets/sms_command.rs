//! The SMS command parser with the shipped keywords: never panics, and a PIN it found never
//! survives into the copy that is logged and stored.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use topup_ivr::sms::commands::{Command, Keywords, parse};
use topup_ivr::sms::messages::Messages;

fn keywords() -> &'static Keywords {
    static K: OnceLock<Keywords> = OnceLock::new();
    K.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sms");
        let m = Messages::load_dir(&dir, "en").expect("the shipped SMS files load");
        Keywords::new(m.keywords())
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = parse(&text, keywords());
    // (PIN, sender's words)
    let (pin, message) = match &parsed.command {
        Ok(Command::TopupCard { card, message, .. }) => (card.expose(), message.as_deref()),
        Ok(Command::TopupWallet { pin, message, .. }) => (pin.expose(), message.as_deref()),
        Ok(Command::TopupSelf { pin, .. }) => (pin.expose(), None),
        Ok(Command::Balance { pin }) => (pin.expose(), None),
        Ok(Command::Recharge { card }) => (card.expose(), None),
        _ => return,
    };
    // The recipient never reads the PIN in the sender's words.
    if let Some(m) = message {
        assert!(!m.contains(pin), "PIN forwarded in {m:?}");
    }
    // The logged copy never shows it as a word (only, by coincidence, inside a longer group
    // of the amount or the number as written, e.g. PIN 1234 in 5512345678).
    assert!(
        !parsed.redacted.split_whitespace().any(|w| w == pin),
        "PIN left in {:?}",
        parsed.redacted
    );
});
