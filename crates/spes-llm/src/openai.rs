//! The OpenAI Chat Completions adapter, for OpenAI and any compatible
//! server (Ollama, vLLM, llama.cpp server, proxies) through `base_url`.
//!
//! `POST {base_url}/chat/completions` (default base URL
//! `https://api.openai.com/v1`) with `Authorization: Bearer KEY` when a key
//! is configured (local servers need none) and a JSON body:
//!
//! - `model`: the request's, else the provider's default (one is required);
//! - `messages`: the system text first, as a `system` message;
//! - `max_tokens`: the request's, else the provider's, else omitted. We
//!   send `max_tokens` rather than OpenAI's newer `max_completion_tokens`
//!   because Ollama, vLLM and llama.cpp understand only the former and
//!   OpenAI still accepts it for chat models;
//! - `temperature`, `stop`;
//! - `response_format: {"type": "json_schema", "json_schema": {"name":
//!   "response", "schema": ..., "strict": false}}` when the request carries
//!   a JSON schema. `strict` is off because strict mode rejects schemas
//!   outside OpenAI's subset (every property required, no additional
//!   properties); the engine validates the answer either way;
//! - `stream: true` and `stream_options: {"include_usage": true}` when
//!   streaming, so that streamed answers report usage too.
//!
//! `finish_reason` maps `stop` to `EndTurn` (stop sequences included: the
//! API does not tell them apart) and `length` to `MaxTokens`; usage keeps
//! `prompt_tokens_details.cached_tokens`; the `x-request-id` header becomes
//! [`ChatResponse::request_id`].

mod wire;

use std::time::Instant;

use async_trait::async_trait;
use eventsource_stream::Eventsource as _;
use futures::StreamExt as _;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{Client, Url};
use spes_core::message::{ChatRequest, ChatResponse, Usage};

use crate::error::{ProviderError, ProviderErrorKind};
use crate::http::{self, HttpProviderConfig, Sent};
use crate::provider::{CallContext, Provider};

use self::wire::{Chunk, Completion, CompletionRequest};

/// The public API.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// An OpenAI-compatible Chat Completions provider. Cheap to share; one
/// HTTP client (and connection pool) per provider.
#[derive(Debug)]
pub struct OpenAiProvider {
    cfg: HttpProviderConfig,
    url: Url,
    headers: HeaderMap,
    client: Client,
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

    fn wire_request<'a>(&self, req: &'a ChatRequest, model: &'a str) -> CompletionRequest<'a> {
        CompletionRequest::new(
            req,
            model,
            req.max_tokens.or(self.cfg.max_tokens),
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
            http::MAX_BODY_BYTES,
        )
        .await?;
        let r: Completion = http::parse_json(name, &body)?;
        let Some(choice) = r.choices.into_iter().next() else {
            return Err(ProviderError::new(
                name,
                ProviderErrorKind::BadResponse,
                "the response has no choices",
            ));
        };
        let text = choice.message.content.unwrap_or_default();
        if let Some(sink) = &cx.on_delta
            && !text.is_empty()
        {
            sink(&text);
        }
        Ok(ChatResponse {
            text,
            stop_reason: wire::stop_reason(choice.finish_reason.as_deref()),
            usage: r.usage.map(Usage::from).unwrap_or_default(),
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
        let mut finish: Option<String> = None;
        let mut done = false;
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(|e| http::sse_error(name, e))?;
            let data = ev.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                done = true;
                break;
            }
            let chunk: Chunk = serde_json::from_str(data).map_err(|e| {
                ProviderError::new(
                    name,
                    ProviderErrorKind::BadResponse,
                    format!("cannot parse a stream chunk: {e}"),
                )
            })?;
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
            if let Some(choice) = chunk.choices.into_iter().next() {
                if let Some(t) = choice.delta.content.filter(|t| !t.is_empty()) {
                    if let Some(sink) = &cx.on_delta {
                        sink(&t);
                    }
                    text.push_str(&t);
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
        Ok(ChatResponse {
            text,
            stop_reason: wire::stop_reason(finish.as_deref()),
            usage,
            model,
            request_id: None,
            latency_ms: 0,
        })
    }
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
        self.call(req, cx)
            .await
            .map_err(|e| http::redact(e, self.cfg.api_key.as_ref()))
    }
}
