//! Error-recovery policies applied around a step: `retry`, `fallback`,
//! `circuit_breaker`, `degrade` and `timeout` (reference §6).
//!
//! The decisions are pure functions in [`spes_core::policy`]; this module
//! applies them, durably. Composition, outermost first:
//!
//! ```text
//! fallback ─▶ degrade ─▶ retry ─▶ circuit breaker ─▶ timeout ─▶ the step
//! ```
//!
//! **Keys.** Each alternative and attempt has its own stable key, so its
//! model calls are journaled apart: the step itself is `KEY` (attempt 1)
//! and `KEY#attempt2`, `KEY#attempt3`...; degrade level *i* is
//! `KEY#degrade{i}` (and `KEY#degrade{i}#attempt2`...); fallback *j* is
//! `KEY#fallback{j}`. When the step succeeds, which alternative and attempt
//! served is committed under `KEY#served` (a decision entry) before the
//! workflow sees the result; a resumed run jumps straight to that slot, whose
//! effects answer from the journal: no committed attempt is repeated, no
//! backoff is slept again, and the result is the same. A run that stopped
//! inside the policy (a crash, or every alternative failing) resumes from the
//! first slot: slots whose calls were committed (an answer that failed
//! `validate`) replay, failed ones are tried again, with a fresh retry budget.
//!
//! **Default retry.** An `llm` step that sets no `retry:` still retries
//! transient provider errors (429, 5xx, 529, broken streams, timeouts,
//! connect errors, malformed answers), as the official SDKs do: with the
//! schedule [`RetryDefaults`] gives for its provider (a provider's `retry`
//! in `spes.toml`, else `[defaults] retry`, else, for HTTP providers
//! (`anthropic`, `openai`), 3 attempts with exponential backoff from 1s,
//! jitter, and `retry-after` honoured up to 30s). `retry: none` on the step
//! (or `retry = "none"` in spes.toml) turns it off. Attempts are keyed and
//! journaled exactly as under an explicit `retry:`; only `KEY#served` is
//! left out when attempt 1 served (its answer, under `KEY`, replays by
//! itself), so a step that succeeds at once journals what it did before.
//!
//! **Served by.** A step with `fallback` or `degrade` and an `output` also
//! writes `<output>_served_by`: `{ by: "step" | "degrade2" | "fallback1",
//! label, attempt, degraded }` (`degraded`: anything but the first choice
//! served). The progress note says the same.
//!
//! **Breakers** are shared by every run of the [`Engine`] (keyed by name,
//! behind a lock), with time from the engine's clock. A call refused by an
//! open breaker fails at once with a transient [`FailureKind::CircuitOpen`]
//! whose `retry-after` is the cool-down left, so `retry` waits it out when
//! it fits in `max`, and gives up (to the fallbacks) when it does not.
//! Replayed calls never touch a breaker.
//!
//! # Rust API
//!
//! Policies are plain values ([`Policies`] with `with_*` setters) set on a
//! [`Step`]; a workflow built in Rust runs like one read from YAML:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use spes_core::policy::{Alternative, Policies, RetryPolicy, RetrySchedule};
//! use spes_core::template::Template;
//! use spes_core::workflow::{Format, LlmStep, Loc, Step, StepKind, Workflow};
//! use spes_engine::Engine;
//! use spes_llm::scripted::ScriptedProvider;
//!
//! let summarize = Step {
//!     name: "summarize".into(),
//!     output: Some("summary".into()),
//!     when: None,
//!     kind: StepKind::Llm(Box::new(LlmStep {
//!         prompt: Template::parse("Summarize: {{ text }}").unwrap(),
//!         agent: None, system: None, provider: None, model: None,
//!         temperature: None, max_tokens: None, stop: vec![],
//!         format: Format::Text, schema: None, repair: None, on_truncation: None,
//!     })),
//!     loc: Loc::default(),
//!     policies: Policies::default()
//!         .with_retry(RetryPolicy::new(
//!             RetrySchedule::default().with_attempts(2).with_base(Duration::from_millis(1)),
//!         ))
//!         .with_fallback(Alternative::provider("backup")),
//! };
//! let wf = Workflow {
//!     name: "resilient".into(), description: None, file: "in-rust".into(),
//!     inputs: vec![spes_core::workflow::Input {
//!         name: "text".into(), ty: spes_core::workflow::InputType::String,
//!         required: true, default: None, description: None,
//!     }],
//!     agents: Default::default(), steps: vec![summarize], output: None, components: vec![], children: vec![], schemas: vec![], budget: None,
//! };
//! // The main provider is down twice; the backup answers.
//! let main = "- { step: summarize, error: server_error }";
//! let backup = "- { step: 'summarize#fallback1', reply: 'short' }";
//! let engine = Engine::builder()
//!     .provider(Arc::new(ScriptedProvider::parse("main", "a.yaml", main).unwrap()))
//!     .provider(Arc::new(ScriptedProvider::parse("backup", "b.yaml", backup).unwrap()))
//!     .build();
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! let inputs = [("text".to_owned(), "a long text".into())].into_iter().collect();
//! let out = rt.block_on(engine.run(&wf, inputs)).unwrap();
//! assert_eq!(out.output, Some("short".into()));
//! assert_eq!(out.context["summary_served_by"]["by"], "fallback1");
//! ```

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use spes_core::config::{ConfigSpec, RetryConfig};
use spes_core::policy::{
    Admission, Alternative, Breaker, BreakerPolicy, BreakerState, Failure, GiveUp, NextRetry,
    Policies, RetrySchedule, next_retry,
};
use spes_core::workflow::{Step, StepKey, StepKind};
use spes_llm::ErrorClass;

use crate::Engine;
use crate::error::{EngineError, FailureKind};
use crate::journal::Effect;
use crate::run::{Exec, StepResult, Stop, fail};

/// Circuit breakers shared by every run of an engine, keyed by name; and,
/// once [`Breakers::share`]d through a store with a work queue, by every
/// worker on that store (each transition a compare-and-set there).
#[derive(Debug, Clone, Default)]
pub struct Breakers {
    local: Arc<Mutex<HashMap<String, Breaker>>>,
    shared: Arc<std::sync::OnceLock<Arc<dyn spes_store::RunStore>>>,
    metrics: Option<crate::metrics::Metrics>,
}

/// A breaker's state as the shared store keeps it.
fn encode(s: BreakerState) -> serde_json::Value {
    match s {
        BreakerState::Closed { failures } => serde_json::json!({ "closed": failures }),
        BreakerState::Open { until_ms } => serde_json::json!({ "open_until_ms": until_ms }),
        BreakerState::HalfOpen { since_ms } => serde_json::json!({ "probe_since_ms": since_ms }),
    }
}

fn decode(v: &serde_json::Value) -> Breaker {
    let n = |k: &str| v.get(k).and_then(serde_json::Value::as_i64);
    let state = if let Some(until_ms) = n("open_until_ms") {
        BreakerState::Open { until_ms }
    } else if let Some(since_ms) = n("probe_since_ms") {
        BreakerState::HalfOpen { since_ms }
    } else {
        BreakerState::Closed {
            failures: n("closed").and_then(|f| u32::try_from(f).ok()).unwrap_or(0),
        }
    };
    Breaker::from(state)
}

impl Breakers {
    /// Breakers whose state changes are shown in `metrics`
    /// (`spes_breaker_state`).
    pub(crate) fn observed(metrics: crate::metrics::Metrics) -> Self {
        Self {
            metrics: Some(metrics),
            ..Self::default()
        }
    }

    /// Shows breaker `name`'s state in the metrics.
    fn show(&self, name: &str) {
        if let (Some(m), Some(s)) = (&self.metrics, self.state(name)) {
            m.breaker(name, s);
        }
    }

    fn with<R>(&self, name: &str, f: impl FnOnce(&mut Breaker) -> R) -> Option<R> {
        let mut map = self.local.lock().ok()?;
        Some(f(map.entry(name.to_owned()).or_default()))
    }

    /// From now on, keep the breakers in `store` (one with a work queue), so
    /// that every worker on it sees the same state: ten workers do not
    /// hammer a provider that is down ten times over. Without a queue, or
    /// when already shared, nothing changes.
    pub fn share(&self, store: Arc<dyn spes_store::RunStore>) {
        if store.queue().is_some() {
            let _ = self.shared.set(store);
        }
    }

    /// Applies a transition: on the shared state (read, decide, compare and
    /// set; again when another worker came first), else in this process.
    /// A store that fails falls back to this process's breaker.
    pub(crate) async fn update<R>(&self, name: &str, f: impl Fn(&mut Breaker) -> R) -> Option<R> {
        let q = self.shared.get().and_then(|s| s.queue());
        if let Some(q) = q {
            let key = format!("breaker:{name}");
            for _ in 0..20 {
                let Ok(current) = q.shared_state(&key).await else {
                    break;
                };
                let mut b = current.as_ref().map(|(v, _)| decode(v)).unwrap_or_default();
                let before = b.state();
                let r = f(&mut b);
                let after = b.state();
                let written = before == after
                    || q.put_shared_state(&key, &encode(after), current.map(|(_, v)| v))
                        .await
                        .unwrap_or(false);
                if written {
                    log_transition(name, before, after);
                    if let Ok(mut map) = self.local.lock() {
                        map.insert(name.to_owned(), b);
                    }
                    self.show(name);
                    return Some(r);
                }
            }
        }
        let r = self.with(name, |b| {
            let before = b.state();
            let r = f(b);
            log_transition(name, before, b.state());
            r
        });
        self.show(name);
        r
    }

    /// On a shared store: waits while `provider` has asked any worker to
    /// back off (a 429 with `retry-after`), at most a minute.
    pub(crate) async fn rate_limit_wait(&self, provider: &str, now_ms: i64) {
        let Some(q) = self.shared.get().and_then(|s| s.queue()) else {
            return;
        };
        if let Ok(Some((v, _))) = q.shared_state(&format!("ratelimit:{provider}")).await
            && let Some(until) = v.get("until_ms").and_then(serde_json::Value::as_i64)
            && until > now_ms
        {
            let ms = u64::try_from((until - now_ms).min(60_000)).unwrap_or(0);
            tracing::info!(
                target: "spes::provider",
                provider,
                wait_ms = ms,
                "waiting: a worker was asked to back off (retry-after)"
            );
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
    }

    /// On a shared store: tells every worker that `provider` asked for no
    /// calls before `until_ms` (kept if a later time is already there).
    pub(crate) async fn rate_limited(&self, provider: &str, until_ms: i64) {
        let Some(q) = self.shared.get().and_then(|s| s.queue()) else {
            return;
        };
        let key = format!("ratelimit:{provider}");
        for _ in 0..5 {
            let Ok(current) = q.shared_state(&key).await else {
                return;
            };
            let known = current
                .as_ref()
                .and_then(|(v, _)| v.get("until_ms").and_then(serde_json::Value::as_i64));
            if known.is_some_and(|k| k >= until_ms) {
                return;
            }
            let v = serde_json::json!({ "until_ms": until_ms });
            if q.put_shared_state(&key, &v, current.map(|(_, ver)| ver))
                .await
                .unwrap_or(true)
            {
                return;
            }
        }
    }

    /// The state of breaker `name`, if it was ever used (here; a shared
    /// breaker as this process last saw it).
    #[must_use]
    pub fn state(&self, name: &str) -> Option<BreakerState> {
        self.local.lock().ok()?.get(name).map(Breaker::state)
    }
}

impl Engine {
    /// The circuit breakers this engine shares between its runs.
    #[must_use]
    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }
}

/// The retry of `llm` steps that set no `retry:` (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct RetryDefaults {
    /// `[defaults] retry`: `Some(None)` is `"none"`.
    pub defaults: Option<Option<RetrySchedule>>,
    /// `[providers.NAME] retry`, by provider name: `None` is `"none"`.
    pub providers: BTreeMap<String, Option<RetrySchedule>>,
}

impl RetryDefaults {
    /// The settings of a `spes.toml` (already validated by `parse_config`;
    /// a setting that does not parse is left out).
    #[must_use]
    pub fn from_config(c: &ConfigSpec) -> Self {
        let parse = |r: &RetryConfig| r.schedule().ok();
        Self {
            defaults: c.defaults.retry.as_ref().and_then(parse),
            providers: c
                .providers
                .iter()
                .filter_map(|(name, p)| Some((name.clone(), parse(p.retry.as_ref()?)?)))
                .collect(),
        }
    }

    /// The schedule for calls to provider `name` of `kind` (`None`: no retry).
    #[must_use]
    pub fn for_provider(&self, name: &str, kind: Option<&str>) -> Option<RetrySchedule> {
        let s = match (self.providers.get(name).copied(), self.defaults) {
            (Some(s), _) | (None, Some(s)) => s,
            (None, None) => {
                matches!(kind, Some("anthropic" | "openai")).then(RetrySchedule::default)
            }
        };
        s.filter(|s| s.attempts > 1)
    }
}

impl Engine {
    /// The default retry of `s`: an llm step without `retry:`, on a
    /// provider whose default retries.
    pub(crate) fn default_retry(&self, s: &Step) -> Option<RetrySchedule> {
        let StepKind::Llm(l) = &s.kind else {
            return None;
        };
        if s.policies.retry.is_some() {
            return None;
        }
        let name = l
            .provider
            .clone()
            .or_else(|| l.agent.as_ref().and_then(|a| a.provider.clone()))
            .unwrap_or_else(|| self.default_provider.clone());
        let kind = self.providers.get(&name).map(|p| p.kind());
        self.retry_defaults.for_provider(&name, kind)
    }
}

/// What one slot runs.
enum Slot<'s> {
    /// The step as written.
    Own,
    /// The llm step with another provider/model.
    Provider {
        provider: Option<&'s str>,
        model: Option<&'s str>,
    },
    /// Another step.
    Step(&'s Step),
}

/// One alternative of the step: the step itself, a degrade level, or a fallback.
struct Alt<'s> {
    /// The policy field and position (`degrade`, 2); `None` for the step itself.
    slot_of: Option<(&'static str, usize)>,
    /// `step`, `degrade2`, `fallback1`.
    by: String,
    label: String,
    slot: Slot<'s>,
}

impl Alt<'_> {
    /// The key of this alternative of the step keyed `key`: `KEY`,
    /// `KEY#degrade2`, `KEY#fallback1`.
    fn key(&self, key: &str) -> String {
        match self.slot_of {
            None => key.to_owned(),
            Some((field, n)) => StepKey::from(key).slot(field, n).into_string(),
        }
    }
}

fn alternatives<'s>(s: &'s Step, p: &'s Policies) -> Vec<Alt<'s>> {
    let mut out = Vec::new();
    let slot = |a: &'s Alternative| match a {
        Alternative::Provider {
            provider, model, ..
        } => Slot::Provider {
            provider: provider.as_deref(),
            model: model.as_deref(),
        },
        Alternative::Step(st) => Slot::Step(st),
    };
    if p.degrade.is_empty() {
        out.push(Alt {
            slot_of: None,
            by: "step".into(),
            label: s.kind.name().to_owned(),
            slot: Slot::Own,
        });
    }
    for (field, list) in [("degrade", &p.degrade), ("fallback", &p.fallback)] {
        for (i, a) in list.iter().enumerate() {
            let by = format!("{field}{}", i + 1);
            out.push(Alt {
                slot_of: Some((field, i + 1)),
                by,
                label: a.label(),
                slot: slot(a),
            });
        }
    }
    out
}

/// The step key a provider sees for a journal key: retries of one call
/// look the same to the provider (`summary#attempt3` → `summary`), as they
/// would to a real API; degrade levels and fallbacks keep their suffix.
/// Repairs of an answer (`#repairN`) look like retries too.
pub(crate) fn provider_key(key: &str) -> &str {
    StepKey::call_key(key)
}

fn attempt_key(base: &str, attempt: u32) -> String {
    StepKey::from(base).attempt(attempt).into_string()
}

/// A number in `[0, 1)` for jitter. Delays never change results, so this
/// need not be replayable; it differs between processes and calls.
fn jitter_draw(key: &str, attempt: u32) -> f64 {
    let h = std::collections::hash_map::RandomState::new().hash_one((key, attempt));
    #[allow(clippy::cast_precision_loss)]
    let u = (h >> 11) as f64 / (1u64 << 53) as f64;
    u
}

/// One log event when a breaker changes state (closed, open, half-open).
fn log_transition(name: &str, before: BreakerState, after: BreakerState) {
    let word = |s: BreakerState| match s {
        BreakerState::Closed { .. } => "closed",
        BreakerState::Open { .. } => "open",
        BreakerState::HalfOpen { .. } => "half_open",
    };
    if word(before) != word(after) {
        tracing::warn!(
            target: "spes::breaker",
            breaker = name,
            from = word(before),
            to = word(after),
            "circuit breaker changed state"
        );
    }
}

fn failure_of(e: &EngineError) -> Failure {
    match e.class() {
        ErrorClass::Terminal => Failure::Terminal,
        ErrorClass::Transient => Failure::Transient {
            retry_after: match &e.kind {
                FailureKind::Provider(p) => p.retry_after,
                FailureKind::CircuitOpen { retry_after, .. } => Some(*retry_after),
                _ => None,
            },
        },
    }
}

/// How one attempt ended.
enum Attempt {
    Served(StepResult),
    Failed(EngineError, Failure),
}

impl Exec<'_> {
    /// Runs `s` (its `when` already decided) under its policies.
    pub(crate) async fn with_policies(
        &mut self,
        s: &Step,
        key: &str,
        depth: usize,
    ) -> Result<StepResult, Stop> {
        let p = &s.policies;
        let alts = alternatives(s, p);
        let default_retry = self.engine.default_retry(s);
        let schedule = p.retry.as_ref().map_or_else(
            || default_retry.unwrap_or_else(|| RetrySchedule::default().with_attempts(1)),
            |r| r.schedule,
        );
        let served_key = StepKey::from(key).tag("served");
        let record_served = alts.len() > 1 || schedule.attempts > 1;
        // Only the default retry in play: attempt 1's answer replays by
        // itself, so `#served` is written only when a retry served.
        let lazy_served = p.retry.is_none() && alts.len() == 1;
        let served = if record_served {
            self.recorded_slot(&served_key, s, key).await?
        } else {
            None
        };
        let prefix = key
            .strip_suffix(s.name.as_str())
            .map_or("", |p| p.trim_end_matches('/'))
            .to_owned();
        let mut last: Option<EngineError> = None;
        for (idx, alt) in alts.iter().enumerate() {
            if served.is_some_and(|(i, _)| i != idx) {
                continue;
            }
            let base = alt.key(key);
            let (outcome, attempt) = if let Slot::Step(st) = alt.slot {
                // Keyed `KEY#fallback2` whatever the alternative is called
                // (validation names it so; a step built in Rust may not be).
                let named;
                let own = alt.key(&s.name);
                let st = if st.name == own {
                    st
                } else {
                    named = Step {
                        name: own,
                        ..st.clone()
                    };
                    &named
                };
                match self.step(st, &prefix, depth + 1).await {
                    Ok(v) => (
                        Ok(StepResult {
                            value: v,
                            note: None,
                            usage: None,
                        }),
                        1,
                    ),
                    Err(Stop::Failed(e)) => (Err(e), 1),
                    Err(other) => return Err(other),
                }
            } else {
                let first = served.map_or(1, |(_, a)| a);
                self.attempts(s, &alt.slot, &base, first, &schedule, depth)
                    .await?
            };
            match outcome {
                Ok(mut r) => {
                    if record_served && served.is_none() && !(lazy_served && attempt == 1) {
                        let decision =
                            json!({ "alternative": idx, "attempt": attempt, "by": alt.by });
                        self.journal
                            .record(&served_key, Effect::Decision { decision })
                            .await
                            .map_err(|e| e.stop(key, &s.loc))?;
                    }
                    let degraded = idx > 0;
                    if let Some(out) = &s.output
                        && (!p.fallback.is_empty() || !p.degrade.is_empty())
                    {
                        self.write(
                            &format!("{out}_served_by"),
                            json!({ "by": alt.by, "label": alt.label, "attempt": attempt, "degraded": degraded }),
                        );
                    }
                    let mut parts = Vec::new();
                    if degraded {
                        parts.push(format!("served by {} ({})", alt.by, alt.label));
                    }
                    if attempt > 1 {
                        parts.push(format!("attempt {attempt}"));
                    }
                    if let Some(n) = r.note.take() {
                        parts.push(n);
                    }
                    r.note = (!parts.is_empty()).then(|| parts.join(" · "));
                    return Ok(r);
                }
                Err(e) => {
                    tracing::info!(step = key, by = %alt.by, error = %e, "alternative gave up");
                    if let Some(next) = alts.get(idx + 1) {
                        self.engine.emit(&crate::Event::FallingBack {
                            key: key.to_owned(),
                            from: format!("{} ({})", alt.by, alt.label),
                            to: format!("{} ({})", next.by, next.label),
                            error: e.kind.to_string(),
                        });
                    }
                    last = Some(e);
                }
            }
        }
        Err(Stop::Failed(last.unwrap_or_else(|| EngineError {
            step: key.to_owned(),
            loc: s.loc.clone(),
            kind: FailureKind::Journal(crate::journal::JournalError::Mismatch(format!(
                "`{served_key}` names an alternative this step does not have"
            ))),
        })))
    }

    /// The slot recorded under `KEY#served`, if any.
    async fn recorded_slot(
        &self,
        served_key: &str,
        s: &Step,
        key: &str,
    ) -> Result<Option<(usize, u32)>, Stop> {
        let got = self
            .journal
            .peek(served_key)
            .await
            .map_err(|e| fail(key, &s.loc, FailureKind::Journal(e)))?;
        Ok(match got {
            Some(Effect::Decision { decision }) => {
                let idx = decision["alternative"]
                    .as_u64()
                    .and_then(|v| usize::try_from(v).ok());
                let att = decision["attempt"]
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok());
                idx.zip(att)
            }
            _ => None,
        })
    }

    /// Retry loop over one alternative; returns the outcome and the attempt that served.
    async fn attempts(
        &mut self,
        s: &Step,
        slot: &Slot<'_>,
        base: &str,
        first: u32,
        schedule: &RetrySchedule,
        depth: usize,
    ) -> Result<(Result<StepResult, EngineError>, u32), Stop> {
        let mut attempt = first;
        loop {
            let akey = attempt_key(base, attempt);
            let (err, failure) = match self.attempt(s, slot, &akey, depth).await? {
                Attempt::Served(r) => return Ok((Ok(r), attempt)),
                Attempt::Failed(e, f) => (e, f),
            };
            match next_retry(schedule, attempt, failure, jitter_draw(&akey, attempt)) {
                NextRetry::RetryAfter(delay) => {
                    attempt += 1;
                    // A committed next attempt answers at once: no waiting on replay.
                    let next = attempt_key(base, attempt);
                    let recorded = self.journal.get(&next).await.ok().flatten().is_some();
                    if !recorded {
                        tracing::info!(step = base, attempt, ?delay, error = %err, "retrying");
                        self.engine.emit(&crate::Event::Retrying {
                            key: base.to_owned(),
                            attempt,
                            delay,
                            error: err.kind.to_string(),
                        });
                        tokio::time::sleep(delay).await;
                    }
                }
                NextRetry::GiveUp(why) => {
                    tracing::info!(step = base, %why, "retry gave up");
                    let mut err = err;
                    let retried =
                        schedule.attempts > 1 || matches!(why, GiveUp::RetryAfterTooLong { .. });
                    if let FailureKind::Provider(pe) = &mut err.kind
                        && retried
                        && why != GiveUp::Terminal
                    {
                        pe.gave_up = Some(why);
                    }
                    return Ok((Err(err), attempt));
                }
            }
        }
    }

    /// One attempt: breaker, timeout, the work, then `validate`.
    async fn attempt(
        &mut self,
        s: &Step,
        slot: &Slot<'_>,
        akey: &str,
        depth: usize,
    ) -> Result<Attempt, Stop> {
        let p = &s.policies;
        // A recorded call is no call: it never asks or feeds the breaker.
        let replay = matches!(s.kind, StepKind::Llm(_))
            && self.journal.get(akey).await.ok().flatten().is_some();
        let breaker = match (&p.circuit_breaker, replay) {
            (Some(b), false) => Some((self.breaker_name(s, slot, b), b.config)),
            _ => None,
        };
        let mut admission = Admission::Call;
        if let Some((name, cfg)) = &breaker {
            let now = (self.engine.clock)();
            admission = self
                .engine
                .breakers
                .update(name, |b| b.allow(cfg, now))
                .await
                .unwrap_or(Admission::Call);
            if let Admission::Refused { retry_after } = admission {
                let e = EngineError {
                    step: akey.to_owned(),
                    loc: s.loc.clone(),
                    kind: FailureKind::CircuitOpen {
                        name: name.clone(),
                        retry_after,
                    },
                };
                let f = failure_of(&e);
                return Ok(Attempt::Failed(e, f));
            }
        }
        let result = match p.timeout {
            Some(d) => {
                // A body cut short leaves its inner span as the current one.
                let span = self.span.clone();
                let r = match tokio::time::timeout(d, self.slot_body(s, slot, akey, depth)).await {
                    Ok(r) => r,
                    Err(_) => Err(fail(akey, &s.loc, FailureKind::Timeout(d))),
                };
                self.span = span;
                r
            }
            None => self.slot_body(s, slot, akey, depth).await,
        };
        if let Some((name, cfg)) = &breaker {
            let now = (self.engine.clock)();
            let transient =
                matches!(&result, Err(Stop::Failed(e)) if e.class() == ErrorClass::Transient);
            match &result {
                // The provider answered (perhaps that the request was bad): it is up.
                Ok(_) | Err(Stop::Failed(_)) if !transient => {
                    self.engine
                        .breakers
                        .update(name, |b| b.on_success(admission))
                        .await;
                }
                Err(Stop::Failed(_)) => {
                    self.engine
                        .breakers
                        .update(name, |b| b.on_failure(cfg, admission, now))
                        .await;
                }
                // Suspended, paused, cancelled: no verdict (a lost probe is replaced later).
                _ => {}
            }
        }
        let r = match result {
            Ok(r) => r,
            Err(Stop::Failed(e)) => {
                let f = failure_of(&e);
                return Ok(Attempt::Failed(e, f));
            }
            Err(other) => return Err(other),
        };
        if let Some(v) = p.retry.as_ref().and_then(|r| r.validate.as_ref()) {
            let output = r.value.clone().unwrap_or(Value::Null);
            let saved = self.ctx.insert("output".into(), output);
            let ok = self
                .condition(v, &StepKey::from(akey).tag("validate"), &s.loc)
                .await;
            match saved {
                Some(old) => self.ctx.insert("output".into(), old),
                None => self.ctx.remove("output"),
            };
            if !ok? {
                let e = EngineError {
                    step: akey.to_owned(),
                    loc: s.loc.clone(),
                    kind: FailureKind::Answer(
                        "the answer did not pass the retry `validate` condition".into(),
                    ),
                };
                return Ok(Attempt::Failed(e, Failure::Invalid));
            }
        }
        Ok(Attempt::Served(r))
    }

    fn slot_body<'a>(
        &'a mut self,
        s: &'a Step,
        slot: &'a Slot<'_>,
        akey: &'a str,
        depth: usize,
    ) -> futures::future::BoxFuture<'a, Result<StepResult, Stop>> {
        Box::pin(async move {
            match (slot, &s.kind) {
                (Slot::Provider { provider, model }, StepKind::Llm(l)) => {
                    let mut l = (**l).clone();
                    if let Some(p) = provider {
                        l.provider = Some((*p).to_owned());
                    }
                    if let Some(m) = model {
                        l.model = Some((*m).to_owned());
                    }
                    self.llm(&l, akey, &s.loc).await
                }
                _ => self.step_body(s, akey, depth).await,
            }
        })
    }

    /// The breaker an attempt uses: its provider's, unless the step names one
    /// for its own provider.
    fn breaker_name(&self, s: &Step, slot: &Slot<'_>, b: &BreakerPolicy) -> String {
        if let Slot::Provider {
            provider: Some(p), ..
        } = slot
        {
            return (*p).to_owned();
        }
        if let Some(n) = &b.name {
            return n.clone();
        }
        match &s.kind {
            StepKind::Llm(l) => l
                .provider
                .clone()
                .or_else(|| l.agent.as_ref().and_then(|a| a.provider.clone()))
                .unwrap_or_else(|| self.engine.default_provider.clone()),
            _ => self.engine.default_provider.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_breaker_states_round_trip() {
        for state in [
            BreakerState::Closed { failures: 3 },
            BreakerState::Open { until_ms: 5 },
            BreakerState::HalfOpen { since_ms: 7 },
        ] {
            assert_eq!(decode(&encode(state)).state(), state);
        }
        assert_eq!(
            decode(&serde_json::json!({})).state(),
            BreakerState::Closed { failures: 0 }
        );
    }

    #[test]
    fn providers_see_retries_under_the_step_key() {
        assert_eq!(provider_key("a/summary#attempt3"), "a/summary");
        assert_eq!(
            provider_key("summary#degrade2#attempt2"),
            "summary#degrade2"
        );
        assert_eq!(provider_key("summary#fallback1"), "summary#fallback1");
        assert_eq!(provider_key("s#attempt2/one"), "s#attempt2/one");
        assert_eq!(provider_key("x#attempt"), "x#attempt");
    }

    #[test]
    fn attempt_one_keeps_the_step_key() {
        assert_eq!(attempt_key("x", 1), "x");
        assert_eq!(attempt_key("x#degrade2", 3), "x#degrade2#attempt3");
    }

    #[test]
    fn jitter_draws_are_in_the_unit_interval() {
        for n in 0..100 {
            let u = jitter_draw("k", n);
            assert!((0.0..1.0).contains(&u), "{u}");
        }
    }
}
