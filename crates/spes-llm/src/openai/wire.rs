//! The OpenAI Chat Completions JSON, and conversions to and from
//! `spes_core::message`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use spes_core::config::MaxTokensField;
use spes_core::message::{ChatRequest, Message, Role, StopReason, Usage};
use spes_core::tool::{ToolCall, ToolChoice, ToolSpec};

/// `POST /chat/completions` body.
#[derive(Debug, Serialize)]
pub(crate) struct CompletionRequest<'a> {
    pub(crate) model: &'a str,
    pub(crate) messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) temperature: Option<f32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub(crate) stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) response_format: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stream_options: Option<StreamOptions>,
}

/// One message. `content` is `null` only for an assistant turn that called
/// tools and said nothing.
#[derive(Debug, Serialize)]
pub(crate) struct WireMessage<'a> {
    pub(crate) role: &'static str,
    pub(crate) content: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) tool_calls: Vec<WireCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_call_id: Option<&'a str>,
}

impl<'a> WireMessage<'a> {
    fn text(role: &'static str, content: Cow<'a, str>) -> Self {
        Self {
            role,
            content: Some(content),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// An assistant's tool call as sent back in the history.
#[derive(Debug, Serialize)]
pub(crate) struct WireCall<'a> {
    pub(crate) id: &'a str,
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) function: WireCallFunction<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct WireCallFunction<'a> {
    pub(crate) name: &'a str,
    /// The arguments as JSON text, as OpenAI sends and expects them.
    pub(crate) arguments: String,
}

/// A tool offered: `{"type": "function", "function": {...}}`.
#[derive(Debug, Serialize)]
pub(crate) struct WireTool<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) function: WireFunction<'a>,
}

#[derive(Debug, Serialize)]
pub(crate) struct WireFunction<'a> {
    pub(crate) name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub(crate) description: &'a str,
    pub(crate) parameters: &'a Value,
}

impl<'a> From<&'a ToolSpec> for WireTool<'a> {
    fn from(t: &'a ToolSpec) -> Self {
        Self {
            kind: "function",
            function: WireFunction {
                name: &t.name,
                description: &t.description,
                parameters: &t.parameters,
            },
        }
    }
}

/// `tool_choice` as OpenAI spells it.
pub(crate) fn tool_choice(c: &ToolChoice) -> Value {
    match c {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
    }
}

/// The text an error result is sent with: OpenAI's `tool` messages have no
/// error flag, so the model learns it from the text.
pub(crate) const TOOL_ERROR_PREFIX: &str = "Error: ";

/// The wire messages of one neutral message: its tool results first (one
/// `role: tool` message each), then its text and tool calls, if any.
fn push_message<'a>(out: &mut Vec<WireMessage<'a>>, m: &'a Message) {
    for r in &m.tool_results {
        let content = if r.is_error {
            Cow::Owned(format!("{TOOL_ERROR_PREFIX}{}", r.content))
        } else {
            Cow::Borrowed(r.content.as_str())
        };
        out.push(WireMessage {
            tool_call_id: Some(&r.call_id),
            ..WireMessage::text("tool", content)
        });
    }
    if !m.tool_results.is_empty() && m.content.is_empty() && m.tool_calls.is_empty() {
        return;
    }
    let role = match m.role {
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    let content = (!m.content.is_empty() || m.tool_calls.is_empty())
        .then_some(Cow::Borrowed(m.content.as_str()));
    out.push(WireMessage {
        role,
        content,
        tool_calls: m.tool_calls.iter().map(wire_call).collect(),
        tool_call_id: None,
    });
}

fn wire_call(c: &ToolCall) -> WireCall<'_> {
    WireCall {
        id: &c.id,
        kind: "function",
        function: WireCallFunction {
            name: &c.name,
            arguments: c.arguments.to_string(),
        },
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct StreamOptions {
    pub(crate) include_usage: bool,
}

/// The system text added in JSON mode when no message mentions JSON
/// (OpenAI refuses `json_object` requests whose messages never say "JSON").
pub(crate) const JSON_MODE_INSTRUCTION: &str = "Respond with a single JSON value.";

/// The name under which the step's schema is sent.
pub(crate) const SCHEMA_NAME: &str = "response";

/// Whether OpenAI's strict structured outputs accept `schema`: the root
/// is an object, and every object in it lists all its properties in
/// `required` and sets `additionalProperties: false`.
pub(crate) fn strict_compatible(schema: &Value) -> bool {
    fn objects_ok(v: &Value) -> bool {
        match v {
            Value::Object(m) => {
                let is_object = m.get("type").is_some_and(|t| {
                    t == "object"
                        || t.as_array()
                            .is_some_and(|a| a.iter().any(|x| x == "object"))
                }) || m.contains_key("properties");
                if is_object {
                    if m.get("additionalProperties") != Some(&Value::Bool(false)) {
                        return false;
                    }
                    let props = m.get("properties").and_then(Value::as_object);
                    let required: Vec<&str> = m
                        .get("required")
                        .and_then(Value::as_array)
                        .map(|r| r.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    if let Some(props) = props
                        && !props.keys().all(|k| required.contains(&k.as_str()))
                    {
                        return false;
                    }
                }
                m.iter().all(|(k, v)| match k.as_str() {
                    // Keywords whose values are data, not schemas.
                    "enum" | "const" | "default" | "examples" | "required" | "description"
                    | "title" => true,
                    _ => objects_ok(v),
                })
            }
            Value::Array(a) => a.iter().all(objects_ok),
            _ => true,
        }
    }
    schema.get("type") == Some(&Value::String("object".into())) && objects_ok(schema)
}

/// `response_format` for a request: the schema (strict when it allows),
/// else JSON mode when JSON was asked for, else none.
pub(crate) fn response_format(req: &ChatRequest) -> Option<Value> {
    match &req.json_schema {
        Some(schema) => Some(json!({
            "type": "json_schema",
            "json_schema": {
                "name": SCHEMA_NAME,
                "schema": schema,
                "strict": strict_compatible(schema),
            },
        })),
        None if req.json => Some(json!({"type": "json_object"})),
        None => None,
    }
}

impl<'a> CompletionRequest<'a> {
    pub(crate) fn new(
        req: &'a ChatRequest,
        model: &'a str,
        max_tokens: Option<u32>,
        field: MaxTokensField,
        stream: bool,
    ) -> Self {
        let mentions_json = req
            .system
            .as_deref()
            .into_iter()
            .chain(req.messages.iter().map(|m| m.content.as_str()))
            .any(|t| t.to_ascii_lowercase().contains("json"));
        let system: Option<Cow<'a, str>> = match req.system.as_deref() {
            _ if req.json && req.json_schema.is_none() && !mentions_json => {
                Some(match req.system.as_deref() {
                    Some(s) => Cow::Owned(format!("{s}\n\n{JSON_MODE_INSTRUCTION}")),
                    None => Cow::Borrowed(JSON_MODE_INSTRUCTION),
                })
            }
            Some(s) => Some(Cow::Borrowed(s)),
            None => None,
        };
        let mut messages: Vec<WireMessage<'a>> = system
            .map(|content| WireMessage::text("system", content))
            .into_iter()
            .collect();
        for m in &req.messages {
            push_message(&mut messages, m);
        }
        let (max_tokens, max_completion_tokens) = match field {
            MaxTokensField::MaxTokens => (max_tokens, None),
            MaxTokensField::MaxCompletionTokens => (None, max_tokens),
        };
        Self {
            model,
            messages,
            max_tokens,
            max_completion_tokens,
            temperature: req.temperature,
            stop: &req.stop,
            response_format: response_format(req),
            tools: req.tools.iter().map(WireTool::from).collect(),
            tool_choice: req
                .tool_choice
                .as_ref()
                .filter(|_| !req.tools.is_empty())
                .map(tool_choice),
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireUsage {
    #[serde(default)]
    pub(crate) prompt_tokens: Option<u64>,
    #[serde(default)]
    pub(crate) completion_tokens: Option<u64>,
    #[serde(default)]
    pub(crate) prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct PromptDetails {
    #[serde(default)]
    pub(crate) cached_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Self {
            input_tokens: u.prompt_tokens.unwrap_or(0),
            output_tokens: u.completion_tokens.unwrap_or(0),
            cache_read_tokens: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_write_tokens: 0,
        }
    }
}

/// The non-streaming response.
#[derive(Debug, Deserialize)]
pub(crate) struct Completion {
    #[serde(default)]
    pub(crate) model: Option<String>,
    #[serde(default)]
    pub(crate) choices: Vec<Choice>,
    #[serde(default)]
    pub(crate) usage: Option<WireUsage>,
    /// An error object answered with status 200 (some proxies do).
    #[serde(default)]
    pub(crate) error: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Choice {
    #[serde(default)]
    pub(crate) index: Option<u32>,
    #[serde(default)]
    pub(crate) message: Option<ChoiceMessage>,
    #[serde(default)]
    pub(crate) finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChoiceMessage {
    #[serde(default)]
    pub(crate) content: Option<String>,
    #[serde(default)]
    pub(crate) refusal: Option<String>,
    #[serde(default)]
    pub(crate) tool_calls: Option<Vec<CallOut>>,
}

/// A tool call in a response (`tool_calls[]` of a message), or a fragment
/// of one in a streamed delta (keyed by `index`).
#[derive(Debug, Deserialize)]
pub(crate) struct CallOut {
    #[serde(default)]
    pub(crate) index: Option<u32>,
    #[serde(default)]
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) function: Option<CallOutFunction>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CallOutFunction {
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// JSON text (OpenAI); some compatible servers send the object itself.
    #[serde(default)]
    pub(crate) arguments: Option<Value>,
}

impl CallOutFunction {
    /// Appends the arguments (text as it is, an object as its JSON).
    pub(crate) fn push_arguments(&self, out: &mut String) {
        match &self.arguments {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Null) | None => {}
            Some(v) => out.push_str(&v.to_string()),
        }
    }
}

/// One streamed chunk (or an error object in the stream).
#[derive(Debug, Deserialize)]
pub(crate) struct Chunk {
    #[serde(default)]
    pub(crate) model: Option<String>,
    #[serde(default)]
    pub(crate) choices: Vec<ChunkChoice>,
    #[serde(default)]
    pub(crate) usage: Option<WireUsage>,
    #[serde(default)]
    pub(crate) error: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChunkChoice {
    #[serde(default)]
    pub(crate) index: Option<u32>,
    #[serde(default)]
    pub(crate) delta: ChunkDelta,
    #[serde(default)]
    pub(crate) finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ChunkDelta {
    #[serde(default)]
    pub(crate) content: Option<String>,
    #[serde(default)]
    pub(crate) refusal: Option<String>,
    #[serde(default)]
    pub(crate) tool_calls: Option<Vec<CallOut>>,
}

/// Type (the `code` when it is a string, else the `type`) and message of
/// an error object. Accepts OpenAI's `{"error": {...}}`, vLLM's top-level
/// object and Ollama's `{"error": "text"}`.
pub(crate) fn error_parts(v: &Value) -> Option<(Option<String>, String)> {
    let e = v.get("error").unwrap_or(v);
    if let Some(s) = e.as_str() {
        return Some((None, s.to_owned()));
    }
    let message = e.get("message").and_then(Value::as_str)?.to_owned();
    let code = e
        .get("code")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty());
    let kind = code.or_else(|| e.get("type").and_then(Value::as_str));
    Some((kind.map(str::to_owned), message))
}

/// OpenAI's `finish_reason` as spes names it. A stop sequence is reported
/// as `stop` and so maps to `EndTurn`.
pub(crate) fn stop_reason(s: Option<&str>) -> StopReason {
    match s {
        Some("stop") => StopReason::EndTurn,
        Some("length") => StopReason::MaxTokens,
        Some("tool_calls") => StopReason::ToolUse,
        Some(other) => StopReason::Other(other.to_owned()),
        None => StopReason::Other("unknown".to_owned()),
    }
}
