//! MCP tool sources against real MCP servers this project did not write:
//! `mcp-server-time` (PyPI) and `@modelcontextprotocol/server-everything`
//! (npm), installed by `scripts/mcp-servers.sh` (run by `scripts/test.sh`),
//! which prints the variables these tests read.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spes_engine::mcp::{McpServerConfig, McpSource};
use spes_engine::tool::ToolSource;
use spes_engine::{Engine, RunError};
use spes_fake_llm::{FakeResponse, FakeServer};
use spes_llm::Provider;
use spes_llm::http::HttpProviderConfig;
use spes_llm::openai::OpenAiProvider;

use crate::workflow;

const INSTALL: &str = "run `eval \"$(bash scripts/mcp-servers.sh)\"` first (scripts/test.sh does)";

/// The `mcp-server-time` executable.
fn time_server() -> String {
    installed("SPES_TEST_MCP_TIME")
}

/// server-everything's entry script, run with `node ENTRY stdio|streamableHttp`.
fn everything_entry() -> String {
    installed("SPES_TEST_MCP_EVERYTHING")
}

fn installed(var: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: {INSTALL}"));
    assert!(
        std::path::Path::new(&path).is_file(),
        "{var}={path} is not a file: {INSTALL}"
    );
    path
}

fn time_config() -> McpServerConfig {
    McpServerConfig::stdio(
        "time",
        time_server(),
        Vec::<String>::new(),
        Vec::<String>::new(),
    )
}

fn everything_stdio(env: &[&str]) -> McpServerConfig {
    McpServerConfig::stdio(
        "everything",
        "node",
        [everything_entry(), "stdio".to_owned()],
        env.iter().copied(),
    )
}

/// server-everything in streamable-HTTP mode on a free loopback port,
/// once it listens; killed when the returned child is dropped.
async fn everything_http() -> (tokio::process::Child, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new("node")
        .args([everything_entry(), "streamableHttp".to_owned()])
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "server-everything did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, format!("http://127.0.0.1:{port}/mcp"))
}

/// Runs an agent on the fake LLM server (OpenAI dialect) whose model calls
/// `called` with `args` once, then answers "done". Returns the tool result
/// the second request carries.
async fn agent_call(source: Arc<McpSource>, tool_ref: &str, called: &str, args: &Value) -> String {
    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::tool_call(called, args));
    server.push(FakeResponse::text("done"));
    let cfg = HttpProviderConfig::new("fake")
        .with_base_url(server.openai_base_url())
        .with_model("m")
        .with_stream(false);
    let provider: Arc<dyn Provider> = Arc::new(OpenAiProvider::new(cfg).unwrap());
    let engine = Engine::builder()
        .provider(provider)
        .tool_source(source)
        .build();
    let yaml = format!(
        "name: a\nsteps:\n  - {{ name: ask, kind: agent, prompt: go, tools: [{tool_ref}], output: answer }}\n"
    );
    let out = engine.run(&workflow(&yaml), BTreeMap::new()).await.unwrap();
    assert_eq!(out.output, Some(json!("done")));
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[0].body["tools"][0]["function"]["name"], called,
        "the model is offered the tool by its own name"
    );
    let msgs = reqs[1].body["messages"].as_array().unwrap();
    let result = msgs.last().unwrap();
    assert_eq!(result["role"], "tool");
    result["content"].as_str().unwrap().to_owned()
}

/// Processes whose parent is this one and whose command line contains `needle`.
fn children_with(needle: &str) -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let dir = e.path();
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split(' ').nth(1));
            let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            ppid == Some(me.as_str()) && String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .count()
}

#[tokio::test]
async fn the_time_server_lists_its_tools_over_stdio() {
    let source = McpSource::new([time_config()]).unwrap();
    let tools = source.list().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|(_, t)| t.name.as_str()).collect();
    assert!(names.contains(&"get_current_time"), "{names:?}");
    assert!(names.contains(&"convert_time"), "{names:?}");
    assert!(tools.iter().all(|(server, _)| server == "time"));
    let (_, spec) = tools
        .iter()
        .find(|(_, t)| t.name == "get_current_time")
        .unwrap();
    assert_eq!(spec.parameters["type"], "object");
    assert!(spec.parameters["properties"]["timezone"].is_object());
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_calls_the_time_servers_tool_and_gets_its_result() {
    let source = Arc::new(McpSource::new([time_config()]).unwrap());
    let result = agent_call(
        source.clone(),
        "time.get_current_time",
        "get_current_time",
        &json!({ "timezone": "Europe/Paris" }),
    )
    .await;
    let parsed: Value = serde_json::from_str(&result).unwrap_or_else(|e| panic!("{e}: {result}"));
    assert_eq!(parsed["timezone"], "Europe/Paris", "{result}");
    assert!(parsed["datetime"].as_str().is_some(), "{result}");
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_calls_everythings_echo_over_stdio() {
    let source = Arc::new(McpSource::new([everything_stdio(&[])]).unwrap());
    let result = agent_call(
        source.clone(),
        "everything.echo",
        "echo",
        &json!({ "message": "hello from spes" }),
    )
    .await;
    assert_eq!(result, "Echo: hello from spes");
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_calls_everythings_echo_over_streamable_http() {
    let (_server, url) = everything_http().await;
    let source = Arc::new(McpSource::new([McpServerConfig::http("everything", url)]).unwrap());
    let names: Vec<String> = source
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|(_, t)| t.name)
        .collect();
    assert!(names.iter().any(|n| n == "echo"), "{names:?}");
    let result = agent_call(
        source.clone(),
        "everything.echo",
        "echo",
        &json!({ "message": "over http" }),
    )
    .await;
    assert_eq!(result, "Echo: over http");
    source.shutdown().await;
}

/// Sets two variables no other test reads or sets (tests in this binary
/// may run on several threads).
#[allow(unsafe_code)]
fn set_env_vars() {
    // SAFETY: no other thread reads or writes these variables.
    unsafe {
        std::env::set_var("SPES_TEST_MCP_SECRET", "s3cr3t-not-for-the-server");
        std::env::set_var("SPES_TEST_MCP_PASSED", "declared-value");
    }
}

#[tokio::test]
async fn a_stdio_server_gets_only_the_declared_variables() {
    set_env_vars();
    let source = McpSource::new([everything_stdio(&[
        "SPES_TEST_MCP_PASSED",
        "SPES_TEST_MCP_UNSET_HERE",
    ])])
    .unwrap();
    let tool = source.tool("everything.get-env").await.unwrap().unwrap();
    let text = tool.call(json!({})).await.unwrap();
    assert!(!text.contains("s3cr3t"), "{text}");
    let env: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(env["SPES_TEST_MCP_PASSED"], "declared-value", "{text}");
    assert!(env.get("SPES_TEST_MCP_SECRET").is_none(), "{text}");
    assert!(env.get("SPES_TEST_MCP_UNSET_HERE").is_none(), "{text}");
    assert!(
        env.get("PATH").is_none(),
        "PATH passes only when declared: {text}"
    );
    source.shutdown().await;
}

#[tokio::test]
async fn an_unknown_tool_names_the_servers_tools() {
    let source = McpSource::new([time_config()]).unwrap();
    let err = source.tool("time.nope").await.unwrap_err();
    assert_eq!(
        err,
        "MCP server `time` has no tool `nope` (it has: get_current_time, convert_time)"
    );
    // Names the source does not own are someone else's.
    assert!(source.tool("other.nope").await.unwrap().is_none());
    assert!(source.tool("plain").await.unwrap().is_none());
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_naming_an_unknown_mcp_tool_fails_before_any_model_call() {
    let server = FakeServer::start().await.unwrap();
    let cfg = HttpProviderConfig::new("fake")
        .with_base_url(server.openai_base_url())
        .with_model("m")
        .with_stream(false);
    let provider: Arc<dyn Provider> = Arc::new(OpenAiProvider::new(cfg).unwrap());
    let source = Arc::new(McpSource::new([time_config()]).unwrap());
    let engine = Engine::builder()
        .provider(provider)
        .tool_source(source.clone())
        .build();
    let wf = workflow(
        "name: a\nsteps:\n  - { name: ask, kind: agent, prompt: go, tools: [time.get_weather] }\n",
    );
    let err = engine.run(&wf, BTreeMap::new()).await.unwrap_err();
    let RunError::Step(e) = err else {
        panic!("{err}")
    };
    assert!(
        e.to_string().contains(
            "MCP server `time` has no tool `get_weather` (it has: get_current_time, convert_time)"
        ),
        "{e}"
    );
    assert_eq!(server.request_count(), 0);
    source.shutdown().await;
}

#[tokio::test]
async fn a_command_that_does_not_exist_is_a_clear_error() {
    let source = McpSource::new([McpServerConfig::stdio(
        "ghost",
        "spes-no-such-mcp-server",
        ["--x"],
        Vec::<String>::new(),
    )])
    .unwrap();
    let err = source.tool("ghost.anything").await.unwrap_err();
    assert_eq!(
        err,
        "MCP server `ghost`: command `spes-no-such-mcp-server` not found (not a file, and not on PATH)"
    );
    let source = McpSource::new([McpServerConfig::stdio(
        "ghost",
        "/nonexistent/spes-mcp",
        Vec::<String>::new(),
        Vec::<String>::new(),
    )])
    .unwrap();
    let err = source.tool("ghost.anything").await.unwrap_err();
    assert!(
        err.starts_with("MCP server `ghost`: `/nonexistent/spes-mcp` could not be started: "),
        "{err}"
    );
}

/// A writer into a shared buffer, for a tracing subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_server_that_exits_at_start_is_an_error_quoting_its_stderr_which_goes_to_the_log() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // A current-thread runtime: the stderr task runs on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    let source = McpSource::new([McpServerConfig::stdio(
        "broken",
        "sh",
        ["-c", "echo 'boom: no config' >&2; echo second >&2; exit 3"],
        Vec::<String>::new(),
    )])
    .unwrap();
    let err = source.tool("broken.x").await.unwrap_err();
    assert!(
        err.starts_with("MCP server `broken` (`sh -c echo 'boom: no config' >&2; echo second >&2; exit 3`) did not start: "),
        "{err}"
    );
    assert!(
        err.ends_with("; its stderr began:\nboom: no config\nsecond"),
        "{err}"
    );
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("spes::mcp"), "{log}");
    assert!(log.contains("server=broken"), "{log}");
    assert!(log.contains("boom: no config"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_that_hangs_is_cut_by_the_steps_timeout() {
    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::tool_call(
        "trigger-long-running-operation",
        &json!({ "duration": 60, "steps": 2 }),
    ));
    server.push(FakeResponse::text("done"));
    let cfg = HttpProviderConfig::new("fake")
        .with_base_url(server.openai_base_url())
        .with_model("m")
        .with_stream(false);
    let provider: Arc<dyn Provider> = Arc::new(OpenAiProvider::new(cfg).unwrap());
    let source = Arc::new(McpSource::new([everything_stdio(&[])]).unwrap());
    // Started before the clock runs: the step's timeout then bounds the call.
    source.list().await.unwrap();
    let engine = Engine::builder()
        .provider(provider)
        .tool_source(source.clone())
        .build();
    let wf = workflow(
        "name: a\nsteps:\n  - { name: ask, kind: agent, prompt: go, tools: [everything.trigger-long-running-operation], timeout: 2s }\n",
    );
    let started = Instant::now();
    let err = engine.run(&wf, BTreeMap::new()).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.to_string().ends_with("failed: timed out after 2s"),
        "{err}"
    );
    assert_eq!(server.request_count(), 1, "no second model turn");
    // The server still serves other calls.
    let echo = source.tool("everything.echo").await.unwrap().unwrap();
    assert_eq!(
        echo.call(json!({ "message": "still here" })).await.unwrap(),
        "Echo: still here"
    );
    source.shutdown().await;
}

#[tokio::test]
async fn a_server_is_started_once_and_shutdown_stops_it() {
    let entry = everything_entry();
    let source = McpSource::new([everything_stdio(&[])]).unwrap();
    assert_eq!(children_with(&entry), 0, "nothing starts before first use");
    let a = source.tool("everything.echo").await.unwrap().unwrap();
    let b = source.tool("everything.get-sum").await.unwrap().unwrap();
    assert_eq!(children_with(&entry), 1, "one process for both tools");
    assert_eq!(a.call(json!({ "message": "x" })).await.unwrap(), "Echo: x");
    let sum = b.call(json!({ "a": 2, "b": 3 })).await.unwrap();
    assert!(sum.contains('5'), "{sum}");
    let bad = b.call(json!({ "a": "two" })).await.unwrap_err();
    assert!(!bad.is_empty());
    source.shutdown().await;
    assert_eq!(children_with(&entry), 0, "stopped and reaped");
    let err = source.tool("everything.echo").await.unwrap_err();
    assert_eq!(err, "MCP server `everything` was shut down");
}
