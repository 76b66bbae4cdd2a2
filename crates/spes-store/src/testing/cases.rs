//! The behaviours, one function each; see [`conformance!`](crate::conformance).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::sample_run;
use crate::{
    Appended, Decided, GateFilter, NewGate, NewRun, RunId, RunPatch, RunStatus, RunStore,
    StoreError,
};

async fn created(store: &dyn RunStore) -> NewRun {
    let run = sample_run();
    store.create_run(&run).await.unwrap();
    run
}

fn gate(run: RunId, key: &str) -> NewGate {
    NewGate {
        run_id: run,
        key: key.into(),
        kind: "approval".into(),
        request: json!({"text": "Ship it?"}),
        deadline: None,
    }
}

/// Every field of a new run comes back as given.
pub async fn create_then_get_returns_every_field(store: Arc<dyn RunStore>) {
    let new = created(&*store).await;
    let run = store.run(&new.id).await.unwrap().expect("created run");
    assert_eq!(run.id, new.id);
    assert_eq!(run.workflow_name, new.workflow_name);
    assert_eq!(run.workflow_path, new.workflow_path);
    assert_eq!(run.workflow_hash, new.workflow_hash);
    assert_eq!(run.workflow_source, new.workflow_source);
    assert_eq!(run.pins, new.pins);
    assert_eq!(run.settings, new.settings);
    assert_eq!(run.inputs, new.inputs);
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.owner, new.owner);
    assert_eq!(run.output, None);
    assert_eq!(run.error, None);
    assert_eq!(run.created_at, run.updated_at);
}

/// Creating a run whose id exists fails and changes nothing.
pub async fn create_with_an_existing_id_is_a_conflict(store: Arc<dyn RunStore>) {
    let new = created(&*store).await;
    let mut again = new.clone();
    again.workflow_name = "other".into();
    let err = store.create_run(&again).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(
        store.run(&new.id).await.unwrap().unwrap().workflow_name,
        "triage"
    );
}

/// An unknown id is `None`, not an error.
pub async fn unknown_run_is_none(store: Arc<dyn RunStore>) {
    assert_eq!(store.run(&RunId::new()).await.unwrap(), None);
}

/// A run is found by its full id (either spelling) or a unique prefix.
pub async fn find_by_full_id_or_prefix(store: Arc<dyn RunStore>) {
    let new = created(&*store).await;
    let _other = created(&*store).await;
    let full = new.id.to_string();
    for query in [
        full.clone(),
        new.id.0.hyphenated().to_string(),
        full.to_uppercase(),
        full[..31].to_owned(),
    ] {
        assert_eq!(store.find_run(&query).await.unwrap().id, new.id, "{query}");
    }
}

/// A prefix shared by several runs names how many, and lists them (the
/// first [`crate::MAX_CANDIDATES`] in id order) with workflow and status.
pub async fn find_with_an_ambiguous_prefix_is_ambiguous(store: Arc<dyn RunStore>) {
    for n in 1..=3u128 {
        let mut run = sample_run();
        run.id = RunId(uuid::Uuid::from_u128(
            0xabcd_ef00_0000_7000_8000_0000_0000_0000 | n,
        ));
        if n == 2 {
            run.status = RunStatus::Waiting;
        }
        store.create_run(&run).await.unwrap();
    }
    match store.find_run("abcdef").await {
        Err(e @ StoreError::Ambiguous { .. }) => {
            let StoreError::Ambiguous {
                prefix,
                count,
                candidates,
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(prefix, "abcdef");
            assert_eq!(*count, 3);
            let ids: Vec<&str> = candidates.iter().map(|c| c.id.as_str()).collect();
            assert_eq!(
                ids,
                [
                    "abcdef00000070008000000000000001",
                    "abcdef00000070008000000000000002",
                    "abcdef00000070008000000000000003"
                ]
            );
            assert!(candidates.iter().all(|c| c.workflow == "triage"));
            assert_eq!(candidates[1].status, "waiting");
            let shown = e.to_string();
            assert!(
                shown.contains("abcdef00000070008000000000000002  triage  waiting"),
                "{shown}"
            );
        }
        other => panic!("expected Ambiguous, got {other:?}"),
    }
    // More than fit: the first ten, and how many more.
    for n in 4..=12u128 {
        let mut run = sample_run();
        run.id = RunId(uuid::Uuid::from_u128(
            0xabcd_ef00_0000_7000_8000_0000_0000_0000 | n,
        ));
        store.create_run(&run).await.unwrap();
    }
    match store.find_run("abcdef").await {
        Err(e @ StoreError::Ambiguous { .. }) => {
            let StoreError::Ambiguous {
                count, candidates, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(*count, 12);
            assert_eq!(candidates.len(), crate::MAX_CANDIDATES);
            assert!(e.to_string().ends_with("... and 2 more"), "{e}");
        }
        other => panic!("expected Ambiguous, got {other:?}"),
    }
    let one = store.find_run("abcdef0000007000800000000000000").await;
    assert!(
        matches!(one, Err(StoreError::Ambiguous { count: 12, .. })),
        "{one:?}"
    );
    let exact = store
        .find_run("abcdef00000070008000000000000002")
        .await
        .unwrap();
    assert_eq!(exact.id.0.as_u128() & 0xff, 2);
}

/// No match, a non-hex query and a prefix under 4 characters are not found.
pub async fn find_unknown_or_too_short_is_not_found(store: Arc<dyn RunStore>) {
    let new = created(&*store).await;
    let full = new.id.to_string();
    for query in [&full[..3], "", "zzzz", "0000", "%%%%", "____"] {
        let err = store.find_run(query).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{query}: {err:?}");
    }
}

/// `list_runs` is newest first, honours the status filter and the limit.
pub async fn list_is_newest_first_and_filters_by_status(store: Arc<dyn RunStore>) {
    let mut ids = Vec::new();
    for status in [
        RunStatus::Waiting,
        RunStatus::Running,
        RunStatus::Waiting,
        RunStatus::Completed,
    ] {
        let mut run = sample_run();
        run.status = status;
        store.create_run(&run).await.unwrap();
        ids.push(run.id);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let all: Vec<_> = store
        .list_runs(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(all, ids.iter().rev().copied().collect::<Vec<_>>());
    let waiting: Vec<_> = store
        .list_runs(Some(RunStatus::Waiting), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(waiting, vec![ids[2], ids[0]]);
    assert_eq!(store.list_runs(None, 2).await.unwrap().len(), 2);
    assert!(
        store
            .list_runs(Some(RunStatus::Failed), 100)
            .await
            .unwrap()
            .is_empty()
    );
}

/// `query_runs` filters by status, workflow and creation time, and pages
/// through every run exactly once, newest first, with a keyset cursor.
pub async fn query_filters_and_pages_with_a_keyset_cursor(store: Arc<dyn RunStore>) {
    for (i, status) in [
        RunStatus::Waiting,
        RunStatus::Completed,
        RunStatus::Waiting,
        RunStatus::Failed,
        RunStatus::Completed,
    ]
    .into_iter()
    .enumerate()
    {
        let mut run = sample_run();
        run.status = status;
        run.workflow_name = if i % 2 == 0 { "even" } else { "odd" }.into();
        store.create_run(&run).await.unwrap();
    }
    let all_q = crate::RunQuery {
        limit: 100,
        ..Default::default()
    };
    let all = store.query_runs(&all_q).await.unwrap();
    assert_eq!(all.len(), 5);
    let order = |r: &crate::Run| (r.created_at, r.id.to_string());
    assert!(all.windows(2).all(|w| order(&w[0]) > order(&w[1])));
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .query_runs(&crate::RunQuery {
                after,
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.created_at, last.id));
        paged.extend(page.iter().map(|r| r.id));
    }
    assert_eq!(paged, all.iter().map(|r| r.id).collect::<Vec<_>>());
    let ids = |q: crate::RunQuery| {
        let store = store.clone();
        async move {
            store
                .query_runs(&q)
                .await
                .unwrap()
                .into_iter()
                .map(|r| (r.workflow_name, r.status))
                .collect::<Vec<_>>()
        }
    };
    let even_waiting = ids(crate::RunQuery {
        status: Some(RunStatus::Waiting),
        workflow: Some("even".into()),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(even_waiting.len(), 2);
    assert!(
        ids(crate::RunQuery {
            workflow: Some("none".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .is_empty()
    );
    let newest = all[0].created_at;
    let oldest = all[4].created_at;
    let since = ids(crate::RunQuery {
        since: Some(newest),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(
        since.len(),
        all.iter().filter(|r| r.created_at >= newest).count()
    );
    let until = ids(crate::RunQuery {
        until: Some(oldest),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert!(until.is_empty());
    let until_all = ids(crate::RunQuery {
        until: Some(newest + chrono::Duration::seconds(1)),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(until_all.len(), 5);
}

/// A transition from an allowed status sets the status and the patch's
/// fields and leaves the others.
pub async fn transition_moves_status_and_applies_patch(store: Arc<dyn RunStore>) {
    let new = created(&*store).await;
    let patch = RunPatch {
        error: Some(Some("provider down".into())),
        owner: Some(None),
        ..RunPatch::default()
    };
    let failed = store
        .transition(&new.id, &[RunStatus::Running], RunStatus::Failed, patch)
        .await
        .unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("provider down"));
    assert_eq!(failed.owner, None);
    assert!(failed.updated_at >= failed.created_at);
    let patch = RunPatch {
        output: Some(json!({"answer": 42})),
        error: Some(None),
        owner: None,
    };
    let done = store
        .transition(
            &new.id,
            &[RunStatus::Running, RunStatus::Failed],
            RunStatus::Completed,
            patch,
        )
        .await
        .unwrap();
    assert_eq!(done.output, Some(json!({"answer": 42})));
    assert_eq!(done.error, None);
    assert_eq!(done.owner, None);
    assert_eq!(store.run(&new.id).await.unwrap().unwrap(), done);
}

/// A compare-and-set that fails names the current status and writes nothing.
pub async fn transition_from_another_status_is_a_conflict_naming_it(store: Arc<dyn RunStore>) {
    let new = created(&*store).await;
    let before = store.run(&new.id).await.unwrap().unwrap();
    let patch = RunPatch {
        output: Some(json!("x")),
        ..RunPatch::default()
    };
    let err = store
        .transition(
            &new.id,
            &[RunStatus::Waiting, RunStatus::Paused],
            RunStatus::Running,
            patch,
        )
        .await
        .unwrap_err();
    match &err {
        StoreError::Conflict {
            current, expected, ..
        } => {
            assert_eq!(current, "running");
            assert!(
                expected.contains("waiting") && expected.contains("paused"),
                "{expected}"
            );
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert!(err.to_string().contains("is running"), "{err}");
    assert_eq!(store.run(&new.id).await.unwrap().unwrap(), before);
    // The refused write left nothing half-done behind.
    assert_eq!(
        store
            .append(&new.id, "after", "model", &json!(1))
            .await
            .unwrap(),
        Appended::New(1)
    );
}

/// Transitioning a run that does not exist is `NotFound`.
pub async fn transition_of_unknown_run_is_not_found(store: Arc<dyn RunStore>) {
    let err = store
        .transition(
            &RunId::new(),
            &[RunStatus::Running],
            RunStatus::Paused,
            RunPatch::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

/// Ten tasks racing to move the same run out of `running`: one wins.
pub async fn racing_transitions_exactly_one_wins(store: Arc<dyn RunStore>) {
    let new = created(&*store).await;
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = Arc::clone(&store);
            let patch = RunPatch {
                owner: Some(Some(format!("worker-{i}"))),
                ..RunPatch::default()
            };
            tokio::spawn(async move {
                store
                    .transition(&new.id, &[RunStatus::Running], RunStatus::Paused, patch)
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::Conflict { current, .. }) => assert_eq!(current, "paused"),
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(won, 1);
}

/// `claim_run` takes a run only from the status and owner the caller read:
/// a different owner (or status) is `Claimed`, naming them.
pub async fn claim_checks_status_and_owner(store: Arc<dyn RunStore>) {
    let new = created(&*store).await; // running under host:42
    let err = store
        .claim_run(&new.id, RunStatus::Running, Some("host:7"), "me:1")
        .await
        .unwrap_err();
    match err {
        StoreError::Claimed { status, owner, .. } => {
            assert_eq!(status, "running");
            assert_eq!(owner.as_deref(), Some("host:42"));
        }
        e => panic!("expected Claimed, got {e:?}"),
    }
    let err = store
        .claim_run(&new.id, RunStatus::Failed, Some("host:42"), "me:1")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Claimed { .. }), "{err:?}");
    store
        .transition(
            &new.id,
            &[RunStatus::Running],
            RunStatus::Failed,
            RunPatch {
                error: Some(Some("boom".into())),
                owner: Some(None),
                ..RunPatch::default()
            },
        )
        .await
        .unwrap();
    let run = store
        .claim_run(&new.id, RunStatus::Failed, None, "me:1")
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.owner.as_deref(), Some("me:1"));
    assert_eq!(run.error, None, "the old error is cleared");
    let err = store
        .claim_run(&new.id, RunStatus::Failed, None, "other:2")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Claimed { owner: Some(o), .. } if o == "me:1"),
        "{err:?}"
    );
    assert!(err.to_string().contains("under me:1"), "{err}");
}

/// Ten processes claiming a run whose owner died, all having read the
/// same (status, owner): exactly one takes it (running -> running is a
/// change of owner, so a status-only compare-and-set would let all in).
pub async fn racing_claims_of_a_dead_owners_run_exactly_one_wins(store: Arc<dyn RunStore>) {
    let new = created(&*store).await;
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .claim_run(
                        &new.id,
                        RunStatus::Running,
                        Some("host:42"),
                        &format!("w:{i}"),
                    )
                    .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => winners.push(r.owner.unwrap()),
            Err(StoreError::Claimed { owner, .. }) => assert!(owner.is_some()),
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let run = store.run(&new.id).await.unwrap().unwrap();
    assert_eq!(run.owner, Some(winners.remove(0)));
}

/// The first append under a key wins; a second returns it untouched.
pub async fn append_returns_new_then_existing_keeping_first_payload(store: Arc<dyn RunStore>) {
    let run = created(&*store).await;
    let first = store
        .append(&run.id, "step/a", "model", &json!({"text": "one"}))
        .await
        .unwrap();
    assert_eq!(first, Appended::New(1));
    let second = store
        .append(&run.id, "step/a", "clock", &json!({"text": "two"}))
        .await
        .unwrap();
    match second {
        Appended::Existing(e) => {
            assert_eq!(e.seq, 1);
            assert_eq!(e.kind, "model");
            assert_eq!(e.payload, json!({"text": "one"}));
            assert_eq!(e.run_id, run.id);
        }
        Appended::New(_) => panic!("second append wrote a new entry"),
    }
    assert_eq!(store.entries(&run.id).await.unwrap().len(), 1);
}

/// A payload encoded by the caller ([`RunStore::append_encoded`]) is stored
/// and read back as the same JSON as one given as a value, and follows the
/// same rules: the next seq, and a taken key keeps its first entry.
pub async fn append_encoded_is_append_with_the_payload_already_encoded(store: Arc<dyn RunStore>) {
    #[derive(serde::Serialize)]
    struct Effect<'a> {
        text: &'a str,
        tokens: u32,
        tags: Vec<&'a str>,
    }
    let run = created(&*store).await;
    let effect = Effect {
        text: "caf\u{e9} \"quoted\"\n",
        tokens: 7,
        tags: vec!["a", "b"],
    };
    store
        .append(&run.id, "step/a", "model", &json!({"n": 1}))
        .await
        .unwrap();
    let encoded = crate::Encoded::new(&effect).unwrap();
    assert_eq!(
        store
            .append_encoded(&run.id, "step/b", "model", encoded.clone())
            .await
            .unwrap(),
        Appended::New(2)
    );
    let other = crate::Encoded::new(&json!({"other": true})).unwrap();
    match store
        .append_encoded(&run.id, "step/b", "model", other)
        .await
        .unwrap()
    {
        Appended::Existing(e) => assert_eq!(e.seq, 2),
        Appended::New(_) => panic!("a taken key wrote a new entry"),
    }
    let e = store.entry(&run.id, "step/b").await.unwrap().unwrap();
    assert_eq!(
        e.payload,
        json!({"text": "caf\u{e9} \"quoted\"\n", "tokens": 7, "tags": ["a", "b"]})
    );
    assert_eq!(
        e.payload,
        serde_json::from_str::<serde_json::Value>(encoded.as_str()).unwrap()
    );
}

/// A lone append reads the run's status inside its own commit: a pause
/// committed before the append is what it reports, only for callers
/// asking about a moment at or before the append began, and an append that
/// finds its key taken reports nothing.
pub async fn a_lone_append_reports_the_status_its_commit_read(store: Arc<dyn RunStore>) {
    assert!(store.commits_read_status());
    let run = created(&*store).await;
    let before = std::time::Instant::now();
    store
        .append(&run.id, "a", "model", &json!(1))
        .await
        .unwrap();
    assert_eq!(
        store.status_read_by_commit(&run.id, before),
        Some(RunStatus::Running)
    );
    // Asked about a later moment: this commit is too old to answer.
    assert_eq!(
        store.status_read_by_commit(&run.id, std::time::Instant::now()),
        None
    );
    store
        .transition(
            &run.id,
            &[RunStatus::Running],
            RunStatus::Paused,
            RunPatch::default(),
        )
        .await
        .unwrap();
    let before = std::time::Instant::now();
    store
        .append(&run.id, "b", "model", &json!(2))
        .await
        .unwrap();
    assert_eq!(
        store.status_read_by_commit(&run.id, before),
        Some(RunStatus::Paused)
    );
    let before = std::time::Instant::now();
    assert!(matches!(
        store
            .append(&run.id, "b", "model", &json!(3))
            .await
            .unwrap(),
        Appended::Existing(_)
    ));
    assert_eq!(store.status_read_by_commit(&run.id, before), None);
}

/// Entries come back in commit order with seq 1, 2, 3, ...
pub async fn entries_come_in_commit_order(store: Arc<dyn RunStore>) {
    let run = created(&*store).await;
    // Keys deliberately not in lexical order.
    let keys: Vec<String> = (0..50).map(|i| format!("k{}", (i * 37) % 50)).collect();
    for (i, key) in keys.iter().enumerate() {
        let appended = store
            .append(&run.id, key, "model", &json!(i))
            .await
            .unwrap();
        assert_eq!(appended, Appended::New(i as i64 + 1));
    }
    let entries = store.entries(&run.id).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.key.clone()).collect::<Vec<_>>(),
        keys
    );
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=50).collect::<Vec<_>>()
    );
    assert!(
        entries
            .windows(2)
            .all(|w| w[0].recorded_at <= w[1].recorded_at)
    );
}

/// `entries_after` returns the entries past a seq, in order, at most `limit`.
pub async fn entries_after_a_seq_come_in_order_and_bounded(store: Arc<dyn RunStore>) {
    let run = created(&*store).await;
    let other = created(&*store).await;
    for i in 0..10 {
        for r in [&run.id, &other.id] {
            store
                .append(r, &format!("k{i}"), "model", &json!({ "i": i }))
                .await
                .unwrap();
        }
    }
    let seqs = |v: Vec<crate::Entry>| v.into_iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.entries_after(&run.id, 0, 100).await.unwrap()),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(store.entries_after(&run.id, 7, 100).await.unwrap()),
        vec![8, 9, 10]
    );
    assert_eq!(
        seqs(store.entries_after(&run.id, 2, 3).await.unwrap()),
        vec![3, 4, 5]
    );
    assert!(
        store
            .entries_after(&run.id, 10, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let e = store.entries_after(&run.id, 4, 1).await.unwrap();
    assert_eq!(e[0].key, "k4");
    assert_eq!(e[0].payload, json!({ "i": 4 }));
}

/// `usage` sums the model entries' tokens per run, in one call.
pub async fn usage_sums_the_model_calls_of_each_run(store: Arc<dyn RunStore>) {
    let a = created(&*store).await;
    let b = created(&*store).await;
    let idle = created(&*store).await;
    let model = |i: u64, o: u64| json!({ "type": "model", "provider": "p", "response": { "text": "t", "usage": { "input_tokens": i, "output_tokens": o } } });
    store
        .append(&a.id, "s1", "model", &model(10, 3))
        .await
        .unwrap();
    store
        .append(&a.id, "s2", "model", &model(5, 2))
        .await
        .unwrap();
    store
        .append(&a.id, "g", "decision", &json!({ "action": "approve" }))
        .await
        .unwrap();
    store
        .append(&b.id, "s1", "model", &model(7, 1))
        .await
        .unwrap();
    store
        .append(&b.id, "odd", "model", &json!({ "type": "model" }))
        .await
        .unwrap();
    // Priced calls add their cost; a cached answer spent nothing.
    let mut priced = model(100, 10);
    priced["cost_usd"] = json!(0.25);
    store.append(&a.id, "s3", "model", &priced).await.unwrap();
    let mut cached = model(1000, 1000);
    cached["cached"] = json!(true);
    store.append(&a.id, "s4", "model", &cached).await.unwrap();
    let mut got = store.usage(&[a.id, b.id, idle.id]).await.unwrap();
    got.sort_by_key(|(id, _)| *id);
    let mut want = vec![
        (
            a.id,
            crate::RunUsage {
                input_tokens: 115,
                output_tokens: 15,
                model_calls: 3,
                cost_usd: 0.25,
                cached_calls: 1,
            },
        ),
        (
            b.id,
            crate::RunUsage {
                input_tokens: 7,
                output_tokens: 1,
                model_calls: 2,
                cost_usd: 0.0,
                cached_calls: 0,
            },
        ),
    ];
    want.sort_by_key(|(id, _)| *id);
    assert_eq!(got, want);
    assert!(store.usage(&[]).await.unwrap().is_empty());
}

/// Each run has its own journal, numbered from 1.
pub async fn entries_of_runs_are_separate(store: Arc<dyn RunStore>) {
    let a = created(&*store).await;
    let b = created(&*store).await;
    store
        .append(&a.id, "x", "model", &json!("a1"))
        .await
        .unwrap();
    store
        .append(&a.id, "y", "model", &json!("a2"))
        .await
        .unwrap();
    assert_eq!(
        store
            .append(&b.id, "x", "model", &json!("b1"))
            .await
            .unwrap(),
        Appended::New(1)
    );
    assert_eq!(store.entries(&a.id).await.unwrap().len(), 2);
    let b_entries = store.entries(&b.id).await.unwrap();
    assert_eq!(b_entries.len(), 1);
    assert_eq!(b_entries[0].payload, json!("b1"));
    assert!(store.entries(&RunId::new()).await.unwrap().is_empty());
}

/// `entry` finds one entry by key; an unknown key is `None`.
pub async fn entry_looks_up_by_key(store: Arc<dyn RunStore>) {
    let run = created(&*store).await;
    store
        .append(
            &run.id,
            "gather/map[17]/summarize#attempt2",
            "model",
            &json!({"n": 17}),
        )
        .await
        .unwrap();
    let e = store
        .entry(&run.id, "gather/map[17]/summarize#attempt2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.payload, json!({"n": 17}));
    assert_eq!(e.kind, "model");
    assert_eq!(
        store
            .entry(&run.id, "gather/map[18]/summarize")
            .await
            .unwrap(),
        None
    );
}

/// Appends that arrive together (map items, parallel branches) all land,
/// each run's sequence numbers stay gapless, and an append to a missing
/// run among them fails alone.
pub async fn concurrent_appends_all_land_and_a_missing_run_fails_alone(store: Arc<dyn RunStore>) {
    let runs = [
        created(&*store).await,
        created(&*store).await,
        created(&*store).await,
    ];
    let missing = RunId::new();
    let mut tasks = Vec::new();
    for i in 0..120usize {
        let (st, run) = (store.clone(), runs[i % 3].id);
        tasks.push(tokio::spawn(async move {
            st.append(&run, &format!("map/{i}"), "model", &json!({ "i": i }))
                .await
        }));
        if i % 12 == 0 {
            let st = store.clone();
            tasks.push(tokio::spawn(async move {
                st.append(&missing, "lost", "model", &json!(i)).await
            }));
        }
    }
    let mut new = 0;
    let mut not_found = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(Appended::New(_)) => new += 1,
            Err(StoreError::NotFound(_)) => not_found += 1,
            other => panic!("unexpected append outcome: {other:?}"),
        }
    }
    assert_eq!((new, not_found), (120, 10));
    for run in &runs {
        let entries = store.entries(&run.id).await.unwrap();
        let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>(), "run {}", run.id);
        for e in &entries {
            let i: usize = e.key.strip_prefix("map/").unwrap().parse().unwrap();
            assert_eq!(e.payload, json!({ "i": i }));
            assert_eq!(runs[i % 3].id, run.id);
        }
    }
}

/// Appending to a run that does not exist is `NotFound`.
pub async fn append_to_unknown_run_is_not_found(store: Arc<dyn RunStore>) {
    let err = store
        .append(&RunId::new(), "k", "model", &json!(1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    // The failed write left nothing half-done behind.
    let run = created(&*store).await;
    assert_eq!(
        store
            .append(&run.id, "k", "model", &json!(1))
            .await
            .unwrap(),
        Appended::New(1)
    );
}

/// Ten concurrent appends under one key: exactly one writes, the others
/// get the winner's entry.
pub async fn racing_appends_of_one_key_write_once(store: Arc<dyn RunStore>) {
    let run = created(&*store).await;
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.append(&run.id, "same", "model", &json!(i)).await })
        })
        .collect();
    let mut new = 0;
    let mut seen = Vec::new();
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Appended::New(seq) => {
                assert_eq!(seq, 1);
                new += 1;
            }
            Appended::Existing(e) => seen.push(e.payload),
        }
    }
    assert_eq!(new, 1);
    let stored = store.entries(&run.id).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(seen.iter().all(|p| *p == stored[0].payload));
}

/// Opening a gate twice keeps the first request.
pub async fn open_gate_is_idempotent(store: Arc<dyn RunStore>) {
    let run = created(&*store).await;
    store.open_gate(&gate(run.id, "review")).await.unwrap();
    let mut again = gate(run.id, "review");
    again.request = json!({"text": "changed"});
    store.open_gate(&again).await.unwrap();
    let gates = store.gates(&GateFilter::default()).await.unwrap();
    assert_eq!(gates.len(), 1);
    assert_eq!(gates[0].request, json!({"text": "Ship it?"}));
    // Re-opening a decided gate changes nothing either.
    store
        .decide_gate(&run.id, "review", &json!({"approve": true}))
        .await
        .unwrap();
    store.open_gate(&again).await.unwrap();
    let gates = store.gates(&GateFilter::default()).await.unwrap();
    assert_eq!(gates[0].decision, Some(json!({"approve": true})));
}

/// Opening a gate on a run that does not exist is `NotFound`.
pub async fn open_gate_on_unknown_run_is_not_found(store: Arc<dyn RunStore>) {
    let err = store.open_gate(&gate(RunId::new(), "g")).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

/// The first decision is recorded; a second is refused with the first.
pub async fn decide_once_then_already_with_first_decision(store: Arc<dyn RunStore>) {
    let run = created(&*store).await;
    store.open_gate(&gate(run.id, "review")).await.unwrap();
    let first = json!({"outcome": "approve", "by": "ana"});
    assert_eq!(
        store.decide_gate(&run.id, "review", &first).await.unwrap(),
        Decided::Now
    );
    match store
        .decide_gate(&run.id, "review", &json!({"outcome": "reject"}))
        .await
        .unwrap()
    {
        Decided::Already {
            decision,
            decided_at,
        } => {
            assert_eq!(decision, first);
            let g = store.gates(&GateFilter::default()).await.unwrap().remove(0);
            assert_eq!(g.decided_at, Some(decided_at));
            assert_eq!(g.decision, Some(first));
        }
        Decided::Now => panic!("decided twice"),
    }
}

/// Ten concurrent, different decisions: exactly one is recorded, the
/// others see it.
pub async fn racing_decides_exactly_one_wins(store: Arc<dyn RunStore>) {
    let run = created(&*store).await;
    store.open_gate(&gate(run.id, "review")).await.unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = Arc::clone(&store);
            let decision = if i % 2 == 0 {
                json!({"approve": i})
            } else {
                json!({"reject": i})
            };
            tokio::spawn(async move {
                (
                    decision.clone(),
                    store.decide_gate(&run.id, "review", &decision).await,
                )
            })
        })
        .collect();
    let mut winner = None;
    let mut seen = Vec::new();
    for t in tasks {
        let (mine, outcome) = t.await.unwrap();
        match outcome.unwrap() {
            Decided::Now => {
                assert!(winner.is_none(), "two decisions won");
                winner = Some(mine);
            }
            Decided::Already { decision, .. } => seen.push(decision),
        }
    }
    let winner = winner.expect("one decision wins");
    assert_eq!(seen.len(), 9);
    assert!(seen.iter().all(|d| *d == winner));
    let entries = store.entries(&run.id).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].payload, winner);
}

/// A gate that was never opened cannot be decided.
pub async fn deciding_an_unopened_gate_is_not_found(store: Arc<dyn RunStore>) {
    let run = created(&*store).await;
    let err = store
        .decide_gate(&run.id, "nope", &json!(true))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(store.entries(&run.id).await.unwrap().is_empty());
    let err = store
        .decide_gate(&RunId::new(), "nope", &json!(true))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

/// The decision is also the journal entry under the gate's key.
pub async fn decision_is_a_journal_entry(store: Arc<dyn RunStore>) {
    let run = created(&*store).await;
    store
        .append(&run.id, "draft", "model", &json!("text"))
        .await
        .unwrap();
    store.open_gate(&gate(run.id, "review")).await.unwrap();
    let decision = json!({"outcome": "revise", "comments": "shorter"});
    store
        .decide_gate(&run.id, "review", &decision)
        .await
        .unwrap();
    let e = store
        .entry(&run.id, "review")
        .await
        .unwrap()
        .expect("decision entry");
    assert_eq!(e.kind, "decision");
    assert_eq!(e.payload, decision);
    assert_eq!(e.seq, 2);
    let g = store.gates(&GateFilter::default()).await.unwrap().remove(0);
    assert_eq!(g.decided_at, Some(e.recorded_at));
    // An append under the gate's key now finds the decision.
    assert!(matches!(
        store.append(&run.id, "review", "decision", &json!("late")).await.unwrap(),
        Appended::Existing(x) if x.payload == decision
    ));
}

/// `pending_only` and `run_id` narrow the gate list; oldest first.
pub async fn pending_filter_lists_only_undecided_gates(store: Arc<dyn RunStore>) {
    let a = created(&*store).await;
    let b = created(&*store).await;
    for (run, key) in [(a.id, "g1"), (a.id, "g2"), (b.id, "g3")] {
        store.open_gate(&gate(run, key)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    store.decide_gate(&a.id, "g1", &json!("yes")).await.unwrap();
    let keys = |gs: Vec<crate::Gate>| gs.into_iter().map(|g| g.key).collect::<Vec<_>>();
    let all = store.gates(&GateFilter::default()).await.unwrap();
    assert_eq!(keys(all), ["g1", "g2", "g3"]);
    let pending = store
        .gates(&GateFilter {
            run_id: None,
            pending_only: true,
        })
        .await
        .unwrap();
    assert_eq!(keys(pending), ["g2", "g3"]);
    let a_pending = store
        .gates(&GateFilter {
            run_id: Some(a.id),
            pending_only: true,
        })
        .await
        .unwrap();
    assert_eq!(keys(a_pending), ["g2"]);
    let a_all = store
        .gates(&GateFilter {
            run_id: Some(a.id),
            pending_only: false,
        })
        .await
        .unwrap();
    assert_eq!(keys(a_all), ["g1", "g2"]);
}

/// A gate keeps its kind, request and deadline (to the microsecond).
pub async fn gate_keeps_request_and_deadline(store: Arc<dyn RunStore>) {
    let run = created(&*store).await;
    let deadline = chrono::DateTime::parse_from_rfc3339("2031-05-06T07:08:09.123456Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let new = NewGate {
        run_id: run.id,
        key: "choose".into(),
        kind: "choose".into(),
        request: json!({"options": ["a", "b", "c"]}),
        deadline: Some(deadline),
    };
    store.open_gate(&new).await.unwrap();
    let g = store.gates(&GateFilter::default()).await.unwrap().remove(0);
    assert_eq!(g.run_id, run.id);
    assert_eq!(g.kind, "choose");
    assert_eq!(g.request, new.request);
    assert_eq!(g.deadline, Some(deadline));
    assert_eq!(g.decision, None);
    assert_eq!(g.decided_at, None);
}

/// JSON payloads come back exactly: unicode, braces, big numbers, nesting, scalars.
pub async fn json_payloads_round_trip(store: Arc<dyn RunStore>) {
    let run = created(&*store).await;
    let payloads = [
        json!({"text": "héllo wörld ✓ 日本語 🦀", "template": "{{ not evaluated }} {braces}", "quote": "\"'\\", "nul": "a\u{0}b"}),
        json!({"big": u64::MAX, "small": i64::MIN, "float": 1.0e300, "tiny": 5e-324, "tenth": 0.1}),
        json!({"a": {"b": {"c": [1, [2, [3, {"d": null}]]], "e": true}}}),
        json!("12"),
        json!(12),
        json!(null),
        json!([]),
        json!(""),
    ];
    for (i, p) in payloads.iter().enumerate() {
        store
            .append(&run.id, &format!("p{i}"), "model", p)
            .await
            .unwrap();
    }
    let entries = store.entries(&run.id).await.unwrap();
    for (e, p) in entries.iter().zip(&payloads) {
        assert_eq!(&e.payload, p, "{}", e.key);
    }
    let mut inputs = sample_run();
    inputs.inputs = payloads[0].clone();
    store.create_run(&inputs).await.unwrap();
    assert_eq!(
        store.run(&inputs.id).await.unwrap().unwrap().inputs,
        payloads[0]
    );
}

/// A 1 MB payload is stored and read back whole.
pub async fn large_payload_round_trips(store: Arc<dyn RunStore>) {
    let run = created(&*store).await;
    let text: String = "spes ✓ ".chars().cycle().take(1 << 20).collect();
    let payload = json!({"output": text});
    store
        .append(&run.id, "big", "model", &payload)
        .await
        .unwrap();
    let e = store.entry(&run.id, "big").await.unwrap().unwrap();
    assert_eq!(e.payload, payload);
    assert_eq!(store.entries(&run.id).await.unwrap()[0].payload, payload);
}

/// `prune_runs` deletes finished runs older than the cutoff (narrowed by
/// status) with their journal and gates; a dry run deletes nothing; runs
/// that are not finished are never deleted.
pub async fn prune_deletes_only_old_finished_runs_with_their_journal_and_gates(
    store: Arc<dyn RunStore>,
) {
    let mut ids = std::collections::BTreeMap::new();
    for status in [
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Waiting,
        RunStatus::Paused,
    ] {
        let mut run = sample_run();
        run.status = status;
        store.create_run(&run).await.unwrap();
        store
            .append(&run.id, "a", "llm", &json!({"text": "x"}))
            .await
            .unwrap();
        store
            .open_gate(&crate::NewGate {
                run_id: run.id,
                key: "g".into(),
                kind: "approval".into(),
                request: json!({}),
                deadline: None,
            })
            .await
            .unwrap();
        ids.insert(status.as_str(), run.id);
    }
    let later = chrono::Utc::now() + chrono::Duration::seconds(5);
    let earlier = chrono::Utc::now() - chrono::Duration::hours(1);
    // Nothing is older than an hour.
    assert!(
        store
            .prune_runs(earlier, &[], false)
            .await
            .unwrap()
            .is_empty()
    );
    // A dry run names the finished ones and deletes nothing.
    let mut finished = vec![ids["completed"], ids["failed"], ids["cancelled"]];
    finished.sort_by_key(ToString::to_string);
    assert_eq!(store.prune_runs(later, &[], true).await.unwrap(), finished);
    assert!(store.run(&ids["completed"]).await.unwrap().is_some());
    // Unfinished statuses asked for are ignored.
    let only = store
        .prune_runs(
            later,
            &[RunStatus::Completed, RunStatus::Running, RunStatus::Waiting],
            false,
        )
        .await
        .unwrap();
    assert_eq!(only, vec![ids["completed"]]);
    assert!(store.run(&ids["completed"]).await.unwrap().is_none());
    assert!(store.entries(&ids["completed"]).await.unwrap().is_empty());
    let gates = store
        .gates(&crate::GateFilter {
            run_id: Some(ids["completed"]),
            pending_only: false,
        })
        .await
        .unwrap();
    assert!(gates.is_empty(), "{gates:?}");
    // The rest of the finished ones; the others stay, journal and gates intact.
    let rest = store.prune_runs(later, &[], false).await.unwrap();
    let mut expect = vec![ids["failed"], ids["cancelled"]];
    expect.sort_by_key(ToString::to_string);
    assert_eq!(rest, expect);
    for status in ["pending", "running", "waiting", "paused"] {
        let id = ids[status];
        assert_eq!(
            store.run(&id).await.unwrap().map(|r| r.status.as_str()),
            Some(status)
        );
        assert_eq!(store.entries(&id).await.unwrap().len(), 1, "{status}");
    }
    let left = store.list_runs(None, 100).await.unwrap();
    assert_eq!(left.len(), 4);
}
