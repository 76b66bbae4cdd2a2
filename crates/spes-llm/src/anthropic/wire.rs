//! The Anthropic Messages API's JSON, and conversions to and from
//! `spes_core::message`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use spes_core::message::{ChatRequest, Message, Role, StopReason, Usage};
use spes_core::tool::{ToolChoice, ToolSpec};

/// `POST /v1/messages` body.
#[derive(Debug, Serialize)]
pub(crate) struct MessagesRequest<'a> {
    pub(crate) model: &'a str,
    pub(crate) max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) system: Option<Value>,
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
    pub(crate) content: WireContent<'a>,
}

/// A message's content: its text as a string, as before tools; a list of
/// blocks when it carries tool calls or results.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum WireContent<'a> {
    Text(&'a str),
    Blocks(Vec<WireBlock<'a>>),
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum WireBlock<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: &'a Value,
    },
    ToolResult {
        tool_use_id: &'a str,
        content: &'a str,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
    },
}

/// The content of one neutral message: tool results first (Anthropic wants
/// them before any text of the user turn), then the text, then tool calls.
fn content(m: &Message) -> WireContent<'_> {
    if m.tool_calls.is_empty() && m.tool_results.is_empty() {
        return WireContent::Text(&m.content);
    }
    let results = m.tool_results.iter().map(|r| WireBlock::ToolResult {
        tool_use_id: &r.call_id,
        content: &r.content,
        is_error: r.is_error,
    });
    let text = (!m.content.is_empty()).then_some(WireBlock::Text { text: &m.content });
    let calls = m.tool_calls.iter().map(|c| WireBlock::ToolUse {
        id: &c.id,
        name: &c.name,
        input: &c.arguments,
    });
    WireContent::Blocks(results.chain(text).chain(calls).collect())
}

fn wire_tool(t: &ToolSpec) -> Value {
    let mut v = json!({"name": t.name, "input_schema": t.parameters});
    if !t.description.is_empty()
        && let Some(o) = v.as_object_mut()
    {
        o.insert("description".to_owned(), json!(t.description));
    }
    v
}

/// `tool_choice` as Anthropic spells it.
fn tool_choice(c: &ToolChoice) -> Value {
    match c {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
    }
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
    pub(crate) fn new(
        req: &'a ChatRequest,
        model: &'a str,
        max_tokens: u32,
        stream: bool,
        prompt_cache: bool,
    ) -> Self {
        let system = match (&req.system, req.json && req.json_schema.is_none()) {
            (s, false) => s.clone(),
            (None, true) => Some(JSON_INSTRUCTION.to_owned()),
            (Some(s), true) => Some(format!("{s}\n\n{JSON_INSTRUCTION}")),
        };
        // With the prompt cache on, the system text is one block marked
        // for the cache (Anthropic caches the prefix up to the mark).
        let system = system.map(|s| {
            if prompt_cache {
                json!([{ "type": "text", "text": s, "cache_control": { "type": "ephemeral" } }])
            } else {
                Value::String(s)
            }
        });
        let user_tools = req.tools.iter().map(wire_tool);
        let (tools, tool_choice) = match &req.json_schema {
            None if req.tools.is_empty() => (None, None),
            None => (
                Some(user_tools.collect()),
                req.tool_choice.as_ref().map(tool_choice),
            ),
            Some(schema) => {
                let input_schema = match tool_shape(schema) {
                    ToolShape::Direct => Value::clone(schema),
                    ToolShape::Wrapped => json!({
                        "type": "object",
                        "properties": {"value": schema},
                        "required": ["value"],
                    }),
                };
                let answer_tool = json!({
                    "name": TOOL_NAME,
                    "description": "Give your answer as this tool's input, which must conform to its input schema.",
                    "input_schema": input_schema,
                });
                let forced = json!({"type": "tool", "name": TOOL_NAME});
                // With tools of its own the model may call them before it
                // answers; the answer still comes as the answer tool's input.
                let choice = match (&req.tool_choice, req.tools.is_empty()) {
                    (_, true) | (Some(ToolChoice::None), false) => forced,
                    (Some(ToolChoice::Tool(name)), false) => json!({"type": "tool", "name": name}),
                    (None | Some(ToolChoice::Auto | ToolChoice::Required), false) => {
                        json!({"type": "any"})
                    }
                };
                (
                    Some(user_tools.chain(std::iter::once(answer_tool)).collect()),
                    Some(choice),
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
                    content: content(m),
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
        #[serde(default)]
        id: String,
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
        #[serde(default)]
        id: String,
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
        Some("tool_use") => StopReason::ToolUse,
        Some(other) => StopReason::Other(other.to_owned()),
        None => StopReason::Other("unknown".to_owned()),
    }
}
