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
        if m.on_error == OnError::FailFast {
            let first = progress
                .failed
                .iter()
                .filter_map(|(k, e)| {
                    let (map, i) = StepKey::split_item(k)?;
                    if map != key {
                        return None;
                    }
                    Some((i, e))
                })
                .min_by_key(|(i, _)| *i);
            if let Some((i, e)) = first {
                let f: ItemFailure = serde_json::from_str(e).unwrap_or(ItemFailure {
                    step: map_key.item(i).into_string(),
                    message: e.clone(),
                    transient: false,
                });
                return Err(Stop::Failed(EngineError {
                    step: f.step,
                    loc: loc.clone(),
                    kind: FailureKind::Remote {
                        message: f.message,
                        transient: f.transient,
                    },
                }));
            }
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
                    let f: ItemFailure = serde_json::from_str(&e).unwrap_or(ItemFailure {
                        step: key.to_owned(),
                        message: e,
                        transient: false,
                    });
                    return Err(Stop::Failed(EngineError {
                        step: f.step,
                        loc: loc.clone(),
                        kind: FailureKind::Remote {
                            message: f.message,
                            transient: f.transient,
                        },
                    }));
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
