//! The store's one writer connection, owned outright rather than pooled.
//!
//! A sqlx pool checks every connection back in with a ping (a round trip
//! to the connection's thread) in a spawned task, and the next
//! `acquire` of a one-connection pool waits for that ping: measured on
//! this project's benchmark, a one-connection pool made the store's
//! append statement cost 1.4–2.4× what it costs on a raw connection
//! (`cargo bench -p spes-engine --bench durable -- commit`). One
//! connection behind a fair async mutex gives the same queueing without
//! that round trip.
//!
//! Journal appends are written by a connection of their own (see
//! `appender`), with this one held meanwhile so that writes still queue
//! here one at a time.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

/// See the [module docs](self).
pub(crate) struct Writer {
    /// `None` once closed.
    conn: tokio::sync::Mutex<Option<SqliteConnection>>,
    /// How long [`Writer::acquire`] waits for the connection.
    wait: Duration,
    closed: AtomicBool,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Connects now (so that a file that cannot be opened for writing
    /// fails here, at open).
    pub(crate) async fn connect(
        opts: SqliteConnectOptions,
        wait: Duration,
    ) -> Result<Self, sqlx::Error> {
        let mut conn = SqliteConnection::connect_with(&opts).await?;
        super::persist_wal(&mut conn).await?;
        Ok(Self {
            conn: tokio::sync::Mutex::new(Some(conn)),
            wait,
            closed: AtomicBool::new(false),
        })
    }

    /// The connection, once every earlier holder has let it go (in the
    /// order they asked). Past the lock wait: `PoolTimedOut`, which the
    /// store reports as [`crate::StoreError::Locked`] like a busy file.
    pub(crate) async fn acquire(&self) -> Result<WriterConn<'_>, sqlx::Error> {
        // Free (no holder, no one waiting: tokio hands a released lock to
        // its first waiter): taken without arming a timer.
        let guard = match self.conn.try_lock() {
            Ok(guard) => guard,
            Err(_) => tokio::time::timeout(self.wait, self.conn.lock())
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)?,
        };
        if self.closed.load(Ordering::Acquire) || guard.is_none() {
            return Err(sqlx::Error::PoolClosed);
        }
        Ok(WriterConn { guard })
    }

    /// Closes the connection (a clean close checkpoints the WAL); every
    /// later [`Writer::acquire`] fails.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let conn = self.conn.lock().await.take();
        if let Some(conn) = conn {
            let _ = conn.close().await;
        }
    }
}

/// The writer connection while one caller holds it.
pub(crate) struct WriterConn<'a> {
    guard: tokio::sync::MutexGuard<'a, Option<SqliteConnection>>,
}

// `guard` holds Some from `acquire` until the handle drops (only `close`
// takes it, and never while a handle is out), so the `expect`s below
// cannot fire.
#[allow(clippy::expect_used)]
impl Deref for WriterConn<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        self.guard.as_ref().expect("the writer connection is held")
    }
}

#[allow(clippy::expect_used)]
impl DerefMut for WriterConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.guard.as_mut().expect("the writer connection is held")
    }
}
