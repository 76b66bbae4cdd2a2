//! Journal benchmark: commit cost per entry (both durability settings),
//! reading a 1,000-entry journal, the open-time check, and bytes on disk
//! per entry as payloads grow.
//!
//! `CARGO_TARGET_DIR=/work/bench-target cargo bench -p spes-store --bench journal`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark binary

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use spes_store::RunStore;
use spes_store::sqlite::{Durability, SqliteOptions, SqliteStore};
use spes_store::testing::sample_run;

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// A model-call-sized entry: ~600 bytes of JSON.
fn step_payload(i: usize) -> serde_json::Value {
    json!({
        "output": format!("step {i}: {}", "lorem ipsum dolor sit amet ".repeat(16)),
        "provider": "scripted", "model": "m", "prompt_sha256": "ab".repeat(32),
        "usage": {"input_tokens": 812, "output_tokens": 120}, "latency_ms": 913,
    })
}

async fn store(path: &Path, durability: Durability) -> SqliteStore {
    SqliteStore::open(path, SqliteOptions::default().with_durability(durability))
        .await
        .unwrap()
}

async fn commit_cost(durability: Durability, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir.path().join("spes.db"), durability).await;
    let run = sample_run();
    store.create_run(&run).await.unwrap();
    let payloads: Vec<_> = (0..n).map(step_payload).collect();
    let mut times = Vec::with_capacity(n);
    let total = Instant::now();
    for (i, p) in payloads.iter().enumerate() {
        let t = Instant::now();
        store
            .append(&run.id, &format!("chain/step{i}"), "model", p)
            .await
            .unwrap();
        times.push(t.elapsed());
    }
    let total = total.elapsed();
    times.sort();
    println!(
        "append (commit), {}: {:>7.1} µs/entry mean, p50 {:>7.1} µs, p99 {:>7.1} µs  ({n} entries, {})",
        durability.pragma(),
        micros(total) / n as f64,
        micros(percentile(&times, 0.5)),
        micros(percentile(&times, 0.99)),
        store.describe(),
    );
    store.close().await;
}

fn fsync_cost(dir: &Path, n: usize) {
    let mut f = std::fs::File::create(dir.join("fsync.probe")).unwrap();
    let page = vec![7u8; 4096];
    let t = Instant::now();
    for _ in 0..n {
        f.write_all(&page).unwrap();
        f.sync_data().unwrap();
    }
    println!(
        "raw 4 KiB write + fdatasync on this disk: {:>7.1} µs each ({n} times)",
        micros(t.elapsed()) / n as f64
    );
}

async fn resume_read(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spes.db");
    let store = store(&path, Durability::Normal).await;
    let run = sample_run();
    store.create_run(&run).await.unwrap();
    for i in 0..n {
        store
            .append(
                &run.id,
                &format!("chain/step{i}"),
                "model",
                &step_payload(i),
            )
            .await
            .unwrap();
    }
    store.close().await;

    let open_t = Instant::now();
    let store = store_default(&path).await;
    let open_checked = open_t.elapsed();
    let first = Instant::now();
    assert_eq!(store.entries(&run.id).await.unwrap().len(), n);
    let first = first.elapsed();
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let entries = store.entries(&run.id).await.unwrap();
        times.push(t.elapsed());
        assert_eq!(entries.len(), n);
    }
    times.sort();
    let by_key = Instant::now();
    for i in 0..n {
        store
            .entry(&run.id, &format!("chain/step{i}"))
            .await
            .unwrap()
            .unwrap();
    }
    let by_key = by_key.elapsed();
    let size = std::fs::metadata(&path).unwrap().len();
    store.close().await;
    let unchecked_t = Instant::now();
    let unchecked = SqliteStore::open(
        &path,
        SqliteOptions::default().with_quick_check_on_open(false),
    )
    .await
    .unwrap();
    let open_unchecked = unchecked_t.elapsed();
    unchecked.close().await;
    println!(
        "entries() of a {n}-entry run: {:>6.2} ms median, {:>6.2} ms first after open; {n} × entry(key): {:>6.2} ms",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3,
        by_key.as_secs_f64() * 1e3,
    );
    println!(
        "open of that store ({:.1} MB): {:>6.2} ms with quick_check, {:>6.2} ms without",
        size as f64 / 1e6,
        open_checked.as_secs_f64() * 1e3,
        open_unchecked.as_secs_f64() * 1e3,
    );
}

async fn store_default(path: &Path) -> SqliteStore {
    SqliteStore::open(path, SqliteOptions::default())
        .await
        .unwrap()
}

/// Bytes the file grows by per entry, for payloads of `size` bytes.
async fn bytes_per_entry(size: usize, n: usize) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spes.db");
    let store = store(&path, Durability::Normal).await;
    let run = sample_run();
    store.create_run(&run).await.unwrap();
    store.close().await;
    let empty = std::fs::metadata(&path).unwrap().len();
    let store = store_default(&path).await;
    // A context that grows: each step's output is `size` bytes of text.
    let text: String = "the quick brown fox jumps over the lazy dog "
        .chars()
        .cycle()
        .take(size)
        .collect();
    let payload = json!({"output": text});
    let json_len = serde_json::to_string(&payload).unwrap().len() as u64;
    for i in 0..n {
        store
            .append(&run.id, &format!("chain/step{i}"), "model", &payload)
            .await
            .unwrap();
    }
    store.close().await; // checkpoints the WAL into the file
    let full = std::fs::metadata(&path).unwrap().len();
    ((full - empty) / n as u64, json_len)
}

async fn quick_check_of_a_big_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spes.db");
    let store = store(&path, Durability::Normal).await;
    let text = "x".repeat(10_000);
    for _ in 0..10 {
        let run = sample_run();
        store.create_run(&run).await.unwrap();
        for i in 0..500 {
            store
                .append(&run.id, &format!("s{i}"), "model", &json!({"output": text}))
                .await
                .unwrap();
        }
    }
    store.close().await;
    let size = std::fs::metadata(&path).unwrap().len();
    let t = Instant::now();
    let checked = store_default(&path).await;
    let with = t.elapsed();
    checked.close().await;
    let t = Instant::now();
    let unchecked = SqliteStore::open(
        &path,
        SqliteOptions::default().with_quick_check_on_open(false),
    )
    .await
    .unwrap();
    let without = t.elapsed();
    unchecked.close().await;
    println!(
        "open of a {:.0} MB store (5,000 entries of 10 kB): {:>6.1} ms with quick_check, {:>6.1} ms without",
        size as f64 / 1e6,
        with.as_secs_f64() * 1e3,
        without.as_secs_f64() * 1e3,
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!(
            "spes-store journal benchmark (SQLite {}, temp dir {})",
            sqlite_version().await,
            std::env::temp_dir().display()
        );
        let dir = tempfile::tempdir().unwrap();
        fsync_cost(dir.path(), 300);
        for durability in [Durability::Full, Durability::Normal] {
            commit_cost(durability, 2000).await;
        }
        commit_breakdown(1000).await;
        resume_read(1000).await;
        println!("bytes on disk per entry (200 entries each, WAL checkpointed):");
        println!("  payload JSON bytes | file bytes/entry | overhead");
        for size in [100, 1_000, 10_000, 100_000] {
            let (per_entry, json_len) = bytes_per_entry(size, 200).await;
            println!(
                "  {json_len:>18} | {per_entry:>16} | {:>8}",
                per_entry as i64 - json_len as i64
            );
        }
        quick_check_of_a_big_store().await;
    });
}

async fn sqlite_version() -> String {
    use sqlx::Connection;
    let mut c = sqlx::SqliteConnection::connect("sqlite::memory:")
        .await
        .unwrap();
    sqlx::query_scalar::<_, String>("SELECT sqlite_version()")
        .fetch_one(&mut c)
        .await
        .unwrap()
}

/// Where an append's time goes, on one raw connection (no pool, no
/// store): a bare commit of a small row, then the store's own INSERT into
/// its own schema, then a status read.
async fn commit_breakdown(n: usize) {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spes.db");
    let st = store(&path, Durability::Full).await;
    let run = sample_run();
    st.create_run(&run).await.unwrap();
    st.close().await;
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .foreign_keys(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
    let mut c = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::raw_sql("CREATE TABLE bare (k TEXT PRIMARY KEY, v TEXT)")
        .execute(&mut c)
        .await
        .unwrap();
    let payload = serde_json::to_string(&step_payload(0)).unwrap();
    let id = run.id.to_string();
    let mut bare = Vec::new();
    let mut same = Vec::new();
    let mut status = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut c)
            .await
            .unwrap();
        sqlx::query("INSERT INTO bare VALUES (?1, ?2)")
            .bind(format!("k{i}"))
            .bind(&payload)
            .execute(&mut c)
            .await
            .unwrap();
        sqlx::raw_sql("COMMIT").execute(&mut c).await.unwrap();
        bare.push(t.elapsed());
        let t = Instant::now();
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut c)
            .await
            .unwrap();
        sqlx::query_scalar::<_, i64>(
            "INSERT INTO entries (run_id, seq, key, kind, payload, recorded_at) \
             SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3, ?4, ?5 FROM entries WHERE run_id = ?1 \
             ON CONFLICT (run_id, key) DO NOTHING RETURNING seq",
        )
        .bind(&id)
        .bind(format!("raw/{i}"))
        .bind("model")
        .bind(&payload)
        .bind("2026-01-01T00:00:00Z")
        .fetch_optional(&mut c)
        .await
        .unwrap();
        sqlx::raw_sql("COMMIT").execute(&mut c).await.unwrap();
        same.push(t.elapsed());
        let t = Instant::now();
        sqlx::query_scalar::<_, String>("SELECT status FROM runs WHERE id = ?1")
            .bind(&id)
            .fetch_one(&mut c)
            .await
            .unwrap();
        status.push(t.elapsed());
    }
    for v in [&mut bare, &mut same, &mut status] {
        v.sort();
    }
    println!(
        "breakdown (FULL, one raw connection, p50): bare commit of a {} B row {:.1} µs; the journal's INSERT in its schema {:.1} µs; a status read {:.1} µs",
        payload.len(),
        micros(percentile(&bare, 0.5)),
        micros(percentile(&same, 0.5)),
        micros(percentile(&status, 0.5)),
    );
}
