//! Human gates from the command line: `spes runs pending`, `spes approve |
//! reject | revise | choose`, and the interactive reviewer used when spes
//! runs in a terminal.

use crate::term::say;
use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::Path;

use async_trait::async_trait;
use serde_json::Value;
use spes_engine::ops::{self, Decision};
use spes_engine::{GateRequest, Reviewer};
use spes_store::Gate;

use crate::project::Project;
use crate::runs::open_store;
use crate::{Failure, out};

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

pub(crate) async fn pending(
    config: Option<&Path>,
    store_url: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    let project = Project::discover(config, &std::env::current_dir().unwrap_or_default())?;
    let store = open_store(&project, store_url).await?;
    let gates = ops::pending(store.as_ref(), None, chrono::Utc::now()).await?;
    if json {
        crate::term::out_doc(&spes_engine::view::GateList {
            schema: spes_engine::view::VERSION,
            gates: gates.iter().map(spes_engine::view::GateView::of).collect(),
        });
        return Ok(());
    }
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

/// Records an answer at one gate of a run (the rules: `spes_engine::ops::decide`).
pub(crate) async fn answer(
    config: Option<&Path>,
    store_url: Option<&str>,
    run: &str,
    gate: Option<&str>,
    decision: Decision,
    by: Option<String>,
) -> Result<(), Failure> {
    let project = Project::discover(config, &std::env::current_dir().unwrap_or_default())?;
    let store = open_store(&project, store_url).await?;
    let by = by.unwrap_or_else(ops::default_reviewer);
    let r = ops::decide(&store, run, gate, &decision, &by, chrono::Utc::now()).await?;
    if r.queued {
        say!(
            "recorded at gate `{}` of run {} (by {by}); a `spes worker` continues it",
            r.gate,
            r.run
        );
    } else {
        say!(
            "recorded at gate `{}` of run {} (by {by}); `spes resume {}` continues it",
            r.gate,
            r.run,
            r.run
        );
    }
    Ok(())
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
    let by = ops::default_reviewer();
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
                match confirm_reject()? {
                    Some(reason) => return Some(Decision::Reject { reason }.to_json(&by)),
                    None => continue,
                }
            }
            match a.parse::<usize>() {
                Ok(k) if (1..=n).contains(&k) => {
                    return Some(Decision::Choose { n: k as u64 }.to_json(&by));
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
                return Some(
                    Decision::Approve {
                        comments: String::new(),
                    }
                    .to_json(&by),
                );
            }
            "r" | "reject" | "n" | "no" => {
                if let Some(reason) = confirm_reject()? {
                    return Some(Decision::Reject { reason }.to_json(&by));
                }
            }
            "v" | "revise" if revise => {
                let comments = ask_line("what should change: ")?;
                let suggest = ask_line("suggested changes (optional): ")?;
                return Some(Decision::Revise { comments, suggest }.to_json(&by));
            }
            _ => say!("answer a, r{}", if revise { " or v" } else { "" }),
        }
    }
}

/// Asks why, then for a confirmation (a reject may end the run): the
/// reason, or `None` when the reviewer does not confirm.
fn confirm_reject() -> Option<Option<String>> {
    let reason = ask_line("reason: ")?;
    let sure = ask_line("reject? [y/N]: ")?;
    Some(matches!(sure.as_str(), "y" | "Y" | "yes").then_some(reason))
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
