//! Proactive rate limits: `rpm`, `tpm` and `max_concurrency` of a
//! `[providers.NAME]` table, enforced *before* a request is sent, so that a
//! provider's budget is kept instead of learnt from its 429s.
//!
//! - `rpm`: a token bucket (GCRA, the `governor` crate) of `rpm` requests
//!   refilled evenly over a minute (one every `60 / rpm` s; a full bucket
//!   lets `rpm` go at once).
//! - `tpm`: a token bucket of `tpm` tokens refilled the same way; a call
//!   takes its estimate ([`estimate_tokens`]) from it before it is sent. An
//!   estimate above `tpm` takes the whole bucket (it waits for a full one).
//! - `max_concurrency`: a semaphore of that many permits, held from before
//!   the request until its answer (or error) is read.
//!
//! A call waits for a concurrency permit first, then for `rpm`, then for
//! `tpm`; a call that had to wait logs one `tracing` event (target
//! `spes::provider`) naming the provider, the limit and the wait.
//! [`Limiter::shared`] hands every provider built from the same table in
//! the process (a server builds its providers per run) the same limiter.
//!
//! # Across processes
//! A process whose run store can share them ([`share_limits`]: `spes
//! worker`, `spes run` and `spes serve` on PostgreSQL) also takes every
//! limit of a remote provider (kinds `anthropic` and `openai`) from a
//! [`SharedLimits`] backend, so that all those processes together honour
//! it:
//! - `rpm`/`tpm`: after the local bucket, the call *reserves* its cost in
//!   the shared bucket ([`SharedLimits::reserve`], one atomic statement
//!   over a GCRA "theoretical arrival time" on the store's clock) and
//!   sleeps for the wait the backend answers. Reservations are never given
//!   back: a process that dies while waiting only wastes its share.
//! - `max_concurrency`: after the local permit (so that one process never
//!   asks for more than `max_concurrency` slots at once), the call takes
//!   one of the provider's `max_concurrency` shared slots
//!   ([`SharedLimits::try_acquire`]), polling with backoff (5 ms doubling
//!   to 100 ms; at once when a slot of this process is freed) while none
//!   is free. A slot is held under a lease of [`SLOT_LEASE`], renewed
//!   every third of it while the call is in flight, and given back when
//!   its answer is read; a killed process's slots free themselves when
//!   their lease runs out.
//! - A backend error (the store unreachable past its own retries) is not
//!   a reason to skip the limit: the call fails as a transient
//!   [`ProviderErrorKind::RateLimited`] error, which the step's `retry`
//!   policy retries.
//!
//! `local` and `scripted` providers run inside the process: their limits
//! stay per process. Without a backend (SQLite stores, `spes worker
//! --local-limits`), each process keeps its own limits: N processes may
//! together send N times them.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use spes_core::config::RateLimits;
use spes_core::message::{ChatRequest, ChatResponse};

use crate::error::{ProviderError, ProviderErrorKind};
use crate::provider::{CallContext, Provider};

/// The `max_tokens` a token estimate assumes when neither the request nor
/// the provider sets one.
pub const ESTIMATE_MAX_TOKENS: u32 = 1024;

/// The tokens a request is counted for against `tpm` before it is sent:
/// its prompt's characters (system text, messages, tool results) divided
/// by 4, rounded up, plus its `max_tokens` (else `default_max_tokens`,
/// else [`ESTIMATE_MAX_TOKENS`]).
#[must_use]
pub fn estimate_tokens(req: &ChatRequest, default_max_tokens: Option<u32>) -> u64 {
    let chars: usize = req.system.as_deref().map_or(0, |s| s.chars().count())
        + req
            .messages
            .iter()
            .map(|m| {
                m.content.chars().count()
                    + m.tool_results
                        .iter()
                        .map(|r| r.content.chars().count())
                        .sum::<usize>()
            })
            .sum::<usize>();
    let max = req
        .max_tokens
        .or(default_max_tokens)
        .unwrap_or(ESTIMATE_MAX_TOKENS);
    (chars as u64).div_ceil(4) + u64::from(max)
}

/// A clock on tokio's time, so that the buckets follow a paused test clock.
#[derive(Debug, Clone, Copy, Default)]
struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>;

fn bucket(per_minute: NonZeroU32) -> Bucket {
    RateLimiter::new(
        Quota::per_minute(per_minute),
        InMemoryState::default(),
        TokioClock,
    )
}

/// Takes `n` cells from `b` (at most its burst), waiting as long as it takes.
/// Returns how long it waited.
async fn take(b: &Bucket, n: NonZeroU32, burst: NonZeroU32) -> Duration {
    let n = n.min(burst);
    let start = tokio::time::Instant::now();
    loop {
        match b.check_n(n) {
            Ok(Ok(())) => return start.elapsed(),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(TokioClock.now());
                tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
            }
            // `n` is capped at the burst above: cannot happen; do not wait forever.
            Err(_) => return start.elapsed(),
        }
    }
}

/// A bucket of the limits shared across processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateKind {
    /// `rpm`: requests.
    Requests,
    /// `tpm`: estimated tokens.
    Tokens,
}

impl RateKind {
    /// `rpm` or `tpm`, as stored and logged.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "rpm",
            Self::Tokens => "tpm",
        }
    }
}

/// How long a shared concurrency slot stays held without a renewal (a
/// call in flight renews it every third of this).
pub const SLOT_LEASE: Duration = Duration::from_secs(30);

/// The most a call waiting for a shared concurrency slot sleeps between
/// two tries.
const SLOT_POLL_MAX: Duration = Duration::from_millis(100);

/// Rate limits shared by many processes: a store that all of them reach
/// (see the [module docs](self)). Errors are messages.
#[async_trait]
pub trait SharedLimits: Send + Sync + fmt::Debug {
    /// Takes `cost` (at most `per_minute`) from `provider`'s bucket
    /// `kind`, which holds `per_minute` units and refills them evenly over
    /// a minute; answers how long the caller must wait before it sends
    /// (zero: at once). The cost is taken whether or not the caller waits.
    async fn reserve(
        &self,
        provider: &str,
        kind: RateKind,
        per_minute: NonZeroU32,
        cost: NonZeroU32,
    ) -> Result<Duration, String>;

    /// Takes one of `provider`'s `max` concurrency slots for `holder`
    /// until `lease` from now: a free one, or one whose holder's lease ran
    /// out. `None` when all of them are held.
    async fn try_acquire(
        &self,
        provider: &str,
        max: NonZeroU32,
        holder: &str,
        lease: Duration,
    ) -> Result<Option<u32>, String>;

    /// Extends `holder`'s lease on `slot` to `lease` from now; false when
    /// the slot is no longer its own (the lease ran out and another took it).
    async fn renew(
        &self,
        provider: &str,
        slot: u32,
        holder: &str,
        lease: Duration,
    ) -> Result<bool, String>;

    /// Frees `slot` if `holder` still holds it.
    async fn release(&self, provider: &str, slot: u32, holder: &str) -> Result<(), String>;
}

/// The backend of [`share_limits`].
static BACKEND: RwLock<Option<Arc<dyn SharedLimits>>> = RwLock::new(None);

/// Makes the limiters of this process's remote providers take their
/// limits from `backend` too, from their next call on (`None`: back to
/// per-process limits). See the [module docs](self).
pub fn share_limits(backend: Option<Arc<dyn SharedLimits>>) {
    if let Ok(mut b) = BACKEND.write() {
        *b = backend;
    }
}

/// The backend [`share_limits`] installed, if any.
#[must_use]
pub fn shared_limits() -> Option<Arc<dyn SharedLimits>> {
    BACKEND.read().ok().and_then(|b| b.clone())
}

/// A holder id for one shared slot, unique across processes and machines
/// (process id, start time, and a counter).
fn holder_id() -> String {
    static PROCESS: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let process = PROCESS.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
    });
    format!("{process}:{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A shared concurrency slot held by a call in flight: renewed while
/// held, freed (and this process's waiters woken) when dropped.
#[derive(Debug)]
struct SharedSlot {
    backend: Arc<dyn SharedLimits>,
    provider: String,
    slot: u32,
    holder: String,
    freed: Arc<tokio::sync::Notify>,
    renewer: tokio::task::JoinHandle<()>,
}

impl SharedSlot {
    fn new(
        backend: Arc<dyn SharedLimits>,
        provider: &str,
        slot: u32,
        holder: String,
        freed: Arc<tokio::sync::Notify>,
    ) -> Self {
        let (b, p, h) = (backend.clone(), provider.to_owned(), holder.clone());
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(SLOT_LEASE / 3).await;
                match b.renew(&p, slot, &h, SLOT_LEASE).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(target: "spes::provider", provider = p, slot, "a shared max_concurrency slot was lost while its call was in flight (its lease ran out)");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(target: "spes::provider", provider = p, slot, error = %e, "could not renew a shared max_concurrency slot; trying again");
                    }
                }
            }
        });
        Self {
            backend,
            provider: provider.to_owned(),
            slot,
            holder,
            freed,
            renewer,
        }
    }
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        self.renewer.abort();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime left: the slot frees itself when its lease runs out.
            return;
        };
        let (b, p, h, slot, freed) = (
            self.backend.clone(),
            std::mem::take(&mut self.provider),
            std::mem::take(&mut self.holder),
            self.slot,
            self.freed.clone(),
        );
        rt.spawn(async move {
            if let Err(e) = b.release(&p, slot, &h).await {
                tracing::warn!(target: "spes::provider", provider = p, slot, error = %e, "could not free a shared max_concurrency slot; it frees itself when its lease runs out");
            }
            freed.notify_waiters();
        });
    }
}

/// Where a limiter's limits hold beyond this process.
#[derive(Debug)]
enum Across {
    /// Nowhere: this process only.
    Never,
    /// Through the backend [`share_limits`] installed, if any.
    Installed,
    /// Through this backend.
    Backend(Arc<dyn SharedLimits>),
}

/// Every provider's limiter in this process, by name, limits and whether
/// it may share them.
type Limiters = HashMap<(String, RateLimits, bool), Arc<Limiter>>;

/// The limits of one provider in this process: see the [module docs](self).
pub struct Limiter {
    limits: RateLimits,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    slots: Option<Arc<tokio::sync::Semaphore>>,
    across: Across,
    /// Notified when a shared slot of this limiter is freed.
    freed: Arc<tokio::sync::Notify>,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("limits", &self.limits)
            .field("across", &self.across)
            .finish_non_exhaustive()
    }
}

/// What a call holds while it is in flight (its concurrency permit and
/// shared slot).
#[derive(Debug)]
pub struct Admission {
    _slot: Option<SharedSlot>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// How long the call waited for the limits.
    pub waited: Duration,
}

/// Adds `what` to `list` once.
fn note(list: &mut Vec<&'static str>, what: &'static str) {
    if !list.contains(&what) {
        list.push(what);
    }
}

impl Limiter {
    /// A limiter of its own, for this process only.
    #[must_use]
    pub fn new(limits: RateLimits) -> Self {
        Self::with_across(limits, Across::Never)
    }

    /// A limiter of its own whose limits also hold through `backend`.
    #[must_use]
    pub fn with_backend(limits: RateLimits, backend: Arc<dyn SharedLimits>) -> Self {
        Self::with_across(limits, Across::Backend(backend))
    }

    fn with_across(limits: RateLimits, across: Across) -> Self {
        Self {
            limits,
            requests: limits.rpm.map(bucket),
            tokens: limits.tpm.map(bucket),
            slots: limits
                .max_concurrency
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n.get() as usize))),
            across,
            freed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The limiter of provider `name` in this process: the same one for
    /// every call with the same name and limits (changed limits start a
    /// new one). Its limits also hold through the backend of
    /// [`share_limits`], when one is installed.
    #[must_use]
    pub fn shared(name: &str, limits: RateLimits) -> Arc<Self> {
        Self::process(name, limits, true)
    }

    /// [`Limiter::shared`]; `across`: whether it may use the backend of
    /// [`share_limits`] (not for providers that run inside the process).
    fn process(name: &str, limits: RateLimits, across: bool) -> Arc<Self> {
        static ALL: OnceLock<Mutex<Limiters>> = OnceLock::new();
        let all = ALL.get_or_init(Mutex::default);
        let make = || {
            Arc::new(Self::with_across(
                limits,
                if across {
                    Across::Installed
                } else {
                    Across::Never
                },
            ))
        };
        match all.lock() {
            Ok(mut m) => m
                .entry((name.to_owned(), limits, across))
                .or_insert_with(make)
                .clone(),
            Err(_) => make(),
        }
    }

    /// Its limits.
    #[must_use]
    pub fn limits(&self) -> RateLimits {
        self.limits
    }

    /// The backend its limits hold through now, if any.
    fn backend(&self) -> Option<Arc<dyn SharedLimits>> {
        match &self.across {
            Across::Never => None,
            Across::Installed => shared_limits(),
            Across::Backend(b) => Some(b.clone()),
        }
    }

    /// Waits until a call estimated at `tokens` tokens may be sent; the
    /// returned admission holds its concurrency slot until dropped.
    ///
    /// # Errors
    ///
    /// A transient [`ProviderErrorKind::RateLimited`] error when the shared
    /// limits' backend fails (see the [module docs](self)).
    pub async fn admit(&self, provider: &str, tokens: u64) -> Result<Admission, ProviderError> {
        let start = tokio::time::Instant::now();
        let mut waited_for = Vec::new();
        let backend = self.backend();
        let permit = match &self.slots {
            Some(s) => match s.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    note(&mut waited_for, "max_concurrency");
                    s.clone().acquire_owned().await.ok()
                }
            },
            None => None,
        };
        let failed = |e: String| {
            ProviderError::new(
                provider,
                ProviderErrorKind::RateLimited,
                format!(
                    "the provider's rate limits shared through the store could not be applied: {e}"
                ),
            )
        };
        let slot = match (&backend, self.limits.max_concurrency) {
            (Some(b), Some(max)) => Some(
                self.shared_slot(b, provider, max, &mut waited_for)
                    .await
                    .map_err(failed)?,
            ),
            _ => None,
        };
        if let Some(rpm) = self.limits.rpm {
            if let Some(b) = &self.requests
                && !take(b, NonZeroU32::MIN, rpm).await.is_zero()
            {
                note(&mut waited_for, "rpm");
            }
            if let Some(shared) = &backend
                && !reserve(shared, provider, RateKind::Requests, rpm, NonZeroU32::MIN)
                    .await
                    .map_err(failed)?
                    .is_zero()
            {
                note(&mut waited_for, "rpm");
            }
        }
        if let Some(tpm) = self.limits.tpm {
            let n = NonZeroU32::new(u32::try_from(tokens).unwrap_or(u32::MAX))
                .unwrap_or(NonZeroU32::MIN);
            if let Some(b) = &self.tokens
                && !take(b, n, tpm).await.is_zero()
            {
                note(&mut waited_for, "tpm");
            }
            if let Some(shared) = &backend
                && !reserve(shared, provider, RateKind::Tokens, tpm, n)
                    .await
                    .map_err(failed)?
                    .is_zero()
            {
                note(&mut waited_for, "tpm");
            }
        }
        let waited = start.elapsed();
        if !waited_for.is_empty() {
            tracing::info!(
                target: "spes::provider",
                provider,
                limits = waited_for.join(","),
                waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                estimated_tokens = tokens,
                shared = backend.is_some(),
                "call waited for the provider's rate limits"
            );
        }
        Ok(Admission {
            _slot: slot,
            _permit: permit,
            waited,
        })
    }

    /// Takes one of the provider's shared concurrency slots, trying again
    /// with backoff (and at once when one of this process is freed).
    async fn shared_slot(
        &self,
        backend: &Arc<dyn SharedLimits>,
        provider: &str,
        max: NonZeroU32,
        waited_for: &mut Vec<&'static str>,
    ) -> Result<SharedSlot, String> {
        let holder = holder_id();
        let mut pause = Duration::from_millis(5);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = backend
                .try_acquire(provider, max, &holder, SLOT_LEASE)
                .await?
            {
                return Ok(SharedSlot::new(
                    backend.clone(),
                    provider,
                    slot,
                    holder,
                    self.freed.clone(),
                ));
            }
            note(waited_for, "max_concurrency");
            // A little jitter, so that waiting processes do not poll in step.
            let jitter = Duration::from_nanos(u64::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos())
                    % 2_000_000,
            ));
            tokio::select! {
                () = &mut freed => {}
                () = tokio::time::sleep(pause + jitter) => {}
            }
            pause = (pause * 2).min(SLOT_POLL_MAX);
        }
    }
}

/// Reserves `n` (at most `per_minute`) from a shared bucket and waits
/// what the backend says. Returns the wait.
async fn reserve(
    backend: &Arc<dyn SharedLimits>,
    provider: &str,
    kind: RateKind,
    per_minute: NonZeroU32,
    n: NonZeroU32,
) -> Result<Duration, String> {
    let wait = backend
        .reserve(provider, kind, per_minute, n.min(per_minute))
        .await?;
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    Ok(wait)
}

/// A provider whose calls go through a [`Limiter`] first.
#[derive(Debug)]
pub struct LimitedProvider {
    inner: Arc<dyn Provider>,
    limiter: Arc<Limiter>,
    default_max_tokens: Option<u32>,
}

impl LimitedProvider {
    /// `inner` behind `limiter`; `default_max_tokens` (the provider's
    /// `max_tokens`) is what the token estimate assumes for a request
    /// without one.
    #[must_use]
    pub fn new(
        inner: Arc<dyn Provider>,
        limiter: Arc<Limiter>,
        default_max_tokens: Option<u32>,
    ) -> Self {
        Self {
            inner,
            limiter,
            default_max_tokens,
        }
    }

    /// `inner` behind the process's limiter for its name, when `limits`
    /// sets any; else `inner` itself. A remote provider's (kinds
    /// `anthropic` and `openai`) limiter also holds through the backend
    /// of [`share_limits`]; the others' stay per process.
    #[must_use]
    pub fn wrap(
        inner: Arc<dyn Provider>,
        limits: RateLimits,
        default_max_tokens: Option<u32>,
    ) -> Arc<dyn Provider> {
        if limits.is_empty() {
            return inner;
        }
        let remote = matches!(inner.kind(), "anthropic" | "openai");
        let limiter = Limiter::process(inner.name(), limits, remote);
        Arc::new(Self::new(inner, limiter, default_max_tokens))
    }
}

#[async_trait]
impl Provider for LimitedProvider {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn default_model(&self) -> Option<&str> {
        self.inner.default_model()
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        cx: &CallContext,
    ) -> Result<ChatResponse, ProviderError> {
        let tokens = estimate_tokens(req, self.default_max_tokens);
        let _admitted = self.limiter.admit(self.inner.name(), tokens).await?;
        self.inner.complete(req, cx).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use spes_core::message::{Message, StopReason, Usage};

    use super::*;

    fn nz(n: u32) -> Option<NonZeroU32> {
        NonZeroU32::new(n)
    }

    fn req(prompt: &str, max_tokens: Option<u32>) -> ChatRequest {
        ChatRequest {
            messages: vec![Message::user(prompt)],
            max_tokens,
            ..ChatRequest::default()
        }
    }

    #[test]
    fn the_estimate_is_prompt_chars_over_four_plus_max_tokens() {
        // 9 characters: 3 tokens (rounded up), plus max_tokens.
        assert_eq!(estimate_tokens(&req("abcdefghi", Some(100)), None), 103);
        assert_eq!(estimate_tokens(&req("abcd", None), Some(50)), 51);
        assert_eq!(
            estimate_tokens(&req("", None), None),
            u64::from(ESTIMATE_MAX_TOKENS)
        );
        let mut r = req("abcd", Some(0));
        r.system = Some("efgh".into());
        assert_eq!(estimate_tokens(&r, None), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn rpm_lets_a_full_bucket_through_then_one_request_per_interval() {
        let l = Limiter::new(RateLimits {
            rpm: nz(60),
            ..RateLimits::default()
        });
        let start = tokio::time::Instant::now();
        for _ in 0..60 {
            assert!(l.admit("p", 1).await.unwrap().waited.is_zero());
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        // The 61st waits for one refill: 60 s / 60.
        let a = l.admit("p", 1).await.unwrap();
        assert!(
            a.waited >= Duration::from_millis(999) && a.waited < Duration::from_millis(1100),
            "{:?}",
            a.waited
        );
        let a = l.admit("p", 1).await.unwrap();
        assert!(a.waited >= Duration::from_millis(999), "{:?}", a.waited);
    }

    #[tokio::test(start_paused = true)]
    async fn tpm_takes_the_estimate_and_waits_for_the_missing_tokens() {
        let l = Limiter::new(RateLimits {
            tpm: nz(1000),
            ..RateLimits::default()
        });
        assert!(l.admit("p", 600).await.unwrap().waited.is_zero());
        // 400 left; 200 more refill in 200 * 60 ms = 12 s.
        let a = l.admit("p", 600).await.unwrap();
        assert!(
            a.waited >= Duration::from_millis(11_990) && a.waited < Duration::from_millis(12_200),
            "{:?}",
            a.waited
        );
        // More than the bucket holds: waits for a full bucket (60 s).
        let a = l.admit("p", 5000).await.unwrap();
        assert!(
            a.waited >= Duration::from_millis(59_990) && a.waited < Duration::from_millis(60_200),
            "{:?}",
            a.waited
        );
    }

    /// Counts the calls in flight and the most seen at once.
    #[derive(Debug, Default)]
    struct Gauge {
        now: AtomicUsize,
        max: AtomicUsize,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Provider for Gauge {
        fn name(&self) -> &str {
            "gauge"
        }
        fn kind(&self) -> &'static str {
            "scripted"
        }
        fn default_model(&self) -> Option<&str> {
            None
        }
        async fn complete(
            &self,
            _req: &ChatRequest,
            _cx: &CallContext,
        ) -> Result<ChatResponse, ProviderError> {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.max.fetch_max(n, Ordering::SeqCst);
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            Ok(ChatResponse {
                text: String::new(),
                stop_reason: StopReason::EndTurn,
                usage: Usage::default(),
                model: None,
                request_id: None,
                latency_ms: 10,
                tool_calls: Vec::new(),
            })
        }
    }

    async fn most_in_flight(limits: RateLimits) -> usize {
        let gauge = Arc::new(Gauge::default());
        let p = LimitedProvider::wrap(gauge.clone(), limits, None);
        let calls = (0..50).map(|_| {
            let p = p.clone();
            async move {
                p.complete(&req("hi", Some(1)), &CallContext::default())
                    .await
            }
        });
        for r in futures::future::join_all(calls).await {
            r.unwrap();
        }
        assert_eq!(gauge.calls.load(Ordering::SeqCst), 50);
        gauge.max.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn max_concurrency_caps_the_calls_in_flight() {
        let capped = most_in_flight(RateLimits {
            max_concurrency: nz(3),
            ..RateLimits::default()
        })
        .await;
        assert_eq!(capped, 3);
        // The control: without a limit all 50 are in flight together.
        assert_eq!(most_in_flight(RateLimits::default()).await, 50);
    }

    /// Collects what a `tracing` subscriber writes.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_waits_logs_one_spes_provider_event() {
        let buf = Buf::default();
        let sink = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let _guard = tracing::subscriber::set_default(sub);
        let l = Limiter::new(RateLimits {
            max_concurrency: nz(1),
            rpm: nz(60),
            ..RateLimits::default()
        });
        let first = l.admit("p", 1).await.unwrap();
        assert!(first.waited.is_zero());
        // The second waits for the slot (released after 500 ms), not for
        // rpm (its bucket holds 60).
        let second = async {
            let a = l.admit("p", 1).await.unwrap();
            assert!(a.waited >= Duration::from_millis(500), "{:?}", a.waited);
        };
        let release = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            drop(first);
        };
        tokio::join!(second, release);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("spes::provider"))
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(
            lines[0].contains("call waited for the provider's rate limits"),
            "{text}"
        );
        assert!(lines[0].contains("limits=\"max_concurrency\""), "{text}");
        assert!(lines[0].contains("waited_ms=500"), "{text}");
    }

    /// Limits shared in memory on tokio's clock: what processes sharing a
    /// store see.
    #[derive(Debug, Default)]
    struct MemShared {
        tat: Mutex<HashMap<(String, RateKind), tokio::time::Instant>>,
        slots: Mutex<HashMap<(String, u32), (String, tokio::time::Instant)>>,
        fail: std::sync::atomic::AtomicBool,
    }

    impl MemShared {
        fn check(&self) -> Result<(), String> {
            if self.fail.load(Ordering::SeqCst) {
                return Err("the store is unreachable".into());
            }
            Ok(())
        }
    }

    #[async_trait]
    impl SharedLimits for MemShared {
        async fn reserve(
            &self,
            provider: &str,
            kind: RateKind,
            per_minute: NonZeroU32,
            cost: NonZeroU32,
        ) -> Result<Duration, String> {
            self.check()?;
            let now = tokio::time::Instant::now();
            let mut m = self.tat.lock().unwrap();
            let tat = m.entry((provider.to_owned(), kind)).or_insert(now);
            *tat = (*tat).max(now) + Duration::from_secs(60) * cost.get() / per_minute.get();
            Ok(tat.saturating_duration_since(now + Duration::from_secs(60)))
        }

        async fn try_acquire(
            &self,
            provider: &str,
            max: NonZeroU32,
            holder: &str,
            lease: Duration,
        ) -> Result<Option<u32>, String> {
            self.check()?;
            let now = tokio::time::Instant::now();
            let mut m = self.slots.lock().unwrap();
            for slot in 0..max.get() {
                let key = (provider.to_owned(), slot);
                if m.get(&key).is_none_or(|(_, until)| *until <= now) {
                    m.insert(key, (holder.to_owned(), now + lease));
                    return Ok(Some(slot));
                }
            }
            Ok(None)
        }

        async fn renew(
            &self,
            provider: &str,
            slot: u32,
            holder: &str,
            lease: Duration,
        ) -> Result<bool, String> {
            self.check()?;
            let mut m = self.slots.lock().unwrap();
            match m.get_mut(&(provider.to_owned(), slot)) {
                Some((h, until)) if h == holder => {
                    *until = tokio::time::Instant::now() + lease;
                    Ok(true)
                }
                _ => Ok(false),
            }
        }

        async fn release(&self, provider: &str, slot: u32, holder: &str) -> Result<(), String> {
            self.check()?;
            let mut m = self.slots.lock().unwrap();
            if m.get(&(provider.to_owned(), slot))
                .is_some_and(|(h, _)| h == holder)
            {
                m.remove(&(provider.to_owned(), slot));
            }
            Ok(())
        }
    }

    /// The most calls in flight at once when two limiters (two processes)
    /// each send 25 calls to one provider.
    async fn most_in_flight_of_two(a: Limiter, b: Limiter) -> usize {
        let gauge = Arc::new(Gauge::default());
        let (a, b) = (Arc::new(a), Arc::new(b));
        let calls = (0..50).map(|i| {
            let l = if i % 2 == 0 { a.clone() } else { b.clone() };
            let p = LimitedProvider::new(gauge.clone(), l, None);
            async move {
                p.complete(&req("hi", Some(1)), &CallContext::default())
                    .await
            }
        });
        for r in futures::future::join_all(calls).await {
            r.unwrap();
        }
        assert_eq!(gauge.calls.load(Ordering::SeqCst), 50);
        gauge.max.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn max_concurrency_holds_across_limiters_sharing_a_backend() {
        let limits = RateLimits {
            max_concurrency: nz(3),
            ..RateLimits::default()
        };
        let shared: Arc<dyn SharedLimits> = Arc::new(MemShared::default());
        let together = most_in_flight_of_two(
            Limiter::with_backend(limits, shared.clone()),
            Limiter::with_backend(limits, shared.clone()),
        )
        .await;
        assert_eq!(together, 3);
        // The control: each on its own lets 3 through, 6 together.
        let apart = most_in_flight_of_two(Limiter::new(limits), Limiter::new(limits)).await;
        assert_eq!(apart, 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_is_freed_when_its_call_ends_and_renewed_while_it_lasts() {
        let mem = Arc::new(MemShared::default());
        let l = Limiter::with_backend(
            RateLimits {
                max_concurrency: nz(1),
                ..RateLimits::default()
            },
            mem.clone(),
        );
        let a = l.admit("p", 1).await.unwrap();
        // Past its first lease: renewed meanwhile, still held.
        tokio::time::sleep(SLOT_LEASE + SLOT_LEASE / 2).await;
        let until = mem
            .slots
            .lock()
            .unwrap()
            .get(&("p".to_owned(), 0))
            .unwrap()
            .1;
        assert!(until > tokio::time::Instant::now());
        drop(a);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(mem.slots.lock().unwrap().is_empty());
        assert!(l.admit("p", 1).await.unwrap().waited.is_zero());
    }

    #[tokio::test(start_paused = true)]
    async fn rpm_and_tpm_hold_across_limiters_sharing_a_backend() {
        let limits = RateLimits {
            rpm: nz(60),
            tpm: nz(6000),
            ..RateLimits::default()
        };
        let shared: Arc<dyn SharedLimits> = Arc::new(MemShared::default());
        let (a, b) = (
            Limiter::with_backend(limits, shared.clone()),
            Limiter::with_backend(limits, shared),
        );
        // 30 each: the shared bucket of 60 requests (and 6000 tokens) is empty.
        for _ in 0..30 {
            assert!(a.admit("p", 100).await.unwrap().waited.is_zero());
            assert!(b.admit("p", 100).await.unwrap().waited.is_zero());
        }
        // Each limiter's own bucket is half full, the shared one is empty:
        // the next call waits for one refill (1 s for a request, 1 s for
        // 100 tokens).
        let w = a.admit("p", 100).await.unwrap().waited;
        assert!(
            w >= Duration::from_millis(999) && w < Duration::from_millis(1100),
            "{w:?}"
        );
        // Without the backend (the control) nothing waits.
        let (a, b) = (Limiter::new(limits), Limiter::new(limits));
        for _ in 0..31 {
            assert!(a.admit("p", 100).await.unwrap().waited.is_zero());
            assert!(b.admit("p", 100).await.unwrap().waited.is_zero());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_backend_fails_the_call_as_transient_instead_of_skipping_the_limit() {
        let mem = Arc::new(MemShared::default());
        mem.fail.store(true, Ordering::SeqCst);
        for limits in [
            RateLimits {
                max_concurrency: nz(2),
                ..RateLimits::default()
            },
            RateLimits {
                rpm: nz(2),
                ..RateLimits::default()
            },
            RateLimits {
                tpm: nz(2000),
                ..RateLimits::default()
            },
        ] {
            let l = Limiter::with_backend(limits, mem.clone());
            let e = l.admit("p", 1).await.unwrap_err();
            assert_eq!(e.kind, ProviderErrorKind::RateLimited, "{limits:?}");
            assert_eq!(e.class(), crate::error::ErrorClass::Transient);
            assert!(e.message.contains("the store is unreachable"), "{e}");
        }
    }

    #[test]
    fn one_limiter_per_provider_and_limits_in_a_process() {
        let a = RateLimits {
            rpm: nz(5),
            ..RateLimits::default()
        };
        let b = RateLimits {
            rpm: nz(6),
            ..RateLimits::default()
        };
        assert!(Arc::ptr_eq(
            &Limiter::shared("x", a),
            &Limiter::shared("x", a)
        ));
        assert!(!Arc::ptr_eq(
            &Limiter::shared("x", a),
            &Limiter::shared("x", b)
        ));
        assert!(!Arc::ptr_eq(
            &Limiter::shared("x", a),
            &Limiter::shared("y", a)
        ));
    }
}
