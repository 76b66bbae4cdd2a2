//! The step kinds' descriptors and validators, one module per family.
//! Each module declares its kinds' [`KindDef`]s beside their validators;
//! [`KINDS`] lists them.

mod agent;
mod control;
mod http;
mod human;
mod llm;
mod orchestration;
mod pattern;
#[cfg(test)]
mod tests;
mod transform;
mod workflow;

pub(crate) use agent::AGENT;
pub(crate) use control::{AGENT_SEQUENCE, BRANCH, PARALLEL, SEQUENCE};
pub(crate) use http::HTTP;
pub(crate) use human::{APPROVAL, CHOOSE, SECTIONS};
pub(crate) use llm::LLM;
pub(crate) use orchestration::{FAN_OUT, MAP, PIPELINE, REDUCE, SAGA, SCATTER_GATHER};
pub(crate) use pattern::{DEBATE, QUALITY_GATE, REFINE, SWITCH};
pub(crate) use transform::TRANSFORM;
pub(crate) use workflow::WORKFLOW;

use crate::workflow::kind::KindDef;

/// Every step kind, in the order hints list them.
pub const KINDS: &[&KindDef] = &[
    &LLM,
    &TRANSFORM,
    &HTTP,
    &AGENT,
    &SEQUENCE,
    &BRANCH,
    &PARALLEL,
    &APPROVAL,
    &CHOOSE,
    &SECTIONS,
    &WORKFLOW,
    &SWITCH,
    &QUALITY_GATE,
    &REFINE,
    &DEBATE,
    &MAP,
    &REDUCE,
    &FAN_OUT,
    &SAGA,
    &PIPELINE,
    &SCATTER_GATHER,
];
