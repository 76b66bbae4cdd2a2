//! Providers' rate limits shared through the run store: the adapter from
//! a store's `RateLimitStore` (`spes_store::limits`) to
//! `spes_llm`'s [`SharedLimits`], and [`share_through`], which installs it
//! for the process (see `spes_llm::limit`).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use spes_llm::limit::{RateKind, SharedLimits};
use spes_store::RunStore;
use spes_store::limits::RateLimitStore;

/// A store's shared rate limits, as `spes_llm` consults them.
#[derive(Debug, Clone)]
pub struct StoreLimits {
    store: Arc<dyn RunStore>,
}

impl StoreLimits {
    /// The limits of `store`, if it shares them (PostgreSQL).
    #[must_use]
    pub fn new(store: Arc<dyn RunStore>) -> Option<Self> {
        store.rate_limits().is_some().then_some(Self { store })
    }

    fn limits(&self) -> Result<&dyn RateLimitStore, String> {
        self.store
            .rate_limits()
            .ok_or_else(|| format!("{} does not share rate limits", self.store.describe()))
    }
}

#[async_trait]
impl SharedLimits for StoreLimits {
    async fn reserve(
        &self,
        provider: &str,
        kind: RateKind,
        per_minute: NonZeroU32,
        cost: NonZeroU32,
    ) -> Result<Duration, String> {
        self.limits()?
            .reserve(provider, kind.as_str(), per_minute, cost)
            .await
            .map_err(|e| e.to_string())
    }

    async fn try_acquire(
        &self,
        provider: &str,
        max: NonZeroU32,
        holder: &str,
        lease: Duration,
    ) -> Result<Option<u32>, String> {
        self.limits()?
            .try_acquire_slot(provider, max, holder, lease)
            .await
            .map_err(|e| e.to_string())
    }

    async fn renew(
        &self,
        provider: &str,
        slot: u32,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, String> {
        self.limits()?
            .renew_slot(provider, slot, holder, lease)
            .await
            .map_err(|e| e.to_string())
    }

    async fn release(&self, provider: &str, slot: u32, holder: &str) -> Result<(), String> {
        self.limits()?
            .release_slot(provider, slot, holder)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Makes this process's remote providers honour their `rpm`, `tpm` and
/// `max_concurrency` together with every other process on `store`, when
/// the store shares them (PostgreSQL); returns whether it does. Other
/// stores leave the limits per process.
pub fn share_through(store: &Arc<dyn RunStore>) -> bool {
    match StoreLimits::new(store.clone()) {
        Some(l) => {
            spes_llm::limit::share_limits(Some(Arc::new(l)));
            true
        }
        None => false,
    }
}
