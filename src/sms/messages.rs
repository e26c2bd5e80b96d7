//! SMS texts and command keywords, one file per language (`sms/<lang>.toml`), checked at start
//! like dialplans: every language has every message and every command's keywords, a message
//! uses only the placeholders it is given, keywords do not clash, and a country's numbers get
//! one language. Errors name file:line:col.
//!
//! ```toml
//! countries = ["MX", "CO"]        # numbers of these countries get this language by default
//!
//! [keywords]                      # matched case-insensitively, first word of the message
//! topup = ["RECARGA", "TOPUP"]
//! balance = ["SALDO", "BAL"]
//! recharge = ["ABONO"]
//! help = ["AYUDA", "HELP"]
//!
//! [messages]
//! topup_sent = "Recargaste {amount} a {recipient} ({carrier}). Ref {reference}. Saldo: {balance}"
//! ```
//!
//! A placeholder is `{name}`; `{{` and `}}` write a brace. Messages never receive a PIN.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::text;

/// The names of [`MESSAGES`] (what a dialplan's `notify` may send).
pub const NAMES: [&str; MESSAGES.len()] = {
    let mut out = [""; MESSAGES.len()];
    let mut i = 0;
    while i < MESSAGES.len() {
        out[i] = MESSAGES[i].0;
        i += 1;
    }
    out
};

/// Every message the service sends, with the placeholders it fills and what it is for.
pub const MESSAGES: &[(&str, &[&str], &str)] = &[
    // Confirmations, failure notices and alerts.
    (
        "topup_sent",
        &[
            "amount",
            "price",
            "currency",
            "recipient",
            "carrier",
            "reference",
            "balance",
        ],
        "to the payer after a top-up was delivered",
    ),
    (
        "topup_received",
        &["amount", "currency", "sender", "carrier", "reference"],
        "to the recipient of a top-up",
    ),
    (
        "topup_received_message",
        &[
            "amount",
            "currency",
            "sender",
            "carrier",
            "reference",
            "message",
        ],
        "to the recipient of a top-up that came with a message from the sender",
    ),
    (
        "topup_failed",
        &[
            "amount",
            "price",
            "currency",
            "recipient",
            "carrier",
            "reference",
            "balance",
        ],
        "to the payer when the carrier refused a top-up (the money is returned)",
    ),
    (
        "topup_reversed",
        &[
            "amount",
            "price",
            "currency",
            "recipient",
            "carrier",
            "reference",
            "balance",
        ],
        "to the payer when the carrier took back a delivered top-up (the money is returned)",
    ),
    (
        "topup_pending",
        &["amount", "currency", "recipient", "carrier", "reference"],
        "reply to an SMS top-up that the carrier has not confirmed yet",
    ),
    (
        "account_recharged",
        &["amount", "currency", "balance", "reference"],
        "to a prepaid account recharged from its linked funding",
    ),
    (
        "wallet_recharged",
        &["amount", "currency", "balance", "reference"],
        "to a wallet owner after a card was redeemed into the wallet",
    ),
    (
        "wallet_locked",
        &[],
        "to a wallet owner when too many wrong PINs locked the wallet",
    ),
    (
        "account_locked",
        &[],
        "to a prepaid account when too many wrong PINs locked its linked funding",
    ),
    (
        "low_balance",
        &["balance", "threshold", "currency"],
        "alert: a prepaid account fell below its threshold (no linked funding)",
    ),
    (
        "low_balance_funding",
        &["balance", "threshold", "currency"],
        "alert: a prepaid account with linked funding fell below its threshold",
    ),
    (
        "call_no_funds",
        &["balance", "currency"],
        "the balance does not pay for the call the caller tried",
    ),
    // Replies to SMS commands.
    (
        "balance_wallet",
        &["balance", "currency"],
        "reply to BAL: the wallet balance",
    ),
    (
        "balance_account",
        &["balance", "currency"],
        "reply to BAL: the prepaid account balance",
    ),
    ("help", &[], "reply to HELP: the commands"),
    (
        "format_topup",
        &[],
        "reply to a malformed TOPUP: the right format",
    ),
    ("format_balance", &[], "reply to a malformed BAL"),
    ("format_recharge", &[], "reply to a malformed RECHARGE"),
    (
        "unknown_command",
        &[],
        "reply to a message that is no command",
    ),
    (
        "unknown_sender",
        &[],
        "reply when the sender has no wallet or account",
    ),
    ("wrong_pin", &[], "reply to a wrong PIN"),
    (
        "rate_limited",
        &[],
        "reply when too many wrong PINs came from this number",
    ),
    ("card_invalid", &[], "reply when no card has this PIN"),
    ("card_used", &[], "reply when the card was already used"),
    ("card_expired", &[], "reply when the card has expired"),
    ("card_blocked", &[], "reply when the card is blocked"),
    (
        "invalid_number",
        &["number"],
        "reply when the recipient's number is not a valid number",
    ),
    (
        "no_carrier",
        &["number"],
        "reply when no carrier we serve has this number",
    ),
    (
        "no_product",
        &["amount", "currency", "recipient", "carrier"],
        "reply when the carrier has no product for this amount",
    ),
    (
        "amount_out_of_range",
        &["amount", "currency", "min", "max"],
        "reply when the amount is outside what the carrier takes",
    ),
    (
        "insufficient_funds",
        &["amount", "currency", "balance"],
        "reply when the wallet does not hold the amount",
    ),
    (
        "no_funding",
        &[],
        "reply when the account has no linked funding",
    ),
    (
        "unavailable",
        &[],
        "reply when the service cannot complete the request now",
    ),
];

/// The commands, by the name their keywords are listed under.
pub const COMMANDS: [&str; 4] = ["topup", "balance", "recharge", "help"];

fn placeholders_of(name: &str) -> Option<&'static [&'static str]> {
    MESSAGES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, p, _)| *p)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLanguage {
    #[serde(default)]
    countries: Vec<Spanned<String>>,
    keywords: BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
    messages: BTreeMap<Spanned<String>, Spanned<String>>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MessagesError {
    #[error("{file}: {reason}")]
    File { file: PathBuf, reason: String },
    #[error("{file}:{line}:{col}: {reason}")]
    At {
        file: PathBuf,
        line: usize,
        col: usize,
        reason: String,
    },
}

/// One piece of a message: literal text or a placeholder.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(String),
}

/// Splits a template into pieces; `Err` names the problem and its byte offset.
fn pieces(template: &str) -> Result<Vec<Piece>, (usize, String)> {
    let mut out = vec![];
    let mut lit = String::new();
    let mut chars = template.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|x| x.1) == Some('{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek().map(|x| x.1) == Some('}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let mut name = String::new();
                let mut closed = false;
                for (_, c) in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    name.push(c);
                }
                if !closed {
                    return Err((i, "`{` is not closed (write `{{` for a brace)".into()));
                }
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    return Err((i, format!("`{{{name}}}` is not a placeholder name")));
                }
                if !lit.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut lit)));
                }
                out.push(Piece::Var(name));
            }
            '}' => return Err((i, "a lone `}` (write `}}` for a brace)".into())),
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        out.push(Piece::Text(lit));
    }
    Ok(out)
}

#[derive(Clone, Debug)]
struct Language {
    keywords: BTreeMap<String, Vec<String>>,
    messages: BTreeMap<String, Vec<Piece>>,
}

/// The checked texts of every language.
#[derive(Clone, Debug)]
pub struct Messages {
    default_language: String,
    languages: BTreeMap<String, Language>,
    countries: BTreeMap<String, String>,
}

/// The SMS texts in use, replaced whole when their files change (`Shared::reload`); a
/// message being written keeps the version it started with.
pub type SmsTexts = crate::live::Live<Messages>;

/// Values that stand in for placeholders when a message's length is checked.
fn sample(name: &str) -> &'static str {
    match name {
        "amount" | "price" | "balance" | "threshold" | "min" | "max" => "1,000,000.00 USD",
        "currency" => "USD",
        "recipient" | "number" | "sender" => "+525512345678",
        "carrier" => "Telcel Mexico",
        "reference" => "sms:smsc-1:0123456789abcdef",
        "message" => {
            "Happy birthday! Hope you have a wonderful day, with love from all of us at home"
        }
        _ => "x",
    }
}

/// Longest a message may get with long values in it, in SMS parts.
const MAX_CHECKED_PARTS: usize = 4;

impl Messages {
    /// Loads `dir/<lang>.toml` for every language file there.
    pub fn load_dir(dir: &Path, default_language: &str) -> Result<Messages, Vec<MessagesError>> {
        let io = |e: std::io::Error| {
            vec![MessagesError::File {
                file: dir.to_path_buf(),
                reason: e.to_string(),
            }]
        };
        let files = crate::textfile::toml_files(dir).map_err(io)?;
        let mut sources = vec![];
        let mut errors = vec![];
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(t) => sources.push((f, t)),
                Err(e) => errors.push(MessagesError::File {
                    file: f,
                    reason: e.to_string(),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Self::parse(&sources, default_language)
    }

    /// Checks the language files given as (path, text); the language is the file's stem.
    pub fn parse(
        sources: &[(PathBuf, String)],
        default_language: &str,
    ) -> Result<Messages, Vec<MessagesError>> {
        let mut errors = vec![];
        let mut languages = BTreeMap::new();
        let mut countries: BTreeMap<String, (String, PathBuf)> = BTreeMap::new();
        // keyword -> (command, language, file) across all languages
        let mut keyword_owner: BTreeMap<String, (String, String)> = BTreeMap::new();
        for (path, text) in sources {
            let lang = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let at = |offset: usize, reason: String| {
                let (line, col) = topup_values::textfile::line_col(text, offset);
                MessagesError::At {
                    file: path.clone(),
                    line,
                    col,
                    reason,
                }
            };
            let raw: RawLanguage = match toml::from_str(text) {
                Ok(r) => r,
                Err(e) => {
                    let offset = e.span().map_or(0, |s| s.start);
                    errors.push(at(offset, e.message().to_string()));
                    continue;
                }
            };
            let mut lang_out = Language {
                keywords: BTreeMap::new(),
                messages: BTreeMap::new(),
            };
            for c in &raw.countries {
                let code = c.get_ref().to_ascii_uppercase();
                if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
                    errors.push(at(
                        c.span().start,
                        format!(
                            "`{}` is not an ISO 3166 country code like \"MX\"",
                            c.get_ref()
                        ),
                    ));
                } else if let Some((other, file)) = countries.get(&code) {
                    errors.push(at(
                        c.span().start,
                        format!(
                            "country {code} is already given language `{other}` by {}",
                            file.display()
                        ),
                    ));
                } else {
                    countries.insert(code, (lang.clone(), path.clone()));
                }
            }
            for (cmd, words) in &raw.keywords {
                if !COMMANDS.contains(&cmd.get_ref().as_str()) {
                    errors.push(at(
                        cmd.span().start,
                        format!(
                            "unknown command `{}` (the commands are {})",
                            cmd.get_ref(),
                            COMMANDS.join(", ")
                        ),
                    ));
                    continue;
                }
                let mut list = vec![];
                for w in words {
                    let k = w.get_ref().trim().to_uppercase();
                    if k.is_empty() || k.contains(char::is_whitespace) {
                        errors.push(at(
                            w.span().start,
                            format!("keyword `{}` must be one word", w.get_ref()),
                        ));
                        continue;
                    }
                    match keyword_owner.get(&k) {
                        Some((other_cmd, _)) if other_cmd != cmd.get_ref() => {
                            errors.push(at(
                                w.span().start,
                                format!("keyword `{k}` already means `{other_cmd}`"),
                            ));
                        }
                        _ => {
                            keyword_owner.insert(k.clone(), (cmd.get_ref().clone(), lang.clone()));
                        }
                    }
                    list.push(k);
                }
                lang_out.keywords.insert(cmd.get_ref().clone(), list);
            }
            for c in COMMANDS {
                if lang_out.keywords.get(c).is_none_or(|l| l.is_empty()) {
                    errors.push(at(
                        0,
                        format!("no keywords for command `{c}` in [keywords]"),
                    ));
                }
            }
            for (name, template) in &raw.messages {
                let Some(allowed) = placeholders_of(name.get_ref()) else {
                    errors.push(at(
                        name.span().start,
                        format!("unknown message `{}`", name.get_ref()),
                    ));
                    continue;
                };
                // The value's span includes its quote.
                let base = template.span().start + 1;
                match pieces(template.get_ref()) {
                    Err((i, reason)) => errors.push(at(base + i, reason)),
                    Ok(p) => {
                        let mut ok = true;
                        for v in &p {
                            if let Piece::Var(v) = v
                                && !allowed.contains(&v.as_str())
                            {
                                ok = false;
                                let offset = template.get_ref().find(&format!("{{{v}}}"));
                                errors.push(at(
                                    base + offset.unwrap_or(0),
                                    format!(
                                        "message `{}` has no placeholder `{{{v}}}` ({})",
                                        name.get_ref(),
                                        if allowed.is_empty() {
                                            "it takes none".to_string()
                                        } else {
                                            format!(
                                                "it takes {}",
                                                allowed
                                                    .iter()
                                                    .map(|a| format!("{{{a}}}"))
                                                    .collect::<Vec<_>>()
                                                    .join(" ")
                                            )
                                        }
                                    ),
                                ));
                            }
                        }
                        if template.get_ref().trim().is_empty() {
                            ok = false;
                            errors.push(at(
                                template.span().start,
                                format!("message `{}` is empty", name.get_ref()),
                            ));
                        }
                        if ok {
                            let filled = fill(&p, &|v| sample(v).to_string());
                            match text::parts_needed(&filled) {
                                Ok((n, _)) if n <= MAX_CHECKED_PARTS => {}
                                Ok((n, coding)) => errors.push(at(
                                    template.span().start,
                                    format!(
                                        "message `{}` takes {n} SMS ({}) with long values; keep it within {MAX_CHECKED_PARTS}",
                                        name.get_ref(),
                                        coding.name()
                                    ),
                                )),
                                Err(e) => errors.push(at(template.span().start, e.to_string())),
                            }
                            lang_out.messages.insert(name.get_ref().clone(), p);
                        }
                    }
                }
            }
            for (m, _, what) in MESSAGES {
                if !raw.messages.keys().any(|k| k.get_ref() == m) {
                    errors.push(at(
                        0,
                        format!("message `{m}` is missing from [messages] ({what})"),
                    ));
                }
            }
            languages.insert(lang, lang_out);
        }
        if !languages.contains_key(default_language) && errors.is_empty() {
            errors.push(MessagesError::File {
                file: sources
                    .first()
                    .map(|(p, _)| p.parent().unwrap_or(p).to_path_buf())
                    .unwrap_or_default(),
                reason: format!("no file for the default language `{default_language}`"),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Messages {
            default_language: default_language.to_string(),
            languages,
            countries: countries.into_iter().map(|(c, (l, _))| (c, l)).collect(),
        })
    }

    pub fn default_language(&self) -> &str {
        &self.default_language
    }

    pub fn languages(&self) -> impl Iterator<Item = &str> {
        self.languages.keys().map(String::as_str)
    }

    pub fn has_language(&self, lang: &str) -> bool {
        self.languages.contains_key(lang)
    }

    /// The language for numbers of `country` (ISO 3166) when nothing else tells.
    pub fn language_of_country(&self, country: &str) -> Option<&str> {
        self.countries
            .get(&country.to_ascii_uppercase())
            .map(String::as_str)
    }

    /// Keyword (upper case) → (command, languages that list it).
    pub fn keywords(&self) -> BTreeMap<String, (String, BTreeSet<String>)> {
        let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
        for (lang, l) in &self.languages {
            for (cmd, words) in &l.keywords {
                for w in words {
                    out.entry(w.clone())
                        .or_insert_with(|| (cmd.clone(), BTreeSet::new()))
                        .1
                        .insert(lang.clone());
                }
            }
        }
        out
    }

    /// Message `name` in `lang` (or the default language) with `vars` filled in. Placeholders
    /// the caller did not give come out empty.
    pub fn render(&self, lang: &str, name: &str, vars: &[(&str, String)]) -> String {
        let l = self
            .languages
            .get(lang)
            .or_else(|| self.languages.get(&self.default_language));
        let Some(p) = l.and_then(|l| l.messages.get(name)) else {
            debug_assert!(false, "message {name} was checked at start");
            return String::new();
        };
        fill(p, &|v| {
            vars.iter()
                .find(|(k, _)| *k == v)
                .map(|(_, x)| x.clone())
                .unwrap_or_default()
        })
    }

    /// The language to use: `lang` if we have it, else the default.
    pub fn pick<'a>(&'a self, lang: &'a str) -> &'a str {
        if self.languages.contains_key(lang) {
            lang
        } else {
            &self.default_language
        }
    }
}

fn fill(pieces: &[Piece], value: &dyn Fn(&str) -> String) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Text(t) => t.clone(),
            Piece::Var(v) => value(v),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Vec<(PathBuf, String)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sms");
        let mut v: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .map(|p| {
                let t = std::fs::read_to_string(&p).unwrap();
                (p, t)
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_shipped_languages_pass_the_check() {
        let m = Messages::parse(&shipped(), "en").unwrap_or_else(|e| {
            panic!(
                "{}",
                e.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
        assert_eq!(m.languages().collect::<Vec<_>>(), ["en", "es", "vi"]);
        assert_eq!(m.language_of_country("mx"), Some("es"));
        assert_eq!(m.language_of_country("VN"), Some("vi"));
        let k = m.keywords();
        assert_eq!(k["TOPUP"].0, "topup");
        assert_eq!(k["BAL"].0, "balance");
        assert!(k.values().any(|(c, l)| c == "topup" && l.contains("es")));
    }

    #[test]
    fn rendering_fills_placeholders_and_falls_back_to_the_default_language() {
        let m = Messages::parse(&shipped(), "en").unwrap();
        let s = m.render(
            "en",
            "balance_wallet",
            &[("balance", "25.00 USD".into()), ("currency", "USD".into())],
        );
        assert!(s.contains("25.00 USD"), "{s}");
        assert_eq!(m.render("xx", "help", &[]), m.render("en", "help", &[]));
        assert_eq!(m.pick("xx"), "en");
        assert_eq!(m.pick("es"), "es");
    }

    fn one(text: &str) -> Result<Messages, Vec<MessagesError>> {
        // Start from the shipped English file and apply the edit under test.
        let mut files = shipped();
        files.retain(|(p, _)| p.ends_with("en.toml"));
        files[0].1 = text.to_string();
        files[0].0 = PathBuf::from("sms/en.toml");
        Messages::parse(&files, "en")
    }

    fn english() -> String {
        shipped()
            .into_iter()
            .find(|(p, _)| p.ends_with("en.toml"))
            .unwrap()
            .1
    }

    #[test]
    fn an_unknown_placeholder_is_reported_with_line_and_column() {
        let text = english().replace("{balance}", "{balanse}");
        let errs = one(&text).unwrap_err();
        let line = text.lines().position(|l| l.contains("{balanse}")).unwrap() + 1;
        let col = text
            .lines()
            .nth(line - 1)
            .unwrap()
            .find("{balanse}")
            .unwrap()
            + 1;
        let want = format!("sms/en.toml:{line}:{col}: message");
        assert!(
            errs.iter().any(|e| e.to_string().starts_with(&want)
                && e.to_string().contains("no placeholder `{balanse}`")),
            "{want}\n{errs:?}"
        );
    }

    #[test]
    fn missing_and_unknown_messages_and_keywords_are_reported() {
        let text = english();
        let no_help = text
            .lines()
            .filter(|l| !l.starts_with("help ="))
            .collect::<Vec<_>>()
            .join("\n");
        let errs = one(&no_help).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.to_string().contains("message `help` is missing")),
            "{errs:?}"
        );
        let errs = one(&format!("{text}\n").replace("[messages]", "[messages]\nhelp_me = \"x\""))
            .unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.to_string().contains("unknown message `help_me`"))
        );
        let errs =
            one(&text.replace("[keywords]", "[keywords]\ntransfer = [\"SEND\"]")).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.to_string().contains("unknown command `transfer`"))
        );
    }

    #[test]
    fn clashing_keywords_and_countries_are_reported() {
        let mut files = shipped();
        let es = files
            .iter_mut()
            .find(|(p, _)| p.ends_with("es.toml"))
            .unwrap();
        es.1 =
            es.1.replacen("[keywords]", "[keywords]\nhelp = [\"BAL\"]", 1);
        // The original help line now repeats the key: drop it.
        let errs = Messages::parse(&files, "en").unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.to_string().contains("keyword `BAL` already means")
                    || e.to_string().contains("duplicate key")),
            "{errs:?}"
        );
        let mut files = shipped();
        let vi = files
            .iter_mut()
            .find(|(p, _)| p.ends_with("vi.toml"))
            .unwrap();
        vi.1 = vi.1.replacen("countries = [", "countries = [\"MX\", ", 1);
        let errs = Messages::parse(&files, "en").unwrap_err();
        assert!(
            errs.iter().any(|e| e
                .to_string()
                .contains("country MX is already given language `es`")),
            "{errs:?}"
        );
    }

    #[test]
    fn broken_braces_and_toml_errors_are_reported() {
        let errs = one(&english().replace("{balance}", "{balance")).unwrap_err();
        assert!(
            errs.iter().any(|e| e.to_string().contains("is not closed")),
            "{errs:?}"
        );
        let errs = one("[messages\n").unwrap_err();
        assert!(
            errs[0].to_string().starts_with("sms/en.toml:1:"),
            "{errs:?}"
        );
        assert_eq!(
            pieces("{{literal}} {x}").unwrap(),
            vec![Piece::Text("{literal} ".into()), Piece::Var("x".into())]
        );
    }

    #[test]
    fn a_message_too_long_for_four_sms_is_refused() {
        let long = "x".repeat(700);
        let errs =
            one(&english().replacen("help = \"", &format!("help = \"{long}"), 1)).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.to_string().contains("message `help` takes 6 SMS")),
            "{errs:?}"
        );
    }
}
