//! Operations on stored runs that every front door calls (the CLI today;
//! the HTTP server and tool integrations next): answering a human gate,
//! pausing, cancelling, listing what waits for a human, and applying gate
//! deadlines that passed. The rules live here, once: which answers a gate
//! takes, what a decision records, which statuses a pause or a cancel
//! leaves, that a cancel closes the run's gates, and that a deadline
//! decides before any human answer is looked at.
//!
//! Every operation takes the time `now` from the caller (tests pass a
//! fixed clock; front doors pass `Utc::now()`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use spes_core::lifecycle::{self, RunEvent};
use spes_store::{
    Decided, Gate, GateFilter, Run, RunId, RunPatch, RunStatus, RunStore, StoreError,
};

/// Why an operation did nothing.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The store failed (or the run is unknown or ambiguous).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request does not fit the run or gate as it is now (a closed or
    /// decided gate, an answer the gate does not take, a finished run).
    #[error("{0}")]
    Refused(String),
}

/// A human's answer at a gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Approve (approval and section gates; the first variation at a choose gate).
    Approve {
        /// Recorded with the approval.
        comments: String,
    },
    /// Reject, saying why.
    Reject {
        /// Why.
        reason: String,
    },
    /// Ask for a revision (approval and section gates that allow one).
    Revise {
        /// What should change.
        comments: String,
        /// Suggested changes.
        suggest: String,
    },
    /// Pick variation `n` (from 1) at a choose gate.
    Choose {
        /// The variation.
        n: u64,
    },
}

impl Decision {
    /// The action word recorded (`approve`, `reject`, `revise`, `choose`).
    #[must_use]
    pub fn action(&self) -> &'static str {
        match self {
            Self::Approve { .. } => "approve",
            Self::Reject { .. } => "reject",
            Self::Revise { .. } => "revise",
            Self::Choose { .. } => "choose",
        }
    }

    /// The decision as the journal records it, with who decided.
    #[must_use]
    pub fn to_json(&self, by: &str) -> Value {
        match self {
            Self::Approve { comments } => {
                json!({ "action": "approve", "comments": comments, "by": by })
            }
            Self::Reject { reason } => json!({ "action": "reject", "comments": reason, "by": by }),
            Self::Revise { comments, suggest } => {
                json!({ "action": "revise", "comments": comments, "suggest": suggest, "by": by })
            }
            Self::Choose { n } => json!({ "action": "choose", "choice": n, "by": by }),
        }
    }

    /// Whether `gate` takes this answer; the refusal says what it takes.
    pub fn fits(&self, gate: &Gate) -> Result<(), OpError> {
        let actions: Vec<&str> = gate
            .request
            .get("actions")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let ok = match self {
            Self::Approve { .. } => actions.contains(&"approve") || gate.kind == "choose",
            Self::Reject { .. } => true,
            Self::Revise { .. } => actions.contains(&"revise"),
            Self::Choose { n } => {
                if gate.kind != "choose" {
                    return Err(OpError::Refused(format!(
                        "gate `{}` is an {} gate; `choose` answers choose gates",
                        gate.key, gate.kind
                    )));
                }
                let count = gate
                    .request
                    .get("variations")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len) as u64;
                if *n == 0 || *n > count {
                    return Err(OpError::Refused(format!(
                        "gate `{}` offers variations 1 to {count}",
                        gate.key
                    )));
                }
                true
            }
        };
        if ok {
            Ok(())
        } else {
            Err(OpError::Refused(format!(
                "gate `{}` ({}) does not take `{}`; it takes: {}",
                gate.key,
                gate.kind,
                self.action(),
                actions.join(", ")
            )))
        }
    }
}

/// The decision a gate's deadline records: `then` is the gate's
/// `on_timeout` action (`approve`, `reject`, or `timeout` for steps).
#[must_use]
pub fn deadline_decision(then: &str) -> Value {
    json!({ "action": then, "timeout": true, "by": "deadline" })
}

/// The decision that closes a gate of a cancelled run.
fn closed_decision() -> Value {
    json!({ "action": "closed", "by": "cancel", "reason": "the run was cancelled" })
}

/// Why a decided gate takes no answer, in words.
#[must_use]
pub fn decided_why(gate: &Gate) -> String {
    let d = gate.decision.as_ref().unwrap_or(&Value::Null);
    let at = gate
        .decided_at
        .map(|t| t.format(" at %Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default();
    match (
        d.get("action").and_then(Value::as_str),
        d.get("by").and_then(Value::as_str),
    ) {
        (Some("closed"), _) => format!("gate `{}` is closed: the run was cancelled", gate.key),
        (Some(action), Some("deadline")) => format!(
            "gate `{}` was decided by its deadline{at} ({action}); a late answer is not taken",
            gate.key
        ),
        (Some(action), by) => format!(
            "gate `{}` was already decided{at}: {action}{}",
            gate.key,
            by.map(|b| format!(" by {b}")).unwrap_or_default()
        ),
        _ => format!("gate `{}` was already decided{at}: {d}", gate.key),
    }
}

/// A deadline that [`apply_deadlines`] applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// The run.
    pub run: RunId,
    /// The gate.
    pub gate: String,
    /// What the deadline decided (`approve`, `reject`, `timeout`).
    pub action: String,
}

/// Decides every open gate (of `run`, or of every run) whose deadline is
/// at or before `now`, with the gate's timeout decision (`by: deadline`).
/// Exactly once: deciding is a compare-and-set, so concurrent callers (two
/// workers, a worker and a CLI command) record one decision. On a store
/// with a work queue, deciding readies the run's task for the workers.
/// Gates opened without a recorded `on_timeout` (by older versions) are
/// left for the run's next execution, which applies their deadline.
pub async fn apply_deadlines(
    store: &dyn RunStore,
    run: Option<&RunId>,
    now: DateTime<Utc>,
) -> Result<Vec<Fired>, StoreError> {
    let open = store
        .gates(&GateFilter {
            run_id: run.copied(),
            pending_only: true,
        })
        .await?;
    let mut fired = Vec::new();
    for g in open {
        let (Some(deadline), Some(then)) = (
            g.deadline,
            g.request.get("on_timeout").and_then(Value::as_str),
        ) else {
            continue;
        };
        if deadline > now {
            continue;
        }
        if store
            .decide_gate(&g.run_id, &g.key, &deadline_decision(then))
            .await?
            == Decided::Now
        {
            tracing::info!(run = %g.run_id, gate = %g.key, action = then, "gate deadline passed");
            fired.push(Fired {
                run: g.run_id,
                gate: g.key,
                action: then.to_owned(),
            });
        }
    }
    Ok(fired)
}

/// What [`decide`] recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The run.
    pub run: RunId,
    /// The gate answered.
    pub gate: String,
    /// Whether workers continue the run (a queued run on a shared store);
    /// otherwise `spes resume` (or the engine's resume) continues it.
    pub queued: bool,
}

/// Answers a gate of `run` (an id or a unique prefix): the gate named by
/// `gate` (its key, or the end of it after a `/`), or the run's only open
/// gate. Due deadlines are applied first, so an answer after a deadline is
/// refused, naming it. `by` is who decided (recorded with the decision).
pub async fn decide(
    store: &Arc<dyn RunStore>,
    run: &str,
    gate: Option<&str>,
    decision: &Decision,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Recorded, OpError> {
    let run = store.find_run(run).await?;
    apply_deadlines(store.as_ref(), Some(&run.id), now).await?;
    let all = store
        .gates(&GateFilter {
            run_id: Some(run.id),
            pending_only: false,
        })
        .await?;
    let chosen = pick_gate(&run, &all, gate)?;
    if chosen.decision.is_some() {
        return Err(OpError::Refused(format!(
            "{} (run {})",
            decided_why(chosen),
            run.id
        )));
    }
    if matches!(run.status, RunStatus::Cancelled | RunStatus::Completed) {
        return Err(OpError::Refused(format!(
            "run {} is {}; its gates take no answer",
            run.id, run.status
        )));
    }
    decision.fits(chosen)?;
    match store
        .decide_gate(&run.id, &chosen.key, &decision.to_json(by))
        .await?
    {
        Decided::Now => Ok(Recorded {
            run: run.id,
            gate: chosen.key.clone(),
            queued: match store.queue() {
                Some(q) => q.task_state(&run.id, "").await?.is_some(),
                None => false,
            },
        }),
        Decided::Already {
            decision,
            decided_at,
        } => {
            let mut g = chosen.clone();
            g.decision = Some(decision);
            g.decided_at = Some(decided_at);
            Err(OpError::Refused(format!(
                "{} (run {})",
                decided_why(&g),
                run.id
            )))
        }
    }
}

fn pick_gate<'a>(run: &Run, all: &'a [Gate], gate: Option<&str>) -> Result<&'a Gate, OpError> {
    let keys = |gs: &[&Gate]| {
        gs.iter()
            .map(|x| x.key.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(g) = gate {
        let matches: Vec<&Gate> = all
            .iter()
            .filter(|x| x.key == g || x.key.ends_with(&format!("/{g}")))
            .collect();
        return match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(OpError::Refused(format!(
                "run {} has no gate `{g}`; its gates: {}",
                run.id,
                keys(&all.iter().collect::<Vec<_>>())
            ))),
            many => Err(OpError::Refused(format!(
                "`{g}` matches several gates: {}; give the whole id",
                keys(many)
            ))),
        };
    }
    let mut open: Vec<&Gate> = all.iter().filter(|x| x.decision.is_none()).collect();
    open.sort_by(|a, b| a.key.cmp(&b.key));
    match open.as_slice() {
        [one] => Ok(one),
        [] => Err(OpError::Refused(match all.last() {
            Some(last) => format!("run {} has no open gate; {}", run.id, decided_why(last)),
            None => format!("run {} has no gate waiting for a human", run.id),
        })),
        many => Err(OpError::Refused(format!(
            "run {} has {} open gates: {}; pick one with --gate",
            run.id,
            many.len(),
            keys(many)
        ))),
    }
}

/// Gates waiting for a human (of every run, or of `run`), oldest first,
/// after applying the deadlines that passed.
pub async fn pending(
    store: &dyn RunStore,
    run: Option<&RunId>,
    now: DateTime<Utc>,
) -> Result<Vec<Gate>, StoreError> {
    apply_deadlines(store, run, now).await?;
    store
        .gates(&GateFilter {
            run_id: run.copied(),
            pending_only: true,
        })
        .await
}

/// What a pause or cancel did.
#[derive(Debug, Clone)]
pub struct Changed {
    /// The run as it was.
    pub before: Run,
    /// The run now.
    pub after: Run,
    /// Gates closed (a cancel closes every open gate of the run).
    pub closed: Vec<String>,
}

/// Applies `event` to `run` through the lifecycle: refused in words when
/// the run's status does not allow it, else a compare-and-set in the store
/// (which refuses if another process changed the status meanwhile).
pub async fn apply(
    store: &dyn RunStore,
    run: &Run,
    event: RunEvent,
    patch: RunPatch,
) -> Result<Run, OpError> {
    lifecycle::next(run.status, event)
        .map_err(|m| OpError::Refused(format!("run {}: {m}", run.id)))?;
    Ok(store
        .transition(&run.id, event.from(), event.to(), patch)
        .await?)
}

/// Pauses `run` (an id or unique prefix): it stops before its next model
/// call; a resume continues it.
pub async fn pause(store: &dyn RunStore, run: &str) -> Result<Changed, OpError> {
    let before = store.find_run(run).await?;
    let after = apply(store, &before, RunEvent::Pause, RunPatch::default()).await?;
    Ok(Changed {
        before,
        after,
        closed: Vec::new(),
    })
}

/// Cancels `run` for good and closes its open gates: they leave the
/// pending list, and an answer to one is refused, naming the cancel.
pub async fn cancel(store: &dyn RunStore, run: &str) -> Result<Changed, OpError> {
    let before = store.find_run(run).await?;
    let after = apply(store, &before, RunEvent::Cancel, RunPatch::default()).await?;
    let open = store
        .gates(&GateFilter {
            run_id: Some(before.id),
            pending_only: true,
        })
        .await?;
    let mut closed = Vec::new();
    for g in open {
        if store
            .decide_gate(&before.id, &g.key, &closed_decision())
            .await?
            == Decided::Now
        {
            closed.push(g.key);
        }
    }
    Ok(Changed {
        before,
        after,
        closed,
    })
}

/// A resume of a run queued for the workers of a shared store: back to
/// `pending` (error and owner cleared) with its task ready, for a worker
/// to continue. `Ok(false)` when the run is not a queued one (it is resumed
/// in the caller's process, as usual); refused when the run is finished.
pub async fn requeue(store: &dyn RunStore, run: &Run) -> Result<bool, OpError> {
    let Some(q) = store.queue() else {
        return Ok(false);
    };
    if q.task_state(&run.id, "").await?.is_none() {
        return Ok(false);
    }
    if run.status.is_final() {
        return Err(OpError::Refused(format!(
            "run {} is {}; there is nothing to resume",
            run.id, run.status
        )));
    }
    // A stopped run goes back to the workers; a pending or running one is
    // theirs already (its task is made ready below).
    if lifecycle::next(run.status, RunEvent::Requeue).is_ok() {
        apply(
            store,
            run,
            RunEvent::Requeue,
            RunPatch {
                error: Some(None),
                owner: Some(None),
                ..RunPatch::default()
            },
        )
        .await?;
    }
    q.enqueue_run(&run.id).await?;
    Ok(true)
}

/// Who is deciding, by default: the operating-system user.
#[must_use]
pub fn default_reviewer() -> String {
    ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The status a front door shows for `run`: its stored status, except
/// that a `running` run with no live owner shows as `interrupted` (its
/// process was stopped with Ctrl-C, killed, or crashed; a resume takes it
/// over). An owner on another machine is taken to be alive.
#[must_use]
pub fn shown_status(run: &Run) -> String {
    crate::view::ShownStatus::of(run).as_str().to_owned()
}

/// Gives back the runs this process executes (status `running`, owner
/// this process) when it is interrupted (Ctrl-C): each stays `running`
/// with no owner, which front doors show as `interrupted` and a resume
/// takes over at once. Returns their ids.
pub async fn release_own_runs(store: &dyn RunStore) -> Result<Vec<RunId>, StoreError> {
    let me = crate::durable::this_owner();
    let mut released = Vec::new();
    for r in store.list_runs(Some(RunStatus::Running), 1000).await? {
        if r.owner.as_deref() != Some(me.as_str()) {
            continue;
        }
        // Owned by this live process: no one else may take it meanwhile.
        let ev = RunEvent::Release;
        store
            .transition(
                &r.id,
                ev.from(),
                ev.to(),
                RunPatch {
                    owner: Some(None),
                    ..RunPatch::default()
                },
            )
            .await?;
        released.push(r.id);
    }
    Ok(released)
}
