//! The two wire formats: response bodies, SSE frames and error bodies.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::script::{FakeError, FakeStop, FakeToolCall, FakeUsage};

/// Which provider's API a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Anthropic,
    OpenAi,
}

/// Everything needed to render one healthy answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) id: String,
    pub(crate) model: String,
    pub(crate) text: String,
    pub(crate) chunks: Vec<String>,
    pub(crate) stop: FakeStop,
    pub(crate) usage: FakeUsage,
    pub(crate) include_usage: bool,
    /// The request's number (for default tool-call ids).
    pub(crate) n: usize,
    pub(crate) calls: Vec<FakeToolCall>,
    /// Characters per streamed argument fragment.
    pub(crate) chunk_chars: usize,
}

impl Answer {
    /// The `k`th (0-based) call's id in `dialect`.
    fn call_id(&self, dialect: Dialect, k: usize) -> String {
        self.calls
            .get(k)
            .and_then(|c| c.id.clone())
            .unwrap_or_else(|| match dialect {
                Dialect::Anthropic => format!("toolu_fake_{}_{}", self.n, k + 1),
                Dialect::OpenAi => format!("call_fake_{}_{}", self.n, k + 1),
            })
    }

    /// A call's arguments in streamed fragments (at least one, maybe empty).
    fn fragments(&self, call: &FakeToolCall) -> Vec<String> {
        let chars: Vec<char> = call.arguments.chars().collect();
        let mut out: Vec<String> = chars
            .chunks(self.chunk_chars.max(1))
            .map(|c| c.iter().collect())
            .collect();
        if out.is_empty() {
            out.push(String::new());
        }
        out
    }

    /// A call's arguments as Anthropic's `input`: the JSON (`{}` for empty
    /// text), or the text as a JSON string when it is not JSON.
    fn input(call: &FakeToolCall) -> Value {
        if call.arguments.trim().is_empty() {
            return json!({});
        }
        serde_json::from_str(&call.arguments)
            .unwrap_or_else(|_| Value::String(call.arguments.clone()))
    }
}

/// SSE frames of a streamed answer, split where faults cut in.
#[derive(Debug)]
pub(crate) struct Frames {
    pub(crate) preamble: Vec<Bytes>,
    pub(crate) deltas: Vec<Bytes>,
    pub(crate) finals: Vec<Bytes>,
}

const CREATED: u64 = 1_700_000_000;

impl Dialect {
    pub(crate) fn request_id_header(self) -> &'static str {
        match self {
            Self::Anthropic => "request-id",
            Self::OpenAi => "x-request-id",
        }
    }

    /// The non-streaming response body.
    pub(crate) fn reply_json(self, a: &Answer) -> Value {
        match self {
            Self::Anthropic => {
                let (stop_reason, stop_sequence) = anthropic_stop(a);
                let mut content = Vec::new();
                if !a.text.is_empty() || a.calls.is_empty() {
                    content.push(json!({"type": "text", "text": a.text}));
                }
                for (k, c) in a.calls.iter().enumerate() {
                    content.push(json!({
                        "type": "tool_use", "id": a.call_id(self, k), "name": c.name,
                        "input": Answer::input(c),
                    }));
                }
                json!({
                    "id": a.id,
                    "type": "message",
                    "role": "assistant",
                    "model": a.model,
                    "content": content,
                    "stop_reason": stop_reason,
                    "stop_sequence": stop_sequence,
                    "usage": anthropic_usage(&a.usage, a.usage.output_tokens),
                })
            }
            Self::OpenAi => {
                let mut message = json!({
                    "role": "assistant",
                    "content": if a.text.is_empty() && !a.calls.is_empty() {
                        Value::Null
                    } else {
                        Value::String(a.text.clone())
                    },
                    "refusal": null,
                });
                if !a.calls.is_empty() {
                    let calls: Vec<Value> = a
                        .calls
                        .iter()
                        .enumerate()
                        .map(|(k, c)| {
                            json!({"id": a.call_id(self, k), "type": "function",
                                   "function": {"name": c.name, "arguments": c.arguments}})
                        })
                        .collect();
                    message["tool_calls"] = Value::Array(calls);
                }
                json!({
                    "id": a.id,
                    "object": "chat.completion",
                    "created": CREATED,
                    "model": a.model,
                    "choices": [{
                        "index": 0,
                        "message": message,
                        "logprobs": null,
                        "finish_reason": openai_finish(a),
                    }],
                    "usage": openai_usage(&a.usage),
                    "system_fingerprint": "fp_fake",
                })
            }
        }
    }

    /// The streamed response, as SSE frames.
    pub(crate) fn frames(self, a: &Answer) -> Frames {
        match self {
            Self::Anthropic => anthropic_frames(a),
            Self::OpenAi => openai_frames(a),
        }
    }

    /// Status and body of an error response.
    pub(crate) fn error_json(self, e: &FakeError, request_id: &str) -> Value {
        match self {
            Self::Anthropic => {
                let (dtype, dmsg) = anthropic_error_defaults(e);
                json!({
                    "type": "error",
                    "error": {
                        "type": e.error_type.as_deref().unwrap_or(dtype),
                        "message": e.message.as_deref().unwrap_or(dmsg),
                    },
                    "request_id": request_id,
                })
            }
            Self::OpenAi => {
                let (dtype, dcode, dmsg) = openai_error_defaults(e);
                let code = e.code.as_deref().or(dcode);
                json!({
                    "error": {
                        "message": e.message.as_deref().unwrap_or(dmsg),
                        "type": e.error_type.as_deref().unwrap_or(dtype),
                        "param": null,
                        "code": code,
                    }
                })
            }
        }
    }
}

impl Dialect {
    /// An error event inside a stream.
    pub(crate) fn error_frame(self, e: &FakeError, request_id: &str) -> Bytes {
        match self {
            Self::Anthropic => sse(Some("error"), &self.error_json(e, request_id)),
            Self::OpenAi => sse(None, &self.error_json(e, request_id)),
        }
    }
}

fn anthropic_stop(a: &Answer) -> (&'static str, Value) {
    match &a.stop {
        FakeStop::EndTurn if !a.calls.is_empty() => ("tool_use", Value::Null),
        FakeStop::EndTurn => ("end_turn", Value::Null),
        FakeStop::MaxTokens => ("max_tokens", Value::Null),
        FakeStop::StopSequence(s) => ("stop_sequence", Value::String(s.clone())),
    }
}

fn openai_finish(a: &Answer) -> &'static str {
    match &a.stop {
        FakeStop::EndTurn if !a.calls.is_empty() => "tool_calls",
        FakeStop::EndTurn | FakeStop::StopSequence(_) => "stop",
        FakeStop::MaxTokens => "length",
    }
}

fn anthropic_usage(u: &FakeUsage, output_tokens: u64) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
        "output_tokens": output_tokens,
    })
}

fn openai_usage(u: &FakeUsage) -> Value {
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens},
        "completion_tokens_details": {"reasoning_tokens": 0},
    })
}

fn sse(event: Option<&str>, data: &Value) -> Bytes {
    let data = data.to_string();
    Bytes::from(match event {
        Some(e) => format!("event: {e}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    })
}

/// Anthropic's event sequence: `message_start`, the first block's
/// `content_block_start`, `ping`, then every block's deltas, each block
/// closed by `content_block_stop` before the next one starts (a text block
/// first, unless the text is empty and there are tool calls; then one
/// `tool_use` block per call, whose first delta is an empty
/// `input_json_delta`, as the API sends), then `message_delta` and
/// `message_stop`. Each entry of `deltas` ends with one delta event; block
/// boundaries ride in front of the delta that follows them.
fn anthropic_frames(a: &Answer) -> Frames {
    let ev = |name: &str, data: Value| sse(Some(name), &data);
    let (stop_reason, stop_sequence) = anthropic_stop(a);
    let start = |index: usize, block: Value| {
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        )
    };
    let stop = |index: usize| {
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        )
    };
    let delta = |index: usize, d: Value| {
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": d}),
        )
    };
    // Blocks: (start event, delta events).
    let mut blocks: Vec<(Bytes, Vec<Bytes>)> = Vec::new();
    if !a.text.is_empty() || a.calls.is_empty() {
        let deltas = a
            .chunks
            .iter()
            .map(|c| delta(0, json!({"type": "text_delta", "text": c})))
            .collect();
        blocks.push((start(0, json!({"type": "text", "text": ""})), deltas));
    }
    for (k, c) in a.calls.iter().enumerate() {
        let index = blocks.len();
        let block = json!({"type": "tool_use", "id": a.call_id(Dialect::Anthropic, k),
                           "name": c.name, "input": {}});
        let mut deltas = vec![delta(
            index,
            json!({"type": "input_json_delta", "partial_json": ""}),
        )];
        if !c.arguments.is_empty() {
            deltas.extend(a.fragments(c).into_iter().map(|f| {
                delta(
                    index,
                    json!({"type": "input_json_delta", "partial_json": f}),
                )
            }));
        }
        blocks.push((start(index, block), deltas));
    }
    let mut preamble = vec![ev(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": a.id, "type": "message", "role": "assistant", "model": a.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": anthropic_usage(&a.usage, 1),
        }}),
    )];
    let mut deltas: Vec<Bytes> = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let last = blocks.len().saturating_sub(1);
    for (index, (start_ev, block_deltas)) in blocks.into_iter().enumerate() {
        if index == 0 {
            preamble.push(start_ev);
            preamble.push(ev("ping", json!({"type": "ping"})));
        } else {
            pending.extend_from_slice(&stop(index - 1));
            pending.extend_from_slice(&start_ev);
        }
        for d in block_deltas {
            pending.extend_from_slice(&d);
            deltas.push(Bytes::from(std::mem::take(&mut pending)));
        }
    }
    let mut finals = Vec::new();
    if !pending.is_empty() {
        finals.push(Bytes::from(pending));
    }
    finals.extend([
        stop(last),
        ev(
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                   "usage": {"output_tokens": a.usage.output_tokens}}),
        ),
        ev("message_stop", json!({"type": "message_stop"})),
    ]);
    Frames {
        preamble,
        deltas,
        finals,
    }
}

/// OpenAI's chunks: a first chunk with the role, the text in `content`
/// deltas, then the tool calls: each call's first fragment (`index`, `id`,
/// `type`, `function.name`, empty `arguments`) in order, then their
/// `function.arguments` fragments, interleaved round-robin when there are
/// several (clients must assemble by `index`), then an empty delta with
/// the finish reason, the usage chunk when asked for, and `[DONE]`.
fn openai_frames(a: &Answer) -> Frames {
    let chunk = |delta: Value, finish: Value| {
        let mut v = json!({
            "id": a.id, "object": "chat.completion.chunk", "created": CREATED,
            "model": a.model, "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if a.include_usage
            && let Some(o) = v.as_object_mut()
        {
            o.insert("usage".to_owned(), Value::Null);
        }
        sse(None, &v)
    };
    let first_content = if a.text.is_empty() && !a.calls.is_empty() {
        Value::Null
    } else {
        json!("")
    };
    let preamble = vec![chunk(
        json!({"role": "assistant", "content": first_content, "refusal": null}),
        Value::Null,
    )];
    let mut deltas: Vec<Bytes> = a
        .chunks
        .iter()
        .map(|c| chunk(json!({"content": c}), Value::Null))
        .collect();
    for (k, c) in a.calls.iter().enumerate() {
        deltas.push(chunk(
            json!({"tool_calls": [{"index": k, "id": a.call_id(Dialect::OpenAi, k), "type": "function",
                                   "function": {"name": c.name, "arguments": ""}}]}),
            Value::Null,
        ));
    }
    let mut fragments: Vec<std::vec::IntoIter<String>> =
        a.calls.iter().map(|c| a.fragments(c).into_iter()).collect();
    loop {
        let mut any = false;
        for (k, it) in fragments.iter_mut().enumerate() {
            if let Some(f) = it.next() {
                any = true;
                if !f.is_empty() {
                    deltas.push(chunk(
                        json!({"tool_calls": [{"index": k, "function": {"arguments": f}}]}),
                        Value::Null,
                    ));
                }
            }
        }
        if !any {
            break;
        }
    }
    let mut finals = vec![chunk(json!({}), json!(openai_finish(a)))];
    if a.include_usage {
        finals.push(sse(
            None,
            &json!({
                "id": a.id, "object": "chat.completion.chunk", "created": CREATED,
                "model": a.model, "system_fingerprint": "fp_fake",
                "choices": [], "usage": openai_usage(&a.usage),
            }),
        ));
    }
    finals.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Frames {
        preamble,
        deltas,
        finals,
    }
}

fn anthropic_error_defaults(e: &FakeError) -> (&'static str, &'static str) {
    if e.context_overflow {
        return (
            "invalid_request_error",
            "prompt is too long: 250000 tokens > 200000 maximum",
        );
    }
    match e.status {
        400 => ("invalid_request_error", "messages: field required"),
        401 => ("authentication_error", "invalid x-api-key"),
        403 => (
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        404 => ("not_found_error", "model: not found"),
        413 => (
            "request_too_large",
            "Request exceeds the maximum allowed size.",
        ),
        429 => (
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
        ),
        529 => ("overloaded_error", "Overloaded"),
        _ => ("api_error", "Internal server error"),
    }
}

fn openai_error_defaults(e: &FakeError) -> (&'static str, Option<&'static str>, &'static str) {
    if e.context_overflow {
        return (
            "invalid_request_error",
            Some("context_length_exceeded"),
            "This model's maximum context length is 128000 tokens. However, your messages \
             resulted in 250000 tokens. Please reduce the length of the messages.",
        );
    }
    match e.status {
        400 => (
            "invalid_request_error",
            None,
            "'messages' is a required property",
        ),
        401 => (
            "invalid_request_error",
            Some("invalid_api_key"),
            "Incorrect API key provided.",
        ),
        403 => (
            "invalid_request_error",
            Some("unsupported_country_region_territory"),
            "Country, region, or territory not supported",
        ),
        404 => (
            "invalid_request_error",
            Some("model_not_found"),
            "The model does not exist or you do not have access to it.",
        ),
        429 => (
            "requests",
            Some("rate_limit_exceeded"),
            "Rate limit reached for requests. Please try again later.",
        ),
        503 | 529 => (
            "server_error",
            None,
            "The engine is currently overloaded, please try again later",
        ),
        _ => (
            "server_error",
            None,
            "The server had an error while processing your request.",
        ),
    }
}
