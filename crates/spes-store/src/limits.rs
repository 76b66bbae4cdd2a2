//! Rate limits that many workers share: a provider's `rpm`/`tpm` buckets
//! and its `max_concurrency` slots, kept in the store so that every
//! process on it honours them together.
//!
//! A capability of some stores ([`crate::RunStore::rate_limits`]):
//! PostgreSQL has it; SQLite does not (one machine, where each process
//! keeps its own limits). `spes_llm::limit` consults it before each call
//! (through an adapter in `spes_engine::limits`).
//!
//! # Buckets (GCRA)
//! One row per provider and bucket (`rpm`, `tpm`) holds a *theoretical
//! arrival time* `tat`: the time at which the bucket would be full again.
//! A bucket of `P` units per minute (holding at most `P`) takes a cost of
//! `c` units in one statement, on the store's clock:
//! `tat = greatest(tat, now) + c * 60 s / P`; the caller waits
//! `tat - 60 s - now` (nothing when that is negative). Every caller's cost
//! is taken at once, in the order the statements commit: callers are
//! served first come, first served, and no caller retries.
//!
//! # Slots
//! `max_concurrency = N` is N slot rows per provider. A caller takes a
//! slot that is free or whose holder's lease ran out (`FOR UPDATE SKIP
//! LOCKED`: takers never wait on each other), renews its lease while its
//! call is in flight, and frees it after; a killed process's slot frees
//! itself when its lease runs out.

use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;

use crate::Result;

/// Rate limits shared through the store. Every method is one statement.
#[async_trait]
pub trait RateLimitStore: Send + Sync {
    /// Takes `cost` from `provider`'s bucket `bucket` (`rpm`, `tpm`),
    /// which holds `per_minute` units and refills evenly over a minute;
    /// answers how long the caller must wait before it sends (zero: at
    /// once). A `cost` above `per_minute` counts as `per_minute`.
    async fn reserve(
        &self,
        provider: &str,
        bucket: &str,
        per_minute: NonZeroU32,
        cost: NonZeroU32,
    ) -> Result<Duration>;

    /// Takes one of `provider`'s slots `0..max` for `holder` until `lease`
    /// from now: a free one, or one whose lease ran out. `None` when all
    /// are held.
    async fn try_acquire_slot(
        &self,
        provider: &str,
        max: NonZeroU32,
        holder: &str,
        lease: Duration,
    ) -> Result<Option<u32>>;

    /// Extends `holder`'s lease on `slot` to `lease` from now; false when
    /// the slot is not (or no longer) its own.
    async fn renew_slot(
        &self,
        provider: &str,
        slot: u32,
        holder: &str,
        lease: Duration,
    ) -> Result<bool>;

    /// Frees `slot` if `holder` holds it.
    async fn release_slot(&self, provider: &str, slot: u32, holder: &str) -> Result<()>;
}
