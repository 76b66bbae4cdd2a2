//! Shared HTTP machinery of the adapters: settings, the client, the three
//! timeouts, bodies read under the idle timeout, and the classification of
//! HTTP failures into [`ProviderErrorKind`]s.
//!
//! Timeouts (from `spes.toml` `[providers.NAME.timeouts]`):
//!
//! - `connect`: reqwest's connect timeout;
//! - `first_byte`: from sending the request until the response headers;
//! - `idle`: the longest silence between two chunks of the body (streamed
//!   or not);
//! - `total`: the deadline of the whole call (default 10 minutes), so that
//!   a stream that keeps dripping bytes cannot hold a step for ever.
//!
//! Bodies, streamed or not, are read up to `max_response_bytes` (default
//! 32 MiB); a larger answer is a terminal `response_too_large` error.
//!
//! **Redirects are not followed.** A provider call that is answered with a
//! 3xx fails with a terminal `config` error naming the `Location` (without
//! its query): following it would send the request, with its API key
//! header (`x-api-key`, `Authorization`), to wherever the redirect points.

use std::error::Error as StdError;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::HeaderMap;
use reqwest::{Client, RequestBuilder, Response, Url};
use spes_core::config::{MaxTokensField, ProviderKind, ProviderSpec, Timeouts};
use spes_core::message::ChatResponse;

use crate::error::{ProviderError, ProviderErrorKind};
use crate::provider::CallContext;
use crate::secret::SecretString;
use crate::sse::{SseDecoder, SseEvent};

/// Largest answer read, streamed or not, unless the provider sets
/// `max_response_bytes`.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 32 << 20;
/// Largest error body read.
pub(crate) const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// Settings of an HTTP adapter ([`crate::anthropic::AnthropicProvider`],
/// [`crate::openai::OpenAiProvider`]).
#[derive(Debug, Clone)]
pub struct HttpProviderConfig {
    /// The configured provider name (`claude`, `ollama`).
    pub name: String,
    /// Default model, used when a request names none.
    pub model: Option<String>,
    /// Base URL; `None` means the provider's public API.
    pub base_url: Option<String>,
    /// The API key, if any.
    pub api_key: Option<SecretString>,
    /// Default `max_tokens`.
    pub max_tokens: Option<u32>,
    /// Stream responses over server-sent events (default `true`).
    pub stream: bool,
    /// Connect, first-byte and idle timeouts.
    pub timeouts: Timeouts,
    /// Send the step key in an `x-spes-step` header.
    pub step_header: bool,
    /// Largest answer read, in bytes, streamed or not.
    pub max_response_bytes: usize,
    /// OpenAI-compatible providers: the field that carries `max_tokens`;
    /// `None` picks by base URL (see [`crate::openai`]).
    pub max_tokens_field: Option<MaxTokensField>,
    /// Anthropic: mark the system prompt for the provider's prompt cache
    /// (`cache_control: {"type": "ephemeral"}`).
    pub prompt_cache: bool,
}

impl HttpProviderConfig {
    /// Settings with no model, key or base URL, streaming, default timeouts.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            model: None,
            base_url: None,
            api_key: None,
            max_tokens: None,
            stream: true,
            timeouts: Timeouts::default(),
            step_header: false,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_tokens_field: None,
            prompt_cache: false,
        }
    }

    /// Sets the largest answer read, in bytes.
    #[must_use]
    pub fn with_max_response_bytes(mut self, n: usize) -> Self {
        self.max_response_bytes = n.max(1);
        self
    }

    /// Sets the field that carries `max_tokens` (OpenAI-compatible providers).
    #[must_use]
    pub fn with_max_tokens_field(mut self, f: MaxTokensField) -> Self {
        self.max_tokens_field = Some(f);
        self
    }

    /// Anthropic: marks the system prompt for the provider's prompt cache.
    #[must_use]
    pub fn with_prompt_cache(mut self, on: bool) -> Self {
        self.prompt_cache = on;
        self
    }

    /// Sends the step key in an `x-spes-step` header.
    #[must_use]
    pub fn with_step_header(mut self, on: bool) -> Self {
        self.step_header = on;
        self
    }

    /// Sets the default model.
    #[must_use]
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Sets the base URL.
    #[must_use]
    pub fn with_base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Sets the API key.
    #[must_use]
    pub fn with_api_key(mut self, key: SecretString) -> Self {
        self.api_key = Some(key);
        self
    }

    /// Sets the default `max_tokens`.
    #[must_use]
    pub fn with_max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }

    /// Streams (SSE) or not.
    #[must_use]
    pub fn with_stream(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    /// Sets the timeouts.
    #[must_use]
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Settings from a `[providers.NAME]` table, reading the key through
    /// `env` (normally `std::env::var`).
    ///
    /// The key comes from the variable named by `api_key_env`. When that
    /// is not set and no `base_url` is given (the provider's public API),
    /// the conventional variable is used: `ANTHROPIC_API_KEY` or
    /// `OPENAI_API_KEY`. With a `base_url` and no `api_key_env` (Ollama,
    /// vLLM, a proxy) no key is sent.
    ///
    /// # Errors
    ///
    /// [`ProviderErrorKind::Authentication`] when the key variable is unset
    /// or empty (the message names the variable, never a value);
    /// [`ProviderErrorKind::Config`] for unparsable timeouts.
    pub fn from_spec(
        name: &str,
        spec: &ProviderSpec,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ProviderError> {
        let timeouts = spec.timeouts.parse().map_err(|e| {
            ProviderError::new(
                name,
                ProviderErrorKind::Config,
                format!("[providers.{name}] {e}"),
            )
        })?;
        let default_env = match spec.kind {
            ProviderKind::Anthropic => Some("ANTHROPIC_API_KEY"),
            ProviderKind::Openai => Some("OPENAI_API_KEY"),
            ProviderKind::Local | ProviderKind::Scripted => None,
        };
        let key_env = spec
            .api_key_env
            .as_deref()
            .or(default_env.filter(|_| spec.base_url.is_none()));
        let api_key = match key_env {
            None => None,
            Some(var) => match env(var).filter(|v| !v.trim().is_empty()) {
                Some(v) => Some(SecretString::new(v.trim())),
                None => {
                    return Err(ProviderError::new(
                        name,
                        ProviderErrorKind::Authentication,
                        format!(
                            "environment variable {var} is not set or empty; \
                             [providers.{name}] reads its API key from it \
                             (export {var}=... or change api_key_env)"
                        ),
                    ));
                }
            },
        };
        Ok(Self {
            name: name.to_owned(),
            model: spec.model.clone(),
            base_url: spec.base_url.clone(),
            api_key,
            max_tokens: spec.max_tokens,
            stream: spec.stream.unwrap_or(true),
            timeouts,
            step_header: spec.step_header.unwrap_or(false),
            max_response_bytes: spec
                .max_response_bytes
                .map_or(DEFAULT_MAX_RESPONSE_BYTES, |n| {
                    usize::try_from(n).unwrap_or(usize::MAX).max(1)
                }),
            max_tokens_field: spec.max_tokens_field,
            prompt_cache: spec.prompt_cache.unwrap_or(false),
        })
    }
}

/// One client per provider: keep-alive pool, connect timeout, no
/// redirects (see the module docs); the total deadline is applied around
/// each call. Built on first use: a provider that a run never calls costs
/// nothing, and loading the system's root certificates (a few ms) is
/// skipped for a plain `http://` endpoint, which never needs them.
#[derive(Debug)]
pub(crate) struct LazyClient {
    name: String,
    timeouts: Timeouts,
    tls: bool,
    client: std::sync::OnceLock<Client>,
}

impl LazyClient {
    pub(crate) fn new(name: &str, t: &Timeouts, url: &Url) -> Self {
        Self {
            name: name.to_owned(),
            timeouts: *t,
            tls: url.scheme() != "http",
            client: std::sync::OnceLock::new(),
        }
    }

    /// The client, built on the first call.
    pub(crate) fn get(&self) -> Result<&Client, ProviderError> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let c = build_client(&self.name, &self.timeouts, self.tls)?;
        Ok(self.client.get_or_init(|| c))
    }
}

fn build_client(name: &str, t: &Timeouts, tls: bool) -> Result<Client, ProviderError> {
    let mut b = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(t.connect)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60));
    if !tls {
        // No request of this client leaves plain HTTP (it follows no
        // redirect): an empty root store instead of the system's.
        b = b.tls_certs_only(std::iter::empty());
    }
    b.build().map_err(|e| {
        ProviderError::new(
            name,
            ProviderErrorKind::Config,
            format!("cannot build the HTTP client: {}", error_chain(&e)),
        )
    })
}

/// `base` + `path`, checked to be an http(s) URL.
pub(crate) fn endpoint(name: &str, base: &str, path: &str) -> Result<Url, ProviderError> {
    let full = format!("{}{path}", base.trim_end_matches('/'));
    let bad = |why: String| {
        ProviderError::new(
            name,
            ProviderErrorKind::Config,
            format!("[providers.{name}] base_url is not a usable URL: {why}"),
        )
    };
    let url = Url::parse(&full).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "scheme `{}` is not http or https",
            url.scheme()
        )));
    }
    Ok(url)
}

/// A URL for messages: no user info, no query.
pub(crate) fn display_url(u: &Url) -> String {
    let host = u.host_str().unwrap_or("");
    match u.port() {
        Some(p) => format!("{}://{host}:{p}{}", u.scheme(), u.path()),
        None => format!("{}://{host}{}", u.scheme(), u.path()),
    }
}

/// `e` and its sources, joined with `: ` (reqwest's top-level message alone
/// says little). URLs are stripped by the caller.
pub(crate) fn error_chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let m = s.to_string();
        if !out.ends_with(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        src = s.source();
    }
    out
}

/// Sends the request under the first-byte timeout (which includes connecting).
pub(crate) async fn send(
    name: &str,
    rb: RequestBuilder,
    t: &Timeouts,
    url: &Url,
) -> Result<Response, ProviderError> {
    match tokio::time::timeout(t.first_byte, rb.send()).await {
        Err(_) => Err(ProviderError::new(
            name,
            ProviderErrorKind::Timeout,
            format!(
                "no response from {} within the first-byte timeout of {:?}",
                display_url(url),
                t.first_byte
            ),
        )),
        Ok(Err(e)) => Err(send_error(name, &e, t, url)),
        Ok(Ok(r)) => Ok(r),
    }
}

fn send_error(name: &str, e: &reqwest::Error, t: &Timeouts, url: &Url) -> ProviderError {
    let url_s = display_url(url);
    let chain = reqwest_chain(e);
    if e.is_timeout() {
        ProviderError::new(
            name,
            ProviderErrorKind::Timeout,
            format!(
                "cannot connect to {url_s} within the connect timeout of {:?}: {chain}",
                t.connect
            ),
        )
    } else if e.is_body() || e.is_decode() {
        ProviderError::new(
            name,
            ProviderErrorKind::StreamBroken,
            format!("the response from {url_s} broke off: {chain}"),
        )
    } else {
        ProviderError::new(
            name,
            ProviderErrorKind::Connect,
            format!("cannot reach {url_s}: {chain}"),
        )
    }
}

/// A reqwest error and its sources, without reqwest's URL (which may carry
/// a query string): callers print our own redacted URL instead.
fn reqwest_chain(e: &reqwest::Error) -> String {
    let top = e.to_string();
    // "error sending request for url (http://...)" -> "error sending request"
    let mut out = top.split(" for url (").next().unwrap_or(&top).to_owned();
    let mut src = e.source();
    while let Some(s) = src {
        let m = s.to_string();
        if !out.ends_with(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        src = s.source();
    }
    out
}

/// A header as text.
pub(crate) fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// A body chunk, or why there is none.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Nothing arrived within the idle timeout.
    Idle(Duration),
    /// The connection broke.
    Transport(reqwest::Error),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Idle(d) => write!(f, "no data for {d:?}"),
            Self::Transport(e) => f.write_str(&reqwest_chain(e)),
        }
    }
}

impl BodyError {
    pub(crate) fn into_provider_error(self, name: &str) -> ProviderError {
        match self {
            Self::Idle(d) => ProviderError::new(
                name,
                ProviderErrorKind::Timeout,
                format!("the response went silent for longer than the idle timeout of {d:?}"),
            ),
            Self::Transport(e) => ProviderError::new(
                name,
                ProviderErrorKind::StreamBroken,
                format!(
                    "the response broke off before it was complete: {}",
                    reqwest_chain(&e)
                ),
            ),
        }
    }
}

/// The response body as a stream of chunks, each awaited under `idle`.
/// The stream ends after the first error.
pub(crate) fn idle_stream(
    resp: Response,
    idle: Duration,
) -> impl Stream<Item = Result<Bytes, BodyError>> + Send {
    let inner = Box::pin(resp.bytes_stream());
    futures::stream::unfold(Some(inner), move |state| async move {
        let mut s = state?;
        match tokio::time::timeout(idle, s.next()).await {
            Err(_) => Some((Err(BodyError::Idle(idle)), None)),
            Ok(None) => None,
            Ok(Some(Ok(b))) => Some((Ok(b), Some(s))),
            Ok(Some(Err(e))) => Some((Err(BodyError::Transport(e)), None)),
        }
    })
}

/// The error for an answer over `max_response_bytes`.
pub(crate) fn too_large(name: &str, limit: usize) -> ProviderError {
    ProviderError::new(
        name,
        ProviderErrorKind::ResponseTooLarge,
        format!(
            "the answer is larger than max_response_bytes = {limit} bytes; \
             raise [providers.{name}] max_response_bytes if such answers are expected"
        ),
    )
}

/// A streamed body decoded into server-sent events, read under the idle
/// timeout and up to `limit` bytes in all.
pub(crate) struct SseReader {
    name: String,
    body: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>,
    decoder: SseDecoder,
    ready: std::collections::VecDeque<SseEvent>,
    scratch: Vec<SseEvent>,
    received: usize,
    limit: usize,
    ended: bool,
}

impl SseReader {
    pub(crate) fn new(name: &str, resp: Response, idle: Duration, limit: usize) -> Self {
        Self {
            name: name.to_owned(),
            body: Box::pin(idle_stream(resp, idle)),
            decoder: SseDecoder::new(),
            ready: std::collections::VecDeque::new(),
            scratch: Vec::new(),
            received: 0,
            limit,
            ended: false,
        }
    }

    /// The next event; `None` at the end of the body.
    pub(crate) async fn next(&mut self) -> Option<Result<SseEvent, ProviderError>> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(Ok(e));
            }
            if self.ended {
                return None;
            }
            let not_utf8 = |_| {
                ProviderError::new(
                    &self.name,
                    ProviderErrorKind::BadResponse,
                    "the event stream is not UTF-8",
                )
            };
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    self.received = self.received.saturating_add(chunk.len());
                    if self.received > self.limit {
                        self.ended = true;
                        return Some(Err(too_large(&self.name, self.limit)));
                    }
                    if let Err(e) = self.decoder.push(&chunk, &mut self.scratch) {
                        self.ended = true;
                        return Some(Err(not_utf8(e)));
                    }
                }
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Err(e.into_provider_error(&self.name)));
                }
                None => {
                    self.ended = true;
                    if let Err(e) = self.decoder.finish(&mut self.scratch) {
                        return Some(Err(not_utf8(e)));
                    }
                }
            }
            self.ready.extend(self.scratch.drain(..));
        }
    }
}

/// Parses one event's JSON payload: a payload cut short (a stream that
/// ended inside an event) is a broken stream, anything else unparsable a
/// bad response.
pub(crate) fn parse_event<T: serde::de::DeserializeOwned>(
    name: &str,
    ev: &SseEvent,
) -> Result<T, ProviderError> {
    serde_json::from_str(&ev.data).map_err(|e| {
        let what = if ev.event.is_empty() {
            "a stream chunk".to_owned()
        } else {
            format!("the `{}` stream event", ev.event)
        };
        if e.is_eof() {
            ProviderError::new(
                name,
                ProviderErrorKind::StreamBroken,
                format!("the stream broke off inside {what}: {e}"),
            )
        } else {
            ProviderError::new(
                name,
                ProviderErrorKind::BadResponse,
                format!("cannot parse {what}: {e}"),
            )
        }
    })
}

/// Runs a whole call under the total deadline.
pub(crate) async fn with_deadline<T>(
    name: &str,
    t: &Timeouts,
    call: impl std::future::Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    match tokio::time::timeout(t.total, call).await {
        Ok(r) => r,
        Err(_) => Err(ProviderError::new(
            name,
            ProviderErrorKind::Timeout,
            format!(
                "the call did not finish within the total deadline of {} (timeouts.total)",
                spes_core::duration::format_duration(t.total)
            ),
        )),
    }
}

/// Reads a whole body under the idle timeout, up to `limit` bytes.
pub(crate) async fn read_body(
    name: &str,
    resp: Response,
    idle: Duration,
    limit: usize,
) -> Result<Vec<u8>, ProviderError> {
    let mut out = Vec::new();
    let mut body = std::pin::pin!(idle_stream(resp, idle));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.into_provider_error(name))?;
        if out.len() + chunk.len() > limit {
            return Err(too_large(name, limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The kind of an HTTP failure (`status`), or of an error event inside a
/// stream (`status` is `None`), from the provider's error type/code and
/// message. Status and codes decide first; the message text is read only
/// through [`text_hint`], here and nowhere else.
pub(crate) fn classify(
    status: Option<u16>,
    provider_type: Option<&str>,
    message: &str,
) -> ProviderErrorKind {
    use ProviderErrorKind as K;
    let t = provider_type.unwrap_or("");
    let client_side = status.is_none_or(|s| (400..500).contains(&s));
    match t {
        "overloaded_error" => return K::Overloaded,
        "context_length_exceeded" | "string_above_max_length" if client_side => {
            return K::ContextOverflow;
        }
        "request_too_large" if client_side => return K::RequestTooLarge,
        "insufficient_quota"
        | "billing_hard_limit_reached"
        | "billing_not_active"
        | "billing_error"
            if client_side =>
        {
            return K::Billing;
        }
        _ => {}
    }
    let hint = || text_hint(message);
    match status {
        Some(402) => K::Billing,
        Some(413) => K::RequestTooLarge,
        // OpenAI says "Request too large ... must be reduced" with the
        // rate-limit code: waiting cannot help.
        Some(429) => match hint() {
            Some(h @ (K::RequestTooLarge | K::Billing)) => h,
            _ => K::RateLimited,
        },
        Some(503 | 529) => K::Overloaded,
        Some(408) => K::Timeout,
        Some(500..=599) => K::Server,
        Some(401 | 403) => K::Authentication,
        Some(404) => K::NotFound,
        Some(400..=499) => hint().unwrap_or(K::InvalidRequest),
        Some(_) => K::BadResponse,
        None => match t {
            "rate_limit_error" | "rate_limit_exceeded" => K::RateLimited,
            "authentication_error" | "permission_error" | "invalid_api_key" => K::Authentication,
            "not_found_error" | "model_not_found" => K::NotFound,
            "invalid_request_error" => hint().unwrap_or(K::InvalidRequest),
            "timeout_error" => K::Timeout,
            _ => K::Server,
        },
    }
}

/// What a client-side error's message says, when its status and code do
/// not: the one place where provider text is matched.
fn text_hint(message: &str) -> Option<ProviderErrorKind> {
    use ProviderErrorKind as K;
    let m = message.to_ascii_lowercase();
    let any = |ps: &[&str]| ps.iter().any(|p| m.contains(p));
    if any(&[
        "request too large",
        "must be reduced in order to run",
        "request exceeds the maximum",
    ]) {
        return Some(K::RequestTooLarge);
    }
    if any(&[
        "prompt is too long",
        "context length",
        "context_length",
        "context window",
        "maximum context",
        "context size",
    ]) {
        return Some(K::ContextOverflow);
    }
    if any(&["exceeded your current quota", "credit balance is too low"]) {
        return Some(K::Billing);
    }
    None
}

/// How long the provider asked us to wait: `retry-after-ms`, then
/// `retry-after` (seconds or an HTTP date), then, for OpenAI rate limits,
/// the `x-ratelimit-reset-*` header of the exhausted limit.
pub(crate) fn retry_after(h: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = header_str(h, "retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    if let Some(d) = header_str(h, "retry-after").and_then(|v| parse_retry_after(&v, now)) {
        return Some(d);
    }
    let reset = |which: &str| {
        header_str(h, &format!("x-ratelimit-reset-{which}")).and_then(|v| parse_reset(&v))
    };
    let exhausted = |which: &str| {
        header_str(h, &format!("x-ratelimit-remaining-{which}")).as_deref() == Some("0")
    };
    let (rq, tk) = (reset("requests"), reset("tokens"));
    match (exhausted("requests"), exhausted("tokens")) {
        (true, false) => rq,
        (false, true) => tk,
        _ => rq.max(tk),
    }
}

/// `retry-after`: delay seconds, or an HTTP date.
pub(crate) fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// OpenAI's reset durations: `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
pub(crate) fn parse_reset(v: &str) -> Option<Duration> {
    let mut rest = v.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += n * scale;
    }
    total.is_finite().then(|| Duration::from_secs_f64(total))
}

/// An error for a non-success HTTP status.
pub(crate) fn status_error(
    name: &str,
    status: u16,
    provider_type: Option<String>,
    message: String,
) -> ProviderError {
    let kind = classify(Some(status), provider_type.as_deref(), &message);
    let mut e = ProviderError::new(name, kind, message).with_status(status);
    e.provider_type = provider_type;
    e
}

/// The message of an error body that is not in the provider's shape.
pub(crate) fn fallback_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "the response had no error body".to_owned();
    }
    let mut s: String = text.chars().take(300).collect();
    if s.len() < text.len() {
        s.push_str("...");
    }
    s
}

/// Parses an error body into the provider's error type and message.
pub(crate) type ErrorParser = fn(&[u8]) -> Option<(Option<String>, String)>;

/// A successful response, ready to be read.
#[derive(Debug)]
pub(crate) struct Sent {
    pub(crate) resp: Response,
    pub(crate) request_id: Option<String>,
    /// The body is `text/event-stream`.
    pub(crate) is_sse: bool,
}

/// Adds the `x-spes-step` header when the provider is configured to send
/// it, and the W3C `traceparent` header when the call is traced.
pub(crate) fn with_step_header(
    rb: RequestBuilder,
    cfg: &HttpProviderConfig,
    cx: &CallContext,
) -> RequestBuilder {
    use reqwest::header::{HeaderName, HeaderValue};
    // Names made once: no parsing or allocation per request.
    static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    static STEP: HeaderName = HeaderName::from_static("x-spes-step");
    let rb = match cx.traceparent.as_deref().map(HeaderValue::from_str) {
        Some(Ok(v)) => rb.header(TRACEPARENT.clone(), v),
        _ => rb,
    };
    if !cfg.step_header {
        return rb;
    }
    match HeaderValue::from_str(&cx.step_key) {
        Ok(v) => rb.header(STEP.clone(), v),
        _ => rb,
    }
}

/// Stamps a finished call with its request id and latency, and logs it.
pub(crate) fn finish_call(
    name: &str,
    out: Result<ChatResponse, ProviderError>,
    request_id: Option<String>,
    started: std::time::Instant,
) -> Result<ChatResponse, ProviderError> {
    let mut out = out.map_err(|e| e.with_request_id(request_id.clone()))?;
    out.request_id = request_id;
    out.latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::debug!(
        provider = name,
        model = out.model.as_deref(),
        request_id = out.request_id.as_deref(),
        latency_ms = out.latency_ms,
        output_tokens = out.usage.output_tokens,
        "model call finished"
    );
    Ok(out)
}

/// Sends the request; turns a non-success status into a classified error
/// (its body parsed by `parse_error` into type and message).
pub(crate) async fn execute(
    name: &str,
    rb: RequestBuilder,
    t: &Timeouts,
    url: &Url,
    request_id_header: &str,
    parse_error: ErrorParser,
) -> Result<Sent, ProviderError> {
    let resp = send(name, rb, t, url).await?;
    let status = resp.status();
    let request_id = header_str(resp.headers(), request_id_header);
    if status.is_redirection() {
        let to = header_str(resp.headers(), "location").map_or_else(
            || "nowhere (no Location header)".to_owned(),
            |l| {
                url.join(&l)
                    .map_or_else(|_| "an unusable Location".to_owned(), |u| display_url(&u))
            },
        );
        return Err(ProviderError::new(
            name,
            ProviderErrorKind::Config,
            format!(
                "{} answered {} with a redirect to {to}; spes does not follow redirects \
                 of provider calls (the API key would go with them): set \
                 [providers.{name}] base_url to the address that serves the API",
                display_url(url),
                status.as_u16()
            ),
        )
        .with_status(status.as_u16())
        .with_request_id(request_id));
    }
    if !status.is_success() {
        let wait = retry_after(resp.headers(), SystemTime::now());
        // A body that breaks off still leaves us the status.
        let body = read_body(name, resp, t.idle, MAX_ERROR_BODY_BYTES)
            .await
            .unwrap_or_default();
        let (ptype, message) =
            parse_error(&body).unwrap_or_else(|| (None, fallback_message(&body)));
        let err = status_error(name, status.as_u16(), ptype, message)
            .with_request_id(request_id)
            .with_retry_after(wait);
        tracing::debug!(
            provider = name,
            status = status.as_u16(),
            kind = err.kind.as_str(),
            request_id = err.request_id.as_deref(),
            "model call failed"
        );
        return Err(err);
    }
    let is_sse = header_str(resp.headers(), "content-type")
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    Ok(Sent {
        resp,
        request_id,
        is_sse,
    })
}

/// Replaces any occurrence of the key in an error's text (defence in
/// depth: adapters never put it there, but a server might echo it).
pub(crate) fn redact(mut e: ProviderError, key: Option<&SecretString>) -> ProviderError {
    if let Some(k) = key.filter(|k| k.expose().len() >= 4) {
        let k = k.expose();
        if e.message.contains(k) {
            e.message = e.message.replace(k, "[redacted]");
        }
        if let Some(t) = &mut e.provider_type
            && t.contains(k)
        {
            *t = t.replace(k, "[redacted]");
        }
    }
    e
}

/// Parses a body as `T`, or says why not.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    name: &str,
    body: &[u8],
) -> Result<T, ProviderError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_eof() {
            // A body cut short but ended cleanly: as transient as a broken one.
            ProviderError::new(
                name,
                ProviderErrorKind::StreamBroken,
                format!("the response body ended early: {e}"),
            )
        } else {
            ProviderError::new(
                name,
                ProviderErrorKind::BadResponse,
                format!("cannot parse the response: {e}"),
            )
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ProviderErrorKind as K;

    #[test]
    fn classifies_statuses_and_types() {
        assert_eq!(
            classify(Some(429), Some("rate_limit_error"), "x"),
            K::RateLimited
        );
        assert_eq!(
            classify(Some(529), Some("overloaded_error"), "x"),
            K::Overloaded
        );
        assert_eq!(classify(Some(503), None, "x"), K::Overloaded);
        assert_eq!(classify(Some(500), Some("api_error"), "x"), K::Server);
        assert_eq!(classify(Some(502), None, "x"), K::Server);
        assert_eq!(classify(Some(401), None, "x"), K::Authentication);
        assert_eq!(classify(Some(403), None, "x"), K::Authentication);
        assert_eq!(classify(Some(404), None, "x"), K::NotFound);
        assert_eq!(classify(Some(422), None, "x"), K::InvalidRequest);
        assert_eq!(
            classify(
                Some(400),
                Some("invalid_request_error"),
                "prompt is too long: 3 > 2"
            ),
            K::ContextOverflow
        );
        assert_eq!(
            classify(Some(400), Some("context_length_exceeded"), "x"),
            K::ContextOverflow
        );
        assert_eq!(
            classify(Some(413), Some("request_too_large"), "x"),
            K::RequestTooLarge
        );
        assert_eq!(classify(Some(400), None, "bad"), K::InvalidRequest);
        assert_eq!(classify(None, Some("overloaded_error"), "x"), K::Overloaded);
        assert_eq!(classify(None, Some("api_error"), "x"), K::Server);
        assert_eq!(
            classify(Some(429), Some("insufficient_quota"), "x"),
            K::Billing
        );
        // A 5xx that mentions context is still a server error.
        assert_eq!(classify(Some(500), None, "context length"), K::Server);
    }

    #[test]
    fn classifies_billing_and_request_too_large() {
        // OpenAI's documented 429 bodies: the code decides, then the text.
        assert_eq!(
            classify(
                Some(429),
                Some("rate_limit_exceeded"),
                "Request too large for gpt-4o in organization org-x on tokens per min (TPM): \
                 Limit 30000, Requested 50000. The input or output tokens must be reduced in \
                 order to run successfully."
            ),
            K::RequestTooLarge
        );
        assert_eq!(
            classify(
                Some(429),
                Some("rate_limit_exceeded"),
                "Rate limit reached for gpt-4 on requests per min (RPM): Limit 3. You can \
                 increase your rate limit by adding a payment method at \
                 https://platform.openai.com/account/billing."
            ),
            K::RateLimited
        );
        assert_eq!(
            classify(
                Some(429),
                None,
                "You exceeded your current quota, please check your plan and billing details."
            ),
            K::Billing
        );
        assert_eq!(
            classify(Some(429), Some("billing_hard_limit_reached"), "x"),
            K::Billing
        );
        // Anthropic: 402 billing_error, and the 400 low-credit message.
        assert_eq!(classify(Some(402), Some("billing_error"), "x"), K::Billing);
        assert_eq!(classify(Some(402), None, "x"), K::Billing);
        assert_eq!(
            classify(
                Some(400),
                Some("invalid_request_error"),
                "Your credit balance is too low to access the Anthropic API."
            ),
            K::Billing
        );
        assert_eq!(classify(Some(413), None, "x"), K::RequestTooLarge);
        assert_eq!(
            classify(None, Some("invalid_request_error"), "prompt is too long"),
            K::ContextOverflow
        );
        // Codes win over text; 5xx never become client-side kinds.
        assert_eq!(
            classify(Some(500), Some("insufficient_quota"), "x"),
            K::Server
        );
        assert_eq!(
            classify(Some(400), Some("context_length_exceeded"), "quota"),
            K::ContextOverflow
        );
        assert_eq!(classify(Some(302), None, "x"), K::BadResponse);
    }

    #[test]
    fn parses_retry_after_seconds_and_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(" 1.5 ", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn parses_openai_reset_durations() {
        assert_eq!(parse_reset("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_reset("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_reset("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            parse_reset("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(parse_reset(""), None);
        assert_eq!(parse_reset("3 days"), None);
    }

    #[test]
    fn picks_the_exhausted_limits_reset() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset-requests", "1s".parse().unwrap());
        h.insert("x-ratelimit-reset-tokens", "6m0s".parse().unwrap());
        h.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
        h.insert("x-ratelimit-remaining-tokens", "900".parse().unwrap());
        assert_eq!(
            retry_after(&h, SystemTime::UNIX_EPOCH),
            Some(Duration::from_secs(1))
        );
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(
            retry_after(&h, SystemTime::UNIX_EPOCH),
            Some(Duration::from_secs(7))
        );
        h.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(
            retry_after(&h, SystemTime::UNIX_EPOCH),
            Some(Duration::from_millis(250))
        );
    }

    #[test]
    fn display_url_drops_credentials_and_query() {
        let u = Url::parse("https://user:pw@example.com:8443/v1/messages?key=abc").unwrap();
        assert_eq!(display_url(&u), "https://example.com:8443/v1/messages");
    }
}
