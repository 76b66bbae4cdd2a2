//! Provider-neutral chat request and response types.
//!
//! Adapters convert these to and from their wire formats; the engine and the
//! journal only ever see these types.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::tool::{ToolCall, ToolChoice, ToolResult, ToolSpec};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The caller (also the sender of tool results).
    #[default]
    User,
    /// The model.
    Assistant,
}

/// One turn of a conversation.
///
/// Tool use adds two shapes: an assistant turn that called tools
/// (`tool_calls`, with whatever text came with them), and the user turn
/// that answers it (`tool_results`, one per call, text usually empty).
/// A message without tools serializes as it did before tools existed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// The text.
    pub content: String,
    /// The tools the assistant called in this turn (assistant messages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The results of the previous assistant turn's tool calls (user
    /// messages). Adapters send them before this message's text, if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_results: Vec<ToolResult>,
}

impl Message {
    /// A user message.
    #[must_use]
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
            ..Self::default()
        }
    }

    /// An assistant message.
    #[must_use]
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
            ..Self::default()
        }
    }

    /// An assistant turn that called tools, with the text that came with
    /// the calls (often empty).
    #[must_use]
    pub fn assistant_tool_calls(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        Self {
            tool_calls: calls,
            ..Self::assistant(content)
        }
    }

    /// The user turn answering the previous assistant turn's tool calls.
    #[must_use]
    pub fn tool_results(results: Vec<ToolResult>) -> Self {
        Self {
            tool_results: results,
            ..Self::user("")
        }
    }

    /// The assistant turn of a response: its text and its tool calls.
    #[must_use]
    pub fn from_response(r: &ChatResponse) -> Self {
        Self::assistant_tool_calls(r.text.clone(), r.tool_calls.clone())
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
    /// Tools the model may call; empty offers none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// How the model may use `tools`; `None` leaves it to the provider
    /// (which lets the model decide). Sent only with tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
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

    /// The text of the last user message (what prompt patterns match on),
    /// passing over messages that only carry tool results (so a follow-up
    /// after tool calls still matches on the question).
    #[must_use]
    pub fn last_user_text(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User && (!m.content.is_empty() || m.tool_results.is_empty()))
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
    /// It called tools and waits for their results (OpenAI `finish_reason:
    /// tool_calls`, Anthropic `stop_reason: tool_use`).
    ToolUse,
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
    /// The tools the model called, in order; empty when it called none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    // The journal stores and hashes these types as JSON: without tools they
    // must serialize exactly as they did before tools existed, and JSON
    // written then must still read.

    const OLD_MESSAGE: &str = r#"{"role":"assistant","content":"hi"}"#;
    const OLD_REQUEST: &str = r#"{"model":"m","system":"s","messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],"max_tokens":10,"temperature":0.5,"stop":["END"],"json_schema":{"type":"object"},"json":true}"#;
    const OLD_RESPONSE: &str = r#"{"text":"t","stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":4,"cache_read_tokens":1},"model":"m","request_id":"r","latency_ms":7}"#;

    #[test]
    fn a_message_without_tools_serializes_as_before() {
        assert_eq!(
            serde_json::to_string(&Message::assistant("hi")).unwrap(),
            OLD_MESSAGE
        );
        let back: Message = serde_json::from_str(OLD_MESSAGE).unwrap();
        assert_eq!(back, Message::assistant("hi"));
    }

    #[test]
    fn a_request_without_tools_serializes_as_before() {
        let req = ChatRequest {
            model: Some("m".into()),
            system: Some("s".into()),
            messages: vec![Message::user("q"), Message::assistant("a")],
            max_tokens: Some(10),
            temperature: Some(0.5),
            stop: vec!["END".into()],
            json_schema: Some(Arc::new(json!({"type": "object"}))),
            json: true,
            ..ChatRequest::default()
        };
        assert_eq!(serde_json::to_string(&req).unwrap(), OLD_REQUEST);
        let back: ChatRequest = serde_json::from_str(OLD_REQUEST).unwrap();
        assert_eq!(back, req);
        assert_eq!(
            serde_json::to_string(&ChatRequest::user("q")).unwrap(),
            r#"{"messages":[{"role":"user","content":"q"}]}"#
        );
    }

    #[test]
    fn a_response_without_tool_calls_serializes_as_before() {
        let resp = ChatResponse {
            text: "t".into(),
            stop_reason: StopReason::EndTurn,
            usage: Usage {
                input_tokens: 3,
                output_tokens: 4,
                cache_read_tokens: 1,
                cache_write_tokens: 0,
            },
            model: Some("m".into()),
            request_id: Some("r".into()),
            latency_ms: 7,
            tool_calls: Vec::new(),
        };
        assert_eq!(serde_json::to_string(&resp).unwrap(), OLD_RESPONSE);
        let back: ChatResponse = serde_json::from_str(OLD_RESPONSE).unwrap();
        assert_eq!(back, resp);
        // `Other` keeps its old shape too (a journal may hold `tool_use` as one).
        let other: StopReason = serde_json::from_str(r#"{"other":"tool_use"}"#).unwrap();
        assert_eq!(other, StopReason::Other("tool_use".into()));
    }

    #[test]
    fn tool_turns_round_trip() {
        let call = ToolCall::new("c1", "weather", json!({"city": "Paris"}));
        let req = ChatRequest {
            messages: vec![
                Message::user("Weather in Paris?"),
                Message::assistant_tool_calls("Checking.", vec![call.clone()]),
                Message::tool_results(vec![ToolResult::ok("c1", "sunny")]),
            ],
            tools: vec![ToolSpec::new(
                "weather",
                "Current weather",
                json!({"type": "object"}),
            )],
            tool_choice: Some(ToolChoice::Required),
            ..ChatRequest::default()
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v["messages"][1],
            json!({"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "c1", "name": "weather", "arguments": {"city": "Paris"}}
            ]})
        );
        assert_eq!(
            v["messages"][2],
            json!({"role": "user", "content": "", "tool_results": [{"call_id": "c1", "content": "sunny"}]})
        );
        assert_eq!(v["tool_choice"], "required");
        let back: ChatRequest = serde_json::from_value(v).unwrap();
        assert_eq!(back, req);
        // The question still is the last user text after tool results.
        assert_eq!(req.last_user_text(), "Weather in Paris?");
        let resp = ChatResponse {
            text: String::new(),
            stop_reason: StopReason::ToolUse,
            usage: Usage::default(),
            model: None,
            request_id: None,
            latency_ms: 0,
            tool_calls: vec![call.clone()],
        };
        let v = serde_json::to_value(&resp).unwrap();
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(serde_json::from_value::<ChatResponse>(v).unwrap(), resp);
        assert_eq!(
            Message::from_response(&resp),
            Message::assistant_tool_calls("", vec![call])
        );
    }
}
