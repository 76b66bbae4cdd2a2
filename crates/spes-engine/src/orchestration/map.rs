//! `map` and `reduce`.
//!
//! Items run as forks of the execution, at most `concurrency` at once
//! (`buffer_unordered`: a slow item never holds back the next one), and the
//! results are put back in **input order** by index. Item keys are
//! `KEY/map[INDEX]/STEP`, stable across runs. Failures are never dropped
//! silently; see [`OnError`].

use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use serde_json::{Value, json};
use spes_core::workflow::kind::Distribution;
use spes_core::workflow::{Loc, MapStep, OnError, ReduceStep, Step, StepKey, StepKind};

use crate::run::{Exec, StepResult, Stop};

/// How one item ended.
enum Item<'e> {
    /// Not started: fail_fast saw a failure first.
    NotStarted,
    /// A failure recorded by an earlier execution (skip/collect).
    RecordedFailure(String),
    /// Ran (or replayed) now.
    Ran(Box<Exec<'e>>, Result<Option<Value>, Stop>),
    /// Executed by a worker (`spes worker`): its recorded result.
    Recorded(Value),
}

impl<'e> Exec<'e> {
    pub(crate) async fn map(
        &mut self,
        m: &MapStep,
        output: Option<&str>,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<StepResult, Stop> {
        let items = self.list_at(&m.over, key, loc)?;
        let stopped = AtomicBool::new(false);
        // The store refused a commit: no further item starts (it would pay
        // for calls it cannot record), whatever `on_error` says.
        let store_down = AtomicBool::new(false);
        // Each item gets its own copy of the context; the list itself is
        // left out of it when the item step cannot read it (otherwise N
        // items would copy N elements each).
        let strip = !may_read(&m.step, &m.over);
        // On a shared store, workers execute the items; what follows then
        // only collects their recorded results.
        let remote = match self.dist.clone() {
            Some(d) if d.maps.contains(key) && distributable(&m.step) => {
                self.map_remote(&d, m, key, &items, strip, depth, loc)
                    .await?;
                true
            }
            _ => false,
        };
        let this = &*self;
        // Boxed up front (cheap: nothing runs, nothing is cloned until an
        // item starts); the boxes keep the stream's future type nameable.
        let futs: Vec<BoxFuture<'_, (usize, Item<'e>)>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let stopped = &stopped;
                let store_down = &store_down;
                Box::pin(async move {
                    if (m.on_error == OnError::FailFast && stopped.load(Ordering::SeqCst))
                        || store_down.load(Ordering::SeqCst)
                    {
                        return (i, Item::NotStarted);
                    }
                    let prefix = StepKey::from(key).item(i);
                    let err_key = prefix.tag("error");
                    if m.on_error != OnError::FailFast {
                        match this.decision_at(&err_key, loc).await {
                            Ok(Some(d)) => {
                                let msg = d
                                    .get("error")
                                    .and_then(Value::as_str)
                                    .unwrap_or("failed")
                                    .to_owned();
                                return (i, Item::RecordedFailure(msg));
                            }
                            Ok(None) => {}
                            Err(s) => return (i, Item::Ran(Box::new(this.fork()), Err(s))),
                        }
                    }
                    if remote {
                        match this.journal.get(&prefix.result()).await {
                            Ok(Some(crate::journal::Effect::Item { value })) => {
                                return (i, Item::Recorded(value));
                            }
                            Ok(_) => {}
                            Err(e) => {
                                let s = crate::run::fail(
                                    key,
                                    loc,
                                    crate::error::FailureKind::Journal(e),
                                );
                                return (i, Item::Ran(Box::new(this.fork()), Err(s)));
                            }
                        }
                    }
                    let mut child = if strip {
                        this.fork_without(&m.over)
                    } else {
                        this.fork()
                    };
                    child.ctx.insert(m.item_as.clone(), item.clone());
                    child.ctx.insert("index".into(), json!(i));
                    let mut r = child.step(&m.step, &prefix, depth + 1).await;
                    if let Err(Stop::Store(_)) = &r {
                        store_down.store(true, Ordering::SeqCst);
                    }
                    if let Err(Stop::Failed(e)) = &r {
                        stopped.store(true, Ordering::SeqCst);
                        if m.on_error != OnError::FailFast {
                            // The failure is part of the result: journal it so
                            // a replay reports the same items as failed.
                            let d = json!({ "error": e.kind.to_string() });
                            if let Err(s) = this.record_decision(&err_key, d, loc).await {
                                r = Err(s);
                            }
                        }
                    }
                    (i, Item::Ran(Box::new(child), r))
                }) as BoxFuture<'_, (usize, Item<'e>)>
            })
            .collect();
        let mut done: Vec<(usize, Item<'e>)> = stream::iter(futs)
            .buffer_unordered(m.concurrency.max(1))
            .collect()
            .await;
        done.sort_by_key(|(i, _)| *i);

        let mut results = Vec::with_capacity(items.len());
        let mut errors = Vec::new();
        let mut stops = Vec::new();
        let mut first_failure = None;
        let mut not_started = 0usize;
        for (i, it) in done {
            let failure = match it {
                Item::NotStarted => {
                    not_started += 1;
                    continue;
                }
                Item::RecordedFailure(msg) => msg,
                Item::Recorded(v) => {
                    results.push(v);
                    continue;
                }
                Item::Ran(child, r) => {
                    self.absorb_counters(&child);
                    match r {
                        Ok(v) => {
                            results.push(v.unwrap_or(Value::Null));
                            continue;
                        }
                        Err(Stop::Failed(e)) => {
                            let msg = e.kind.to_string();
                            if first_failure.is_none() {
                                first_failure = Some(e);
                            }
                            msg
                        }
                        Err(other) => {
                            stops.push(other);
                            continue;
                        }
                    }
                }
            };
            errors.push(json!({ "index": i, "item": items[i], "error": failure }));
            if m.on_error == OnError::Collect {
                results.push(json!({ "error": failure }));
            }
        }
        if let Some(s) = Stop::merge(stops) {
            return Err(s);
        }
        if m.on_error == OnError::FailFast
            && let Some(e) = first_failure
        {
            // The first failure in input order, as it is (its class decides
            // whether a retry policy may run the map again).
            tracing::debug!(
                step = key,
                failed = errors.len(),
                not_started,
                "map stopped (on_error: fail_fast)"
            );
            return Err(Stop::Failed(e));
        }
        let note = format!(
            "{} items, {} at once{}",
            items.len(),
            m.concurrency,
            if errors.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} failed ({})",
                    errors.len(),
                    if m.on_error == OnError::Skip {
                        "skipped"
                    } else {
                        "collected"
                    }
                )
            }
        );
        if let Some(o) = output {
            self.write(&format!("{o}_errors"), Value::Array(errors));
        }
        Ok(StepResult {
            value: Some(Value::Array(results)),
            note: Some(note),
            usage: None,
        })
    }

    pub(crate) async fn reduce(
        &mut self,
        r: &ReduceStep,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<StepResult, Stop> {
        let items = self.list_at(&r.over, key, loc)?;
        let n = items.len();
        let mut child = self.fork();
        child.ctx.insert("items".into(), Value::Array(items));
        let v = child.step(&r.step, key, depth + 1).await;
        self.absorb(child);
        Ok(StepResult {
            value: v?,
            note: Some(format!("over {n} items")),
            usage: None,
        })
    }
}

/// Whether a map's item step may run in another worker: no human gate,
/// no nested orchestration (those run where their parent runs).
/// Each kind says so in its descriptor.
pub(crate) fn distributable(step: &Step) -> bool {
    match step.kind.def().distribution {
        Distribution::Anywhere => true,
        Distribution::IfChildrenMay => step
            .kind
            .children()
            .iter()
            .all(|c| c.steps.iter().all(distributable)),
        Distribution::Local => false,
    }
}

/// Whether `step` may read context key `key` (conservative: true unless
/// it is a plain llm or transform step whose templates do not name it).
fn may_read(step: &Step, key: &str) -> bool {
    if step.when.is_some() {
        return true;
    }
    match &step.kind {
        StepKind::Llm(l) => {
            l.prompt.reads().contains(key)
                || l.system.as_ref().is_some_and(|t| t.reads().contains(key))
                || l.agent.as_ref().is_some_and(|a| {
                    a.vars.values().any(|t| t.reads().contains(key))
                        || a.components
                            .iter()
                            .any(|c| c.variables.iter().any(|v| v.name == key))
                })
        }
        StepKind::Transform(t) => t.input.reads().contains(key),
        _ => true,
    }
}
