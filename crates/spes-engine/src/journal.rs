//! The journal: recorded effects by deterministic step key.
//!
//! Every effect (a model call, an `ask` decision) goes through the run
//! context, which looks the key up here first; a recorded effect answers
//! instantly, so a resumed run never repeats a finished model call. The
//! durable SQLite/PostgreSQL journals implement the same trait.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use spes_core::message::ChatResponse;

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
    },
}

/// Where effects are recorded.
#[async_trait]
pub trait Journal: Send + Sync + std::fmt::Debug {
    /// The effect recorded under `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Effect>, String>;
    /// Records an effect; it must be durable when this returns.
    async fn put(&self, key: &str, effect: &Effect) -> Result<(), String>;
}

/// An in-memory journal (one process, nothing survives it).
#[derive(Debug, Default)]
pub struct MemoryJournal {
    entries: Mutex<HashMap<String, Effect>>,
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
    async fn get(&self, key: &str) -> Result<Option<Effect>, String> {
        self.entries
            .lock()
            .map(|e| e.get(key).cloned())
            .map_err(|_| "journal lock poisoned".to_owned())
    }

    async fn put(&self, key: &str, effect: &Effect) -> Result<(), String> {
        self.entries
            .lock()
            .map(|mut e| {
                e.insert(key.to_owned(), effect.clone());
            })
            .map_err(|_| "journal lock poisoned".to_owned())
    }
}
