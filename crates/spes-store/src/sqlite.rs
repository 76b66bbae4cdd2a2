//! The embedded SQLite backend: one file, WAL, one writer at a time.
//!
//! # Connections
//! A [`SqliteStore`] holds, on the same file, **one writer connection**
//! (owned behind a fair async mutex, not pooled: see `writer`) and a sqlx
//! pool of a few **read-only readers** (or none, with
//! [`SqliteOptions::with_readers`]`(0)`: reads then share the writer
//! connection, as the CLI's one-shot commands do). Journal appends are
//! written by a connection of their own (see `appender`), with the writer
//! held meanwhile. Every write runs in a `BEGIN IMMEDIATE` transaction,
//! so it takes SQLite's write lock up front and never fails half-way with
//! `SQLITE_BUSY_SNAPSHOT` the way a deferred transaction upgrading to a
//! writer can. Writers inside one
//! process queue on the writer's mutex (fair, async, no SQLite
//! busy-polling); writers in other processes (other `spes` commands,
//! another `SqliteStore`) wait in SQLite's busy handler (`busy_timeout`)
//! and, past that, in a retry loop with capped exponential backoff. Only
//! after [`SqliteOptions::with_lock_wait`] in total (15 s by default) does
//! a caller see [`StoreError::Locked`]. Readers never block writers in WAL
//! mode, and each read sees the last commit.
//!
//! # Files that are not (or no longer) a store
//! Before SQLite opens an existing file, its header is checked (see
//! `schema::inspect`), then a read-only connection reads the schema
//! version, the application id and (by default) runs `PRAGMA quick_check`.
//! Only then is the file opened for writing. Nothing is ever deleted,
//! truncated or recreated: a damaged, foreign or newer store gives a
//! distinct [`StoreError`] and is left byte-for-byte as it was.

mod appender;
mod error;
mod row;
mod run_store;
mod schema;
mod writer;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Row, SqliteConnection};

use self::row::{EntryRow, GateRow, RunRow};
#[cfg(doc)]
use crate::RunStore;
use crate::{Entry, Gate, Result, Run, StoreError};

/// How hard a commit works to survive a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `PRAGMA synchronous=FULL`: every commit is fsynced to the WAL before
    /// [`RunStore::append`] returns, so it survives a power loss or an OS
    /// crash, not only a killed process.
    #[default]
    Full,
    /// `PRAGMA synchronous=NORMAL`: a commit survives a killed process
    /// (the WAL is in the OS's cache), but the last commits before a power
    /// loss or OS crash may be lost (the file stays consistent). Faster:
    /// fsync only at checkpoints.
    Normal,
}

impl Durability {
    /// The `PRAGMA synchronous` value.
    #[must_use]
    pub fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
}

impl FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Self::Full),
            "normal" => Ok(Self::Normal),
            _ => Err(format!("unknown durability `{s}`; one of: full, normal")),
        }
    }
}

/// Settings of a [`SqliteStore`]. `Default` plus `with_*` setters.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    durability: Durability,
    busy_timeout: Duration,
    lock_wait: Duration,
    quick_check_on_open: bool,
    readers: u32,
    max_pages: Option<u32>,
    checkpoint_every: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            durability: Durability::default(),
            busy_timeout: Duration::from_secs(5),
            lock_wait: Duration::from_secs(15),
            quick_check_on_open: true,
            readers: 4,
            max_pages: None,
            checkpoint_every: CHECKPOINT_EVERY,
        }
    }
}

impl SqliteOptions {
    /// Commit durability (default [`Durability::Full`]).
    #[must_use]
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How long one SQLite call waits for a lock (`PRAGMA busy_timeout`,
    /// default 5 s, at most about 24 days).
    #[must_use]
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout.min(Duration::from_millis(i32::MAX as u64));
        self
    }

    /// How long an operation keeps retrying a locked database in total
    /// before it returns [`StoreError::Locked`] (default 15 s).
    #[must_use]
    pub fn with_lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Whether opening an existing store runs `PRAGMA quick_check`
    /// (default on; it reads the whole file: about a millisecond per few
    /// MB, see the `journal` bench). Damage found later is still reported
    /// as [`StoreError::Corrupt`] by the query that meets it.
    #[must_use]
    pub fn with_quick_check_on_open(mut self, on: bool) -> Self {
        self.quick_check_on_open = on;
        self
    }

    /// Maximum number of read-only connections (default 4). 0: none; reads
    /// share the writer connection (one connection in all: the cheapest
    /// start for a short-lived process whose reads are few).
    #[must_use]
    pub fn with_readers(mut self, readers: u32) -> Self {
        self.readers = readers;
        self
    }

    /// Caps the database at this many pages (`PRAGMA max_page_count`;
    /// 4 KiB pages): a write that would grow it further fails as if the
    /// disk were full. Default: no cap.
    #[must_use]
    pub fn with_max_pages(mut self, pages: u32) -> Self {
        self.max_pages = Some(pages.max(1));
        self
    }

    /// Every this many journal commits the writer runs a passive WAL
    /// checkpoint itself (default 1,000; 0: never), beside SQLite's own
    /// automatic checkpoints, so the WAL stays bounded in a long run.
    #[must_use]
    pub fn with_checkpoint_every(mut self, commits: u64) -> Self {
        self.checkpoint_every = commits;
        self
    }

    /// The durability setting.
    #[must_use]
    pub fn durability(&self) -> Durability {
        self.durability
    }
}

/// A run store in one SQLite file. See the [module docs](self).
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    opts: SqliteOptions,
    writer: writer::Writer,
    /// Read-only connections; `None`: reads share the writer.
    readers: Option<SqlitePool>,
    /// Journal commits since the last explicit checkpoint.
    commits: AtomicU64,
    /// Appends waiting to be committed together.
    appends: crate::group::Appends,
    /// Where they are committed: the journal's own connection.
    appender: appender::Appender,
    /// Each run's status as its last lone journal append read it, and
    /// when that append began ([`RunStore::status_read_by_commit`]).
    statuses: crate::group::Statuses,
}

/// Why one attempt failed: a database error (maybe worth retrying) or a
/// final answer.
#[derive(Debug)]
enum Fail {
    Sql(sqlx::Error),
    /// From the journal's connection (see `appender`).
    Lite(rusqlite::Error),
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

/// A connection held for a read (see `SqliteStore::reader`).
enum ReadConn<'a> {
    Pooled(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    Writer(writer::WriterConn<'a>),
}

impl std::ops::Deref for ReadConn<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        match self {
            Self::Pooled(c) => c,
            Self::Writer(c) => c,
        }
    }
}

impl std::ops::DerefMut for ReadConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            Self::Pooled(c) => c,
            Self::Writer(c) => c,
        }
    }
}

/// Runs `op` until it succeeds, fails for a reason other than a lock, or
/// `lock_wait` has passed; lock failures back off exponentially (2 ms
/// doubling to 100 ms, with jitter so waiting processes do not collide).
async fn retrying<T, F, Fut>(path: &Path, lock_wait: Duration, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Fail>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        let fail = match op().await {
            Ok(v) => return Ok(v),
            Err(fail) => fail,
        };
        let busy = match &fail {
            Fail::Sql(e) => error::is_busy(e),
            Fail::Lite(e) => error::lite_is_busy(e),
            Fail::Store(_) => false,
        };
        if !busy || start.elapsed() >= lock_wait {
            return Err(match fail {
                Fail::Sql(e) => error::map(path, &e, start.elapsed()),
                Fail::Lite(e) => error::map_lite(path, &e, start.elapsed()),
                Fail::Store(e) => e,
            });
        }
        let jitter = Duration::from_micros(u64::from(start.elapsed().subsec_nanos() % 1000));
        tokio::time::sleep(pause + jitter).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// `PRAGMA journal_size_limit`: the WAL is truncated to this after a
/// checkpoint lets it restart.
const JOURNAL_SIZE_LIMIT: u64 = 16 << 20;

/// Keeps the `-wal` and `-shm` files when the last connection closes.
/// Closing still checkpoints (the database file alone then holds every
/// commit) and cuts the WAL to `journal_size_limit`; what is saved is
/// deleting both files at the end of every spes command and creating them
/// again (with a directory fsync) at the start of the next.
async fn persist_wal(conn: &mut sqlx::SqliteConnection) -> std::result::Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    // SAFETY: the handle is this connection's, open and held (locked) by
    // `handle` for the whole call.
    #[allow(unsafe_code)]
    let rc = unsafe { persist_wal_raw(handle.as_raw_handle().as_ptr()) };
    if rc == libsqlite3_sys::SQLITE_OK {
        Ok(())
    } else {
        Err(sqlx::Error::Configuration(
            format!("SQLite refused to keep its WAL file (code {rc})").into(),
        ))
    }
}

/// [`persist_wal`] on a raw handle: SQLite's result code.
///
/// # Safety
/// `db` must be an open SQLite connection that no other thread uses
/// during the call.
#[allow(unsafe_code)]
unsafe fn persist_wal_raw(db: *mut libsqlite3_sys::sqlite3) -> std::ffi::c_int {
    let mut on: std::ffi::c_int = 1;
    // SAFETY: `db` is open and ours for the call (the caller's promise);
    // the file name is NUL-terminated; for SQLITE_FCNTL_PERSIST_WAL SQLite
    // reads and writes one c_int through the pointer, which points at
    // `on`, alive until the call returns.
    unsafe {
        libsqlite3_sys::sqlite3_file_control(
            db,
            c"main".as_ptr(),
            libsqlite3_sys::SQLITE_FCNTL_PERSIST_WAL,
            (&raw mut on).cast(),
        )
    }
}

/// Journal commits between two explicit passive checkpoints (default).
const CHECKPOINT_EVERY: u64 = 1000;

/// Creates `dir` (and its parents) if missing; a directory created here
/// is made 0700 whatever the umask (it will hold every prompt and answer).
/// An existing directory is left as it is.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    set_mode(dir, 0o700)
}

/// Creates the database file, empty and 0600 whatever the umask; one that
/// another process created meanwhile is left alone.
fn private_file(path: &Path) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    match o.open(path) {
        Ok(_) => set_mode(path, 0o600),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// What a read-only look at an existing file found.
struct Probe {
    version: i64,
}

impl SqliteStore {
    /// Opens the store at `path`, creating the file (and its directory) if
    /// missing and migrating an older schema. Never deletes, truncates or
    /// recreates an existing file: a file that is not a usable spes store
    /// is refused with [`StoreError::NotAStore`], [`StoreError::Corrupt`],
    /// [`StoreError::PermissionDenied`], [`StoreError::Locked`] or
    /// [`StoreError::NewerSchema`].
    pub async fn open(path: &Path, opts: SqliteOptions) -> Result<Self> {
        let path = std::path::absolute(path).map_err(|e| error::map_io(path, &e))?;
        if let Some(dir) = path.parent() {
            private_dir(dir).map_err(|e| match error::map_io(dir, &e) {
                denied @ StoreError::PermissionDenied { .. } => denied,
                _ => StoreError::NotAStore {
                    path: path.display().to_string(),
                    reason: format!("its directory {} cannot be created: {e}", dir.display()),
                },
            })?;
        }
        let state = schema::inspect(&path)?;
        let probe = match state {
            // Checked on the writer below, before anything is written.
            schema::FileState::Database { current: true } => Some(Probe {
                version: schema::SUPPORTED,
            }),
            schema::FileState::Database { current: false } => Some(probe(&path, &opts).await?),
            schema::FileState::Missing => {
                // Created here, 0600 whatever the umask: SQLite gives the
                // -wal and -shm files it creates the database file's mode.
                private_file(&path).map_err(|e| error::map_io(&path, &e))?;
                None
            }
            schema::FileState::Empty => None,
        };

        let mut base = SqliteConnectOptions::new()
            .filename(&path)
            .foreign_keys(true)
            .busy_timeout(opts.busy_timeout)
            // A checkpointed WAL is cut back to this size when it restarts
            // (by default SQLite keeps the file at its largest).
            .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT.to_string());
        if let Some(pages) = opts.max_pages {
            base = base.pragma("max_page_count", pages.to_string());
        }
        let base = base.synchronous(match opts.durability {
            Durability::Full => SqliteSynchronous::Full,
            Durability::Normal => SqliteSynchronous::Normal,
        });
        let writer_opts = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        // Switching to WAL needs an exclusive lock that SQLite's busy
        // handler does not wait for; two processes creating the same store
        // can meet here, so retry.
        let lock_wait = opts.lock_wait;
        let writer_opts = &writer_opts;
        let writer = retrying(&path, lock_wait, || async move {
            Ok(writer::Writer::connect(writer_opts.clone(), lock_wait).await?)
        })
        .await?;
        let readers = (opts.readers > 0).then(|| {
            SqlitePoolOptions::new()
                .max_connections(opts.readers)
                .test_before_acquire(false)
                .after_connect(|c, _| Box::pin(persist_wal(c)))
                .acquire_timeout(opts.lock_wait)
                .connect_lazy_with(base.read_only(true))
        });
        let appender = appender::Appender::new(
            path.clone(),
            appender::Settings {
                synchronous: opts.durability.pragma(),
                busy_timeout: opts.busy_timeout,
                journal_size_limit: JOURNAL_SIZE_LIMIT,
                max_pages: opts.max_pages,
            },
        );
        let store = Self {
            path,
            opts,
            writer,
            readers,
            commits: AtomicU64::new(0),
            appends: crate::group::Appends::new(crate::group::MAX_BATCH),
            appender,
            statuses: crate::group::Statuses::default(),
        };
        if matches!(state, schema::FileState::Database { current: true }) {
            // The probe's checks (identity, quick_check) on the writer: a
            // read, so a file that fails them is left as it was.
            let path = &store.path;
            let opts = &store.opts;
            let writer = &store.writer;
            retrying(path, opts.lock_wait, || async move {
                let mut conn = writer.acquire().await?;
                probe_with(path, opts, &mut conn).await
            })
            .await?;
        }
        if probe.is_none_or(|p| p.version < schema::SUPPORTED) {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// Opens `sqlite://PATH` (`sqlite:///abs/path.db`, `sqlite://rel/path.db`
    /// or `sqlite:PATH`); other URLs are [`StoreError::BadUrl`].
    pub async fn open_url(url: &str, opts: SqliteOptions) -> Result<Self> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .filter(|p| !p.is_empty() && !p.contains('?') && *p != ":memory:")
            .ok_or_else(|| StoreError::BadUrl(url.to_owned()))?;
        Self::open(Path::new(path), opts).await
    }

    /// The store's file (absolute).
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Journal transactions committed (or tried) by this handle so far:
    /// appends that arrive together share one, so under concurrency this
    /// is smaller than the number of appends.
    #[must_use]
    pub fn journal_transactions(&self) -> u64 {
        self.appends.batches()
    }

    /// The options it was opened with.
    #[must_use]
    pub fn options(&self) -> &SqliteOptions {
        &self.opts
    }

    /// Closes every connection (the last one checkpoints the WAL into the
    /// main file). Operations after this fail.
    pub async fn close(&self) {
        if let Some(readers) = &self.readers {
            readers.close().await;
        }
        self.appender.close().await;
        self.writer.close().await;
    }

    /// `PRAGMA integrity_check`: `"ok"`, or SQLite's list of problems,
    /// one per line.
    pub async fn integrity_check(&self) -> Result<String> {
        self.retry(|| async move {
            let rows = sqlx::query("PRAGMA integrity_check")
                .fetch_all(&mut *self.reader().await?)
                .await?;
            let lines = rows
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(lines.join("\n"))
        })
        .await
    }

    /// The schema version of the file (`PRAGMA user_version`).
    pub async fn schema_version(&self) -> Result<i64> {
        self.retry(|| async move {
            Ok(sqlx::query_scalar::<_, i64>("PRAGMA user_version")
                .fetch_one(&mut *self.reader().await?)
                .await?)
        })
        .await
    }

    /// The newest schema version this build understands.
    #[must_use]
    pub fn supported_schema_version() -> i64 {
        schema::SUPPORTED
    }

    /// Runs one read or write attempt under the store's lock-wait policy.
    /// A connection for a read: a reader, or the writer when the store has
    /// no readers.
    async fn reader(&self) -> Result<ReadConn<'_>, sqlx::Error> {
        Ok(match &self.readers {
            Some(pool) => ReadConn::Pooled(pool.acquire().await?),
            None => ReadConn::Writer(self.writer.acquire().await?),
        })
    }

    async fn retry<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Fail>>,
    {
        retrying(&self.path, self.opts.lock_wait, op).await
    }

    /// Brings the schema up to [`schema::SUPPORTED`] in one transaction,
    /// re-reading the version under the write lock (another process may
    /// have migrated meanwhile).
    async fn migrate(&self) -> Result<()> {
        self.retry(|| async move {
            let mut w = self.writer.acquire().await?;
            let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
            let found = read_identity(&mut tx).await?;
            let version = check_identity(&self.path, &found)?;
            for (n, sql) in schema::MIGRATIONS
                .iter()
                .enumerate()
                .skip(usize::try_from(version).unwrap_or(0))
            {
                sqlx::raw_sql(*sql).execute(&mut *tx).await.map_err(|e| {
                    Fail::Store(StoreError::Backend(format!(
                        "migration {} failed: {e}",
                        n + 1
                    )))
                })?;
            }
            let set = format!(
                "PRAGMA application_id = {}; PRAGMA user_version = {}",
                schema::APPLICATION_ID,
                schema::SUPPORTED
            );
            sqlx::raw_sql(AssertSqlSafe(set)).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Counts a journal commit; every `checkpoint_every` commits, runs a
    /// passive checkpoint (it copies what no reader still needs into the
    /// database file and never waits for a lock). SQLite's automatic
    /// checkpoint does the same after a commit that leaves the WAL over
    /// 1,000 pages, but skips it when that commit's connection is busy;
    /// this makes the bound explicit. Failures are ignored: the next one
    /// tries again, and nothing is lost by a WAL that is not yet copied.
    async fn committed(&self) {
        let every = self.opts.checkpoint_every;
        if every == 0 {
            return;
        }
        let n = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(every)
            && let Ok(mut w) = self.writer.acquire().await
        {
            let _ = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_all(&mut *w)
                .await;
        }
    }

    /// A `BadRow` becomes [`StoreError::Corrupt`]: the file holds data this
    /// build cannot read.
    fn bad(&self, e: row::BadRow) -> Fail {
        Fail::Store(StoreError::Corrupt {
            path: self.path.display().to_string(),
            reason: e.0,
        })
    }

    fn run_from(&self, r: &sqlx::sqlite::SqliteRow) -> Result<Run, Fail> {
        Run::try_from(RunRow::from_row(r)?).map_err(|e| self.bad(e))
    }

    fn entry_from(&self, r: &sqlx::sqlite::SqliteRow) -> Result<Entry, Fail> {
        Entry::try_from(EntryRow::from_row(r)?).map_err(|e| self.bad(e))
    }

    fn gate_from(&self, r: &sqlx::sqlite::SqliteRow) -> Result<Gate, Fail> {
        Gate::try_from(GateRow::from_row(r)?).map_err(|e| self.bad(e))
    }
}

/// `(application_id, user_version, number of schema objects)`.
type Identity = (i64, i64, i64);

async fn read_identity(conn: &mut SqliteConnection) -> Result<Identity, sqlx::Error> {
    let app = sqlx::query_scalar::<_, i64>("PRAGMA application_id")
        .fetch_one(&mut *conn)
        .await?;
    let version = sqlx::query_scalar::<_, i64>("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await?;
    let objects = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sqlite_schema")
        .fetch_one(&mut *conn)
        .await?;
    Ok((app, version, objects))
}

/// The schema version of a spes store, or why the file is not one we may use.
fn check_identity(path: &Path, &(app, version, objects): &Identity) -> Result<i64, StoreError> {
    let shown = path.display().to_string();
    if app == schema::APPLICATION_ID {
        if version > schema::SUPPORTED {
            return Err(StoreError::NewerSchema {
                path: shown,
                found: version,
                supported: schema::SUPPORTED,
            });
        }
        return Ok(version);
    }
    if app == 0 && version == 0 && objects == 0 {
        return Ok(0); // an empty database: ours to initialise
    }
    Err(StoreError::NotAStore {
        path: shown,
        reason: format!(
            "it is a SQLite database of another program (application_id {app:#x}, user_version {version}, {objects} schema objects)"
        ),
    })
}

/// Looks at an existing file through a read-only connection that sets no
/// journal mode, so a refused file is never written to.
async fn probe(path: &Path, opts: &SqliteOptions) -> Result<Probe> {
    let probe_opts = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(opts.busy_timeout);
    let probe_opts = &probe_opts;
    retrying(path, opts.lock_wait, || async move {
        let mut conn = SqliteConnection::connect_with(probe_opts).await?;
        let outcome = probe_with(path, opts, &mut conn).await;
        conn.close().await.ok();
        outcome
    })
    .await
}

async fn probe_with(
    path: &Path,
    opts: &SqliteOptions,
    conn: &mut SqliteConnection,
) -> Result<Probe, Fail> {
    let identity = read_identity(conn).await?;
    let version = check_identity(path, &identity)?;
    if opts.quick_check_on_open {
        let rows = sqlx::query("PRAGMA quick_check")
            .fetch_all(&mut *conn)
            .await?;
        let problems = rows
            .iter()
            .filter_map(|r| r.try_get::<String, _>(0).ok())
            .filter(|l| l != "ok")
            .take(5)
            .collect::<Vec<_>>();
        if !problems.is_empty() {
            return Err(Fail::Store(StoreError::Corrupt {
                path: path.display().to_string(),
                reason: problems.join("; "),
            }));
        }
    }
    Ok(Probe { version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_decides_what_may_be_opened() {
        let p = Path::new("/s.db");
        assert_eq!(check_identity(p, &(0, 0, 0)).unwrap(), 0);
        assert_eq!(
            check_identity(p, &(schema::APPLICATION_ID, 1, 7)).unwrap(),
            1
        );
        assert!(matches!(
            check_identity(p, &(schema::APPLICATION_ID, schema::SUPPORTED + 1, 7)),
            Err(StoreError::NewerSchema { found, .. }) if found == schema::SUPPORTED + 1
        ));
        assert!(matches!(
            check_identity(p, &(0, 0, 3)),
            Err(StoreError::NotAStore { .. })
        ));
        assert!(matches!(
            check_identity(p, &(42, 0, 0)),
            Err(StoreError::NotAStore { .. })
        ));
    }

    /// A store that schema 3 wrote (entries keyed by (run_id, seq)) keeps
    /// every entry, in seq order, through migration 4; each run goes on
    /// numbering after its last seq, through an append and a gate decision;
    /// a run created after the migration starts at 1; a key taken before
    /// the migration is still taken.
    #[tokio::test]
    async fn a_journal_from_schema_3_keeps_its_entries_and_their_numbering() {
        use crate::{Appended, NewGate, RunId, RunStore as _};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spes.db");
        let (a, b) = (RunId::new(), RunId::new());
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.pragma_update(None, "journal_mode", "WAL").unwrap();
            for sql in &schema::MIGRATIONS[..3] {
                c.execute_batch(sql).unwrap();
            }
            c.execute_batch(&format!(
                "PRAGMA application_id = {}; PRAGMA user_version = 3",
                schema::APPLICATION_ID
            ))
            .unwrap();
            for run in [a, b] {
                c.execute(
                    "INSERT INTO runs (id, workflow_name, workflow_path, workflow_hash, workflow_source, \
                     pins, inputs, status, created_at, updated_at) VALUES (?1, 'w', '/w.yaml', 'h', 'src', \
                     '[]', '{}', 'running', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')",
                    [run.to_string()],
                )
                .unwrap();
            }
            // Interleaved, and keys that sort against their seqs.
            for (run, seq, key) in [
                (a, 1, "z"),
                (b, 1, "y"),
                (a, 2, "m"),
                (b, 2, "a"),
                (a, 3, "b"),
            ] {
                c.execute(
                    "INSERT INTO entries (run_id, seq, key, kind, payload, recorded_at) \
                     VALUES (?1, ?2, ?3, 'model', ?4, '2026-01-01T00:00:00.000000Z')",
                    rusqlite::params![run.to_string(), seq, key, format!("{{\"n\":{seq}}}")],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(&path, SqliteOptions::default())
            .await
            .unwrap();
        assert_eq!(store.schema_version().await.unwrap(), schema::SUPPORTED);
        let keys = |v: Vec<crate::Entry>| v.into_iter().map(|e| (e.seq, e.key)).collect::<Vec<_>>();
        let owned = |v: &[(i64, &str)]| {
            v.iter()
                .map(|(s, k)| (*s, (*k).to_owned()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(store.entries(&a).await.unwrap()),
            owned(&[(1, "z"), (2, "m"), (3, "b")])
        );
        assert_eq!(
            keys(store.entries(&b).await.unwrap()),
            owned(&[(1, "y"), (2, "a")])
        );
        let payload = serde_json::json!({"n": 4});
        assert_eq!(
            store.append(&a, "c", "model", &payload).await.unwrap(),
            Appended::New(4)
        );
        // A key taken before the migration is still taken.
        assert!(matches!(
            store.append(&b, "y", "model", &payload).await.unwrap(),
            Appended::Existing(e) if e.seq == 1 && e.payload == serde_json::json!({"n": 1})
        ));
        store
            .open_gate(&NewGate {
                run_id: b,
                key: "ok?".into(),
                kind: "approval".into(),
                request: serde_json::json!({}),
                deadline: None,
            })
            .await
            .unwrap();
        store
            .decide_gate(&b, "ok?", &serde_json::json!({"approved": true}))
            .await
            .unwrap();
        assert_eq!(
            keys(store.entries(&b).await.unwrap()),
            owned(&[(1, "y"), (2, "a"), (3, "ok?")])
        );
        assert_eq!(
            keys(store.entries_after(&a, 2, 10).await.unwrap()),
            owned(&[(3, "b"), (4, "c")])
        );
        let new = crate::testing::sample_run();
        store.create_run(&new).await.unwrap();
        assert_eq!(
            store
                .append(&new.id, "first", "model", &payload)
                .await
                .unwrap(),
            Appended::New(1)
        );
        assert_eq!(
            keys(store.entries(&new.id).await.unwrap()),
            owned(&[(1, "first")])
        );
        store.close().await;
    }

    #[test]
    fn durability_parses() {
        assert_eq!("FULL".parse::<Durability>().unwrap(), Durability::Full);
        assert_eq!("normal".parse::<Durability>().unwrap(), Durability::Normal);
        assert!("off".parse::<Durability>().is_err());
    }
}
