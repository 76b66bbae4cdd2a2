//! Orchestration benchmark (`cargo bench -p spes-engine --bench orchestration`).
//!
//! 1. map-reduce over 1,000 items against the in-repo fake server with
//!    200 ms latency, through the OpenAI adapter, at concurrency 8, 64 and
//!    256: wall time against the limit ceil(1000/N) × 0.2 s + 0.2 s (the
//!    map's waves plus the reduce call).
//! 2. 10,000 pure transform steps: steps per second.
//!
//! Peak RSS (VmHWM) is reset before each case (`/proc/self/clear_refs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use spes_core::component::ComponentRegistry;
use spes_core::workflow::{ValidateEnv, Workflow, parse_workflow, validate};
use spes_engine::{Engine, RunEnd, WorkflowSource};
use spes_fake_llm::FakeServer;
use spes_llm::Provider;
use spes_llm::http::HttpProviderConfig;
use spes_llm::openai::OpenAiProvider;
use spes_store::RunStore;
use spes_store::postgres::{PostgresOptions, PostgresStore};
use spes_store::sqlite::{SqliteOptions, SqliteStore};
use spes_store::testing::postgres::TestSchema;
use sqlx::Connection as _;

const ITEMS: usize = 1000;

fn wf(yaml: &str) -> Workflow {
    let spec = parse_workflow("bench.yaml", yaml).unwrap();
    let reg = ComponentRegistry::from_components(vec![]);
    let env = ValidateEnv {
        components: &reg,
        providers: None,
    };
    validate(spec, "bench.yaml", yaml, &env).unwrap().0
}

fn reset_peak() {
    // Linux: "5" resets the peak RSS counter of this process.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn map_reduce_yaml(n: usize) -> String {
    format!(
        r#"
name: bench-map-reduce
inputs: {{ items: {{ type: list, required: true }} }}
steps:
  - name: m
    kind: map
    over: items
    concurrency: {n}
    step: {{ name: summarize, kind: llm, prompt: "Summarise {{{{ item }}}}" }}
    output: sums
  - name: r
    kind: reduce
    over: sums
    step: {{ name: combine, kind: llm, prompt: "Combine {{{{ items | length }}}} summaries" }}
    output: overview
"#
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = FakeServer::start().await.unwrap();
        server.set_latency(Duration::from_millis(200));
        let provider = Arc::new(
            OpenAiProvider::new(
                HttpProviderConfig::new("fake")
                    .with_model("bench")
                    .with_base_url(server.openai_base_url())
                    .with_stream(false),
            )
            .unwrap(),
        );
        let raw = provider.clone();
        let engine = Engine::builder().provider(provider).build();
        let pg_url = spes_store::testing::postgres::server_url();
        let items: Vec<Value> = (0..ITEMS).map(|i| json!(format!("document {i}"))).collect();
        println!("map-reduce over {ITEMS} items, fake server at 200 ms, OpenAI adapter (no streaming)");
        println!("  N     wall      limit     ratio   calls  peak RSS");
        // SPES_BENCH_N=64,256 and SPES_BENCH_REPEAT=3 narrow or repeat the runs.
        let ns: Vec<usize> = std::env::var("SPES_BENCH_N")
            .ok()
            .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![8, 64, 256]);
        let repeat: usize = std::env::var("SPES_BENCH_REPEAT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let runs: Vec<usize> = ns
            .iter()
            .flat_map(|&n| std::iter::repeat_n(n, repeat))
            .collect();
        for n in runs {
            // Baseline: the same 1,001 calls straight through the adapter
            // (no engine), to tell engine overhead from HTTP + fake server cost.
            let t = Instant::now();
            let futs = (0..ITEMS).map(|i| {
                let p = raw.clone();
                async move {
                    let req = spes_core::message::ChatRequest::user(format!("Summarise document {i}"));
                    p.complete(&req, &spes_llm::CallContext::for_step("raw")).await.unwrap()
                }
            });
            let _: Vec<_> = futures::stream::iter(futs)
                .buffer_unordered(n)
                .collect()
                .await;
            let req = spes_core::message::ChatRequest::user("Combine");
            raw.complete(&req, &spes_llm::CallContext::for_step("raw"))
                .await
                .unwrap();
            let raw_wall = t.elapsed().as_secs_f64();
            let limit = (ITEMS.div_ceil(n)) as f64 * 0.2 + 0.2;
            println!(
                "  {n:<4}  {raw_wall:>6.3} s  {limit:>6.3} s  {:>5.3}×  (adapter alone, no engine)",
                raw_wall / limit
            );
            let w = wf(&map_reduce_yaml(n));
            let inputs: std::collections::BTreeMap<String, Value> =
                [("items".to_owned(), Value::Array(items.clone()))]
                    .into_iter()
                    .collect();
            reset_peak();
            let before = server.request_count();
            let t = Instant::now();
            let out = engine.run(&w, inputs.clone()).await.unwrap();
            let wall = t.elapsed().as_secs_f64();
            let calls = server.request_count() - before;
            assert_eq!(calls, ITEMS + 1);
            assert_eq!(out.context["sums"].as_array().map(Vec::len), Some(ITEMS));
            let limit = (ITEMS.div_ceil(n)) as f64 * 0.2 + 0.2;
            println!(
                "  {n:<4}  {wall:>6.3} s  {limit:>6.3} s  {:>5.3}×  {calls}   {:.1} MiB",
                wall / limit,
                peak_rss_mib()
            );
            // The same run, durable: every answer committed to a store
            // before the workflow sees it (appends that finish together
            // share a commit).
            let source = WorkflowSource {
                path: "/bench/map-reduce.yaml".into(),
                text: map_reduce_yaml(n),
            };
            let dir = tempfile::tempdir().unwrap();
            let sqlite: Arc<dyn RunStore> = Arc::new(
                SqliteStore::open(&dir.path().join("spes.db"), SqliteOptions::default())
                    .await
                    .unwrap(),
            );
            let mut stores = vec![("SQLite, synchronous=FULL", sqlite)];
            let pg_schema = match sqlx::PgConnection::connect(&pg_url).await {
                Ok(_) => Some(TestSchema::new().await),
                Err(_) => None,
            };
            if let Some(schema) = &pg_schema {
                let pg = PostgresStore::connect(schema.url(), PostgresOptions::default())
                    .await
                    .unwrap();
                stores.push(("PostgreSQL", Arc::new(pg)));
            }
            for (what, store) in stores {
                let before = server.request_count();
                let t = Instant::now();
                let (id, end) = engine
                    .start(store.clone(), &w, &source, inputs.clone())
                    .await
                    .unwrap();
                let wall = t.elapsed().as_secs_f64();
                let calls = server.request_count() - before;
                assert!(matches!(end, RunEnd::Completed(_)), "{end:?}");
                assert_eq!(calls, ITEMS + 1);
                assert_eq!(store.entries(&id).await.unwrap().len(), ITEMS + 1);
                println!(
                    "  {n:<4}  {wall:>6.3} s  {limit:>6.3} s  {:>5.3}×  {calls}   durable ({what})",
                    wall / limit,
                );
                store.close().await;
            }
        }

        let steps = 10_000usize;
        let mut yaml = String::from(
            "name: bench-transforms\ninputs: { text: { type: string, required: true } }\nsteps:\n  - { name: s0, kind: transform, fn: trim, input: \"{{ text }}\", output: x }\n",
        );
        for i in 1..steps {
            let _ = writeln!(
                yaml,
                "  - {{ name: s{i}, kind: transform, fn: trim, input: \"{{{{ x }}}}\", output: x }}"
            );
        }
        reset_peak();
        let t = Instant::now();
        let w = wf(&yaml);
        let validate_s = t.elapsed().as_secs_f64();
        let inputs = [("text".to_owned(), json!("  hello  "))].into_iter().collect();
        let t = Instant::now();
        let out = engine.run(&w, inputs).await.unwrap();
        let run_s = t.elapsed().as_secs_f64();
        assert_eq!(out.output, Some(json!("hello")));
        println!(
            "{steps} transform steps: {:.0} steps/s ({run_s:.3} s; validation {validate_s:.3} s), peak RSS {:.1} MiB",
            steps as f64 / run_s,
            peak_rss_mib()
        );
    });
}
