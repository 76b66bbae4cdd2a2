//! Trace spans for runs, steps, model calls and tool calls, after the
//! OpenTelemetry GenAI semantic conventions.
//!
//! Spans are `tracing` spans with target [`TARGET`] at level INFO; a front
//! door that exports traces (the CLI: an OpenTelemetry layer over OTLP)
//! subscribes to that target. Without such a subscriber the spans are
//! disabled at their call site: no fields are evaluated, nothing is
//! allocated. With the `otel` feature the engine also reads and continues
//! trace contexts: a run stores its trace context with it
//! (`RunSettings::trace_parent`) so that a resume, in any process, continues
//! the same trace, and outgoing HTTP requests carry a W3C `traceparent`.
//!
//! Message content (prompts, answers, tool arguments and results) is put on
//! spans only after [`set_capture_content`]`(true)`.

use std::sync::atomic::{AtomicBool, Ordering};

use spes_core::message::{ChatRequest, ChatResponse, Message, StopReason};
use spes_llm::Provider;
use tracing::Span;
use tracing::field::Empty;

use crate::error::FailureKind;
use crate::run::Stop;

/// The `tracing` target of every span here.
pub const TARGET: &str = "spes::otel";

static CAPTURE: AtomicBool = AtomicBool::new(false);

/// Whether message content goes on spans (prompts, answers, tool
/// arguments and results). Off unless a front door turns it on.
pub fn set_capture_content(on: bool) {
    CAPTURE.store(on, Ordering::Relaxed);
}

/// See [`set_capture_content`].
#[must_use]
pub fn capture_content() -> bool {
    CAPTURE.load(Ordering::Relaxed)
}

/// Whether the spans here are recorded (a front door subscribes to
/// [`TARGET`]), so that a run queued now can begin its trace later.
pub(crate) fn traced() -> bool {
    cfg!(feature = "otel") && tracing::enabled!(target: "spes::otel", tracing::Level::INFO)
}

/// The span of one execution of a run in this process (`spes.run`), a
/// child of `parent` (a stored W3C traceparent) when given.
pub(crate) fn run_span(workflow: &str, run: Option<&str>, parent: Option<&str>) -> Span {
    let span = tracing::info_span!(
        target: "spes::otel",
        "spes.run",
        otel.name = format!("run {workflow}").as_str(),
        openinference.span.kind = "CHAIN",
        spes.workflow = workflow,
        spes.run.id = run,
        spes.run.continued = parent.is_some(),
        otel.status_code = Empty,
        error.type = Empty,
    );
    if let Some(p) = parent {
        set_parent(&span, p);
    }
    span
}

/// The span of one map item executed by a worker (`spes.item`), a child of
/// the run's stored trace context.
pub(crate) fn item_span(run: &str, key: &str, parent: Option<&str>) -> Span {
    let span = tracing::info_span!(
        target: "spes::otel",
        "spes.item",
        otel.name = format!("item {key}").as_str(),
        openinference.span.kind = "CHAIN",
        spes.run.id = run,
        spes.step.key = key,
        otel.status_code = Empty,
        error.type = Empty,
    );
    if let Some(p) = parent {
        set_parent(&span, p);
    }
    span
}

/// The span of one step (`spes.step`).
pub(crate) fn step_span(kind: &str, key: &str) -> Span {
    tracing::info_span!(
        target: "spes::otel",
        "spes.step",
        otel.name = format!("step {key}").as_str(),
        openinference.span.kind = "CHAIN",
        spes.step.key = key,
        spes.step.kind = kind,
        otel.status_code = Empty,
        error.type = Empty,
    )
}

/// The attempt or slot a journal key names (`attempt2`, `fallback1`,
/// `repair1`, `degrade2`), if any.
fn slot(key: &str) -> Option<&str> {
    key.rsplit('/')
        .next()
        .and_then(|last| last.split_once('#'))
        .map(|(_, tag)| tag)
}

/// The span of one model call (`chat MODEL`), before the journal is asked.
pub(crate) fn model_span(provider: &dyn Provider, req: &ChatRequest, key: &str) -> Span {
    let model = req.model.as_deref().or_else(|| provider.default_model());
    let span = tracing::info_span!(
        target: "spes::otel",
        "gen_ai.chat",
        otel.name = format!("chat {}", model.unwrap_or("")).trim_end(),
        otel.kind = "client",
        openinference.span.kind = "LLM",
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = provider.kind(),
        gen_ai.request.model = model,
        gen_ai.request.max_tokens = req.max_tokens,
        gen_ai.request.temperature = req.temperature.map(f64::from),
        gen_ai.response.model = Empty,
        gen_ai.response.id = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.response.finish_reasons = Empty,
        gen_ai.system_instructions = Empty,
        gen_ai.input.messages = Empty,
        gen_ai.output.messages = Empty,
        spes.provider = provider.name(),
        spes.step.key = key,
        spes.attempt = slot(key),
        spes.journal.replayed = Empty,
        otel.status_code = Empty,
        error.type = Empty,
    );
    if capture_content() && !span.is_disabled() {
        if let Some(sys) = &req.system {
            let v = serde_json::json!([{ "type": "text", "content": sys }]);
            span.record("gen_ai.system_instructions", v.to_string().as_str());
        }
        let msgs: Vec<_> = req.messages.iter().map(message_json).collect();
        span.record(
            "gen_ai.input.messages",
            serde_json::Value::Array(msgs).to_string().as_str(),
        );
    }
    span
}

fn message_json(m: &Message) -> serde_json::Value {
    let mut parts = Vec::new();
    if !m.content.is_empty() {
        parts.push(serde_json::json!({ "type": "text", "content": m.content }));
    }
    for c in &m.tool_calls {
        parts.push(serde_json::json!({
            "type": "tool_call", "id": c.id, "name": c.name, "arguments": c.arguments,
        }));
    }
    for r in &m.tool_results {
        parts.push(serde_json::json!({
            "type": "tool_call_response", "id": r.call_id, "response": r.content,
        }));
    }
    serde_json::json!({ "role": m.role, "parts": parts })
}

fn finish_reason(r: &StopReason) -> &str {
    match r {
        StopReason::EndTurn | StopReason::StopSequence => "stop",
        StopReason::MaxTokens => "length",
        StopReason::ToolUse => "tool_calls",
        StopReason::Other(s) => s,
    }
}

/// Marks the current span (a model or tool call's) as answered from the journal.
pub(crate) fn replayed() {
    Span::current().record("spes.journal.replayed", true);
}

/// Marks the current span (a model or tool call's) as made now, not
/// answered from the journal; the `traceparent` for its request.
pub(crate) fn calling() -> Option<String> {
    let span = Span::current();
    span.record("spes.journal.replayed", false);
    traceparent(&span)
}

/// Records how a model call ended on its span.
pub(crate) fn model_done(span: &Span, result: &Result<ChatResponse, Stop>) {
    if span.is_disabled() {
        return;
    }
    match result {
        Ok(r) => {
            span.record("gen_ai.response.model", r.model.as_deref());
            span.record("gen_ai.response.id", r.request_id.as_deref());
            span.record("gen_ai.usage.input_tokens", r.usage.input_tokens);
            span.record("gen_ai.usage.output_tokens", r.usage.output_tokens);
            let reason = finish_reason(&r.stop_reason);
            set_string_array(span, "gen_ai.response.finish_reasons", reason);
            if capture_content() {
                let mut parts = Vec::new();
                if !r.text.is_empty() {
                    parts.push(serde_json::json!({ "type": "text", "content": r.text }));
                }
                for c in &r.tool_calls {
                    parts.push(serde_json::json!({
                        "type": "tool_call", "id": c.id, "name": c.name, "arguments": c.arguments,
                    }));
                }
                let v = serde_json::json!([{
                    "role": "assistant", "parts": parts, "finish_reason": reason,
                }]);
                span.record("gen_ai.output.messages", v.to_string().as_str());
            }
        }
        Err(stop) => stopped(span, stop),
    }
}

/// Records how a step, a run or a tool call ended on its span.
pub(crate) fn done<T>(span: &Span, result: &Result<T, Stop>) {
    if let Err(stop) = result
        && !span.is_disabled()
    {
        stopped(span, stop);
    }
}

fn stopped(span: &Span, stop: &Stop) {
    if let Stop::Failed(e) | Stop::Store(e) = stop {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", error_type(&e.kind).as_str());
    }
}

/// `error.type` of a failure: the provider error's kind (`rate_limited`,
/// `server_error`, ...) or the failure's own (`timeout`, `invalid_output`, ...).
pub(crate) fn error_type(kind: &FailureKind) -> String {
    match kind {
        FailureKind::Provider(p) => p.kind.as_str().to_owned(),
        FailureKind::Template(_) => "template".into(),
        FailureKind::Transform(_) => "transform".into(),
        FailureKind::Answer(_) => "answer".into(),
        FailureKind::Journal(_) => "journal".into(),
        FailureKind::Store(_) => "store".into(),
        FailureKind::Config(_) => "config".into(),
        FailureKind::Timeout(_) => "timeout".into(),
        FailureKind::CircuitOpen { .. } => "circuit_open".into(),
        other => {
            let d = format!("{other:?}");
            let name = d.split(['(', ' ', '{']).next().unwrap_or("error");
            snake(name)
        }
    }
}

fn snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The span of one tool call of an agent (`execute_tool NAME`).
pub(crate) fn tool_span(name: &str, call_id: &str, key: &str, arguments: &str) -> Span {
    let span = tracing::info_span!(
        target: "spes::otel",
        "gen_ai.execute_tool",
        otel.name = format!("execute_tool {name}").as_str(),
        openinference.span.kind = "TOOL",
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = name,
        gen_ai.tool.call.id = call_id,
        gen_ai.tool.call.arguments = Empty,
        gen_ai.tool.call.result = Empty,
        spes.step.key = key,
        spes.journal.replayed = Empty,
        otel.status_code = Empty,
        error.type = Empty,
    );
    if capture_content() && !span.is_disabled() {
        span.record("gen_ai.tool.call.arguments", arguments);
    }
    span
}

/// Records a tool call's result on its span (content only when captured).
pub(crate) fn tool_result(span: &Span, result: &str, is_error: bool) {
    if span.is_disabled() {
        return;
    }
    if is_error {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", "tool_error");
    }
    if capture_content() {
        span.record("gen_ai.tool.call.result", result);
    }
}

#[cfg(feature = "otel")]
fn set_string_array(span: &Span, key: &'static str, value: &str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    span.set_attribute(
        key,
        opentelemetry::Value::Array(opentelemetry::Array::String(vec![value.to_owned().into()])),
    );
}

#[cfg(not(feature = "otel"))]
fn set_string_array(span: &Span, key: &'static str, value: &str) {
    span.record(key, value);
}

/// The W3C `traceparent` of `span` (`00-TRACE-SPAN-FLAGS`), when it is
/// exported (an OpenTelemetry layer is installed and the span enabled).
#[cfg(feature = "otel")]
#[must_use]
pub fn traceparent(span: &Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Without the `otel` feature there is no trace context.
#[cfg(not(feature = "otel"))]
#[must_use]
pub fn traceparent(_span: &Span) -> Option<String> {
    None
}

/// The `traceparent` of the current span (for an outgoing request).
#[must_use]
pub fn current_traceparent() -> Option<String> {
    traceparent(&Span::current())
}

/// Makes `span` a child of the remote context `traceparent` (ignored when
/// it does not parse).
#[cfg(feature = "otel")]
fn set_parent(span: &Span, traceparent: &str) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if span.is_disabled() {
        return;
    }
    let mut it = traceparent.split('-');
    let (Some("00"), Some(t), Some(s), Some(f), None) =
        (it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return;
    };
    let (Ok(t), Ok(s), Ok(f)) = (
        TraceId::from_hex(t),
        SpanId::from_hex(s),
        u8::from_str_radix(f, 16),
    ) else {
        return;
    };
    let sc = SpanContext::new(t, s, TraceFlags::new(f), true, TraceState::default());
    if sc.is_valid() {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

#[cfg(not(feature = "otel"))]
fn set_parent(_span: &Span, _traceparent: &str) {}

/// The telemetry work of one `llm` step with one model call, as the
/// engine does it (step span, model-call span, the `traceparent` read, the
/// answer recorded): for benchmarks of its cost with tracing off and on.
#[doc(hidden)]
pub fn one_step_hooks(provider: &dyn Provider, req: &ChatRequest, answer: ChatResponse) -> bool {
    let step = step_span("llm", "s1");
    let entered = step.enter();
    let span = model_span(provider, req, "s1");
    let traceparent = span.in_scope(calling);
    let r: Result<ChatResponse, Stop> = Ok(answer);
    model_done(&span, &r);
    drop(span);
    drop(entered);
    done(&step, &r);
    traceparent.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_read_from_the_last_key_segment() {
        assert_eq!(slot("a/b#attempt2"), Some("attempt2"));
        assert_eq!(slot("m/map[3]/s#fallback1"), Some("fallback1"));
        assert_eq!(slot("a#x/b"), None);
        assert_eq!(slot("plain"), None);
    }

    #[test]
    fn error_types_are_snake_case() {
        assert_eq!(snake("RateLimited"), "rate_limited");
        assert_eq!(snake("Server"), "server");
    }
}
