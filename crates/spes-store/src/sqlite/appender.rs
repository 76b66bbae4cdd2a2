//! The journal's append path: a plain SQLite connection (rusqlite) to the
//! store's file, used by one job at a time.
//!
//! Through sqlx, a lone append (`BEGIN IMMEDIATE`, its statements and
//! `COMMIT`, one command) is one message to sqlx's connection thread and
//! one message back for every statement's result and every row, each a
//! wake-up of the waiting task. Measured on this project's machines (2
//! cores, a VM), that machinery cost about four times the SQL itself:
//! 60–75 µs per append with `synchronous=NORMAL`, against 15 µs for the
//! same statements run by the thread that holds the connection. Here a
//! batch of appends is one job, run as one transaction on this
//! connection.
//!
//! Where a job runs:
//! - On a multi-thread tokio runtime (the CLI's, the server's), on the
//!   calling thread itself, inside `block_in_place`: the runtime moves
//!   that thread's other tasks to another thread meanwhile. A sequential
//!   step's commit then makes no hand-over between threads at all (on
//!   this project's 2-core VMs, a durable step of a sequential chain took
//!   about a tenth less time than with a thread of the store's own,
//!   `synchronous=FULL`, runs interleaved).
//! - On any other runtime (a current-thread one), on tokio's blocking
//!   pool (`spawn_blocking`): one hand-over each way.
//!
//! The connection opens with the first job (a command that never appends
//! opens none) and closes with the store. A job ends its transaction
//! before it returns (COMMIT, or ROLLBACK on any failure); a connection
//! that is still inside a transaction after a job all the same (its
//! ROLLBACK failed) or whose job panicked is closed, which rolls back what
//! it held, and the next job opens a new one. Once started, a job runs to
//! its end: a caller that stops waiting does not stop it (a blocking pool
//! job is not cancelled with the future that awaits it), so the
//! transaction commits or rolls back whole.
//!
//! With `synchronous=FULL` a job also writes the WAL ahead of its frames
//! (see [`Ahead`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// How the journal's connection is set up (as the writer's).
#[derive(Debug, Clone)]
pub(super) struct Settings {
    /// `PRAGMA synchronous` (`FULL`, `NORMAL`).
    pub(super) synchronous: &'static str,
    pub(super) busy_timeout: Duration,
    pub(super) journal_size_limit: u64,
    /// `PRAGMA max_page_count`, when set.
    pub(super) max_pages: Option<u32>,
}

/// The journal's connection, opened when a job first needs it.
pub(super) struct Lite {
    path: PathBuf,
    settings: Settings,
    conn: Option<Connection>,
    ahead: Ahead,
}

/// The WAL written ahead of its frames: zeros at its end, so that a
/// commit's frames land on blocks the file already has.
///
/// A commit whose frames extend the WAL makes its fsync write the file's
/// new size and block allocation too. On this project's machines (ext4 in
/// a VM) that cost a new store about 100 µs more per commit than a WAL
/// at its working size, and every command starts with an empty WAL
/// (SQLite cuts it to nothing when the last connection closes).
/// PostgreSQL zero-fills its WAL segments for the same reason. SQLite's
/// own `SQLITE_FCNTL_CHUNK_SIZE` does not cover the WAL, and space that
/// is only reserved (`fallocate`) still costs a metadata write at the
/// first write into it; zeros actually written do not.
///
/// Zeros are written only with the write lock held (inside `BEGIN
/// IMMEDIATE`, before the transaction writes its frames), and only past
/// the file's end: no connection, in this process or another, can be
/// writing frames there then. SQLite reads a WAL's frames up to the first
/// one whose checksum fails, so zeros past the last frame are never read
/// as data; a later commit overwrites them.
#[derive(Debug, Default)]
struct Ahead {
    /// The WAL, opened for writing by the first job on a connection (not
    /// created: SQLite makes it).
    file: Option<std::fs::File>,
    /// Writing ahead stopped (an error) or is off (no fsync at commit).
    off: bool,
    /// The WAL's size when zeros were last written to its end (none yet:
    /// `None`).
    to: Option<u64>,
    /// Bytes of zeros to write next time: doubles from [`AHEAD_MIN`] to
    /// [`AHEAD_MAX`], so that the zeros written stay under the WAL's own
    /// growth, and a short run writes few.
    step: u64,
}

/// The first extension of the WAL (about five journal commits).
const AHEAD_MIN: u64 = 64 << 10;
/// The largest extension: what a run that stops early leaves unused, and
/// what one commit writes in zeros at most (caps of 256 KiB and 4 MiB
/// measured alike, within the noise, on a sequential chain and a map).
const AHEAD_MAX: u64 = 1 << 20;

impl Lite {
    /// The connection, opened now if there is none.
    pub(super) fn conn(&mut self) -> rusqlite::Result<&mut Connection> {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let c = open(&self.path, &self.settings)?;
                // The WAL is opened again too: while this side had no
                // connection, the last one elsewhere may have removed it.
                self.ahead = Ahead::default();
                c
            }
        };
        Ok(self.conn.insert(conn))
    }

    /// `BEGIN IMMEDIATE` on the connection (opened now if there is none),
    /// then the WAL is written ahead if its frames reached the zeros'
    /// end (see [`Ahead`]).
    pub(super) fn begin_immediate(&mut self) -> rusqlite::Result<&mut Connection> {
        self.conn()?
            .prepare_cached("BEGIN IMMEDIATE")?
            .execute([])?;
        self.write_ahead();
        self.conn()
    }

    /// With the write lock held: when the WAL's size is not what zeros
    /// last left it at (frames went past them, or the WAL was cut back),
    /// writes the next extension of zeros at its end. Best effort: an
    /// error stops writing ahead (the commit then extends the WAL itself,
    /// and reports any error of its own).
    fn write_ahead(&mut self) {
        use std::io::Seek as _;
        use std::os::unix::fs::FileExt as _;
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let a = &mut self.ahead;
        if a.off {
            return;
        }
        if a.file.is_none() {
            // With synchronous=NORMAL a commit does not fsync: nothing to
            // gain.
            if self.settings.synchronous != "FULL" {
                a.off = true;
                return;
            }
            let mut wal = self.path.clone().into_os_string();
            wal.push("-wal");
            match std::fs::OpenOptions::new().write(true).open(&wal) {
                Ok(f) => a.file = Some(f),
                Err(e) => {
                    tracing::debug!(target: "spes::store", error = %e, "the WAL is not written ahead: cannot open it");
                    a.off = true;
                    return;
                }
            }
        }
        let Some(file) = &a.file else { return };
        let limit = self.settings.journal_size_limit;
        // The size from the file offset, not fstat: a stat of the file
        // makes the kernel give its next write a fine-grained timestamp
        // (multigrain timestamps), so that the commit's fsync writes the
        // inode too (measured: about 50 µs more per commit here).
        let written = (&*file).seek(std::io::SeekFrom::End(0)).and_then(|len| {
            // Never past `journal_size_limit`, which SQLite cuts the WAL
            // back to when it restarts it.
            let step = a.step.clamp(AHEAD_MIN, AHEAD_MAX);
            let end = (len + step).min(limit.max(len));
            if a.to == Some(len) || end == len {
                return Ok(None);
            }
            let mut at = len;
            while at < end {
                let n = usize::try_from(end - at)
                    .unwrap_or(usize::MAX)
                    .min(ZEROS.len());
                file.write_all_at(&ZEROS[..n], at)?;
                at += n as u64;
            }
            Ok(Some((at, step)))
        });
        match written {
            Ok(Some((to, step))) => {
                a.to = Some(to);
                a.step = (step * 2).min(AHEAD_MAX);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(target: "spes::store", error = %e, "the WAL is no longer written ahead");
                a.off = true;
            }
        }
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

/// The journal's connection is gone (the store was closed), or a job
/// could not run.
#[derive(Debug)]
pub(super) struct Gone(pub(super) String);

/// See the [module docs](self).
pub(super) struct Appender {
    /// `None` once the store is closed.
    slot: Arc<Mutex<Option<Lite>>>,
}

impl std::fmt::Debug for Appender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appender").finish_non_exhaustive()
    }
}

impl Appender {
    pub(super) fn new(path: PathBuf, settings: Settings) -> Self {
        Self {
            slot: Arc::new(Mutex::new(Some(Lite {
                path,
                settings,
                conn: None,
                ahead: Ahead::default(),
            }))),
        }
    }

    /// Runs `f` on the journal's connection and returns what it returned.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Lite) -> T + Send + 'static,
    ) -> Result<T, Gone> {
        let slot = Arc::clone(&self.slot);
        blocking(move || {
            let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
            let lite = slot
                .as_mut()
                .ok_or_else(|| Gone("the store is closed".into()))?;
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(lite))) {
                Ok(out) => {
                    lite.settle();
                    Ok(out)
                }
                Err(_) => {
                    // Whatever the job left open is rolled back.
                    lite.conn = None;
                    Err(Gone("the journal job panicked".into()))
                }
            }
        })
        .await?
    }

    /// Waits for a job under way, then closes the connection; later jobs
    /// fail.
    pub(super) async fn close(&self) {
        let slot = Arc::clone(&self.slot);
        let _ = blocking(move || drop(slot.lock().unwrap_or_else(PoisonError::into_inner).take()))
            .await;
    }
}

/// Runs `job`, which may block, where it costs least (see the [module
/// docs](self)).
async fn blocking<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Result<T, Gone> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => Ok(tokio::task::block_in_place(job)),
        Ok(_) => tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| Gone(format!("the journal job did not finish: {e}"))),
        // Not inside a tokio runtime: nothing else to keep running here.
        Err(_) => Ok(job()),
    }
}
