//! What the fake server answers: replies, stop reasons, usage and faults.

use std::time::Duration;

/// Why the fake model stops. Rendered as each provider names it
/// (`end_turn` / `stop`, `max_tokens` / `length`, `stop_sequence` / `stop`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FakeStop {
    /// The answer is complete.
    #[default]
    EndTurn,
    /// The answer was cut by `max_tokens`.
    MaxTokens,
    /// The model produced this stop sequence.
    StopSequence(String),
}

/// A tool call the fake model makes, rendered in each provider's shape
/// (OpenAI `tool_calls` with `function.arguments` as JSON text; Anthropic
/// `tool_use` blocks with `input`, streamed as `input_json_delta`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeToolCall {
    /// The call's id; `None` gives `call_fake_{request}_{n}` (OpenAI) or
    /// `toolu_fake_{request}_{n}` (Anthropic), `n` counting the answer's
    /// calls from 1.
    pub id: Option<String>,
    /// The tool's name.
    pub name: String,
    /// The arguments as JSON text, sent as they are: text that is not JSON
    /// scripts a model that wrote broken arguments. Anthropic's
    /// non-streamed `input` must be JSON: there empty text is sent as `{}`
    /// and other text that is not JSON as a JSON string.
    pub arguments: String,
}

impl FakeToolCall {
    /// A call of `name` with `arguments`.
    #[must_use]
    pub fn new(name: impl Into<String>, arguments: &serde_json::Value) -> Self {
        Self {
            id: None,
            name: name.into(),
            arguments: arguments.to_string(),
        }
    }

    /// A call whose arguments are this text, verbatim (valid JSON or not).
    #[must_use]
    pub fn raw(name: impl Into<String>, arguments: impl Into<String>) -> Self {
        Self {
            id: None,
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    /// Sets the id.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// Token counts the fake server reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FakeUsage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Prompt tokens read from the cache.
    pub cache_read_tokens: u64,
    /// Prompt tokens written to the cache (Anthropic only).
    pub cache_write_tokens: u64,
}

/// A scripted HTTP error, rendered in the provider's error shape.
///
/// Fields left `None` take realistic defaults for the status and dialect
/// (for example 429 gives Anthropic `rate_limit_error` and OpenAI
/// `rate_limit_exceeded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeError {
    /// HTTP status.
    pub status: u16,
    /// The provider's error `type`.
    pub error_type: Option<String>,
    /// The OpenAI error `code`.
    pub code: Option<String>,
    /// The error message.
    pub message: Option<String>,
    /// Render the provider's "prompt too long" error.
    pub context_overflow: bool,
    /// The `retry-after` header value, verbatim.
    pub retry_after: Option<String>,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
}

/// A fault injected instead of (or in the middle of) a healthy answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with an HTTP error.
    Error(FakeError),
    /// Never send response headers (until the server is dropped).
    Hang,
    /// Send the headers and this many chunks (text chunks, then tool-call
    /// argument fragments), then go silent.
    StallAfter(usize),
    /// Send the headers and this many chunks, then close the connection.
    BreakAfter(usize),
    /// Send the headers and this many chunks, then end the body
    /// cleanly but without the final events (`message_stop`, `[DONE]`).
    EndAfter(usize),
    /// Streaming: send this many chunks, then an error event (Anthropic
    /// `event: error`, OpenAI `data: {"error": ...}`) and end. Non-streaming:
    /// answer with the HTTP error.
    ErrorEventAfter(usize, FakeError),
    /// Answer exactly this, whatever was asked: a status, a content type and
    /// a body (a success that is not an answer, a refusal, a tool call, a
    /// hand-written event stream).
    Raw {
        /// HTTP status.
        status: u16,
        /// The `content-type` header.
        content_type: String,
        /// The body, verbatim.
        body: String,
    },
}

/// One scripted answer. Build it with the constructors and `with_*` setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeResponse {
    /// The reply text; `None` echoes the last user message.
    pub text: Option<String>,
    /// Why the model stops. With tool calls, `EndTurn` is rendered as the
    /// tool-use stop (`tool_use` / `tool_calls`).
    pub stop: FakeStop,
    /// Tool calls after the text (an empty text is then sent as no text
    /// block / `content: null`).
    pub tool_calls: Vec<FakeToolCall>,
    /// Reported usage; `None` counts words of the prompt and reply.
    pub usage: Option<FakeUsage>,
    /// Characters per streamed text chunk (at least 1).
    pub chunk_chars: usize,
    /// Pause before each streamed chunk after the first.
    pub chunk_delay: Duration,
    /// Pause before the response headers.
    pub latency: Duration,
    /// A fault, if any.
    pub fault: Option<Fault>,
}

impl Default for FakeResponse {
    fn default() -> Self {
        Self {
            text: None,
            stop: FakeStop::EndTurn,
            tool_calls: Vec::new(),
            usage: None,
            chunk_chars: 16,
            chunk_delay: Duration::ZERO,
            latency: Duration::ZERO,
            fault: None,
        }
    }
}

impl FakeResponse {
    /// The default answer: echoes the last user message (`echo: <text>`).
    #[must_use]
    pub fn echo() -> Self {
        Self::default()
    }

    /// Answers `text`.
    #[must_use]
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: Some(text.into()),
            ..Self::default()
        }
    }

    /// Calls these tools, without text.
    #[must_use]
    pub fn tool_calls(calls: Vec<FakeToolCall>) -> Self {
        Self {
            tool_calls: calls,
            ..Self::text("")
        }
    }

    /// Calls one tool, without text.
    #[must_use]
    pub fn tool_call(name: impl Into<String>, arguments: &serde_json::Value) -> Self {
        Self::tool_calls(vec![FakeToolCall::new(name, arguments)])
    }

    /// Adds a tool call after the answer's text (an echo answer keeps
    /// echoing).
    #[must_use]
    pub fn with_tool_call(mut self, call: FakeToolCall) -> Self {
        self.tool_calls.push(call);
        self
    }

    /// An HTTP error with provider-shaped defaults for `status`.
    #[must_use]
    pub fn error(status: u16) -> Self {
        Self {
            fault: Some(Fault::Error(FakeError {
                status,
                error_type: None,
                code: None,
                message: None,
                context_overflow: false,
                retry_after: None,
                headers: Vec::new(),
            })),
            ..Self::default()
        }
    }

    /// 429 with an optional `retry-after` header (`"2"` or an HTTP date).
    #[must_use]
    pub fn rate_limited(retry_after: Option<&str>) -> Self {
        let r = Self::error(429);
        match retry_after {
            Some(v) => r.with_retry_after(v),
            None => r,
        }
    }

    /// 529 `overloaded_error` (Anthropic's overload status).
    #[must_use]
    pub fn overloaded() -> Self {
        Self::error(529)
    }

    /// 500 internal server error.
    #[must_use]
    pub fn server_error() -> Self {
        Self::error(500)
    }

    /// 400 "prompt is too long" / `context_length_exceeded`.
    #[must_use]
    pub fn context_overflow() -> Self {
        let mut r = Self::error(400);
        if let Some(Fault::Error(e)) = &mut r.fault {
            e.context_overflow = true;
        }
        r
    }

    /// Never sends response headers.
    #[must_use]
    pub fn hang() -> Self {
        Self {
            fault: Some(Fault::Hang),
            ..Self::default()
        }
    }

    /// Answers `text` but goes silent after `chunks` text chunks.
    #[must_use]
    pub fn stall_after(text: impl Into<String>, chunks: usize) -> Self {
        Self {
            fault: Some(Fault::StallAfter(chunks)),
            ..Self::text(text)
        }
    }

    /// Answers `text` but closes the connection after `chunks` text chunks,
    /// without the final event.
    #[must_use]
    pub fn break_after(text: impl Into<String>, chunks: usize) -> Self {
        Self {
            fault: Some(Fault::BreakAfter(chunks)),
            ..Self::text(text)
        }
    }

    /// Answers `text` but ends the body cleanly after `chunks` text chunks,
    /// without the final events.
    #[must_use]
    pub fn end_after(text: impl Into<String>, chunks: usize) -> Self {
        Self {
            fault: Some(Fault::EndAfter(chunks)),
            ..Self::text(text)
        }
    }

    /// Answers `text` in a stream that, after `chunks` text chunks, carries
    /// an error event shaped like an HTTP `status` error (529: Anthropic's
    /// mid-stream `overloaded_error`).
    #[must_use]
    pub fn error_event_after(text: impl Into<String>, chunks: usize, status: u16) -> Self {
        let Some(Fault::Error(e)) = Self::error(status).fault else {
            return Self::text(text);
        };
        Self {
            fault: Some(Fault::ErrorEventAfter(chunks, e)),
            ..Self::text(text)
        }
    }

    /// Answers `body` verbatim with `status` and `content_type`.
    #[must_use]
    pub fn raw(status: u16, content_type: impl Into<String>, body: impl Into<String>) -> Self {
        Self {
            fault: Some(Fault::Raw {
                status,
                content_type: content_type.into(),
                body: body.into(),
            }),
            ..Self::default()
        }
    }

    /// A 200 JSON answer of exactly `body`.
    #[must_use]
    pub fn raw_json(body: &serde_json::Value) -> Self {
        Self::raw(200, "application/json", body.to_string())
    }

    /// Sets why the model stops.
    #[must_use]
    pub fn with_stop(mut self, stop: FakeStop) -> Self {
        self.stop = stop;
        self
    }

    /// Sets input and output token counts.
    #[must_use]
    pub fn with_usage(mut self, input_tokens: u64, output_tokens: u64) -> Self {
        let mut u = self.usage.unwrap_or_default();
        u.input_tokens = input_tokens;
        u.output_tokens = output_tokens;
        self.usage = Some(u);
        self
    }

    /// Sets cache read and write token counts.
    #[must_use]
    pub fn with_cache_tokens(mut self, read: u64, write: u64) -> Self {
        let mut u = self.usage.unwrap_or_default();
        u.cache_read_tokens = read;
        u.cache_write_tokens = write;
        self.usage = Some(u);
        self
    }

    /// Characters per streamed chunk.
    #[must_use]
    pub fn with_chunk_chars(mut self, n: usize) -> Self {
        self.chunk_chars = n.max(1);
        self
    }

    /// Pause before each streamed chunk after the first.
    #[must_use]
    pub fn with_chunk_delay(mut self, d: Duration) -> Self {
        self.chunk_delay = d;
        self
    }

    /// Pause before the response headers.
    #[must_use]
    pub fn with_latency(mut self, d: Duration) -> Self {
        self.latency = d;
        self
    }

    fn error_mut(&mut self) -> Option<&mut FakeError> {
        match &mut self.fault {
            Some(Fault::Error(e) | Fault::ErrorEventAfter(_, e)) => Some(e),
            _ => None,
        }
    }

    /// Sets the `retry-after` header of an error response.
    #[must_use]
    pub fn with_retry_after(mut self, v: impl Into<String>) -> Self {
        if let Some(e) = self.error_mut() {
            e.retry_after = Some(v.into());
        }
        self
    }

    /// Sets the provider error `type` of an error response.
    #[must_use]
    pub fn with_error_type(mut self, t: impl Into<String>) -> Self {
        if let Some(e) = self.error_mut() {
            e.error_type = Some(t.into());
        }
        self
    }

    /// Sets the OpenAI error `code` of an error response.
    #[must_use]
    pub fn with_error_code(mut self, c: impl Into<String>) -> Self {
        if let Some(e) = self.error_mut() {
            e.code = Some(c.into());
        }
        self
    }

    /// Sets the message of an error response.
    #[must_use]
    pub fn with_error_message(mut self, m: impl Into<String>) -> Self {
        if let Some(e) = self.error_mut() {
            e.message = Some(m.into());
        }
        self
    }

    /// Adds a header to an error response.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let Some(e) = self.error_mut() {
            e.headers.push((name.into(), value.into()));
        }
        self
    }
}
