use super::*;

pub(crate) const ECHO: &str = include_str!("../../../../dialplans/echo.toml");

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
    let errs =
        Dialplan::parse(Path::new("e.toml"), &text, &Catalog::new(&has_prompt, &[])).unwrap_err();
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

#[test]
fn a_pin_reaches_an_operation_only_as_a_secret() {
    let plan = |secret: &str, append: &str| {
        format!(
            "service = \"t\"\nnumbers = [\"t\"]\nlanguage = \"en\"\nstart = \"pin\"\n\
             [nodes.pin]\nkind = \"collect\"\nvar = \"pin\"\nprompts = [\"p\"]\nmax_digits = 4\n\
             first_digit_timeout = \"5s\"\ninter_digit_timeout = \"3s\"\non_failure = \"bye\"\n\
             {secret}{append}next = \"use\"\n\
             [nodes.use]\nkind = \"invoke\"\nop = \"wallet_auth\"\nargs = {{ pin = \"pin\" }}\n\
             results = {{ default = \"bye\" }}\n\
             [nodes.bye]\nkind = \"hangup\"\n"
        )
    };
    assert!(
        errors(&plan("secret = true\n", "")).is_empty(),
        "{:?}",
        errors(&plan("secret = true\n", ""))
    );
    let e = errors(&plan("", ""));
    assert!(
        e.iter()
            .any(|m| m.contains("`pin` must name the variable of a collect with secret = true")),
        "{e:?}"
    );
    let e = errors(&plan("secret = true\n", "append_to = \"all\"\n"));
    assert!(
        e.iter()
            .any(|m| m.contains("a secret is never copied into another variable")),
        "{e:?}"
    );
}

#[test]
fn every_operation_has_one_name() {
    for op in Op::ALL {
        assert_eq!(Op::from_name(op.name()), Some(op));
    }
    let mut names: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), Op::ALL.len());
    assert_eq!(Op::from_name("fly"), None);
}
