//! The journal's append path: a thread of its own holding a plain SQLite
//! connection (rusqlite) to the store's file.
//!
//! Through sqlx, a lone append (`BEGIN IMMEDIATE; INSERT ... RETURNING;
//! COMMIT`, one command) is one message to sqlx's connection thread and
//! one message back for every statement's result and every row, each a
//! wake-up of the waiting task. Measured on this project's machines (2
//! cores, a VM), that machinery cost about four times the SQL itself:
//! 60–75 µs per append with `synchronous=NORMAL`, against 15 µs for the
//! same statements as one job on a thread of our own. Here a batch of
//! appends is one job: sent to the thread, run there as one transaction,
//! answered once.
//!
//! The thread starts with the first job (a command that never appends
//! starts none) and opens its connection then; it runs jobs in order and
//! ends when the store closes. A job ends its transaction before it
//! returns (COMMIT, or ROLLBACK on any failure); a connection that is
//! still inside a transaction after a job all the same (its ROLLBACK
//! failed) or whose job panicked is closed, which rolls back what it held,
//! and the next job opens a new one. A caller that stops waiting does not
//! stop its job: the transaction still commits or rolls back whole.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

/// How the journal thread's connection is set up (as the writer's).
#[derive(Debug, Clone)]
pub(super) struct Settings {
    /// `PRAGMA synchronous` (`FULL`, `NORMAL`).
    pub(super) synchronous: &'static str,
    pub(super) busy_timeout: Duration,
    pub(super) journal_size_limit: u64,
    /// `PRAGMA max_page_count`, when set.
    pub(super) max_pages: Option<u32>,
}

/// The journal thread's side: its connection, opened when a job first
/// needs it.
pub(super) struct Lite {
    path: PathBuf,
    settings: Settings,
    conn: Option<Connection>,
}

impl Lite {
    /// The connection, opened now if there is none.
    pub(super) fn conn(&mut self) -> rusqlite::Result<&mut Connection> {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => open(&self.path, &self.settings)?,
        };
        Ok(self.conn.insert(conn))
    }

    /// After each job: a connection still inside a transaction is rolled
    /// back, or closed when even that fails.
    fn settle(&mut self) {
        if let Some(c) = &self.conn
            && !c.is_autocommit()
            && (c.execute_batch("ROLLBACK").is_err() || !c.is_autocommit())
        {
            self.conn = None;
        }
    }
}

fn open(path: &Path, s: &Settings) -> rusqlite::Result<Connection> {
    // The file exists (the writer created and migrated it) and is in WAL
    // mode already (a setting kept in the file).
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(s.busy_timeout)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", s.synchronous)?;
    conn.pragma_update(
        None,
        "journal_size_limit",
        i64::try_from(s.journal_size_limit).unwrap_or(i64::MAX),
    )?;
    if let Some(pages) = s.max_pages {
        conn.pragma_update(None, "max_page_count", pages)?;
    }
    // SAFETY: the handle is this open connection's, used on this thread
    // only, for the duration of the call.
    #[allow(unsafe_code)]
    let rc = unsafe { super::persist_wal_raw(conn.handle()) };
    if rc != rusqlite::ffi::SQLITE_OK {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rc),
            Some("SQLite refused to keep its WAL file".into()),
        ));
    }
    Ok(conn)
}

type Job = Box<dyn FnOnce(&mut Lite) + Send>;

enum State {
    /// No job yet: no thread.
    Idle,
    Running {
        jobs: mpsc::Sender<Job>,
        /// Answered when the thread has closed its connection.
        closed: oneshot::Receiver<()>,
    },
    Closed,
}

/// The journal thread is gone (the store was closed, or the thread could
/// not be started).
#[derive(Debug)]
pub(super) struct Gone(pub(super) String);

/// See the [module docs](self).
pub(super) struct Appender {
    path: PathBuf,
    settings: Settings,
    state: Mutex<State>,
}

impl std::fmt::Debug for Appender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appender")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Appender {
    pub(super) fn new(path: PathBuf, settings: Settings) -> Self {
        Self {
            path,
            settings,
            state: Mutex::new(State::Idle),
        }
    }

    /// Runs `f` on the journal thread and returns what it returned.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Lite) -> T + Send + 'static,
    ) -> Result<T, Gone> {
        let (tx, rx) = oneshot::channel();
        self.send(Box::new(move |lite: &mut Lite| {
            let out = f(lite);
            lite.settle();
            let _ = tx.send(out);
        }))?;
        rx.await
            .map_err(|_| Gone("the journal thread dropped the job (it panicked)".into()))
    }

    fn send(&self, job: Job) -> Result<(), Gone> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(*state, State::Idle) {
            *state = self.start()?;
        }
        match &*state {
            State::Running { jobs, .. } => jobs
                .send(job)
                .map_err(|_| Gone("the journal thread has stopped".into())),
            State::Idle | State::Closed => Err(Gone("the store is closed".into())),
        }
    }

    fn start(&self) -> Result<State, Gone> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (closed_tx, closed) = oneshot::channel();
        let mut lite = Lite {
            path: self.path.clone(),
            settings: self.settings.clone(),
            conn: None,
        };
        std::thread::Builder::new()
            .name("spes-journal".into())
            .spawn(move || {
                for job in rx {
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        job(&mut lite);
                    }));
                    if ran.is_err() {
                        // Whatever the job left open is rolled back.
                        lite.conn = None;
                    }
                }
                drop(lite);
                let _ = closed_tx.send(());
            })
            .map_err(|e| Gone(format!("cannot start the journal thread: {e}")))?;
        Ok(State::Running { jobs, closed })
    }

    /// Lets the thread finish its jobs, close its connection and end;
    /// later jobs fail.
    pub(super) async fn close(&self) {
        let state = std::mem::replace(
            &mut *self.state.lock().unwrap_or_else(PoisonError::into_inner),
            State::Closed,
        );
        if let State::Running { jobs, closed } = state {
            drop(jobs);
            let _ = closed.await;
        }
    }
}
