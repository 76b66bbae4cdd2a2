//! Patterns against the in-project fake LLM server over real HTTP.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use spes_engine::Engine;
use spes_fake_llm::{FakeResponse, FakeServer};
use spes_llm::Provider;
use spes_llm::http::HttpProviderConfig;
use spes_llm::openai::OpenAiProvider;

use crate::workflow;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_keeps_input_order_and_the_server_never_sees_more_than_the_limit() {
    let server = FakeServer::start().await.unwrap();
    server.set_default(FakeResponse::echo());
    // Later items answer sooner: completion order differs from input order.
    for i in 0..24 {
        server.when_user_contains(
            format!("item {i:02}:"),
            FakeResponse::echo().with_latency(Duration::from_millis(60 - 2 * i)),
        );
    }
    let cfg = HttpProviderConfig::new("fake")
        .with_base_url(server.openai_base_url())
        .with_model("m")
        .with_stream(false);
    let provider: Arc<dyn Provider> = Arc::new(OpenAiProvider::new(cfg).unwrap());
    let engine = Engine::builder().provider(provider).build();
    let items: Vec<String> = (0..24).map(|i| format!("doc{i}")).collect();
    let yaml = r#"
name: bounded
inputs: { docs: { type: list, required: true } }
steps:
  - name: each
    kind: map
    over: docs
    as: doc
    concurrency: 4
    step: { name: summarize, kind: llm, prompt: "item {{ '%02d' | format(index) }}: {{ doc }}" }
    output: out
output: out
"#;
    let wf = workflow(yaml);
    let inputs = [("docs".to_owned(), json!(items))].into_iter().collect();
    let out = engine.run(&wf, inputs).await.unwrap();
    let got: Vec<String> = out
        .output
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = (0..24)
        .map(|i| format!("echo: item {i:02}: doc{i}"))
        .collect();
    assert_eq!(got, want, "results in input order");
    assert_eq!(server.request_count(), 24);
    assert_eq!(
        server.max_in_flight(),
        4,
        "the server saw at most (and reached) the concurrency limit"
    );
}

/// An agent on the fake LLM server, in both wire formats, streamed and
/// not: the model's tool call reaches the Rust tool, and the next request
/// carries the call and its result in the dialect's own shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_calls_a_tool_over_both_wire_formats() {
    use spes_engine::tool::FnTool;
    use spes_fake_llm::FakeResponse;
    use spes_llm::anthropic::AnthropicProvider;
    let yaml = r#"
name: clock
steps:
  - name: ask
    kind: agent
    prompt: "What time is it in Paris?"
    tools: [clock]
    output: answer
"#;
    for anthropic in [false, true] {
        for stream in [false, true] {
            let server = FakeServer::start().await.unwrap();
            server.push(FakeResponse::tool_call(
                "clock",
                &json!({ "zone": "Europe/Paris" }),
            ));
            server.push(FakeResponse::text("It is 12:00 in Paris."));
            let provider: Arc<dyn Provider> = if anthropic {
                let cfg = HttpProviderConfig::new("fake")
                    .with_base_url(server.url())
                    .with_model("m")
                    .with_stream(stream);
                Arc::new(AnthropicProvider::new(cfg).unwrap())
            } else {
                let cfg = HttpProviderConfig::new("fake")
                    .with_base_url(server.openai_base_url())
                    .with_model("m")
                    .with_stream(stream);
                Arc::new(OpenAiProvider::new(cfg).unwrap())
            };
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            let log = seen.clone();
            let clock = FnTool::new(
                "clock",
                "The time in a zone",
                json!({ "type": "object", "properties": { "zone": { "type": "string" } } }),
                move |args| {
                    log.lock().unwrap().push(args);
                    Box::pin(async { Ok("12:00".to_owned()) })
                },
            );
            let engine = Engine::builder()
                .provider(provider)
                .tool(Arc::new(clock))
                .build();
            let out = engine
                .run(&workflow(yaml), std::collections::BTreeMap::new())
                .await
                .unwrap();
            let what = format!("anthropic={anthropic} stream={stream}");
            assert_eq!(out.output, Some(json!("It is 12:00 in Paris.")), "{what}");
            assert_eq!(
                *seen.lock().unwrap(),
                [json!({ "zone": "Europe/Paris" })],
                "{what}"
            );
            let reqs = server.requests();
            assert_eq!(reqs.len(), 2, "{what}");
            let first = &reqs[0].body;
            let second = &reqs[1].body;
            let msgs = second["messages"].as_array().unwrap();
            if anthropic {
                assert_eq!(first["tools"][0]["name"], "clock", "{what}");
                let result = &msgs.last().unwrap()["content"][0];
                assert_eq!(result["type"], "tool_result", "{what}");
                assert_eq!(result["content"], "12:00", "{what}");
                assert_eq!(
                    msgs[msgs.len() - 2]["content"][0]["type"],
                    "tool_use",
                    "{what}"
                );
            } else {
                assert_eq!(first["tools"][0]["function"]["name"], "clock", "{what}");
                let result = msgs.last().unwrap();
                assert_eq!(result["role"], "tool", "{what}");
                assert_eq!(result["content"], "12:00", "{what}");
                assert_eq!(
                    result["tool_call_id"],
                    msgs[msgs.len() - 2]["tool_calls"][0]["id"],
                    "{what}"
                );
            }
        }
    }
}
