//! `kind: agent`: the model is offered tools; each turn is a model call
//! journaled under `STEP/turn[N]`, and each tool call it makes is run and
//! journaled under `STEP/turn[N]/call[NAME#K]` (the K-th call of that tool
//! in the turn) before its result goes back to the model. A resumed run
//! replays both, so it repeats no finished model turn and no finished tool
//! call. The answer is the text of the first turn that calls no tool.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use spes_core::answer::{AnswerSchema, Verdict, check_answer, repair_prompt};
use spes_core::message::{ChatRequest, Message, StopReason, Usage};
use spes_core::template::Context;
use spes_core::tool::{ToolCall, ToolResult, ToolSpec};
use spes_core::workflow::agent::{AgentStep, AgentTool};
use spes_core::workflow::{Format, HttpStep, Loc, StepKey, SubWorkflow};

use crate::error::FailureKind;
use crate::gate::GateOutcome;
use crate::journal::Effect;
use crate::run::{Exec, StepResult, Stop, fail, join_key, mismatch};

/// Tool results longer than this (in bytes) are cut, with a note, before
/// the model sees them.
pub const MAX_TOOL_RESULT: usize = 256 * 1024;

/// How one of an agent's tools runs.
enum Runner<'a> {
    Http(&'a HttpStep),
    Workflow(&'a SubWorkflow),
    Registered(Arc<dyn crate::tool::Tool>),
}

/// The key of the `k`-th call (from 1) of `tool` in the turn at `turn_key`.
#[must_use]
pub fn call_key(turn_key: &str, tool: &str, k: usize) -> String {
    join_key(turn_key, &format!("call[{tool}#{k}]"))
}

/// `text` cut to [`MAX_TOOL_RESULT`] bytes (at a character boundary), with
/// a note saying so.
fn capped(mut text: String) -> String {
    if text.len() > MAX_TOOL_RESULT {
        let mut end = MAX_TOOL_RESULT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let total = text.len();
        text.truncate(end);
        text.push_str(&format!("\n[cut: {total} bytes in all]"));
    }
    text
}

impl Exec<'_> {
    pub(crate) async fn agent(
        &mut self,
        a: &AgentStep,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<StepResult, Stop> {
        // Keyed by the name the model calls each tool by.
        let mut runners: HashMap<String, Runner<'_>> = HashMap::new();
        let mut specs: Vec<ToolSpec> = Vec::new();
        // Model-facing names of the tools whose calls wait for a human.
        let mut gated: HashSet<String> = HashSet::new();
        for t in &a.tools {
            let (spec, runner) = match t {
                AgentTool::Http { spec, request } => (spec.clone(), Runner::Http(request)),
                AgentTool::Workflow { spec, workflow } => {
                    (spec.clone(), Runner::Workflow(workflow))
                }
                AgentTool::Registered(name) => {
                    let tool = self
                        .engine
                        .find_tool(name)
                        .await
                        .map_err(|why| fail(key, loc, FailureKind::Config(why)))?;
                    (tool.spec().clone(), Runner::Registered(tool))
                }
            };
            if a.approve_tools.iter().any(|n| n == t.name()) {
                gated.insert(spec.name.clone());
            }
            if runners.insert(spec.name.clone(), runner).is_some() {
                return Err(fail(
                    key,
                    loc,
                    FailureKind::Config(format!(
                        "two of the step's tools are called `{}` by the model; rename one",
                        spec.name
                    )),
                ));
            }
            specs.push(spec);
        }
        let user = a
            .llm
            .prompt
            .render(&self.ctx, None)
            .map_err(|e| fail(key, loc, FailureKind::Template(e)))?;
        let mut req = ChatRequest {
            messages: vec![Message::user(user)],
            stop: a.llm.stop.clone(),
            tools: specs,
            tool_choice: a.tool_choice.clone(),
            json_schema: a.llm.schema.as_ref().map(AnswerSchema::shared),
            json: a.llm.format == Format::Json,
            ..ChatRequest::default()
        };
        // The final answer is checked like an llm step's (`format`,
        // `schema`); one that is not what was asked for goes back with its
        // problems, in the next turn.
        let checked = a.llm.format == Format::Json || a.llm.schema.is_some();
        let repairs = a.llm.repair.unwrap_or(self.engine.default_repair);
        let mut repairs_left = repairs;
        let (provider, components) =
            self.prepare(a.llm.agent.as_deref(), Some(&a.llm), &mut req, key, loc)?;
        let mut usage = Usage::default();
        let (mut calls_made, mut tools_run) = (0u64, 0usize);
        for turn in 1..=a.max_turns {
            let turn_key = join_key(key, &format!("turn[{turn}]"));
            let before = self.model_calls;
            let resp = self
                .call(&provider, &req, components.clone(), &turn_key, loc)
                .await?;
            if self.model_calls > before {
                calls_made += 1;
                crate::run::add_usage(&mut usage, &resp.usage);
            }
            if resp.tool_calls.is_empty() {
                let value = if checked {
                    let truncated = resp.stop_reason == StopReason::MaxTokens;
                    match check_answer(
                        a.llm.format,
                        a.llm.schema.as_ref(),
                        a.llm.truncation(),
                        &resp.text,
                        truncated,
                    ) {
                        Verdict::Valid(v) => v,
                        Verdict::Invalid(problems) if repairs_left > 0 && turn < a.max_turns => {
                            repairs_left -= 1;
                            req.messages.push(Message::assistant(resp.text));
                            req.messages
                                .push(Message::user(repair_prompt(&problems, a.llm.format)));
                            continue;
                        }
                        Verdict::Invalid(problems) => {
                            return Err(fail(
                                key,
                                loc,
                                FailureKind::InvalidOutput {
                                    problems,
                                    attempts: repairs - repairs_left + 1,
                                },
                            ));
                        }
                    }
                } else {
                    Value::String(resp.text)
                };
                let note = format!(
                    "{} turn{}, {tools_run} tool call{}{}",
                    turn,
                    if turn == 1 { "" } else { "s" },
                    if tools_run == 1 { "" } else { "s" },
                    if calls_made == 0 {
                        " · replayed from journal".to_owned()
                    } else {
                        format!(" · {}→{} tok", usage.input_tokens, usage.output_tokens)
                    }
                );
                return Ok(StepResult {
                    value: Some(value),
                    note: Some(note),
                    usage: (calls_made > 0).then_some(usage),
                });
            }
            req.messages.push(Message::from_response(&resp));
            let mut results = Vec::with_capacity(resp.tool_calls.len());
            let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
            for call in &resp.tool_calls {
                let k = seen.entry(call.name.as_str()).or_insert(0);
                *k += 1;
                let ckey = call_key(&turn_key, &call.name, *k);
                let gate = gated.contains(&call.name);
                let (content, is_error) = self
                    .tool_call(runners.get(&call.name), call, gate, &ckey, depth, loc)
                    .await?;
                tools_run += 1;
                results.push(ToolResult {
                    call_id: call.id.clone(),
                    content,
                    is_error,
                });
            }
            req.messages.push(Message::tool_results(results));
        }
        Err(fail(
            key,
            loc,
            FailureKind::Answer(format!(
                "the agent used all {} turns without an answer (its last turn still called tools); raise `max_turns`",
                a.max_turns
            )),
        ))
    }

    /// One tool call through the journal, in its trace span: (the result
    /// text, whether it is an error). A tool that fails gives an error
    /// result (the model is told); only a pause, a cancel or the journal
    /// stop the step.
    async fn tool_call(
        &mut self,
        runner: Option<&Runner<'_>>,
        call: &ToolCall,
        gated: bool,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<(String, bool), Stop> {
        let span = crate::telemetry::tool_span(
            &self.engine.tracer,
            &call.name,
            &call.id,
            key,
            &|| call.arguments.to_string(),
            &self.span,
        );
        let outer = std::mem::replace(&mut self.span, span);
        let r = self
            .tool_call_journaled(runner, call, gated, key, depth, loc)
            .await;
        let span = std::mem::replace(&mut self.span, outer);
        match &r {
            Ok((content, is_error)) => crate::telemetry::tool_result(&span, content, *is_error),
            Err(_) => crate::telemetry::done(&span, &r),
        }
        r
    }

    async fn tool_call_journaled(
        &mut self,
        runner: Option<&Runner<'_>>,
        call: &ToolCall,
        gated: bool,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<(String, bool), Stop> {
        match self
            .journal
            .get(key)
            .await
            .map_err(|e| fail(key, loc, FailureKind::Journal(e)))?
        {
            Some(Effect::Tool {
                content, is_error, ..
            }) => {
                self.replayed += 1;
                crate::telemetry::replayed(&self.span);
                self.engine.emit(&crate::Event::ToolCalled {
                    key: key.to_owned(),
                    tool: call.name.clone(),
                    is_error,
                    replayed: true,
                });
                return Ok((content, is_error));
            }
            Some(other) => {
                return Err(mismatch(key, loc, &other, "a tool call"));
            }
            None => {}
        }
        if gated && runner.is_some() {
            let arguments = serde_json::to_string_pretty(&call.arguments)
                .unwrap_or_else(|_| call.arguments.to_string());
            let request = serde_json::json!({
                "text": format!("The agent asks to call the tool `{}` with:\n{arguments}", call.name),
                "tool": call.name,
                "arguments": call.arguments,
                "actions": ["approve", "reject"],
            });
            let gate_key = StepKey::from(key).tag("approval").into_string();
            let outcome = self.gate(&gate_key, "approval", request, None, loc).await?;
            let refusal = match outcome {
                GateOutcome::Decided(d) => {
                    match d.get("action").and_then(Value::as_str).unwrap_or("") {
                        "approve" => None,
                        _ => Some(
                            ["reason", "comments", "suggest"]
                                .iter()
                                .filter_map(|k| d.get(*k).and_then(Value::as_str))
                                .filter(|t| !t.trim().is_empty())
                                .collect::<Vec<_>>()
                                .join("; "),
                        ),
                    }
                }
                GateOutcome::TimeoutSteps => Some(String::new()),
            };
            if let Some(why) = refusal {
                let content = if why.is_empty() {
                    "a human reviewer refused this call".to_owned()
                } else {
                    format!("a human reviewer refused this call: {why}")
                };
                return self.record_tool(call, content, true, key, loc).await;
            }
        }
        self.check_control(key, loc).await?;
        crate::telemetry::made(&self.span);
        let (content, is_error) = match runner {
            None => (format!("there is no tool named `{}`", call.name), true),
            Some(Runner::Registered(t)) => match t.call(call.arguments.clone()).await {
                Ok(text) => (capped(text), false),
                Err(text) => (capped(text), true),
            },
            Some(Runner::Workflow(w)) => self.workflow_tool(w, call, key, depth).await?,
            Some(Runner::Http(h)) => {
                let mut locals = Context::new();
                locals.insert("args".to_owned(), call.arguments.clone());
                match self.send_http(h, key, loc, Some(&locals)).await {
                    Ok((_, _, Value::String(text))) => (capped(text), false),
                    Ok((_, _, value)) => (capped(value.to_string()), false),
                    Err(Stop::Failed(e)) if !matches!(e.kind, FailureKind::Journal(_)) => {
                        (capped(e.kind.to_string()), true)
                    }
                    Err(other) => return Err(other),
                }
            }
        };
        tracing::info!(step = key, tool = %call.name, is_error, "tool call");
        self.record_tool(call, content, is_error, key, loc).await
    }

    /// Runs a workflow tool: the call's arguments are its inputs; its steps
    /// are journaled under the call's key. (the result, is_error).
    async fn workflow_tool(
        &mut self,
        w: &SubWorkflow,
        call: &ToolCall,
        key: &str,
        depth: usize,
    ) -> Result<(String, bool), Stop> {
        let given: std::collections::BTreeMap<String, Value> = match &call.arguments {
            Value::Object(m) => m.clone().into_iter().collect(),
            Value::Null => std::collections::BTreeMap::new(),
            other => {
                return Ok((
                    format!(
                        "the arguments must be an object of the workflow's inputs, not {other}"
                    ),
                    true,
                ));
            }
        };
        let ctx = match crate::run::bind_inputs(&w.workflow, given) {
            Ok(ctx) => ctx,
            Err(why) => return Ok((why, true)),
        };
        let (r, value) = self.run_child(&w.workflow, ctx, key, depth).await;
        match r {
            Ok(_) => Ok(match value {
                Some(Value::String(t)) => (capped(t), false),
                Some(v) => (capped(v.to_string()), false),
                None => (String::new(), false),
            }),
            Err(Stop::Failed(e))
                if !matches!(e.kind, FailureKind::Journal(_) | FailureKind::Store(_)) =>
            {
                Ok((capped(e.to_string()), true))
            }
            Err(other) => Err(other),
        }
    }

    /// Journals a tool call's result and returns it (the first recorded
    /// under `key` wins).
    async fn record_tool(
        &mut self,
        call: &ToolCall,
        content: String,
        is_error: bool,
        key: &str,
        loc: &Loc,
    ) -> Result<(String, bool), Stop> {
        let effect = Effect::Tool {
            name: call.name.clone(),
            arguments: call.arguments.clone(),
            content,
            is_error,
        };
        match self
            .journal
            .record(key, effect)
            .await
            .map_err(|e| e.stop(key, loc))?
        {
            Effect::Tool {
                content, is_error, ..
            } => {
                self.engine.emit(&crate::Event::ToolCalled {
                    key: key.to_owned(),
                    tool: call.name.clone(),
                    is_error,
                    replayed: false,
                });
                Ok((content, is_error))
            }
            other => Err(mismatch(key, loc, &other, "a tool call")),
        }
    }
}
