//! The work queue: claims, leases, the sweep of expired leases, fencing.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use spes_store::queue::{FinalEntry, NewItem, TaskKind};
use spes_store::testing::postgres::TestSchema;
use spes_store::testing::sample_run;
use spes_store::{Appended, NewGate, RunStatus, RunStore, StoreError};

const LEASE: Duration = Duration::from_secs(30);

async fn queued(store: &dyn RunStore) -> spes_store::NewRun {
    let mut run = sample_run();
    run.status = RunStatus::Pending;
    run.owner = None;
    store
        .queue()
        .unwrap()
        .create_queued_run(&run)
        .await
        .unwrap();
    run
}

async fn count(store: &spes_store::postgres::PostgresStore, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_queued_run_is_claimed_by_exactly_one_worker() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let run = queued(&store).await;
    let q = store.queue().unwrap();
    let (a, b) = tokio::join!(
        q.claim("a", TaskKind::Run, 5, LEASE),
        q.claim("b", TaskKind::Run, 5, LEASE)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 1, "{a:?} {b:?}");
    let task = a.into_iter().chain(b).next().unwrap();
    assert_eq!(task.run_id, run.id);
    assert_eq!(task.kind, TaskKind::Run);
    assert_eq!(task.lease.epoch, 1);
    assert_eq!(task.run_status, RunStatus::Pending);
    assert!(
        q.claim("c", TaskKind::Run, 5, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        q.claim("c", TaskKind::Item, 5, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn items_are_enqueued_once_and_split_between_workers() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let run = queued(&store).await;
    let q = store.queue().unwrap();
    let parent = q
        .claim("p", TaskKind::Run, 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    let items: Vec<NewItem> = (0..100)
        .map(|i| NewItem {
            key: format!("m/map[{i}]"),
            payload: json!({"index": i}),
        })
        .collect();
    q.enqueue_items(&parent.lease, &run.id, &items)
        .await
        .unwrap();
    q.enqueue_items(&parent.lease, &run.id, &items)
        .await
        .unwrap();
    assert_eq!(
        count(&store, "SELECT count(*) FROM tasks WHERE kind = 'item'").await,
        100
    );
    let claims: Vec<_> = (0..4)
        .map(|w| {
            let url = schema.url().to_owned();
            tokio::spawn(async move {
                let s = spes_store::postgres::PostgresStore::connect(&url, Default::default())
                    .await
                    .unwrap();
                let mut mine = Vec::new();
                loop {
                    let got = s
                        .queue()
                        .unwrap()
                        .claim(&format!("w{w}"), TaskKind::Item, 7, LEASE)
                        .await
                        .unwrap();
                    if got.is_empty() {
                        break;
                    }
                    mine.extend(got.into_iter().map(|t| t.key));
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in claims {
        all.extend(c.await.unwrap());
    }
    let distinct: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), 100, "every item claimed exactly once");
    assert_eq!(distinct.len(), 100);
    let p = q.item_progress(&run.id, "m/map[").await.unwrap();
    assert_eq!((p.open, p.done), (100, 0));
}

#[tokio::test]
async fn an_expired_lease_is_reclaimed_and_the_old_holder_is_fenced() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let run = queued(&store).await;
    let q = store.queue().unwrap();
    let old = q
        .claim("a", TaskKind::Run, 1, Duration::from_millis(200))
        .await
        .unwrap()
        .remove(0);
    // Still held: nobody else gets it.
    assert!(
        q.claim("b", TaskKind::Run, 1, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        q.append_fenced(&old.lease, &run.id, "s1", "model", &json!(1))
            .await
            .unwrap(),
        Appended::New(1)
    );
    // Poll until the lease has run out and another worker takes the task.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let new = loop {
        if let Some(t) = q.claim("b", TaskKind::Run, 1, LEASE).await.unwrap().pop() {
            break t;
        }
        assert!(std::time::Instant::now() < deadline, "never reclaimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(new.lease.epoch, old.lease.epoch + 1);
    assert_eq!(new.lease.owner, "b");
    // The zombie's late writes change nothing.
    let err = q
        .append_fenced(&old.lease, &run.id, "s2", "model", &json!("late"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err:?}");
    let err = q
        .finish_run(
            &old.lease,
            &run.id,
            &[RunStatus::Pending],
            RunStatus::Completed,
            Default::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err:?}");
    assert_eq!(
        q.renew(std::slice::from_ref(&old.lease), LEASE)
            .await
            .unwrap(),
        vec![old.lease.task]
    );
    q.release(&old.lease).await.unwrap();
    assert_eq!(store.entries(&run.id).await.unwrap().len(), 1);
    assert_eq!(
        store.status(&run.id).await.unwrap(),
        Some(RunStatus::Pending)
    );
    // The new holder writes and finishes.
    assert!(
        q.renew(std::slice::from_ref(&new.lease), LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        q.append_fenced(&new.lease, &run.id, "s2", "model", &json!("b"))
            .await
            .unwrap(),
        Appended::New(2)
    );
    let done = q
        .finish_run(
            &new.lease,
            &run.id,
            &[RunStatus::Pending],
            RunStatus::Completed,
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(
        count(&store, "SELECT count(*) FROM tasks WHERE state = 'claimed'").await,
        0
    );
}

#[tokio::test]
async fn finishing_an_item_writes_its_result_with_the_task() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let run = queued(&store).await;
    let q = store.queue().unwrap();
    let parent = q
        .claim("p", TaskKind::Run, 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    let items: Vec<NewItem> = (0..3)
        .map(|i| NewItem {
            key: format!("m/map[{i}]"),
            payload: json!(i),
        })
        .collect();
    q.enqueue_items(&parent.lease, &run.id, &items)
        .await
        .unwrap();
    let got = q.claim("w", TaskKind::Item, 3, LEASE).await.unwrap();
    assert_eq!(got.len(), 3);
    let result = |t: &spes_store::queue::Task| FinalEntry {
        key: format!("{}#result", t.key),
        kind: "item".into(),
        payload: json!({"value": t.payload}),
    };
    q.finish_item(&got[0].lease, &run.id, Some(&result(&got[0])), None)
        .await
        .unwrap();
    q.finish_item(&got[1].lease, &run.id, None, Some("boom"))
        .await
        .unwrap();
    // Finishing twice (a retried commit) is fenced: the task is no longer claimed.
    let again = q
        .finish_item(&got[0].lease, &run.id, Some(&result(&got[0])), None)
        .await;
    assert!(matches!(again, Err(StoreError::Fenced { .. })), "{again:?}");
    let p = q.item_progress(&run.id, "m/map[").await.unwrap();
    assert_eq!(p.open, 1);
    assert_eq!(p.done, 1);
    assert_eq!(p.failed, vec![("m/map[1]".to_owned(), "boom".to_owned())]);
    let under = q.entries_under(&run.id, &["m/map["]).await.unwrap();
    assert_eq!(under.len(), 1);
    assert_eq!(under[0].key, "m/map[0]#result");
    // Enqueuing again retries the failed item only.
    q.enqueue_items(&parent.lease, &run.id, &items)
        .await
        .unwrap();
    let retry = q.claim("w", TaskKind::Item, 3, LEASE).await.unwrap();
    assert_eq!(
        retry.iter().map(|t| t.key.as_str()).collect::<Vec<_>>(),
        ["m/map[1]"]
    );
    // Stopping gives back what a worker holds at once.
    assert_eq!(q.release_all("w").await.unwrap(), 2);
    assert_eq!(q.item_progress(&run.id, "m/map[").await.unwrap().open, 2);
}

#[tokio::test]
async fn a_claim_says_whether_the_journal_holds_the_task_s_keys_and_open_items_are_seen_without_counting()
 {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let run = queued(&store).await;
    let q = store.queue().unwrap();
    let parent = q
        .claim("p", TaskKind::Run, 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    assert!(!parent.journaled, "a new run has no entry");
    // Entries under item 1 (a step) and item 2 (its result), and one under
    // item 10, whose key starts with item 1's but is not under it.
    for key in [
        "m/map[1]/step",
        "m/map[2]#result",
        "m/map[10]/step",
        "m#ctx",
    ] {
        store
            .append(&run.id, key, "decision", &json!({"decision": 1}))
            .await
            .unwrap();
    }
    let items: Vec<NewItem> = (0..4)
        .map(|i| NewItem {
            key: format!("m/map[{i}]"),
            payload: json!(i),
        })
        .collect();
    q.enqueue_items(&parent.lease, &run.id, &items)
        .await
        .unwrap();
    assert!(q.items_open(&run.id, "m/map[").await.unwrap());
    assert!(!q.items_open(&run.id, "n/map[").await.unwrap());
    let got = q.claim("w", TaskKind::Item, 4, LEASE).await.unwrap();
    let journaled: Vec<(&str, bool)> = got.iter().map(|t| (t.key.as_str(), t.journaled)).collect();
    assert_eq!(
        journaled,
        [
            ("m/map[0]", false),
            ("m/map[1]", true),
            ("m/map[2]", true),
            ("m/map[3]", false)
        ]
    );
    for t in &got {
        q.finish_item(&t.lease, &run.id, None, None).await.unwrap();
    }
    assert!(!q.items_open(&run.id, "m/map[").await.unwrap());
    let p = q.item_progress(&run.id, "m/map[").await.unwrap();
    assert_eq!((p.open, p.done), (0, 4));
    // The run task, claimed again, sees its journal.
    q.release(&parent.lease).await.unwrap();
    let again = q.claim("p", TaskKind::Run, 1, LEASE).await.unwrap();
    assert!(again[0].journaled);
}

#[tokio::test]
async fn deciding_a_gate_readies_a_waiting_queued_run() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let run = queued(&store).await;
    let q = store.queue().unwrap();
    let t = q
        .claim("w", TaskKind::Run, 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    store
        .open_gate(&NewGate {
            run_id: run.id,
            key: "review".into(),
            kind: "approval".into(),
            request: json!({}),
            deadline: None,
        })
        .await
        .unwrap();
    q.finish_run(
        &t.lease,
        &run.id,
        &[RunStatus::Pending],
        RunStatus::Waiting,
        Default::default(),
    )
    .await
    .unwrap();
    assert!(
        q.claim("w", TaskKind::Run, 1, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .decide_gate(&run.id, "review", &json!({"approve": true}))
        .await
        .unwrap();
    let again = q.claim("w", TaskKind::Run, 1, LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].lease.epoch, 2);
}

#[tokio::test]
async fn shared_state_is_compare_and_set() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let q = store.queue().unwrap();
    assert_eq!(q.shared_state("breaker:x").await.unwrap(), None);
    assert!(
        q.put_shared_state("breaker:x", &json!({"closed": 1}), None)
            .await
            .unwrap()
    );
    // A second creator loses.
    assert!(
        !q.put_shared_state("breaker:x", &json!({"closed": 9}), None)
            .await
            .unwrap()
    );
    let (v, version) = q.shared_state("breaker:x").await.unwrap().unwrap();
    assert_eq!((v, version), (json!({"closed": 1}), 1));
    assert!(
        q.put_shared_state("breaker:x", &json!({"closed": 2}), Some(1))
            .await
            .unwrap()
    );
    // A writer that read version 1 is refused.
    assert!(
        !q.put_shared_state("breaker:x", &json!({"closed": 0}), Some(1))
            .await
            .unwrap()
    );
    assert_eq!(
        q.shared_state("breaker:x").await.unwrap().unwrap(),
        (json!({"closed": 2}), 2)
    );
}

#[tokio::test]
async fn items_finish_together_in_one_commit_fenced_ones_excluded() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let run = queued(&store).await;
    let q = store.queue().unwrap();
    let parent = q
        .claim("p", TaskKind::Run, 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    q.append_fenced(&parent.lease, &run.id, "m#ctx", "decision", &json!({}))
        .await
        .unwrap();
    let items: Vec<NewItem> = (0..4)
        .map(|i| NewItem {
            key: format!("m/map[{i}]"),
            payload: json!(i),
        })
        .collect();
    q.enqueue_items(&parent.lease, &run.id, &items)
        .await
        .unwrap();
    let got = q.claim("w", TaskKind::Item, 4, LEASE).await.unwrap();
    let mut batch: Vec<(spes_store::queue::Lease, FinalEntry)> = got
        .iter()
        .map(|t| {
            (
                t.lease.clone(),
                FinalEntry {
                    key: format!("{}#result", t.key),
                    kind: "item".into(),
                    payload: json!({"type": "item", "value": t.payload}),
                },
            )
        })
        .collect();
    // One holder is stale (a zombie's epoch).
    batch[2].0.epoch += 7;
    let held = q.finish_items(&run.id, &batch).await.unwrap();
    assert_eq!(held, vec![true, true, false, true]);
    let entries = store.entries(&run.id).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        entries.iter().filter(|e| e.kind == "item").count(),
        3,
        "the fenced item wrote nothing"
    );
    let p = q.item_progress(&run.id, "m/map[").await.unwrap();
    assert_eq!((p.open, p.done), (1, 3));
    // The next append follows on without a gap.
    assert_eq!(
        q.append_fenced(&parent.lease, &run.id, "after", "model", &json!(1))
            .await
            .unwrap(),
        Appended::New(5)
    );
}

/// Issue 11, item 10 (lease losses reported by a healthy lone worker):
/// the heartbeat reads the leases it holds, an item finishes meanwhile,
/// then the renewal runs. The finished task is not renewed, and the old
/// `renew` called it lost, so the worker aborted the task that had just
/// committed (before it counted itself done) and logged a lost lease.
/// A task ended under the renewing epoch is not lost; one taken over by
/// another claim, or expired, still is.
#[tokio::test]
async fn renew_does_not_report_a_task_its_holder_just_finished() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let run = queued(&store).await;
    let q = store.queue().unwrap();
    let parent = q
        .claim("p", TaskKind::Run, 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    let items: Vec<NewItem> = (0..4)
        .map(|i| NewItem {
            key: format!("m/map[{i}]"),
            payload: json!(i),
        })
        .collect();
    q.enqueue_items(&parent.lease, &run.id, &items)
        .await
        .unwrap();
    let got = q.claim("w", TaskKind::Item, 4, LEASE).await.unwrap();
    assert_eq!(got.len(), 4);
    // The heartbeat's snapshot of held leases is taken here...
    let snapshot: Vec<_> = got.iter().map(|t| t.lease.clone()).collect();
    // ...then item 0 commits with its task, item 1 fails, item 2 is given back.
    let entry = FinalEntry {
        key: "m/map[0]#result".into(),
        kind: "item".into(),
        payload: json!({"value": 0}),
    };
    assert_eq!(
        q.finish_items(&run.id, &[(got[0].lease.clone(), entry)])
            .await
            .unwrap(),
        [true]
    );
    q.finish_item(&got[1].lease, &run.id, None, Some("boom"))
        .await
        .unwrap();
    q.release(&got[2].lease).await.unwrap();
    let lost = q.renew(&snapshot, LEASE).await.unwrap();
    assert!(lost.is_empty(), "ended tasks reported lost: {lost:?}");

    // A real loss is still reported: item 3's lease expires and another
    // worker claims it.
    let short = q
        .renew(&snapshot[3..], Duration::from_millis(1))
        .await
        .unwrap();
    assert!(short.is_empty());
    let t = std::time::Instant::now();
    let taken = loop {
        let got = q.claim("other", TaskKind::Item, 4, LEASE).await.unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "never reclaimed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // The released item 2 is ready again and may be taken too; item 3 must be.
    assert!(taken.iter().any(|t| t.lease.task == got[3].lease.task));
    let mut lost = q.renew(&snapshot, LEASE).await.unwrap();
    lost.sort_unstable();
    let mut taken: Vec<i64> = taken.iter().map(|t| t.lease.task).collect();
    taken.sort_unstable();
    assert_eq!(
        lost, taken,
        "the tasks another worker took are lost, no others"
    );
}

/// Fenced appends that arrive together (the model answers of items a
/// worker runs side by side) share transactions; an append whose lease is
/// stale is refused alone, and the others land with gapless numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fenced_appends_share_commits_a_stale_one_alone_is_refused() {
    let schema = TestSchema::new().await;
    let store = std::sync::Arc::new(schema.store().await);
    let run = queued(&*store).await;
    let q = store.queue().unwrap();
    let parent = q
        .claim("p", TaskKind::Run, 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    let items: Vec<NewItem> = (0..60)
        .map(|i| NewItem {
            key: format!("m/map[{i}]"),
            payload: json!(i),
        })
        .collect();
    q.enqueue_items(&parent.lease, &run.id, &items)
        .await
        .unwrap();
    let got = q.claim("w", TaskKind::Item, 60, LEASE).await.unwrap();
    assert_eq!(got.len(), 60);
    let before = store.journal_transactions();
    let tasks: Vec<_> = got
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let store = store.clone();
            let mut lease = t.lease.clone();
            if i == 7 {
                lease.epoch += 3; // a zombie's epoch
            }
            tokio::spawn(async move {
                let q = store.queue().unwrap();
                q.append_fenced(
                    &lease,
                    &run.id,
                    &format!("{}/llm", t.key),
                    "model",
                    &json!(i),
                )
                .await
            })
        })
        .collect();
    let mut fenced = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(Appended::New(_)) => {}
            Err(StoreError::Fenced { .. }) => fenced += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(fenced, 1);
    let txs = store.journal_transactions() - before;
    assert!(txs < 30, "60 concurrent fenced appends took {txs} commits");
    let seqs: Vec<i64> = store
        .entries(&run.id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=59).collect::<Vec<_>>());
}
