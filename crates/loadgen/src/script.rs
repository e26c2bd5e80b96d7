//! What each generated caller does, as a list of steps (pure: parsed from text, no I/O).
//!
//! The text is a list of whitespace-separated steps:
//!
//! | step | meaning |
//! |---|---|
//! | `wait` | wait until a prompt has played and the line has been quiet (silence) for `quiet` |
//! | `keys:DIGITS` | press the keys (RFC 4733); `{pin}` inside is replaced by the call's PIN |
//! | `hold:DURATION` | keep the media going, e.g. `hold:5s`, `hold:500ms` |
//! | `loop` | when the steps after it are done, start them again (until the call's time is up) |
//! | `bye` | hang up now |
//! | `end` | wait for the service to hang up |
//!
//! A script that runs out of steps holds the call until its time is up, then hangs up.

use std::time::Duration;

use topup_media::dtmf::Digit;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Wait,
    Keys(Vec<KeyItem>),
    Hold(Duration),
    Loop,
    Bye,
    End,
}

/// A key, or the place where the call's PIN goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyItem {
    Key(Digit),
    Pin,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    pub steps: Vec<Step>,
    /// Index of the first step after `loop`, if there is one.
    pub loop_from: Option<usize>,
}

/// Built-in scripts for the shipped dialplans (dial their numbers with `--number`).
pub fn builtin(name: &str) -> Option<&'static str> {
    Some(match name {
        // The DTMF echo line: a key, its read-back, again, for as long as the call lasts.
        "echo" => "wait loop keys:5 wait keys:8 wait keys:0 wait",
        // A card top-up of the demo recipient, English, second amount, confirmed; then hang up.
        "card" => {
            "wait keys:1 wait keys:{pin}# wait keys:12015550150# wait keys:1 wait keys:2 wait \
             keys:1 wait bye"
        }
        // Prompts only: listen to the greeting and menus without pressing anything.
        "listen" => "hold:3600s",
        _ => return None,
    })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("script step {index} `{step}`: {reason}")]
pub struct ScriptError {
    pub index: usize,
    pub step: String,
    pub reason: String,
}

impl Script {
    pub fn parse(text: &str) -> Result<Script, ScriptError> {
        let mut steps = vec![];
        let mut loop_from = None;
        for (i, word) in text.split_whitespace().enumerate() {
            let err = |reason: &str| ScriptError {
                index: i + 1,
                step: word.to_string(),
                reason: reason.to_string(),
            };
            let step = match word.split_once(':') {
                None => match word {
                    "wait" => Step::Wait,
                    "bye" => Step::Bye,
                    "end" => Step::End,
                    "loop" => {
                        if loop_from.is_some() {
                            return Err(err("only one `loop` is allowed"));
                        }
                        loop_from = Some(steps.len() + 1);
                        Step::Loop
                    }
                    _ => return Err(err("unknown step (wait, keys:, hold:, loop, bye, end)")),
                },
                Some(("keys", keys)) => Step::Keys(parse_keys(keys).map_err(|r| err(&r))?),
                Some(("hold", d)) => Step::Hold(
                    humantime::parse_duration(d)
                        .map_err(|e| err(&format!("not a duration: {e}")))?,
                ),
                Some(_) => return Err(err("unknown step (wait, keys:, hold:, loop, bye, end)")),
            };
            steps.push(step);
        }
        if steps.is_empty() {
            return Err(ScriptError {
                index: 0,
                step: String::new(),
                reason: "the script is empty".into(),
            });
        }
        if let Some(from) = loop_from
            && !steps[from..]
                .iter()
                .any(|s| matches!(s, Step::Wait | Step::Hold(_) | Step::End))
        {
            return Err(ScriptError {
                index: from,
                step: "loop".into(),
                reason: "a loop needs a `wait` or `hold` inside, or it would spin".into(),
            });
        }
        Ok(Script { steps, loop_from })
    }

    /// Whether any step presses the call's PIN.
    pub fn uses_pin(&self) -> bool {
        self.steps.iter().any(|s| match s {
            Step::Keys(k) => k.contains(&KeyItem::Pin),
            _ => false,
        })
    }

    /// The step after `i`: the loop's first step when the end is reached.
    pub fn next(&self, i: usize) -> Option<usize> {
        if i + 1 < self.steps.len() {
            Some(i + 1)
        } else {
            self.loop_from.filter(|&f| f < self.steps.len())
        }
    }
}

fn parse_keys(text: &str) -> Result<Vec<KeyItem>, String> {
    let mut out = vec![];
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("{pin}") {
            out.push(KeyItem::Pin);
            rest = r;
            continue;
        }
        let c = rest.chars().next().expect("not empty");
        let d = Digit::from_char(c).ok_or_else(|| format!("`{c}` is not a DTMF key"))?;
        out.push(KeyItem::Key(d));
        rest = &rest[c.len_utf8()..];
    }
    if out.is_empty() {
        return Err("no keys".into());
    }
    Ok(out)
}

/// The keys of a step with the PIN put in.
pub fn expand(keys: &[KeyItem], pin: Option<&str>) -> Vec<Digit> {
    let mut out = vec![];
    for k in keys {
        match k {
            KeyItem::Key(d) => out.push(*d),
            KeyItem::Pin => out.extend(pin.unwrap_or("").chars().filter_map(Digit::from_char)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_scripts_parse() {
        for name in ["echo", "card", "listen"] {
            Script::parse(builtin(name).unwrap()).unwrap();
        }
        assert!(Script::parse(builtin("card").unwrap()).unwrap().uses_pin());
        assert!(!Script::parse(builtin("echo").unwrap()).unwrap().uses_pin());
    }

    #[test]
    fn steps_keys_and_the_loop_are_read() {
        let s = Script::parse("wait loop keys:1{pin}# hold:20ms").unwrap();
        assert_eq!(s.loop_from, Some(2));
        assert_eq!(s.steps[3], Step::Hold(Duration::from_millis(20)));
        let Step::Keys(k) = &s.steps[2] else { panic!() };
        let digits: String = expand(k, Some("4321"))
            .into_iter()
            .map(|d| d.as_char())
            .collect();
        assert_eq!(digits, "14321#");
        assert_eq!(s.next(1), Some(2));
        assert_eq!(s.next(3), Some(2), "the end goes back to the loop");
        let flat = Script::parse("wait bye").unwrap();
        assert_eq!(flat.next(1), None);
    }

    #[test]
    fn bad_scripts_name_the_step() {
        let e = Script::parse("wait keys:12x").unwrap_err();
        assert_eq!((e.index, e.step.as_str()), (2, "keys:12x"));
        assert!(e.reason.contains("`x`"), "{e}");
        assert_eq!(Script::parse("hold:soon").unwrap_err().index, 1);
        assert_eq!(Script::parse("jump").unwrap_err().index, 1);
        assert!(Script::parse("  ").is_err());
        assert!(
            Script::parse("loop keys:1")
                .unwrap_err()
                .reason
                .contains("spin")
        );
        assert!(Script::parse("loop wait loop wait").is_err());
    }
}
