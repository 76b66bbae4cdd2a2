//! Budgets, prices and the response cache: what a model call may cost, what
//! it did cost, and whether it has to be made at all.
//!
//! A run's ledger is shared by every execution of the run in this
//! process (parallel branches, map items, sub-workflows). Before a call it
//! reserves the call's worst case (estimated prompt tokens plus `max_tokens`,
//! priced); after the call's journal entry commits, the reservation becomes
//! what the call really spent. A run resumed elsewhere starts from what its
//! journal says was spent. Workers sharing a run (`spes worker`) read the
//! spent total from the store before each call instead, so two workers
//! overspend together by at most the calls they have in flight; before
//! refusing a call they read the run's recorded budget again, so a limit
//! raised by `spes resume RUN --budget ...` holds at once in every worker.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use spes_core::budget::{Budget, Price, Spend, estimate_tokens};
use spes_core::message::{ChatRequest, ChatResponse, Usage};
use spes_store::{RunId, RunStore, RunUsage};

/// The `max_tokens` a budget estimate assumes for a request that sets none.
pub const ASSUMED_MAX_TOKENS: u64 = 4096;

/// Prices by provider name, then model name.
pub type Prices = BTreeMap<String, BTreeMap<String, Price>>;

/// The cost of a call, where its model has a price. `kind` is the
/// provider's adapter (`anthropic` reports cached prompt tokens apart from
/// `input_tokens`; the others count them inside).
#[must_use]
pub fn cost_of(
    prices: &Prices,
    provider: &str,
    kind: &str,
    model: Option<&str>,
    usage: &Usage,
) -> Option<f64> {
    let p = prices.get(provider)?.get(model?)?;
    Some(p.cost(usage, kind != "anthropic"))
}

/// What a run has spent, as the store sums its journal.
#[must_use]
pub fn spend_of(u: &RunUsage) -> Spend {
    Spend {
        tokens: u.input_tokens.saturating_add(u.output_tokens),
        cost: u.cost_usd,
        calls: u.model_calls,
    }
}

/// What one answer spent.
#[must_use]
pub fn spend_of_call(usage: &Usage, cost: Option<f64>) -> Spend {
    Spend {
        tokens: usage.input_tokens.saturating_add(usage.output_tokens),
        cost: cost.unwrap_or(0.0),
        calls: 1,
    }
}

/// The most `req` can spend: its prompt (estimated from its text) plus
/// its `max_tokens`, priced with `price` where there is one.
#[must_use]
pub fn worst_case(req: &ChatRequest, price: Option<&Price>) -> Spend {
    let mut prompt = req.system.as_deref().map_or(0, estimate_tokens);
    for m in &req.messages {
        prompt += estimate_tokens(&m.content);
        for r in &m.tool_results {
            prompt += estimate_tokens(&r.content);
        }
    }
    let answer = req.max_tokens.map_or(ASSUMED_MAX_TOKENS, u64::from);
    Spend {
        tokens: prompt.saturating_add(answer),
        cost: price.map_or(0.0, |p| p.worst_case(prompt, answer)),
        calls: 1,
    }
}

/// Where a run's spent total comes from.
enum Source {
    /// This process owns the run: the total lives here.
    Local,
    /// Workers share the run: the store's sum of the journal.
    Shared(Arc<dyn RunStore>, RunId),
}

#[derive(Default)]
struct State {
    /// The limits (a shared run's are read again from the store before a
    /// call is refused: a resume may have raised them).
    budget: Budget,
    /// Spent (local source only).
    spent: Spend,
    /// Reserved by calls in flight in this process.
    reserved: Spend,
}

/// One run's budget in this process.
pub(crate) struct Ledger {
    source: Source,
    state: Mutex<State>,
    /// Shared source: reservations and settlements happen one at a time,
    /// so a store read never misses a call that settled during it.
    turn: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("budget", &self.budget())
            .finish_non_exhaustive()
    }
}

/// A reservation: what a call in flight may spend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hold(Spend);

impl Ledger {
    /// A ledger for a run this process owns, which has spent `spent`
    /// already (its journal's total).
    pub(crate) fn local(budget: Budget, spent: Spend) -> Arc<Self> {
        Arc::new(Self {
            source: Source::Local,
            state: Mutex::new(State {
                budget,
                spent,
                reserved: Spend::default(),
            }),
            turn: tokio::sync::Mutex::new(()),
        })
    }

    /// A ledger for a run that workers share: the spent total is read from
    /// the store before each call.
    pub(crate) fn shared(budget: Budget, store: Arc<dyn RunStore>, run: RunId) -> Arc<Self> {
        Arc::new(Self {
            source: Source::Shared(store, run),
            state: Mutex::new(State {
                budget,
                ..State::default()
            }),
            turn: tokio::sync::Mutex::new(()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The limits now.
    pub(crate) fn budget(&self) -> Budget {
        self.state().budget
    }

    /// Replaces the limits (the run's recorded budget was read again).
    pub(crate) fn set_budget(&self, b: Budget) {
        self.state().budget = b;
    }

    /// Reserves `est` for a call, or says which limit it would exceed.
    pub(crate) async fn reserve(
        &self,
        est: Spend,
    ) -> Result<Result<Hold, String>, spes_store::StoreError> {
        match &self.source {
            Source::Local => {
                let mut s = self.state();
                if let Some(why) = s.budget.exceeded_by(s.spent.plus(s.reserved), est) {
                    return Ok(Err(why));
                }
                s.reserved = s.reserved.plus(est);
                Ok(Ok(Hold(est)))
            }
            Source::Shared(store, run) => {
                let _turn = self.turn.lock().await;
                let spent = store
                    .usage(std::slice::from_ref(run))
                    .await?
                    .first()
                    .map(|(_, u)| spend_of(u))
                    .unwrap_or_default();
                let over = {
                    let s = self.state();
                    s.budget.exceeded_by(spent.plus(s.reserved), est).is_some()
                };
                if over {
                    // A resume may have raised the limit since this
                    // ledger read it: the run's record decides.
                    let recorded = store.run(run).await?.and_then(|r| r.settings.budget);
                    if let Some(b) = recorded {
                        self.set_budget(b);
                    }
                }
                let mut s = self.state();
                if let Some(why) = s.budget.exceeded_by(spent.plus(s.reserved), est) {
                    return Ok(Err(why));
                }
                s.reserved = s.reserved.plus(est);
                Ok(Ok(Hold(est)))
            }
        }
    }

    /// Ends a reservation: the call spent `actual` (committed to the
    /// journal), or nothing (it failed, or its answer was not recorded).
    pub(crate) async fn settle(&self, hold: Hold, actual: Option<Spend>) {
        let _turn = match self.source {
            Source::Shared(..) => Some(self.turn.lock().await),
            Source::Local => None,
        };
        let mut s = self.state();
        s.reserved = s.reserved.minus(hold.0);
        if let (Source::Local, Some(a)) = (&self.source, actual) {
            s.spent = s.spent.plus(a);
        }
    }
}

/// The response cache of an engine: a store's cache table and how long its
/// answers stay usable.
#[derive(Clone)]
pub struct ResponseCache {
    pub(crate) store: Arc<dyn RunStore>,
    pub(crate) ttl: Duration,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl ResponseCache {
    /// Answers kept in `store`, usable for `ttl`.
    #[must_use]
    pub fn new(store: Arc<dyn RunStore>, ttl: Duration) -> Self {
        Self { store, ttl }
    }
}

/// Whether a request's answer may be cached: temperature 0 (set, not a
/// provider's default), and no tool turns (tools act on the world).
#[must_use]
pub fn cacheable(req: &ChatRequest) -> bool {
    req.temperature == Some(0.0) && req.tools.is_empty()
}

/// The cache key of a request: provider, model and the request's hash.
#[must_use]
pub fn cache_key(provider: &str, model: Option<&str>, request_hash: &str) -> String {
    let mut h = Sha256::new();
    for part in [provider, model.unwrap_or(""), request_hash] {
        h.update(part.len().to_le_bytes());
        h.update(part.as_bytes());
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A cached answer decoded, or `None` when the row does not hold one.
pub(crate) fn decode_cached(text: &str) -> Option<ChatResponse> {
    serde_json::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spes_store::sqlite::{SqliteOptions, SqliteStore};

    /// A shared ledger made with a stale budget (a worker's cached copy of
    /// the run) reads the run's recorded budget before it refuses a call:
    /// a limit raised since (`spes resume RUN --budget ...`) lets it through.
    #[tokio::test]
    async fn a_shared_ledger_reads_a_raised_budget_before_refusing() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn RunStore> = Arc::new(
            SqliteStore::open(&dir.path().join("s.db"), SqliteOptions::default())
                .await
                .unwrap(),
        );
        let mut run = spes_store::testing::sample_run();
        let none = Budget {
            calls: Some(0),
            ..Budget::default()
        };
        run.settings.budget = Some(none);
        store.create_run(&run).await.unwrap();
        let ledger = Ledger::shared(none, store.clone(), run.id);
        let one = Spend {
            calls: 1,
            ..Spend::default()
        };
        let why = ledger.reserve(one).await.unwrap().unwrap_err();
        assert!(why.contains("calls"), "{why}");
        let mut settings = run.settings.clone();
        settings.budget = Some(Budget {
            calls: Some(2),
            ..Budget::default()
        });
        store.set_settings(&run.id, &settings).await.unwrap();
        let hold = ledger.reserve(one).await.unwrap();
        assert!(hold.is_ok(), "{hold:?}");
        assert_eq!(ledger.budget().calls, Some(2));
    }
}
