//! spes core: components, templates, workflow specs, conditions and policies.
//! No I/O beyond reading the user's files; no clock, no network.

pub mod answer;
pub mod budget;
pub mod component;
pub mod condition;
pub mod config;
pub mod diagnostic;
pub mod duration;
pub mod evaluate;
pub mod fs;
pub mod lifecycle;
pub mod message;
pub mod pattern;
pub mod policy;
pub mod route;
pub mod template;
pub mod tool;
pub mod transform;
pub mod workflow;
pub mod yaml;

pub use diagnostic::{Diagnostic, Diagnostics, Severity};
