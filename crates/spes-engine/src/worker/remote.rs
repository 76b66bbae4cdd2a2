//! The run's side of distribution: a map's items and a sub-workflow
//! handed to the work queue, and an item executed by a worker.

use serde_json::{Value, json};
use spes_core::template::Context;
use spes_core::workflow::{Loc, MapStep, OnError, StepKey};
use spes_store::queue::{Lease, NewItem};
use spes_store::{RunId, RunStore, StoreError};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::journal;
use crate::error::{EngineError, FailureKind};
use crate::journal::{Effect, JournalError};
use crate::run::{Exec, Stop, fail};

/// What a run executed by a worker needs to hand its map items to other workers.
#[derive(Debug)]
pub(crate) struct Dist {
    pub(crate) store: Arc<dyn RunStore>,
    pub(crate) run: RunId,
    pub(crate) lease: Lease,
    /// Keys of the workflow's map steps that may be distributed.
    pub(crate) maps: HashSet<String>,
    /// Keys of the workflow's sub-workflow steps that may be distributed.
    pub(crate) flows: HashSet<String>,
    /// How often the map looks at its items' progress.
    pub(crate) poll: Duration,
}

/// What a sub-workflow task carries.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct FlowPayload {
    /// The sub-workflow step's key.
    pub(super) workflow: String,
    /// Its bound inputs.
    pub(super) ctx: serde_json::Map<String, Value>,
    pub(super) depth: usize,
}

/// What an item task carries.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct ItemPayload {
    /// The map step's key.
    pub(super) map: String,
    pub(super) index: usize,
    pub(super) item: Value,
    pub(super) depth: usize,
}

/// How an item failed, as its task keeps it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct ItemFailure {
    pub(super) step: String,
    pub(super) message: String,
    pub(super) transient: bool,
    /// Set when the run's budget stopped the item (before a model call):
    /// the run stops with class `budget_exceeded`, as in one process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) budget: Option<BudgetStop>,
}

/// A budget stop of an item: which limit, and where the refused step is written.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct BudgetStop {
    why: String,
    file: String,
    line: usize,
    col: usize,
}

impl ItemFailure {
    /// An ordinary failure (not a budget stop).
    pub(super) fn new(
        step: impl Into<String>,
        message: impl Into<String>,
        transient: bool,
    ) -> Self {
        Self {
            step: step.into(),
            message: message.into(),
            transient,
            budget: None,
        }
    }

    /// How `e` (a stop of an item or a sub-workflow task) is kept.
    pub(super) fn of(e: &EngineError) -> Self {
        let mut f = Self::new(
            e.step.clone(),
            e.kind.to_string(),
            e.class() == spes_llm::ErrorClass::Transient,
        );
        if let FailureKind::Budget(why) = &e.kind {
            f.budget = Some(BudgetStop {
                why: why.clone(),
                file: e.loc.file.to_string(),
                line: e.loc.line,
                col: e.loc.col,
            });
        }
        f
    }

    /// Read back from a failed task's error (`step` names the task when
    /// the text is not a kept failure).
    fn read(text: &str, step: impl FnOnce() -> String) -> Self {
        serde_json::from_str(text).unwrap_or_else(|_| Self::new(step(), text, false))
    }

    /// The run's stop for this failure at the step written at `loc`: a
    /// budget stop stays one (class `budget_exceeded`, the refused step's
    /// location), anything else is a remote failure.
    fn stop(self, loc: &Loc) -> Stop {
        match self.budget {
            Some(b) => Stop::Budget(EngineError {
                step: self.step,
                loc: Loc {
                    file: b.file.into(),
                    line: b.line,
                    col: b.col,
                },
                kind: FailureKind::Budget(b.why),
            }),
            None => Stop::Failed(EngineError {
                step: self.step,
                loc: loc.clone(),
                kind: FailureKind::Remote {
                    message: self.message,
                    transient: self.transient,
                },
            }),
        }
    }
}

impl<'e> Exec<'e> {
    /// Hands the items of a map to the workers and waits until none is
    /// open; the caller then collects their results from the journal.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn map_remote(
        &mut self,
        d: &Dist,
        m: &MapStep,
        key: &str,
        items: &[Value],
        strip: bool,
        depth: usize,
        loc: &Loc,
    ) -> Result<(), Stop> {
        let Some(q) = d.store.queue() else {
            return Ok(());
        };
        let journal_err = |e: JournalError| fail(key, loc, FailureKind::Journal(e));
        let store_err = |e: StoreError| fail(key, loc, FailureKind::Journal(journal::typed(&e)));
        let map_key = StepKey::from(key);
        let prefix = map_key.items_prefix();
        self.journal.refresh(&prefix).await.map_err(journal_err)?;
        let ctx_key = map_key.ctx();
        if self.decision_at(&ctx_key, loc).await?.is_none() {
            let ctx: serde_json::Map<String, Value> = self
                .ctx
                .iter()
                .filter(|(k, _)| !strip || k.as_str() != m.over)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            self.record_decision(&ctx_key, Value::Object(ctx), loc)
                .await?;
        }
        let mut new = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = map_key.item(i);
            let result = self.journal.get(&p.result()).await.map_err(journal_err)?;
            let error = self
                .journal
                .get(&p.tag("error"))
                .await
                .map_err(journal_err)?;
            if result.is_some() || error.is_some() {
                continue;
            }
            let payload = serde_json::to_value(ItemPayload {
                map: key.to_owned(),
                index: i,
                item: item.clone(),
                depth,
            })
            .map_err(|e| journal_err(JournalError::Corrupt(e.to_string())))?;
            new.push(NewItem {
                key: p.into_string(),
                payload,
            });
        }
        if !new.is_empty() {
            q.enqueue_items(&d.lease, &d.run, &new)
                .await
                .map_err(store_err)?;
        }
        // Waits with a cheap look (is any item open?), then counts once.
        while q.items_open(&d.run, &prefix).await.map_err(store_err)? {
            self.check_control(key, loc).await?;
            tokio::time::sleep(d.poll).await;
        }
        let progress = q.item_progress(&d.run, &prefix).await.map_err(store_err)?;
        self.journal.refresh(&prefix).await.map_err(journal_err)?;
        // Failed items in input order. A budget stop stops the map whatever
        // its `on_error` (as in one process, where it passes every policy);
        // another failure only under `fail_fast` (otherwise `#error` is
        // journaled and the map reports it).
        let mut failed: Vec<(usize, ItemFailure)> = progress
            .failed
            .iter()
            .filter_map(|(k, e)| {
                let (map, i) = StepKey::split_item(k)?;
                if map != key {
                    return None;
                }
                Some((i, ItemFailure::read(e, || map_key.item(i).into_string())))
            })
            .collect();
        failed.sort_by_key(|(i, _)| *i);
        let budget = failed.iter().position(|(_, f)| f.budget.is_some());
        let first = match budget {
            Some(at) => Some(failed.swap_remove(at)),
            None if m.on_error == OnError::FailFast && !failed.is_empty() => {
                Some(failed.swap_remove(0))
            }
            None => None,
        };
        if let Some((_, f)) = first {
            return Err(f.stop(loc));
        }
        Ok(())
    }

    /// Hands a sub-workflow (at `key`, with its bound inputs `ctx`) to the
    /// workers as one task and waits for its result.
    pub(crate) async fn subflow_remote(
        &mut self,
        d: &Dist,
        key: &str,
        ctx: Context,
        depth: usize,
        loc: &Loc,
    ) -> Result<Option<Value>, Stop> {
        let journal_err = |e: JournalError| fail(key, loc, FailureKind::Journal(e));
        let store_err = |e: StoreError| fail(key, loc, FailureKind::Journal(journal::typed(&e)));
        let Some(q) = d.store.queue() else {
            return Err(journal_err(JournalError::Unavailable(
                "the store has no work queue".into(),
            )));
        };
        let result_key = StepKey::from(key).result();
        self.journal
            .refresh(&result_key)
            .await
            .map_err(journal_err)?;
        if let Some(Effect::Item { value }) =
            self.journal.get(&result_key).await.map_err(journal_err)?
        {
            return Ok(Some(value).filter(|v| !v.is_null()));
        }
        let payload = serde_json::to_value(FlowPayload {
            workflow: key.to_owned(),
            ctx,
            depth,
        })
        .map_err(|e| journal_err(JournalError::Corrupt(e.to_string())))?;
        q.enqueue_items(
            &d.lease,
            &d.run,
            &[NewItem {
                key: key.to_owned(),
                payload,
            }],
        )
        .await
        .map_err(store_err)?;
        loop {
            match q.task_state(&d.run, key).await.map_err(store_err)? {
                Some((state, _)) if state == "done" => break,
                Some((state, error)) if state == "failed" => {
                    let e = error.unwrap_or_default();
                    return Err(ItemFailure::read(&e, || key.to_owned()).stop(loc));
                }
                _ => {}
            }
            self.check_control(key, loc).await?;
            tokio::time::sleep(d.poll).await;
        }
        self.journal
            .refresh(&result_key)
            .await
            .map_err(journal_err)?;
        match self.journal.get(&result_key).await.map_err(journal_err)? {
            Some(Effect::Item { value }) => Ok(Some(value).filter(|v| !v.is_null())),
            _ => Err(journal_err(JournalError::Mismatch(format!(
                "`{result_key}` is not recorded"
            )))),
        }
    }

    /// Executes item `index` of map `m` (at `key`) in this execution's
    /// context, as a worker does for an item task. A failure under
    /// `skip`/`collect` is journaled as the item's `#error`, as the map
    /// itself does.
    pub(crate) async fn run_item(
        &self,
        m: &MapStep,
        key: &str,
        index: usize,
        item: Value,
        depth: usize,
        loc: &Loc,
    ) -> Result<Option<Value>, Stop> {
        let prefix = StepKey::from(key).item(index);
        if m.on_error != OnError::FailFast
            && let Some(d) = self.decision_at(&prefix.tag("error"), loc).await?
        {
            let msg = d
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("failed")
                .to_owned();
            return Err(fail(&prefix, loc, FailureKind::Answer(msg)));
        }
        let mut child = self.fork();
        child.ctx.insert(m.item_as.clone(), item);
        child.ctx.insert("index".into(), json!(index));
        let r = child.step(&m.step, &prefix, depth + 1).await;
        if let Err(Stop::Failed(e)) = &r
            && m.on_error != OnError::FailFast
        {
            let d = json!({ "error": e.kind.to_string() });
            self.record_decision(&prefix.tag("error"), d, loc).await?;
        }
        r
    }
}
