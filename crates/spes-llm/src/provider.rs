//! The `Provider` trait: one object-safe port for every model backend.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use spes_core::message::{ChatRequest, ChatResponse};

use crate::error::ProviderError;

/// Receives text as it streams from a model (for progress displays).
pub type DeltaSink = Arc<dyn Fn(&str) + Send + Sync>;

/// Per-call information that is not part of the model request itself.
#[derive(Clone, Default)]
pub struct CallContext {
    /// The deterministic step key of the call (`gather/map[3]/answer`);
    /// the scripted provider matches answers on it.
    pub step_key: String,
    /// Receives streamed text, when the provider streams.
    pub on_delta: Option<DeltaSink>,
    /// The W3C `traceparent` header value for the request, when the caller
    /// traces it (HTTP providers send it as the `traceparent` header).
    pub traceparent: Option<String>,
}

impl fmt::Debug for CallContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallContext")
            .field("step_key", &self.step_key)
            .field("on_delta", &self.on_delta.is_some())
            .field("traceparent", &self.traceparent)
            .finish()
    }
}

impl CallContext {
    /// A context for the step `key`.
    #[must_use]
    pub fn for_step(key: impl Into<String>) -> Self {
        Self {
            step_key: key.into(),
            on_delta: None,
            traceparent: None,
        }
    }
}

/// Something that turns a chat request into a response.
///
/// Implementations must be cheap to share (`Arc<dyn Provider>`) and safe to
/// call concurrently.
#[async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// The configured name (`claude`, `ollama`, `test`).
    fn name(&self) -> &str;

    /// The provider kind (`anthropic`, `openai`, `scripted`, `local`).
    fn kind(&self) -> &'static str;

    /// The model used when a request names none.
    fn default_model(&self) -> Option<&str>;

    /// Sends one request and waits for the whole answer.
    async fn complete(
        &self,
        req: &ChatRequest,
        cx: &CallContext,
    ) -> Result<ChatResponse, ProviderError>;
}
