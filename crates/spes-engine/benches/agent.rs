//! Agent loop benchmark (`cargo bench -p spes-engine --bench agent`).
//!
//! An `agent` step that makes 10 tool-calling turns and then answers,
//! against the in-repo fake OpenAI-compatible server at 0 ms and a Rust
//! tool that answers at once, beside the same 11 requests (the same
//! growing conversation) sent straight through the provider: the
//! difference, per turn, is what the engine adds (journal, templates, tool
//! dispatch, events) beyond the HTTP round trips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use spes_core::component::ComponentRegistry;
use spes_core::message::{ChatRequest, Message};
use spes_core::tool::{ToolResult, ToolSpec};
use spes_core::workflow::{ValidateEnv, parse_workflow, validate};
use spes_engine::Engine;
use spes_engine::tool::FnTool;
use spes_fake_llm::{FakeResponse, FakeServer};
use spes_llm::http::HttpProviderConfig;
use spes_llm::openai::OpenAiProvider;
use spes_llm::{CallContext, Provider};

const TURNS: usize = 10;
const ROUNDS: usize = 21;

const YAML: &str = r#"
name: loop
steps:
  - name: ask
    kind: agent
    prompt: "What time is it? Ask the clock until it is noon."
    tools: [clock]
    max_turns: 11
    output: answer
"#;

fn script(server: &FakeServer) {
    for _ in 0..TURNS {
        server.push(FakeResponse::tool_call("clock", &json!({ "zone": "UTC" })));
    }
    server.push(FakeResponse::text("It is noon."));
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn spec() -> serde_json::Value {
    json!({ "type": "object", "properties": { "zone": { "type": "string" } } })
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = FakeServer::start().await.unwrap();
        let cfg = HttpProviderConfig::new("fake")
            .with_base_url(server.openai_base_url())
            .with_model("m")
            .with_stream(false);
        let provider: Arc<dyn Provider> = Arc::new(OpenAiProvider::new(cfg).unwrap());
        let clock = FnTool::new("clock", "The time", spec(), |_| {
            Box::pin(async { Ok("11:59".to_owned()) })
        });
        let engine = Engine::builder()
            .provider(provider.clone())
            .tool(Arc::new(clock))
            .build();
        let reg = ComponentRegistry::from_components(vec![]);
        let env = ValidateEnv {
            components: &reg,
            providers: None,
        };
        let wf = validate(parse_workflow("b.yaml", YAML).unwrap(), "b.yaml", YAML, &env)
            .unwrap()
            .0;
        let (mut agent, mut direct) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            // Alternate which goes first, so both see the same warm state.
            for first in [round % 2 == 0, round % 2 == 1] {
                script(&server);
                if first {
                    let t = Instant::now();
                    let out = engine.run(&wf, BTreeMap::new()).await.unwrap();
                    agent.push(t.elapsed());
                    assert_eq!(out.model_calls, TURNS as u64 + 1);
                } else {
                    let t = Instant::now();
                    let mut req = ChatRequest {
                        messages: vec![Message::user(
                            "What time is it? Ask the clock until it is noon.",
                        )],
                        tools: vec![ToolSpec::new("clock", "The time", spec())],
                        ..ChatRequest::default()
                    };
                    for _ in 0..=TURNS {
                        let resp = provider
                            .complete(&req, &CallContext::for_step("ask"))
                            .await
                            .unwrap();
                        if resp.tool_calls.is_empty() {
                            break;
                        }
                        req.messages.push(Message::from_response(&resp));
                        req.messages.push(Message::tool_results(
                            resp.tool_calls
                                .iter()
                                .map(|c| ToolResult::ok(c.id.clone(), "11:59"))
                                .collect(),
                        ));
                    }
                    direct.push(t.elapsed());
                }
            }
        }
        let (a, d) = (median(agent), median(direct));
        let per_turn =
            (a.as_secs_f64() - d.as_secs_f64()) * 1e6 / (TURNS as f64 + 1.0);
        println!(
            "agent: {TURNS} tool turns + the answer {:.2} ms; the same {} requests sent straight through the provider {:.2} ms; engine overhead {per_turn:.1} µs per turn (target < 200 µs)",
            a.as_secs_f64() * 1e3,
            TURNS + 1,
            d.as_secs_f64() * 1e3,
        );
    });
}
