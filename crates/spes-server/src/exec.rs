//! Runs executing in the server's process: runs started or forked through
//! the API on a store without a work queue, and runs continued after a
//! decision or a deadline (a queued run is continued by the workers
//! instead). On shutdown every one of them is stopped and given back
//! (`ops::release_own_runs`: shown `interrupted`, a resume takes it over),
//! as Ctrl-C does to `spes run`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spes_core::workflow::Workflow;
use spes_engine::Engine;
use spes_store::{RunId, RunStore};
use tokio::task::JoinSet;

use crate::Project;

/// How often passed gate deadlines are applied (as workers do).
pub const DEADLINE_EVERY: Duration = Duration::from_millis(500);

/// Executes runs in this process.
#[derive(Clone)]
pub struct Executor {
    store: Arc<dyn RunStore>,
    project: Arc<dyn Project>,
    hub: Arc<crate::events::Hub>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").finish_non_exhaustive()
    }
}

impl Executor {
    pub(crate) fn new(
        store: Arc<dyn RunStore>,
        project: Arc<dyn Project>,
        hub: Arc<crate::events::Hub>,
    ) -> Self {
        Self {
            store,
            project,
            hub,
            tasks: Arc::default(),
        }
    }

    fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        if let Ok(mut set) = self.tasks.lock() {
            // Reap the finished ones.
            while set.try_join_next().is_some() {}
            set.spawn(f);
        }
    }

    /// Executes the run `begun` (recorded by `Engine::begin` or
    /// `begin_fork`) here, in the span it recorded.
    pub(crate) fn spawn_begun(&self, engine: Engine, begun: spes_engine::Begun, wf: Workflow) {
        let id = begun.id;
        let store = self.store.clone();
        let engine = engine.observed(Arc::new(Live {
            hub: self.hub.clone(),
            run: id,
        }));
        self.spawn(async move {
            let run = match store.run(&id).await {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(run = %id, error = %e, "cannot read the run to execute it");
                    return;
                }
            };
            match engine.execute_begun(store, begun, &run, &wf).await {
                Ok(end) => tracing::info!(run = %id, end = end_name(&end), "run stopped"),
                Err(e) => tracing::warn!(run = %id, error = %e, "run could not execute"),
            }
        });
    }

    /// Continues run `id` here from its journal (after a decision, a
    /// deadline or a resume request). A run another process executes or
    /// that has nothing left to do is left alone (logged).
    pub fn spawn_resume(&self, id: RunId) {
        let store = self.store.clone();
        let project = self.project.clone();
        let live = Arc::new(Live {
            hub: self.hub.clone(),
            run: id,
        });
        self.spawn(async move {
            if let Err(e) = resume(&store, project.as_ref(), id, live).await {
                tracing::info!(run = %id, why = %e, "run not continued here");
            }
        });
    }

    /// Applies gate deadlines that passed, every [`DEADLINE_EVERY`], until
    /// `shutdown`; a run whose gate a deadline decided continues here
    /// unless workers take it (a queued run).
    pub async fn deadlines(&self, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(DEADLINE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            match spes_engine::ops::apply_deadlines(self.store.as_ref(), None, chrono::Utc::now())
                .await
            {
                Ok(fired) => {
                    for f in fired {
                        if !self.queued(&f.run).await {
                            self.spawn_resume(f.run);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "applying gate deadlines failed"),
            }
        }
    }

    /// Whether workers continue `run` (it has a task in a work queue).
    pub(crate) async fn queued(&self, run: &RunId) -> bool {
        match self.store.queue() {
            Some(q) => matches!(q.task_state(run, "").await, Ok(Some(_))),
            None => false,
        }
    }

    /// On a store without a work queue: continues the runs a decision
    /// answered that nobody continued (the server that recorded it was
    /// killed before it could). A run waiting with no open gate is one.
    /// Returns how many were started again here.
    pub async fn recover(&self) -> usize {
        if self.store.queue().is_some() {
            return 0;
        }
        let mut query = spes_store::RunQuery {
            status: Some(spes_store::RunStatus::Waiting),
            limit: 500,
            ..spes_store::RunQuery::default()
        };
        let mut continued = 0;
        loop {
            let page = match self.store.query_runs(&query).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the waiting runs");
                    return continued;
                }
            };
            for run in &page {
                let filter = spes_store::GateFilter {
                    run_id: Some(run.id),
                    pending_only: true,
                };
                if matches!(self.store.gates(&filter).await, Ok(g) if g.is_empty()) {
                    self.spawn_resume(run.id);
                    continued += 1;
                }
            }
            match page.last() {
                Some(last) if page.len() == 500 => query.after = Some((last.created_at, last.id)),
                _ => return continued,
            }
        }
    }

    /// Stops every run executing here and gives them back (shown
    /// `interrupted`; a resume takes them over). Returns their ids.
    pub async fn shutdown(&self) -> Vec<RunId> {
        let mut set = self
            .tasks
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        set.abort_all();
        while set.join_next().await.is_some() {}
        match spes_engine::ops::release_own_runs(self.store.as_ref()).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot give back the runs this server executed");
                Vec::new()
            }
        }
    }
}

fn end_name(e: &spes_engine::RunEnd) -> &'static str {
    match e {
        spes_engine::RunEnd::Completed(_) => "completed",
        spes_engine::RunEnd::Failed(_) => "failed",
        spes_engine::RunEnd::Waiting(_) => "waiting",
        spes_engine::RunEnd::Paused => "paused",
        spes_engine::RunEnd::Cancelled => "cancelled",
    }
}

/// Hands a run's progress to the clients watching it.
struct Live {
    hub: Arc<crate::events::Hub>,
    run: RunId,
}

impl spes_engine::Observer for Live {
    fn on_event(&self, event: &spes_engine::Event) {
        self.hub.publish(&self.run, event);
    }
}

async fn resume(
    store: &Arc<dyn RunStore>,
    project: &dyn Project,
    id: RunId,
    live: Arc<Live>,
) -> Result<(), String> {
    let run = store
        .run(&id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("run {id} is gone"))?;
    let loaded = project
        .load(Path::new(&run.workflow_path))
        .map_err(|d| d.render_plain())?;
    let engine = project
        .engine(run.settings.provider.as_deref())?
        .observed(live);
    let end = engine
        .resume(store.clone(), &run, &loaded.workflow, &loaded.source, false)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(run = %id, end = end_name(&end), "run stopped");
    Ok(())
}
