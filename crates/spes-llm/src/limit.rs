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
//! `spes::provider`) naming the provider, the limit and the wait. Limits
//! hold within one process: [`Limiter::shared`] hands every provider built
//! from the same table in the process (a server builds its providers per
//! run) the same limiter. Workers on one PostgreSQL store each keep their
//! own.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use spes_core::config::RateLimits;
use spes_core::message::{ChatRequest, ChatResponse};

use crate::error::ProviderError;
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

/// Every provider's limiter in this process, by name and limits.
type Limiters = HashMap<(String, RateLimits), Arc<Limiter>>;

/// The limits of one provider in this process: see the [module docs](self).
pub struct Limiter {
    limits: RateLimits,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// What a call holds while it is in flight (its concurrency permit).
#[derive(Debug)]
pub struct Admission {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// How long the call waited for the limits.
    pub waited: Duration,
}

impl Limiter {
    /// A limiter of its own.
    #[must_use]
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            requests: limits.rpm.map(bucket),
            tokens: limits.tpm.map(bucket),
            slots: limits
                .max_concurrency
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n.get() as usize))),
        }
    }

    /// The limiter of provider `name` in this process: the same one for
    /// every call with the same name and limits (changed limits start a
    /// new one).
    #[must_use]
    pub fn shared(name: &str, limits: RateLimits) -> Arc<Self> {
        static ALL: OnceLock<Mutex<Limiters>> = OnceLock::new();
        let all = ALL.get_or_init(Mutex::default);
        match all.lock() {
            Ok(mut m) => m
                .entry((name.to_owned(), limits))
                .or_insert_with(|| Arc::new(Self::new(limits)))
                .clone(),
            Err(_) => Arc::new(Self::new(limits)),
        }
    }

    /// Its limits.
    #[must_use]
    pub fn limits(&self) -> RateLimits {
        self.limits
    }

    /// Waits until a call estimated at `tokens` tokens may be sent; the
    /// returned admission holds its concurrency slot until dropped.
    pub async fn admit(&self, provider: &str, tokens: u64) -> Admission {
        let start = tokio::time::Instant::now();
        let mut waited_for = Vec::new();
        let permit = match &self.slots {
            Some(s) => match s.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    waited_for.push("max_concurrency");
                    s.clone().acquire_owned().await.ok()
                }
            },
            None => None,
        };
        if let (Some(b), Some(rpm)) = (&self.requests, self.limits.rpm)
            && !take(b, NonZeroU32::MIN, rpm).await.is_zero()
        {
            waited_for.push("rpm");
        }
        if let (Some(b), Some(tpm)) = (&self.tokens, self.limits.tpm) {
            let n = NonZeroU32::new(u32::try_from(tokens).unwrap_or(u32::MAX))
                .unwrap_or(NonZeroU32::MIN);
            if !take(b, n, tpm).await.is_zero() {
                waited_for.push("tpm");
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
                "call waited for the provider's rate limits"
            );
        }
        Admission {
            _permit: permit,
            waited,
        }
    }
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
    /// sets any; else `inner` itself.
    #[must_use]
    pub fn wrap(
        inner: Arc<dyn Provider>,
        limits: RateLimits,
        default_max_tokens: Option<u32>,
    ) -> Arc<dyn Provider> {
        if limits.is_empty() {
            return inner;
        }
        let limiter = Limiter::shared(inner.name(), limits);
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
        let _admitted = self.limiter.admit(self.inner.name(), tokens).await;
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
            assert!(l.admit("p", 1).await.waited.is_zero());
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        // The 61st waits for one refill: 60 s / 60.
        let a = l.admit("p", 1).await;
        assert!(
            a.waited >= Duration::from_millis(999) && a.waited < Duration::from_millis(1100),
            "{:?}",
            a.waited
        );
        let a = l.admit("p", 1).await;
        assert!(a.waited >= Duration::from_millis(999), "{:?}", a.waited);
    }

    #[tokio::test(start_paused = true)]
    async fn tpm_takes_the_estimate_and_waits_for_the_missing_tokens() {
        let l = Limiter::new(RateLimits {
            tpm: nz(1000),
            ..RateLimits::default()
        });
        assert!(l.admit("p", 600).await.waited.is_zero());
        // 400 left; 200 more refill in 200 * 60 ms = 12 s.
        let a = l.admit("p", 600).await;
        assert!(
            a.waited >= Duration::from_millis(11_990) && a.waited < Duration::from_millis(12_200),
            "{:?}",
            a.waited
        );
        // More than the bucket holds: waits for a full bucket (60 s).
        let a = l.admit("p", 5000).await;
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
        let first = l.admit("p", 1).await;
        assert!(first.waited.is_zero());
        // The second waits for the slot (released after 500 ms), not for
        // rpm (its bucket holds 60).
        let second = async {
            let a = l.admit("p", 1).await;
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
