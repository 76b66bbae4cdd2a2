//! Trace spans seen through an OpenTelemetry tracer with an in-memory
//! exporter: an agent's tool calls (`execute_tool`) under its step, model
//! calls with their GenAI attributes, message content only when captured,
//! and a replay marked as answered from the journal.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SimpleSpanProcessor, SpanData, SpanExporter};
use serde_json::json;
use spes_engine::telemetry::Tracer;
use spes_engine::{Engine, MemoryJournal};

use crate::{scripted, workflow};

#[derive(Debug, Clone, Default)]
struct Memory(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Memory {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

fn attr(s: &SpanData, k: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == k)
        .map(|kv| kv.value.to_string())
}

const WF: &str = r#"
name: helper
steps:
  - name: plan
    kind: agent
    prompt: "Add 2 and 3 PROMPT-MARK"
    tools: [add]
    max_turns: 3
    output: answer
"#;

const SCRIPT: &str = r#"
- { step: "plan/turn[1]", tool_calls: [{ name: add, arguments: { a: 2, b: 3 } }] }
- { step: "plan/turn[2]", reply: "ANSWER-MARK 5" }
"#;

/// Runs the agent once with capture `capture`, then replays it from the
/// same journal; the spans of both runs.
async fn spans(capture: bool) -> (Vec<SpanData>, Vec<SpanData>) {
    let memory = Memory::default();
    spes_engine::telemetry::set_capture_content(capture);
    let engine = Engine::builder()
        .tracer(Tracer::new(SimpleSpanProcessor::new(memory.clone())))
        .provider(scripted(SCRIPT))
        .tool(crate::agent::adder(Arc::new(AtomicUsize::new(0))))
        .build();
    let journal = Arc::new(MemoryJournal::default());
    let wf = workflow(WF);
    let out = engine
        .run_with_journal(&wf, BTreeMap::new(), journal.clone())
        .await
        .unwrap();
    assert_eq!(out.output, Some(json!("ANSWER-MARK 5")));
    let first = std::mem::take(&mut *memory.0.lock().unwrap());
    let again = engine
        .run_with_journal(&wf, BTreeMap::new(), journal)
        .await
        .unwrap();
    assert_eq!(again.replayed, 3);
    let second = std::mem::take(&mut *memory.0.lock().unwrap());
    spes_engine::telemetry::set_capture_content(false);
    (first, second)
}

/// One test (capture is process-wide): without capture, then with it.
#[tokio::test]
async fn tool_and_model_calls_are_spans_with_content_only_when_captured() {
    let (spans_plain, replayed) = spans(false).await;
    let by_name = |v: &[SpanData], n: &str| -> Vec<SpanData> {
        v.iter().filter(|s| s.name == n).cloned().collect()
    };
    let tools = by_name(&spans_plain, "execute_tool add");
    assert_eq!(tools.len(), 1, "{spans_plain:#?}");
    let tool = &tools[0];
    assert_eq!(
        attr(tool, "gen_ai.operation.name").as_deref(),
        Some("execute_tool")
    );
    assert_eq!(attr(tool, "gen_ai.tool.name").as_deref(), Some("add"));
    assert_eq!(
        attr(tool, "spes.step.key").as_deref(),
        Some("plan/turn[1]/call[add#1]")
    );
    assert_eq!(
        attr(tool, "spes.journal.replayed").as_deref(),
        Some("false")
    );
    assert!(attr(tool, "gen_ai.tool.call.id").is_some());
    let step = by_name(&spans_plain, "step plan");
    assert_eq!(step.len(), 1);
    assert_eq!(tool.parent_span_id, step[0].span_context.span_id());
    let chats: Vec<&SpanData> = spans_plain
        .iter()
        .filter(|s| attr(s, "gen_ai.operation.name").as_deref() == Some("chat"))
        .collect();
    assert_eq!(chats.len(), 2);
    for c in &chats {
        assert_eq!(c.parent_span_id, step[0].span_context.span_id());
        assert_eq!(attr(c, "gen_ai.provider.name").as_deref(), Some("scripted"));
    }
    assert_eq!(
        attr(chats[0], "gen_ai.response.finish_reasons").as_deref(),
        Some("[\"tool_calls\"]"),
    );
    for s in &spans_plain {
        for kv in &s.attributes {
            let v = kv.value.to_string();
            assert!(
                !v.contains("PROMPT-MARK") && !v.contains("ANSWER-MARK") && !v.contains("\"a\""),
                "content in {} of {}: {v}",
                kv.key,
                s.name
            );
        }
    }
    // The replay: every call answered from the journal.
    let replayed_calls: Vec<&SpanData> = replayed
        .iter()
        .filter(|s| attr(s, "spes.journal.replayed").is_some())
        .collect();
    assert_eq!(replayed_calls.len(), 3, "{replayed:#?}");
    assert!(
        replayed_calls
            .iter()
            .all(|s| attr(s, "spes.journal.replayed").as_deref() == Some("true"))
    );

    let (captured, _) = spans(true).await;
    let tool = &by_name(&captured, "execute_tool add")[0];
    let args: serde_json::Value =
        serde_json::from_str(&attr(tool, "gen_ai.tool.call.arguments").unwrap()).unwrap();
    assert_eq!(args, json!({ "a": 2, "b": 3 }));
    assert_eq!(attr(tool, "gen_ai.tool.call.result").as_deref(), Some("5"));
    let chats: Vec<&SpanData> = captured
        .iter()
        .filter(|s| attr(s, "gen_ai.operation.name").as_deref() == Some("chat"))
        .collect();
    assert!(
        attr(chats[0], "gen_ai.input.messages")
            .unwrap()
            .contains("PROMPT-MARK")
    );
    assert!(
        attr(chats[1], "gen_ai.output.messages")
            .unwrap()
            .contains("ANSWER-MARK 5")
    );
}

/// A run's span is a child of the caller's current OpenTelemetry context
/// (an embedding application's own span), and an engine built without a
/// tracer makes no span at all.
#[tokio::test]
async fn a_run_is_a_child_of_the_callers_context_and_no_tracer_means_no_spans() {
    use opentelemetry::context::FutureExt as _;
    use opentelemetry::trace::{TraceContextExt as _, Tracer as _};
    let memory = Memory::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(memory.clone())
        .build();
    let app = provider.tracer("app");
    let wf = workflow("name: one\nsteps:\n  - { name: s, kind: llm, prompt: hi, output: s }\n");
    let traced = Engine::builder()
        .tracer(Tracer::new(SimpleSpanProcessor::new(memory.clone())))
        .provider(scripted("- { reply: ok }"))
        .build();
    let parent = opentelemetry::Context::current_with_span(app.start("request"));
    let parent_id = parent.span().span_context().span_id();
    let trace_id = parent.span().span_context().trace_id();
    traced
        .run(&wf, BTreeMap::new())
        .with_context(parent.clone())
        .await
        .unwrap();
    parent.span().end();
    let spans = std::mem::take(&mut *memory.0.lock().unwrap());
    let run = spans.iter().find(|s| s.name == "run one").unwrap();
    assert_eq!(run.parent_span_id, parent_id, "{spans:#?}");
    assert_eq!(run.span_context.trace_id(), trace_id);
    // run, step, chat, and the caller's own span.
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert!(spans.iter().all(|s| s.span_context.trace_id() == trace_id));

    let plain = Engine::builder()
        .tracer(Tracer::none())
        .provider(scripted("- { reply: ok }"))
        .build();
    plain.run(&wf, BTreeMap::new()).await.unwrap();
    assert!(memory.0.lock().unwrap().is_empty());
}

/// Records the `traceparent` each model call is given.
#[derive(Debug, Default)]
struct Seen(Mutex<Vec<Option<String>>>);

#[async_trait::async_trait]
impl spes_llm::Provider for Seen {
    fn name(&self) -> &str {
        "seen"
    }
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn default_model(&self) -> Option<&str> {
        None
    }
    async fn complete(
        &self,
        _req: &spes_core::message::ChatRequest,
        cx: &spes_llm::CallContext,
    ) -> Result<spes_core::message::ChatResponse, spes_llm::ProviderError> {
        self.0.lock().unwrap().push(cx.traceparent.clone());
        Ok(spes_core::message::ChatResponse {
            text: "ok".into(),
            stop_reason: spes_core::message::StopReason::EndTurn,
            usage: spes_core::message::Usage::default(),
            model: None,
            request_id: None,
            latency_ms: 0,
            tool_calls: Vec::new(),
        })
    }
}

/// Sampling follows the parent, as the SDK's default sampler does: under
/// a caller's span whose trace is not sampled, no span is exported, yet
/// each model call still carries the trace (flags `00`) onward; under
/// a sampled one, every span is recorded, and each call's `traceparent`
/// names its own model-call span.
#[tokio::test]
async fn a_trace_the_caller_does_not_sample_is_carried_but_not_recorded() {
    use opentelemetry::context::FutureExt as _;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    let memory = Memory::default();
    let seen = Arc::new(Seen::default());
    let engine = Engine::builder()
        .tracer(Tracer::new(SimpleSpanProcessor::new(memory.clone())))
        .provider(seen.clone())
        .build();
    let wf = workflow(
        "name: two\nsteps:\n  - { name: a, kind: llm, prompt: hi, output: a }\n  - { name: b, kind: llm, prompt: again, output: b }\n",
    );
    let trace = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
    let caller = |flags| {
        opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            trace,
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            flags,
            true,
            TraceState::default(),
        ))
    };

    engine
        .run(&wf, BTreeMap::new())
        .with_context(caller(TraceFlags::default()))
        .await
        .unwrap();
    assert!(
        memory.0.lock().unwrap().is_empty(),
        "an unsampled trace was recorded"
    );
    let unsampled = std::mem::take(&mut *seen.0.lock().unwrap());
    assert_eq!(unsampled.len(), 2);
    for tp in &unsampled {
        let tp = tp.as_deref().expect("the call carries the trace");
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{tp}"
        );
        assert!(tp.ends_with("-00"), "{tp}");
    }

    engine
        .run(&wf, BTreeMap::new())
        .with_context(caller(TraceFlags::SAMPLED))
        .await
        .unwrap();
    let spans = std::mem::take(&mut *memory.0.lock().unwrap());
    // The run, two steps, two model calls.
    assert_eq!(spans.len(), 5, "{spans:#?}");
    assert!(spans.iter().all(|s| s.span_context.trace_id() == trace));
    let run = spans.iter().find(|s| s.name == "run two").unwrap();
    assert!(run.parent_span_is_remote);
    let sampled = std::mem::take(&mut *seen.0.lock().unwrap());
    let chats: Vec<_> = spans.iter().filter(|s| s.name == "chat").collect();
    assert_eq!(chats.len(), 2, "{spans:#?}");
    for (tp, chat) in sampled.iter().zip(&chats) {
        let tp = tp.as_deref().unwrap();
        assert!(tp.ends_with("-01"), "{tp}");
        assert!(
            chats
                .iter()
                .any(|c| tp.contains(&c.span_context.span_id().to_string())),
            "{tp} names no model-call span"
        );
        let step = spans
            .iter()
            .find(|s| s.span_context.span_id() == chat.parent_span_id)
            .unwrap();
        assert!(step.name.starts_with("step "), "{}", step.name);
        assert_eq!(step.parent_span_id, run.span_context.span_id());
    }
}

/// A span as a comparable line: its name, its parent's name and its
/// attributes (message content left out: capture is process-wide and
/// another test turns it on).
fn shape(all: &[SpanData], s: &SpanData) -> String {
    let parent = all
        .iter()
        .find(|p| p.span_context.span_id() == s.parent_span_id)
        .map_or("-", |p| p.name.as_ref());
    let mut attrs: Vec<String> = s
        .attributes
        .iter()
        .filter(|kv| {
            let k = kv.key.as_str();
            !k.ends_with(".messages")
                && !k.starts_with("gen_ai.system")
                && !k.starts_with("gen_ai.tool.call.arg")
                && !k.starts_with("gen_ai.tool.call.res")
                && k != "gen_ai.tool.call.id"
        })
        .map(|kv| format!("{}={}", kv.key, kv.value))
        .collect();
    attrs.sort();
    format!("{} < {parent} {:?} {}", s.name, s.status, attrs.join(" "))
}

/// A batched tracer builds the spans on a thread of its own: after a
/// flush the processor has every span, the same as a tracer that builds
/// them where they end, batches of more than one send included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_tracer_hands_on_the_same_spans_after_a_flush() {
    const RUNS: usize = 120;
    async fn runs(tracer: Tracer, memory: &Memory) -> Vec<String> {
        let engine = Engine::builder()
            .tracer(tracer.clone())
            .provider(scripted(SCRIPT))
            .tool(crate::agent::adder(Arc::new(AtomicUsize::new(0))))
            .build();
        let wf = workflow(WF);
        // More spans than one batch of the queue (512): one goes to the
        // thread as it fills, the rest with the flush.
        for _ in 0..RUNS {
            let out = engine
                .run_with_journal(&wf, BTreeMap::new(), Arc::new(MemoryJournal::default()))
                .await
                .unwrap();
            assert_eq!(out.output, Some(json!("ANSWER-MARK 5")));
        }
        tracer.force_flush().unwrap();
        let spans = std::mem::take(&mut *memory.0.lock().unwrap());
        let mut lines: Vec<String> = spans.iter().map(|s| shape(&spans, s)).collect();
        lines.sort();
        lines
    }
    let (direct, queued) = (Memory::default(), Memory::default());
    let built_here = runs(
        Tracer::new(SimpleSpanProcessor::new(direct.clone())),
        &direct,
    )
    .await;
    let batched = runs(
        Tracer::batched(SimpleSpanProcessor::new(queued.clone())),
        &queued,
    )
    .await;
    // Each run: its run span, a step, two model calls and a tool call.
    assert_eq!(built_here.len(), RUNS * 5, "{built_here:#?}");
    assert_eq!(batched, built_here);
    assert!(
        batched
            .iter()
            .any(|l| l.starts_with("step plan < run helper")),
        "{batched:#?}"
    );
}

/// A batch that does not fill still reaches the processor, without a
/// flush, once the tracer's thread has waited half a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_tracer_hands_on_a_partial_batch_without_a_flush() {
    let memory = Memory::default();
    let engine = Engine::builder()
        .tracer(Tracer::batched(SimpleSpanProcessor::new(memory.clone())))
        .provider(scripted(SCRIPT))
        .tool(crate::agent::adder(Arc::new(AtomicUsize::new(0))))
        .build();
    engine
        .run_with_journal(
            &workflow(WF),
            BTreeMap::new(),
            Arc::new(MemoryJournal::default()),
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // Polled for up to 10 s: the thread's wait is half a second.
    while memory.0.lock().unwrap().len() < 5
        && started.elapsed() < std::time::Duration::from_secs(10)
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let spans = memory.0.lock().unwrap();
    assert_eq!(spans.len(), 5, "{spans:#?}");
    assert!(spans.iter().any(|s| s.name == "run helper"));
}
