//! Dialplan files: one TOML file per service under `dialplans/`, chosen by the dialled number.
//!
//! ```toml
//! service = "echo"
//! numbers = ["echo"]          # dialled users (DNIS) routed here
//! language = "en"
//! start = "welcome"
//!
//! [nodes.welcome]
//! kind = "play"
//! prompts = ["echo-welcome"]
//! next = "listen"
//! ```
//!
//! Node kinds: `play`, `say` (read a variable back digit by digit), `collect`, `branch`,
//! `hangup`. Loading checks every reference, every prompt in the plan's language, and that
//! every node can be reached; errors name the file and line.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::de_duration;
use crate::media::dtmf::Digit;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dialplan {
    /// Service name (in CDRs and logs).
    pub service: String,
    /// Dialled users (Request-URI user part) routed to this plan.
    pub numbers: Vec<String>,
    pub language: String,
    pub start: String,
    /// Store the digits callers press in the CDR. Only for test lines: never on a plan
    /// that collects PINs.
    #[serde(default)]
    pub record_digits: bool,
    pub nodes: BTreeMap<String, Node>,
    /// Where the plan was loaded from (set by the loader).
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

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Node {
    /// Play prompts, then go on.
    Play {
        prompts: Vec<String>,
        /// A key press stops the prompt (the key is kept for the next collect).
        #[serde(default = "yes")]
        barge_in: bool,
        next: String,
    },
    /// Read a variable back digit by digit (`digit-0`…`digit-9`, `star`, `pound`, `letter-a`…).
    Say {
        digits: String,
        #[serde(default)]
        barge_in: bool,
        next: String,
    },
    /// Collect keys into a variable.
    Collect {
        var: String,
        /// Also append what was collected to this variable (a running history).
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
        /// Attempts (no input, or too few digits) before `on_failure`.
        #[serde(default = "three")]
        max_tries: u32,
        /// Played before each new attempt.
        #[serde(default)]
        retry_prompts: Vec<String>,
        next: String,
        on_failure: String,
    },
    /// Go to `then` if the variable matches, else to `else`.
    Branch {
        var: String,
        #[serde(default)]
        equals: Option<String>,
        #[serde(default)]
        ends_with: Option<String>,
        then: String,
        #[serde(rename = "else")]
        otherwise: String,
    },
    /// End the call.
    Hangup {},
}

impl Node {
    /// Nodes this one can go to.
    pub fn targets(&self) -> Vec<&str> {
        match self {
            Node::Play { next, .. } | Node::Say { next, .. } => vec![next],
            Node::Collect {
                next, on_failure, ..
            } => vec![next, on_failure],
            Node::Branch {
                then, otherwise, ..
            } => vec![then, otherwise],
            Node::Hangup {} => vec![],
        }
    }

    /// Prompts this node plays by name.
    pub fn prompts(&self) -> Vec<&str> {
        match self {
            Node::Play { prompts, .. } => prompts.iter().map(String::as_str).collect(),
            Node::Collect { retry_prompts, .. } => {
                retry_prompts.iter().map(String::as_str).collect()
            }
            Node::Say { .. } => SAY_PROMPTS.to_vec(),
            _ => vec![],
        }
    }
}

/// Prompts `say` uses, one per key.
pub const SAY_PROMPTS: [&str; 16] = [
    "digit-0", "digit-1", "digit-2", "digit-3", "digit-4", "digit-5", "digit-6", "digit-7",
    "digit-8", "digit-9", "star", "pound", "letter-a", "letter-b", "letter-c", "letter-d",
];

/// The prompt that says one key.
pub fn say_prompt(d: Digit) -> &'static str {
    SAY_PROMPTS[d.event_code() as usize]
}

#[derive(Debug, thiserror::Error)]
pub enum DialplanError {
    #[error("{file}: {reason}")]
    Io { file: PathBuf, reason: String },
    #[error("{file}: {reason}")]
    Syntax { file: PathBuf, reason: String },
    #[error("{file}:{line}: {reason}")]
    Invalid {
        file: PathBuf,
        line: usize,
        reason: String,
    },
}

impl Dialplan {
    /// Parses and checks one file. `has_prompt(language, name)` tells which prompts exist.
    pub fn load(
        path: &Path,
        has_prompt: &dyn Fn(&str, &str) -> bool,
    ) -> Result<Dialplan, Vec<DialplanError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![DialplanError::Io {
                file: path.to_path_buf(),
                reason: e.to_string(),
            }]
        })?;
        Self::parse(path, &text, has_prompt)
    }

    pub fn parse(
        path: &Path,
        text: &str,
        has_prompt: &dyn Fn(&str, &str) -> bool,
    ) -> Result<Dialplan, Vec<DialplanError>> {
        let mut plan: Dialplan = toml::from_str(text).map_err(|e| {
            vec![DialplanError::Syntax {
                file: path.to_path_buf(),
                reason: e.to_string().trim_end().to_string(),
            }]
        })?;
        plan.source = path.to_path_buf();
        let errors = plan.check(text, has_prompt);
        if errors.is_empty() {
            Ok(plan)
        } else {
            Err(errors)
        }
    }

    fn check(&self, text: &str, has_prompt: &dyn Fn(&str, &str) -> bool) -> Vec<DialplanError> {
        let mut errors = vec![];
        let mut err = |line: usize, reason: String| {
            errors.push(DialplanError::Invalid {
                file: self.source.clone(),
                line,
                reason,
            })
        };
        let top_line = |key: &str| line_of(text, &format!("{key} ="));
        if self.numbers.is_empty() {
            err(
                top_line("numbers"),
                "`numbers` is empty: no dialled number reaches this plan".into(),
            );
        }
        if !self.nodes.contains_key(&self.start) {
            err(
                top_line("start"),
                format!("start node `{}` does not exist", self.start),
            );
        }
        for (id, node) in &self.nodes {
            let line = node_line(text, id);
            for t in node.targets() {
                if !self.nodes.contains_key(t) {
                    err(
                        line,
                        format!("node `{id}` goes to `{t}`, which does not exist"),
                    );
                }
            }
            for p in node.prompts() {
                if !has_prompt(&self.language, p) {
                    err(
                        line,
                        format!(
                            "node `{id}`: prompt `{p}` does not exist in language `{}`",
                            self.language
                        ),
                    );
                }
            }
            match node {
                Node::Collect {
                    min_digits,
                    max_digits,
                    terminator,
                    max_tries,
                    ..
                } => {
                    if *max_digits == 0 || min_digits > max_digits {
                        err(
                            line,
                            format!(
                                "node `{id}`: need 1 ≤ min_digits ≤ max_digits (got {min_digits}, {max_digits})"
                            ),
                        );
                    }
                    if *max_tries == 0 {
                        err(line, format!("node `{id}`: max_tries must be at least 1"));
                    }
                    if let Some(t) = terminator
                        && (t.chars().count() != 1
                            || t.chars().next().and_then(Digit::from_char).is_none())
                    {
                        err(line, format!("node `{id}`: terminator `{t}` is not a key"));
                    }
                }
                Node::Branch {
                    equals, ends_with, ..
                } if equals.is_some() == ends_with.is_some() => {
                    err(
                        line,
                        format!("node `{id}`: give exactly one of `equals` or `ends_with`"),
                    );
                }
                _ => {}
            }
        }
        // Every node must be reachable from the start.
        let mut seen: HashSet<&str> = HashSet::new();
        let mut queue: VecDeque<&str> = VecDeque::from([self.start.as_str()]);
        while let Some(id) = queue.pop_front() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(n) = self.nodes.get(id) {
                queue.extend(n.targets());
            }
        }
        for id in self.nodes.keys() {
            if !seen.contains(id.as_str()) {
                err(
                    node_line(text, id),
                    format!("node `{id}` cannot be reached from `{}`", self.start),
                );
            }
        }
        errors
    }
}

/// Line (1-based) of the first line starting with `prefix`, or 1.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.trim_start().starts_with(prefix))
        .map_or(1, |i| i + 1)
}

fn node_line(text: &str, id: &str) -> usize {
    let a = line_of(text, &format!("[nodes.{id}]"));
    if a > 1 {
        return a;
    }
    line_of(text, &format!("[nodes.\"{id}\"]"))
}

/// All plans in a directory, checked, with the dialled-number routing table.
#[derive(Debug, Default)]
pub struct Dialplans {
    plans: Vec<std::sync::Arc<Dialplan>>,
}

impl Dialplans {
    pub fn load_dir(
        dir: &Path,
        has_prompt: &dyn Fn(&str, &str) -> bool,
    ) -> Result<Dialplans, Vec<DialplanError>> {
        let io = |e: std::io::Error| {
            vec![DialplanError::Io {
                file: dir.to_path_buf(),
                reason: e.to_string(),
            }]
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        let mut plans = vec![];
        let mut errors = vec![];
        for f in &files {
            match Dialplan::load(f, has_prompt) {
                Ok(p) => plans.push(std::sync::Arc::new(p)),
                Err(e) => errors.extend(e),
            }
        }
        let mut owners: BTreeMap<&str, &Path> = BTreeMap::new();
        for p in &plans {
            for n in &p.numbers {
                if let Some(other) = owners.insert(n, &p.source) {
                    errors.push(DialplanError::Invalid {
                        file: p.source.clone(),
                        line: 1,
                        reason: format!("number `{n}` is also routed by {}", other.display()),
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(Dialplans { plans })
        } else {
            Err(errors)
        }
    }

    /// The plan for a dialled user, if any.
    pub fn route(&self, dialled: &str) -> Option<std::sync::Arc<Dialplan>> {
        self.plans
            .iter()
            .find(|p| p.numbers.iter().any(|n| n == dialled))
            .cloned()
    }

    pub fn plans(&self) -> &[std::sync::Arc<Dialplan>] {
        &self.plans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const ECHO: &str = include_str!("../../dialplans/echo.toml");

    fn any_prompt(_: &str, _: &str) -> bool {
        true
    }

    #[test]
    fn the_shipped_echo_plan_loads() {
        let p = Dialplan::parse(Path::new("echo.toml"), ECHO, &any_prompt).unwrap();
        assert_eq!(p.numbers, ["echo"]);
        assert!(p.record_digits);
    }

    #[test]
    fn broken_references_are_reported_with_file_and_line() {
        let text = ECHO.replace("next = \"readback\"", "next = \"nowhere\"");
        let errs = Dialplan::parse(Path::new("echo.toml"), &text, &any_prompt).unwrap_err();
        let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
        let line = text
            .lines()
            .position(|l| l.starts_with("[nodes.listen]"))
            .unwrap()
            + 1;
        assert!(
            msgs.iter()
                .any(|m| m.starts_with(&format!("echo.toml:{line}:")) && m.contains("`nowhere`")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("`readback` cannot be reached")),
            "{msgs:?}"
        );
    }

    #[test]
    fn missing_prompts_are_reported() {
        let errs =
            Dialplan::parse(Path::new("e.toml"), ECHO, &|_, name| name != "goodbye").unwrap_err();
        assert!(errs.iter().any(|e| {
            e.to_string()
                .contains("prompt `goodbye` does not exist in language `en`")
        }));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_syntax_errors() {
        let text = ECHO.replacen("kind = \"play\"", "kind = \"play\"\nvolume = 3", 1);
        let e = Dialplan::parse(Path::new("e.toml"), &text, &any_prompt).unwrap_err();
        assert!(e[0].to_string().contains("volume"), "{}", e[0]);
        let text = ECHO.replace(
            "first_digit_timeout = \"15s\"",
            "first_digit_timeout = \"soon\"",
        );
        let e = Dialplan::parse(Path::new("e.toml"), &text, &any_prompt).unwrap_err();
        assert!(e[0].to_string().contains("soon"), "{}", e[0]);
    }
}
