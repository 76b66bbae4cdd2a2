//! Trace spans for runs, steps, model calls and tool calls, after the
//! OpenTelemetry GenAI semantic conventions.
//!
//! With the `otel` feature, an engine makes OpenTelemetry spans itself
//! through the [`Tracer`] it was built with
//! ([`crate::EngineBuilder::tracer`], else the process's
//! [`Tracer::set_global`]); a front door that exports traces (the CLI: the
//! SDK's batch exporter over OTLP/HTTP) installs one. Spans go straight to
//! the tracer: not through `tracing` spans and a bridge layer, whose
//! per-span and per-poll bookkeeping cost several times more. Parents are
//! carried explicitly: an execution holds its current span (the run's,
//! then each step's, then the model or tool call's), and a span made
//! inside a step is that step's child. No context is attached to the
//! futures the engine polls (attaching it on every poll cost several
//! microseconds per step). The caller's current OpenTelemetry
//! `Context` (`opentelemetry::Context`, with the `otel` feature) when a
//! run starts (an embedding application's span) is the parent of the
//! run's span. A provider learns
//! its call's span from `CallContext::traceparent`.
//!
//! Without a tracer (the default), every function here returns at once:
//! nothing is allocated, no clock is read. Without the `otel` feature they
//! compile to nothing.
//!
//! A run stores its trace context with it (`RunSettings::trace_parent`) so
//! that a resume, in any process, continues the same trace, and outgoing
//! HTTP requests carry a W3C `traceparent`. Message content (prompts,
//! answers, tool arguments and results) is put on spans only after
//! [`set_capture_content`]`(true)`.

use std::sync::atomic::{AtomicBool, Ordering};

use spes_core::message::{ChatRequest, ChatResponse, Message, StopReason};
use spes_llm::Provider;

use crate::error::FailureKind;
use crate::run::Stop;

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

#[cfg(feature = "otel")]
mod imp {
    use std::borrow::Cow;
    use std::collections::HashSet;
    use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::{Duration, SystemTime};

    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
        TraceState,
    };
    use opentelemetry::{Context, InstrumentationScope, KeyValue};
    use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
    use opentelemetry_sdk::trace::{
        IdGenerator as _, RandomIdGenerator, SpanData, SpanEvents, SpanLinks, SpanProcessor,
    };

    /// Where an engine's spans go (cheap to clone): an OpenTelemetry SDK
    /// span processor (a batch exporter's, say), or none (no span is made).
    ///
    /// The engine keeps each span's record itself and hands the processor
    /// the finished [`SpanData`]: no SDK tracer, sampler or span object per
    /// span. Sampling follows the SDK's default (parent-based, always on):
    /// a span is recorded unless its parent says its trace is not sampled.
    #[derive(Clone, Default)]
    pub struct Tracer(Option<Arc<Sink>>);

    struct Sink {
        out: Arc<Out>,
        ids: RandomIdGenerator,
        /// With [`Tracer::batched`]: where ended spans wait for the
        /// thread that hands them on.
        queue: Option<Queue>,
    }

    /// What a finished span becomes and where it goes.
    struct Out {
        processor: Box<dyn SpanProcessor>,
        scope: InstrumentationScope,
    }

    /// Ended spans, still as the engine recorded them, and the thread
    /// that builds them into [`SpanData`] for the processor.
    struct Queue {
        ended: Arc<Mutex<Vec<Ended>>>,
        /// Emptied batches, for the next ones (their memory stays in use
        /// instead of being freed on one thread and faulted in again on
        /// the other).
        spare: Arc<Mutex<Vec<Vec<Ended>>>>,
        to_thread: SyncSender<Msg>,
    }

    struct Ended {
        cx: SpanContext,
        rec: Rec,
        end: SystemTime,
    }

    enum Msg {
        Batch(Vec<Ended>),
        /// Hand on every span ended before this message, then answer.
        Flush(SyncSender<()>),
    }

    /// Ended spans a batch holds before it goes to the thread (the batch
    /// processor's default export batch: one export per batch). Fewer
    /// hand-overs cost the engine's thread less: 128 measured about 1%
    /// more on the otel bench's chain.
    const BATCH: usize = 512;
    /// Batches that may wait for the thread; more are dropped (as a full
    /// batch processor drops spans).
    const BATCHES: usize = 8;
    /// Emptied batches kept for reuse.
    const SPARE: usize = 2;
    /// How long an ended span waits at most when fewer than [`BATCH`] end.
    const TICK: Duration = Duration::from_millis(500);
    /// How long a flush waits for the thread.
    const FLUSH_WAIT: Duration = Duration::from_secs(5);

    impl std::fmt::Debug for Tracer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_tuple("Tracer").field(&self.0.is_some()).finish()
        }
    }

    static GLOBAL: OnceLock<Tracer> = OnceLock::new();

    impl Out {
        fn send(&self, mut e: Ended) {
            let (name, attributes, status) = e.rec.built();
            self.processor.on_end(SpanData {
                span_context: e.cx,
                parent_span_id: e.rec.parent,
                parent_span_is_remote: e.rec.parent_remote,
                span_kind: e.rec.kind,
                name,
                start_time: e.rec.start,
                end_time: e.end,
                attributes,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status,
                instrumentation_scope: self.scope.clone(),
            });
        }
    }

    /// The thread of a batched tracer: builds the spans the engine ended
    /// and hands them to the processor, a batch at a time, at least every
    /// [`TICK`]; it ends when the tracer is dropped.
    fn hand_on(
        out: &Out,
        ended: &Mutex<Vec<Ended>>,
        spare: &Mutex<Vec<Vec<Ended>>>,
        from_engine: &Receiver<Msg>,
    ) {
        // The spans of the batch not yet full.
        let send_waiting = || {
            let waiting = ended
                .lock()
                .map(|mut v| std::mem::take(&mut *v))
                .unwrap_or_default();
            waiting.into_iter().for_each(|e| out.send(e));
        };
        loop {
            match from_engine.recv_timeout(TICK) {
                Ok(Msg::Batch(mut batch)) => {
                    batch.drain(..).for_each(|e| out.send(e));
                    if let Ok(mut spare) = spare.lock()
                        && spare.len() < SPARE
                    {
                        spare.push(batch);
                    }
                }
                Ok(Msg::Flush(done)) => {
                    send_waiting();
                    let _ = done.send(());
                }
                Err(RecvTimeoutError::Timeout) => send_waiting(),
                Err(RecvTimeoutError::Disconnected) => {
                    send_waiting();
                    return;
                }
            }
        }
    }

    impl Tracer {
        /// Spans go to `processor` when they end, as the SDK's tracer
        /// provider would hand them (instrumentation scope `spes`), built
        /// on the thread that ends them. Set the processor's resource
        /// (`SpanProcessor::set_resource`, which a tracer provider would
        /// call) before handing it over.
        #[must_use]
        pub fn new(processor: impl SpanProcessor + 'static) -> Self {
            Self::with_queue(processor, false)
        }

        /// As [`Tracer::new`], but an ended span is only queued by the
        /// thread that ends it: a thread of the tracer's own builds the
        /// spans (their attributes, their [`SpanData`]) and hands them to
        /// `processor`: 512 at a time, and those of a batch not yet full
        /// once half a second passes without a full one, so that the
        /// engine's threads do the least. For a batching
        /// processor (an exporter's); [`Tracer::force_flush`] and
        /// [`Tracer::shutdown`] hand on what waits first. When the thread
        /// cannot be started, spans are built where they end.
        #[must_use]
        pub fn batched(processor: impl SpanProcessor + 'static) -> Self {
            Self::with_queue(processor, true)
        }

        fn with_queue(processor: impl SpanProcessor + 'static, queued: bool) -> Self {
            let out = Arc::new(Out {
                processor: Box::new(processor),
                scope: InstrumentationScope::builder("spes").build(),
            });
            let queue = queued.then(|| {
                let ended = Arc::new(Mutex::new(Vec::new()));
                let spare = Arc::new(Mutex::new(Vec::new()));
                let (to_thread, from_engine) = std::sync::mpsc::sync_channel(BATCHES);
                let (o, e, s) = (out.clone(), ended.clone(), spare.clone());
                std::thread::Builder::new()
                    .name("spes-trace".into())
                    .spawn(move || hand_on(&o, &e, &s, &from_engine))
                    .ok()
                    .map(|_| Queue {
                        ended,
                        spare,
                        to_thread,
                    })
            });
            Self(Some(Arc::new(Sink {
                out,
                ids: RandomIdGenerator::default(),
                queue: queue.flatten(),
            })))
        }

        /// No spans.
        #[must_use]
        pub fn none() -> Self {
            Self(None)
        }

        /// Makes `tracer` the one engines use when their builder names
        /// none; only the first call counts (`false` after that).
        pub fn set_global(tracer: Self) -> bool {
            GLOBAL.set(tracer).is_ok()
        }

        /// The tracer set by [`Tracer::set_global`], else none.
        #[must_use]
        pub fn global() -> Self {
            GLOBAL.get().cloned().unwrap_or_default()
        }

        /// Whether spans are made.
        #[must_use]
        pub fn is_enabled(&self) -> bool {
            self.0.is_some()
        }

        /// Has the processor export the spans it holds now (and, when
        /// batched, those still queued).
        ///
        /// # Errors
        /// The processor's, when it could not; a timeout when the
        /// tracer's thread did not answer within 5 seconds.
        pub fn force_flush(&self) -> OTelSdkResult {
            let Some(sink) = &self.0 else {
                return Ok(());
            };
            sink.hand_on_queued()?;
            sink.out.processor.force_flush()
        }

        /// Exports what is left and stops the processor (spans ended later
        /// are dropped by it).
        ///
        /// # Errors
        /// The processor's, when it could not.
        pub fn shutdown(&self, timeout: Duration) -> OTelSdkResult {
            let Some(sink) = &self.0 else {
                return Ok(());
            };
            let queued = sink.hand_on_queued();
            sink.out.processor.shutdown_with_timeout(timeout)?;
            queued
        }

        /// A span, the child of `remote` (a stored W3C traceparent) when
        /// it parses, else of `parent` when it is a span, else of the
        /// current context's span when there is one; else the root of a
        /// new trace. `name` and `attributes` are asked for only when the
        /// span is recorded.
        pub(crate) fn start(
            &self,
            name: impl FnOnce() -> Cow<'static, str>,
            kind: SpanKind,
            attributes: impl FnOnce() -> (Lazy, Vec<KeyValue>),
            remote: Option<&str>,
            parent: &Span,
        ) -> Span {
            let Some(sink) = &self.0 else {
                return Span(None);
            };
            let (parent, parent_remote) = match (remote.and_then(remote_context), &parent.0) {
                (Some(remote), _) => (remote, true),
                (None, Some(live)) => (live.cx.clone(), false),
                (None, None) => Context::map_current(|cx| {
                    let sc = cx.span().span_context().clone();
                    let remote = sc.is_remote();
                    (sc, remote)
                }),
            };
            let (trace_id, flags, state, parent_id) = if parent.is_valid() {
                (
                    parent.trace_id(),
                    parent.trace_flags(),
                    parent.trace_state().clone(),
                    parent.span_id(),
                )
            } else {
                (
                    sink.ids.new_trace_id(),
                    TraceFlags::SAMPLED,
                    TraceState::default(),
                    SpanId::INVALID,
                )
            };
            let cx = SpanContext::new(trace_id, sink.ids.new_span_id(), flags, false, state);
            let rec = flags.is_sampled().then(|| {
                let (lazy, attributes) = attributes();
                Mutex::new(Some(Rec {
                    parent: parent_id,
                    parent_remote,
                    kind,
                    name: name(),
                    start: opentelemetry::time::now(),
                    lazy,
                    replayed: None,
                    attributes,
                    status: Status::Unset,
                }))
            });
            Span(Some(Arc::new(Live {
                cx,
                rec,
                sink: sink.clone(),
            })))
        }
    }

    impl Sink {
        /// Hands the processor every span ended so far (those queued for
        /// the thread included).
        fn hand_on_queued(&self) -> OTelSdkResult {
            let Some(q) = &self.queue else {
                return Ok(());
            };
            let (done, answered) = std::sync::mpsc::sync_channel(1);
            q.to_thread
                .send(Msg::Flush(done))
                .map_err(|_| OTelSdkError::InternalFailure("the trace thread has ended".into()))?;
            answered
                .recv_timeout(FLUSH_WAIT)
                .map_err(|_| OTelSdkError::Timeout(FLUSH_WAIT))
        }

        fn ended(&self, cx: &SpanContext, rec: Rec) {
            let end = opentelemetry::time::now();
            let Some(q) = &self.queue else {
                return self.out.send(Ended {
                    cx: cx.clone(),
                    rec,
                    end,
                });
            };
            let Ok(mut ended) = q.ended.lock() else {
                return;
            };
            ended.push(Ended {
                cx: cx.clone(),
                rec,
                end,
            });
            if ended.len() >= BATCH {
                let next = q
                    .spare
                    .lock()
                    .ok()
                    .and_then(|mut s| s.pop())
                    .unwrap_or_else(|| Vec::with_capacity(BATCH));
                let batch = std::mem::replace(&mut *ended, next);
                drop(ended);
                // A full queue drops the batch (the thread is behind by
                // BATCHES × BATCH spans); a thread that has ended cannot be.
                let _ = q.to_thread.try_send(Msg::Batch(batch));
            }
        }
    }

    /// One span (its context, and its record until it ends), or none.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Span(pub(super) Option<Arc<Live>>);

    pub(crate) struct Live {
        cx: SpanContext,
        /// `None` when the trace is not sampled (the context still goes
        /// to children and outgoing requests); taken when the span ends.
        rec: Option<Mutex<Option<Rec>>>,
        sink: Arc<Sink>,
    }

    impl std::fmt::Debug for Live {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Live")
                .field("cx", &self.cx)
                .finish_non_exhaustive()
        }
    }

    /// The attributes of the spans made on every step, kept as the engine
    /// has them until the span is built (by the tracer's thread when
    /// batched): fewer allocations where the step runs.
    pub(crate) enum Lazy {
        /// All the attributes are in `Rec::attributes`.
        None,
        /// A step's span (its name is `step KEY`).
        Step { key: String, kind: &'static str },
        /// A model call's span.
        Model(Model),
    }

    pub(crate) struct Model {
        pub(crate) provider_kind: &'static str,
        pub(crate) provider: Cow<'static, str>,
        pub(crate) model: Option<Cow<'static, str>>,
        pub(crate) max_tokens: Option<u32>,
        pub(crate) temperature: Option<f32>,
        pub(crate) key: String,
        pub(crate) answer: Option<Answered>,
    }

    pub(crate) struct Answered {
        pub(crate) model: Option<Cow<'static, str>>,
        pub(crate) id: Option<String>,
        pub(crate) input_tokens: u64,
        pub(crate) output_tokens: u64,
        pub(crate) finish_reason: Cow<'static, str>,
    }

    struct Rec {
        parent: SpanId,
        parent_remote: bool,
        kind: SpanKind,
        name: Cow<'static, str>,
        start: SystemTime,
        lazy: Lazy,
        /// `spes.journal.replayed`, once known.
        replayed: Option<bool>,
        /// The attributes built already (content, errors, spans other
        /// than steps and model calls).
        attributes: Vec<KeyValue>,
        status: Status,
    }

    impl Rec {
        /// The span's name, all its attributes and its status.
        fn built(&mut self) -> (Cow<'static, str>, Vec<KeyValue>, Status) {
            let later = std::mem::take(&mut self.attributes);
            let (name, mut a) = match std::mem::replace(&mut self.lazy, Lazy::None) {
                Lazy::None => (std::mem::take(&mut self.name), later),
                Lazy::Step { key, kind } => {
                    let mut a = Vec::with_capacity(4 + later.len());
                    let name = ["step ", &key].concat().into();
                    a.push(KeyValue::new("openinference.span.kind", "CHAIN"));
                    a.push(KeyValue::new("spes.step.key", key));
                    a.push(KeyValue::new("spes.step.kind", kind));
                    a.extend(later);
                    (name, a)
                }
                Lazy::Model(m) => (
                    match &m.model {
                        Some(model) => shared_concat("chat ", model),
                        None => "chat".into(),
                    },
                    m.attributes(later),
                ),
            };
            a.extend(
                self.replayed
                    .map(|r| KeyValue::new("spes.journal.replayed", r)),
            );
            let status = std::mem::replace(&mut self.status, Status::Unset);
            (name, a, status)
        }
    }

    impl Model {
        /// The GenAI attributes of a model call, then `later`.
        fn attributes(self, later: Vec<KeyValue>) -> Vec<KeyValue> {
            let mut a = Vec::with_capacity(16 + later.len());
            a.push(KeyValue::new("openinference.span.kind", "LLM"));
            a.push(KeyValue::new("gen_ai.operation.name", "chat"));
            a.push(KeyValue::new("gen_ai.provider.name", self.provider_kind));
            if let Some(model) = self.model {
                a.push(KeyValue::new("gen_ai.request.model", model));
            }
            if let Some(n) = self.max_tokens {
                a.push(KeyValue::new("gen_ai.request.max_tokens", i64::from(n)));
            }
            if let Some(t) = self.temperature {
                a.push(KeyValue::new("gen_ai.request.temperature", f64::from(t)));
            }
            a.push(KeyValue::new("spes.provider", self.provider));
            if let Some(s) = super::slot(&self.key) {
                a.push(KeyValue::new("spes.attempt", s.to_owned()));
            }
            a.push(KeyValue::new("spes.step.key", self.key));
            if let Some(r) = self.answer {
                let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                if let Some(model) = r.model {
                    a.push(KeyValue::new("gen_ai.response.model", model));
                }
                if let Some(id) = r.id {
                    a.push(KeyValue::new("gen_ai.response.id", id));
                }
                a.push(KeyValue::new(
                    "gen_ai.usage.input_tokens",
                    tokens(r.input_tokens),
                ));
                a.push(KeyValue::new(
                    "gen_ai.usage.output_tokens",
                    tokens(r.output_tokens),
                ));
                a.push(KeyValue::new(
                    "gen_ai.response.finish_reasons",
                    opentelemetry::Value::Array(opentelemetry::Array::String(vec![
                        r.finish_reason.into(),
                    ])),
                ));
            }
            a.extend(later);
            a
        }
    }

    impl Live {
        fn with(&self, f: impl FnOnce(&mut Rec)) {
            if let Some(Ok(mut rec)) = self.rec.as_ref().map(Mutex::lock)
                && let Some(rec) = rec.as_mut()
            {
                f(rec);
            }
        }

        /// Hands the finished span on (once).
        fn end(&self) {
            let Some(Ok(mut slot)) = self.rec.as_ref().map(Mutex::lock) else {
                return;
            };
            let Some(rec) = slot.take() else {
                return;
            };
            drop(slot);
            self.sink.ended(&self.cx, rec);
        }
    }

    impl Drop for Live {
        /// A span let go without an end (its future dropped part-way)
        /// ends now, as the SDK's spans do.
        fn drop(&mut self) {
            self.end();
        }
    }

    impl Span {
        /// No span (the parent of a span made under it is the current
        /// context).
        pub(crate) fn none() -> Self {
            Self(None)
        }

        pub(crate) fn is_recording(&self) -> bool {
            self.0.as_ref().is_some_and(|l| l.rec.is_some())
        }

        pub(crate) fn set(&self, kv: KeyValue) {
            if let Some(live) = &self.0 {
                live.with(|r| r.attributes.push(kv));
            }
        }

        pub(crate) fn set_replayed(&self, replayed: bool) {
            if let Some(live) = &self.0 {
                live.with(|r| r.replayed = Some(replayed));
            }
        }

        /// Records a model call's answer on its span.
        pub(crate) fn answered(&self, answer: Answered) {
            if let Some(live) = &self.0 {
                live.with(|r| {
                    if let Lazy::Model(m) = &mut r.lazy {
                        m.answer = Some(answer);
                    }
                });
            }
        }

        pub(crate) fn error(&self, error_type: String) {
            if let Some(live) = &self.0 {
                live.with(|r| {
                    r.status = Status::error("");
                    r.attributes.push(KeyValue::new("error.type", error_type));
                });
            }
        }

        pub(crate) fn end(&self) {
            if let Some(live) = &self.0 {
                live.end();
            }
        }

        pub(crate) fn traceparent(&self) -> Option<String> {
            self.0.as_ref().and_then(|l| format(&l.cx))
        }
    }

    /// `00-TRACE-SPAN-FLAGS` (written by hand into a buffer of its
    /// length: `format!` with the ids' `Display`, or a `String` pushed a
    /// character at a time, cost several times more, once per model call).
    pub(super) fn format(sc: &SpanContext) -> Option<String> {
        /// The two hex digits of every byte.
        const HEX: [[u8; 2]; 256] = {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            let mut t = [[0u8; 2]; 256];
            let mut i = 0;
            while i < 256 {
                t[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
                i += 1;
            }
            t
        };
        fn hex(out: &mut [u8], bytes: &[u8]) {
            for (o, b) in out.chunks_exact_mut(2).zip(bytes) {
                o.copy_from_slice(&HEX[usize::from(*b)]);
            }
        }
        if !sc.is_valid() {
            return None;
        }
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex(&mut out[3..35], &sc.trace_id().to_bytes());
        hex(&mut out[36..52], &sc.span_id().to_bytes());
        hex(&mut out[53..], &[sc.trace_flags().to_u8()]);
        String::from_utf8(out.to_vec()).ok()
    }

    /// The current context's span's `traceparent`, when it has a span.
    pub(crate) fn current_traceparent() -> Option<String> {
        Context::map_current(|cx| format(cx.span().span_context()))
    }

    /// The remote span context a stored W3C traceparent names (`None`
    /// when it does not parse).
    pub(super) fn remote_context(traceparent: &str) -> Option<SpanContext> {
        let mut it = traceparent.split('-');
        let (Some("00"), Some(t), Some(s), Some(f), None) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            return None;
        };
        let (Ok(t), Ok(s), Ok(f)) = (
            TraceId::from_hex(t),
            SpanId::from_hex(s),
            u8::from_str_radix(f, 16),
        ) else {
            return None;
        };
        let sc = SpanContext::new(t, s, TraceFlags::new(f), true, TraceState::default());
        sc.is_valid().then_some(sc)
    }

    pub(crate) use opentelemetry::KeyValue as Kv;
    pub(crate) use opentelemetry::trace::SpanKind as Kind;

    /// The strings [`shared`] keeps (a fast hash: at most [`SHARED_MAX`]
    /// short strings, looked up several times per model call).
    type Strings = HashSet<&'static str, foldhash::fast::RandomState>;

    /// Most distinct strings [`shared`] keeps for the life of the process.
    const SHARED_MAX: usize = 512;
    /// Longest string [`shared`] keeps.
    const SHARED_LEN: usize = 128;

    /// `s` as a string that lives as long as the process, for the few
    /// values that recur on every span (provider names, model names,
    /// finish reasons, `chat MODEL` span names): an attribute holding one
    /// allocates nothing and frees nothing, where an owned copy was
    /// allocated here and freed on the exporter's thread for every span.
    /// At most [`SHARED_MAX`] strings of at most [`SHARED_LEN`] bytes are
    /// kept (64 KiB); others are copied each time.
    pub(crate) fn shared(s: &str) -> Cow<'static, str> {
        thread_local! {
            static SEEN: std::cell::RefCell<Strings> =
                std::cell::RefCell::new(Strings::default());
            /// The strings found last: most calls ask for one of a few
            /// (a provider's name, its model), found here without a hash.
            static RECENT: std::cell::Cell<[&'static str; 4]> =
                const { std::cell::Cell::new([""; 4]) };
        }
        static KEPT: Mutex<Option<Strings>> = Mutex::new(None);
        let recent = RECENT.with(std::cell::Cell::get);
        if let Some(hit) = recent.iter().find(|r| **r == s) {
            return Cow::Borrowed(hit);
        }
        let remember = |found: &'static str| {
            let [a, b, c, _] = recent;
            RECENT.with(|r| r.set([found, a, b, c]));
        };
        if let Some(hit) = SEEN.with(|seen| seen.borrow().get(s).copied()) {
            remember(hit);
            return Cow::Borrowed(hit);
        }
        if s.len() > SHARED_LEN {
            return Cow::Owned(s.to_owned());
        }
        let Ok(mut kept) = KEPT.lock() else {
            return Cow::Owned(s.to_owned());
        };
        let kept = kept.get_or_insert_with(Strings::default);
        let found = match kept.get(s) {
            Some(k) => *k,
            None if kept.len() < SHARED_MAX => {
                let k: &'static str = Box::leak(s.to_owned().into_boxed_str());
                kept.insert(k);
                k
            }
            None => return Cow::Owned(s.to_owned()),
        };
        SEEN.with(|seen| seen.borrow_mut().insert(found));
        remember(found);
        Cow::Borrowed(found)
    }

    /// [`shared`] of `a` followed by `b`, without a copy of the two
    /// unless one is kept or returned.
    pub(crate) fn shared_concat(a: &str, b: &str) -> Cow<'static, str> {
        let mut buf = [0u8; SHARED_LEN];
        let n = a.len() + b.len();
        if n > SHARED_LEN {
            return Cow::Owned([a, b].concat());
        }
        buf[..a.len()].copy_from_slice(a.as_bytes());
        buf[a.len()..n].copy_from_slice(b.as_bytes());
        match std::str::from_utf8(&buf[..n]) {
            Ok(joined) => shared(joined),
            Err(_) => Cow::Owned([a, b].concat()),
        }
    }
}

#[cfg(not(feature = "otel"))]
mod imp {
    /// Where an engine's spans go: without the `otel` feature, nowhere.
    #[derive(Clone, Debug, Default)]
    pub struct Tracer;

    impl Tracer {
        /// No spans.
        #[must_use]
        pub fn none() -> Self {
            Self
        }

        /// Without the `otel` feature there is no tracer to set.
        pub fn set_global(_tracer: Self) -> bool {
            false
        }

        /// No spans.
        #[must_use]
        pub fn global() -> Self {
            Self
        }

        /// Never: there is no tracer.
        #[must_use]
        pub fn is_enabled(&self) -> bool {
            false
        }
    }

    /// No span.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Span;

    impl Span {
        pub(crate) fn none() -> Self {
            Self
        }

        pub(crate) fn is_recording(&self) -> bool {
            false
        }

        pub(crate) fn end(&self) {}

        pub(crate) fn traceparent(&self) -> Option<String> {
            None
        }
    }

    pub(crate) fn current_traceparent() -> Option<String> {
        None
    }
}

pub(crate) use imp::Span;
pub use imp::Tracer;

/// The span of one execution of a run in this process (`run WORKFLOW`), a
/// child of `parent` (a stored W3C traceparent) when given, else of the
/// caller's current context.
pub(crate) fn run_span(
    tracer: &Tracer,
    workflow: &str,
    run: Option<&str>,
    parent: Option<&str>,
) -> Span {
    #[cfg(feature = "otel")]
    {
        use imp::Kv;
        tracer.start(
            || ["run ", workflow].concat().into(),
            imp::Kind::Internal,
            || {
                let mut a = vec![
                    Kv::new("openinference.span.kind", "CHAIN"),
                    Kv::new("spes.workflow", workflow.to_owned()),
                    Kv::new("spes.run.continued", parent.is_some()),
                ];
                if let Some(r) = run {
                    a.push(Kv::new("spes.run.id", r.to_owned()));
                }
                (imp::Lazy::None, a)
            },
            parent,
            &Span::none(),
        )
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (tracer, workflow, run, parent);
        Span
    }
}

/// The span of one map item or sub-workflow executed by a worker (`item
/// KEY`), a child of the run's stored trace context.
pub(crate) fn item_span(tracer: &Tracer, run: &spes_store::Run, key: &str) -> Span {
    #[cfg(feature = "otel")]
    {
        use imp::Kv;
        if !tracer.is_enabled() {
            return Span::none();
        }
        let parent = run.settings.trace_parent.as_deref();
        let run = run.id.to_string();
        tracer.start(
            || ["item ", key].concat().into(),
            imp::Kind::Internal,
            || {
                let a = vec![
                    Kv::new("openinference.span.kind", "CHAIN"),
                    Kv::new("spes.run.id", run),
                    Kv::new("spes.step.key", key.to_owned()),
                ];
                (imp::Lazy::None, a)
            },
            parent,
            &Span::none(),
        )
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (tracer, run, key);
        Span
    }
}

/// The span of one step (`step KEY`), a child of `parent` (the
/// execution's current span).
pub(crate) fn step_span(tracer: &Tracer, kind: &'static str, key: &str, parent: &Span) -> Span {
    #[cfg(feature = "otel")]
    {
        // Named `step KEY` when it is built.
        tracer.start(
            Default::default,
            imp::Kind::Internal,
            || {
                let key = key.to_owned();
                (imp::Lazy::Step { key, kind }, Vec::new())
            },
            None,
            parent,
        )
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (tracer, kind, key, parent);
        Span
    }
}

/// The attempt or slot a journal key names (`attempt2`, `fallback1`,
/// `repair1`, `degrade2`), if any.
#[cfg_attr(not(feature = "otel"), allow(dead_code))]
fn slot(key: &str) -> Option<&str> {
    key.rsplit('/')
        .next()
        .and_then(|last| last.split_once('#'))
        .map(|(_, tag)| tag)
}

/// The span of one model call (`chat MODEL`), before the journal is
/// asked: a child of `parent` (the step's span).
pub(crate) fn model_span(
    tracer: &Tracer,
    provider: &dyn Provider,
    req: &ChatRequest,
    key: &str,
    parent: &Span,
) -> Span {
    #[cfg(feature = "otel")]
    {
        use imp::Kv;
        if !tracer.is_enabled() {
            return Span::none();
        }
        let model = req.model.as_deref().or_else(|| provider.default_model());
        tracer.start(
            // Named `chat MODEL` when it is built.
            Default::default,
            imp::Kind::Client,
            || {
                let lazy = imp::Lazy::Model(imp::Model {
                    provider_kind: provider.kind(),
                    provider: imp::shared(provider.name()),
                    model: model.map(imp::shared),
                    max_tokens: req.max_tokens,
                    temperature: req.temperature,
                    key: key.to_owned(),
                    answer: None,
                });
                let mut a = Vec::new();
                if capture_content() {
                    if let Some(sys) = &req.system {
                        let v = serde_json::json!([{ "type": "text", "content": sys }]);
                        a.push(Kv::new("gen_ai.system_instructions", v.to_string()));
                    }
                    let msgs: Vec<_> = req.messages.iter().map(message_json).collect();
                    a.push(Kv::new(
                        "gen_ai.input.messages",
                        serde_json::Value::Array(msgs).to_string(),
                    ));
                }
                (lazy, a)
            },
            None,
            parent,
        )
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (tracer, provider, req, key, parent);
        Span
    }
}

#[cfg_attr(not(feature = "otel"), allow(dead_code))]
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

#[cfg_attr(not(feature = "otel"), allow(dead_code))]
fn finish_reason(r: &StopReason) -> &str {
    match r {
        StopReason::EndTurn | StopReason::StopSequence => "stop",
        StopReason::MaxTokens => "length",
        StopReason::ToolUse => "tool_calls",
        StopReason::Other(s) => s,
    }
}

/// Marks a model or tool call's span as answered from the journal.
pub(crate) fn replayed(span: &Span) {
    #[cfg(feature = "otel")]
    span.set_replayed(true);
    #[cfg(not(feature = "otel"))]
    let _ = span;
}

/// Marks a model or tool call's span as made now, not answered from the
/// journal.
pub(crate) fn made(span: &Span) {
    #[cfg(feature = "otel")]
    span.set_replayed(false);
    #[cfg(not(feature = "otel"))]
    let _ = span;
}

/// [`made`], and the `traceparent` for the call's request.
pub(crate) fn calling(span: &Span) -> Option<String> {
    made(span);
    span.traceparent()
}

/// Records how a model call ended on its span, and ends it.
pub(crate) fn model_done(span: &Span, result: &Result<ChatResponse, Stop>) {
    if !span.is_recording() {
        return;
    }
    #[cfg(feature = "otel")]
    match result {
        Ok(r) => {
            use imp::Kv;
            let reason = finish_reason(&r.stop_reason);
            span.answered(imp::Answered {
                model: r.model.as_deref().map(imp::shared),
                id: r.request_id.clone(),
                input_tokens: r.usage.input_tokens,
                output_tokens: r.usage.output_tokens,
                finish_reason: imp::shared(reason),
            });
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
                span.set(Kv::new("gen_ai.output.messages", v.to_string()));
            }
        }
        Err(stop) => stopped(span, stop),
    }
    #[cfg(not(feature = "otel"))]
    let _ = result;
    span.end();
}

/// Records how a step, a run or a tool call ended on its span, and ends it.
pub(crate) fn done<T>(span: &Span, result: &Result<T, Stop>) {
    if !span.is_recording() {
        return;
    }
    if let Err(stop) = result {
        stopped(span, stop);
    }
    span.end();
}

fn stopped(span: &Span, stop: &Stop) {
    #[cfg(feature = "otel")]
    if let Stop::Failed(e) | Stop::Store(e) | Stop::Budget(e) = stop {
        span.error(error_type(&e.kind));
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, stop);
}

/// `error.type` of a failure: the provider error's kind (`rate_limited`,
/// `server_error`, ...) or the failure's own (`timeout`, `invalid_output`, ...).
#[cfg_attr(not(feature = "otel"), allow(dead_code))]
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

#[cfg_attr(not(feature = "otel"), allow(dead_code))]
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

/// The span of one tool call of an agent (`execute_tool NAME`), a child
/// of `parent` (the agent step's span).
pub(crate) fn tool_span(
    tracer: &Tracer,
    name: &str,
    call_id: &str,
    key: &str,
    arguments: &dyn Fn() -> String,
    parent: &Span,
) -> Span {
    #[cfg(feature = "otel")]
    {
        use imp::Kv;
        tracer.start(
            || ["execute_tool ", name].concat().into(),
            imp::Kind::Internal,
            || {
                let mut a = vec![
                    Kv::new("openinference.span.kind", "TOOL"),
                    Kv::new("gen_ai.operation.name", "execute_tool"),
                    Kv::new("gen_ai.tool.name", name.to_owned()),
                    Kv::new("gen_ai.tool.call.id", call_id.to_owned()),
                    Kv::new("spes.step.key", key.to_owned()),
                ];
                if capture_content() {
                    a.push(Kv::new("gen_ai.tool.call.arguments", arguments()));
                }
                (imp::Lazy::None, a)
            },
            None,
            parent,
        )
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (tracer, name, call_id, key, arguments, parent);
        Span
    }
}

/// Records a tool call's result on its span (content only when captured),
/// and ends it.
pub(crate) fn tool_result(span: &Span, result: &str, is_error: bool) {
    if !span.is_recording() {
        return;
    }
    #[cfg(feature = "otel")]
    {
        if is_error {
            span.error("tool_error".into());
        }
        if capture_content() {
            span.set(imp::Kv::new("gen_ai.tool.call.result", result.to_owned()));
        }
    }
    #[cfg(not(feature = "otel"))]
    let _ = (result, is_error);
    span.end();
}

/// The W3C `traceparent` of `span` (`00-TRACE-SPAN-FLAGS`), when it is
/// exported.
#[must_use]
pub(crate) fn traceparent(span: &Span) -> Option<String> {
    span.traceparent()
}

/// The `traceparent` of the current span (for an outgoing request), when
/// traces are exported.
#[must_use]
pub fn current_traceparent() -> Option<String> {
    imp::current_traceparent()
}

/// The telemetry work of one `llm` step with one model call, as the
/// engine does it (step span, model-call span, the `traceparent` read, the
/// answer recorded) through `tracer`: for benchmarks of its cost.
#[doc(hidden)]
pub fn one_step_hooks(
    tracer: &Tracer,
    provider: &dyn Provider,
    req: &ChatRequest,
    answer: ChatResponse,
) -> bool {
    let step = step_span(tracer, "llm", "s1", &Span::none());
    let span = model_span(tracer, provider, req, "s1", &step);
    let traceparent = calling(&span);
    let r: Result<ChatResponse, Stop> = Ok(answer);
    model_done(&span, &r);
    done(&step, &r);
    traceparent.is_some() || !tracer.is_enabled()
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

    #[cfg(feature = "otel")]
    #[test]
    fn a_traceparent_is_written_in_the_w3c_form_and_read_back() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let sc = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        assert_eq!(imp::format(&sc).as_deref(), Some(tp));
        let cx = imp::remote_context(tp).unwrap();
        assert_eq!(cx.trace_id(), sc.trace_id());
        assert_eq!(cx.span_id(), sc.span_id());
        assert!(cx.is_remote());
        assert_eq!(imp::format(&SpanContext::empty_context()), None);
    }

    #[test]
    fn error_types_are_snake_case() {
        assert_eq!(snake("RateLimited"), "rate_limited");
        assert_eq!(snake("Server"), "server");
    }
}
