//! The dialplan interpreter (sans-IO): one per call, driven by events and the time.
//!
//! It never touches audio or sockets: it asks its driver to play prompts, to stop playing
//! (barge-in) and to hang up, and it is told about key presses and prompt ends. Keys pressed
//! at any time go into a type-ahead buffer that the next `collect` reads first, so a key is
//! never lost, whether it interrupted a prompt or arrived while one was being read back.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::model::{Dialplan, Node, say_prompt};
use crate::media::dtmf::Digit;

/// Transitions allowed without waiting for anything; more means a loop with no exit.
const MAX_STEPS_PER_INPUT: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallEvent {
    Digit(Digit),
    /// Everything the last `Play` asked for has been sent.
    PromptDone,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptRef {
    pub language: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallAction {
    /// Queue prompts; a `PromptDone` event is expected when they end (not after a stop).
    Play(Vec<PromptRef>),
    /// Barge-in: stop whatever is playing now.
    StopPlayback,
    /// End the call; `reason` goes to the CDR.
    Hangup { reason: String },
}

#[derive(Debug)]
enum After {
    Goto(String),
    /// Back to the current collect node for another attempt.
    Recollect,
}

#[derive(Debug)]
enum Phase {
    Playing { barge_in: bool, then: After },
    Collecting { digits: String, deadline: Instant },
    Done,
}

pub struct Interpreter {
    plan: Arc<Dialplan>,
    node: String,
    phase: Phase,
    vars: HashMap<String, String>,
    typeahead: VecDeque<Digit>,
    /// Attempts used in the current collect node.
    tries: u32,
    actions: VecDeque<CallAction>,
    /// Every key received (kept for the CDR only when the plan says so).
    digits: String,
}

impl Interpreter {
    pub fn new(plan: Arc<Dialplan>) -> Self {
        let node = plan.start.clone();
        Interpreter {
            plan,
            node,
            phase: Phase::Done,
            vars: HashMap::new(),
            typeahead: VecDeque::new(),
            tries: 0,
            actions: VecDeque::new(),
            digits: String::new(),
        }
    }

    pub fn plan(&self) -> &Dialplan {
        &self.plan
    }

    /// The call is answered: run the start node.
    pub fn start(&mut self, now: Instant) {
        let start = self.plan.start.clone();
        self.goto(now, start);
    }

    pub fn handle_event(&mut self, now: Instant, event: CallEvent) {
        match event {
            CallEvent::Digit(d) => {
                self.digits.push(d.as_char());
                self.typeahead.push_back(d);
                match &self.phase {
                    Phase::Playing { barge_in: true, .. } => {
                        self.actions.push_back(CallAction::StopPlayback);
                        self.after_play(now);
                    }
                    Phase::Collecting { .. } => self.consume_typeahead(now),
                    _ => {}
                }
            }
            CallEvent::PromptDone => {
                if matches!(self.phase, Phase::Playing { .. }) {
                    self.after_play(now);
                }
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Collecting { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let Phase::Collecting { digits, deadline } = &self.phase else {
            return;
        };
        if now < *deadline {
            return;
        }
        let digits = digits.clone();
        self.finish_collect(now, digits);
    }

    pub fn poll_action(&mut self) -> Option<CallAction> {
        self.actions.pop_front()
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Keys received so far.
    pub fn digits(&self) -> &str {
        &self.digits
    }

    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Where the call is in the plan (for logs and staff pages).
    pub fn node(&self) -> &str {
        &self.node
    }

    fn after_play(&mut self, now: Instant) {
        let Phase::Playing { then, .. } = std::mem::replace(&mut self.phase, Phase::Done) else {
            return;
        };
        match then {
            After::Goto(next) => self.goto(now, next),
            After::Recollect => self.begin_collect(now),
        }
    }

    fn play(&mut self, names: Vec<String>, barge_in: bool, then: After) -> bool {
        if names.is_empty() {
            return false;
        }
        let language = self.plan.language.clone();
        self.actions.push_back(CallAction::Play(
            names
                .into_iter()
                .map(|name| PromptRef {
                    language: language.clone(),
                    name,
                })
                .collect(),
        ));
        self.phase = Phase::Playing { barge_in, then };
        true
    }

    fn hangup(&mut self, reason: &str) {
        self.phase = Phase::Done;
        self.actions.push_back(CallAction::Hangup {
            reason: reason.to_string(),
        });
    }

    /// Runs nodes until one waits for input.
    fn goto(&mut self, now: Instant, mut id: String) {
        for _ in 0..MAX_STEPS_PER_INPUT {
            if id != self.node {
                self.tries = 0;
            }
            self.node = id.clone();
            let plan = self.plan.clone();
            let Some(node) = plan.nodes.get(&id) else {
                // Plans are checked at load; this is a bug, not input.
                tracing::error!(node = %id, "dialplan node missing");
                self.hangup("dialplan-error");
                return;
            };
            match node {
                Node::Play {
                    prompts,
                    barge_in,
                    next,
                } => {
                    if self.play(prompts.clone(), *barge_in, After::Goto(next.clone())) {
                        // A key already waiting interrupts a barge-in prompt at once.
                        if *barge_in && !self.typeahead.is_empty() {
                            self.actions.push_back(CallAction::StopPlayback);
                            self.phase = Phase::Done;
                            id = next.clone();
                            continue;
                        }
                        return;
                    }
                    id = next.clone();
                }
                Node::Say {
                    digits,
                    barge_in,
                    next,
                } => {
                    let value = self.vars.get(digits).cloned().unwrap_or_default();
                    let names = value
                        .chars()
                        .filter_map(Digit::from_char)
                        .map(|d| say_prompt(d).to_string())
                        .collect();
                    if self.play(names, *barge_in, After::Goto(next.clone())) {
                        return;
                    }
                    id = next.clone();
                }
                Node::Collect { .. } => {
                    self.begin_collect(now);
                    return;
                }
                Node::Branch {
                    var,
                    equals,
                    ends_with,
                    then,
                    otherwise,
                } => {
                    let v = self.vars.get(var).map(String::as_str).unwrap_or("");
                    let hit = match (equals, ends_with) {
                        (Some(e), _) => v == e,
                        (_, Some(s)) => v.ends_with(s.as_str()),
                        _ => false,
                    };
                    id = if hit { then.clone() } else { otherwise.clone() };
                }
                Node::Hangup {} => {
                    self.hangup("service-hangup");
                    return;
                }
            }
        }
        tracing::error!(node = %id, "dialplan loops without waiting for input");
        self.hangup("dialplan-loop");
    }

    fn collect_spec(&self) -> Option<CollectSpec> {
        match self.plan.nodes.get(&self.node)? {
            Node::Collect {
                max_digits,
                terminator,
                first_digit_timeout,
                inter_digit_timeout,
                ..
            } => Some(CollectSpec {
                max: *max_digits,
                terminator: terminator.as_deref().and_then(|t| t.chars().next()),
                first: *first_digit_timeout,
                inter: *inter_digit_timeout,
            }),
            _ => None,
        }
    }

    fn begin_collect(&mut self, now: Instant) {
        let Some(spec) = self.collect_spec() else {
            return;
        };
        self.phase = Phase::Collecting {
            digits: String::new(),
            deadline: now + spec.first,
        };
        self.consume_typeahead(now);
    }

    /// Feeds waiting keys to the current collect until it completes or they run out.
    fn consume_typeahead(&mut self, now: Instant) {
        let Some(spec) = self.collect_spec() else {
            return;
        };
        while let Phase::Collecting { digits, deadline } = &mut self.phase {
            let Some(d) = self.typeahead.pop_front() else {
                return;
            };
            let c = d.as_char();
            if Some(c) == spec.terminator {
                let digits = digits.clone();
                self.finish_collect(now, digits);
                return;
            }
            digits.push(c);
            *deadline = now + spec.inter;
            if digits.len() >= spec.max {
                let digits = digits.clone();
                self.finish_collect(now, digits);
                return;
            }
        }
    }

    fn finish_collect(&mut self, now: Instant, digits: String) {
        let plan = self.plan.clone();
        let Some(Node::Collect {
            var,
            append_to,
            min_digits,
            max_tries,
            retry_prompts,
            next,
            on_failure,
            ..
        }) = plan.nodes.get(&self.node)
        else {
            return;
        };
        if digits.len() >= *min_digits {
            if let Some(h) = append_to {
                self.vars.entry(h.clone()).or_default().push_str(&digits);
            }
            self.vars.insert(var.clone(), digits);
            self.goto(now, next.clone());
            return;
        }
        self.tries += 1;
        if self.tries >= *max_tries {
            self.goto(now, on_failure.clone());
        } else if !self.play(retry_prompts.clone(), true, After::Recollect) {
            self.begin_collect(now);
        }
    }
}

struct CollectSpec {
    max: usize,
    terminator: Option<char>,
    first: std::time::Duration,
    inter: std::time::Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialplan::model::Dialplan;
    use std::path::Path;
    use std::time::Duration;

    fn echo() -> Interpreter {
        let plan = Dialplan::parse(
            Path::new("echo.toml"),
            include_str!("../../dialplans/echo.toml"),
            &|_, _| true,
        )
        .unwrap();
        Interpreter::new(Arc::new(plan))
    }

    fn d(c: char) -> CallEvent {
        CallEvent::Digit(Digit::from_char(c).unwrap())
    }

    fn actions(i: &mut Interpreter) -> Vec<CallAction> {
        std::iter::from_fn(|| i.poll_action()).collect()
    }

    fn names(a: &CallAction) -> Vec<&str> {
        match a {
            CallAction::Play(p) => p.iter().map(|p| p.name.as_str()).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn echo_greets_reads_back_and_hangs_up_on_star_star() {
        let t0 = Instant::now();
        let mut i = echo();
        i.start(t0);
        let a = actions(&mut i);
        assert_eq!(names(&a[0]), ["echo-welcome"]);
        i.handle_event(t0, CallEvent::PromptDone);
        assert!(actions(&mut i).is_empty());
        assert_eq!(i.poll_timeout(), Some(t0 + Duration::from_secs(15)));
        i.handle_event(t0, d('4'));
        assert_eq!(names(&actions(&mut i)[0]), ["digit-4"]);
        i.handle_event(t0, CallEvent::PromptDone);
        i.handle_event(t0, d('*'));
        assert_eq!(names(&actions(&mut i)[0]), ["star"]);
        i.handle_event(t0, CallEvent::PromptDone);
        i.handle_event(t0, d('*'));
        assert_eq!(names(&actions(&mut i)[0]), ["star"]);
        i.handle_event(t0, CallEvent::PromptDone);
        assert_eq!(names(&actions(&mut i)[0]), ["goodbye"]);
        i.handle_event(t0, CallEvent::PromptDone);
        assert!(matches!(
            actions(&mut i).as_slice(),
            [CallAction::Hangup { .. }]
        ));
        assert!(i.is_finished());
        assert_eq!(i.digits(), "4**");
    }

    #[test]
    fn key_during_the_greeting_stops_it_and_is_not_lost() {
        let t0 = Instant::now();
        let mut i = echo();
        i.start(t0);
        actions(&mut i);
        i.handle_event(t0, d('7'));
        let a = actions(&mut i);
        assert_eq!(a[0], CallAction::StopPlayback);
        assert_eq!(names(&a[1]), ["digit-7"]);
    }

    #[test]
    fn keys_typed_during_readback_wait_their_turn() {
        let t0 = Instant::now();
        let mut i = echo();
        i.start(t0);
        actions(&mut i);
        i.handle_event(t0, CallEvent::PromptDone);
        for c in ['1', '2', '3'] {
            i.handle_event(t0, d(c));
        }
        let mut heard = vec![];
        for _ in 0..3 {
            for a in actions(&mut i) {
                assert_ne!(a, CallAction::StopPlayback, "read-back is not interrupted");
                heard.extend(names(&a).iter().map(|s| s.to_string()));
            }
            i.handle_event(t0, CallEvent::PromptDone);
        }
        assert_eq!(heard, ["digit-1", "digit-2", "digit-3"]);
    }

    #[test]
    fn silence_reprompts_then_says_goodbye_after_max_tries() {
        let t0 = Instant::now();
        let mut i = echo();
        i.start(t0);
        i.handle_event(t0, CallEvent::PromptDone);
        actions(&mut i);
        let mut now = t0;
        let mut played = vec![];
        for _ in 0..3 {
            now = i.poll_timeout().expect("waiting for a key");
            i.handle_timeout(now);
            for a in actions(&mut i) {
                played.extend(names(&a).iter().map(|s| s.to_string()));
            }
            i.handle_event(now, CallEvent::PromptDone);
        }
        assert_eq!(played, ["echo-reprompt", "echo-reprompt", "goodbye"]);
        assert!(matches!(
            actions(&mut i).as_slice(),
            [CallAction::Hangup { .. }]
        ));
        let _ = now;
    }

    fn pin_plan(extra: &str) -> Interpreter {
        let text = format!(
            r##"service = "t"
numbers = ["t"]
language = "en"
start = "pin"
[nodes.pin]
kind = "collect"
var = "pin"
min_digits = 4
max_digits = 6
terminator = "#"
first_digit_timeout = "5s"
inter_digit_timeout = "2s"
max_tries = 2
next = "ok"
on_failure = "fail"
{extra}
[nodes.ok]
kind = "hangup"
[nodes.fail]
kind = "hangup"
"##
        );
        let plan = Dialplan::parse(Path::new("t.toml"), &text, &|_, _| true).unwrap();
        let mut i = Interpreter::new(Arc::new(plan));
        i.start(Instant::now());
        i
    }

    #[test]
    fn terminator_ends_entry_and_is_not_stored() {
        let t0 = Instant::now();
        let mut i = pin_plan("");
        for c in "1234#".chars() {
            i.handle_event(t0, d(c));
        }
        assert_eq!(i.var("pin"), Some("1234"));
        assert_eq!(i.node(), "ok");
    }

    #[test]
    fn inter_digit_timeout_ends_entry_and_max_digits_completes_it() {
        let t0 = Instant::now();
        let mut i = pin_plan("");
        for c in "12345".chars() {
            i.handle_event(t0, d(c));
        }
        assert_eq!(i.poll_timeout(), Some(t0 + Duration::from_secs(2)));
        i.handle_timeout(t0 + Duration::from_secs(2));
        assert_eq!(i.var("pin"), Some("12345"));
        let mut i = pin_plan("");
        for c in "1234567".chars() {
            i.handle_event(t0, d(c));
        }
        assert_eq!(i.var("pin"), Some("123456"), "stops at max_digits");
    }

    #[test]
    fn too_few_digits_count_as_a_failed_try() {
        let t0 = Instant::now();
        let mut i = pin_plan("");
        i.handle_event(t0, d('1'));
        i.handle_event(t0, d('#'));
        assert_eq!(i.node(), "pin", "second try");
        i.handle_timeout(t0 + Duration::from_secs(5));
        assert_eq!(i.node(), "fail");
        assert_eq!(i.var("pin"), None);
    }

    #[test]
    fn a_branch_cycle_without_input_is_cut() {
        let text = r#"service = "t"
numbers = ["t"]
language = "en"
start = "a"
[nodes.a]
kind = "branch"
var = "x"
equals = "y"
then = "a"
else = "a"
"#;
        let plan = Dialplan::parse(Path::new("t.toml"), text, &|_, _| true).unwrap();
        let mut i = Interpreter::new(Arc::new(plan));
        i.start(Instant::now());
        assert_eq!(
            actions(&mut i),
            [CallAction::Hangup {
                reason: "dialplan-loop".into()
            }]
        );
    }
}
