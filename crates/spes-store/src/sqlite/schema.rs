//! The schema, its migrations, and the checks made before SQLite touches a file.
//!
//! The schema version lives in `PRAGMA user_version` and the file is
//! marked as a spes store with `PRAGMA application_id`; both sit in the
//! database header, so they change atomically with the migration that
//! sets them. Migrations are plain SQL, applied in order inside one
//! `BEGIN IMMEDIATE` transaction; a file whose version is newer than
//! [`SUPPORTED`] is refused before anything is written to it.

use std::io::Read;
use std::path::Path;

use crate::StoreError;

/// `PRAGMA application_id` of a spes store: "spes" in ASCII.
pub(super) const APPLICATION_ID: i64 = 0x7370_6573;

/// Migration `n` (0-based) takes a store from version `n` to `n + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: runs, their journals and their gates.
    r"
CREATE TABLE runs (
    id              TEXT PRIMARY KEY NOT NULL,
    workflow_name   TEXT NOT NULL,
    workflow_path   TEXT NOT NULL,
    workflow_hash   TEXT NOT NULL,
    workflow_source TEXT NOT NULL,
    pins            TEXT NOT NULL,            -- JSON array of component pins
    inputs          TEXT NOT NULL,            -- JSON
    status          TEXT NOT NULL CHECK (status IN
                      ('pending','running','waiting','paused','completed','failed','cancelled')),
    output          TEXT,                     -- JSON
    error           TEXT,
    owner           TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX runs_by_created ON runs (created_at DESC);
CREATE INDEX runs_by_status_created ON runs (status, created_at DESC);

CREATE TABLE entries (
    run_id      TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    key         TEXT NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,                -- JSON
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (run_id, seq),
    UNIQUE (run_id, key)
);

CREATE TABLE gates (
    run_id     TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    kind       TEXT NOT NULL,
    request    TEXT NOT NULL,                 -- JSON
    deadline   TEXT,
    opened_at  TEXT NOT NULL,
    decision   TEXT,                          -- JSON
    decided_at TEXT,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX gates_pending ON gates (opened_at) WHERE decided_at IS NULL;
",
    // 2: what a run was started with beyond its files and inputs.
    r"
ALTER TABLE runs ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';  -- JSON
",
    // 3: the response cache (answers of temperature-0 calls, by request hash).
    r"
CREATE TABLE response_cache (
    key        TEXT PRIMARY KEY NOT NULL,     -- hex SHA-256 of provider, model, request
    provider   TEXT NOT NULL,
    model      TEXT,
    response   TEXT NOT NULL,                 -- JSON
    created_at TEXT NOT NULL,
    hits       INTEGER NOT NULL DEFAULT 0
);
",
    // 4: a journal entry's row is keyed by one integer, its run's number
    // times 2^32 plus its seq. A run's entries then lie in one range of the
    // table's own key, in order, and an append writes the table and one
    // index, (run_id, key), and no second index (run_id, seq): each page a
    // commit changes is one more WAL frame to write and sync. Counted in
    // the WAL (the append's statements replayed with 600-byte payloads):
    // 4.1 frames per append before, 2.9 after (a bare two-tree table: 2.2).
    r"
ALTER TABLE runs ADD COLUMN num INTEGER;  -- unique; set by create_run
UPDATE runs SET num = rowid;
CREATE UNIQUE INDEX runs_by_num ON runs (num);
CREATE TABLE entries_v4 (
    id          INTEGER PRIMARY KEY,          -- runs.num * 4294967296 + seq
    run_id      TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL CHECK (seq BETWEEN 1 AND 4294967295),
    key         TEXT NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,                -- JSON
    recorded_at TEXT NOT NULL,
    UNIQUE (run_id, key)
);
INSERT INTO entries_v4 (id, run_id, seq, key, kind, payload, recorded_at)
    SELECT r.num * 4294967296 + e.seq, e.run_id, e.seq, e.key, e.kind, e.payload, e.recorded_at
    FROM entries e JOIN runs r ON r.id = e.run_id;
DROP TABLE entries;
ALTER TABLE entries_v4 RENAME TO entries;
",
];

/// The `id`s of run `?1`'s entries, in seq order: `id` is the run's
/// number times 2^32 plus the seq (migration 4).
pub(super) const RUN_ENTRY_IDS: &str = "id BETWEEN (SELECT num FROM runs WHERE id = ?1) * 4294967296 \
     AND (SELECT num FROM runs WHERE id = ?1) * 4294967296 + 4294967295";

/// Run `?1`'s number times 2^32 (`base`) and its next seq (`next`), as
/// one row (none when the run does not exist): an entry's `id` is `base +
/// seq`.
pub(super) const NEXT_ENTRY: &str = "SELECT r.status AS status, r.num * 4294967296 AS base, \
     COALESCE((SELECT e.seq FROM entries e WHERE e.id BETWEEN r.num * 4294967296 \
     AND r.num * 4294967296 + 4294967295 ORDER BY e.id DESC LIMIT 1), 0) + 1 AS next \
     FROM runs r WHERE r.id = ?1";

/// Why run `run` cannot number an entry: it has no `runs.num` (a store
/// changed by hand, as every run of schema 4 has one).
pub(super) fn no_number(run: &str) -> String {
    format!("run {run} has no number (runs.num), which every run of schema 4 has")
}

/// The newest schema version this build understands.
pub(super) const SUPPORTED: i64 = MIGRATIONS.len() as i64;

/// What is at the store's path before we open it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileState {
    /// Nothing: a new store will be created.
    Missing,
    /// An empty file: SQLite treats it as an empty database.
    Empty,
    /// A file with a SQLite header. `current` when the header alone shows
    /// a spes store of this version already in WAL mode with no WAL left
    /// to recover: opening it for writing then writes nothing before a
    /// write is asked for, so the read-only probe may be skipped.
    Database { current: bool },
}

/// Looks at the file without letting SQLite near it: a truncated file or
/// one with a foreign header must never be "opened" (SQLite might take a
/// 100-byte stub for an empty database and start writing to it).
pub(super) fn inspect(path: &Path) -> Result<FileState, StoreError> {
    let shown = || path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileState::Missing),
        Err(e) => return Err(super::error::map_io(path, &e)),
    };
    if meta.is_dir() {
        return Err(StoreError::NotAStore {
            path: shown(),
            reason: "it is a directory".into(),
        });
    }
    if meta.len() == 0 {
        return Ok(FileState::Empty);
    }
    let mut header = Vec::with_capacity(100);
    std::fs::File::open(path)
        .and_then(|f| f.take(100).read_to_end(&mut header))
        .map_err(|e| super::error::map_io(path, &e))?;
    let wal = wal_path(path);
    let wal_pending = std::fs::metadata(wal).is_ok_and(|m| m.len() > 0);
    check_header(&header, meta.len(), wal_pending).map_err(|reason| StoreError::NotAStore {
        path: shown(),
        reason,
    })?;
    Ok(FileState::Database {
        current: !wal_pending && header_is_current(&header),
    })
}

/// The header (first 100 bytes) of a spes store of [`SUPPORTED`] version
/// in WAL mode: file format versions 2/2 (bytes 18, 19), `user_version`
/// (bytes 60..64) and `application_id` (bytes 68..72), big-endian.
pub(super) fn header_is_current(header: &[u8]) -> bool {
    let be = |r: std::ops::Range<usize>| {
        header
            .get(r)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| i64::from(i32::from_be_bytes(b)))
    };
    header.get(18..20) == Some(&[2, 2][..])
        && be(60..64) == Some(SUPPORTED)
        && be(68..72) == Some(APPLICATION_ID)
}

/// The `-wal` file beside a database.
pub(super) fn wal_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    name.into()
}

/// Checks a database header (the first 100 bytes) against the file length.
/// <https://www.sqlite.org/fileformat.html#the_database_header>
pub(super) fn check_header(header: &[u8], len: u64, wal_pending: bool) -> Result<(), String> {
    const MAGIC: &[u8; 16] = b"SQLite format 3\0";
    if !header.starts_with(MAGIC) {
        return Err(
            "it does not start with the SQLite header (not a database, or overwritten)".into(),
        );
    }
    let (Some(ps), Some(counter), Some(pages), Some(valid_for)) = (
        header.get(16..18),
        header.get(24..28),
        header.get(28..32),
        header.get(92..96),
    ) else {
        return Err(format!(
            "it is only {len} bytes long: the header is cut short (truncated?)"
        ));
    };
    let page_size = match u32::from(u16::from_be_bytes([ps[0], ps[1]])) {
        1 => 65_536,
        n => n,
    };
    if !(512..=65_536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!(
            "its header names an impossible page size ({page_size})"
        ));
    }
    let page_size = u64::from(page_size);
    if len < page_size || !len.is_multiple_of(page_size) {
        return Err(format!(
            "it is {len} bytes long, not a whole number of {page_size}-byte pages (truncated?)"
        ));
    }
    // The page count is only trustworthy when its "valid-for" counter
    // matches, and not while a WAL may still hold pages a crash
    // interrupted mid-checkpoint.
    let count = u64::from(u32::from_be_bytes([pages[0], pages[1], pages[2], pages[3]]));
    if !wal_pending && counter == valid_for && count > 0 && len < count * page_size {
        return Err(format!(
            "its header says {count} pages, but the file holds only {} (truncated?)",
            len / page_size
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(page_size: u16, pages: u32) -> Vec<u8> {
        let mut h = vec![0u8; 100];
        h[..16].copy_from_slice(b"SQLite format 3\0");
        h[16..18].copy_from_slice(&page_size.to_be_bytes());
        h[24..28].copy_from_slice(&7u32.to_be_bytes());
        h[28..32].copy_from_slice(&pages.to_be_bytes());
        h[92..96].copy_from_slice(&7u32.to_be_bytes());
        h
    }

    #[test]
    fn only_a_current_spes_store_in_wal_mode_skips_the_probe() {
        let current = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut h = header(4096, 3);
            h[18] = 2;
            h[19] = 2;
            h[60..64].copy_from_slice(&(SUPPORTED as u32).to_be_bytes());
            h[68..72].copy_from_slice(&(APPLICATION_ID as u32).to_be_bytes());
            f(&mut h);
            header_is_current(&h)
        };
        assert!(current(&|_| {}));
        // A rollback-journal file (WAL mode not set yet), an older or newer
        // version, another application, a short header: the probe decides.
        assert!(!current(&|h| h[18] = 1));
        assert!(!current(&|h| h[60..64].copy_from_slice(&1u32.to_be_bytes())));
        assert!(!current(&|h| {
            h[60..64].copy_from_slice(&((SUPPORTED + 1) as u32).to_be_bytes());
        }));
        assert!(!current(
            &|h| h[68..72].copy_from_slice(&42u32.to_be_bytes())
        ));
        assert!(!current(&|h| h.truncate(64)));
    }

    #[test]
    fn a_whole_file_passes() {
        check_header(&header(4096, 3), 3 * 4096, false).unwrap();
        check_header(&header(1, 2), 2 * 65_536, false).unwrap();
    }

    #[test]
    fn garbage_and_truncation_are_named() {
        let e = check_header(b"hello world, this is not sqlite", 31, false).unwrap_err();
        assert!(e.contains("SQLite header"), "{e}");
        let e = check_header(&header(4096, 3)[..40], 40, false).unwrap_err();
        assert!(e.contains("cut short"), "{e}");
        let e = check_header(&header(4096, 3), 100, false).unwrap_err();
        assert!(e.contains("whole number"), "{e}");
        let e = check_header(&header(4096, 3), 2 * 4096, false).unwrap_err();
        assert!(e.contains("says 3 pages"), "{e}");
        let e = check_header(&header(1000, 3), 3000, false).unwrap_err();
        assert!(e.contains("page size"), "{e}");
    }

    #[test]
    fn a_pending_wal_excuses_a_short_file() {
        check_header(&header(4096, 3), 2 * 4096, true).unwrap();
    }
}
