//! The journal: recorded effects by deterministic step key.
//!
//! Every effect (a model call, an `ask` decision, a human decision, a clock
//! read) goes through the run context, which looks the key up here first;
//! a recorded effect answers instantly, so a resumed run never repeats a
//! finished model call. [`MemoryJournal`] lives in one process;
//! [`StoreJournal`] commits to a [`RunStore`] before the workflow sees the
//! result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use spes_core::message::ChatResponse;
use spes_store::{Appended, RunId, RunStore};

/// A recorded effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Effect {
    /// A model call and its answer.
    Model {
        /// Provider name.
        provider: String,
        /// Model asked for (or the provider's default).
        model: Option<String>,
        /// SHA-256 of the request as sent (system, messages, settings).
        request_hash: String,
        /// Component references the prompt was built from.
        components: Vec<String>,
        /// The answer.
        response: ChatResponse,
        /// What the call cost in US dollars, when its model has a price.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost_usd: Option<f64>,
        /// The answer came from the response cache (no call was made).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cached: bool,
    },
    /// A human's (or a deadline's) decision at a gate.
    Decision {
        /// The decision, as recorded by the gate.
        decision: serde_json::Value,
    },
    /// A clock read, in milliseconds since the Unix epoch.
    Clock {
        /// Milliseconds since the epoch.
        at_ms: i64,
    },
    /// An http step's request and the response it got.
    Http {
        /// The method.
        method: String,
        /// The URL as sent (headers are never recorded).
        url: String,
        /// The response status.
        status: u16,
        /// The response body as the step's value (JSON, or text).
        body: serde_json::Value,
    },
    /// A tool call of an agent step and its result (as the model got it).
    Tool {
        /// The tool.
        name: String,
        /// The call's arguments.
        arguments: serde_json::Value,
        /// The result text.
        content: String,
        /// The result is an error (the model was told so).
        is_error: bool,
    },
    /// The result of a map item that a worker executed (`spes worker`),
    /// recorded with the end of its task.
    Item {
        /// The item step's value.
        value: serde_json::Value,
    },
}

impl Effect {
    /// The journal kind stored beside the payload.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Model { .. } => "model",
            Self::Decision { .. } => "decision",
            Self::Clock { .. } => "clock",
            Self::Item { .. } => "item",
            Self::Http { .. } => "http",
            Self::Tool { .. } => "tool",
        }
    }

    /// Reads a stored entry back. Gate decisions are stored by the store
    /// itself (kind `decision`, payload = the decision).
    pub fn from_entry(kind: &str, payload: &serde_json::Value) -> Result<Self, JournalError> {
        if kind == "decision" && payload.get("type").is_none() {
            return Ok(Self::Decision {
                decision: payload.clone(),
            });
        }
        serde_json::from_value(payload.clone()).map_err(|e| {
            JournalError::Corrupt(format!(
                "journal entry of kind `{kind}` cannot be read: {e}"
            ))
        })
    }
}

/// Why a journal could not answer or record: typed, so that what may pass
/// (a store away for a moment, a lease lost to another worker) is told
/// from what will not (a journal that holds something else than the
/// workflow expects, an entry that cannot be read back).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The task's lease was lost: another worker has it; this execution
    /// must change nothing more. Transient (the new holder goes on).
    #[error("lease lost: {0}")]
    Fenced(String),
    /// The store could not be read now (a connection lost, a lock held
    /// too long). Transient: a retry or a later resume may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// The journal holds something else under a key than this execution
    /// expects (the workflow changed under the run; a replay that would
    /// record). Terminal: asking again gives the same answer.
    #[error("journal mismatch: {0}")]
    Mismatch(String),
    /// An entry cannot be read back (bad JSON, an unknown kind).
    /// Terminal.
    #[error("damaged journal entry: {0}")]
    Corrupt(String),
}

impl JournalError {
    /// Transient (a retry, a later resume or another worker may succeed) or terminal.
    #[must_use]
    pub fn class(&self) -> spes_llm::ErrorClass {
        match self {
            Self::Fenced(_) | Self::Unavailable(_) => spes_llm::ErrorClass::Transient,
            Self::Mismatch(_) | Self::Corrupt(_) => spes_llm::ErrorClass::Terminal,
        }
    }

    /// A store that failed a read: [`JournalError::Fenced`] for a lost
    /// lease, else [`JournalError::Unavailable`].
    #[must_use]
    pub fn from_store(e: &spes_store::StoreError) -> Self {
        match e {
            spes_store::StoreError::Fenced { .. } => Self::Fenced(e.to_string()),
            spes_store::StoreError::Corrupt { .. } => Self::Corrupt(e.to_string()),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// Why [`Journal::record`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The run store did not commit the entry (a full disk, an I/O error,
    /// a read-only file, a lock held past its budget, a server that went
    /// away): the run stops at this step, whatever its policies say, and
    /// the effect's result is not used.
    #[error("{0}")]
    Store(String),
    /// The journal refused it (a lost lease, an entry of another kind
    /// under the key, an effect that cannot be encoded).
    #[error("{0}")]
    Journal(JournalError),
}

impl From<JournalError> for RecordError {
    fn from(e: JournalError) -> Self {
        Self::Journal(e)
    }
}

impl RecordError {
    /// How a step that met this error stops: a store failure stops the
    /// run ([`crate::run::Stop::Store`]), anything else fails the step.
    pub(crate) fn stop(self, step: &str, loc: &spes_core::workflow::Loc) -> crate::run::Stop {
        let e = |kind| crate::EngineError {
            step: step.to_owned(),
            loc: loc.clone(),
            kind,
        };
        match self {
            Self::Store(m) => crate::run::Stop::Store(e(crate::error::FailureKind::Store(m))),
            Self::Journal(j) => crate::run::Stop::Failed(e(crate::error::FailureKind::Journal(j))),
        }
    }
}

/// Where effects are recorded.
#[async_trait]
pub trait Journal: Send + Sync + std::fmt::Debug {
    /// The effect recorded under `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Effect>, JournalError>;
    /// Like [`Journal::get`], for a key that may rightly be absent (a
    /// decision written only in some runs, such as `KEY#served` under the
    /// default retry): a replay answers `None` instead of an error.
    async fn peek(&self, key: &str) -> Result<Option<Effect>, JournalError> {
        self.get(key).await
    }
    /// Like [`Journal::get`], but also sees entries another process
    /// recorded since this journal was opened (gate decisions).
    async fn get_fresh(&self, key: &str) -> Result<Option<Effect>, JournalError> {
        self.get(key).await
    }
    /// Records an effect, durably, before returning. If another writer
    /// recorded an effect under the same key first, that one is returned
    /// (and must be used): the first commit wins. Returns only after the
    /// entry is committed; a commit that failed is [`RecordError::Store`].
    async fn record(&self, key: &str, effect: Effect) -> Result<Effect, RecordError>;
    /// Reloads the entries whose keys start with `prefix` (written by
    /// other workers: map items). A journal that only this process writes
    /// has nothing to do.
    async fn refresh(&self, _prefix: &str) -> Result<(), JournalError> {
        Ok(())
    }
    /// The run this journal records (the scope of idempotency keys), if
    /// it belongs to one; an in-memory journal has an id of its own.
    fn scope(&self) -> Option<RunId> {
        None
    }
}

/// An in-memory journal (one process; nothing survives it).
#[derive(Debug)]
pub struct MemoryJournal {
    entries: Mutex<HashMap<String, Effect>>,
    /// This journal's own id (idempotency keys of its http requests).
    id: RunId,
}

impl Default for MemoryJournal {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            id: RunId::new(),
        }
    }
}

impl MemoryJournal {
    /// Number of recorded effects.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// True when nothing is recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of every entry.
    #[must_use]
    pub fn entries(&self) -> HashMap<String, Effect> {
        self.entries.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl Journal for MemoryJournal {
    async fn get(&self, key: &str) -> Result<Option<Effect>, JournalError> {
        self.entries
            .lock()
            .map(|e| e.get(key).cloned())
            .map_err(|_| JournalError::Unavailable("journal lock poisoned".to_owned()))
    }

    async fn record(&self, key: &str, effect: Effect) -> Result<Effect, RecordError> {
        let mut e = self
            .entries
            .lock()
            .map_err(|_| JournalError::Unavailable("journal lock poisoned".to_owned()))?;
        Ok(e.entry(key.to_owned()).or_insert(effect).clone())
    }

    fn scope(&self) -> Option<RunId> {
        Some(self.id)
    }
}

/// A journal in a [`RunStore`], for one run. Entries present when it is
/// opened are loaded at once (a resume reads the whole journal in one query).
#[derive(Debug)]
pub struct StoreJournal {
    store: Arc<dyn RunStore>,
    run: RunId,
    cache: Mutex<HashMap<String, Effect>>,
}

impl StoreJournal {
    /// Opens the journal of `run`, loading what is recorded.
    pub async fn open(store: Arc<dyn RunStore>, run: RunId) -> Result<Self, JournalError> {
        let mut cache = HashMap::new();
        for e in store
            .entries(&run)
            .await
            .map_err(|e| JournalError::from_store(&e))?
        {
            cache.insert(e.key.clone(), Effect::from_entry(&e.kind, &e.payload)?);
        }
        Ok(Self {
            store,
            run,
            cache: Mutex::new(cache),
        })
    }

    /// The run.
    #[must_use]
    pub fn run_id(&self) -> RunId {
        self.run
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn RunStore> {
        &self.store
    }

    /// Number of effects loaded or recorded through this journal.
    #[must_use]
    pub fn len(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// True when empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remember(&self, key: &str, effect: &Effect) {
        if let Ok(mut c) = self.cache.lock() {
            c.insert(key.to_owned(), effect.clone());
        }
    }
}

#[async_trait]
impl Journal for StoreJournal {
    fn scope(&self) -> Option<RunId> {
        Some(self.run)
    }

    async fn get(&self, key: &str) -> Result<Option<Effect>, JournalError> {
        // Everything recorded before this journal was opened is loaded, and
        // this process is the run's only executor (its owner): a miss means
        // "not recorded". Gate decisions, which other processes record, are
        // read with `get_fresh`.
        Ok(self.cache.lock().ok().and_then(|c| c.get(key).cloned()))
    }

    async fn get_fresh(&self, key: &str) -> Result<Option<Effect>, JournalError> {
        if let Some(e) = self.cache.lock().ok().and_then(|c| c.get(key).cloned()) {
            return Ok(Some(e));
        }
        match self
            .store
            .entry(&self.run, key)
            .await
            .map_err(|e| JournalError::from_store(&e))?
        {
            Some(entry) => {
                let effect = Effect::from_entry(&entry.kind, &entry.payload)?;
                self.remember(key, &effect);
                Ok(Some(effect))
            }
            None => Ok(None),
        }
    }

    async fn record(&self, key: &str, effect: Effect) -> Result<Effect, RecordError> {
        // Encoded once, straight to text (no `serde_json::Value` between).
        let payload = spes_store::Encoded::new(&effect)
            .map_err(|e| JournalError::Corrupt(format!("the effect cannot be encoded: {e}")))?;
        let winner = match self
            .store
            .append_encoded(&self.run, key, effect.kind(), payload)
            .await
            .map_err(|e| RecordError::Store(e.to_string()))?
        {
            Appended::New(_) => effect,
            Appended::Existing(entry) => Effect::from_entry(&entry.kind, &entry.payload)?,
        };
        self.remember(key, &winner);
        Ok(winner)
    }
}
