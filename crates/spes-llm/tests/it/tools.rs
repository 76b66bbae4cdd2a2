//! Tool calling on both HTTP adapters against the fake server: tools and
//! tool turns as sent, tool calls as read (streamed and not), and
//! hand-written recorded streams as the real APIs send them.

use std::sync::Arc;

use serde_json::{Value, json};
use spes_core::message::{ChatRequest, ChatResponse, Message, StopReason};
use spes_core::tool::{ToolCall, ToolChoice, ToolResult, ToolSpec};
use spes_fake_llm::{FakeResponse, FakeServer, FakeStop, FakeToolCall};
use spes_llm::{
    AnthropicProvider, CallContext, ErrorClass, HttpProviderConfig, OpenAiProvider, Provider,
    ProviderError, ProviderErrorKind as K,
};

use crate::support::{Api, base_url, build, config, provider, recording_context, relaxed};

const APIS: [Api; 2] = [Api::Anthropic, Api::OpenAi];

fn weather() -> ToolSpec {
    ToolSpec::new(
        "weather",
        "The current weather in a city.",
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    )
}

fn clock() -> ToolSpec {
    ToolSpec::new("clock", "", json!({"type": "object", "properties": {}}))
}

fn with_tools(text: &str) -> ChatRequest {
    ChatRequest {
        tools: vec![weather(), clock()],
        ..ChatRequest::user(text)
    }
}

async fn call(p: &dyn Provider, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
    p.complete(req, &CallContext::for_step("agent")).await
}

/// The id the fake server gives the `k`th (1-based) call of request `n`.
fn fake_id(api: Api, n: usize, k: usize) -> String {
    api.pick(format!("toolu_fake_{n}_{k}"), format!("call_fake_{n}_{k}"))
}

#[tokio::test]
async fn tools_and_tool_choice_reach_the_server_in_each_wire_shape() {
    for api in APIS {
        let server = FakeServer::start().await.unwrap();
        let p = provider(api, &server, false, relaxed());
        let req = ChatRequest {
            tool_choice: Some(ToolChoice::Tool("weather".into())),
            ..with_tools("Weather in Paris?")
        };
        call(p.as_ref(), &req).await.unwrap();
        let body = server.last_request().unwrap().body;
        let schema = weather().parameters;
        match api {
            Api::OpenAi => {
                assert_eq!(
                    body["tools"],
                    json!([
                        {"type": "function", "function": {"name": "weather", "description": "The current weather in a city.", "parameters": schema}},
                        {"type": "function", "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}}},
                    ])
                );
                assert_eq!(
                    body["tool_choice"],
                    json!({"type": "function", "function": {"name": "weather"}})
                );
            }
            Api::Anthropic => {
                assert_eq!(
                    body["tools"],
                    json!([
                        {"name": "weather", "description": "The current weather in a city.", "input_schema": schema},
                        {"name": "clock", "input_schema": {"type": "object", "properties": {}}},
                    ])
                );
                assert_eq!(
                    body["tool_choice"],
                    json!({"type": "tool", "name": "weather"})
                );
            }
        }
    }
}

#[test]
fn every_tool_choice_has_its_wire_spelling() {
    let openai =
        OpenAiProvider::new(HttpProviderConfig::new("gpt").with_model("gpt-test")).unwrap();
    let anthropic =
        AnthropicProvider::new(HttpProviderConfig::new("claude").with_model("claude-test"))
            .unwrap();
    let cases = [
        (ToolChoice::Auto, json!("auto"), json!({"type": "auto"})),
        (ToolChoice::None, json!("none"), json!({"type": "none"})),
        (
            ToolChoice::Required,
            json!("required"),
            json!({"type": "any"}),
        ),
    ];
    for (choice, o, a) in cases {
        let req = ChatRequest {
            tool_choice: Some(choice),
            ..with_tools("q")
        };
        assert_eq!(openai.request_body(&req).unwrap()["tool_choice"], o);
        assert_eq!(anthropic.request_body(&req).unwrap()["tool_choice"], a);
    }
    // No tools: neither tools nor a tool_choice is sent (both APIs refuse
    // a tool_choice without tools), and no request changes shape.
    let req = ChatRequest {
        tool_choice: Some(ToolChoice::Required),
        ..ChatRequest::user("q")
    };
    for body in [
        openai.request_body(&req).unwrap(),
        anthropic.request_body(&req).unwrap(),
    ] {
        assert!(body.get("tools").is_none(), "{body}");
        assert!(body.get("tool_choice").is_none(), "{body}");
    }
}

#[tokio::test]
async fn one_tool_call_comes_back_parsed_streamed_or_not() {
    for api in APIS {
        for stream in [false, true] {
            let server = FakeServer::start().await.unwrap();
            server.push(
                FakeResponse::tool_call("weather", &json!({"city": "Paris", "unit": "C"}))
                    .with_chunk_chars(4),
            );
            let p = provider(api, &server, stream, relaxed());
            let r = call(p.as_ref(), &with_tools("Weather in Paris?"))
                .await
                .unwrap();
            let what = format!("{api:?} stream {stream}");
            assert_eq!(r.text, "", "{what}");
            assert_eq!(r.stop_reason, StopReason::ToolUse, "{what}");
            assert_eq!(
                r.tool_calls,
                vec![ToolCall::new(
                    fake_id(api, 1, 1),
                    "weather",
                    json!({"city": "Paris", "unit": "C"})
                )],
                "{what}"
            );
            assert!(r.usage.output_tokens > 0, "{what}");
        }
    }
}

#[tokio::test]
async fn two_parallel_calls_come_back_in_order_streamed_or_not() {
    for api in APIS {
        for stream in [false, true] {
            let server = FakeServer::start().await.unwrap();
            // Three characters a fragment: the OpenAI stream interleaves
            // the two calls' argument fragments.
            server.push(
                FakeResponse::tool_calls(vec![
                    FakeToolCall::new("weather", &json!({"city": "Paris"})),
                    FakeToolCall::new("weather", &json!({"city": "Oslo"})).with_id("mine_2"),
                ])
                .with_chunk_chars(3),
            );
            let p = provider(api, &server, stream, relaxed());
            let r = call(p.as_ref(), &with_tools("Paris or Oslo?"))
                .await
                .unwrap();
            let what = format!("{api:?} stream {stream}");
            assert_eq!(r.stop_reason, StopReason::ToolUse, "{what}");
            assert_eq!(
                r.tool_calls,
                vec![
                    ToolCall::new(fake_id(api, 1, 1), "weather", json!({"city": "Paris"})),
                    ToolCall::new("mine_2", "weather", json!({"city": "Oslo"})),
                ],
                "{what}"
            );
        }
    }
}

#[tokio::test]
async fn a_tool_without_parameters_gets_an_empty_object() {
    for api in APIS {
        for stream in [false, true] {
            let server = FakeServer::start().await.unwrap();
            server.push(FakeResponse::tool_calls(vec![FakeToolCall::raw(
                "clock", "",
            )]));
            let p = provider(api, &server, stream, relaxed());
            let r = call(p.as_ref(), &with_tools("Time?")).await.unwrap();
            assert_eq!(
                r.tool_calls[0].arguments,
                json!({}),
                "{api:?} stream {stream}"
            );
        }
    }
}

#[tokio::test]
async fn text_and_tool_calls_in_one_answer_keep_both() {
    for api in APIS {
        for stream in [false, true] {
            let server = FakeServer::start().await.unwrap();
            server.push(
                FakeResponse::text("Let me check the weather.")
                    .with_tool_call(FakeToolCall::new("weather", &json!({"city": "Rome"})))
                    .with_chunk_chars(5),
            );
            let p = provider(api, &server, stream, relaxed());
            let (cx, deltas) = recording_context();
            let r = p.complete(&with_tools("Rome?"), &cx).await.unwrap();
            let what = format!("{api:?} stream {stream}");
            assert_eq!(r.text, "Let me check the weather.", "{what}");
            assert_eq!(r.stop_reason, StopReason::ToolUse, "{what}");
            assert_eq!(r.tool_calls.len(), 1, "{what}");
            assert_eq!(r.tool_calls[0].arguments, json!({"city": "Rome"}), "{what}");
            // Only the text goes to the delta sink.
            assert_eq!(
                deltas.lock().unwrap().concat(),
                "Let me check the weather.",
                "{what}"
            );
        }
    }
}

#[tokio::test]
async fn invalid_argument_json_is_a_transient_bad_response() {
    // Anthropic's non-streamed `input` is JSON by construction: only its
    // stream can carry broken arguments.
    let cases = [
        (Api::OpenAi, false),
        (Api::OpenAi, true),
        (Api::Anthropic, true),
    ];
    for (api, stream) in cases {
        let server = FakeServer::start().await.unwrap();
        server.push(FakeResponse::tool_calls(vec![FakeToolCall::raw(
            "weather",
            "{\"city\": \"Paris\",,}",
        )]));
        let p = provider(api, &server, stream, relaxed());
        let e = call(p.as_ref(), &with_tools("q")).await.unwrap_err();
        let what = format!("{api:?} stream {stream}");
        assert_eq!(e.kind, K::BadResponse, "{what}: {e}");
        assert_eq!(e.class(), ErrorClass::Transient, "{what}");
        assert!(e.message.contains("tool `weather`"), "{what}: {e}");
    }
}

#[tokio::test]
async fn arguments_cut_by_max_tokens_are_truncated() {
    for api in APIS {
        let server = FakeServer::start().await.unwrap();
        server.push(
            FakeResponse::tool_calls(vec![FakeToolCall::raw("weather", "{\"city\": \"Par")])
                .with_stop(FakeStop::MaxTokens),
        );
        let p = provider(api, &server, true, relaxed());
        let e = call(p.as_ref(), &with_tools("q")).await.unwrap_err();
        assert_eq!(e.kind, K::Truncated, "{api:?}: {e}");
    }
}

#[tokio::test]
async fn streamed_arguments_count_against_the_size_cap() {
    let big = "x".repeat(8 << 10);
    for api in APIS {
        let server = FakeServer::start().await.unwrap();
        server
            .push(FakeResponse::tool_call("weather", &json!({"city": big})).with_chunk_chars(512));
        let cfg =
            config(api, &base_url(api, &server), true, relaxed()).with_max_response_bytes(4 << 10);
        let p = build(cfg, api);
        let e = call(p.as_ref(), &with_tools("q")).await.unwrap_err();
        assert_eq!(e.kind, K::ResponseTooLarge, "{api:?}: {e}");
    }
}

/// The conversation of one tool round: the question, the assistant's two
/// calls (as the first response gave them), their results (one failed).
fn follow_up(first: &ChatResponse) -> ChatRequest {
    let mut req = with_tools("Weather in Paris and Oslo?");
    req.messages.push(Message::from_response(first));
    req.messages.push(Message::tool_results(vec![
        ToolResult::ok(first.tool_calls[0].id.clone(), "18°C, sunny"),
        ToolResult::error(first.tool_calls[1].id.clone(), "Oslo: service unavailable"),
    ]));
    req
}

#[tokio::test]
async fn a_tool_round_sends_calls_and_results_in_each_wire_shape() {
    for api in APIS {
        for stream in [false, true] {
            let server = FakeServer::start().await.unwrap();
            server.push(FakeResponse::tool_calls(vec![
                FakeToolCall::new("weather", &json!({"city": "Paris"})),
                FakeToolCall::new("weather", &json!({"city": "Oslo"})),
            ]));
            server.push(FakeResponse::text("Paris is sunny; Oslo is unknown."));
            let p = provider(api, &server, stream, relaxed());
            let first = call(p.as_ref(), &with_tools("Weather in Paris and Oslo?"))
                .await
                .unwrap();
            let (a, b) = (fake_id(api, 1, 1), fake_id(api, 1, 2));
            let answer = call(p.as_ref(), &follow_up(&first)).await.unwrap();
            let what = format!("{api:?} stream {stream}");
            assert_eq!(answer.text, "Paris is sunny; Oslo is unknown.", "{what}");
            assert_eq!(answer.stop_reason, StopReason::EndTurn, "{what}");
            assert!(answer.tool_calls.is_empty(), "{what}");
            let sent = server.last_request().unwrap().body;
            let expected = match api {
                Api::OpenAi => json!([
                    {"role": "user", "content": "Weather in Paris and Oslo?"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": a, "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": b, "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}},
                    ]},
                    {"role": "tool", "tool_call_id": a, "content": "18°C, sunny"},
                    {"role": "tool", "tool_call_id": b, "content": "Error: Oslo: service unavailable"},
                ]),
                Api::Anthropic => json!([
                    {"role": "user", "content": "Weather in Paris and Oslo?"},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": a, "name": "weather", "input": {"city": "Paris"}},
                        {"type": "tool_use", "id": b, "name": "weather", "input": {"city": "Oslo"}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": a, "content": "18°C, sunny"},
                        {"type": "tool_result", "tool_use_id": b, "content": "Oslo: service unavailable", "is_error": true},
                    ]},
                ]),
            };
            assert_eq!(sent["messages"], expected, "{what}");
        }
    }
}

#[tokio::test]
async fn text_beside_tool_turns_is_kept_in_the_history() {
    let call_ = ToolCall::new("c1", "clock", json!({}));
    let mut req = with_tools("Time?");
    req.messages.push(Message::assistant_tool_calls(
        "Checking the clock.",
        vec![call_],
    ));
    req.messages.push(Message {
        content: "Also, be brief.".into(),
        ..Message::tool_results(vec![ToolResult::ok("c1", "12:00")])
    });
    for api in APIS {
        let server = FakeServer::start().await.unwrap();
        let p = provider(api, &server, false, relaxed());
        // Accepted by the fake's checks of tool turns; echoed.
        let r = call(p.as_ref(), &req).await.unwrap();
        assert_eq!(r.text, "echo: Also, be brief.", "{api:?}");
        let sent = server.last_request().unwrap().body;
        let expected = match api {
            Api::OpenAi => json!([
                {"role": "user", "content": "Time?"},
                {"role": "assistant", "content": "Checking the clock.", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "clock", "arguments": "{}"}},
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
                {"role": "user", "content": "Also, be brief."},
            ]),
            Api::Anthropic => json!([
                {"role": "user", "content": "Time?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking the clock."},
                    {"type": "tool_use", "id": "c1", "name": "clock", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "c1", "content": "12:00"},
                    {"type": "text", "text": "Also, be brief."},
                ]},
            ]),
        };
        assert_eq!(sent["messages"], expected, "{api:?}");
    }
}

#[tokio::test]
async fn the_fake_echoes_the_question_after_tool_results_in_both_dialects() {
    let first = ChatResponse {
        text: String::new(),
        stop_reason: StopReason::ToolUse,
        usage: spes_core::message::Usage::default(),
        model: None,
        request_id: None,
        latency_ms: 0,
        tool_calls: vec![
            ToolCall::new("c1", "weather", json!({"city": "Paris"})),
            ToolCall::new("c2", "weather", json!({"city": "Oslo"})),
        ],
    };
    for api in APIS {
        let server = FakeServer::start().await.unwrap();
        let p = provider(api, &server, false, relaxed());
        let r = call(p.as_ref(), &follow_up(&first)).await.unwrap();
        assert_eq!(r.text, "echo: Weather in Paris and Oslo?", "{api:?}");
    }
}

#[tokio::test]
async fn a_result_that_answers_no_call_is_refused_like_the_real_apis() {
    for api in APIS {
        let server = FakeServer::start().await.unwrap();
        let mut req = with_tools("Time?");
        req.messages.push(Message::assistant_tool_calls(
            "",
            vec![ToolCall::new("c1", "clock", json!({}))],
        ));
        req.messages
            .push(Message::tool_results(vec![ToolResult::ok("c2", "12:00")]));
        let p = provider(api, &server, false, relaxed());
        let e = call(p.as_ref(), &req).await.unwrap_err();
        assert_eq!(e.kind, K::InvalidRequest, "{api:?}: {e}");
        assert_eq!(e.status, Some(400), "{api:?}");
    }
}

// ---- Anthropic: a schema and tools together ----

fn schema() -> Value {
    json!({"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]})
}

#[tokio::test]
async fn anthropic_schema_and_tools_are_sent_together() {
    let server = FakeServer::start().await.unwrap();
    let p = provider(Api::Anthropic, &server, false, relaxed());
    let mut req = ChatRequest {
        json_schema: Some(Arc::new(schema())),
        ..with_tools("Summarize the weather.")
    };
    call(p.as_ref(), &req).await.unwrap();
    let body = server.last_request().unwrap().body;
    let names: Vec<&str> = body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["weather", "clock", "structured_answer"]);
    assert_eq!(body["tools"][2]["input_schema"], schema());
    assert_eq!(body["tool_choice"], json!({"type": "any"}));
    // `None`: the model may not call its tools, so it must answer.
    req.tool_choice = Some(ToolChoice::None);
    call(p.as_ref(), &req).await.unwrap();
    let body = server.last_request().unwrap().body;
    assert_eq!(
        body["tool_choice"],
        json!({"type": "tool", "name": "structured_answer"})
    );
    assert_eq!(body["tools"].as_array().unwrap().len(), 3);
    // A tool of the request's own forced by name.
    req.tool_choice = Some(ToolChoice::Tool("clock".into()));
    call(p.as_ref(), &req).await.unwrap();
    let body = server.last_request().unwrap().body;
    assert_eq!(
        body["tool_choice"],
        json!({"type": "tool", "name": "clock"})
    );
}

#[tokio::test]
async fn anthropic_answer_tool_is_the_answer_and_own_tools_come_first() {
    let req = ChatRequest {
        json_schema: Some(Arc::new(schema())),
        ..with_tools("Summarize the weather.")
    };
    for stream in [false, true] {
        let server = FakeServer::start().await.unwrap();
        // Only the answer tool: the structured answer.
        server.push(FakeResponse::tool_call(
            "structured_answer",
            &json!({"summary": "sunny"}),
        ));
        // The request's tool beside the answer tool: the calls win.
        server.push(FakeResponse::tool_calls(vec![
            FakeToolCall::new("weather", &json!({"city": "Paris"})),
            FakeToolCall::new("structured_answer", &json!({"summary": "guess"})),
        ]));
        let p = provider(Api::Anthropic, &server, stream, relaxed());
        let r = call(p.as_ref(), &req).await.unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&r.text).unwrap(),
            json!({"summary": "sunny"}),
            "stream {stream}"
        );
        assert_eq!(r.stop_reason, StopReason::EndTurn, "stream {stream}");
        assert!(r.tool_calls.is_empty(), "stream {stream}");
        let r = call(p.as_ref(), &req).await.unwrap();
        assert_eq!(r.stop_reason, StopReason::ToolUse, "stream {stream}");
        assert_eq!(
            r.tool_calls,
            vec![ToolCall::new(
                fake_id(Api::Anthropic, 2, 1),
                "weather",
                json!({"city": "Paris"})
            )],
            "stream {stream}"
        );
        assert_eq!(r.text, "", "stream {stream}");
    }
}

#[tokio::test]
async fn anthropic_own_tool_named_like_the_answer_tool_is_refused_before_sending() {
    let server = FakeServer::start().await.unwrap();
    let p = provider(Api::Anthropic, &server, false, relaxed());
    let req = ChatRequest {
        json_schema: Some(Arc::new(schema())),
        tools: vec![ToolSpec::new(
            "structured_answer",
            "",
            json!({"type": "object"}),
        )],
        ..ChatRequest::user("q")
    };
    let e = call(p.as_ref(), &req).await.unwrap_err();
    assert_eq!(e.kind, K::InvalidRequest, "{e}");
    assert_eq!(e.class(), ErrorClass::Terminal);
    assert_eq!(server.request_count(), 0);
    // Without a schema the name is the request's to use.
    let req = ChatRequest {
        json_schema: None,
        ..req
    };
    call(p.as_ref(), &req).await.unwrap();
}

// ---- recorded streams, as the real APIs send them ----

/// An OpenAI Chat Completions stream of two parallel tool calls (the
/// shape gpt-4o sends: the first chunk carries the role and the first
/// call's id and name, each call's arguments follow in fragments, calls
/// come one after another, then the finish reason, the usage chunk and
/// `[DONE]`).
const OPENAI_TOOL_STREAM: &str = concat!(
    r#"data: {"id":"chatcmpl-AB7x2qYtN0cW3","object":"chat.completion.chunk","created":1727353234,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_e375328146","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_QwXhv2u1fR8pYTVQ7hC0bLmN","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-AB7x2qYtN0cW3","object":"chat.completion.chunk","created":1727353234,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_e375328146","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"lo"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-AB7x2qYtN0cW3","object":"chat.completion.chunk","created":1727353234,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_e375328146","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"cation\": \"P"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-AB7x2qYtN0cW3","object":"chat.completion.chunk","created":1727353234,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_e375328146","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"aris, France\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-AB7x2qYtN0cW3","object":"chat.completion.chunk","created":1727353234,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_e375328146","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_7ZrT5bVxK9mWq2LdN4sJgHcE","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-AB7x2qYtN0cW3","object":"chat.completion.chunk","created":1727353234,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_e375328146","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{\"lo"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-AB7x2qYtN0cW3","object":"chat.completion.chunk","created":1727353234,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_e375328146","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"cation\": \"Tokyo, Japan\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-AB7x2qYtN0cW3","object":"chat.completion.chunk","created":1727353234,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_e375328146","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-AB7x2qYtN0cW3","object":"chat.completion.chunk","created":1727353234,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_e375328146","choices":[],"usage":{"prompt_tokens":82,"completion_tokens":49,"total_tokens":131,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#,
    "\n\n",
    "data: [DONE]\n\n",
);

/// An Anthropic Messages stream with text, then a tool call (the
/// documented sequence: `message_start`, a text block, `ping`, the
/// `tool_use` block with an empty first `input_json_delta`, then
/// `message_delta` with `stop_reason: tool_use` and the usage).
const ANTHROPIC_TOOL_STREAM: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2,"cache_creation_input_tokens":0,"cache_read_input_tokens":0},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", let's check the weather for San Francisco, CA:"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \"San"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" Francisc"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"o,"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" CA\""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":", "}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"unit\": \"fah"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"renheit\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"#;

#[tokio::test]
async fn a_recorded_openai_parallel_tool_call_stream_is_read() {
    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::raw(
        200,
        "text/event-stream",
        OPENAI_TOOL_STREAM,
    ));
    let p = provider(Api::OpenAi, &server, true, relaxed());
    let r = call(p.as_ref(), &with_tools("Weather in Paris and Tokyo?"))
        .await
        .unwrap();
    assert_eq!(r.text, "");
    assert_eq!(r.stop_reason, StopReason::ToolUse);
    assert_eq!(
        r.tool_calls,
        vec![
            ToolCall::new(
                "call_QwXhv2u1fR8pYTVQ7hC0bLmN",
                "get_weather",
                json!({"location": "Paris, France"})
            ),
            ToolCall::new(
                "call_7ZrT5bVxK9mWq2LdN4sJgHcE",
                "get_weather",
                json!({"location": "Tokyo, Japan"})
            ),
        ]
    );
    assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (82, 49));
    assert_eq!(r.model.as_deref(), Some("gpt-4o-2024-08-06"));
}

#[tokio::test]
async fn a_recorded_anthropic_tool_use_stream_is_read() {
    let server = FakeServer::start().await.unwrap();
    server.push(FakeResponse::raw(
        200,
        "text/event-stream",
        ANTHROPIC_TOOL_STREAM,
    ));
    let p = provider(Api::Anthropic, &server, true, relaxed());
    let (cx, deltas) = recording_context();
    let r = p
        .complete(&with_tools("Weather in San Francisco?"), &cx)
        .await
        .unwrap();
    assert_eq!(
        r.text,
        "Okay, let's check the weather for San Francisco, CA:"
    );
    assert_eq!(deltas.lock().unwrap().concat(), r.text);
    assert_eq!(r.stop_reason, StopReason::ToolUse);
    assert_eq!(
        r.tool_calls,
        vec![ToolCall::new(
            "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "get_weather",
            json!({"location": "San Francisco, CA", "unit": "fahrenheit"})
        )]
    );
    assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (472, 89));
    assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
}

#[tokio::test]
async fn openai_tool_calls_under_a_named_tool_choice_are_tool_use() {
    // OpenAI says `finish_reason: "stop"` when tool_choice names a
    // function; the answer still waits for the tool's result.
    let server = FakeServer::start().await.unwrap();
    let body = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "clock", "arguments": "{}"}}
        ]}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    });
    server.push(FakeResponse::raw_json(&body));
    let p = provider(Api::OpenAi, &server, false, relaxed());
    let r = call(p.as_ref(), &with_tools("Time?")).await.unwrap();
    assert_eq!(r.stop_reason, StopReason::ToolUse);
    assert_eq!(
        r.tool_calls,
        vec![ToolCall::new("call_1", "clock", json!({}))]
    );
}
