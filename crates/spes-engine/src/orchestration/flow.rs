//! `fan_out` (different workers on one input, then an aggregate) and
//! `pipeline` (stages, each fed the previous output, timed).

use std::fmt::Write as _;
use std::time::Instant;

use futures::StreamExt as _;
use serde_json::{Value, json};
use spes_core::workflow::{FanOutStep, Loc, OnError, ParallelBranches, PipelineStep, StepKey};

use super::fail;
use crate::error::FailureKind;
use crate::run::{Exec, StepResult, Stop};

impl Exec<'_> {
    pub(crate) async fn fan_out(
        &mut self,
        f: &FanOutStep,
        output: Option<&str>,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<StepResult, Stop> {
        // Same semantics as `parallel` with steps: every worker runs to its
        // end (finished work is committed), results by worker name in
        // declared order; with `fail_fast` a failure fails the step after
        // all finished; with `skip`/`collect` it is part of the result,
        // journaled (`KEY/WORKER#error`) so a replay asks nothing again.
        let results = if f.on_error == OnError::FailFast {
            let branches = ParallelBranches::Steps(f.workers.clone());
            self.parallel_branches(&branches, f.concurrency, key, depth, loc)
                .await?
        } else {
            self.fan_out_tolerant(f, output, key, depth, loc).await?
        };
        let Some(agg) = &f.aggregate else {
            return Ok(StepResult::value(Some(results)));
        };
        let mut child = self.fork();
        child.ctx.insert("results".into(), results);
        let v = child.step(agg, key, depth + 1).await;
        self.absorb(child);
        Ok(StepResult {
            value: v?,
            note: Some(format!("{} workers aggregated", f.workers.len())),
            usage: None,
        })
    }

    /// The workers of a `skip`/`collect` fan_out: failures are recorded, not raised.
    async fn fan_out_tolerant(
        &mut self,
        f: &FanOutStep,
        output: Option<&str>,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<Value, Stop> {
        type Ran<'e> = (Exec<'e>, Result<Option<Value>, Stop>);
        let mut recorded: Vec<Option<String>> = Vec::with_capacity(f.workers.len());
        for w in &f.workers {
            let d = self
                .decision_at(&StepKey::from(key).child(&w.name).tag("error"), loc)
                .await?;
            recorded.push(d.map(|d| {
                d.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("failed")
                    .to_owned()
            }));
        }
        let mut futs: Vec<futures::future::BoxFuture<'_, Option<Ran<'_>>>> = Vec::new();
        for (w, rec) in f.workers.iter().zip(&recorded) {
            if rec.is_some() {
                futs.push(Box::pin(async { None }));
                continue;
            }
            let mut child = self.fork();
            let prefix = key.to_owned();
            futs.push(Box::pin(async move {
                let r = child.step(w, &prefix, depth + 1).await;
                Some((child, r))
            }));
        }
        let n = futs.len();
        let done: Vec<Option<Ran<'_>>> = futures::stream::iter(futs)
            .buffered(f.concurrency.unwrap_or(n).max(1))
            .collect()
            .await;
        let mut results = serde_json::Map::new();
        let mut errors = Vec::new();
        let mut stops = Vec::new();
        for ((w, rec), ran) in f.workers.iter().zip(recorded).zip(done) {
            let failed = match (rec, ran) {
                (Some(msg), _) => Some(msg),
                (None, Some((child, r))) => {
                    self.absorb(child);
                    match r {
                        Ok(v) => {
                            results.insert(w.name.clone(), v.unwrap_or(Value::Null));
                            None
                        }
                        Err(Stop::Failed(e)) => {
                            let msg = e.kind.to_string();
                            let d = self
                                .record_decision(
                                    &StepKey::from(key).child(&w.name).tag("error"),
                                    json!({ "error": msg }),
                                    loc,
                                )
                                .await?;
                            Some(
                                d.get("error")
                                    .and_then(Value::as_str)
                                    .unwrap_or("failed")
                                    .to_owned(),
                            )
                        }
                        Err(other) => {
                            stops.push(other);
                            None
                        }
                    }
                }
                (None, None) => None,
            };
            if let Some(msg) = failed {
                if f.on_error == OnError::Collect {
                    results.insert(w.name.clone(), json!({ "error": msg }));
                }
                errors.push(json!({ "worker": w.name, "error": msg }));
            }
        }
        if let Some(s) = Stop::merge(stops) {
            return Err(s);
        }
        if let Some(out) = output {
            self.write(&format!("{out}_errors"), Value::Array(errors));
        }
        Ok(Value::Object(results))
    }

    pub(crate) async fn pipeline(
        &mut self,
        p: &PipelineStep,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<StepResult, Stop> {
        let mut input = match &p.input {
            Some(t) => Some(
                t.eval(&self.ctx, None)
                    .map_err(|e| fail(key, loc, FailureKind::Template(e)))?,
            ),
            None => None,
        };
        let mut timings = Vec::with_capacity(p.stages.len());
        for stage in &p.stages {
            let mut child = self.fork();
            if let Some(v) = input.take() {
                child.ctx.insert("input".into(), v);
            }
            let start = Instant::now();
            let r = child.step(stage, key, depth + 1).await;
            let elapsed = start.elapsed();
            let replayed = child.model_calls == 0 && child.replayed > 0;
            self.absorb(child);
            input = Some(r?.unwrap_or(Value::Null));
            timings.push(json!({
                "stage": stage.name,
                "elapsed_ms": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                "replayed": replayed,
            }));
        }
        // Per-stage timing goes into the run's journal (the first execution's
        // figures win, so a replay keeps them), not into the context, which
        // must come out the same on every replay.
        let recorded = self
            .record_decision(
                &StepKey::from(key).tag("timing"),
                Value::Array(timings),
                loc,
            )
            .await?;
        let mut note = String::new();
        for t in recorded.as_array().into_iter().flatten() {
            let _ = write!(
                note,
                "{}{} {}ms",
                if note.is_empty() { "" } else { " · " },
                t["stage"].as_str().unwrap_or("?"),
                t["elapsed_ms"]
            );
        }
        Ok(StepResult {
            value: input,
            note: Some(note),
            usage: None,
        })
    }
}
