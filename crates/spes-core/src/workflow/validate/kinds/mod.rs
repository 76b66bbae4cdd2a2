//! The validator of each step kind, one module per family.

mod control;
mod human;
mod llm;
mod orchestration;
mod pattern;
mod transform;
mod workflow;
pub(super) use orchestration::orchestration_kind;
