//! Checking a plan: every node's fields, the prompts it plays, and the graph (reachability, exits,
//! loops), each problem with its line, column and a hint.

use super::*;

impl Dialplan {
    pub(super) fn check(&self, text: &str, catalog: &Catalog) -> Vec<DialplanError> {
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

    pub(super) fn check_node(
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
                append_to,
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
                if *secret && append_to.is_some() {
                    err(
                        at,
                        format!(
                            "node `{id}`: a secret is never copied into another variable (remove append_to)"
                        ),
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
                if Op::from_name(op) == Some(Op::Notify) {
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
                // A PIN reaches an operation only as a secret the caller keyed in.
                if let Some(v) = args.get("pin")
                    && !self
                        .nodes
                        .values()
                        .any(|n| matches!(n, Node::Collect { var, secret: true, .. } if var == v))
                {
                    err(
                        at,
                        format!(
                            "node `{id}`: `pin` must name the variable of a collect with secret = true"
                        ),
                        Some(
                            "a PIN is collected as a secret, so it is never said, shown or logged",
                        ),
                    );
                }
                if Op::from_name(op).is_none() {
                    let names: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
                    err(
                        at,
                        format!("node `{id}`: unknown operation `{op}`"),
                        Some(&format!("one of {}", names.join(", "))),
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
    pub(super) fn check_graph(
        &self,
        text: &str,
        err: &mut impl FnMut((usize, usize), String, Option<&str>),
    ) {
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
}

/// Reports one problem at (line, col), with an optional hint.
pub(super) type Reporter<'a> = dyn FnMut((usize, usize), String, Option<&str>) + 'a;

/// (line, column) of the first line starting with `prefix`, or (1, 1).
pub(super) fn position_of(text: &str, prefix: &str) -> (usize, usize) {
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

pub(super) fn node_position(text: &str, id: &str) -> (usize, usize) {
    let a = position_of(text, &format!("[nodes.{id}]"));
    if a != (1, 1) {
        return a;
    }
    position_of(text, &format!("[nodes.\"{id}\"]"))
}
