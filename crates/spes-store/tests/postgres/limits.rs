//! Rate limits shared through the store: GCRA buckets answered on the
//! server's clock, concurrency slots taken once each and freed by their
//! lease when their holder dies.

use std::num::NonZeroU32;
use std::time::Duration;

use spes_store::limits::RateLimitStore;
use spes_store::postgres::PostgresStore;
use spes_store::testing::postgres::TestSchema;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

async fn holder_of(store: &PostgresStore, provider: &str, slot: i32) -> Option<String> {
    sqlx::query_scalar("SELECT holder FROM rate_slots WHERE provider = $1 AND slot = $2")
        .bind(provider)
        .bind(slot)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_bucket_is_shared_by_every_handle_and_answers_the_gcra_wait() {
    let schema = TestSchema::new().await;
    // Two handles: two worker processes.
    let (a, b) = (schema.store().await, schema.store().await);
    // 60 a minute: the full bucket lets 60 go at once, shared by both.
    for i in 0..60 {
        let s: &PostgresStore = if i % 2 == 0 { &a } else { &b };
        let wait = s.reserve("p", "rpm", nz(60), nz(1)).await.unwrap();
        assert_eq!(wait, Duration::ZERO, "request {i}");
    }
    // The 61st waits for one refill (1 s, less the time the 60 took).
    let wait = a.reserve("p", "rpm", nz(60), nz(1)).await.unwrap();
    assert!(
        wait > Duration::from_millis(500) && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    // The next one is served after it: one more second.
    let wait = b.reserve("p", "rpm", nz(60), nz(1)).await.unwrap();
    assert!(
        wait > Duration::from_millis(1500) && wait <= Duration::from_secs(2),
        "{wait:?}"
    );
    // A cost above the bucket counts as the whole bucket (a minute more).
    let wait = a.reserve("p", "rpm", nz(60), nz(1000)).await.unwrap();
    assert!(
        wait > Duration::from_millis(61_500) && wait <= Duration::from_secs(62),
        "{wait:?}"
    );
    // Other buckets and providers are apart.
    for (provider, bucket) in [("p", "tpm"), ("q", "rpm")] {
        let wait = a.reserve(provider, bucket, nz(60), nz(60)).await.unwrap();
        assert_eq!(wait, Duration::ZERO, "{provider} {bucket}");
        let wait = a.reserve(provider, bucket, nz(60), nz(1)).await.unwrap();
        assert!(
            wait > Duration::from_millis(500),
            "{provider} {bucket}: {wait:?}"
        );
    }
    // The bucket refills with time (the server's): 70 s later, it is
    // full again (moved back instead of slept).
    sqlx::query("UPDATE rate_buckets SET tat = tat - interval '70 seconds' WHERE provider = 'p' AND bucket = 'rpm'")
        .execute(a.pool())
        .await
        .unwrap();
    let wait = b.reserve("p", "rpm", nz(60), nz(1)).await.unwrap();
    assert_eq!(wait, Duration::ZERO);
}

#[tokio::test]
async fn at_most_max_slots_are_held_at_once_across_handles() {
    let schema = TestSchema::new().await;
    let (a, b) = (schema.store().await, schema.store().await);
    let takes = (0..20).map(|i| {
        let s = if i % 2 == 0 { &a } else { &b };
        async move {
            s.try_acquire_slot("p", nz(5), &format!("h{i}"), Duration::from_secs(30))
                .await
                .unwrap()
        }
    });
    let got: Vec<u32> = futures::future::join_all(takes)
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![0, 1, 2, 3, 4], "{got:?}");
}

#[tokio::test]
async fn a_dead_holders_slot_frees_itself_when_its_lease_runs_out() {
    let schema = TestSchema::new().await;
    let store = schema.store().await;
    let lease = Duration::from_secs(30);
    // `dead` takes slot 0 and never renews nor frees it.
    assert_eq!(
        store
            .try_acquire_slot("p", nz(2), "dead", lease)
            .await
            .unwrap(),
        Some(0)
    );
    assert_eq!(
        store
            .try_acquire_slot("p", nz(2), "b", lease)
            .await
            .unwrap(),
        Some(1)
    );
    // Both held: none for c.
    assert_eq!(
        store
            .try_acquire_slot("p", nz(2), "c", lease)
            .await
            .unwrap(),
        None
    );
    // Other providers have slots of their own.
    assert_eq!(
        store
            .try_acquire_slot("q", nz(2), "c", lease)
            .await
            .unwrap(),
        Some(0)
    );
    // A minute later (dead's lease moved back instead of slept), b having
    // renewed its own meanwhile (its call is long).
    sqlx::query(
        "UPDATE rate_slots SET expires_at = expires_at - interval '1 minute' WHERE holder = 'dead'",
    )
    .execute(store.pool())
    .await
    .unwrap();
    assert!(store.renew_slot("p", 1, "b", lease).await.unwrap());
    let left: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at - clock_timestamp())::float8 FROM rate_slots WHERE provider = 'p' AND slot = 1",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert!(left > 25.0 && left <= 30.0, "{left}");
    // The dead holder's lease ran out: c takes its slot, b's stays.
    assert_eq!(
        store
            .try_acquire_slot("p", nz(2), "c", lease)
            .await
            .unwrap(),
        Some(0)
    );
    assert_eq!(holder_of(&store, "p", 0).await.as_deref(), Some("c"));
    assert_eq!(holder_of(&store, "p", 1).await.as_deref(), Some("b"));
    // The dead holder, back, can neither renew nor free what is c's now.
    assert!(!store.renew_slot("p", 0, "dead", lease).await.unwrap());
    store.release_slot("p", 0, "dead").await.unwrap();
    assert_eq!(holder_of(&store, "p", 0).await.as_deref(), Some("c"));
    // b frees its slot: the next taker gets it.
    store.release_slot("p", 1, "b").await.unwrap();
    assert_eq!(holder_of(&store, "p", 1).await, None);
    assert_eq!(
        store
            .try_acquire_slot("p", nz(2), "d", lease)
            .await
            .unwrap(),
        Some(1)
    );
    // A smaller limit uses the first slots only; a larger one adds slots.
    assert_eq!(
        store
            .try_acquire_slot("p", nz(1), "e", lease)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .try_acquire_slot("p", nz(3), "e", lease)
            .await
            .unwrap(),
        Some(2)
    );
}
