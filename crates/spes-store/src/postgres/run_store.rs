//! [`RunStore`] on PostgreSQL: every write one transaction; appends to a
//! run take the run's row lock first, so that sequence numbers follow
//! commit order without gaps.

use async_trait::async_trait;
use sqlx::{AssertSqlSafe, PgConnection, Row};

use super::row::{self, ENTRY_COLUMNS, GATE_COLUMNS, RUN_COLUMNS};
use super::{Fail, PostgresStore, error};
use crate::error::MAX_CANDIDATES;
use crate::group::{AppendReq, Pending, answer_appends};
use crate::{
    Appended, CacheStats, CostBy, CostRow, Decided, Encoded, Entry, Gate, GateFilter, NewGate,
    NewRun, Result, Run, RunId, RunPatch, RunQuery, RunSettings, RunStatus, RunStore, RunUsage,
    StoreError,
};

pub(super) fn no_run(id: &RunId) -> Fail {
    Fail::Store(StoreError::NotFound(format!("no run {id}")))
}

/// Locks the run's row for the rest of the transaction; `NotFound` if absent.
pub(super) async fn lock_run(conn: &mut PgConnection, id: &RunId) -> Result<String, Fail> {
    sqlx::query_scalar::<_, String>("SELECT status FROM runs WHERE id = $1 FOR UPDATE")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| no_run(id))
}

/// Appends one entry in one statement: the run's `last_seq` counter is
/// bumped (which takes the run's row lock until the commit, so that
/// sequence numbers follow commit order without gaps) only when the key is
/// new, and the entry is inserted with the new number. Run alone it is one
/// autocommit round trip; inside a transaction that holds the run's lock
/// it is one statement of it. Two racing appends of one key: the second
/// waits for the first's lock, then its insert hits the unique key and the
/// whole statement (its bump included) is undone; the entry recorded first
/// comes back. (`fetch_all`, not `fetch_optional`: the answer is read to
/// the end, so that a failed commit is an error, never a lost one.)
pub(super) async fn append_locked(
    conn: &mut PgConnection,
    shown: &str,
    id: &RunId,
    key: &str,
    kind: &str,
    payload: &str,
) -> Result<Appended, Fail> {
    append_reading_status(conn, shown, id, key, kind, payload)
        .await
        .map(|(appended, _)| appended)
}

/// [`append_locked`], and with a new entry the run's status as the same
/// statement read it (from the run's row it locks and moves on): a pause
/// or cancel committed before the append is seen, and the caller needs no
/// read of its own after it.
async fn append_reading_status(
    conn: &mut PgConnection,
    shown: &str,
    id: &RunId,
    key: &str,
    kind: &str,
    payload: &str,
) -> Result<(Appended, Option<String>), Fail> {
    let run_id = id.to_string();
    let row = sqlx::query_as::<_, (i64, String)>(
        "WITH bump AS (UPDATE runs SET last_seq = last_seq + 1 WHERE id = $1 \
             AND (SELECT 1 FROM entries e WHERE e.run_id = $1 AND e.key = $2) IS NULL \
             RETURNING last_seq, status), \
         ins AS (INSERT INTO entries (run_id, seq, key, kind, payload, recorded_at) \
             SELECT $1, last_seq, $2, $3, $4, clock_timestamp() FROM bump RETURNING seq) \
         SELECT ins.seq, bump.status FROM ins, bump",
    )
    .bind(&run_id)
    .bind(key)
    .bind(kind)
    .bind(payload)
    .fetch_all(&mut *conn)
    .await;
    match row {
        Ok(mut v) if !v.is_empty() => {
            let (seq, status) = v.swap_remove(0);
            return Ok((Appended::New(seq), Some(status)));
        }
        Ok(_) => {}
        Err(e) if error::code_of(&e).as_deref() == Some(error::UNIQUE_VIOLATION) => {}
        Err(e) => return Err(e.into()),
    }
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {ENTRY_COLUMNS} FROM entries WHERE run_id = $1 AND key = $2"
    )))
    .bind(&run_id)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| no_run(id))?;
    Ok((Appended::Existing(row::entry(shown, &row)?), None))
}

/// Applies a compare-and-set transition inside a transaction.
pub(super) async fn transition_in(
    conn: &mut PgConnection,
    shown: &str,
    id: &RunId,
    from: &[RunStatus],
    to: RunStatus,
    patch: &RunPatch,
    output: Option<&String>,
) -> Result<Run, Fail> {
    let current = lock_run(conn, id).await?;
    if !from.iter().any(|s| s.as_str() == current) {
        return Err(Fail::Store(StoreError::Conflict {
            run: id.to_string(),
            current,
            expected: from
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" or "),
        }));
    }
    let row = sqlx::query(AssertSqlSafe(format!(
        "UPDATE runs SET status = $2, updated_at = clock_timestamp(), \
         output = CASE WHEN $3 THEN $4 ELSE output END, \
         error = CASE WHEN $5 THEN $6 ELSE error END, \
         owner = CASE WHEN $7 THEN $8 ELSE owner END \
         WHERE id = $1 RETURNING {RUN_COLUMNS}"
    )))
    .bind(id.to_string())
    .bind(to.as_str())
    .bind(output.is_some())
    .bind(output)
    .bind(patch.error.is_some())
    .bind(patch.error.clone().flatten())
    .bind(patch.owner.is_some())
    .bind(patch.owner.clone().flatten())
    .fetch_one(&mut *conn)
    .await?;
    Ok(row::run(shown, &row)?)
}

#[async_trait]
impl RunStore for PostgresStore {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    async fn create_run(&self, run: &NewRun) -> Result<()> {
        let pins =
            serde_json::to_string(&run.pins).map_err(|e| StoreError::Backend(e.to_string()))?;
        let inputs = row::json(&run.inputs)?;
        let (pins, inputs) = (&pins, &inputs);
        self.retry(|| async move {
            let mut conn = self.pool.acquire().await?;
            insert_run(&mut conn, run, pins, inputs).await
        })
        .await
    }

    async fn run(&self, id: &RunId) -> Result<Option<Run>> {
        let id = &id.to_string();
        self.retry(|| async move {
            let row = sqlx::query(AssertSqlSafe(format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"
            )))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(|r| row::run(&self.shown, &r)).transpose()?)
        })
        .await
    }

    async fn status(&self, id: &RunId) -> Result<Option<RunStatus>> {
        let id = &id.to_string();
        self.retry(|| async move {
            let s = sqlx::query_scalar::<_, String>("SELECT status FROM runs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            s.map(|s| {
                s.parse::<RunStatus>()
                    .map_err(|e| Fail::Store(StoreError::Backend(e)))
            })
            .transpose()
        })
        .await
    }

    async fn find_run(&self, id_or_prefix: &str) -> Result<Run> {
        let (prefix, upper) = RunId::prefix_range(id_or_prefix)?;
        let (prefix, upper) = (&prefix, &upper);
        self.retry(|| async move {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE id >= $1 AND id < $2 ORDER BY id LIMIT {MAX_CANDIDATES}"
            )))
            .bind(prefix)
            .bind(upper)
            .fetch_all(&self.pool)
            .await?;
            match rows.as_slice() {
                [] => Err(Fail::Store(StoreError::NotFound(format!(
                    "no run `{id_or_prefix}`"
                )))),
                [one] => Ok(row::run(&self.shown, one)?),
                _ => {
                    let mut candidates = Vec::with_capacity(rows.len());
                    for r in &rows {
                        let run = row::run(&self.shown, r)?;
                        candidates.push(crate::error::Candidate {
                            id: run.id.to_string(),
                            workflow: run.workflow_name,
                            status: run.status.to_string(),
                        });
                    }
                    let count = sqlx::query_scalar::<_, i64>(
                        "SELECT count(*) FROM runs WHERE id >= $1 AND id < $2",
                    )
                    .bind(prefix)
                    .bind(upper)
                    .fetch_one(&self.pool)
                    .await?;
                    Err(Fail::Store(StoreError::Ambiguous {
                        prefix: id_or_prefix.to_owned(),
                        count: usize::try_from(count).unwrap_or(usize::MAX),
                        candidates,
                    }))
                }
            }
        })
        .await
    }

    async fn prune_runs(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        statuses: &[RunStatus],
        dry_run: bool,
    ) -> Result<Vec<RunId>> {
        let wanted: Vec<String> = crate::prunable(statuses)
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let wanted = &wanted;
        let ids = self
            .retry(|| async move {
                let sql = if dry_run {
                    "SELECT id FROM runs WHERE status = ANY($1) AND updated_at < $2 ORDER BY id"
                } else {
                    // Entries, gates and tasks go with their run (ON DELETE CASCADE).
                    "DELETE FROM runs WHERE status = ANY($1) AND updated_at < $2 RETURNING id"
                };
                let mut ids = sqlx::query_scalar::<_, String>(sql)
                    .bind(wanted)
                    .bind(before)
                    .fetch_all(&self.pool)
                    .await?;
                ids.sort();
                Ok(ids)
            })
            .await?;
        crate::parse_ids(ids)
    }

    async fn run_counts(&self) -> Result<Vec<(RunStatus, u64)>> {
        self.retry(|| async move {
            let rows = sqlx::query_as::<_, (String, i64)>(
                "SELECT status, count(*) FROM runs GROUP BY status",
            )
            .fetch_all(&self.pool)
            .await?;
            // A status this build does not know is left out.
            Ok(rows
                .into_iter()
                .filter_map(|(s, n)| Some((s.parse::<RunStatus>().ok()?, u64::try_from(n).ok()?)))
                .collect())
        })
        .await
    }

    async fn list_runs(&self, status: Option<RunStatus>, limit: u32) -> Result<Vec<Run>> {
        self.retry(|| async move {
            let rows = match status {
                Some(s) => sqlx::query(AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE status = $1 ORDER BY created_at DESC, ord DESC LIMIT $2"
                )))
                .bind(s.as_str())
                .bind(i64::from(limit)),
                None => sqlx::query(AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM runs ORDER BY created_at DESC, ord DESC LIMIT $1"
                )))
                .bind(i64::from(limit)),
            }
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .iter()
                .map(|r| row::run(&self.shown, r))
                .collect::<Result<Vec<_>>>()?)
        })
        .await
    }

    async fn query_runs(&self, q: &RunQuery) -> Result<Vec<Run>> {
        let status = q.status.map(RunStatus::as_str);
        let (after_t, after_id) = match &q.after {
            Some((t, id)) => (Some(*t), Some(id.to_string())),
            None => (None, None),
        };
        let (status, after_id) = (&status, &after_id);
        self.retry(|| async move {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT {RUN_COLUMNS} FROM runs \
                 WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR workflow_name = $2) \
                 AND ($3::timestamptz IS NULL OR created_at >= $3) AND ($4::timestamptz IS NULL OR created_at < $4) \
                 AND ($5::timestamptz IS NULL OR created_at < $5 OR (created_at = $5 AND id < $6)) \
                 ORDER BY created_at DESC, id DESC LIMIT $7"
            )))
            .bind(status)
            .bind(&q.workflow)
            .bind(q.since)
            .bind(q.until)
            .bind(after_t)
            .bind(after_id)
            .bind(i64::from(q.limit))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .iter()
                .map(|r| row::run(&self.shown, r))
                .collect::<Result<Vec<_>>>()?)
        })
        .await
    }

    async fn transition(
        &self,
        id: &RunId,
        from: &[RunStatus],
        to: RunStatus,
        patch: RunPatch,
    ) -> Result<Run> {
        let output = patch.output.as_ref().map(row::json).transpose()?;
        let (patch, output) = (&patch, output.as_ref());
        self.retry(|| async move {
            let mut tx = self.pool.begin().await?;
            let run = transition_in(&mut tx, &self.shown, id, from, to, patch, output).await?;
            tx.commit().await?;
            Ok(run)
        })
        .await
    }

    async fn claim_run(
        &self,
        id: &RunId,
        from: RunStatus,
        expected_owner: Option<&str>,
        owner: &str,
    ) -> Result<Run> {
        self.retry(|| async move {
            let mut tx = self.pool.begin().await?;
            let row = sqlx::query("SELECT status, owner FROM runs WHERE id = $1 FOR UPDATE")
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| no_run(id))?;
            let (status, current): (String, Option<String>) =
                (row.try_get("status")?, row.try_get("owner")?);
            let ours = status == RunStatus::Running.as_str() && current.as_deref() == Some(owner);
            if ours {
                // A retry after a commit whose answer was lost: it is ours.
                let row = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"
                )))
                .bind(id.to_string())
                .fetch_one(&mut *tx)
                .await?;
                tx.rollback().await?;
                return Ok(row::run(&self.shown, &row)?);
            }
            if status != from.as_str() || current.as_deref() != expected_owner {
                return Err(Fail::Store(StoreError::Claimed {
                    run: id.to_string(),
                    status,
                    owner: current,
                }));
            }
            let row = sqlx::query(AssertSqlSafe(format!(
                "UPDATE runs SET status = 'running', owner = $2, error = NULL, \
                 updated_at = clock_timestamp() WHERE id = $1 RETURNING {RUN_COLUMNS}"
            )))
            .bind(id.to_string())
            .bind(owner)
            .fetch_one(&mut *tx)
            .await?;
            let run = row::run(&self.shown, &row)?;
            tx.commit().await?;
            Ok(run)
        })
        .await
    }

    async fn append_encoded(
        &self,
        id: &RunId,
        key: &str,
        kind: &str,
        payload: Encoded,
    ) -> Result<Appended> {
        let req = AppendReq {
            run: *id,
            key: key.to_owned(),
            kind: kind.to_owned(),
            payload: payload.into_string(),
        };
        // Appends that arrive together share one transaction (one commit).
        self.appends
            .submit(req, |batch| self.commit_appends(batch))
            .await
    }

    async fn entry(&self, id: &RunId, key: &str) -> Result<Option<Entry>> {
        let run_id = &id.to_string();
        self.retry(|| async move {
            let row = sqlx::query(AssertSqlSafe(format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE run_id = $1 AND key = $2"
            )))
            .bind(run_id)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(|r| row::entry(&self.shown, &r)).transpose()?)
        })
        .await
    }

    async fn entries(&self, id: &RunId) -> Result<Vec<Entry>> {
        let run_id = &id.to_string();
        self.retry(|| async move {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE run_id = $1 ORDER BY seq"
            )))
            .bind(run_id)
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .iter()
                .map(|r| row::entry(&self.shown, r))
                .collect::<Result<Vec<_>>>()?)
        })
        .await
    }

    async fn usage(&self, runs: &[RunId]) -> Result<Vec<(RunId, RunUsage)>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = runs.iter().map(ToString::to_string).collect();
        let ids = &ids;
        self.retry(|| async move {
            // A cached answer (`"cached": true`) spent nothing.
            let rows = sqlx::query(
                "SELECT run_id, \
                        SUM(CASE WHEN p ? 'cached' THEN 0 ELSE COALESCE((p #>> '{response,usage,input_tokens}')::bigint, 0) END)::bigint AS input_tokens, \
                        SUM(CASE WHEN p ? 'cached' THEN 0 ELSE COALESCE((p #>> '{response,usage,output_tokens}')::bigint, 0) END)::bigint AS output_tokens, \
                        COUNT(*) FILTER (WHERE NOT p ? 'cached') AS calls, \
                        COUNT(*) FILTER (WHERE p ? 'cached') AS cached_calls, \
                        COALESCE(SUM((p ->> 'cost_usd')::float8), 0)::float8 AS cost_usd \
                 FROM (SELECT run_id, payload::jsonb AS p FROM entries WHERE kind = 'model' AND run_id = ANY($1)) m \
                 GROUP BY run_id",
            )
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
            Ok(crate::types::usage_rows(&rows)?)
        })
        .await
    }

    async fn entries_after(&self, id: &RunId, after: i64, limit: usize) -> Result<Vec<Entry>> {
        let run_id = &id.to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.retry(|| async move {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            )))
            .bind(run_id)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .iter()
                .map(|r| row::entry(&self.shown, r))
                .collect::<Result<Vec<_>>>()?)
        })
        .await
    }

    async fn open_gate(&self, gate: &NewGate) -> Result<()> {
        let run_id = &gate.run_id.to_string();
        let request = &row::json(&gate.request)?;
        self.retry(|| async move {
            sqlx::query(
                "INSERT INTO gates (run_id, key, kind, request, deadline, opened_at) \
                 VALUES ($1, $2, $3, $4, $5, clock_timestamp()) ON CONFLICT (run_id, key) DO NOTHING",
            )
            .bind(run_id)
            .bind(&gate.key)
            .bind(&gate.kind)
            .bind(request)
            .bind(gate.deadline)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                if error::code_of(&e).as_deref() == Some(error::FOREIGN_KEY_VIOLATION) {
                    no_run(&gate.run_id)
                } else {
                    Fail::Sql(e)
                }
            })?;
            Ok(())
        })
        .await
    }

    async fn decide_gate(
        &self,
        id: &RunId,
        key: &str,
        decision: &serde_json::Value,
    ) -> Result<Decided> {
        let run_id = &id.to_string();
        let decision = &row::json(decision)?;
        self.retry(|| async move {
            let mut tx = self.pool.begin().await?;
            // Lock order everywhere: the run's task, then the run.
            sqlx::query("SELECT id FROM tasks WHERE run_id = $1 AND key = '' FOR UPDATE")
                .bind(run_id)
                .fetch_optional(&mut *tx)
                .await?;
            lock_run(&mut tx, id).await?;
            let gate = sqlx::query(
                "SELECT decision, decided_at FROM gates WHERE run_id = $1 AND key = $2 FOR UPDATE",
            )
            .bind(run_id)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                Fail::Store(StoreError::NotFound(format!("no gate `{key}` in run {id}")))
            })?;
            let first: (Option<String>, Option<chrono::DateTime<chrono::Utc>>) =
                (gate.try_get("decision")?, gate.try_get("decided_at")?);
            if let (Some(d), Some(t)) = first {
                tx.rollback().await?;
                return decided_already(&self.shown, &d, t);
            }
            // The journal is the truth: a decision already recorded under
            // the gate's key (answered interactively) wins.
            let entry = sqlx::query("SELECT payload, recorded_at FROM entries WHERE run_id = $1 AND key = $2")
                .bind(run_id)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(e) = entry {
                let (d, t): (String, chrono::DateTime<chrono::Utc>) =
                    (e.try_get("payload")?, e.try_get("recorded_at")?);
                sqlx::query("UPDATE gates SET decision = $3, decided_at = $4 WHERE run_id = $1 AND key = $2")
                    .bind(run_id)
                    .bind(key)
                    .bind(&d)
                    .bind(t)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                return decided_already(&self.shown, &d, t);
            }
            let appended = append_locked(&mut tx, &self.shown, id, key, "decision", decision).await?;
            let Appended::New(_) = appended else {
                return Err(Fail::Store(StoreError::Backend("decision entry raced".into())));
            };
            sqlx::query(
                "UPDATE gates SET decision = $3, decided_at = e.recorded_at FROM entries e \
                 WHERE gates.run_id = $1 AND gates.key = $2 AND e.run_id = $1 AND e.key = $2",
            )
            .bind(run_id)
            .bind(key)
            .bind(decision)
            .execute(&mut *tx)
            .await?;
            // A queued run waiting for this decision becomes runnable again.
            super::queue::notify(&mut tx).await?;
            sqlx::query(
                "UPDATE tasks SET state = 'ready', owner = NULL, lease_expires_at = NULL, updated_at = now() \
                 WHERE run_id = $1 AND key = '' AND state = 'done' \
                 AND EXISTS (SELECT 1 FROM runs WHERE id = $1 AND status = 'waiting')",
            )
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Decided::Now)
        })
        .await
    }

    async fn gates(&self, filter: &GateFilter) -> Result<Vec<Gate>> {
        let run_id = filter.run_id.map(|r| r.to_string());
        let pending = if filter.pending_only {
            " AND decided_at IS NULL"
        } else {
            ""
        };
        let by_run = if run_id.is_some() {
            " AND run_id = $1"
        } else {
            ""
        };
        let sql = &format!(
            "SELECT {GATE_COLUMNS} FROM gates WHERE TRUE{by_run}{pending} ORDER BY opened_at, ord"
        );
        let run_id = &run_id;
        self.retry(|| async move {
            let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
            if let Some(r) = run_id {
                q = q.bind(r);
            }
            let rows = q.fetch_all(&self.pool).await?;
            Ok(rows
                .iter()
                .map(|r| row::gate(&self.shown, r))
                .collect::<Result<Vec<_>>>()?)
        })
        .await
    }

    fn queue(&self) -> Option<&dyn crate::queue::TaskQueue> {
        Some(self)
    }

    fn rate_limits(&self) -> Option<&dyn crate::limits::RateLimitStore> {
        Some(self)
    }

    async fn close(&self) {
        Self::close(self).await;
    }

    fn commits_read_status(&self) -> bool {
        true
    }

    fn status_read_by_commit(&self, id: &RunId, since: std::time::Instant) -> Option<RunStatus> {
        self.statuses.since(id, since)
    }

    async fn set_settings(&self, id: &RunId, settings: &RunSettings) -> Result<()> {
        let run_id = &id.to_string();
        let settings =
            &serde_json::to_string(settings).map_err(|e| StoreError::Backend(e.to_string()))?;
        let n = self
            .retry(|| async move {
                let done =
                    sqlx::query("UPDATE runs SET settings = $2, updated_at = now() WHERE id = $1")
                        .bind(run_id)
                        .bind(settings)
                        .execute(&self.pool)
                        .await?;
                Ok(done.rows_affected())
            })
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound(run_id.clone()));
        }
        Ok(())
    }

    async fn costs(
        &self,
        since: Option<chrono::DateTime<chrono::Utc>>,
        by: CostBy,
    ) -> Result<Vec<CostRow>> {
        let group = match by {
            CostBy::Workflow => "r.workflow_name",
            CostBy::Model => {
                "(m.p ->> 'provider') || '/' || COALESCE(m.p ->> 'model', '(default)')"
            }
            CostBy::Day => "to_char(m.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        };
        let sql = format!(
            "SELECT {group} AS grp, COUNT(*) AS calls, \
                    SUM(COALESCE((m.p #>> '{{response,usage,input_tokens}}')::bigint, 0))::bigint AS input_tokens, \
                    SUM(COALESCE((m.p #>> '{{response,usage,output_tokens}}')::bigint, 0))::bigint AS output_tokens, \
                    COALESCE(SUM((m.p ->> 'cost_usd')::float8), 0)::float8 AS cost_usd, \
                    COUNT(*) FILTER (WHERE NOT m.p ? 'cost_usd') AS unpriced \
             FROM (SELECT run_id, recorded_at, payload::jsonb AS p FROM entries WHERE kind = 'model') m \
             JOIN runs r ON r.id = m.run_id \
             WHERE NOT m.p ? 'cached' AND ($1::timestamptz IS NULL OR r.created_at >= $1) \
             GROUP BY grp ORDER BY cost_usd DESC, calls DESC, grp"
        );
        let sql = &sql;
        self.retry(|| async move {
            let rows = sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(since)
                .fetch_all(&self.pool)
                .await?;
            Ok(crate::types::cost_rows(&rows)?)
        })
        .await
    }

    async fn cache_get(&self, key: &str, max_age: std::time::Duration) -> Result<Option<String>> {
        let secs = max_age.as_secs_f64();
        self.retry(|| async move {
            let row = sqlx::query_scalar::<_, String>(
                "UPDATE response_cache SET hits = hits + 1 \
                 WHERE key = $1 AND created_at >= now() - make_interval(secs => $2) RETURNING response",
            )
            .bind(key)
            .bind(secs)
            .fetch_optional(&self.pool)
            .await?;
            Ok(row)
        })
        .await
    }

    async fn cache_put(
        &self,
        key: &str,
        provider: &str,
        model: Option<&str>,
        response: &str,
    ) -> Result<()> {
        self.retry(|| async move {
            sqlx::query(
                "INSERT INTO response_cache (key, provider, model, response, created_at, hits) \
                 VALUES ($1, $2, $3, $4, now(), 0) \
                 ON CONFLICT (key) DO UPDATE SET provider = EXCLUDED.provider, model = EXCLUDED.model, \
                 response = EXCLUDED.response, created_at = EXCLUDED.created_at, hits = 0",
            )
            .bind(key)
            .bind(provider)
            .bind(model)
            .bind(response)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    async fn cache_clear(&self, older_than: Option<std::time::Duration>) -> Result<u64> {
        let secs = older_than.map(|d| d.as_secs_f64());
        self.retry(|| async move {
            let done = sqlx::query(
                "DELETE FROM response_cache \
                 WHERE $1::float8 IS NULL OR created_at < now() - make_interval(secs => $1)",
            )
            .bind(secs)
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected())
        })
        .await
    }

    async fn cache_stats(&self) -> Result<CacheStats> {
        self.retry(|| async move {
            let r = sqlx::query(
                "SELECT COUNT(*) AS entries, COALESCE(SUM(hits), 0)::bigint AS hits, \
                        COALESCE(SUM(octet_length(response)), 0)::bigint AS bytes, \
                        MIN(created_at) AS oldest, MAX(created_at) AS newest FROM response_cache",
            )
            .fetch_one(&self.pool)
            .await?;
            let n = |c: &str| -> std::result::Result<u64, sqlx::Error> {
                Ok(u64::try_from(r.try_get::<i64, _>(c)?).unwrap_or(0))
            };
            Ok(CacheStats {
                entries: n("entries")?,
                hits: n("hits")?,
                bytes: n("bytes")?,
                oldest: r.try_get("oldest")?,
                newest: r.try_get("newest")?,
            })
        })
        .await
    }
}

/// Inserts a run; a taken id is a conflict naming the existing run's status.
pub(super) async fn insert_run(
    conn: &mut PgConnection,
    run: &NewRun,
    pins: &str,
    inputs: &str,
) -> Result<(), Fail> {
    let id = run.id.to_string();
    let inserted = sqlx::query(
        "INSERT INTO runs (id, workflow_name, workflow_path, workflow_hash, workflow_source, pins, inputs, \
         status, owner, created_at, updated_at, settings) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now(), now(), $10) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&id)
    .bind(&run.workflow_name)
    .bind(&run.workflow_path)
    .bind(&run.workflow_hash)
    .bind(&run.workflow_source)
    .bind(pins)
    .bind(inputs)
    .bind(run.status.as_str())
    .bind(&run.owner)
    .bind(
        serde_json::to_string(&run.settings)
            .map_err(|e| Fail::Store(StoreError::Backend(e.to_string())))?,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        let current = sqlx::query_scalar::<_, String>("SELECT status FROM runs WHERE id = $1")
            .bind(&id)
            .fetch_optional(&mut *conn)
            .await?
            .unwrap_or_else(|| "gone".into());
        return Err(Fail::Store(StoreError::Conflict {
            run: id,
            current,
            expected: "absent (a new run)".into(),
        }));
    }
    Ok(())
}

fn decided_already(
    shown: &str,
    decision: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Decided, Fail> {
    let decision = serde_json::from_str(decision).map_err(|e| {
        Fail::Store(StoreError::Corrupt {
            path: shown.to_owned(),
            reason: format!("decision: {e}"),
        })
    })?;
    Ok(Decided::Already {
        decision,
        decided_at: at,
    })
}

impl PostgresStore {
    /// Commits a batch of appends in one transaction and answers each. An
    /// append to a run that does not exist fails the batch's transaction:
    /// then each append is tried alone, so that only it fails.
    async fn commit_appends(&self, batch: Vec<Pending<AppendReq, Result<Appended>>>) {
        let reqs: Vec<&AppendReq> = batch.iter().map(|p| &*p.input).collect();
        let outcome =
            match self.retry(|| self.append_batch(&reqs)).await {
                Err(StoreError::NotFound(_)) if reqs.len() > 1 => {
                    let mut outs = Vec::with_capacity(reqs.len());
                    for r in &reqs {
                        let one = [*r];
                        outs.push(self.retry(|| self.append_batch(&one)).await.and_then(
                            |mut v| {
                                v.pop().ok_or_else(|| {
                                    StoreError::Backend("an append got no answer".into())
                                })
                            },
                        ));
                    }
                    Ok(outs)
                }
                other => other.map(|v| v.into_iter().map(Ok).collect()),
            };
        answer_appends(batch, outcome);
    }

    /// One transaction for `reqs`: three round trips whatever their
    /// number beyond the inserts. The runs' row locks are taken by the
    /// `BEGIN` itself, in id order (two processes committing batches never
    /// deadlock), so that sequence numbers follow commit order.
    async fn append_batch(&self, reqs: &[&AppendReq]) -> Result<Vec<Appended>, Fail> {
        if let [r] = reqs {
            // One entry: one autocommit statement, one round trip.
            let began = std::time::Instant::now();
            // The store's journal connection (see `PostgresStore::journal`),
            // taken out of its slot meanwhile: if this future is dropped
            // mid-statement, so is the connection.
            let mut slot = self.journal.lock().await;
            // A closed store fails its operations, this one too (as the
            // pool's would).
            if self.pool.is_closed() {
                return Err(sqlx::Error::PoolClosed.into());
            }
            let mut conn = match slot.take() {
                Some(conn) => conn,
                None => sqlx::ConnectOptions::connect(&*self.pool.connect_options()).await?,
            };
            let out =
                append_reading_status(&mut conn, &self.shown, &r.run, &r.key, &r.kind, &r.payload)
                    .await;
            // Any error from the connection drops it (a key taken is
            // not one: the statement answers it).
            if !matches!(out, Err(Fail::Sql(_))) {
                *slot = Some(conn);
            }
            drop(slot);
            let (appended, status) = out?;
            if let Some(status) = status {
                self.statuses.saw(r.run, &status, began);
            }
            return Ok(vec![appended]);
        }
        let mut runs: Vec<RunId> = reqs.iter().map(|r| r.run).collect();
        runs.sort_unstable();
        runs.dedup();
        // A run id prints as 32 hex digits: safe to quote as it is.
        let ids = runs
            .iter()
            .map(|r| format!("'{r}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut tx = self
            .pool
            .begin_with(AssertSqlSafe(format!(
                "BEGIN; SELECT 1 FROM runs WHERE id IN ({ids}) ORDER BY id FOR UPDATE"
            )))
            .await?;
        let outs = match insert_many(&mut tx, &self.shown, reqs).await {
            Ok(a) => a,
            Err(Fail::Sql(e))
                if error::code_of(&e).as_deref() == Some(error::FOREIGN_KEY_VIOLATION) =>
            {
                // Which run is missing is found when each is tried alone.
                return Err(no_run(&reqs[0].run));
            }
            Err(e) => return Err(e),
        };
        tx.commit().await?;
        Ok(outs)
    }
}

/// Inserts many entries in one statement (one round trip), inside a
/// transaction that holds their runs' row locks. Sequence numbers follow
/// the requests' order within each run, after each run's `last_seq`, which
/// the same statement moves on; a key already recorded (or given
/// twice) is not written again and comes back as the entry there. (The
/// key check is a scalar subquery, one index lookup per key: a `NOT
/// EXISTS` may be planned as an anti-join reading the run's whole journal.)
pub(super) async fn insert_many(
    tx: &mut PgConnection,
    shown: &str,
    reqs: &[&AppendReq],
) -> Result<Vec<Appended>, Fail> {
    use std::collections::HashMap;
    let runs: Vec<String> = reqs.iter().map(|r| r.run.to_string()).collect();
    let keys: Vec<&str> = reqs.iter().map(|r| r.key.as_str()).collect();
    let kinds: Vec<&str> = reqs.iter().map(|r| r.kind.as_str()).collect();
    let payloads: Vec<&str> = reqs.iter().map(|r| r.payload.as_str()).collect();
    let rows = sqlx::query(
        "WITH input AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
             WITH ORDINALITY AS t(run_id, key, kind, payload, ord)), \
         fresh AS (SELECT DISTINCT ON (run_id, key) run_id, key, kind, payload, ord FROM input i \
             WHERE (SELECT 1 FROM entries e WHERE e.run_id = i.run_id AND e.key = i.key) IS NULL \
             ORDER BY run_id, key, ord), \
         numbered AS (SELECT f.run_id, f.key, f.kind, f.payload, \
             COALESCE((SELECT r.last_seq FROM runs r WHERE r.id = f.run_id), 0) \
             + row_number() OVER (PARTITION BY f.run_id ORDER BY f.ord) AS seq FROM fresh f), \
         ins AS (INSERT INTO entries (run_id, seq, key, kind, payload, recorded_at) \
             SELECT run_id, seq, key, kind, payload, clock_timestamp() FROM numbered ORDER BY run_id, seq \
             RETURNING run_id, key, seq), \
         bump AS (UPDATE runs r SET last_seq = m.mx \
             FROM (SELECT run_id, MAX(seq) AS mx FROM ins GROUP BY run_id) m WHERE r.id = m.run_id) \
         SELECT run_id, key, seq FROM ins",
    )
    .bind(&runs)
    .bind(&keys)
    .bind(&kinds)
    .bind(&payloads)
    .fetch_all(&mut *tx)
    .await?;
    let mut written: HashMap<(String, String), i64> = HashMap::with_capacity(rows.len());
    for r in &rows {
        let run: String = r.try_get("run_id")?;
        let key: String = r.try_get("key")?;
        written.insert((run, key), r.try_get("seq")?);
    }
    // The first request for a key gets its new entry; the others (and keys
    // recorded before) get the entry as it is.
    let mut outs: Vec<Option<Appended>> = Vec::with_capacity(reqs.len());
    let mut missing: Vec<usize> = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        match written.remove(&(runs[i].clone(), r.key.clone())) {
            Some(seq) => outs.push(Some(Appended::New(seq))),
            None => {
                outs.push(None);
                missing.push(i);
            }
        }
    }
    if !missing.is_empty() {
        let m_runs: Vec<&str> = missing.iter().map(|&i| runs[i].as_str()).collect();
        let m_keys: Vec<&str> = missing.iter().map(|&i| keys[i]).collect();
        let found = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ENTRY_COLUMNS} FROM entries WHERE (run_id, key) IN \
             (SELECT * FROM unnest($1::text[], $2::text[]))"
        )))
        .bind(&m_runs)
        .bind(&m_keys)
        .fetch_all(&mut *tx)
        .await?;
        let mut by_key: HashMap<(String, String), Entry> = HashMap::with_capacity(found.len());
        for r in &found {
            let e = row::entry(shown, r)?;
            by_key.insert((e.run_id.to_string(), e.key.clone()), e);
        }
        for i in missing {
            let e = by_key
                .get(&(runs[i].clone(), reqs[i].key.clone()))
                .cloned()
                .ok_or_else(|| no_run(&reqs[i].run))?;
            outs[i] = Some(Appended::Existing(e));
        }
    }
    Ok(outs.into_iter().flatten().collect())
}
