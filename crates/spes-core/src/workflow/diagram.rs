//! `spes workflow diagram`: Mermaid flowcharts and an indented text tree.

use std::fmt::Write as _;

use super::kind::Role;
use super::{Step, StepKind, Workflow};

fn label(s: &Step) -> String {
    let detail = match &s.kind {
        StepKind::Llm(l) => l
            .agent
            .as_ref()
            .map_or_else(|| "llm".to_owned(), |a| format!("llm · {}", a.name)),
        StepKind::Transform(t) => format!("transform · {}", t.func_name),
        StepKind::Http(h) => format!("http · {}", h.method),
        StepKind::Agent(a) => format!("agent · {} tools", a.tools.len()),
        StepKind::Approval(a) => format!(
            "approval · human{}",
            a.timeout
                .as_ref()
                .map(|t| format!(", deadline {}", crate::duration::format_duration(t.after)))
                .unwrap_or_default()
        ),
        StepKind::Choose(c) => format!("choose · {} variations · human", c.n),
        StepKind::Sections(_) => "sections · human".to_owned(),
        StepKind::Workflow(w) => format!("workflow · {}", w.path),
        StepKind::Switch(sw) => sw.classify.agent.as_ref().map_or_else(
            || "switch · classify".to_owned(),
            |a| format!("switch · classify by {}", a.name),
        ),
        StepKind::QualityGate(q) => format!(
            "quality_gate · {} ≥ {} · {} attempts",
            q.evaluator.describe(),
            q.threshold,
            q.max_attempts
        ),
        StepKind::Refine(r) => format!(
            "refine · {} ≥ {} · {} iterations",
            r.evaluator.describe(),
            r.threshold,
            r.max_iterations
        ),
        StepKind::Debate(d) => format!(
            "debate · {} · {} rounds · judge {} sees {}",
            d.debaters
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(" vs "),
            d.rounds,
            d.judge.name,
            d.judge_sees.as_str()
        ),
        StepKind::AgentChain(c) => format!(
            "sequence · {}",
            c.agents
                .iter()
                .map(|(_, a)| a.name.as_str())
                .collect::<Vec<_>>()
                .join(" → ")
        ),
        StepKind::Map(m) => format!(
            "map over {} · {} at once · on_error {}",
            m.over,
            m.concurrency,
            m.on_error.as_str()
        ),
        StepKind::Reduce(r) => format!("reduce over {}", r.over),
        StepKind::FanOut(f) => format!("fan_out · {} workers", f.workers.len()),
        StepKind::Pipeline(p) => format!("pipeline · {} stages", p.stages.len()),
        StepKind::ScatterGather(g) => format!(
            "scatter_gather · timeout {}",
            crate::duration::format_duration(g.timeout)
        ),
        // A kind with nothing more to say: its name.
        _ => s.kind.name().to_owned(),
    };
    let out = s
        .output
        .as_ref()
        .map(|o| format!(" → {o}"))
        .unwrap_or_default();
    format!("{} ({detail}{}){out}", s.name, s.policies.describe())
}

/// An indented tree.
#[must_use]
pub fn text(wf: &Workflow) -> String {
    fn go(steps: &[Step], depth: usize, out: &mut String) {
        for s in steps {
            let pad = "  ".repeat(depth);
            let when = s
                .when
                .as_ref()
                .map(|w| format!(" [when {}]", w.describe()))
                .unwrap_or_default();
            let _ = writeln!(out, "{pad}- {}{when}", label(s));
            if let StepKind::Parallel(p) = &s.kind
                && let super::ParallelBranches::Agents { agents, .. } = &p.branches
            {
                for a in agents {
                    let _ = writeln!(out, "{pad}  - {} (llm · {})", a.name, a.name);
                }
            }
            for c in s.kind.children() {
                match c.role {
                    Role::Arm { name, condition } => {
                        let _ = writeln!(out, "{pad}  ? {name}: {}", condition.describe());
                        go(c.steps, depth + 2, out);
                    }
                    Role::Else | Role::Route(_) | Role::Default => {
                        let label = c.role.segment().unwrap_or_default();
                        let _ = writeln!(out, "{pad}  ? {label}");
                        go(c.steps, depth + 2, out);
                    }
                    Role::Compensate { .. } => {
                        let _ = writeln!(out, "{pad}    ↺ undo:");
                        go(c.steps, depth + 3, out);
                    }
                    // What a gate does at its deadline is not drawn.
                    Role::Timeout => {}
                    Role::Inline | Role::Attempt | Role::Iteration | Role::Item => {
                        go(c.steps, depth + 1, out);
                    }
                }
            }
        }
    }
    let mut out = format!("{}\n", wf.name);
    go(&wf.steps, 0, &mut out);
    out
}

fn esc(s: &str) -> String {
    s.replace('"', "#quot;")
}

/// A Mermaid flowchart (`flowchart TD`).
#[must_use]
pub fn mermaid(wf: &Workflow) -> String {
    struct M {
        out: String,
        n: usize,
    }
    impl M {
        fn id(&mut self) -> String {
            self.n += 1;
            format!("n{}", self.n)
        }
        /// Emits the steps in order; returns (first node, last nodes).
        fn steps(&mut self, steps: &[Step], from: Vec<String>) -> Vec<String> {
            let mut prev = from;
            for s in steps {
                prev = self.step(s, &prev);
            }
            prev
        }
        fn link(&mut self, from: &[String], to: &str, label: Option<&str>) {
            for f in from {
                match label {
                    Some(l) => {
                        let _ = writeln!(self.out, "    {f} -->|\"{}\"| {to}", esc(l));
                    }
                    None => {
                        let _ = writeln!(self.out, "    {f} --> {to}");
                    }
                }
            }
        }
        fn step(&mut self, s: &Step, prev: &[String]) -> Vec<String> {
            match &s.kind {
                StepKind::Branch(b) => {
                    let id = self.id();
                    let _ = writeln!(self.out, "    {id}{{\"{}\"}}", esc(&s.name));
                    self.link(prev, &id, None);
                    let mut ends = Vec::new();
                    for a in &b.arms {
                        let first = self.out.len();
                        let tail = self.steps(&a.steps, vec![id.clone()]);
                        // Relabel the first edge out of the decision with the condition.
                        let edge = format!("    {id} --> ");
                        if let Some(pos) = self.out[first..].find(&edge) {
                            let at = first + pos;
                            let labelled =
                                format!("    {id} -->|\"{}\"| ", esc(&a.condition.describe()));
                            self.out.replace_range(at..at + edge.len(), &labelled);
                        }
                        ends.extend(tail);
                    }
                    match &b.otherwise {
                        Some(o) => {
                            let first = self.out.len();
                            let tail = self.steps(o, vec![id.clone()]);
                            let edge = format!("    {id} --> ");
                            if let Some(pos) = self.out[first..].find(&edge) {
                                let at = first + pos;
                                self.out.replace_range(
                                    at..at + edge.len(),
                                    &format!("    {id} -->|else| "),
                                );
                            }
                            ends.extend(tail);
                        }
                        None => ends.push(id),
                    }
                    ends
                }
                StepKind::Sequence(c) => self.steps(c, prev.to_vec()),
                StepKind::Workflow(w) => {
                    let _ = writeln!(
                        self.out,
                        "    subgraph sg{}[\"{}\"]",
                        self.n + 1,
                        esc(&label(s))
                    );
                    self.n += 1;
                    let tail = self.steps(&w.workflow.steps, prev.to_vec());
                    let _ = writeln!(self.out, "    end");
                    tail
                }
                StepKind::Switch(sw) => {
                    let id = self.id();
                    let _ = writeln!(
                        self.out,
                        "    {id}{{\"{}\"}}",
                        esc(&format!("{} (switch)", s.name))
                    );
                    self.link(prev, &id, None);
                    let mut ends = Vec::new();
                    let arms = sw
                        .routes
                        .iter()
                        .map(|(r, st)| (r.as_str(), st))
                        .chain(sw.default.iter().map(|d| ("default", d)));
                    for (r, st) in arms {
                        let first = self.out.len();
                        let tail = self.steps(st, vec![id.clone()]);
                        let edge = format!("    {id} --> ");
                        if let Some(pos) = self.out[first..].find(&edge) {
                            let at = first + pos;
                            self.out.replace_range(
                                at..at + edge.len(),
                                &format!("    {id} -->|\"{}\"| ", esc(r)),
                            );
                        }
                        ends.extend(tail);
                    }
                    if sw.default.is_none() {
                        ends.push(id);
                    }
                    ends
                }
                StepKind::Parallel(p) => {
                    let fork = self.id();
                    let _ = writeln!(
                        self.out,
                        "    {fork}{{{{\"{}\"}}}}",
                        esc(&format!("{} (parallel)", s.name))
                    );
                    self.link(prev, &fork, None);
                    let mut ends = Vec::new();
                    match &p.branches {
                        super::ParallelBranches::Steps(c) => {
                            for child in c {
                                ends.extend(self.step(child, std::slice::from_ref(&fork)));
                            }
                        }
                        super::ParallelBranches::Agents { agents, .. } => {
                            for a in agents {
                                let id = self.id();
                                let _ = writeln!(
                                    self.out,
                                    "    {id}[\"{}\"]",
                                    esc(&format!("{} (llm · {})", a.name, a.name))
                                );
                                self.link(std::slice::from_ref(&fork), &id, None);
                                ends.push(id);
                            }
                        }
                    }
                    match &p.synthesize {
                        Some(sy) => self.step(sy, &ends),
                        None => ends,
                    }
                }
                StepKind::Approval(a) if a.generate.is_some() => {
                    let tail = a
                        .generate
                        .as_ref()
                        .map_or_else(|| prev.to_vec(), |g| self.step(g, prev));
                    let id = self.id();
                    let _ = writeln!(self.out, "    {id}[[\"{}\"]]", esc(&label(s)));
                    self.link(&tail, &id, None);
                    vec![id]
                }
                StepKind::Map(_)
                | StepKind::Reduce(_)
                | StepKind::FanOut(_)
                | StepKind::Saga(_)
                | StepKind::Pipeline(_)
                | StepKind::ScatterGather(_) => {
                    let head = self.id();
                    let _ = writeln!(self.out, "    {head}{{{{\"{}\"}}}}", esc(&label(s)));
                    self.link(prev, &head, None);
                    let from = vec![head.clone()];
                    match &s.kind {
                        StepKind::Map(m) => self.step(&m.step, &from),
                        StepKind::Reduce(r) => self.step(&r.step, &from),
                        StepKind::Pipeline(p) => self.steps(&p.stages, from),
                        StepKind::Saga(sg) => {
                            let mut prev = from;
                            for a in &sg.actions {
                                prev = self.step(&a.step, &prev);
                                if let Some(c) = &a.compensate {
                                    let id = self.id();
                                    let _ = writeln!(
                                        self.out,
                                        "    {id}[\"{}\"]",
                                        esc(&format!("undo: {}", label(c)))
                                    );
                                    for p in &prev {
                                        let _ = writeln!(self.out, "    {p} -.->|on failure| {id}");
                                    }
                                }
                            }
                            prev
                        }
                        StepKind::FanOut(f) => {
                            let mut ends = Vec::new();
                            for w in &f.workers {
                                ends.extend(self.step(w, &from));
                            }
                            match &f.aggregate {
                                Some(a) => self.step(a, &ends),
                                None => ends,
                            }
                        }
                        StepKind::ScatterGather(g) => {
                            let mut ends = Vec::new();
                            for w in &g.sources {
                                ends.extend(self.step(w, &from));
                            }
                            match &g.gather {
                                Some(a) => self.step(a, &ends),
                                None => ends,
                            }
                        }
                        _ => from,
                    }
                }
                StepKind::Approval(_) | StepKind::Choose(_) | StepKind::Sections(_) => {
                    let id = self.id();
                    let _ = writeln!(self.out, "    {id}[[\"{}\"]]", esc(&label(s)));
                    self.link(prev, &id, None);
                    vec![id]
                }
                StepKind::Llm(_) | StepKind::Transform(_) => {
                    let id = self.id();
                    let shape = if matches!(s.kind, StepKind::Llm(_)) {
                        ("[", "]")
                    } else {
                        ("[/", "/]")
                    };
                    let _ = writeln!(
                        self.out,
                        "    {id}{}\"{}\"{}",
                        shape.0,
                        esc(&label(s)),
                        shape.1
                    );
                    self.link(prev, &id, None);
                    vec![id]
                }
                // Any other kind (quality_gate, refine, debate, agent
                // sequences): one box.
                _ => {
                    let id = self.id();
                    let _ = writeln!(self.out, "    {id}[\"{}\"]", esc(&label(s)));
                    self.link(prev, &id, None);
                    vec![id]
                }
            }
        }
    }
    let mut m = M {
        out: String::from("flowchart TD\n    start((start))\n"),
        n: 0,
    };
    let ends = m.steps(&wf.steps, vec!["start".into()]);
    m.out.push_str("    done((done))\n");
    m.link(&ends, "done", None);
    m.out
}
