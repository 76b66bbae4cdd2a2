//! Providers' rate limits shared by `spes worker` processes through the
//! PostgreSQL store: two workers running one map against one fake server
//! honour `max_concurrency` and `rpm` together; with `--local-limits`
//! (each worker on its own: the control) they do not.

use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spes_fake_llm::{FakeServer, OverLimit};
use spes_store::testing::postgres::TestSchema;

use super::harness::wait;
use super::shared::{Dir, KillOnDrop, completed, signal, until};

/// A map of `items` model calls, `concurrency` at once per worker.
fn map(items: usize) -> String {
    let topics: Vec<String> = (0..items).map(|i| format!("\"t{i}\"")).collect();
    format!(
        "name: wide\ninputs:\n  topics: {{ type: list, default: [{}] }}\nsteps:\n  - name: gather\n    kind: map\n    over: topics\n    as: t\n    concurrency: 64\n    step: {{ name: answer, kind: llm, prompt: \"[m{{{{ index }}}}] {{{{ t }}}}\", max_tokens: 16 }}\n    output: answers\noutput: answers\n",
        topics.join(", ")
    )
}

/// A project whose provider `remote` (the fake server) has `limit`
/// (a spes.toml line) set, with the map workflow.
fn project(server: &FakeServer, limit: &str, items: usize) -> Dir {
    let d = Dir::new(&server.openai_base_url());
    let toml = std::fs::read_to_string(d.root.join("spes.toml")).unwrap();
    d.write("spes.toml", &format!("{toml}{limit}\n"));
    d.write("wf.yaml", &map(items));
    d
}

/// `spes worker` in `d` at concurrency 16, logging to `NAME.log`.
fn worker(d: &Dir, store: &str, name: &str, extra: &[&str]) -> Child {
    let log = std::fs::File::create(d.root.join(format!("{name}.log"))).unwrap();
    let mut args = vec![
        "worker",
        "--store",
        store,
        "--id",
        name,
        "--concurrency",
        "16",
        "--poll-ms",
        "50",
    ];
    args.extend_from_slice(extra);
    d.command(&args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start spes worker")
}

fn logs(d: &Dir) -> String {
    ["a", "b"]
        .iter()
        .map(|n| std::fs::read_to_string(d.root.join(format!("{n}.log"))).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Two workers (with `extra` arguments) on one store and one queued run;
/// returns them with the schema.
async fn two_workers(d: &Dir, extra: &[&str]) -> (TestSchema, spes_store::RunId, [Child; 2]) {
    let schema = TestSchema::new().await;
    let run = d.enqueue("wf.yaml", schema.url(), &[]);
    let a = worker(d, schema.url(), "a", extra);
    let b = worker(d, schema.url(), "b", extra);
    (schema, run, [a, b])
}

/// Stops both workers; returns how many items each executed.
async fn stop(d: &Dir, workers: [Child; 2]) -> [u64; 2] {
    for w in workers {
        signal(w.id(), "TERM");
        let exit = wait(w).await;
        assert_eq!(exit.code(), Some(0), "{}", logs(d));
    }
    ["a", "b"].map(|n| {
        let log = std::fs::read_to_string(d.root.join(format!("{n}.log"))).unwrap_or_default();
        log.lines()
            .find_map(|l| {
                let rest = l.split(" runs, ").nth(1)?;
                rest.split(' ').next()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no final line in {n}.log:\n{log}"))
    })
}

/// The acceptance test of a shared `max_concurrency`: 300 items, two
/// workers at concurrency 16 each, a server that answers 429 to more than
/// 4 requests at once, `max_concurrency = 4`: no request is rejected.
/// The control, each worker keeping its own 4 (`--local-limits`), is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_share_max_concurrency_and_no_request_is_rejected() {
    let items = 300;
    let server = FakeServer::start().await.unwrap();
    server.set_latency(Duration::from_millis(20));
    server.set_max_concurrency(Some(4), OverLimit::Reject);
    let d = project(&server, "max_concurrency = 4", items);

    let started = Instant::now();
    let (schema, run, workers) = two_workers(&d, &[]).await;
    let _guards = workers.each_ref().map(|w| KillOnDrop(w.id()));
    let store = schema.store().await;
    completed(&store, &run, Duration::from_secs(180)).await;
    let took = started.elapsed();
    let done = stop(&d, workers).await;
    // Both took part: the limit held across processes, not in one.
    assert!(done.iter().all(|n| *n > 0), "items done by a, b: {done:?}");
    assert_eq!(server.rejected(), 0, "rejected requests\n{}", logs(&d));
    assert!(server.max_in_flight() <= 4, "{}", server.max_in_flight());
    assert!(server.request_count() >= items);
    let both = logs(&d);
    assert!(both.contains("rate limits shared"), "{both}");
    eprintln!(
        "{items} items in {took:?} (a {}, b {}); at most {} in flight",
        done[0],
        done[1],
        server.max_in_flight()
    );

    // The control: each worker alone keeps 4 in flight, 8 together.
    server.reset();
    server.set_latency(Duration::from_millis(20));
    server.set_max_concurrency(Some(4), OverLimit::Reject);
    let (schema, run, workers) = two_workers(&d, &["--local-limits"]).await;
    let _guards = workers.each_ref().map(|w| KillOnDrop(w.id()));
    let store = schema.store().await;
    until(
        "a rejected request without shared limits",
        Duration::from_secs(60),
        || async {
            let done = matches!(
                spes_store::RunStore::status(&store, &run).await,
                Ok(Some(spes_store::RunStatus::Completed))
            );
            (server.rejected() > 0 || done).then_some(())
        },
    )
    .await;
    assert!(server.rejected() > 0, "the control got no 429");
    stop(&d, workers).await;
}

/// The most requests that arrived in any window beyond what `rpm` allows
/// (its full bucket plus one per `60 / rpm` s of the window, with `slack`
/// for the trip from the worker to the server): 0 when it held.
fn excess(times: &[Instant], rpm: u32, slack: Duration) -> i64 {
    let mut t = times.to_vec();
    t.sort_unstable();
    let interval = 60.0 / f64::from(rpm);
    let mut worst = i64::MIN;
    for i in 0..t.len() {
        for j in i..t.len() {
            let window = (t[j] - t[i] + slack).as_secs_f64();
            let allowed = i64::from(rpm) + (window / interval).floor() as i64;
            let seen = i64::try_from(j - i + 1).unwrap();
            worst = worst.max(seen - allowed);
        }
    }
    worst.max(0)
}

/// Arrival times of the requests `server` receives.
fn arrivals(server: &FakeServer) -> Arc<Mutex<Vec<Instant>>> {
    let times: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let t = times.clone();
    server.on_request(move |_| t.lock().unwrap().push(Instant::now()));
    times
}

/// `rpm = 60` shared by two workers: a 64-item map sends 60 requests at
/// once (the full bucket), then one a second, from both workers together;
/// with `--local-limits` (the control) each worker has a bucket of its
/// own and all 64 go at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_share_rpm() {
    let (items, rpm) = (64, 60);
    let server = FakeServer::start().await.unwrap();
    let times = arrivals(&server);
    let d = project(&server, &format!("rpm = {rpm}"), items);
    let (schema, run, workers) = two_workers(&d, &[]).await;
    let _guards = workers.each_ref().map(|w| KillOnDrop(w.id()));
    let store = schema.store().await;
    completed(&store, &run, Duration::from_secs(60)).await;
    let done = stop(&d, workers).await;
    assert!(done.iter().all(|n| *n > 0), "items done by a, b: {done:?}");
    let seen = times.lock().unwrap().clone();
    assert_eq!(seen.len(), items, "{}", logs(&d));
    let slack = Duration::from_millis(200);
    assert_eq!(excess(&seen, rpm, slack), 0, "requests over rpm = {rpm}");
    let spread = seen
        .iter()
        .max()
        .unwrap()
        .duration_since(*seen.iter().min().unwrap());
    // The 4 beyond the bucket went one a second.
    assert!(spread >= Duration::from_millis(3500), "{spread:?}");
    let both = logs(&d);
    assert!(both.contains("rate limits shared"), "{both}");

    // The control: two buckets of 60, all 64 at once.
    times.lock().unwrap().clear();
    let (schema, run, workers) = two_workers(&d, &["--local-limits"]).await;
    let _guards = workers.each_ref().map(|w| KillOnDrop(w.id()));
    let store = schema.store().await;
    completed(&store, &run, Duration::from_secs(60)).await;
    stop(&d, workers).await;
    let seen = times.lock().unwrap().clone();
    assert_eq!(seen.len(), items);
    assert!(
        excess(&seen, rpm, slack) > 0,
        "the control kept rpm = {rpm} without sharing it"
    );
}
