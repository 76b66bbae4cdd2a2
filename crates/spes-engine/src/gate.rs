//! Human gates: approval, choose and sections (§5), durable.
//!
//! A gate is an effect like a model call: its decision is journaled under
//! the gate's key (its stable id). With a [`Reviewer`] (a terminal), the
//! human answers at once; without one, the gate is opened in the store and
//! the run suspends (`waiting`, no process held) until `spes approve` (or
//! reject, revise, choose) records a decision and the run is resumed. A
//! deadline is a stored timestamp: the first execution after it passes
//! records the timeout decision, exactly once (the store's decide is a
//! compare-and-set).

use std::fmt::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use serde_json::{Value, json};
use spes_core::message::ChatRequest;
use spes_core::template::Context;
use spes_core::workflow::{
    ApprovalStep, ChooseStep, LlmStep, Loc, Outline, SectionsStep, StepKey, Timeout, TimeoutAction,
};
use spes_store::{Decided, NewGate};

use crate::error::FailureKind;
use crate::journal::{Effect, JournalError};
use crate::run::{Exec, StepResult, Stop, join_key};

/// What a human is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct GateRequest {
    /// The gate's stable id (its step key).
    pub key: String,
    /// `approval`, `choose` or `section`.
    pub kind: String,
    /// What to show: `{ "text": ... }` for approvals and sections,
    /// `{ "variations": [...] }` for choose, plus `revision`, `max_revisions`, `section`.
    pub request: Value,
}

/// Someone who answers gates right away (a terminal). Decisions are JSON:
/// `{ "action": "approve" | "reject" | "revise" | "choose", "comments": ..., "suggest": ..., "choice": N }`.
#[async_trait]
pub trait Reviewer: Send + Sync {
    /// Asks; `None` means "not now" (the run suspends).
    async fn review(&self, gate: &GateRequest) -> Option<Value>;
}

fn action(d: &Value) -> &str {
    d.get("action").and_then(Value::as_str).unwrap_or("")
}

fn text_field(d: &Value, k: &str) -> String {
    d.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// What a gate call produced.
pub(crate) enum GateOutcome {
    /// A decision (human or deadline).
    Decided(Value),
    /// The deadline passed and the timeout path is steps: run them.
    TimeoutSteps,
}

impl Exec<'_> {
    /// A journaled clock read.
    pub(crate) async fn clock(&mut self, key: &str, loc: &Loc) -> Result<i64, Stop> {
        if let Some(Effect::Clock { at_ms }) = self
            .journal
            .get(key)
            .await
            .map_err(|e| fail(key, loc, FailureKind::Journal(e)))?
        {
            return Ok(at_ms);
        }
        match self
            .journal
            .record(
                key,
                Effect::Clock {
                    at_ms: (self.engine.clock)(),
                },
            )
            .await
            .map_err(|e| e.stop(key, loc))?
        {
            Effect::Clock { at_ms } => Ok(at_ms),
            _ => Err(fail(
                key,
                loc,
                FailureKind::Journal(JournalError::Mismatch("clock entry expected".into())),
            )),
        }
    }

    async fn recorded_decision(&self, key: &str, loc: &Loc) -> Result<Option<Value>, Stop> {
        match self
            .journal
            .get_fresh(key)
            .await
            .map_err(|e| fail(key, loc, FailureKind::Journal(e)))?
        {
            Some(Effect::Decision { decision }) => Ok(Some(decision)),
            Some(other) => Err(fail(
                key,
                loc,
                FailureKind::Journal(JournalError::Mismatch(format!(
                    "expected a decision at this gate, found a {} entry",
                    other.kind()
                ))),
            )),
            None => Ok(None),
        }
    }

    /// Asks a human at gate `key`; see the module docs.
    pub(crate) async fn gate(
        &mut self,
        key: &str,
        kind: &str,
        request: Value,
        timeout: Option<&Timeout>,
        loc: &Loc,
    ) -> Result<GateOutcome, Stop> {
        if let Some(d) = self.recorded_decision(key, loc).await? {
            return Ok(self.outcome(d));
        }
        let deadline_ms = match timeout {
            Some(t) => {
                let opened = self.clock(&StepKey::from(key).tag("opened"), loc).await?;
                Some(opened + i64::try_from(t.after.as_millis()).unwrap_or(i64::MAX / 2))
            }
            None => None,
        };
        let then = match timeout.map(|t| &t.then) {
            Some(TimeoutAction::Approve) => "approve",
            Some(TimeoutAction::Steps(_)) => "timeout",
            _ => "reject",
        };
        // The gate carries its timeout decision, so that whoever sees the
        // deadline pass (a worker, the next command) can decide it.
        let mut request = request;
        if timeout.is_some()
            && let Value::Object(m) = &mut request
        {
            m.insert("on_timeout".into(), Value::from(then));
        }
        let gate_req = GateRequest {
            key: key.to_owned(),
            kind: kind.to_owned(),
            request: request.clone(),
        };
        let Some(control) = self.control.clone() else {
            // In memory: only an interactive reviewer can answer.
            let Some(reviewer) = self.engine.reviewer.clone() else {
                return Err(Stop::Suspended(vec![key.to_owned()]));
            };
            let Some(d) = reviewer.review(&gate_req).await else {
                return Err(Stop::Suspended(vec![key.to_owned()]));
            };
            let winner = self
                .journal
                .record(key, Effect::Decision { decision: d })
                .await
                .map_err(|e| e.stop(key, loc))?;
            return match winner {
                Effect::Decision { decision } => Ok(self.outcome(decision)),
                _ => Err(fail(
                    key,
                    loc,
                    FailureKind::Journal(JournalError::Mismatch("decision expected".into())),
                )),
            };
        };
        control
            .store
            .open_gate(&NewGate {
                run_id: control.run,
                key: key.to_owned(),
                kind: kind.to_owned(),
                request,
                deadline: deadline_ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
            })
            .await
            .map_err(|e| fail(key, loc, FailureKind::Journal(JournalError::from_store(&e))))?;
        // The deadline first: a gate whose time is up takes its timeout path,
        // even if a reviewer is at hand.
        let decision = if let Some(deadline) = deadline_ms
            && (self.engine.clock)() >= deadline
        {
            Some(crate::ops::deadline_decision(then))
        } else if let Some(reviewer) = self.engine.reviewer.clone() {
            reviewer.review(&gate_req).await
        } else {
            None
        };
        if let Some(d) = decision {
            let outcome = control
                .store
                .decide_gate(&control.run, key, &d)
                .await
                .map_err(|e| fail(key, loc, FailureKind::Journal(JournalError::from_store(&e))))?;
            let first = match outcome {
                Decided::Now => d,
                Decided::Already { decision, .. } => decision,
            };
            return Ok(self.outcome(first));
        }
        // Someone may have answered while we were opening the gate.
        if let Some(d) = self.recorded_decision(key, loc).await? {
            return Ok(self.outcome(d));
        }
        Err(Stop::Suspended(vec![key.to_owned()]))
    }

    /// What a decision means for the gate step; counts deadline decisions.
    fn outcome(&mut self, d: Value) -> GateOutcome {
        if d.get("by").and_then(Value::as_str) == Some("deadline")
            || d.get("timeout").and_then(Value::as_bool) == Some(true)
        {
            self.deadlines += 1;
        }
        outcome_of(d)
    }

    /// Renders and sends a prompt to a provider (revisions), through the journal.
    async fn ask(
        &mut self,
        prompt: String,
        agent: Option<&Arc<spes_core::workflow::Agent>>,
        provider: Option<&str>,
        key: &str,
        loc: &Loc,
    ) -> Result<String, Stop> {
        let mut req = ChatRequest::user(prompt);
        let shim = provider.map(|p| LlmStep {
            prompt: spes_core::template::Template::parse("")
                .unwrap_or_else(|_| unreachable_template()),
            agent: None,
            system: None,
            provider: Some(p.to_owned()),
            model: None,
            temperature: None,
            max_tokens: None,
            stop: Vec::new(),
            format: spes_core::workflow::Format::Text,
            schema: None,
            repair: None,
            on_truncation: None,
        });
        let (p, comps) =
            self.prepare(agent.map(AsRef::as_ref), shim.as_ref(), &mut req, key, loc)?;
        Ok(self.call(&p, &req, comps, key, loc).await?.text)
    }

    /// Runs an llm step with extra local variables and a suffix on its prompt.
    async fn llm_with(
        &mut self,
        l: &LlmStep,
        locals: &Context,
        suffix: &str,
        key: &str,
        loc: &Loc,
    ) -> Result<String, Stop> {
        let user = l
            .prompt
            .render(&self.ctx, Some(locals))
            .map_err(|e| fail(key, loc, FailureKind::Template(e)))?;
        let a = self
            .answer(l, format!("{user}{suffix}"), Some(locals), key, loc)
            .await?;
        Ok(a.text().to_owned())
    }

    pub(crate) async fn approval(
        &mut self,
        a: &ApprovalStep,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<StepResult, Stop> {
        let mut draft = match (&a.show, &a.generate) {
            (_, Some(g)) => {
                let v = self.step(g, key, depth + 1).await?;
                as_text(v.as_ref())
            }
            (Some(k), None) => as_text(self.ctx.get(k)),
            (None, None) => String::new(),
        };
        let mut history = Vec::new();
        for r in 0..=a.max_revisions {
            let gate_key = join_key(key, &format!("review{r}"));
            let request = json!({
                "text": draft,
                "revision": r,
                "max_revisions": a.max_revisions,
                "actions": ["approve", "reject", "revise"],
            });
            let d = match self
                .gate(&gate_key, "approval", request, a.timeout.as_ref(), loc)
                .await?
            {
                GateOutcome::Decided(d) => d,
                GateOutcome::TimeoutSteps => {
                    let v = self.timeout_steps(a.timeout.as_ref(), key, depth).await?;
                    return Ok(done(
                        json!({ "status": "timeout", "output": v, "revisions": r, "history": history }),
                        "timed out",
                    ));
                }
            };
            let comments = text_field(&d, "comments");
            history.push(json!({ "revision": r, "output": draft, "action": action(&d), "comments": comments }));
            match action(&d) {
                "approve" => {
                    let by = if d.get("timeout").and_then(Value::as_bool) == Some(true) {
                        " (deadline)"
                    } else {
                        ""
                    };
                    return Ok(done(
                        json!({ "status": "approved", "output": draft, "revisions": r, "comments": comments, "history": history }),
                        &format!("approved{by}"),
                    ));
                }
                "reject" => {
                    let status = if d.get("timeout").and_then(Value::as_bool) == Some(true) {
                        "timeout"
                    } else {
                        "rejected"
                    };
                    return Ok(done(
                        json!({ "status": status, "output": draft, "revisions": r, "reason": comments, "history": history }),
                        status,
                    ));
                }
                "revise" if r < a.max_revisions => {
                    let mut locals = Context::new();
                    locals.insert("draft".into(), Value::String(draft.clone()));
                    locals.insert("comments".into(), Value::String(comments));
                    locals.insert("suggested".into(), Value::String(text_field(&d, "suggest")));
                    locals.insert("revision".into(), Value::from(r + 1));
                    let prompt = a
                        .revise
                        .render(&self.ctx, Some(&locals))
                        .map_err(|e| fail(key, loc, FailureKind::Template(e)))?;
                    let rkey = join_key(key, &format!("revision{}", r + 1));
                    draft = self
                        .ask(prompt, a.agent.as_ref(), a.provider.as_deref(), &rkey, loc)
                        .await?;
                }
                "revise" => {
                    return Ok(done(
                        json!({ "status": "max_revisions_reached", "output": draft, "revisions": r, "history": history }),
                        "max revisions reached",
                    ));
                }
                other => {
                    return Err(fail(
                        &gate_key,
                        loc,
                        FailureKind::Answer(format!(
                            "unknown decision `{other}` at an approval gate"
                        )),
                    ));
                }
            }
        }
        Ok(done(
            json!({ "status": "max_revisions_reached", "output": draft, "history": history }),
            "max revisions reached",
        ))
    }

    async fn timeout_steps(
        &mut self,
        t: Option<&Timeout>,
        key: &str,
        depth: usize,
    ) -> Result<Value, Stop> {
        match t.map(|t| &t.then) {
            Some(TimeoutAction::Steps(st)) => Ok(self
                .steps_at(st, join_key(key, "timeout"), depth + 1)
                .await?
                .unwrap_or(Value::Null)),
            _ => Ok(Value::Null),
        }
    }

    pub(crate) async fn choose(
        &mut self,
        c: &ChooseStep,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<StepResult, Stop> {
        let _ = depth;
        let mut variations = Vec::new();
        for i in 1..=c.n {
            let suffix = format!("\n\n(Generate variation {i} of {}, making it unique.)", c.n);
            let vkey = join_key(key, &format!("variation{i}"));
            variations.push(
                self.llm_with(&c.generate, &Context::new(), &suffix, &vkey, loc)
                    .await?,
            );
        }
        let gate_key = join_key(key, "pick");
        let request = json!({ "variations": variations, "actions": ["choose", "reject"] });
        let d = match self
            .gate(&gate_key, "choose", request, c.timeout.as_ref(), loc)
            .await?
        {
            GateOutcome::Decided(d) => d,
            GateOutcome::TimeoutSteps => {
                let v = self.timeout_steps(c.timeout.as_ref(), key, depth).await?;
                return Ok(done(
                    json!({ "status": "timeout", "output": v, "variations": variations }),
                    "timed out",
                ));
            }
        };
        let choice = match action(&d) {
            "choose" => d.get("choice").and_then(Value::as_u64).unwrap_or(0),
            "approve" => 1,
            _ => {
                return Ok(done(
                    json!({ "status": "rejected", "variations": variations, "reason": text_field(&d, "comments") }),
                    "rejected",
                ));
            }
        };
        let idx = usize::try_from(choice).unwrap_or(0);
        let Some(selected) = idx.checked_sub(1).and_then(|i| variations.get(i)).cloned() else {
            return Err(fail(
                &gate_key,
                loc,
                FailureKind::Answer(format!("choice {choice} is not between 1 and {}", c.n)),
            ));
        };
        Ok(done(
            json!({ "status": "chosen", "selected_index": idx, "selected": selected, "output": selected, "variations": variations }),
            &format!("chose {idx}"),
        ))
    }

    pub(crate) async fn sections(
        &mut self,
        s: &SectionsStep,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<StepResult, Stop> {
        let items: Vec<Value> = match &s.outline {
            Outline::List(v) => v.clone(),
            Outline::Template(t) => match t
                .eval(&self.ctx, None)
                .map_err(|e| fail(key, loc, FailureKind::Template(e)))?
            {
                Value::Array(a) => a
                    .into_iter()
                    .filter(|v| !as_text(Some(v)).trim().is_empty())
                    .collect(),
                other => as_text(Some(&other))
                    .lines()
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(|x| Value::String(x.to_owned()))
                    .collect(),
            },
        };
        // A section is a name, or an object with a `name` (and whatever its
        // prompt reads: `{{ section.prompt }}`).
        let names: Vec<String> = items
            .iter()
            .map(|v| spes_core::workflow::section_name(v).unwrap_or_else(|| as_text(Some(v))))
            .collect();
        let mut done_sections: Vec<(String, String)> = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let skey = join_key(key, &format!("s{}", i + 1));
            let previous = done_sections
                .iter()
                .map(|(_, t)| t.as_str())
                .collect::<Vec<_>>()
                .join("\n\n");
            let mut locals = Context::new();
            locals.insert(
                "section".into(),
                match &items[i] {
                    v @ Value::Object(_) => v.clone(),
                    _ => Value::String(name.clone()),
                },
            );
            locals.insert("previous".into(), Value::String(previous.clone()));
            let mut text = self.llm_with(&s.section, &locals, "", &skey, loc).await?;
            let mut approved = false;
            for attempt in 0..2 {
                let gate_key = join_key(&skey, if attempt == 0 { "review" } else { "review2" });
                let request = json!({ "text": text, "section": name, "index": i + 1, "of": names.len(), "actions": if attempt == 0 { json!(["approve", "reject", "revise"]) } else { json!(["approve", "reject"]) } });
                let d = match self
                    .gate(&gate_key, "section", request, s.timeout.as_ref(), loc)
                    .await?
                {
                    GateOutcome::Decided(d) => d,
                    GateOutcome::TimeoutSteps => {
                        let v = self.timeout_steps(s.timeout.as_ref(), key, depth).await?;
                        return Ok(done(
                            json!({ "status": "timeout", "output": v, "document": joined(&done_sections), "failed_at": name }),
                            "timed out",
                        ));
                    }
                };
                match (action(&d), attempt) {
                    ("approve", _) => {
                        approved = true;
                        break;
                    }
                    ("revise", 0) => {
                        let mut p = String::new();
                        let _ = write!(
                            p,
                            "\n\nPrevious attempt:\n{text}\n\nFeedback: {}\n\nPlease revise.",
                            text_field(&d, "comments")
                        );
                        text = self
                            .llm_with(&s.section, &locals, &p, &join_key(&skey, "revision"), loc)
                            .await?;
                    }
                    _ => break,
                }
            }
            if !approved {
                let doc = joined(&done_sections);
                return Ok(done(
                    json!({
                        "status": "rejected",
                        "document": doc,
                        "output": doc,
                        "completed_sections": done_sections.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
                        "failed_at": name,
                    }),
                    &format!("stopped at {name}"),
                ));
            }
            done_sections.push((name.clone(), text));
        }
        let doc = joined(&done_sections);
        Ok(done(
            json!({
                "status": "complete",
                "document": doc,
                "output": doc,
                "completed_sections": done_sections.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            }),
            &format!("{} sections approved", done_sections.len()),
        ))
    }
}

fn joined(sections: &[(String, String)]) -> String {
    sections
        .iter()
        .map(|(_, t)| t.as_str())
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn outcome_of(d: Value) -> GateOutcome {
    if action(&d) == "timeout" {
        GateOutcome::TimeoutSteps
    } else {
        GateOutcome::Decided(d)
    }
}

fn done(v: Value, note: &str) -> StepResult {
    StepResult {
        value: Some(v),
        note: Some(note.to_owned()),
        usage: None,
    }
}

fn as_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn fail(step: &str, loc: &Loc, kind: FailureKind) -> Stop {
    Stop::Failed(crate::EngineError {
        step: step.to_owned(),
        loc: loc.clone(),
        kind,
    })
}

#[allow(clippy::expect_used)]
fn unreachable_template() -> spes_core::template::Template {
    spes_core::template::Template::parse("x").expect("a constant template parses")
}
