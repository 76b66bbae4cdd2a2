//! [`RateLimitStore`] on PostgreSQL: the tables `rate_buckets` and
//! `rate_slots` (migration 7); see [`crate::limits`] for what they mean.
//! Every operation is one statement on the server's clock
//! (`clock_timestamp()`), retried like every other.

use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;

use super::PostgresStore;
use crate::Result;
use crate::limits::RateLimitStore;

/// Takes `$3` µs of a bucket; answers the caller's wait in µs (negative:
/// none). The bucket's window is a minute: a bucket of `P` per minute
/// costs `60 s / P` a unit.
const RESERVE: &str = "INSERT INTO rate_buckets AS b (provider, bucket, tat) \
     VALUES ($1, $2, clock_timestamp() + $3::float8 * interval '1 microsecond') \
     ON CONFLICT (provider, bucket) DO UPDATE \
     SET tat = greatest(b.tat, clock_timestamp()) + $3::float8 * interval '1 microsecond' \
     RETURNING ceil(extract(epoch FROM (b.tat - interval '1 minute' - clock_timestamp())) * 1000000)::float8";

/// Takes the first free or expired slot below `$2`.
const TAKE: &str = "UPDATE rate_slots s SET holder = $3, \
     expires_at = clock_timestamp() + $4::float8 * interval '1 millisecond' \
     FROM (SELECT slot FROM rate_slots WHERE provider = $1 AND slot < $2 \
           AND (holder IS NULL OR expires_at <= clock_timestamp()) \
           ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED) f \
     WHERE s.provider = $1 AND s.slot = f.slot RETURNING s.slot";

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[async_trait]
impl RateLimitStore for PostgresStore {
    async fn reserve(
        &self,
        provider: &str,
        bucket: &str,
        per_minute: NonZeroU32,
        cost: NonZeroU32,
    ) -> Result<Duration> {
        let cost = cost.min(per_minute);
        let micros = 60_000_000 * i64::from(cost.get()) / i64::from(per_minute.get());
        let wait_us: f64 = self
            .retry(|| async move {
                Ok(sqlx::query_scalar::<_, f64>(RESERVE)
                    .bind(provider)
                    .bind(bucket)
                    .bind(micros as f64)
                    .fetch_one(&self.pool)
                    .await?)
            })
            .await?;
        Ok(if wait_us > 0.0 {
            Duration::from_micros(wait_us as u64)
        } else {
            Duration::ZERO
        })
    }

    async fn try_acquire_slot(
        &self,
        provider: &str,
        max: NonZeroU32,
        holder: &str,
        lease: Duration,
    ) -> Result<Option<u32>> {
        let n = i32::try_from(max.get()).unwrap_or(i32::MAX);
        let made = self
            .slots_made
            .lock()
            .map(|m| m.contains(&(provider.to_owned(), n)))
            .unwrap_or(false);
        if !made {
            self.retry(|| async move {
                sqlx::query(
                    "INSERT INTO rate_slots (provider, slot) \
                     SELECT $1, g FROM generate_series(0, $2 - 1) AS g ON CONFLICT DO NOTHING",
                )
                .bind(provider)
                .bind(n)
                .execute(&self.pool)
                .await?;
                Ok(())
            })
            .await?;
            if let Ok(mut m) = self.slots_made.lock() {
                m.insert((provider.to_owned(), n));
            }
        }
        let lease = millis(lease);
        let slot: Option<i32> = self
            .retry(|| async move {
                Ok(sqlx::query_scalar::<_, i32>(TAKE)
                    .bind(provider)
                    .bind(n)
                    .bind(holder)
                    .bind(lease)
                    .fetch_optional(&self.pool)
                    .await?)
            })
            .await?;
        Ok(slot.and_then(|s| u32::try_from(s).ok()))
    }

    async fn renew_slot(
        &self,
        provider: &str,
        slot: u32,
        holder: &str,
        lease: Duration,
    ) -> Result<bool> {
        let slot = i32::try_from(slot).unwrap_or(i32::MAX);
        let lease = millis(lease);
        self.retry(|| async move {
            let done = sqlx::query(
                "UPDATE rate_slots SET expires_at = clock_timestamp() + $4::float8 * interval '1 millisecond' \
                 WHERE provider = $1 AND slot = $2 AND holder = $3",
            )
            .bind(provider)
            .bind(slot)
            .bind(holder)
            .bind(lease)
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn release_slot(&self, provider: &str, slot: u32, holder: &str) -> Result<()> {
        let slot = i32::try_from(slot).unwrap_or(i32::MAX);
        self.retry(|| async move {
            sqlx::query(
                "UPDATE rate_slots SET holder = NULL, expires_at = NULL \
                 WHERE provider = $1 AND slot = $2 AND holder = $3",
            )
            .bind(provider)
            .bind(slot)
            .bind(holder)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }
}
