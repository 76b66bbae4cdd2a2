//! The PostgreSQL schema and its migrations.
//!
//! The version lives in the one-row table `spes_meta`, in the schema the
//! connection's `search_path` names first. Migrations are plain SQL,
//! applied in order inside one transaction that first takes a
//! transaction-scoped advisory lock, so that workers starting together
//! migrate once. A database whose version is newer than [`SUPPORTED`] is
//! refused before anything is written to it.
//!
//! Ids and keys are `TEXT COLLATE "C"`: byte order, so that a prefix is a
//! range scan on the primary key (run-id prefixes, `KEY/map[` prefixes).
//! JSON is `TEXT`, not `jsonb`: `jsonb` reorders keys, drops duplicate
//! keys, normalises numbers and refuses `\u0000`; the journal must give
//! back exactly what was recorded.

/// Key of the advisory lock held while migrating ("spes" in ASCII).
pub(super) const MIGRATION_LOCK: i64 = 0x7370_6573;

/// Migration `n` (0-based) takes a database from version `n` to `n + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: runs, journals, gates, and the work queue.
    r#"
CREATE TABLE runs (
    id              TEXT COLLATE "C" PRIMARY KEY,
    workflow_name   TEXT NOT NULL,
    workflow_path   TEXT NOT NULL,
    workflow_hash   TEXT NOT NULL,
    workflow_source TEXT NOT NULL,
    pins            TEXT NOT NULL,
    inputs          TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN
                      ('pending','running','waiting','paused','completed','failed','cancelled')),
    output          TEXT,
    error           TEXT,
    owner           TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    ord             BIGSERIAL NOT NULL
);
CREATE INDEX runs_by_created ON runs (created_at DESC, ord DESC);
CREATE INDEX runs_by_status_created ON runs (status, created_at DESC, ord DESC);

CREATE TABLE entries (
    run_id      TEXT COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    key         TEXT COLLATE "C" NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, seq),
    UNIQUE (run_id, key)
);

CREATE TABLE gates (
    run_id     TEXT COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key        TEXT COLLATE "C" NOT NULL,
    kind       TEXT NOT NULL,
    request    TEXT NOT NULL,
    deadline   TIMESTAMPTZ,
    opened_at  TIMESTAMPTZ NOT NULL,
    decision   TEXT,
    decided_at TIMESTAMPTZ,
    ord        BIGSERIAL NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX gates_pending ON gates (opened_at, ord) WHERE decided_at IS NULL;

-- The work queue: a whole run (key '') or one map item (key 'KEY/map[I]').
CREATE TABLE tasks (
    id               BIGSERIAL PRIMARY KEY,
    run_id           TEXT COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    kind             TEXT NOT NULL CHECK (kind IN ('run','item')),
    key              TEXT COLLATE "C" NOT NULL,
    payload          TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('ready','claimed','done','failed')),
    owner            TEXT,
    epoch            BIGINT NOT NULL DEFAULT 0,
    lease_expires_at TIMESTAMPTZ,
    error            TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (run_id, key)
);
CREATE INDEX tasks_ready ON tasks (kind, id) WHERE state = 'ready';
CREATE INDEX tasks_leased ON tasks (kind, lease_expires_at) WHERE state = 'claimed';
"#,
    // 2: small states shared by every worker (circuit breakers), changed by compare-and-set.
    r#"
CREATE TABLE shared_state (
    key        TEXT COLLATE "C" PRIMARY KEY,
    value      TEXT NOT NULL,
    version    BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"#,
    // 3: the open items of a map found without counting its finished ones.
    r#"
CREATE INDEX tasks_open ON tasks (run_id, key) WHERE state IN ('ready','claimed');
"#,
    // 4: what a run was started with beyond its files and inputs.
    r#"
ALTER TABLE runs ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
"#,
    // 5: the number of a run's last journal entry, kept on the run, so that
    // an append is one statement (one round trip) that bumps it under the
    // run's row lock.
    r#"
ALTER TABLE runs ADD COLUMN last_seq BIGINT NOT NULL DEFAULT 0;
UPDATE runs SET last_seq = COALESCE((SELECT MAX(seq) FROM entries e WHERE e.run_id = runs.id), 0);
"#,
    // 6: the response cache (answers of temperature-0 calls, by request hash).
    r#"
CREATE TABLE response_cache (
    key        TEXT COLLATE "C" PRIMARY KEY,
    provider   TEXT NOT NULL,
    model      TEXT,
    response   TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    hits       BIGINT NOT NULL DEFAULT 0
);
"#,
    // 7: rate limits shared by every worker (see `crate::limits`): a GCRA
    // bucket per provider and limit, and a provider's concurrency slots.
    r#"
CREATE TABLE rate_buckets (
    provider TEXT COLLATE "C" NOT NULL,
    bucket   TEXT NOT NULL CHECK (bucket IN ('rpm','tpm')),
    tat      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (provider, bucket)
);
CREATE TABLE rate_slots (
    provider   TEXT COLLATE "C" NOT NULL,
    slot       INTEGER NOT NULL,
    holder     TEXT,
    expires_at TIMESTAMPTZ,
    PRIMARY KEY (provider, slot)
);
"#,
];

/// The newest schema version this build understands.
pub(super) const SUPPORTED: i64 = MIGRATIONS.len() as i64;
