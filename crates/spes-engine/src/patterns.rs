//! Workflows written in Rust, without YAML: every pattern as a builder or
//! a constructor that makes the same validated [`Step`](spes_core::workflow::Step)s the YAML validator
//! makes, run by the same durable engine (every effect journaled under the
//! same step keys).
//!
//! - Multi-agent, conditional and iterative: [`Debate`], [`Switch`],
//!   [`QualityGate`], [`Refine`], [`AgentSequence`] (see [`agents`]).
//! - Orchestration: [`map`], [`reduce`], [`fan_out`], [`saga`],
//!   [`pipeline`], [`scatter_gather`] and a [`WorkflowBuilder`] (see
//!   [`orchestration`]).
//! - Agents with tools: [`ToolAgent`] (see [`tools`]).
//! - Policies: `crate::policy` (retry, fallback, circuit breaker, degrade, timeout).

pub mod agents;
pub mod orchestration;
pub mod tools;

pub use agents::{
    AgentSequence, Debate, QualityGate, Refine, Switch, agent, inputs, llm, run_step,
};
pub use orchestration::{
    MapBuilder, StepExt, WorkflowBuilder, fan_out, map, pipeline, reduce, saga, scatter_gather,
    transform,
};
pub use tools::ToolAgent;
