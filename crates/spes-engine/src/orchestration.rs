//! Orchestration patterns (§9 of the reference) as methods of the
//! interpreter: `map`, `reduce`, `fan_out`, `saga`, `pipeline`,
//! `scatter_gather`. Every effect inside goes through the journal under a
//! stable key; the decisions these patterns take on their own (a saga's
//! failure point, what a scatter-gather kept) are journaled too, so a
//! resumed run takes the same path.

mod flow;
mod map;
pub(crate) use map::distributable;
mod saga;
mod scatter_gather;

use serde_json::Value;
use spes_core::workflow::Loc;

use crate::error::{EngineError, FailureKind};
use crate::journal::Effect;
use crate::run::{Exec, Stop};

pub(crate) fn fail(step: &str, loc: &Loc, kind: FailureKind) -> Stop {
    Stop::Failed(EngineError {
        step: step.to_owned(),
        loc: loc.clone(),
        kind,
    })
}

impl<'e> Exec<'e> {
    /// A fork whose context lacks `key` (which the child never reads).
    pub(crate) fn fork_without(&self, key: &str) -> Self {
        let ctx = self
            .ctx
            .iter()
            .filter(|(k, _)| k.as_str() != key)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.fork_with(ctx)
    }

    /// Takes a child's counters (not its context writes): calls, replays,
    /// cache hits, tokens and cost.
    pub(crate) fn absorb_counters(&mut self, child: &Exec<'_>) {
        self.count_child(child);
    }

    /// The decision recorded under `key`, if any.
    pub(crate) async fn decision_at(&self, key: &str, loc: &Loc) -> Result<Option<Value>, Stop> {
        match self
            .journal
            .get(key)
            .await
            .map_err(|e| fail(key, loc, FailureKind::Journal(e)))?
        {
            Some(Effect::Decision { decision }) => Ok(Some(decision)),
            Some(other) => Err(fail(
                key,
                loc,
                FailureKind::Journal(crate::journal::JournalError::Mismatch(format!(
                    "expected a decision entry here, found a {} entry",
                    other.kind()
                ))),
            )),
            None => Ok(None),
        }
    }

    /// Records a decision (the first commit under `key` wins and is returned).
    pub(crate) async fn record_decision(
        &self,
        key: &str,
        decision: Value,
        loc: &Loc,
    ) -> Result<Value, Stop> {
        match self
            .journal
            .record(key, Effect::Decision { decision })
            .await
            .map_err(|e| e.stop(key, loc))?
        {
            Effect::Decision { decision } => Ok(decision),
            other => Err(fail(
                key,
                loc,
                FailureKind::Journal(crate::journal::JournalError::Mismatch(format!(
                    "expected a decision entry here, found a {} entry",
                    other.kind()
                ))),
            )),
        }
    }

    /// The list under context key `over`.
    pub(crate) fn list_at(&self, over: &str, key: &str, loc: &Loc) -> Result<Vec<Value>, Stop> {
        match self.ctx.get(over) {
            Some(Value::Array(a)) => Ok(a.clone()),
            Some(other) => Err(fail(
                key,
                loc,
                FailureKind::Answer(format!(
                    "`{over}` holds {}, not a list; make the step that writes it produce a list (e.g. transform fn: split or json_parse)",
                    kind_of(other)
                )),
            )),
            None => Err(fail(
                key,
                loc,
                FailureKind::Answer(format!(
                    "`{over}` is not set (the step writing it was skipped?)"
                )),
            )),
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
