//! OpenTelemetry traces from the outside: `spes` exporting over OTLP/HTTP
//! (protobuf) to an in-test receiver (message content only when opted in;
//! `traceparent` on provider and `http` step requests) and to a real
//! backend this project did not write, Arize Phoenix (PyPI
//! `arize-phoenix`, installed by `scripts/phoenix.sh`, run by
//! `scripts/test.sh`, which prints the variable this test reads), read back
//! through its REST API.
#![cfg(feature = "otel")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "crash/harness.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::Value;
use spes_fake_llm::{FakeResponse, FakeServer};
use spes_store::RunStore;

use harness::{Project, spes_command, wait};

// ---------------------------------------------------------------------------
// An OTLP/HTTP receiver on loopback: decodes every export (protobuf) and
// keeps the spans; `/hook` records the headers of requests made to it.

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: BTreeMap<String, String>,
    service: String,
}

impl Span {
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs.get(k).map(String::as_str)
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    hook_headers: Vec<HeaderMap>,
}

struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn any_text(v: &AnyValue) -> String {
    match v {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        AnyValue::ArrayValue(a) => {
            let items: Vec<String> = a
                .values
                .iter()
                .filter_map(|x| x.value.as_ref().map(any_text))
                .collect();
            format!("[{}]", items.join(","))
        }
        other => format!("{other:?}"),
    }
}

impl Receiver {
    async fn start() -> Self {
        let got = Arc::new(Mutex::new(Received::default()));
        let traces = {
            let got = got.clone();
            move |body: Bytes| {
                let got = got.clone();
                async move {
                    let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    let mut g = got.lock().unwrap();
                    for rs in req.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| r.attributes.iter())
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| kv.value.as_ref()?.value.as_ref().map(any_text))
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            for s in ss.spans {
                                g.spans.push(Span {
                                    name: s.name.clone(),
                                    trace_id: hex(&s.trace_id),
                                    span_id: hex(&s.span_id),
                                    parent: hex(&s.parent_span_id),
                                    attrs: s
                                        .attributes
                                        .iter()
                                        .filter_map(|kv| {
                                            Some((
                                                kv.key.clone(),
                                                any_text(kv.value.as_ref()?.value.as_ref()?),
                                            ))
                                        })
                                        .collect(),
                                    service: service.clone(),
                                });
                            }
                        }
                    }
                    ""
                }
            }
        };
        let hook = {
            let got = got.clone();
            move |headers: HeaderMap| {
                let got = got.clone();
                async move {
                    got.lock().unwrap().hook_headers.push(headers);
                    "{\"ok\": true}"
                }
            }
        };
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(traces))
            .route("/hook", axum::routing::get(hook));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, got, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.got.lock().unwrap().spans.clone()
    }

    fn hook_headers(&self) -> Vec<HeaderMap> {
        self.got.lock().unwrap().hook_headers.clone()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The W3C traceparent `00-TRACE-SPAN-FLAGS`: (trace, span).
fn parse_traceparent(v: &str) -> (String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {v}");
    assert_eq!(parts[0], "00", "traceparent {v}");
    assert_eq!(parts[1].len(), 32, "traceparent {v}");
    assert_eq!(parts[2].len(), 16, "traceparent {v}");
    (parts[1].to_owned(), parts[2].to_owned())
}

const PROMPT_MARK: &str = "PROMPT-MARK-7c1f";
const ANSWER_MARK: &str = "ANSWER-MARK-93ab";

/// Two llm steps and an http step to the receiver's hook.
fn content_workflow(hook: &str) -> String {
    format!(
        "name: traced\nsteps:\n  - {{ name: ask, kind: llm, prompt: \"{PROMPT_MARK} first\", max_tokens: 32, output: a }}\n  - {{ name: again, kind: llm, prompt: \"{PROMPT_MARK} second {{{{ a | length }}}}\", max_tokens: 32, output: b }}\n  - {{ name: call, kind: http, method: GET, url: \"{hook}\", output: c }}\n"
    )
}

async fn run_to_receiver(capture: Option<&str>, via_toml: bool) -> (Receiver, FakeServer, Project) {
    let receiver = Receiver::start().await;
    let server = FakeServer::start().await.unwrap();
    server.set_default(FakeResponse::text(ANSWER_MARK).with_usage(13, 5));
    let project = Project::new(
        &content_workflow(&format!("{}/hook", receiver.url())),
        &server.openai_base_url(),
    );
    let mut cmd = spes_command(&project.root, &["run", "wf.yaml"]);
    cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("RUST_LOG");
    if via_toml {
        let toml = std::fs::read_to_string(project.root.join("spes.toml")).unwrap();
        let capture = capture.map_or(String::new(), |c| format!("capture_content = {c}\n"));
        project.write(
            "spes.toml",
            &format!(
                "{toml}\n[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"spes-test\"\n{capture}",
                receiver.url()
            ),
        );
    } else {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url());
        if let Some(c) = capture {
            cmd.env("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", c);
        }
    }
    let exit = wait(cmd.spawn().unwrap()).await;
    assert_eq!(exit.code(), Some(0), "{}", exit.stderr);
    (receiver, server, project)
}

fn chats(spans: &[Span]) -> Vec<&Span> {
    spans
        .iter()
        .filter(|s| s.attr("gen_ai.operation.name") == Some("chat"))
        .collect()
}

/// Without an opt-in, no span carries message content: no content
/// attributes, and neither the prompt nor the answer in any value. Model
/// calls carry the GenAI attributes and token counts; provider requests
/// and the http step's request carry `traceparent` naming the span that
/// made them; the process exports everything before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_carry_no_content_unless_opted_in_and_requests_carry_traceparent() {
    let (receiver, server, _project) = run_to_receiver(None, false).await;
    let spans = receiver.spans();
    let chat = chats(&spans);
    assert_eq!(chat.len(), 2, "{spans:#?}");
    for s in &spans {
        for k in [
            "gen_ai.input.messages",
            "gen_ai.output.messages",
            "gen_ai.system_instructions",
        ] {
            assert!(s.attr(k).is_none(), "{k} on {}: {s:?}", s.name);
        }
        for (k, v) in &s.attrs {
            assert!(
                !v.contains(PROMPT_MARK) && !v.contains(ANSWER_MARK),
                "content in {k} of {}: {v}",
                s.name
            );
        }
        assert_eq!(s.service, "spes");
    }
    for c in &chat {
        assert_eq!(c.name, "chat m");
        assert_eq!(c.attr("gen_ai.provider.name"), Some("openai"));
        assert_eq!(c.attr("gen_ai.request.model"), Some("m"));
        assert_eq!(c.attr("gen_ai.request.max_tokens"), Some("32"));
        assert_eq!(c.attr("gen_ai.usage.input_tokens"), Some("13"));
        assert_eq!(c.attr("gen_ai.usage.output_tokens"), Some("5"));
        assert_eq!(c.attr("gen_ai.response.finish_reasons"), Some("[stop]"));
        assert_eq!(c.attr("spes.journal.replayed"), Some("false"));
    }
    // One trace: a root run span, everything else under it.
    let traces: BTreeSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(traces.len(), 1, "{spans:#?}");
    let roots: Vec<&Span> = spans.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "{spans:#?}");
    assert_eq!(roots[0].name, "run traced");
    // Each provider request names the trace and its model-call span.
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let chat_ids: BTreeSet<&str> = chat.iter().map(|c| c.span_id.as_str()).collect();
    for r in &requests {
        let tp = r
            .header("traceparent")
            .expect("traceparent on the provider request");
        let (trace, span) = parse_traceparent(tp);
        assert_eq!(trace, roots[0].trace_id);
        assert!(
            chat_ids.contains(span.as_str()),
            "{span} is not a chat span"
        );
    }
    // The http step's request names the trace and its step span.
    let hook = receiver.hook_headers();
    assert_eq!(hook.len(), 1);
    let tp = hook[0]
        .get("traceparent")
        .expect("traceparent on the http step's request")
        .to_str()
        .unwrap();
    let (trace, span) = parse_traceparent(tp);
    assert_eq!(trace, roots[0].trace_id);
    let step = spans.iter().find(|s| s.span_id == span).expect("its span");
    assert_eq!(step.attr("spes.step.key"), Some("call"));
}

/// `[telemetry] capture_content = true` (and the endpoint and service name
/// from spes.toml): prompts and answers are on the model-call spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_is_exported_when_spes_toml_opts_in() {
    let (receiver, _server, _project) = run_to_receiver(Some("true"), true).await;
    let spans = receiver.spans();
    let chat = chats(&spans);
    assert_eq!(chat.len(), 2, "{spans:#?}");
    for c in &chat {
        assert_eq!(c.service, "spes-test");
        let input: Value = serde_json::from_str(c.attr("gen_ai.input.messages").unwrap()).unwrap();
        assert_eq!(input[0]["role"], "user");
        assert!(
            input[0]["parts"][0]["content"]
                .as_str()
                .unwrap()
                .starts_with(PROMPT_MARK),
            "{input}"
        );
        let output: Value =
            serde_json::from_str(c.attr("gen_ai.output.messages").unwrap()).unwrap();
        assert_eq!(output[0]["role"], "assistant");
        assert_eq!(output[0]["parts"][0]["content"], ANSWER_MARK);
        assert_eq!(output[0]["finish_reason"], "stop");
    }
}

/// `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true` opts in too;
/// with spes.toml's `capture_content = true`, the variable set to `false`
/// turns it off (the variable wins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_variable_opts_in_and_overrides_spes_toml() {
    let (receiver, _s, _p) = run_to_receiver(Some("true"), false).await;
    let spans = receiver.spans();
    let chat = chats(&spans);
    assert_eq!(chat.len(), 2);
    assert!(chat.iter().all(|c| {
        c.attr("gen_ai.input.messages")
            .is_some_and(|v| v.contains(PROMPT_MARK))
    }));

    let receiver = Receiver::start().await;
    let server = FakeServer::start().await.unwrap();
    server.set_default(FakeResponse::text(ANSWER_MARK).with_usage(13, 5));
    let project = Project::new(
        &content_workflow(&format!("{}/hook", receiver.url())),
        &server.openai_base_url(),
    );
    let toml = std::fs::read_to_string(project.root.join("spes.toml")).unwrap();
    project.write(
        "spes.toml",
        &format!("{toml}\n[telemetry]\ncapture_content = true\n"),
    );
    let mut cmd = spes_command(&project.root, &["run", "wf.yaml"]);
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url()).env(
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
        "false",
    );
    let exit = wait(cmd.spawn().unwrap()).await;
    assert_eq!(exit.code(), Some(0), "{}", exit.stderr);
    let spans = receiver.spans();
    assert_eq!(chats(&spans).len(), 2);
    assert!(
        spans
            .iter()
            .all(|s| s.attrs.values().all(|v| !v.contains(PROMPT_MARK))),
        "{spans:#?}"
    );
}

/// No endpoint: nothing is exported and no `traceparent` is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_traced() {
    let receiver = Receiver::start().await;
    let server = FakeServer::start().await.unwrap();
    let project = Project::new(
        &content_workflow(&format!("{}/hook", receiver.url())),
        &server.openai_base_url(),
    );
    let mut cmd = spes_command(&project.root, &["run", "wf.yaml"]);
    cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    let exit = wait(cmd.spawn().unwrap()).await;
    assert_eq!(exit.code(), Some(0), "{}", exit.stderr);
    assert!(receiver.spans().is_empty());
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.header("traceparent").is_none())
    );
    let hook = receiver.hook_headers();
    assert_eq!(hook.len(), 1);
    assert!(hook[0].get("traceparent").is_none());
}

// ---------------------------------------------------------------------------
// Runs executed where they were not recorded: `spes serve`, `spes runs
// fork`, `spes run --detach` and `spes worker`.

/// The spans of `run` named `run WORKFLOW`.
fn run_spans<'a>(spans: &'a [Span], run: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.name.starts_with("run ") && s.attr("spes.run.id") == Some(run))
        .collect()
}

/// Every span of `trace` hangs under its one root, `root`: nothing else
/// in it has no parent, and every parent is a span of the trace.
fn one_tree(spans: &[Span], root: &Span) {
    let trace: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .collect();
    let ids: BTreeSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
    for s in &trace {
        if s.span_id == root.span_id {
            assert!(s.parent.is_empty(), "the run span has a parent: {s:?}");
        } else {
            assert!(
                ids.contains(s.parent.as_str()),
                "{} has a parent outside the trace: {spans:#?}",
                s.name
            );
        }
    }
}

/// `spes serve` executes a run started through the API and a fork of it
/// in its own process: each exports exactly one `run` span, the root of
/// its trace (no empty span recorded when the run was), with the steps
/// and calls under it; `spes runs fork` from the command line the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_fork_export_one_run_root_per_execution() {
    let receiver = Receiver::start().await;
    let server = FakeServer::start().await.unwrap();
    server.set_default(FakeResponse::text("fine").with_usage(3, 2));
    let wf = "name: served\nsteps:\n  - { name: ask, kind: llm, prompt: first, max_tokens: 8, output: a }\n  - { name: again, kind: llm, prompt: \"second {{ a }}\", max_tokens: 8, output: b }\noutput: b\n";
    let project = Project::new(wf, &server.openai_base_url());
    project.write("workflows/served.yaml", wf);
    let log = project.root.join("serve.log");
    let mut cmd = spes_command(&project.root, &["serve", "--bind", "127.0.0.1:0"]);
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let started = Instant::now();
    let base = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(rest) = text.split("listening on http://").nth(1) {
            break format!("http://{}", rest.split_whitespace().next().unwrap());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "spes serve did not start:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let http = reqwest::Client::new();
    let until_completed = async |run: &str| {
        let started = Instant::now();
        loop {
            let doc: Value = http
                .get(format!("{base}/v1/runs/{run}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if doc["run"]["status"] == "completed" {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{doc}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    let post = |path: String, body: Value| {
        let req = http.post(format!("{base}{path}")).json(&body);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let created = post(
        "/v1/runs".into(),
        serde_json::json!({ "workflow": "served", "inputs": {} }),
    )
    .await;
    let run = created["run"]["id"].as_str().expect("run id").to_owned();
    until_completed(&run).await;
    let forked = post(
        format!("/v1/runs/{run}/fork"),
        serde_json::json!({ "at": "again" }),
    )
    .await;
    let fork = forked["run"]["id"].as_str().expect("fork id").to_owned();
    until_completed(&fork).await;
    stop_cleanly(pid, child, &log).await;
    // `spes runs fork` executes the fork in its own process.
    let mut cmd = spes_command(&project.root, &["runs", "fork", &run, "--at", "again"]);
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url())
        .env_remove("RUST_LOG");
    let exit = wait(cmd.spawn().unwrap()).await;
    assert_eq!(exit.code(), Some(0), "{}", exit.stderr);
    let store = project.store().await;
    let cli_fork = store
        .list_runs(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id.to_string())
        .find(|id| *id != run && *id != fork)
        .expect("the fork made by `spes runs fork`");
    let spans = receiver.spans();
    for (id, calls) in [(&run, 2), (&fork, 1), (&cli_fork, 1)] {
        let roots = run_spans(&spans, id);
        assert_eq!(roots.len(), 1, "run spans of {id}: {spans:#?}");
        let root = roots[0];
        assert_eq!(root.name, "run served");
        assert!(root.parent.is_empty(), "{root:?}");
        let trace: Vec<&Span> = spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id)
            .collect();
        assert_eq!(
            trace.iter().filter(|s| s.name.starts_with("run ")).count(),
            1,
            "{trace:#?}"
        );
        let sent = trace
            .iter()
            .filter(|s| {
                s.attr("gen_ai.operation.name") == Some("chat")
                    && s.attr("spes.journal.replayed") == Some("false")
            })
            .count();
        assert_eq!(sent, calls, "model calls made by {id}: {trace:#?}");
        one_tree(&spans, root);
        // The run's stored context is this span.
        let stored = store.run(&id.parse().unwrap()).await.unwrap().unwrap();
        let (t, s) = parse_traceparent(stored.settings.trace_parent.as_deref().unwrap());
        assert_eq!((t, s), (root.trace_id.clone(), root.span_id.clone()));
    }
}

/// `spes run --detach` on a shared store queues the run and exports
/// nothing; the worker that executes it begins its trace (one root `run`
/// span, whose context the run records), and the map items and the
/// sub-workflow it hands to the queue (`item KEY` spans, executed by a
/// worker) are children of that span, each with its steps under it: one
/// trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_executed_map_is_one_trace_with_its_items_under_the_run() {
    let schema = spes_store::testing::postgres::TestSchema::new().await;
    let store = schema.store().await;
    let receiver = Receiver::start().await;
    let server = FakeServer::start().await.unwrap();
    server.set_default(FakeResponse::echo());
    let project = Project::new(
        "name: spread\ninputs:\n  topics: { type: list, default: [a, b, c] }\nsteps:\n  - name: gather\n    kind: map\n    over: topics\n    step: { name: answer, kind: llm, prompt: \"about {{ item }}\", max_tokens: 8 }\n    output: answers\n  - { name: child, kind: workflow, path: child.yaml, inputs: { topic: \"{{ answers | join(' ') }}\" }, output: child }\n  - { name: sum, kind: llm, prompt: \"sum {{ child }}\", max_tokens: 8, output: total }\noutput: total\n",
        &server.openai_base_url(),
    );
    // A sub-workflow, which a worker executes as a task of its own.
    project.write(
        "child.yaml",
        "name: child\ninputs: { topic: { type: string, required: true } }\nsteps:\n  - { name: one, kind: llm, prompt: \"on {{ topic }}\", max_tokens: 8, output: one }\noutput: one\n",
    );
    let traced = |args: &[&str]| {
        let mut cmd = spes_command(&project.root, args);
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url())
            .env_remove("RUST_LOG");
        cmd
    };
    let out = traced(&[
        "run",
        "wf.yaml",
        "--detach",
        "--quiet",
        "--store",
        schema.url(),
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let run: spes_store::RunId = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let queued = store.run(&run).await.unwrap().unwrap();
    assert_eq!(queued.settings.trace_parent, None, "{:?}", queued.settings);
    let log = project.root.join("worker.log");
    let worker = traced(&["worker", "--store", schema.url(), "--poll-ms", "50"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = worker.id();
    let started = Instant::now();
    loop {
        let r = store.run(&run).await.unwrap().unwrap();
        if r.status == spes_store::RunStatus::Completed {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60) && !r.status.is_final(),
            "run {run} is {} ({:?}):\n{}",
            r.status,
            r.error,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_cleanly(pid, worker, &log).await;
    let spans = receiver.spans();
    let id = run.to_string();
    let roots = run_spans(&spans, &id);
    assert_eq!(roots.len(), 1, "{spans:#?}");
    let root = roots[0];
    assert!(root.parent.is_empty(), "{root:?}");
    assert_eq!(root.attr("spes.run.continued"), Some("false"));
    let items: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("item "))
        .collect();
    // The three map items and the sub-workflow.
    assert_eq!(items.len(), 4, "{spans:#?}");
    for it in &items {
        assert_eq!(it.trace_id, root.trace_id, "{it:?}");
        assert_eq!(it.parent, root.span_id, "{it:?}");
        assert_eq!(it.attr("spes.run.id"), Some(id.as_str()));
        // Each item's model call is under it.
        assert!(
            spans
                .iter()
                .any(|c| c.attr("gen_ai.operation.name") == Some("chat")
                    && c.trace_id == root.trace_id
                    && spans
                        .iter()
                        .any(|st| st.span_id == c.parent && st.parent == it.span_id)),
            "no model call under {}: {spans:#?}",
            it.name
        );
    }
    let keys: BTreeSet<&str> = items
        .iter()
        .filter_map(|s| s.attr("spes.step.key"))
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["gather/map[0]", "gather/map[1]", "gather/map[2]", "child"])
    );
    one_tree(&spans, root);
    let done = store.run(&run).await.unwrap().unwrap();
    let (t, s) = parse_traceparent(done.settings.trace_parent.as_deref().unwrap());
    assert_eq!((t, s), (root.trace_id.clone(), root.span_id.clone()));
    assert!(!done.settings.trace_queued);
}

// ---------------------------------------------------------------------------
// Arize Phoenix.

const INSTALL: &str = "run `eval \"$(bash scripts/phoenix.sh)\"` first (scripts/test.sh does)";

/// A Phoenix server on loopback, its own telemetry off; killed on drop.
struct Phoenix {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for Phoenix {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET over HTTP/1.0 (the body ends with the connection): (status, body).
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.take(64 << 20).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

impl Phoenix {
    fn start() -> Self {
        let bin = std::env::var("SPES_TEST_PHOENIX")
            .unwrap_or_else(|_| panic!("SPES_TEST_PHOENIX is not set: {INSTALL}"));
        assert!(
            std::path::Path::new(&bin).is_file(),
            "SPES_TEST_PHOENIX={bin} is not a file: {INSTALL}"
        );
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("phoenix.log");
        let port = free_port();
        let grpc = free_port();
        let child = Command::new(&bin)
            .arg("serve")
            .env("PHOENIX_HOST", "127.0.0.1")
            .env("PHOENIX_PORT", port.to_string())
            .env("PHOENIX_GRPC_PORT", grpc.to_string())
            .env("PHOENIX_WORKING_DIR", dir.path())
            .env("PHOENIX_TELEMETRY_ENABLED", "false")
            .env("PHOENIX_ALLOW_EXTERNAL_RESOURCES", "false")
            .env("PHOENIX_DISABLE_AGENT_ASSISTANT", "true")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("phoenix.err")).unwrap())
            .spawn()
            .expect("start phoenix");
        let mut p = Self {
            child,
            port,
            _dir: dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok((200, _)) = http_get(port, "/healthz") {
                return p;
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("phoenix exited ({st}) before it answered: {}", p.logs());
            }
            assert!(
                Instant::now() < deadline,
                "phoenix did not answer /healthz within 120 s: {}",
                p.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn logs(&self) -> String {
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        let err = std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
        let tail = |s: &str| {
            s.chars()
                .rev()
                .take(4000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<String>()
        };
        format!("--- stdout\n{}\n--- stderr\n{}", tail(&out), tail(&err))
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A span as Phoenix gives it back: attributes looked up by their dotted
/// name, whether Phoenix nests them or not.
fn pattr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    let attrs = &span["attributes"];
    if let Some(v) = attrs.get(key) {
        return Some(v);
    }
    let mut cur = attrs;
    for part in key.split('.') {
        cur = cur.get(part)?;
    }
    Some(cur)
}

fn pstr(span: &Value, key: &str) -> Option<String> {
    pattr(span, key).map(|v| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

fn pid(span: &Value) -> String {
    span["context"]["span_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn ptrace(span: &Value) -> String {
    span["context"]["trace_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn pparent(span: &Value) -> Option<String> {
    span["parent_id"].as_str().map(str::to_owned)
}

/// `spes` in `project` exporting to `phoenix` under the Phoenix project `name`.
fn traced(project: &Project, phoenix: &Phoenix, name: &str, args: &[&str]) -> Command {
    let mut cmd = spes_command(&project.root, args);
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix.url())
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            format!("openinference.project.name={name}"),
        )
        .env_remove("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT");
    cmd
}

const MAP_REDUCE: &str = r#"name: mapreduce
inputs:
  docs: { type: list, default: ["alpha", "beta", "gamma"] }
steps:
  - name: summaries
    kind: map
    over: docs
    as: doc
    concurrency: 1
    step:
      name: summarize
      kind: llm
      prompt: "Summarise {{ doc }}"
      max_tokens: 32
      retry: { attempts: 3, base: 10ms, jitter: false }
    output: summaries
  - name: overview
    kind: reduce
    over: summaries
    step:
      name: combine
      kind: llm
      prompt: "Combine {{ items | length }} summaries"
      max_tokens: 32
    output: overview
output: overview
"#;

const GATED: &str = r#"name: gated
steps:
  - { name: draft, kind: llm, prompt: "Draft it", max_tokens: 32, output: draft }
  - { name: review, kind: approval, show: draft }
  - { name: final, kind: llm, prompt: "Finish {{ draft | length }}", max_tokens: 32, output: final }
output: final
"#;

/// One Phoenix for the whole test (start-up takes 13-17 s): the span tree
/// of a map-reduce run with a retry, with GenAI attributes and token
/// counts; then a run suspended at a gate and resumed by another process
/// continues the same trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phoenix_receives_the_span_tree_and_a_resumed_run_continues_its_trace() {
    let phoenix = tokio::task::spawn_blocking(Phoenix::start).await.unwrap();
    let server = FakeServer::start().await.unwrap();

    // 1. Map-reduce; the first model call fails (500) and is retried.
    server.set_default(FakeResponse::text("a summary").with_usage(11, 7));
    server.push(FakeResponse::server_error());
    let project = Project::new(MAP_REDUCE, &server.openai_base_url());
    let exit = wait(
        traced(&project, &phoenix, "spes-mapreduce", &["run", "wf.yaml"])
            .spawn()
            .unwrap(),
    )
    .await;
    assert_eq!(exit.code(), Some(0), "{}", exit.stderr);
    assert_eq!(server.request_count(), 5, "3 items, 1 retry, 1 reduce");
    let store = project.store().await;
    let run = store.list_runs(None, 1).await.unwrap().remove(0);
    store.close().await;
    // run, 2 top steps, 3 item steps, 1 reduce item step, 5 model calls.
    let p = phoenix.clone_ref();
    let spans = tokio::task::spawn_blocking(move || p.spans("spes-mapreduce", 12))
        .await
        .unwrap();
    let by_id: BTreeMap<String, &Value> = spans.iter().map(|s| (pid(s), s)).collect();
    let traces: BTreeSet<String> = spans.iter().map(ptrace).collect();
    assert_eq!(traces.len(), 1, "one trace: {spans:#?}");
    let roots: Vec<&Value> = spans.iter().filter(|s| pparent(s).is_none()).collect();
    assert_eq!(roots.len(), 1, "{spans:#?}");
    let root = roots[0];
    assert_eq!(root["name"], "run mapreduce");
    assert_eq!(pstr(root, "spes.run.id"), Some(run.id.to_string()));
    let step = |key: &str| -> &Value {
        spans
            .iter()
            .find(|s| s["name"] == "step ".to_owned() + key)
            .unwrap_or_else(|| panic!("no step span {key}: {spans:#?}"))
    };
    let parent_of = |s: &Value| -> &Value {
        let p = pparent(s).unwrap_or_else(|| panic!("no parent: {s:#}"));
        by_id
            .get(&p)
            .unwrap_or_else(|| panic!("parent {p} not exported"))
    };
    assert_eq!(pid(parent_of(step("summaries"))), pid(root));
    assert_eq!(pid(parent_of(step("overview"))), pid(root));
    for i in 0..3 {
        let item = step(&format!("summaries/map[{i}]/summarize"));
        assert_eq!(pid(parent_of(item)), pid(step("summaries")));
        assert_eq!(pstr(item, "spes.step.kind").as_deref(), Some("llm"));
    }
    let chats: Vec<&Value> = spans
        .iter()
        .filter(|s| pstr(s, "gen_ai.operation.name").as_deref() == Some("chat"))
        .collect();
    assert_eq!(chats.len(), 5, "{spans:#?}");
    let failed: Vec<&&Value> = chats
        .iter()
        .filter(|c| pstr(c, "error.type").is_some())
        .collect();
    assert_eq!(failed.len(), 1, "{chats:#?}");
    assert_eq!(
        pstr(failed[0], "error.type").as_deref(),
        Some("server_error")
    );
    assert_eq!(failed[0]["status_code"], "ERROR");
    assert_eq!(
        pstr(failed[0], "spes.step.key").as_deref(),
        Some("summaries/map[0]/summarize")
    );
    let retried: Vec<&&Value> = chats
        .iter()
        .filter(|c| pstr(c, "spes.attempt").as_deref() == Some("attempt2"))
        .collect();
    assert_eq!(retried.len(), 1, "{chats:#?}");
    assert_eq!(
        pstr(retried[0], "spes.step.key").as_deref(),
        Some("summaries/map[0]/summarize#attempt2")
    );
    // Both tries of item 0 under its step span.
    assert_eq!(
        pid(parent_of(retried[0])),
        pid(step("summaries/map[0]/summarize"))
    );
    assert_eq!(
        pid(parent_of(failed[0])),
        pid(step("summaries/map[0]/summarize"))
    );
    for c in chats.iter().filter(|c| pstr(c, "error.type").is_none()) {
        assert_eq!(c["name"], "chat m");
        assert_eq!(pstr(c, "gen_ai.provider.name").as_deref(), Some("openai"));
        assert_eq!(pstr(c, "gen_ai.request.model").as_deref(), Some("m"));
        assert_eq!(pstr(c, "gen_ai.response.model").as_deref(), Some("m"));
        assert_eq!(pstr(c, "gen_ai.usage.input_tokens").as_deref(), Some("11"));
        assert_eq!(pstr(c, "gen_ai.usage.output_tokens").as_deref(), Some("7"));
        assert!(
            pstr(c, "gen_ai.response.finish_reasons").is_some_and(|f| f.contains("stop")),
            "{c:#}"
        );
        assert_eq!(pstr(c, "spes.journal.replayed").as_deref(), Some("false"));
        let key = pstr(c, "spes.step.key").unwrap();
        let step_key = key.split('#').next().unwrap();
        assert_eq!(
            pstr(parent_of(c), "spes.step.key").as_deref(),
            Some(step_key),
            "a model call is under its step"
        );
    }

    // 2. A run waits at a gate (exit 3); approved, then resumed by another
    // process: the resumed execution is in the same trace, under the
    // first execution's run span.
    server.reset();
    server.set_default(FakeResponse::text("draft text").with_usage(3, 2));
    let project = Project::new(GATED, &server.openai_base_url());
    let name = "spes-resume";
    let first = wait(
        traced(&project, &phoenix, name, &["run", "wf.yaml"])
            .spawn()
            .unwrap(),
    )
    .await;
    assert_eq!(first.code(), Some(3), "{}", first.stderr);
    let store = project.store().await;
    let run = store.list_runs(None, 1).await.unwrap().remove(0);
    store.close().await;
    let id = run.id.to_string();
    let approved = wait(
        spes_command(&project.root, &["approve", &id])
            .spawn()
            .unwrap(),
    )
    .await;
    assert_eq!(approved.code(), Some(0), "{}", approved.stderr);
    let resumed = wait(
        traced(&project, &phoenix, name, &["resume", &id])
            .spawn()
            .unwrap(),
    )
    .await;
    assert_eq!(resumed.code(), Some(0), "{}", resumed.stderr);
    // 2 run spans, steps draft/review (first) + draft/review/final
    // (second), 2 model calls (draft's replayed one included: 3).
    let p = phoenix.clone_ref();
    let spans = tokio::task::spawn_blocking(move || p.spans(name, 10))
        .await
        .unwrap();
    let traces: BTreeSet<String> = spans.iter().map(ptrace).collect();
    assert_eq!(
        traces.len(),
        1,
        "the resume continued the trace: {spans:#?}"
    );
    let runs: Vec<&Value> = spans.iter().filter(|s| s["name"] == "run gated").collect();
    assert_eq!(runs.len(), 2, "{spans:#?}");
    let (started, continued): (Vec<&Value>, Vec<&Value>) =
        runs.iter().partition(|s| pparent(s).is_none());
    assert_eq!((started.len(), continued.len()), (1, 1), "{runs:#?}");
    assert_eq!(pparent(continued[0]), Some(pid(started[0])));
    assert_eq!(
        pstr(continued[0], "spes.run.continued").as_deref(),
        Some("true")
    );
    assert_eq!(pstr(continued[0], "spes.run.id"), Some(id.clone()));
    let finals: Vec<&Value> = spans
        .iter()
        .filter(|s| {
            pstr(s, "spes.step.key").as_deref() == Some("final")
                && pstr(s, "gen_ai.operation.name").as_deref() == Some("chat")
        })
        .collect();
    assert_eq!(finals.len(), 1, "{spans:#?}");
    let replayed: Vec<&Value> = spans
        .iter()
        .filter(|s| pstr(s, "spes.journal.replayed").as_deref() == Some("true"))
        .collect();
    assert_eq!(
        replayed.len(),
        1,
        "draft's call answered from the journal: {spans:#?}"
    );
    assert_eq!(pstr(replayed[0], "spes.step.key").as_deref(), Some("draft"));
}

impl Phoenix {
    /// A handle for blocking calls off the runtime (the port is all they need).
    fn clone_ref(&self) -> PhoenixRef {
        PhoenixRef { port: self.port }
    }
}

/// What blocking readers need of a [`Phoenix`].
struct PhoenixRef {
    port: u16,
}

impl PhoenixRef {
    fn spans(&self, project: &str, want: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = http_get(
                self.port,
                &format!("/v1/projects/{project}/spans?limit=1000"),
            )
            .unwrap_or((0, String::new()));
            if status == 200 {
                let v: Value =
                    serde_json::from_str(&body).unwrap_or_else(|e| panic!("spans: {e}: {body}"));
                let data = v["data"].as_array().cloned().unwrap_or_default();
                if data.len() >= want {
                    return data;
                }
            }
            assert!(
                Instant::now() < deadline,
                "project {project}: fewer than {want} spans after 60 s (last answer {status}: {body})"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Stops a long-running `spes` (serve, worker) with SIGTERM: it must exit 0
/// (its log shown when it does not).
async fn stop_cleanly(pid: u32, child: Child, log: &std::path::Path) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let exit = wait(child).await;
    assert_eq!(
        exit.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}
