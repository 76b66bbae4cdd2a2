//! A sub-workflow task, as a worker executes it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::Value;
use spes_core::workflow::{StepKey, StepKind};
use spes_store::RunStatus;
use spes_store::queue::{FinalEntry, Task};

use super::remote::{FlowPayload, ItemFailure};
use super::{FencedJournal, Leave, Worker};
use crate::error::FailureKind;
use crate::journal::Effect;
use crate::run::{Control, Exec, Stop};

impl Worker {
    /// Executes a sub-workflow task: its steps under its key in the run's
    /// journal, its result recorded with the end of the task.
    pub(super) async fn execute_flow(&self, task: &Task) -> Result<(), Leave> {
        let q = self.queue();
        let lease = &task.lease;
        let p: FlowPayload = serde_json::from_value(task.payload.clone())
            .map_err(|e| Leave::Retry(format!("sub-workflow payload: {e}")))?;
        if task.run_status != RunStatus::Running {
            let f = serde_json::to_string(&ItemFailure::new(
                task.key.clone(),
                format!("the run was {}", task.run_status),
                true,
            ))
            .unwrap_or_default();
            q.finish_item(lease, &task.run_id, None, Some(&f)).await?;
            return Ok(());
        }
        let run = self
            .store
            .run(&task.run_id)
            .await?
            .ok_or_else(|| Leave::Retry(format!("run {} is gone", task.run_id)))?;
        let wf = self.workflow(&run).await.map_err(Leave::Retry)?;
        let walk = wf.walk();
        let Some(child) = walk.iter().find_map(|(k, s)| match &s.kind {
            StepKind::Workflow(w) if *k == p.workflow => Some(w),
            _ => None,
        }) else {
            return Err(Leave::Retry(format!(
                "no sub-workflow step `{}` in the workflow",
                p.workflow
            )));
        };
        let journal = FencedJournal::open(
            self.store.clone(),
            run.id,
            lease.clone(),
            Some(&StepKey::from(task.key.as_str()).entry_prefixes()),
        )
        .await
        .map_err(Leave::from_journal)?;
        let pinned = self.engine.pinned(&run.settings);
        let mut exec = Exec::new(
            pinned.as_ref().unwrap_or(&self.engine),
            p.ctx,
            Arc::new(journal),
            Some(Control::new(self.store.clone(), run.id)),
        );
        exec.budget = self.ledger(&run, &wf, true);
        let span = crate::telemetry::item_span(&self.engine.tracer, &run, &task.key);
        exec.span = span.clone();
        let r = exec
            .steps_at(&child.workflow.steps, p.workflow.clone(), p.depth + 1)
            .await;
        crate::telemetry::done(&span, &r);
        match r {
            Ok(_) => {
                let value = child
                    .workflow
                    .result_key()
                    .and_then(|k| exec.ctx.get(k).cloned())
                    .unwrap_or(Value::Null);
                let payload = serde_json::to_value(Effect::Item { value })
                    .map_err(|e| Leave::Retry(e.to_string()))?;
                let entry = FinalEntry {
                    key: StepKey::from(task.key.as_str()).result().into_string(),
                    kind: "item".into(),
                    payload,
                };
                q.finish_item(lease, &run.id, Some(&entry), None).await?;
            }
            Err(Stop::Failed(e) | Stop::Budget(e)) => {
                if let FailureKind::Journal(msg) = &e.kind {
                    return Err(Leave::from_journal(msg.clone()));
                }
                let f = serde_json::to_string(&ItemFailure::of(&e)).unwrap_or_default();
                q.finish_item(lease, &run.id, None, Some(&f)).await?;
            }
            Err(Stop::Store(e)) => return Err(Leave::Retry(e.to_string())),
            Err(_) => {
                let f = serde_json::to_string(&ItemFailure::new(
                    task.key.clone(),
                    "the run was stopped",
                    true,
                ))
                .unwrap_or_default();
                q.finish_item(lease, &run.id, None, Some(&f)).await?;
            }
        }
        self.items_done.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
