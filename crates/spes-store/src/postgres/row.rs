//! Database rows (private) and their conversion into domain types.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::{ComponentPin, Entry, Gate, Run, RunId, RunStatus, StoreError};

/// Columns of a run, in order.
pub(super) const RUN_COLUMNS: &str = "id, workflow_name, workflow_path, workflow_hash, workflow_source, pins, inputs, \
     settings, status, output, error, owner, created_at, updated_at";

/// Columns of an entry.
pub(super) const ENTRY_COLUMNS: &str = "run_id, seq, key, kind, payload, recorded_at";

/// Columns of a gate.
pub(super) const GATE_COLUMNS: &str =
    "run_id, key, kind, request, deadline, opened_at, decision, decided_at";

fn bad(shown: &str, what: String) -> StoreError {
    StoreError::Corrupt {
        path: shown.to_owned(),
        reason: what,
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(
    shown: &str,
    column: &str,
    s: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| bad(shown, format!("{column} is not valid JSON: {e}")))
}

pub(super) fn parse_id(shown: &str, s: &str) -> Result<RunId, StoreError> {
    s.parse()
        .map_err(|e| bad(shown, format!("run id `{s}`: {e}")))
}

/// Reads a column, mapping a type mismatch to a backend error.
fn get<'r, T>(row: &'r PgRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(col)
        .map_err(|e| StoreError::Backend(format!("column {col}: {e}")))
}

pub(super) fn run(shown: &str, r: &PgRow) -> Result<Run, StoreError> {
    let id: String = get(r, "id")?;
    let pins: String = get(r, "pins")?;
    let inputs: String = get(r, "inputs")?;
    let settings: String = get(r, "settings")?;
    let status: String = get(r, "status")?;
    let output: Option<String> = get(r, "output")?;
    Ok(Run {
        id: parse_id(shown, &id)?,
        workflow_name: get(r, "workflow_name")?,
        workflow_path: get(r, "workflow_path")?,
        workflow_hash: get(r, "workflow_hash")?,
        workflow_source: get(r, "workflow_source")?,
        pins: parse_json::<Vec<ComponentPin>>(shown, "pins", &pins)?,
        inputs: parse_json(shown, "inputs", &inputs)?,
        settings: parse_json(shown, "settings", &settings)?,
        status: status.parse::<RunStatus>().map_err(|e| bad(shown, e))?,
        output: output
            .as_deref()
            .map(|o| parse_json(shown, "output", o))
            .transpose()?,
        error: get(r, "error")?,
        owner: get(r, "owner")?,
        created_at: get::<DateTime<Utc>>(r, "created_at")?,
        updated_at: get::<DateTime<Utc>>(r, "updated_at")?,
    })
}

pub(super) fn entry(shown: &str, r: &PgRow) -> Result<Entry, StoreError> {
    let id: String = get(r, "run_id")?;
    let payload: String = get(r, "payload")?;
    Ok(Entry {
        run_id: parse_id(shown, &id)?,
        seq: get(r, "seq")?,
        key: get(r, "key")?,
        kind: get(r, "kind")?,
        payload: parse_json(shown, "payload", &payload)?,
        recorded_at: get(r, "recorded_at")?,
    })
}

pub(super) fn gate(shown: &str, r: &PgRow) -> Result<Gate, StoreError> {
    let id: String = get(r, "run_id")?;
    let request: String = get(r, "request")?;
    let decision: Option<String> = get(r, "decision")?;
    Ok(Gate {
        run_id: parse_id(shown, &id)?,
        key: get(r, "key")?,
        kind: get(r, "kind")?,
        request: parse_json(shown, "request", &request)?,
        deadline: get(r, "deadline")?,
        opened_at: get(r, "opened_at")?,
        decision: decision
            .as_deref()
            .map(|d| parse_json(shown, "decision", d))
            .transpose()?,
        decided_at: get(r, "decided_at")?,
    })
}

/// JSON as stored.
pub(super) fn json(v: &serde_json::Value) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("cannot encode JSON: {e}")))
}
