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
    // (PIN, the amount and recipient as written, sender's words)
    let (pin, shown, message) = match &parsed.command {
        Ok(Command::TopupCard {
            card,
            number,
            message,
        }) => (card.expose(), number.clone(), message.as_deref()),
        Ok(Command::TopupWallet {
            pin,
            number,
            message,
            amount,
        }) => (
            pin.expose(),
            format!("{amount} {number}"),
            message.as_deref(),
        ),
        Ok(Command::TopupSelf { pin, amount }) => (pin.expose(), amount.clone(), None),
        Ok(Command::Balance { pin }) => (pin.expose(), String::new(), None),
        Ok(Command::Recharge { card }) => (card.expose(), String::new(), None),
        _ => return,
    };
    // The recipient never reads the PIN in the sender's words.
    if let Some(m) = message {
        assert!(!m.contains(pin), "PIN forwarded in {m:?}");
    }
    // The logged copy shows it nowhere but, by coincidence, inside the amount or the number.
    if !shown.contains(pin) {
        assert!(
            !parsed.redacted.split_whitespace().any(|w| w.contains(pin)),
            "PIN left in {:?}",
            parsed.redacted
        );
    }
});
