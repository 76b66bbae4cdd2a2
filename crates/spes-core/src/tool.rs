//! Provider-neutral tool calling: the tools a request offers
//! ([`ToolSpec`]), how the model may use them ([`ToolChoice`]), the calls
//! it makes ([`ToolCall`]) and the results sent back ([`ToolResult`]).
//!
//! A conversation with tools goes: a [`ChatRequest`] carrying `tools`; a
//! [`ChatResponse`] whose `tool_calls` are not empty and whose stop reason
//! is [`StopReason::ToolUse`]; then a follow-up request whose messages end
//! with the assistant's turn ([`Message::assistant_tool_calls`]) and the
//! results answering it ([`Message::tool_results`]). Adapters map these to
//! their wire formats (OpenAI `tools` / `tool_calls` / `role: tool`
//! messages; Anthropic `tools` / `tool_use` / `tool_result` blocks).
//!
//! [`ChatRequest`]: crate::message::ChatRequest
//! [`ChatResponse`]: crate::message::ChatResponse
//! [`StopReason::ToolUse`]: crate::message::StopReason::ToolUse
//! [`Message::assistant_tool_calls`]: crate::message::Message::assistant_tool_calls
//! [`Message::tool_results`]: crate::message::Message::tool_results

use serde::{Deserialize, Serialize};

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The name the model calls it by.
    pub name: String,
    /// What it does, for the model; empty sends none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// A JSON schema of its arguments (an object schema: both providers
    /// require one).
    pub parameters: serde_json::Value,
}

impl ToolSpec {
    /// A tool with a name, a description and an argument schema.
    #[must_use]
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: serde_json::Value,
    ) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            parameters,
        }
    }
}

/// How the model may use the offered tools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides whether to call tools (the providers' default).
    Auto,
    /// The model must not call any tool.
    None,
    /// The model must call at least one tool.
    Required,
    /// The model must call this tool.
    Tool(String),
}

/// One call the model made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id of the call; its result names it.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, parsed from the model's JSON.
    pub arguments: serde_json::Value,
}

impl ToolCall {
    /// A call of `name` with `arguments`.
    #[must_use]
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: serde_json::Value,
    ) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            arguments,
        }
    }
}

/// The result of one [`ToolCall`], sent back to the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The [`ToolCall::id`] it answers.
    pub call_id: String,
    /// What the tool returned (or why it failed), as text.
    pub content: String,
    /// The tool failed; `content` says why.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_error: bool,
}

impl ToolResult {
    /// A successful result.
    #[must_use]
    pub fn ok(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            call_id: call_id.into(),
            content: content.into(),
            is_error: false,
        }
    }

    /// A failed call; `content` says why.
    #[must_use]
    pub fn error(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            call_id: call_id.into(),
            content: content.into(),
            is_error: true,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tool_choice_serializes_in_snake_case() {
        let all = [
            ToolChoice::Auto,
            ToolChoice::None,
            ToolChoice::Required,
            ToolChoice::Tool("search".into()),
        ];
        let v = serde_json::to_value(&all).unwrap();
        assert_eq!(v, json!(["auto", "none", "required", {"tool": "search"}]));
        let back: Vec<ToolChoice> = serde_json::from_value(v).unwrap();
        assert_eq!(back, all);
    }

    #[test]
    fn results_and_specs_omit_defaults() {
        assert_eq!(
            serde_json::to_value(ToolResult::ok("c1", "42")).unwrap(),
            json!({"call_id": "c1", "content": "42"})
        );
        assert_eq!(
            serde_json::to_value(ToolResult::error("c1", "boom")).unwrap(),
            json!({"call_id": "c1", "content": "boom", "is_error": true})
        );
        let spec = ToolSpec::new("t", "", json!({"type": "object"}));
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            json!({"name": "t", "parameters": {"type": "object"}})
        );
        let back: ToolSpec =
            serde_json::from_value(json!({"name": "t", "parameters": {"type": "object"}})).unwrap();
        assert_eq!(back, spec);
    }
}
