//! spes's embedded model: a GGUF model run in-process by llama.cpp (through
//! `llama-cpp-2`), behind the same [`spes_llm::Provider`] trait as the
//! remote providers, so retry, fallback, degrade and the journal treat it
//! like any other.
//!
//! - The model's own chat template (stored in the GGUF) formats the request.
//! - Temperature 0 (the default) is greedy decoding: the same prompt gives
//!   the same answer, run after run. Above 0, sampling uses the configured
//!   seed.
//! - A request's JSON schema becomes a grammar (llama.cpp's converter) that
//!   masks every token breaking it: the answer is valid JSON of that shape.
//! - Generation stops at an end-of-generation token, a stop sequence (never
//!   streamed, never in the answer) or `max_tokens`.
//! - Usage (prompt and output tokens) and latency are reported like a
//!   remote provider's; text streams to [`spes_llm::CallContext::on_delta`].
//! - The model is loaded once per process, on the first call; `slots`
//!   generations run at once and further requests wait.
//! - A prompt longer than the context window is a
//!   [`spes_llm::ProviderErrorKind::ContextOverflow`] error; a missing,
//!   foreign or unsupported model file is a clear
//!   [`spes_llm::ProviderErrorKind::Config`] error naming the fix.
//!
//! The default model is SmolLM2-135M-Instruct (Q4_1, Apache-2.0), fetched
//! by `scripts/fetch-model.sh` into [`default_model_path`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), spes_llm::ProviderError> {
//! use spes_core::message::ChatRequest;
//! use spes_llm::{CallContext, Provider};
//! use spes_local::{LocalConfig, LocalProvider};
//!
//! let local = LocalProvider::new("local", LocalConfig::default_model());
//! let mut req = ChatRequest::user("Name a colour.");
//! req.max_tokens = Some(16);
//! let answer = local.complete(&req, &CallContext::for_step("ask")).await?;
//! println!("{} ({} tokens)", answer.text, answer.usage.output_tokens);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod gguf;
mod model;
mod provider;
mod text;
mod tools;

pub use model::LocalError;
pub use provider::{
    DEFAULT_MODEL_FILE, DEFAULT_MODEL_SHA256, LocalConfig, LocalProvider, default_model_path,
    default_model_path_with, default_threads,
};
