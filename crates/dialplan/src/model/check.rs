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
                    let hint = match did_you_mean(t, self.nodes.keys().map(String::as_str)) {
                        Some(near) => format!("did you mean `{near}`? or add [nodes.{t}]"),
                        None => format!("add [nodes.{t}] or fix the name"),
                    };
                    err(
                        field_position(text, id, t),
                        format!("node `{id}` goes to `{t}`, which does not exist"),
                        Some(&hint),
                    );
                }
            }
            for lang in &self.languages {
                for p in node.prompts() {
                    if !has_prompt(lang, p) {
                        let names = (catalog.prompt_names)(lang);
                        let hint = match did_you_mean(p, names.iter().map(String::as_str)) {
                            Some(near) => format!(
                                "did you mean `{near}`? or add `{p}` to prompts/{lang}/manifest.toml and run scripts/gen-prompts.py"
                            ),
                            None => format!(
                                "add it to prompts/{lang}/manifest.toml and run scripts/gen-prompts.py"
                            ),
                        };
                        err(
                            field_position(text, id, p),
                            format!(
                                "node `{id}`: prompt `{p}` does not exist in language `{lang}`"
                            ),
                            Some(&hint),
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
        // One line for all of them (a mistyped `next` can cut off most of a plan): the
        // first in the file, and how many more.
        let mut unreached: Vec<&str> = self
            .nodes
            .keys()
            .map(String::as_str)
            .filter(|id| !seen.contains(id))
            .collect();
        unreached.sort_by_key(|id| node_position(text, id));
        if let Some(first) = unreached.first() {
            let reason = match unreached.len() {
                1 => format!("node `{first}` cannot be reached from `{}`", self.start),
                n => format!(
                    "node `{first}` and {} more cannot be reached from `{}`: {}",
                    n - 1,
                    self.start,
                    list(&unreached[1..])
                ),
            };
            err(
                node_position(text, first),
                reason,
                Some("link them from a node that is reached, or remove them"),
            );
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
        let mut trapped: Vec<&str> = self
            .nodes
            .keys()
            .map(String::as_str)
            .filter(|id| seen.contains(id) && !can_exit.contains(id))
            .collect();
        trapped.sort_by_key(|id| node_position(text, id));
        if let Some(first) = trapped.first() {
            let reason = match trapped.len() {
                1 => format!("node `{first}` is in a loop with no way out"),
                _ => format!("nodes {} are in a loop with no way out", list(&trapped)),
            };
            err(
                node_position(text, first),
                reason,
                Some("every path needs a hangup or transfer"),
            );
        }
        // A loop the caller cannot leave by a key and nothing counts: a caller could hear it
        // forever (e.g. an operation that fails, a sentence, the operation again).
        for cycle in self.cycles_without_choice() {
            let first = cycle[0];
            let path: Vec<String> = cycle
                .iter()
                .chain(std::iter::once(&first))
                .map(|id| format!("`{id}`"))
                .collect();
            let instant = cycle
                .iter()
                .all(|id| self.nodes.get(*id).is_some_and(Node::is_instant));
            let reason = if instant {
                format!(
                    "node `{first}` loops back to itself without waiting for anything ({})",
                    path.join(" → ")
                )
            } else {
                format!(
                    "{} loops with no caller choice and no count: a caller could go round it forever",
                    path.join(" → ")
                )
            };
            err(
                node_position(text, first),
                reason,
                Some("put a menu, collect or choose in the loop, or a count node that leaves it"),
            );
        }
    }

    /// The loops that contain no node where the caller chooses (menu, collect, choose) and no
    /// count: each once, as the nodes of one strongly connected part of the plan without
    /// those nodes, in file order.
    fn cycles_without_choice(&self) -> Vec<Vec<&str>> {
        let breaks = |n: &Node| {
            matches!(
                n,
                Node::Menu { .. } | Node::Collect { .. } | Node::Choose { .. } | Node::Count { .. }
            )
        };
        let inner: BTreeMap<&str, Vec<&str>> = self
            .nodes
            .iter()
            .filter(|(_, n)| !breaks(n))
            .map(|(id, n)| {
                let to = n
                    .targets()
                    .into_iter()
                    .filter(|t| self.nodes.get(*t).is_some_and(|n| !breaks(n)))
                    .collect();
                (id.as_str(), to)
            })
            .collect();
        strongly_connected(&inner)
            .into_iter()
            .filter(|part| part.len() > 1 || inner[part[0]].contains(&part[0]))
            .collect()
    }
}

/// Tarjan's strongly connected components of `graph` (each in the graph's key order).
fn strongly_connected<'a>(graph: &BTreeMap<&'a str, Vec<&'a str>>) -> Vec<Vec<&'a str>> {
    struct State<'a> {
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: HashSet<&'a str>,
        parts: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(v: &'a str, g: &BTreeMap<&'a str, Vec<&'a str>>, s: &mut State<'a>) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for &w in g.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(w, g, s);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut part = vec![];
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                part.push(w);
                if w == v {
                    break;
                }
            }
            part.sort_unstable();
            s.parts.push(part);
        }
    }
    let mut s = State {
        index: HashMap::new(),
        low: HashMap::new(),
        stack: vec![],
        on_stack: HashSet::new(),
        parts: vec![],
    };
    for &v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(v, graph, &mut s);
        }
    }
    s.parts.sort();
    s.parts
}

/// `a`, `b`, `c` (the first eight, then how many more).
fn list(ids: &[&str]) -> String {
    let mut shown: Vec<String> = ids.iter().take(8).map(|id| format!("`{id}`")).collect();
    if ids.len() > 8 {
        shown.push(format!("and {} more", ids.len() - 8));
    }
    shown.join(", ")
}

/// The known name closest to a mistyped one, when it is close enough to be the one meant.
pub(super) fn did_you_mean<'a>(
    wrong: &str,
    known: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(wrong, k), k))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
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

/// (line, column) of `"value"` among the lines of node `id`'s table (where a field names
/// it), else of the table's header.
pub(super) fn field_position(text: &str, id: &str, value: &str) -> (usize, usize) {
    let header = node_position(text, id);
    let quoted = format!("\"{value}\"");
    text.lines()
        .enumerate()
        .skip(header.0)
        .take_while(|(_, l)| !l.trim_start().starts_with('['))
        .find_map(|(i, l)| l.find(&quoted).map(|c| (i + 1, c + 1)))
        .unwrap_or(header)
}

pub(super) fn node_position(text: &str, id: &str) -> (usize, usize) {
    let a = position_of(text, &format!("[nodes.{id}]"));
    if a != (1, 1) {
        return a;
    }
    position_of(text, &format!("[nodes.\"{id}\"]"))
}
