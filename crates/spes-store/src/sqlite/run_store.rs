//! [`RunStore`] on SQLite: every write a `BEGIN IMMEDIATE` transaction on
//! the writer connection, every read one statement on a reader.

use async_trait::async_trait;
use sqlx::{AssertSqlSafe, Connection, Row};

use super::row::{ENTRY_COLUMNS, GATE_COLUMNS, RUN_COLUMNS, fmt_time, now};
use super::{Fail, SqliteStore, error, row, schema};
use crate::error::MAX_CANDIDATES;
use crate::group::{AppendReq, Pending, answer_appends};
use crate::{
    Appended, CacheStats, CostBy, CostRow, Decided, Encoded, Entry, Gate, GateFilter, NewGate,
    NewRun, Result, Run, RunId, RunPatch, RunQuery, RunSettings, RunStatus, RunStore, RunUsage,
    StoreError,
};

/// The constraint that failed, if `e` is a constraint error.
fn constraint(e: &sqlx::Error) -> Option<i32> {
    error::code_of(e).filter(|c| c & 0xff == 19)
}

fn json(v: &serde_json::Value) -> Result<String, Fail> {
    serde_json::to_string(v)
        .map_err(|e| Fail::Store(StoreError::Backend(format!("cannot encode JSON: {e}"))))
}

fn no_run(id: &RunId) -> Fail {
    Fail::Store(StoreError::NotFound(format!("no run {id}")))
}

#[async_trait]
impl RunStore for SqliteStore {
    fn describe(&self) -> String {
        format!(
            "sqlite://{} (WAL, synchronous={})",
            self.path.display(),
            self.opts.durability.pragma()
        )
    }

    async fn create_run(&self, run: &NewRun) -> Result<()> {
        let id = run.id.to_string();
        let pins =
            serde_json::to_string(&run.pins).map_err(|e| StoreError::Backend(e.to_string()))?;
        let inputs =
            json(&run.inputs).map_err(|_| StoreError::Backend("cannot encode inputs".into()))?;
        let settings =
            serde_json::to_string(&run.settings).map_err(|e| StoreError::Backend(e.to_string()))?;
        let (id, pins, inputs, settings) = (&id, &pins, &inputs, &settings);
        self.retry(|| async move {
            let mut w = self.writer.acquire().await?;
            let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
            let existing = sqlx::query_scalar::<_, String>("SELECT status FROM runs WHERE id = ?1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(current) = existing {
                return Err(Fail::Store(StoreError::Conflict {
                    run: id.to_string(),
                    current,
                    expected: "absent (a new run)".into(),
                }));
            }
            let t = fmt_time(now());
            sqlx::query(
                "INSERT INTO runs (id, workflow_name, workflow_path, workflow_hash, workflow_source, pins, inputs, \
                 status, owner, created_at, updated_at, settings, num) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11, \
                 (SELECT COALESCE(MAX(num), 0) + 1 FROM runs))",
            )
            .bind(id)
            .bind(&run.workflow_name)
            .bind(&run.workflow_path)
            .bind(&run.workflow_hash)
            .bind(&run.workflow_source)
            .bind(pins)
            .bind(inputs)
            .bind(run.status.as_str())
            .bind(&run.owner)
            .bind(&t)
            .bind(settings)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn run(&self, id: &RunId) -> Result<Option<Run>> {
        let id = &id.to_string();
        self.retry(|| async move {
            let row = sqlx::query(AssertSqlSafe(format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"
            )))
            .bind(id)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
            row.as_ref().map(|r| self.run_from(r)).transpose()
        })
        .await
    }

    async fn run_counts(&self) -> Result<Vec<(RunStatus, u64)>> {
        self.retry(|| async move {
            let rows = sqlx::query_as::<_, (String, i64)>(
                "SELECT status, count(*) FROM runs GROUP BY status",
            )
            .fetch_all(&mut *self.reader().await?)
            .await?;
            // A status this build does not know is left out.
            Ok(rows
                .into_iter()
                .filter_map(|(s, n)| Some((s.parse::<RunStatus>().ok()?, u64::try_from(n).ok()?)))
                .collect())
        })
        .await
    }

    async fn status(&self, id: &RunId) -> Result<Option<RunStatus>> {
        let id = &id.to_string();
        self.retry(|| async move {
            let s = sqlx::query_scalar::<_, String>("SELECT status FROM runs WHERE id = ?1")
                .bind(id)
                .fetch_optional(&mut *self.reader().await?)
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
                "SELECT {RUN_COLUMNS} FROM runs WHERE id >= ?1 AND id < ?2 ORDER BY id LIMIT {MAX_CANDIDATES}"
            )))
            .bind(prefix)
            .bind(upper)
            .fetch_all(&mut *self.reader().await?)
            .await?;
            match rows.as_slice() {
                [] => Err(Fail::Store(StoreError::NotFound(format!(
                    "no run `{id_or_prefix}`"
                )))),
                [one] => self.run_from(one),
                _ => {
                    let mut candidates = Vec::with_capacity(rows.len());
                    for r in &rows {
                        let run = self.run_from(r)?;
                        candidates.push(crate::error::Candidate {
                            id: run.id.to_string(),
                            workflow: run.workflow_name,
                            status: run.status.to_string(),
                        });
                    }
                    let count = sqlx::query_scalar::<_, i64>(
                        "SELECT count(*) FROM runs WHERE id >= ?1 AND id < ?2",
                    )
                    .bind(prefix)
                    .bind(upper)
                    .fetch_one(&mut *self.reader().await?)
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
        let wanted = crate::prunable(statuses);
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        // Fixed words from `RunStatus::as_str`, never user text.
        let list = wanted
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let cutoff = fmt_time(before);
        let (list, cutoff) = (&list, &cutoff);
        let ids = self
            .retry(|| async move {
                let ids = if dry_run {
                    sqlx::query_scalar::<_, String>(AssertSqlSafe(format!(
                        "SELECT id FROM runs WHERE status IN ({list}) AND updated_at < ?1 ORDER BY id"
                    )))
                    .bind(cutoff)
                    .fetch_all(&mut *self.reader().await?)
                    .await?
                } else {
                    // Entries and gates go with their run (ON DELETE CASCADE).
                    let mut ids = sqlx::query_scalar::<_, String>(AssertSqlSafe(format!(
                        "DELETE FROM runs WHERE status IN ({list}) AND updated_at < ?1 RETURNING id"
                    )))
                    .bind(cutoff)
                    .fetch_all(&mut *self.writer.acquire().await?)
                    .await?;
                    ids.sort();
                    ids
                };
                Ok(ids)
            })
            .await?;
        crate::parse_ids(ids)
    }

    async fn list_runs(&self, status: Option<RunStatus>, limit: u32) -> Result<Vec<Run>> {
        self.retry(|| async move {
            let rows = match status {
                Some(s) => sqlx::query(AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE status = ?1 ORDER BY created_at DESC, rowid DESC LIMIT ?2"
                )))
                .bind(s.as_str())
                .bind(limit),
                None => sqlx::query(AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM runs ORDER BY created_at DESC, rowid DESC LIMIT ?1"
                )))
                .bind(limit),
            }
            .fetch_all(&mut *self.reader().await?)
            .await?;
            rows.iter().map(|r| self.run_from(r)).collect()
        })
        .await
    }

    async fn query_runs(&self, q: &RunQuery) -> Result<Vec<Run>> {
        let status = q.status.map(RunStatus::as_str);
        let since = q.since.map(fmt_time);
        let until = q.until.map(fmt_time);
        let (after_t, after_id) = match &q.after {
            Some((t, id)) => (Some(fmt_time(*t)), Some(id.to_string())),
            None => (None, None),
        };
        let (status, workflow, since, until, after_t, after_id) =
            (&status, &q.workflow, &since, &until, &after_t, &after_id);
        self.retry(|| async move {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT {RUN_COLUMNS} FROM runs \
                 WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR workflow_name = ?2) \
                 AND (?3 IS NULL OR created_at >= ?3) AND (?4 IS NULL OR created_at < ?4) \
                 AND (?5 IS NULL OR created_at < ?5 OR (created_at = ?5 AND id < ?6)) \
                 ORDER BY created_at DESC, id DESC LIMIT ?7"
            )))
            .bind(status)
            .bind(workflow)
            .bind(since)
            .bind(until)
            .bind(after_t)
            .bind(after_id)
            .bind(q.limit)
            .fetch_all(&mut *self.reader().await?)
            .await?;
            rows.iter().map(|r| self.run_from(r)).collect()
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
        let key = &id.to_string();
        let output = &patch
            .output
            .as_ref()
            .map(json)
            .transpose()
            .map_err(|_| StoreError::Backend("cannot encode output".into()))?;
        let patch = &patch;
        self.retry(|| async move {
            let mut w = self.writer.acquire().await?;
            let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
            let current = sqlx::query_scalar::<_, String>("SELECT status FROM runs WHERE id = ?1")
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| no_run(id))?;
            if !from.iter().any(|s| s.as_str() == current) {
                return Err(Fail::Store(StoreError::Conflict {
                    run: key.to_string(),
                    current,
                    expected: from
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" or "),
                }));
            }
            let row = sqlx::query(AssertSqlSafe(format!(
                "UPDATE runs SET status = ?2, updated_at = ?3, \
                 output = CASE WHEN ?4 THEN ?5 ELSE output END, \
                 error = CASE WHEN ?6 THEN ?7 ELSE error END, \
                 owner = CASE WHEN ?8 THEN ?9 ELSE owner END \
                 WHERE id = ?1 RETURNING {RUN_COLUMNS}"
            )))
            .bind(key)
            .bind(to.as_str())
            .bind(fmt_time(now()))
            .bind(output.is_some())
            .bind(output)
            .bind(patch.error.is_some())
            .bind(patch.error.clone().flatten())
            .bind(patch.owner.is_some())
            .bind(patch.owner.clone().flatten())
            .fetch_one(&mut *tx)
            .await?;
            let run = self.run_from(&row)?;
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
        let key = &id.to_string();
        self.retry(|| async move {
            let mut w = self.writer.acquire().await?;
            let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
            let row = sqlx::query("SELECT status, owner FROM runs WHERE id = ?1")
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| no_run(id))?;
            let (status, current): (String, Option<String>) =
                (row.try_get("status")?, row.try_get("owner")?);
            if status != from.as_str() || current.as_deref() != expected_owner {
                return Err(Fail::Store(StoreError::Claimed {
                    run: key.clone(),
                    status,
                    owner: current,
                }));
            }
            let row = sqlx::query(AssertSqlSafe(format!(
                "UPDATE runs SET status = 'running', owner = ?2, error = NULL, updated_at = ?3 \
                 WHERE id = ?1 RETURNING {RUN_COLUMNS}"
            )))
            .bind(key)
            .bind(owner)
            .bind(fmt_time(now()))
            .fetch_one(&mut *tx)
            .await?;
            let run = self.run_from(&row)?;
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
        // Appends that arrive together share one transaction (one fsync).
        self.appends
            .submit(req, |batch| self.commit_appends(batch))
            .await
    }

    async fn entry(&self, id: &RunId, key: &str) -> Result<Option<Entry>> {
        let run_id = &id.to_string();
        self.retry(|| async move {
            let row = sqlx::query(AssertSqlSafe(format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE run_id = ?1 AND key = ?2"
            )))
            .bind(run_id)
            .bind(key)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
            row.as_ref().map(|r| self.entry_from(r)).transpose()
        })
        .await
    }

    async fn entries(&self, id: &RunId) -> Result<Vec<Entry>> {
        let run_id = &id.to_string();
        self.retry(|| async move {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE {} ORDER BY id",
                schema::RUN_ENTRY_IDS
            )))
            .bind(run_id)
            .fetch_all(&mut *self.reader().await?)
            .await?;
            rows.iter().map(|r| self.entry_from(r)).collect()
        })
        .await
    }

    async fn usage(&self, runs: &[RunId]) -> Result<Vec<(RunId, RunUsage)>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = runs.iter().map(ToString::to_string).collect();
        let marks = (1..=ids.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        // A cached answer (`"cached": true`) spent nothing.
        let sql = format!(
            "SELECT run_id, \
                    SUM(CASE WHEN json_extract(payload, '$.cached') IS NULL THEN COALESCE(json_extract(payload, '$.response.usage.input_tokens'), 0) ELSE 0 END) AS input_tokens, \
                    SUM(CASE WHEN json_extract(payload, '$.cached') IS NULL THEN COALESCE(json_extract(payload, '$.response.usage.output_tokens'), 0) ELSE 0 END) AS output_tokens, \
                    SUM(json_extract(payload, '$.cached') IS NULL) AS calls, \
                    SUM(json_extract(payload, '$.cached') IS NOT NULL) AS cached_calls, \
                    TOTAL(json_extract(payload, '$.cost_usd')) AS cost_usd \
             FROM entries WHERE kind = 'model' AND json_valid(payload) AND run_id IN ({marks}) GROUP BY run_id"
        );
        let ids = &ids;
        let sql = &sql;
        self.retry(|| async move {
            let mut q = sqlx::query(AssertSqlSafe(sql.clone()));
            for id in ids {
                q = q.bind(id);
            }
            let rows = q.fetch_all(&mut *self.reader().await?).await?;
            Ok(crate::types::usage_rows(&rows)?)
        })
        .await
    }

    async fn entries_after(&self, id: &RunId, after: i64, limit: usize) -> Result<Vec<Entry>> {
        let run_id = &id.to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.retry(|| async move {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE {} AND seq > ?2 ORDER BY id LIMIT ?3",
                schema::RUN_ENTRY_IDS
            )))
            .bind(run_id)
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *self.reader().await?)
            .await?;
            rows.iter().map(|r| self.entry_from(r)).collect()
        })
        .await
    }

    async fn open_gate(&self, gate: &NewGate) -> Result<()> {
        let run_id = &gate.run_id.to_string();
        let request = &json(&gate.request)
            .map_err(|_| StoreError::Backend("cannot encode request".into()))?;
        let deadline = &gate.deadline.map(fmt_time);
        self.retry(|| async move {
            let mut w = self.writer.acquire().await?;
            let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query(
                "INSERT INTO gates (run_id, key, kind, request, deadline, opened_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (run_id, key) DO NOTHING",
            )
            .bind(run_id)
            .bind(&gate.key)
            .bind(&gate.kind)
            .bind(request)
            .bind(deadline)
            .bind(fmt_time(now()))
            .execute(&mut *tx)
            .await
            .map_err(|e| match constraint(&e) {
                Some(error::SQLITE_CONSTRAINT_FOREIGNKEY) => no_run(&gate.run_id),
                _ => Fail::Sql(e),
            })?;
            tx.commit().await?;
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
        let decision =
            &json(decision).map_err(|_| StoreError::Backend("cannot encode decision".into()))?;
        self.retry(|| async move {
            let mut w = self.writer.acquire().await?;
            let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
            let gate = sqlx::query("SELECT decision, decided_at FROM gates WHERE run_id = ?1 AND key = ?2")
                .bind(run_id)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| Fail::Store(StoreError::NotFound(format!("no gate `{key}` in run {id}"))))?;
            let first: Option<(String, String)> = match (gate.try_get("decision")?, gate.try_get("decided_at")?) {
                (Some(d), Some(t)) => Some((d, t)),
                _ => {
                    // The journal is the truth: a decision already recorded
                    // under the gate's key (say, answered interactively) wins.
                    let entry = sqlx::query("SELECT payload, recorded_at FROM entries WHERE run_id = ?1 AND key = ?2")
                        .bind(run_id)
                        .bind(key)
                        .fetch_optional(&mut *tx)
                        .await?;
                    match entry {
                        Some(e) => {
                            let (d, t): (String, String) = (e.try_get("payload")?, e.try_get("recorded_at")?);
                            sqlx::query("UPDATE gates SET decision = ?3, decided_at = ?4 WHERE run_id = ?1 AND key = ?2")
                                .bind(run_id)
                                .bind(key)
                                .bind(&d)
                                .bind(&t)
                                .execute(&mut *tx)
                                .await?;
                            tx.commit().await?;
                            return decided_already(self, &d, &t);
                        }
                        None => None,
                    }
                }
            };
            if let Some((d, t)) = first {
                tx.rollback().await?;
                return decided_already(self, &d, &t);
            }
            let t = fmt_time(now());
            sqlx::query("UPDATE gates SET decision = ?3, decided_at = ?4 WHERE run_id = ?1 AND key = ?2")
                .bind(run_id)
                .bind(key)
                .bind(decision)
                .bind(&t)
                .execute(&mut *tx)
                .await?;
            let inserted = sqlx::query(AssertSqlSafe(format!(
                "WITH n AS ({}) INSERT INTO entries (id, run_id, seq, key, kind, payload, recorded_at) \
                 SELECT base + next, ?1, next, ?2, 'decision', ?3, ?4 FROM n WHERE base IS NOT NULL",
                schema::NEXT_ENTRY
            )))
            .bind(run_id)
            .bind(key)
            .bind(decision)
            .bind(&t)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() != 1 {
                return Err(Fail::Store(StoreError::Corrupt {
                    path: self.path.display().to_string(),
                    reason: schema::no_number(run_id),
                }));
            }
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
            " AND run_id = ?1"
        } else {
            ""
        };
        let sql = &format!(
            "SELECT {GATE_COLUMNS} FROM gates WHERE 1 = 1{by_run}{pending} ORDER BY opened_at, rowid"
        );
        let run_id = &run_id;
        self.retry(|| async move {
            let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
            if let Some(r) = &run_id {
                q = q.bind(r);
            }
            let rows = q.fetch_all(&mut *self.reader().await?).await?;
            rows.iter().map(|r| self.gate_from(r)).collect()
        })
        .await
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
                let mut w = self.writer.acquire().await?;
                let done =
                    sqlx::query("UPDATE runs SET settings = ?2, updated_at = ?3 WHERE id = ?1")
                        .bind(run_id)
                        .bind(settings)
                        .bind(fmt_time(now()))
                        .execute(&mut *w)
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
                "json_extract(e.payload, '$.provider') || '/' || COALESCE(json_extract(e.payload, '$.model'), '(default)')"
            }
            CostBy::Day => "substr(e.recorded_at, 1, 10)",
        };
        let sql = format!(
            "SELECT {group} AS grp, COUNT(*) AS calls, \
                    SUM(COALESCE(json_extract(e.payload, '$.response.usage.input_tokens'), 0)) AS input_tokens, \
                    SUM(COALESCE(json_extract(e.payload, '$.response.usage.output_tokens'), 0)) AS output_tokens, \
                    TOTAL(json_extract(e.payload, '$.cost_usd')) AS cost_usd, \
                    SUM(json_extract(e.payload, '$.cost_usd') IS NULL) AS unpriced \
             FROM entries e JOIN runs r ON r.id = e.run_id \
             WHERE e.kind = 'model' AND json_valid(e.payload) AND json_extract(e.payload, '$.cached') IS NULL \
               AND (?1 IS NULL OR r.created_at >= ?1) \
             GROUP BY grp ORDER BY cost_usd DESC, calls DESC, grp"
        );
        let since = &since.map(fmt_time);
        let sql = &sql;
        self.retry(|| async move {
            let rows = sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(since)
                .fetch_all(&mut *self.reader().await?)
                .await?;
            Ok(crate::types::cost_rows(&rows)?)
        })
        .await
    }

    async fn cache_get(&self, key: &str, max_age: std::time::Duration) -> Result<Option<String>> {
        let cutoff =
            &fmt_time(now() - chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX));
        self.retry(|| async move {
            let mut w = self.writer.acquire().await?;
            let row = sqlx::query_scalar::<_, String>(
                "UPDATE response_cache SET hits = hits + 1 WHERE key = ?1 AND created_at >= ?2 RETURNING response",
            )
            .bind(key)
            .bind(cutoff)
            .fetch_all(&mut *w)
            .await?;
            Ok(row.into_iter().next())
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
            let mut w = self.writer.acquire().await?;
            sqlx::query(
                "INSERT INTO response_cache (key, provider, model, response, created_at, hits) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 0) \
                 ON CONFLICT (key) DO UPDATE SET provider = excluded.provider, model = excluded.model, \
                 response = excluded.response, created_at = excluded.created_at, hits = 0",
            )
            .bind(key)
            .bind(provider)
            .bind(model)
            .bind(response)
            .bind(fmt_time(now()))
            .execute(&mut *w)
            .await?;
            Ok(())
        })
        .await
    }

    async fn cache_clear(&self, older_than: Option<std::time::Duration>) -> Result<u64> {
        let cutoff = &older_than.map(|d| {
            fmt_time(now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
        });
        self.retry(|| async move {
            let mut w = self.writer.acquire().await?;
            let done =
                sqlx::query("DELETE FROM response_cache WHERE ?1 IS NULL OR created_at < ?1")
                    .bind(cutoff)
                    .execute(&mut *w)
                    .await?;
            Ok(done.rows_affected())
        })
        .await
    }

    async fn cache_stats(&self) -> Result<CacheStats> {
        self.retry(|| async move {
            let r = sqlx::query(
                "SELECT COUNT(*) AS entries, COALESCE(SUM(hits), 0) AS hits, \
                        COALESCE(SUM(length(CAST(response AS BLOB))), 0) AS bytes, \
                        MIN(created_at) AS oldest, MAX(created_at) AS newest FROM response_cache",
            )
            .fetch_one(&mut *self.reader().await?)
            .await?;
            let n = |c: &str| -> std::result::Result<u64, sqlx::Error> {
                Ok(u64::try_from(r.try_get::<i64, _>(c)?).unwrap_or(0))
            };
            let t = |c: &str| -> std::result::Result<Option<chrono::DateTime<chrono::Utc>>, sqlx::Error> {
                let s: Option<String> = r.try_get(c)?;
                Ok(s.and_then(|s| chrono::DateTime::parse_from_rfc3339(&s).ok())
                    .map(|t| t.with_timezone(&chrono::Utc)))
            };
            Ok(CacheStats {
                entries: n("entries")?,
                hits: n("hits")?,
                bytes: n("bytes")?,
                oldest: t("oldest")?,
                newest: t("newest")?,
            })
        })
        .await
    }
}

fn decided_already(store: &SqliteStore, decision: &str, at: &str) -> Result<Decided, Fail> {
    let decision = serde_json::from_str(decision)
        .map_err(|e| store.bad(row::BadRow(format!("decision: {e}"))))?;
    let decided_at = chrono::DateTime::parse_from_rfc3339(at)
        .map_err(|e| store.bad(row::BadRow(format!("decided_at: {e}"))))?
        .with_timezone(&chrono::Utc);
    Ok(Decided::Already {
        decision,
        decided_at,
    })
}

impl SqliteStore {
    /// Commits a batch of appends (a lone sequential step's, or many that
    /// arrived together) as one job on the journal's connection: one `BEGIN
    /// IMMEDIATE` transaction whose COMMIT is checked, then answers each.
    /// In autocommit, `INSERT ... RETURNING` would hand its row back before
    /// the implicit commit, and a commit that then failed (a full disk, an
    /// I/O error) would go unseen. A failed transaction fails every append
    /// in it; an append to a run that does not exist fails alone.
    ///
    /// The writer connection is held meanwhile, so that the store's other
    /// writes queue behind the batch instead of meeting its lock.
    async fn commit_appends(&self, batch: Vec<Pending<AppendReq, Result<Appended>>>) {
        let reqs: Vec<std::sync::Arc<AppendReq>> = batch
            .iter()
            .map(|p| std::sync::Arc::clone(&p.input))
            .collect();
        let reqs = &reqs;
        let began = std::time::Instant::now();
        let outcome = self
            .retry(|| async move {
                let _writer = self.writer.acquire().await?;
                let job = reqs.clone();
                let at = fmt_time(now());
                let found = self
                    .appender
                    .run(move |lite| append_batch(lite, &job, &at))
                    .await
                    .map_err(|gone| {
                        Fail::Store(StoreError::Backend(format!(
                            "{}: {}",
                            self.path.display(),
                            gone.0
                        )))
                    })?
                    .map_err(Fail::Lite)?;
                let mut outs = Vec::with_capacity(found.len());
                for (r, f) in reqs.iter().zip(found) {
                    outs.push(match f {
                        Found::New { seq, status } => {
                            if reqs.len() == 1 {
                                self.statuses.saw(r.run, &status, began);
                            }
                            Ok(Appended::New(seq))
                        }
                        // The key was taken: the first commit wins; entries
                        // never change.
                        Found::Taken(row) => Ok(Appended::Existing(
                            Entry::try_from(row).map_err(|e| self.bad(e))?,
                        )),
                        Found::NoRun => Err(StoreError::NotFound(format!("no run {}", r.run))),
                    });
                }
                Ok(outs)
            })
            .await;
        if let Ok(outs) = &outcome
            && outs.iter().any(|o| matches!(o, Ok(Appended::New(_))))
        {
            self.committed().await;
        }
        answer_appends(batch, outcome);
    }
}

/// What one append of a batch found (on the journal's connection).
enum Found {
    /// Committed under this sequence number; the run's status then.
    New { seq: i64, status: String },
    /// The key was taken already: the entry under it.
    Taken(row::EntryRow),
    /// No such run.
    NoRun,
}

/// On the journal's connection: the batch's appends in one `BEGIN IMMEDIATE`
/// transaction, committed; on any failure rolled back (a failed COMMIT,
/// a full disk say, leaves the transaction open until then).
fn append_batch(
    lite: &mut super::appender::Lite,
    reqs: &[std::sync::Arc<AppendReq>],
    at: &str,
) -> rusqlite::Result<Vec<Found>> {
    let c = lite.begin_immediate()?;
    let done = insert_all(c, reqs, at)
        .and_then(|found| c.prepare_cached("COMMIT")?.execute([]).map(|_| found));
    if done.is_err() {
        // What is left open is the job's to end (`Lite::settle` checks too).
        let _ = c.execute_batch("ROLLBACK");
    }
    done
}

/// Each append of the batch, inside the open transaction (the write lock
/// held): the run's status and its next seq, then the insert under `id` =
/// the run's number times 2^32 plus the seq (see migration 4); a taken key
/// inserts nothing (the first commit wins; entries never change).
///
/// Two plain statements, not one `INSERT ... SELECT ... RETURNING`: an
/// insert that selects from its own table, and a `RETURNING` clause, each
/// make SQLite build a temporary table per statement: with them, the
/// append's job took about 84,000 instructions, without them about
/// 51,000 (callgrind, a durable 200-step chain).
fn insert_all(
    c: &rusqlite::Connection,
    reqs: &[std::sync::Arc<AppendReq>],
    at: &str,
) -> rusqlite::Result<Vec<Found>> {
    use rusqlite::OptionalExtension as _;
    let mut next_entry = c.prepare_cached(schema::NEXT_ENTRY)?;
    let mut insert = c.prepare_cached(
        "INSERT INTO entries (id, run_id, seq, key, kind, payload, recorded_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (run_id, key) DO NOTHING",
    )?;
    let mut found = Vec::with_capacity(reqs.len());
    for r in reqs {
        let run = r.run.to_string();
        let Some((st, base, seq)) = next_entry
            .query_row([&run], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Option<i64>>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .optional()?
        else {
            found.push(Found::NoRun);
            continue;
        };
        let id = entry_id(&run, base, seq)?;
        let inserted = insert.execute(rusqlite::params![
            id, run, seq, r.key, r.kind, r.payload, at
        ])?;
        found.push(if inserted == 1 {
            Found::New { seq, status: st }
        } else {
            Found::Taken(taken(c, &run, &r.key)?)
        });
    }
    Ok(found)
}

/// The `id` of run `run`'s entry `seq`, from the run's `base` (its number
/// times 2^32): a run without a number, or with 2^32 - 1 entries already,
/// has none.
fn entry_id(run: &str, base: Option<i64>, seq: i64) -> rusqlite::Result<i64> {
    let refuse = |code, why: String| {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some(why))
    };
    let Some(base) = base else {
        return Err(refuse(
            rusqlite::ffi::SQLITE_CORRUPT,
            schema::no_number(run),
        ));
    };
    if !(1..=i64::from(u32::MAX)).contains(&seq) {
        return Err(refuse(
            rusqlite::ffi::SQLITE_ERROR,
            format!(
                "run {run} holds {} journal entries, the most one run may hold",
                u32::MAX
            ),
        ));
    }
    Ok(base + seq)
}

/// The entry already under `key`, for an append whose insert found the
/// key taken.
fn taken(c: &rusqlite::Connection, run: &str, key: &str) -> rusqlite::Result<row::EntryRow> {
    c.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM entries WHERE run_id = ?1 AND key = ?2"
    ))?
    .query_row(rusqlite::params![run, key], row::EntryRow::from_lite)
}
