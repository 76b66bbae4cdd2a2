//! The run lifecycle: a pure state machine. Stores apply a transition as
//! a compare-and-set (`from` one of [`Transition::from`], to
//! [`Transition::to`]); every status change of the engine, the CLI and
//! the workers is one of these events, so the rules live here once.
//!
//! ```text
//! event       from                                         to          note
//! ──────────  ───────────────────────────────────────────  ──────────  ─────────────────────────────────────────
//! Start       (none)                                       running     a process executes it at once
//! Enqueue     (none)                                       pending     queued for workers (`run --detach` on PostgreSQL)
//! Resume      pending, waiting, paused, failed, running    running     running only when its owner is gone (checked by
//!                                                                      the caller, claimed by compare-and-set on the owner)
//! Take        pending, waiting, running                    running     a worker takes a queued run (its lease fences it)
//! Requeue     waiting, paused, failed                      pending     `resume` of a queued run: the workers continue it
//! Suspend     running                                      waiting     stopped at a human gate; no process holds it
//! Complete    running                                      completed   final
//! Fail        running                                      failed      a step failed; `resume` retries it
//! Abandon     pending, waiting, running                    failed      a worker cannot execute it (its workflow is gone,
//!                                                                      its journal does not fit): it would fail again
//! Pause       pending, running, waiting                    paused      a running run stops before its next model call
//! Cancel      pending, running, waiting, paused, failed    cancelled   final; the run's open gates are closed
//! Release     running                                      running     Ctrl-C: the owner gives it back (shown
//!                                                                      `interrupted`; a resume takes it at once)
//! ```
//!
//! Completed and cancelled runs accept no event: [`RunStatus::is_final`].
//! A gate decision changes no status (a waiting run stays waiting until a
//! resume or a worker continues it). `interrupted` is not stored: it is
//! how a `running` run whose owner is gone is shown.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Created, not started (queued for workers).
    Pending,
    /// A process is executing it.
    Running,
    /// Suspended until a human answers a gate; no process holds it.
    Waiting,
    /// Paused by a user; `resume` continues it.
    Paused,
    /// Finished with an output.
    Completed,
    /// Stopped by an error; `resume` retries from the failed step.
    Failed,
    /// Stopped by a user; final.
    Cancelled,
}

impl RunStatus {
    /// Every status.
    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::Running,
        Self::Waiting,
        Self::Paused,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// Lowercase name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// True for completed and cancelled (nothing more will happen).
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled)
    }

    /// True for completed, failed and cancelled: nothing runs it and
    /// nothing waits for it (a failed run may still be resumed by hand),
    /// so `runs prune` may delete it.
    #[must_use]
    pub fn is_prunable(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown status `{s}`; one of: {}",
                    Self::ALL.map(Self::as_str).join(", ")
                )
            })
    }
}

/// What happens to a run (see the [module docs](self) for the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunEvent {
    /// Resumed here (or its first execution under a queued start).
    Resume,
    /// Taken by a worker.
    Take,
    /// A queued run resumed: back to the workers.
    Requeue,
    /// Stopped at a human gate.
    Suspend,
    /// Finished.
    Complete,
    /// A step failed.
    Fail,
    /// A worker cannot execute it and would fail again.
    Abandon,
    /// Paused by a user.
    Pause,
    /// Cancelled by a user.
    Cancel,
    /// Given back by its owner (Ctrl-C).
    Release,
}

/// The compare-and-set a store applies for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The statuses the run may be in.
    pub from: &'static [RunStatus],
    /// Its status after.
    pub to: RunStatus,
}

use RunStatus::{Cancelled, Completed, Failed, Paused, Pending, Running, Waiting};

impl RunEvent {
    /// Every event.
    pub const ALL: [Self; 10] = [
        Self::Resume,
        Self::Take,
        Self::Requeue,
        Self::Suspend,
        Self::Complete,
        Self::Fail,
        Self::Abandon,
        Self::Pause,
        Self::Cancel,
        Self::Release,
    ];

    /// The transition of this event.
    #[must_use]
    pub fn transition(self) -> Transition {
        let (from, to): (&'static [RunStatus], RunStatus) = match self {
            Self::Resume => (&[Pending, Waiting, Paused, Failed, Running], Running),
            Self::Take => (&[Pending, Waiting, Running], Running),
            Self::Requeue => (&[Waiting, Paused, Failed], Pending),
            Self::Suspend => (&[Running], Waiting),
            Self::Complete => (&[Running], Completed),
            Self::Fail => (&[Running], Failed),
            Self::Abandon => (&[Pending, Waiting, Running], Failed),
            Self::Pause => (&[Pending, Running, Waiting], Paused),
            Self::Cancel => (&[Pending, Running, Waiting, Paused, Failed], Cancelled),
            Self::Release => (&[Running], Running),
        };
        Transition { from, to }
    }

    /// The statuses this event applies to.
    #[must_use]
    pub fn from(self) -> &'static [RunStatus] {
        self.transition().from
    }

    /// The status after this event.
    #[must_use]
    pub fn to(self) -> RunStatus {
        self.transition().to
    }

    /// A verb for messages (`pause`, `cancel`, ...).
    #[must_use]
    pub fn verb(self) -> &'static str {
        match self {
            Self::Resume => "resume",
            Self::Take => "take",
            Self::Requeue => "requeue",
            Self::Suspend => "suspend",
            Self::Complete => "complete",
            Self::Fail => "fail",
            Self::Abandon => "abandon",
            Self::Pause => "pause",
            Self::Cancel => "cancel",
            Self::Release => "release",
        }
    }
}

/// The status a run in `status` goes to on `event`, or why it cannot.
pub fn next(status: RunStatus, event: RunEvent) -> Result<RunStatus, String> {
    let t = event.transition();
    if t.from.contains(&status) {
        Ok(t.to)
    } else if status.is_final() {
        Err(format!(
            "the run is {status}: nothing more happens to it (cannot {})",
            event.verb()
        ))
    } else {
        Err(format!(
            "a {status} run cannot {}; only a run that is {} can",
            event.verb(),
            t.from
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: RunStatus, e: RunEvent) -> RunStatus {
        next(s, e).unwrap_or_else(|m| panic!("{s} {e:?}: {m}"))
    }

    #[test]
    fn resume_takes_every_unfinished_run() {
        for s in [Pending, Waiting, Paused, Failed, Running] {
            assert_eq!(ok(s, RunEvent::Resume), Running);
        }
    }

    #[test]
    fn a_worker_takes_pending_waiting_or_orphaned_runs_only() {
        for s in [Pending, Waiting, Running] {
            assert_eq!(ok(s, RunEvent::Take), Running);
        }
        assert!(next(Paused, RunEvent::Take).is_err());
        assert!(next(Failed, RunEvent::Take).is_err());
    }

    #[test]
    fn requeue_sends_a_stopped_run_back_to_the_workers() {
        for s in [Waiting, Paused, Failed] {
            assert_eq!(ok(s, RunEvent::Requeue), Pending);
        }
        assert!(next(Running, RunEvent::Requeue).is_err());
    }

    #[test]
    fn suspend_complete_fail_and_release_start_from_running() {
        assert_eq!(ok(Running, RunEvent::Suspend), Waiting);
        assert_eq!(ok(Running, RunEvent::Complete), Completed);
        assert_eq!(ok(Running, RunEvent::Fail), Failed);
        assert_eq!(ok(Running, RunEvent::Release), Running);
        for e in [
            RunEvent::Suspend,
            RunEvent::Complete,
            RunEvent::Fail,
            RunEvent::Release,
        ] {
            for s in [Pending, Waiting, Paused, Failed] {
                assert!(next(s, e).is_err(), "{s} {e:?}");
            }
        }
    }

    #[test]
    fn abandon_fails_a_run_a_worker_cannot_execute() {
        for s in [Pending, Waiting, Running] {
            assert_eq!(ok(s, RunEvent::Abandon), Failed);
        }
    }

    #[test]
    fn pause_stops_unfinished_runs_but_not_paused_or_failed_ones() {
        for s in [Pending, Running, Waiting] {
            assert_eq!(ok(s, RunEvent::Pause), Paused);
        }
        let m = next(Failed, RunEvent::Pause).unwrap_err();
        assert!(
            m.contains(
                "a failed run cannot pause; only a run that is pending, running, waiting can"
            ),
            "{m}"
        );
    }

    #[test]
    fn cancel_ends_any_unfinished_run() {
        for s in [Pending, Running, Waiting, Paused, Failed] {
            assert_eq!(ok(s, RunEvent::Cancel), Cancelled);
        }
    }

    #[test]
    fn final_runs_accept_no_event() {
        for s in [Completed, Cancelled] {
            assert!(s.is_final());
            for e in RunEvent::ALL {
                let m = next(s, e).unwrap_err();
                assert!(m.contains("nothing more happens to it"), "{m}");
            }
        }
    }

    #[test]
    fn only_runs_nothing_runs_or_waits_for_are_prunable() {
        let prunable: Vec<RunStatus> = RunStatus::ALL
            .into_iter()
            .filter(|s| s.is_prunable())
            .collect();
        assert_eq!(prunable, [Completed, Failed, Cancelled]);
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>(), Ok(s));
        }
        assert!("interrupted".parse::<RunStatus>().is_err());
    }
}
