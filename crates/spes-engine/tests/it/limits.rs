//! Proactive rate limits and metrics against the fake LLM server over real
//! HTTP, with providers built from a spes.toml the way `spes` builds them.

use std::sync::Arc;

use prometheus_parse::{Scrape, Value};
use serde_json::json;
use spes_engine::Engine;
use spes_engine::metrics::Metrics;
use spes_fake_llm::{FakeResponse, FakeServer, OverLimit};
use spes_llm::ProviderRegistry;

use crate::workflow;

/// An engine whose providers come from `toml` (a spes.toml), feeding `metrics`.
fn engine(toml: &str, metrics: Metrics) -> Engine {
    let config = spes_core::config::parse_config("spes.toml", toml).unwrap();
    let reg = ProviderRegistry::from_config_with_env(&config, |_| None).unwrap();
    let mut b = Engine::builder().default_provider("fake").metrics(metrics);
    for p in reg.providers() {
        b = b.provider(p);
    }
    b.build()
}

fn toml(server: &FakeServer, limit: &str) -> String {
    format!(
        "[providers.fake]\nkind = \"openai\"\nmodel = \"m1\"\nbase_url = \"{}\"\nstream = false\nretry = \"none\"\n{limit}",
        server.openai_base_url()
    )
}

const MAP: &str = r#"
name: many
inputs: { docs: { type: list, required: true } }
steps:
  - name: each
    kind: map
    over: docs
    as: doc
    concurrency: 256
    step: { name: summarize, kind: llm, prompt: "item {{ index }}: {{ doc }}", max_tokens: 16 }
    output: out
output: out
"#;

/// The acceptance test of proactive rate limits: a map of 1,000 items at
/// concurrency 256 against a server that answers 429 to more than 8
/// requests at once gets no 429 with `max_concurrency = 8`; without it
/// (the control) it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_keeps_a_wide_map_under_the_servers_limit() {
    let wf = workflow(MAP);
    let items: Vec<String> = (0..1000).map(|i| format!("doc{i}")).collect();
    let inputs = || [("docs".to_owned(), json!(items))].into_iter().collect();

    let server = FakeServer::start().await.unwrap();
    server.set_max_concurrency(Some(8), OverLimit::Reject);
    server.set_default(FakeResponse::echo().with_latency(std::time::Duration::from_millis(2)));
    let limited = engine(&toml(&server, "max_concurrency = 8\n"), Metrics::new());
    let out = limited.run(&wf, inputs()).await.unwrap();
    assert_eq!(out.output.unwrap().as_array().unwrap().len(), 1000);
    assert_eq!(server.rejected(), 0, "no 429 with the limit");
    assert_eq!(server.request_count(), 1000);
    assert!(server.max_in_flight() <= 8, "{}", server.max_in_flight());

    // The control: the same map without the limit is answered 429s.
    let server = FakeServer::start().await.unwrap();
    server.set_max_concurrency(Some(8), OverLimit::Reject);
    server.set_default(FakeResponse::echo().with_latency(std::time::Duration::from_millis(2)));
    let unlimited = engine(&toml(&server, ""), Metrics::new());
    // Whether the run then completes depends on retries; the 429s are the point.
    let _ = unlimited.run(&wf, inputs()).await;
    assert!(server.rejected() > 0, "the control saw no 429");
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The number of the sample `metric` whose labels include `labels`.
fn sample(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = s
        .samples
        .iter()
        .find(|x| {
            x.metric == metric
                && labels
                    .iter()
                    .all(|(k, v)| x.labels.get(k).is_some_and(|have| have == *v))
        })
        .unwrap_or_else(|| panic!("no {metric} {labels:?}"));
    match found.value {
        Value::Counter(n) | Value::Gauge(n) | Value::Untyped(n) => n,
        ref other => panic!("{metric}: {other:?}"),
    }
}

/// A run of three llm steps: three model calls counted, the tokens the
/// fake server reported, three llm steps; a replay counts no call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_three_llm_steps_shows_in_the_metrics() {
    let server = FakeServer::start().await.unwrap();
    server.set_default(FakeResponse::echo().with_usage(11, 4));
    let metrics = Metrics::new();
    let engine = engine(&toml(&server, ""), metrics.clone());
    let wf = workflow(
        r#"
name: three
steps:
  - { name: a, kind: llm, prompt: "one", output: a }
  - { name: b, kind: llm, prompt: "two {{ a }}", output: b }
  - { name: c, kind: llm, prompt: "three {{ b }}", output: c }
"#,
    );
    let journal: Arc<dyn spes_engine::Journal> = Arc::new(spes_engine::MemoryJournal::default());
    engine
        .run_with_journal(&wf, Default::default(), journal.clone())
        .await
        .unwrap();
    // Replayed from the journal: no call made, none counted.
    engine
        .run_with_journal(&wf, Default::default(), journal)
        .await
        .unwrap();
    assert_eq!(server.request_count(), 3);
    let s = parse(&metrics.render(None).await);
    let call = [("provider", "fake"), ("model", "m1"), ("outcome", "ok")];
    assert_eq!(
        sample(&s, "spes_model_call_duration_seconds_count", &call),
        3.0
    );
    let pm = [("provider", "fake"), ("model", "m1")];
    let tokens = |t| {
        let mut l = pm.to_vec();
        l.push(("type", t));
        sample(&s, "spes_tokens_total", &l)
    };
    assert_eq!((tokens("input"), tokens("output")), (33.0, 12.0));
    assert_eq!(sample(&s, "spes_cost_usd_total", &pm), 0.0);
    // With a price, each call made adds its cost: 11 + 4 tokens at $1,000
    // per million = $0.015 a call.
    let priced = Metrics::new();
    let prices = [(
        "fake".to_owned(),
        [(
            "m1".to_owned(),
            spes_core::budget::Price {
                input: 1000.0,
                output: 1000.0,
                cached_input: None,
                cache_write: None,
            },
        )]
        .into_iter()
        .collect(),
    )]
    .into_iter()
    .collect();
    let config = spes_core::config::parse_config("spes.toml", &toml(&server, "")).unwrap();
    let mut b = Engine::builder()
        .default_provider("fake")
        .metrics(priced.clone())
        .prices(prices);
    for p in ProviderRegistry::from_config_with_env(&config, |_| None)
        .unwrap()
        .providers()
    {
        b = b.provider(p);
    }
    let out = b.build().run(&wf, Default::default()).await.unwrap();
    assert!(
        (out.cost_usd.unwrap() - 0.045).abs() < 1e-9,
        "{:?}",
        out.cost_usd
    );
    let s2 = parse(&priced.render(None).await);
    assert!((sample(&s2, "spes_cost_usd_total", &pm) - 0.045).abs() < 1e-9);
    // Six finished llm steps: three run, three replayed.
    assert_eq!(
        sample(
            &s,
            "spes_step_duration_seconds_count",
            &[("kind", "llm"), ("outcome", "ok")]
        ),
        6.0
    );
}

/// Only a store that many workers share (PostgreSQL) shares rate limits;
/// through it, two limiters (two processes) keep `max_concurrency = 1`
/// together: the second call waits until the first one's answer is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_shared_through_a_postgres_store_only() {
    use spes_engine::limits::StoreLimits;
    use spes_llm::limit::Limiter;
    use spes_store::RunStore;

    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn RunStore> = Arc::new(
        spes_store::sqlite::SqliteStore::open(
            &dir.path().join("s.db"),
            spes_store::sqlite::SqliteOptions::default(),
        )
        .await
        .unwrap(),
    );
    assert!(StoreLimits::new(sqlite).is_none());

    let schema = spes_store::testing::postgres::TestSchema::new().await;
    let limits = spes_core::config::RateLimits {
        max_concurrency: std::num::NonZeroU32::new(1),
        ..Default::default()
    };
    let limiter = |store: spes_store::postgres::PostgresStore| {
        let shared = StoreLimits::new(Arc::new(store) as Arc<dyn RunStore>).unwrap();
        Limiter::with_backend(limits, Arc::new(shared))
    };
    let (a, b) = (limiter(schema.store().await), limiter(schema.store().await));
    let first = a.admit("fake", 1).await.unwrap();
    let hold = std::time::Duration::from_millis(300);
    let second = async {
        let started = std::time::Instant::now();
        let admitted = b.admit("fake", 1).await.unwrap();
        (started.elapsed(), admitted.waited)
    };
    let release = async {
        tokio::time::sleep(hold).await;
        drop(first);
    };
    let ((took, waited), ()) = tokio::join!(second, release);
    assert!(took >= hold, "{took:?}");
    assert!(waited >= hold, "{waited:?}");
    // Without the store (the control) the second call goes at once.
    let (a, b) = (Limiter::new(limits), Limiter::new(limits));
    let _first = a.admit("fake", 1).await.unwrap();
    let waited = b.admit("fake", 1).await.unwrap().waited;
    assert!(waited < hold / 2, "{waited:?}");
}

/// A map's items count in the run's totals: their calls, tokens and cost
/// (items are child executions whose counters the map takes).
#[tokio::test]
async fn a_maps_items_add_their_cost_to_the_run() {
    let server = FakeServer::start().await.unwrap();
    server.set_default(FakeResponse::echo().with_usage(11, 4));
    let config = spes_core::config::parse_config("spes.toml", &toml(&server, "")).unwrap();
    let price = spes_core::budget::Price {
        input: 1000.0,
        output: 1000.0,
        cached_input: None,
        cache_write: None,
    };
    let prices = [(
        "fake".to_owned(),
        [("m1".to_owned(), price)].into_iter().collect(),
    )]
    .into_iter()
    .collect();
    let mut b = Engine::builder()
        .default_provider("fake")
        .metrics(Metrics::new())
        .prices(prices);
    for p in ProviderRegistry::from_config_with_env(&config, |_| None)
        .unwrap()
        .providers()
    {
        b = b.provider(p);
    }
    let docs: Vec<_> = (0..5).map(|i| json!(format!("d{i}"))).collect();
    let out = b
        .build()
        .run(
            &workflow(MAP),
            [("docs".to_owned(), json!(docs))].into_iter().collect(),
        )
        .await
        .unwrap();
    assert_eq!(server.request_count(), 5);
    assert_eq!(out.model_calls, 5);
    // 11 + 4 tokens at $1,000 per million: $0.015 a call.
    let cost = out.cost_usd.expect("the items' cost");
    assert!((cost - 0.075).abs() < 1e-9, "{cost}");
}
