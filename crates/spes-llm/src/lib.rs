//! spes providers: the [`Provider`] trait, classified [`ProviderError`]s and
//! the adapters: Anthropic Messages, OpenAI Chat Completions (and any
//! OpenAI-compatible server), and the scripted provider used by tests,
//! examples and dry runs.
//!
//! The HTTP adapters ([`anthropic`], [`openai`]) are thin and our own, on
//! reqwest: the engine needs the status, `retry-after`, usage with cache
//! tokens and the request id exactly. Each one:
//!
//! - streams (SSE) or not, per the provider's `stream` setting (default
//!   on); both modes give the same [`ChatResponse`]
//!   for the same answer, and streamed text goes to [`CallContext::on_delta`];
//! - applies four timeouts (connect, first byte, idle between chunks, and
//!   a total deadline) and a size cap on answers, streamed or not, and
//!   follows no redirects (see [`http`]);
//! - classifies every failure into a [`ProviderErrorKind`], keeping the
//!   status, the provider's error type and message, the request id and
//!   `retry-after`;
//! - reads its key from the environment variable named by `api_key_env`
//!   into a [`SecretString`]; the key never appears in errors, `Debug`
//!   output or logs.
//!
//! A model that stops at `max_tokens` is *not* an error here: the response
//! says [`StopReason::MaxTokens`],
//! and a step that wants complete answers calls [`ensure_complete`].
//!
//! [`ProviderRegistry::from_config`] builds the providers of a `spes.toml`:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use spes_core::config::parse_config;
//! use spes_core::message::ChatRequest;
//! use spes_fake_llm::{FakeResponse, FakeServer};
//! use spes_llm::{CallContext, ProviderRegistry, ensure_complete};
//!
//! // An OpenAI-compatible server; here the in-project fake one.
//! let server = FakeServer::start().await?;
//! server.push(FakeResponse::text("Paris"));
//! let toml = format!(
//!     "[providers.local]\nkind = \"openai\"\nmodel = \"llama3\"\nbase_url = \"{}\"\n",
//!     server.openai_base_url()
//! );
//! let config = parse_config("spes.toml", &toml).map_err(|d| d.to_string())?;
//! let registry = ProviderRegistry::from_config(&config)?;
//!
//! let provider = registry.get("local")?;
//! let answer = provider
//!     .complete(&ChatRequest::user("Capital of France?"), &CallContext::for_step("ask"))
//!     .await?;
//! let answer = ensure_complete(provider.name(), answer)?;
//! assert_eq!(answer.text, "Paris");
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod anthropic;
pub mod error;
pub mod http;
pub mod limit;
pub mod openai;
pub mod provider;
pub mod registry;
pub mod scripted;
pub mod secret;
mod sse;
mod toolcall;

pub use anthropic::AnthropicProvider;
pub use error::{ErrorClass, ProviderError, ProviderErrorKind};
pub use http::HttpProviderConfig;
pub use openai::OpenAiProvider;
pub use provider::{CallContext, DeltaSink, Provider};
pub use registry::ProviderRegistry;
pub use secret::SecretString;

use spes_core::message::{ChatResponse, StopReason};

/// Turns an answer cut by `max_tokens` into a
/// [`ProviderErrorKind::Truncated`] error (terminal); other answers pass
/// through. The engine calls it for steps that require complete answers.
///
/// # Errors
///
/// [`ProviderErrorKind::Truncated`] when `resp.stop_reason` is
/// [`StopReason::MaxTokens`].
pub fn ensure_complete(provider: &str, resp: ChatResponse) -> Result<ChatResponse, ProviderError> {
    if resp.stop_reason == StopReason::MaxTokens {
        return Err(ProviderError::new(
            provider,
            ProviderErrorKind::Truncated,
            format!(
                "the answer was cut at max_tokens ({} output tokens); raise max_tokens or shorten the task",
                resp.usage.output_tokens
            ),
        )
        .with_request_id(resp.request_id));
    }
    Ok(resp)
}
