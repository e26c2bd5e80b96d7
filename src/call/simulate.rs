//! `dialplan simulate`: a call in the terminal. The plan's interpreter runs on a simulated clock
//! against the real top-up core; prompts take their real length; the caller presses the given
//! keys one by one whenever the plan waits for a key (`,` lets a timeout pass instead).
//! The transcript says what the caller hears (the prompts' texts) and what the service does,
//! and ends with how long the caller listened to prompts: the figure a plan author keeps short.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::call::operations::{OpContext, caller_e164, run};
use crate::dialplan::{CallAction, CallEvent, Dialplan, Interpreter};
use crate::media::dtmf::Digit;
use crate::media::prompts::PromptStore;
use crate::topup::Core;
use crate::topup::adapters::Adapters;
use crate::topup::numbers::Hlr;

/// Steps before the simulation stops (a plan waiting forever on a silent caller).
const MAX_STEPS: usize = 2_000;

pub struct Simulation<'a> {
    pub plan: Arc<Dialplan>,
    pub prompts: &'a PromptStore,
    pub core: &'a Core,
    pub adapters: &'a Adapters,
    pub hlr: Option<&'a Hlr>,
    pub caller: String,
}

/// What a simulated call did.
pub struct Run {
    /// The transcript, one line per event.
    pub lines: Vec<String>,
    /// Prompt audio the caller heard (interrupted prompts count up to the interruption).
    pub prompt_audio: Duration,
    /// From the answer to the end of the simulation.
    pub call: Duration,
}

impl Run {
    /// The closing line: prompt audio against the call's length.
    pub fn summary(&self) -> String {
        format!(
            "prompt audio {:.1} s in a {:.1} s call",
            self.prompt_audio.as_secs_f64(),
            self.call.as_secs_f64()
        )
    }
}

impl Simulation<'_> {
    /// Runs the call.
    pub async fn run(&self, keys: &str) -> Run {
        let mut run = self.transcript(keys).await;
        run.lines.push(run.summary());
        run
    }

    async fn transcript(&self, keys: &str) -> Run {
        let t0 = Instant::now();
        let mut now = t0;
        let caller = caller_e164(&self.caller);
        let mut interp = Interpreter::with_vars(
            self.plan.clone(),
            [
                ("caller".to_string(), caller.clone()),
                ("dialled".to_string(), self.plan.numbers[0].clone()),
            ],
        );
        let mut keys = keys.chars().filter(|c| !c.is_whitespace()).peekable();
        let mut out = vec![];
        let mut heard = Duration::ZERO;
        let done = |out: Vec<String>, heard: Duration, now: Instant| Run {
            lines: out,
            prompt_audio: heard,
            call: now - t0,
        };
        let stamp = |now: Instant| format!("[{:7.2}]", (now - t0).as_secs_f64());
        // When the prompts being played end (None: nothing playing).
        let mut playing_until: Option<Instant> = None;
        let mut op_seq = 0;
        interp.start(now);
        for _ in 0..MAX_STEPS {
            while let Some(action) = interp.poll_action() {
                match action {
                    CallAction::Play(refs) => {
                        let mut ms = 0;
                        let mut words = vec![];
                        for r in &refs {
                            match self.prompts.get(&r.language, &r.name) {
                                Some(p) => {
                                    ms += p.duration_ms();
                                    if r.name != "pause" {
                                        words.push(p.text.clone());
                                    }
                                }
                                None => words.push(format!("<missing {}/{}>", r.language, r.name)),
                            }
                        }
                        let start = playing_until.unwrap_or(now).max(now);
                        playing_until = Some(start + Duration::from_millis(ms));
                        heard += Duration::from_millis(ms);
                        let lang = refs.first().map(|r| r.language.as_str()).unwrap_or("");
                        out.push(format!("{} says ({lang}): {}", stamp(now), words.join(" ")));
                    }
                    CallAction::StopPlayback => {
                        if let Some(end) = playing_until.take() {
                            heard = heard.saturating_sub(end.saturating_duration_since(now));
                            out.push(format!("{} (prompt interrupted)", stamp(now)));
                        }
                    }
                    CallAction::Invoke { op, args } => {
                        op_seq += 1;
                        let ctx = OpContext {
                            core: self.core,
                            adapters: self.adapters,
                            hlr: self.hlr,
                            caller: &caller,
                            request_id: format!("simulate:{}:{op_seq}", t0.elapsed().as_nanos()),
                            channel: "simulate",
                            language: None,
                        };
                        let shown: Vec<String> = args
                            .iter()
                            .map(|(k, v)| match v {
                                crate::dialplan::Arg::Pin(pin) => format!("{k}={pin}"),
                                crate::dialplan::Arg::Text(t) => format!("{k}={t}"),
                            })
                            .collect();
                        let (code, vars) = run(&ctx, op, &args).await;
                        let set: Vec<String> = vars
                            .iter()
                            .take(6)
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect();
                        out.push(format!(
                            "{} {op}({}) -> {code} {}",
                            stamp(now),
                            shown.join(", "),
                            set.join(" ")
                        ));
                        interp.handle_event(now, CallEvent::Result { code, vars });
                    }
                    CallAction::Transfer {
                        target,
                        reason,
                        context,
                    } => {
                        out.push(format!(
                            "{} transfer to {target}: {reason} (at {}, inputs {:?})",
                            stamp(now),
                            context.node,
                            context.inputs
                        ));
                        return done(out, heard, now);
                    }
                    CallAction::Hangup { reason } => {
                        out.push(format!("{} hangup: {reason}", stamp(now)));
                        return done(out, heard, now);
                    }
                }
            }
            if interp.is_finished() {
                return done(out, heard, now);
            }
            // The caller presses a key while the plan waits for one (or during a prompt that
            // allows barge-in — the plan decides; here keys come when it waits).
            if interp.poll_timeout().is_some() && playing_until.is_none() {
                match keys.next() {
                    Some(',') => {
                        if let Some(at) = interp.poll_timeout() {
                            now = at;
                            out.push(format!("{} (caller is silent)", stamp(now)));
                            interp.handle_timeout(now);
                        }
                    }
                    Some(c) => match Digit::from_char(c) {
                        Some(d) => {
                            out.push(format!("{} key {c}", stamp(now)));
                            now += Duration::from_millis(300);
                            interp.handle_event(now, CallEvent::Digit(d));
                        }
                        None => out.push(format!("{} (ignored `{c}`: not a key)", stamp(now))),
                    },
                    None => {
                        let Some(at) = interp.poll_timeout() else {
                            continue;
                        };
                        now = at;
                        out.push(format!("{} (caller is silent)", stamp(now)));
                        interp.handle_timeout(now);
                    }
                }
                continue;
            }
            if let Some(end) = playing_until.take() {
                now = now.max(end);
                interp.handle_event(now, CallEvent::PromptDone);
                continue;
            }
            if let Some(at) = interp.poll_timeout() {
                now = at;
                interp.handle_timeout(now);
                continue;
            }
            // Waiting for nothing we can provide.
            break;
        }
        out.push(format!("{} (simulation stopped)", stamp(now)));
        done(out, heard, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::prompts::LoadOptions;
    use crate::topup::testing::cores;
    use std::path::Path;

    /// A call to a shipped plan, from `caller`, on a fresh demo core.
    async fn simulate(plan: &str, caller: &str, keys: &str) -> Run {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let prompts = PromptStore::load(&root.join("prompts"), LoadOptions::default()).unwrap();
        let plan = Dialplan::load(
            &root.join("dialplans").join(plan),
            &crate::dialplan::Catalog::new(
                &|l, n| prompts.get(l, n).is_some(),
                &crate::sms::messages::NAMES,
            ),
        )
        .unwrap();
        let (core, _g) = cores().await.into_iter().next().unwrap();
        core.seed_demo(1).await.unwrap();
        let adapters = Adapters::new();
        let sim = Simulation {
            plan: Arc::new(plan),
            prompts: &prompts,
            core: &core,
            adapters: &adapters,
            hlr: None,
            caller: caller.into(),
        };
        sim.run(keys).await
    }

    #[tokio::test]
    async fn a_card_top_up_simulated_against_the_real_core() {
        let run = simulate(
            "recharge.toml",
            "+12015550123",
            "2 33334444555566# 525512345678# 1 2 1 ,",
        )
        .await;
        let t = &run.lines;
        let text = t.join("\n");
        assert!(
            text.contains("says (es): Marque el PIN de su tarjeta"),
            "{text}"
        );
        assert!(text.contains("redeem_card(pin=****) -> ok"), "{text}");
        assert!(!text.contains("33334444555566"), "the PIN is never shown");
        assert!(text.contains("says (es): Es de Telcel en México"), "{text}");
        assert!(
            text.contains("topup(number=+525512345678, product=telcel-mx-100) -> ok"),
            "{text}"
        );
        assert!(text.contains("fue exitosa"), "{text}");
        // No SMS here: no promise of one.
        assert!(!text.contains("mensaje de texto"), "{text}");
        assert!(t[t.len() - 2].contains("hangup"), "{text}");
        assert!(t.last().unwrap().starts_with("prompt audio "), "{text}");
        assert!(run.prompt_audio > Duration::from_secs(5), "{text}");
        assert!(run.call > run.prompt_audio, "{text}");
    }

    /// What a first-time caller with a card listens to, key to key, on the shipped card plan:
    /// at most 45 s of prompts to top up a US number and 60 s for a Mexican one (Spanish
    /// too), without losing what they need to hear (the card's value, the number read back
    /// once, the carrier, the amounts, the price where it differs, the outcome and balance).
    #[tokio::test]
    async fn the_shipped_card_plan_keeps_a_first_time_caller_brief() {
        for (who, keys, budget, must_hear) in [
            (
                "US number",
                "1 11112222333344# 12015550150# 1 1 1 ,",
                45,
                &[
                    "Card accepted: ten dollars",
                    "You entered plus one",
                    "IVR Mobile",
                    "Choose an amount. five dollars press one ten dollars press two",
                    "succeeded.",
                    "Your balance is five dollars",
                ][..],
            ),
            (
                "Mexican number",
                "1 11112222333344# 525512345678# 1 2 1 ,",
                60,
                &[
                    "You entered plus five two",
                    "Telcel",
                    "fifty pesos for three dollars and ten cents press one",
                    "You will send one hundred pesos for five dollars and ninety nine cents",
                ][..],
            ),
            (
                "Mexican number, in Spanish",
                "2 11112222333344# 525512345678# 1 2 1 ,",
                60,
                &["Telcel", "cien pesos"][..],
            ),
        ] {
            let run = simulate("recharge.toml", "+12015550123", keys).await;
            let text = run.lines.join("\n");
            assert!(
                run.lines[run.lines.len() - 2].contains("hangup"),
                "{who}: {text}"
            );
            assert!(text.contains("topup("), "{who}: {text}");
            for words in must_hear {
                assert!(
                    text.replace(',', "").contains(words),
                    "{who}: `{words}` not heard:\n{text}"
                );
            }
            // The number is read back once, not again in the confirmation and the outcome.
            assert_eq!(
                text.matches("plus").count() + text.matches("más").count(),
                1,
                "{who}: {text}"
            );
            assert!(
                run.prompt_audio <= Duration::from_secs(budget),
                "{who}: {:.1} s of prompts (budget {budget} s):\n{text}",
                run.prompt_audio.as_secs_f64()
            );
        }
    }
}
