//! The PostgreSQL backend: one database shared by many `spes` processes
//! and machines (`spes worker`), selected by a `postgres://` store URL.
//!
//! # Connections and restarts
//! A [`PostgresStore`] holds one sqlx pool. Every operation is one
//! statement or one transaction, retried as a whole when it fails for a
//! reason that a later try may not meet: the server is restarting or
//! unreachable (connection refused or reset, `57P01 admin_shutdown`,
//! `57P03 cannot_connect_now`, class `08`), a serialization failure or a
//! deadlock. Retries back off exponentially (20 ms doubling to 2 s) for at
//! most [`PostgresOptions::with_retry_for`] (60 s by default); only then
//! does a caller see [`StoreError::Unavailable`]. A retried write is safe:
//! journal appends are idempotent by key (first commit wins), and the
//! other writes are compare-and-set.
//!
//! The first failure of a streak and the first success after it are
//! reported once each to [`PostgresOptions::with_on_connection`] (the
//! worker logs them), not once per operation.
//!
//! # Schema
//! See `schema.rs`; the tables live in the first schema of the
//! connection's `search_path` (`?options[search_path]=NAME` in the URL
//! picks another one).
//!
//! # Work queue
//! The store is also a [`TaskQueue`](crate::queue::TaskQueue): see
//! [`crate::queue`] for a task's life and `queue.rs` for the queries.
//!
//! # Shared rate limits
//! And a [`RateLimitStore`](crate::limits::RateLimitStore): providers'
//! `rpm`/`tpm` buckets and `max_concurrency` slots that every worker
//! honours together; see [`crate::limits`] and `limits.rs`.

mod error;
mod limits;
mod queue;
mod row;
mod run_store;
mod schema;

use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Executor, Row};

use crate::{Result, StoreError};

/// A change in the store's connection to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// An operation failed because the server could not be reached; spes
    /// retries with backoff.
    Lost {
        /// The error (no password).
        reason: String,
    },
    /// The first operation after [`ConnectionEvent::Lost`] succeeded.
    Restored {
        /// How long the server was unreachable.
        after: Duration,
    },
}

/// Hears about [`ConnectionEvent`]s.
pub type ConnectionHook = Arc<dyn Fn(&ConnectionEvent) + Send + Sync>;

/// The default of [`PostgresOptions::with_connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of a [`PostgresStore`]. `Default` plus `with_*` setters.
#[derive(Clone)]
pub struct PostgresOptions {
    max_connections: u32,
    retry_for: Duration,
    idle_in_transaction: Duration,
    connect_timeout: Duration,
    on_connection: Option<ConnectionHook>,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("max_connections", &self.max_connections)
            .field("retry_for", &self.retry_for)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            retry_for: Duration::from_secs(60),
            idle_in_transaction: Duration::from_secs(5),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            on_connection: None,
        }
    }
}

impl PostgresOptions {
    /// Most connections in the pool (default 10). A store also holds one
    /// connection of its own beside the pool, opened at its first lone
    /// journal append (see [`PostgresStore`]).
    #[must_use]
    pub fn with_max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long one operation keeps retrying an unreachable server before
    /// it fails with [`StoreError::Unavailable`] (default 60 s).
    #[must_use]
    pub fn with_retry_for(mut self, d: Duration) -> Self {
        self.retry_for = d;
        self
    }

    /// How long the server lets a session sit idle inside a transaction
    /// before it ends the session (`idle_in_transaction_session_timeout`,
    /// default 5 s). spes's transactions last milliseconds; a process
    /// frozen inside one (SIGSTOP, a debugger, a VM pause) would otherwise
    /// hold its row locks, and with them its tasks, forever.
    #[must_use]
    pub fn with_idle_in_transaction_timeout(mut self, d: Duration) -> Self {
        self.idle_in_transaction = d.max(Duration::from_millis(100));
        self
    }

    /// How long [`PostgresStore::connect`] waits for its first connection
    /// (default 5 s): a server that refuses, or a host that accepts and
    /// never answers, is then [`StoreError::Unavailable`] naming the URL.
    /// Later operations retry for [`PostgresOptions::with_retry_for`].
    #[must_use]
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d.max(Duration::from_millis(100));
        self
    }

    /// Called when the connection is lost and when it is back.
    #[must_use]
    pub fn with_on_connection(mut self, hook: ConnectionHook) -> Self {
        self.on_connection = Some(hook);
        self
    }
}

/// A run store in a PostgreSQL database. See the [module docs](self).
pub struct PostgresStore {
    pool: PgPool,
    shown: String,
    opts: PostgresOptions,
    /// Since when operations fail to reach the server, if they do.
    down: Mutex<Option<Instant>>,
    /// LISTENs on [`WAKE_CHANNEL`] for idle workers (connected on first use).
    listener: tokio::sync::Mutex<Option<sqlx::postgres::PgListener>>,
    /// Appends waiting to be committed together.
    appends: crate::group::Appends,
    /// Workers' fenced appends waiting to be committed together.
    fenced: crate::group::FencedAppends,
    /// The (provider, count) whose shared concurrency slots this handle
    /// made sure exist.
    slots_made: Mutex<std::collections::HashSet<(String, i32)>>,
    /// Each run's status as its last lone journal append read it, and
    /// when that append began ([`crate::RunStore::status_read_by_commit`]).
    statuses: crate::group::Statuses,
    /// The connection a lone journal append (a sequential step's) runs
    /// on, outside the pool: sqlx hands a pooled connection back through a
    /// spawned task that pings the server first, one more round trip and
    /// two more thread wake-ups per append. Opened at the first lone
    /// append; dropped (and opened again by the next) when an append on it
    /// meets an error from the connection or the server, or is dropped
    /// unfinished.
    journal: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
}

/// The channel a transaction that makes a task ready notifies (`pg_notify`,
/// delivered at its commit), so idle workers wake at once instead of at
/// their next poll.
pub(crate) const WAKE_CHANNEL: &str = "spes_tasks";

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

/// Why one attempt failed: a database error (maybe worth retrying) or a
/// final answer.
#[derive(Debug)]
enum Fail {
    Sql(sqlx::Error),
    Store(StoreError),
}

impl From<sqlx::Error> for Fail {
    fn from(e: sqlx::Error) -> Self {
        Self::Sql(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// `url` without its password, for messages.
#[must_use]
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?...]`)
    /// and brings the schema up to date, retrying an unreachable server
    /// for [`PostgresOptions::with_retry_for`].
    pub async fn connect(url: &str, opts: PostgresOptions) -> Result<Self> {
        let shown = redact(url);
        let mut connect = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::BadUrl(format!("{shown} ({e})")))?;
        // `?application_name=` in the URL names the sessions; else "spes".
        if connect.get_application_name().is_none() {
            connect = connect.application_name("spes");
        }
        let connect = connect.options([(
            "idle_in_transaction_session_timeout",
            format!("{}ms", opts.idle_in_transaction.as_millis()),
        )]);
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections)
            // No ping before each use (a round trip per operation): a
            // connection that died is found by the operation itself, whose
            // connection error `retry` answers with a fresh connection.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(connect);
        let store = Self {
            pool,
            shown,
            opts,
            down: Mutex::new(None),
            listener: tokio::sync::Mutex::new(None),
            appends: crate::group::Appends::new(crate::group::MAX_BATCH),
            fenced: crate::group::FencedAppends::new(crate::group::MAX_BATCH),
            slots_made: Mutex::default(),
            statuses: crate::group::Statuses::default(),
            journal: tokio::sync::Mutex::new(None),
        };
        store.first_connection().await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Waits for one connection, for at most the connect timeout, trying
    /// again while the server refuses; a final error (bad password, no such
    /// database) is reported at once.
    async fn first_connection(&self) -> Result<()> {
        let limit = self.opts.connect_timeout;
        let start = Instant::now();
        let mut last: Option<String> = None;
        let mut pause = Duration::from_millis(20);
        loop {
            let left = limit.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(StoreError::Unavailable {
                    what: self.shown.clone(),
                    reason: format!(
                        "no connection within the {}s connect timeout ({})",
                        limit.as_secs_f64(),
                        last.as_deref()
                            .unwrap_or("the server accepted but did not answer")
                    ),
                });
            }
            // A connection of its own (not the pool's, which would retry
            // by itself and hide why): refused, reset, or a final error.
            let opts = self.pool.connect_options();
            match tokio::time::timeout(left, sqlx::ConnectOptions::connect(&*opts)).await {
                Ok(Ok(conn)) => {
                    let _ = sqlx::Connection::close(conn).await;
                    return Ok(());
                }
                Ok(Err(e)) if error::is_transient(&e) => {
                    last = Some(e.to_string());
                    tokio::time::sleep(pause.min(limit.saturating_sub(start.elapsed()))).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Ok(Err(e)) => return Err(error::map(&self.shown, &e)),
                Err(_) => {}
            }
        }
    }

    /// The URL, without password.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// The pool (tests and benches look inside with plain SQL).
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Journal transactions committed (or tried) by this handle so far:
    /// appends that arrive together share one, so under concurrency this
    /// is smaller than the number of appends.
    #[must_use]
    pub fn journal_transactions(&self) -> u64 {
        self.appends.batches() + self.fenced.batches()
    }

    /// Closes every connection. Operations after this fail.
    pub async fn close(&self) {
        // The wake listener holds a pooled connection: closing the pool
        // would wait for it forever.
        drop(self.listener.lock().await.take());
        if let Some(conn) = self.journal.lock().await.take() {
            let _ = sqlx::Connection::close(conn).await;
        }
        self.pool.close().await;
    }

    /// The schema version of the database.
    pub async fn schema_version(&self) -> Result<i64> {
        self.retry(|| async move {
            let v = sqlx::query_scalar::<_, Option<i64>>(
                "SELECT (SELECT version FROM spes_meta) WHERE to_regclass('spes_meta') IS NOT NULL",
            )
            .fetch_optional(&self.pool)
            .await?;
            Ok(v.flatten().unwrap_or(0))
        })
        .await
    }

    /// The newest schema version this build understands.
    #[must_use]
    pub fn supported_schema_version() -> i64 {
        schema::SUPPORTED
    }

    async fn migrate(&self) -> Result<()> {
        self.retry(|| async move {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(schema::MIGRATION_LOCK)
                .execute(&mut *tx)
                .await?;
            tx.execute(
                "CREATE TABLE IF NOT EXISTS spes_meta (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), \
                 version BIGINT NOT NULL)",
            )
            .await?;
            let version = sqlx::query("SELECT version FROM spes_meta")
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get::<i64, _>(0))
                .transpose()?
                .unwrap_or(0);
            if version > schema::SUPPORTED {
                tx.rollback().await?;
                return Err(Fail::Store(StoreError::NewerSchema {
                    path: self.shown.clone(),
                    found: version,
                    supported: schema::SUPPORTED,
                }));
            }
            if version == schema::SUPPORTED {
                tx.commit().await?;
                return Ok(());
            }
            for (n, sql) in schema::MIGRATIONS
                .iter()
                .enumerate()
                .skip(usize::try_from(version).unwrap_or(0))
            {
                sqlx::raw_sql(*sql).execute(&mut *tx).await.map_err(|e| {
                    Fail::Store(StoreError::Backend(format!(
                        "{}: migration {} failed: {e}",
                        self.shown,
                        n + 1
                    )))
                })?;
            }
            sqlx::query(
                "INSERT INTO spes_meta (one, version) VALUES (TRUE, $1) \
                 ON CONFLICT (one) DO UPDATE SET version = EXCLUDED.version",
            )
            .bind(schema::SUPPORTED)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Runs `op` until it succeeds, fails for a reason a retry cannot
    /// help, or the retry budget is spent.
    async fn retry<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Fail>>,
    {
        let start = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            match op().await {
                Ok(v) => {
                    self.restored();
                    return Ok(v);
                }
                Err(Fail::Store(e)) => {
                    self.restored();
                    return Err(e);
                }
                Err(Fail::Sql(e)) if error::is_transient(&e) => {
                    if error::is_connection(&e) {
                        self.lost(&e);
                    }
                    if start.elapsed() >= self.opts.retry_for {
                        return Err(StoreError::Unavailable {
                            what: self.shown.clone(),
                            reason: e.to_string(),
                        });
                    }
                    let jitter = Duration::from_micros(u64::from(start.elapsed().subsec_micros()));
                    tokio::time::sleep(pause + jitter / 4).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(Fail::Sql(e)) => return Err(error::map(&self.shown, &e)),
            }
        }
    }

    /// Waits up to `max` for a notification on [`WAKE_CHANNEL`].
    async fn wait_for_wake(&self, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        let mut guard = self.listener.lock().await;
        if guard.is_none() {
            let connected = async {
                let mut l = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
                l.listen(WAKE_CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            match tokio::time::timeout(max, connected).await {
                Ok(Ok(l)) => *guard = Some(l),
                // No listener now (the server is down?): plain polling.
                _ => {
                    drop(guard);
                    tokio::time::sleep_until(deadline).await;
                    return;
                }
            }
        }
        if let Some(l) = guard.as_mut() {
            match tokio::time::timeout_at(deadline, l.try_recv()).await {
                // A notification, or the timeout: either way, look for work.
                Ok(Ok(Some(_))) | Err(_) => {}
                // The connection was lost (and will be re-established), or failed.
                Ok(Ok(None) | Err(_)) => {
                    *guard = None;
                    drop(guard);
                    tokio::time::sleep_until(deadline).await;
                }
            }
        }
    }

    fn lost(&self, e: &sqlx::Error) {
        let first = self
            .down
            .lock()
            .map(|mut d| d.is_none() && d.replace(Instant::now()).is_none())
            .unwrap_or(false);
        if first {
            tracing::info!(target: "spes::store", store = %self.shown, reason = %e, "lost the connection to the store; reconnecting");
        }
        if first && let Some(hook) = &self.opts.on_connection {
            hook(&ConnectionEvent::Lost {
                reason: e.to_string(),
            });
        }
    }

    fn restored(&self) {
        let since = self.down.lock().ok().and_then(|mut d| d.take());
        if let Some(t) = since {
            tracing::info!(target: "spes::store", store = %self.shown, after_ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX), "reconnected to the store");
        }
        if let (Some(t), Some(hook)) = (since, &self.opts.on_connection) {
            hook(&ConnectionEvent::Restored { after: t.elapsed() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("postgres://u:secret@db:5432/x?sslmode=disable"),
            "postgres://u@db:5432/x?sslmode=disable"
        );
        assert_eq!(redact("postgres://u@db/x/y@z"), "postgres://u@db/x/y@z");
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
    }
}
