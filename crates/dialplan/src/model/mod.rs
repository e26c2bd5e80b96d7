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
    /// Said only when these two variables differ: `unless_same = [".receive", ".price"]` skips
    /// "paying five dollars" after "for five dollars".
    #[serde(default)]
    pub unless_same: Option<[String; 2]>,
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
        /// Played while the operation runs, once it has taken longer than
        /// `WAIT_PROMPTS_AFTER` (an answer that comes at once needs no "one moment please").
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
/// The operations a plan can invoke; the service carries them out (its `call::operations`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    RedeemCard,
    RechargeWallet,
    LookupNumber,
    ListProducts,
    Topup,
    WalletAuth,
    WalletBalance,
    RecentRecipient,
    MinutesLeft,
    Notify,
    SetAccountLanguage,
    Call,
}

impl Op {
    pub const ALL: [Op; 12] = [
        Op::RedeemCard,
        Op::RechargeWallet,
        Op::LookupNumber,
        Op::ListProducts,
        Op::Topup,
        Op::WalletAuth,
        Op::WalletBalance,
        Op::RecentRecipient,
        Op::MinutesLeft,
        Op::Notify,
        Op::SetAccountLanguage,
        Op::Call,
    ];

    /// The name plans write (`op = "redeem_card"`).
    pub fn name(self) -> &'static str {
        match self {
            Op::RedeemCard => "redeem_card",
            Op::RechargeWallet => "recharge_wallet",
            Op::LookupNumber => "lookup_number",
            Op::ListProducts => "list_products",
            Op::Topup => "topup",
            Op::WalletAuth => "wallet_auth",
            Op::WalletBalance => "wallet_balance",
            Op::RecentRecipient => "recent_recipient",
            Op::MinutesLeft => "minutes_left",
            Op::Notify => "notify",
            Op::SetAccountLanguage => "set_account_language",
            Op::Call => "call",
        }
    }

    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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
                validator,
                ..
            } => {
                let mut v = names(&[prompts, invalid_prompts, no_input_prompts, confirm_prompts]);
                if confirm.is_some() {
                    v.push(CONFIRM_PROMPT);
                }
                if matches!(validator, Some(Validator::E164 | Validator::Callable)) {
                    v.push(COUNTRY_CODE_PROMPT);
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
/// "Please start with the country code": said instead of the invalid prompts when a number
/// (validator `e164` or `callable`) was keyed without one.
pub const COUNTRY_CODE_PROMPT: &str = "number-needs-country-code";
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

mod check;
mod load;

#[cfg(test)]
mod tests;

pub use load::*;
