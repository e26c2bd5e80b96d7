//! A dialplan as a graph: Graphviz DOT, or a self-contained SVG (laid out here, so staff need
//! no Graphviz): nodes in layers by distance from the start, edges labelled with the key,
//! result code or condition that takes them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;

use super::model::{Dialplan, Node};

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn shape(n: &Node) -> (&'static str, &'static str) {
    match n {
        Node::Menu { .. } | Node::Choose { .. } => ("box", "#dbeafe"),
        Node::Collect { .. } => ("box", "#dcfce7"),
        Node::Invoke { .. } => ("box", "#fef3c7"),
        Node::Transfer { .. } | Node::Hangup {} => ("doubleoctagon", "#fee2e2"),
        Node::Branch { .. } | Node::Count { .. } | Node::Goto { .. } | Node::SetLanguage { .. } => {
            ("diamond", "#f3f4f6")
        }
        _ => ("box", "#ffffff"),
    }
}

/// Graphviz DOT.
pub fn to_dot(plan: &Dialplan) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n  rankdir=TB;\n  node [fontname=\"sans-serif\", style=filled];\n",
        plan.service
    );
    for (id, n) in &plan.nodes {
        let (shape, fill) = shape(n);
        let _ = writeln!(
            out,
            "  \"{id}\" [label=\"{id}\\n({})\", shape={shape}, fillcolor=\"{fill}\"];",
            n.kind()
        );
    }
    let _ = writeln!(
        out,
        "  \"__start\" [label=\"{}\", shape=circle, fillcolor=\"#e5e7eb\"];",
        plan.numbers.join(", ")
    );
    let _ = writeln!(out, "  \"__start\" -> \"{}\";", plan.start);
    for (id, n) in &plan.nodes {
        for (label, to) in n.edges() {
            let _ = writeln!(
                out,
                "  \"{id}\" -> \"{to}\" [label=\"{}\"];",
                label.replace('"', "'")
            );
        }
    }
    out.push_str("}\n");
    out
}

const W: f64 = 180.0;
const H: f64 = 46.0;
/// Node height when counters are drawn.
const H_STATS: f64 = 62.0;
const GAP_X: f64 = 40.0;
const GAP_Y: f64 = 70.0;

/// A self-contained SVG drawing.
pub fn to_svg(plan: &Dialplan) -> String {
    to_svg_with(plan, &HashMap::new())
}

/// As [`to_svg`], each node also showing how many calls reached it and how many ended there.
pub fn to_svg_with(plan: &Dialplan, stats: &HashMap<String, (i64, i64)>) -> String {
    let counted = !stats.is_empty();
    let h = if counted { H_STATS } else { H };
    // Layers by BFS distance from the start; unreachable nodes last.
    let mut depth: HashMap<&str, usize> = HashMap::new();
    let mut queue = VecDeque::from([(plan.start.as_str(), 0usize)]);
    while let Some((id, d)) = queue.pop_front() {
        if depth.contains_key(id) || !plan.nodes.contains_key(id) {
            continue;
        }
        depth.insert(id, d);
        for t in plan.nodes[id].targets() {
            queue.push_back((t, d + 1));
        }
    }
    let max = depth.values().copied().max().unwrap_or(0);
    let mut layers: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for id in plan.nodes.keys() {
        layers
            .entry(*depth.get(id.as_str()).unwrap_or(&(max + 1)))
            .or_default()
            .push(id);
    }
    let widest = layers.values().map(Vec::len).max().unwrap_or(1) as f64;
    let width = widest * (W + GAP_X) + GAP_X;
    let mut pos: HashMap<&str, (f64, f64)> = HashMap::new();
    for (row, ids) in layers.values().enumerate() {
        let offset = (width - ids.len() as f64 * (W + GAP_X) + GAP_X) / 2.0;
        for (col, id) in ids.iter().enumerate() {
            pos.insert(
                id,
                (
                    offset + col as f64 * (W + GAP_X),
                    GAP_Y + row as f64 * (h + GAP_Y),
                ),
            );
        }
    }
    let height = GAP_Y + layers.len() as f64 * (h + GAP_Y);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n\
<defs><marker id=\"a\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#555\"/></marker></defs>\n\
<text x=\"{:.0}\" y=\"28\" font-size=\"16\" font-weight=\"bold\">{} ({})</text>\n",
        GAP_X,
        escape(&plan.service),
        escape(&plan.numbers.join(", "))
    );
    for (id, n) in &plan.nodes {
        let (x1, y1) = pos[id.as_str()];
        for (label, to) in n.edges() {
            let Some(&(x2, y2)) = pos.get(to) else {
                continue;
            };
            let (sx, sy, ex, ey) = (x1 + W / 2.0, y1 + h, x2 + W / 2.0, y2);
            let path = if ey > sy {
                format!("M{sx:.0},{sy:.0} L{ex:.0},{ey:.0}")
            } else {
                // Back or same-layer edge: curve out to the side.
                let side = x1.max(x2) + W + GAP_X / 2.0;
                format!(
                    "M{:.0},{:.0} C{side:.0},{:.0} {side:.0},{:.0} {:.0},{:.0}",
                    x1 + W,
                    y1 + h / 2.0,
                    y1 + h / 2.0,
                    y2 + h / 2.0,
                    x2 + W,
                    y2 + h / 2.0
                )
            };
            let _ = writeln!(
                out,
                "<path d=\"{path}\" stroke=\"#555\" fill=\"none\" marker-end=\"url(#a)\"/>"
            );
            if !label.is_empty() {
                let (lx, ly) = if ey > sy {
                    ((sx + ex) / 2.0, (sy + ey) / 2.0)
                } else {
                    (x1.max(x2) + W + GAP_X / 2.0, (y1 + y2) / 2.0 + h / 2.0)
                };
                let _ = writeln!(
                    out,
                    "<text x=\"{lx:.0}\" y=\"{ly:.0}\" fill=\"#1d4ed8\">{}</text>",
                    escape(&label)
                );
            }
        }
    }
    for (id, n) in &plan.nodes {
        let (x, y) = pos[id.as_str()];
        let (_, fill) = shape(n);
        let stroke = if *id == plan.start { "#111" } else { "#888" };
        let _ = writeln!(
            out,
            "<g><rect x=\"{x:.0}\" y=\"{y:.0}\" width=\"{W}\" height=\"{h}\" rx=\"8\" fill=\"{fill}\" stroke=\"{stroke}\"/>\
<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>\
<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" fill=\"#555\">{}</text></g>",
            x + W / 2.0,
            y + 19.0,
            escape(id),
            x + W / 2.0,
            y + 36.0,
            n.kind()
        );
        if counted {
            let (reached, ended) = stats.get(id).copied().unwrap_or((0, 0));
            let _ = writeln!(
                out,
                "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" fill=\"#9a3412\" class=\"stats\">{reached} reached · {ended} ended here</text>",
                x + W / 2.0,
                y + 54.0
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn plan() -> Dialplan {
        Dialplan::parse(
            Path::new("r.toml"),
            include_str!("../../../dialplans/recharge.toml"),
            &crate::Catalog::EVERY_PROMPT,
        )
        .unwrap()
    }

    #[test]
    fn dot_has_every_node_and_labelled_edge() {
        let p = plan();
        let dot = to_dot(&p);
        for id in p.nodes.keys() {
            assert!(dot.contains(&format!("\"{id}\" [label=")), "{id}");
        }
        assert!(dot.contains("\"redeem\" -> \"card_used\" [label=\"card_used\"]"));
        assert!(dot.contains("\"language\" -> \"spanish\" [label=\"2\"]"));
    }

    #[test]
    fn svg_is_well_formed_and_draws_every_node() {
        let p = plan();
        let svg = to_svg(&p);
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect ").count(), p.nodes.len());
        assert_eq!(svg.matches("<g>").count(), svg.matches("</g>").count());
        let edges: usize = p.nodes.values().map(|n| n.edges().len()).sum();
        assert_eq!(
            svg.matches("<path d=\"M").count(),
            edges + 1,
            "every edge plus the marker"
        );
        assert!(!svg.contains("reached"));
    }

    #[test]
    fn svg_with_statistics_shows_them_on_every_node() {
        let p = plan();
        let stats = HashMap::from([("language".to_string(), (7, 2))]);
        let svg = to_svg_with(&p, &stats);
        assert!(svg.contains(">7 reached · 2 ended here<"));
        assert_eq!(svg.matches(" ended here<").count(), p.nodes.len());
        assert!(svg.contains(&format!("height=\"{H_STATS}\"")));
    }
}
