//! Progress events, for terminals, logs and (later) the dashboard.

use std::time::Duration;

use spes_core::message::Usage;

/// Something that happened during a run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A step began.
    StepStarted {
        /// Step key.
        key: String,
        /// Step kind.
        kind: &'static str,
        /// Nesting depth (0 = top level).
        depth: usize,
    },
    /// A step finished.
    StepFinished {
        /// Step key.
        key: String,
        /// Step kind.
        kind: &'static str,
        /// Nesting depth.
        depth: usize,
        /// Wall time.
        elapsed: Duration,
        /// Error message, if it failed.
        error: Option<String>,
        /// A short note: provider/model and tokens, the branch taken, "skipped", "replayed".
        note: Option<String>,
        /// Token usage of model calls in this step.
        usage: Option<Usage>,
    },
    /// Streamed model text.
    Delta {
        /// Step key.
        key: String,
        /// Text.
        text: String,
    },
    /// A step's attempt failed and the step is tried again after `delay`.
    Retrying {
        /// Step key.
        key: String,
        /// The attempt about to be made (2 for the first retry).
        attempt: u32,
        /// The wait before it (at least what a provider's `retry-after` asked).
        delay: Duration,
        /// Why the last attempt failed.
        error: String,
    },
    /// An agent's tool call finished (or was read from the journal).
    ToolCalled {
        /// The call's journal key (`STEP/turn[N]/call[NAME#K]`).
        key: String,
        /// The tool.
        tool: String,
        /// Its result is an error.
        is_error: bool,
        /// It came from the journal (not run again).
        replayed: bool,
    },
    /// An alternative of a step gave up; the next one (`fallback`,
    /// `degrade`) is tried.
    FallingBack {
        /// Step key.
        key: String,
        /// The alternative that gave up.
        from: String,
        /// The one tried next.
        to: String,
        /// Why it gave up.
        error: String,
    },
}

/// Receives events. Must be cheap: it is called on the run's task.
pub trait Observer: Send + Sync {
    /// One event.
    fn on_event(&self, event: &Event);
}

/// Ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn on_event(&self, _event: &Event) {}
}
