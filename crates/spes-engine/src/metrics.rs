//! Prometheus metrics (OpenMetrics text exposition, the official
//! `prometheus-client` crate), served at `/metrics` by `spes serve` and by
//! `spes worker --metrics-addr`.
//!
//! One [`Metrics`] registry per process ([`Metrics::global`]; an engine
//! built without [`crate::EngineBuilder::metrics`] feeds it). It is fed
//! where things happen:
//!
//! | metric | labels | fed by |
//! |---|---|---|
//! | `spes_model_call_duration_seconds` (histogram) | `provider`, `model`, `outcome` (`ok`, `error`) | every model call made (not replayed), waits for the provider's rate limits included (`Exec::call`) |
//! | `spes_tokens_total` | `provider`, `model`, `type` (`input`, `output`, `cache_read`, `cache_write`) | the usage of every answer |
//! | `spes_cost_usd_total` | `provider`, `model` | [`Metrics::add_cost`]: the journaled cost of each call made whose model has a price |
//! | `spes_provider_errors_total` | `provider`, `class` (`transient`, `terminal`), `kind` (`rate_limited`, `timeout`, ...) | every failed model call |
//! | `spes_step_duration_seconds` (histogram) | `kind`, `outcome` (`ok`, `error`) | every finished step (its `StepFinished` event) |
//! | `spes_worker_claims_total` | `task` (`run`, `item`) | tasks a worker claimed |
//! | `spes_worker_lease_losses_total` | | tasks a worker stopped because its lease was lost (or a write was fenced) |
//! | `spes_breaker_state` (gauge) | `breaker`, `state` (`closed`, `open`, `half_open`) | 1 for the state a breaker last changed to in this process, 0 for the others |
//! | `spes_runs` (gauge) | `status` | read from the store at each scrape |
//! | `spes_queue_tasks` (gauge) | `state` (`ready`, `claimed`) | read from the store's work queue at each scrape (PostgreSQL) |

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use spes_core::message::{ChatRequest, ChatResponse};
use spes_core::policy::BreakerState;
use spes_llm::{ErrorClass, Provider, ProviderError};
use spes_store::{RunStatus, RunStore};

use crate::event::Event;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 5 ms to about 164 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

struct Inner {
    registry: Registry,
    model_calls: HistogramFamily,
    tokens: Family<Labels, Counter>,
    cost: Family<Labels, Counter<f64, AtomicU64>>,
    provider_errors: Family<Labels, Counter>,
    steps: HistogramFamily,
    claims: Family<Labels, Counter>,
    lease_losses: Counter,
    breakers: Family<Labels, Gauge>,
    runs: Family<Labels, Gauge>,
    queue: Family<Labels, Gauge>,
    /// The series a successful call feeds, by provider and model.
    ok_series: Kept<(String, String), Arc<OkSeries>>,
    /// The step duration series, by step kind and outcome (ok or not).
    step_series: Kept<(&'static str, bool), Histogram>,
}

/// The series one successful call of a provider's model feeds (each a
/// handle on the series in its family: what it counts is the family's).
struct OkSeries {
    latency: Histogram,
    /// Input, output, cache-read and cache-write tokens.
    tokens: [Counter; 4],
    cost: Counter<f64, AtomicU64>,
}

/// Token types, in the order of [`OkSeries::tokens`].
const TOKEN_TYPES: [&str; 4] = ["input", "output", "cache_read", "cache_write"];

/// Keys whose series a [`Kept`] keeps.
const SERIES_KEPT: usize = 256;

/// Series kept by a key, so that a hot path looks each up in its family
/// once (at most [`SERIES_KEPT`]; past it, each use looks its series up).
struct Kept<K, V>(RwLock<Vec<(K, V)>>);

impl<K, V> Default for Kept<K, V> {
    fn default() -> Self {
        Self(RwLock::default())
    }
}

impl<K, V: Clone> Kept<K, V> {
    /// The series kept under the key `is` picks, or `make`'s (kept now).
    fn get(&self, is: impl Fn(&K) -> bool, make: impl FnOnce() -> (K, V)) -> V {
        let find = |all: &[(K, V)]| all.iter().find(|(k, _)| is(k)).map(|(_, v)| v.clone());
        if let Some(v) = find(&self.0.read().unwrap_or_else(PoisonError::into_inner)) {
            return v;
        }
        let (key, made) = make();
        let mut all = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = find(&all) {
            return v;
        }
        if all.len() < SERIES_KEPT {
            all.push((key, made.clone()));
        }
        made
    }
}

impl Inner {
    /// The series a successful call of `provider`'s `model` feeds.
    fn ok_series(&self, provider: &str, model: &str) -> Arc<OkSeries> {
        self.ok_series.get(
            |(p, m)| p == provider && m == model,
            || {
                let labels = |extra: Option<(&'static str, &str)>| {
                    let mut l = vec![
                        ("provider", provider.to_owned()),
                        ("model", model.to_owned()),
                    ];
                    l.extend(extra.map(|(k, v)| (k, v.to_owned())));
                    l
                };
                let series = OkSeries {
                    latency: self
                        .model_calls
                        .get_or_create_owned(&labels(Some(("outcome", "ok")))),
                    tokens: TOKEN_TYPES
                        .map(|t| self.tokens.get_or_create_owned(&labels(Some(("type", t))))),
                    cost: self.cost.get_or_create_owned(&labels(None)),
                };
                ((provider.to_owned(), model.to_owned()), Arc::new(series))
            },
        )
    }

    /// The duration series of finished steps of `kind` that ended well
    /// (`ok`) or not.
    fn step_series(&self, kind: &'static str, ok: bool) -> Histogram {
        self.step_series.get(
            |&(k, o)| k == kind && o == ok,
            || {
                let outcome = if ok { "ok" } else { "error" };
                let h = self.steps.get_or_create_owned(&vec![
                    ("kind", kind.to_owned()),
                    ("outcome", outcome.to_owned()),
                ]);
                ((kind, ok), h)
            },
        )
    }
}

/// A registry of spes's metrics; cheap to clone (clones share it).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry of its own.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let model_calls = HistogramFamily::new_with_constructor(latency_histogram as fn() -> _);
        let steps = HistogramFamily::new_with_constructor(latency_histogram as fn() -> _);
        let tokens = Family::<Labels, Counter>::default();
        let cost = Family::<Labels, Counter<f64, AtomicU64>>::default();
        let provider_errors = Family::<Labels, Counter>::default();
        let claims = Family::<Labels, Counter>::default();
        let lease_losses = Counter::default();
        let breakers = Family::<Labels, Gauge>::default();
        let runs = Family::<Labels, Gauge>::default();
        let queue = Family::<Labels, Gauge>::default();
        registry.register(
            "spes_model_call_duration_seconds",
            "Model calls made (not replayed): seconds from the call to its answer, rate-limit waits included",
            model_calls.clone(),
        );
        registry.register(
            "spes_tokens",
            "Tokens of model answers, by provider, model and type (input, output, cache_read, cache_write)",
            tokens.clone(),
        );
        registry.register(
            "spes_cost_usd",
            "Cost of model calls in US dollars, by provider and model",
            cost.clone(),
        );
        registry.register(
            "spes_provider_errors",
            "Failed model calls, by provider, error class (transient, terminal) and kind",
            provider_errors.clone(),
        );
        registry.register(
            "spes_step_duration_seconds",
            "Finished steps: seconds from start to end, by kind and outcome",
            steps.clone(),
        );
        registry.register(
            "spes_worker_claims",
            "Tasks claimed by this process's workers, by task kind (run, item)",
            claims.clone(),
        );
        registry.register(
            "spes_worker_lease_losses",
            "Tasks this process's workers stopped because their lease was lost",
            lease_losses.clone(),
        );
        registry.register(
            "spes_breaker_state",
            "Circuit breakers: 1 for the state each is in as this process last saw it",
            breakers.clone(),
        );
        registry.register(
            "spes_runs",
            "Runs in the store, by status (read at each scrape)",
            runs.clone(),
        );
        registry.register(
            "spes_queue_tasks",
            "Tasks in the store's work queue, by state (read at each scrape)",
            queue.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                model_calls,
                tokens,
                cost,
                provider_errors,
                steps,
                claims,
                lease_losses,
                breakers,
                runs,
                queue,
                ok_series: Kept::default(),
                step_series: Kept::default(),
            }),
        }
    }

    /// The registry of this process (what engines feed by default).
    #[must_use]
    pub fn global() -> &'static Self {
        static GLOBAL: OnceLock<Metrics> = OnceLock::new();
        GLOBAL.get_or_init(Self::new)
    }

    /// Makes the model call `call` (of `provider`, for `req`) and counts it:
    /// its latency, its tokens, its error.
    pub async fn model_call(
        &self,
        provider: &dyn Provider,
        req: &ChatRequest,
        call: impl Future<Output = Result<ChatResponse, ProviderError>>,
    ) -> Result<ChatResponse, ProviderError> {
        let start = Instant::now();
        let result = call.await;
        let elapsed = start.elapsed().as_secs_f64();
        let name = provider.name();
        let model = req
            .model
            .as_deref()
            .or_else(|| provider.default_model())
            .unwrap_or_default();
        let i = &self.inner;
        match &result {
            Ok(r) => {
                let series = i.ok_series(name, model);
                series.latency.observe(elapsed);
                let u = &r.usage;
                let counts = [
                    u.input_tokens,
                    u.output_tokens,
                    u.cache_read_tokens,
                    u.cache_write_tokens,
                ];
                for (counter, n) in series.tokens.iter().zip(counts) {
                    counter.inc_by(n);
                }
                // Shown (at 0) from the first call, until a price feeds it.
                series.cost.inc_by(0.0);
            }
            Err(e) => {
                let labels = |extra: Vec<(&'static str, String)>| {
                    let mut l = vec![("provider", name.to_owned()), ("model", model.to_owned())];
                    l.extend(extra);
                    l
                };
                i.model_calls
                    .get_or_create(&labels(vec![("outcome", "error".into())]))
                    .observe(elapsed);
                let class = match e.class() {
                    ErrorClass::Transient => "transient",
                    ErrorClass::Terminal => "terminal",
                };
                i.provider_errors
                    .get_or_create(&labels(vec![
                        ("class", class.into()),
                        ("kind", e.kind.as_str().into()),
                    ]))
                    .inc();
            }
        }
        result
    }

    /// Adds `usd` to the cost of calls to `provider`'s `model`
    /// (`spes_cost_usd_total`).
    pub fn add_cost(&self, provider: &str, model: &str, usd: f64) {
        self.inner
            .cost
            .get_or_create(&vec![
                ("provider", provider.to_owned()),
                ("model", model.to_owned()),
            ])
            .inc_by(usd);
    }

    /// Counts what `event` tells (finished steps).
    pub fn on_event(&self, event: &Event) {
        if let Event::StepFinished {
            kind,
            elapsed,
            error,
            ..
        } = event
        {
            self.inner
                .step_series(kind, error.is_none())
                .observe(elapsed.as_secs_f64());
        }
    }

    /// A worker claimed `n` tasks of `kind` (`run`, `item`).
    pub fn claimed(&self, kind: &str, n: usize) {
        self.inner
            .claims
            .get_or_create(&vec![("task", kind.to_owned())])
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// A worker lost a task's lease.
    pub fn lease_lost(&self) {
        self.inner.lease_losses.inc();
    }

    /// Breaker `name` is now in `state`.
    pub fn breaker(&self, name: &str, state: BreakerState) {
        let now = breaker_state_name(state);
        for s in ["closed", "open", "half_open"] {
            self.inner
                .breakers
                .get_or_create(&vec![("breaker", name.to_owned()), ("state", s.to_owned())])
                .set(i64::from(s == now));
        }
    }

    /// The metrics as OpenMetrics text ([`CONTENT_TYPE`]), with the runs by
    /// status and the work queue's tasks by state read from `store` now
    /// (left as last read when it fails).
    pub async fn render(&self, store: Option<&dyn RunStore>) -> String {
        if let Some(store) = store {
            if let Ok(counts) = store.run_counts().await {
                for status in RunStatus::ALL {
                    let n = counts
                        .iter()
                        .find(|(s, _)| *s == status)
                        .map_or(0, |(_, n)| *n);
                    self.inner
                        .runs
                        .get_or_create(&vec![("status", status.as_str().to_owned())])
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
            if let Some(q) = store.queue()
                && let Ok(counts) = q.task_counts().await
            {
                for state in ["ready", "claimed"] {
                    let n = counts
                        .iter()
                        .find(|(s, _)| s == state)
                        .map_or(0, |(_, n)| *n);
                    self.inner
                        .queue
                        .get_or_create(&vec![("state", state.to_owned())])
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        }
        let mut out = String::new();
        // Writing to a String does not fail.
        let _ = encode(&mut out, &self.inner.registry);
        out
    }
}

fn breaker_state_name(s: BreakerState) -> &'static str {
    match s {
        BreakerState::Closed { .. } => "closed",
        BreakerState::Open { .. } => "open",
        BreakerState::HalfOpen { .. } => "half_open",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use prometheus_parse::{Scrape, Value};
    use spes_core::message::{Message, StopReason, Usage};
    use spes_llm::ProviderErrorKind;
    use spes_llm::scripted::ScriptedProvider;

    use super::*;

    fn parse(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
    }

    /// The value of the sample `metric` with exactly `labels`.
    fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<Value> {
        let want: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        s.samples
            .iter()
            .find(|x| x.metric == metric && *x.labels == want)
            .map(|x| x.value.clone())
    }

    fn num(v: Option<Value>) -> f64 {
        match v {
            Some(Value::Counter(n) | Value::Gauge(n) | Value::Untyped(n)) => n,
            other => panic!("not a number: {other:?}"),
        }
    }

    fn answer(input: u64, output: u64) -> ChatResponse {
        ChatResponse {
            text: "ok".into(),
            stop_reason: StopReason::EndTurn,
            usage: Usage {
                input_tokens: input,
                output_tokens: output,
                ..Usage::default()
            },
            model: None,
            request_id: None,
            latency_ms: 1,
            tool_calls: Vec::new(),
        }
    }

    #[tokio::test]
    async fn model_calls_count_latency_tokens_and_errors_by_provider_and_model() {
        let m = Metrics::new();
        let p = ScriptedProvider::parse("fake", "a.yaml", "[]").unwrap();
        let req = ChatRequest {
            model: Some("m1".into()),
            messages: vec![Message::user("hi")],
            ..ChatRequest::default()
        };
        for (i, o) in [(10, 2), (5, 1)] {
            m.model_call(&p, &req, async { Ok(answer(i, o)) })
                .await
                .unwrap();
        }
        // Another model of the same provider: series of its own.
        let other = ChatRequest {
            model: Some("m2".into()),
            ..req.clone()
        };
        m.model_call(&p, &other, async { Ok(answer(100, 0)) })
            .await
            .unwrap();
        let err = ProviderError::new("fake", ProviderErrorKind::RateLimited, "slow down");
        let _ = m.model_call(&p, &req, async { Err(err) }).await;
        // Two llm steps end well, one fails: each outcome its own series.
        for error in [None, None, Some("boom".to_owned())] {
            m.on_event(&Event::StepFinished {
                key: "a".into(),
                kind: "llm",
                depth: 0,
                elapsed: Duration::from_millis(20),
                error,
                note: None,
                usage: None,
            });
        }
        m.claimed("item", 3);
        m.lease_lost();
        m.breaker("fake", BreakerState::Open { until_ms: 5 });
        let s = parse(&m.render(None).await);
        let pm = [("provider", "fake"), ("model", "m1")];
        let with = |extra: (&'static str, &'static str)| {
            let mut l = pm.to_vec();
            l.push(extra);
            l
        };
        let ok = value(
            &s,
            "spes_model_call_duration_seconds",
            &with(("outcome", "ok")),
        );
        let Some(Value::Histogram(buckets)) = ok else {
            panic!("{ok:?}")
        };
        assert_eq!(buckets.last().unwrap().count, 2.0);
        assert_eq!(
            num(value(
                &s,
                "spes_model_call_duration_seconds_count",
                &with(("outcome", "error"))
            )),
            1.0
        );
        assert_eq!(
            num(value(&s, "spes_tokens_total", &with(("type", "input")))),
            15.0
        );
        assert_eq!(
            num(value(&s, "spes_tokens_total", &with(("type", "output")))),
            3.0
        );
        assert_eq!(
            num(value(
                &s,
                "spes_tokens_total",
                &[("provider", "fake"), ("model", "m2"), ("type", "input")]
            )),
            100.0
        );
        assert_eq!(num(value(&s, "spes_cost_usd_total", &pm)), 0.0);
        let mut e = with(("class", "transient"));
        e.push(("kind", "rate_limited"));
        assert_eq!(num(value(&s, "spes_provider_errors_total", &e)), 1.0);
        assert_eq!(
            num(value(
                &s,
                "spes_step_duration_seconds_count",
                &[("kind", "llm"), ("outcome", "ok")]
            )),
            2.0
        );
        assert_eq!(
            num(value(
                &s,
                "spes_step_duration_seconds_count",
                &[("kind", "llm"), ("outcome", "error")]
            )),
            1.0
        );
        assert_eq!(
            num(value(&s, "spes_worker_claims_total", &[("task", "item")])),
            3.0
        );
        assert_eq!(num(value(&s, "spes_worker_lease_losses_total", &[])), 1.0);
        let b = |st| {
            num(value(
                &s,
                "spes_breaker_state",
                &[("breaker", "fake"), ("state", st)],
            ))
        };
        assert_eq!((b("closed"), b("open"), b("half_open")), (0.0, 1.0, 0.0));
        m.add_cost("fake", "m1", 0.25);
        let s = parse(&m.render(None).await);
        assert_eq!(num(value(&s, "spes_cost_usd_total", &pm)), 0.25);
    }
}
