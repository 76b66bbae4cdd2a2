//! Executors of the conditional, iterative and multi-agent step kinds:
//! `switch`, `quality_gate`, `refine`, `debate` and the agent form of
//! `sequence`. Every model call (generation, classification, judge) goes
//! through `Exec::call` under a stable key, so a resumed run repeats none:
//!
//! | kind | keys |
//! |---|---|
//! | switch | `KEY/classify` (or the classify step's `name`), then the route's steps under `KEY/ROUTE` (or `KEY/default`) |
//! | quality_gate | `KEY/attemptN`, its judge `KEY/attemptN/judge` or `KEY/attemptN/judge/CRITERION` |
//! | refine | `KEY/iterationN`, `KEY/iterationN/judge[/CRITERION]` |
//! | debate | `KEY/roundR/DEBATER`, `KEY/judge` |
//! | sequence of agents | `KEY/AGENT` (`KEY/AGENT.2` for a second turn) |

mod debate;
mod evaluate;
mod switch;

use spes_core::message::{ChatRequest, ChatResponse, Message};
use spes_core::workflow::{LlmStep, Loc};

use crate::error::FailureKind;
use crate::run::{Exec, Stop, fail};

impl Exec<'_> {
    /// Renders an llm step's prompt over the context.
    pub(crate) fn prompt_of(&self, l: &LlmStep, key: &str, loc: &Loc) -> Result<String, Stop> {
        l.prompt
            .render(&self.ctx, None)
            .map_err(|e| fail(key, loc, FailureKind::Template(e)))
    }

    /// Calls an llm step's agent/provider with `user` as the user message.
    pub(crate) async fn llm_as(
        &mut self,
        l: &LlmStep,
        user: String,
        key: &str,
        loc: &Loc,
    ) -> Result<ChatResponse, Stop> {
        let mut req = ChatRequest {
            messages: vec![Message::user(user)],
            stop: l.stop.clone(),
            ..ChatRequest::default()
        };
        let (provider, components) =
            self.prepare(l.agent.as_deref(), Some(l), &mut req, key, loc)?;
        self.call(&provider, req, components, key, loc).await
    }
}
