//! The work queue that many workers share: tasks claimed under a lease,
//! renewed by heartbeat, and fenced writes.
//!
//! A capability of some stores ([`crate::RunStore::queue`]): PostgreSQL
//! has it, SQLite (one machine, one process per run) does not.
//!
//! # A task's life
//! ```text
//!  state     event                          next      owner / epoch
//!  ready     claim (a worker)               claimed   owner = worker, epoch + 1, lease = now + L
//!  claimed   renew (its owner, same epoch)  claimed   lease = now + L
//!  claimed   lease expired, claim (another) claimed   owner = other, epoch + 1
//!  claimed   finish (owner, epoch, lease)   done      owner cleared
//!  claimed   fail (owner, epoch, lease)     failed    owner cleared, error kept
//!  claimed   release (owner)                ready     owner cleared
//!  done      enqueue again (runs only)      ready     (a gate was answered)
//!  failed    enqueue again                  ready     (the run is resumed)
//! ```
//! Every write a worker makes for a task (a journal entry, the end of the
//! task, the run's final status) is conditioned, in the same transaction,
//! on `owner = me AND epoch = mine AND lease not expired`: a worker that
//! lost its lease (a zombie, paused past its lease) changes nothing and
//! gets [`StoreError::Fenced`](crate::StoreError::Fenced).

use std::time::Duration;

use async_trait::async_trait;

use crate::{Appended, Entry, NewRun, Result, Run, RunId, RunPatch, RunStatus};

/// A claimed task, as its holder knows it: writes carry it as their fence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The task.
    pub task: i64,
    /// Who holds it (a worker id).
    pub owner: String,
    /// How many times the task was claimed; each claim increments it.
    pub epoch: i64,
}

/// What a task asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Execute (or continue) a whole run.
    Run,
    /// Execute one map item or one sub-workflow of a run (the run's task waits for it).
    Item,
}

impl TaskKind {
    /// Lowercase name, as stored.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::Item => "item",
        }
    }
}

/// A task a worker claimed.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The lease to present with every write.
    pub lease: Lease,
    /// The run it belongs to.
    pub run_id: RunId,
    /// Run or item.
    pub kind: TaskKind,
    /// The item's key prefix in the run's journal (`KEY/map[INDEX]`); empty for a run.
    pub key: String,
    /// What the item needs (opaque to the store).
    pub payload: serde_json::Value,
    /// The run's status when the task was claimed.
    pub run_status: RunStatus,
    /// Whether the run's journal held an entry under the task's key
    /// (`KEY/...` or `KEY#...`; any entry for a run task) when it was
    /// claimed. `false` lets an item start with an empty journal instead
    /// of reading it. An entry that another writer commits under the key
    /// after the claim is still found: the journal's first-commit-wins
    /// append gives it back in place of the new one.
    pub journaled: bool,
}

/// An item task to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    /// Its key prefix (`KEY/map[INDEX]`), unique within the run.
    pub key: String,
    /// What the executor needs.
    pub payload: serde_json::Value,
}

/// Where the items of one map stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemProgress {
    /// Items not finished yet (ready or claimed).
    pub open: u64,
    /// Finished items.
    pub done: u64,
    /// Failed items: key and error.
    pub failed: Vec<(String, String)>,
}

/// A journal entry written together with the end of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct FinalEntry {
    /// Its key.
    pub key: String,
    /// Its kind.
    pub kind: String,
    /// Its payload.
    pub payload: serde_json::Value,
}

/// The work queue. Every method is one transaction (concurrent
/// `append_fenced` calls of one process may share theirs).
#[async_trait]
pub trait TaskQueue: Send + Sync {
    /// Creates a run (normally `Pending`) and its run task, ready, at once.
    async fn create_queued_run(&self, run: &NewRun) -> Result<()>;

    /// Makes the run's task ready: creates it, or re-readies a finished or
    /// failed one (a gate was answered, the run is resumed). A task that is
    /// ready or claimed is left alone.
    async fn enqueue_run(&self, run: &RunId) -> Result<()>;

    /// Enqueues items of a run, idempotently by key; a failed item is made
    /// ready again. Fenced by the parent's lease.
    async fn enqueue_items(&self, parent: &Lease, run: &RunId, items: &[NewItem]) -> Result<()>;

    /// Claims up to `limit` tasks of `kind` that are ready or whose lease
    /// expired (`FOR UPDATE SKIP LOCKED`: workers never wait on each other).
    async fn claim(
        &self,
        owner: &str,
        kind: TaskKind,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Task>>;

    /// Extends the leases still held; returns the tasks whose lease was
    /// lost: taken over by another claim (a newer epoch) or expired while
    /// still claimed. A task that its holder ended meanwhile (finished,
    /// failed or given back under the same epoch) is not lost: a
    /// heartbeat that read its lease just before the end must not report
    /// it, nor abort the task that ended it.
    async fn renew(&self, leases: &[Lease], lease: Duration) -> Result<Vec<i64>>;

    /// [`RunStore::append`](crate::RunStore::append), only while `lease` holds.
    async fn append_fenced(
        &self,
        lease: &Lease,
        run: &RunId,
        key: &str,
        kind: &str,
        payload: &serde_json::Value,
    ) -> Result<Appended>;

    /// Ends an item task: writes `entry` (if any, first commit wins) and
    /// marks the task done, or failed with `error`.
    async fn finish_item(
        &self,
        lease: &Lease,
        run: &RunId,
        entry: Option<&FinalEntry>,
        error: Option<&str>,
    ) -> Result<()>;

    /// Ends several item tasks of one run as done, each with its result
    /// entry, in one transaction (one commit for all of them). Returns,
    /// per item, whether its lease held: a fenced item changes nothing.
    async fn finish_items(&self, run: &RunId, items: &[(Lease, FinalEntry)]) -> Result<Vec<bool>> {
        let mut held = Vec::with_capacity(items.len());
        for (lease, entry) in items {
            held.push(
                match self.finish_item(lease, run, Some(entry), None).await {
                    Ok(()) => true,
                    Err(crate::StoreError::Fenced { .. }) => false,
                    Err(e) => return Err(e),
                },
            );
        }
        Ok(held)
    }

    /// Ends a run task: [`RunStore::transition`](crate::RunStore::transition)
    /// and the task done, in one transaction, while `lease` holds.
    async fn finish_run(
        &self,
        lease: &Lease,
        run: &RunId,
        from: &[RunStatus],
        to: RunStatus,
        patch: RunPatch,
    ) -> Result<Run>;

    /// Gives a task back (ready at once) if `lease` still holds it.
    async fn release(&self, lease: &Lease) -> Result<()>;

    /// Gives back every task `owner` holds (a worker stopping); returns how many.
    async fn release_all(&self, owner: &str) -> Result<u64>;

    /// How many open tasks there are in each state (`ready`, `claimed`;
    /// states without tasks may be left out): the queue's depth.
    async fn task_counts(&self) -> Result<Vec<(String, u64)>>;

    /// Where the items of a run whose keys start with `prefix` stand.
    async fn item_progress(&self, run: &RunId, prefix: &str) -> Result<ItemProgress>;

    /// Whether any item of the run whose key starts with `prefix` is still
    /// open (ready or claimed): [`item_progress`](Self::item_progress)'s
    /// `open > 0`, without counting.
    async fn items_open(&self, run: &RunId, prefix: &str) -> Result<bool> {
        Ok(self.item_progress(run, prefix).await?.open > 0)
    }

    /// The state (`ready`, `claimed`, `done`, `failed`) and error of the
    /// run's task under exactly `key`, if there is one.
    async fn task_state(&self, run: &RunId, key: &str) -> Result<Option<(String, Option<String>)>>;

    /// The run's journal entries whose keys start with one of `prefixes`,
    /// in commit order (one query).
    async fn entries_under(&self, run: &RunId, prefixes: &[&str]) -> Result<Vec<Entry>>;

    /// Waits at most `max` for new work (a task made ready anywhere); may
    /// return early without any. The default just sleeps.
    async fn wait_for_work(&self, max: Duration) {
        tokio::time::sleep(max).await;
    }

    /// A state every worker shares (a circuit breaker's), with its version.
    async fn shared_state(&self, key: &str) -> Result<Option<(serde_json::Value, i64)>>;

    /// Writes a shared state if its version is still `expected` (`None`:
    /// it must not exist yet). False when another writer came first: read
    /// again and decide again.
    async fn put_shared_state(
        &self,
        key: &str,
        value: &serde_json::Value,
        expected: Option<i64>,
    ) -> Result<bool>;
}
