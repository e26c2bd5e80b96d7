//! Loading plans: a file parsed and checked against a `Catalog`, a directory of plans, and the
//! routing of a call to its plan.

use super::*;

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

pub(super) fn every_prompt(_: &str, _: &str) -> bool {
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

/// All plans in a directory, checked, with the routing table.
#[derive(Debug, Default)]
pub struct Dialplans {
    pub(super) plans: Vec<std::sync::Arc<Dialplan>>,
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
