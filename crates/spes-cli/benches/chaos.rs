//! Chaos soak (not in CI; `scripts/chaos-soak.sh`, a few minutes): 20
//! chains of 20 model steps, each run to completion through random SIGKILLs,
//! a disk that fills and empties under the run store, and 20% provider
//! faults (500s, 429s, streams that break). Every process life is `spes run`
//! or `spes resume`, as a user would type them.
//!
//! Checks, per chain: the run completes; its journal has every step; its
//! output equals an uninterrupted run's byte for byte; and the model calls
//! answered successfully more than once are no more than the interruptions
//! that can cost one (kills, and store failures: an answer that arrived but
//! could not be committed is asked again). Prints the tally.
//!
//! The disk is a 6 MiB tmpfs mounted for the soak (needs root); without
//! root the soak runs without disk faults and says so. `SPES_CRASH_SEED=N`
//! replays a soak.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

#[path = "../tests/crash/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{Lcg, marker, seed, sigkill, spes_command};
use spes_fake_llm::{FakeResponse, FakeServer};
use spes_store::RunStore;
use spes_store::sqlite::{SqliteOptions, SqliteStore};

const CHAINS: usize = 20;
const STEPS: usize = 20;
const MAX_LIVES: usize = 80;

fn workflow() -> String {
    let mut yaml = String::from(
        "name: chaos_chain\ninputs:\n  topic: { type: string, default: rust }\nsteps:\n",
    );
    for i in 1..=STEPS {
        let prev = if i == 1 {
            "topic".to_owned()
        } else {
            format!("s{}", i - 1)
        };
        yaml.push_str(&format!(
            "  - {{ name: s{i}, kind: llm, prompt: \"[s{i}] step {i}: {{{{ {prev} }}}}\", max_tokens: 64, output: s{i} }}\n"
        ));
    }
    yaml
}

fn write(dir: &Path, rel: &str, text: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(rel), text)
}

fn toml(base_url: &str) -> String {
    format!(
        "[defaults]\nprovider = \"remote\"\n\n[providers.remote]\nkind = \"openai\"\nbase_url = \"{base_url}\"\nmodel = \"m\"\nstep_header = true\n"
    )
}

/// A tmpfs mounted for the soak, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("spes-chaos-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Some(Self(dir))
        } else {
            let _ = std::fs::remove_dir(&dir);
            None
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Fills the disk (a filler file up to ENOSPC) and empties it at random.
fn disk_toggler(root: &Path, seed: u64, stop: &AtomicBool, fills: &AtomicUsize) {
    use std::io::Write as _;
    let mut rng = Lcg::new(seed, "disk");
    let filler = root.join("filler");
    let chunk = vec![0u8; 64 << 10];
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(rng.range(20, 300) as u64));
        if filler.exists() {
            let _ = std::fs::remove_file(&filler);
        } else if rng.range(0, 2) == 0
            && let Ok(mut f) = std::fs::File::create(&filler)
        {
            while f.write_all(&chunk).is_ok() {}
            let _ = f.sync_all();
            fills.fetch_add(1, Ordering::SeqCst);
        }
    }
    let _ = std::fs::remove_file(&filler);
}

#[derive(Default, Debug)]
struct Tally {
    lives: usize,
    kills: usize,
    store_failures: usize,
    run_failures: usize,
    other_exits: BTreeMap<String, usize>,
    model_requests: usize,
    faults_served: usize,
    duplicate_successes: usize,
}

async fn run_id(dir: &Path) -> Option<String> {
    let store = SqliteStore::open(&dir.join(".spes/spes.db"), SqliteOptions::default())
        .await
        .ok()?;
    let runs = store.list_runs(None, 1).await.ok()?;
    store.close().await;
    runs.first().map(|r| r.id.to_string())
}

/// Runs one chain to completion through chaos; returns its output.
async fn chain(
    n: usize,
    dir: &Path,
    seed: u64,
    reference: &[u8],
    tally: &mut Tally,
) -> Result<(), String> {
    let mut rng = Lcg::new(seed, &format!("chain{n}"));
    let server = FakeServer::start().await.map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    // The disk may be full right now: try until the files are there.
    let wf = workflow();
    let t = Instant::now();
    while write(dir, "wf.yaml", &wf)
        .and_then(|()| write(dir, "spes.toml", &toml(&server.openai_base_url())))
        .is_err()
    {
        if t.elapsed() > Duration::from_secs(30) {
            return Err("the disk stayed full for 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ok[i]: whether the i-th answer the server gives is a healthy one.
    let mut ok: Vec<bool> = Vec::new();
    let mut kills = 0;
    let mut killed_at: Vec<usize> = Vec::new();
    let mut id: Option<String> = None;
    let mut interruptions = 0;
    for _life in 0..MAX_LIVES {
        tally.lives += 1;
        while server.pending() < 100 {
            let fault = rng.range(0, 99) < 20;
            ok.push(!fault);
            server.push(if fault {
                match rng.range(0, 2) {
                    0 => FakeResponse::server_error(),
                    1 => FakeResponse::rate_limited(Some("0")),
                    _ => FakeResponse::break_after("partial answer", 2),
                }
            } else {
                FakeResponse::echo()
            });
        }
        let pid = Arc::new(AtomicU32::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let kill_at = (kills < 3 && rng.range(0, 9) < 4)
            .then(|| server.request_count() + rng.range(1, STEPS));
        {
            let (pid, killed) = (pid.clone(), killed.clone());
            server.on_request(move |r| {
                if Some(r) == kill_at {
                    let p = harness::spawned_pid(&pid);
                    killed.store(true, Ordering::SeqCst);
                    sigkill(p);
                }
            });
        }
        if id.is_none() {
            id = run_id(dir).await;
        }
        let args: Vec<&str> = match &id {
            None => vec!["run", "wf.yaml"],
            Some(i) => vec!["resume", i.as_str()],
        };
        let child = spes_command(dir, &args)
            .spawn()
            .map_err(|e| e.to_string())?;
        pid.store(child.id(), Ordering::SeqCst);
        let exit = harness::wait(child).await;
        if killed.load(Ordering::SeqCst) {
            kills += 1;
            tally.kills += 1;
            interruptions += 1;
            killed_at.extend(kill_at);
            continue;
        }
        match exit.code() {
            Some(0) => {
                if exit.stdout != reference {
                    return Err(format!(
                        "chain {n}: output differs from the uninterrupted run:\n{}",
                        exit.stdout_text()
                    ));
                }
                let id = match id {
                    Some(i) => i,
                    None => run_id(dir).await.ok_or("no run in the store")?,
                };
                return check_journal_and_calls(
                    n,
                    dir,
                    &id,
                    &server,
                    &ok,
                    &killed_at,
                    interruptions,
                    tally,
                )
                .await;
            }
            Some(5) => {
                tally.store_failures += 1;
                interruptions += 1;
            }
            Some(1) => tally.run_failures += 1,
            other => {
                let why = format!("{other:?}: {}", exit.stderr.lines().last().unwrap_or(""));
                *tally.other_exits.entry(why).or_default() += 1;
                interruptions += 1;
            }
        }
    }
    Err(format!("chain {n}: not completed after {MAX_LIVES} lives"))
}

#[allow(clippy::too_many_arguments)]
async fn check_journal_and_calls(
    n: usize,
    dir: &Path,
    id: &str,
    server: &FakeServer,
    ok: &[bool],
    killed_at: &[usize],
    interruptions: usize,
    tally: &mut Tally,
) -> Result<(), String> {
    let store = SqliteStore::open(&dir.join(".spes/spes.db"), SqliteOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let run: spes_store::RunId = id.parse().map_err(|_| "bad run id".to_owned())?;
    let keys = harness::committed_model_keys(&store, &run).await;
    store.close().await;
    async fn store_entries(dir: &Path, run: &spes_store::RunId) -> Vec<String> {
        let store = SqliteStore::open(&dir.join(".spes/spes.db"), SqliteOptions::default())
            .await
            .unwrap();
        let all = store
            .entries(run)
            .await
            .unwrap()
            .into_iter()
            .map(|e| format!("{}:{}", e.kind, e.key))
            .collect();
        store.close().await;
        all
    }
    for i in 1..=STEPS {
        // Served by attempt 1 (`sN`) or, after a fault, by a retry (`sN#attemptK`).
        let step = format!("s{i}");
        let prefix = format!("s{i}#attempt");
        if !keys.iter().any(|k| *k == step || k.starts_with(&prefix)) {
            let all: Vec<String> = store_entries(dir, &run).await;
            return Err(format!("chain {n}: the journal lacks step s{i}: {all:?}"));
        }
    }
    // Successful answers per step: requests answered healthily and not
    // cut short by a kill on arrival.
    let mut per_step: BTreeMap<String, usize> = BTreeMap::new();
    for r in server.requests() {
        tally.model_requests += 1;
        let healthy = ok.get(r.n - 1).copied().unwrap_or(true);
        if !healthy {
            tally.faults_served += 1;
        }
        if healthy && !killed_at.contains(&r.n) {
            *per_step
                .entry(marker(&r.body).unwrap_or_default())
                .or_default() += 1;
        }
    }
    let dups: usize = per_step.values().map(|c| c.saturating_sub(1)).sum();
    tally.duplicate_successes += dups;
    if dups > interruptions {
        return Err(format!(
            "chain {n}: {dups} duplicate successful calls > {interruptions} interruptions: {per_step:?}"
        ));
    }
    Ok(())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(soak());
}

async fn soak() {
    let seed = seed();
    println!(
        "chaos soak: {CHAINS} chains × {STEPS} steps, seed {seed} (SPES_CRASH_SEED={seed} replays)"
    );
    let started = Instant::now();
    // The uninterrupted reference.
    let reference = {
        let server = FakeServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "wf.yaml", &workflow()).unwrap();
        write(dir.path(), "spes.toml", &toml(&server.openai_base_url())).unwrap();
        let exit = harness::wait(
            spes_command(dir.path(), &["run", "wf.yaml"])
                .spawn()
                .unwrap(),
        )
        .await;
        assert_eq!(exit.code(), Some(0), "reference run: {}", exit.stderr);
        exit.stdout
    };
    let tmpfs = Tmpfs::mount("6m");
    let stop = Arc::new(AtomicBool::new(false));
    let fills = Arc::new(AtomicUsize::new(0));
    let (root, toggler) = match &tmpfs {
        Some(t) => {
            let (root, stop, fills) = (t.0.clone(), stop.clone(), fills.clone());
            let h = std::thread::spawn(move || disk_toggler(&root, seed, &stop, &fills));
            (t.0.clone(), Some(h))
        }
        None => {
            println!("no tmpfs (needs root): running without disk faults");
            (tempfile::tempdir().unwrap().keep(), None)
        }
    };
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut failures = Vec::new();
    for n in 0..CHAINS {
        let mut t = Tally::default();
        let r = chain(n, &root.join(format!("chain{n}")), seed, &reference, &mut t).await;
        // Each chain's files go once it is checked (the tmpfs is small).
        let _ = std::fs::remove_dir_all(root.join(format!("chain{n}")));
        let mut all = tally.lock().unwrap();
        all.lives += t.lives;
        all.kills += t.kills;
        all.store_failures += t.store_failures;
        all.run_failures += t.run_failures;
        all.model_requests += t.model_requests;
        all.faults_served += t.faults_served;
        all.duplicate_successes += t.duplicate_successes;
        for (k, v) in t.other_exits {
            *all.other_exits.entry(k).or_default() += v;
        }
        match r {
            Ok(()) => println!(
                "chain {n:2}: completed in {} lives ({} kills, {} store failures, {} failed runs, {} duplicate successful calls)",
                t.lives, t.kills, t.store_failures, t.run_failures, t.duplicate_successes
            ),
            Err(e) => {
                println!("chain {n:2}: FAILED: {e}");
                failures.push(e);
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    if let Some(h) = toggler {
        let _ = h.join();
    }
    drop(tmpfs);
    let t = tally.lock().unwrap();
    println!("--- tally (seed {seed}, {:.0?})", started.elapsed());
    println!(
        "chains completed:            {}/{CHAINS}",
        CHAINS - failures.len()
    );
    println!("process lives:               {}", t.lives);
    println!("SIGKILLs:                    {}", t.kills);
    println!(
        "disk fills:                  {}",
        fills.load(Ordering::SeqCst)
    );
    println!("store failures (exit 5):     {}", t.store_failures);
    println!("failed runs (exit 1):        {}", t.run_failures);
    println!("other exits:                 {:?}", t.other_exits);
    println!("model requests:              {}", t.model_requests);
    println!(
        "faults served:               {} ({:.0}%)",
        t.faults_served,
        100.0 * t.faults_served as f64 / t.model_requests.max(1) as f64
    );
    println!(
        "duplicate successful calls:  {} (bound: kills + store failures + other exits = {})",
        t.duplicate_successes,
        t.kills + t.store_failures + t.other_exits.values().sum::<usize>()
    );
    if !failures.is_empty() {
        eprintln!("{} chain(s) failed", failures.len());
        std::process::exit(1);
    }
}
