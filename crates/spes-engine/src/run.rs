//! The interpreter: runs a validated workflow over a run context.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::Value;
use sha2::{Digest, Sha256};
use spes_core::condition::{Condition, Outcome, parse_yes_no};
use spes_core::message::{ChatRequest, ChatResponse, Message, StopReason, Usage};
use spes_core::template::Context;
use spes_core::workflow::{Agent, Format, LlmStep, Loc, Step, StepKind, Workflow};
use spes_llm::{CallContext, Provider};

use crate::Engine;
use crate::error::{EngineError, FailureKind};
use crate::event::Event;
use crate::journal::Effect;

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The final context: inputs plus every step output.
    pub context: Context,
    /// The workflow's result (its `output` key, or the last step's output).
    pub output: Option<Value>,
    /// Model calls made (not answered from the journal).
    pub model_calls: u64,
    /// Model calls answered from the journal.
    pub replayed: u64,
    /// Total token usage of calls made.
    pub usage: Usage,
}

pub(crate) struct Exec<'e> {
    pub(crate) engine: &'e Engine,
    pub(crate) journal: Arc<dyn crate::journal::Journal>,
    pub(crate) ctx: Context,
    pub(crate) model_calls: u64,
    pub(crate) replayed: u64,
    pub(crate) usage: Usage,
}

fn fail(step: &str, loc: &Loc, kind: FailureKind) -> EngineError {
    EngineError {
        step: step.to_owned(),
        loc: loc.clone(),
        kind,
    }
}

fn join_key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

fn add_usage(a: &mut Usage, b: &Usage) {
    a.input_tokens += b.input_tokens;
    a.output_tokens += b.output_tokens;
    a.cache_read_tokens += b.cache_read_tokens;
    a.cache_write_tokens += b.cache_write_tokens;
}

/// Result of one step: its value and a note for progress.
struct StepResult {
    value: Option<Value>,
    note: Option<String>,
    usage: Option<Usage>,
}

impl<'e> Exec<'e> {
    pub(crate) fn new(
        engine: &'e Engine,
        ctx: Context,
        journal: Arc<dyn crate::journal::Journal>,
    ) -> Self {
        Self {
            engine,
            journal,
            ctx,
            model_calls: 0,
            replayed: 0,
            usage: Usage::default(),
        }
    }

    pub(crate) async fn run_workflow(mut self, wf: &Workflow) -> Result<RunOutcome, EngineError> {
        self.steps(&wf.steps, String::new(), 0).await?;
        let output = wf.result_key().and_then(|k| self.ctx.get(k).cloned());
        Ok(RunOutcome {
            context: self.ctx,
            output,
            model_calls: self.model_calls,
            replayed: self.replayed,
            usage: self.usage,
        })
    }

    fn steps<'a>(
        &'a mut self,
        steps: &'a [Step],
        prefix: String,
        depth: usize,
    ) -> BoxFuture<'a, Result<Option<Value>, EngineError>> {
        Box::pin(async move {
            let mut last = None;
            for s in steps {
                last = self.step(s, &prefix, depth).await?;
            }
            Ok(last)
        })
    }

    async fn step(
        &mut self,
        s: &Step,
        prefix: &str,
        depth: usize,
    ) -> Result<Option<Value>, EngineError> {
        let key = join_key(prefix, &s.name);
        let kind = s.kind.name();
        let start = Instant::now();
        self.engine.emit(&Event::StepStarted {
            key: key.clone(),
            kind,
            depth,
        });
        let result = self.step_inner(s, &key, depth).await;
        let elapsed = start.elapsed();
        match result {
            Ok(r) => {
                if let (Some(out), Some(v)) = (&s.output, &r.value) {
                    self.ctx.insert(out.clone(), v.clone());
                }
                self.engine.emit(&Event::StepFinished {
                    key,
                    kind,
                    depth,
                    elapsed,
                    error: None,
                    note: r.note,
                    usage: r.usage,
                });
                Ok(r.value)
            }
            Err(e) => {
                self.engine.emit(&Event::StepFinished {
                    key,
                    kind,
                    depth,
                    elapsed,
                    error: Some(e.kind.to_string()),
                    note: None,
                    usage: None,
                });
                Err(e)
            }
        }
    }

    async fn step_inner(
        &mut self,
        s: &Step,
        key: &str,
        depth: usize,
    ) -> Result<StepResult, EngineError> {
        if let Some(w) = &s.when
            && !self.condition(w, &format!("{key}#when"), &s.loc).await?
        {
            return Ok(StepResult {
                value: None,
                note: Some("skipped".into()),
                usage: None,
            });
        }
        match &s.kind {
            StepKind::Llm(l) => self.llm(l, key, &s.loc).await,
            StepKind::Transform(t) => {
                let input = t
                    .input
                    .eval(&self.ctx, None)
                    .map_err(|e| fail(key, &s.loc, FailureKind::Template(e)))?;
                let v = t.func.apply(input).map_err(|e| {
                    fail(
                        key,
                        &s.loc,
                        FailureKind::Transform(format!("{}: {e}", t.func_name)),
                    )
                })?;
                Ok(StepResult {
                    value: Some(v),
                    note: None,
                    usage: None,
                })
            }
            StepKind::Sequence(children) => {
                let v = self.steps(children, key.to_owned(), depth + 1).await?;
                Ok(StepResult {
                    value: v,
                    note: None,
                    usage: None,
                })
            }
            StepKind::Branch(b) => {
                for (i, arm) in b.arms.iter().enumerate() {
                    if self
                        .condition(&arm.condition, &format!("{key}#if{}", i + 1), &s.loc)
                        .await?
                    {
                        let v = self
                            .steps(&arm.steps, join_key(key, &arm.name), depth + 1)
                            .await?;
                        return Ok(StepResult {
                            value: v,
                            note: Some(format!("took {}", arm.name)),
                            usage: None,
                        });
                    }
                }
                match &b.otherwise {
                    Some(o) => {
                        let v = self.steps(o, join_key(key, "else"), depth + 1).await?;
                        Ok(StepResult {
                            value: v,
                            note: Some("took else".into()),
                            usage: None,
                        })
                    }
                    None => Ok(StepResult {
                        value: None,
                        note: Some("no branch matched".into()),
                        usage: None,
                    }),
                }
            }
        }
    }

    async fn condition(
        &mut self,
        c: &Condition,
        key: &str,
        loc: &Loc,
    ) -> Result<bool, EngineError> {
        match c
            .evaluate(&self.ctx, None)
            .map_err(|e| fail(key, loc, FailureKind::Template(e)))?
        {
            Outcome::Decided(b) => Ok(b),
            Outcome::NeedsModel { question, negate } => {
                let agent = c.ask_agent().cloned();
                let mut req = ChatRequest::user(question);
                req.max_tokens = Some(10);
                req.temperature = Some(0.0);
                let (provider, components) =
                    self.prepare(agent.as_deref(), None, &mut req, key, loc)?;
                let resp = self.call(&provider, req, components, key, loc).await?;
                Ok(parse_yes_no(&resp.text) != negate)
            }
        }
    }

    /// Fills in system text, provider and model from the agent and step; returns the provider.
    fn prepare(
        &self,
        agent: Option<&Agent>,
        step: Option<&LlmStep>,
        req: &mut ChatRequest,
        key: &str,
        loc: &Loc,
    ) -> Result<(Arc<dyn Provider>, Vec<String>), EngineError> {
        let mut system_parts = Vec::new();
        let mut components = Vec::new();
        if let Some(a) = agent {
            let mut vars = serde_json::Map::new();
            for c in &a.components {
                for v in &c.variables {
                    if let Some(val) = self.ctx.get(&v.name) {
                        vars.insert(v.name.clone(), val.clone());
                    }
                }
            }
            for (name, t) in &a.vars {
                let v = t
                    .eval(&self.ctx, None)
                    .map_err(|e| fail(key, loc, FailureKind::Template(e)))?;
                vars.insert(name.clone(), v);
            }
            let vars = Value::Object(vars);
            for c in &a.components {
                let text = c
                    .render(&vars)
                    .map_err(|d| fail(key, loc, FailureKind::Config(d.render_plain())))?;
                system_parts.push(text);
                components.push(c.reference());
            }
        }
        if let Some(s) = step.and_then(|s| s.system.as_ref()) {
            system_parts.push(
                s.render(&self.ctx, None)
                    .map_err(|e| fail(key, loc, FailureKind::Template(e)))?,
            );
        }
        if !system_parts.is_empty() {
            req.system = Some(system_parts.join("\n\n"));
        }
        let provider_name = step
            .and_then(|s| s.provider.as_deref())
            .or_else(|| agent.and_then(|a| a.provider.as_deref()))
            .unwrap_or(&self.engine.default_provider);
        let provider = self
            .engine
            .providers
            .get(provider_name)
            .cloned()
            .ok_or_else(|| {
                fail(
                    key,
                    loc,
                    FailureKind::Config(format!(
                        "provider `{provider_name}` is not configured (configured: {})",
                        self.engine
                            .providers
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                )
            })?;
        req.model = step
            .and_then(|s| s.model.clone())
            .or_else(|| agent.and_then(|a| a.model.clone()))
            .or_else(|| self.engine.default_model.clone());
        if let Some(t) = step
            .and_then(|s| s.temperature)
            .or_else(|| agent.and_then(|a| a.temperature))
        {
            req.temperature = Some(t);
        }
        if let Some(m) = step
            .and_then(|s| s.max_tokens)
            .or_else(|| agent.and_then(|a| a.max_tokens))
        {
            req.max_tokens = Some(m);
        }
        Ok((provider, components))
    }

    async fn call(
        &mut self,
        provider: &Arc<dyn Provider>,
        req: ChatRequest,
        components: Vec<String>,
        key: &str,
        loc: &Loc,
    ) -> Result<ChatResponse, EngineError> {
        let journal = self.journal.clone();
        if let Some(Effect::Model { response, .. }) = journal
            .get(key)
            .await
            .map_err(|e| fail(key, loc, FailureKind::Journal(e)))?
        {
            self.replayed += 1;
            return Ok(response);
        }
        let mut cx = CallContext::for_step(key);
        if self.engine.stream_deltas {
            let engine_obs = self.engine.observer.clone();
            let k = key.to_owned();
            cx.on_delta = Some(Arc::new(move |t: &str| {
                engine_obs.on_event(&Event::Delta {
                    key: k.clone(),
                    text: t.to_owned(),
                });
            }));
        }
        let request_hash = request_hash(&req);
        let response = provider
            .complete(&req, &cx)
            .await
            .map_err(|e| fail(key, loc, FailureKind::Provider(e)))?;
        let effect = Effect::Model {
            provider: provider.name().to_owned(),
            model: req
                .model
                .clone()
                .or_else(|| provider.default_model().map(str::to_owned)),
            request_hash,
            components,
            response,
        };
        journal
            .put(key, &effect)
            .await
            .map_err(|e| fail(key, loc, FailureKind::Journal(e)))?;
        self.model_calls += 1;
        let Effect::Model { response, .. } = effect;
        add_usage(&mut self.usage, &response.usage);
        Ok(response)
    }

    async fn llm(&mut self, l: &LlmStep, key: &str, loc: &Loc) -> Result<StepResult, EngineError> {
        let user = l
            .prompt
            .render(&self.ctx, None)
            .map_err(|e| fail(key, loc, FailureKind::Template(e)))?;
        let mut req = ChatRequest {
            messages: vec![Message::user(user)],
            stop: l.stop.clone(),
            json_schema: l.schema.clone(),
            ..ChatRequest::default()
        };
        let (provider, components) =
            self.prepare(l.agent.as_deref(), Some(l), &mut req, key, loc)?;
        let before = self.model_calls;
        let resp = self.call(&provider, req, components, key, loc).await?;
        let replayed = self.model_calls == before;
        let value = match l.format {
            Format::Text => Value::String(resp.text.clone()),
            Format::Json => {
                if resp.stop_reason == StopReason::MaxTokens {
                    return Err(fail(
                        key,
                        loc,
                        FailureKind::Provider(spes_llm::ProviderError::new(
                            provider.name(),
                            spes_llm::ProviderErrorKind::Truncated,
                            "the JSON answer was cut off by max_tokens",
                        )),
                    ));
                }
                serde_json::from_str(spes_core::transform::strip_code_fence(&resp.text)).map_err(
                    |e| {
                        fail(
                            key,
                            loc,
                            FailureKind::Answer(format!(
                                "the answer is not valid JSON ({e}); it starts: {:?}",
                                resp.text.chars().take(80).collect::<String>()
                            )),
                        )
                    },
                )?
            }
        };
        let note = if replayed {
            "replayed from journal".to_owned()
        } else {
            format!(
                "{}{} · {}→{} tok",
                provider.name(),
                resp.model
                    .as_deref()
                    .map(|m| format!("/{m}"))
                    .unwrap_or_default(),
                resp.usage.input_tokens,
                resp.usage.output_tokens
            )
        };
        Ok(StepResult {
            value: Some(value),
            note: Some(note),
            usage: (!replayed).then_some(resp.usage),
        })
    }
}

/// SHA-256 over the request as sent (stable JSON).
#[must_use]
pub fn request_hash(req: &ChatRequest) -> String {
    let bytes = serde_json::to_vec(req).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// Checks and converts `--input` values against the declared inputs.
pub fn bind_inputs(wf: &Workflow, given: BTreeMap<String, Value>) -> Result<Context, String> {
    use spes_core::workflow::InputType as T;
    let mut ctx = Context::new();
    let declared: Vec<&str> = wf.inputs.iter().map(|i| i.name.as_str()).collect();
    for k in given.keys() {
        if !declared.contains(&k.as_str()) {
            return Err(if declared.is_empty() {
                format!(
                    "unknown input `{k}`: workflow `{}` declares no inputs",
                    wf.name
                )
            } else {
                format!(
                    "unknown input `{k}`; `{}` declares: {}",
                    wf.name,
                    declared.join(", ")
                )
            });
        }
    }
    let mut given = given;
    for i in &wf.inputs {
        let v = match given.remove(&i.name) {
            Some(v) => v,
            None => match &i.default {
                Some(d) => d.clone(),
                None if i.required => {
                    return Err(format!(
                        "missing required input `{}`{}; pass --input {}=...",
                        i.name,
                        i.description
                            .as_ref()
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default(),
                        i.name
                    ));
                }
                None => continue,
            },
        };
        let v = match (i.ty, v) {
            (T::String, Value::String(s)) => Value::String(s),
            (T::String, other) => Value::String(match other {
                Value::String(s) => s,
                o => o.to_string(),
            }),
            (T::Integer, Value::String(s)) => s
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("input `{}` must be an integer, got `{s}`", i.name))?,
            (T::Number, Value::String(s)) => s
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| format!("input `{}` must be a number, got `{s}`", i.name))?,
            (T::Boolean, Value::String(s)) => match s.trim() {
                "true" | "yes" | "1" => Value::Bool(true),
                "false" | "no" | "0" => Value::Bool(false),
                _ => {
                    return Err(format!(
                        "input `{}` must be true or false, got `{s}`",
                        i.name
                    ));
                }
            },
            (T::List | T::Object, Value::String(s)) => {
                let parsed: Value = serde_json::from_str(&s).map_err(|e| {
                    format!("input `{}` must be JSON ({}): {e}", i.name, i.ty.as_str())
                })?;
                let ok = if i.ty == T::List {
                    parsed.is_array()
                } else {
                    parsed.is_object()
                };
                if !ok {
                    return Err(format!(
                        "input `{}` must be a JSON {}",
                        i.name,
                        i.ty.as_str()
                    ));
                }
                parsed
            }
            (_, v) => v,
        };
        ctx.insert(i.name.clone(), v);
    }
    Ok(ctx)
}

/// Total elapsed helper for benchmarks.
#[must_use]
pub fn per_step(total: Duration, steps: u32) -> Duration {
    total / steps.max(1)
}
