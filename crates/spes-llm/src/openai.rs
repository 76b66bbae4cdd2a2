//! The OpenAI Chat Completions adapter, for OpenAI and any compatible
//! server (Ollama, vLLM, llama.cpp server, proxies) through `base_url`.
//!
//! `POST {base_url}/chat/completions` (default base URL
//! `https://api.openai.com/v1`) with `Authorization: Bearer KEY` when a key
//! is configured (local servers need none) and a JSON body:
//!
//! - `model`: the request's, else the provider's default (one is required);
//! - `messages`: the system text first, as a `system` message;
//! - the token limit (the request's, else the provider's, else omitted) as
//!   `max_completion_tokens` for OpenAI's own API (no `base_url`, or host
//!   `api.openai.com`: its reasoning models refuse `max_tokens`) and as
//!   `max_tokens` for every other server (Ollama, vLLM and llama.cpp know
//!   only that one); `max_tokens_field` in `spes.toml` overrides the choice;
//! - `temperature`, `stop`;
//! - `response_format`: `{"type": "json_schema", "json_schema": {"name":
//!   "response", "schema": ..., "strict": S}}` when the request carries a
//!   JSON schema, where `S` is true exactly when OpenAI's strict mode
//!   accepts the schema (an object root; every object lists all its
//!   properties in `required` and sets `additionalProperties: false`);
//!   `{"type": "json_object"}` when the request asks for JSON without a
//!   schema (and then, if no message mentions JSON, which OpenAI requires,
//!   the system text gains "Respond with a single JSON value.");
//! - `tools`: each [`ToolSpec`](spes_core::tool::ToolSpec) as `{"type":
//!   "function", "function": {"name": ..., "description": ...,
//!   "parameters": ...}}` (no `description` when it is empty), and
//!   `tool_choice` (`"auto"`, `"none"`, `"required"` or `{"type":
//!   "function", "function": {"name": N}}`) when the request sets one and
//!   offers tools (OpenAI refuses a `tool_choice` without `tools`);
//! - `stream: true` and `stream_options: {"include_usage": true}` when
//!   streaming, so that streamed answers report usage too.
//!
//! **Tool turns in the history.** An assistant message with tool calls is
//! sent with `tool_calls: [{"id": ..., "type": "function", "function":
//! {"name": ..., "arguments": JSON text}}]` and `content: null` when it
//! has no text. Each tool result becomes its own `{"role": "tool",
//! "tool_call_id": ..., "content": ...}` message, placed before the text
//! of the message that carries it (a message with results and no text
//! sends only the `tool` messages). OpenAI's `tool` messages have no error
//! flag: an error result's content is sent prefixed with `Error: `.
//!
//! **Tool calls in the answer** come from choice 0's `message.tool_calls`
//! or, streamed, from `delta.tool_calls` fragments assembled by `index`
//! (the first fragment of a call carries its `id` and `function.name`,
//! later ones append to `function.arguments`; fragments of parallel calls
//! may interleave). [`ChatResponse::tool_calls`] lists them by index, each
//! with its arguments parsed once the answer is complete: empty arguments
//! are `{}`, arguments that are not JSON a transient `bad_response` (a
//! terminal `truncated` when `finish_reason` is `length`). A call without
//! an `id` gets `call_{index}`. `finish_reason: "tool_calls"` is
//! [`StopReason::ToolUse`](spes_core::message::StopReason::ToolUse), and
//! so is `stop` when the answer has tool calls (OpenAI says `stop` when
//! `tool_choice` names a function).
//!
//! Only choice index 0 is read (a server that returns `n > 1` choices, or
//! interleaves them in a stream, gives the first). A 200 whose choice 0 has
//! no `content`, no `refusal` and no `tool_calls` (or that has no choice,
//! or is an error object) is a transient `bad_response`, never an answer.
//! A `refusal` (streamed or not) is a terminal `refused` error carrying the
//! model's text. `finish_reason` maps `stop` to `EndTurn` (stop sequences
//! included: the API does not tell them apart) and `length` to
//! `MaxTokens`; usage keeps `prompt_tokens_details.cached_tokens`; the
//! `x-request-id` header becomes [`ChatResponse::request_id`].

mod wire;

use std::collections::BTreeMap;
use std::time::Instant;

use async_trait::async_trait;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use spes_core::config::MaxTokensField;
use spes_core::message::{ChatRequest, ChatResponse, Usage};

use crate::error::{ProviderError, ProviderErrorKind};
use crate::http::{self, HttpProviderConfig, Sent};
use crate::provider::{CallContext, Provider};
use crate::toolcall::{self, PartialCall};

use self::wire::{Chunk, Completion, CompletionRequest};

/// The public API.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// An OpenAI-compatible Chat Completions provider. Cheap to share; one
/// HTTP client (and connection pool) per provider.
#[derive(Debug)]
pub struct OpenAiProvider {
    cfg: HttpProviderConfig,
    url: Url,
    max_tokens_field: MaxTokensField,
    headers: HeaderMap,
    client: http::LazyClient,
}

impl OpenAiProvider {
    /// Builds the provider.
    ///
    /// # Errors
    ///
    /// [`ProviderErrorKind::Config`] for an unusable base URL or a key that
    /// cannot be sent as a header.
    pub fn new(cfg: HttpProviderConfig) -> Result<Self, ProviderError> {
        let base = cfg.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let url = http::endpoint(&cfg.name, base, "/chat/completions")?;
        let mut headers = HeaderMap::new();
        if let Some(key) = &cfg.api_key {
            let mut v =
                HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
                    ProviderError::new(
                        &cfg.name,
                        ProviderErrorKind::Config,
                        "the API key contains characters that cannot be sent in an HTTP header",
                    )
                })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let client = http::LazyClient::new(&cfg.name, &cfg.timeouts, &url);
        let max_tokens_field = cfg.max_tokens_field.unwrap_or_else(|| {
            if url.host_str() == Some("api.openai.com") {
                MaxTokensField::MaxCompletionTokens
            } else {
                MaxTokensField::MaxTokens
            }
        });
        Ok(Self {
            cfg,
            url,
            max_tokens_field,
            headers,
            client,
        })
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &HttpProviderConfig {
        &self.cfg
    }

    /// The field that carries `max_tokens` (configured, or picked by base URL).
    #[must_use]
    pub fn max_tokens_field(&self) -> MaxTokensField {
        self.max_tokens_field
    }

    /// The JSON body sent for `req` (for tests and `--dry-run` displays).
    ///
    /// # Errors
    ///
    /// [`ProviderErrorKind::Config`] when no model is named.
    pub fn request_body(&self, req: &ChatRequest) -> Result<serde_json::Value, ProviderError> {
        let model = self.model(req)?;
        serde_json::to_value(self.wire_request(req, model)).map_err(|e| {
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

    fn wire_request<'a>(&self, req: &'a ChatRequest, model: &'a str) -> CompletionRequest<'a> {
        CompletionRequest::new(
            req,
            model,
            req.max_tokens.or(self.cfg.max_tokens),
            self.max_tokens_field,
            self.cfg.stream,
        )
    }

    async fn call(
        &self,
        req: &ChatRequest,
        cx: &CallContext,
    ) -> Result<ChatResponse, ProviderError> {
        let name = self.cfg.name.as_str();
        let model = self.model(req)?;
        let body = self.wire_request(req, model);
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
            "x-request-id",
            parse_error,
        )
        .await?;
        let request_id = sent.request_id.clone();
        let out = if sent.is_sse {
            self.read_stream(sent, cx).await
        } else {
            self.read_json(sent, cx).await
        };
        http::finish_call(name, out, request_id, started)
    }

    async fn read_json(&self, sent: Sent, cx: &CallContext) -> Result<ChatResponse, ProviderError> {
        let name = self.cfg.name.as_str();
        let body = http::read_body(
            name,
            sent.resp,
            self.cfg.timeouts.idle,
            self.cfg.max_response_bytes,
        )
        .await?;
        let r: Completion = http::parse_json(name, &body)?;
        let bad = |why: String| ProviderError::new(name, ProviderErrorKind::BadResponse, why);
        if let Some(err) = &r.error
            && r.choices.is_empty()
        {
            let (kind, message) = wire::error_parts(err)
                .unwrap_or_else(|| (None, "an error object without a message".to_owned()));
            return Err(bad(format!(
                "the provider answered 200 with an error instead of a completion: {}{message}",
                kind.map(|k| format!("{k}: ")).unwrap_or_default()
            )));
        }
        let Some(choice) = r.choices.into_iter().find(|c| c.index.unwrap_or(0) == 0) else {
            return Err(bad("the response has no choice 0".to_owned()));
        };
        let Some(message) = choice.message else {
            return Err(bad("the response's choice 0 has no message".to_owned()));
        };
        if let Some(refusal) = message.refusal.filter(|r| !r.trim().is_empty()) {
            return Err(refused(name, &refusal));
        }
        let has_tools = message.tool_calls.as_ref().is_some_and(|t| !t.is_empty());
        let Some(text) = message.content.or_else(|| has_tools.then(String::new)) else {
            return Err(bad(
                "the response's choice 0 has no content, refusal or tool calls".to_owned(),
            ));
        };
        let stop = wire::stop_reason(choice.finish_reason.as_deref());
        let tool_calls = message
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let mut p = PartialCall::default();
                if let Some(f) = &c.function {
                    p.identify(c.id.as_deref(), f.name.as_deref());
                    f.push_arguments(&mut p.arguments);
                } else {
                    p.identify(c.id.as_deref(), None);
                }
                p.finish(name, &stop, || fallback_call_id(i))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(sink) = &cx.on_delta
            && !text.is_empty()
        {
            sink(&text);
        }
        Ok(ChatResponse {
            text,
            stop_reason: toolcall::stop_with_calls(stop, &tool_calls),
            usage: r.usage.map(Usage::from).unwrap_or_default(),
            model: r.model,
            request_id: None,
            latency_ms: 0,
            tool_calls,
        })
    }

    async fn read_stream(
        &self,
        sent: Sent,
        cx: &CallContext,
    ) -> Result<ChatResponse, ProviderError> {
        let name = self.cfg.name.as_str();
        let mut events = http::SseReader::new(
            name,
            sent.resp,
            self.cfg.timeouts.idle,
            self.cfg.max_response_bytes,
        );
        let mut text = String::new();
        let mut refusal = String::new();
        let mut saw_content = false;
        // Tool calls by their `index`; fragments of several calls may
        // interleave.
        let mut calls: BTreeMap<u32, PartialCall> = BTreeMap::new();
        let mut usage = Usage::default();
        let mut model = None;
        let mut finish: Option<String> = None;
        let mut done = false;
        while let Some(ev) = events.next().await {
            let ev = ev?;
            let data = ev.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                done = true;
                break;
            }
            let chunk: Chunk = http::parse_event(name, &ev)?;
            if let Some(err) = &chunk.error {
                let (kind, message) = wire::error_parts(err)
                    .unwrap_or_else(|| (None, "error object in the stream".to_owned()));
                let mut e = ProviderError::new(
                    name,
                    http::classify(None, kind.as_deref(), &message),
                    message,
                );
                e.provider_type = kind;
                return Err(e);
            }
            if chunk.model.is_some() {
                model = chunk.model;
            }
            if let Some(u) = chunk.usage {
                usage = u.into();
            }
            // Choice 0 only: other choices of an `n > 1` stream are not ours.
            for choice in chunk
                .choices
                .into_iter()
                .filter(|c| c.index.unwrap_or(0) == 0)
            {
                if let Some(t) = choice.delta.content {
                    saw_content = true;
                    if !t.is_empty() {
                        if let Some(sink) = &cx.on_delta {
                            sink(&t);
                        }
                        text.push_str(&t);
                    }
                }
                if let Some(r) = choice.delta.refusal {
                    refusal.push_str(&r);
                }
                for (pos, c) in choice.delta.tool_calls.into_iter().flatten().enumerate() {
                    let index = c
                        .index
                        .unwrap_or_else(|| u32::try_from(pos).unwrap_or(u32::MAX));
                    let p = calls.entry(index).or_default();
                    match &c.function {
                        Some(f) => {
                            p.identify(c.id.as_deref(), f.name.as_deref());
                            f.push_arguments(&mut p.arguments);
                        }
                        None => p.identify(c.id.as_deref(), None),
                    }
                }
                if choice.finish_reason.is_some() {
                    finish = choice.finish_reason;
                }
            }
        }
        // Some compatible servers end the stream without `[DONE]`; an
        // answer with a finish reason is complete.
        if !done && finish.is_none() {
            return Err(ProviderError::new(
                name,
                ProviderErrorKind::StreamBroken,
                "the stream ended before a finish_reason or `[DONE]`",
            ));
        }
        if !refusal.trim().is_empty() {
            return Err(refused(name, &refusal));
        }
        if !saw_content && calls.is_empty() {
            return Err(ProviderError::new(
                name,
                ProviderErrorKind::BadResponse,
                "the stream carried no content, refusal or tool calls for choice 0",
            ));
        }
        let stop = wire::stop_reason(finish.as_deref());
        let tool_calls = calls
            .into_iter()
            .map(|(i, p)| p.finish(name, &stop, || fallback_call_id(i as usize)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ChatResponse {
            text,
            stop_reason: toolcall::stop_with_calls(stop, &tool_calls),
            usage,
            model,
            request_id: None,
            latency_ms: 0,
            tool_calls,
        })
    }
}

/// The id given to a tool call that came without one (some compatible
/// servers send none): `call_{index}`.
fn fallback_call_id(index: usize) -> String {
    format!("call_{index}")
}

/// The terminal error for a refusal, carrying the model's words.
fn refused(name: &str, text: &str) -> ProviderError {
    ProviderError::new(
        name,
        ProviderErrorKind::Refused,
        format!("the model refused to answer: {}", text.trim()),
    )
}

fn parse_error(body: &[u8]) -> Option<(Option<String>, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    wire::error_parts(&v)
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn kind(&self) -> &'static str {
        "openai"
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
