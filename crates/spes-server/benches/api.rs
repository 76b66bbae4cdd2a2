//! `cargo bench -p spes-server --bench api`: server time of the two reads
//! a dashboard makes most, through the real router (no socket), on a
//! SQLite store in a temp dir:
//!
//! 1. list the newest 50 of 10,000 runs (target < 20 ms);
//! 2. show a run with 1,000 steps (target < 100 ms).
//!
//! Prints figures; asserts only that the answers are what they should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use spes_core::component::ComponentRegistry;
use spes_core::workflow::{ValidateEnv, Workflow, parse_workflow, validate};
use spes_engine::{Engine, RunEnd, WorkflowSource};
use spes_llm::scripted::{Answer, Rule, ScriptedProvider};
use spes_server::auth::Auth;
use spes_server::{AppState, router};
use spes_store::RunStore;
use spes_store::sqlite::{SqliteOptions, SqliteStore};
use tower::ServiceExt;

/// A project with no files: the bench reads runs only.
#[path = "../tests/it/empty.rs"]
mod empty;
use empty::Empty;

/// A chain of `steps` llm steps, each prompt holding the previous output.
fn chain(steps: usize) -> (Workflow, WorkflowSource) {
    let mut yaml = String::from("name: chain\nsteps:\n");
    for i in 1..=steps {
        let prev = if i == 1 {
            String::new()
        } else {
            format!(" {{{{ s{} }}}}", i - 1)
        };
        yaml.push_str(&format!(
            "  - {{ name: s{i}, kind: llm, prompt: \"Step {i}:{prev}\", output: s{i} }}\n"
        ));
    }
    let spec = parse_workflow("chain.yaml", &yaml).unwrap();
    let reg = ComponentRegistry::from_components(vec![]);
    let env = ValidateEnv {
        components: &reg,
        providers: None,
    };
    let wf = validate(spec, "chain.yaml", &yaml, &env).unwrap().0;
    (
        wf,
        WorkflowSource {
            path: "/bench/chain.yaml".into(),
            text: yaml,
        },
    )
}

async fn get(state: &AppState, path: &str) -> (StatusCode, Value) {
    let resp = router(state.clone())
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn RunStore> = Arc::new(
            SqliteStore::open(&dir.path().join("spes.db"), SqliteOptions::default())
                .await
                .unwrap(),
        );
        // One run of 1,000 steps, executed for real (its journal, timings
        // and usage as a run leaves them).
        let (wf, source) = chain(1000);
        let engine = Engine::builder()
            .provider(Arc::new(ScriptedProvider::new(
                "bench",
                vec![Rule::default(Answer::Reply(
                    "an answer of a few words, as a model gives".to_owned(),
                ))],
            )))
            .build();
        let (big, end) = engine
            .start(store.clone(), &wf, &source, BTreeMap::new())
            .await
            .unwrap();
        assert!(matches!(end, RunEnd::Completed(_)));
        // Then 10,000 more runs (recorded, not executed).
        let t = Instant::now();
        for _ in 0..10_000 {
            store
                .create_run(&spes_store::testing::sample_run())
                .await
                .unwrap();
        }
        println!(
            "setup: a 1,000-step run, then 10,000 runs recorded in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let auth = Auth::from_config(
            &BTreeMap::new(),
            &|_| None,
            "127.0.0.1:7700".parse().unwrap(),
            "bench",
        )
        .unwrap();
        let state = AppState::new(store.clone(), Arc::new(Empty), auth);

        let mut list = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            let (status, body) = get(&state, "/v1/runs?limit=50").await;
            list.push(t.elapsed());
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body["runs"].as_array().map(Vec::len), Some(50));
        }
        println!(
            "GET /v1/runs?limit=50 of 10,001 runs: {:.2} ms server time (median of 50)  (target < 20 ms)",
            median(list)
        );

        let mut show = Vec::new();
        let path = format!("/v1/runs/{big}");
        for _ in 0..20 {
            let t = Instant::now();
            let (status, body) = get(&state, &path).await;
            show.push(t.elapsed());
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body["run"]["status"], "completed");
            assert_eq!(body["entries"].as_array().map(Vec::len), Some(1000));
        }
        println!(
            "GET /v1/runs/ID of a 1,000-step run: {:.2} ms server time (median of 20)  (target < 100 ms)",
            median(show)
        );
        store.close().await;
    });
}
