//! The Anthropic Messages API's JSON, and conversions to and from
//! `spes_core::message`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use spes_core::message::{ChatRequest, Role, StopReason, Usage};

/// `POST /v1/messages` body.
#[derive(Debug, Serialize)]
pub(crate) struct MessagesRequest<'a> {
    pub(crate) model: &'a str,
    pub(crate) max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) system: Option<String>,
    pub(crate) messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) temperature: Option<f32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub(crate) stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tools: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) stream: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct WireMessage<'a> {
    pub(crate) role: &'static str,
    pub(crate) content: &'a str,
}

/// The tool the model is made to call when the request carries a schema.
pub(crate) const TOOL_NAME: &str = "structured_answer";

/// The instruction appended to the system text when the request asks for
/// JSON without a schema (Anthropic has no JSON mode).
pub(crate) const JSON_INSTRUCTION: &str =
    "Respond with a single JSON value and nothing else: no prose, no code fences.";

/// How a schema is sent as the forced tool's `input_schema`, which
/// Anthropic requires to be an object: an object schema as it is, any
/// other wrapped as `{"value": schema}` (and unwrapped from the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToolShape {
    /// The step's schema is the tool's input schema.
    Direct,
    /// The step's schema is the tool input's `value` property.
    Wrapped,
}

pub(crate) fn tool_shape(schema: &Value) -> ToolShape {
    if schema.get("type") == Some(&Value::String("object".into())) {
        ToolShape::Direct
    } else {
        ToolShape::Wrapped
    }
}

/// The answer text of the forced tool's `input`: its JSON, unwrapped.
pub(crate) fn tool_answer(input: Value, shape: ToolShape) -> String {
    let v = match (shape, input) {
        (ToolShape::Wrapped, Value::Object(mut m)) if m.contains_key("value") => {
            m.remove("value").unwrap_or(Value::Null)
        }
        (_, v) => v,
    };
    v.to_string()
}

impl<'a> MessagesRequest<'a> {
    pub(crate) fn new(req: &'a ChatRequest, model: &'a str, max_tokens: u32, stream: bool) -> Self {
        let system = match (&req.system, req.json && req.json_schema.is_none()) {
            (s, false) => s.clone(),
            (None, true) => Some(JSON_INSTRUCTION.to_owned()),
            (Some(s), true) => Some(format!("{s}\n\n{JSON_INSTRUCTION}")),
        };
        let (tools, tool_choice) = match &req.json_schema {
            None => (None, None),
            Some(schema) => {
                let input_schema = match tool_shape(schema) {
                    ToolShape::Direct => Value::clone(schema),
                    ToolShape::Wrapped => json!({
                        "type": "object",
                        "properties": {"value": schema},
                        "required": ["value"],
                    }),
                };
                (
                    Some(vec![json!({
                        "name": TOOL_NAME,
                        "description": "Give your answer as this tool's input, which must conform to its input schema.",
                        "input_schema": input_schema,
                    })]),
                    Some(json!({"type": "tool", "name": TOOL_NAME})),
                )
            }
        };
        Self {
            model,
            max_tokens,
            system,
            messages: req
                .messages
                .iter()
                .map(|m| WireMessage {
                    role: match m.role {
                        Role::User => "user",
                        Role::Assistant => "assistant",
                    },
                    content: &m.content,
                })
                .collect(),
            temperature: req.temperature,
            stop_sequences: &req.stop,
            tools,
            tool_choice,
            stream,
        }
    }
}

/// Token usage. Fields may be absent or `null` depending on the event.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireUsage {
    pub(crate) input_tokens: Option<u64>,
    pub(crate) output_tokens: Option<u64>,
    pub(crate) cache_creation_input_tokens: Option<u64>,
    pub(crate) cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Overwrites the counts this one reports.
    pub(crate) fn merge_into(&self, u: &mut Usage) {
        if let Some(n) = self.input_tokens {
            u.input_tokens = n;
        }
        if let Some(n) = self.output_tokens {
            u.output_tokens = n;
        }
        if let Some(n) = self.cache_creation_input_tokens {
            u.cache_write_tokens = n;
        }
        if let Some(n) = self.cache_read_input_tokens {
            u.cache_read_tokens = n;
        }
    }
}

/// The non-streaming response.
#[derive(Debug, Deserialize)]
pub(crate) struct MessagesResponse {
    #[serde(rename = "type", default)]
    pub(crate) kind: Option<String>,
    #[serde(default)]
    pub(crate) model: Option<String>,
    #[serde(default)]
    pub(crate) content: Option<Vec<ContentBlock>>,
    #[serde(default)]
    pub(crate) stop_reason: Option<String>,
    #[serde(default)]
    pub(crate) usage: WireUsage,
    /// `{"type": "error", "error": {...}}` answered with status 200.
    #[serde(default)]
    pub(crate) error: Option<WireError>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ContentBlock {
    Text {
        text: String,
    },
    ToolUse {
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

/// One server-sent event's data.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum StreamEvent {
    MessageStart {
        message: StreamMessage,
    },
    ContentBlockStart {
        #[serde(default)]
        index: u32,
        content_block: StartBlock,
    },
    ContentBlockDelta {
        #[serde(default)]
        index: u32,
        delta: Delta,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: WireUsage,
    },
    MessageStop,
    Error {
        error: WireError,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
pub(crate) struct StreamMessage {
    #[serde(default)]
    pub(crate) model: Option<String>,
    #[serde(default)]
    pub(crate) usage: WireUsage,
}

/// The block a `content_block_start` opens.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum StartBlock {
    ToolUse {
        name: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Delta {
    #[serde(rename = "text_delta")]
    Text { text: String },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: String },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
pub(crate) struct MessageDeltaBody {
    #[serde(default)]
    pub(crate) stop_reason: Option<String>,
}

/// `{"type": "error", "error": {"type": ..., "message": ...}}`.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    pub(crate) error: WireError,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireError {
    #[serde(rename = "type", default)]
    pub(crate) kind: Option<String>,
    #[serde(default)]
    pub(crate) message: Option<String>,
}

impl WireError {
    /// `type: message`, for error texts.
    pub(crate) fn describe(&self) -> String {
        match (&self.kind, &self.message) {
            (Some(k), Some(m)) => format!("{k}: {m}"),
            (Some(k), None) => k.clone(),
            (None, Some(m)) => m.clone(),
            (None, None) => "an error without a message".to_owned(),
        }
    }
}

/// Anthropic's `stop_reason` as spes names it.
pub(crate) fn stop_reason(s: Option<&str>) -> StopReason {
    match s {
        Some("end_turn") => StopReason::EndTurn,
        Some("max_tokens") => StopReason::MaxTokens,
        Some("stop_sequence") => StopReason::StopSequence,
        Some(other) => StopReason::Other(other.to_owned()),
        None => StopReason::Other("unknown".to_owned()),
    }
}
