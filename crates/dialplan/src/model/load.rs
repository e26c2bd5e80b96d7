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
        let mut plan: Dialplan =
            toml::from_str(text).map_err(|e| vec![syntax_error(path, text, &e)])?;
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

/// A TOML or field error where it is (`file:line:col: reason (hint)`), the parser's own words
/// for the reason, and a hint: the field or kind meant, or what a missing field is for.
fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> DialplanError {
    let reason = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else {
        return DialplanError::Syntax {
            file: path.to_path_buf(),
            reason,
        };
    };
    // serde reports a wrong field of a node (a tagged table) on the whole table: point at the
    // field's own line.
    let mut start = span.start.min(text.len());
    if let Some(field) = reason
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        // The span is the table's header or body: the table runs to the next header.
        let end = span.end.min(text.len());
        let end = text[end..].find("\n[").map_or(text.len(), |i| end + i);
        let table = &text[start..end];
        let mut at = 0;
        for l in table.split_inclusive('\n') {
            let t = l.trim_start();
            if t.strip_prefix(field)
                .is_some_and(|r| r.trim_start().starts_with('='))
            {
                start += at + (l.len() - t.len());
                break;
            }
            at += l.len();
        }
    }
    let (line, col) = topup_values::textfile::line_col(text, start);
    DialplanError::Invalid {
        file: path.to_path_buf(),
        line,
        col,
        hint: syntax_hint(&reason),
        reason,
    }
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (also variants, i.e. kinds) becomes
/// "did you mean `a`?" when one is close, else the list; "missing field `x`" says to add it.
fn syntax_hint(reason: &str) -> Option<String> {
    let quoted =
        |s: &str| -> Vec<String> { s.split('`').skip(1).step_by(2).map(String::from).collect() };
    for what in ["unknown field", "unknown variant"] {
        if let Some(rest) = reason.strip_prefix(what) {
            let names = quoted(rest);
            let (wrong, expected) = names.split_first()?;
            return Some(
                match super::check::did_you_mean(wrong, expected.iter().map(String::as_str)) {
                    Some(near) => format!("did you mean `{near}`?"),
                    None if expected.is_empty() => "remove it".into(),
                    None => format!("one of {}", expected.join(", ")),
                },
            );
        }
    }
    if let Some(rest) = reason.strip_prefix("missing field") {
        let field = quoted(rest).into_iter().next()?;
        return Some(format!(
            "add `{field} = ...` to this table (dialplans/README.md lists each kind's fields)"
        ));
    }
    None
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
    /// The prompts of a language, for "did you mean" (none: no suggestion).
    pub prompt_names: &'a dyn Fn(&str) -> Vec<String>,
}

impl Catalog<'static> {
    /// Every prompt exists and `notify` may send nothing (tests, fuzzing, benchmarks).
    pub const EVERY_PROMPT: Catalog<'static> = Catalog {
        has_prompt: &every_prompt,
        messages: &[],
        prompt_names: &no_names,
    };
}

pub(super) fn every_prompt(_: &str, _: &str) -> bool {
    true
}

pub(super) fn no_names(_: &str) -> Vec<String> {
    vec![]
}

impl<'a> Catalog<'a> {
    pub fn new(has_prompt: &'a dyn Fn(&str, &str) -> bool, messages: &'a [&'a str]) -> Self {
        Catalog {
            has_prompt,
            messages,
            prompt_names: &no_names,
        }
    }

    /// With the prompts' names, so a mistyped one gets a suggestion.
    pub fn with_prompt_names(self, prompt_names: &'a dyn Fn(&str) -> Vec<String>) -> Self {
        Catalog {
            prompt_names,
            ..self
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
            let reason = match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "no such directory (a relative path is taken from the working directory, {}: run from the checkout, or set `dialplans` under [paths] in the config)",
                    std::env::current_dir()
                        .map(|d| d.display().to_string())
                        .unwrap_or_default()
                ),
                _ => e.to_string(),
            };
            vec![DialplanError::Io {
                file: dir.to_path_buf(),
                reason,
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
