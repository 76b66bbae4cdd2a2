//! `fan_out` (different workers on one input, then an aggregate) and
//! `pipeline` (stages, each fed the previous output, timed).

use std::fmt::Write as _;
use std::time::Instant;

use serde_json::{Value, json};
use spes_core::workflow::{FanOutStep, Loc, ParallelBranches, PipelineStep};

use super::fail;
use crate::error::FailureKind;
use crate::run::{Exec, StepResult, Stop};

impl Exec<'_> {
    pub(crate) async fn fan_out(
        &mut self,
        f: &FanOutStep,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<StepResult, Stop> {
        // Same semantics as `parallel` with steps: every worker runs to its
        // end (finished work is committed), results by worker name in
        // declared order, a failure fails the step after all finished.
        let branches = ParallelBranches::Steps(f.workers.clone());
        let results = self
            .parallel_branches(&branches, f.concurrency, key, depth, loc)
            .await?;
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
            .record_decision(&format!("{key}#timing"), Value::Array(timings), loc)
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
