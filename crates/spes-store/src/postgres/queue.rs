//! [`TaskQueue`] on PostgreSQL.
//!
//! * **Claim**: `UPDATE tasks ... FROM (SELECT id ... FOR UPDATE SKIP
//!   LOCKED LIMIT n)`: ready tasks first, then tasks whose lease expired
//!   (the sweep is part of the claim). Each claim increments the task's
//!   `epoch` and sets `owner` and `lease_expires_at`.
//! * **Fence**: every write a worker makes for a task first runs
//!   `SELECT ... FROM tasks WHERE id = $task AND owner = $me AND epoch =
//!   $epoch AND state = 'claimed' AND lease_expires_at > clock_timestamp()
//!   FOR SHARE` in the same transaction. No row: the write is not made
//!   ([`StoreError::Fenced`]). A row: it stays locked until the commit,
//!   so no other worker can claim the task between the check and the write.
//! * Lock order is always task, then run (appends lock the run's row to
//!   number entries), so these transactions cannot deadlock each other.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{AssertSqlSafe, PgConnection, Row};

use super::row::{self, ENTRY_COLUMNS};
use super::run_store::{append_locked, insert_many, insert_run, lock_run, transition_in};
use super::{Fail, PostgresStore, error};
use crate::group::{AppendReq, FencedReq, Pending};
use crate::queue::{FinalEntry, ItemProgress, Lease, NewItem, Task, TaskKind, TaskQueue};
use crate::{Appended, Entry, NewRun, Result, Run, RunId, RunPatch, RunStatus, StoreError};

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Checks that `lease` still holds its task, and locks the task row
/// (`FOR SHARE`, or `FOR UPDATE` when the transaction will change it).
async fn fence(conn: &mut PgConnection, lease: &Lease, for_update: bool) -> Result<(), Fail> {
    let sql = if for_update {
        "SELECT 1 FROM tasks WHERE id = $1 AND owner = $2 AND epoch = $3 AND state = 'claimed' \
         AND lease_expires_at > clock_timestamp() FOR UPDATE"
    } else {
        "SELECT 1 FROM tasks WHERE id = $1 AND owner = $2 AND epoch = $3 AND state = 'claimed' \
         AND lease_expires_at > clock_timestamp() FOR SHARE"
    };
    let held = sqlx::query(sql)
        .bind(lease.task)
        .bind(&lease.owner)
        .bind(lease.epoch)
        .fetch_optional(&mut *conn)
        .await?;
    if held.is_none() {
        return Err(Fail::Store(StoreError::Fenced {
            task: lease.task,
            epoch: lease.epoch,
        }));
    }
    Ok(())
}

fn task_from(shown: &str, owner: &str, r: &sqlx::postgres::PgRow) -> Result<Task, Fail> {
    let run: String = r.try_get("run_id")?;
    let kind: String = r.try_get("kind")?;
    let payload: String = r.try_get("payload")?;
    let status: String = r.try_get("run_status")?;
    Ok(Task {
        lease: Lease {
            task: r.try_get("id")?,
            owner: owner.to_owned(),
            epoch: r.try_get("epoch")?,
        },
        run_id: row::parse_id(shown, &run)?,
        kind: if kind == "run" {
            TaskKind::Run
        } else {
            TaskKind::Item
        },
        key: r.try_get("key")?,
        payload: serde_json::from_str(&payload).map_err(|e| {
            Fail::Store(StoreError::Corrupt {
                path: shown.to_owned(),
                reason: format!("task payload: {e}"),
            })
        })?,
        run_status: status
            .parse()
            .map_err(|e: String| Fail::Store(StoreError::Backend(e)))?,
        journaled: r.try_get("journaled")?,
    })
}

/// Wakes idle workers when this transaction commits.
pub(super) async fn notify(conn: &mut PgConnection) -> Result<(), Fail> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(super::WAKE_CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Readies the run task of `run` (creating it if needed).
async fn ready_run_task(conn: &mut PgConnection, run: &RunId) -> Result<(), Fail> {
    sqlx::query(
        "INSERT INTO tasks (run_id, kind, key, payload, state) VALUES ($1, 'run', '', '{}', 'ready') \
         ON CONFLICT (run_id, key) DO UPDATE SET state = 'ready', owner = NULL, lease_expires_at = NULL, \
         error = NULL, updated_at = now() WHERE tasks.state IN ('done', 'failed')",
    )
    .bind(run.to_string())
    .execute(&mut *conn)
    .await?;
    notify(conn).await
}

#[async_trait]
impl TaskQueue for PostgresStore {
    async fn create_queued_run(&self, run: &NewRun) -> Result<()> {
        let pins =
            serde_json::to_string(&run.pins).map_err(|e| StoreError::Backend(e.to_string()))?;
        let inputs = row::json(&run.inputs)?;
        let (pins, inputs) = (&pins, &inputs);
        self.retry(|| async move {
            let mut tx = self.pool.begin().await?;
            insert_run(&mut tx, run, pins, inputs).await?;
            ready_run_task(&mut tx, &run.id).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn enqueue_run(&self, run: &RunId) -> Result<()> {
        self.retry(|| async move {
            let mut tx = self.pool.begin().await?;
            lock_run(&mut tx, run).await?;
            ready_run_task(&mut tx, run).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn enqueue_items(&self, parent: &Lease, run: &RunId, items: &[NewItem]) -> Result<()> {
        let keys: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
        let payloads = items
            .iter()
            .map(|i| row::json(&i.payload))
            .collect::<Result<Vec<_>>>()?;
        let run_id = &run.to_string();
        let (keys, payloads) = (&keys, &payloads);
        self.retry(|| async move {
            let mut tx = self.pool.begin().await?;
            fence(&mut tx, parent, false).await?;
            for (k, p) in keys.chunks(1000).zip(payloads.chunks(1000)) {
                sqlx::query(
                    "INSERT INTO tasks (run_id, kind, key, payload, state) \
                     SELECT $1, 'item', k, p, 'ready' FROM unnest($2::text[], $3::text[]) AS x(k, p) \
                     ON CONFLICT (run_id, key) DO UPDATE SET state = 'ready', owner = NULL, \
                     lease_expires_at = NULL, error = NULL, updated_at = now() WHERE tasks.state = 'failed'",
                )
                .bind(run_id)
                .bind(k)
                .bind(p)
                .execute(&mut *tx)
                .await?;
            }
            notify(&mut tx).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn claim(
        &self,
        owner: &str,
        kind: TaskKind,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Task>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let ms = millis(lease);
        self.retry(|| async move {
            let mut out = Vec::new();
            for which in [
                "state = 'ready' ORDER BY id",
                "state = 'claimed' AND lease_expires_at < clock_timestamp() ORDER BY lease_expires_at",
            ] {
                let want = i64::from(limit) - out.len() as i64;
                if want <= 0 {
                    break;
                }
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "UPDATE tasks t SET state = 'claimed', owner = $1, epoch = t.epoch + 1, \
                     lease_expires_at = clock_timestamp() + $4 * interval '1 millisecond', updated_at = now() \
                     FROM (SELECT id FROM tasks WHERE kind = $2 AND {which} LIMIT $3 FOR UPDATE SKIP LOCKED) p \
                     WHERE t.id = p.id RETURNING t.id, t.run_id, t.kind, t.key, t.payload, t.epoch, \
                     (SELECT r.status FROM runs r WHERE r.id = t.run_id) AS run_status, \
                     (t.key = '' AND EXISTS (SELECT 1 FROM entries e WHERE e.run_id = t.run_id)) \
                     OR EXISTS (SELECT 1 FROM entries e WHERE e.run_id = t.run_id \
                       AND e.key >= t.key || '#' AND e.key < t.key || '$') \
                     OR EXISTS (SELECT 1 FROM entries e WHERE e.run_id = t.run_id \
                       AND e.key >= t.key || '/' AND e.key < t.key || '0') AS journaled"
                )))
                .bind(owner)
                .bind(kind.as_str())
                .bind(want)
                .bind(ms)
                .fetch_all(&self.pool)
                .await?;
                for r in &rows {
                    out.push(task_from(&self.shown, owner, r)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn renew(&self, leases: &[Lease], lease: Duration) -> Result<Vec<i64>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = leases.iter().map(|l| l.task).collect();
        let epochs: Vec<i64> = leases.iter().map(|l| l.epoch).collect();
        let owners: Vec<String> = leases.iter().map(|l| l.owner.clone()).collect();
        let (ids, epochs, owners) = (&ids, &epochs, &owners);
        let ms = millis(lease);
        // Renewed: still claimed by this owner and epoch. Ended: the same
        // epoch, no longer claimed (its holder finished or released it;
        // only the epoch's holder can). Anything else is lost. Two
        // statements: the second takes a new snapshot, so it sees the end
        // of a task whose finishing transaction the UPDATE waited for (in
        // one statement, its snapshot would still show the task claimed).
        self.retry(|| async move {
            let renewed = sqlx::query_scalar::<_, i64>(
                "UPDATE tasks t SET lease_expires_at = clock_timestamp() + $4 * interval '1 millisecond' \
                 FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS x(id, epoch, owner) \
                 WHERE t.id = x.id AND t.epoch = x.epoch AND t.owner = x.owner AND t.state = 'claimed' \
                 AND t.lease_expires_at > clock_timestamp() RETURNING t.id",
            )
            .bind(ids)
            .bind(epochs)
            .bind(owners)
            .bind(ms)
            .fetch_all(&self.pool)
            .await?;
            let (rest, rest_epochs): (Vec<i64>, Vec<i64>) = ids
                .iter()
                .zip(epochs)
                .filter(|(i, _)| !renewed.contains(i))
                .map(|(i, e)| (*i, *e))
                .unzip();
            if rest.is_empty() {
                return Ok(Vec::new());
            }
            Ok(sqlx::query_scalar::<_, i64>(
                "SELECT x.id FROM unnest($1::bigint[], $2::bigint[]) AS x(id, epoch) \
                 WHERE (SELECT 1 FROM tasks t WHERE t.id = x.id AND t.epoch = x.epoch \
                        AND t.state <> 'claimed') IS NULL",
            )
            .bind(&rest)
            .bind(&rest_epochs)
            .fetch_all(&self.pool)
            .await?)
        })
        .await
    }

    async fn append_fenced(
        &self,
        lease: &Lease,
        run: &RunId,
        key: &str,
        kind: &str,
        payload: &serde_json::Value,
    ) -> Result<Appended> {
        let req = FencedReq {
            lease: lease.clone(),
            append: AppendReq {
                run: *run,
                key: key.to_owned(),
                kind: kind.to_owned(),
                payload: row::json(payload)?,
            },
        };
        // The items a worker runs side by side share one transaction.
        self.fenced
            .submit(req, |batch| self.commit_fenced(batch))
            .await
    }

    async fn finish_item(
        &self,
        lease: &Lease,
        run: &RunId,
        entry: Option<&FinalEntry>,
        error: Option<&str>,
    ) -> Result<()> {
        let payload = entry.map(|e| row::json(&e.payload)).transpose()?;
        let payload = payload.as_ref();
        self.retry(|| async move {
            let mut tx = self.pool.begin().await?;
            // The fence and the end of the task in one statement: it
            // changes the row only while the lease holds, and keeps it
            // locked until the commit.
            let held = sqlx::query_scalar::<_, i64>(
                "UPDATE tasks SET state = $4, error = $5, owner = NULL, lease_expires_at = NULL, \
                 updated_at = now() WHERE id = $1 AND owner = $2 AND epoch = $3 AND state = 'claimed' \
                 AND lease_expires_at > clock_timestamp() RETURNING id",
            )
            .bind(lease.task)
            .bind(&lease.owner)
            .bind(lease.epoch)
            .bind(if error.is_some() { "failed" } else { "done" })
            .bind(error)
            .fetch_optional(&mut *tx)
            .await?;
            if held.is_none() {
                tx.rollback().await?;
                return Err(Fail::Store(StoreError::Fenced {
                    task: lease.task,
                    epoch: lease.epoch,
                }));
            }
            if let (Some(e), Some(p)) = (entry, payload) {
                lock_run(&mut tx, run).await?;
                append_locked(&mut tx, &self.shown, run, &e.key, &e.kind, p).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn finish_items(&self, run: &RunId, items: &[(Lease, FinalEntry)]) -> Result<Vec<bool>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = items.iter().map(|(l, _)| l.task).collect();
        let owners: Vec<String> = items.iter().map(|(l, _)| l.owner.clone()).collect();
        let epochs: Vec<i64> = items.iter().map(|(l, _)| l.epoch).collect();
        let payloads = items
            .iter()
            .map(|(_, e)| row::json(&e.payload))
            .collect::<Result<Vec<_>>>()?;
        let run_id = &run.to_string();
        let (ids, owners, epochs, payloads) = (&ids, &owners, &epochs, &payloads);
        let keys: Vec<&str> = items.iter().map(|(_, e)| e.key.as_str()).collect();
        let kinds: Vec<&str> = items.iter().map(|(_, e)| e.kind.as_str()).collect();
        let (keys, kinds) = (&keys, &kinds);
        // One autocommit statement (one round trip): the tasks' ends
        // (fenced), then, for the held ones, their entries numbered after
        // the run's `last_seq` (bumped under the run's row lock: tasks
        // first, then the run, as everywhere), skipping keys already there
        // (first commit wins; the key check is a scalar subquery, one
        // index lookup per key). A unique violation (a key that appeared
        // meanwhile) falls back to the transaction below.
        let one = self
            .retry(|| async move {
                let held: Result<Vec<i64>, sqlx::Error> = sqlx::query_scalar(
                    "WITH held AS (UPDATE tasks t SET state = 'done', error = NULL, owner = NULL, \
                         lease_expires_at = NULL, updated_at = now() \
                         FROM unnest($2::bigint[], $3::text[], $4::bigint[]) AS x(id, owner, epoch) \
                         WHERE t.id = x.id AND t.owner = x.owner AND t.epoch = x.epoch \
                         AND t.state = 'claimed' AND t.lease_expires_at > clock_timestamp() \
                         RETURNING t.id), \
                     fresh AS (SELECT x.key, x.kind, x.payload, x.ord \
                         FROM unnest($2::bigint[], $5::text[], $6::text[], $7::text[]) \
                         WITH ORDINALITY AS x(id, key, kind, payload, ord) \
                         WHERE x.id IN (SELECT id FROM held) \
                         AND (SELECT 1 FROM entries e WHERE e.run_id = $1 AND e.key = x.key) IS NULL), \
                     bump AS (UPDATE runs SET last_seq = last_seq + (SELECT count(*) FROM fresh) \
                         WHERE id = $1 AND EXISTS (SELECT 1 FROM fresh) \
                         RETURNING last_seq - (SELECT count(*) FROM fresh) AS base), \
                     ins AS (INSERT INTO entries (run_id, seq, key, kind, payload, recorded_at) \
                         SELECT $1, b.base + row_number() OVER (ORDER BY f.ord), f.key, f.kind, \
                         f.payload, clock_timestamp() FROM fresh f CROSS JOIN bump b) \
                     SELECT id FROM held",
                )
                .bind(run_id)
                .bind(ids)
                .bind(owners)
                .bind(epochs)
                .bind(keys)
                .bind(kinds)
                .bind(payloads)
                .fetch_all(&self.pool)
                .await;
                match held {
                    Ok(h) => Ok(Some(h)),
                    Err(e) if error::code_of(&e).as_deref() == Some(error::UNIQUE_VIOLATION) => Ok(None),
                    Err(e) => Err(Fail::Sql(e)),
                }
            })
            .await?;
        if let Some(held) = one {
            return Ok(items.iter().map(|(l, _)| held.contains(&l.task)).collect());
        }
        let held = self
            .retry(|| async move {
                let mut tx = self.pool.begin().await?;
                // The fences and the ends of the tasks in one statement.
                let held: Vec<i64> = sqlx::query_scalar(
                    "UPDATE tasks t SET state = 'done', error = NULL, owner = NULL, lease_expires_at = NULL, \
                     updated_at = now() FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS x(id, owner, epoch) \
                     WHERE t.id = x.id AND t.owner = x.owner AND t.epoch = x.epoch AND t.state = 'claimed' \
                     AND t.lease_expires_at > clock_timestamp() RETURNING t.id",
                )
                .bind(ids)
                .bind(owners)
                .bind(epochs)
                .fetch_all(&mut *tx)
                .await?;
                if !held.is_empty() {
                    let mut keys = Vec::new();
                    let mut kinds = Vec::new();
                    let mut values = Vec::new();
                    for ((l, e), p) in items.iter().zip(payloads) {
                        if held.contains(&l.task) {
                            keys.push(e.key.clone());
                            kinds.push(e.kind.clone());
                            values.push(p.clone());
                        }
                    }
                    lock_run(&mut tx, run).await?;
                    // Numbered after the run's `last_seq`, in batch order,
                    // skipping keys already there (first commit wins). The
                    // key check is a scalar subquery, not `NOT EXISTS`: that
                    // would be planned as an anti-join that may read every
                    // entry of the run (seen with no statistics: quadratic
                    // over a map); a subquery is one index lookup per key.
                    sqlx::query(
                        "WITH ins AS (INSERT INTO entries (run_id, seq, key, kind, payload, recorded_at) \
                         SELECT $1, m.mx + row_number() OVER (ORDER BY x.ord), x.key, x.kind, x.payload, clock_timestamp() \
                         FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS x(key, kind, payload, ord) \
                         CROSS JOIN (SELECT last_seq AS mx FROM runs WHERE id = $1) m \
                         WHERE (SELECT 1 FROM entries e WHERE e.run_id = $1 AND e.key = x.key) IS NULL \
                         RETURNING seq) \
                         UPDATE runs SET last_seq = (SELECT MAX(seq) FROM ins) \
                         WHERE id = $1 AND EXISTS (SELECT 1 FROM ins)",
                    )
                    .bind(run_id)
                    .bind(&keys)
                    .bind(&kinds)
                    .bind(&values)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(held)
            })
            .await?;
        Ok(items.iter().map(|(l, _)| held.contains(&l.task)).collect())
    }

    async fn finish_run(
        &self,
        lease: &Lease,
        run: &RunId,
        from: &[RunStatus],
        to: RunStatus,
        patch: RunPatch,
    ) -> Result<Run> {
        let output = patch.output.as_ref().map(row::json).transpose()?;
        let (patch, output) = (&patch, output.as_ref());
        self.retry(|| async move {
            let mut tx = self.pool.begin().await?;
            fence(&mut tx, lease, true).await?;
            let r = transition_in(&mut tx, &self.shown, run, from, to, patch, output).await?;
            sqlx::query(
                "UPDATE tasks SET state = 'done', owner = NULL, lease_expires_at = NULL, updated_at = now() \
                 WHERE id = $1",
            )
            .bind(lease.task)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(r)
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.retry(|| async move {
            sqlx::query(
                "UPDATE tasks SET state = 'ready', owner = NULL, lease_expires_at = NULL, updated_at = now() \
                 WHERE id = $1 AND owner = $2 AND epoch = $3 AND state = 'claimed'",
            )
            .bind(lease.task)
            .bind(&lease.owner)
            .bind(lease.epoch)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    async fn release_all(&self, owner: &str) -> Result<u64> {
        self.retry(|| async move {
            let mut tx = self.pool.begin().await?;
            let n = sqlx::query(
                "UPDATE tasks SET state = 'ready', owner = NULL, lease_expires_at = NULL, updated_at = now() \
                 WHERE owner = $1 AND state = 'claimed'",
            )
            .bind(owner)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            notify(&mut tx).await?;
            tx.commit().await?;
            Ok(n)
        })
        .await
    }

    async fn task_counts(&self) -> Result<Vec<(String, u64)>> {
        self.retry(|| async move {
            let rows = sqlx::query_as::<_, (String, i64)>(
                "SELECT state, count(*) FROM tasks WHERE state IN ('ready', 'claimed') GROUP BY state",
            )
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(s, n)| (s, u64::try_from(n).unwrap_or(0)))
                .collect())
        })
        .await
    }

    async fn item_progress(&self, run: &RunId, prefix: &str) -> Result<ItemProgress> {
        let run_id = &run.to_string();
        let upper = &prefix_upper(prefix);
        self.retry(|| async move {
            let rows = sqlx::query(
                "SELECT state, count(*) AS n FROM tasks WHERE run_id = $1 AND key >= $2 AND key < $3 \
                 AND kind = 'item' GROUP BY state",
            )
            .bind(run_id)
            .bind(prefix)
            .bind(upper)
            .fetch_all(&self.pool)
            .await?;
            let mut p = ItemProgress::default();
            let mut failed = 0;
            for r in &rows {
                let state: String = r.try_get("state")?;
                let n = u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0);
                match state.as_str() {
                    "done" => p.done += n,
                    "failed" => failed += n,
                    _ => p.open += n,
                }
            }
            if failed > 0 {
                let rows = sqlx::query(
                    "SELECT key, coalesce(error, '') AS error FROM tasks WHERE run_id = $1 AND key >= $2 \
                     AND key < $3 AND kind = 'item' AND state = 'failed' ORDER BY id",
                )
                .bind(run_id)
                .bind(prefix)
                .bind(upper)
                .fetch_all(&self.pool)
                .await?;
                for r in &rows {
                    p.failed.push((r.try_get("key")?, r.try_get("error")?));
                }
            }
            Ok(p)
        })
        .await
    }

    async fn items_open(&self, run: &RunId, prefix: &str) -> Result<bool> {
        let run_id = &run.to_string();
        let upper = &prefix_upper(prefix);
        self.retry(|| async move {
            // The partial index `tasks_open`: the first open item ends it.
            Ok(sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM tasks WHERE run_id = $1 AND key >= $2 AND key < $3 \
                 AND kind = 'item' AND state IN ('ready','claimed'))",
            )
            .bind(run_id)
            .bind(prefix)
            .bind(upper)
            .fetch_one(&self.pool)
            .await?)
        })
        .await
    }

    async fn task_state(&self, run: &RunId, key: &str) -> Result<Option<(String, Option<String>)>> {
        let run_id = &run.to_string();
        self.retry(|| async move {
            let row = sqlx::query("SELECT state, error FROM tasks WHERE run_id = $1 AND key = $2")
                .bind(run_id)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
            Ok(match row {
                Some(r) => Some((r.try_get("state")?, r.try_get("error")?)),
                None => None,
            })
        })
        .await
    }

    async fn wait_for_work(&self, max: Duration) {
        self.wait_for_wake(max).await;
    }

    async fn shared_state(&self, key: &str) -> Result<Option<(serde_json::Value, i64)>> {
        self.read_shared(key).await
    }

    async fn put_shared_state(
        &self,
        key: &str,
        value: &serde_json::Value,
        expected: Option<i64>,
    ) -> Result<bool> {
        self.write_shared(key, value, expected).await
    }

    async fn entries_under(&self, run: &RunId, prefixes: &[&str]) -> Result<Vec<Entry>> {
        if prefixes.is_empty() {
            return Ok(Vec::new());
        }
        let run_id = &run.to_string();
        // One key range per prefix, OR-ed: each is a range scan of the
        // (run_id, key) index.
        let ranges: Vec<String> = (0..prefixes.len())
            .map(|i| format!("(key >= ${} AND key < ${})", 2 * i + 2, 2 * i + 3))
            .collect();
        let sql = &format!(
            "SELECT {ENTRY_COLUMNS} FROM entries WHERE run_id = $1 AND ({}) ORDER BY seq",
            ranges.join(" OR ")
        );
        let bounds: Vec<(String, String)> = prefixes
            .iter()
            .map(|p| ((*p).to_owned(), prefix_upper(p)))
            .collect();
        let bounds = &bounds;
        self.retry(|| async move {
            let mut q = sqlx::query(AssertSqlSafe(sql.as_str())).bind(run_id);
            for (lo, hi) in bounds {
                q = q.bind(lo).bind(hi);
            }
            let rows = q.fetch_all(&self.pool).await?;
            Ok(rows
                .iter()
                .map(|r| row::entry(&self.shown, r))
                .collect::<Result<Vec<_>>>()?)
        })
        .await
    }
}

impl PostgresStore {
    async fn read_shared(&self, key: &str) -> Result<Option<(serde_json::Value, i64)>> {
        self.retry(|| async move {
            let row = sqlx::query("SELECT value, version FROM shared_state WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
            match row {
                None => Ok(None),
                Some(r) => {
                    let v: String = r.try_get("value")?;
                    let value = serde_json::from_str(&v).map_err(|e| {
                        Fail::Store(StoreError::Corrupt {
                            path: self.shown.clone(),
                            reason: format!("shared state `{key}`: {e}"),
                        })
                    })?;
                    Ok(Some((value, r.try_get("version")?)))
                }
            }
        })
        .await
    }

    async fn write_shared(
        &self,
        key: &str,
        value: &serde_json::Value,
        expected: Option<i64>,
    ) -> Result<bool> {
        let v = &row::json(value)?;
        self.retry(|| async move {
            let n = match expected {
                None => sqlx::query(
                    "INSERT INTO shared_state (key, value, version) VALUES ($1, $2, 1) ON CONFLICT (key) DO NOTHING",
                )
                .bind(key)
                .bind(v)
                .execute(&self.pool)
                .await?,
                Some(version) => sqlx::query(
                    "UPDATE shared_state SET value = $2, version = version + 1, updated_at = now() \
                     WHERE key = $1 AND version = $3",
                )
                .bind(key)
                .bind(v)
                .bind(version)
                .execute(&self.pool)
                .await?,
            }
            .rows_affected();
            Ok(n == 1)
        })
        .await
    }
}

/// The smallest string (in byte order) above every string starting with `prefix`.
fn prefix_upper(prefix: &str) -> String {
    // Keys are text: appending the largest scalar value bounds every
    // continuation (byte order of UTF-8 is code point order).
    format!("{prefix}\u{10FFFF}")
}

impl PostgresStore {
    /// Commits a batch of fenced appends in one transaction: the leases
    /// are checked (and their tasks locked) by one statement, then the
    /// runs are locked (task, then run, as everywhere), then the appends
    /// whose lease holds are written; the others are [`StoreError::Fenced`].
    /// An append to a missing run fails the batch; then each is tried alone.
    async fn commit_fenced(&self, batch: Vec<Pending<FencedReq, Result<Appended>>>) {
        let reqs: Vec<&FencedReq> = batch.iter().map(|p| &*p.input).collect();
        let outcome =
            match self.retry(|| self.fenced_batch(&reqs)).await {
                Err(StoreError::NotFound(_)) if reqs.len() > 1 => {
                    let mut outs = Vec::with_capacity(reqs.len());
                    for r in &reqs {
                        let one = [*r];
                        outs.push(self.retry(|| self.fenced_batch(&one)).await.and_then(
                            |mut v| {
                                v.pop().unwrap_or_else(|| {
                                    Err(StoreError::Backend("an append got no answer".into()))
                                })
                            },
                        ));
                    }
                    Ok(outs)
                }
                other => other,
            };
        crate::group::answer_appends(batch, outcome);
    }

    /// One fenced append in one autocommit statement (one round trip):
    /// the task's row is share-locked while its lease holds (a claimer
    /// taking it over waits for the commit), the run's `last_seq` is
    /// bumped under its row lock when the key is new, and the entry goes
    /// in. A unique violation (the key appeared meanwhile) is for the
    /// caller to retry the transactional way.
    async fn fenced_one(&self, r: &FencedReq) -> Result<Result<Appended>, Fail> {
        let a = &r.append;
        let run_id = a.run.to_string();
        let row = sqlx::query(
            "WITH held AS (SELECT id FROM tasks WHERE id = $1 AND owner = $2 AND epoch = $3 \
                 AND state = 'claimed' AND lease_expires_at > clock_timestamp() FOR SHARE), \
             bump AS (UPDATE runs SET last_seq = last_seq + 1 WHERE id = $4 \
                 AND EXISTS (SELECT 1 FROM held) \
                 AND (SELECT 1 FROM entries e WHERE e.run_id = $4 AND e.key = $5) IS NULL \
                 RETURNING last_seq), \
             ins AS (INSERT INTO entries (run_id, seq, key, kind, payload, recorded_at) \
                 SELECT $4, last_seq, $5, $6, $7, clock_timestamp() FROM bump RETURNING seq) \
             SELECT (SELECT count(*) FROM held) AS held, (SELECT seq FROM ins) AS seq",
        )
        .bind(r.lease.task)
        .bind(&r.lease.owner)
        .bind(r.lease.epoch)
        .bind(&run_id)
        .bind(&a.key)
        .bind(&a.kind)
        .bind(&a.payload)
        .fetch_all(&self.pool)
        .await?;
        let Some(row) = row.first() else {
            return Err(Fail::Store(StoreError::Backend(
                "a fenced append got no answer".into(),
            )));
        };
        let held: i64 = row.try_get("held")?;
        if held == 0 {
            return Ok(Err(StoreError::Fenced {
                task: r.lease.task,
                epoch: r.lease.epoch,
            }));
        }
        if let Some(seq) = row.try_get::<Option<i64>, _>("seq")? {
            return Ok(Ok(Appended::New(seq)));
        }
        let found = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ENTRY_COLUMNS} FROM entries WHERE run_id = $1 AND key = $2"
        )))
        .bind(&run_id)
        .bind(&a.key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match found {
            Some(e) => Ok(Appended::Existing(row::entry(&self.shown, &e)?)),
            None => Err(StoreError::NotFound(format!("no run {}", a.run))),
        })
    }

    async fn fenced_batch(&self, reqs: &[&FencedReq]) -> Result<Vec<Result<Appended>>, Fail> {
        if let [r] = reqs {
            match self.fenced_one(r).await {
                Err(Fail::Sql(e))
                    if error::code_of(&e).as_deref() == Some(error::UNIQUE_VIOLATION) => {}
                other => return other.map(|a| vec![a]),
            }
        }
        let mut tx = self.pool.begin().await?;
        let tasks: Vec<i64> = reqs.iter().map(|r| r.lease.task).collect();
        let owners: Vec<&str> = reqs.iter().map(|r| r.lease.owner.as_str()).collect();
        let epochs: Vec<i64> = reqs.iter().map(|r| r.lease.epoch).collect();
        let held: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM tasks WHERE (id, owner, epoch) IN \
             (SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[])) \
             AND state = 'claimed' AND lease_expires_at > clock_timestamp() ORDER BY id FOR SHARE",
        )
        .bind(&tasks)
        .bind(&owners)
        .bind(&epochs)
        .fetch_all(&mut *tx)
        .await?;
        let holds = |r: &FencedReq| held.contains(&r.lease.task);
        let live: Vec<&AppendReq> = reqs
            .iter()
            .filter(|r| holds(r))
            .map(|r| &r.append)
            .collect();
        let mut runs: Vec<RunId> = live.iter().map(|r| r.run).collect();
        runs.sort_unstable();
        runs.dedup();
        for run in &runs {
            lock_run(&mut tx, run).await?;
        }
        let written = match live.as_slice() {
            [] => Vec::new(),
            [r] => vec![
                append_locked(&mut tx, &self.shown, &r.run, &r.key, &r.kind, &r.payload).await?,
            ],
            _ => insert_many(&mut tx, &self.shown, &live).await?,
        };
        tx.commit().await?;
        let mut written = written.into_iter();
        Ok(reqs
            .iter()
            .map(|r| {
                if holds(r) {
                    written
                        .next()
                        .ok_or_else(|| StoreError::Backend("an append got no answer".into()))
                } else {
                    Err(StoreError::Fenced {
                        task: r.lease.task,
                        epoch: r.lease.epoch,
                    })
                }
            })
            .collect())
    }
}
