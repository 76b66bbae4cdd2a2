//! The conformance suite on SQLite, plus what only a file can do: several
//! connection pools on one file, reopening, and damaged stores.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use spes_store::sqlite::{Durability, SqliteOptions, SqliteStore};
use spes_store::testing::sample_run;
use spes_store::{Appended, GateFilter, NewGate, RunStore, StoreError};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

spes_store::conformance!(sqlite_conformance, async || {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("spes.db"), SqliteOptions::default())
        .await
        .unwrap();
    (Arc::new(store) as Arc<dyn RunStore>, dir)
});

// The same with no reader connections: reads share the writer (the CLI).
spes_store::conformance!(sqlite_conformance_one_connection, async || {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(
        &dir.path().join("spes.db"),
        SqliteOptions::default().with_readers(0),
    )
    .await
    .unwrap();
    (Arc::new(store) as Arc<dyn RunStore>, dir)
});

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spes.db");
    (dir, path)
}

async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
    SqliteStore::open(path, SqliteOptions::default()).await
}

/// A closed store holding one run with `n` entries of `size`-byte payloads
/// and a decided gate.
async fn filled(path: &Path, n: usize, size: usize) -> spes_store::RunId {
    let store = open(path).await.unwrap();
    let run = sample_run();
    store.create_run(&run).await.unwrap();
    let text = "x".repeat(size);
    for i in 0..n {
        store
            .append(
                &run.id,
                &format!("step{i}"),
                "model",
                &json!({"i": i, "text": text}),
            )
            .await
            .unwrap();
    }
    store.open_gate(&gate(run.id, "review")).await.unwrap();
    store
        .decide_gate(&run.id, "review", &json!({"approve": true}))
        .await
        .unwrap();
    store.close().await;
    run.id
}

/// The keys of a run's journal, in commit order.
async fn keys_of(store: &SqliteStore, run: &spes_store::RunId) -> Vec<String> {
    store
        .entries(run)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect()
}

fn gate(run: spes_store::RunId, key: &str) -> NewGate {
    NewGate {
        run_id: run,
        key: key.into(),
        kind: "approval".into(),
        request: json!("ok?"),
        deadline: None,
    }
}

async fn raw(path: &Path) -> SqliteConnection {
    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path))
        .await
        .unwrap()
}

/// Opens `path`, expecting an error, and checks the file did not change.
async fn refused(path: &Path, opts: SqliteOptions) -> StoreError {
    let before = std::fs::read(path).unwrap();
    let err = SqliteStore::open(path, opts)
        .await
        .expect_err("the store must be refused");
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "a refused store was modified"
    );
    assert!(err.hint().is_some(), "no hint for {err:?}");
    println!("refused: {err}\n  hint: {}", err.hint().unwrap_or_default());
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_through_two_pools_never_error() {
    let (_dir, path) = temp();
    let a = Arc::new(open(&path).await.unwrap());
    let b = Arc::new(open(&path).await.unwrap());
    let run = sample_run();
    a.create_run(&run).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let store = if t % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                let appended = store
                    .append(
                        &run.id,
                        &format!("t{t}/s{i}"),
                        "model",
                        &json!({"t": t, "i": i}),
                    )
                    .await?;
                assert!(matches!(appended, Appended::New(_)));
            }
            Ok::<_, StoreError>(())
        }));
    }
    // Readers meanwhile, on both pools.
    let reader = {
        let (a, b) = (Arc::clone(&a), Arc::clone(&b));
        tokio::spawn(async move {
            for _ in 0..50 {
                a.list_runs(None, 10).await?;
                b.entries(&run.id).await?;
            }
            Ok::<_, StoreError>(())
        })
    };
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    reader.await.unwrap().unwrap();
    let entries = b.entries(&run.id).await.unwrap();
    assert_eq!(entries.len(), 800);
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=800).collect::<Vec<_>>()
    );
    assert_eq!(a.integrity_check().await.unwrap(), "ok");
}

#[tokio::test]
async fn reopen_after_close_keeps_everything() {
    let (_dir, path) = temp();
    let id = filled(&path, 10, 10).await;
    let store = open(&path).await.unwrap();
    let run = store.run(&id).await.unwrap().unwrap();
    assert_eq!(run.pins, sample_run().pins);
    let entries = store.entries(&id).await.unwrap();
    assert_eq!(entries.len(), 11);
    assert_eq!(entries[10].kind, "decision");
    let gates = store.gates(&GateFilter::default()).await.unwrap();
    assert_eq!(gates[0].decision, Some(json!({"approve": true})));
    assert_eq!(
        store.schema_version().await.unwrap(),
        SqliteStore::supported_schema_version()
    );
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
}

#[tokio::test]
async fn open_creates_directories_and_describes_durability() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("project/.spes/spes.db");
    let full = open(&path).await.unwrap();
    assert!(path.is_file());
    assert_eq!(
        full.describe(),
        format!("sqlite://{} (WAL, synchronous=FULL)", path.display())
    );
    let normal = SqliteStore::open(
        &path,
        SqliteOptions::default().with_durability(Durability::Normal),
    )
    .await
    .unwrap();
    assert_eq!(
        normal.describe(),
        format!("sqlite://{} (WAL, synchronous=NORMAL)", path.display())
    );
}

#[tokio::test]
async fn open_url_takes_sqlite_urls_only() {
    let (_dir, path) = temp();
    let store = SqliteStore::open_url(
        &format!("sqlite://{}", path.display()),
        SqliteOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(store.path(), path);
    let again = SqliteStore::open_url(
        &format!("sqlite:{}", path.display()),
        SqliteOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(again.path(), path);
    for url in [
        "postgres://localhost/spes",
        "sqlite://",
        "sqlite::memory:",
        "file.db",
        "sqlite://x.db?mode=ro",
    ] {
        let err = SqliteStore::open_url(url, SqliteOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::BadUrl(_)), "{url}: {err:?}");
    }
}

#[tokio::test]
async fn an_empty_file_becomes_a_store() {
    let (_dir, path) = temp();
    std::fs::write(&path, b"").unwrap();
    let store = open(&path).await.unwrap();
    store.create_run(&sample_run()).await.unwrap();
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
}

#[tokio::test]
async fn truncated_store_is_not_a_store_and_left_alone() {
    let (_dir, path) = temp();
    filled(&path, 50, 500).await;
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100)
        .unwrap();
    let err = refused(&path, SqliteOptions::default()).await;
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[tokio::test]
async fn garbage_file_is_not_a_store_and_left_alone() {
    let (_dir, path) = temp();
    std::fs::write(&path, "name: triage\nsteps: []\n".repeat(400)).unwrap();
    let err = refused(&path, SqliteOptions::default()).await;
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err:?}");
    assert!(err.to_string().contains("SQLite header"), "{err}");
}

/// Writes garbage over the page in the middle of a closed store.
async fn damaged(path: &Path) -> spes_store::RunId {
    let id = filled(path, 200, 3000).await;
    let mut bytes = std::fs::read(path).unwrap();
    let pages = bytes.len() / 4096;
    assert!(pages > 100, "{pages} pages");
    let middle = pages / 2 * 4096;
    bytes[middle..middle + 4096].fill(0xA5);
    std::fs::write(path, bytes).unwrap();
    id
}

#[tokio::test]
async fn garbage_page_is_corrupt_on_open_and_left_alone() {
    let (_dir, path) = temp();
    damaged(&path).await;
    let err = refused(&path, SqliteOptions::default()).await;
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[tokio::test]
async fn garbage_page_is_corrupt_when_met_without_the_open_check() {
    let (_dir, path) = temp();
    let id = damaged(&path).await;
    let before = std::fs::read(&path).unwrap();
    let store = SqliteStore::open(
        &path,
        SqliteOptions::default().with_quick_check_on_open(false),
    )
    .await
    .unwrap();
    let err = store.entries(&id).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let report = store.integrity_check().await;
    assert!(
        matches!(&report, Err(StoreError::Corrupt { .. }))
            || report.as_deref().is_ok_and(|r| r != "ok"),
        "{report:?}"
    );
    store.close().await;
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[tokio::test]
async fn newer_schema_is_refused_and_left_alone() {
    let (_dir, path) = temp();
    filled(&path, 3, 10).await;
    let mut conn = raw(&path).await;
    sqlx::raw_sql("PRAGMA user_version = 99")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let err = refused(&path, SqliteOptions::default()).await;
    match &err {
        StoreError::NewerSchema {
            found, supported, ..
        } => {
            assert_eq!(*found, 99);
            assert_eq!(*supported, SqliteStore::supported_schema_version());
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

#[tokio::test]
async fn another_programs_database_is_not_a_store() {
    let (_dir, path) = temp();
    let mut conn = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true),
    )
    .await
    .unwrap();
    sqlx::raw_sql("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine')")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let err = refused(&path, SqliteOptions::default()).await;
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err:?}");
    assert!(err.to_string().contains("another program"), "{err}");
}

#[tokio::test]
async fn a_directory_or_a_file_in_the_way_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let err = open(dir.path()).await.unwrap_err();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err:?}");
    let file = dir.path().join("workflows.yaml");
    std::fs::write(&file, "steps: []").unwrap();
    let err = open(&file.join("spes.db")).await.unwrap_err();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot be created"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "steps: []");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_past_the_wait_is_locked_and_reads_go_on() {
    let (_dir, path) = temp();
    let id = filled(&path, 1, 10).await;
    let opts = SqliteOptions::default()
        .with_busy_timeout(Duration::from_millis(50))
        .with_lock_wait(Duration::from_millis(300));
    let store = SqliteStore::open(&path, opts).await.unwrap();
    let mut holder = raw(&path).await;
    sqlx::raw_sql("BEGIN EXCLUSIVE")
        .execute(&mut holder)
        .await
        .unwrap();
    let start = Instant::now();
    let err = store
        .append(&id, "blocked", "model", &json!(1))
        .await
        .unwrap_err();
    let took = start.elapsed();
    match &err {
        StoreError::Locked { waited_ms, .. } => assert!(*waited_ms >= 300, "{waited_ms}"),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(err.is_transient());
    // WAL: readers are not blocked by the writer's lock.
    assert_eq!(store.entries(&id).await.unwrap().len(), 2);
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    assert!(matches!(
        store
            .append(&id, "blocked", "model", &json!(1))
            .await
            .unwrap(),
        Appended::New(3)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_briefly_is_waited_out() {
    let (_dir, path) = temp();
    let id = filled(&path, 1, 10).await;
    // A short busy timeout, so the retry loop (not only SQLite) does the waiting.
    let opts = SqliteOptions::default().with_busy_timeout(Duration::from_millis(20));
    let store = Arc::new(SqliteStore::open(&path, opts).await.unwrap());
    let mut holder = raw(&path).await;
    sqlx::raw_sql("BEGIN EXCLUSIVE")
        .execute(&mut holder)
        .await
        .unwrap();
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .append(&id, &format!("w{i}"), "model", &json!(i))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    sqlx::raw_sql("COMMIT").execute(&mut holder).await.unwrap();
    for w in writers {
        assert!(matches!(w.await.unwrap().unwrap(), Appended::New(_)));
    }
    assert_eq!(store.entries(&id).await.unwrap().len(), 10);
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

const PROBE_ENV: &str = "SPES_STORE_PERMISSION_PROBE";

#[tokio::test]
async fn unreadable_or_unwritable_store_is_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let unreadable = dir.path().join("unreadable.db");
    let read_only = dir.path().join("read-only.db");
    filled(&unreadable, 2, 10).await;
    filled(&read_only, 2, 10).await;
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o444)).unwrap();
    // The directory is not writable for others: no -wal/-shm can be made.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let paths = format!("{}\n{}", unreadable.display(), read_only.display());
    if running_as_root() {
        // Root reads and writes anything; check as `nobody` in a child process.
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "permission_probe_child",
                "--ignored",
                "--nocapture",
            ])
            .env(PROBE_ENV, &paths)
            .uid(65534)
            .gid(65534)
            .output();
        match out {
            Ok(out) => {
                let stdout = String::from_utf8_lossy(&out.stdout);
                let stderr = String::from_utf8_lossy(&out.stderr);
                println!("as nobody:\n{stdout}");
                assert!(
                    out.status.success() && stdout.contains("PROBED 2"),
                    "child as nobody failed:\n{stdout}\n{stderr}"
                );
            }
            Err(e) => {
                eprintln!("SKIPPED permission check: running as root and cannot run as nobody: {e}")
            }
        }
    } else {
        probe_permissions(&paths).await;
    }
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o644)).unwrap();
}

async fn probe_permissions(paths: &str) {
    let mut n = 0;
    for path in paths.lines() {
        let path = Path::new(path);
        let err = SqliteStore::open(path, SqliteOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::PermissionDenied { .. }),
            "{}: {err:?}",
            path.display()
        );
        assert!(err.hint().is_some());
        println!("{}: {err}", path.display());
        n += 1;
    }
    println!("PROBED {n}");
}

#[tokio::test]
#[ignore = "run by unreadable_or_unwritable_store_is_permission_denied as an unprivileged user"]
async fn permission_probe_child() {
    if let Ok(paths) = std::env::var(PROBE_ENV) {
        probe_permissions(&paths).await;
    }
}

// ---- issue 11: commit means committed, private files, bounded WAL ----

/// A commit that SQLite refuses at COMMIT time (a deferred foreign key a
/// trigger violates, the same path a full disk or an I/O error takes when
/// the WAL is written) is an error, and the entry is not there. In
/// autocommit, `INSERT ... RETURNING` handed its row back before that
/// commit and the failure was lost.
#[tokio::test]
async fn a_commit_that_fails_is_reported_and_leaves_nothing() {
    let (_dir, path) = temp();
    let store = open(&path).await.unwrap();
    let run = sample_run();
    store.create_run(&run).await.unwrap();
    assert_eq!(
        store
            .append(&run.id, "before", "model", &json!(1))
            .await
            .unwrap(),
        Appended::New(1)
    );
    let mut conn = raw(&path).await;
    sqlx::raw_sql(
        "CREATE TABLE boom_parent (id INTEGER PRIMARY KEY); \
         CREATE TABLE boom (p INTEGER REFERENCES boom_parent (id) DEFERRABLE INITIALLY DEFERRED); \
         CREATE TRIGGER boom_at_commit AFTER INSERT ON entries WHEN NEW.key = 'boom' \
         BEGIN INSERT INTO boom VALUES (42); END;",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let err = store
        .append(&run.id, "boom", "model", &json!(2))
        .await
        .expect_err("a failed commit must not look committed");
    assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
    let keys = keys_of(&store, &run.id).await;
    assert_eq!(
        keys,
        ["before"],
        "the failed entry is absent, the earlier one intact"
    );
    // The writer is usable again afterwards.
    assert_eq!(
        store
            .append(&run.id, "after", "model", &json!(3))
            .await
            .unwrap(),
        Appended::New(2)
    );
}

/// `max_page_count` makes the store full: the append fails with an error
/// that says so, and every earlier entry stays readable.
#[tokio::test]
async fn a_full_store_refuses_appends_and_keeps_earlier_entries() {
    let (_dir, path) = temp();
    let store = SqliteStore::open(&path, SqliteOptions::default().with_max_pages(40))
        .await
        .unwrap();
    let run = sample_run();
    store.create_run(&run).await.unwrap();
    let text = "x".repeat(2000);
    let mut stored = 0;
    let err = loop {
        match store
            .append(
                &run.id,
                &format!("s{stored}"),
                "model",
                &json!({ "t": text }),
            )
            .await
        {
            Ok(a) => {
                stored += 1;
                assert_eq!(a, Appended::New(stored));
                assert!(stored < 1000, "the page cap never bit");
            }
            Err(e) => break e,
        }
    };
    assert!(stored > 3, "some entries fit first ({stored})");
    assert!(err.to_string().contains("disk is full"), "{err}");
    assert!(err.is_transient(), "a full disk may be freed: {err:?}");
    let entries = store.entries(&run.id).await.unwrap();
    assert_eq!(entries.len(), usize::try_from(stored).unwrap());
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `.spes/` is created 0700, the database and its -wal/-shm 0600 (the
/// CLI test `the_store_is_private_under_umask_000` checks the same under
/// a permissive umask).
#[cfg(unix)]
#[tokio::test]
async fn a_new_store_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let spes = dir.path().join("project/.spes");
    let path = spes.join("spes.db");
    let store = open(&path).await.unwrap();
    let run = sample_run();
    store.create_run(&run).await.unwrap();
    store
        .append(&run.id, "a", "model", &json!(1))
        .await
        .unwrap();
    assert_eq!(mode(&spes), 0o700, ".spes/");
    assert_eq!(mode(&path), 0o600, "spes.db");
    for suffix in ["-wal", "-shm"] {
        let side = spes.join(format!("spes.db{suffix}"));
        assert!(side.exists(), "{suffix} exists while the store is open");
        assert_eq!(mode(&side), 0o600, "spes.db{suffix}");
    }
    store.close().await;
}

/// Over thousands of commits with readers reading all along, the WAL file
/// stays bounded (checkpoints happen and the file is cut back).
#[tokio::test]
async fn the_wal_stays_bounded_over_thousands_of_commits() {
    let (_dir, path) = temp();
    let store = Arc::new(
        SqliteStore::open(
            &path,
            SqliteOptions::default().with_durability(Durability::Normal),
        )
        .await
        .unwrap(),
    );
    let run = sample_run();
    store.create_run(&run).await.unwrap();
    let wal = path.with_file_name("spes.db-wal");
    let text = "y".repeat(3000);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store.status(&run.id).await.unwrap();
                store.entry(&run.id, "k10").await.unwrap();
                reads += 1;
                tokio::task::yield_now().await;
            }
            reads
        })
    };
    let mut largest = 0;
    for i in 0..4000 {
        store
            .append(&run.id, &format!("k{i}"), "model", &json!({ "t": text }))
            .await
            .unwrap();
        if i % 100 == 0 {
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.await.unwrap();
    assert!(reads > 0);
    let db = std::fs::metadata(&path).unwrap().len();
    println!(
        "4000 commits of 3 KB: WAL at most {largest} bytes, database {db} bytes, {reads} reads"
    );
    // 4000 x 3 KB = 12 MB of entries; without checkpoints the WAL would hold all of it.
    assert!(db > 8 << 20, "the entries reached the database file: {db}");
    assert!(largest < 24 << 20, "the WAL grew to {largest} bytes");
}

/// Group commit: appends that arrive together share transactions (100
/// concurrent appends take far fewer than 100 commits, and all land),
/// while appends made one after another commit alone, each at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits_sequential_ones_do_not() {
    let (_dir, path) = temp();
    let store = Arc::new(open(&path).await.unwrap());
    let run = sample_run();
    store.create_run(&run).await.unwrap();
    for i in 0..10 {
        store
            .append(&run.id, &format!("seq/{i}"), "model", &json!(i))
            .await
            .unwrap();
    }
    assert_eq!(store.journal_transactions(), 10);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(&run.id, &format!("map/{i}"), "model", &json!(i))
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Ok(Appended::New(_))));
    }
    let shared = store.journal_transactions() - 10;
    assert!(shared < 50, "100 concurrent appends took {shared} commits");
    assert_eq!(store.entries(&run.id).await.unwrap().len(), 110);
}

/// A full store under concurrent appends: every append either lands or
/// fails with the full disk's error (a batch that cannot commit fails each
/// of its appends); nothing is reported written that is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_under_concurrent_appends_reports_every_loss() {
    let (_dir, path) = temp();
    let store = Arc::new(
        SqliteStore::open(&path, SqliteOptions::default().with_max_pages(40))
            .await
            .unwrap(),
    );
    let run = sample_run();
    store.create_run(&run).await.unwrap();
    let text = "x".repeat(2000);
    // One entry that fits, before the burst.
    store
        .append(&run.id, "first", "model", &json!({ "t": text }))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (store, text) = (store.clone(), text.clone());
            tokio::spawn(async move {
                store
                    .append(&run.id, &format!("map/{i}"), "model", &json!({ "t": text }))
                    .await
            })
        })
        .collect();
    let mut landed = std::collections::BTreeSet::from(["first".to_owned()]);
    let mut full = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(Appended::New(_)) => {
                landed.insert(format!("map/{i}"));
            }
            Err(e) => {
                assert!(e.to_string().contains("disk is full"), "{e}");
                full += 1;
            }
            Ok(other) => panic!("{other:?}"),
        }
    }
    assert!(full > 0, "the page cap never bit");
    let stored: std::collections::BTreeSet<String> = store
        .entries(&run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(stored, landed);
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
}

/// Closing the store checkpoints: the database file alone holds every
/// commit (a copy of it is a full backup), while the `-wal` (cut to zero
/// bytes) and `-shm` files stay for the next command instead of being
/// deleted and created again.
#[tokio::test]
async fn a_closed_store_is_whole_in_its_database_file_and_keeps_its_wal_file() {
    let (dir, path) = temp();
    let run = filled(&path, 50, 500).await;
    let wal = path.with_file_name("spes.db-wal");
    assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).ok(), Some(0));
    assert!(path.with_file_name("spes.db-shm").exists());
    // The database file alone, copied elsewhere.
    let copy = dir.path().join("copy/spes.db");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(&path, &copy).unwrap();
    let store = open(&copy).await.unwrap();
    assert_eq!(store.entries(&run).await.unwrap().len(), 51);
    store.close().await;
    // And the kept files are used again: the original opens with everything.
    let store = open(&path).await.unwrap();
    assert_eq!(store.entries(&run).await.unwrap().len(), 51);
    store.close().await;
}

/// A lone append is one job on the journal's connection (`BEGIN IMMEDIATE;
/// INSERT; COMMIT`). A caller that gives up mid-way (its future dropped
/// after one poll) must not leave that transaction open on the journal's
/// connection: every later append commits, and each given-up append is
/// either committed once or absent.
#[tokio::test]
async fn appends_given_up_mid_way_leave_no_transaction_open() {
    let (_dir, path) = temp();
    let store = open(&path).await.unwrap();
    let run = sample_run();
    store.create_run(&run).await.unwrap();
    for i in 0..40 {
        {
            let (key, payload) = (format!("dropped{i}"), json!(i));
            let dropped = store.append(&run.id, &key, "model", &payload);
            tokio::pin!(dropped);
            tokio::select! {
                biased;
                _ = &mut dropped => {}
                () = std::future::ready(()) => {}
            }
        }
        assert!(matches!(
            store
                .append(&run.id, &format!("after{i}"), "model", &json!(i))
                .await
                .unwrap(),
            Appended::New(_)
        ));
    }
    let keys = keys_of(&store, &run.id).await;
    for i in 0..40 {
        assert!(keys.contains(&format!("after{i}")), "{keys:?}");
        assert!(keys.iter().filter(|k| **k == format!("dropped{i}")).count() <= 1);
    }
    store.close().await;
    // Nothing half-done in the file.
    let store = open(&path).await.unwrap();
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    store.close().await;
}

/// The same, dropped while the job waits for the write lock that another
/// connection holds: the job then runs on without its caller, and must
/// end its transaction (committed or rolled back) before the next append.
#[tokio::test]
async fn an_append_given_up_while_waiting_for_the_lock_leaves_no_transaction_open() {
    let (_dir, path) = temp();
    let store = open(&path).await.unwrap();
    let run = sample_run();
    store.create_run(&run).await.unwrap();
    let mut other = raw(&path).await;
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    {
        let payload = json!(1);
        let waiting = store.append(&run.id, "given-up", "model", &payload);
        // It cannot finish while `other` holds the lock.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(100), waiting)
                .await
                .is_err()
        );
    }
    sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();
    other.close().await.unwrap();
    assert!(matches!(
        store
            .append(&run.id, "next", "model", &json!(2))
            .await
            .unwrap(),
        Appended::New(_)
    ));
    let keys = keys_of(&store, &run.id).await;
    assert!(keys.contains(&"next".to_owned()), "{keys:?}");
    store.close().await;
}

/// A lone append reads the run's status in its own transaction, under the
/// write lock: a pause committed by another handle (another process) before
/// the append is what the append reports. (The conformance case
/// `a_lone_append_reports_the_status_its_commit_read` covers one handle.)
#[tokio::test]
async fn a_lone_append_reports_a_pause_another_handle_committed_before_it() {
    use spes_store::{RunPatch, RunStatus};
    let (_dir, path) = temp();
    let store = open(&path).await.unwrap();
    let run = sample_run();
    store.create_run(&run).await.unwrap();
    store
        .append(&run.id, "a", "model", &json!(1))
        .await
        .unwrap();
    let other = open(&path).await.unwrap();
    other
        .transition(
            &run.id,
            &[RunStatus::Running],
            RunStatus::Paused,
            RunPatch::default(),
        )
        .await
        .unwrap();
    other.close().await;
    let before = std::time::Instant::now();
    store
        .append(&run.id, "b", "model", &json!(2))
        .await
        .unwrap();
    assert_eq!(
        store.status_read_by_commit(&run.id, before),
        Some(RunStatus::Paused)
    );
    store.close().await;
}

/// With `synchronous=FULL` the journal writes the WAL ahead of its frames
/// (zeros past its end, under the write lock). Two handles on one file
/// (two processes, as far as SQLite is concerned) alternate appends, each
/// writing ahead when the other's frames went past its zeros; then a crash
/// image is taken (the database and WAL files as a killed process leaves
/// them, without the `-shm` index, so SQLite rebuilds it from the WAL):
/// it holds every committed entry, in order, and nothing else, and passes
/// the integrity check. SQLite never reads the zeros as frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_written_ahead_never_hides_or_invents_an_entry() {
    const N: usize = 300;
    let (dir, path) = temp();
    let a = open(&path).await.unwrap();
    let b = open(&path).await.unwrap();
    let run = sample_run();
    a.create_run(&run).await.unwrap();
    let wal = path.with_file_name("spes.db-wal");
    for i in 0..N {
        let store = if i % 2 == 0 { &a } else { &b };
        store
            .append(
                &run.id,
                &format!("k{i}"),
                "model",
                &json!({ "t": "x".repeat(i * 37 % 3000) }),
            )
            .await
            .unwrap();
    }
    let image = dir.path().join("image");
    std::fs::create_dir(&image).unwrap();
    std::fs::copy(&path, image.join("spes.db")).unwrap();
    let copied = std::fs::copy(&wal, image.join("spes.db-wal")).unwrap();
    a.close().await;
    b.close().await;
    assert!(
        copied > 1 << 20,
        "the image's WAL holds the frames: {copied} bytes"
    );
    // It ends in zeros written ahead: the last 8 KiB (more than a frame,
    // whose header is never all zeros) are zeros.
    let bytes = std::fs::read(image.join("spes.db-wal")).unwrap();
    assert!(
        bytes[bytes.len() - (8 << 10)..].iter().all(|&b| b == 0),
        "the WAL was written ahead"
    );
    let store = open(&image.join("spes.db")).await.unwrap();
    let want: Vec<String> = (0..N).map(|i| format!("k{i}")).collect();
    assert_eq!(keys_of(&store, &run.id).await, want);
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    store.close().await;
}

/// The WAL's size after a new store's first append.
async fn wal_after_one_append(durability: Durability) -> u64 {
    let (_dir, path) = temp();
    let store = SqliteStore::open(&path, SqliteOptions::default().with_durability(durability))
        .await
        .unwrap();
    let run = sample_run();
    store.create_run(&run).await.unwrap();
    store
        .append(&run.id, "k0", "model", &json!({ "t": "first" }))
        .await
        .unwrap();
    let len = std::fs::metadata(path.with_file_name("spes.db-wal"))
        .unwrap()
        .len();
    store.close().await;
    len
}

/// The WAL is written ahead (64 KiB first) with `synchronous=FULL` only:
/// with NORMAL a commit does not fsync, and the WAL holds only frames.
#[tokio::test]
async fn the_wal_is_written_ahead_only_when_commits_fsync() {
    let full = wal_after_one_append(Durability::Full).await;
    let normal = wal_after_one_append(Durability::Normal).await;
    assert!(
        full >= normal + (48 << 10),
        "FULL: {full} bytes, NORMAL: {normal} bytes after the same commits"
    );
}
