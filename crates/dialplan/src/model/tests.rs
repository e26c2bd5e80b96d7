use super::*;

pub(crate) const ECHO: &str = include_str!("../../../../dialplans/echo.toml");

/// Every prompt, and one SMS message name.
const CATALOG: Catalog = Catalog {
    has_prompt: &every_prompt,
    messages: &["call_no_funds"],
    prompt_names: &no_names,
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

/// The (line, column) of `needle` in `text`, 1-based.
fn place(text: &str, needle: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(i, l)| l.find(needle).map(|c| (i + 1, c + 1)))
        .unwrap()
}

#[test]
fn broken_references_are_reported_at_the_field_with_a_hint() {
    let text = ECHO.replace("next = \"readback\"", "next = \"nowhere\"");
    let msgs = errors(&text);
    let (line, col) = place(&text, "\"nowhere\"");
    assert_eq!(
        msgs[0],
        format!(
            "t.toml:{line}:{col}: node `listen` goes to `nowhere`, which does not exist \
             (hint: add [nodes.nowhere] or fix the name)"
        )
    );
    // What follows from it comes after it, once: the nodes cut off, in one line.
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(
        msgs[1].contains("node `readback` and 1 more cannot be reached from `welcome`: `check`"),
        "{msgs:?}"
    );
}

#[test]
fn a_mistyped_node_or_prompt_gets_the_name_meant() {
    let text = ECHO.replace("next = \"readback\"", "next = \"readbak\"");
    let msgs = errors(&text);
    assert!(
        msgs[0].ends_with("(hint: did you mean `readback`? or add [nodes.readbak])"),
        "{msgs:?}"
    );
    let text = ECHO.replace("[\"goodbye\"]", "[\"godbye\"]");
    let has_prompt = |_: &str, name: &str| name != "godbye";
    let names = |_: &str| vec!["echo-welcome".to_string(), "goodbye".to_string()];
    let msgs: Vec<String> = Dialplan::parse(
        Path::new("t.toml"),
        &text,
        &Catalog::new(&has_prompt, &[]).with_prompt_names(&names),
    )
    .unwrap_err()
    .iter()
    .map(ToString::to_string)
    .collect();
    let (line, col) = place(&text, "\"godbye\"");
    assert!(
        msgs[0].starts_with(&format!(
            "t.toml:{line}:{col}: node `bye`: prompt `godbye` does not exist in language `en` (hint: did you mean `goodbye`?"
        )),
        "{msgs:?}"
    );
}

#[test]
fn toml_and_field_errors_say_where_and_what_was_meant() {
    // A field name mistyped in a node.
    let text = ECHO.replacen(
        "prompts = [\"echo-welcome\"]",
        "prompt = [\"echo-welcome\"]",
        1,
    );
    let msgs = errors(&text);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let (line, col) = place(&text, "prompt = ");
    assert!(
        msgs[0].starts_with(&format!("t.toml:{line}:{col}: unknown field `prompt`")),
        "{msgs:?}"
    );
    assert!(msgs[0].contains("did you mean `prompts`?"), "{msgs:?}");
    // A kind mistyped.
    let text = ECHO.replacen("kind = \"play\"", "kind = \"plya\"", 1);
    let msgs = errors(&text);
    assert!(msgs[0].contains("did you mean `play`?"), "{msgs:?}");
    // A missing field.
    let text = ECHO.replacen("start = \"welcome\"\n", "", 1);
    let msgs = errors(&text);
    assert!(msgs[0].contains("missing field `start`"), "{msgs:?}");
    assert!(msgs[0].contains("hint: add `start = ...`"), "{msgs:?}");
    // Broken TOML: the line and column of the mistake.
    let text = ECHO.replacen("next = \"listen\"", "next = \"listen", 1);
    let msgs = errors(&text);
    let (line, _) = place(&text, "next = \"listen");
    assert!(msgs[0].starts_with(&format!("t.toml:{line}:")), "{msgs:?}");
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
    assert!(
        e.iter()
            .any(|m| m.contains("`a` loops back to itself without waiting for anything")),
        "{e:?}"
    );
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
fn a_loop_needs_a_caller_choice_or_a_count() {
    // menu -1-> a (an operation) -default-> b (a sentence) -> a ...: a caller whose operation
    // keeps failing hears the sentence forever, though the plan has exits.
    let looping = MINI
        .replace(
            "[nodes.a]\nkind = \"goto\"\ntarget = \"b\"",
            "[nodes.a]\nkind = \"invoke\"\nop = \"list_products\"\nresults = { ok = \"bye\", default = \"b\" }",
        )
        .replace(
            "[nodes.b]\nkind = \"goto\"\ntarget = \"menu\"",
            "[nodes.b]\nkind = \"play\"\nprompts = [\"sorry\"]\nnext = \"a\"",
        );
    let e = errors(&looping);
    assert_eq!(
        e,
        [format!(
            "t.toml:{}:1: `a` → `b` → `a` loops with no caller choice and no count: a caller could go round it forever (hint: put a menu, collect or choose in the loop, or a count node that leaves it)",
            place(&looping, "[nodes.a]").0
        )]
    );
    // Back through the menu: the caller chooses each time round.
    assert!(errors(&looping.replace("next = \"a\"", "next = \"menu\"")).is_empty());
    // Or a count that leaves the loop after three rounds.
    let counted = looping.replace("next = \"a\"", "next = \"again\"")
        + "[nodes.again]\nkind = \"count\"\nvar = \"n\"\nlimit = 3\nnext = \"a\"\non_limit = \"bye\"\n";
    assert!(errors(&counted).is_empty(), "{:?}", errors(&counted));
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
