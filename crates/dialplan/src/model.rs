//! Dialplan files: one TOML file per service under `dialplans/`, chosen by the dialled number
//! (and optionally the caller's number prefix). See `dialplans/README.md` for the language.
//!
//! Loading checks every reference, every prompt in every language of the plan, that menus and
//! collects have timeouts, invalid handling and a way out, that every node is reachable and
//! that no loop lacks an exit; errors name file:line:col with a hint.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::say;
use topup_media::dtmf::Digit;
use topup_values::textfile::de_duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dialplan {
    /// Service name (in CDRs, escalations and logs).
    pub service: String,
    /// Dialled users (Request-URI user part) routed to this plan.
    pub numbers: Vec<String>,
    /// Caller number prefixes this plan is for (empty: everyone).
    #[serde(default)]
    pub callers: Vec<String>,
    /// The language a call starts in.
    pub language: String,
    /// Every language the plan can switch to (default: just `language`). Every prompt must
    /// exist in each.
    #[serde(default)]
    pub languages: Vec<String>,
    pub start: String,
    /// Store the digits callers press in the CDR. Only for test lines: never on a plan that
    /// collects PINs.
    #[serde(default)]
    pub record_digits: bool,
    pub nodes: BTreeMap<String, Node>,
    #[serde(skip)]
    pub source: PathBuf,
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn three() -> u32 {
    3
}
fn agents() -> String {
    "agents".into()
}

/// One piece of an announcement: exactly one field set.
#[derive(Clone, Debug, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SayItem {
    /// A prompt by name.
    #[serde(default)]
    pub prompt: Option<String>,
    /// A prompt whose name is in a variable (e.g. the carrier's name prompt).
    #[serde(default)]
    pub prompt_from: Option<String>,
    /// A variable read key by key.
    #[serde(default)]
    pub digits: Option<String>,
    /// A variable holding an amount ("12.50 USD").
    #[serde(default)]
    pub money: Option<String>,
    /// A variable holding a whole number.
    #[serde(default)]
    pub number: Option<String>,
    /// A variable holding an E.164 number, read in groups.
    #[serde(default)]
    pub phone: Option<String>,
    /// A variable holding a number of minutes.
    #[serde(default)]
    pub minutes: Option<String>,
}

impl SayItem {
    fn fields(&self) -> usize {
        [
            &self.prompt,
            &self.prompt_from,
            &self.digits,
            &self.money,
            &self.number,
            &self.phone,
            &self.minutes,
        ]
        .iter()
        .filter(|f| f.is_some())
        .count()
    }

    /// Whether it needs the language's say fragments.
    fn uses_fragments(&self) -> bool {
        self.digits.is_some()
            || self.money.is_some()
            || self.number.is_some()
            || self.phone.is_some()
            || self.minutes.is_some()
    }
}

/// How a collected value is read back for confirmation.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConfirmAs {
    Digits,
    Phone,
    Amount,
}

/// What a collected value must look like.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Validator {
    /// Digits only (lengths from min/max_digits).
    Pin,
    /// A mobile number with its country code (sets `<var>_e164`).
    E164,
    /// A number calls may be placed to (landline, mobile, toll-free...), with its country
    /// code (sets `<var>_e164`).
    Callable,
    /// Whole currency units within amount_min..amount_max.
    Amount,
    /// Matches `regex` (whole value).
    Regex,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Node {
    /// Play prompts, then go on.
    Play {
        prompts: Vec<String>,
        /// A key press stops the prompt (the key is kept for the next collect or menu).
        #[serde(default = "yes")]
        barge_in: bool,
        next: String,
    },
    /// An announcement built from prompts and variables.
    Say {
        items: Vec<SayItem>,
        #[serde(default = "yes")]
        barge_in: bool,
        next: String,
    },
    /// One key chooses where to go.
    Menu {
        prompts: Vec<String>,
        /// Played instead of `prompts` on later attempts.
        #[serde(default)]
        short_prompts: Vec<String>,
        options: BTreeMap<String, String>,
        #[serde(deserialize_with = "de_duration")]
        timeout: Duration,
        #[serde(default = "three")]
        max_tries: u32,
        #[serde(default)]
        invalid_prompts: Vec<String>,
        #[serde(default)]
        no_input_prompts: Vec<String>,
        on_failure: String,
        /// `*` goes here.
        #[serde(default)]
        back: Option<String>,
    },
    /// Collect keys into a variable.
    Collect {
        var: String,
        #[serde(default)]
        prompts: Vec<String>,
        #[serde(default)]
        append_to: Option<String>,
        #[serde(default = "one")]
        min_digits: usize,
        max_digits: usize,
        /// Key that ends entry early (usually `#`); not stored.
        #[serde(default)]
        terminator: Option<String>,
        #[serde(deserialize_with = "de_duration")]
        first_digit_timeout: Duration,
        #[serde(deserialize_with = "de_duration")]
        inter_digit_timeout: Duration,
        /// Attempts (no input, too few digits, invalid) before `on_failure`.
        #[serde(default = "three")]
        max_tries: u32,
        #[serde(default)]
        validator: Option<Validator>,
        #[serde(default)]
        regex: Option<String>,
        #[serde(default)]
        amount_min: Option<u64>,
        #[serde(default)]
        amount_max: Option<u64>,
        #[serde(default)]
        invalid_prompts: Vec<String>,
        #[serde(default)]
        no_input_prompts: Vec<String>,
        /// Read the value back and ask "press 1 if correct, 2 to re-enter".
        #[serde(default)]
        confirm: Option<ConfirmAs>,
        /// Played before the read-back ("You entered").
        #[serde(default)]
        confirm_prompts: Vec<String>,
        /// Masked in escalations and never read back (PINs).
        #[serde(default)]
        secret: bool,
        next: String,
        on_failure: String,
        /// `*` as the first key goes here.
        #[serde(default)]
        back: Option<String>,
        /// `0` as the first key goes here (only where no valid entry starts with 0).
        #[serde(default)]
        agent: Option<String>,
    },
    /// A menu built from a list an operation produced: "for 100 pesos, press 1; ...".
    Choose {
        /// The list's variables: `<list>.count`, `<list>.<i>.<field>`.
        list: String,
        /// The chosen entry's fields are copied to `<var>.<field>`.
        var: String,
        #[serde(default)]
        prompts: Vec<String>,
        /// Said for each entry; `.field` names refer to the entry.
        item: Vec<SayItem>,
        #[serde(default = "five")]
        max_items: usize,
        #[serde(deserialize_with = "de_duration")]
        timeout: Duration,
        #[serde(default = "three")]
        max_tries: u32,
        #[serde(default)]
        invalid_prompts: Vec<String>,
        #[serde(default)]
        no_input_prompts: Vec<String>,
        next: String,
        on_empty: String,
        on_failure: String,
        #[serde(default)]
        back: Option<String>,
        #[serde(default)]
        agent: Option<String>,
    },
    /// Run a top-up core operation; its result code picks the next node.
    Invoke {
        op: String,
        /// Operation argument → variable holding its value.
        #[serde(default)]
        args: BTreeMap<String, String>,
        /// Result code → node; `default` catches the rest (required).
        results: BTreeMap<String, String>,
        /// Played while the operation runs.
        #[serde(default)]
        wait_prompts: Vec<String>,
    },
    /// Hand the caller to a target (the agents' queue) with the call's context.
    Transfer {
        #[serde(default = "agents")]
        target: String,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        prompts: Vec<String>,
    },
    /// Go to `then` if the variable matches, else to `else`.
    Branch {
        var: String,
        #[serde(default)]
        equals: Option<String>,
        #[serde(default)]
        ends_with: Option<String>,
        /// Matches when the variable is set and not empty.
        #[serde(default)]
        is_set: bool,
        then: String,
        #[serde(rename = "else")]
        otherwise: String,
    },
    Goto {
        target: String,
    },
    /// Counts passes (e.g. wrong PINs): adds one to `var`; past `limit` goes to `on_limit`.
    Count {
        var: String,
        limit: u32,
        next: String,
        on_limit: String,
    },
    /// Switch the prompts' language (to a fixed one or one from a variable).
    SetLanguage {
        #[serde(default)]
        language: Option<String>,
        #[serde(default)]
        from: Option<String>,
        next: String,
    },
    /// End the call.
    Hangup {},
}

fn five() -> usize {
    5
}

/// An `invoke` argument written in single quotes is that text itself, not a variable.
pub fn literal(v: &str) -> Option<&str> {
    v.strip_prefix('\'')?.strip_suffix('\'')
}

/// Operations the voice services can invoke (the service carries them out).
pub const OPS: &[&str] = &[
    "redeem_card",
    "recharge_wallet",
    "lookup_number",
    "list_products",
    "topup",
    "wallet_auth",
    "wallet_balance",
    "recent_recipient",
    "minutes_left",
    "notify",
    "set_account_language",
    "call",
];

impl Node {
    /// Nodes this one can go to.
    pub fn targets(&self) -> Vec<&str> {
        self.edges().into_iter().map(|(_, t)| t).collect()
    }

    /// Where this node can go, each with why (a key, a result code, next, failure...).
    pub fn edges(&self) -> Vec<(String, &str)> {
        match self {
            Node::Play { next, .. } | Node::Say { next, .. } | Node::SetLanguage { next, .. } => {
                vec![(String::new(), next.as_str())]
            }
            Node::Menu {
                options,
                on_failure,
                back,
                ..
            } => {
                let mut v: Vec<(String, &str)> = options
                    .iter()
                    .map(|(k, t)| (k.clone(), t.as_str()))
                    .collect();
                v.push(("failure".into(), on_failure));
                if let Some(b) = back {
                    v.push(("*".into(), b));
                }
                v
            }
            Node::Collect {
                next,
                on_failure,
                back,
                agent,
                ..
            } => {
                let mut v = vec![
                    (String::new(), next.as_str()),
                    ("failure".to_string(), on_failure.as_str()),
                ];
                if let Some(b) = back {
                    v.push(("*".into(), b));
                }
                if let Some(a) = agent {
                    v.push(("0".into(), a));
                }
                v
            }
            Node::Choose {
                next,
                on_empty,
                on_failure,
                back,
                agent,
                ..
            } => {
                let mut v = vec![
                    (String::new(), next.as_str()),
                    ("empty".to_string(), on_empty.as_str()),
                    ("failure".to_string(), on_failure.as_str()),
                ];
                if let Some(b) = back {
                    v.push(("*".into(), b));
                }
                if let Some(a) = agent {
                    v.push(("0".into(), a));
                }
                v
            }
            Node::Invoke { results, .. } => results
                .iter()
                .map(|(k, t)| (k.clone(), t.as_str()))
                .collect(),
            Node::Branch {
                then, otherwise, ..
            } => {
                vec![
                    ("yes".into(), then.as_str()),
                    ("no".into(), otherwise.as_str()),
                ]
            }
            Node::Goto { target } => vec![(String::new(), target.as_str())],
            Node::Count { next, on_limit, .. } => {
                vec![
                    (String::new(), next.as_str()),
                    ("limit".into(), on_limit.as_str()),
                ]
            }
            Node::Transfer { .. } | Node::Hangup {} => vec![],
        }
    }

    /// The node's kind as written in files.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Play { .. } => "play",
            Node::Say { .. } => "say",
            Node::Menu { .. } => "menu",
            Node::Collect { .. } => "collect",
            Node::Choose { .. } => "choose",
            Node::Invoke { .. } => "invoke",
            Node::Transfer { .. } => "transfer",
            Node::Branch { .. } => "branch",
            Node::Goto { .. } => "goto",
            Node::Count { .. } => "count",
            Node::SetLanguage { .. } => "set_language",
            Node::Hangup {} => "hangup",
        }
    }

    /// Prompts this node plays by name.
    pub fn prompts(&self) -> Vec<&str> {
        fn names<'a>(lists: &[&'a Vec<String>]) -> Vec<&'a str> {
            lists
                .iter()
                .flat_map(|l| l.iter().map(String::as_str))
                .collect()
        }
        fn items(v: &[SayItem]) -> Vec<&str> {
            v.iter().filter_map(|i| i.prompt.as_deref()).collect()
        }
        match self {
            Node::Play { prompts, .. } => names(&[prompts]),
            Node::Say { items: it, .. } => items(it),
            Node::Menu {
                prompts,
                short_prompts,
                invalid_prompts,
                no_input_prompts,
                ..
            } => names(&[prompts, short_prompts, invalid_prompts, no_input_prompts]),
            Node::Collect {
                prompts,
                invalid_prompts,
                no_input_prompts,
                confirm_prompts,
                confirm,
                ..
            } => {
                let mut v = names(&[prompts, invalid_prompts, no_input_prompts, confirm_prompts]);
                if confirm.is_some() {
                    v.push(CONFIRM_PROMPT);
                }
                v
            }
            Node::Choose {
                prompts,
                item,
                invalid_prompts,
                no_input_prompts,
                ..
            } => {
                let mut v = names(&[prompts, invalid_prompts, no_input_prompts]);
                v.extend(items(item));
                v.push(PRESS_PROMPT);
                v
            }
            Node::Invoke { wait_prompts, .. } => names(&[wait_prompts]),
            Node::Transfer { prompts, .. } => names(&[prompts]),
            _ => vec![],
        }
    }

    /// Whether the node speaks numbers, money, digits or phones (needs the say fragments).
    fn uses_say(&self) -> bool {
        match self {
            Node::Say { items, .. } => items.iter().any(SayItem::uses_fragments),
            Node::Choose { .. } => true,
            Node::Collect { confirm, .. } => confirm.is_some(),
            _ => false,
        }
    }

    /// Nodes that end the call (the exits loops must reach).
    fn is_exit(&self) -> bool {
        matches!(self, Node::Transfer { .. } | Node::Hangup {})
    }

    /// Nodes that pass through at once, without waiting for audio, keys or an operation.
    fn is_instant(&self) -> bool {
        matches!(
            self,
            Node::Branch { .. } | Node::Goto { .. } | Node::SetLanguage { .. }
        )
    }
}

/// "Press 1 if this is correct, 2 to enter it again."
pub const CONFIRM_PROMPT: &str = "confirm-1-2";
/// "press" (followed by the key) in choose menus.
pub const PRESS_PROMPT: &str = "press";

/// The prompt that says one key.
pub fn say_prompt(d: Digit) -> &'static str {
    SAY_PROMPTS[d.event_code() as usize]
}

/// Prompts that say single keys, in event-code order.
pub const SAY_PROMPTS: [&str; 16] = [
    "digit-0", "digit-1", "digit-2", "digit-3", "digit-4", "digit-5", "digit-6", "digit-7",
    "digit-8", "digit-9", "star", "pound", "letter-a", "letter-b", "letter-c", "letter-d",
];

#[derive(Debug, thiserror::Error)]
pub enum DialplanError {
    #[error("{file}: {reason}")]
    Io { file: PathBuf, reason: String },
    #[error("{file}: {reason}")]
    Syntax { file: PathBuf, reason: String },
    #[error("{file}:{line}:{col}: {reason}{}", hint.as_ref().map(|h| format!(" (hint: {h})")).unwrap_or_default())]
    Invalid {
        file: PathBuf,
        line: usize,
        col: usize,
        reason: String,
        hint: Option<String>,
    },
}

/// What plans are checked against, from the layers that own it: which prompts exist, and
/// which messages `notify` may send (the SMS texts' message names).
#[derive(Clone, Copy)]
pub struct Catalog<'a> {
    /// `has_prompt(language, name)`.
    pub has_prompt: &'a dyn Fn(&str, &str) -> bool,
    pub messages: &'a [&'a str],
}

impl Catalog<'static> {
    /// Every prompt exists and `notify` may send nothing (tests, fuzzing, benchmarks).
    pub const EVERY_PROMPT: Catalog<'static> = Catalog {
        has_prompt: &every_prompt,
        messages: &[],
    };
}

fn every_prompt(_: &str, _: &str) -> bool {
    true
}

impl<'a> Catalog<'a> {
    pub fn new(has_prompt: &'a dyn Fn(&str, &str) -> bool, messages: &'a [&'a str]) -> Self {
        Catalog {
            has_prompt,
            messages,
        }
    }
}

impl Dialplan {
    /// Parses and checks one file against `catalog`.
    pub fn load(path: &Path, catalog: &Catalog) -> Result<Dialplan, Vec<DialplanError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![DialplanError::Io {
                file: path.to_path_buf(),
                reason: e.to_string(),
            }]
        })?;
        Self::parse(path, &text, catalog)
    }

    pub fn parse(
        path: &Path,
        text: &str,
        catalog: &Catalog,
    ) -> Result<Dialplan, Vec<DialplanError>> {
        let mut plan: Dialplan = toml::from_str(text).map_err(|e| {
            vec![DialplanError::Syntax {
                file: path.to_path_buf(),
                reason: e
                    .to_string()
                    .trim_end()
                    .replace('\n', " ")
                    .replace("  ", " "),
            }]
        })?;
        plan.source = path.to_path_buf();
        if plan.languages.is_empty() {
            plan.languages = vec![plan.language.clone()];
        }
        let errors = plan.check(text, catalog);
        if errors.is_empty() {
            Ok(plan)
        } else {
            Err(errors)
        }
    }

    fn check(&self, text: &str, catalog: &Catalog) -> Vec<DialplanError> {
        let has_prompt = catalog.has_prompt;
        let mut errors = vec![];
        let mut err = |(line, col): (usize, usize), reason: String, hint: Option<&str>| {
            errors.push(DialplanError::Invalid {
                file: self.source.clone(),
                line,
                col,
                reason,
                hint: hint.map(String::from),
            })
        };
        let top = |key: &str| position_of(text, &format!("{key} ="));
        if self.numbers.is_empty() {
            err(
                top("numbers"),
                "`numbers` is empty: no dialled number reaches this plan".into(),
                None,
            );
        }
        if !self.languages.contains(&self.language) {
            err(
                top("language"),
                format!("language `{}` is not in `languages`", self.language),
                None,
            );
        }
        if !self.nodes.contains_key(&self.start) {
            err(
                top("start"),
                format!("start node `{}` does not exist", self.start),
                Some("start names one of the [nodes.*] tables"),
            );
        }
        let mut needs_say = false;
        for (id, node) in &self.nodes {
            let at = node_position(text, id);
            for t in node.targets() {
                if !self.nodes.contains_key(t) {
                    err(
                        at,
                        format!("node `{id}` goes to `{t}`, which does not exist"),
                        Some("add [nodes.{t}] or fix the name"),
                    );
                }
            }
            for lang in &self.languages {
                for p in node.prompts() {
                    if !has_prompt(lang, p) {
                        err(
                            at,
                            format!(
                                "node `{id}`: prompt `{p}` does not exist in language `{lang}`"
                            ),
                            Some(&format!(
                                "add it to prompts/{lang}/manifest.toml and run scripts/gen-prompts.py"
                            )),
                        );
                    }
                }
            }
            needs_say |= node.uses_say();
            self.check_node(id, node, at, catalog, &mut err);
        }
        if needs_say {
            for lang in &self.languages {
                let missing: Vec<String> = say::fragments(lang)
                    .into_iter()
                    .filter(|f| !has_prompt(lang, f))
                    .collect();
                if !missing.is_empty() {
                    err(
                        (1, 1),
                        format!(
                            "language `{lang}` lacks the say fragments {}",
                            missing.join(", ")
                        ),
                        Some("numbers, money and phones are built from these prompts"),
                    );
                }
            }
        }
        self.check_graph(text, &mut err);
        errors
    }

    fn check_node(
        &self,
        id: &str,
        node: &Node,
        at: (usize, usize),
        catalog: &Catalog,
        err: &mut impl FnMut((usize, usize), String, Option<&str>),
    ) {
        let tries = |n: u32, err: &mut Reporter<'_>| {
            if n == 0 {
                err(
                    at,
                    format!("node `{id}`: max_tries must be at least 1"),
                    None,
                );
            }
        };
        match node {
            Node::Say { items, .. } => {
                for it in items {
                    if it.fields() != 1 {
                        err(
                            at,
                            format!(
                                "node `{id}`: each say item sets exactly one of prompt, prompt_from, digits, money, number, phone, minutes"
                            ),
                            None,
                        );
                    }
                }
            }
            Node::Menu {
                options,
                timeout,
                max_tries,
                invalid_prompts,
                ..
            } => {
                tries(*max_tries, err);
                if timeout.is_zero() {
                    err(at, format!("node `{id}`: a menu needs a timeout"), None);
                }
                if options.is_empty() {
                    err(at, format!("node `{id}`: a menu needs options"), None);
                }
                if invalid_prompts.is_empty() {
                    err(
                        at,
                        format!("node `{id}`: a menu needs invalid_prompts"),
                        Some("say what went wrong, e.g. \"That is not a valid choice\""),
                    );
                }
                for k in options.keys() {
                    if k.chars().count() != 1
                        || k.chars().next().and_then(Digit::from_char).is_none()
                    {
                        err(at, format!("node `{id}`: option `{k}` is not a key"), None);
                    }
                }
            }
            Node::Collect {
                min_digits,
                max_digits,
                terminator,
                max_tries,
                validator,
                regex,
                amount_min,
                amount_max,
                invalid_prompts,
                first_digit_timeout,
                secret,
                confirm,
                ..
            } => {
                tries(*max_tries, err);
                if first_digit_timeout.is_zero() {
                    err(
                        at,
                        format!("node `{id}`: first_digit_timeout must be longer than zero"),
                        None,
                    );
                }
                if *max_digits == 0 || min_digits > max_digits {
                    err(
                        at,
                        format!(
                            "node `{id}`: need 1 ≤ min_digits ≤ max_digits (got {min_digits}, {max_digits})"
                        ),
                        None,
                    );
                }
                if let Some(t) = terminator
                    && (t.chars().count() != 1
                        || t.chars().next().and_then(Digit::from_char).is_none())
                {
                    err(
                        at,
                        format!("node `{id}`: terminator `{t}` is not a key"),
                        None,
                    );
                }
                if validator.is_some() && invalid_prompts.is_empty() {
                    err(
                        at,
                        format!("node `{id}`: a validated collect needs invalid_prompts"),
                        None,
                    );
                }
                if *secret && confirm.is_some() {
                    err(
                        at,
                        format!("node `{id}`: a secret is never read back (remove confirm)"),
                        None,
                    );
                }
                match validator {
                    Some(Validator::Regex) => match regex
                        .as_deref()
                        .map(|r| regex_lite::Regex::new(&format!("^(?:{r})$")))
                    {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => err(at, format!("node `{id}`: bad regex: {e}"), None),
                        None => err(
                            at,
                            format!("node `{id}`: validator regex needs `regex`"),
                            None,
                        ),
                    },
                    Some(Validator::Amount)
                        if amount_min.zip(*amount_max).is_none_or(|(a, b)| a > b) =>
                    {
                        err(
                            at,
                            format!("node `{id}`: validator amount needs amount_min ≤ amount_max"),
                            None,
                        );
                    }
                    _ => {}
                }
            }
            Node::Choose {
                max_items,
                max_tries,
                timeout,
                ..
            } => {
                tries(*max_tries, err);
                if *max_items == 0 || *max_items > 9 || timeout.is_zero() {
                    err(
                        at,
                        format!("node `{id}`: choose needs 1 ≤ max_items ≤ 9 and a timeout"),
                        None,
                    );
                }
            }
            Node::Invoke {
                op, results, args, ..
            } => {
                if op == "notify" {
                    let known = catalog.messages.iter().copied();
                    let msg = args.get("message").and_then(|v| literal(v));
                    if !msg.is_some_and(|m| known.clone().any(|k| k == m)) {
                        err(
                            at,
                            format!(
                                "node `{id}`: notify needs `message` naming an SMS message in quotes, like \"'call_no_funds'\""
                            ),
                            Some(&format!("one of {}", known.collect::<Vec<_>>().join(", "))),
                        );
                    }
                }
                if !OPS.contains(&op.as_str()) {
                    err(
                        at,
                        format!("node `{id}`: unknown operation `{op}`"),
                        Some(&format!("one of {}", OPS.join(", "))),
                    );
                }
                if !results.contains_key("default") {
                    err(
                        at,
                        format!("node `{id}`: results need a `default`"),
                        Some("where to go for any other result"),
                    );
                }
            }
            Node::Branch {
                equals,
                ends_with,
                is_set,
                ..
            } if [equals.is_some(), ends_with.is_some(), *is_set]
                .iter()
                .filter(|b| **b)
                .count()
                != 1 =>
            {
                err(
                    at,
                    format!("node `{id}`: give exactly one of `equals`, `ends_with` or `is_set`"),
                    None,
                );
            }
            Node::SetLanguage { language, from, .. } => match (language, from) {
                (Some(l), None) if !self.languages.contains(l) => {
                    err(
                        at,
                        format!("node `{id}`: language `{l}` is not in the plan's languages"),
                        None,
                    );
                }
                (Some(_), None) | (None, Some(_)) => {}
                _ => err(
                    at,
                    format!("node `{id}`: give exactly one of `language` or `from`"),
                    None,
                ),
            },
            _ => {}
        }
    }

    /// Reachability from the start, an exit reachable from every node, and no cycle of
    /// instant nodes (which would spin without ever waiting).
    fn check_graph(&self, text: &str, err: &mut impl FnMut((usize, usize), String, Option<&str>)) {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut queue: VecDeque<&str> = VecDeque::from([self.start.as_str()]);
        while let Some(id) = queue.pop_front() {
            if seen.insert(id)
                && let Some(n) = self.nodes.get(id)
            {
                queue.extend(n.targets());
            }
        }
        for id in self.nodes.keys() {
            if !seen.contains(id.as_str()) {
                err(
                    node_position(text, id),
                    format!("node `{id}` cannot be reached from `{}`", self.start),
                    Some("remove it or link it"),
                );
            }
        }
        // Reverse reachability from the exits.
        let mut reverse: HashMap<&str, Vec<&str>> = HashMap::new();
        for (id, n) in &self.nodes {
            for t in n.targets() {
                reverse.entry(t).or_default().push(id);
            }
        }
        let mut can_exit: HashSet<&str> = HashSet::new();
        let mut queue: VecDeque<&str> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.is_exit())
            .map(|(id, _)| id.as_str())
            .collect();
        while let Some(id) = queue.pop_front() {
            if can_exit.insert(id) {
                queue.extend(reverse.get(id).into_iter().flatten());
            }
        }
        for id in self.nodes.keys() {
            if seen.contains(id.as_str()) && !can_exit.contains(id.as_str()) {
                err(
                    node_position(text, id),
                    format!("node `{id}` is in a loop with no way out"),
                    Some("every path needs a hangup or transfer"),
                );
            }
        }
        // Cycles made only of instant nodes.
        for (id, n) in &self.nodes {
            if !n.is_instant() {
                continue;
            }
            let mut stack = vec![id.as_str()];
            let mut visited = HashSet::new();
            while let Some(cur) = stack.pop() {
                for t in self.nodes.get(cur).map(Node::targets).unwrap_or_default() {
                    if t == id {
                        err(
                            node_position(text, id),
                            format!(
                                "node `{id}` loops back to itself without waiting for anything"
                            ),
                            None,
                        );
                        stack.clear();
                        break;
                    }
                    if self.nodes.get(t).is_some_and(Node::is_instant) && visited.insert(t) {
                        stack.push(t);
                    }
                }
            }
        }
    }

    /// Whether the plan serves a call from `caller` to `dialled`.
    pub fn serves(&self, dialled: &str, caller: &str) -> bool {
        self.numbers.iter().any(|n| n == dialled)
            && (self.callers.is_empty()
                || self.callers.iter().any(|p| {
                    caller
                        .trim_start_matches('+')
                        .starts_with(p.trim_start_matches('+'))
                }))
    }
}

/// Reports one problem at (line, col), with an optional hint.
type Reporter<'a> = dyn FnMut((usize, usize), String, Option<&str>) + 'a;

/// (line, column) of the first line starting with `prefix`, or (1, 1).
fn position_of(text: &str, prefix: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(i, l)| {
            let trimmed = l.trim_start();
            trimmed
                .starts_with(prefix)
                .then(|| (i + 1, l.len() - trimmed.len() + 1))
        })
        .unwrap_or((1, 1))
}

fn node_position(text: &str, id: &str) -> (usize, usize) {
    let a = position_of(text, &format!("[nodes.{id}]"));
    if a != (1, 1) {
        return a;
    }
    position_of(text, &format!("[nodes.\"{id}\"]"))
}

/// All plans in a directory, checked, with the routing table.
#[derive(Debug, Default)]
pub struct Dialplans {
    plans: Vec<std::sync::Arc<Dialplan>>,
}

impl Dialplans {
    pub fn load_dir(dir: &Path, catalog: &Catalog) -> Result<Dialplans, Vec<DialplanError>> {
        let io = |e: std::io::Error| {
            vec![DialplanError::Io {
                file: dir.to_path_buf(),
                reason: e.to_string(),
            }]
        };
        let files = topup_values::textfile::toml_files(dir).map_err(io)?;
        Self::load_files(&files, catalog)
    }

    pub fn load_files(
        files: &[PathBuf],
        catalog: &Catalog,
    ) -> Result<Dialplans, Vec<DialplanError>> {
        let mut plans = vec![];
        let mut errors = vec![];
        for f in files {
            match Dialplan::load(f, catalog) {
                Ok(p) => plans.push(std::sync::Arc::new(p)),
                Err(e) => errors.extend(e),
            }
        }
        let mut owners: BTreeMap<(String, String), &Path> = BTreeMap::new();
        for p in &plans {
            for n in &p.numbers {
                let callers = if p.callers.is_empty() {
                    vec![String::new()]
                } else {
                    p.callers.clone()
                };
                for c in callers {
                    if let Some(other) = owners.insert((n.clone(), c.clone()), &p.source) {
                        errors.push(DialplanError::Invalid {
                            file: p.source.clone(),
                            line: 1,
                            col: 1,
                            reason: format!("number `{n}` is also routed by {}", other.display()),
                            hint: Some("one plan per number (and caller prefix)".into()),
                        });
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(Dialplans { plans })
        } else {
            Err(errors)
        }
    }

    /// The plan for a call: one restricted to the caller's prefix first, else the open one.
    pub fn route(&self, dialled: &str, caller: &str) -> Option<std::sync::Arc<Dialplan>> {
        self.plans
            .iter()
            .filter(|p| p.serves(dialled, caller))
            .max_by_key(|p| !p.callers.is_empty())
            .cloned()
    }

    pub fn plans(&self) -> &[std::sync::Arc<Dialplan>] {
        &self.plans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const ECHO: &str = include_str!("../../../dialplans/echo.toml");

    /// Every prompt, and one SMS message name.
    const CATALOG: Catalog = Catalog {
        has_prompt: &every_prompt,
        messages: &["call_no_funds"],
    };

    fn errors(text: &str) -> Vec<String> {
        Dialplan::parse(Path::new("t.toml"), text, &CATALOG)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_shipped_echo_plan_loads() {
        let p = Dialplan::parse(Path::new("echo.toml"), ECHO, &CATALOG).unwrap();
        assert_eq!(p.numbers, ["echo"]);
        assert!(p.record_digits);
        assert_eq!(p.languages, ["en"]);
    }

    #[test]
    fn broken_references_are_reported_with_file_line_col_and_hint() {
        let text = ECHO.replace("next = \"readback\"", "next = \"nowhere\"");
        let msgs = errors(&text);
        let line = text
            .lines()
            .position(|l| l.starts_with("[nodes.listen]"))
            .unwrap()
            + 1;
        assert!(
            msgs.iter()
                .any(|m| m.starts_with(&format!("t.toml:{line}:1:"))
                    && m.contains("`nowhere`")
                    && m.contains("hint:")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("`readback` cannot be reached")),
            "{msgs:?}"
        );
    }

    #[test]
    fn missing_prompts_are_reported_per_language() {
        let text = ECHO.replace(
            "language = \"en\"",
            "language = \"en\"\nlanguages = [\"en\", \"es\"]",
        );
        let has_prompt = |lang: &str, name: &str| !(lang == "es" && name == "goodbye");
        let errs = Dialplan::parse(Path::new("e.toml"), &text, &Catalog::new(&has_prompt, &[]))
            .unwrap_err();
        assert!(errs.iter().any(|e| {
            e.to_string()
                .contains("prompt `goodbye` does not exist in language `es`")
        }));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_syntax_errors() {
        let text = ECHO.replacen("kind = \"play\"", "kind = \"play\"\nvolume = 3", 1);
        assert!(errors(&text)[0].contains("volume"));
        let text = ECHO.replace(
            "first_digit_timeout = \"15s\"",
            "first_digit_timeout = \"soon\"",
        );
        assert!(errors(&text)[0].contains("soon"));
    }

    const MINI: &str = r#"
service = "t"
numbers = ["t"]
language = "en"
start = "menu"
[nodes.menu]
kind = "menu"
prompts = ["m"]
options = { "1" = "a", "2" = "bye" }
timeout = "5s"
invalid_prompts = ["bad"]
on_failure = "bye"
[nodes.a]
kind = "goto"
target = "b"
[nodes.b]
kind = "goto"
target = "menu"
[nodes.bye]
kind = "hangup"
"#;

    #[test]
    fn menus_need_invalid_handling_and_loops_need_exits() {
        assert!(errors(MINI).is_empty(), "{:?}", errors(MINI));
        let e = errors(&MINI.replace("invalid_prompts = [\"bad\"]\n", ""));
        assert!(
            e.iter().any(|m| m.contains("needs invalid_prompts")),
            "{e:?}"
        );
        let e = errors(&MINI.replace("target = \"menu\"", "target = \"a\""));
        assert!(e.iter().any(|m| m.contains("without waiting")), "{e:?}");
        // The menu's only way out goes to a loop: menu -> a -> b -> a...
        let trapped = MINI
            .replace(
                "options = { \"1\" = \"a\", \"2\" = \"bye\" }",
                "options = { \"1\" = \"a\" }",
            )
            .replace("on_failure = \"bye\"", "on_failure = \"a\"")
            .replace("target = \"menu\"", "target = \"a\"");
        let e = errors(&trapped);
        assert!(e.iter().any(|m| m.contains("no way out")), "{e:?}");
    }

    #[test]
    fn invokes_need_known_ops_and_a_default() {
        let text = MINI.replace(
            "[nodes.a]\nkind = \"goto\"\ntarget = \"b\"",
            "[nodes.a]\nkind = \"invoke\"\nop = \"fly\"\nresults = { ok = \"b\" }",
        );
        let e = errors(&text);
        assert!(
            e.iter().any(|m| m.contains("unknown operation `fly`")),
            "{e:?}"
        );
        assert!(e.iter().any(|m| m.contains("need a `default`")), "{e:?}");
    }

    #[test]
    fn notify_needs_a_quoted_sms_message_name() {
        let with = |arg: &str| {
            errors(&MINI.replace(
                "[nodes.a]\nkind = \"goto\"\ntarget = \"b\"",
                &format!("[nodes.a]\nkind = \"invoke\"\nop = \"notify\"\nargs = {{ message = \"{arg}\" }}\nresults = {{ default = \"b\" }}"),
            ))
        };
        assert!(
            with("'call_no_funds'").is_empty(),
            "{:?}",
            with("'call_no_funds'")
        );
        for bad in ["'no_such_message'", "call_no_funds", "''"] {
            let e = with(bad);
            assert!(
                e.iter().any(|m| m.contains("notify needs `message`")),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn routing_prefers_a_plan_for_the_callers_prefix() {
        let a = Dialplan::parse(Path::new("a.toml"), MINI, &CATALOG).unwrap();
        let b = Dialplan::parse(
            Path::new("b.toml"),
            &MINI.replace(
                "numbers = [\"t\"]",
                "numbers = [\"t\"]\ncallers = [\"+52\"]",
            ),
            &CATALOG,
        )
        .unwrap();
        let plans = Dialplans {
            plans: vec![std::sync::Arc::new(a), std::sync::Arc::new(b)],
        };
        assert_eq!(
            plans.route("t", "+525512345678").unwrap().source,
            Path::new("b.toml")
        );
        assert_eq!(
            plans.route("t", "+12015550100").unwrap().source,
            Path::new("a.toml")
        );
        assert!(plans.route("x", "+1").is_none());
    }
}
