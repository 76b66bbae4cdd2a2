//! `cargo bench -p spes-cli --bench otel`: what OpenTelemetry tracing costs.
//!
//! 1. Tracing off (no subscriber, as `spes` runs without an endpoint): the
//!    telemetry work of one llm step (its spans disabled at the call site),
//!    and a 10-step chain's time per step on the scripted provider.
//! 2. Tracing on, in one (child) process: a 10-step chain over HTTP against the
//!    in-project fake server, its spans exported over OTLP/HTTP (protobuf,
//!    batched) to a loopback receiver, against the same chain on an engine
//!    without a tracer, rounds alternating (the exporter is set up as `spes`
//!    sets it up: `spes_cli::telemetry`, repeated here since a binary crate
//!    exports nothing), with the allocator `spes` uses (mimalloc). Beside it,
//!    the telemetry hooks of one step alone,
//!    in a tight loop, into a batch queue whose exporter sends nothing
//!    (the spans' own cost when caches are warm).
//! 3. Whole `spes run` processes of the chain against the fake server,
//!    without and with `OTEL_EXPORTER_OTLP_ENDPOINT` (set-up, the export and
//!    the flush at exit included).
//!
//! Prints figures; asserts only that spans arrived when tracing is on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_sdk::trace::BatchSpanProcessor;
use prost::Message as _;
use spes_core::component::ComponentRegistry;
use spes_core::message::{ChatRequest, ChatResponse, StopReason, Usage};
use spes_core::workflow::{ValidateEnv, Workflow, parse_workflow, validate};
use spes_engine::Engine;
use spes_engine::telemetry::Tracer;
use spes_fake_llm::{FakeResponse, FakeServer};
use spes_llm::Provider;
use spes_llm::http::HttpProviderConfig;
use spes_llm::openai::OpenAiProvider;
use spes_llm::scripted::{Answer, Rule, ScriptedProvider};

/// The allocator the `spes` binary uses (`src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STEPS: usize = 10;

fn chain() -> (Workflow, String) {
    let mut yaml =
        String::from("name: chain10\ninputs:\n  topic: { type: string, default: rust }\nsteps:\n");
    for i in 1..=STEPS {
        let prev = if i == 1 {
            "topic".to_owned()
        } else {
            format!("s{}", i - 1)
        };
        yaml.push_str(&format!(
            "  - {{ name: s{i}, kind: llm, prompt: \"Step {i}: continue from {{{{ {prev} }}}}\", max_tokens: 64, output: s{i} }}\n"
        ));
    }
    let spec = parse_workflow("chain.yaml", &yaml).unwrap();
    let reg = ComponentRegistry::from_components(vec![]);
    let env = ValidateEnv {
        components: &reg,
        providers: None,
    };
    (validate(spec, "chain.yaml", &yaml, &env).unwrap().0, yaml)
}

/// The request and answer of one step's model call, for the hooks alone.
fn one_call() -> (ChatRequest, ChatResponse) {
    let answer = ChatResponse {
        text: "ok".into(),
        stop_reason: StopReason::EndTurn,
        usage: Usage {
            input_tokens: 5,
            output_tokens: 1,
            ..Usage::default()
        },
        model: Some("m".into()),
        request_id: None,
        latency_ms: 0,
        tool_calls: Vec::new(),
    };
    (ChatRequest::user("Step 3: continue from ok"), answer)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn run_chain(engine: &Engine, wf: &Workflow) {
    let out = engine.run(wf, BTreeMap::new()).await.unwrap();
    assert_eq!(out.model_calls, STEPS as u64);
}

/// A loopback OTLP/HTTP receiver counting the spans it decodes.
async fn receiver() -> (String, Arc<AtomicUsize>) {
    let spans = Arc::new(AtomicUsize::new(0));
    let counted = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let counted = counted.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).unwrap();
                let n: usize = req
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .map(|s| s.spans.len())
                    .sum();
                counted.fetch_add(n, Ordering::SeqCst);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, spans)
}

#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    rt: tokio::runtime::Handle,
}

#[async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.rt
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}

/// The exporter as `spes` builds it (batched OTLP/HTTP protobuf, requests
/// on a one-thread runtime of its own, the engine's spans handed to the
/// batch processor).
fn exporting(base: &str, export_rt: &tokio::runtime::Runtime) -> Tracer {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{base}/v1/traces"))
        .with_http_client(OnRuntime {
            client: reqwest::Client::new(),
            rt: export_rt.handle().clone(),
        })
        .build()
        .unwrap();
    Tracer::batched(BatchSpanProcessor::builder(exporter).build())
}

/// An exporter that counts the spans it is given and sends nothing.
#[derive(Debug)]
struct Discard(Arc<AtomicUsize>);

impl opentelemetry_sdk::trace::SpanExporter for Discard {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.fetch_add(batch.len(), Ordering::SeqCst);
        Ok(())
    }
}

/// Set by the benchmark for the child process that measures part 2.
const PART_2: &str = "SPES_OTEL_BENCH_PART_2";
/// How a part 2 process tells its parent the percentage tracing added.
const ADDED: &str = "part 2, percent added: ";

/// Part 2, in a process of its own: rounds alternate between an engine
/// without a tracer (as `spes` runs with no endpoint) and the same engine
/// with the exporting tracer.
fn in_one_process() {
    let export_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (url, exported) = export_rt.block_on(receiver());
    let exporting = exporting(&url, &export_rt);
    // For diagnosis: `SPES_OTEL_BENCH_EXPORT=discard` traces the chain into
    // a batch queue whose exporter sends nothing.
    let dropped = Arc::new(AtomicUsize::new(0));
    let exporting = if std::env::var("SPES_OTEL_BENCH_EXPORT").as_deref() == Ok("discard") {
        Tracer::batched(BatchSpanProcessor::builder(Discard(dropped.clone())).build())
    } else {
        exporting
    };
    let (wf, _) = chain();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(FakeServer::start()).unwrap();
    server.set_default(FakeResponse::text("ok").with_usage(5, 1));
    let cfg = HttpProviderConfig::new("fake")
        .with_base_url(server.openai_base_url())
        .with_model("fake-model");
    let http: Arc<dyn Provider> = Arc::new(OpenAiProvider::new(cfg).unwrap());
    let plain = Engine::builder()
        .provider(http.clone())
        .tracer(Tracer::none())
        .build();
    let traced = Engine::builder()
        .provider(http)
        .tracer(exporting.clone())
        .build();
    // CPU time of this thread (the engine's, and the fake server's on the
    // same runtime), from the scheduler's own count (Linux).
    let cpu_ns = || -> u64 {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let cpu = std::cell::Cell::new([0u64; 2]);
    // For profiling one side alone: `SPES_OTEL_BENCH_SIDE=on|off` makes
    // every round that side (the figures then compare it with itself).
    let side = std::env::var("SPES_OTEL_BENCH_SIDE").ok();
    let round = |on: bool| -> Duration {
        let on = side.as_deref().map_or(on, |s| s == "on");
        let engine = if on { &traced } else { &plain };
        rt.block_on(async {
            server.reset();
            server.set_default(FakeResponse::text("ok").with_usage(5, 1));
            // For diagnosis: `SPES_OTEL_BENCH_UNSAMPLED=1` runs the traced
            // chain under an unsampled remote parent (contexts and
            // traceparent made, nothing recorded).
            let _parent =
                (on && std::env::var_os("SPES_OTEL_BENCH_UNSAMPLED").is_some()).then(|| {
                    use opentelemetry::trace::{
                        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
                    };
                    opentelemetry::Context::current()
                        .with_remote_span_context(SpanContext::new(
                            TraceId::from(7u128),
                            SpanId::from(7u64),
                            TraceFlags::default(),
                            true,
                            TraceState::default(),
                        ))
                        .attach()
                });
            let c = cpu_ns();
            let t = Instant::now();
            run_chain(engine, &wf).await;
            let took = t.elapsed();
            let mut sum = cpu.get();
            sum[usize::from(on)] += cpu_ns() - c;
            cpu.set(sum);
            took
        })
    };
    for _ in 0..50 {
        round(false);
        round(true);
    }
    cpu.set([0, 0]);
    let rounds = std::env::var("SPES_OTEL_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1500);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    // Off, on, on, off: an order effect (an on round's spans exported
    // during the round after it, say) weighs on both sides alike.
    for _ in 0..rounds / 2 {
        off.push(round(false));
        on.push(round(true));
        on.push(round(true));
        off.push(round(false));
    }
    let [cpu_off, cpu_on] = cpu.get();
    // The spans' own work on the engine's thread: the telemetry hooks of
    // one llm step (step and model-call spans made, the traceparent
    // formatted, the answer recorded, both ended into the batch queue)
    // into a batch queue as the exporting tracer's are, without the chain
    // around them (an exporter that sends nothing, so that the export's
    // work is not counted and the spans above are counted alone).
    let discarded = Arc::new(AtomicUsize::new(0));
    let hooks = Tracer::batched(BatchSpanProcessor::builder(Discard(discarded.clone())).build());
    let scripted = ScriptedProvider::new("bench", vec![]);
    let (req, answer) = one_call();
    // 1,000 spans per batch: within the queue's 2,048 (a full queue drops).
    let n = 500u32;
    let mut per = Vec::new();
    for _ in 0..40 {
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(spes_engine::telemetry::one_step_hooks(
                &hooks,
                &scripted,
                &req,
                answer.clone(),
            ));
        }
        per.push(t.elapsed() / n);
        // Let the queue drain between batches (a full queue drops).
        hooks.force_flush().unwrap();
    }
    assert_eq!(discarded.load(Ordering::SeqCst), 2 * 40 * n as usize);
    println!(
        "tracing on: the telemetry work of one llm step alone (its two spans into the batch queue): {:.2} µs per step (median of 40 × {n})",
        us(median(per))
    );
    println!(
        "chain10/http in one process: CPU time of the run's thread per chain: tracing off {:.0} µs, on {:.0} µs ({:+.1} µs per step)",
        cpu_off as f64 / 1e3 / rounds as f64,
        cpu_on as f64 / 1e3 / rounds as f64,
        (cpu_on as f64 - cpu_off as f64) / 1e3 / rounds as f64 / STEPS as f64
    );
    exporting.force_flush().unwrap();
    let spans = exported.load(Ordering::SeqCst) + dropped.load(Ordering::SeqCst);
    // Per chain: the run, 10 steps, 10 model calls (a full batch queue
    // would drop spans: shown, not hidden).
    let made = (rounds + 50) * (1 + 2 * STEPS);
    let (off, on) = (median(off), median(on));
    let added = (on.as_secs_f64() / off.as_secs_f64() - 1.0) * 100.0;
    println!(
        "chain10/http in one process: tracing off {:.0} µs, on (OTLP/HTTP to loopback) {:.0} µs per chain (median of {rounds}); {:+.1}% wall time, {:+.1} µs per step; {spans} of {made} spans exported",
        us(off),
        us(on),
        added,
        (us(on) - us(off)) / STEPS as f64
    );
    // For the parent, which prints the processes' figures together.
    println!("{ADDED}{added}");
    assert!(
        spans > 0 || std::env::var_os("SPES_OTEL_BENCH_UNSAMPLED").is_some(),
        "no span arrived"
    );
    let _ = exporting.shutdown(Duration::from_secs(5));
}

fn main() {
    if std::env::var_os(PART_2).is_some() {
        in_one_process();
        return;
    }
    let (wf, chain_yaml) = chain();

    // 1. Tracing off: no subscriber in this process yet.
    let scripted = Arc::new(ScriptedProvider::new(
        "bench",
        vec![Rule::default(Answer::Reply("ok".into()))],
    ));
    let (req, answer) = one_call();
    let n = 200_000u32;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(spes_engine::telemetry::one_step_hooks(
            &Tracer::none(),
            scripted.as_ref(),
            &req,
            answer.clone(),
        ));
    }
    let hooks_off = t.elapsed() / n;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(answer.clone());
    }
    let clone_only = t.elapsed() / n;
    println!(
        "tracing off: the telemetry work of one llm step: {:.3} µs per step ({} ns; a bare clone of the answer it takes: {} ns)  (target < 20 µs)",
        us(hooks_off.saturating_sub(clone_only)),
        hooks_off.saturating_sub(clone_only).as_nanos(),
        clone_only.as_nanos()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = Engine::builder().provider(scripted).build();
    let runs = 3000;
    let mut per_run = Vec::new();
    rt.block_on(async {
        for _ in 0..300 {
            run_chain(&engine, &wf).await;
        }
        for _ in 0..runs {
            let t = Instant::now();
            run_chain(&engine, &wf).await;
            per_run.push(t.elapsed());
        }
    });
    println!(
        "tracing off: chain10 on the scripted provider: {:.1} µs per whole step (median of {runs} runs; engine and provider included)",
        us(median(per_run) / STEPS as u32)
    );

    // 2. In processes of their own (see `in_one_process`): a process's
    // figure moves with where its memory lies, so several are run and
    // each is printed, with their median.
    let processes = 5;
    let mut added = Vec::new();
    for i in 0..processes {
        let out = Command::new(std::env::current_exe().unwrap())
            .env(PART_2, "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            if let Some(pct) = line.strip_prefix(ADDED) {
                added.push(pct.parse::<f64>().unwrap());
            } else if i == 0 || line.starts_with("chain10/http in one process: tracing off") {
                println!("{line}");
            }
        }
    }
    assert_eq!(added.len(), processes, "a process printed no figure");
    added.sort_by(f64::total_cmp);
    println!(
        "chain10/http in one process, {processes} processes: tracing on adds {} to the wall time; median {:+.1}%  (target < 5%)",
        added
            .iter()
            .map(|p| format!("{p:+.1}%"))
            .collect::<Vec<_>>()
            .join(", "),
        added[processes / 2]
    );

    // 3. Whole processes.
    let serve_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (url, exported) = serve_rt.block_on(receiver());
    let bin = env!("CARGO_BIN_EXE_spes");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("chain.yaml"), &chain_yaml).unwrap();
    // The fake server and the receiver serve on a runtime thread while the
    // processes run.
    let server = serve_rt.block_on(FakeServer::start()).unwrap();
    server.set_default(FakeResponse::text("ok").with_usage(5, 1));
    std::fs::write(
        dir.path().join("spes.toml"),
        format!(
            "[defaults]\nprovider = \"f\"\n[providers.f]\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\n",
            server.openai_base_url()
        ),
    )
    .unwrap();
    let before = exported.load(Ordering::SeqCst);
    let spes = |traced: bool| -> Duration {
        let mut cmd = Command::new(bin);
        cmd.current_dir(dir.path())
            .args(["run", "chain.yaml", "--quiet", "--no-store"])
            .env("OPENAI_API_KEY", "sk-bench")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        if traced {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", &url);
        }
        let t = Instant::now();
        let s = cmd.output().unwrap();
        assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
        t.elapsed()
    };
    for _ in 0..5 {
        spes(false);
        spes(true);
    }
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..40 {
        server.reset();
        off.push(spes(false));
        on.push(spes(true));
    }
    let spans = exported.load(Ordering::SeqCst) - before;
    let made = 45 * (1 + 2 * STEPS);
    let (off, on) = (median(off), median(on));
    println!(
        "spes run chain10 --no-store against the fake server (whole process): tracing off {:.2} ms, on {:.2} ms (median of 40); {:+.1}% wall time; {spans} of {made} spans exported",
        off.as_secs_f64() * 1e3,
        on.as_secs_f64() * 1e3,
        (on.as_secs_f64() / off.as_secs_f64() - 1.0) * 100.0
    );
}
