//! spes run store: runs, their journals and their human gates, behind the
//! object-safe [`RunStore`] trait.
//!
//! SQLite is the embedded default (one file, WAL); PostgreSQL joins it for
//! many workers. Every backend runs the same conformance suite
//! (`spes_store::testing`, behind the `testing` feature).
//!
//! The journal is append-only: one entry per effect, unique per
//! `(run, key)`. [`RunStore::append`] returns only after the entry is
//! committed, so the engine can hand the result to the workflow knowing
//! that a crash will not lose it. A second append under the same key
//! does not overwrite: it returns the entry already there.
//!
//! ```
//! use spes_store::sqlite::{SqliteOptions, SqliteStore};
//! use spes_store::{Appended, NewRun, RunId, RunStatus, RunStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), spes_store::StoreError> {
//! # let dir = tempfile::tempdir().map_err(|e| spes_store::StoreError::Backend(e.to_string()))?;
//! let store = SqliteStore::open(&dir.path().join(".spes/spes.db"), SqliteOptions::default()).await?;
//! let run = NewRun {
//!     id: RunId::new(),
//!     workflow_name: "triage".into(),
//!     workflow_path: "/project/workflows/triage.yaml".into(),
//!     workflow_hash: "00".repeat(32),
//!     workflow_source: "name: triage".into(),
//!     pins: vec![],
//!     inputs: serde_json::json!({"text": "login throws NPE"}),
//!     status: RunStatus::Running,
//!     owner: None,
//!     settings: Default::default(),
//! };
//! store.create_run(&run).await?;
//! let result = serde_json::json!({"label": "bug"});
//! assert_eq!(store.append(&run.id, "classify", "model", &result).await?, Appended::New(1));
//! // Resume: the same key answers from the journal, nothing is written.
//! let again = store.append(&run.id, "classify", "model", &serde_json::json!("other")).await?;
//! assert!(matches!(again, Appended::Existing(e) if e.payload == result));
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod error;
mod group;
pub mod limits;
pub mod postgres;
pub mod queue;
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;
mod types;

use async_trait::async_trait;

pub use error::{Candidate, MAX_CANDIDATES, StoreError};
pub use types::{
    Appended, CacheStats, ComponentPin, CostBy, CostRow, Decided, Encoded, Entry, Gate, GateFilter,
    NewGate, NewRun, Run, RunId, RunPatch, RunQuery, RunSettings, RunStatus, RunUsage,
};

/// Opens the store named by `url`: `sqlite://PATH` (relative paths as
/// given) or `postgres://...`, with default options.
pub async fn open_url(url: &str) -> Result<std::sync::Arc<dyn RunStore>> {
    open_url_with(url, &OpenOptions::default()).await
}

/// How [`open_url_with`] opens a store: each backend's options.
#[derive(Clone, Default)]
pub struct OpenOptions {
    /// For `sqlite://` URLs.
    pub sqlite: sqlite::SqliteOptions,
    /// For `postgres://` URLs.
    pub postgres: postgres::PostgresOptions,
}

impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("sqlite", &self.sqlite)
            .finish_non_exhaustive()
    }
}

/// Opens the store named by `url` (`sqlite://PATH` or `postgres://...`)
/// with `opts`: the one place a URL chooses a backend.
pub async fn open_url_with(url: &str, opts: &OpenOptions) -> Result<std::sync::Arc<dyn RunStore>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(std::sync::Arc::new(
            postgres::PostgresStore::connect(url, opts.postgres.clone()).await?,
        ));
    }
    Ok(std::sync::Arc::new(
        sqlite::SqliteStore::open_url(url, opts.sqlite.clone()).await?,
    ))
}

/// The statuses [`RunStore::prune_runs`] deletes: the finished ones in
/// `statuses`, or all finished ones when it is empty.
#[must_use]
pub fn prunable(statuses: &[RunStatus]) -> Vec<RunStatus> {
    RunStatus::ALL
        .into_iter()
        .filter(|s| s.is_prunable() && (statuses.is_empty() || statuses.contains(s)))
        .collect()
}

/// Run ids as read back from a store.
pub(crate) fn parse_ids(ids: Vec<String>) -> Result<Vec<RunId>> {
    ids.into_iter()
        .map(|s| {
            s.parse::<RunId>()
                .map_err(|e| StoreError::Backend(format!("run id `{s}`: {e}")))
        })
        .collect()
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where runs live.
#[async_trait]
pub trait RunStore: Send + Sync + std::fmt::Debug {
    /// A short description for logs and `spes doctor`: backend, location, durability.
    fn describe(&self) -> String;

    /// Creates a run. Fails with [`StoreError::Conflict`] if the id exists.
    async fn create_run(&self, run: &NewRun) -> Result<()>;

    /// The run with this id.
    async fn run(&self, id: &RunId) -> Result<Option<Run>>;

    /// The run whose id is `id_or_prefix` or starts with it (at least 4
    /// characters); [`StoreError::NotFound`] or [`StoreError::Ambiguous`].
    async fn find_run(&self, id_or_prefix: &str) -> Result<Run>;

    /// Runs, newest first, optionally only those with `status`.
    async fn list_runs(&self, status: Option<RunStatus>, limit: u32) -> Result<Vec<Run>>;

    /// How many runs there are of each status (statuses without runs may
    /// be left out). The default counts [`list_runs`](Self::list_runs);
    /// the stores count in one query.
    async fn run_counts(&self) -> Result<Vec<(RunStatus, u64)>> {
        let mut out: Vec<(RunStatus, u64)> = Vec::new();
        for r in self.list_runs(None, u32::MAX).await? {
            match out.iter_mut().find(|(s, _)| *s == r.status) {
                Some((_, n)) => *n += 1,
                None => out.push((r.status, 1)),
            }
        }
        Ok(out)
    }

    /// A page of runs matching `query`, newest first (created time, then
    /// id, descending: a total order, so pages neither repeat nor skip a
    /// run that existed when the first page was read).
    async fn query_runs(&self, query: &RunQuery) -> Result<Vec<Run>>;

    /// Moves a run to `to` if its current status is one of `from` (compare
    /// and set), applying `patch`; returns the updated run. When the status
    /// is not in `from`, returns [`StoreError::Conflict`] naming it.
    async fn transition(
        &self,
        id: &RunId,
        from: &[RunStatus],
        to: RunStatus,
        patch: RunPatch,
    ) -> Result<Run>;

    /// Takes a run over for the process `owner`: moves it to `running`
    /// owned by `owner` only if it still has the status `from` and the
    /// owner `expected_owner` that the caller read (compare-and-set on
    /// both, in one transaction). Of two processes claiming the same run,
    /// one wins; the other gets [`StoreError::Claimed`] naming the run's
    /// status and owner now. The error is cleared.
    async fn claim_run(
        &self,
        id: &RunId,
        from: RunStatus,
        expected_owner: Option<&str>,
        owner: &str,
    ) -> Result<Run>;

    /// Appends a journal entry under `key`, committed before returning.
    /// If an entry with that key exists, nothing is written and the
    /// existing entry is returned.
    async fn append(
        &self,
        id: &RunId,
        key: &str,
        kind: &str,
        payload: &serde_json::Value,
    ) -> Result<Appended> {
        let payload = Encoded::new(payload)
            .map_err(|e| StoreError::Backend(format!("cannot encode payload: {e}")))?;
        self.append_encoded(id, key, kind, payload).await
    }

    /// [`RunStore::append`] with the payload encoded by the caller, straight
    /// from its own type: no [`serde_json::Value`] is built on the way (the
    /// engine's journal commits every effect this way).
    async fn append_encoded(
        &self,
        id: &RunId,
        key: &str,
        kind: &str,
        payload: Encoded,
    ) -> Result<Appended>;

    /// The entry under `key`.
    async fn entry(&self, id: &RunId, key: &str) -> Result<Option<Entry>>;

    /// Every entry of a run, in commit order.
    async fn entries(&self, id: &RunId) -> Result<Vec<Entry>>;

    /// What the model calls of each of `runs` used (its `model` entries'
    /// `response.usage`), in one query; runs without a model call are
    /// absent.
    async fn usage(&self, runs: &[RunId]) -> Result<Vec<(RunId, RunUsage)>>;

    /// The run's entries with `seq` above `after`, in commit order, at most
    /// `limit` of them (one indexed range read: what a live view polls).
    async fn entries_after(&self, id: &RunId, after: i64, limit: usize) -> Result<Vec<Entry>>;

    /// Opens a human gate (idempotent: opening an open or decided gate again changes nothing).
    async fn open_gate(&self, gate: &NewGate) -> Result<()>;

    /// Decides a gate: atomically records the decision on the gate and as
    /// the journal entry under the gate's key (kind `decision`). A gate
    /// that is already decided is left alone and its first decision
    /// returned. Deciding a gate that was never opened is
    /// [`StoreError::NotFound`].
    async fn decide_gate(
        &self,
        id: &RunId,
        key: &str,
        decision: &serde_json::Value,
    ) -> Result<Decided>;

    /// Gates, oldest first.
    async fn gates(&self, filter: &GateFilter) -> Result<Vec<Gate>>;

    /// Deletes finished runs (`completed`, `failed`, `cancelled`; `statuses`
    /// narrows them, and unfinished statuses in it are ignored) last updated
    /// before `before`, with their journal entries and gates, in one
    /// statement; returns their ids in id order. With `dry_run` nothing is
    /// deleted: the ids are those that would be. `pending`, `running`,
    /// `waiting` and `paused` runs are never deleted. Stores that cannot
    /// delete say so with [`StoreError::Backend`].
    async fn prune_runs(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        statuses: &[RunStatus],
        dry_run: bool,
    ) -> Result<Vec<RunId>> {
        let _ = (before, statuses, dry_run);
        Err(StoreError::Backend(format!(
            "{} cannot prune runs",
            self.describe()
        )))
    }

    /// Only the run's status (cheaper than [`RunStore::run`]; checked before each model call).
    async fn status(&self, id: &RunId) -> Result<Option<RunStatus>> {
        Ok(self.run(id).await?.map(|r| r.status))
    }

    /// Whether this store's journal commits read the run's status inside
    /// their own transaction (see [`RunStore::status_read_by_commit`]). A
    /// caller that wants the status after a commit then asks for it after
    /// the commit instead of reading it on another connection beside it.
    fn commits_read_status(&self) -> bool {
        false
    }

    /// The run's status as read inside the last successful journal commit
    /// of this handle for the run, if that commit began at or after
    /// `since`; `None` otherwise (and always, for stores whose commits do
    /// not read it).
    fn status_read_by_commit(&self, id: &RunId, since: std::time::Instant) -> Option<RunStatus> {
        let _ = (id, since);
        None
    }

    /// The shared work queue, for stores that many workers can share
    /// (PostgreSQL); `None` for single-machine stores.
    fn queue(&self) -> Option<&dyn queue::TaskQueue> {
        None
    }

    /// The rate limits every process on the store shares, for stores that
    /// many workers can share (PostgreSQL); `None` for single-machine
    /// stores, where each process keeps its own.
    fn rate_limits(&self) -> Option<&dyn limits::RateLimitStore> {
        None
    }

    /// Closes the store's connections (SQLite checkpoints its WAL into the
    /// main file when the last connection closes). Calls after this fail.
    async fn close(&self) {}

    /// Replaces what the run was started with beyond its files and inputs
    /// (`spes resume --budget` raises a budget this way).
    async fn set_settings(&self, id: &RunId, settings: &RunSettings) -> Result<()>;

    /// Model calls of runs created at or after `since` (all runs when
    /// `None`), grouped by `by`, largest cost first.
    async fn costs(
        &self,
        since: Option<chrono::DateTime<chrono::Utc>>,
        by: CostBy,
    ) -> Result<Vec<CostRow>>;

    /// The response cache's answer stored under `key`, if it was stored
    /// within `max_age`; counts a hit when there is one.
    async fn cache_get(&self, key: &str, max_age: std::time::Duration) -> Result<Option<String>>;

    /// Stores an answer (JSON text) in the response cache under `key`,
    /// replacing one stored there before.
    async fn cache_put(
        &self,
        key: &str,
        provider: &str,
        model: Option<&str>,
        response: &str,
    ) -> Result<()>;

    /// Deletes cached answers (those stored before `older_than` ago, or
    /// all); returns how many.
    async fn cache_clear(&self, older_than: Option<std::time::Duration>) -> Result<u64>;

    /// What the response cache holds.
    async fn cache_stats(&self) -> Result<CacheStats>;
}
