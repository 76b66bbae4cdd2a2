//! spes providers: the [`Provider`] trait, classified [`ProviderError`]s and
//! the adapters: Anthropic Messages, OpenAI Chat Completions (and any
//! OpenAI-compatible server), and the scripted provider used by tests,
//! examples and dry runs.

pub mod error;
pub mod provider;
pub mod scripted;

pub use error::{ErrorClass, ProviderError, ProviderErrorKind};
pub use provider::{CallContext, DeltaSink, Provider};
