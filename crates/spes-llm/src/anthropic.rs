//! The Anthropic Messages API adapter.
//!
//! `POST {base_url}/v1/messages` (default base URL
//! `https://api.anthropic.com`) with `x-api-key`, `anthropic-version:
//! 2023-06-01` and a JSON body:
//!
//! - `model`: the request's, else the provider's default (one is required);
//! - `max_tokens` (required by Anthropic): the request's, else the
//!   provider's `max_tokens`, else [`DEFAULT_MAX_TOKENS`];
//! - `system`, `messages`, `temperature`, `stop_sequences`;
//! - `stream: true` when streaming.
//!
//! **Structured output.** A request's `json_schema` becomes a forced tool
//! call, the documented way to get structured output from the Messages
//! API: `tools: [{"name": "structured_answer", "description": ...,
//! "input_schema": SCHEMA}]` and `tool_choice: {"type": "tool", "name":
//! "structured_answer"}`. Anthropic requires an object `input_schema`, so a
//! schema whose `type` is not `object` is sent wrapped as `{"type":
//! "object", "properties": {"value": SCHEMA}, "required": ["value"]}`. The
//! tool call's `input` (streamed as `input_json_delta`, or not) is the
//! answer: its JSON text, unwrapped. A request that asks for JSON without a
//! schema (Anthropic has no JSON mode) gets an instruction appended to its
//! system text: "Respond with a single JSON value and nothing else: no
//! prose, no code fences."; the engine checks the answer parses.
//!
//! **Tools.** A request's tools are sent as `tools: [{"name": ...,
//! "description": ..., "input_schema": ...}]` (no `description` when it is
//! empty) and its `tool_choice` as `{"type": "auto"}`, `{"type":
//! "none"}`, `{"type": "any"}` (`Required`) or `{"type": "tool", "name":
//! N}`, when it offers tools. In the history, an assistant message with
//! tool calls is sent as a list of blocks: its text (if any), then one
//! `{"type": "tool_use", "id", "name", "input"}` per call; a message with
//! tool results as one `{"type": "tool_result", "tool_use_id", "content"}`
//! block per result (with `"is_error": true` for an error), then its text
//! (if any). Messages without tools keep their plain-string `content`.
//! The answer's `tool_use` blocks (streamed: a `content_block_start` of
//! type `tool_use` with its id and name, then `input_json_delta`
//! fragments, assembled per block and parsed once the message is
//! complete; no fragment at all is `{}`) become
//! [`ChatResponse::tool_calls`], in block order, beside the text of its
//! text blocks; `stop_reason: "tool_use"` is
//! [`StopReason::ToolUse`](spes_core::message::StopReason::ToolUse).
//! Arguments that are not JSON are a transient `bad_response` (a terminal
//! `truncated` when `stop_reason` is `max_tokens`).
//!
//! **Tools and a schema together.** The request's tools are sent beside
//! the answer tool `structured_answer`, and the model must call one of
//! them (`tool_choice: {"type": "any"}`) unless the request's
//! `tool_choice` says otherwise: `Tool(N)` forces `N`, and `None` forces
//! the answer tool (the model may not call its tools, and must answer).
//! An answer that calls any of the request's tools is a tool-use answer
//! (its calls, `StopReason::ToolUse`; an answer-tool call beside them is
//! dropped: the model answers again after the results); one that calls
//! only the answer tool is the structured answer, as above. A request
//! tool named `structured_answer` beside a schema is a terminal
//! `invalid_request` error, sent nowhere.
//!
//! **Well-formed answers only.** A 200 must be a `message` (`type:
//! "message"`) with a `content` list that is not empty or a `stop_reason`;
//! `{}`, an error object with status 200, or a stream without
//! `message_start` are a transient `bad_response`, never an answer.
//! `stop_reason: "refusal"` is a terminal `refused` error carrying the
//! model's text; `max_tokens` is reported as it is.
//!
//! The answer's text is the concatenation of its text blocks; usage keeps
//! `cache_read_input_tokens` and `cache_creation_input_tokens`; the
//! `request-id` header becomes [`ChatResponse::request_id`].

mod wire;

use std::collections::BTreeMap;
use std::time::Instant;

use async_trait::async_trait;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderValue};
use spes_core::message::{ChatRequest, ChatResponse, Usage};
use spes_core::tool::ToolCall;

use crate::error::{ProviderError, ProviderErrorKind};
use crate::http::{self, HttpProviderConfig, Sent};
use crate::provider::{CallContext, Provider};
use crate::toolcall::{self, PartialCall};

use self::wire::{
    ContentBlock, Delta, MessagesRequest, MessagesResponse, StartBlock, StreamEvent, TOOL_NAME,
    ToolShape,
};

/// The public API.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The `anthropic-version` header sent.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when neither the request nor the provider sets one.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// An Anthropic Messages provider. Cheap to share; one HTTP client (and
/// connection pool) per provider.
#[derive(Debug)]
pub struct AnthropicProvider {
    cfg: HttpProviderConfig,
    url: Url,
    headers: HeaderMap,
    client: http::LazyClient,
}

impl AnthropicProvider {
    /// Builds the provider.
    ///
    /// # Errors
    ///
    /// [`ProviderErrorKind::Config`] for an unusable base URL or a key that
    /// cannot be sent as a header.
    pub fn new(cfg: HttpProviderConfig) -> Result<Self, ProviderError> {
        let base = cfg.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let url = http::endpoint(&cfg.name, base, "/v1/messages")?;
        let mut headers = HeaderMap::new();
        headers.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
        if let Some(key) = &cfg.api_key {
            let mut v = HeaderValue::from_str(key.expose()).map_err(|_| {
                ProviderError::new(
                    &cfg.name,
                    ProviderErrorKind::Config,
                    "the API key contains characters that cannot be sent in an HTTP header",
                )
            })?;
            v.set_sensitive(true);
            headers.insert("x-api-key", v);
        }
        let client = http::LazyClient::new(&cfg.name, &cfg.timeouts, &url);
        Ok(Self {
            cfg,
            url,
            headers,
            client,
        })
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &HttpProviderConfig {
        &self.cfg
    }

    /// The JSON body sent for `req` (for tests and `--dry-run` displays).
    ///
    /// # Errors
    ///
    /// [`ProviderErrorKind::Config`] when no model is named;
    /// [`ProviderErrorKind::InvalidRequest`] when a tool of the request is
    /// named `structured_answer` while it carries a schema.
    pub fn request_body(&self, req: &ChatRequest) -> Result<serde_json::Value, ProviderError> {
        let model = self.model(req)?;
        serde_json::to_value(self.wire_request(req, model)?).map_err(|e| {
            ProviderError::new(&self.cfg.name, ProviderErrorKind::Config, e.to_string())
        })
    }

    fn model<'a>(&'a self, req: &'a ChatRequest) -> Result<&'a str, ProviderError> {
        req.model
            .as_deref()
            .or(self.cfg.model.as_deref())
            .ok_or_else(|| {
                ProviderError::new(
                    &self.cfg.name,
                    ProviderErrorKind::Config,
                    format!(
                        "no model: the request names none and [providers.{}] sets no model",
                        self.cfg.name
                    ),
                )
            })
    }

    /// The wire request; a request whose own tool is named like the
    /// answer tool while it asks for a schema is a terminal
    /// `invalid_request` (the two could not be told apart).
    fn wire_request<'a>(
        &self,
        req: &'a ChatRequest,
        model: &'a str,
    ) -> Result<MessagesRequest<'a>, ProviderError> {
        if req.json_schema.is_some() && req.tools.iter().any(|t| t.name == TOOL_NAME) {
            return Err(ProviderError::new(
                &self.cfg.name,
                ProviderErrorKind::InvalidRequest,
                format!(
                    "a tool is named `{TOOL_NAME}`, the name spes gives the structured-output \
                     tool of a request with a schema: rename the tool"
                ),
            ));
        }
        let max_tokens = req
            .max_tokens
            .or(self.cfg.max_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS);
        Ok(MessagesRequest::new(
            req,
            model,
            max_tokens,
            self.cfg.stream,
            self.cfg.prompt_cache,
        ))
    }

    async fn call(
        &self,
        req: &ChatRequest,
        cx: &CallContext,
    ) -> Result<ChatResponse, ProviderError> {
        let name = self.cfg.name.as_str();
        let model = self.model(req)?;
        let body = self.wire_request(req, model)?;
        let started = Instant::now();
        let rb = self
            .client
            .get()?
            .post(self.url.clone())
            .headers(self.headers.clone())
            .json(&body);
        let rb = http::with_step_header(rb, &self.cfg, cx);
        let sent = http::execute(
            name,
            rb,
            &self.cfg.timeouts,
            &self.url,
            "request-id",
            parse_error,
        )
        .await?;
        let request_id = sent.request_id.clone();
        let out = if sent.is_sse {
            self.read_stream(sent, req, cx).await
        } else {
            self.read_json(sent, req, cx).await
        };
        http::finish_call(name, out, request_id, started)
    }

    async fn read_json(
        &self,
        sent: Sent,
        req: &ChatRequest,
        cx: &CallContext,
    ) -> Result<ChatResponse, ProviderError> {
        let name = self.cfg.name.as_str();
        let body = http::read_body(
            name,
            sent.resp,
            self.cfg.timeouts.idle,
            self.cfg.max_response_bytes,
        )
        .await?;
        let r: MessagesResponse = http::parse_json(name, &body)?;
        let bad = |why: String| ProviderError::new(name, ProviderErrorKind::BadResponse, why);
        if let Some(err) = &r.error {
            return Err(bad(format!(
                "the provider answered 200 with an error instead of a message: {}",
                err.describe()
            )));
        }
        if r.kind.as_deref() != Some("message") {
            return Err(bad(match &r.kind {
                Some(k) => format!("the 200 response is a `{k}`, not a `message`"),
                None => "the 200 response is not a message (it has no `type`)".to_owned(),
            }));
        }
        let Some(content) = r.content else {
            return Err(bad("the message has no `content`".to_owned()));
        };
        if content.is_empty() && r.stop_reason.is_none() {
            return Err(bad(
                "the message has empty `content` and no `stop_reason`".to_owned()
            ));
        }
        let mut text = String::new();
        let mut answer_input = None;
        let mut calls = Vec::new();
        for (i, b) in content.into_iter().enumerate() {
            match b {
                ContentBlock::Text { text: t } => text.push_str(&t),
                ContentBlock::ToolUse { name: n, input, .. }
                    if n == TOOL_NAME && req.json_schema.is_some() =>
                {
                    answer_input.get_or_insert(input);
                }
                ContentBlock::ToolUse { id, name: n, input } => {
                    let input = if input.is_null() {
                        serde_json::Value::Object(serde_json::Map::new())
                    } else {
                        input
                    };
                    let id = if id.is_empty() {
                        fallback_call_id(i)
                    } else {
                        id
                    };
                    calls.push(ToolCall::new(id, n, input));
                }
                ContentBlock::Other => {}
            }
        }
        if r.stop_reason.as_deref() == Some("refusal") {
            return Err(refused(name, &text));
        }
        let mut stop = r.stop_reason;
        if let (Some(schema), Some(input), true) =
            (&req.json_schema, answer_input, calls.is_empty())
        {
            text = wire::tool_answer(input, wire::tool_shape(schema));
            // The forced call is the whole answer.
            if stop.as_deref() == Some("tool_use") {
                stop = Some("end_turn".to_owned());
            }
        }
        if let Some(sink) = &cx.on_delta
            && !text.is_empty()
        {
            sink(&text);
        }
        let mut usage = Usage::default();
        r.usage.merge_into(&mut usage);
        Ok(ChatResponse {
            text,
            stop_reason: toolcall::stop_with_calls(wire::stop_reason(stop.as_deref()), &calls),
            usage,
            model: r.model,
            request_id: None,
            latency_ms: 0,
            tool_calls: calls,
        })
    }

    async fn read_stream(
        &self,
        sent: Sent,
        req: &ChatRequest,
        cx: &CallContext,
    ) -> Result<ChatResponse, ProviderError> {
        let name = self.cfg.name.as_str();
        let mut events = http::SseReader::new(
            name,
            sent.resp,
            self.cfg.timeouts.idle,
            self.cfg.max_response_bytes,
        );
        let shape = req.json_schema.as_deref().map(wire::tool_shape);
        let mut text = String::new();
        // The answer tool's block (structured output) and its JSON.
        let mut answer_block: Option<u32> = None;
        let mut answer_json: Option<String> = None;
        // The model's own tool calls, by content-block index.
        let mut calls: BTreeMap<u32, PartialCall> = BTreeMap::new();
        let mut usage = Usage::default();
        let mut model = None;
        let mut stop = None;
        let mut started = false;
        let mut finished = false;
        while let Some(ev) = events.next().await {
            let ev = ev?;
            if ev.data.trim().is_empty() {
                continue;
            }
            let parsed: StreamEvent = http::parse_event(name, &ev)?;
            match parsed {
                StreamEvent::MessageStart { message } => {
                    started = true;
                    model = message.model;
                    message.usage.merge_into(&mut usage);
                }
                StreamEvent::ContentBlockStart {
                    index,
                    content_block: StartBlock::ToolUse { id, name: n },
                } => {
                    if n == TOOL_NAME && shape.is_some() {
                        if answer_block.is_none() {
                            answer_block = Some(index);
                            answer_json = Some(String::new());
                        }
                    } else {
                        calls
                            .entry(index)
                            .or_default()
                            .identify(Some(&id), Some(&n));
                    }
                }
                StreamEvent::ContentBlockDelta {
                    delta: Delta::Text { text: t },
                    ..
                } => {
                    if let Some(sink) = &cx.on_delta
                        && !t.is_empty()
                    {
                        sink(&t);
                    }
                    text.push_str(&t);
                }
                StreamEvent::ContentBlockDelta {
                    index,
                    delta: Delta::InputJson { partial_json },
                } if answer_block != Some(index) => {
                    if let Some(p) = calls.get_mut(&index) {
                        p.arguments.push_str(&partial_json);
                    }
                }
                StreamEvent::ContentBlockDelta {
                    delta: Delta::InputJson { partial_json },
                    ..
                } => {
                    if let Some(j) = &mut answer_json {
                        j.push_str(&partial_json);
                    }
                    if shape == Some(ToolShape::Direct)
                        && let Some(sink) = &cx.on_delta
                        && !partial_json.is_empty()
                    {
                        sink(&partial_json);
                    }
                }
                StreamEvent::MessageDelta { delta, usage: u } => {
                    if delta.stop_reason.is_some() {
                        stop = delta.stop_reason;
                    }
                    u.merge_into(&mut usage);
                }
                StreamEvent::MessageStop => {
                    finished = true;
                    break;
                }
                StreamEvent::Error { error } => {
                    let message = error
                        .message
                        .unwrap_or_else(|| "error event in the stream".to_owned());
                    let kind = http::classify(None, error.kind.as_deref(), &message);
                    let mut e = ProviderError::new(name, kind, message);
                    e.provider_type = error.kind;
                    return Err(e);
                }
                StreamEvent::ContentBlockStart { .. }
                | StreamEvent::ContentBlockDelta { .. }
                | StreamEvent::Other => {}
            }
        }
        if !finished {
            return Err(ProviderError::new(
                name,
                ProviderErrorKind::StreamBroken,
                "the stream ended before `message_stop`",
            ));
        }
        if !started {
            return Err(ProviderError::new(
                name,
                ProviderErrorKind::BadResponse,
                "the stream ended without a `message_start`",
            ));
        }
        if stop.as_deref() == Some("refusal") {
            return Err(refused(name, &text));
        }
        let stop_reason = wire::stop_reason(stop.as_deref());
        if !calls.is_empty() {
            // The model's own calls come first: it answers after their
            // results (any answer-tool call beside them is dropped).
            let tool_calls = calls
                .into_iter()
                .map(|(i, p)| p.finish(name, &stop_reason, || fallback_call_id(i as usize)))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(ChatResponse {
                text,
                stop_reason: toolcall::stop_with_calls(stop_reason, &tool_calls),
                usage,
                model,
                request_id: None,
                latency_ms: 0,
                tool_calls,
            });
        }
        if let (Some(shape), Some(j)) = (shape, answer_json) {
            // A complete input is re-serialized as the non-streamed one is;
            // one cut by max_tokens is kept as it came.
            let j = if j.trim().is_empty() {
                "{}".to_owned()
            } else {
                j
            };
            text = match serde_json::from_str::<serde_json::Value>(&j) {
                Ok(v) => wire::tool_answer(v, shape),
                Err(_) => j,
            };
            if shape == ToolShape::Wrapped
                && let Some(sink) = &cx.on_delta
            {
                sink(&text);
            }
            if stop.as_deref() == Some("tool_use") {
                stop = Some("end_turn".to_owned());
            }
        }
        Ok(ChatResponse {
            text,
            stop_reason: wire::stop_reason(stop.as_deref()),
            usage,
            model,
            request_id: None,
            latency_ms: 0,
            tool_calls: Vec::new(),
        })
    }
}

/// The id given to a `tool_use` block that came without one:
/// `toolu_{block index}`.
fn fallback_call_id(index: usize) -> String {
    format!("toolu_{index}")
}

/// The terminal error for `stop_reason: "refusal"`, carrying the model's words.
fn refused(name: &str, text: &str) -> ProviderError {
    let text = text.trim();
    ProviderError::new(
        name,
        ProviderErrorKind::Refused,
        if text.is_empty() {
            "the model refused to answer (stop_reason: refusal) and gave no text".to_owned()
        } else {
            format!("the model refused to answer: {text}")
        },
    )
}

fn parse_error(body: &[u8]) -> Option<(Option<String>, String)> {
    let b: wire::ErrorBody = serde_json::from_slice(body).ok()?;
    let message = b
        .error
        .message
        .unwrap_or_else(|| http::fallback_message(body));
    Some((b.error.kind, message))
}

#[async_trait]
impl Provider for AnthropicProvider {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn kind(&self) -> &'static str {
        "anthropic"
    }

    fn default_model(&self) -> Option<&str> {
        self.cfg.model.as_deref()
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        cx: &CallContext,
    ) -> Result<ChatResponse, ProviderError> {
        http::with_deadline(&self.cfg.name, &self.cfg.timeouts, self.call(req, cx))
            .await
            .map_err(|e| http::redact(e, self.cfg.api_key.as_ref()))
    }
}
