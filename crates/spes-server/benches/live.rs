//! `cargo bench -p spes-server --bench live`: the server under its two
//! crowd loads, over real HTTP on loopback, SQLite store in a temp dir,
//! model calls to the in-project fake OpenAI-compatible server:
//!
//! 1. 200 concurrent SSE clients (in this process, on the same two cores)
//!    on one run while it executes a 100-step chain, the model answering
//!    at once and in 20 ms: the run's wall time beside the same run watched
//!    by nobody (target: under 20% added), and every client got every
//!    entry;
//! 2. 1,000 open gates decided through the API by 20 concurrent clients,
//!    each trying every gate: exactly one decision per gate.
//!
//! Prints figures; asserts that no event was missed and that no gate was
//! decided twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use spes_core::Diagnostics;
use spes_core::component::ComponentRegistry;
use spes_core::workflow::{ValidateEnv, Workflow, parse_workflow, validate};
use spes_engine::{Engine, WorkflowSource};
use spes_fake_llm::{FakeResponse, FakeServer};
use spes_llm::http::HttpProviderConfig;
use spes_llm::openai::OpenAiProvider;
use spes_server::auth::Auth;
use spes_server::{AppState, Loaded, Project, router};
use spes_store::RunStore;
use spes_store::sqlite::{SqliteOptions, SqliteStore};

const STEPS: usize = 100;
const CLIENTS: usize = 200;
const TRIALS: usize = 5;
const GATES: usize = 1000;
const DECIDERS: usize = 20;

/// `live`: a gate (so clients attach before anything runs), then a chain
/// of 100 llm steps. `gate`: one approval.
fn workflow_text(name: &str) -> String {
    if name == "gate" {
        return "name: gate\ninputs:\n  text: { type: string, default: ship it }\nsteps:\n  - { name: ok, kind: approval, show: text, output: ok }\n".to_owned();
    }
    let mut yaml = String::from(
        "name: live\ninputs:\n  text: { type: string, default: go }\nsteps:\n  - { name: go, kind: approval, show: text, output: go }\n",
    );
    for i in 1..=STEPS {
        let prev = if i == 1 {
            String::new()
        } else {
            format!(" {{{{ s{} }}}}", i - 1)
        };
        yaml.push_str(&format!(
            "  - {{ name: s{i}, kind: llm, prompt: \"Step {i}:{prev}\", max_tokens: 16, output: s{i} }}\n"
        ));
    }
    yaml
}

struct Bench {
    base_url: String,
}

impl Project for Bench {
    fn workflow_files(&self) -> Vec<PathBuf> {
        vec!["/bench/live.yaml".into(), "/bench/gate.yaml".into()]
    }
    fn load(&self, file: &Path) -> Result<Loaded, Diagnostics> {
        let name = file.file_stem().unwrap().to_str().unwrap();
        let text = workflow_text(name);
        let shown = file.display().to_string();
        let spec = parse_workflow(&shown, &text)?;
        let reg = ComponentRegistry::from_components(vec![]);
        let env = ValidateEnv {
            components: &reg,
            providers: None,
        };
        let (workflow, warnings) = validate(spec, &shown, &text, &env)?;
        Ok(Loaded {
            workflow,
            warnings,
            source: WorkflowSource { path: shown, text },
        })
    }
    fn check_inputs(&self, _: &Workflow, _: &BTreeMap<String, Value>) -> Result<(), Diagnostics> {
        Ok(())
    }
    fn engine(&self, _: Option<&str>) -> Result<Engine, String> {
        let cfg = HttpProviderConfig::new("fake")
            .with_base_url(self.base_url.clone())
            .with_model("fake-model");
        Ok(Engine::builder()
            .provider(Arc::new(
                OpenAiProvider::new(cfg).map_err(|e| e.to_string())?,
            ))
            .build())
    }
    fn components(&self) -> (ComponentRegistry, Diagnostics) {
        (
            ComponentRegistry::from_components(vec![]),
            Diagnostics::default(),
        )
    }
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
    async fn start(&self, workflow: &str) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/runs",
                Some(json!({ "workflow": workflow })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["run"]["id"].as_str().unwrap().to_owned()
    }
    async fn show(&self, run: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("/v1/runs/{run}"), None)
            .await
            .1
    }
    async fn until(&self, run: &str, status: &str) -> Value {
        let started = Instant::now();
        loop {
            let doc = self.show(run).await;
            if doc["run"]["status"] == status {
                return doc;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "run {run} never {status}: {doc}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One SSE client: the seqs of the `entry` events it got, and whether the
/// stream ended with `end`. Tells `ready` once the first event arrived.
async fn watch(
    http: reqwest::Client,
    url: String,
    ready: tokio::sync::mpsc::Sender<()>,
) -> (Vec<i64>, bool) {
    let resp = http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    // Read as bytes, in place: a client as light as a browser's parser, so
    // that the figure is the server's more than this process's clients'.
    let mut buf: Vec<u8> = Vec::new();
    let mut seqs = Vec::new();
    let mut first = true;
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk.unwrap());
        let mut from = 0;
        while let Some(at) = buf[from..].windows(2).position(|w| w == b"\n\n") {
            let event = &buf[from..from + at];
            from += at + 2;
            if first {
                first = false;
                let _ = ready.send(()).await;
            }
            let mut name: &[u8] = b"";
            let mut id: Option<&[u8]> = None;
            for line in event.split(|b| *b == b'\n') {
                if let Some(v) = line.strip_prefix(b"event: ") {
                    name = v;
                } else if let Some(v) = line.strip_prefix(b"id: ") {
                    id = Some(v);
                }
            }
            if name == b"entry" {
                let id = id.unwrap_or_else(|| {
                    panic!("an entry without an id: {}", String::from_utf8_lossy(event))
                });
                seqs.push(std::str::from_utf8(id).unwrap().parse().unwrap());
            } else if name == b"end" {
                return (seqs, true);
            }
        }
        buf.drain(..from);
    }
    (seqs, false)
}

fn ts(v: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .to_utc()
}

/// One trial: the run's wall time from the decision to its completion
/// (server timestamps), with `clients` watching it.
async fn trial(api: &Api, clients: usize) -> Duration {
    let run = api.start("live").await;
    api.until(&run, "waiting").await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(clients.max(1));
    let watchers: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(watch(
                api.http.clone(),
                format!("{}/v1/runs/{run}/events", api.base),
                tx.clone(),
            ))
        })
        .collect();
    for _ in 0..clients {
        rx.recv().await.unwrap();
    }
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/runs/{run}/decisions"),
            Some(json!({ "action": "approve" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let doc = api.until(&run, "completed").await;
    let entries = doc["entries"].as_array().unwrap().len();
    assert_eq!(entries, STEPS + 1);
    let all: Vec<i64> = (1..=i64::try_from(entries).unwrap()).collect();
    for w in watchers {
        let (seqs, ended) = w.await.unwrap();
        assert!(ended, "a client's stream did not end");
        assert_eq!(seqs, all, "a client missed or repeated an event");
    }
    let decided = ts(&doc["gates"][0]["decided_at"]);
    let done = ts(&doc["run"]["updated_at"]);
    (done - decided).to_std().unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let fake = FakeServer::start().await.unwrap();
        fake.set_default(FakeResponse::text("a short answer"));
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn RunStore> = Arc::new(
            SqliteStore::open(
                &dir.path().join("spes.db"),
                SqliteOptions::default().with_readers(4),
            )
            .await
            .unwrap(),
        );
        let auth = Auth::from_config(
            &BTreeMap::new(),
            &|_| None,
            "127.0.0.1:7700".parse().unwrap(),
            "bench",
        )
        .unwrap();
        let project = Arc::new(Bench {
            base_url: fake.openai_base_url(),
        });
        let state = AppState::new(store.clone(), project, auth);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        let api = Api {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .unwrap(),
        };

        // 1. SSE crowd, with the model answering at once (the run is all
        // engine and store: the harshest case) and in 20 ms (a fast model).
        // One warm-up trial each, then alternating trials.
        // `-- sse` or `-- decisions` runs one part (`-- sse0`: 0 ms only).
        let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
        let wanted = |p: &str| args.is_empty() || args.iter().any(|a| a.starts_with(p));
        let latencies: &[u64] = if args.iter().any(|a| a == "sse0") { &[0] } else { &[0, 20] };
        for &latency in latencies.iter().filter(|_| wanted("sse")) {
            fake.set_latency(Duration::from_millis(latency));
            trial(&api, 0).await;
            trial(&api, CLIENTS).await;
            let (mut alone, mut watched) = (Vec::new(), Vec::new());
            for _ in 0..TRIALS {
                alone.push(trial(&api, 0).await);
                watched.push(trial(&api, CLIENTS).await);
            }
            let (a, w) = (median(alone), median(watched));
            println!(
                "a {STEPS}-step chain, model answering in {latency} ms: {:.1} ms watched by nobody, {:.1} ms watched by {CLIENTS} SSE clients (in this process): {:+.1}% wall time (median of {TRIALS}; target < 20%); every client got every entry",
                a.as_secs_f64() * 1e3,
                w.as_secs_f64() * 1e3,
                (w.as_secs_f64() / a.as_secs_f64() - 1.0) * 100.0
            );
        }
        fake.set_latency(Duration::ZERO);

        if !wanted("decisions") {
            store.close().await;
            return;
        }
        // 2. Decisions: 1,000 open gates, 20 clients each trying them all
        // (from different starting points), exactly one decision each.
        let t = Instant::now();
        let mut runs = Vec::new();
        for _ in 0..GATES {
            runs.push(api.start("gate").await);
        }
        for r in &runs {
            api.until(r, "waiting").await;
        }
        println!(
            "setup: {GATES} runs waiting at a gate in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let runs = Arc::new(runs);
        let t = Instant::now();
        let tasks: Vec<_> = (0..DECIDERS)
            .map(|c| {
                let runs = runs.clone();
                let http = api.http.clone();
                let base = api.base.clone();
                tokio::spawn(async move {
                    let mut won = Vec::new();
                    let mut refused = 0usize;
                    for i in 0..runs.len() {
                        let run = &runs[(i + c * runs.len() / DECIDERS) % runs.len()];
                        let resp = http
                            .post(format!("{base}/v1/runs/{run}/decisions"))
                            .json(&json!({ "action": "approve", "comments": format!("client {c}") }))
                            .send()
                            .await
                            .unwrap();
                        match resp.status().as_u16() {
                            200 => won.push(run.clone()),
                            409 => refused += 1,
                            other => panic!("decision answered {other}: {}", resp.text().await.unwrap()),
                        }
                    }
                    (won, refused)
                })
            })
            .collect();
        let mut won_by_run: BTreeMap<String, usize> = BTreeMap::new();
        let mut refused = 0;
        for task in tasks {
            let (won, r) = task.await.unwrap();
            refused += r;
            for run in won {
                *won_by_run.entry(run).or_default() += 1;
            }
        }
        let elapsed = t.elapsed();
        assert_eq!(won_by_run.len(), GATES, "a gate was never decided");
        assert!(won_by_run.values().all(|n| *n == 1), "a gate was decided twice");
        assert_eq!(refused, GATES * (DECIDERS - 1));
        for r in runs.iter() {
            let doc = api.until(r, "completed").await;
            let decisions = doc["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == "decision")
                .count();
            assert_eq!(decisions, 1, "run {r}: {doc}");
        }
        println!(
            "{} decision requests from {DECIDERS} clients on {GATES} gates in {:.2} s ({:.0} requests/s): {GATES} recorded, exactly one per gate, {refused} refused with 409",
            GATES * DECIDERS,
            elapsed.as_secs_f64(),
            (GATES * DECIDERS) as f64 / elapsed.as_secs_f64()
        );
        store.close().await;
    });
}
