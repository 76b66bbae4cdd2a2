//! Turning SQLite and sqlx failures into [`StoreError`]s.
//!
//! SQLite reports damage and access problems through result codes
//! (<https://www.sqlite.org/rescode.html>); each family maps to one
//! distinct variant so the user gets a clear message and a hint, and the
//! engine can tell a busy database (worth waiting for) from a broken one.

use std::path::Path;
use std::time::Duration;

use crate::StoreError;

// Primary result codes (the low byte of an extended code).
const SQLITE_PERM: i32 = 3;
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_READONLY: i32 = 8;
const SQLITE_IOERR: i32 = 10;
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_CONSTRAINT: i32 = 19;
const SQLITE_AUTH: i32 = 23;
const SQLITE_NOTADB: i32 = 26;
/// `SQLITE_IOERR_SHORT_READ`: the file ends before a page it should hold.
const SQLITE_IOERR_SHORT_READ: i32 = SQLITE_IOERR | (2 << 8);
/// `SQLITE_CONSTRAINT_FOREIGNKEY`.
pub(super) const SQLITE_CONSTRAINT_FOREIGNKEY: i32 = SQLITE_CONSTRAINT | (3 << 8);

/// What kind of failure a SQLite result code stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// Another connection holds a lock: wait and try again.
    Busy,
    /// Not a database at all (bad header, truncated).
    NotADb,
    /// A database whose pages are damaged.
    Corrupt,
    /// The file or its directory cannot be read or written.
    Permission,
    /// SQLite could not open the file (permissions, a directory, ...).
    CantOpen,
    /// The disk is full.
    Full,
    /// A constraint failed (the caller decides what it means).
    Constraint,
    /// Anything else.
    Other,
}

/// Classifies an extended SQLite result code.
pub(super) fn classify(code: i32) -> Class {
    if code == SQLITE_IOERR_SHORT_READ {
        return Class::Corrupt;
    }
    match code & 0xff {
        SQLITE_BUSY | SQLITE_LOCKED => Class::Busy,
        SQLITE_NOTADB => Class::NotADb,
        SQLITE_CORRUPT => Class::Corrupt,
        SQLITE_PERM | SQLITE_READONLY | SQLITE_AUTH => Class::Permission,
        SQLITE_CANTOPEN => Class::CantOpen,
        SQLITE_FULL => Class::Full,
        SQLITE_CONSTRAINT => Class::Constraint,
        _ => Class::Other,
    }
}

/// The extended result code of a database error, if it is one.
pub(super) fn code_of(err: &sqlx::Error) -> Option<i32> {
    err.as_database_error()
        .and_then(|e| e.code())
        .and_then(|c| c.parse().ok())
}

/// True when the error means "someone else holds the lock": retry.
pub(super) fn is_busy(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::PoolTimedOut)
        || code_of(err).is_some_and(|c| classify(c) == Class::Busy)
}

/// Maps a sqlx error met while using the store at `path` (after waiting
/// `waited` in total) to a [`StoreError`].
pub(super) fn map(path: &Path, err: &sqlx::Error, waited: Duration) -> StoreError {
    let shown = path.display().to_string();
    let waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
    if let sqlx::Error::PoolTimedOut = err {
        return StoreError::Locked {
            path: shown,
            waited_ms,
        };
    }
    if let sqlx::Error::Io(io) = err {
        return map_io(path, io);
    }
    let Some(db) = err.as_database_error() else {
        return StoreError::Backend(err.to_string());
    };
    by_code(path, code_of(err).unwrap_or(0), db.message(), waited_ms)
}

/// The extended result code of an error from the journal's
/// connection, if SQLite gave one.
pub(super) fn lite_code(err: &rusqlite::Error) -> Option<i32> {
    match err {
        rusqlite::Error::SqliteFailure(e, _) => Some(e.extended_code),
        _ => None,
    }
}

/// [`is_busy`] for the journal's connection.
pub(super) fn lite_is_busy(err: &rusqlite::Error) -> bool {
    lite_code(err).is_some_and(|c| classify(c) == Class::Busy)
}

/// [`map`] for an error from the journal's connection.
pub(super) fn map_lite(path: &Path, err: &rusqlite::Error, waited: Duration) -> StoreError {
    let waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
    match err {
        rusqlite::Error::SqliteFailure(e, message) => {
            let fallback = e.to_string();
            let message = message.as_deref().unwrap_or(&fallback);
            by_code(path, e.extended_code, message, waited_ms)
        }
        other => StoreError::Backend(format!("{}: {other}", path.display())),
    }
}

/// The [`StoreError`] for SQLite's result `code` and `message`.
fn by_code(path: &Path, code: i32, message: &str, waited_ms: u64) -> StoreError {
    let shown = path.display().to_string();
    match classify(code) {
        Class::Busy => StoreError::Locked {
            path: shown,
            waited_ms,
        },
        Class::NotADb => StoreError::NotAStore {
            path: shown,
            reason: format!("{message} (SQLite code {code})"),
        },
        Class::Corrupt => StoreError::Corrupt {
            path: shown,
            reason: format!("{message} (SQLite code {code})"),
        },
        Class::Permission => StoreError::PermissionDenied {
            path: shown,
            reason: format!("{message} (SQLite code {code})"),
        },
        Class::CantOpen => cant_open(path, message, code),
        Class::Full => StoreError::Backend(format!("{shown}: the disk is full ({message})")),
        Class::Constraint | Class::Other => {
            StoreError::Backend(format!("{shown}: {message} (SQLite code {code})"))
        }
    }
}

/// Maps an I/O error on the store's file or directory.
pub(super) fn map_io(path: &Path, err: &std::io::Error) -> StoreError {
    let shown = path.display().to_string();
    match err.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            StoreError::PermissionDenied {
                path: shown,
                reason: err.to_string(),
            }
        }
        std::io::ErrorKind::NotADirectory
        | std::io::ErrorKind::IsADirectory
        | std::io::ErrorKind::AlreadyExists => StoreError::NotAStore {
            path: shown,
            reason: err.to_string(),
        },
        _ => StoreError::Backend(format!("{shown}: {err}")),
    }
}

/// `SQLITE_CANTOPEN` says little; look at the file to say more.
fn cant_open(path: &Path, message: &str, code: i32) -> StoreError {
    let shown = path.display().to_string();
    if path.is_dir() {
        return StoreError::NotAStore {
            path: shown,
            reason: "it is a directory".into(),
        };
    }
    if path.exists()
        && let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
    {
        return map_io(path, &e);
    }
    StoreError::PermissionDenied {
        path: shown,
        reason: format!(
            "SQLite cannot open it or create its -wal/-shm files beside it: {message} (SQLite code {code})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_codes_map_to_distinct_classes() {
        assert_eq!(classify(5), Class::Busy);
        assert_eq!(classify(5 | (2 << 8)), Class::Busy); // BUSY_SNAPSHOT
        assert_eq!(classify(6), Class::Busy);
        assert_eq!(classify(26), Class::NotADb);
        assert_eq!(classify(11), Class::Corrupt);
        assert_eq!(classify(SQLITE_IOERR_SHORT_READ), Class::Corrupt);
        assert_eq!(classify(8), Class::Permission);
        assert_eq!(classify(8 | (3 << 8)), Class::Permission); // READONLY_ROLLBACK
        assert_eq!(classify(3), Class::Permission);
        assert_eq!(classify(23), Class::Permission);
        assert_eq!(classify(14), Class::CantOpen);
        assert_eq!(classify(13), Class::Full);
        assert_eq!(classify(SQLITE_CONSTRAINT | (8 << 8)), Class::Constraint); // CONSTRAINT_UNIQUE
        assert_eq!(classify(10), Class::Other);
        assert_eq!(classify(1), Class::Other);
    }

    #[test]
    fn io_permission_errors_are_permission_denied() {
        let path = Path::new("/x/spes.db");
        for kind in [
            std::io::ErrorKind::PermissionDenied,
            std::io::ErrorKind::ReadOnlyFilesystem,
        ] {
            let e = map_io(path, &std::io::Error::from(kind));
            assert!(
                matches!(e, StoreError::PermissionDenied { .. }),
                "{kind:?}: {e:?}"
            );
        }
        let e = map_io(
            path,
            &std::io::Error::from(std::io::ErrorKind::NotADirectory),
        );
        assert!(matches!(e, StoreError::NotAStore { .. }), "{e:?}");
    }

    #[test]
    fn pool_timeout_is_locked() {
        let e = map(
            Path::new("/x.db"),
            &sqlx::Error::PoolTimedOut,
            Duration::from_millis(1500),
        );
        assert!(
            matches!(
                e,
                StoreError::Locked {
                    waited_ms: 1500,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn cant_open_on_a_directory_is_not_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let e = cant_open(dir.path(), "unable to open database file", 14);
        assert!(matches!(e, StoreError::NotAStore { .. }), "{e:?}");
    }
}
