//! Agents with tools, in Rust: [`ToolAgent`] builds the same `agent` step
//! the YAML validator makes (`kind: agent`), run by the same engine: each
//! model turn and each tool call journaled under the same keys.
//!
//! Tools are named: a Rust function registered with the engine
//! ([`EngineBuilder::tool`](crate::EngineBuilder::tool), e.g. a
//! [`FnTool`](crate::tool::FnTool) around a closure), or an MCP server's
//! tool (`SERVER.TOOL`, from a [`McpSource`](crate::mcp::McpSource)).
//!
//! ```
//! use std::sync::Arc;
//! use spes_engine::Engine;
//! use spes_engine::patterns::{ToolAgent, run_step};
//! use spes_engine::tool::FnTool;
//! use spes_llm::scripted::ScriptedProvider;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let script = r#"
//! - { step: "sum/turn[1]", tool_calls: [{ name: add, arguments: { a: 2, b: 3 } }] }
//! - { step: "sum/turn[2]", reply: "5" }
//! "#;
//! let provider = ScriptedProvider::parse("test", "script.yaml", script).unwrap();
//! let add = FnTool::new(
//!     "add",
//!     "Adds a and b",
//!     serde_json::json!({ "type": "object", "properties": { "a": { "type": "number" }, "b": { "type": "number" } } }),
//!     |args| Box::pin(async move {
//!         Ok((args["a"].as_i64().unwrap_or(0) + args["b"].as_i64().unwrap_or(0)).to_string())
//!     }),
//! );
//! let engine = Engine::builder()
//!     .provider(Arc::new(provider))
//!     .tool(Arc::new(add))
//!     .build();
//! let step = ToolAgent::new("sum", "Add 2 and 3.").unwrap().tool("add").step();
//! let answer = run_step(&engine, step, Default::default()).await.unwrap();
//! assert_eq!(answer, serde_json::json!("5"));
//! # });
//! ```

use std::sync::Arc;

use spes_core::template::TemplateError;
use spes_core::tool::ToolChoice;
use spes_core::workflow::agent::{AgentStep, AgentTool, DEFAULT_MAX_TURNS, MAX_MAX_TURNS};
use spes_core::workflow::{Agent, Step, StepKind};

use super::agents::step;
use crate::RunError;

/// An `agent` step with tools; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct ToolAgent {
    name: String,
    agent: AgentStep,
}

impl ToolAgent {
    /// An agent step named `name` whose first user message is `prompt` (a
    /// template over the context), with no tools yet and 10 turns at most.
    pub fn new(name: &str, prompt: &str) -> Result<Self, TemplateError> {
        Ok(Self {
            name: name.to_owned(),
            agent: AgentStep {
                llm: super::agents::llm_step(prompt)?,
                tools: Vec::new(),
                max_turns: DEFAULT_MAX_TURNS,
                tool_choice: None,
                approve_tools: Vec::new(),
            },
        })
    }

    /// Offers the tool named `name` (registered with the engine, or
    /// `SERVER.TOOL`).
    #[must_use]
    pub fn tool(mut self, name: &str) -> Self {
        self.agent
            .tools
            .push(AgentTool::Registered(name.to_owned()));
        self
    }

    /// The agent's components (persona, instructions...) and settings.
    #[must_use]
    pub fn agent(mut self, agent: Arc<Agent>) -> Self {
        self.agent.llm.agent = Some(agent);
        self
    }

    /// Model turns at most (1 to 100).
    pub fn max_turns(mut self, n: u32) -> Result<Self, RunError> {
        if n == 0 || n > MAX_MAX_TURNS {
            return Err(RunError::Input(format!(
                "max_turns must be between 1 and {MAX_MAX_TURNS}, not {n}"
            )));
        }
        self.agent.max_turns = n;
        Ok(self)
    }

    /// How the model may use the tools.
    #[must_use]
    pub fn tool_choice(mut self, choice: ToolChoice) -> Self {
        self.agent.tool_choice = Some(choice);
        self
    }

    /// Every call of the tool `name` waits for a human's approval.
    #[must_use]
    pub fn approve(mut self, name: &str) -> Self {
        self.agent.approve_tools.push(name.to_owned());
        self
    }

    /// The step.
    #[must_use]
    pub fn step(self) -> Step {
        step(&self.name, StepKind::Agent(Box::new(self.agent)))
    }
}
