//! Domain types of the store (database rows stay private to each backend).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A run's id: a UUIDv7 (time-ordered). Never used as a file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RunId(pub Uuid);

impl RunId {
    /// A new time-ordered id.
    #[must_use]
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The first 8 hex digits, for display.
    #[must_use]
    pub fn short(&self) -> String {
        self.0.simple().to_string()[..8].to_owned()
    }
}

impl RunId {
    /// The id range `[low, high)` holding every id that starts with
    /// `id_or_prefix` (dashes and case ignored): ids are lowercase hex, so
    /// the prefix followed by `g` sorts after all of them, and a lookup is
    /// a range scan on the primary key. Used by the backends' `find_run`.
    ///
    /// # Errors
    ///
    /// [`crate::StoreError::NotFound`] when the prefix is shorter than 4
    /// hex digits, longer than an id, or not hex.
    pub(crate) fn prefix_range(id_or_prefix: &str) -> Result<(String, String), crate::StoreError> {
        let prefix: String = id_or_prefix
            .trim()
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        if prefix.len() < 4 || prefix.len() > 32 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(crate::StoreError::NotFound(format!(
                "no run `{id_or_prefix}`: give at least 4 hex digits of a run id"
            )));
        }
        let upper = format!("{prefix}g");
        Ok((prefix, upper))
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.simple())
    }
}

impl FromStr for RunId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

pub use spes_core::lifecycle::RunStatus;

/// A component a run resolved, pinned by content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentPin {
    /// `kind/name@version`.
    pub reference: String,
    /// Hex SHA-256 of the component file.
    pub sha256: String,
    /// Its file, as resolved when the run started.
    pub path: String,
}

/// A run to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// Id.
    pub id: RunId,
    /// Workflow name.
    pub workflow_name: String,
    /// The workflow file (absolute path).
    pub workflow_path: String,
    /// Hex SHA-256 of the workflow file.
    pub workflow_hash: String,
    /// The workflow file's text (to name the first differing step when it changes).
    pub workflow_source: String,
    /// Components resolved at start.
    pub pins: Vec<ComponentPin>,
    /// Bound inputs.
    pub inputs: serde_json::Value,
    /// Initial status (normally `Running` or `Pending`).
    pub status: RunStatus,
    /// Who is executing it (`host:pid`), if anyone.
    pub owner: Option<String>,
    /// What it was started with beyond its files and inputs (pinned).
    pub settings: RunSettings,
}

/// What a run was started with beyond its workflow, components and inputs:
/// pinned with the run, so that a resume (anywhere, by any worker) uses
/// the same.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// The provider of steps and agents that name none, as chosen at start
    /// (`--provider`, `SPES_PROVIDER`, or the project's default then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// What the run may spend on model calls (the workflow's `budget:`,
    /// `[defaults] budget`, `--budget`, as merged at start; raised by
    /// `spes resume --budget`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<spes_core::budget::Budget>,
    /// The W3C `traceparent` of the trace the run was started in, when
    /// traces were exported then: a resume (any process, any worker)
    /// continues that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
    /// Queued for workers while traces were exported, its trace not begun
    /// yet: the first traced execution's span is the root of the run's
    /// trace, and records its context in `trace_parent`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trace_queued: bool,
}

/// A stored run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Id.
    pub id: RunId,
    /// Workflow name.
    pub workflow_name: String,
    /// The workflow file.
    pub workflow_path: String,
    /// Hex SHA-256 of the workflow file at start.
    pub workflow_hash: String,
    /// The workflow text at start.
    pub workflow_source: String,
    /// Pinned components.
    pub pins: Vec<ComponentPin>,
    /// Inputs.
    pub inputs: serde_json::Value,
    /// What it was started with beyond its files and inputs (pinned).
    pub settings: RunSettings,
    /// Status.
    pub status: RunStatus,
    /// The result, once completed.
    pub output: Option<serde_json::Value>,
    /// The error, once failed.
    pub error: Option<String>,
    /// Who is executing it (`host:pid`), while running.
    pub owner: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// Fields a transition may set; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunPatch {
    /// Set the output.
    pub output: Option<serde_json::Value>,
    /// Set (`Some(Some(_))`) or clear (`Some(None)`) the error.
    pub error: Option<Option<String>>,
    /// Set or clear the owner.
    pub owner: Option<Option<String>>,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The run.
    pub run_id: RunId,
    /// Commit order within the run, from 1.
    pub seq: i64,
    /// The deterministic step key.
    pub key: String,
    /// `model`, `decision`, `clock`, `child`, ...
    pub kind: String,
    /// The recorded effect (opaque to the store).
    pub payload: serde_json::Value,
    /// When it was committed.
    pub recorded_at: DateTime<Utc>,
}

/// What [`crate::RunStore::append`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// Written, with this sequence number.
    New(i64),
    /// An entry with this key was already there (returned; nothing written).
    Existing(Entry),
}

/// A gate to open.
#[derive(Debug, Clone, PartialEq)]
pub struct NewGate {
    /// The run.
    pub run_id: RunId,
    /// The gate's stable id: its step key.
    pub key: String,
    /// `approval`, `choose`, `section`.
    pub kind: String,
    /// What the human is shown (text, options, ...).
    pub request: serde_json::Value,
    /// When the timeout path is taken, if ever.
    pub deadline: Option<DateTime<Utc>>,
}

/// A stored gate.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    /// The run.
    pub run_id: RunId,
    /// Stable id (step key).
    pub key: String,
    /// Kind.
    pub kind: String,
    /// What the human is shown.
    pub request: serde_json::Value,
    /// Deadline.
    pub deadline: Option<DateTime<Utc>>,
    /// Opened.
    pub opened_at: DateTime<Utc>,
    /// The decision, once made.
    pub decision: Option<serde_json::Value>,
    /// When it was decided.
    pub decided_at: Option<DateTime<Utc>>,
}

/// A page of runs: filters, newest first, and a keyset position (for
/// [`crate::RunStore::query_runs`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunQuery {
    /// Only runs with this status.
    pub status: Option<RunStatus>,
    /// Only runs of the workflow with this name.
    pub workflow: Option<String>,
    /// Only runs created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only runs created before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only runs that come after this one in the order (created time,
    /// then id, both descending): the last run of the previous page.
    pub after: Option<(DateTime<Utc>, RunId)>,
    /// At most this many.
    pub limit: u32,
}

/// What a run's model calls used, summed over its journal. Answers
/// served from the response cache spent nothing: they count in
/// `cached_calls` only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RunUsage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
    /// Model calls journaled (made, not served from the cache).
    pub model_calls: u64,
    /// US dollars, summed over the calls whose model has a price.
    #[serde(default)]
    pub cost_usd: f64,
    /// Answers served from the response cache.
    #[serde(default)]
    pub cached_calls: u64,
}

/// How `spes runs cost` groups model calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostBy {
    /// By workflow name.
    Workflow,
    /// By `provider/model`.
    Model,
    /// By UTC day of the call (`2026-12-06`).
    Day,
}

/// One group of `spes runs cost`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostRow {
    /// The workflow, `provider/model` or day.
    pub group: String,
    /// Model calls made (served from the cache: not counted).
    pub calls: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
    /// US dollars, over the calls whose model has a price.
    pub cost_usd: f64,
    /// Calls whose model had no price (their cost is unknown, not 0).
    pub unpriced_calls: u64,
}

/// The response cache's contents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Answers stored.
    pub entries: u64,
    /// Times a stored answer was served.
    pub hits: u64,
    /// Bytes of the stored answers.
    pub bytes: u64,
    /// When the oldest answer was stored.
    pub oldest: Option<DateTime<Utc>>,
    /// When the newest answer was stored.
    pub newest: Option<DateTime<Utc>>,
}

/// Reads the rows of a usage query (`run_id`, `input_tokens`,
/// `output_tokens`, `calls`), on either database.
pub(crate) fn usage_rows<R>(rows: &[R]) -> std::result::Result<Vec<(RunId, RunUsage)>, sqlx::Error>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> f64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: String = r.try_get("run_id")?;
        let Ok(id) = id.parse::<RunId>() else {
            continue;
        };
        let n = |c: &str| -> std::result::Result<u64, sqlx::Error> {
            let v: i64 = r.try_get(c)?;
            Ok(u64::try_from(v).unwrap_or(0))
        };
        out.push((
            id,
            RunUsage {
                input_tokens: n("input_tokens")?,
                output_tokens: n("output_tokens")?,
                model_calls: n("calls")?,
                cost_usd: r.try_get::<f64, _>("cost_usd")?,
                cached_calls: n("cached_calls")?,
            },
        ));
    }
    Ok(out)
}

/// Reads the rows of a cost query (`grp`, `calls`, `input_tokens`,
/// `output_tokens`, `cost_usd`, `unpriced`), on either database.
pub(crate) fn cost_rows<R>(rows: &[R]) -> std::result::Result<Vec<CostRow>, sqlx::Error>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> f64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let n = |c: &str| -> std::result::Result<u64, sqlx::Error> {
            let v: i64 = r.try_get(c)?;
            Ok(u64::try_from(v).unwrap_or(0))
        };
        out.push(CostRow {
            group: r.try_get::<Option<String>, _>("grp")?.unwrap_or_default(),
            calls: n("calls")?,
            input_tokens: n("input_tokens")?,
            output_tokens: n("output_tokens")?,
            cost_usd: r.try_get("cost_usd")?,
            unpriced_calls: n("unpriced")?,
        });
    }
    Ok(out)
}

/// Which gates to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GateFilter {
    /// Only this run's.
    pub run_id: Option<RunId>,
    /// Only undecided ones.
    pub pending_only: bool,
}

/// What [`crate::RunStore::decide_gate`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Decided {
    /// This call's decision was recorded.
    Now,
    /// The gate was already decided; here is the first decision.
    Already {
        /// The first decision.
        decision: serde_json::Value,
        /// When it was made.
        decided_at: DateTime<Utc>,
    },
}

/// A JSON value encoded as text, for [`crate::RunStore::append_encoded`].
/// Made only by [`Encoded::new`], so it always holds valid JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded(String);

impl Encoded {
    /// Encodes `value` as JSON.
    ///
    /// # Errors
    /// When `value`'s `Serialize` fails (a map with keys that are not
    /// strings, say).
    pub fn new<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::to_string(value).map(Self)
    }

    /// The JSON text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn into_string(self) -> String {
        self.0
    }
}
