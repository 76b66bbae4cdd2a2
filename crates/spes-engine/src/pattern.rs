//! Executors of the conditional, iterative and multi-agent step kinds:
//! `switch`, `quality_gate`, `refine`, `debate` and the agent form of
//! `sequence`. Every model call (generation, classification, judge) goes
//! through `Exec::call` under a stable key, so a resumed run repeats none:
//!
//! | kind | keys |
//! |---|---|
//! | switch | `KEY/classify` (or the classify step's `name`), then the route's steps under `KEY/ROUTE` (or `KEY/default`) |
//! | quality_gate | `KEY/attemptN` (a wrapped step of another kind: under `KEY/attemptN/NAME`), its judge `KEY/attemptN/judge` or `KEY/attemptN/judge/CRITERION` |
//! | refine | `KEY/iterationN` (another kind: under `KEY/iterationN/NAME`), `KEY/iterationN/judge[/CRITERION]` |
//! | debate | `KEY/roundR/DEBATER`, `KEY/judge` |
//! | sequence of agents | `KEY/AGENT` (`KEY/AGENT.2` for a second turn) |

mod debate;
mod evaluate;
mod switch;

use std::time::Instant;

use spes_core::message::ChatResponse;
use spes_core::workflow::{LlmStep, Loc};

use crate::error::FailureKind;
use crate::event::Event;
use crate::run::{Exec, Stop, fail};

impl Exec<'_> {
    /// Renders an llm step's prompt over the context.
    pub(crate) fn prompt_of(&self, l: &LlmStep, key: &str, loc: &Loc) -> Result<String, Stop> {
        l.prompt
            .render(&self.ctx, None)
            .map_err(|e| fail(key, loc, FailureKind::Template(e)))
    }

    /// Progress: a call inside a pattern started.
    pub(crate) fn call_started(&self, key: &str, depth: usize) -> Instant {
        self.engine.emit(&Event::StepStarted {
            key: key.to_owned(),
            kind: "llm",
            depth: depth + 1,
        });
        Instant::now()
    }

    /// Progress: a call inside a pattern finished (or failed).
    pub(crate) fn call_finished<T>(
        &self,
        key: &str,
        depth: usize,
        start: Instant,
        r: &Result<T, Stop>,
    ) {
        self.engine.emit(&Event::StepFinished {
            key: key.to_owned(),
            kind: "llm",
            depth: depth + 1,
            elapsed: start.elapsed(),
            error: match r {
                Err(Stop::Failed(e)) => Some(e.kind.to_string()),
                _ => None,
            },
            note: None,
            usage: None,
        });
    }

    /// Calls an llm step's agent/provider with `user` as the user message
    /// (progress events at `depth + 1`).
    pub(crate) async fn llm_as(
        &mut self,
        l: &LlmStep,
        user: String,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<ChatResponse, Stop> {
        let start = self.call_started(key, depth);
        let r = self.llm_call(l, user, key, loc).await;
        self.call_finished(key, depth, start, &r);
        r
    }

    async fn llm_call(
        &mut self,
        l: &LlmStep,
        user: String,
        key: &str,
        loc: &Loc,
    ) -> Result<ChatResponse, Stop> {
        Ok(self.answer(l, user, None, key, loc).await?.response)
    }
}
