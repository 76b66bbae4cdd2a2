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
//! **Structured output.** A request's `json_schema` is not sent as an API
//! parameter (Anthropic's structured-output parameter has changed shape
//! across betas); instead an instruction carrying the schema is appended to
//! the system text: "Respond with a single JSON value, and nothing else,
//! that conforms to this JSON Schema: ...". The engine validates the answer
//! against the schema either way.
//!
//! The answer's text is the concatenation of its text blocks; usage keeps
//! `cache_read_input_tokens` and `cache_creation_input_tokens`; the
//! `request-id` header becomes [`ChatResponse::request_id`].

mod wire;

use std::time::Instant;

use async_trait::async_trait;
use eventsource_stream::Eventsource as _;
use futures::StreamExt as _;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Client, Url};
use spes_core::message::{ChatRequest, ChatResponse, Usage};

use crate::error::{ProviderError, ProviderErrorKind};
use crate::http::{self, HttpProviderConfig, Sent};
use crate::provider::{CallContext, Provider};

use self::wire::{ContentBlock, Delta, MessagesRequest, MessagesResponse, StreamEvent};

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
    client: Client,
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
        let client = http::build_client(&cfg.name, &cfg.timeouts)?;
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

    fn wire_request<'a>(&self, req: &'a ChatRequest, model: &'a str) -> MessagesRequest<'a> {
        let max_tokens = req
            .max_tokens
            .or(self.cfg.max_tokens)
            .unwrap_or(DEFAULT_MAX_TOKENS);
        MessagesRequest::new(req, model, max_tokens, self.cfg.stream)
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
            http::MAX_BODY_BYTES,
        )
        .await?;
        let r: MessagesResponse = http::parse_json(name, &body)?;
        let text: String = r
            .content
            .iter()
            .filter_map(|b| match b {
                ContentBlock::Text { text } => Some(text.as_str()),
                ContentBlock::Other => None,
            })
            .collect();
        if let Some(sink) = &cx.on_delta
            && !text.is_empty()
        {
            sink(&text);
        }
        let mut usage = Usage::default();
        r.usage.merge_into(&mut usage);
        Ok(ChatResponse {
            text,
            stop_reason: wire::stop_reason(r.stop_reason.as_deref()),
            usage,
            model: r.model,
            request_id: None,
            latency_ms: 0,
        })
    }

    async fn read_stream(
        &self,
        sent: Sent,
        cx: &CallContext,
    ) -> Result<ChatResponse, ProviderError> {
        let name = self.cfg.name.as_str();
        let mut events =
            std::pin::pin!(http::idle_stream(sent.resp, self.cfg.timeouts.idle).eventsource());
        let mut text = String::new();
        let mut usage = Usage::default();
        let mut model = None;
        let mut stop = None;
        let mut finished = false;
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(|e| http::sse_error(name, e))?;
            if ev.data.trim().is_empty() {
                continue;
            }
            let parsed: StreamEvent = serde_json::from_str(&ev.data).map_err(|e| {
                ProviderError::new(
                    name,
                    ProviderErrorKind::BadResponse,
                    format!("cannot parse the `{}` stream event: {e}", ev.event),
                )
            })?;
            match parsed {
                StreamEvent::MessageStart { message } => {
                    model = message.model;
                    message.usage.merge_into(&mut usage);
                }
                StreamEvent::ContentBlockDelta {
                    delta: Delta::TextDelta { text: t },
                } => {
                    if let Some(sink) = &cx.on_delta
                        && !t.is_empty()
                    {
                        sink(&t);
                    }
                    text.push_str(&t);
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
                StreamEvent::ContentBlockDelta { .. } | StreamEvent::Other => {}
            }
        }
        if !finished {
            return Err(ProviderError::new(
                name,
                ProviderErrorKind::StreamBroken,
                "the stream ended before `message_stop`",
            ));
        }
        Ok(ChatResponse {
            text,
            stop_reason: wire::stop_reason(stop.as_deref()),
            usage,
            model,
            request_id: None,
            latency_ms: 0,
        })
    }
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
        self.call(req, cx)
            .await
            .map_err(|e| http::redact(e, self.cfg.api_key.as_ref()))
    }
}
