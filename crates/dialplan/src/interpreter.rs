//! The dialplan interpreter (sans-IO): one per call, driven by events and the time.
//!
//! It never touches audio, sockets or the database: it asks its driver to play prompts, stop
//! playing (barge-in), run an operation, transfer or hang up, and it is told about key presses,
//! prompt ends and operation results. Keys pressed at any time go into a type-ahead buffer that
//! the next menu or collect reads first, so a key is never lost, whether it interrupted a
//! prompt or arrived while one was being read back.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::model::{
    CONFIRM_PROMPT, COUNTRY_CODE_PROMPT, ConfirmAs, Dialplan, Node, Op, PRESS_PROMPT, SayItem,
    Validator,
};
use super::say;
use topup_media::dtmf::Digit;
use topup_values::money::Money;
use topup_values::phone::InvalidNumber;
use topup_values::pin::Pin;

/// Keys a call's record keeps at most.
pub const MAX_RECORDED_DIGITS: usize = 256;
/// Transitions allowed without waiting for anything; more means a loop with no exit.
const MAX_STEPS_PER_INPUT: usize = 256;
/// Nodes remembered for escalations and analytics.
const MAX_PATH: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallEvent {
    Digit(Digit),
    /// Everything the last `Play` asked for has been sent.
    PromptDone,
    /// An operation finished: its result code (`ok` or an error code) and variables to set.
    Result {
        code: String,
        vars: Vec<(String, String)>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptRef {
    pub language: String,
    pub name: String,
}

/// What the caller tried, for the agent who takes an escalation (secrets masked).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CallContext {
    pub service: String,
    pub language: String,
    pub node: String,
    pub path: Vec<String>,
    /// Collected inputs by variable; secrets as "****".
    pub inputs: BTreeMap<String, String>,
    pub last_failure: Option<String>,
}

/// An operation's argument: text, or a PIN the caller keyed into a `secret` collect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    Text(String),
    Pin(Pin),
}

/// The arguments of an `invoke`, by name. PINs are [`Pin`]s from the moment they are keyed,
/// so no `Debug` of an action, a log line or a trace can show one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Args(pub Vec<(String, Arg)>);

impl Args {
    /// Text arguments, for tests and callers that build an invoke by hand.
    pub fn texts<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Args {
        Args(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), Arg::Text(v.to_string())))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&Arg> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The text argument `name`, or "" when absent (or a PIN).
    pub fn text(&self, name: &str) -> &str {
        match self.get(name) {
            Some(Arg::Text(t)) => t,
            _ => "",
        }
    }

    /// The PIN argument `name`, if the plan passed a secret there.
    pub fn pin(&self, name: &str) -> Option<&Pin> {
        match self.get(name) {
            Some(Arg::Pin(p)) => Some(p),
            _ => None,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arg)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallAction {
    /// Queue prompts; a `PromptDone` event is expected when they end (not after a stop).
    Play(Vec<PromptRef>),
    /// Barge-in: stop whatever is playing now.
    StopPlayback,
    /// Run a core operation; answer with `CallEvent::Result`.
    Invoke { op: Op, args: Args },
    /// Hand the call over (escalation) with its context; the interpreter is done.
    Transfer {
        target: String,
        reason: String,
        context: CallContext,
    },
    /// End the call; `reason` goes to the CDR.
    Hangup { reason: String },
}

#[derive(Debug, Clone)]
enum After {
    Goto(String),
    MenuWait,
    Recollect,
    ConfirmWait(String),
    ChooseWait(usize),
    Transfer,
}

enum Phase {
    Playing {
        barge_in: bool,
        then: After,
    },
    MenuWait {
        deadline: Instant,
    },
    Collecting {
        digits: String,
        deadline: Instant,
    },
    ConfirmWait {
        value: String,
        deadline: Instant,
    },
    ChooseWait {
        count: usize,
        deadline: Instant,
    },
    /// An operation runs; its wait prompts start at `music_at` (None: none, or started).
    Invoking {
        waiting_music: bool,
        music_at: Option<Instant>,
    },
    Done,
}

/// The failure kind of a number keyed without its country code (and none the caller's country
/// could supply).
pub const NO_COUNTRY_CODE: &str = "no-country-code";

/// How long an operation may take before its wait prompts play: a caller is not told "one moment
/// please" about an answer that comes at once.
pub const WAIT_PROMPTS_AFTER: Duration = Duration::from_millis(800);

pub struct Interpreter {
    plan: Arc<Dialplan>,
    node: String,
    phase: Phase,
    vars: BTreeMap<String, String>,
    /// What the caller keyed into `secret` collects: never in `vars`, never said or shown.
    secrets: BTreeMap<String, Pin>,
    language: String,
    typeahead: VecDeque<Digit>,
    /// Failed attempts in the current menu/collect/choose node.
    tries: u32,
    actions: VecDeque<CallAction>,
    /// The keys received, up to [`MAX_RECORDED_DIGITS`] (kept for the CDR only when the plan
    /// says so).
    digits: String,
    path: VecDeque<String>,
    inputs: BTreeMap<String, String>,
    last_failure: Option<String>,
    /// An entry that ended by its length: the terminator the caller was told to press, when it
    /// comes next and before this time, ends nothing more (it would spill into the next
    /// prompt as a wrong key).
    spent_terminator: Option<(char, Instant)>,
}

impl Interpreter {
    pub fn new(plan: Arc<Dialplan>) -> Self {
        Self::with_vars(plan, [])
    }

    /// With initial variables (`caller`, `dialled`, ...).
    pub fn with_vars(
        plan: Arc<Dialplan>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let node = plan.start.clone();
        let language = plan.language.clone();
        Interpreter {
            plan,
            node,
            phase: Phase::Done,
            vars: vars.into_iter().collect(),
            secrets: BTreeMap::new(),
            language,
            typeahead: VecDeque::new(),
            tries: 0,
            actions: VecDeque::new(),
            digits: String::new(),
            path: VecDeque::new(),
            inputs: BTreeMap::new(),
            last_failure: None,
            spent_terminator: None,
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
                // The record keeps the first keys of a call, not all of a caller who leans on
                // the keypad for an hour.
                if self.digits.len() < MAX_RECORDED_DIGITS {
                    self.digits.push(d.as_char());
                }
                if let Some((t, until)) = self.spent_terminator.take()
                    && t == d.as_char()
                    && now <= until
                {
                    return;
                }
                self.typeahead.push_back(d);
                match &self.phase {
                    Phase::Playing { barge_in: true, .. } => {
                        self.actions.push_back(CallAction::StopPlayback);
                        self.after_play(now);
                    }
                    Phase::MenuWait { .. }
                    | Phase::Collecting { .. }
                    | Phase::ConfirmWait { .. }
                    | Phase::ChooseWait { .. } => self.consume_keys(now),
                    _ => {}
                }
            }
            CallEvent::PromptDone => match &mut self.phase {
                Phase::Playing { .. } => self.after_play(now),
                Phase::Invoking { waiting_music, .. } => *waiting_music = false,
                _ => {}
            },
            CallEvent::Result { code, vars } => {
                let Phase::Invoking { waiting_music, .. } = self.phase else {
                    return;
                };
                if waiting_music {
                    self.actions.push_back(CallAction::StopPlayback);
                }
                self.vars.extend(vars);
                // The escalation reason is the last thing that went wrong — unless something
                // went right since (a caller who asks for an agent after a successful top-up
                // is asking, not failing).
                self.last_failure = (code != "ok").then(|| code.clone());
                let plan = self.plan.clone();
                if let Some(Node::Invoke { results, .. }) = plan.nodes.get(&self.node) {
                    let next = results
                        .get(&code)
                        .or_else(|| results.get("default"))
                        .cloned();
                    match next {
                        Some(n) => self.goto(now, n),
                        None => self.hangup("dialplan-error"),
                    }
                }
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::MenuWait { deadline }
            | Phase::Collecting { deadline, .. }
            | Phase::ConfirmWait { deadline, .. }
            | Phase::ChooseWait { deadline, .. } => Some(*deadline),
            Phase::Invoking { music_at, .. } => *music_at,
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.phase {
            Phase::Collecting { digits, deadline } if now >= *deadline => {
                let digits = digits.clone();
                self.finish_collect(now, digits);
            }
            Phase::MenuWait { deadline } | Phase::ChooseWait { deadline, .. }
                if now >= *deadline =>
            {
                self.fail(now, "no-input")
            }
            Phase::ConfirmWait { value, deadline } if now >= *deadline => {
                let value = value.clone();
                self.confirm_failed(now, value);
            }
            Phase::Invoking {
                music_at: Some(at), ..
            } if now >= *at => {
                if let Some(Node::Invoke { wait_prompts, .. }) = self.plan.nodes.get(&self.node) {
                    let refs = self.refs(wait_prompts.clone());
                    self.actions.push_back(CallAction::Play(refs));
                }
                self.phase = Phase::Invoking {
                    waiting_music: true,
                    music_at: None,
                };
            }
            _ => {}
        }
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

    /// Where the call is in the plan.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn language(&self) -> &str {
        &self.language
    }

    pub fn context(&self) -> CallContext {
        CallContext {
            service: self.plan.service.clone(),
            language: self.language.clone(),
            node: self.node.clone(),
            path: self.path.iter().cloned().collect(),
            inputs: self.inputs.clone(),
            last_failure: self.last_failure.clone(),
        }
    }

    // ---- playing ----

    fn refs(&self, names: impl IntoIterator<Item = String>) -> Vec<PromptRef> {
        names
            .into_iter()
            .map(|name| PromptRef {
                language: self.language.clone(),
                name,
            })
            .collect()
    }

    /// Queues prompts and waits for them; with nothing to play, continues at once.
    fn play(&mut self, now: Instant, names: Vec<String>, barge_in: bool, then: After) {
        if names.is_empty() {
            self.run_after(now, then);
            return;
        }
        self.actions.push_back(CallAction::Play(self.refs(names)));
        self.phase = Phase::Playing { barge_in, then };
        // A key already waiting interrupts a barge-in prompt at once.
        if barge_in && !self.typeahead.is_empty() {
            self.actions.push_back(CallAction::StopPlayback);
            self.after_play(now);
        }
    }

    fn after_play(&mut self, now: Instant) {
        let Phase::Playing { then, .. } = std::mem::replace(&mut self.phase, Phase::Done) else {
            return;
        };
        self.run_after(now, then);
    }

    fn run_after(&mut self, now: Instant, then: After) {
        match then {
            After::Goto(next) => self.goto(now, next),
            After::MenuWait => {
                let timeout = match self.plan.nodes.get(&self.node) {
                    Some(Node::Menu { timeout, .. }) => *timeout,
                    _ => Duration::from_secs(5),
                };
                self.phase = Phase::MenuWait {
                    deadline: now + timeout,
                };
                self.consume_keys(now);
            }
            After::Recollect => self.begin_collect(now),
            After::ConfirmWait(value) => {
                let timeout = match self.plan.nodes.get(&self.node) {
                    Some(Node::Collect {
                        first_digit_timeout,
                        ..
                    }) => *first_digit_timeout,
                    _ => Duration::from_secs(5),
                };
                self.phase = Phase::ConfirmWait {
                    value,
                    deadline: now + timeout,
                };
                self.consume_keys(now);
            }
            After::ChooseWait(count) => {
                let timeout = match self.plan.nodes.get(&self.node) {
                    Some(Node::Choose { timeout, .. }) => *timeout,
                    _ => Duration::from_secs(5),
                };
                self.phase = Phase::ChooseWait {
                    count,
                    deadline: now + timeout,
                };
                self.consume_keys(now);
            }
            After::Transfer => {
                let (target, reason) = match self.plan.nodes.get(&self.node) {
                    Some(Node::Transfer { target, reason, .. }) => (target.clone(), reason.clone()),
                    _ => ("agents".into(), None),
                };
                let reason = reason
                    .or_else(|| self.last_failure.clone())
                    .unwrap_or_else(|| "caller request".into());
                let context = self.context();
                self.actions.push_back(CallAction::Transfer {
                    target,
                    reason,
                    context,
                });
                self.phase = Phase::Done;
            }
        }
    }

    fn hangup(&mut self, reason: &str) {
        self.phase = Phase::Done;
        self.actions.push_back(CallAction::Hangup {
            reason: reason.to_string(),
        });
    }

    // ---- say ----

    /// The prompts for say items; `entry` maps `.field` names to a list entry's variables.
    fn say_items(&self, items: &[SayItem], entry: Option<&str>) -> Vec<String> {
        let lang = self.language.as_str();
        let value = |name: &str| -> String {
            let key = match (name.strip_prefix('.'), entry) {
                (Some(field), Some(prefix)) => format!("{prefix}.{field}"),
                _ => name.to_string(),
            };
            self.vars.get(&key).cloned().unwrap_or_default()
        };
        let mut out = vec![];
        for it in items {
            if let Some([a, b]) = &it.unless_same
                && value(a) == value(b)
            {
                continue;
            }
            if let Some(p) = &it.prompt {
                out.push(p.clone());
            } else if let Some(v) = &it.prompt_from {
                let name = value(v);
                if !name.is_empty() {
                    out.push(name);
                }
            } else if let Some(v) = &it.digits {
                out.extend(say::digits(&value(v)));
            } else if let Some(v) = &it.money {
                if let Ok(m) = Money::parse(&value(v)) {
                    out.extend(say::money(lang, m));
                }
            } else if let Some(v) = &it.number {
                if let Ok(n) = value(v).parse::<u64>() {
                    out.extend(say::number(lang, n, false));
                }
            } else if let Some(v) = &it.minutes {
                if let Ok(n) = value(v).parse::<u64>() {
                    out.extend(say::minutes(lang, n));
                }
            } else if let Some(v) = &it.phone {
                out.extend(say_phone(&value(v)));
            }
        }
        out
    }

    /// A choose node's list: "five dollars, press 1; ten dollars, press 2", a pause between
    /// choices so that "press 1" and the next amount do not run together.
    fn choices(&self, list: &str, item: &[SayItem], count: usize) -> Vec<String> {
        let mut names = vec![];
        for i in 1..=count {
            if i > 1 {
                names.push(say::PAUSE.to_string());
            }
            names.extend(self.say_items(item, Some(&format!("{list}.{i}"))));
            names.push(PRESS_PROMPT.to_string());
            names.push(format!("digit-{i}"));
        }
        names
    }

    // ---- nodes ----

    /// Runs nodes until one waits for something.
    fn goto(&mut self, now: Instant, id: String) {
        let mut id = id;
        for _ in 0..MAX_STEPS_PER_INPUT {
            if id != self.node {
                self.tries = 0;
            }
            self.node = id.clone();
            if self.path.len() == MAX_PATH {
                self.path.pop_front();
            }
            self.path.push_back(id.clone());
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
                    return self.play(now, prompts.clone(), *barge_in, After::Goto(next.clone()));
                }
                Node::Say {
                    items,
                    barge_in,
                    next,
                } => {
                    let names = self.say_items(items, None);
                    return self.play(now, names, *barge_in, After::Goto(next.clone()));
                }
                Node::Menu { prompts, .. } => {
                    return self.play(now, prompts.clone(), true, After::MenuWait);
                }
                Node::Collect { prompts, .. } => {
                    return self.play(now, prompts.clone(), true, After::Recollect);
                }
                Node::Choose {
                    list,
                    prompts,
                    item,
                    max_items,
                    on_empty,
                    ..
                } => {
                    let count = self
                        .vars
                        .get(&format!("{list}.count"))
                        .and_then(|c| c.parse::<usize>().ok())
                        .unwrap_or(0);
                    let count = count.min(*max_items);
                    if count == 0 {
                        id = on_empty.clone();
                        continue;
                    }
                    let mut names = prompts.clone();
                    names.extend(self.choices(list, item, count));
                    return self.play(now, names, true, After::ChooseWait(count));
                }
                Node::Invoke {
                    op,
                    args,
                    wait_prompts,
                    ..
                } => {
                    let args = Args(
                        args.iter()
                            .map(|(k, v)| {
                                let value = match super::model::literal(v) {
                                    Some(text) => Arg::Text(text.to_string()),
                                    None => match self.secrets.get(v) {
                                        Some(pin) => Arg::Pin(pin.clone()),
                                        None => {
                                            Arg::Text(self.vars.get(v).cloned().unwrap_or_default())
                                        }
                                    },
                                };
                                (k.clone(), value)
                            })
                            .collect(),
                    );
                    // The plan check refused unknown operations.
                    let Some(op) = Op::from_name(op) else {
                        tracing::error!(node = %id, op = %op, "unknown operation");
                        self.hangup("dialplan-error");
                        return;
                    };
                    self.actions.push_back(CallAction::Invoke { op, args });
                    self.phase = Phase::Invoking {
                        waiting_music: false,
                        music_at: (!wait_prompts.is_empty()).then(|| now + WAIT_PROMPTS_AFTER),
                    };
                    return;
                }
                Node::Transfer { prompts, .. } => {
                    return self.play(now, prompts.clone(), false, After::Transfer);
                }
                Node::Branch {
                    var,
                    equals,
                    ends_with,
                    is_set,
                    then,
                    otherwise,
                } => {
                    let v = self.vars.get(var).map(String::as_str).unwrap_or("");
                    let hit = match (equals, ends_with) {
                        (Some(e), _) => v == e,
                        (_, Some(s)) => v.ends_with(s.as_str()),
                        _ => *is_set && !v.is_empty(),
                    };
                    id = if hit { then.clone() } else { otherwise.clone() };
                }
                Node::Goto { target } => id = target.clone(),
                Node::Count {
                    var,
                    limit,
                    next,
                    on_limit,
                } => {
                    let n = self
                        .vars
                        .get(var)
                        .and_then(|v| v.parse::<u32>().ok())
                        .unwrap_or(0)
                        + 1;
                    self.vars.insert(var.clone(), n.to_string());
                    id = if n > *limit {
                        on_limit.clone()
                    } else {
                        next.clone()
                    };
                }
                Node::SetLanguage {
                    language,
                    from,
                    next,
                } => {
                    let wanted = language
                        .clone()
                        .or_else(|| from.as_ref().and_then(|v| self.vars.get(v).cloned()));
                    if let Some(l) = wanted.filter(|l| self.plan.languages.contains(l)) {
                        self.language = l.clone();
                        self.vars.insert("language".into(), l);
                    }
                    id = next.clone();
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

    // ---- keys ----

    /// Feeds waiting keys to whatever is waiting for them, until it moves on or they run out.
    fn consume_keys(&mut self, now: Instant) {
        loop {
            let waiting = matches!(
                self.phase,
                Phase::MenuWait { .. }
                    | Phase::Collecting { .. }
                    | Phase::ConfirmWait { .. }
                    | Phase::ChooseWait { .. }
            );
            if !waiting {
                return;
            }
            let Some(d) = self.typeahead.pop_front() else {
                return;
            };
            self.on_key(now, d);
        }
    }

    fn on_key(&mut self, now: Instant, d: Digit) {
        let c = d.as_char();
        let plan = self.plan.clone();
        let node = plan.nodes.get(&self.node);
        match (&mut self.phase, node) {
            (Phase::MenuWait { .. }, Some(Node::Menu { options, back, .. })) => {
                if let (Some(b), '*') = (back, c) {
                    return self.goto(now, b.clone());
                }
                match options.get(&c.to_string()) {
                    Some(next) => self.goto(now, next.clone()),
                    None => self.fail(now, "invalid"),
                }
            }
            (
                Phase::ChooseWait { count, .. },
                Some(Node::Choose {
                    list,
                    var,
                    back,
                    agent,
                    next,
                    ..
                }),
            ) => {
                let count = *count;
                match (c, back, agent) {
                    ('*', Some(b), _) => return self.goto(now, b.clone()),
                    ('0', _, Some(a)) => return self.goto(now, a.clone()),
                    _ => {}
                }
                match c.to_digit(10).map(|i| i as usize) {
                    Some(i) if (1..=count).contains(&i) => {
                        let prefix = format!("{list}.{i}.");
                        let chosen: Vec<(String, String)> = self
                            .vars
                            .iter()
                            .filter_map(|(k, v)| {
                                k.strip_prefix(&prefix)
                                    .map(|f| (format!("{var}.{f}"), v.clone()))
                            })
                            .collect();
                        self.vars.extend(chosen);
                        self.inputs.insert(var.clone(), i.to_string());
                        self.goto(now, next.clone());
                    }
                    _ => self.fail(now, "invalid"),
                }
            }
            (Phase::ConfirmWait { value, .. }, Some(Node::Collect { .. })) => {
                let value = value.clone();
                match c {
                    '1' => self.collect_done(now, value),
                    '2' => {
                        // Re-enter: not a failed attempt.
                        if let Some(Node::Collect { prompts, .. }) = node {
                            let p = prompts.clone();
                            self.play(now, p, true, After::Recollect);
                        }
                    }
                    _ => self.confirm_failed(now, value),
                }
            }
            (
                Phase::Collecting { digits, deadline },
                Some(Node::Collect {
                    max_digits,
                    terminator,
                    inter_digit_timeout,
                    back,
                    agent,
                    ..
                }),
            ) => {
                if digits.is_empty() {
                    match (c, back, agent) {
                        ('*', Some(b), _) => return self.goto(now, b.clone()),
                        ('0', _, Some(a)) => return self.goto(now, a.clone()),
                        _ => {}
                    }
                }
                if terminator.as_deref().and_then(|t| t.chars().next()) == Some(c) {
                    let value = digits.clone();
                    return self.finish_collect(now, value);
                }
                digits.push(c);
                *deadline = now + *inter_digit_timeout;
                if digits.len() >= *max_digits {
                    let value = digits.clone();
                    // Full: a terminator typed after it (or already typed ahead) is spent.
                    if let Some(t) = terminator.as_deref().and_then(|t| t.chars().next()) {
                        if self.typeahead.front().map(|k| k.as_char()) == Some(t) {
                            self.typeahead.pop_front();
                        } else {
                            self.spent_terminator = Some((t, now + *inter_digit_timeout));
                        }
                    }
                    self.finish_collect(now, value);
                }
            }
            _ => {}
        }
    }

    // ---- collect ----

    fn begin_collect(&mut self, now: Instant) {
        let Some(Node::Collect {
            first_digit_timeout,
            ..
        }) = self.plan.nodes.get(&self.node)
        else {
            return;
        };
        self.phase = Phase::Collecting {
            digits: String::new(),
            deadline: now + *first_digit_timeout,
        };
        self.consume_keys(now);
    }

    fn finish_collect(&mut self, now: Instant, value: String) {
        let plan = self.plan.clone();
        let Some(Node::Collect {
            var,
            min_digits,
            validator,
            regex,
            amount_min,
            amount_max,
            confirm,
            confirm_prompts,
            secret,
            ..
        }) = plan.nodes.get(&self.node)
        else {
            return;
        };
        if value.is_empty() {
            return self.fail(now, "no-input");
        }
        if value.len() < *min_digits {
            return self.fail(now, "invalid");
        }
        // A number keyed without its country code is read in the caller's country.
        let home = self
            .vars
            .get("caller")
            .map(String::as_str)
            .and_then(topup_values::phone::home_country);
        let extra = match validate(
            &value,
            *validator,
            regex.as_deref(),
            *amount_min,
            *amount_max,
            home.as_deref(),
        ) {
            Ok(extra) => extra,
            // A caller who left out the country code is told so, not just "not valid".
            Err(Rejected { kind, why }) => {
                self.vars.insert(format!("{var}_error"), why);
                return self.fail(now, kind);
            }
        };
        if *secret {
            self.secrets.insert(var.clone(), Pin::new(&value));
        } else {
            self.vars.insert(var.clone(), value.clone());
        }
        for (suffix, v) in extra {
            self.vars.insert(format!("{var}_{suffix}"), v);
        }
        self.inputs.insert(
            var.clone(),
            if *secret {
                "****".into()
            } else {
                value.clone()
            },
        );
        match confirm {
            Some(how) => {
                let mut names = confirm_prompts.clone();
                names.extend(match how {
                    ConfirmAs::Digits => say::digits(&value),
                    ConfirmAs::Phone => say_phone(
                        self.vars
                            .get(&format!("{var}_e164"))
                            .map(String::as_str)
                            .unwrap_or(&value),
                    ),
                    ConfirmAs::Amount => value
                        .parse::<u64>()
                        .map(|n| say::number(&self.language, n, false))
                        .unwrap_or_default(),
                });
                names.push(CONFIRM_PROMPT.into());
                self.play(now, names, true, After::ConfirmWait(value));
            }
            None => self.collect_done(now, value),
        }
    }

    fn collect_done(&mut self, now: Instant, value: String) {
        let plan = self.plan.clone();
        if let Some(Node::Collect {
            append_to, next, ..
        }) = plan.nodes.get(&self.node)
        {
            if let Some(h) = append_to {
                self.vars.entry(h.clone()).or_default().push_str(&value);
            }
            self.goto(now, next.clone());
        }
    }

    fn confirm_failed(&mut self, now: Instant, value: String) {
        self.tries += 1;
        let plan = self.plan.clone();
        let Some(Node::Collect {
            max_tries,
            on_failure,
            confirm_prompts,
            var,
            ..
        }) = plan.nodes.get(&self.node)
        else {
            return;
        };
        if self.tries >= *max_tries {
            self.last_failure = Some(format!("{var}-not-confirmed"));
            return self.goto(now, on_failure.clone());
        }
        let mut names = confirm_prompts.clone();
        names.extend(say::digits(&value));
        names.push(CONFIRM_PROMPT.into());
        self.play(now, names, true, After::ConfirmWait(value));
    }

    /// A failed attempt in a menu, collect or choose node: try again or give up.
    fn fail(&mut self, now: Instant, kind: &str) {
        self.tries += 1;
        let plan = self.plan.clone();
        let Some(node) = plan.nodes.get(&self.node) else {
            return;
        };
        let (max, on_failure, invalid, no_input, again, then) = match node {
            Node::Menu {
                max_tries,
                on_failure,
                invalid_prompts,
                no_input_prompts,
                prompts,
                short_prompts,
                ..
            } => (
                *max_tries,
                on_failure,
                invalid_prompts,
                no_input_prompts,
                if short_prompts.is_empty() {
                    prompts.clone()
                } else {
                    short_prompts.clone()
                },
                After::MenuWait,
            ),
            Node::Collect {
                max_tries,
                on_failure,
                invalid_prompts,
                no_input_prompts,
                prompts,
                ..
            } => (
                *max_tries,
                on_failure,
                invalid_prompts,
                no_input_prompts,
                prompts.clone(),
                After::Recollect,
            ),
            Node::Choose {
                max_tries,
                on_failure,
                invalid_prompts,
                no_input_prompts,
                ..
            } => {
                // Replaying a choose node re-announces the list.
                if self.tries >= *max_tries {
                    self.last_failure = Some(format!("{}-{kind}", self.node));
                    return self.goto(now, on_failure.clone());
                }
                let sorry = if kind == "no-input" && !no_input_prompts.is_empty() {
                    no_input_prompts
                } else {
                    invalid_prompts
                };
                let count = match self.phase {
                    Phase::ChooseWait { count, .. } => count,
                    _ => 0,
                };
                let mut names = sorry.clone();
                if let Node::Choose {
                    list,
                    item,
                    prompts,
                    ..
                } = node
                {
                    names.extend(prompts.clone());
                    names.extend(self.choices(list, item, count));
                }
                self.play(now, names, true, After::ChooseWait(count));
                return;
            }
            _ => return,
        };
        if self.tries >= max {
            self.last_failure = Some(format!("{}-{kind}", self.node));
            return self.goto(now, on_failure.clone());
        }
        let mut names = if kind == "no-input" && !no_input.is_empty() {
            no_input.clone()
        } else if kind == NO_COUNTRY_CODE {
            vec![COUNTRY_CODE_PROMPT.to_string()]
        } else {
            invalid.clone()
        };
        names.extend(again);
        self.play(now, names, true, then);
    }
}

/// Reads an E.164 number in groups, the country code first.
fn say_phone(e164: &str) -> Vec<String> {
    let cc_len = topup_values::phone::parse_number(e164)
        .map(|n| n.country_code.to_string().len())
        .unwrap_or(1);
    say::phone(e164, cc_len)
}

/// Why a collected value was refused: the reason (kept in `<var>_error`) and the failure kind
/// the collect reports (`invalid`, or [`NO_COUNTRY_CODE`] for a number keyed without one, which
/// the caller is told).
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    pub kind: &'static str,
    pub why: String,
}

impl From<String> for Rejected {
    fn from(why: String) -> Rejected {
        Rejected {
            kind: "invalid",
            why,
        }
    }
}

impl From<&str> for Rejected {
    fn from(why: &str) -> Rejected {
        why.to_string().into()
    }
}

/// Checks what a collect took; returns extra variables (`<var>_<suffix>`) or why it is
/// refused. `home` is the caller's country (ISO alpha-2), in which a phone number keyed
/// without its country code is read.
pub fn validate(
    value: &str,
    validator: Option<Validator>,
    regex: Option<&str>,
    amount_min: Option<u64>,
    amount_max: Option<u64>,
    home: Option<&str>,
) -> Result<Vec<(String, String)>, Rejected> {
    match validator {
        None => Ok(vec![]),
        Some(Validator::Pin) => {
            if value.bytes().all(|b| b.is_ascii_digit()) {
                Ok(vec![])
            } else {
                Err("not digits".into())
            }
        }
        Some(v @ (Validator::E164 | Validator::Callable)) => {
            let parsed = if v == Validator::E164 {
                topup_values::phone::parse_number_from(value, home)
            } else {
                topup_values::phone::parse_callable_from(value, home)
            };
            parsed
                .map(|n| vec![("e164".into(), n.e164), ("country".into(), n.country)])
                .map_err(|e| Rejected {
                    kind: if e == InvalidNumber::MissingCountryCode {
                        NO_COUNTRY_CODE
                    } else {
                        "invalid"
                    },
                    why: e.to_string(),
                })
        }
        Some(Validator::Amount) => {
            let n: u64 = value.parse().map_err(|_| "not a whole amount")?;
            match (amount_min, amount_max) {
                (Some(lo), Some(hi)) if n < lo || n > hi => {
                    Err(format!("outside {lo} to {hi}").into())
                }
                _ => Ok(vec![]),
            }
        }
        Some(Validator::Regex) => {
            let re = regex_lite::Regex::new(&format!("^(?:{})$", regex.unwrap_or("")))
                .map_err(|e| e.to_string())?;
            if re.is_match(value) {
                Ok(vec![])
            } else {
                Err("does not match".into())
            }
        }
    }
}

#[cfg(test)]
#[path = "interpreter_tests.rs"]
mod tests;
