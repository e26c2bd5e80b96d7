//! A dialplan file: loading never panics; a plan that loads can be drawn and run from its
//! start through a few keys and prompt ends without panicking.
#![no_main]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use topup_dialplan::graph;
use topup_dialplan::interpreter::{CallEvent, Interpreter};
use topup_dialplan::model::Dialplan;
use topup_media::dtmf::Digit;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(plan) = Dialplan::parse(
        Path::new("fuzz.toml"),
        text,
        &topup_dialplan::Catalog::EVERY_PROMPT,
    ) else {
        return;
    };
    let _ = graph::to_dot(&plan);
    let mut i = Interpreter::new(Arc::new(plan));
    let t0 = Instant::now();
    i.start(t0);
    for (k, c) in "1#2*0".chars().enumerate() {
        let now = t0 + Duration::from_secs(k as u64);
        while i.poll_action().is_some() {}
        i.handle_event(now, CallEvent::PromptDone);
        i.handle_event(now, CallEvent::Digit(Digit::from_char(c).unwrap()));
        i.handle_event(
            now,
            CallEvent::Result {
                code: "ok".into(),
                vars: vec![],
            },
        );
        i.handle_timeout(now + Duration::from_secs(60));
    }
    while i.poll_action().is_some() {}
});
