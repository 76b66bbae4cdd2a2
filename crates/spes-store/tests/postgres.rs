//! The conformance suite on PostgreSQL, plus what only a shared server
//! does: migrations run once by racing processes, a newer schema refused,
//! and the work queue (claims, leases, fencing).
//!
//! Needs a server: `SPES_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); `scripts/postgres.sh` starts one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

#[path = "postgres/limits.rs"]
mod limits;
#[path = "postgres/queue.rs"]
mod queue;

use std::sync::Arc;

use spes_store::postgres::{PostgresOptions, PostgresStore};
use spes_store::testing::postgres::TestSchema;
use spes_store::{RunStore, StoreError};

spes_store::conformance!(postgres_conformance, spes_store::testing::postgres::fixture);

#[tokio::test]
async fn racing_openers_migrate_once() {
    let schema = TestSchema::new().await;
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let url = schema.url().to_owned();
            tokio::spawn(
                async move { PostgresStore::connect(&url, PostgresOptions::default()).await },
            )
        })
        .collect();
    for o in opens {
        let store = o.await.unwrap().unwrap();
        assert_eq!(
            store.schema_version().await.unwrap(),
            PostgresStore::supported_schema_version()
        );
    }
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_left_alone() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let newer = PostgresStore::supported_schema_version() + 1;
    sqlx::query("UPDATE spes_meta SET version = $1")
        .bind(newer)
        .execute(store.pool())
        .await
        .unwrap();
    let err = PostgresStore::connect(schema.url(), PostgresOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found, .. } if found == newer),
        "{err:?}"
    );
    assert_eq!(store.schema_version().await.unwrap(), newer);
}

/// A sequential step's append runs on a connection the store keeps for
/// it, outside the pool: when the server ends that connection between two
/// appends, the next append opens another and commits, and every entry is
/// there once, numbered in order.
#[tokio::test]
async fn lone_appends_go_on_after_the_server_ends_their_connection() {
    let schema = TestSchema::new().await;
    // A name of its own, so that only this store's sessions are ended.
    let name = format!("spes-kill-{}", uuid::Uuid::now_v7().simple());
    let url = format!("{}&application_name={name}", schema.url());
    let store = PostgresStore::connect(&url, PostgresOptions::default())
        .await
        .unwrap();
    let run = spes_store::testing::sample_run();
    store.create_run(&run).await.unwrap();
    let payload = serde_json::json!({"n": 1});
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(schema.url())
        .await
        .unwrap();
    for round in 0..3 {
        let key = format!("step{round}");
        assert_eq!(
            store
                .append(&run.id, &key, "model", &payload)
                .await
                .unwrap(),
            spes_store::Appended::New(round + 1)
        );
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&name)
        .fetch_all(&mut admin)
        .await
        .unwrap();
        assert!(ended.iter().any(|e| *e), "no session of the store to end");
    }
    // The first key is still taken; the entries are in order, once each.
    assert!(matches!(
        store.append(&run.id, "step0", "model", &payload).await.unwrap(),
        spes_store::Appended::Existing(e) if e.seq == 1
    ));
    let seqs: Vec<(i64, String)> = store
        .entries(&run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.key))
        .collect();
    assert_eq!(
        seqs,
        vec![
            (1, "step0".into()),
            (2, "step1".into()),
            (3, "step2".into())
        ]
    );
    // Closed, the store opens no connection of its own again.
    store.close().await;
    assert!(
        store
            .append(&run.id, "after-close", "model", &payload)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_after_the_retry_budget() {
    // A port nothing listens on (the kernel refuses the connection).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("postgres://u:hunter2@127.0.0.1:{port}/x");
    let started = std::time::Instant::now();
    let err = PostgresStore::connect(
        &url,
        PostgresOptions::default().with_retry_for(std::time::Duration::from_millis(300)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
}

#[tokio::test]
async fn open_url_picks_the_backend() {
    let schema = TestSchema::new().await;
    let store: Arc<dyn RunStore> = spes_store::open_url(schema.url()).await.unwrap();
    assert!(
        store.describe().starts_with("postgres://"),
        "{}",
        store.describe()
    );
    assert!(store.queue().is_some());
    let dir = tempfile::tempdir().unwrap();
    let sqlite = spes_store::open_url(&format!("sqlite://{}/s.db", dir.path().display()))
        .await
        .unwrap();
    assert!(sqlite.queue().is_none());
}

/// Group commit on PostgreSQL: 100 concurrent appends share transactions
/// and all land with gapless sequence numbers; appends made one after
/// another commit alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits_sequential_ones_do_not() {
    let schema = TestSchema::new().await;
    let store = Arc::new(
        PostgresStore::connect(schema.url(), PostgresOptions::default())
            .await
            .unwrap(),
    );
    let run = spes_store::testing::sample_run();
    store.create_run(&run).await.unwrap();
    for i in 0..10 {
        store
            .append(&run.id, &format!("seq/{i}"), "model", &serde_json::json!(i))
            .await
            .unwrap();
    }
    assert_eq!(store.journal_transactions(), 10);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(&run.id, &format!("map/{i}"), "model", &serde_json::json!(i))
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Ok(spes_store::Appended::New(_))));
    }
    let shared = store.journal_transactions() - 10;
    assert!(shared < 50, "100 concurrent appends took {shared} commits");
    let seqs: Vec<i64> = store
        .entries(&run.id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=110).collect::<Vec<_>>());
}

/// Migration 5 seeds each run's `last_seq` from its journal: a store made
/// by the version before goes on numbering after its last entry.
#[tokio::test]
async fn a_journal_from_schema_4_goes_on_numbering_after_migration() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let run = spes_store::testing::sample_run();
    store.create_run(&run).await.unwrap();
    for i in 0..3 {
        store
            .append(&run.id, &format!("s{i}"), "model", &serde_json::json!(i))
            .await
            .unwrap();
    }
    // Back to version 4: no counter column (and none of the later tables).
    sqlx::raw_sql(
        "ALTER TABLE runs DROP COLUMN last_seq; DROP TABLE response_cache, rate_buckets, rate_slots; UPDATE spes_meta SET version = 4",
    )
        .execute(store.pool())
        .await
        .unwrap();
    let migrated = schema.store().await;
    assert_eq!(
        migrated.schema_version().await.unwrap(),
        PostgresStore::supported_schema_version()
    );
    let next = migrated
        .append(&run.id, "s3", "model", &serde_json::json!(3))
        .await
        .unwrap();
    assert!(matches!(next, spes_store::Appended::New(4)), "{next:?}");
}

/// Two processes (two pools: no shared group commit) append the same key
/// at once: one records it, the other gets that entry back, and the
/// numbering has no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_appends_of_one_key_from_two_pools_record_it_once() {
    let schema = TestSchema::new().await;
    let (a, b) = (
        Arc::new(schema.store().await),
        Arc::new(schema.store().await),
    );
    let run = spes_store::testing::sample_run();
    a.create_run(&run).await.unwrap();
    for round in 0..20 {
        let key = format!("k{round}");
        let (va, vb) = (serde_json::json!("a"), serde_json::json!("b"));
        let (ra, rb) = tokio::join!(
            a.append(&run.id, &key, "model", &va),
            b.append(&run.id, &key, "model", &vb),
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let news = [&ra, &rb]
            .iter()
            .filter(|x| matches!(x, spes_store::Appended::New(_)))
            .count();
        assert_eq!(news, 1, "round {round}: {ra:?} {rb:?}");
    }
    let seqs: Vec<i64> = a
        .entries(&run.id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    let next = b
        .append(&run.id, "after", "model", &serde_json::json!(0))
        .await
        .unwrap();
    assert!(matches!(next, spes_store::Appended::New(21)), "{next:?}");
}
