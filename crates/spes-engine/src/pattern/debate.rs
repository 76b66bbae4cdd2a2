//! `debate` (§2 `execute_debate`).
//!
//! Round 1: every debater states a position, all at once. Rounds 2..=R:
//! every debater rebuts, all at once, each seeing its own last turn and the
//! others' last turns (the reference shows rebuttals only the opening
//! positions, so a third round answers stale arguments; here each round
//! answers the one before). Then the judge rules over the history, of which
//! it sees what `judge_sees` says. Calls: debaters × rounds + 1.

use std::sync::Arc;
use std::time::Instant;

use futures::future::{BoxFuture, join_all};
use serde_json::{Value, json};
use spes_core::workflow::pattern::SUMMARY_CHARS;
use spes_core::workflow::{Agent, DebateStep, JudgeSees, Loc, StepKey};

use crate::error::FailureKind;
use crate::event::Event;
use crate::run::{Exec, StepResult, Stop, fail, join_key};

/// One round: its number, `positions` or `rebuttals`, and each debater's turn.
type Round = (u32, &'static str, Vec<(String, String)>);

fn cut(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// The judge's task for the history, showing what `sees` allows.
pub(crate) fn judge_task(topic: &str, history: &[Round], sees: JudgeSees) -> String {
    let shown: &[Round] = match sees {
        JudgeSees::Last => history.last().map_or(&[], std::slice::from_ref),
        JudgeSees::All | JudgeSees::Summary => history,
    };
    let mut out = format!("Original task: {topic}\n\nDebate history:\n");
    for (round, kind, turns) in shown {
        let title = if *kind == "positions" {
            "Positions"
        } else {
            "Rebuttals"
        };
        out.push_str(&format!("\n### Round {round} ({title})\n"));
        for (name, text) in turns {
            let text = if sees == JudgeSees::Summary {
                cut(text, SUMMARY_CHARS)
            } else {
                text.clone()
            };
            out.push_str(&format!("**{name}**: {text}\n"));
        }
    }
    out.push_str("\nEvaluate the arguments and provide a final decision with reasoning.");
    out
}

impl<'e> Exec<'e> {
    /// Runs agent calls at the same time (forked executions), every one to
    /// its end; answers in the order given.
    async fn agents_at_once(
        &mut self,
        calls: Vec<(Arc<Agent>, String, String)>,
        depth: usize,
        loc: &Loc,
    ) -> Result<Vec<String>, Stop> {
        let mut futs: Vec<BoxFuture<'_, (Exec<'e>, Result<String, Stop>)>> = Vec::new();
        for (agent, task, key) in calls {
            let mut child = self.fork();
            let loc = loc.clone();
            futs.push(Box::pin(async move {
                let start = Instant::now();
                child.engine.emit(&Event::StepStarted {
                    key: key.clone(),
                    kind: "llm",
                    depth: depth + 1,
                });
                let r = child.agent_call(&agent, task, &key, &loc).await;
                child.engine.emit(&Event::StepFinished {
                    key,
                    kind: "llm",
                    depth: depth + 1,
                    elapsed: start.elapsed(),
                    error: r.as_ref().err().and_then(|s| match s {
                        Stop::Failed(e) => Some(e.kind.to_string()),
                        _ => None,
                    }),
                    note: None,
                    usage: None,
                });
                (child, r.map(|resp| resp.text))
            }));
        }
        let done = join_all(futs).await;
        let mut texts = Vec::new();
        let mut stops = Vec::new();
        for (child, r) in done {
            self.absorb(child);
            match r {
                Ok(t) => texts.push(t),
                Err(s) => stops.push(s),
            }
        }
        match Stop::merge(stops) {
            Some(s) => Err(s),
            None => Ok(texts),
        }
    }

    pub(crate) async fn debate(
        &mut self,
        d: &DebateStep,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<StepResult, Stop> {
        let topic = d
            .topic
            .render(&self.ctx, None)
            .map_err(|e| fail(key, loc, FailureKind::Template(e)))?;
        let names: Vec<String> = d.debaters.iter().map(|a| a.name.clone()).collect();
        let mut history: Vec<Round> = Vec::new();
        for round in 1..=d.rounds {
            let calls = d
                .debaters
                .iter()
                .map(|a| {
                    let task = match history.last() {
                        None => topic.clone(),
                        Some((_, _, last)) => {
                            let own = last
                                .iter()
                                .find(|(n, _)| *n == a.name)
                                .map(|(_, t)| t.as_str())
                                .unwrap_or_default();
                            let others: Vec<String> = last
                                .iter()
                                .filter(|(n, _)| *n != a.name)
                                .map(|(n, t)| format!("**{n}**: {t}"))
                                .collect();
                            format!(
                                "Original task: {topic}\n\nYour position: {own}\n\nOther positions:\n{}\n\nProvide a rebuttal defending your position and addressing counterarguments.",
                                others.join("\n\n")
                            )
                        }
                    };
                    let k = StepKey::from(key)
                        .child(&format!("round{round}"))
                        .child(&a.name)
                        .into_string();
                    (a.clone(), task, k)
                })
                .collect();
            let texts = self.agents_at_once(calls, depth, loc).await?;
            let kind = if round == 1 { "positions" } else { "rebuttals" };
            history.push((round, kind, names.iter().cloned().zip(texts).collect()));
        }
        let task = judge_task(&topic, &history, d.judge_sees);
        let jkey = join_key(key, "judge");
        let start = self.call_started(&jkey, depth);
        let r = self.agent_call(&d.judge, task, &jkey, loc).await;
        self.call_finished(&jkey, depth, start, &r);
        let judgment = r?.text;
        let rounds: Vec<Value> = history
            .iter()
            .map(|(r, kind, turns)| {
                let outputs: serde_json::Map<String, Value> = turns
                    .iter()
                    .map(|(n, t)| (n.clone(), Value::String(t.clone())))
                    .collect();
                json!({ "round": r, "type": kind, "outputs": outputs })
            })
            .collect();
        Ok(StepResult {
            value: Some(json!({
                "judgment": judgment,
                "output": judgment,
                "judge": d.judge.name,
                "judge_sees": d.judge_sees.as_str(),
                "history": rounds,
            })),
            note: Some(format!(
                "{} debaters × {} rounds, judged by {}",
                names.len(),
                d.rounds,
                d.judge.name
            )),
            usage: None,
        })
    }
}
