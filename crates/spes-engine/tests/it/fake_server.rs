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
