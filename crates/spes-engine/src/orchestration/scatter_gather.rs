//! `scatter_gather`: sources side by side under a time limit, then a gather
//! step over what arrived.
//!
//! The window starts at a journaled clock read (`KEY#start`). What arrived,
//! what timed out and what failed is journaled as one decision
//! (`KEY#gathered`) before the gather step sees it: a resumed run replays
//! the arrived sources from the journal and never re-asks the late ones.
//! A run resumed after its window passed with nothing decided (it crashed
//! mid-gather) gets a fresh window; committed answers replay at once.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use spes_core::workflow::{Loc, ScatterGatherStep, StepKey};

use super::fail;
use crate::error::FailureKind;
use crate::run::{Exec, StepResult, Stop};

/// How one source ended.
enum Source {
    Arrived(Value),
    TimedOut,
    Failed(String),
}

impl<'e> Exec<'e> {
    pub(crate) async fn scatter_gather(
        &mut self,
        g: &ScatterGatherStep,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<StepResult, Stop> {
        let decided = self
            .decision_at(&StepKey::from(key).tag("gathered"), loc)
            .await?;
        let outcomes: Vec<Source> = match &decided {
            Some(d) => self.replay_sources(g, d, key, depth).await?,
            None => {
                let start = self.clock(&StepKey::from(key).tag("start"), loc).await?;
                let window = i64::try_from(g.timeout.as_millis()).unwrap_or(i64::MAX);
                let mut left = start.saturating_add(window) - (self.engine.clock)();
                if left <= 0 {
                    left = window;
                }
                let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
                self.run_sources(g, key, depth, Some(left)).await?
            }
        };
        let mut results = serde_json::Map::new();
        let mut timed_out = Vec::new();
        let mut failed = serde_json::Map::new();
        for (src, o) in g.sources.iter().zip(outcomes) {
            match o {
                Source::Arrived(v) => {
                    results.insert(src.name.clone(), v);
                }
                Source::TimedOut => timed_out.push(Value::String(src.name.clone())),
                Source::Failed(e) => {
                    failed.insert(src.name.clone(), Value::String(e));
                }
            }
        }
        if decided.is_none() {
            let d = json!({
                "arrived": results.keys().cloned().collect::<Vec<_>>(),
                "timed_out": timed_out,
                "failed": failed,
            });
            self.record_decision(&StepKey::from(key).tag("gathered"), d, loc)
                .await?;
        }
        let note = format!(
            "{}/{} sources arrived{}{}",
            results.len(),
            g.sources.len(),
            if timed_out.is_empty() {
                String::new()
            } else {
                format!(
                    "; timed out: {}",
                    timed_out
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            if failed.is_empty() {
                String::new()
            } else {
                format!(
                    "; failed: {}",
                    failed.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            }
        );
        if results.is_empty() {
            return Err(fail(
                key,
                loc,
                FailureKind::Answer(format!("no source answered: {note}")),
            ));
        }
        let gathered = json!({ "results": results, "timed_out": timed_out, "failed": failed });
        let value = match &g.gather {
            None => Some(gathered),
            Some(step) => {
                let mut child = self.fork();
                child
                    .ctx
                    .insert("results".into(), gathered["results"].clone());
                child
                    .ctx
                    .insert("timed_out".into(), gathered["timed_out"].clone());
                child
                    .ctx
                    .insert("failed".into(), gathered["failed"].clone());
                let v = child.step(step, key, depth + 1).await;
                self.absorb(child);
                v?
            }
        };
        Ok(StepResult {
            value,
            note: Some(note),
            usage: None,
        })
    }

    /// Replays a recorded gather: arrived sources answer from the journal,
    /// the others keep their recorded fate.
    async fn replay_sources(
        &mut self,
        g: &ScatterGatherStep,
        d: &Value,
        key: &str,
        depth: usize,
    ) -> Result<Vec<Source>, Stop> {
        let arrived: Vec<&str> = d
            .get("arrived")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let failed: BTreeMap<String, String> = d
            .get("failed")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("failed").to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let mut out = self
            .run_sources_filtered(g, key, depth, None, &arrived)
            .await?;
        for (src, o) in g.sources.iter().zip(out.iter_mut()) {
            if let Some(e) = failed.get(&src.name) {
                *o = Source::Failed(e.clone());
            }
        }
        Ok(out)
    }

    async fn run_sources(
        &mut self,
        g: &ScatterGatherStep,
        key: &str,
        depth: usize,
        window: Option<Duration>,
    ) -> Result<Vec<Source>, Stop> {
        let all: Vec<&str> = g.sources.iter().map(|s| s.name.as_str()).collect();
        self.run_sources_filtered(g, key, depth, window, &all).await
    }

    /// Runs the sources named in `only` side by side (the others count as
    /// timed out), each cut off when `window` ends.
    async fn run_sources_filtered(
        &mut self,
        g: &ScatterGatherStep,
        key: &str,
        depth: usize,
        window: Option<Duration>,
        only: &[&str],
    ) -> Result<Vec<Source>, Stop> {
        let deadline = window.map(|w| tokio::time::Instant::now() + w);
        let futs = g.sources.iter().map(|src| {
            let run = only.contains(&src.name.as_str());
            let mut child = self.fork();
            async move {
                if !run {
                    return (child, None);
                }
                let r = match deadline {
                    Some(d) => tokio::time::timeout_at(d, child.step(src, key, depth + 1))
                        .await
                        .ok(),
                    None => Some(child.step(src, key, depth + 1).await),
                };
                (child, r)
            }
        });
        let done = futures::future::join_all(futs).await;
        let mut out = Vec::with_capacity(done.len());
        let mut stops = Vec::new();
        for (child, r) in done {
            match r {
                None => {
                    self.absorb_counters(&child);
                    out.push(Source::TimedOut);
                }
                Some(Ok(v)) => {
                    self.absorb(child);
                    out.push(Source::Arrived(v.unwrap_or(Value::Null)));
                }
                Some(Err(Stop::Failed(e))) => {
                    self.absorb_counters(&child);
                    out.push(Source::Failed(e.kind.to_string()));
                }
                Some(Err(other)) => {
                    self.absorb_counters(&child);
                    stops.push(other);
                    out.push(Source::TimedOut);
                }
            }
        }
        match Stop::merge(stops) {
            Some(s) => Err(s),
            None => Ok(out),
        }
    }
}
