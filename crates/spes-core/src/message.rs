//! Provider-neutral chat request and response types.
//!
//! Adapters convert these to and from their wire formats; the engine and the
//! journal only ever see these types.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The caller.
    User,
    /// The model.
    Assistant,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// The text.
    pub content: String,
}

impl Message {
    /// A user message.
    #[must_use]
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }

    /// An assistant message.
    #[must_use]
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// A request to a model. Everything a provider needs, nothing it does not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ChatRequest {
    /// The model name; `None` means the provider's configured default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// System text (persona, instruction, output format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The conversation; at least one user message.
    pub messages: Vec<Message>,
    /// Upper bound on generated tokens; `None` means the provider's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// A JSON schema the answer must follow (structured output), if any.
    /// Adapters ask the provider for it natively (OpenAI `response_format`
    /// `json_schema`, an Anthropic forced tool call, a grammar locally).
    /// Shared: every request of a step points at the step's one copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<Arc<serde_json::Value>>,
    /// The step asked for JSON (`format: json`). Without `json_schema`,
    /// adapters use the provider's JSON mode (OpenAI `response_format`
    /// `json_object`; an instruction on Anthropic). With `json_schema`,
    /// the schema says more and wins.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub json: bool,
    /// Answers already rejected for this request (a repair asks again).
    /// A provider that samples the answer itself (`local`) steers away from
    /// giving one of them again; remote providers see them in the
    /// conversation. Not part of the request as sent or hashed.
    #[serde(skip)]
    pub avoid: Vec<String>,
}

impl ChatRequest {
    /// A request with a single user message.
    #[must_use]
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            messages: vec![Message::user(text)],
            ..Self::default()
        }
    }

    /// The text of the last user message (what prompt patterns match on).
    #[must_use]
    pub fn last_user_text(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map_or("", |m| m.content.as_str())
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// It finished its answer.
    EndTurn,
    /// It hit `max_tokens`.
    MaxTokens,
    /// It produced one of the stop sequences.
    StopSequence,
    /// Something else, as the provider named it.
    Other(String),
}

/// Token counts for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Prompt tokens read from the provider's cache, where reported.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_read_tokens: u64,
    /// Prompt tokens written to the provider's cache, where reported.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The generated text.
    pub text: String,
    /// Why generation stopped.
    pub stop_reason: StopReason,
    /// Token usage.
    pub usage: Usage,
    /// The model that answered, as the provider reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The provider's request id (for support tickets and tracing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Wall time from sending the request to the last byte, in milliseconds.
    pub latency_ms: u64,
}
