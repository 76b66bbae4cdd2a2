//! spes core: components, templates, workflow specs, conditions and policies.
//! No I/O beyond reading the user's files; no clock, no network.

pub mod config;
pub mod diagnostic;
pub mod duration;
pub mod message;

pub use diagnostic::{Diagnostic, Diagnostics, Severity};
