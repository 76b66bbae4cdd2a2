//! Chaos soak (not in CI; `scripts/chaos-soak.sh`): 20 chains of 20 steps,
//! each driven to completion through random SIGKILLs, a disk that fills
//! and empties (the store on a small tmpfs with a filler file; needs
//! `mount`, else the disk part is skipped with a line), and 20% provider
//! faults (HTTP 500 from the fake server). Then, per chain: the completed
//! run's journal has every step, its output equals an uninterrupted run's,
//! and duplicate successful model calls are at most kills + store stops
//! (a stopped commit's call is paid again on resume). Prints a tally.
//!
//! `SPES_CHAOS_SEED=N` replays; `SPES_CHAOS_CHAINS=N` changes the count.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/crash/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Instant;

use harness::{Lcg, Project, marker, sigkill, wait};
use spes_fake_llm::{FakeResponse, FakeServer};
use spes_store::RunStore;

const STEPS: usize = 20;

fn chain() -> String {
    let mut yaml =
        String::from("name: soak\ninputs:\n  topic: { type: string, default: rust }\nsteps:\n");
    for i in 1..=STEPS {
        let prev = if i == 1 {
            "topic".to_owned()
        } else {
            format!("s{}", i - 1)
        };
        yaml.push_str(&format!(
            "  - {{ name: s{i}, kind: llm, prompt: \"[s{i}] {{{{ {prev} | length }}}} {}\", max_tokens: 64, output: s{i} }}\n",
            "pad ".repeat(200)
        ));
    }
    yaml
}

#[derive(Default, Debug)]
struct Tally {
    chains: usize,
    lives: usize,
    kills: usize,
    faults: usize,
    store_stops: usize,
    failed_lives: usize,
    dup_calls: usize,
    bad: Vec<String>,
}

struct Disk {
    dir: std::path::PathBuf,
}

impl Disk {
    fn mount(dir: &std::path::Path) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
            .arg(dir)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| Self {
            dir: dir.to_owned(),
        })
    }
    /// Fills the disk but for `free` bytes, or empties it.
    fn set(&self, fill: bool, free: usize) {
        let filler = self.dir.join("filler");
        let _ = std::fs::remove_file(&filler);
        if fill {
            let used: u64 = std::fs::read_dir(&self.dir)
                .unwrap()
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum();
            let room = (1usize << 20).saturating_sub(usize::try_from(used).unwrap() + free);
            let _ = std::fs::write(&filler, vec![0u8; room]);
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
    }
}

async fn soak_one(c: usize, rng: &mut Lcg, reference: &[u8], tally: &mut Tally) {
    let yaml = chain();
    let mut project: Option<Project> = None;
    let mut disk: Option<Disk> = None;
    let mut run_id: Option<String> = None;
    let mut calls: BTreeMap<String, usize> = BTreeMap::new();
    let (mut kills, mut stops) = (0, 0);
    for life in 0..80 {
        let server = FakeServer::start().await.unwrap();
        let p = project.get_or_insert_with(|| Project::new(&yaml, &server.openai_base_url()));
        p.point_at(&server.openai_base_url());
        if life == 0 {
            disk = Disk::mount(&p.root.join(".spes"));
            if disk.is_none() && c == 0 {
                println!("disk: cannot mount a tmpfs here; the disk-full part is skipped");
            }
        }
        if let Some(d) = &disk {
            d.set(rng.range(0, 9) < 3 && run_id.is_some(), 24 << 10);
        }
        let mut faulted = Vec::new();
        for _ in 0..(2 * STEPS) {
            let f = rng.range(0, 9) < 2;
            faulted.push(f);
            server.push(if f {
                FakeResponse::server_error()
            } else {
                FakeResponse::echo()
            });
        }
        let pid = Arc::new(AtomicU32::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        if rng.range(0, 9) < 4 {
            let k = rng.range(1, STEPS);
            let (pid, killed) = (pid.clone(), killed.clone());
            server.on_request(move |n| {
                if n == k {
                    killed.store(true, Ordering::SeqCst);
                    sigkill(harness::spawned_pid(&pid));
                }
            });
        }
        let args: Vec<String> = match &run_id {
            None => vec!["run".into(), "wf.yaml".into()],
            Some(id) => vec!["resume".into(), id.clone()],
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = p.spawn(&args);
        pid.store(child.id(), Ordering::SeqCst);
        let exit = wait(child).await;
        tally.lives += 1;
        for r in server.requests() {
            let i = r.n.saturating_sub(1);
            if faulted.get(i).copied().unwrap_or(false) {
                tally.faults += 1;
            } else if let Some(m) = marker(&r.body) {
                *calls.entry(m).or_insert(0) += 1;
            }
        }
        if run_id.is_none() {
            // The run exists once its process got going.
            if let Ok(store) = spes_store::sqlite::SqliteStore::open(
                &p.db(),
                spes_store::sqlite::SqliteOptions::default(),
            )
            .await
            {
                run_id = store
                    .list_runs(None, 1)
                    .await
                    .ok()
                    .and_then(|r| r.first().map(|r| r.id.to_string()));
                store.close().await;
            }
        }
        if killed.load(Ordering::SeqCst) || exit.signal().is_some() {
            kills += 1;
            continue;
        }
        match exit.code() {
            Some(0) => {
                if exit.stdout != reference {
                    tally.bad.push(format!(
                        "chain {c}: output differs from the uninterrupted run"
                    ));
                }
                let store = p.store().await;
                let id = run_id.as_deref().unwrap().parse().unwrap();
                let keys = harness::committed_model_keys(&store, &id).await;
                store.close().await;
                if keys.len() != STEPS {
                    tally.bad.push(format!(
                        "chain {c}: journal has {} of {STEPS} steps",
                        keys.len()
                    ));
                }
                let dups: usize = calls.values().map(|n| n.saturating_sub(1)).sum();
                if dups > kills + stops {
                    tally.bad.push(format!(
                        "chain {c}: {dups} duplicate successful calls > {kills} kills + {stops} store stops"
                    ));
                }
                tally.chains += 1;
                tally.kills += kills;
                tally.store_stops += stops;
                tally.dup_calls += dups;
                return;
            }
            Some(5) => stops += 1,
            Some(1) => tally.failed_lives += 1,
            other => {
                tally.bad.push(format!(
                    "chain {c}: life {life} exited {other:?}: {}",
                    exit.stderr
                ));
                return;
            }
        }
    }
    tally
        .bad
        .push(format!("chain {c}: not completed after 80 lives"));
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let seed = std::env::var("SPES_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(harness::seed);
        let chains: usize = std::env::var("SPES_CHAOS_CHAINS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20);
        println!("chaos soak: {chains} chains of {STEPS} steps, seed {seed} (SPES_CHAOS_SEED={seed} replays)");
        let started = Instant::now();
        // The uninterrupted reference output.
        let server = FakeServer::start().await.unwrap();
        let p = Project::new(&chain(), &server.openai_base_url());
        let exit = wait(p.spawn(&["run", "wf.yaml"])).await;
        assert_eq!(exit.code(), Some(0), "{}", exit.stderr);
        let reference = exit.stdout;
        let mut rng = Lcg::new(seed, "chaos");
        let mut tally = Tally::default();
        for c in 0..chains {
            soak_one(c, &mut rng, &reference, &mut tally).await;
        }
        println!(
            "tally: {} of {chains} chains completed and checked in {:.0?}; {} process lives, {} SIGKILLs, {} provider faults, {} store stops (exit 5), {} failed lives (exit 1, resumed), {} duplicate successful model calls (allowed: kills + store stops = {})",
            tally.chains,
            started.elapsed(),
            tally.lives,
            tally.kills,
            tally.faults,
            tally.store_stops,
            tally.failed_lives,
            tally.dup_calls,
            tally.kills + tally.store_stops
        );
        for b in &tally.bad {
            println!("PROBLEM: {b}");
        }
        assert!(tally.bad.is_empty(), "{} problems", tally.bad.len());
    });
}
