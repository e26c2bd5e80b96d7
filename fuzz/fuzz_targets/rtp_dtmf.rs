//! A stream of datagrams on a call's RTP port (RTP, RFC 4733 events, RTCP, garbage), with
//! in-band detection on: the call session never panics, keeps sending one frame per 20 ms,
//! and reports each digit it finds as a key the plan sees.
#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use topup_ivr::call::{CallSession, MediaParams, Output};
use topup_ivr::dialplan::model::Dialplan;
use topup_media::g711::Codec;
use topup_media::prompts::{Prompt, PromptStore};

fn fixtures() -> &'static (Arc<Dialplan>, Arc<PromptStore>) {
    static F: OnceLock<(Arc<Dialplan>, Arc<PromptStore>)> = OnceLock::new();
    F.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dialplans/echo.toml");
        let plan = Dialplan::load(&path, &topup_ivr::dialplan::Catalog::EVERY_PROMPT)
            .expect("the echo plan");
        let mut store = PromptStore::default();
        let names = ["echo-welcome", "echo-reprompt", "goodbye"]
            .into_iter()
            .chain(topup_ivr::dialplan::model::SAY_PROMPTS);
        for (i, name) in names.enumerate() {
            store.insert(Prompt::from_pcm8k(
                name,
                "en",
                "",
                vec![(i as i16 + 1) * 300; 480],
            ));
        }
        (Arc::new(plan), Arc::new(store))
    })
}

fuzz_target!(|data: &[u8]| {
    let (plan, store) = fixtures();
    let media = MediaParams {
        codec: Codec::Pcmu,
        payload: Default::default(),
        lead: Default::default(),
        telephone_event: Some(101),
        inband: true,
        send: true,
    };
    let mut s = CallSession::new(plan.clone(), store.clone(), media, 1, 0, 0);
    let t0 = Instant::now();
    s.start(t0);
    let mut now = t0;
    let mut sent = 0u32;
    // Datagrams are length-prefixed (one byte); each is 20 ms after the last.
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = (len as usize).min(tail.len());
        let (pkt, tail) = tail.split_at(n);
        rest = tail;
        now += Duration::from_millis(20);
        s.handle_rtp(now, pkt);
        s.handle_timeout(now);
        loop {
            match s.poll_output(now) {
                Output::Transmit(_) => sent += 1,
                Output::Hangup(_) => return,
                Output::Timeout(_) => break,
                // Operations are never answered: the plan waits, the media goes on.
                _ => {}
            }
        }
    }
    let frames = (now - t0).as_millis() as u32 / 20;
    // One frame per 20 ms, give or take the first and a short burst after a gap.
    assert!(sent <= frames + 1, "{sent} frames sent in {frames} slots");
});
