//! `cargo bench -p spes-cli --bench workers`: throughput of `spes worker`
//! processes sharing one PostgreSQL store, over one run whose map has
//! 10,000 small items (a `transform`, so no model is the bottleneck and
//! what is measured is the queue: claim, load, commit).
//!
//! For 1, 2 and 4 workers (concurrency 8 each) it prints items per second
//! and the worker time per item (wall time x workers / items); then one
//! worker with concurrency 1 over fewer items, whose time per item is the
//! whole serial claim + journal load + result commit round.
//!
//! Needs PostgreSQL at `SPES_TEST_POSTGRES_URL` (see `scripts/postgres.sh`).
//! `SPES_BENCH_ITEMS=N` changes the item count. Prints figures; asserts
//! only that every run completes with every item.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spes_store::testing::postgres::TestSchema;
use spes_store::{RunId, RunStatus, RunStore};

fn workflow() -> &'static str {
    "name: bench\ninputs:\n  items: { type: list, required: true }\nsteps:\n  - name: each\n    kind: map\n    over: items\n    concurrency: 8\n    step: { name: up, kind: transform, fn: uppercase, input: \"{{ item }}\" }\n    output: out\noutput: out\n"
}

struct Project {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
}

impl Project {
    fn new(items: usize) -> Self {
        Self::with(
            "[defaults]\nprovider = \"test\"\n\n[providers.test]\nkind = \"scripted\"\nscript = \"answers.yaml\"\n",
            workflow(),
            items,
        )
    }

    fn with(toml: &str, wf: &str, items: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::write(root.join("spes.toml"), toml).unwrap();
        std::fs::write(root.join("answers.yaml"), "[]\n").unwrap();
        std::fs::write(root.join("wf.yaml"), wf).unwrap();
        let list: Vec<String> = (0..items).map(|i| format!("item {i}")).collect();
        std::fs::write(
            root.join("items.json"),
            serde_json::to_string(&list).unwrap(),
        )
        .unwrap();
        Self { _dir: dir, root }
    }

    fn spes(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_spes"));
        c.current_dir(&self.root)
            .args(args)
            .stdin(Stdio::null())
            .env_remove("SPES_STORE")
            .env_remove("SPES_CONFIG");
        c
    }
}

struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// Seconds from enqueue to completion of one run of `items` items.
async fn measure(workers: usize, concurrency: usize, items: usize) -> Duration {
    let p = Project::new(items);
    let (elapsed, output, _) = run_on_workers(&p, workers, concurrency).await;
    assert_eq!(output.as_array().map(Vec::len), Some(items));
    assert_eq!(
        output[items - 1],
        serde_json::json!(format!("ITEM {}", items - 1))
    );
    elapsed
}

/// Starts `workers` workers on a fresh schema, runs `p`'s workflow on them
/// (detached) and returns the time from enqueue to completion and the output.
async fn run_on_workers(
    p: &Project,
    workers: usize,
    concurrency: usize,
) -> (Duration, serde_json::Value, Instant) {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let url = schema.url().to_owned();
    let mut ws = Workers(Vec::new());
    for w in 0..workers {
        ws.0.push(
            p.spes(&[
                "worker",
                "--store",
                &url,
                "--id",
                &format!("bench-{w}"),
                "--concurrency",
                &concurrency.to_string(),
                "--poll-ms",
                "20",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        );
    }
    // Workers are up once each has connected (its session shows in the server).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT pid) FROM pg_stat_activity WHERE application_name = 'spes'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        if n > i64::try_from(workers).unwrap() {
            break;
        }
        assert!(Instant::now() < deadline, "workers did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let out = p
        .spes(&[
            "run",
            "wf.yaml",
            "--detach",
            "--quiet",
            "--store",
            &url,
            "--input-file",
            "items=items.json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: RunId = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    loop {
        match store.status(&run).await.unwrap() {
            Some(RunStatus::Completed) => break,
            Some(RunStatus::Failed) => {
                panic!("{:?}", store.run(&run).await.unwrap().unwrap().error)
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let elapsed = started.elapsed();
    let output = store.run(&run).await.unwrap().unwrap().output.unwrap();
    drop(ws);
    (elapsed, output, started)
}

/// Map-reduce of 1,000 model calls against the in-repo fake server at
/// 200 ms (OpenAI adapter), map concurrency 64, on `workers` workers of
/// concurrency 64: wall time against the limit ceil(1000/64) x 0.2 s + 0.2 s.
async fn map_reduce(workers: usize) {
    const ITEMS: usize = 1000;
    const N: usize = 64;
    let server = spes_fake_llm::FakeServer::start().await.unwrap();
    server.set_latency(Duration::from_millis(200));
    let toml = format!(
        "[defaults]\nprovider = \"fake\"\n\n[providers.fake]\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"bench\"\nstream = false\n",
        server.openai_base_url()
    );
    let wf = format!(
        "name: bench-map-reduce\ninputs:\n  items: {{ type: list, required: true }}\nsteps:\n  - name: m\n    kind: map\n    over: items\n    concurrency: {N}\n    step: {{ name: summarize, kind: llm, prompt: \"Summarise {{{{ item }}}}\" }}\n    output: sums\n  - name: r\n    kind: reduce\n    over: sums\n    step: {{ name: combine, kind: llm, prompt: \"Combine {{{{ items | length }}}} summaries\" }}\n    output: overview\noutput: sums\n"
    );
    let p = Project::with(&toml, &wf, ITEMS);
    let before = server.request_count();
    // When each request arrives, to show where the time beyond the limit goes.
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let sink = arrivals.clone();
    server.on_request(move |_| sink.lock().unwrap().push(Instant::now()));
    let (elapsed, output, queued) = run_on_workers(&p, workers, N).await;
    let finished = queued + elapsed;
    assert_eq!(output.as_array().map(Vec::len), Some(ITEMS));
    assert_eq!(server.request_count() - before, ITEMS + 1);
    let limit = ITEMS.div_ceil(N) as f64 * 0.2 + 0.2;
    let s = elapsed.as_secs_f64();
    println!(
        "map-reduce, {ITEMS} model calls at 200 ms, N = {N}, {workers} worker(s): {s:.3} s against a limit of {limit:.3} s: {:.3}x (target <= 1.10x)",
        s / limit
    );
    // The first request comes after the run is queued and picked up; a
    // wave of N starts when the one before ends; the reduce follows the
    // last item; the run completes after the reduce.
    let at = arrivals.lock().unwrap().clone();
    if workers == 1 && at.len() == ITEMS + 1 {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let waves: Vec<f64> = (1..ITEMS.div_ceil(N))
            .map(|w| ms(at[w * N] - at[(w - 1) * N]) - 200.0)
            .collect();
        let spread: Vec<f64> = (0..ITEMS.div_ceil(N))
            .map(|w| ms(at[((w + 1) * N).min(ITEMS) - 1] - at[w * N]))
            .collect();
        println!(
            "  where the time goes: queued -> first call {:.1} ms; each wave starts {:.1} ms (median) after 200 ms; a wave's calls spread over {:.1} ms (median); last item call -> reduce call {:.1} ms (200 ms of it the call); reduce call -> run completed {:.1} ms (200 ms of it the call)",
            ms(at[0] - queued),
            median_f(waves),
            median_f(spread),
            ms(at[ITEMS] - at[ITEMS - 1]),
            ms(finished - at[ITEMS]),
        );
        println!(
            "  the first wave's calls arrive at +{:.1} / +{:.1} / +{:.1} / +{:.1} ms (the 16th, 32nd, 48th and 64th)",
            ms(at[15] - at[0]),
            ms(at[31] - at[0]),
            ms(at[47] - at[0]),
            ms(at[N - 1] - at[0]),
        );
    }
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let items: usize = std::env::var("SPES_BENCH_ITEMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    println!(
        "workers bench: one run, a map of {items} transform items, PostgreSQL at {}",
        spes_store::postgres::redact(&spes_store::testing::postgres::server_url())
    );
    println!(
        "{:>8} {:>12} {:>10} {:>10} {:>22}",
        "workers", "concurrency", "seconds", "items/s", "worker ms per item"
    );
    // `-- map-reduce` runs only the map-reduce part.
    let only_map_reduce = std::env::args().any(|a| a == "map-reduce");
    for workers in [1, 2, 4].into_iter().filter(|_| !only_map_reduce) {
        let d = measure(workers, 8, items).await;
        let s = d.as_secs_f64();
        println!(
            "{workers:>8} {:>12} {s:>10.2} {:>10.0} {:>22.2}",
            8,
            items as f64 / s,
            s * 1000.0 * workers as f64 / items as f64
        );
    }
    for workers in [1, 2] {
        map_reduce(workers).await;
    }
    if only_map_reduce {
        return;
    }
    let serial = (items / 20).max(50);
    let d = measure(1, 1, serial).await;
    let s = d.as_secs_f64();
    println!(
        "{:>8} {:>12} {s:>10.2} {:>10.0} {:>22.2}   <- {serial} items one at a time: the whole claim + load + commit round per item",
        1,
        1,
        serial as f64 / s,
        s * 1000.0 / serial as f64
    );
}
