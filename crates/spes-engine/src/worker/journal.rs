//! The journal of a task held under a lease: every write is fenced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use spes_store::queue::Lease;
use spes_store::{Appended, Entry, RunId, RunStore, StoreError};

use crate::journal::{Effect, Journal, JournalError, RecordError};

/// A run's journal as one task (the whole run, or one map item) sees it:
/// it loads what it needs up front, and records only while its lease holds.
#[derive(Debug)]
pub(crate) struct FencedJournal {
    store: Arc<dyn RunStore>,
    run: RunId,
    lease: Lease,
    cache: Mutex<HashMap<String, Effect>>,
}

/// A store error as the journal reports it (a lost lease is `Fenced`).
pub(crate) fn typed(e: &StoreError) -> JournalError {
    JournalError::from_store(e)
}

fn no_queue() -> JournalError {
    JournalError::Unavailable("the store has no work queue".to_owned())
}

impl FencedJournal {
    /// Opens the journal of `run`, loading every entry (`prefixes` = None)
    /// or only those under the given key prefixes (`Some(&[])`: none, for
    /// a task that had no entry when it was claimed).
    pub(crate) async fn open(
        store: Arc<dyn RunStore>,
        run: RunId,
        lease: Lease,
        prefixes: Option<&[String]>,
    ) -> Result<Self, JournalError> {
        let entries: Vec<Entry> = match prefixes {
            None => store.entries(&run).await.map_err(|e| typed(&e))?,
            Some([]) => Vec::new(),
            Some(ps) => {
                let q = store.queue().ok_or_else(no_queue)?;
                let ps: Vec<&str> = ps.iter().map(String::as_str).collect();
                q.entries_under(&run, &ps).await.map_err(|e| typed(&e))?
            }
        };
        let mut cache = HashMap::with_capacity(entries.len());
        for e in entries {
            cache.insert(e.key.clone(), Effect::from_entry(&e.kind, &e.payload)?);
        }
        Ok(Self {
            store,
            run,
            lease,
            cache: Mutex::new(cache),
        })
    }

    fn cached(&self, key: &str) -> Option<Effect> {
        self.cache.lock().ok().and_then(|c| c.get(key).cloned())
    }

    fn remember(&self, key: &str, effect: &Effect) {
        if let Ok(mut c) = self.cache.lock() {
            c.insert(key.to_owned(), effect.clone());
        }
    }
}

#[async_trait]
impl Journal for FencedJournal {
    fn scope(&self) -> Option<RunId> {
        Some(self.run)
    }

    async fn get(&self, key: &str) -> Result<Option<Effect>, JournalError> {
        Ok(self.cached(key))
    }

    async fn get_fresh(&self, key: &str) -> Result<Option<Effect>, JournalError> {
        if let Some(e) = self.cached(key) {
            return Ok(Some(e));
        }
        match self
            .store
            .entry(&self.run, key)
            .await
            .map_err(|e| typed(&e))?
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
        let q = self.store.queue().ok_or_else(no_queue)?;
        let payload = serde_json::to_value(&effect)
            .map_err(|e| JournalError::Corrupt(format!("the effect cannot be encoded: {e}")))?;
        let winner = match q
            .append_fenced(&self.lease, &self.run, key, effect.kind(), &payload)
            .await
            .map_err(|e| match e {
                StoreError::Fenced { .. } => RecordError::Journal(typed(&e)),
                other => RecordError::Store(other.to_string()),
            })? {
            Appended::New(_) => effect,
            Appended::Existing(entry) => Effect::from_entry(&entry.kind, &entry.payload)?,
        };
        self.remember(key, &winner);
        Ok(winner)
    }

    async fn refresh(&self, prefix: &str) -> Result<(), JournalError> {
        let q = self.store.queue().ok_or_else(no_queue)?;
        let entries = q
            .entries_under(&self.run, &[prefix])
            .await
            .map_err(|e| typed(&e))?;
        let mut parsed = Vec::with_capacity(entries.len());
        for e in entries {
            parsed.push((e.key, Effect::from_entry(&e.kind, &e.payload)?));
        }
        if let Ok(mut c) = self.cache.lock() {
            c.extend(parsed);
        }
        Ok(())
    }
}
