//! Many workers on one shared store (`spes worker`): the worker loop.
//!
//! A worker claims **tasks** from the store's work queue
//! ([`spes_store::queue::TaskQueue`]) under a lease that a heartbeat
//! renews (every third of the lease):
//! - a **run task** executes (or continues) a whole run: one queued by
//!   `spes run --detach`, one whose human gate was answered, or one whose
//!   previous worker died (its lease expired);
//! - an **item task** executes one item of a map step. The run's map step
//!   (in whichever worker holds the run) records the context the items
//!   see (`KEY#ctx`), enqueues one task per item (idempotently, keyed
//!   `KEY/map[INDEX]`), and waits until none is open. A worker executing
//!   an item writes its model calls under the item's keys in the run's
//!   journal, and its result (`KEY/map[INDEX]#result`) together with the
//!   end of its task, in one transaction. The map then collects the
//!   results from the journal in input order, and the rest of the run
//!   (the reduce) continues where the run is held: it runs once. A
//!   sub-workflow step is an item task too (keyed by its step, its bound
//!   inputs in the payload, its result `KEY#result`).
//!
//! Every write of a task is fenced by its lease (owner and epoch checked
//! in the write's own transaction): a worker that lost its lease (paused
//! past it, cut off from the database) changes nothing, and the
//! heartbeat stops its task as soon as it learns of the loss.
//!
//! Circuit breakers are kept in the store, shared by every worker on it.
//!
//! Each worker runs at most `concurrency` item tasks and, separately, at
//! most `concurrency` run tasks at once (a run task mostly waits for its
//! items, so it does not take an item's slot).

mod flow;
mod journal;
mod remote;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::{AbortHandle, abortable};
use serde_json::Value;
use spes_core::lifecycle::{self, RunEvent};
use spes_core::template::Context;
use spes_core::workflow::{OnError, StepKey, StepKind, Workflow};
use spes_store::queue::{FinalEntry, Lease, Task, TaskKind, TaskQueue};
use spes_store::{Run, RunId, RunPatch, RunStatus, RunStore, StoreError};

pub(crate) use self::journal::FencedJournal;
pub(crate) use self::remote::Dist;
use self::remote::{ItemFailure, ItemPayload};
use crate::Engine;
use crate::error::FailureKind;
use crate::journal::{Effect, JournalError};
use crate::run::{Control, Exec, Stop};

/// Finds the workflow a run executes (on this machine) for a worker.
#[async_trait]
pub trait WorkflowLoader: Send + Sync + std::fmt::Debug {
    /// The validated workflow of `run`; an error fails the run with it.
    async fn load(&self, run: &Run) -> Result<Arc<Workflow>, String>;
}

/// Hears a worker's log lines (lost leases, tasks given back, store trouble).
pub type WorkerLog = Arc<dyn Fn(&str) + Send + Sync>;

/// Settings of a [`Worker`]. `Default` plus `with_*` setters.
#[derive(Clone)]
pub struct WorkerOptions {
    id: String,
    concurrency: usize,
    lease: Duration,
    poll: Duration,
    log: Option<WorkerLog>,
}

impl std::fmt::Debug for WorkerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOptions")
            .field("id", &self.id)
            .field("concurrency", &self.concurrency)
            .field("lease", &self.lease)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            id: format!("{}:{}", crate::durable::this_owner(), &uuid_suffix()),
            concurrency: 8,
            lease: Duration::from_secs(10),
            poll: Duration::from_millis(100),
            log: None,
        }
    }
}

fn uuid_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{nanos:08x}")
}

impl WorkerOptions {
    /// The worker's id (lease owner), default `host:pid:random`.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Most item tasks (and, separately, run tasks) at once (default 8).
    #[must_use]
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How long a claim lasts without a heartbeat (default 10 s); renewed every third of it.
    #[must_use]
    pub fn with_lease(mut self, d: Duration) -> Self {
        self.lease = d.max(Duration::from_millis(300));
        self
    }

    /// How long an idle worker waits before looking for work again (default 100 ms).
    #[must_use]
    pub fn with_poll(mut self, d: Duration) -> Self {
        self.poll = d;
        self
    }

    /// Where the worker's log lines go (default: `tracing` warnings).
    #[must_use]
    pub fn with_log(mut self, log: WorkerLog) -> Self {
        self.log = Some(log);
        self
    }

    /// The worker's id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// What a worker did, for its last log line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    /// Run tasks finished (completed, waiting, failed).
    pub runs: u64,
    /// Item tasks finished.
    pub items: u64,
    /// Tasks stopped because their lease was lost.
    pub lost: u64,
    /// Tasks given back when the worker stopped.
    pub released: u64,
}

/// A worker: see the [module docs](self).
#[derive(Debug)]
pub struct Worker {
    engine: Arc<Engine>,
    store: Arc<dyn RunStore>,
    loader: Arc<dyn WorkflowLoader>,
    opts: WorkerOptions,
    held: Mutex<HashMap<i64, (Lease, AbortHandle)>>,
    /// Finished items wait here to be committed together (see `committer`).
    commits: tokio::sync::mpsc::UnboundedSender<Commit>,
    commit_queue: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Commit>>>,
    contexts: Mutex<HashMap<(RunId, String), Arc<Context>>>,
    /// Runs whose items this worker executes (what items read never changes).
    runs: Mutex<HashMap<RunId, Arc<Run>>>,
    /// One pause/cancel watch per run, shared by its items: items running
    /// side by side share one status read instead of one each.
    controls: Mutex<HashMap<RunId, Control>>,
    /// One budget ledger per run with a budget, shared by its items here.
    ledgers: Mutex<HashMap<RunId, Arc<crate::budget::Ledger>>>,
    runs_done: AtomicU64,
    items_done: AtomicU64,
    lost: AtomicU64,
    running_runs: AtomicUsize,
    running_items: AtomicUsize,
}

/// A finished item waiting to be committed.
#[derive(Debug)]
struct Commit {
    run: RunId,
    lease: Lease,
    entry: FinalEntry,
    reply: tokio::sync::oneshot::Sender<Result<bool, String>>,
}

/// Decrements a counter when dropped (a task ended or was aborted).
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Worker {
    /// A worker executing with `engine` on `store` (which must have a work queue).
    pub fn new(
        engine: Arc<Engine>,
        store: Arc<dyn RunStore>,
        loader: Arc<dyn WorkflowLoader>,
        opts: WorkerOptions,
    ) -> Result<Arc<Self>, StoreError> {
        if store.queue().is_none() {
            return Err(StoreError::BadUrl(format!(
                "{} has no work queue; workers need a postgres:// store",
                store.describe()
            )));
        }
        // Circuit breakers: one state per breaker for every worker on the store.
        engine.breakers().share(store.clone());
        let (commits, commit_queue) = tokio::sync::mpsc::unbounded_channel();
        Ok(Arc::new(Self {
            commits,
            commit_queue: Mutex::new(Some(commit_queue)),
            engine,
            store,
            loader,
            opts,
            held: Mutex::new(HashMap::new()),
            contexts: Mutex::new(HashMap::new()),
            runs: Mutex::new(HashMap::new()),
            controls: Mutex::new(HashMap::new()),
            ledgers: Mutex::new(HashMap::new()),
            runs_done: AtomicU64::new(0),
            items_done: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            running_runs: AtomicUsize::new(0),
            running_items: AtomicUsize::new(0),
        }))
    }

    fn log(&self, line: &str) {
        match &self.opts.log {
            Some(l) => l(line),
            None => tracing::warn!("{line}"),
        }
    }

    fn queue(&self) -> &dyn TaskQueue {
        // Checked in `new`.
        #[allow(clippy::expect_used)]
        self.store.queue().expect("a store with a work queue")
    }

    /// Takes work until `shutdown` completes; then abandons the tasks in
    /// flight and gives their leases back at once.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) -> WorkerStats {
        let heartbeat = tokio::spawn(Arc::clone(&self).heartbeat());
        let committer = tokio::spawn(Arc::clone(&self).committer());
        let deadlines = tokio::spawn(Arc::clone(&self).deadlines());
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        let mut pause = self.opts.poll;
        // Run tasks are looked for at most once a poll while items keep the
        // worker busy (items are looked for whenever a slot frees).
        let mut runs_looked: Option<tokio::time::Instant> = None;
        loop {
            while tasks.try_join_next().is_some() {}
            let n = self.opts.concurrency;
            let free_runs = n.saturating_sub(self.running_runs.load(Ordering::SeqCst));
            let free_items = n.saturating_sub(self.running_items.load(Ordering::SeqCst));
            let look_for_runs = runs_looked.is_none_or(|t| t.elapsed() >= self.opts.poll);
            let mut claimed = 0;
            let mut failed = false;
            for (kind, free) in [(TaskKind::Item, free_items), (TaskKind::Run, free_runs)] {
                if free == 0 || (kind == TaskKind::Run && !look_for_runs) {
                    continue;
                }
                if kind == TaskKind::Run {
                    runs_looked = Some(tokio::time::Instant::now());
                }
                let claimed_at = std::time::Instant::now();
                match self
                    .queue()
                    .claim(
                        &self.opts.id,
                        kind,
                        u32::try_from(free).unwrap_or(u32::MAX),
                        self.opts.lease,
                    )
                    .await
                {
                    Ok(got) => {
                        claimed += got.len();
                        self.engine.metrics.claimed(kind.as_str(), got.len());
                        for t in got {
                            self.start(&mut tasks, t, claimed_at);
                        }
                    }
                    Err(e) => {
                        self.log(&format!("claiming work failed: {e}"));
                        failed = true;
                    }
                }
            }
            pause = if failed {
                (pause * 2).min(Duration::from_secs(5))
            } else {
                self.opts.poll
            };
            let busy = self.running_items.load(Ordering::SeqCst) >= n;
            if claimed > 0 && !busy && !failed {
                continue;
            }
            let idle = async {
                if failed {
                    tokio::time::sleep(pause).await;
                } else {
                    // Woken by new work (LISTEN/NOTIFY on PostgreSQL), or
                    // the poll that also sweeps expired leases.
                    self.queue().wait_for_work(pause).await;
                }
            };
            // Waking (or a finished task) looks for runs again at once when
            // the worker has no item to do.
            if self.running_items.load(Ordering::SeqCst) == 0 {
                runs_looked = None;
            }
            tokio::select! {
                () = &mut shutdown => break,
                _ = tasks.join_next(), if !tasks.is_empty() => {}
                () = idle => {}
            }
        }
        heartbeat.abort();
        committer.abort();
        deadlines.abort();
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let released = self
            .queue()
            .release_all(&self.opts.id)
            .await
            .unwrap_or_else(|e| {
                self.log(&format!("giving the leases back failed ({e}); they expire"));
                0
            });
        WorkerStats {
            runs: self.runs_done.load(Ordering::SeqCst),
            items: self.items_done.load(Ordering::SeqCst),
            lost: self.lost.load(Ordering::SeqCst),
            released,
        }
    }

    /// Runs `task` (claimed by a claim that started at `claimed_at`) in `tasks`.
    fn start(
        self: &Arc<Self>,
        tasks: &mut tokio::task::JoinSet<()>,
        task: Task,
        claimed_at: std::time::Instant,
    ) {
        let counter = match task.kind {
            TaskKind::Run => &self.running_runs,
            TaskKind::Item => &self.running_items,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        let me = Arc::clone(self);
        let id = task.lease.task;
        let lease = task.lease.clone();
        let (fut, handle) = abortable(async move {
            let counter = match task.kind {
                TaskKind::Run => &me.running_runs,
                TaskKind::Item => &me.running_items,
            };
            let _slot = Slot(counter);
            me.execute(task, claimed_at).await;
            if let Ok(mut h) = me.held.lock() {
                h.remove(&id);
            }
        });
        if let Ok(mut h) = self.held.lock() {
            h.insert(id, (lease, handle));
        }
        tasks.spawn(async move {
            // Aborted: the lease was lost or the worker stops.
            let _ = fut.await;
        });
    }

    /// Commits a finished item's result with the end of its task, batched
    /// with the other items finishing meanwhile (one transaction, one
    /// commit: the run's journal is numbered under its row lock, so one
    /// commit per item would serialize every item of a map on it).
    async fn commit(&self, run: RunId, lease: Lease, entry: FinalEntry) -> Result<(), Leave> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.commits
            .send(Commit {
                run,
                lease,
                entry,
                reply,
            })
            .map_err(|_| Leave::Retry("the worker is stopping".into()))?;
        match answer.await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(Leave::Fenced),
            Ok(Err(e)) => Err(Leave::Retry(e)),
            Err(_) => Err(Leave::Retry("the worker is stopping".into())),
        }
    }

    /// Takes what finished items wait to commit, a batch at a time.
    async fn committer(self: Arc<Self>) {
        let Some(mut rx) = self.commit_queue.lock().ok().and_then(|mut q| q.take()) else {
            return;
        };
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < 64 {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let mut by_run: HashMap<RunId, Vec<Commit>> = HashMap::new();
            for c in batch {
                by_run.entry(c.run).or_default().push(c);
            }
            for (run, group) in by_run {
                let items: Vec<(Lease, FinalEntry)> = group
                    .iter()
                    .map(|c| (c.lease.clone(), c.entry.clone()))
                    .collect();
                match self.queue().finish_items(&run, &items).await {
                    Ok(held) => {
                        for (c, h) in group.into_iter().zip(held) {
                            let _ = c.reply.send(Ok(h));
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        for c in group {
                            let _ = c.reply.send(Err(msg.clone()));
                        }
                    }
                }
            }
        }
    }

    /// Decides the gates whose deadline passed (twice a second), so a run
    /// waiting for a human goes on without one: deciding readies its task.
    async fn deadlines(self: Arc<Self>) {
        loop {
            tokio::time::sleep(DEADLINE_TICK).await;
            let now = chrono::TimeZone::timestamp_millis_opt(&chrono::Utc, (self.engine.clock)())
                .single()
                .unwrap_or_else(chrono::Utc::now);
            match crate::ops::apply_deadlines(self.store.as_ref(), None, now).await {
                Ok(fired) => {
                    for f in fired {
                        self.log(&format!(
                            "gate `{}` of run {}: its deadline passed ({})",
                            f.gate, f.run, f.action
                        ));
                    }
                }
                Err(e) => self.log(&format!("applying gate deadlines failed: {e}")),
            }
        }
    }

    async fn heartbeat(self: Arc<Self>) {
        let every = self.opts.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            let leases: Vec<Lease> = self
                .held
                .lock()
                .map(|h| h.values().map(|(l, _)| l.clone()).collect())
                .unwrap_or_default();
            match self.queue().renew(&leases, self.opts.lease).await {
                Ok(lost) => {
                    for id in lost {
                        let gone = self.held.lock().ok().and_then(|mut h| h.remove(&id));
                        if let Some((l, handle)) = gone {
                            handle.abort();
                            self.lost.fetch_add(1, Ordering::SeqCst);
                            tracing::info!(target: "spes::worker", task = l.task, epoch = l.epoch, "lease lost");
                            self.engine.metrics.lease_lost();
                            self.log(&format!(
                                "lease lost on task {} (epoch {}); task stopped",
                                l.task, l.epoch
                            ));
                        }
                    }
                }
                Err(e) => self.log(&format!("renewing leases failed: {e}")),
            }
        }
    }

    async fn execute(&self, task: Task, claimed_at: std::time::Instant) {
        let lease = task.lease.clone();
        let (task_kind, run_id, key) = (task.kind, task.run_id, task.key.clone());
        let outcome = match task.kind {
            TaskKind::Run => self.execute_run(&task).await,
            TaskKind::Item => self.execute_item(&task, claimed_at).await,
        };
        match outcome {
            Ok(()) => {}
            Err(Leave::Fenced) => {
                self.lost.fetch_add(1, Ordering::SeqCst);
                tracing::info!(target: "spes::worker", task = lease.task, epoch = lease.epoch, "lease lost: a late write was fenced");
                self.engine.metrics.lease_lost();
                self.log(&format!(
                    "task {} fenced (epoch {}): its late write changed nothing; task stopped",
                    lease.task, lease.epoch
                ));
            }
            Err(Leave::Fail(why)) => {
                // Taken again, it would fail the same way: fail it here.
                self.log(&format!("task {} failed: {why}", lease.task));
                let ended = match task_kind {
                    TaskKind::Run => self
                        .queue()
                        .finish_run(
                            &lease,
                            &run_id,
                            RunEvent::Abandon.from(),
                            RunEvent::Abandon.to(),
                            RunPatch {
                                error: Some(Some(why)),
                                owner: Some(None),
                                ..RunPatch::default()
                            },
                        )
                        .await
                        .map(|_| ()),
                    TaskKind::Item => {
                        let f = serde_json::to_string(&ItemFailure::new(key, why, false))
                            .unwrap_or_default();
                        self.queue()
                            .finish_item(&lease, &run_id, None, Some(&f))
                            .await
                    }
                };
                if let Err(e) = ended {
                    self.log(&format!(
                        "failing task {} failed ({e}); its lease expires",
                        lease.task
                    ));
                }
            }
            Err(Leave::Retry(why)) => {
                // A store problem: give the task back (after a pause, so
                // a flapping database is not hammered); it will be taken
                // again, and the journal answers what was done.
                self.log(&format!("task {} given back: {why}", lease.task));
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Err(e) = self.queue().release(&lease).await {
                    self.log(&format!(
                        "giving task {} back failed ({e}); its lease expires",
                        lease.task
                    ));
                }
            }
        }
    }

    async fn workflow(&self, run: &Run) -> Result<Arc<Workflow>, String> {
        self.loader.load(run).await
    }

    async fn execute_run(&self, task: &Task) -> Result<(), Leave> {
        let q = self.queue();
        let lease = &task.lease;
        let run = self
            .store
            .run(&task.run_id)
            .await?
            .ok_or_else(|| Leave::Retry(format!("run {} is gone", task.run_id)))?;
        if lifecycle::next(run.status, RunEvent::Take).is_err() {
            // Nothing to do (a user paused, cancelled or resumed it elsewhere).
            q.finish_item(lease, &run.id, None, None).await?;
            return Ok(());
        }
        let wf = match self.workflow(&run).await {
            Ok(wf) => wf,
            Err(why) => {
                q.finish_run(
                    lease,
                    &run.id,
                    RunEvent::Abandon.from(),
                    RunEvent::Abandon.to(),
                    RunPatch {
                        error: Some(Some(why)),
                        owner: Some(None),
                        ..RunPatch::default()
                    },
                )
                .await?;
                return Ok(());
            }
        };
        self.store
            .transition(
                &run.id,
                RunEvent::Take.from(),
                RunEvent::Take.to(),
                RunPatch {
                    error: Some(None),
                    owner: Some(Some(self.opts.id.clone())),
                    ..RunPatch::default()
                },
            )
            .await?;
        let journal = FencedJournal::open(self.store.clone(), run.id, lease.clone(), None)
            .await
            .map_err(Leave::from_journal)?;
        let walk = wf.walk();
        let keys_of = |want: fn(&StepKind) -> bool| -> HashSet<String> {
            walk.iter()
                .filter(|(_, s)| want(&s.kind))
                .map(|(k, _)| k.clone())
                .collect()
        };
        let maps = keys_of(|k| matches!(k, StepKind::Map(_)));
        let flows = keys_of(|k| matches!(k, StepKind::Workflow(_)));
        let ctx = match &run.inputs {
            Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        };
        // The provider the run was started with.
        let pinned = self.engine.pinned(&run.settings);
        let mut exec = Exec::new(
            pinned.as_ref().unwrap_or(&self.engine),
            ctx,
            Arc::new(journal),
            Some(Control::new(self.store.clone(), run.id)),
        );
        exec.dist = Some(Arc::new(Dist {
            store: self.store.clone(),
            run: run.id,
            lease: lease.clone(),
            maps,
            flows,
            poll: self.opts.poll.min(Duration::from_millis(100)),
        }));
        exec.budget = self.ledger(&run, &wf, true);
        let span = crate::durable::continued_span(&self.engine.tracer, &run, &wf);
        // A run queued while traces were exported begins its trace here:
        // this span is its root, and later executions (and its items, in
        // any worker) continue it.
        if run.settings.trace_queued
            && run.settings.trace_parent.is_none()
            && let Some(tp) = crate::telemetry::traceparent(&span)
        {
            let mut settings = run.settings.clone();
            settings.trace_parent = Some(tp);
            settings.trace_queued = false;
            self.store.set_settings(&run.id, &settings).await?;
        }
        // What this worker cached of the run for its items (its settings)
        // is read again: a resume may have changed them.
        if let Ok(mut c) = self.runs.lock() {
            c.remove(&run.id);
        }
        exec.span = span.clone();
        let result = exec.run_workflow(&wf).await;
        crate::telemetry::done(&span, &result);
        let (event, patch) = match result {
            // The store did not commit: give the task back (the journal
            // answers what was committed when it is taken again).
            Err(Stop::Store(e)) => return Err(Leave::Retry(e.to_string())),
            Ok(outcome) => (
                RunEvent::Complete,
                RunPatch {
                    output: Some(outcome.output.unwrap_or(Value::Null)),
                    owner: Some(None),
                    ..RunPatch::default()
                },
            ),
            Err(Stop::Failed(e) | Stop::Budget(e)) => {
                if let FailureKind::Journal(m) = &e.kind {
                    return Err(Leave::from_journal(m.clone()));
                }
                (
                    RunEvent::Fail,
                    RunPatch {
                        error: Some(Some(e.to_string())),
                        owner: Some(None),
                        ..RunPatch::default()
                    },
                )
            }
            Err(Stop::Suspended(_)) => (
                RunEvent::Suspend,
                RunPatch {
                    owner: Some(None),
                    ..RunPatch::default()
                },
            ),
            Err(Stop::Paused | Stop::Cancelled) => {
                q.finish_item(lease, &run.id, None, None).await?;
                return Ok(());
            }
        };
        q.finish_run(lease, &run.id, event.from(), event.to(), patch)
            .await?;
        self.runs_done.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// The run's budget ledger, shared by its executions in this worker
    /// (the spent total is read from the store before each call: other
    /// workers spend from the same budget). `fresh`: `run` was just read
    /// from the store, so its recorded budget replaces the ledger's; an
    /// item's cached copy of the run may be older than a resume that
    /// raised it, so it leaves the ledger's alone (the ledger reads the
    /// recorded budget again before it refuses a call).
    pub(super) fn ledger(
        &self,
        run: &Run,
        wf: &Workflow,
        fresh: bool,
    ) -> Option<Arc<crate::budget::Ledger>> {
        let b = run.settings.budget.or_else(|| self.engine.budget_for(wf))?;
        let Ok(mut all) = self.ledgers.lock() else {
            return Some(crate::budget::Ledger::shared(b, self.store.clone(), run.id));
        };
        if all.len() >= 256 && !all.contains_key(&run.id) {
            all.clear();
        }
        let l = all
            .entry(run.id)
            .or_insert_with(|| crate::budget::Ledger::shared(b, self.store.clone(), run.id));
        if fresh && l.budget() != b {
            l.set_budget(b);
        }
        Some(l.clone())
    }

    /// The run's pause/cancel watch shared by its items, knowing the
    /// status the claim read at `read_at`.
    fn control(&self, run: RunId, status: RunStatus, read_at: std::time::Instant) -> Control {
        let Ok(mut all) = self.controls.lock() else {
            return Control::new(self.store.clone(), run);
        };
        if all.len() >= 256 && !all.contains_key(&run) {
            all.clear();
        }
        let c = all
            .entry(run)
            .or_insert_with(|| Control::new(self.store.clone(), run))
            .clone();
        c.saw(status, read_at);
        c
    }

    /// The context a map's items see, recorded by the run (cached: it never changes).
    async fn item_context(&self, run: &RunId, map: &str) -> Result<Arc<Context>, Leave> {
        let k = (*run, map.to_owned());
        if let Some(c) = self.contexts.lock().ok().and_then(|c| c.get(&k).cloned()) {
            return Ok(c);
        }
        let entry = self
            .store
            .entry(run, &StepKey::from(map).ctx())
            .await?
            .ok_or_else(|| Leave::Retry(format!("the context of map `{map}` is not recorded")))?;
        let ctx =
            match Effect::from_entry(&entry.kind, &entry.payload).map_err(Leave::from_journal)? {
                Effect::Decision {
                    decision: Value::Object(m),
                } => Arc::new(m),
                _ => return Err(Leave::Retry(format!("`{map}#ctx` is not a context"))),
            };
        if let Ok(mut c) = self.contexts.lock() {
            if c.len() >= 64 {
                c.clear();
            }
            c.insert(k, ctx.clone());
        }
        Ok(ctx)
    }

    async fn execute_item(&self, task: &Task, claimed_at: std::time::Instant) -> Result<(), Leave> {
        if task.payload.get("workflow").is_some() {
            return self.execute_flow(task).await;
        }
        let q = self.queue();
        let lease = &task.lease;
        let p: ItemPayload = serde_json::from_value(task.payload.clone())
            .map_err(|e| Leave::Retry(format!("item payload: {e}")))?;
        let status = task.run_status;
        let cached = self
            .runs
            .lock()
            .ok()
            .and_then(|r| r.get(&task.run_id).cloned());
        let run = match cached {
            Some(r) => r,
            None => {
                let r = Arc::new(
                    self.store
                        .run(&task.run_id)
                        .await?
                        .ok_or_else(|| Leave::Retry(format!("run {} is gone", task.run_id)))?,
                );
                if let Ok(mut c) = self.runs.lock() {
                    if c.len() >= 256 {
                        c.clear();
                    }
                    c.insert(task.run_id, r.clone());
                }
                r
            }
        };
        let stopped =
            |what: &str| ItemFailure::new(task.key.clone(), format!("the run was {what}"), true);
        if status != RunStatus::Running {
            let f = serde_json::to_string(&stopped(status.as_str())).unwrap_or_default();
            q.finish_item(lease, &run.id, None, Some(&f)).await?;
            return Ok(());
        }
        let wf = self.workflow(&run).await.map_err(Leave::Retry)?;
        let walk = wf.walk();
        let Some((m, loc)) = walk.iter().find_map(|(k, s)| match &s.kind {
            StepKind::Map(m) if *k == p.map => Some((m, &s.loc)),
            _ => None,
        }) else {
            return Err(Leave::Retry(format!(
                "no map step `{}` in the workflow",
                p.map
            )));
        };
        let ctx = self.item_context(&run.id, &p.map).await?;
        // An item with nothing journaled under its key when claimed (the
        // usual case) starts empty: no read.
        let prefixes = if task.journaled {
            StepKey::from(task.key.as_str()).entry_prefixes().to_vec()
        } else {
            Vec::new()
        };
        let journal =
            FencedJournal::open(self.store.clone(), run.id, lease.clone(), Some(&prefixes))
                .await
                .map_err(Leave::from_journal)?;
        let pinned = self.engine.pinned(&run.settings);
        let mut exec = Exec::new(
            pinned.as_ref().unwrap_or(&self.engine),
            (*ctx).clone(),
            Arc::new(journal),
            Some(self.control(run.id, status, claimed_at)),
        );
        exec.budget = self.ledger(&run, &wf, false);
        let span = crate::telemetry::item_span(&self.engine.tracer, &run, &task.key);
        exec.span = span.clone();
        let r = exec
            .run_item(m, &p.map, p.index, p.item, p.depth, loc)
            .await;
        crate::telemetry::done(&span, &r);
        match r {
            Ok(v) => {
                let payload = serde_json::to_value(Effect::Item {
                    value: v.unwrap_or(Value::Null),
                })
                .map_err(|e| Leave::Retry(e.to_string()))?;
                let entry = FinalEntry {
                    key: StepKey::from(task.key.as_str()).result().into_string(),
                    kind: "item".into(),
                    payload,
                };
                self.commit(run.id, lease.clone(), entry).await?;
            }
            Err(Stop::Failed(e)) => {
                if let FailureKind::Journal(msg) = &e.kind {
                    return Err(Leave::from_journal(msg.clone()));
                }
                if m.on_error == OnError::FailFast {
                    let f = serde_json::to_string(&ItemFailure::of(&e)).unwrap_or_default();
                    q.finish_item(lease, &run.id, None, Some(&f)).await?;
                } else {
                    // `#error` is journaled: the map reports it as the item's failure.
                    q.finish_item(lease, &run.id, None, None).await?;
                }
            }
            Err(Stop::Store(e)) => return Err(Leave::Retry(e.to_string())),
            // The run's budget is spent: the map (and the run) stops, with
            // class `budget_exceeded`.
            Err(Stop::Budget(e)) => {
                let f = serde_json::to_string(&ItemFailure::of(&e)).unwrap_or_default();
                q.finish_item(lease, &run.id, None, Some(&f)).await?;
            }
            Err(other) => {
                let what = match other {
                    Stop::Paused => "paused",
                    Stop::Cancelled => "cancelled",
                    _ => "suspended",
                };
                let f = serde_json::to_string(&stopped(what)).unwrap_or_default();
                q.finish_item(lease, &run.id, None, Some(&f)).await?;
            }
        }
        self.items_done.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// How often a worker looks for gate deadlines that passed.
const DEADLINE_TICK: Duration = Duration::from_millis(500);

/// Why a task ended without finishing.
#[derive(Debug)]
pub(super) enum Leave {
    /// Its lease was lost: another worker has it; change nothing.
    Fenced,
    /// A store problem: give it back to be taken again.
    Retry(String),
    /// A problem that taking it again would meet again (a journal that
    /// holds something else than the workflow expects, a damaged entry):
    /// the task fails, naming it.
    Fail(String),
}

impl Leave {
    fn from_journal(e: JournalError) -> Self {
        match e {
            JournalError::Fenced(_) => Self::Fenced,
            JournalError::Unavailable(m) => Self::Retry(m),
            other => Self::Fail(other.to_string()),
        }
    }
}

impl From<StoreError> for Leave {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Fenced { .. } => Self::Fenced,
            other => Self::Retry(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_problem_that_would_recur_fails_the_task_instead_of_giving_it_back() {
        assert!(matches!(
            Leave::from_journal(JournalError::Fenced("x".into())),
            Leave::Fenced
        ));
        assert!(matches!(
            Leave::from_journal(JournalError::Unavailable("db away".into())),
            Leave::Retry(m) if m == "db away"
        ));
        for e in [
            JournalError::Mismatch("a decision where a model call was".into()),
            JournalError::Corrupt("bad json".into()),
        ] {
            assert!(matches!(Leave::from_journal(e), Leave::Fail(_)));
        }
    }
}
