//! Human gates from the command line: `spes runs pending`, `spes approve |
//! reject | revise | choose`, and the interactive reviewer used when spes
//! runs in a terminal.

use crate::term::say;
use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::Path;

use async_trait::async_trait;
use serde_json::{Value, json};
use spes_engine::{GateRequest, Reviewer};
use spes_store::{Decided, Gate, GateFilter};

use crate::project::Project;
use crate::runs::open_store;
use crate::{Failure, out};

/// What a human answers.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Approve {
        comments: Option<String>,
    },
    Reject {
        reason: String,
    },
    Revise {
        comments: String,
        suggest: Option<String>,
    },
    Choose {
        n: u64,
    },
}

impl Answer {
    fn to_json(&self) -> Value {
        match self {
            Self::Approve { comments } => {
                json!({ "action": "approve", "comments": comments.clone().unwrap_or_default(), "by": "cli" })
            }
            Self::Reject { reason } => {
                json!({ "action": "reject", "comments": reason, "by": "cli" })
            }
            Self::Revise { comments, suggest } => {
                json!({ "action": "revise", "comments": comments, "suggest": suggest.clone().unwrap_or_default(), "by": "cli" })
            }
            Self::Choose { n } => json!({ "action": "choose", "choice": n, "by": "cli" }),
        }
    }

    fn fits(&self, gate: &Gate) -> Result<(), String> {
        let actions: Vec<&str> = gate
            .request
            .get("actions")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let (name, ok) = match self {
            Self::Approve { .. } => (
                "approve",
                actions.contains(&"approve") || gate.kind == "choose",
            ),
            Self::Reject { .. } => ("reject", true),
            Self::Revise { .. } => ("revise", actions.contains(&"revise")),
            Self::Choose { n } => {
                let count = gate
                    .request
                    .get("variations")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len) as u64;
                if gate.kind != "choose" {
                    return Err(format!(
                        "gate `{}` is an {} gate; `choose` answers choose gates",
                        gate.key, gate.kind
                    ));
                }
                if *n == 0 || *n > count {
                    return Err(format!(
                        "gate `{}` offers variations 1 to {count}",
                        gate.key
                    ));
                }
                ("choose", true)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "gate `{}` ({}) does not take `{name}`; it takes: {}",
                gate.key,
                gate.kind,
                actions.join(", ")
            ))
        }
    }
}

fn preview(gate: &Gate) -> String {
    let text = gate
        .request
        .get("text")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            gate.request
                .get("variations")
                .and_then(Value::as_array)
                .map(|v| format!("{} variations", v.len()))
        })
        .unwrap_or_default();
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 60 {
        format!("{}…", one_line.chars().take(60).collect::<String>())
    } else {
        one_line
    }
}

pub(crate) async fn pending(config: Option<&Path>, store_url: Option<&str>) -> Result<(), Failure> {
    let project = Project::discover(config, &std::env::current_dir().unwrap_or_default())?;
    let store = open_store(&project, store_url).await?;
    let gates = store
        .gates(&GateFilter {
            run_id: None,
            pending_only: true,
        })
        .await?;
    if gates.is_empty() {
        say!("no gate is waiting for a human");
        return Ok(());
    }
    let mut s = String::new();
    for g in &gates {
        let _ = writeln!(
            s,
            "{}  {}  {}  opened {}{}  {}",
            g.run_id,
            g.key,
            g.kind,
            g.opened_at.format("%Y-%m-%d %H:%M"),
            g.deadline
                .map(|d| format!(", deadline {}", d.format("%Y-%m-%d %H:%M")))
                .unwrap_or_default(),
            preview(g)
        );
    }
    out(&s);
    Ok(())
}

/// Records an answer at one gate of a run.
pub(crate) async fn answer(
    config: Option<&Path>,
    store_url: Option<&str>,
    run: &str,
    gate: Option<&str>,
    answer: Answer,
) -> Result<(), Failure> {
    let project = Project::discover(config, &std::env::current_dir().unwrap_or_default())?;
    let store = open_store(&project, store_url).await?;
    let run = store.find_run(run).await?;
    let all = store
        .gates(&GateFilter {
            run_id: Some(run.id),
            pending_only: false,
        })
        .await?;
    let chosen: &Gate = match gate {
        Some(g) => {
            let matches: Vec<&Gate> = all
                .iter()
                .filter(|x| x.key == g || x.key.ends_with(&format!("/{g}")))
                .collect();
            match matches.as_slice() {
                [one] => one,
                [] => {
                    return Err(Failure::Usage(format!(
                        "run {} has no gate `{g}`; its gates: {}",
                        run.id,
                        all.iter()
                            .map(|x| x.key.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                many => {
                    return Err(Failure::Usage(format!(
                        "`{g}` matches several gates: {}; give the whole id",
                        many.iter()
                            .map(|x| x.key.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
        None => {
            let mut open: Vec<&Gate> = all.iter().filter(|x| x.decision.is_none()).collect();
            open.sort_by(|a, b| a.key.cmp(&b.key));
            match open.as_slice() {
                [one] => one,
                [] => {
                    return Err(Failure::Usage(match all.last() {
                        Some(last) => format!(
                            "run {} has no open gate; `{}` was already decided: {}",
                            run.id,
                            last.key,
                            last.decision
                                .as_ref()
                                .map(Value::to_string)
                                .unwrap_or_default()
                        ),
                        None => format!("run {} has no gate waiting for a human", run.id),
                    }));
                }
                many => {
                    return Err(Failure::Usage(format!(
                        "run {} has {} open gates: {}; pick one with --gate",
                        run.id,
                        many.len(),
                        many.iter()
                            .map(|x| x.key.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
    };
    answer.fits(chosen).map_err(Failure::Usage)?;
    match store
        .decide_gate(&run.id, &chosen.key, &answer.to_json())
        .await?
    {
        Decided::Now => {
            if crate::worker::is_queued(&store, &run.id).await? {
                say!(
                    "recorded at gate `{}` of run {}; a `spes worker` continues it",
                    chosen.key,
                    run.id
                );
            } else {
                say!(
                    "recorded at gate `{}` of run {}; `spes resume {}` continues it",
                    chosen.key,
                    run.id,
                    run.id
                );
            }
            Ok(())
        }
        Decided::Already {
            decision,
            decided_at,
        } => Err(Failure::Usage(format!(
            "gate `{}` of run {} was already decided at {}: {decision}",
            chosen.key,
            run.id,
            decided_at.format("%Y-%m-%d %H:%M:%S UTC")
        ))),
    }
}

/// Asks on the terminal (stderr for questions, stdin for answers).
#[derive(Debug, Default)]
pub(crate) struct TerminalReviewer {
    lock: tokio::sync::Mutex<()>,
}

fn ask_line(prompt: &str) -> Option<String> {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{prompt}");
    let _ = err.flush();
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim().to_owned()),
    }
}

fn interact(gate: &GateRequest) -> Option<Value> {
    let mut head = String::new();
    let _ = writeln!(head, "\n── {} gate `{}`", gate.kind, gate.key);
    if let Some(sec) = gate.request.get("section").and_then(Value::as_str) {
        let _ = writeln!(head, "section: {sec}");
    }
    if let Some(r) = gate.request.get("revision").and_then(Value::as_u64) {
        let m = gate
            .request
            .get("max_revisions")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let _ = writeln!(head, "revision {r} of at most {m}");
    }
    if let Some(t) = gate.request.get("text").and_then(Value::as_str) {
        let _ = writeln!(head, "{t}");
    }
    if let Some(vs) = gate.request.get("variations").and_then(Value::as_array) {
        for (i, v) in vs.iter().enumerate() {
            let _ = writeln!(head, "[{}] {}", i + 1, v.as_str().unwrap_or_default());
        }
    }
    crate::term::say_partial(&head);
    let actions: Vec<&str> = gate
        .request
        .get("actions")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    loop {
        if gate.kind == "choose" {
            let n = gate
                .request
                .get("variations")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let a = ask_line(&format!("pick 1-{n}, or r to reject: "))?;
            if a == "r" {
                let reason = ask_line("reason: ")?;
                return Some(json!({ "action": "reject", "comments": reason, "by": "terminal" }));
            }
            match a.parse::<usize>() {
                Ok(k) if (1..=n).contains(&k) => {
                    return Some(json!({ "action": "choose", "choice": k, "by": "terminal" }));
                }
                _ => say!("answer a number from 1 to {n}, or r"),
            }
            continue;
        }
        let revise = actions.contains(&"revise");
        let a = ask_line(if revise {
            "approve [a], reject [r], revise [v]: "
        } else {
            "approve [a], reject [r]: "
        })?;
        match a.as_str() {
            "a" | "approve" | "y" | "yes" => {
                return Some(json!({ "action": "approve", "comments": "", "by": "terminal" }));
            }
            "r" | "reject" | "n" | "no" => {
                let reason = ask_line("reason: ")?;
                return Some(json!({ "action": "reject", "comments": reason, "by": "terminal" }));
            }
            "v" | "revise" if revise => {
                let comments = ask_line("what should change: ")?;
                let suggest = ask_line("suggested changes (optional): ")?;
                return Some(
                    json!({ "action": "revise", "comments": comments, "suggest": suggest, "by": "terminal" }),
                );
            }
            _ => say!("answer a, r{}", if revise { " or v" } else { "" }),
        }
    }
}

#[async_trait]
impl Reviewer for TerminalReviewer {
    async fn review(&self, gate: &GateRequest) -> Option<Value> {
        let _guard = self.lock.lock().await;
        let g = gate.clone();
        tokio::task::spawn_blocking(move || interact(&g))
            .await
            .ok()
            .flatten()
    }
}
