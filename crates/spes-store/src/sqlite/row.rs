//! Database rows (private) and their conversion into domain types.
//!
//! Ids are stored as 32 lowercase hex digits (the `RunId` display form, so
//! prefixes typed by users match directly), JSON as `TEXT` (never a column
//! type with numeric affinity, which would turn `"12"` into `12`), and
//! times as fixed-width RFC 3339 UTC text with microseconds, which sorts
//! correctly as text and reads well in the `sqlite3` shell.

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{ComponentPin, Entry, Gate, Run, RunId, RunStatus};

/// A row that does not convert into its domain type.
#[derive(Debug)]
pub(super) struct BadRow(pub(super) String);

/// Now, at the precision the store keeps (microseconds).
pub(super) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Formats a time for storage.
pub(super) fn fmt_time(t: DateTime<Utc>) -> String {
    use chrono::{Datelike as _, Timelike as _};
    use std::fmt::Write as _;
    let micros = t.nanosecond() / 1000;
    // Written field by field: chrono's `format` parses its pattern at every
    // call, which cost a durable step more than its time to write. Years
    // past four digits and leap seconds take chrono's own path.
    if !(0..=9999).contains(&t.year()) || micros >= 1_000_000 {
        return t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    }
    let mut s = String::with_capacity(27);
    let _ = write!(
        s,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    s
}

fn parse_time(column: &str, s: &str) -> Result<DateTime<Utc>, BadRow> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| BadRow(format!("{column} `{s}` is not a time: {e}")))
}

fn parse_json<T: serde::de::DeserializeOwned>(column: &str, s: &str) -> Result<T, BadRow> {
    serde_json::from_str(s).map_err(|e| BadRow(format!("{column} is not valid JSON: {e}")))
}

fn parse_id(s: &str) -> Result<RunId, BadRow> {
    s.parse().map_err(|e| BadRow(format!("run id `{s}`: {e}")))
}

/// The `runs` table.
#[derive(Debug)]
pub(super) struct RunRow {
    id: String,
    workflow_name: String,
    workflow_path: String,
    workflow_hash: String,
    workflow_source: String,
    pins: String,
    inputs: String,
    settings: String,
    status: String,
    output: Option<String>,
    error: Option<String>,
    owner: Option<String>,
    created_at: String,
    updated_at: String,
}

/// Columns of [`RunRow`], in order.
pub(super) const RUN_COLUMNS: &str = "id, workflow_name, workflow_path, workflow_hash, workflow_source, pins, inputs, \
     settings, status, output, error, owner, created_at, updated_at";

impl RunRow {
    pub(super) fn from_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            workflow_name: row.try_get("workflow_name")?,
            workflow_path: row.try_get("workflow_path")?,
            workflow_hash: row.try_get("workflow_hash")?,
            workflow_source: row.try_get("workflow_source")?,
            pins: row.try_get("pins")?,
            inputs: row.try_get("inputs")?,
            settings: row.try_get("settings")?,
            status: row.try_get("status")?,
            output: row.try_get("output")?,
            error: row.try_get("error")?,
            owner: row.try_get("owner")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

impl TryFrom<RunRow> for Run {
    type Error = BadRow;
    fn try_from(r: RunRow) -> Result<Self, BadRow> {
        Ok(Self {
            id: parse_id(&r.id)?,
            workflow_name: r.workflow_name,
            workflow_path: r.workflow_path,
            workflow_hash: r.workflow_hash,
            workflow_source: r.workflow_source,
            pins: parse_json::<Vec<ComponentPin>>("pins", &r.pins)?,
            inputs: parse_json("inputs", &r.inputs)?,
            settings: parse_json("settings", &r.settings)?,
            status: r.status.parse::<RunStatus>().map_err(BadRow)?,
            output: r
                .output
                .as_deref()
                .map(|o| parse_json("output", o))
                .transpose()?,
            error: r.error,
            owner: r.owner,
            created_at: parse_time("created_at", &r.created_at)?,
            updated_at: parse_time("updated_at", &r.updated_at)?,
        })
    }
}

/// The `entries` table.
#[derive(Debug)]
pub(super) struct EntryRow {
    run_id: String,
    seq: i64,
    key: String,
    kind: String,
    payload: String,
    recorded_at: String,
}

/// Columns of [`EntryRow`], in order.
pub(super) const ENTRY_COLUMNS: &str = "run_id, seq, key, kind, payload, recorded_at";

impl EntryRow {
    pub(super) fn from_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            run_id: row.try_get("run_id")?,
            seq: row.try_get("seq")?,
            key: row.try_get("key")?,
            kind: row.try_get("kind")?,
            payload: row.try_get("payload")?,
            recorded_at: row.try_get("recorded_at")?,
        })
    }

    /// From a row of [`ENTRY_COLUMNS`] on the journal's connection.
    pub(super) fn from_lite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            run_id: row.get(0)?,
            seq: row.get(1)?,
            key: row.get(2)?,
            kind: row.get(3)?,
            payload: row.get(4)?,
            recorded_at: row.get(5)?,
        })
    }
}

impl TryFrom<EntryRow> for Entry {
    type Error = BadRow;
    fn try_from(r: EntryRow) -> Result<Self, BadRow> {
        Ok(Self {
            run_id: parse_id(&r.run_id)?,
            seq: r.seq,
            key: r.key,
            kind: r.kind,
            payload: parse_json("payload", &r.payload)?,
            recorded_at: parse_time("recorded_at", &r.recorded_at)?,
        })
    }
}

/// The `gates` table.
#[derive(Debug)]
pub(super) struct GateRow {
    run_id: String,
    key: String,
    kind: String,
    request: String,
    deadline: Option<String>,
    opened_at: String,
    decision: Option<String>,
    decided_at: Option<String>,
}

/// Columns of [`GateRow`], in order.
pub(super) const GATE_COLUMNS: &str =
    "run_id, key, kind, request, deadline, opened_at, decision, decided_at";

impl GateRow {
    pub(super) fn from_row(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            run_id: row.try_get("run_id")?,
            key: row.try_get("key")?,
            kind: row.try_get("kind")?,
            request: row.try_get("request")?,
            deadline: row.try_get("deadline")?,
            opened_at: row.try_get("opened_at")?,
            decision: row.try_get("decision")?,
            decided_at: row.try_get("decided_at")?,
        })
    }
}

impl TryFrom<GateRow> for Gate {
    type Error = BadRow;
    fn try_from(r: GateRow) -> Result<Self, BadRow> {
        Ok(Self {
            run_id: parse_id(&r.run_id)?,
            key: r.key,
            kind: r.kind,
            request: parse_json("request", &r.request)?,
            deadline: r
                .deadline
                .as_deref()
                .map(|d| parse_time("deadline", d))
                .transpose()?,
            opened_at: parse_time("opened_at", &r.opened_at)?,
            decision: r
                .decision
                .as_deref()
                .map(|d| parse_json("decision", d))
                .transpose()?,
            decided_at: r
                .decided_at
                .as_deref()
                .map(|d| parse_time("decided_at", d))
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_times_are_fixed_width_and_round_trip() {
        let t = DateTime::parse_from_rfc3339("2025-01-02T03:04:05.000007Z")
            .unwrap()
            .with_timezone(&Utc);
        let s = fmt_time(t);
        assert_eq!(s, "2025-01-02T03:04:05.000007Z");
        assert_eq!(parse_time("t", &s).unwrap(), t);
        let whole = DateTime::parse_from_rfc3339("2025-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(fmt_time(whole), "2025-01-02T03:04:05.000000Z");
    }

    #[test]
    fn times_are_written_as_chrono_writes_them() {
        use chrono::TimeZone as _;
        let chrono_way = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let at = |y, mo, d, h, mi, s| Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap();
        let times = [
            at(2026, 12, 7, 3, 4, 5),
            at(1, 1, 1, 0, 0, 0),
            at(9999, 12, 31, 23, 59, 59) + chrono::Duration::microseconds(999_999),
            at(10000, 1, 1, 0, 0, 0),
            at(2016, 12, 31, 23, 59, 59) + chrono::Duration::nanoseconds(123_456_789),
            // A leap second.
            chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
                .unwrap()
                .and_hms_micro_opt(23, 59, 59, 1_500_000)
                .unwrap()
                .and_utc(),
            now(),
        ];
        for t in times {
            assert_eq!(fmt_time(t), chrono_way(t));
        }
    }

    #[test]
    fn bad_json_is_a_bad_row() {
        assert!(parse_json::<serde_json::Value>("payload", "{nope").is_err());
    }
}
